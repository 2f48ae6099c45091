//! `cairn fuzz`: the syscall fuzzer (cairn-fuzz; docs/SECURITY.md). Boots a node in `fuzz`
//! mode, which runs generated programs as tasks with no network, streams its progress, and
//! reports the count, the rate, failures by kind, and any crash (a kernel panic or fatal
//! exception, a triple fault, a hang, a failed check) with the seed and the stretch of programs
//! that caused it, narrowed by booting again on that stretch. With `--node`, the host generates
//! the programs and a running node evaluates them through its API instead.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use cairn_bootcfg::{Fuzz, Mode, NodeConfig};
use cairn_fuzz::generate;
use cairn_object::{Handle, Kind, Limits};
use cairn_tools::client::{Client, TaskFailed};
use cairn_tools::qemu::{Accel, NodeExit, NodeOptions, Vm};
use cairn_tools::untrusted::escape;
use clap::Args;

use super::boot::BootArgs;

/// The fuzz task and an ordinary one, for `--node` (the node may not have them).
const FUZZ_ELF: &[u8] = include_bytes!(env!("CARGO_BIN_FILE_CAIRN_TASKS_fuzz"));
const ADD_ELF: &[u8] = include_bytes!(env!("CARGO_BIN_FILE_CAIRN_TASKS_add"));

/// How often the node reports progress (kernel/node/src/jobs/fuzz.rs): a crash lies within
/// this many programs of the last report.
const PROGRESS_EVERY: u64 = 1000;

#[derive(Args)]
pub struct FuzzArgs {
    #[command(flatten)]
    pub boot: BootArgs,
    /// Programs to run.
    #[arg(long, default_value_t = 10_000)]
    pub programs: u64,
    /// Seed of the programs: the same seed makes the same programs.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Index of the first program (to run a stretch of a run again).
    #[arg(long, default_value_t = 0)]
    pub first: u64,
    /// Seconds without progress after which the node counts as hung.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub stall: u64,
    /// On a crash, do not boot again to narrow it down to one program.
    #[arg(long)]
    pub no_bisect: bool,
    /// Generate the programs here and evaluate them on this running node, through its API.
    #[arg(long, value_name = "ADDR")]
    pub node: Option<String>,
    /// With --node: programs between checks that the node still answers correctly.
    #[arg(long, default_value_t = 50)]
    pub batch: u64,
}

