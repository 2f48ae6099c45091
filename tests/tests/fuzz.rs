//! The fuzzers against real nodes (docs/SECURITY.md, "What the node guarantees"): syscall
//! programs run by the kernel itself (`cairn fuzz`), programs generated here and evaluated
//! through a serving node's API (`cairn fuzz --node`), and mutated frames over TCP
//! (`cairn fuzz-wire`). Each run must end with no crash and every check passed. CI sizes; the
//! soaks are the same commands with a million (README.md).

use std::process::{Command, Output, Stdio};

use cairn_bootcfg::{LogLevel, NodeConfig};
use cairn_tools::client::Client;

fn cairn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_FILE_CAIRN_TOOLS_cairn")).args(args).stdin(Stdio::null()).output().unwrap()
}

/// stdout, after checking the run succeeded and reported no crash.
fn passed(what: &str, out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed ({}):\n{stdout}\n{stderr}", out.status);
    assert!(stdout.lines().any(|l| l.ends_with("crashes: none") || l.contains("crashes: none;")), "{stdout}");
    println!("{stdout}");
    stdout
}

/// The value of `key=` in the line that starts with `prefix`.
fn field<'a>(stdout: &'a str, prefix: &str, key: &str) -> &'a str {
    let line =
        stdout.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix}: {stdout}"));
    let value =
        line.split([' ', ',']).find_map(|f| f.strip_prefix(key)).unwrap_or_else(|| panic!("{key} in {line}"));
    value.trim_end_matches(';')
}

#[test]
fn syscall_programs_run_in_the_kernel_without_a_crash() {
    let stdout =
        passed("cairn fuzz", &cairn(&["fuzz", "--programs", "5000", "--seed", "11", "--timeout", "300"]));
    assert_eq!(field(&stdout, "fuzz: programs=", "programs="), "5000");
    assert!(stdout.contains("fuzz: checks 50 of 50 passed"), "{stdout}");
    // The programs reach the kernel's checks of every kind, and some run to the end.
    let kinds = field(&stdout, "fuzz: failures by kind:", "");
    for kind in ["bad_syscall:", "trap:", "out_of_memory:", "task_error:", "forged_handle:", "invalid_thunk:"]
    {
        assert!(stdout.contains(kind), "no {kind} among {kinds}: {stdout}");
    }
    assert!(field(&stdout, "fuzz: programs=", "ok=").parse::<u64>().unwrap() > 100, "{stdout}");
}

#[test]
fn programs_and_mutated_frames_through_the_api_without_a_crash() {
    let (_node, address) =
        cairn_tests::serving_node(NodeConfig { log_level: LogLevel::Info, ..NodeConfig::default() });
    let args = ["fuzz", "--node", &address, "--programs", "300", "--seed", "12", "--batch", "50"];
    let stdout = passed("cairn fuzz --node", &cairn(&args));
    assert!(stdout.contains("fuzz: checks 6 of 6 passed"), "{stdout}");
    assert!(stdout.contains("bad_syscall:"), "{stdout}");

    let args = ["fuzz-wire", "--node", &address, "--frames", "5000", "--seed", "13", "--batch", "1000"];
    let stdout = passed("cairn fuzz-wire", &cairn(&args));
    let frames: u64 = field(&stdout, "fuzz-wire: frames=", "frames=").parse().unwrap();
    assert!(frames >= 5000, "{stdout}");
    // Bad frames were refused, valid ones answered.
    for answer in ["error-BadFrame:", "error-Unexpected:", "Stored:", "Object:", "StatsReply:"] {
        assert!(stdout.contains(answer), "no {answer}: {stdout}");
    }
    // And an ordinary client is still served.
    let stats = Client::connect(&address).unwrap().stats().unwrap();
    assert!(stats.contains("objects="), "{stats}");
}
