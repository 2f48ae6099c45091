//! `cairn cluster`: nodes on one virtual L2 network in the background (up, down, status, and
//! the hidden daemon, serve). Evaluating across them is `cairn eval --cluster`.

use std::path::PathBuf;
use std::process::ExitCode;

use cairn_tools::client::Client;
use cairn_tools::cluster::{control, daemon, lifecycle};
use cairn_tools::untrusted::escape;
use clap::{Args, Subcommand};

use super::boot;

pub const DEFAULT_CLUSTER_STATE: &str = "cairn-cluster.json";

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Boot N nodes on one virtual L2 network (in the background) and print their API ports.
    Up(ClusterUpArgs),
    /// Stop the cluster's nodes.
    Down(ClusterStateArg),
    /// Each node of the cluster: up or down, its API, and what it holds and has run.
    Status(ClusterStateArg),
    /// Put faults on the cluster's wire from now on: lost, delayed, reordered, rate-limited
    /// frames, a partition (docs/EXPERIMENTS.md); with no option, a wire without faults.
    Faults(ClusterFaultsArgs),
    /// Kill a node now, as by a power cut (its disk stays).
    Kill(ClusterNodeArg),
    /// Boot a node killed with `cluster kill` again, with its disk, keys and addresses.
    Restart(ClusterNodeArg),
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
pub struct ClusterNodeArg {
    /// The node's index.
    pub node: usize,
    #[command(flatten)]
    pub state: ClusterStateArg,
}

#[derive(Args)]
pub struct ClusterFaultsArgs {
    #[command(flatten)]
    pub faults: FaultArgs,
    #[command(flatten)]
    pub state: ClusterStateArg,
}

/// The wire's faults as options (`cairn cluster faults`).
#[derive(Args, Clone, Debug)]
pub struct FaultArgs {
    /// The probability that a frame is lost on each link it crosses (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    pub drop: f64,
    /// Latency added to every frame, in milliseconds.
    #[arg(long, default_value_t = 0.0)]
    pub delay_ms: f64,
    /// A further latency drawn for each frame, uniform from 0 to this many milliseconds.
    #[arg(long, default_value_t = 0.0)]
    pub jitter_ms: f64,
    /// The probability that a frame is held back (by --reorder-ms), so later ones overtake it.
    #[arg(long, default_value_t = 0.0)]
    pub reorder: f64,
    /// How long a reordered frame is held back, in milliseconds (5 when 0).
    #[arg(long, default_value_t = 0.0)]
    pub reorder_ms: f64,
    /// What each node may send, in KiB/s (0: no limit).
    #[arg(long, default_value_t = 0.0)]
    pub rate_kib_s: f64,
    /// Groups of nodes that reach only each other, like `0,1/2` (nodes in no group form one
    /// more group).
    #[arg(long, value_name = "GROUPS")]
    pub partition: Option<String>,
    /// The seed of the wire's draws.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl FaultArgs {
    fn links(&self) -> anyhow::Result<cairn_tools::cluster::faults::LinkFaults> {
        let partition = match &self.partition {
            None => Vec::new(),
            Some(text) => cairn_tools::cluster::faults::parse_partition(text).map_err(anyhow::Error::msg)?,
        };
        Ok(cairn_tools::cluster::faults::LinkFaults {
            drop: self.drop,
            delay_ms: self.delay_ms,
            jitter_ms: self.jitter_ms,
            reorder: self.reorder,
            reorder_ms: self.reorder_ms,
            rate_kib_s: self.rate_kib_s,
            partition,
        })
    }
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
    /// The size of each node's disk (STATE.node-I.qcow2 beside the state file) when it is made,
    /// in bytes or with K, M, G or T; a disk kept from before keeps its size.
    #[arg(long, value_name = "SIZE", value_parser = boot::parse_size, default_value = "4G")]
    pub disk_size: u64,
    /// Delete the nodes' disks first: every node starts with no objects, memo or journals.
    #[arg(long)]
    pub fresh_disks: bool,
    /// No disks: the nodes keep their objects in memory only, and lose them at `down`.
    #[arg(long, conflicts_with_all = ["fresh_disks", "disk_size"])]
    pub no_disk: bool,
    /// `cairn node`'s --disk (a global option), refused here rather than ignored.
    #[arg(long, hide = true)]
    pub disk: Option<PathBuf>,
    #[command(flatten)]
    pub state: ClusterStateArg,
}

impl ClusterUpArgs {
    fn options(&self) -> anyhow::Result<lifecycle::UpOptions> {
        if self.disk.is_some() {
            anyhow::bail!(
                "a cluster names each node's disk itself, beside its state file: choose where with --state"
            );
        }
        Ok(lifecycle::UpOptions {
            nodes: self.nodes,
            memory_mib: self.memory,
            cpus: self.cpus,
            accel: self.accel.parse().map_err(anyhow::Error::msg)?,
            faults: self.fault.iter().map(|f| lifecycle::parse_fault(f)).collect::<anyhow::Result<_>>()?,
            disks: (!self.no_disk)
                .then_some(lifecycle::DiskOptions { size: self.disk_size, fresh: self.fresh_disks }),
        })
    }
}

