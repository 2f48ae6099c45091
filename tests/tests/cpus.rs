//! Tasks on every CPU (docs/ARCHITECTURE.md, "CPUs"): the same work gives the same handles
//! whatever the number of CPUs and whichever CPU ran each task, and the other CPUs do run tasks.

use std::collections::BTreeMap;

use cairn_boot::Firmware;
use cairn_bootcfg::{LogLevel, Mode, NodeConfig};
use cairn_tests::{BOOT_TIMEOUT, Node};
use cairn_tools::qemu::{NodeExit, NodeOptions};

fn boot(mode: Mode, cpus: u32, boot_cpu_tasks: bool) -> Node {
    let config = NodeConfig { mode, log_level: LogLevel::Info, boot_cpu_tasks, ..NodeConfig::default() };
    Node::boot_with(NodeOptions { firmware: Firmware::Bios, cpus, config, ..NodeOptions::default() })
}

/// Every `task-check NAME: OUTCOME` line of a `task-checks` boot.
fn task_checks(cpus: u32, boot_cpu_tasks: bool) -> BTreeMap<String, String> {
    let config = NodeConfig { boot_cpu_tasks, ..NodeConfig::default() };
    cairn_tests::task_checks(NodeOptions { cpus, config, ..NodeOptions::default() })
}

/// Tasks each CPU ran, from `cpus=N tasks_per_cpu=A,B,...`.
fn tasks_per_cpu(line: &str) -> Vec<u64> {
    let list = line.split("tasks_per_cpu=").nth(1).unwrap().split_whitespace().next().unwrap();
    list.split(',').map(|n| n.parse().unwrap()).collect()
}

/// What may differ between runs on different CPUs: counters of where and how work ran, and
/// how long it took (`NAME/ms`), never an outcome. Under TCG, QEMU has no CPUID faulting, so a task sees the host CPUID of the CPU
/// it runs on, its APIC id included (a documented leak; with KVM the answer is fixed).
fn outcomes(checks: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let cpuid_leaks = checks.get("cpuid-faulting").map(String::as_str) == Some("no");
    checks
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "cpus" | "done" | "wide/stats") && !k.ends_with("/ms"))
        .filter(|(k, _)| !(cpuid_leaks && k.as_str() == "cpuid"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[test]
fn every_task_check_gives_the_same_outcome_on_one_two_and_four_cpus() {
    let one = task_checks(1, true);
    let wide = one.get("wide").unwrap();
    assert_eq!(wide, "ok blob:=2008000000000000 = 2008000000000000", "1 + 2 + ... + 64 = 2080");
    assert_eq!(tasks_per_cpu(&one["cpus"]).len(), 1);
    assert!(one["wide/stats"].ends_with("started_ahead=0"), "{}", one["wide/stats"]);

    for cpus in [2, 4] {
        let many = task_checks(cpus, true);
        assert_eq!(outcomes(&many), outcomes(&one), "{cpus} CPUs");
        let per_cpu = tasks_per_cpu(&many["cpus"]);
        assert_eq!(per_cpu.len(), cpus as usize, "{}", many["cpus"]);
        // The wide graph's leaves went to the other CPUs.
        assert!(per_cpu[1..].iter().sum::<u64>() > 0, "{}", many["cpus"]);
        let started: u64 = many["wide/stats"].rsplit("started_ahead=").next().unwrap().parse().unwrap();
        assert!(started >= 32, "most leaves started ahead: {}", many["wide/stats"]);
    }
}

#[test]
fn hostile_tasks_are_contained_on_the_other_cpus_too() {
    // The boot CPU runs no tasks: every hostile case runs on CPU 1, and must end exactly as it
    // does on the boot CPU, with the node still serving.
    let boot_cpu = task_checks(1, true);
    let others = task_checks(2, false);
    assert_eq!(outcomes(&others), outcomes(&boot_cpu));
    let per_cpu = tasks_per_cpu(&others["cpus"]);
    assert_eq!(per_cpu[0], 0, "the boot CPU ran tasks: {}", others["cpus"]);
    assert!(per_cpu[1] > 100, "{}", others["cpus"]);
}

/// `job: wordcount -> ...`, `job: mandelbrot -> ...` and the replay verdict of a default job.
fn default_job(cpus: u32) -> (Vec<String>, Vec<u64>) {
    let mut node = boot(Mode::Job, cpus, true);
    let exit = node.finish(BOOT_TIMEOUT * 3);
    assert_eq!(exit, NodeExit::Success, "{:?}", node.transcript());
    let results: Vec<String> = node
        .transcript()
        .iter()
        .filter(|l| {
            l.starts_with("job: wordcount -> ")
                || l.starts_with("job: mandelbrot -> ")
                || l.starts_with("replay: ")
        })
        .cloned()
        .collect();
    let spread =
        node.transcript().iter().find(|l| l.starts_with("job: first evaluation ran on cpus=")).unwrap();
    (results, tasks_per_cpu(spread))
}

#[test]
fn the_default_job_gives_the_same_handles_on_one_two_four_and_eight_cpus() {
    let (one, _) = default_job(1);
    assert_eq!(one.len(), 5, "{one:?}");
    assert_eq!(one.last().unwrap(), "replay: identical");
    for cpus in [2, 4, 8] {
        let (many, per_cpu) = default_job(cpus);
        assert_eq!(per_cpu.len(), cpus as usize, "{per_cpu:?}");
        assert_eq!(many, one, "{cpus} CPUs");
        assert!(per_cpu[1..].iter().sum::<u64>() > 0, "no task ran on another CPU: {per_cpu:?}");
    }
}
