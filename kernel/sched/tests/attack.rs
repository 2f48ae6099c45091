//! Event sequences a driver may legitimately produce, fed to the scheduler by hand: each test
//! names the behaviour docs/SCHEDULER.md promises.

mod common;

use cairn_object::Handle;
use cairn_sched::{Action, Event, Options, Order, Scheduler};
use common::{Job, compute, options};

/// A scheduler driven by hand: every action it gives is kept, Progress lines apart.
struct Manual {
    s: Scheduler,
    progress: Vec<String>,
    finished: Option<Result<cairn_sched::Report, String>>,
}

impl Manual {
    fn new(job: &Job, nodes: usize, options: Options) -> Manual {
        let s = Scheduler::new(job.graph(), job.objects.keys().copied().collect(), nodes, options);
        Manual { s, progress: Vec::new(), finished: None }
    }

    /// The actions the scheduler has now, Progress and Finished kept aside.
    fn drain(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        while let Some(a) = self.s.next_action() {
            match a {
                Action::Progress(line) => self.progress.push(line),
                Action::Finished(outcome) => {
                    assert!(self.finished.is_none(), "two Finished");
                    self.finished = Some(outcome);
                }
                other => out.push(other),
            }
        }
        out
    }

    fn handle(&mut self, event: Event) -> Vec<Action> {
        self.s.handle(event);
        self.drain()
    }

    /// Starts the job; every node holds every leaf (nothing to upload), and memos are empty.
    /// Returns the first Run orders.
    fn start_holding_everything(&mut self) -> Vec<Action> {
        self.s.start();
        let mut pending = self.drain();
        let mut runs = Vec::new();
        while let Some(a) = pending.pop() {
            let answer = match a {
                Action::AskMissing { node, .. } => Event::Missing { node, missing: vec![] },
                Action::Recall { node, .. } => Event::Recalled { node, entries: vec![] },
                Action::Run { .. } => {
                    runs.push(a);
                    continue;
                }
                other => panic!("unexpected {other:?}"),
            };
            pending.extend(self.handle(answer));
        }
        runs
    }
}

fn runs(actions: &[Action]) -> Vec<(usize, Order)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Run { node, order } => Some((*node, order.clone())),
            _ => None,
        })
        .collect()
}

fn done(node: usize, order: &Order) -> Event {
    Event::Done { node, task: order.task, result: compute(&order.applied), moved: 0, uploaded: 0, ran: true }
}

fn timeout(node: usize, task: usize) -> Event {
    Event::Failed { node, task, failure: "timeout".into(), why: "timeout".into() }
}

fn one_task() -> Job {
    Job::new(&[vec![Err(100)]])
}

/// Was a bug (fixed in 07df33b): a task that timed out on node A is kept off A ("runs elsewhere"), which is decided when
/// the failure comes in. If the other node is lost afterwards, A is the only node left and the
/// task may run there again (one node failure of two allowed), yet the job ends with "no task
/// can be placed on the live nodes".
#[test]
fn a_task_that_timed_out_runs_again_on_the_same_node_once_the_others_are_lost() {
    let job = one_task();
    let mut m = Manual::new(&job, 2, options());
    let first = runs(&m.start_holding_everything());
    let (a, order) = first[0].clone();
    let b = 1 - a;
    let next = runs(&m.handle(timeout(a, order.task)));
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].0, b, "it runs elsewhere first");
    let again = runs(&m.handle(Event::Lost { node: b, why: "gone".into() }));
    assert_eq!(m.finished, None, "a live node can still run it");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].0, a);
    m.handle(done(a, &again[0].1));
    assert_eq!(m.finished, None);
}

/// Was a bug (fixed in 07df33b): with --verify on two nodes, one timeout of the first copy fails the job with
/// "verification needs two live nodes" while two nodes are alive: the node that timed out stays
/// excluded, and the copy that ran on the other node excludes that one too.
#[test]
fn verify_on_two_nodes_survives_one_timeout() {
    let job = one_task();
    let mut m = Manual::new(&job, 2, Options { verify: true, ..options() });
    let first = runs(&m.start_holding_everything());
    let (a, order) = first[0].clone();
    let next = runs(&m.handle(timeout(a, order.task)));
    let (b, order) = next[0].clone();
    assert_ne!(a, b);
    let second = runs(&m.handle(done(b, &order)));
    assert_eq!(m.finished, None, "two live nodes can verify it");
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].0, a, "the second copy goes to the node the first did not run on");
}

