//! Several evaluations at once (docs/EVALUATION.md, "Several evaluations at once"): walks stepped
//! in any order, stepping aside while their applications run elsewhere and finish in any order,
//! some abandoned half way, give every walk the outcome it has alone, fill the memo only with
//! what evaluating alone gives, and leave no pin and no started application behind.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use cairn_eval::{Application, Evaluator, Executor, Failure, NoIo, Walk};
use cairn_object::store::{MemStore, Store, StoreError, StoreStats};
use cairn_object::{Handle, Kind, Limits, Thunk};
use proptest::prelude::*;

mod common;
use common::{number, op, read, task};

/// `add` sums its arguments; `fail` fails; `tail` returns add(add(its arguments), 1).
fn run(store: &mut dyn Store, app: &Application<'_>) -> Result<Handle, Failure> {
    if app.procedure == op("add") {
        Ok(number(app.args.iter().map(read).fold(0, u64::wrapping_add)))
    } else if app.procedure == op("fail") {
        Err(Failure::TaskError(format!("boom {}", app.args.len())))
    } else if app.procedure == op("tail") {
        let inner = task(store, "add", app.args);
        Ok(task(store, "add", &[inner, number(1)]))
    } else {
        Err(Failure::InvalidThunk("unknown fake procedure".into()))
    }
}

/// A memory store that counts every pin, so that a pin left behind shows.
struct Pins {
    objects: MemStore,
    pins: BTreeMap<Handle, u64>,
}

impl Store for Pins {
    fn put(&mut self, kind: Kind, bytes: Bytes) -> Result<Handle, StoreError> {
        self.objects.put(kind, bytes)
    }
    fn put_verified(&mut self, claimed: &Handle, bytes: Bytes) -> Result<(), StoreError> {
        self.objects.put_verified(claimed, bytes)
    }
    fn get(&self, handle: &Handle) -> Option<Bytes> {
        self.objects.get(handle)
    }
    fn contains(&self, handle: &Handle) -> bool {
        self.objects.contains(handle)
    }
    fn stats(&self) -> StoreStats {
        self.objects.stats()
    }
    fn pin(&mut self, handle: &Handle) -> bool {
        let pinned = self.objects.pin(handle);
        if pinned {
            *self.pins.entry(*handle).or_default() += 1;
        }
        pinned
    }
    fn unpin(&mut self, handle: &Handle) {
        let count = self.pins.get_mut(handle).expect("unpinned what was never pinned");
        *count -= 1;
        if *count == 0 {
            self.pins.remove(handle);
        }
        self.objects.unpin(handle)
    }
    fn reclaim(&mut self, bytes: u64, second_chance: bool) -> bool {
        self.objects.reclaim(bytes, second_chance)
    }
}

/// An application running elsewhere: its procedure and arguments, and its outcome once in.
type Running = (Handle, Vec<Handle>, Option<Result<Handle, Failure>>);

/// Runs applications "elsewhere": each one polled is started and stays running until the test
/// finishes it; `apply` only takes outcomes that are in. Every call names its evaluation.
#[derive(Default)]
struct Elsewhere {
    current: Option<u64>,
    live: BTreeSet<u64>,
    /// (evaluation, thunk as applied) → what it runs, and its outcome once finished.
    running: BTreeMap<(u64, Handle), Running>,
    most_running_at_once: usize,
    evaluations: u64,
}

impl Elsewhere {
    fn finish(&mut self, store: &mut Pins, pick: usize) {
        let unfinished: Vec<(u64, Handle)> =
            self.running.iter().filter(|(_, r)| r.2.is_none()).map(|(k, _)| *k).collect();
        if unfinished.is_empty() {
            return;
        }
        let key = unfinished[pick % unfinished.len()];
        let (procedure, args, outcome) = self.running.get_mut(&key).unwrap();
        let app =
            Application { thunk: key.1, limits: Limits::new(1 << 20).unwrap(), procedure: *procedure, args };
        *outcome = Some(run(&mut store.objects, &app));
    }
}