pub fn cluster(command: &ClusterCommand) -> anyhow::Result<ExitCode> {
    match command {
        ClusterCommand::Up(args) => {
            let lifecycle::Started { state, disks } = lifecycle::up(&args.options()?, &args.state.state)?;
            for node in &state.nodes {
                let [a, b, c, d] = node.cluster_ip;
                let made = disks.nodes.get(node.index).is_some_and(|(_, made)| *made);
                println!(
                    "node {}  api {}  cluster {a}.{b}.{c}.{d}  qemu pid {}{}",
                    node.index,
                    node.api,
                    node.qemu_pid,
                    disk_text(node.disk.as_deref(), if made { " (new)" } else { " (kept)" })
                );
            }
            println!(
                "cluster up: {} nodes (state {}, consoles in {})",
                state.nodes.len(),
                args.state.state.display(),
                state.log.display()
            );
            if !disks.unused.is_empty() {
                let names: Vec<String> = disks.unused.iter().map(|p| p.display().to_string()).collect();
                println!("disks this cluster does not use, left as they are: {}", names.join(", "));
            }
        }
        ClusterCommand::Status(args) => status(&args.state)?,
        ClusterCommand::Down(args) => {
            let state = lifecycle::down(&args.state)?;
            println!("{}", down_text(&state, &args.state));
        }
        ClusterCommand::Faults(args) => {
            let state = lifecycle::State::read(&args.state.state)?;
            let mut plan = control::read(&args.state.state)?;
            plan.links = args.faults.links()?;
            plan.seed = args.faults.seed;
            control::write(&args.state.state, state.nodes.len(), &plan)?;
            println!("cluster faults: {}", describe(&plan.links));
        }
        ClusterCommand::Kill(args) | ClusterCommand::Restart(args) => {
            let kill = matches!(command, ClusterCommand::Kill(_));
            let state_path = &args.state.state;
            let state = lifecycle::State::read(state_path)?;
            let mut plan = control::read(state_path)?;
            plan.set_down(state.nodes.len(), args.node, kill)?;
            control::write(state_path, state.nodes.len(), &plan)?;
            // In range: `set_down` checked it.
            let old_pid = state.nodes[args.node].qemu_pid;
            if kill {
                lifecycle::wait_down(old_pid)?;
            } else {
                lifecycle::wait_serving(state_path, args.node, old_pid)?;
            }
            println!("node {} {}", args.node, if kill { "killed" } else { "serving again" });
        }
        ClusterCommand::Serve(args) => {
            let mut log = std::io::stderr();
            daemon::serve(&args.options()?, &args.state.state, &mut log)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The wire's faults in a few words.
pub fn describe(links: &cairn_tools::cluster::faults::LinkFaults) -> String {
    if links.is_none() {
        return "none".into();
    }
    let mut parts = Vec::new();
    for (name, value, unit) in [
        ("drop", links.drop, ""),
        ("delay", links.delay_ms, " ms"),
        ("jitter", links.jitter_ms, " ms"),
        ("reorder", links.reorder, ""),
        ("reorder hold", links.reorder_ms, " ms"),
        ("rate", links.rate_kib_s, " KiB/s"),
    ] {
        if value != 0.0 {
            parts.push(format!("{name} {value}{unit}"));
        }
    }
    if !links.partition.is_empty() {
        let groups: Vec<String> = links
            .partition
            .iter()
            .map(|g| g.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(","))
            .collect();
        parts.push(format!("partition {}", groups.join("/")));
    }
    parts.join(", ")
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
                    "node {}  up    api {}  cluster {a}.{b}.{c}.{d}  objects {}  tasks_run {}  memo_entries {}  fetched_bytes {}{}",
                    node.index,
                    node.api,
                    get("objects"),
                    get("tasks_run"),
                    get("memo_entries"),
                    get("fetched_bytes"),
                    disk_text(node.disk.as_deref(), &format!(" ({} objects)", get("disk_objects")))
                );
            }
            // The client escapes what the node said in its errors.
            Err(e) => {
                down += 1;
                println!(
                    "node {}  DOWN  api {}  cluster {a}.{b}.{c}.{d}{}  ({e:#})",
                    node.index,
                    node.api,
                    disk_text(node.disk.as_deref(), "")
                );
            }
        }
    }
    println!("{} of {} nodes up", state.nodes.len() - down, state.nodes.len());
    Ok(())
}

/// `  disk PATH` and `note` for a node with a disk; nothing for one without.
fn disk_text(disk: Option<&std::path::Path>, note: &str) -> String {
    disk.map_or_else(String::new, |path| format!("  disk {}{note}", path.display()))
}