/// Was a bug (fixed in 07df33b): with --verify, when the second copy's node times out and no third node exists, the
/// task's exclusions are cleared; the second copy then goes to the node that computed the first
/// one, which "verifies" itself (a node computing wrong is then never caught).
#[test]
fn verify_never_runs_both_copies_on_one_node() {
    let job = one_task();
    let mut m = Manual::new(&job, 2, Options { verify: true, ..options() });
    let first = runs(&m.start_holding_everything());
    let (a, order) = first[0].clone();
    let second = runs(&m.handle(done(a, &order)));
    let (b, order) = second[0].clone();
    assert_ne!(a, b);
    let third = runs(&m.handle(timeout(b, order.task)));
    for (node, _) in &third {
        assert_ne!(*node, a, "the second copy went to the node of the first");
    }
}

/// Answers every request as nodes holding `holds[node]` would, with empty memos; each Run is
/// answered by `run`. Until the job ends; the Run orders given.
fn drive(
    m: &mut Manual,
    holds: &[Vec<Handle>],
    mut run: impl FnMut(usize, &Order) -> Event,
) -> Vec<(usize, Order)> {
    m.s.start();
    let mut pending: std::collections::VecDeque<Action> = m.drain().into();
    let mut sent = Vec::new();
    let mut steps = 0;
    while let Some(a) = pending.pop_front() {
        steps += 1;
        assert!(steps < 10_000, "the job never ends");
        let answer = match a {
            Action::AskMissing { node, handles } => Event::Missing {
                node,
                missing: handles.into_iter().filter(|h| !holds[node].contains(h)).collect(),
            },
            Action::Upload { node, handle } => Event::Uploaded { node, handle, bytes: handle.size() },
            Action::Recall { node, .. } => Event::Recalled { node, entries: vec![] },
            Action::FetchResult { node, .. } => Event::ResultFetched { node },
            Action::Run { node, order } => {
                sent.push((node, order.clone()));
                run(node, &order)
            }
            other => panic!("unexpected {other:?}"),
        };
        pending.extend(m.handle(answer));
    }
    assert!(m.finished.is_some(), "nothing outstanding and the job is not over");
    sent
}

/// Was a bug (fixed in 07df33b): a fetch that failed sends the task back to the same node, fetching from the same peer
/// (the docs say "placed again, elsewhere"). A peer that answers the host but not its peers
/// (busy past the fetch limit, or its cluster link down) then fails the job after six tries,
/// though another node holds the input and a third could run the task without it.
#[test]
fn a_failed_fetch_is_not_tried_again_the_same_way_until_the_job_fails() {
    let job = Job::new(&[vec![Err(1 << 20), Err(1 << 20)]]);
    let graph = job.graph();
    let (x, y) = match graph.tasks[0].args[..] {
        [cairn_sched::Arg::Value(x), cairn_sched::Arg::Value(y)] => (x, y),
        _ => unreachable!(),
    };
    let p = common::procedure();
    // X on node 0; Y on nodes 1 and 2.
    let holds = [vec![p, x], vec![p, y], vec![p, y]];
    let mut m = Manual::new(&job, 3, options());
    let sent = drive(&mut m, &holds, |node, order| {
        if let Some((peer, _)) = order.fetches.iter().find(|(peer, _)| *peer == 1) {
            return Event::FetchFailed { node, task: order.task, peer: *peer, why: "busy".into() };
        }
        done(node, order)
    });
    let tries: Vec<(usize, Vec<usize>)> =
        sent.iter().map(|(n, o)| (*n, o.fetches.iter().map(|f| f.0).collect())).collect();
    assert!(
        matches!(m.finished, Some(Ok(_))),
        "{:?} after {tries:?}",
        m.finished.as_ref().map(|r| r.as_ref().map(|r| r.result))
    );
    assert!(sent.len() <= 2, "{tries:?}");
}

/// Was a bug (fixed in 07df33b): a node reported lost before `start` (a driver that found it unreachable while
/// connecting) is still probed, and probing waits for its answer for ever: its `Lost` is taken
/// as a repeat and its `Missing` is ignored, as from a dead node. The job stalls in probing.
#[test]
fn a_node_lost_before_the_start_is_not_waited_for() {
    let job = one_task();
    let mut m = Manual::new(&job, 2, options());
    m.s.handle(Event::Lost { node: 1, why: "connection refused".into() });
    m.s.start();
    let mut pending = m.drain();
    let mut steps = 0;
    while let Some(a) = pending.pop() {
        steps += 1;
        assert!(steps < 100);
        let answer = match a {
            Action::AskMissing { node: 1, .. } => Event::Lost { node: 1, why: "connection refused".into() },
            Action::AskMissing { node, .. } => Event::Missing { node, missing: vec![] },
            Action::Recall { node, .. } => Event::Recalled { node, entries: vec![] },
            Action::Run { node, order } => done(node, &order),
            Action::FetchResult { node, .. } => Event::ResultFetched { node },
            other => panic!("{other:?}"),
        };
        pending.extend(m.handle(answer));
    }
    assert!(m.finished.is_some(), "nothing outstanding and the job is not over (stalled in probing)");
}

