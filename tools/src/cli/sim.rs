//! `cairn sim`: the scheduler (`cairn_sched`) over a simulated cluster, on the host, in virtual
//! time (docs/SCHEDULER.md, "Simulation"). The same arguments give the same run; its trace
//! digest says so.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::bail;
use cairn_sched::sim::{self, Config, Faults, Network, Workload};
use cairn_sched::{Options, Placement};
use clap::{Args, ValueEnum};

#[derive(Args)]
pub struct SimArgs {
    /// Simulated nodes.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub nodes: u64,
    /// The job's shape.
    #[arg(long, value_enum, default_value_t = WorkloadArg::MapReduce)]
    pub workload: WorkloadArg,
    /// Map tasks (map-reduce; reduces come on top), or the chain's length.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub tasks: u64,
    /// Bytes of each task's own input blob.
    #[arg(long, default_value_t = 1 << 20)]
    pub input_bytes: u64,
    /// Bytes of each task's result.
    #[arg(long, default_value_t = 4096)]
    pub output_bytes: u64,
    /// Microseconds each task runs (reduces: a fifth of it).
    #[arg(long, default_value_t = 50_000)]
    pub task_us: u64,
    /// Results each reduce takes.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(2..=1_000_000))]
    pub fan_in: u64,
    /// Where ready tasks go; `all` runs the three policies on the same seed, side by side.
    #[arg(long, value_enum, default_value_t = PlacementChoice::Locality)]
    pub placement: PlacementChoice,
    /// Upload each input where it is first needed instead of spreading the data first.
    #[arg(long)]
    pub no_spread: bool,
    /// Skip the memo lookups (a fresh cluster has nothing remembered; at 1,000 nodes each
    /// round asks every node).
    #[arg(long)]
    pub no_recall: bool,
    /// Run every task on two nodes and compare.
    #[arg(long)]
    pub verify: bool,
    /// The seed of random placement and of every fault.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Chance that a message is dropped (it is sent again 200 ms later).
    #[arg(long, default_value_t = 0.0)]
    pub drop: f64,
    /// Extra delay of each message, up to this, at random.
    #[arg(long, default_value_t = 0)]
    pub jitter_us: u64,
    /// Nodes that crash at a random time in the first second.
    #[arg(long, default_value_t = 0)]
    pub crashes: usize,
    /// Nodes cut off for 20 s from a random time in the first second.
    #[arg(long, default_value_t = 0)]
    pub partitions: usize,
    /// Nodes four times slower.
    #[arg(long, default_value_t = 0)]
    pub slow: usize,
    /// Nodes that send wrong bytes for what they hold.
    #[arg(long, default_value_t = 0)]
    pub corrupt: usize,
    /// Nodes that compute wrong results (only --verify catches them).
    #[arg(long, default_value_t = 0)]
    pub wrong: usize,
    /// One-way latency of a message.
    #[arg(long, default_value_t = 100)]
    pub latency_us: u64,
    /// Bytes per second of a transfer.
    #[arg(long, default_value_t = 1_000_000_000)]
    pub bandwidth: u64,
    /// Task durations from a recorded run (`cairn eval --cluster --coordinator host
    /// --record-durations FILE`) instead of --task-us: each task draws one of its kind's.
    #[arg(long, value_name = "FILE")]
    pub durations: Option<std::path::PathBuf>,
    /// One JSON object per run instead of the text summary.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum WorkloadArg {
    MapReduce,
    Chain,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlacementChoice {
    Locality,
    MinAbsent,
    Random,
    All,
}

fn config(args: &SimArgs, placement: Placement) -> anyhow::Result<Config> {
    if !(0.0..1.0).contains(&args.drop) {
        bail!("--drop is a chance: at least 0 and below 1");
    }
    let tasks = usize::try_from(args.tasks)?;
    let workload = match args.workload {
        WorkloadArg::MapReduce => Workload::MapReduce {
            maps: tasks,
            input_bytes: args.input_bytes,
            output_bytes: args.output_bytes,
            map_us: args.task_us,
            fan_in: usize::try_from(args.fan_in)?,
            reduce_us: args.task_us / 5,
        },
        WorkloadArg::Chain => Workload::Chain {
            length: tasks,
            input_bytes: args.input_bytes,
            output_bytes: args.output_bytes,
            task_us: args.task_us,
        },
    };
    let options = Options {
        placement,
        verify: args.verify,
        spread: !args.no_spread,
        recall: !args.no_recall,
        seed: args.seed,
    };
    let mut config = Config::new(usize::try_from(args.nodes)?, workload, options);
    config.network = Network { latency_us: args.latency_us, bandwidth: args.bandwidth.max(1) };
    config.faults = Faults {
        seed: args.seed,
        drop: args.drop,
        jitter_us: args.jitter_us,
        crashes: args.crashes,
        partitions: args.partitions,
        slow: args.slow,
        corrupt: args.corrupt,
        wrong: args.wrong,
    };
    if let Some(path) = &args.durations {
        config.recorded = Some(recorded(path)?);
    }
    Ok(config)
}

/// Durations written by `cairn eval --record-durations`.
fn recorded(path: &std::path::Path) -> anyhow::Result<cairn_sched::sim::Recorded> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let list = |key: &str| -> anyhow::Result<Vec<u64>> {
        match value.get(key) {
            None => Ok(Vec::new()),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_u64()
                        .with_context(|| format!("{}: {key} holds {v}, not microseconds", path.display()))
                })
                .collect(),
            Some(other) => bail!("{}: {key} is {other}, not a list", path.display()),
        }
    };
    let recorded = cairn_sched::sim::Recorded { leaf_us: list("leaf_us")?, inner_us: list("inner_us")? };
    if recorded.leaf_us.is_empty() && recorded.inner_us.is_empty() {
        bail!("{} records no task's duration", path.display());
    }
    Ok(recorded)
}

