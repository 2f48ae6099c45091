//! `cairn`: build images, boot nodes and run self tests in QEMU. See README.md.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use cairn_boot::Firmware;
use cairn_bootcfg::{LogLevel, Mode, NodeConfig};
use cairn_tools::qemu::{self, Accel, NodeExit, NodeOptions, Vm};
use cairn_tools::received::Line;
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "cairn", version, about = "Cairn, a functional unikernel: images, nodes and jobs in QEMU")]
#[command(after_help = "Without a subcommand, cairn boots a node and runs the default job.")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    boot: BootArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Write a bootable disk image.
    Image(ImageArgs),
    /// Boot one node that serves the node API, stream its console, and exit with its status.
    Node(NodeArgs),
    /// Boot the in-kernel self tests; exit 0 only if every one passed.
    Selftest(BootArgs),
    /// Print the handle of each file (a blob) and directory (a tree), handle first.
    Hash(HashArgs),
    /// Boot a node that measures itself (guest time): invocation, memo hit, BLAKE3 throughput.
    Bench(BenchArgs),
    /// Store files on a running node; prints their handles.
    Put(PutArgs),
    /// Fetch an object from a running node, checking it against its handle.
    Get(GetArgs),
    /// Evaluate TASK.elf applied to ARGs on a running node, uploading only what it lacks.
    Eval(EvalArgs),
    /// Show a running node's counters.
    Stats(NodeAddress),
    /// Run a job file (TOML: a root and the IO it may perform) on a running node.
    Submit(SubmitArgs),
    /// Evaluate a job again from its journal alone, with no IO, and compare the result.
    Replay(ReplayArgs),
    /// Move journals between nodes and machines.
    #[command(subcommand)]
    Journal(JournalCommand),
    /// Clusters of nodes on this machine (docs/CLUSTER.md).
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Install QEMU, qemu-img and OVMF as needed (with apt, as root; every QEMU package at one
    /// version), then check them. Other commands do this by themselves when something is missing.
    Setup(SetupArgs),
}

