//! `cairn`: build images, boot nodes and run self tests in QEMU. See README.md.
//!
//! This file only parses the command line and dispatches; each group of commands lives in its
//! own module under `cli/`, with the arguments it takes.

mod cli;

use std::process::ExitCode;

use cairn_bootcfg::Mode;
use cairn_tools::qemu;
use cairn_tools::untrusted::escape_lines;
use clap::{Parser, Subcommand};

use cli::{
    NodeAddress, bench, boot, cloud, cluster, eval, experiment, fuzz, fuzz_wire, jobs, keys, objects, setup,
    sim, task, trace,
};

#[derive(Parser)]
#[command(name = "cairn", version, about = "Cairn, a functional unikernel: images, nodes and jobs in QEMU")]
#[command(after_help = "Without a subcommand, cairn boots a node and runs the default job.")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    boot: boot::BootArgs,
    /// With the default job: write its trace to this file (Chrome trace-event JSON, for
    /// Perfetto; docs/TRACES.md).
    #[arg(long, value_name = "FILE")]
    trace: Option<std::path::PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Write a bootable disk image.
    Image(boot::ImageArgs),
    /// Boot one node that serves the node API, stream its console, and exit with its status.
    Node(boot::NodeArgs),
    /// Boot the in-kernel self tests; exit 0 only if every one passed.
    Selftest(boot::BootArgs),
    /// Print the handle of each file (a blob) and directory (a tree), handle first.
    Hash(objects::HashArgs),
    /// Boot a node that measures itself (guest time): invocation, memo hit, BLAKE3 throughput.
    Bench(bench::BenchArgs),
    /// Try to crash a node with generated syscall programs (in a node booted for it, or with
    /// --node through a running node's API); report counts, rate and every crash.
    Fuzz(fuzz::FuzzArgs),
    /// Try to crash a running node with mutated frames over TCP; check it still answers.
    FuzzWire(fuzz_wire::FuzzWireArgs),
    /// Store files on a running node; prints their handles.
    Put(objects::PutArgs),
    /// Fetch an object from a running node, checking it against its handle.
    Get(objects::GetArgs),
    /// Evaluate TASK.elf applied to ARGs on a running node, uploading only what it lacks.
    Eval(eval::EvalArgs),
    /// Show a running node's counters.
    Stats(NodeAddress),
    /// Have a node read every object on its disk and check it; damaged ones are listed (exit
    /// status 1) and dropped, never served.
    Scrub(NodeAddress),
    /// Keep an object (and everything it reaches) on a node's disk through every `cairn gc`.
    Pin(objects::PinArgs),
    /// Let a pinned object go at the next `cairn gc`, if nothing else keeps it.
    Unpin(objects::PinArgs),
    /// Forget what nothing keeps on a node's disk (not pinned, not reached from its memo or
    /// its jobs' journals) and compact its log; say what was freed.
    Gc(objects::GcArgs),
    /// Run a job file (TOML: a root and the IO it may perform) on a running node.
    Submit(jobs::SubmitArgs),
    /// Evaluate a job again from its journal alone, with no IO, and compare the result.
    Replay(jobs::ReplayArgs),
    /// Move journals between nodes and machines.
    #[command(subcommand)]
    Journal(jobs::JournalCommand),
    /// Clusters of nodes on this machine (docs/CLUSTER.md).
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Install QEMU, qemu-img and OVMF as needed (with apt, as root; every QEMU package at one
    /// version), then check them. Other commands do this by themselves when something is missing.
    Setup(setup::SetupArgs),
    /// Run the cluster scheduler over a simulated cluster, in virtual time, with faults from
    /// a seed (docs/SCHEDULER.md).
    Sim(sim::SimArgs),
    /// Write each node's configuration (addresses, peers, keys) on a disk of its own, so that
    /// one image serves every node of a cluster (docs/CLOUD.md).
    ConfigDisk(cloud::ConfigDiskArgs),
    /// Run a job on fresh clusters under a fault plan, run after run, and write a results table
    /// and plots of makespan, bytes moved and re-runs (docs/EXPERIMENTS.md).
    Experiment(experiment::ExperimentArgs),
    /// Run a job on a node or a cluster and write the spans its nodes recorded as one trace
    /// (Chrome trace-event JSON, for Perfetto; docs/TRACES.md).
    Trace(trace::TraceArgs),
    /// Write something new: `cairn new task NAME` writes a task crate of one's own
    /// (docs/TASKS.md).
    #[command(subcommand)]
    New(task::NewCommand),
    /// Build the task crate in DIR (default: here) into the ELF a node runs; prints its handle
    /// and path.
    Build(task::BuildArgs),
    /// Make a new client key (one is made on first use anyway); prints its public half.
    Keygen(keys::KeygenArgs),
    /// This user's client key and the nodes' keys (docs/SECURITY.md).
    #[command(subcommand)]
    Key(keys::KeyCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    qemu::install_signal_handler();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // Errors quote nodes, tasks and files; the escaping is idempotent, so text already
            // escaped where it entered an error passes unchanged, and multi-line errors (apt's
            // output) keep their lines.
            eprintln!("cairn: error: {}", escape_lines(&format!("{e:#}")));
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        None => boot::default_job(&cli.boot, cli.trace.as_deref()),
        Some(Command::Node(args)) => boot::node(&args),
        Some(Command::Put(args)) => objects::put(&args),
        Some(Command::Get(args)) => objects::get(&args),
        Some(Command::Eval(args)) => eval::eval(&args),
        Some(Command::New(command)) => task::new(&command),
        Some(Command::Trace(args)) => trace::trace(&args),
        Some(Command::Build(args)) => task::build(&args),
        Some(Command::Stats(args)) => objects::stats(&args),
        Some(Command::Scrub(args)) => objects::scrub(&args),
        Some(Command::Pin(args)) => objects::pin(&args, true),
        Some(Command::Unpin(args)) => objects::pin(&args, false),
        Some(Command::Gc(args)) => objects::gc(&args),
        Some(Command::Submit(args)) => jobs::submit(&args),
        Some(Command::Replay(args)) => jobs::replay(&args),
        Some(Command::Journal(command)) => jobs::journal(&command),
        Some(Command::Cluster(command)) => cluster::cluster(&command),
        Some(Command::Selftest(args)) => boot::boot_and_stream(&args, Mode::Selftest),
        Some(Command::Image(args)) => boot::write_image(&args),
        Some(Command::Hash(args)) => objects::hash(&args),
        Some(Command::Bench(args)) => bench::bench(&args),
        Some(Command::Fuzz(args)) => fuzz::fuzz(&args),
        Some(Command::FuzzWire(args)) => fuzz_wire::fuzz_wire(&args),
        Some(Command::Setup(args)) => setup::setup(&args),
        Some(Command::Sim(args)) => sim::sim(&args),
        Some(Command::Experiment(args)) => experiment::experiment(&args),
        Some(Command::ConfigDisk(args)) => cloud::config_disk(&args),
        Some(Command::Keygen(args)) => keys::keygen(&args),
        Some(Command::Key(command)) => keys::key(&command),
    }
}
