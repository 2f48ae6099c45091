//! The scheduler against fake clusters: the job's result whatever fails, memo first, suspects,
//! verification and the limits on retries (docs/SCHEDULER.md).

mod common;

use cairn_sched::{Action, Options, Placement};
use common::{Cluster, Job, map_reduce, options};
use proptest::prelude::*;

#[test]
fn a_healthy_cluster_runs_each_task_once_and_gets_the_result() {
    let job = map_reduce(20, 1000);
    let mut cluster = Cluster::new(3);
    let report = cluster.run(&job, options()).unwrap();
    assert_eq!(report.result, Some(job.expected()));
    assert_eq!(report.tasks, 21);
    assert_eq!(report.dispatched, 21);
    assert_eq!(report.runs.values().sum::<usize>(), 21);
    assert_eq!(cluster.ran_on().len(), 3, "small inputs spread over every node");
    assert!(report.lost_nodes.is_empty() && report.bad_peers.is_empty() && report.recalled == 0);
}

#[test]
fn a_second_run_is_answered_by_the_memos() {
    let job = map_reduce(10, 1000);
    let mut cluster = Cluster::new(3);
    cluster.run(&job, options()).unwrap();
    cluster.actions.clear();
    let report = cluster.run(&job, options()).unwrap();
    assert_eq!(report.result, Some(job.expected()));
    assert_eq!(report.recalled, 11);
    assert!(report.runs.is_empty());
    assert!(cluster.ran_on().is_empty(), "nothing was sent to run");
}

#[test]
fn large_inputs_pull_the_work_to_the_data() {
    // Spread: each 1 MiB blob starts on one node; its map task runs there and moves nothing.
    let job = map_reduce(6, 1 << 20);
    let mut cluster = Cluster::new(3);
    let report = cluster.run(&job, Options { spread: true, ..options() }).unwrap();
    assert_eq!(report.result, Some(job.expected()));
    // Only the reduce's inputs (the maps' small results) move.
    assert!(report.moved_bytes < 64 * 1024, "{}", report.moved_bytes);
    let random =
        Cluster::new(3).run(&job, Options { spread: true, placement: Placement::Random, ..options() });
    assert!(random.unwrap().moved_bytes >= 1 << 20, "random placement moves some blob");
}

/// A driver that handed part of the job's data to other nodes (a client's `--spread` to a
/// coordinating node) and lost the only holder of some: the job fails at once naming what it
/// lacks, and run again with that given, it ends with the same result.
#[test]
fn data_only_a_lost_node_held_is_named_as_lacking_and_given_the_rerun_ends() {
    let job = map_reduce(6, 1 << 20);
    let graph = job.graph();
    let procedures = graph.procedures();
    let data: Vec<cairn_object::Handle> =
        graph.leaves().into_iter().filter(|h| procedures.binary_search(h).is_err()).collect();
    let mut cluster = Cluster::new(3);
    // Node 1 holds two blobs and dies before it runs anything; the driver kept none of them.
    cluster.nodes[1].holds.extend([data[0], data[1]]);
    cluster.nodes[1].dies_after = Some(0);
    let own: std::collections::BTreeSet<_> =
        job.objects.keys().copied().filter(|h| *h != data[0] && *h != data[1]).collect();
    let (outcome, lacking) = cluster.run_owning(&job, options(), own);
    let why = outcome.unwrap_err();
    let lacked = lacking.expect("the failure names what the job lacked");
    assert!(lacked == data[0] || lacked == data[1], "{lacked}");
    assert!(why.contains(&lacked.to_string()), "{why}");
    // Given everything, the same cluster (node 1 still dead) ends the job with its result.
    let report = cluster.run(&job, options()).unwrap();
    assert_eq!(report.result, Some(job.expected()));
}

#[test]
fn a_node_lost_mid_job_changes_nothing_but_where_tasks_run() {
    let job = map_reduce(12, 1000);
    let mut cluster = Cluster::new(3);
    cluster.nodes[1].dies_after = Some(2);
    let report = cluster.run(&job, options()).unwrap();
    assert_eq!(report.result, Some(job.expected()));
    assert_eq!(report.lost_nodes, [1]);
}

