//! The scheduler under a driver that answers in any order, late, twice, and loses nodes at
//! any time (never node 0): it never panics, never loops, never waits on nothing, and a job it
//! ends well ends with the result it has without faults. With moves, the driver also takes
//! back orders not yet run for other nodes (docs/SCHEDULER.md, "The tail"), mostly asking
//! `movable` first, now and then not, and now and then (a buggy driver) for an order it keeps.

mod common;

use std::collections::BTreeSet;

use cairn_object::Handle;
use cairn_sched::{Action, Event, Options, Placement, Scheduler};
use common::{Job, compute};
use proptest::prelude::*;

fn shapes() -> impl Strategy<Value = Vec<Vec<Result<usize, usize>>>> {
    (1usize..16).prop_flat_map(|n| {
        proptest::collection::vec(
            proptest::collection::vec((any::<bool>(), 0usize..1000, 1usize..3000), 1..4),
            n,
        )
        .prop_map(|raw| {
            let mut shape: Vec<Vec<Result<usize, usize>>> = raw
                .into_iter()
                .enumerate()
                .map(|(i, args)| {
                    args.into_iter()
                        .map(|(thunk, pick, size)| if thunk && i > 0 { Ok(pick % i) } else { Err(size) })
                        .collect()
                })
                .collect();
            // A root over every task, so that all of them are in the job.
            let all = (0..shape.len()).map(Ok).collect();
            shape.push(all);
            shape
        })
    })
}

struct Node {
    dead: bool,
    holds: BTreeSet<Handle>,
    memo: std::collections::BTreeMap<Handle, Handle>,
}

struct Chaos {
    rng: u64,
    nodes: Vec<Node>,
    /// Answers not yet delivered.
    pending: Vec<Event>,
    /// With moves: orders not yet run, which the driver may take back.
    orders: Vec<(usize, cairn_sched::Order)>,
    /// Every answer delivered so far (for repeats).
    delivered: Vec<Event>,
}

impl Chaos {
    fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn chance(&mut self, per_thousand: u64) -> bool {
        self.next() % 1000 < per_thousand
    }

    fn answer(&mut self, action: Action, job: &Job) -> Option<Event> {
        let node = match &action {
            Action::AskMissing { node, .. }
            | Action::Upload { node, .. }
            | Action::Recall { node, .. }
            | Action::FetchResult { node, .. }
            | Action::Run { node, .. } => *node,
            _ => return None,
        };
        if self.nodes[node].dead {
            return Some(Event::Lost { node, why: "dead".into() });
        }
        Some(match action {
            Action::AskMissing { handles, .. } => {
                let n = &self.nodes[node];
                Event::Missing {
                    node,
                    missing: handles.into_iter().filter(|h| !n.holds.contains(h)).collect(),
                }
            }
            Action::Upload { handle, .. } => {
                assert!(job.objects.contains_key(&handle), "upload of what the driver lacks");
                self.nodes[node].holds.insert(handle);
                Event::Uploaded { node, handle, bytes: handle.size() }
            }
            Action::Recall { thunks, .. } => {
                let n = &self.nodes[node];
                let entries = thunks
                    .iter()
                    .filter_map(|t| n.memo.get(t).filter(|v| n.holds.contains(v)).map(|v| (*t, *v)))
                    .collect();
                Event::Recalled { node, entries }
            }
            Action::FetchResult { handle, .. } => {
                assert!(self.nodes[node].holds.contains(&handle), "result fetched from a node without it");
                if self.chance(100) {
                    return Some(Event::ResultWrong { node, why: "wrong bytes".into() });
                }
                Event::ResultFetched { node }
            }
            Action::Run { order, .. } => {
                let task = order.task;
                for (peer, handles) in &order.fetches {
                    if self.nodes[*peer].dead || self.chance(30) {
                        return Some(Event::FetchFailed { node, task, peer: *peer, why: "gone".into() });
                    }
                    if self.chance(10) {
                        return Some(Event::BadPeer { node, task, peer: *peer, why: "wrong bytes".into() });
                    }
                    for h in handles {
                        assert!(
                            self.nodes[*peer].holds.contains(h),
                            "fetch of {h} from node {peer} without it"
                        );
                    }
                    self.nodes[node].holds.extend(handles.iter().copied());
                }
                for h in &order.uploads {
                    assert!(job.objects.contains_key(h));
                    self.nodes[node].holds.insert(*h);
                }
                let thunk = cairn_object::thunk::Thunk::decode(&order.applied_bytes).unwrap();
                for input in thunk.args().chain(std::iter::once(thunk.procedure())) {
                    assert!(
                        input.is_literal() || self.nodes[node].holds.contains(&input),
                        "{input} not shipped"
                    );
                }
                if self.chance(30) {
                    return Some(Event::Failed {
                        node,
                        task,
                        failure: "timeout".into(),
                        why: "timeout".into(),
                    });
                }
                let result = compute(&order.applied);
                let n = &mut self.nodes[node];
                n.holds.insert(result);
                n.memo.insert(order.applied, result);
                Event::Done { node, task, result, moved: 0, uploaded: 0, ran: true }
            }
            _ => unreachable!(),
        })
    }
}