/// Answers for work a node no longer has (it was lost, or answered already), memos nobody
/// asked, and result bytes from a node not asked are all ignored.
#[test]
fn late_and_repeated_answers_change_nothing() {
    let job = one_task();
    let mut m = Manual::new(&job, 2, options());
    let (a, order) = runs(&m.start_holding_everything())[0].clone();
    let b = 1 - a;
    let again = runs(&m.handle(Event::Lost { node: a, why: "gone".into() }));
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].0, b);
    assert!(m.handle(done(a, &order)).is_empty(), "a Done from a lost node");
    assert!(m.handle(Event::Recalled { node: b, entries: vec![(order.applied, job.root)] }).is_empty());
    let fetch = m.handle(done(b, &again[0].1));
    assert!(matches!(fetch[..], [Action::FetchResult { node, .. }] if node == b), "{fetch:?}");
    assert!(m.handle(done(b, &again[0].1)).is_empty(), "a second Done");
    assert!(m.handle(Event::ResultFetched { node: a }).is_empty());
    assert!(m.handle(Event::Missing { node: b, missing: vec![] }).is_empty());
    assert_eq!(m.finished, None);
    m.handle(Event::ResultFetched { node: b });
    assert_eq!(m.finished.unwrap().unwrap().result, Some(job.expected()));
}

