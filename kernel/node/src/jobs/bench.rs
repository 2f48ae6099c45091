//! `cairn bench`: guest-side measurements in guest time, one line each:
//! `cairn: bench NAME VALUE UNIT`.

use alloc::vec;

use crate::arch::clock;
use crate::drivers::qemu_exit::Status;
use crate::println;

use super::{apply, blob, node_evaluator};

const INVOCATIONS: u64 = 10_000;
const MEMO_HITS: u64 = 100_000;
const HASH_BYTES: usize = 16 << 20;
const HASH_ROUNDS: u64 = 4;

pub fn run() -> Status {
    let (mut ev, p) = node_evaluator(64 << 20, &cairn_bootcfg::Ceilings::default());
    let tiny = blob(&mut ev, b"x");
    let thunk = apply(&mut ev, p.identity, &[tiny], 1 << 20);

    // One warm-up, then invocations with the memo bypassed.
    if let Err(e) = ev.eval_fresh(thunk) {
        println!("cairn: bench failed: {e}");
        return Status::Failure;
    }
    let start = clock::micros_since_boot();
    for _ in 0..INVOCATIONS {
        if ev.eval_fresh(thunk).is_err() {
            return Status::Failure;
        }
    }
    let elapsed = clock::micros_since_boot() - start;
    report("invoke_us", elapsed as f64 / INVOCATIONS as f64, "us");

    let _ = ev.eval(thunk);
    let start = clock::micros_since_boot();
    for _ in 0..MEMO_HITS {
        let _ = ev.eval(thunk);
    }
    let elapsed = clock::micros_since_boot() - start;
    report("memo_hit_us", elapsed as f64 / MEMO_HITS as f64, "us");

    let data = vec![0x5au8; HASH_BYTES];
    let start = clock::micros_since_boot();
    for _ in 0..HASH_ROUNDS {
        core::hint::black_box(cairn_object::Handle::blob(&data));
    }
    let elapsed = clock::micros_since_boot() - start;
    let mib = (HASH_BYTES as u64 * HASH_ROUNDS) as f64 / (1 << 20) as f64;
    report("blake3_mib_s", mib / (elapsed as f64 / 1e6), "MiB/s");

    // The same bytes hashed as an upload is: in spans, claimed by the boot CPU and the helper
    // CPU together (arch::smp; the boot CPU alone when there is no helper). Timed from the
    // moment all spans are written.
    let expected = cairn_object::Handle::blob(&data).digest().0;
    let mut elapsed = 0;
    for _ in 0..HASH_ROUNDS {
        let Some(mut upload) = ev.store.upload_pages(HASH_BYTES) else {
            println!("cairn: bench failed: no room for a {HASH_BYTES}-byte upload");
            return Status::Failure;
        };
        upload.write_at(0, &data);
        let start = clock::micros_since_boot();
        let (_, digest) = upload.finish();
        elapsed += clock::micros_since_boot() - start;
        if digest != expected {
            println!("cairn: bench failed: span hashing gave a different digest");
            return Status::Failure;
        }
    }
    let cpus = if crate::arch::smp::online() { 2 } else { 1 };
    report(&alloc::format!("blake3_spans_{cpus}cpu_mib_s"), mib / (elapsed as f64 / 1e6), "MiB/s");
    Status::Success
}

fn report(name: &str, value: f64, unit: &str) {
    println!("cairn: bench {name} {value:.3} {unit}");
}
