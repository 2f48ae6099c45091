//! A job's tail (docs/SCHEDULER.md, "The tail"): a driver takes back tasks it has not started
//! and hands them to idle nodes. The scheduler agrees only where the move costs no more input
//! bytes than placement accepts, and the job ends with the same result whatever is moved.

mod common;

use std::collections::{BTreeSet, VecDeque};

use cairn_object::Handle;
use cairn_sched::{Action, Event, NodeId, Options, Order, Placement, Report, SMALL_INPUTS, Scheduler};
use common::{Cluster, Job, map_reduce, options};

/// A driver that keeps each node's orders in a queue, as the real drivers do (one task at a
/// time per node, the front of a queue being the one running), runs the front of a queue drawn
/// by `seed`, and whenever a node's queue is empty while another's holds orders waiting, takes
/// back the last of the longest queue for it, if the scheduler says it may. The job's outcome and how many tasks moved.
fn run_with_moves(
    cluster: &mut Cluster,
    job: &Job,
    options: Options,
    seed: u64,
) -> (Result<Report, String>, usize) {
    let own: BTreeSet<Handle> = job.objects.keys().copied().collect();
    let nodes = cluster.nodes.len();
    let mut s = Scheduler::new(job.graph(), own, nodes, options);
    s.start();
    let mut queues: Vec<VecDeque<Order>> = vec![VecDeque::new(); nodes];
    let mut rng = seed | 1;
    let mut moves = 0;
    for _ in 0..100_000 {
        while let Some(action) = s.next_action() {
            match action {
                Action::Progress(_) => {}
                Action::Finished(outcome) => return (outcome, moves),
                Action::Run { node, order } => queues[node].push_back(order),
                other => {
                    let answer = cluster.answer(&other, job);
                    s.handle(answer);
                }
            }
        }
        if let Some(to) = (0..nodes).find(|n| queues[*n].is_empty() && !cluster.nodes[*n].dead) {
            let from = (0..nodes).max_by_key(|n| (queues[*n].len(), *n)).unwrap();
            // The front of a queue is the task the node is running: never taken back.
            let waiting = queues[from].iter().enumerate().skip(1);
            if let Some((at, _)) = waiting.rev().find(|(_, o)| s.movable(o.task, from, to)) {
                let order = queues[from].remove(at).unwrap();
                moves += 1;
                s.handle(Event::Moved { from, task: order.task, to });
                continue;
            }
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let busy: Vec<NodeId> = (0..nodes).filter(|n| !queues[*n].is_empty()).collect();
        assert!(!busy.is_empty(), "the scheduler waits for nothing");
        let node = busy[(rng % busy.len() as u64) as usize];
        let order = queues[node].pop_front().unwrap();
        let event = cluster.run_task(node, &order, job);
        s.handle(event);
    }
    panic!("the job never ended");
}

/// The scheduler after its first round of orders, over `nodes` fake nodes, with the orders.
fn started(job: &Job, nodes: usize, options: Options) -> (Scheduler, Cluster, Vec<(NodeId, Order)>) {
    let mut cluster = Cluster::new(nodes);
    let own: BTreeSet<Handle> = job.objects.keys().copied().collect();
    let mut s = Scheduler::new(job.graph(), own, nodes, options);
    s.start();
    let mut orders = Vec::new();
    while let Some(action) = s.next_action() {
        match action {
            Action::Run { node, order } => orders.push((node, order)),
            Action::Progress(_) => {}
            Action::Finished(outcome) => panic!("over before it ran: {outcome:?}"),
            other => {
                let answer = cluster.answer(&other, job);
                s.handle(answer);
            }
        }
    }
    (s, cluster, orders)
}

#[test]
fn a_task_with_small_inputs_moves_to_the_idle_node_it_is_given() {
    let job = map_reduce(9, 1000);
    let (mut s, cluster, orders) = started(&job, 3, options());
    assert_eq!(orders.len(), 9, "every map task is sent at once");
    let (from, order) = orders.iter().find(|(n, _)| *n == 1).unwrap();
    assert!(s.movable(order.task, *from, 2));
    s.handle(Event::Moved { from: *from, task: order.task, to: 2 });
    let runs: Vec<(NodeId, Order)> = std::iter::from_fn(|| s.next_action())
        .filter_map(|a| match a {
            Action::Run { node, order } => Some((node, order)),
            _ => None,
        })
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!((runs[0].0, runs[0].1.task, runs[0].1.applied), (2, order.task, order.applied));
    // The input node 2 lacks comes with the order: it holds nothing yet.
    assert!(!runs[0].1.uploads.is_empty() || !runs[0].1.fetches.is_empty());
    // Taken back: node 1 is no longer working on it, so its late answer counts for nothing.
    assert!(!s.movable(order.task, 1, 0), "no longer node 1's");
    drop(cluster);
}

#[test]
fn a_task_whose_data_is_where_it_was_sent_stays_there() {
    // Spread: each 1 MiB blob on one node, its map task sent there.
    let job = map_reduce(6, 1 << 20);
    let spread = Options { spread: true, ..options() };
    let (mut s, _cluster, orders) = started(&job, 3, spread);
    let (from, order) = orders.iter().find(|(n, _)| *n == 1).unwrap();
    assert!(order.fetches.is_empty() && order.uploads.is_empty(), "sent where its data is");
    assert!(!s.movable(order.task, *from, 2), "a MiB is more than the tie band");
    // A driver that moves it anyway: it goes back where placement puts it, with nothing to move.
    s.handle(Event::Moved { from: *from, task: order.task, to: 2 });
    let run = std::iter::from_fn(|| s.next_action()).find_map(|a| match a {
        Action::Run { node, order } => Some((node, order)),
        _ => None,
    });
    let (node, again) = run.expect("placed again");
    assert_eq!(node, 1);
    assert!(again.fetches.is_empty() && again.uploads.is_empty());
    // Fix's rule moves nothing to a node lacking more; random placement moves anything.
    let strict = Options { placement: Placement::MinAbsent, ..spread };
    let (s, _, orders) = started(&job, 3, strict);
    let (from, order) = &orders[0];
    assert!(!s.movable(order.task, *from, (*from + 1) % 3));
    let random = Options { placement: Placement::Random, ..spread };
    let (s, _, orders) = started(&job, 3, random);
    let (from, order) = &orders[0];
    assert!(s.movable(order.task, *from, (*from + 1) % 3));
}

#[test]
fn moves_the_scheduler_did_not_agree_to_are_refused_or_ignored() {
    let job = map_reduce(6, 1000);
    let (mut s, _cluster, orders) = started(&job, 3, options());
    let (from, order) = orders.iter().find(|(n, _)| *n == 1).unwrap();
    let task = order.task;
    assert!(!s.movable(task, *from, *from), "to itself");
    assert!(!s.movable(task, 0, 2), "node 0 is not working on it");
    assert!(!s.movable(task, *from, 3), "no node 3");
    assert!(!s.movable(999, *from, 2), "no task 999");
    // A node lost takes no work.
    s.handle(Event::Lost { node: 2, why: "gone".into() });
    let _: Vec<Action> = std::iter::from_fn(|| s.next_action()).collect();
    assert!(!s.movable(task, *from, 2));
    // A move of a task the node was not working on changes nothing.
    let not_its = orders.iter().find(|(n, _)| *n == 0).map(|(_, o)| o.task).unwrap();
    s.handle(Event::Moved { from: 1, task: not_its, to: 0 });
    s.handle(Event::Moved { from: 1, task: 999, to: 0 });
    let runs = std::iter::from_fn(|| s.next_action()).filter(|a| matches!(a, Action::Run { .. })).count();
    assert_eq!(runs, 0);
}

#[test]
fn verification_never_moves_the_second_copy_to_the_first_copys_node() {
    let job = map_reduce(4, 1000);
    let verify = Options { verify: true, ..options() };
    let mut cluster = Cluster::new(3);
    let own: BTreeSet<Handle> = job.objects.keys().copied().collect();
    let mut s = Scheduler::new(job.graph(), own, 3, verify);
    s.start();
    // Run first copies until a second copy is sent; it may not move to the first's node.
    let mut checked = false;
    let mut first_node = std::collections::HashMap::new();
    for _ in 0..1000 {
        let Some(action) = s.next_action() else { break };
        match action {
            Action::Run { node, order } => {
                if let Some(&first) = first_node.get(&order.task) {
                    assert_ne!(node, first);
                    assert!(!s.movable(order.task, node, first), "the first copy's node");
                    checked = true;
                    break;
                }
                first_node.insert(order.task, node);
                let event = cluster.run_task(node, &order, &job);
                s.handle(event);
            }
            Action::Progress(_) => {}
            Action::Finished(outcome) => panic!("{outcome:?}"),
            other => {
                let answer = cluster.answer(&other, &job);
                s.handle(answer);
            }
        }
    }
    assert!(checked, "a second copy was sent");
}

#[test]
fn moving_the_tail_never_changes_the_result_and_bounds_the_bytes() {
    let mut moved_some = 0;
    for seed in 1..40u64 {
        for (job, spread) in [(map_reduce(12, 1000), false), (map_reduce(9, 256 << 10), true)] {
            for placement in [Placement::Locality, Placement::MinAbsent, Placement::Random] {
                let options = Options { placement, spread, seed, ..options() };
                let mut still = Cluster::new(3);
                still.rng = seed;
                let without = still.run(&job, options).unwrap();
                let mut cluster = Cluster::new(3);
                let (report, moves) = run_with_moves(&mut cluster, &job, options, seed);
                let report = report.unwrap();
                assert_eq!(report.result, Some(job.expected()), "seed {seed} {placement:?}");
                assert_eq!(report.dispatched, report.tasks + moves, "a move is one more order");
                moved_some += moves;
                if placement != Placement::Random {
                    let bound = without.moved_bytes + moves as u64 * SMALL_INPUTS;
                    assert!(report.moved_bytes <= bound, "seed {seed}: {} > {bound}", report.moved_bytes);
                }
            }
        }
    }
    assert!(moved_some > 100, "the tails moved tasks: {moved_some}");
}