/// A job whose root is a value needs no node to run anything: its result is the value.
#[test]
fn a_root_that_is_a_value_is_the_result() {
    let value = Handle::blob(&[5u8; 100]);
    let graph = cairn_sched::Graph::build(value, 10, |_| None).unwrap();
    assert!(graph.tasks.is_empty());
    let mut s = Scheduler::new(graph, [value].into_iter().collect(), 2, options());
    s.start();
    let mut finished = None;
    let mut steps = 0;
    while finished.is_none() {
        steps += 1;
        assert!(steps < 100);
        let Some(a) = s.next_action() else { panic!("nothing to do and not finished") };
        match a {
            Action::AskMissing { node, handles } => s.handle(Event::Missing { node, missing: handles }),
            Action::Upload { node, handle } => s.handle(Event::Uploaded { node, handle, bytes: 100 }),
            Action::Finished(outcome) => finished = Some(outcome),
            Action::Progress(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(finished.unwrap().unwrap().result, Some(value));
}

/// A task that takes another several times counts it once: it runs when that one is done,
/// once, and the job's result is right.
#[test]
fn a_task_taking_another_several_times_waits_for_it_once() {
    let job = Job::new(&[vec![Err(100)], vec![Ok(0), Ok(0), Err(10), Ok(0)]]);
    let graph = job.graph();
    assert_eq!(graph.tasks.len(), 2);
    let mut cluster = common::Cluster::new(2);
    let report = cluster.run(&job, options()).unwrap();
    assert_eq!(report.result, Some(job.expected()));
    assert_eq!(report.dispatched, 2);
}

/// A result small enough to be a literal handle needs no holder: the root's is the result at
/// once (nothing fetched), and an argument's survives the loss of the node that made it.
#[test]
fn literal_results_need_no_holder() {
    let literal = Handle::blob(b"42");
    assert!(literal.is_literal());
    // The root's result is a literal: finished without a fetch.
    let job = one_task();
    let mut m = Manual::new(&job, 2, options());
    let (a, order) = runs(&m.start_holding_everything())[0].clone();
    let after = m.handle(Event::Done {
        node: a,
        task: order.task,
        result: literal,
        moved: 0,
        uploaded: 0,
        ran: true,
    });
    assert!(after.is_empty(), "{after:?}");
    assert_eq!(m.finished.unwrap().unwrap().result, Some(literal));
    // A chain whose first task gives a literal: losing the node that made it redoes nothing.
    let job = Job::new(&[vec![Err(100)], vec![Ok(0)]]);
    let mut m = Manual::new(&job, 2, options());
    let (a, order) = runs(&m.start_holding_everything())[0].clone();
    assert_eq!(order.task, 0);
    let mut next =
        m.handle(Event::Done { node: a, task: 0, result: literal, moved: 0, uploaded: 0, ran: true });
    // (A memo round for the second task first.)
    while let Some(Action::Recall { node, .. }) = next.first().cloned() {
        next.remove(0);
        next.extend(m.handle(Event::Recalled { node, entries: vec![] }));
    }
    let second = runs(&next);
    assert_eq!(second.len(), 1, "{next:?}");
    assert_eq!(second[0].1.task, 1);
    assert!(second[0].1.fetches.is_empty() && second[0].1.uploads.is_empty());
    let lost = 1 - second[0].0;
    if lost == a {
        assert!(runs(&m.handle(Event::Lost { node: a, why: "gone".into() })).is_empty(), "task 0 redone");
    }
}

/// Two tasks with the same result, both holders lost while the task taking them runs: the
/// job still ends with the right result, on the node left.
#[test]
fn two_tasks_with_one_result_and_their_holders_lost() {
    // Each 1 MiB blob on one node (1 and 2): the tasks taking them run there.
    let job = Job::new(&[vec![Err(1 << 20)], vec![Err(1 << 20)], vec![Ok(0), Ok(1)]]);
    let graph = job.graph();
    let blob = |t: usize| match graph.tasks[t].args[0] {
        cairn_sched::Arg::Value(h) => h,
        _ => unreachable!(),
    };
    let lacks = [vec![blob(0), blob(1)], vec![blob(1)], vec![blob(0)]];
    let same = Handle::blob(&[9u8; 64]);
    let root = graph.tasks.len() - 1;
    let expected = {
        let t = &graph.tasks[root];
        let bytes = cairn_object::thunk::encode(t.limits, t.procedure, &[same, same]).unwrap();
        compute(&cairn_object::store::name(cairn_object::Kind::Thunk, &bytes).unwrap())
    };
    let mut m = Manual::new(&job, 3, options());
    m.s.start();
    let mut pending: std::collections::VecDeque<Action> = m.drain().into();
    let mut dead = [false; 3];
    let mut ran_on = Vec::new();
    let mut steps = 0;
    while let Some(a) = pending.pop_front() {
        steps += 1;
        assert!(steps < 1000, "the job never ends");
        let node = match &a {
            Action::AskMissing { node, .. }
            | Action::Recall { node, .. }
            | Action::FetchResult { node, .. }
            | Action::Run { node, .. } => *node,
            other => panic!("{other:?}"),
        };
        let answer = if dead[node] {
            Event::Lost { node, why: "gone".into() }
        } else {
            match a {
                Action::AskMissing { node, .. } => Event::Missing { node, missing: lacks[node].clone() },
                Action::Recall { node, .. } => Event::Recalled { node, entries: vec![] },
                Action::FetchResult { node, .. } => Event::ResultFetched { node },
                Action::Run { node, order } if order.task == root => {
                    if !dead[1] {
                        // The root's first try: every node but 0 dies.
                        dead[1] = true;
                        dead[2] = true;
                    }
                    if dead[node] {
                        Event::Lost { node, why: "gone".into() }
                    } else if let Some((peer, _)) = order.fetches.iter().find(|(p, _)| dead[*p]) {
                        Event::FetchFailed { node, task: root, peer: *peer, why: "gone".into() }
                    } else {
                        done(node, &order)
                    }
                }
                Action::Run { node, order } => {
                    ran_on.push((order.task, node));
                    Event::Done { node, task: order.task, result: same, moved: 0, uploaded: 0, ran: true }
                }
                _ => unreachable!(),
            }
        };
        pending.extend(m.handle(answer));
    }
    assert!(dead[1] && dead[2], "the losses happened");
    assert_eq!(ran_on[..2], [(0, 1), (1, 2)], "each where its blob is");
    assert!(ran_on[2..].iter().all(|(_, n)| *n == 0), "{ran_on:?}");
    assert!(ran_on.len() > 2, "one of the two is run again for its result: {ran_on:?}");
    assert_eq!(m.finished.expect("finished").unwrap().result, Some(expected));
}

#[test]
fn a_graph_wider_than_allowed_is_refused_by_its_arguments_in_all() {
    use cairn_object::{Handle, Kind, Limits};
    let limits = Limits::new(1 << 20).unwrap();
    let procedure = Handle::blob(&[9u8; 64]);
    let mut objects = std::collections::HashMap::new();
    let mut leaves = Vec::new();
    for i in 0..3u8 {
        let args: Vec<Handle> = (0..10u8).map(|j| Handle::blob(&[i, j])).collect();
        let bytes = cairn_object::thunk::encode(limits, procedure, &args).unwrap();
        let handle = cairn_object::store::name(Kind::Thunk, &bytes).unwrap();
        objects.insert(handle, bytes);
        leaves.push(handle);
    }
    let root = cairn_object::thunk::encode(limits, procedure, &leaves).unwrap();
    let root_h = cairn_object::store::name(Kind::Thunk, &root).unwrap();
    objects.insert(root_h, root);
    let open = |h: &Handle| objects.get(h).cloned();
    // 3 + 3 x 10 arguments in all.
    assert!(cairn_sched::Graph::build_within(root_h, 100, 33, open).is_ok());
    let err = cairn_sched::Graph::build_within(root_h, 100, 32, open).unwrap_err();
    assert_eq!(err.to_string(), "the graph's tasks have more than 32 arguments in all");
}