fn name(placement: Placement) -> &'static str {
    match placement {
        Placement::Locality => "locality",
        Placement::MinAbsent => "min-absent",
        Placement::Random => "random",
    }
}

pub fn sim(args: &SimArgs) -> anyhow::Result<ExitCode> {
    let placements = match args.placement {
        PlacementChoice::Locality => vec![Placement::Locality],
        PlacementChoice::MinAbsent => vec![Placement::MinAbsent],
        PlacementChoice::Random => vec![Placement::Random],
        PlacementChoice::All => vec![Placement::Locality, Placement::MinAbsent, Placement::Random],
    };
    let mut failed = false;
    for placement in placements {
        let config = config(args, placement)?;
        let epoch = Instant::now();
        let outcome = sim::run(&config, &mut || epoch.elapsed().as_nanos() as u64);
        let wall = epoch.elapsed();
        let trace: String = outcome.trace.iter().map(|b| format!("{b:02x}")).collect();
        let per_task_us = outcome.scheduler_ns as f64 / 1000.0 / outcome.tasks.max(1) as f64;
        failed |= outcome.result.is_err();
        if args.json {
            let row = serde_json::json!({
                "placement": name(placement),
                "nodes": args.nodes,
                "tasks": outcome.tasks,
                "seed": args.seed,
                "result": match &outcome.result { Ok(h) => h.to_string(), Err(e) => format!("error: {e}") },
                "makespan_s": outcome.makespan_us as f64 / 1e6,
                "moved_bytes": outcome.moved_bytes,
                "uploaded_bytes": outcome.uploaded_bytes,
                "dispatched": outcome.dispatched,
                "tasks_rerun": outcome.dispatched.saturating_sub(outcome.tasks * if args.verify { 2 } else { 1 }),
                "recalled": outcome.recalled,
                "lost_nodes": outcome.lost_nodes,
                "bad_peers": outcome.bad_peers,
                "mismatches": outcome.mismatches,
                "events": outcome.events,
                "trace": trace,
                "scheduler_s": outcome.scheduler_ns as f64 / 1e9,
                "scheduler_us_per_task": per_task_us,
                "host_s": wall.as_secs_f64(),
            });
            println!("{row}");
        } else {
            match &outcome.result {
                Ok(h) => println!(
                    "sim: {} placement, {} nodes, {} tasks: {h}",
                    name(placement),
                    args.nodes,
                    outcome.tasks
                ),
                Err(e) => println!(
                    "sim: {} placement, {} nodes, {} tasks: FAILED: {e}",
                    name(placement),
                    args.nodes,
                    outcome.tasks
                ),
            }
            println!(
                "  makespan {:.3} s; moved {} bytes between nodes, uploaded {}; {} dispatched ({} tasks), {} from memos",
                outcome.makespan_us as f64 / 1e6,
                outcome.moved_bytes,
                outcome.uploaded_bytes,
                outcome.dispatched,
                outcome.tasks,
                outcome.recalled
            );
            println!(
                "  lost nodes {}, bad peers {}, mismatches {}; {} events, trace {trace}",
                outcome.lost_nodes, outcome.bad_peers, outcome.mismatches, outcome.events
            );
            println!(
                "  scheduler {:.3} s ({per_task_us:.2} us per task), host {:.3} s",
                outcome.scheduler_ns as f64 / 1e9,
                wall.as_secs_f64()
            );
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