/// What `down` says: how many nodes stopped, and where their disks stay.
fn down_text(state: &lifecycle::State, state_path: &std::path::Path) -> String {
    let n = state.nodes.len();
    if state.nodes.iter().all(|node| node.disk.is_none()) {
        return format!("cluster down: {n} nodes stopped");
    }
    format!(
        "cluster down: {n} nodes stopped; disks kept: {} (`cairn cluster up --fresh-disks` empties them)",
        lifecycle::disks_pattern(state_path, n).display()
    )
}

/// A value from a node's STATS text, escaped (it is the node's), or `?`.
fn stat(text: &str, key: &str) -> String {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=')).map_or_else(|| "?".to_string(), escape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: ClusterCommand,
    }

    fn up_options(args: &[&str]) -> Result<lifecycle::UpOptions, String> {
        let cli = Cli::try_parse_from(["cluster", "up"].iter().chain(args)).map_err(|e| e.to_string())?;
        let ClusterCommand::Up(up) = cli.command else { unreachable!() };
        up.options().map_err(|e| e.to_string())
    }

    #[test]
    fn up_gives_nodes_disks_unless_told_not_to() {
        let disks = |args: &[&str]| up_options(args).map(|o| o.disks);
        let kept = lifecycle::DiskOptions { size: cairn_tools::qemu::StoreDisk::DEFAULT_SIZE, fresh: false };
        assert_eq!(disks(&[]), Ok(Some(kept)));
        assert_eq!(
            disks(&["--disk-size", "64M"]),
            Ok(Some(lifecycle::DiskOptions { size: 64 << 20, ..kept }))
        );
        assert_eq!(disks(&["--fresh-disks"]), Ok(Some(lifecycle::DiskOptions { fresh: true, ..kept })));
        assert_eq!(disks(&["--no-disk"]), Ok(None));
        assert!(disks(&["--no-disk", "--fresh-disks"]).unwrap_err().contains("cannot be used with"));
        assert!(disks(&["--no-disk", "--disk-size", "2G"]).unwrap_err().contains("cannot be used with"));
        // The same parser as `cairn node --disk-size`.
        assert!(disks(&["--disk-size", "1000"]).unwrap_err().contains("at least 1M"));
        assert!(disks(&["--disk", "a.qcow2"]).unwrap_err().contains("--state"));
    }

    #[test]
    fn the_daemon_gets_the_options_up_was_given() {
        let state = std::path::Path::new("/tmp/x/lab.json");
        for args in [
            &["--nodes", "2", "--fault", "1=corrupt-objects"][..],
            &["--no-disk", "--cpus", "1"],
            &["--disk-size", "8M", "--fresh-disks"],
            &["--accel", "kvm"],
        ] {
            let opts = up_options(args).unwrap();
            let daemon = Cli::try_parse_from(
                std::iter::once("cairn".into())
                    .chain(lifecycle::daemon_args(&opts, state).into_iter().skip(1)),
            )
            .unwrap();
            let ClusterCommand::Serve(serve) = daemon.command else { panic!("not serve") };
            assert_eq!(serve.state.state, state);
            let again = serve.options().unwrap();
            assert_eq!((again.nodes, again.cpus, again.faults), (opts.nodes, opts.cpus, opts.faults));
            assert_eq!(again.accel, opts.accel);
            // `up` deleted the disks already: the daemon only uses them.
            assert_eq!(again.disks, opts.disks.map(|d| lifecycle::DiskOptions { fresh: false, ..d }));
        }
    }

    #[test]
    fn down_says_where_the_disks_stay() {
        let node = |disk: Option<&str>| lifecycle::NodeState {
            index: 0,
            api: "127.0.0.1:1".into(),
            cluster_ip: [10, 1, 0, 1],
            qemu_pid: 1,
            disk: disk.map(Into::into),
        };
        let path = std::path::Path::new("/tmp/x/lab.json");
        let state = |nodes| lifecycle::State { daemon_pid: 1, log: "/tmp/x/lab.log".into(), nodes };
        assert_eq!(
            down_text(&state(vec![node(Some("a")), node(Some("b"))]), path),
            "cluster down: 2 nodes stopped; disks kept: /tmp/x/lab.node-{0..1}.qcow2 (`cairn cluster up --fresh-disks` empties them)"
        );
        assert_eq!(down_text(&state(vec![node(None)]), path), "cluster down: 1 nodes stopped");
    }

    #[test]
    fn status_shows_a_nodes_counters_escaped() {
        let text = "objects=12\ntasks_run=3\x1b[2J\r\nmemo_entries=\u{9b}1\n";
        assert_eq!(stat(text, "objects"), "12");
        assert_eq!(stat(text, "tasks_run"), "3\\x1b[2J");
        assert_eq!(stat(text, "memo_entries"), "\\u{9b}1");
        assert_eq!(stat(text, "fetched_bytes"), "?");
    }
}
