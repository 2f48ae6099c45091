//! `cairn bench`: a node that measures itself in the guest, or (`--net`) the node API's
//! throughput timed on the host.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use cairn_bootcfg::{Mode, NodeConfig};
use cairn_tools::qemu::{Accel, NodeOptions, Vm};
use clap::Args;

use super::boot::{BootArgs, boot_and_watch};

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub boot: BootArgs,
    /// One JSON object per line: {"name": ..., "value": ..., "unit": ...}.
    #[arg(long)]
    pub json: bool,
    /// Measure the network instead: put and then get a blob of this many MiB through the node
    /// API (user networking), timed on the host.
    #[arg(long, value_name = "MIB")]
    pub net: Option<u64>,
}

/// A measurement: name, value, unit.
type Measurement = (String, f64, String);

pub fn bench(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    if let Some(mib) = args.net {
        let results = bench_net(&args.boot, mib)?;
        print_results(&results, args.json);
        return Ok(ExitCode::SUCCESS);
    }
    // What this host gives two CPU-bound threads against one, measured before the node boots
    // (not beside it: it would take the node's cores), to set the node's speed-up against.
    let mut results = vec![("host_2thread_speedup".to_string(), host_speedup(), "x".to_string())];
    // The console goes to stderr so that stdout holds only the results. The lines arrive
    // escaped, so the names and units taken from them are printable too.
    let code = boot_and_watch(&args.boot, Mode::Bench, |line| {
        if let Some(measurement) = parse_measurement(line) {
            results.push(measurement);
        }
        eprintln!("{line}");
    })?;
    print_results(&results, args.json);
    if results.is_empty() && code == ExitCode::SUCCESS {
        anyhow::bail!("the node reported no measurements");
    }
    Ok(code)
}

/// Two threads doing the same scalar work at once against one doing it alone: 2 * t1 / t2. On
/// an idle two-core host about 2; a shared host gives less, and so then do the node's CPUs
/// (each is a host thread).
fn host_speedup() -> f64 {
    /// `rounds` of a dependent chain of xorshifts: scalar, like the emulator's own work, and
    /// not something the compiler can shorten.
    fn work(rounds: u64) -> u64 {
        let mut x = std::hint::black_box(0x9e37_79b9_7f4a_7c15u64);
        for _ in 0..rounds {
            for _ in 0..1_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
            }
        }
        x
    }
    // As many rounds as one thread does in half a second (whatever the build's optimization).
    let started = Instant::now();
    let mut rounds = 0;
    while started.elapsed() < Duration::from_millis(500) {
        std::hint::black_box(work(1_000));
        rounds += 1_000;
    }
    let one = started.elapsed().as_secs_f64();
    let started = Instant::now();
    std::thread::scope(|s| {
        let a = s.spawn(|| work(rounds));
        let b = s.spawn(|| work(rounds));
        std::hint::black_box((a.join().ok(), b.join().ok()));
    });
    let two = started.elapsed().as_secs_f64();
    2.0 * one / two
}

/// `cairn: bench NAME VALUE UNIT`, as the node prints each measurement.
fn parse_measurement(line: &str) -> Option<Measurement> {
    let rest = line.strip_prefix("cairn: bench ")?;
    let parts: Vec<&str> = rest.split(' ').collect();
    let [name, value, unit] = parts[..] else { return None };
    Some((name.to_string(), value.parse::<f64>().ok()?, unit.to_string()))
}

fn print_results(results: &[Measurement], json: bool) {
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
fn bench_net(boot: &BootArgs, mib: u64) -> anyhow::Result<Vec<Measurement>> {
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
        api_port: Some(port),
        // With --disk, the node keeps what it is sent there (docs/STORE.md).
        disk: boot.store_disk(),
        ..NodeOptions::default()
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
    let outcome = (|| -> anyhow::Result<(f64, f64, String)> {
        let mut client = Client::connect(&format!("127.0.0.1:{port}"))?;
        let started = Instant::now();
        client.put(handle, &bytes, |_| {})?;
        let put_s = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let back = client.get(handle, |_, _| {})?;
        let get_s = started.elapsed().as_secs_f64();
        anyhow::ensure!(back == bytes, "the blob came back different");
        Ok((put_s, get_s, client.stats()?))
    })();
    vm.kill();
    let (put_s, get_s, stats) = outcome?;
    let mib = mib as f64;
    let mut results = vec![
        ("put_mib_s".into(), mib / put_s, "MiB/s".into()),
        ("get_mib_s".into(), mib / get_s, "MiB/s".into()),
    ];
    // How the node shared the work between its CPUs (docs/ARCHITECTURE.md, "CPUs").
    for (key, unit) in [
        ("helper_busy_ms", "ms"),
        ("helper_hashed_bytes", "bytes"),
        ("keystreams_ahead", "records"),
        ("keystreams_taken_back", "records"),
        ("idle_ms", "ms"),
    ] {
        let value = stats.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=')?.parse::<f64>().ok());
        if let Some(value) = value {
            results.push((key.into(), value, unit.into()));
        }
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measurements_are_read_from_their_lines_only() {
        assert_eq!(
            parse_measurement("cairn: bench invoke_us 12.5 us"),
            Some(("invoke_us".into(), 12.5, "us".into()))
        );
        assert_eq!(parse_measurement("cairn: bench invoke_us twelve us"), None);
        assert_eq!(parse_measurement("cairn: bench a 1 b c"), None);
        assert_eq!(parse_measurement("[ 0.1] info cairn: bench a 1 b"), None);
    }
}