impl Executor<Pins> for Elsewhere {
    fn apply(&mut self, store: &mut Pins, app: &Application<'_>) -> Result<Handle, Failure> {
        let eval = self.current.expect("apply outside any evaluation");
        match self.running.remove(&(eval, app.thunk)) {
            Some((procedure, args, Some(outcome))) => {
                assert_eq!((procedure, &args[..]), (app.procedure, app.args));
                outcome
            }
            Some(_) => panic!("applied before its outcome was in"),
            None => run(&mut store.objects, app),
        }
    }

    fn start_evaluation(&mut self, eval: u64) {
        assert!(self.live.insert(eval), "evaluation {eval} begun twice");
        self.current = Some(eval);
        self.evaluations += 1;
    }

    fn resume_evaluation(&mut self, eval: u64) {
        assert!(self.live.contains(&eval), "resumed evaluation {eval}, not under way");
        self.current = Some(eval);
    }

    fn poll_ready(&mut self, _: &mut Pins, app: &Application<'_>) -> bool {
        let eval = self.current.expect("polled outside any evaluation");
        let ready = self
            .running
            .entry((eval, app.thunk))
            .or_insert((app.procedure, app.args.to_vec(), None))
            .2
            .is_some();
        self.most_running_at_once = self.most_running_at_once.max(self.running.len());
        ready
    }

    fn end_evaluation(&mut self, eval: u64) {
        assert!(self.live.remove(&eval), "ended evaluation {eval}, not under way");
        self.running.retain(|(e, _), _| *e != eval);
        self.current = None;
    }
}

fn evaluator() -> Evaluator<Pins, Elsewhere> {
    Evaluator::new(Pins { objects: MemStore::new(1 << 26), pins: BTreeMap::new() }, Elsewhere::default())
}

#[derive(Clone, Debug)]
enum Arg {
    Value(u8),
    /// An earlier node (modulo how many there are).
    Node(usize),
    Missing,
}

fn node() -> impl Strategy<Value = (u8, Vec<Arg>)> {
    let arg = prop_oneof![
        4 => any::<u8>().prop_map(Arg::Value),
        6 => any::<usize>().prop_map(Arg::Node),
        1 => Just(Arg::Missing),
    ];
    (0u8..10, prop::collection::vec(arg, 0..5))
}

/// Stores the graph; node i's handle is the i-th.
fn build(store: &mut dyn Store, nodes: &[(u8, Vec<Arg>)]) -> Vec<Handle> {
    let missing = task(&mut MemStore::new(1 << 20), "add", &[number(404)]);
    let mut handles = Vec::new();
    for (i, (kind, args)) in nodes.iter().enumerate() {
        let args: Vec<Handle> = args
            .iter()
            .map(|arg| match arg {
                Arg::Value(v) => number(u64::from(*v)),
                Arg::Node(j) if i > 0 => handles[j % i],
                Arg::Node(j) => number(*j as u64),
                Arg::Missing => missing,
            })
            .collect();
        let name = match kind {
            0 => "fail",
            1 | 2 => "tail",
            _ => "add",
        };
        handles.push(task(store, name, &args));
    }
    handles
}

/// A thunk's outcome evaluated alone, on an evaluator of its own: with `nodes`, and the thunk
/// (with every thunk below it) copied from `from` (a tail call's thunk is made by a task).
fn alone(nodes: &[(u8, Vec<Arg>)], root: Handle, from: &Pins) -> String {
    let mut ev = evaluator();
    build(&mut ev.store, nodes);
    let mut todo = vec![root];
    while let Some(h) = todo.pop() {
        if h.kind() == Kind::Thunk
            && !ev.store.contains(&h)
            && let Some(bytes) = from.get(&h)
        {
            todo.extend(Thunk::decode(&bytes).unwrap().args());
            ev.store.put_verified(&h, bytes).unwrap();
        }
    }
    format!("{:?}", ev.eval(root))
}