#[test]
fn results_only_a_lost_node_held_are_computed_again() {
    // A chain: each task needs the one before, so the lost node's results are needed later.
    let shape: Vec<Vec<Result<usize, usize>>> =
        (0..8).map(|i| if i == 0 { vec![Err(100)] } else { vec![Ok(i - 1), Err(50)] }).collect();
    let job = Job::new(&shape);
    for victim in 0..3 {
        for after in 0..4 {
            let mut cluster = Cluster::new(3);
            cluster.nodes[victim].dies_after = Some(after);
            let report = cluster.run(&job, options()).unwrap();
            assert_eq!(report.result, Some(job.expected()), "node {victim} dies after {after}");
        }
    }
}

#[test]
fn a_peer_caught_lying_is_never_used_again() {
    let job = map_reduce(6, 1 << 20);
    let mut cluster = Cluster::new(3);
    cluster.nodes[0].lies_in_fetches = true;
    let report = cluster.run(&job, Options { spread: true, ..options() }).unwrap();
    assert_eq!(report.result, Some(job.expected()));
    assert!(report.bad_peers.iter().all(|(n, _)| *n == 0) && !report.bad_peers.is_empty());
    // After the first report naming it, no task goes to node 0.
    let caught = cluster
        .actions
        .iter()
        .position(|a| matches!(a, Action::Progress(l) if l.contains("caught node 0")))
        .unwrap();
    assert!(cluster.actions[caught..].iter().all(|a| !matches!(a, Action::Run { node: 0, .. })));
}

#[test]
fn verification_runs_every_task_twice_and_names_a_node_that_computes_wrong() {
    let job = map_reduce(4, 1000);
    let report = Cluster::new(2).run(&job, Options { verify: true, ..options() }).unwrap();
    assert_eq!(report.dispatched, 10);
    assert!(report.mismatches.is_empty());
    let mut cluster = Cluster::new(2);
    cluster.nodes[1].computes_wrong = true;
    let report = cluster.run(&job, Options { verify: true, ..options() }).unwrap();
    assert!(!report.mismatches.is_empty());
    assert!(report.mismatches.iter().all(|m| m.first.0 != m.second.0));
    assert_eq!(
        Cluster::new(1).run(&job, Options { verify: true, ..options() }).unwrap_err(),
        "--verify needs at least two nodes"
    );
}

#[test]
fn node_failures_run_elsewhere_a_few_times_and_task_failures_end_the_job() {
    let job = map_reduce(3, 1000);
    let mut cluster = Cluster::new(3);
    cluster.nodes[0].fails_with = Some("timeout".into());
    let report = cluster.run(&job, options()).unwrap();
    assert_eq!(report.result, Some(job.expected()));
    let mut cluster = Cluster::new(3);
    for n in &mut cluster.nodes {
        n.fails_with = Some("timeout".into());
    }
    let why = cluster.run(&job, options()).unwrap_err();
    assert!(why.contains("failed on node") && why.ends_with("timeout"), "{why}");
    let mut cluster = Cluster::new(3);
    cluster.nodes[2].fails_with = Some("trap: page fault".into());
    cluster.nodes[1].fails_with = Some("trap: page fault".into());
    cluster.nodes[0].fails_with = Some("trap: page fault".into());
    assert!(cluster.run(&job, options()).unwrap_err().ends_with("trap: page fault"));
}

#[test]
fn a_cluster_with_every_node_dead_says_so() {
    let job = map_reduce(3, 1000);
    let mut cluster = Cluster::new(2);
    cluster.nodes.iter_mut().for_each(|n| n.dead = true);
    assert_eq!(cluster.run(&job, options()).unwrap_err(), "every node is lost");
    assert_eq!(Cluster::new(0).run(&job, options()).unwrap_err(), "the cluster has no nodes");
}

