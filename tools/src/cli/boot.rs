//! Commands that boot a node in QEMU and watch its console: the default job (no subcommand),
//! `node`, `selftest`; and `image`, which writes what they boot. The boot helpers here are
//! shared with `bench`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use cairn_boot::Firmware;
use cairn_bootcfg::{LogLevel, Mode, NodeConfig};
use cairn_tools::qemu::{self, Accel, NodeExit, NodeOptions, Vm};
use cairn_tools::received::Line;
use cairn_tools::untrusted::escape;
use clap::{Args, ValueEnum};

#[derive(Args)]
pub struct NodeArgs {
    #[command(flatten)]
    pub boot: BootArgs,
    /// Host port (on 127.0.0.1) that forwards to the node API.
    #[arg(long, default_value_t = 7070)]
    pub api_port: u16,
    /// A static address, like 10.0.2.15/24, instead of DHCP.
    #[arg(long)]
    pub ip: Option<String>,
    /// The default gateway that goes with --ip.
    #[arg(long, requires = "ip")]
    pub gateway: Option<String>,
    /// Close API connections that move no bytes for this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = cairn_bootcfg::DEFAULT_API_IDLE_S, value_parser = clap::value_parser!(u32).range(1..=86_400))]
    pub api_idle: u32,
}

#[derive(Args, Clone)]
pub struct FirmwareArgs {
    /// Boot through legacy BIOS (the default).
    #[arg(long, conflicts_with = "uefi", global = true)]
    pub bios: bool,
    /// Boot through UEFI (OVMF).
    #[arg(long, global = true)]
    pub uefi: bool,
}

impl FirmwareArgs {
    pub fn firmware(&self) -> Firmware {
        if self.uefi { Firmware::Uefi } else { Firmware::Bios }
    }
}

#[derive(Args, Clone)]
pub struct BootArgs {
    #[command(flatten)]
    pub firmware: FirmwareArgs,
    /// QEMU accelerator. KVM is opt-in: nested KVM is unreliable on many hosts. `tcg-icount`
    /// counts guest time in instructions, so guest-side timings repeat exactly on a busy host
    /// (the default job and bench only: a serving node's clock would outrun real time).
    #[arg(long, default_value = "tcg", value_parser = ["tcg", "tcg-icount", "kvm"], global = true)]
    pub accel: String,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(64..=65536), global = true)]
    pub memory: u32,
    /// Virtual CPUs: every one runs tasks; the others also hash uploads as they arrive and
    /// compute the secure channel's keystreams ahead.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64), global = true)]
    pub cpus: u32,
    /// Kernel log level.
    #[arg(long, value_enum, default_value = "info", global = true)]
    pub log: LogArg,
    /// Stop the node (and fail) if it has not shut down after this many seconds.
    #[arg(long, value_name = "SECS", global = true)]
    pub timeout: Option<u64>,
    /// Where objects the node sends (the default job's image) are saved.
    #[arg(long, value_name = "DIR", default_value = ".", global = true)]
    pub out_dir: PathBuf,
    /// A disk for the node's store (docs/STORE.md): a raw file, or qcow2 if its name ends in
    /// .qcow2; made when missing. A serving node keeps its objects on it; `cairn bench`
    /// formats a blank one and measures the store on it.
    #[arg(long, value_name = "PATH", global = true)]
    pub disk: Option<PathBuf>,
    /// The size of a disk made by --disk, in bytes, or with K, M or G.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "4G", global = true)]
    pub disk_size: u64,
}

impl BootArgs {
    pub fn store_disk(&self) -> Option<cairn_tools::qemu::StoreDisk> {
        self.disk.clone().map(|path| cairn_tools::qemu::StoreDisk { path, size: self.disk_size })
    }
}