#[derive(Args)]
struct SetupArgs {
    /// Say what would be installed, and change nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args)]
struct SubmitArgs {
    #[command(flatten)]
    node: NodeAddress,
    /// The job file (docs/IO.md).
    job: PathBuf,
    /// Also save the journal with everything a replay needs (as `cairn journal export` does).
    #[arg(long, value_name = "FILE")]
    export: Option<PathBuf>,
}

#[derive(Args)]
struct ReplayArgs {
    #[command(flatten)]
    node: NodeAddress,
    /// A job's handle (its latest journal on the node is used) or a journal's handle.
    handle: String,
}

#[derive(Subcommand)]
enum JournalCommand {
    /// Save a journal, its job and every object a replay needs to FILE.
    Export {
        #[command(flatten)]
        node: NodeAddress,
        /// The journal's handle (printed by `cairn submit`).
        journal: String,
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Load a saved journal onto a node, so that `cairn replay JOB` works there.
    Import {
        #[command(flatten)]
        node: NodeAddress,
        file: PathBuf,
    },
}

#[derive(Args)]
struct NodeArgs {
    #[command(flatten)]
    boot: BootArgs,
    /// Host port (on 127.0.0.1) that forwards to the node API.
    #[arg(long, default_value_t = 7070)]
    api_port: u16,
    /// A static address, like 10.0.2.15/24, instead of DHCP.
    #[arg(long)]
    ip: Option<String>,
    /// The default gateway that goes with --ip.
    #[arg(long, requires = "ip")]
    gateway: Option<String>,
    /// Close API connections that move no bytes for this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = cairn_bootcfg::DEFAULT_API_IDLE_S, value_parser = clap::value_parser!(u32).range(1..=86_400))]
    api_idle: u32,
}

#[derive(Args, Clone)]
struct NodeAddress {
    /// The node API: what `cairn node` printed.
    #[arg(long, default_value = "127.0.0.1:7070")]
    node: String,
}

#[derive(Args)]
struct PutArgs {
    #[command(flatten)]
    node: NodeAddress,
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

#[derive(Args)]
struct GetArgs {
    #[command(flatten)]
    node: NodeAddress,
    handle: String,
    /// Write the object here instead of standard output.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    node: NodeAddress,
    /// The task's ELF file (or give --job).
    #[arg(required_unless_present = "job")]
    task: Option<PathBuf>,
    /// Arguments: a handle (e.g. blob:=68656c6c6f), or a file whose bytes become a blob.
    args: Vec<String>,
    /// Memory limit of the application, in MiB.
    #[arg(long, default_value_t = 16)]
    task_memory: u64,
    /// Evaluate the root of a job file (docs/IO.md) instead of TASK ARGS; it may not do IO.
    #[arg(long, value_name = "JOB.toml", conflicts_with = "task")]
    job: Option<PathBuf>,
    /// Run across the cluster whose state file this is (docs/CLUSTER.md) instead of on --node.
    #[arg(long, value_name = "STATE", num_args = 0..=1, default_missing_value = DEFAULT_CLUSTER_STATE)]
    cluster: Option<PathBuf>,
    /// With --cluster: run every task on two different nodes and compare their results.
    #[arg(long, requires = "cluster")]
    verify: bool,
    /// With --cluster: where ready tasks go.
    #[arg(long, value_enum, default_value_t = PlacementArg::Locality, requires = "cluster")]
    placement: PlacementArg,
    /// With --cluster: start with the data spread over the nodes, round robin.
    #[arg(long, requires = "cluster")]
    spread: bool,
    /// With --cluster: write the result's bytes to this file.
    #[arg(short, long, value_name = "FILE", requires = "cluster")]
    output: Option<PathBuf>,
    /// With --cluster: the seed of random placement.
    #[arg(long, default_value_t = 1, requires = "cluster")]
    seed: u64,
}

const DEFAULT_CLUSTER_STATE: &str = "cairn-cluster.json";

#[derive(Clone, Copy, ValueEnum)]
enum PlacementArg {
    /// Where the fewest input bytes must move; by load when inputs are small.
    Locality,
    /// Anywhere, at random (the baseline to compare with).
    Random,
}

#[derive(Subcommand)]
enum ClusterCommand {
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
struct ClusterStateArg {
    /// Where the cluster's state (node API ports, pids) is kept.
    #[arg(long, default_value = DEFAULT_CLUSTER_STATE)]
    state: PathBuf,
}

#[derive(Args)]
struct ClusterUpArgs {
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Guest memory of each node, in MiB.
    #[arg(long, default_value_t = 512)]
    memory: u32,
    /// Virtual CPUs of each node (a second one hashes uploads as they arrive).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    cpus: u32,
    #[arg(long, default_value = "tcg", value_parser = ["tcg", "kvm"])]
    accel: String,
    /// Give node INDEX a deliberate fault (tests): INDEX=corrupt-objects.
    #[arg(long, value_name = "INDEX=FAULT")]
    fault: Vec<String>,
    #[command(flatten)]
    state: ClusterStateArg,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    boot: BootArgs,
    /// One JSON object per line: {"name": ..., "value": ..., "unit": ...}.
    #[arg(long)]
    json: bool,
    /// Measure the network instead: put and then get a blob of this many MiB through the node
    /// API (user networking), timed on the host.
    #[arg(long, value_name = "MIB")]
    net: Option<u64>,
}

#[derive(Args)]
struct HashArgs {
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
    /// Files and directories to name.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

#[derive(Args, Clone)]
struct FirmwareArgs {
    /// Boot through legacy BIOS (the default).
    #[arg(long, conflicts_with = "uefi", global = true)]
    bios: bool,
    /// Boot through UEFI (OVMF).
    #[arg(long, global = true)]
    uefi: bool,
}

impl FirmwareArgs {
    fn firmware(&self) -> Firmware {
        if self.uefi { Firmware::Uefi } else { Firmware::Bios }
    }
}

#[derive(Args, Clone)]
struct BootArgs {
    #[command(flatten)]
    firmware: FirmwareArgs,
    /// QEMU accelerator. KVM is opt-in: nested KVM is unreliable on many hosts.
    #[arg(long, default_value = "tcg", value_parser = ["tcg", "kvm"], global = true)]
    accel: String,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(64..=65536), global = true)]
    memory: u32,
    /// Virtual CPUs: the kernel uses a second one to hash uploads as they arrive.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64), global = true)]
    cpus: u32,
    /// Kernel log level.
    #[arg(long, value_enum, default_value = "info", global = true)]
    log: LogArg,
    /// Stop the node (and fail) if it has not shut down after this many seconds.
    #[arg(long, value_name = "SECS", global = true)]
    timeout: Option<u64>,
    /// Where objects the node sends (the default job's image) are saved.
    #[arg(long, value_name = "DIR", default_value = ".", global = true)]
    out_dir: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogArg {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl From<LogArg> for LogLevel {
    fn from(l: LogArg) -> LogLevel {
        match l {
            LogArg::Error => LogLevel::Error,
            LogArg::Warn => LogLevel::Warn,
            LogArg::Info => LogLevel::Info,
            LogArg::Debug => LogLevel::Debug,
            LogArg::Trace => LogLevel::Trace,
        }
    }
}

#[derive(Args)]
struct ImageArgs {
    #[command(flatten)]
    firmware: FirmwareArgs,
    /// Image format; qcow2 goes through qemu-img.
    #[arg(long, value_enum, default_value = "raw")]
    format: ImageFormat,
    /// What the node does when it boots from this image.
    #[arg(long, value_parser = ["serve", "job", "selftest", "fault-test", "task-checks", "bench"], default_value = "serve")]
    mode: String,
    /// Where to write the image.
    #[arg(short, long)]
    output: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
enum ImageFormat {
    Raw,
    Qcow2,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    qemu::install_signal_handler();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cairn: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        None => boot_and_stream(&cli.boot, Mode::Job),
        Some(Command::Node(args)) => {
            eprintln!(
                "cairn: node API on 127.0.0.1:{} (use --node 127.0.0.1:{})",
                args.api_port, args.api_port
            );
            let mut text = String::new();
            if let Some(ip) = &args.ip {
                text.push_str(&format!("ip = {ip}\n"));
            }
            if let Some(gateway) = &args.gateway {
                text.push_str(&format!("gateway = {gateway}\n"));
            }
            text.push_str(&format!("api_idle_s = {}\n", args.api_idle));
            let config = NodeConfig::parse(text.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
            boot_and_stream_on(&args.boot, NodeConfig { mode: Mode::Serve, ..config }, Some(args.api_port))
        }
        Some(Command::Put(args)) => put(&args),
        Some(Command::Get(args)) => get(&args),
        Some(Command::Eval(args)) => eval(&args),
        Some(Command::Stats(args)) => {
            print!("{}", cairn_tools::client::Client::connect(&args.node)?.stats()?);
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Submit(args)) => submit(&args),
        Some(Command::Replay(args)) => replay(&args),
        Some(Command::Journal(command)) => journal(&command),
        Some(Command::Cluster(command)) => cluster(&command),
        Some(Command::Selftest(args)) => boot_and_stream(&args, Mode::Selftest),
        Some(Command::Image(args)) => write_image(&args),
        Some(Command::Hash(args)) => hash(&args),
        Some(Command::Bench(args)) => bench(&args),
        Some(Command::Setup(args)) => {
            cairn_hostsetup::setup(args.dry_run, &mut |line| eprintln!("cairn: {line}"))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn bench(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    if let Some(mib) = args.net {
        let results = bench_net(&args.boot, mib)?;
        print_results(&results, args.json);
        return Ok(ExitCode::SUCCESS);
    }
    let mut results = Vec::new();
    // The console goes to stderr so that stdout holds only the results.
    let code = boot_and_watch(&args.boot, Mode::Bench, |line| {
        if let Some(rest) = line.strip_prefix("cairn: bench ") {
            let parts: Vec<&str> = rest.split(' ').collect();
            if let [name, value, unit] = parts[..]
                && let Ok(value) = value.parse::<f64>()
            {
                results.push((name.to_string(), value, unit.to_string()));
            }
        }
        eprintln!("{line}");
    })?;
    print_results(&results, args.json);
    if results.is_empty() && code == ExitCode::SUCCESS {
        anyhow::bail!("the node reported no measurements");
    }
    Ok(code)
}

fn print_results(results: &[(String, f64, String)], json: bool) {
    for (name, value, unit) in results {
        if json {
            println!("{}", serde_json::json!({"name": name, "value": value, "unit": unit}));
        } else {
            println!("{name:<14} {value:>12.3} {unit}");
        }
    }
}

/// Boots a serving node, then puts and gets `mib` MiB of pseudo-random bytes through its API.
/// Each direction is timed from the first byte sent to the node's last answer: a put includes
/// the node checking the blob's name, a get includes the host checking it.
fn bench_net(boot: &BootArgs, mib: u64) -> anyhow::Result<Vec<(String, f64, String)>> {
    use cairn_tools::client::Client;
    anyhow::ensure!((1..=1024).contains(&mib), "--net takes 1 to 1024 MiB");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let accel: Accel = boot.accel.parse().map_err(anyhow::Error::msg)?;
    let memory_mib = boot.memory.max(mib as u32 * 4 + 256);
    let opts = NodeOptions {
        firmware: boot.firmware.firmware(),
        accel,
        memory_mib,
        cpus: boot.cpus,
        config: NodeConfig {
            mode: Mode::Serve,
            log_level: boot.log.into(),
            ip: None,
            ..NodeConfig::default()
        },
        raw_config: None,
        api_port: Some(port),
        cluster_link: None,
    };
    eprintln!(
        "cairn: booting a node for the network benchmark ({}, {accel}, {memory_mib} MiB)",
        opts.firmware
    );
    let mut vm = Vm::boot(&opts)?;
    let deadline = Instant::now() + Duration::from_secs(boot.timeout.unwrap_or(120));
    loop {
        match vm.next_line(deadline) {
            Ok(Some(line)) if line.starts_with("cairn: net ") => break,
            Ok(Some(_)) => {}
            Ok(None) => anyhow::bail!("the node stopped before its network came up"),
            Err(e) => {
                vm.kill();
                return Err(e.context("the node's network did not come up"));
            }
        }
    }
    let mut bytes = vec![0u8; (mib << 20) as usize];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for word in bytes.as_chunks_mut::<8>().0 {
        // xorshift: incompressible, so nothing along the way can shortcut it.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        word.copy_from_slice(&state.to_le_bytes());
    }
    let handle = cairn_object::Handle::blob(&bytes);
    let outcome = (|| -> anyhow::Result<(f64, f64)> {
        let mut client = Client::connect(&format!("127.0.0.1:{port}"))?;
        let started = Instant::now();
        client.put(handle, &bytes, |_| {})?;
        let put_s = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let back = client.get(handle, |_, _| {})?;
        let get_s = started.elapsed().as_secs_f64();
        anyhow::ensure!(back == bytes, "the blob came back different");
        Ok((put_s, get_s))
    })();
    vm.kill();
    let (put_s, get_s) = outcome?;
    let mib = mib as f64;
    Ok(vec![
        ("put_mib_s".into(), mib / put_s, "MiB/s".into()),
        ("get_mib_s".into(), mib / get_s, "MiB/s".into()),
    ])
}

fn hash(args: &HashArgs) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    for path in &args.paths {
        match cairn_tools::hash::name_path(path) {
            Ok(named) if args.json => println!("{}", cairn_tools::hash::json_line(path, &named)),
            Ok(named) => println!("{}", cairn_tools::hash::text_line(path, &named)),
            Err(e) => {
                eprintln!("cairn: error: {e:#}");
                failed = true;
            }
        }
    }
    Ok(if failed { ExitCode::from(2) } else { ExitCode::SUCCESS })
}

fn parse_mode(name: &str) -> Mode {
    Mode::ALL.into_iter().find(|m| m.name() == name).unwrap_or(Mode::Serve)
}

fn write_image(args: &ImageArgs) -> anyhow::Result<ExitCode> {
    let firmware = args.firmware.firmware();
    let config = NodeConfig { mode: parse_mode(&args.mode), ..NodeConfig::default() };
    let qcow2 = matches!(args.format, ImageFormat::Qcow2);
    qemu::write_image(firmware, &config, qcow2, &args.output)?;
    let size = std::fs::metadata(&args.output)
        .with_context(|| format!("cannot read {}", args.output.display()))?
        .len();
    println!(
        "{} ({firmware}, {}, {} KiB)",
        args.output.display(),
        if qcow2 { "qcow2" } else { "raw" },
        size / 1024
    );
    Ok(ExitCode::SUCCESS)
}

fn boot_and_stream(args: &BootArgs, mode: Mode) -> anyhow::Result<ExitCode> {
    boot_and_stream_on(args, NodeConfig { mode, ..NodeConfig::default() }, None)
}

/// `config` gives the mode and the network settings; the log level comes from `args`.
fn boot_and_stream_on(
    args: &BootArgs,
    config: NodeConfig,
    api_port: Option<u16>,
) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout();
    boot_and_watch_on(args, config, api_port, |line| {
        let _ = writeln!(stdout, "{line}");
        let _ = stdout.flush();
    })
}

/// Boots a node, saves the objects it sends, hands every other console line to `on_line`, and
/// turns how the node ended into an exit code.
fn boot_and_watch(args: &BootArgs, mode: Mode, on_line: impl FnMut(&str)) -> anyhow::Result<ExitCode> {
    boot_and_watch_on(args, NodeConfig { mode, ..NodeConfig::default() }, None, on_line)
}

fn boot_and_watch_on(
    args: &BootArgs,
    config: NodeConfig,
    api_port: Option<u16>,
    mut on_line: impl FnMut(&str),
) -> anyhow::Result<ExitCode> {
    let mode = config.mode;
    let accel: Accel = args.accel.parse().map_err(anyhow::Error::msg)?;
    let opts = NodeOptions {
        firmware: args.firmware.firmware(),
        accel,
        memory_mib: args.memory,
        cpus: args.cpus,
        config: NodeConfig { log_level: args.log.into(), ..config },
        raw_config: None,
        api_port,
        cluster_link: None,
    };
    eprintln!(
        "cairn: booting a node ({}, {}, {} MiB, mode {})",
        opts.firmware,
        accel,
        opts.memory_mib,
        mode.name()
    );
    let mut vm = Vm::boot(&opts)?;
    eprintln!("cairn: qemu pid {}", vm.pid());
    // Without a timeout the deadline is far enough away to mean "never".
    let deadline = Instant::now() + Duration::from_secs(args.timeout.unwrap_or(100 * 365 * 86400));
    let mut receiver = cairn_tools::received::Receiver::default();
    loop {
        match vm.next_line(deadline) {
            Ok(Some(line)) => {
                match receiver.feed(&line)? {
                    Line::Console => {}
                    Line::Consumed => continue,
                    Line::Done(object) => {
                        let path = args.out_dir.join(&object.name);
                        std::fs::write(&path, &object.bytes)
                            .with_context(|| format!("cannot write {}", path.display()))?;
                        eprintln!(
                            "cairn: saved {} ({} bytes, {}) to {}",
                            object.name,
                            object.bytes.len(),
                            object.handle,
                            path.display()
                        );
                        continue;
                    }
                }
                on_line(&line);
                if line.starts_with("cairn: ready ") {
                    eprintln!("cairn: node ready {:.2} s after QEMU started", vm.elapsed().as_secs_f64());
                }
            }
            Ok(None) => break,
            Err(_) => {
                vm.kill();
                anyhow::bail!(
                    "the node did not finish within {} s; QEMU was stopped",
                    args.timeout.unwrap_or_default()
                );
            }
        }
    }
    let exit = vm.wait(deadline)?;
    let secs = vm.elapsed().as_secs_f64();
    match exit {
        NodeExit::Success => {
            eprintln!("cairn: {exit} after {secs:.1} s");
            Ok(ExitCode::SUCCESS)
        }
        NodeExit::Failure => {
            eprintln!("cairn: {exit} after {secs:.1} s");
            Ok(ExitCode::FAILURE)
        }
        other => anyhow::bail!("{other}"),
    }
}

fn put(args: &PutArgs) -> anyhow::Result<ExitCode> {
    let mut client = cairn_tools::client::Client::connect(&args.node.node)?;
    for path in &args.files {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let handle = cairn_object::Handle::blob(&bytes);
        if !client.missing(&[handle])?.is_empty() {
            let bar = progress(bytes.len() as u64);
            client.put(handle, &bytes, |sent| bar.set_position(sent))?;
            bar.finish_and_clear();
        }
        println!("{handle}  {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn get(args: &GetArgs) -> anyhow::Result<ExitCode> {
    let handle: cairn_object::Handle = args.handle.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut client = cairn_tools::client::Client::connect(&args.node.node)?;
    let bar = progress(handle.size());
    let bytes = client.get(handle, |got, _| bar.set_position(got))?;
    bar.finish_and_clear();
    match &args.output {
        Some(path) => {
            std::fs::write(path, &bytes).with_context(|| format!("cannot write {}", path.display()))?
        }
        None => std::io::stdout().write_all(&bytes).context("cannot write to standard output")?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Objects to upload, with their bytes.
type ObjectList = Vec<(cairn_object::Handle, Vec<u8>)>;

/// The root and every object of what `eval` was asked to evaluate.
fn eval_objects(args: &EvalArgs) -> anyhow::Result<(cairn_object::Handle, ObjectList)> {
    use cairn_object::{Handle, Kind, Limits};
    if let Some(job) = &args.job {
        let job = cairn_tools::jobfile::JobFile::read(job)?;
        anyhow::ensure!(
            job.manifest.grants().is_empty(),
            "eval runs pure work; a job with capabilities goes to `cairn submit`"
        );
        return Ok((job.root, job.objects));
    }
    let task = args.task.as_ref().expect("clap requires TASK without --job");
    let elf = std::fs::read(task).with_context(|| format!("cannot read {}", task.display()))?;
    let mut objects: Vec<(Handle, Vec<u8>)> = vec![(Handle::blob(&elf), elf)];
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

fn eval(args: &EvalArgs) -> anyhow::Result<ExitCode> {
    let (root, objects) = eval_objects(args)?;
    if let Some(state) = &args.cluster {
        return eval_on_cluster(args, state, root, objects);
    }
    let mut client = cairn_tools::client::Client::connect(&args.node.node)?;
    // Upload only what the node lacks.
    let uploaded = client.upload_missing(&objects)?;
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

fn eval_on_cluster(
    args: &EvalArgs,
    state: &std::path::Path,
    root: cairn_object::Handle,
    objects: Vec<(cairn_object::Handle, Vec<u8>)>,
) -> anyhow::Result<ExitCode> {
    use cairn_tools::cluster::{graph, lifecycle, run};
    let state = lifecycle::State::read(state)?;
    let objects: std::collections::HashMap<_, _> = objects.into_iter().collect();
    let graph = graph::Graph::build(root, |h| objects.get(h).cloned())?;
    let options = run::Options {
        placement: match args.placement {
            PlacementArg::Locality => graph::Placement::Locality,
            PlacementArg::Random => graph::Placement::Random,
        },
        verify: args.verify,
        spread: args.spread,
        seed: args.seed,
    };
    let report = run::run(&graph, &objects, &state.nodes, options, &mut |line| eprintln!("{line}"))?;
    let result = report.result.ok_or_else(|| anyhow::anyhow!("the evaluation ended without a result"))?;
    let runs: Vec<String> = report.runs.iter().map(|(node, n)| format!("node {node}: {n}")).collect();
    eprintln!(
        "cairn: {} tasks on {} nodes in {:.2} s ({}; {} from memos); moved between nodes {} bytes, uploaded {} bytes{}",
        report.tasks,
        state.nodes.len(),
        report.wall.as_secs_f64(),
        if runs.is_empty() { "none run".to_string() } else { runs.join(", ") },
        report.recalled,
        report.moved_bytes,
        report.uploaded_bytes,
        if report.lost_nodes.is_empty() {
            String::new()
        } else {
            format!("; lost nodes {:?}", report.lost_nodes)
        }
    );
    println!("{result}");
    if args.verify {
        if report.mismatches.is_empty() {
            println!("verify: every task gave the same result on two nodes");
        } else {
            for m in &report.mismatches {
                println!(
                    "verify: MISMATCH {}: node {} -> {}, node {} -> {}",
                    m.thunk, m.first.0, m.first.1, m.second.0, m.second.1
                );
            }
            return Ok(ExitCode::FAILURE);
        }
    }
    if let Some(path) = &args.output {
        let value =
            report.value.as_ref().ok_or_else(|| anyhow::anyhow!("the result's bytes were not fetched"))?;
        std::fs::write(path, value).with_context(|| format!("cannot write {}", path.display()))?;
    } else if let Some(text) =
        report.value.as_ref().filter(|v| v.len() <= 4096).and_then(|v| std::str::from_utf8(v).ok())
    {
        println!("{}", text.trim_end());
    }
    Ok(ExitCode::SUCCESS)
}

fn cluster(command: &ClusterCommand) -> anyhow::Result<ExitCode> {
    use cairn_tools::cluster::lifecycle;
    let options = |args: &ClusterUpArgs| -> anyhow::Result<lifecycle::UpOptions> {
        Ok(lifecycle::UpOptions {
            nodes: args.nodes,
            memory_mib: args.memory,
            cpus: args.cpus,
            accel: args.accel.parse().map_err(anyhow::Error::msg)?,
            faults: args.fault.iter().map(|f| lifecycle::parse_fault(f)).collect::<anyhow::Result<_>>()?,
        })
    };
    match command {
        ClusterCommand::Up(args) => {
            let state = lifecycle::up(&options(args)?, &args.state.state)?;
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
        ClusterCommand::Status(args) => {
            let state = lifecycle::State::read(&args.state)?;
            let mut down = 0;
            for node in &state.nodes {
                let [a, b, c, d] = node.cluster_ip;
                let stats = cairn_tools::client::Client::connect(&node.api).and_then(|mut c| c.stats());
                match stats {
                    Ok(text) => {
                        let get = |key: &str| {
                            text.lines()
                                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                                .unwrap_or("?")
                                .to_string()
                        };
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
                    Err(e) => {
                        down += 1;
                        println!(
                            "node {}  DOWN  api {}  cluster {a}.{b}.{c}.{d}  ({e:#})",
                            node.index, node.api
                        );
                    }
                }
            }
            println!("{} of {} nodes up", state.nodes.len() - down, state.nodes.len());
        }
        ClusterCommand::Down(args) => {
            let state = lifecycle::down(&args.state)?;
            println!("cluster down: {} nodes stopped", state.nodes.len());
        }
        ClusterCommand::Serve(args) => {
            let mut log = std::io::stderr();
            lifecycle::serve(&options(args)?, &args.state.state, &mut log)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_handle(text: &str) -> anyhow::Result<cairn_object::Handle> {
    text.parse().map_err(|e| anyhow::anyhow!("`{text}` is not a handle: {e}"))
}

/// Prints a small blob's value the way `eval` does.
fn print_value(client: &mut cairn_tools::client::Client, result: cairn_object::Handle) -> anyhow::Result<()> {
    if result.kind() == cairn_object::Kind::Blob && result.size() <= 4096 {
        let value = client.get(result, |_, _| {})?;
        match std::str::from_utf8(&value) {
            Ok(text) if text.chars().all(|c| !c.is_control() || c == '\n') => println!("{}", text.trim_end()),
            _ => println!("{}", value.iter().map(|b| format!("{b:02x}")).collect::<String>()),
        }
    }
    Ok(())
}

fn submit(args: &SubmitArgs) -> anyhow::Result<ExitCode> {
    let job = cairn_tools::jobfile::JobFile::read(&args.job)?;
    let mut client = cairn_tools::client::Client::connect(&args.node.node)?;
    let uploaded = client.upload_missing(&job.objects)?;
    eprintln!(
        "cairn: job {} (uploaded {uploaded} of {} objects); capabilities: {}",
        job.job,
        job.objects.len(),
        if job.manifest.grants().is_empty() {
            "none".to_string()
        } else {
            job.manifest.render().trim_end().replace('\n', ", ")
        }
    );
    let outcome = client.submit(job.job)?;
    println!("job      {}", outcome.job);
    println!(
        "journal  {} (on the node at {}; save it with `cairn journal export {} -o FILE`)",
        outcome.journal, args.node.node, outcome.journal
    );
    if let Some(path) = &args.export {
        let bundle = cairn_tools::bundle::Bundle::export(&mut client, outcome.journal)?;
        std::fs::write(path, bundle.encode()).with_context(|| format!("cannot write {}", path.display()))?;
        println!("exported {} ({} objects)", path.display(), bundle.objects.len());
    }
    match outcome.result {
        Ok(result) => {
            println!("result   {result}");
            print_value(&mut client, result)?;
            Ok(ExitCode::SUCCESS)
        }
        Err((thunk, failure)) => {
            eprintln!("cairn: the job failed: {thunk} failed: {failure}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn replay(args: &ReplayArgs) -> anyhow::Result<ExitCode> {
    let handle = parse_handle(&args.handle)?;
    let mut client = cairn_tools::client::Client::connect(&args.node.node)?;
    let outcome = client.replay(handle)?;
    println!("job      {}", outcome.job);
    println!("journal  {}", outcome.journal);
    match outcome.result {
        Ok(result) => {
            println!("result   {result}");
            match outcome.recorded {
                Some(recorded) if recorded == result => {
                    println!("replay: identical");
                    Ok(ExitCode::SUCCESS)
                }
                Some(recorded) => {
                    println!("replay: DIFFERS: the journal recorded {recorded}");
                    Ok(ExitCode::FAILURE)
                }
                None => {
                    println!("replay: the journal recorded a failed job, and the replay succeeded");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Err((thunk, failure)) => {
            eprintln!("cairn: the replay failed: {thunk} failed: {failure}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn journal(command: &JournalCommand) -> anyhow::Result<ExitCode> {
    use cairn_tools::bundle::Bundle;
    match command {
        JournalCommand::Export { node, journal, output } => {
            let mut client = cairn_tools::client::Client::connect(&node.node)?;
            let bundle = Bundle::export(&mut client, parse_handle(journal)?)?;
            std::fs::write(output, bundle.encode())
                .with_context(|| format!("cannot write {}", output.display()))?;
            println!(
                "{} ({} objects, job {})",
                output.display(),
                bundle.objects.len(),
                bundle.journal()?.job
            );
        }
        JournalCommand::Import { node, file } => {
            let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            let bundle = Bundle::decode(&bytes)
                .with_context(|| format!("{} is not a usable bundle", file.display()))?;
            let job = bundle.journal()?.job;
            let mut client = cairn_tools::client::Client::connect(&node.node)?;
            let objects: Vec<_> = bundle.objects.iter().map(|(h, b)| (*h, b.clone())).collect();
            let uploaded = client.upload_missing(&objects)?;
            client.adopt_journal(bundle.journal)?;
            println!(
                "imported journal {} of job {job} ({uploaded} of {} objects uploaded)",
                bundle.journal,
                objects.len()
            );
            println!("replay it with: cairn replay {job} --node {}", node.node);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A progress bar for transfers big enough to watch (indicatif; hidden when not a terminal).
fn progress(len: u64) -> indicatif::ProgressBar {
    if len < 4 << 20 {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}
