//! The `cairn` command as a user runs it: exit codes, clean-up of QEMU on signals and timeouts,
//! images, and one-sentence errors.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use cairn_tests::BOOT_TIMEOUT;

/// A port for the node API that nothing else is using (each test boots its own node).
fn free_port() -> String {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string()
}

fn cairn() -> Command {
    Command::new(env!("CARGO_BIN_FILE_CAIRN_TOOLS_cairn"))
}

/// A running `cairn` whose stdout and stderr lines arrive on one channel.
struct Running {
    child: Child,
    lines: mpsc::Receiver<(bool, String)>,
    seen: Vec<String>,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        let mut child = cairn()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start cairn");
        let (tx, lines) = mpsc::channel();
        for (is_err, pipe) in [
            (false, Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>),
            (true, Box::new(child.stderr.take().unwrap())),
        ] {
            let tx = tx.clone();
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let _ = tx.send((is_err, line));
                }
            });
        }
        Running { child, lines, seen: Vec::new() }
    }

    /// Waits for a line starting with `prefix` and returns the rest of it.
    fn wait_for(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((_, line)) => {
                    self.seen.push(line.clone());
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.to_string();
                    }
                }
                Err(_) => {
                    panic!("no line starting with {prefix:?}; output so far:\n{}", self.seen.join("\n"))
                }
            }
        }
    }

    fn qemu_pid(&mut self) -> u32 {
        self.wait_for("cairn: qemu pid ").trim().parse().expect("pid is a number")
    }

    fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "cairn did not exit");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// True once `pid` has exited (gone, or a zombie waiting for a reaper).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

fn assert_gone_soon(pid: u32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !process_gone(pid) {
        assert!(Instant::now() < deadline, "QEMU (pid {pid}) still runs after {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on the pid of a child we have not reaped.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill failed");
}

#[test]
fn default_job_boots_shows_ready_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let output = cairn().arg("--out-dir").arg(dir.path()).stdin(Stdio::null()).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.lines().filter(|l| l.starts_with("cairn: ready boot_ms=")).count(), 1, "{stdout}");
}

#[test]
fn tcg_icount_gives_the_same_guest_times_on_every_run() {
    // Two nodes booted at once, so the host is busy: with guest time counted in instructions,
    // the kernel log's timestamps and the BLAKE3 speeds it measures at boot still agree.
    let run = || {
        thread::spawn(|| {
            let dir = tempfile::tempdir().unwrap();
            let output = cairn()
                .args(["--accel", "tcg-icount", "--out-dir"])
                .arg(dir.path())
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let log = String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(0), "{log}");
            let timed: Vec<String> = log.lines().filter(|l| l.starts_with('[')).map(String::from).collect();
            assert!(timed.iter().any(|l| l.contains("blake3: crate path")), "{log}");
            timed
        })
    };
    let (first, second) = (run(), run());
    assert_eq!(first.join().unwrap(), second.join().unwrap());
}