pub fn fuzz(args: &FuzzArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.programs > 0, "--programs must be at least 1");
    if let Some(node) = &args.node {
        return fuzz_node(args, node);
    }
    let started = Instant::now();
    let run = boot_run(args, args.first, args.programs, true)?;
    let wall = started.elapsed().as_secs_f64();
    match &run.crash {
        None => {
            let done = run.done.as_ref().ok_or_else(|| anyhow::anyhow!("the node gave no summary"))?;
            report(args, done, wall, &run.check_failures);
            let passed = run.check_failures.is_empty() && run.exit == NodeExit::Success;
            Ok(if passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Some(crash) => {
            println!("fuzz: CRASH seed={} programs {}..{}: {}", args.seed, crash.from, crash.to, crash.what);
            for line in &crash.console {
                println!("fuzz:   {line}");
            }
            if !args.no_bisect {
                bisect(args, crash)?;
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

/// How a node in fuzz mode ended.
struct Run {
    /// The fields of `cairn: fuzz done ...`.
    done: Option<BTreeMap<String, String>>,
    check_failures: Vec<String>,
    crash: Option<Crash>,
    exit: NodeExit,
}

/// A crash, and the programs it lies among.
struct Crash {
    what: String,
    from: u64,
    to: u64,
    /// The lines that reported it (and the backtrace after them).
    console: Vec<String>,
}

/// `key=value` fields of a machine line.
fn fields(line: &str) -> BTreeMap<String, String> {
    line.split(' ').filter_map(|f| f.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Reads a fuzz node's console: its progress, its summary, failed checks, and crash reports.
struct Watch {
    end: u64,
    /// The first program not yet reported done.
    next: u64,
    /// The program a panic named.
    exact: Option<u64>,
    crash_lines: Vec<String>,
    done: Option<BTreeMap<String, String>>,
    check_failures: Vec<String>,
}

impl Watch {
    fn new(first: u64, programs: u64) -> Watch {
        let end = first + programs;
        Watch {
            end,
            next: first,
            exact: None,
            crash_lines: Vec::new(),
            done: None,
            check_failures: Vec::new(),
        }
    }

    /// Takes one (escaped) console line; a progress line's fields are handed back.
    fn line(&mut self, line: String) -> Option<BTreeMap<String, String>> {
        if let Some(rest) = line.strip_prefix("cairn: fuzz progress ") {
            let f = fields(rest);
            self.next = f.get("next").and_then(|n| n.parse().ok()).unwrap_or(self.next);
            return Some(f);
        }
        if let Some(rest) = line.strip_prefix("cairn: fuzz done ") {
            self.done = Some(fields(rest));
        } else if line.starts_with("cairn: fuzz check FAILED") {
            eprintln!("{line}");
            self.check_failures.push(line);
        } else if let Some(rest) = line.strip_prefix("cairn: fuzz panic in program ") {
            self.exact = fields(rest).get("index").and_then(|i| i.parse().ok());
            self.crash_lines.push(line);
        } else if line.starts_with("cairn: kernel panic")
            || line.starts_with("cairn: fatal exception")
            || line.starts_with("cairn: nested fault")
            || !self.crash_lines.is_empty()
        {
            // The report and everything after it (the backtrace).
            self.crash_lines.push(line);
        }
        None
    }

    /// How the run ended: `exit` is how QEMU did, `hung` the seconds without progress after
    /// which it was stopped.
    fn finish(self, exit: NodeExit, hung: Option<u64>) -> Run {
        let crashed = hung.is_some()
            || !self.crash_lines.is_empty()
            || matches!(exit, NodeExit::Reset | NodeExit::QemuError { .. })
            || (self.done.is_none() && exit != NodeExit::Success);
        let crash = crashed.then(|| {
            let what = match (hung, self.crash_lines.iter().find(|l| !l.starts_with("cairn: fuzz panic"))) {
                (Some(secs), _) => format!("no progress for {secs} s: the node hung (QEMU stopped)"),
                (None, Some(first_line)) => first_line.clone(),
                (None, None) => format!("{exit}, with no report"),
            };
            let (from, to) = match self.exact {
                Some(i) => (i, i + 1),
                None => (self.next, (self.next + PROGRESS_EVERY).min(self.end)),
            };
            Crash { what, from, to, console: self.crash_lines }
        });
        Run { done: self.done, check_failures: self.check_failures, crash, exit }
    }
}

/// Boots a fuzz node on programs `first..first + programs` and watches it.
fn boot_run(args: &FuzzArgs, first: u64, programs: u64, verbose: bool) -> anyhow::Result<Run> {
    let accel: Accel = args.boot.accel.parse().map_err(anyhow::Error::msg)?;
    let config = NodeConfig {
        mode: Mode::Fuzz,
        log_level: args.boot.log.into(),
        fuzz: Fuzz { seed: args.seed, programs, first },
        ..NodeConfig::default()
    };
    let opts = NodeOptions {
        firmware: args.boot.firmware.firmware(),
        accel,
        memory_mib: args.boot.memory,
        cpus: args.boot.cpus,
        config,
        ..NodeOptions::default()
    };
    eprintln!("cairn: booting a fuzz node: seed {} programs {first}..{}", args.seed, first + programs);
    let mut vm = Vm::boot(&opts)?;
    let stall = Duration::from_secs(args.stall);
    let overall = Instant::now() + Duration::from_secs(args.boot.timeout.unwrap_or(100 * 365 * 86400));
    let mut watch = Watch::new(first, programs);
    loop {
        let deadline = (Instant::now() + stall).min(overall);
        let line = match vm.next_line(deadline) {
            Ok(Some(line)) => escape(&line),
            Ok(None) => break,
            Err(_) => {
                vm.kill();
                return Ok(watch.finish(NodeExit::Success, Some(args.stall)));
            }
        };
        if verbose && (line.starts_with("cairn: ready") || line.starts_with("cairn: fuzz start")) {
            eprintln!("{line}");
        }
        if let Some(f) = watch.line(line)
            && verbose
        {
            let get = |k: &str| f.get(k).cloned().unwrap_or_else(|| "?".into());
            eprintln!(
                "cairn: fuzz {} of {programs} programs: ok {}, failed {}, checks {}, {}/s, heap {} KiB",
                get("done"),
                get("ok"),
                get("failed"),
                get("checks_ok"),
                get("rate_per_s"),
                get("heap_kib")
            );
        }
    }
    let exit = vm.wait(Instant::now() + Duration::from_secs(10))?;
    Ok(watch.finish(exit, None))
}

fn report(args: &FuzzArgs, done: &BTreeMap<String, String>, wall: f64, check_failures: &[String]) {
    let get = |k: &str| done.get(k).map_or("?", |v| v.as_str());
    println!("fuzz: seed={} programs {}..{}", args.seed, get("first"), args.first + args.programs);
    println!(
        "fuzz: programs={} ok={} failed={} tasks_run={} syscalls={} page_ins={}",
        get("programs"),
        get("ok"),
        get("failed"),
        get("tasks_run"),
        get("syscalls"),
        get("page_ins")
    );
    println!("fuzz: failures by kind: {}", get("by_kind"));
    println!(
        "fuzz: checks {} of {} passed; store resets {}",
        get("checks_ok"),
        get("checks"),
        get("store_resets")
    );
    println!(
        "fuzz: rate {} programs/s in guest time ({} ms); wall {wall:.1} s",
        get("rate_per_s"),
        get("ms")
    );
    let verdict = if check_failures.is_empty() { "none" } else { "FAILED CHECKS (above)" };
    println!("fuzz: crashes: none; check failures: {verdict}");
}

/// Boots again on the crash's stretch of programs and halves it while the crash recurs.
fn bisect(args: &FuzzArgs, crash: &Crash) -> anyhow::Result<()> {
    let (mut from, mut to) = (crash.from, crash.to);
    let recurs = |from: u64, to: u64| -> anyhow::Result<Option<String>> {
        let run = boot_run(args, from, to - from, false)?;
        Ok(run.crash.map(|c| c.what))
    };
    match recurs(from, to)? {
        None => {
            println!(
                "fuzz: programs {from}..{to} alone do not crash the node: the crash needs what ran before"
            );
            return Ok(());
        }
        Some(what) => println!("fuzz: programs {from}..{to} alone crash it again: {what}"),
    }
    while to - from > 1 {
        let mid = from + (to - from) / 2;
        if recurs(from, mid)?.is_some() {
            to = mid;
        } else if recurs(mid, to)?.is_some() {
            from = mid;
        } else {
            break;
        }
    }
    println!(
        "fuzz: narrowed to programs {from}..{to}; replay with `cairn fuzz --seed {} --first {from} --programs {}`",
        args.seed,
        to - from
    );
    if to - from == 1 {
        let ops: Vec<_> = cairn_fuzz::Decoder::new(&generate::program(args.seed, from)).collect();
        println!("fuzz: program {from}: {ops:?}");
    }
    Ok(())
}

/// `--node`: programs generated here, evaluated there, with a check after every batch.
fn fuzz_node(args: &FuzzArgs, address: &str) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect(address)?;
    let (procedure, add) = (Handle::blob(FUZZ_ELF), Handle::blob(ADD_ELF));
    let literal = Handle::blob(b"a literal");
    let tree = cairn_object::tree::encode(&[procedure, add, literal]);
    let tree_handle = cairn_object::store::name(Kind::Tree, &tree)?;
    let large: Vec<u8> = (0..3000).map(|i| cairn_fuzz::pattern_byte(1, i)).collect();
    let large_handle = Handle::blob(&large);
    client.upload_missing(&[
        (procedure, FUZZ_ELF.to_vec()),
        (add, ADD_ELF.to_vec()),
        (tree_handle, tree),
        (large_handle, large),
    ])?;
    let limits = Limits::new(4 << 20).expect("whole pages");
    let started = Instant::now();
    let (mut ok, mut failed, mut checks) = (0u64, 0u64, 0u64);
    let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
    for index in args.first..args.first + args.programs {
        let program = generate::program(args.seed, index);
        let blob = Handle::blob(&program);
        let encoding =
            cairn_object::thunk::encode(limits, procedure, &[blob, procedure, tree_handle, large_handle])
                .map_err(|p| anyhow::anyhow!("{p}"))?;
        let thunk = cairn_object::store::name(Kind::Thunk, &encoding)?;
        let outcome = (|| {
            if !blob.is_literal() {
                client.put(blob, &program, |_| {})?;
            }
            client.put(thunk, &encoding, |_| {})?;
            client.eval_fresh(thunk)
        })();
        match outcome {
            Ok(_) => ok += 1,
            Err(e) if e.downcast_ref::<TaskFailed>().is_some() => {
                failed += 1;
                let failure = &e.downcast_ref::<TaskFailed>().expect("checked").failure;
                let kind = failure.split(':').next().unwrap_or("?").replace(' ', "_");
                *by_kind.entry(escape(&kind)).or_default() += 1;
            }
            Err(e) => {
                println!("fuzz: CRASH? seed={} index={index}: the node did not answer: {e:#}", args.seed);
                return node_check(address, index, args.seed).map(|_| ExitCode::FAILURE);
            }
        }
        let done = index - args.first + 1;
        if done.is_multiple_of(args.batch.max(1)) || done == args.programs {
            node_check(address, index, args.seed)?;
            checks += 1;
            eprintln!(
                "cairn: fuzz {done} of {} programs: ok {ok}, failed {failed}, checks {checks}",
                args.programs
            );
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let kinds: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k}:{n}")).collect();
    println!(
        "fuzz: node {address} seed={} programs {}..{}",
        args.seed,
        args.first,
        args.first + args.programs
    );
    println!("fuzz: programs={} ok={ok} failed={failed}", args.programs);
    println!("fuzz: failures by kind: {}", if kinds.is_empty() { "none".into() } else { kinds.join(",") });
    println!("fuzz: checks {checks} of {checks} passed");
    println!("fuzz: rate {:.0} programs/s over the API; wall {wall:.1} s", args.programs as f64 / wall);
    println!("fuzz: crashes: none");
    Ok(ExitCode::SUCCESS)
}

/// A new connection: STATS answers, and add(n, 3), fresh, gives n + 3 and round-trips.
fn node_check(address: &str, index: u64, seed: u64) -> anyhow::Result<()> {
    let fail = |why: String| anyhow::anyhow!("after program seed={seed} index={index} the node {why}");
    let mut client = Client::connect(address).map_err(|e| fail(format!("refused a connection: {e:#}")))?;
    let stats = client.stats().map_err(|e| fail(format!("did not answer STATS: {e:#}")))?;
    if !stats.contains("objects=") {
        return Err(fail(format!("answered STATS with {}", escape(&stats))));
    }
    let n = 1_000_000 + index;
    let (a, b) = (Handle::blob(&n.to_le_bytes()), Handle::blob(&3u64.to_le_bytes()));
    let add = Handle::blob(ADD_ELF);
    let encoding = cairn_object::thunk::encode(Limits::new(1 << 20).expect("pages"), add, &[a, b])
        .map_err(|p| anyhow::anyhow!("{p}"))?;
    let thunk = cairn_object::store::name(Kind::Thunk, &encoding)?;
    client
        .upload_missing(&[(add, ADD_ELF.to_vec()), (thunk, encoding)])
        .map_err(|e| fail(format!("{e:#}")))?;
    let result = client.eval_fresh(thunk).map_err(|e| fail(format!("failed add: {e:#}")))?.result;
    let value = client.get(result, |_, _| {}).map_err(|e| fail(format!("{e:#}")))?;
    if value != (n + 3).to_le_bytes() {
        return Err(fail(format!("says add({n}, 3) = {value:02x?}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(lines: &[&str]) -> Watch {
        let mut w = Watch::new(5000, 10_000);
        for line in lines {
            w.line(line.to_string());
        }
        w
    }

    const PROGRESS: &str =
        "cairn: fuzz progress done=3000 next=8000 ok=1 failed=2 checks_ok=30/30 rate_per_s=9";

    #[test]
    fn a_clean_run_is_no_crash() {
        let w = watch(&[PROGRESS, "cairn: fuzz done seed=1 first=5000 programs=10000 ok=5 by_kind=trap:3"]);
        let run = w.finish(NodeExit::Success, None);
        assert!(run.crash.is_none() && run.check_failures.is_empty());
        assert_eq!(run.done.unwrap()["by_kind"], "trap:3");
    }

    #[test]
    fn crashes_are_placed_among_the_programs_since_the_last_progress() {
        let fault = "cairn: fatal exception: page fault (#PF, vector 14) at rip=0x1";
        let run = watch(&[PROGRESS, fault, "cairn: backtrace (kernel image at 0x0):"])
            .finish(NodeExit::Failure, None);
        let crash = run.crash.unwrap();
        assert_eq!((crash.from, crash.to, crash.what.as_str()), (8000, 9000, fault));
        assert_eq!(crash.console.len(), 2);
        // A panic names its program.
        let panic = ["cairn: fuzz panic in program seed=1 index=8123", "cairn: kernel panic: boom"];
        let crash = watch(&panic).finish(NodeExit::Failure, None).crash.unwrap();
        assert_eq!((crash.from, crash.to, crash.what.as_str()), (8123, 8124, "cairn: kernel panic: boom"));
        // A triple fault says nothing; a hang is stopped; the last stretch ends with the run.
        let crash = watch(&[PROGRESS]).finish(NodeExit::Reset, None).crash.unwrap();
        assert!(crash.what.contains("reset"), "{}", crash.what);
        let crash =
            watch(&["cairn: fuzz progress next=14500"]).finish(NodeExit::Success, Some(120)).crash.unwrap();
        assert_eq!((crash.from, crash.to), (14500, 15000));
        assert!(crash.what.contains("no progress for 120 s"));
    }

    #[test]
    fn failed_checks_fail_the_run_without_being_a_crash() {
        let w = watch(&[
            "cairn: fuzz check FAILED after program seed=1 index=5099: add(1, 3) gave x",
            "cairn: fuzz done ok=1",
        ]);
        let run = w.finish(NodeExit::Failure, None);
        assert!(run.crash.is_none());
        assert_eq!(run.check_failures.len(), 1);
    }
}
