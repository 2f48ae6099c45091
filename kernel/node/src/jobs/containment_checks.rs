//! The containment checks (docs/SECURITY.md): tasks that try to exhaust the node, outlast their
//! budget or observe what ran before them, each followed by an ordinary task with a known
//! result. Part of the `task-checks` mode; tests/tests/tasks.rs asserts on the lines:
//! `task-check NAME: ...` and `task-check NAME/after: ...`, as for the hostile tasks.

use alloc::format;
use alloc::vec::Vec;

use cairn_object::Handle;

use super::task_checks::show;
use super::{NodeEvaluator, Procedures, apply, blob};
use crate::arch::clock;
use crate::println;

const MIB: u64 = 1 << 20;

/// A fresh identity task, so the memo cannot answer for the node: it must run, and return its
/// argument, after every check.
fn still_serving(ev: &mut NodeEvaluator, p: &Procedures, name: &str) {
    let fresh = blob(ev, format!("still serving after {name}").as_bytes());
    let after = apply(ev, p.identity, &[fresh], MIB);
    let outcome = ev.eval(after);
    println!("task-check {name}/after: {}", show(ev, &outcome));
}

fn number(ev: &mut NodeEvaluator, n: u64) -> Handle {
    blob(ev, &n.to_le_bytes())
}

pub fn run(ev: &mut NodeEvaluator, p: &Procedures) {
    let h = crate::arch::user::hardening();
    let on = |b: bool| if b { "on" } else { "off" };
    println!(
        "task-check hardening: umip={} smep={} smap={} tsc_aux={}",
        on(h.umip),
        on(h.smep),
        on(h.smap),
        on(h.tsc_aux)
    );
    let eight_mib = number(ev, 8 * MIB);
    let depth = number(ev, 2000);
    let long_chain = number(ev, 3000);
    let short_chain = number(ev, 100);
    // (name, extra arguments, memory limit)
    let cases: Vec<(&str, Vec<Handle>, u64)> = alloc::vec![
        ("ask-1tib", alloc::vec![p.containment], 4 * MIB),
        ("create-at-heap", alloc::vec![], 4 * MIB),
        ("create-untouched", alloc::vec![eight_mib], 32 * MIB),
        ("huge-bss", alloc::vec![], 4 * MIB),
        ("bss-8mib", alloc::vec![], 4 * MIB),
        ("budget-dodge", alloc::vec![], 256 * MIB),
        ("sgdt", alloc::vec![], 4 * MIB),
        ("rdpid", alloc::vec![], 4 * MIB),
        ("simd-agree", alloc::vec![], 4 * MIB),
        ("int3", alloc::vec![], 4 * MIB),
        ("int80", alloc::vec![], 4 * MIB),
        ("ud2", alloc::vec![], 4 * MIB),
        ("xsetbv", alloc::vec![], 4 * MIB),
        ("nest", alloc::vec![depth, p.identity], 4 * MIB),
        ("countdown", alloc::vec![long_chain, p.containment], MIB),
        ("countdown-short", alloc::vec![short_chain, p.containment], MIB),
        ("fail-long", alloc::vec![], 4 * MIB),
        ("fail-forge", alloc::vec![], 4 * MIB),
    ];
    for (name, extra, limit) in cases {
        let mode = blob(ev, name.trim_end_matches("-short").as_bytes());
        let mut args = alloc::vec![mode];
        args.extend(extra);
        let thunk = apply(ev, p.containment, &args, limit);
        let started = clock::micros_since_boot();
        let outcome = ev.eval(thunk);
        let ms = (clock::micros_since_boot() - started) / 1000;
        match &outcome {
            // Only the shape of a long message: the line stays short.
            Err(e) if format!("{}", e.failure).len() > 200 => {
                let text = format!("{}", e.failure);
                let kind = e.failure.name();
                let tail = text.trim_start_matches(kind).trim_start_matches(": ");
                let first = tail.chars().next().unwrap_or(' ');
                let same = tail.chars().all(|c| c == first);
                println!("task-check {name}: failed: {kind}: {} x {first:?} (uniform {same})", tail.len());
            }
            _ => println!("task-check {name}: {}", show(ev, &outcome)),
        }
        println!("task-check {name}/ms: {ms}");
        still_serving(ev, p, name);
    }
    // An image's zero pages cost nothing once its task is done: the cache keeps the file's pages
    // only (it used to keep a page per page of `.bss`, 1 GiB for a 300-byte ELF).
    let (frames_before, heap_before) = (crate::memory::free_frame_count(), crate::memory::heap::usage().0);
    let mode = blob(ev, b"bss-8mib");
    let thunk = apply(ev, p.containment, &[mode], 4 * MIB);
    let outcome = ev.eval_fresh(thunk);
    let frames_held = frames_before.saturating_sub(crate::memory::free_frame_count()) * 4;
    let heap_held = crate::memory::heap::usage().0.saturating_sub(heap_before) / 1024;
    println!(
        "task-check image-memory: {} frames_held_kib={frames_held} heap_held_kib={heap_held}",
        if outcome.is_ok() { "ok" } else { "failed" }
    );
    // Selectors and pages the kernel wrote must not carry over from one run to the next.
    let read = blob(ev, b"segments-read");
    let read = apply(ev, p.containment, &[read], 4 * MIB);
    let set = blob(ev, b"segments-set");
    let set = apply(ev, p.containment, &[set], 4 * MIB);
    let first = ev.eval_fresh(read);
    println!("task-check segments/first: {}", show(ev, &first));
    let outcome = ev.eval_fresh(set);
    println!("task-check segments/set: {}", show(ev, &outcome));
    let second = ev.eval_fresh(read);
    println!("task-check segments/second: {}", show(ev, &second));
    let hold = blob(ev, b"segments-hold");
    let hold = apply(ev, p.containment, &[hold], 4 * MIB);
    let outcome = ev.eval_fresh(hold);
    println!("task-check segments/hold: {}", show(ev, &outcome));
    for mode in ["residue-kernel-data", "residue-kernel-bss"] {
        let mode_blob = blob(ev, mode.as_bytes());
        let thunk = apply(ev, p.containment, &[mode_blob], 4 * MIB);
        for run in ["first", "second"] {
            let outcome = ev.eval_fresh(thunk);
            println!("task-check {mode}/{run}: {}", show(ev, &outcome));
        }
    }
}