fn only_memo_values_pinned(ev: &Evaluator<Pins, Elsewhere>) -> bool {
    let values: BTreeSet<Handle> = ev.memo().iter().filter_map(|(_, o)| o.ok()).collect();
    ev.store.pins.keys().all(|h| values.contains(h))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn walks_stepped_in_any_order_give_each_the_outcome_it_has_alone(
        nodes in prop::collection::vec(node(), 1..25),
        roots in prop::collection::vec((any::<usize>(), any::<bool>(), prop::bool::weighted(0.2)), 1..6),
        schedule in prop::collection::vec((any::<usize>(), 0u64..3, any::<usize>()), 0..400),
    ) {
        let mut ev = evaluator();
        let handles = build(&mut ev.store, &nodes);
        let mut walks: Vec<Option<(Walk, usize)>> = roots
            .iter()
            .enumerate()
            .map(|(i, (pick, fresh, _))| Some((ev.begin(handles[pick % handles.len()], *fresh), i)))
            .collect();
        let mut outcomes: BTreeMap<usize, String> = BTreeMap::new();
        let mut schedule = schedule.into_iter();
        while walks.iter().any(Option::is_some) {
            // A random walk moves, some applications finish; once the schedule is spent, every
            // walk is stepped and every application finished in order, to the end.
            let (pick, budget, finish) = schedule.next().unwrap_or((0, 1, 0));
            let live: Vec<usize> = (0..walks.len()).filter(|i| walks[*i].is_some()).collect();
            let at = live[pick % live.len()];
            let (walk, i) = walks[at].as_mut().unwrap();
            let i = *i;
            if roots[i].2 && budget == 0 && pick % 3 == 0 {
                let (walk, _) = walks[at].take().unwrap();
                ev.abandon(walk);
                continue;
            }
            if let Some(outcome) = ev.step(walk, &mut NoIo, budget) {
                prop_assert!(!walk.is_waiting());
                outcomes.insert(i, format!("{outcome:?}"));
                walks[at] = None;
            }
            for _ in 0..=(finish % 3) {
                ev.executor.finish(&mut ev.store, finish);
            }
        }
        for (i, outcome) in &outcomes {
            let root = handles[roots[*i].0 % handles.len()];
            prop_assert_eq!(outcome, &alone(&nodes, root, &ev.store), "root {} ({})", i, root);
        }
        // The memo holds only what evaluating alone gives.
        for (thunk, outcome) in ev.memo().iter() {
            // (An error names the thunk the walk that met it had in hand: only its failure
            // is the thunk's, whichever walk remembered it.)
            let expected = alone(&nodes, *thunk, &ev.store);
            match outcome {
                Ok(value) => prop_assert_eq!(format!("{:?}", Ok::<_, ()>(value)), expected),
                Err(e) => prop_assert!(expected.contains(&format!("failure: {:?}", e.failure)), "{} {:?}", expected, e),
            }
        }
        // Nothing started is left, no evaluation is under way, and the only pins are the memo's.
        prop_assert!(ev.executor.running.is_empty());
        prop_assert!(ev.executor.live.is_empty());
        prop_assert!(only_memo_values_pinned(&ev), "{:?}", ev.store.pins);
    }
}

#[test]
fn two_walks_have_their_applications_running_at_once() {
    let mut ev = evaluator();
    let a = task(&mut ev.store, "add", &[number(1), number(2)]);
    let b = task(&mut ev.store, "add", &[number(3), number(4)]);
    let (mut first, mut second) = (ev.begin(a, false), ev.begin(b, false));
    assert_eq!(ev.step(&mut first, &mut NoIo, u64::MAX), None);
    assert_eq!(ev.step(&mut second, &mut NoIo, u64::MAX), None);
    assert!(first.is_waiting() && second.is_waiting());
    assert_eq!(ev.executor.most_running_at_once, 2);
    // Stepping a walk whose application is still running changes nothing.
    assert_eq!(ev.step(&mut second, &mut NoIo, u64::MAX), None);
    ev.executor.finish(&mut ev.store, 1);
    assert_eq!(ev.step(&mut second, &mut NoIo, u64::MAX), Some(Ok(number(7))));
    ev.executor.finish(&mut ev.store, 0);
    assert_eq!(ev.step(&mut first, &mut NoIo, u64::MAX), Some(Ok(number(3))));
    assert_eq!((first.stats().tasks_run, second.stats().tasks_run), (1, 1));
    assert_eq!(ev.stats().tasks_run, 2);
    assert!(only_memo_values_pinned(&ev), "{:?}", ev.store.pins);
}

