//! `cairn trace JOB.toml -o trace.json`: runs a job on a node or a cluster and gathers the spans
//! every node recorded meanwhile onto one time line (docs/TRACES.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use cairn_tools::client::Client;
use cairn_tools::cluster::lifecycle;
use cairn_tools::trace::{Clock, NodeTrace, chrome_json, cursor, spans_since, validate};
use clap::Args;

use super::NodeAddress;
use super::cluster::DEFAULT_CLUSTER_STATE;
use super::eval::{CoordinatorArg, EvalArgs, PlacementArg};

#[derive(Args)]
pub struct TraceArgs {
    /// The job file to run (docs/IO.md); it may not do IO.
    pub job: PathBuf,
    #[command(flatten)]
    pub node: NodeAddress,
    /// Run it across the cluster whose state file this is, and trace every node.
    #[arg(long, value_name = "STATE", num_args = 0..=1, default_missing_value = DEFAULT_CLUSTER_STATE, conflicts_with = "boot")]
    pub cluster: Option<PathBuf>,
    /// Boot a node for the job instead of using a running one.
    #[arg(long)]
    pub boot: bool,
    /// With --cluster: start with the job's data spread over the nodes, round robin.
    #[arg(long, requires = "cluster")]
    pub spread: bool,
    /// With --cluster: the host coordinates the job instead of a node.
    #[arg(long, value_enum, default_value_t = CoordinatorArg::Node, requires = "cluster")]
    pub coordinator: CoordinatorArg,
    /// Where to write the trace (Chrome trace-event JSON).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
}

pub fn trace(args: &TraceArgs) -> anyhow::Result<ExitCode> {
    let (_booted, address) = match args.boot {
        true => {
            let (vm, address) = super::boot::boot_serving()?;
            (Some(vm), address)
        }
        false => (None, args.node.node.clone()),
    };
    // The nodes to trace: their names on the trace and their APIs.
    let nodes: Vec<(String, String)> = match &args.cluster {
        Some(state) => lifecycle::State::read(state)?
            .nodes
            .iter()
            .map(|n| {
                (
                    format!("node {} ({})", n.index, n.cluster_ip.map(|b| b.to_string()).join(".")),
                    n.api.clone(),
                )
            })
            .collect(),
        None => vec![(format!("node {address}"), address.clone())],
    };
    let epoch = Instant::now();
    let mut cursors = Vec::new();
    for (name, api) in &nodes {
        let mut client = Client::connect(api).with_context(|| name.to_string())?;
        cursors.push(cursor(&mut client, epoch).with_context(|| format!("{name}: reading its trace"))?);
    }
    let eval = EvalArgs {
        node: NodeAddress { node: address },
        task: None,
        args: Vec::new(),
        task_memory: 16,
        job: Some(args.job.clone()),
        boot: false,
        cluster: args.cluster.clone(),
        verify: false,
        placement: PlacementArg::Locality,
        spread: args.spread,
        output: None,
        seed: 1,
        coordinator: args.coordinator,
        via: 0,
        record_durations: None,
    };
    let code = super::eval::eval(&eval)?;
    let mut traces = Vec::new();
    for ((name, api), (since, before)) in nodes.iter().zip(cursors) {
        // A node that died during the job has no trace to give: the others still make one.
        let gathered = Client::connect(api).and_then(|mut c| spans_since(&mut c, epoch, since));
        match gathered {
            Ok((spans, lost, after)) => {
                let clock = Clock { node_us: (before.0, after.0), trace_us: (before.1, after.1) };
                traces.push(NodeTrace { name: name.clone(), spans, clock, lost })
            }
            Err(e) => eprintln!("cairn: {name}: no trace ({e:#})"),
        }
    }
    let json = chrome_json(&traces);
    validate(&json)?;
    std::fs::write(&args.output, json.to_string())
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    let spans: usize = traces.iter().map(|t| t.spans.len()).sum();
    let lost: u64 = traces.iter().map(|t| t.lost).sum();
    eprintln!(
        "cairn: trace of {spans} spans from {} nodes{} written to {} (open it in https://ui.perfetto.dev)",
        traces.len(),
        if lost > 0 { format!(" ({lost} lost: the ring was full)") } else { String::new() },
        args.output.display()
    );
    Ok(code)
}
