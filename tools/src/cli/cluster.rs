//! `cairn cluster`: nodes on one virtual L2 network in the background (up, down, status, and
//! the hidden daemon, serve). Evaluating across them is `cairn eval --cluster`.

use std::path::PathBuf;
use std::process::ExitCode;

use cairn_tools::client::Client;
use cairn_tools::cluster::lifecycle;
use cairn_tools::untrusted::escape;
use clap::{Args, Subcommand};

pub const DEFAULT_CLUSTER_STATE: &str = "cairn-cluster.json";

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Boot N nodes on one virtual L2 network (in the background) and print their API ports.
    Up(ClusterUpArgs),
    /// Stop the cluster's nodes.
    Down(ClusterStateArg),
    /// Each node of the cluster: up or down, its API, and what it holds and has run.
    Status(ClusterStateArg),
    /// The cluster's daemon (started by `up`).
    #[command(hide = true)]
    Serve(ClusterUpArgs),
}

#[derive(Args)]
pub struct ClusterStateArg {
    /// Where the cluster's state (node API ports, pids) is kept.
    #[arg(long, default_value = DEFAULT_CLUSTER_STATE)]
    pub state: PathBuf,
}

#[derive(Args)]
pub struct ClusterUpArgs {
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Guest memory of each node, in MiB.
    #[arg(long, default_value_t = 512)]
    pub memory: u32,
    /// Virtual CPUs of each node (a second one hashes uploads as they arrive).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub cpus: u32,
    #[arg(long, default_value = "tcg", value_parser = ["tcg", "kvm"])]
    pub accel: String,
    /// Give node INDEX a deliberate fault (tests): INDEX=corrupt-objects.
    #[arg(long, value_name = "INDEX=FAULT")]
    pub fault: Vec<String>,
    #[command(flatten)]
    pub state: ClusterStateArg,
}

impl ClusterUpArgs {
    fn options(&self) -> anyhow::Result<lifecycle::UpOptions> {
        Ok(lifecycle::UpOptions {
            nodes: self.nodes,
            memory_mib: self.memory,
            cpus: self.cpus,
            accel: self.accel.parse().map_err(anyhow::Error::msg)?,
            faults: self.fault.iter().map(|f| lifecycle::parse_fault(f)).collect::<anyhow::Result<_>>()?,
        })
    }
}

pub fn cluster(command: &ClusterCommand) -> anyhow::Result<ExitCode> {
    match command {
        ClusterCommand::Up(args) => {
            let state = lifecycle::up(&args.options()?, &args.state.state)?;
            for node in &state.nodes {
                let [a, b, c, d] = node.cluster_ip;
                println!(
                    "node {}  api {}  cluster {a}.{b}.{c}.{d}  qemu pid {}",
                    node.index, node.api, node.qemu_pid
                );
            }
            println!(
                "cluster up: {} nodes (state {}, consoles in {})",
                state.nodes.len(),
                args.state.state.display(),
                state.log.display()
            );
        }
        ClusterCommand::Status(args) => status(&args.state)?,
        ClusterCommand::Down(args) => {
            let state = lifecycle::down(&args.state)?;
            println!("cluster down: {} nodes stopped", state.nodes.len());
        }
        ClusterCommand::Serve(args) => {
            let mut log = std::io::stderr();
            lifecycle::serve(&args.options()?, &args.state.state, &mut log)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One line per node: up (with a few of its counters) or down (with why).
fn status(state_path: &std::path::Path) -> anyhow::Result<()> {
    let state = lifecycle::State::read(state_path)?;
    let mut down = 0;
    for node in &state.nodes {
        let [a, b, c, d] = node.cluster_ip;
        match Client::connect(&node.api).and_then(|mut c| c.stats()) {
            Ok(text) => {
                let get = |key: &str| stat(&text, key);
                println!(
                    "node {}  up    api {}  cluster {a}.{b}.{c}.{d}  objects {}  tasks_run {}  memo_entries {}  fetched_bytes {}",
                    node.index,
                    node.api,
                    get("objects"),
                    get("tasks_run"),
                    get("memo_entries"),
                    get("fetched_bytes")
                );
            }
            // The client escapes what the node said in its errors.
            Err(e) => {
                down += 1;
                println!("node {}  DOWN  api {}  cluster {a}.{b}.{c}.{d}  ({e:#})", node.index, node.api);
            }
        }
    }
    println!("{} of {} nodes up", state.nodes.len() - down, state.nodes.len());
    Ok(())
}

/// A value from a node's STATS text, escaped (it is the node's), or `?`.
fn stat(text: &str, key: &str) -> String {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=')).map_or_else(|| "?".to_string(), escape)
}

#[cfg(test)]
mod tests {
    use super::stat;

    #[test]
    fn status_shows_a_nodes_counters_escaped() {
        let text = "objects=12\ntasks_run=3\x1b[2J\r\nmemo_entries=\u{9b}1\n";
        assert_eq!(stat(text, "objects"), "12");
        assert_eq!(stat(text, "tasks_run"), "3\\x1b[2J");
        assert_eq!(stat(text, "memo_entries"), "\\u{9b}1");
        assert_eq!(stat(text, "fetched_bytes"), "?");
    }
}