#[test]
fn a_walk_stops_after_its_applications_and_goes_on_where_it_stopped() {
    // Run inline (as an executor without other CPUs would): the walk stops only at its budget.
    struct Inline;
    impl Executor<MemStore> for Inline {
        fn apply(&mut self, store: &mut MemStore, app: &Application<'_>) -> Result<Handle, Failure> {
            run(store, app)
        }
    }
    let mut ev = Evaluator::new(MemStore::new(1 << 26), Inline);
    let leaves: Vec<Handle> = (0..10).map(|i| task(&mut ev.store, "add", &[number(i)])).collect();
    let root = task(&mut ev.store, "add", &leaves);
    let mut walk = ev.begin(root, false);
    let mut steps = 0;
    let outcome = loop {
        steps += 1;
        if let Some(outcome) = ev.step(&mut walk, &mut NoIo, 3) {
            break outcome;
        }
        assert!(!walk.is_waiting());
    };
    assert_eq!(outcome, Ok(number(45)));
    assert_eq!(steps, 4, "11 applications, 3 at a time");
    assert_eq!(walk.stats().tasks_run, 11);
    // Now remembered: a new walk answers at its first step, and begins no evaluation.
    let mut again = ev.begin(root, false);
    assert_eq!(ev.step(&mut again, &mut NoIo, 0), Some(Ok(number(45))));
    assert_eq!(again.stats().memo_hits, 1);
}

#[test]
fn an_abandoned_walk_lets_go_of_its_pins_and_its_running_applications() {
    let mut ev = evaluator();
    let leaves: Vec<Handle> = (0..4).map(|i| task(&mut ev.store, "add", &[number(i)])).collect();
    let mid = task(&mut ev.store, "add", &leaves);
    let root = task(&mut ev.store, "add", &[mid, number(1)]);
    let mut walk = ev.begin(root, false);
    assert_eq!(ev.step(&mut walk, &mut NoIo, u64::MAX), None);
    ev.executor.finish(&mut ev.store, 0);
    assert_eq!(ev.step(&mut walk, &mut NoIo, u64::MAX), None);
    assert!(!ev.store.pins.is_empty(), "the walk holds its frames' arguments");
    ev.abandon(walk);
    assert!(ev.executor.running.is_empty() && ev.executor.live.is_empty());
    assert!(only_memo_values_pinned(&ev), "{:?}", ev.store.pins);
    assert_eq!(ev.executor.evaluations, 1);
}

#[test]
fn the_frames_of_all_walks_share_one_ceiling_and_give_it_back() {
    // Room for the frames of two 10-argument thunks (3 lists of 10 handles each), not three.
    let frame = 3 * 10 * Handle::LEN as u64;
    let ceilings = cairn_eval::Ceilings { frame_bytes: 2 * frame, ..cairn_eval::Ceilings::default() };
    let mut ev = evaluator().with_ceilings(ceilings);
    let wide: Vec<Handle> = (0..3)
        .map(|i| {
            let args: Vec<Handle> =
                (0..10).map(|j| task(&mut ev.store, "add", &[number(i * 100 + j)])).collect();
            task(&mut ev.store, "add", &args)
        })
        .collect();
    let mut walks: Vec<Walk> = wide.iter().map(|root| ev.begin(*root, false)).collect();
    assert_eq!(ev.step(&mut walks[0], &mut NoIo, u64::MAX), None, "waits for its first leaf");
    assert_eq!(ev.step(&mut walks[1], &mut NoIo, u64::MAX), None);
    let third = ev.step(&mut walks[2], &mut NoIo, u64::MAX).expect("no room for its frame");
    let failure = third.unwrap_err().failure;
    assert!(matches!(&failure, Failure::NodeLimit(m) if m.contains("frames")), "{failure:?}");
    // Not remembered: once the others are let go, the same root evaluates.
    let (first, second) = (walks.remove(0), walks.remove(0));
    ev.abandon(first);
    ev.abandon(second);
    let mut again = ev.begin(wide[2], false);
    let outcome = loop {
        if let Some(outcome) = ev.step(&mut again, &mut NoIo, u64::MAX) {
            break outcome;
        }
        ev.executor.finish(&mut ev.store, 0);
    };
    assert_eq!(outcome, Ok(number((200..210).sum())));
}