/// A random graph: each thunk takes a few earlier thunks and blobs.
fn shapes() -> impl Strategy<Value = Vec<Vec<Result<usize, usize>>>> {
    (2usize..25).prop_flat_map(|n| {
        proptest::collection::vec(
            proptest::collection::vec((any::<bool>(), 0usize..1000, 1usize..3000), 1..4),
            n,
        )
        .prop_map(|raw| {
            raw.into_iter()
                .enumerate()
                .map(|(i, args)| {
                    args.into_iter()
                        .map(|(thunk, pick, size)| if thunk && i > 0 { Ok(pick % i) } else { Err(size) })
                        .collect()
                })
                .collect()
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// With one honest node left alive, every job ends with the result it has without faults,
    /// whatever order tasks finish in; no task goes to a node after it was caught lying.
    #[test]
    fn faults_never_change_the_result(
        shape in shapes(),
        nodes in 2usize..5,
        deaths in proptest::collection::vec(proptest::option::of(0usize..6), 4),
        liar in proptest::option::of(0usize..4),
        seed in any::<u64>(),
        placement in prop::sample::select(vec![Placement::Locality, Placement::MinAbsent, Placement::Random]),
        spread in any::<bool>(),
    ) {
        let job = Job::new(&shape);
        let mut cluster = Cluster::new(nodes);
        cluster.rng = seed | 1;
        // Node 0 stays alive and honest.
        for (n, death) in deaths.iter().enumerate().take(nodes).skip(1) {
            cluster.nodes[n].dies_after = *death;
        }
        if let Some(l) = liar.filter(|l| *l > 0 && *l < nodes) {
            cluster.nodes[l].lies_in_fetches = true;
        }
        let report = cluster.run(&job, Options { placement, spread, seed, ..options() }).unwrap();
        prop_assert_eq!(report.result, Some(job.expected()));
        for (peer, _) in &report.bad_peers {
            let caught = cluster.actions.iter().position(|a| matches!(a, Action::Progress(l) if l.contains(&format!("caught node {peer} "))));
            if let Some(caught) = caught {
                let later = cluster.actions[caught..].iter().any(|a| matches!(a, Action::Run { node, .. } if node == peer));
                prop_assert!(!later, "a task went to node {} after it was caught", peer);
            }
        }
    }
}

#[test]
fn events_naming_unknown_nodes_or_tasks_are_ignored() {
    use cairn_sched::{Event, Scheduler};
    let job = map_reduce(3, 1000);
    let mut s = Scheduler::new(job.graph(), job.objects.keys().copied().collect(), 2, options());
    s.start();
    let h = job.root;
    for event in [
        Event::Missing { node: 9, missing: vec![] },
        Event::Uploaded { node: 2, handle: h, bytes: 1 },
        Event::Recalled { node: usize::MAX, entries: vec![(h, h)] },
        Event::Done { node: 0, task: 99, result: h, moved: 0, uploaded: 0, ran: true },
        Event::Failed { node: 5, task: 0, failure: "x".into(), why: "x".into() },
        Event::BadPeer { node: 0, task: 0, peer: 7, why: "x".into() },
        Event::FetchFailed { node: 0, task: 40, peer: 1, why: "x".into() },
        Event::ResultFetched { node: 3 },
        Event::ResultWrong { node: 3, why: "x".into() },
        Event::Lost { node: 2, why: "x".into() },
    ] {
        s.handle(event);
    }
    assert!(!s.is_over());
    // Still probing, and only the two real nodes.
    let mut asked = Vec::new();
    while let Some(action) = s.next_action() {
        match action {
            cairn_sched::Action::AskMissing { node, .. } => asked.push(node),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(asked, [0, 1]);
}

#[test]
fn on_a_large_cluster_memos_are_asked_where_the_inputs_are() {
    // 100 nodes (more than RECALL_ALL_NODES): asking each about every task would be 100 asks
    // a task; each map is asked of the node holding its input, each reduce of its inputs'.
    let job = map_reduce(200, 1 << 20);
    let mut cluster = Cluster::new(100);
    let spread = Options { spread: true, ..options() };
    cluster.run(&job, spread).unwrap();
    cluster.actions.clear();
    let report = cluster.run(&job, spread).unwrap();
    assert_eq!(report.result, Some(job.expected()));
    assert!(report.recalled >= 200, "every map answered by a memo: {report:?}");
    let asked: usize = cluster
        .actions
        .iter()
        .map(|a| match a {
            Action::Recall { thunks, .. } => thunks.len(),
            _ => 0,
        })
        .sum();
    // Two thunks a task (as written and as applied), a few likely holders each.
    assert!(asked <= 2 * 4 * report.tasks, "{asked} thunks asked for {} tasks", report.tasks);
    // Three nodes are asked about everything: a second run runs nothing.
    let mut small = Cluster::new(3);
    small.run(&job, spread).unwrap();
    let again = small.run(&job, spread).unwrap();
    assert_eq!(again.recalled, report.tasks);
}