/// One chaotic run; how many orders were moved.
fn chaos_run(
    job: &Job,
    nodes: usize,
    options: Options,
    seed: u64,
    holds_at_start: bool,
    moving: bool,
) -> Result<usize, TestCaseError> {
    let mut s = Scheduler::new(job.graph(), job.objects.keys().copied().collect(), nodes, options);
    let mut c = Chaos {
        rng: seed | 1,
        nodes: (0..nodes)
            .map(|_| Node {
                dead: false,
                holds: if holds_at_start { job.objects.keys().copied().collect() } else { BTreeSet::new() },
                memo: Default::default(),
            })
            .collect(),
        pending: Vec::new(),
        orders: Vec::new(),
        delivered: Vec::new(),
    };
    let mut moves = 0;
    s.start();
    let mut finished = None;
    for _ in 0..20_000 {
        while let Some(action) = s.next_action() {
            if let Action::Finished(outcome) = action {
                prop_assert!(finished.is_none(), "two Finished");
                finished = Some(outcome);
                continue;
            }
            prop_assert!(finished.is_none(), "an action after Finished: {:?}", action);
            if let (true, Action::Run { node, order }) = (moving, &action) {
                c.orders.push((*node, order.clone()));
                continue;
            }
            if let Some(event) = c.answer(action, job) {
                c.pending.push(event);
            }
        }
        if finished.is_some() {
            break;
        }
        // Something happens: an order moves or runs, a node dies, an old answer comes again, or
        // a pending one arrives.
        let event = if nodes > 1 && !c.orders.is_empty() && c.chance(300) {
            let at = (c.next() % c.orders.len() as u64) as usize;
            let (from, task) = (c.orders[at].0, c.orders[at].1.task);
            let to = (c.next() % nodes as u64) as usize;
            if !c.chance(100) && !s.movable(task, from, to) {
                continue;
            }
            c.orders.swap_remove(at);
            moves += 1;
            Event::Moved { from, task, to }
        } else if nodes > 1 && !c.orders.is_empty() && c.chance(5) {
            // A buggy driver: a Moved for an order it keeps.
            let at = (c.next() % c.orders.len() as u64) as usize;
            let to = (c.next() % nodes as u64) as usize;
            Event::Moved { from: c.orders[at].0, task: c.orders[at].1.task, to }
        } else if !c.orders.is_empty() && (c.pending.is_empty() || c.chance(500)) {
            let at = (c.next() % c.orders.len() as u64) as usize;
            let (node, order) = c.orders.swap_remove(at);
            match c.answer(Action::Run { node, order }, job) {
                Some(event) => event,
                None => continue,
            }
        } else if nodes > 1 && c.chance(20) {
            let node = 1 + (c.next() % (nodes as u64 - 1)) as usize;
            c.nodes[node].dead = true;
            Event::Lost { node, why: "chaos".into() }
        } else if c.chance(10) {
            // Answers nobody asked for, true ones: an upload, a memo, a probe.
            let node = (c.next() % nodes as u64) as usize;
            let handle = *job.objects.keys().nth((c.next() % job.objects.len() as u64) as usize).unwrap();
            match c.next() % 3 {
                0 if c.nodes[node].holds.contains(&handle) => Event::Uploaded { node, handle, bytes: 1 },
                // (A blob is no thunk: no memo round asks about it.)
                1 if handle.kind() != cairn_object::Kind::Thunk => {
                    Event::Recalled { node, entries: vec![(handle, handle)] }
                }
                _ => {
                    let missing =
                        job.objects.keys().filter(|h| !c.nodes[node].holds.contains(h)).copied().collect();
                    Event::Missing { node, missing }
                }
            }
        } else if !c.delivered.is_empty() && c.chance(50) {
            let at = (c.next() % c.delivered.len() as u64) as usize;
            c.delivered[at].clone()
        } else {
            prop_assert!(!c.pending.is_empty(), "the scheduler waits on nothing");
            let at = (c.next() % c.pending.len() as u64) as usize;
            c.pending.swap_remove(at)
        };
        c.delivered.push(event.clone());
        s.handle(event);
    }
    let Some(outcome) = finished else { return Err(TestCaseError::fail("the job never ended")) };
    if let Ok(report) = outcome {
        prop_assert_eq!(report.result, Some(job.expected()));
        prop_assert!(report.mismatches.is_empty(), "{:?}", report.mismatches);
    }
    Ok(moves)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(std::env::var("CHAOS_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(300)))]
    /// Late, repeated and reordered answers and losses at any time: no panic, no endless loop,
    /// no wait on nothing, and a job that ends well has the right result.
    #[test]
    fn any_order_of_answers_ends_the_job_and_never_with_a_wrong_result(
        shape in shapes(),
        nodes in 1usize..5,
        seed in any::<u64>(),
        placement in prop::sample::select(vec![Placement::Locality, Placement::MinAbsent, Placement::Random]),
        spread in any::<bool>(),
        verify in any::<bool>(),
        recall in any::<bool>(),
        holds in any::<bool>(),
    ) {
        let job = Job::new(&shape);
        chaos_run(&job, nodes, Options { placement, spread, verify, recall, seed }, seed, holds, false)?;
    }

    /// The same with orders taken back and moved, asked or not, and moves for orders kept.
    #[test]
    fn moves_among_any_order_of_answers_end_the_job_and_never_with_a_wrong_result(
        shape in shapes(),
        nodes in 1usize..5,
        seed in any::<u64>(),
        placement in prop::sample::select(vec![Placement::Locality, Placement::MinAbsent, Placement::Random]),
        spread in any::<bool>(),
        verify in any::<bool>(),
        holds in any::<bool>(),
    ) {
        let job = Job::new(&shape);
        chaos_run(&job, nodes, Options { placement, spread, verify, recall: true, seed }, seed, holds, true)?;
    }
}

/// The moving driver does move orders (the property above is not vacuous).
#[test]
fn the_moving_driver_moves_orders() {
    let job = Job::new(&[vec![Err(100)], vec![Err(200)], vec![Err(300)], vec![Ok(0), Ok(1), Ok(2)]]);
    let moves: usize = (1..50u64)
        .map(|seed| {
            let options =
                Options { placement: Placement::Random, spread: false, verify: false, recall: true, seed };
            chaos_run(&job, 3, options, seed, false, true).unwrap()
        })
        .sum();
    assert!(moves > 10, "{moves} moves in 49 runs");
}
