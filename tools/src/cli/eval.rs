//! `cairn eval`: a task applied to arguments (or a job file's root), on one running node or,
//! with `--cluster`, across a cluster.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use cairn_object::{Handle, Kind, Limits};
use cairn_tools::client::Client;
use cairn_tools::cluster::{handoff, lifecycle, run};
use cairn_tools::untrusted::escape;
use clap::{Args, ValueEnum};

use super::cluster::DEFAULT_CLUSTER_STATE;
use super::{NodeAddress, print_value};

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub node: NodeAddress,
    /// The task's ELF file (or give --job).
    #[arg(required_unless_present = "job")]
    pub task: Option<PathBuf>,
    /// Arguments: a handle (e.g. blob:=68656c6c6f), or a file whose bytes become a blob.
    pub args: Vec<String>,
    /// Memory limit of the application, in MiB.
    #[arg(long, default_value_t = 16)]
    pub task_memory: u64,
    /// Evaluate the root of a job file (docs/IO.md) instead of TASK ARGS; it may not do IO.
    #[arg(long, value_name = "JOB.toml", conflicts_with = "task")]
    pub job: Option<PathBuf>,
    /// Boot a node for this evaluation (and stop it after) instead of using a running one.
    #[arg(long, conflicts_with = "cluster")]
    pub boot: bool,
    /// Run across the cluster whose state file this is (docs/CLUSTER.md) instead of on --node.
    #[arg(long, value_name = "STATE", num_args = 0..=1, default_missing_value = DEFAULT_CLUSTER_STATE)]
    pub cluster: Option<PathBuf>,
    /// With --cluster: run every task on two different nodes and compare their results.
    #[arg(long, requires = "cluster")]
    pub verify: bool,
    /// With --cluster: where ready tasks go.
    #[arg(long, value_enum, default_value_t = PlacementArg::Locality, requires = "cluster")]
    pub placement: PlacementArg,
    /// With --cluster: start with the data spread over the nodes, round robin.
    #[arg(long, requires = "cluster")]
    pub spread: bool,
    /// With --cluster: write the result's bytes to this file.
    #[arg(short, long, value_name = "FILE", requires = "cluster")]
    pub output: Option<PathBuf>,
    /// With --cluster: the seed of random placement.
    #[arg(long, default_value_t = 1, requires = "cluster")]
    pub seed: u64,
    /// With --cluster: who runs the scheduler: a node of the cluster (the job is handed to it
    /// and followed), or this host.
    #[arg(long, value_enum, default_value_t = CoordinatorArg::Node, requires = "cluster")]
    pub coordinator: CoordinatorArg,
    /// With --cluster --coordinator host: write how long each task ran, as JSON, for `cairn sim
    /// --durations`.
    #[arg(long, value_name = "FILE", requires = "cluster")]
    pub record_durations: Option<PathBuf>,
    /// With --cluster: the node the job is handed to first (others follow if it dies).
    #[arg(long, value_name = "N", default_value_t = 0, requires = "cluster")]
    pub via: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CoordinatorArg {
    /// A node of the cluster coordinates (docs/SCHEDULER.md, "Nodes coordinate").
    Node,
    /// This host coordinates, talking to every node itself.
    Host,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum PlacementArg {
    /// Where the fewest input bytes must move; by load when inputs are small.
    Locality,
    /// Strictly where the fewest input bytes must move, whatever the load (Fix's rule).
    MinAbsent,
    /// Anywhere, at random (the baseline to compare with).
    Random,
}

/// Objects to upload, with their bytes.
type ObjectList = Vec<(Handle, Vec<u8>)>;

pub fn eval(args: &EvalArgs) -> anyhow::Result<ExitCode> {
    let (root, objects) = eval_objects(args)?;
    if let Some(state) = &args.cluster {
        return eval_on_cluster(args, state, root, objects);
    }
    // A node booted for this command lives until the evaluation is over.
    let (_booted, address) = match args.boot {
        true => {
            let (vm, address) = super::boot::boot_serving()?;
            (Some(vm), address)
        }
        false => (None, args.node.node.clone()),
    };
    let mut client = Client::connect(&address)?;
    // Upload only what the node lacks.
    let uploaded = client.upload_missing(&objects)?;
    // A failure comes back as an error whose text the client has escaped.
    let evaluated = client.eval(root)?;
    eprintln!(
        "cairn: {} ({} tasks run, {} memo hits, {} us; uploaded {} of {} objects)",
        root,
        evaluated.tasks_run,
        evaluated.memo_hits,
        evaluated.micros,
        uploaded,
        objects.len()
    );
    println!("{}", evaluated.result);
    if evaluated.result.size() <= 64 {
        print_value(&mut client, evaluated.result)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The root and every object of what `eval` was asked to evaluate.
fn eval_objects(args: &EvalArgs) -> anyhow::Result<(Handle, ObjectList)> {
    if let Some(job) = &args.job {
        let job = cairn_tools::jobfile::JobFile::read(job)?;
        anyhow::ensure!(
            job.manifest.grants().is_empty(),
            "eval runs pure work; a job with capabilities goes to `cairn submit`"
        );
        return Ok((job.root, job.objects));
    }
    let task = args.task.as_ref().context("give TASK.elf or --job")?;
    let elf = std::fs::read(task).with_context(|| format!("cannot read {}", task.display()))?;
    let mut objects: ObjectList = vec![(Handle::blob(&elf), elf)];
    let mut arg_handles = Vec::new();
    for arg in &args.args {
        match arg.parse::<Handle>() {
            Ok(handle) => arg_handles.push(handle),
            Err(_) => {
                let bytes = std::fs::read(arg)
                    .with_context(|| format!("{arg} is neither a handle nor a readable file"))?;
                let handle = Handle::blob(&bytes);
                arg_handles.push(handle);
                objects.push((handle, bytes));
            }
        }
    }
    let limits = Limits::new(args.task_memory << 20).map_err(|p| anyhow::anyhow!("memory limit: {p}"))?;
    let thunk_bytes = cairn_object::thunk::encode(limits, objects[0].0, &arg_handles)
        .map_err(|p| anyhow::anyhow!("{p}"))?;
    let thunk = cairn_object::store::name(Kind::Thunk, &thunk_bytes)?;
    objects.push((thunk, thunk_bytes));
    Ok((thunk, objects))
}

fn eval_on_cluster(
    args: &EvalArgs,
    state: &Path,
    root: Handle,
    objects: ObjectList,
) -> anyhow::Result<ExitCode> {
    let state = lifecycle::State::read(state)?;
    let options = cairn_sched::Options {
        placement: match args.placement {
            PlacementArg::Locality => cairn_sched::Placement::Locality,
            PlacementArg::MinAbsent => cairn_sched::Placement::MinAbsent,
            PlacementArg::Random => cairn_sched::Placement::Random,
        },
        verify: args.verify,
        spread: args.spread,
        recall: true,
        seed: args.seed,
    };
    if args.coordinator == CoordinatorArg::Node {
        anyhow::ensure!(
            args.record_durations.is_none(),
            "--record-durations needs --coordinator host (a coordinating node reports no task's time)"
        );
        return eval_handed(args, &state, root, &objects, &options);
    }
    let objects: HashMap<_, _> = objects.into_iter().collect();
    let graph = cairn_sched::Graph::build(root, usize::MAX, |h| objects.get(h).cloned())
        .map_err(anyhow::Error::msg)?;
    // Progress lines quote nodes only through errors the client has escaped.
    let report = run::run(graph, &objects, &state.nodes, options, &mut |line| eprintln!("{line}"))?;
    let result = report.job.result.ok_or_else(|| anyhow::anyhow!("the evaluation ended without a result"))?;
    let runs: Vec<String> = report.job.runs.iter().map(|(node, n)| format!("node {node}: {n}")).collect();
    eprintln!(
        "cairn: {} tasks on {} nodes in {:.2} s ({}; {} from memos); moved between nodes {} bytes, uploaded {} bytes{}",
        report.job.tasks,
        state.nodes.len(),
        report.wall.as_secs_f64(),
        if runs.is_empty() { "none run".to_string() } else { runs.join(", ") },
        report.job.recalled,
        report.job.moved_bytes,
        report.job.uploaded_bytes,
        if report.job.lost_nodes.is_empty() {
            String::new()
        } else {
            format!("; lost nodes {:?}", report.job.lost_nodes)
        }
    );
    if let Some(path) = &args.record_durations {
        let recorded = serde_json::json!({
            "leaf_us": report.durations.leaf_us,
            "inner_us": report.durations.inner_us,
        });
        std::fs::write(path, recorded.to_string())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("{result}");
    if args.verify {
        if report.job.mismatches.is_empty() {
            println!("verify: every task gave the same result on two nodes");
        } else {
            for m in &report.job.mismatches {
                println!(
                    "verify: MISMATCH {}: node {} -> {}, node {} -> {}",
                    m.thunk, m.first.0, m.first.1, m.second.0, m.second.1
                );
            }
            return Ok(ExitCode::FAILURE);
        }
    }
    write_value(args, report.value.as_deref())?;
    Ok(ExitCode::SUCCESS)
}

/// The result's bytes: to `--output`, or printed if they are short text.
fn write_value(args: &EvalArgs, value: Option<&[u8]>) -> anyhow::Result<()> {
    if let Some(path) = &args.output {
        let value = value.ok_or_else(|| anyhow::anyhow!("the result's bytes were not fetched"))?;
        std::fs::write(path, value).with_context(|| format!("cannot write {}", path.display()))?;
    } else if let Some(text) = value.filter(|v| v.len() <= 4096).and_then(|v| std::str::from_utf8(v).ok()) {
        // A task's text: on one line, its controls and line breaks escaped.
        println!("{}", escape(text.trim_end()));
    }
    Ok(())
}

/// `--coordinator node`: the job handed to a node, which coordinates it; the same summary as
/// the host's, from the node's report.
fn eval_handed(
    args: &EvalArgs,
    state: &lifecycle::State,
    root: Handle,
    objects: &ObjectList,
    options: &cairn_sched::Options,
) -> anyhow::Result<ExitCode> {
    let handed =
        handoff::run(root, objects, &state.nodes, args.via, options, &mut |line| eprintln!("{line}"))?;
    // The report names nodes by cluster address: back to the host's numbers.
    let node = |address: &str| {
        state
            .nodes
            .iter()
            .find(|n| n.cluster_ip.map(|b| b.to_string()).join(".") == address)
            .map_or_else(|| format!("node {}", escape(address)), |n| format!("node {}", n.index))
    };
    let field = |key: &str| handed.report.get(key).map(String::as_str).unwrap_or("");
    let runs: Vec<String> = field("runs")
        .split(',')
        .filter_map(|r| r.rsplit_once(':'))
        .map(|(address, count)| format!("{}: {}", node(address), escape(count)))
        .collect();
    let lost: Vec<String> = field("lost").split(',').filter(|a| !a.is_empty()).map(node).collect();
    eprintln!(
        "cairn: {} tasks on {} nodes in {:.2} s ({}; {} from memos); moved between nodes {} bytes, uploaded {} bytes{}; coordinated by node {}{}",
        handed.count("tasks"),
        state.nodes.len(),
        handed.wall.as_secs_f64(),
        if runs.is_empty() { "none run".to_string() } else { runs.join(", ") },
        handed.count("recalled"),
        handed.count("moved_bytes"),
        handed.count("uploaded_bytes"),
        if lost.is_empty() { String::new() } else { format!("; lost {}", lost.join(", ")) },
        handed.coordinator,
        if handed.failed.is_empty() {
            String::new()
        } else {
            let failed: Vec<String> = handed.failed.iter().map(|(n, _)| n.to_string()).collect();
            format!(" (after node {} failed)", failed.join(", "))
        },
    );
    for bad in field("bad_peer").lines().filter(|l| !l.is_empty()) {
        let (address, why) = bad.split_once(' ').unwrap_or((bad, ""));
        eprintln!("cairn: {} sending wrong bytes: {}", node(address), escape(why));
    }
    println!("{}", handed.result);
    if args.verify {
        if handed.count("mismatches") == 0 {
            println!("verify: every task gave the same result on two nodes");
        } else {
            for m in field("mismatch").lines() {
                // `thunk first=value second=value`, as the node wrote it.
                let mut parts = m.split(' ');
                let thunk = parts.next().unwrap_or("");
                let sides: Vec<String> = parts
                    .filter_map(|p| p.split_once('='))
                    .map(|(address, value)| format!("{} -> {}", node(address), escape(value)))
                    .collect();
                println!("verify: MISMATCH {}: {}", escape(thunk), sides.join(", "));
            }
            return Ok(ExitCode::FAILURE);
        }
    }
    write_value(args, handed.value.as_deref())?;
    Ok(ExitCode::SUCCESS)
}
