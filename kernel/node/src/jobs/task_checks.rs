//! Runs each hostile task and a few ordinary ones, printing one line per case:
//! `task-check NAME: ok HANDLE [= VALUE]` or `task-check NAME: failed: FAILURE`, and after each
//! hostile case `task-check NAME/after: ...` for an ordinary task run right after it, to show
//! the node kept working. tests/tests/tasks.rs asserts on these lines.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use cairn_object::Handle;
use cairn_object::store::Store;

use super::{NodeEvaluator, apply, blob, node_evaluator};
use crate::drivers::qemu_exit::Status;
use crate::println;

pub const HOSTILE_MODES: &[&str] = &[
    "hlt",
    "cli",
    "port-out",
    "port-in",
    "write-kernel",
    "read-unmapped",
    "exec-heap",
    "exec-args",
    "stack-overflow",
    "unknown-syscall",
    "wild-pointer",
    "huge-length",
    "alloc-beyond-limit",
    "loop",
    "rdtsc",
    "wrfsbase",
    "trap-flag",
    "flags-syscall",
    "cpuid",
    "forge-open",
    "forge-return",
    "forge-tree",
];

pub fn show(ev: &NodeEvaluator, outcome: &Result<Handle, cairn_eval::EvalError>) -> String {
    match outcome {
        Ok(h) => match ev.store.get(h) {
            Some(bytes) if bytes.len() <= 64 => format!("ok {h} = {}", hex(&bytes)),
            _ => format!("ok {h}"),
        },
        Err(e) => format!("failed: {}", e.failure),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The ceilings of the checks: a 1 s budget, and ceilings low enough that the checks reach
/// them quickly (`containment_checks`).
pub fn ceilings() -> cairn_bootcfg::Ceilings {
    cairn_bootcfg::Ceilings {
        task_time_ms: 1000,
        // Low enough to reach in a check; budget-dodge must meet its budget, not this.
        task_create_mib: 256,
        eval_depth: 1000,
        eval_applications: 2000,
        ..cairn_bootcfg::Ceilings::default()
    }
}

pub fn run() -> Status {
    let (mut ev, p) = node_evaluator(64 << 20, &ceilings());
    let mib = 1 << 20;

    println!("task-check cpuid-faulting: {}", if crate::arch::user::cpuid_faulting() { "yes" } else { "no" });
    let (two, three) = (blob(&mut ev, &2u64.to_le_bytes()), blob(&mut ev, &3u64.to_le_bytes()));
    let add = apply(&mut ev, p.add, &[two, three], mib);
    let outcome = ev.eval(add);
    println!("task-check add: {}", show(&ev, &outcome));

    let twenty = blob(&mut ev, &20u64.to_le_bytes());
    let fib = apply(&mut ev, p.fib, &[twenty, p.fib, p.add], mib);
    let outcome = ev.eval(fib);
    println!("task-check fib: {}", show(&ev, &outcome));
    println!("task-check fib/stats: tasks_run={} memo_hits={}", ev.stats().tasks_run, ev.stats().memo_hits);

    // A wide graph: a balanced tree of adds over 64 leaves, each leaf an add of values, so that
    // every leaf is ready at once and the other CPUs take them (docs/EVALUATION.md, "Running
    // ahead"). 1 + 2 + ... + 64 = 2080.
    let zero = blob(&mut ev, &0u64.to_le_bytes());
    let mut level: Vec<Handle> = (1..=64u64)
        .map(|i| {
            let value = blob(&mut ev, &i.to_le_bytes());
            apply(&mut ev, p.add, &[value, zero], mib)
        })
        .collect();
    while level.len() > 1 {
        level = level.chunks(2).map(|pair| apply(&mut ev, p.add, pair, mib)).collect();
    }
    let before = ev.stats();
    let outcome = ev.eval(level[0]);
    let after = ev.stats();
    println!("task-check wide: {}", show(&ev, &outcome));
    println!(
        "task-check wide/stats: tasks_run={} started_ahead={}",
        after.tasks_run - before.tasks_run,
        after.started_ahead - before.started_ahead
    );

    // The secret the forging modes try to name without being given it.
    blob(&mut ev, &[0x42; 64]);
    for (i, mode) in HOSTILE_MODES.iter().enumerate() {
        let mode_blob = blob(&mut ev, mode.as_bytes());
        let hostile = apply(&mut ev, p.hostile, &[mode_blob], 4 * mib);
        let outcome = ev.eval(hostile);
        println!("task-check {mode}: {}", show(&ev, &outcome));
        // A fresh argument each time, so the memo cannot answer for the node.
        let fresh = blob(&mut ev, format!("still serving after {mode} ({i})").as_bytes());
        let after = apply(&mut ev, p.identity, &[fresh], mib);
        let outcome = ev.eval(after);
        println!("task-check {mode}/after: {}", show(&ev, &outcome));
    }
    // A task must not see what the previous run of the same procedure left behind.
    for mode in ["residue-static", "residue-stack", "residue-heap"] {
        let mode_blob = blob(&mut ev, mode.as_bytes());
        let thunk = apply(&mut ev, p.hostile, &[mode_blob], 4 * mib);
        for run in ["first", "second"] {
            let outcome = ev.eval_fresh(thunk);
            println!("task-check {mode}/{run}: {}", show(&ev, &outcome));
        }
    }
    super::containment_checks::run(&mut ev, &p);
    let t = ev.executor.stats();
    // Where the tasks ran: a CPU that ran none while others could is worth a look.
    let per_cpu: Vec<String> = crate::arch::percpu::all()
        .map(|cpu| format!("{}", cpu.tasks.load(core::sync::atomic::Ordering::Relaxed)))
        .collect();
    println!("task-check cpus: cpus={} tasks_per_cpu={}", crate::arch::smp::cpus(), per_cpu.join(","));
    println!(
        "task-check done: syscalls={} page_ins={} preemptions={}",
        t.syscalls, t.page_ins, t.preemptions
    );
    Status::Success
}