#[test]
fn sim_runs_are_reproduced_from_their_seed() {
    let args = [
        "sim",
        "--nodes",
        "20",
        "--tasks",
        "300",
        "--crashes",
        "3",
        "--corrupt",
        "1",
        "--drop",
        "0.02",
        "--jitter-us",
        "500",
        "--seed",
        "9",
        "--placement",
        "all",
        "--json",
    ];
    let run = || {
        let output = cairn().args(args).output().unwrap();
        assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
        let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        rows
    };
    let first = run();
    let placements: Vec<&str> = first.iter().map(|r| r["placement"].as_str().unwrap()).collect();
    assert_eq!(placements, ["locality", "min-absent", "random"]);
    // Faults change where tasks run, never the result.
    assert!(
        first
            .iter()
            .all(|r| r["result"] == first[0]["result"] && r["result"].as_str().unwrap().starts_with("blob:"))
    );
    assert!(first.iter().all(|r| r["lost_nodes"].as_u64().unwrap() > 0), "{first:?}");
    let second = run();
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(
            (&a["trace"], &a["makespan_s"], &a["moved_bytes"]),
            (&b["trace"], &b["makespan_s"], &b["moved_bytes"])
        );
    }
    // A bad argument is one sentence.
    let output = cairn().args(["sim", "--drop", "1.5"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cairn: error: --drop is a chance"));
}

#[test]
fn sim_draws_task_durations_from_a_recorded_run() {
    let dir = tempfile::tempdir().unwrap();
    let recorded = dir.path().join("durations.json");
    // As `cairn eval --record-durations` writes it: maps of 2 s, a reduce of 1 s.
    std::fs::write(&recorded, r#"{"leaf_us":[2000000,2000000],"inner_us":[1000000]}"#).unwrap();
    let sim = |extra: &[&str]| {
        let output = cairn()
            .args(["sim", "--nodes", "4", "--tasks", "8", "--fan-in", "8", "--no-recall", "--json"])
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
        let row: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        row
    };
    let modelled = sim(&[]);
    let drawn = sim(&["--durations", recorded.to_str().unwrap()]);
    assert_eq!(modelled["result"], drawn["result"]);
    // Two rounds of 2 s maps on 4 nodes, then the 1 s reduce (plus the network's little).
    let makespan = drawn["makespan_s"].as_f64().unwrap();
    assert!((5.0..5.2).contains(&makespan), "{drawn}");
    assert!(modelled["makespan_s"].as_f64().unwrap() < 1.0, "{modelled}");
    // A file that records nothing, or not microseconds, is named.
    std::fs::write(&recorded, r#"{"leaf_us":[]}"#).unwrap();
    let output = cairn().args(["sim", "--durations", recorded.to_str().unwrap()]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("records no task's duration"));
    std::fs::write(&recorded, r#"{"leaf_us":["soon"]}"#).unwrap();
    let output = cairn().args(["sim", "--durations", recorded.to_str().unwrap()]).output().unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("not microseconds"));
}

#[test]
fn selftest_command_exits_zero_when_all_pass() {
    let output = cairn().args(["selftest", "--bios"]).stdin(Stdio::null()).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("selftest: ") && l.ends_with(" passed, 0 failed")),
        "{stdout}"
    );
}

#[test]
fn sigterm_stops_qemu_and_exits_130() {
    let port = free_port();
    let mut run = Running::start(&["node", "--api-port", &port]);
    let pid = run.qemu_pid();
    run.wait_for("cairn: ready ");
    signal(&run.child, libc::SIGTERM);
    assert_eq!(run.wait_exit(), Some(130));
    assert_gone_soon(pid, "cairn got SIGTERM");
}

#[test]
fn sigkill_of_cairn_still_stops_qemu() {
    let port = free_port();
    let mut run = Running::start(&["node", "--api-port", &port]);
    let pid = run.qemu_pid();
    run.wait_for("cairn: ready ");
    signal(&run.child, libc::SIGKILL);
    run.wait_exit();
    assert_gone_soon(pid, "cairn was killed");
}

#[test]
fn timeout_stops_qemu_with_a_clear_error() {
    let port = free_port();
    let mut run = Running::start(&["node", "--timeout", "3", "--api-port", &port]);
    let pid = run.qemu_pid();
    let error = run.wait_for("cairn: error: ");
    assert!(error.contains("did not finish within 3 s"), "{error}");
    assert_eq!(run.wait_exit(), Some(2));
    assert_gone_soon(pid, "the timeout");
}

#[test]
fn images_have_the_right_format() {
    let dir = tempfile::tempdir().unwrap();
    let write = |args: &[&str], name: &str| -> Vec<u8> {
        let path = dir.path().join(name);
        let output = cairn().arg("image").args(args).arg("-o").arg(&path).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        std::fs::read(&path).unwrap()
    };
    let bios = write(&["--bios"], "bios.img");
    assert_eq!(&bios[510..512], &[0x55, 0xaa], "BIOS image lacks the MBR boot signature");
    let uefi = write(&["--uefi"], "uefi.img");
    assert_eq!(&uefi[512..520], b"EFI PART", "UEFI image lacks a GPT header");
    let qcow2 = write(&["--uefi", "--format", "qcow2"], "uefi.qcow2");
    assert_eq!(&qcow2[..4], b"QFI\xfb", "not a qcow2 file");
}

#[test]
fn errors_are_one_sentence_without_a_panic() {
    let output = cairn().env("CAIRN_QEMU", "/nonexistent/qemu").output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2));
    let errors: Vec<_> = stderr.lines().filter(|l| l.starts_with("cairn: error: ")).collect();
    assert_eq!(errors, ["cairn: error: CAIRN_QEMU is set to /nonexistent/qemu, which is not a file"]);
    assert!(!stderr.contains("panicked"), "{stderr}");

    let output = cairn().args(["image", "-o", "/nonexistent-dir/x.img"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("cairn: error: cannot write the bios image to /nonexistent-dir/x.img"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!Path::new("/nonexistent-dir").exists());

    // A serving node's clock must follow real time: instruction-counted time is refused.
    let output =
        cairn().args(["node", "--accel", "tcg-icount", "--api-port", &free_port()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cairn: error: --accel tcg-icount is for runs that serve nothing"), "{stderr}");
}

#[test]
fn hash_prints_handle_first_with_the_b3sum_digest_for_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello"), b"hello").unwrap();
    std::fs::create_dir(dir.path().join("d")).unwrap();
    std::fs::write(dir.path().join("d/fox"), b"The quick brown fox jumps over the lazy dog").unwrap();
    let output = cairn()
        .arg("hash")
        .arg(dir.path().join("hello"))
        .arg(dir.path().join("d/fox"))
        .arg(dir.path().join("d"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(lines[0].starts_with(
        "blob:=68656c6c6f  b3:ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f  "
    ));
    assert!(lines[1].starts_with(
        "blob:2f1514181aadccd913abd94cfa592701a5686ab23f8df1dff1b74710febc6d4a:43  b3:2f1514181aadccd913abd94cfa592701a5686ab23f8df1dff1b74710febc6d4a  "
    ));
    assert!(lines[2].starts_with("tree:") && lines[2].contains("  -  "), "{}", lines[2]);

    let output = cairn().args(["hash", "--json"]).arg(dir.path().join("d")).output().unwrap();
    let line = String::from_utf8(output.stdout).unwrap();
    assert!(line.contains("\"kind\":\"tree\""), "{line}");

    let output = cairn().args(["hash", "/nonexistent/x"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).trim(),
        "cairn: error: cannot read /nonexistent/x: No such file or directory (os error 2)"
    );
}

/// With a disk (made fresh by `--disk`, as big as `--disk-size` says) the benchmark also measures
/// the store on it (docs/STORE.md), which it formats.
#[test]
fn bench_reports_its_measurements_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("bench.raw");
    let output = cairn()
        .args(["bench", "--json", "--disk-size", "200M", "--disk"])
        .arg(&disk)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let rows: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    // The default node has two CPUs: span hashing runs on both, and the throughput figures come
    // for one CPU and for both; the host's own two-thread figure comes first.
    assert_eq!(
        names,
        [
            "host_2thread_speedup",
            "store_put_per_s_1e3",
            "store_put_per_s_1e6",
            "store_objects_held",
            "store_heap_bytes_per_object",
            "invoke_us",
            "invoke_untraced_us",
            "trace_cost_pct",
            "wide_tasks_per_s_1cpu",
            "mandelbrot_ms_1cpu",
            "wide_tasks_per_s_2cpu",
            "mandelbrot_ms_2cpu",
            "memo_hit_us",
            "blake3_mib_s",
            "blake3_spans_2cpu_mib_s",
            "channel_handshake_us",
            "channel_seal_mib_s",
            "channel_open_mib_s",
            "store_write_mib_s",
            "store_open_ms",
            "store_open_mib_s",
            "store_read_mib_s",
            "store_open_checkpoint_ms"
        ]
    );
    for row in &rows {
        let value = row["value"].as_f64().unwrap();
        // trace_cost_pct is a difference of two timings: under TCG's noise it can come out below
        // zero (a full local run saw -7.8 %). Every other figure is a measurement.
        assert!(value.is_finite(), "{row}");
        assert!(row["name"] == "trace_cost_pct" || value > 0.0, "{row}");
    }
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 200 << 20, "made at the size asked");
    let superblocks = std::fs::read(&disk).unwrap();
    assert!(superblocks.starts_with(b"CAIRNSB1") && superblocks[4096..].starts_with(b"CAIRNSB1"));
    // A disk that holds something is never formatted by the benchmark.
    let output = cairn().args(["bench", "--disk"]).arg(&disk).stdin(Stdio::null()).output().unwrap();
    assert_ne!(output.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("the disk is not blank"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let value = |name: &str| rows.iter().find(|r| r["name"] == name).unwrap()["value"].as_f64().unwrap();
    // A memo hit does no work a task invocation does: it must be the cheaper of the two.
    assert!(value("memo_hit_us") < value("invoke_us"), "{stdout}");
    // The store's limit must not understate what an object costs the heap: it counts 192 bytes
    // besides the object's 40.
    assert!(value("store_heap_bytes_per_object") <= 40.0 + 192.0, "{stdout}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("blake3 path "),
        "the boot log names the BLAKE3 path"
    );
}

/// The network benchmark moves 64 MiB each way through a node with the default 512 MiB, which
/// is also the regression test for an upload that once outgrew the heap and stopped the node.
#[test]
fn bench_net_puts_and_gets_64_mib() {
    let output = cairn().args(["bench", "--net", "64", "--json"]).stdin(Stdio::null()).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let rows: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "put_mib_s",
            "get_mib_s",
            "helper_busy_ms",
            "helper_hashed_bytes",
            "keystreams_ahead",
            "keystreams_taken_back",
            "idle_ms"
        ]
    );
    for row in &rows {
        let value = row["value"].as_f64().unwrap();
        assert!(value.is_finite() && value >= 0.0, "{row}");
    }
    // The node's two CPUs shared the work: the helper hashed the upload and computed keystreams.
    for name in ["put_mib_s", "get_mib_s", "helper_busy_ms", "helper_hashed_bytes", "keystreams_ahead"] {
        let row = rows.iter().find(|r| r["name"] == name).unwrap();
        assert!(row["value"].as_f64().unwrap() > 0.0, "{row}");
    }
    assert!(String::from_utf8_lossy(&output.stderr).contains("(bios, tcg, 512 MiB)"));
}

#[test]
fn put_get_eval_and_stats_against_a_running_node() {
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let mut node = Running::start(&["node", "--api-port", &port]);
    node.wait_for("cairn: net ip=");
    let run = |args: &[&str]| {
        let output = cairn().args(args).args(["--node", &address]).stdin(Stdio::null()).output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        (output.status.code(), stdout, stderr)
    };

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data");
    std::fs::write(&file, vec![7u8; 100_000]).unwrap();
    let (code, stdout, stderr) = run(&["put", file.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    let handle = stdout.split_whitespace().next().unwrap().to_string();
    assert!(handle.starts_with("blob:") && handle.ends_with(":100000"), "{stdout}");

    let out = dir.path().join("back");
    let (code, _, stderr) = run(&["get", &handle, "-o", out.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(std::fs::read(&out).unwrap(), vec![7u8; 100_000]);

    let add = env!("CARGO_BIN_FILE_CAIRN_TASKS_add");
    let (code, stdout, stderr) = run(&["eval", add, "blob:=0200000000000000", "blob:=0300000000000000"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "blob:=0500000000000000\n0500000000000000\n");
    // The node has this very ELF built in (same bytes, same handle): only the thunk goes up.
    assert!(
        stderr.contains("1 tasks run, 0 memo hits") && stderr.contains("uploaded 1 of 2 objects"),
        "{stderr}"
    );
    // Again: nothing to upload, and the memo answers.
    let (_, _, stderr) = run(&["eval", add, "blob:=0200000000000000", "blob:=0300000000000000"]);
    assert!(
        stderr.contains("0 tasks run, 1 memo hits") && stderr.contains("uploaded 0 of 2 objects"),
        "{stderr}"
    );

    let (code, _, stderr) = run(&["eval", add, "blob:=02"]);
    assert_eq!(code, Some(2));
    assert!(stderr.trim_end().ends_with("failed: task error: add needs two arguments"), "{stderr}");

    let (code, stdout, _) = run(&["stats"]);
    assert_eq!(code, Some(0));
    // The successful add and the failed one both ran a task; the repeat was a memo hit.
    assert!(stdout.lines().any(|l| l == "tasks_run=2"), "{stdout}");
    assert!(stdout.lines().any(|l| l == "memo_hits=1"), "{stdout}");
    // Each CPU's tasks and their time (docs/ARCHITECTURE.md, "CPUs"): an EVAL's tasks go to
    // whichever CPU is free (the other one, unless it was slow to wake), two in all.
    assert!(stdout.lines().any(|l| l == "cpus=2"), "{stdout}");
    let tasks = cairn_tests::stat(&stdout, "cpu0_tasks") + cairn_tests::stat(&stdout, "cpu1_tasks");
    assert_eq!(tasks, 2, "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("cpu1_task_ms=")), "{stdout}");

    let (code, _, stderr) =
        run(&["get", "blob:2f1514181aadccd913abd94cfa592701a5686ab23f8df1dff1b74710febc6d4a:43"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("is not on this node"), "{stderr}");
    signal(&node.child, libc::SIGTERM);
    node.wait_exit();
}

/// Bad input to the job and cluster commands: one clear line, no panic, no VM booted.
#[test]
fn job_and_cluster_commands_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("cluster.json");
    let state = state.to_str().unwrap();
    let bundle = dir.path().join("not-a-bundle");
    std::fs::write(&bundle, "hello").unwrap();
    for (args, needle) in [
        (vec!["submit", "/nonexistent/job.toml"], "cannot read /nonexistent/job.toml"),
        (vec!["replay", "garbage"], "`garbage` is not a handle"),
        (vec!["journal", "import", bundle.to_str().unwrap()], "not a journal bundle"),
        (vec!["cluster", "down", "--state", state], "no cluster state at"),
        (vec!["cluster", "up", "--nodes", "0", "--state", state], "a cluster has 1 to 16 nodes"),
        (
            vec!["cluster", "up", "--nodes", "2", "--fault", "5=corrupt-objects", "--state", state],
            "names node 5",
        ),
        (
            vec!["cluster", "up", "--nodes", "2", "--fault", "1=melt", "--state", state],
            "unknown fault `melt`",
        ),
        (vec!["eval", "--cluster", state, "--job", "/nonexistent.toml"], "cannot read /nonexistent.toml"),
    ] {
        let output = cairn().args(&args).stdin(Stdio::null()).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle) && !stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// `cluster kill|restart` of a node the cluster does not have, or a restart of one never
/// killed: one clear line at once (no panic, no two minutes' wait for a QEMU that never
/// comes). A state file without a daemon is enough: nothing gets as far as the daemon.
#[test]
fn cluster_kill_and_restart_name_a_node_they_cannot_act_on() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("cluster.json");
    let nodes: Vec<String> = (0..3)
        .map(|i| {
            format!(
                r#"{{"index":{i},"api":"127.0.0.1:1","cluster_ip":[10,1,0,{}],"qemu_pid":{}}}"#,
                i + 1,
                u32::MAX - i
            )
        })
        .collect();
    let text = format!(r#"{{"daemon_pid":{},"log":"c.log","nodes":[{}]}}"#, u32::MAX - 9, nodes.join(","));
    std::fs::write(&state, text).unwrap();
    let state = state.to_str().unwrap();
    for (args, needle) in [
        (vec!["cluster", "restart", "9", "--state", state], "no node 9"),
        (vec!["cluster", "kill", "3", "--state", state], "no node 3"),
        (vec!["cluster", "restart", "1", "--state", state], "node 1 is not down"),
    ] {
        let started = Instant::now();
        let output = cairn().args(&args).stdin(Stdio::null()).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle) && !stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(started.elapsed() < Duration::from_secs(10), "{args:?} took {:?}", started.elapsed());
    }
}

/// What a hostile task or node says reaches the user escaped: on its own line at most, with no
/// terminal control left in it. A fake node on a local port plays the hostile side (no QEMU).
#[test]
fn hostile_node_text_is_escaped_on_the_terminal() {
    use std::io::Write;
    use std::net::TcpListener;

    use cairn_object::Handle;
    use cairn_proto::{Frame, MAX_FRAME, Message, decode, encode};

    const HOSTILE: &str = "task error: \x1b[2J\x1b]0;owned\x07\u{9b}31m\ncairn: ready boot_ms=1 mem_mib=1\r";
    // Text, not controls (which make it hex): its line break must not start a line.
    let value = b"ok\ncairn: ready boot_ms=1 mem_mib=1\n".to_vec();
    let value_h = Handle::blob(&value);

    // Answers HELLO, HAVE (it lacks nothing), EVAL (failing the first time, then with a value
    // whose text is hostile), GET of that value, and STATS.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    // The fake node holds a key, recorded for its address as `cairn node` records a node's.
    let key = cairn_tools::keys::fresh_secret().unwrap();
    cairn_tools::keys::remember_node(&address, &key.public()).unwrap();
    thread::spawn(move || {
        let mut evals = 0;
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let Ok((mut stream, _client)) = cairn_tools::secure::SecureStream::accept(stream, &key) else {
                continue;
            };
            let mut buffer = Vec::new();
            loop {
                let frame = match decode(&buffer).unwrap() {
                    Some((frame, used)) => {
                        buffer.drain(..used);
                        frame
                    }
                    None => {
                        let mut chunk = [0u8; 65536];
                        match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    }
                };
                let message = match frame.message {
                    Message::Hello { .. } => Message::Welcome {
                        version: 1,
                        node_id: [0; 32],
                        max_frame: MAX_FRAME as u32,
                        offers: 0,
                    },
                    Message::Have { .. } => Message::Missing { handles: Vec::new() },
                    Message::Eval { handle } => {
                        evals += 1;
                        if evals == 1 {
                            Message::EvalFailed { thunk: handle, failure: HOSTILE.into() }
                        } else {
                            Message::Evaluated { result: value_h, tasks_run: 1, memo_hits: 0, micros: 5 }
                        }
                    }
                    Message::Get { handle } => Message::Object { handle, bytes: value.clone() },
                    Message::Stats => Message::StatsReply { text: format!("objects=3\nnote={HOSTILE}\n") },
                    _ => break,
                };
                let mut out = Vec::new();
                encode(&Frame { request: frame.request, message }, &mut out);
                if stream.write_all(&out).is_err() {
                    break;
                }
            }
        }
    });
    let run = |args: &[&str]| {
        let output = cairn().args(args).args(["--node", &address]).stdin(Stdio::null()).output().unwrap();
        (
            output.status.code(),
            String::from_utf8(output.stdout).unwrap(),
            String::from_utf8(output.stderr).unwrap(),
        )
    };
    let clean = |text: &str| {
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "a control character got through: {text:?}"
        );
        assert!(!text.lines().any(|l| l.starts_with("cairn: ready")), "a forged line got through: {text}");
    };

    let add = env!("CARGO_BIN_FILE_CAIRN_TASKS_add");
    let (code, stdout, stderr) = run(&["eval", add, "blob:=02"]);
    assert_eq!(code, Some(2), "{stderr}");
    clean(&stdout);
    clean(&stderr);
    assert!(
        stderr.trim_end().ends_with(
            "failed: task error: \\x1b[2J\\x1b]0;owned\\x07\\u{9b}31m\\ncairn: ready boot_ms=1 mem_mib=1\\r"
        ),
        "{stderr}"
    );

    let (code, stdout, stderr) = run(&["eval", add, "blob:=02"]);
    assert_eq!(code, Some(0), "{stderr}");
    clean(&stdout);
    assert_eq!(stdout, format!("{value_h}\nok\\ncairn: ready boot_ms=1 mem_mib=1\n"));

    // STATS keeps its lines (tools read `key=value` lines from it); their content is escaped.
    let (code, stdout, _) = run(&["stats"]);
    assert_eq!(code, Some(0));
    assert!(!stdout.chars().any(|c| c.is_control() && c != '\n'), "{stdout:?}");
    assert_eq!(stdout.lines().next(), Some("objects=3"));
    assert!(stdout.lines().any(|l| l.starts_with("note=task error: \\x1b[2J")), "{stdout}");
}
