//! The simulator: the same configuration gives the same run, and the scheduler's guarantees
//! hold over many seeds of faults (docs/SCHEDULER.md, "Simulation").

use cairn_sched::sim::{self, Config, Faults, Workload};
use cairn_sched::{Options, Placement};

fn options(placement: Placement) -> Options {
    Options { placement, verify: false, spread: true, recall: true, seed: 1 }
}

fn map_reduce(maps: usize, input_bytes: u64) -> Workload {
    Workload::MapReduce {
        maps,
        input_bytes,
        output_bytes: 4096,
        map_us: 50_000,
        fan_in: 8,
        reduce_us: 10_000,
    }
}

fn no_clock() -> u64 {
    0
}

fn run(config: &Config) -> sim::Outcome {
    sim::run(config, &mut no_clock)
}

fn faulty(seed: u64) -> Faults {
    Faults { seed, drop: 0.01, jitter_us: 500, crashes: 2, partitions: 1, slow: 1, corrupt: 1, wrong: 0 }
}

#[test]
fn the_same_seed_gives_the_same_run_and_another_seed_another() {
    let mut config = Config::new(8, map_reduce(100, 1 << 20), options(Placement::Locality));
    config.faults = faulty(5);
    let first = run(&config);
    assert_eq!(run(&config), first);
    assert!(first.result.is_ok() && first.events > 100, "{first:?}");
    config.faults.seed = 6;
    assert_ne!(run(&config).trace, first.trace);
}

#[test]
fn faults_never_change_the_result_and_no_caught_node_gets_work() {
    for placement in [Placement::Locality, Placement::MinAbsent, Placement::Random] {
        let clean = run(&Config::new(6, map_reduce(40, 256 << 10), options(placement)));
        let expected = clean.result.clone().unwrap();
        assert_eq!(clean.dispatched, clean.tasks, "a fault-free run runs each task once");
        for seed in 1..60 {
            let mut config = Config::new(6, map_reduce(40, 256 << 10), options(placement));
            config.faults = faulty(seed);
            let outcome = run(&config);
            assert_eq!(outcome.result, Ok(expected), "{placement:?} seed {seed}: {outcome:?}");
            assert_eq!(outcome.ran_on_caught, 0, "{placement:?} seed {seed}");
        }
    }
}

#[test]
fn a_long_chain_ends_with_its_result_under_faults() {
    let chain = Workload::Chain { length: 200, input_bytes: 10_000, output_bytes: 100, task_us: 1000 };
    let expected = run(&Config::new(4, chain, options(Placement::Locality))).result.unwrap();
    for seed in 1..20 {
        let mut config = Config::new(4, chain, options(Placement::Locality));
        config.faults = faulty(seed);
        assert_eq!(run(&config).result, Ok(expected), "seed {seed}");
    }
}

#[test]
fn locality_moves_no_more_than_random_placement_beyond_the_band() {
    for seed in 1..30 {
        let mut moved = Vec::new();
        for placement in [Placement::Locality, Placement::Random] {
            let mut config = Config::new(10, map_reduce(200, 4 << 20), options(placement));
            config.options.seed = seed;
            config.faults = Faults { seed, jitter_us: 2000, ..Faults::default() };
            let outcome = run(&config);
            assert!(outcome.result.is_ok());
            moved.push(outcome.moved_bytes);
        }
        // The bound of docs/SCHEDULER.md: each placement may give up at most 64 KiB of
        // locality to balance load.
        let bound = 64 * 1024 * 226;
        assert!(moved[0] <= moved[1] + bound, "seed {seed}: locality {} random {}", moved[0], moved[1]);
        assert!(moved[0] * 4 < moved[1], "seed {seed}: locality {} random {}", moved[0], moved[1]);
    }
}

#[test]
fn verification_names_a_node_that_computes_wrong() {
    let mut config =
        Config::new(4, map_reduce(20, 1000), Options { verify: true, ..options(Placement::Locality) });
    config.faults = Faults { seed: 3, wrong: 1, ..Faults::default() };
    let outcome = run(&config);
    assert!(outcome.mismatches > 0, "{outcome:?}");
    assert_eq!(outcome.dispatched, 2 * outcome.tasks);
}

#[test]
fn recorded_durations_replace_the_model_by_kind_and_the_seed_fixes_the_draws() {
    // A chain on one node runs its tasks one after another: the makespan is their sum.
    let chain = Workload::Chain { length: 20, input_bytes: 4096, output_bytes: 64, task_us: 1_000 };
    let mut config = Config::new(1, chain, options(Placement::Locality));
    let modelled = run(&config);
    // Every chain task after the first takes another's value: the first is the only leaf.
    config.recorded = Some(sim::Recorded { leaf_us: vec![7_000_000], inner_us: vec![1_000_000, 3_000_000] });
    let recorded = run(&config);
    assert_eq!(recorded.result, modelled.result, "durations change when, never what");
    assert!(modelled.makespan_us < 1_000_000, "{modelled:?}");
    // 7 s for the leaf, then 19 draws of 1 or 3 s: between 26 and 64 s, and not all alike.
    let ms = recorded.makespan_us;
    assert!((26_000_000..64_000_000).contains(&ms) && ms > 26_100_000 && ms < 63_900_000, "{recorded:?}");
    assert_eq!(run(&config), recorded, "the same seed draws the same durations");
    config.faults.seed = 2;
    assert_ne!(run(&config).makespan_us, ms, "another seed, other draws");
    // Only inner durations recorded: the leaf draws from them too.
    config.recorded = Some(sim::Recorded { leaf_us: vec![], inner_us: vec![2_000_000] });
    let inner_only = run(&config);
    assert!((40_000_000..41_000_000).contains(&inner_only.makespan_us), "{inner_only:?}");
}