/// `4096`, `64K`, `512M`, `2G`: at least 1 MiB, whole sectors.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let (digits, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c.to_ascii_uppercase()),
        _ => (text, 'B'),
    };
    let shift = match unit {
        'B' => 0,
        'K' => 10,
        'M' => 20,
        'G' => 30,
        'T' => 40,
        _ => return Err(format!("{text}: the unit is K, M, G or T")),
    };
    let n: u64 = digits.parse().map_err(|_| format!("{text}: not a size"))?;
    let bytes =
        n.checked_shl(shift).filter(|b| b >> shift == n).ok_or_else(|| format!("{text}: too large"))?;
    if bytes < (1 << 20) || bytes % 512 != 0 {
        return Err(format!("{text}: a disk is at least 1M and a multiple of 512 bytes"));
    }
    Ok(bytes)
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogArg {
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
pub struct ImageArgs {
    #[command(flatten)]
    pub firmware: FirmwareArgs,
    /// Image format; qcow2 goes through qemu-img.
    #[arg(long, value_enum, default_value = "raw")]
    pub format: ImageFormat,
    /// What the node does when it boots from this image.
    #[arg(long, value_parser = ["serve", "job", "selftest", "fault-test", "task-checks", "bench", "fuzz"], default_value = "serve")]
    pub mode: String,
    /// Where to write the image.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Write the image as this cloud imports it: `gce` is a UEFI `disk.raw` (padded to a GiB)
    /// in a .tar.gz (docs/CLOUD.md).
    #[arg(long, value_enum, conflicts_with_all = ["format", "bios"])]
    pub cloud: Option<Cloud>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Cloud {
    Gce,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

/// `cairn node`: a serving node with the API forwarded to a host port.
pub fn node(args: &NodeArgs) -> anyhow::Result<ExitCode> {
    eprintln!("cairn: node API on 127.0.0.1:{} (use --node 127.0.0.1:{})", args.api_port, args.api_port);
    let mut text = String::new();
    if let Some(ip) = &args.ip {
        text.push_str(&format!("ip = {ip}\n"));
    }
    if let Some(gateway) = &args.gateway {
        text.push_str(&format!("gateway = {gateway}\n"));
    }
    text.push_str(&format!("api_idle_s = {}\n", args.api_idle));
    // Through the node's own parser, so that bad --ip or --gateway text fails as the node would.
    let config = NodeConfig::parse(text.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
    boot_and_stream_on(&args.boot, NodeConfig { mode: Mode::Serve, ..config }, Some(args.api_port), None)
}

fn parse_mode(name: &str) -> Mode {
    Mode::ALL.into_iter().find(|m| m.name() == name).unwrap_or(Mode::Serve)
}

pub fn write_image(args: &ImageArgs) -> anyhow::Result<ExitCode> {
    let firmware = args.firmware.firmware();
    let config = NodeConfig { mode: parse_mode(&args.mode), ..NodeConfig::default() };
    if let Some(Cloud::Gce) = args.cloud {
        // On GCE a node's configuration comes from the metadata server (docs/CLOUD.md).
        let config = NodeConfig { metadata: cairn_bootcfg::Metadata::Gce, ..config };
        let dir = tempfile::tempdir().context("cannot make a temporary directory")?;
        let raw = dir.path().join("disk.raw");
        qemu::write_image(Firmware::Uefi, &config, false, &raw)?;
        cairn_tools::cloud::gce_tarball(&raw, &args.output)?;
        let size = std::fs::metadata(&args.output)?.len();
        println!("{} (GCE: UEFI disk.raw of 1 GiB in a .tar.gz, {} KiB)", args.output.display(), size / 1024);
        return Ok(ExitCode::SUCCESS);
    }
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

/// Writes the spans a node sent (`cairn_proto::trace` records) as a trace file.
fn write_trace(spans: &[u8], path: &std::path::Path) -> anyhow::Result<()> {
    let spans =
        cairn_proto::trace::decode_spans(spans).map_err(|e| anyhow::anyhow!("the node's trace: {e}"))?;
    let count = spans.len();
    let node = cairn_tools::trace::NodeTrace {
        name: "node".into(),
        spans,
        clock: cairn_tools::trace::Clock::same(),
        lost: 0,
    };
    let json = cairn_tools::trace::chrome_json(&[node]);
    cairn_tools::trace::validate(&json)?;
    std::fs::write(path, json.to_string()).with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!(
        "cairn: trace of {count} spans written to {} (open it in https://ui.perfetto.dev)",
        path.display()
    );
    Ok(())
}

/// A serving node booted for one command (`cairn eval --boot`): its VM (dropping it stops the
/// node) and its API's address on 127.0.0.1, once it has one.
pub fn boot_serving() -> anyhow::Result<(Vm, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("no free port on 127.0.0.1")?
        .port();
    let opts = NodeOptions {
        config: NodeConfig { mode: Mode::Serve, ..NodeConfig::default() },
        api_port: Some(port),
        ..NodeOptions::default()
    };
    eprintln!(
        "cairn: booting a node for this command ({}, {}, {} MiB)",
        opts.firmware, opts.accel, opts.memory_mib
    );
    let mut vm = Vm::boot(&opts)?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        match vm.next_line(deadline) {
            Ok(Some(line)) if line.starts_with("cairn: net ip=") => break,
            Ok(Some(_)) => {}
            Ok(None) => anyhow::bail!("the node stopped before it had an address: {}", vm.wait(deadline)?),
            Err(e) => {
                vm.kill();
                return Err(e.context("the node did not come up within 300 s"));
            }
        }
    }
    Ok((vm, format!("127.0.0.1:{port}")))
}

pub fn boot_and_stream(args: &BootArgs, mode: Mode) -> anyhow::Result<ExitCode> {
    boot_and_stream_on(args, NodeConfig { mode, ..NodeConfig::default() }, None, None)
}

/// The default job, its trace (docs/TRACES.md) written to `trace` if given.
pub fn default_job(args: &BootArgs, trace: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    boot_and_stream_on(args, NodeConfig { mode: Mode::Job, ..NodeConfig::default() }, None, trace)
}

/// `config` gives the mode and the network settings; the log level comes from `args`. Console
/// lines go to stdout, one by one as they come.
fn boot_and_stream_on(
    args: &BootArgs,
    config: NodeConfig,
    api_port: Option<u16>,
    trace: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout();
    boot_and_watch_on(args, config, (api_port, trace), |line| {
        let _ = writeln!(stdout, "{line}");
        let _ = stdout.flush();
    })
}

/// Boots a node, saves the objects it sends, hands every other console line to `on_line`, and
/// turns how the node ended into an exit code.
pub fn boot_and_watch(args: &BootArgs, mode: Mode, on_line: impl FnMut(&str)) -> anyhow::Result<ExitCode> {
    boot_and_watch_on(args, NodeConfig { mode, ..NodeConfig::default() }, (None, None), on_line)
}

/// Lines reach `on_line` escaped (crate `untrusted`): the kernel is ours, but a task's words can
/// appear in its log. Objects are parsed from the lines as they came.
fn boot_and_watch_on(
    args: &BootArgs,
    config: NodeConfig,
    (api_port, trace): (Option<u16>, Option<&std::path::Path>),
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
        api_port,
        disk: args.store_disk(),
        ..NodeOptions::default()
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
                    // The job's spans: a trace file if asked for, else nothing.
                    Line::Done(object) if object.name == "trace.spans" => {
                        if let Some(path) = trace {
                            write_trace(&object.bytes, path)?;
                        }
                        continue;
                    }
                    Line::Done(object) => {
                        let path = args.out_dir.join(&object.name);
                        std::fs::write(&path, &object.bytes)
                            .with_context(|| format!("cannot write {}", path.display()))?;
                        eprintln!(
                            "cairn: saved {} ({} bytes, {}) to {}",
                            escape(&object.name),
                            object.bytes.len(),
                            object.handle,
                            path.display()
                        );
                        continue;
                    }
                }
                on_line(&escape(&line));
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

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_take_units_and_refuse_what_no_disk_can_be() {
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("200m"), Ok(200 << 20));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert!(parse_size("1000").unwrap_err().contains("at least 1M"));
        assert!(parse_size("1048577").unwrap_err().contains("multiple of 512"));
        assert!(parse_size("3X").unwrap_err().contains("unit"));
        assert!(parse_size("99999999999T").unwrap_err().contains("too large"));
        assert!(parse_size("G").is_err());
    }
}
