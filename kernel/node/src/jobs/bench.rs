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

/// Small objects created in a row, to see whether creating stays as fast with many held.
const OBJECTS: u64 = 1_000_000;
/// Each rate is measured over this many creates.
const OBJECTS_WINDOW: u64 = 1_000;

pub fn run() -> Status {
    if let Err(why) = objects() {
        println!("cairn: bench failed: {why}");
        return Status::Failure;
    }
    crate::trace::init();
    let (mut ev, p) = node_evaluator(64 << 20, &cairn_bootcfg::Ceilings::default());
    let tiny = blob(&mut ev, b"x");
    let thunk = apply(&mut ev, p.identity, &[tiny], 1 << 20);

    // One warm-up, then invocations with the memo bypassed.
    if let Err(e) = ev.eval_fresh(thunk) {
        println!("cairn: bench failed: {e}");
        return Status::Failure;
    }
    // With the trace recording (as a node always does), then without: what recording costs
    // one invocation, the smallest piece of work that records a span (docs/TRACES.md).
    let mut per_invocation = [0.0; 2];
    for (i, traced) in [true, false].into_iter().enumerate() {
        crate::trace::set_enabled(traced);
        let start = clock::micros_since_boot();
        for _ in 0..INVOCATIONS {
            if ev.eval_fresh(thunk).is_err() {
                return Status::Failure;
            }
        }
        per_invocation[i] = (clock::micros_since_boot() - start) as f64 / INVOCATIONS as f64;
    }
    crate::trace::set_enabled(true);
    crate::trace::release();
    report("invoke_us", per_invocation[0], "us");
    report("invoke_untraced_us", per_invocation[1], "us");
    report("trace_cost_pct", 100.0 * (per_invocation[0] - per_invocation[1]) / per_invocation[1], "%");

    if let Err(why) = throughput(&mut ev, &p) {
        println!("cairn: bench failed: {why}");
        return Status::Failure;
    }

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
    let cpus = crate::arch::smp::cpus();
    report(&alloc::format!("blake3_spans_{cpus}cpu_mib_s"), mib / (elapsed as f64 / 1e6), "MiB/s");
    if let Err(why) = channel(&data) {
        println!("cairn: bench failed: {why}");
        return Status::Failure;
    }
    drop(data);
    match crate::drivers::blk::find(false) {
        None => {}
        Some(crate::drivers::blk::Found::Unusable(why)) => {
            println!("cairn: bench failed: the disk: {why}");
            return Status::Failure;
        }
        Some(crate::drivers::blk::Found::Usable(disk)) => {
            if let Err(why) = store(*disk) {
                println!("cairn: bench failed: store: {why}");
                return Status::Failure;
            }
        }
    }
    Status::Success
}

/// Objects of 1 MiB written to the store on the disk (docs/STORE.md) with one commit at the end,
/// as `dd bs=1M conv=fsync` writes a file; then the store opened again (recovery with no
/// checkpoint: every record read and checked) and every object read back, checked against its
/// handle. Only on a blank disk: the benchmark formats it.
fn store(disk: crate::drivers::blk::Disk) -> Result<(), alloc::string::String> {
    use cairn_store::{DiskStore, StoreError};
    const OBJECTS: u32 = 64;
    const LEN: usize = 1 << 20;
    let fail = |e: StoreError| alloc::format!("{e}");
    let mut disk = disk;
    if !DiskStore::is_blank(&mut disk).map_err(fail)? {
        return Err("the disk is not blank: the benchmark formats only blank disks".into());
    }
    let mut store = DiskStore::format(disk, [0x42; 16]).map_err(fail)?;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let objects: alloc::vec::Vec<(cairn_object::Handle, alloc::vec::Vec<u8>)> = (0..OBJECTS)
        .map(|_| {
            let bytes: alloc::vec::Vec<u8> = (0..LEN / 8)
                .flat_map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state.to_le_bytes()
                })
                .collect();
            (cairn_object::Handle::blob(&bytes), bytes)
        })
        .collect();
    let mib = (OBJECTS as usize * LEN) as f64 / (1 << 20) as f64;
    let start = clock::micros_since_boot();
    for (handle, bytes) in &objects {
        store.put(handle, bytes).map_err(fail)?;
    }
    store.commit().map_err(fail)?;
    let write_us = clock::micros_since_boot() - start;
    report("store_write_mib_s", mib / (write_us.max(1) as f64 / 1e6), "MiB/s");
    let start = clock::micros_since_boot();
    let (mut store, recovery) = DiskStore::open(store.into_device()).map_err(fail)?;
    let open_us = clock::micros_since_boot() - start;
    // Reads check what they bring back as the node's store does: on both CPUs.
    store.set_namer(crate::memory::objects::name_read);
    report("store_open_ms", open_us as f64 / 1000.0, "ms");
    report(
        "store_open_mib_s",
        recovery.bytes_scanned as f64 / (1 << 20) as f64 / (open_us.max(1) as f64 / 1e6),
        "MiB/s",
    );
    let start = clock::micros_since_boot();
    for (handle, bytes) in &objects {
        if store.get(handle).map_err(fail)?.as_ref() != Some(bytes) {
            return Err(alloc::format!("{handle} came back different"));
        }
    }
    let read_us = clock::micros_since_boot() - start;
    report("store_read_mib_s", mib / (read_us.max(1) as f64 / 1e6), "MiB/s");
    store.checkpoint().map_err(fail)?;
    let start = clock::micros_since_boot();
    let (_, recovery) = DiskStore::open(store.into_device()).map_err(fail)?;
    let open_us = clock::micros_since_boot() - start;
    if !recovery.from_checkpoint {
        return Err("the checkpoint was not used".into());
    }
    report("store_open_checkpoint_ms", open_us as f64 / 1000.0, "ms");
    Ok(())
}

/// The secure channel's cost in the kernel (docs/PROTOCOL.md): a handshake as the node answers
/// it, and sealing and opening records, on one CPU. Fixed keys and seeds: only speed is measured.
fn channel(data: &[u8]) -> Result<(), alloc::string::String> {
    use cairn_channel::{Initiator, Responder, SecretKey, Transport};
    const HANDSHAKES: u64 = 20;
    let (node, client) = (SecretKey::from_bytes([1; 32]), SecretKey::from_bytes([2; 32]));
    let fail = |e: cairn_channel::ChannelError| alloc::format!("channel: {e}");
    let mut pair = None;
    for i in 0..HANDSHAKES {
        let (initiator, hello) = Initiator::new(&client, &node.public(), [i as u8; 32]).map_err(fail)?;
        let started = clock::micros_since_boot();
        let mut responder = Responder::new();
        responder.take(&hello).map_err(fail)?;
        let accepted = responder.answer(&node, [i as u8 + 100; 32]).map_err(fail)?;
        let answered = clock::micros_since_boot() - started;
        pair = Some((initiator.finish(&accepted.reply).map_err(fail)?, accepted.transport, answered));
    }
    let (mut sender, mut receiver, answered) = pair.expect("at least one handshake");
    // The last of several, so that caches are warm as on a serving node.
    report("channel_handshake_us", answered as f64, "us");
    let mut sealed = vec![];
    let start = clock::micros_since_boot();
    for chunk in data.chunks(1 << 20) {
        sender.seal(chunk, &mut sealed);
    }
    let seal_us = clock::micros_since_boot() - start;
    let mut opened = 0;
    let start = clock::micros_since_boot();
    let mut rest = &sealed[..];
    while !rest.is_empty() {
        let (taken, plain) = receiver.open(rest).map_err(fail)?;
        opened += plain.map_or(0, <[u8]>::len);
        rest = &rest[taken..];
    }
    let open_us = clock::micros_since_boot() - start;
    let expected: usize = data.chunks(1 << 20).map(|c| Transport::sealed_len(c.len())).sum();
    if opened != data.len() || sealed.len() != expected {
        return Err(alloc::format!("channel: {opened} of {} bytes came through", data.len()));
    }
    let mib = data.len() as f64 / (1 << 20) as f64;
    report("channel_seal_mib_s", mib / (seal_us.max(1) as f64 / 1e6), "MiB/s");
    report("channel_open_mib_s", mib / (open_us.max(1) as f64 / 1e6), "MiB/s");
    Ok(())
}

/// Creates a million distinct 40-byte objects in a store of their own and reports the rate of
/// the first thousand and of the thousand that bring it to a million, and what each object
/// costs the heap (which the store's limit estimates as its bytes plus `OBJECT_OVERHEAD`).
fn objects() -> Result<(), alloc::string::String> {
    use bytes::Bytes;
    use cairn_object::Kind;
    use cairn_object::store::Store;

    let (heap_used, heap_free) = crate::memory::heap::usage();
    let limit = (heap_free as u64 / 4 * 3).min(256 << 20);
    let mut store = crate::memory::objects::NodeStore::new(limit);
    let rate =
        |from: u64, store: &mut crate::memory::objects::NodeStore| -> Result<f64, alloc::string::String> {
            let start = clock::micros_since_boot();
            for i in from..from + OBJECTS_WINDOW {
                let bytes: alloc::vec::Vec<u8> = (0..5).flat_map(|_| i.to_le_bytes()).collect();
                store.put(Kind::Blob, Bytes::from(bytes)).map_err(|e| alloc::format!("object {i}: {e}"))?;
            }
            let elapsed = (clock::micros_since_boot() - start).max(1);
            Ok(OBJECTS_WINDOW as f64 * 1e6 / elapsed as f64)
        };
    let first = rate(0, &mut store)?;
    let mut i = OBJECTS_WINDOW;
    while i < OBJECTS - OBJECTS_WINDOW {
        rate(i, &mut store)?;
        i += OBJECTS_WINDOW;
    }
    let last = rate(i, &mut store)?;
    let stats = store.stats();
    let heap_per_object = (crate::memory::heap::usage().0 - heap_used) as f64 / stats.objects.max(1) as f64;
    report("store_put_per_s_1e3", first, "objects/s");
    report("store_put_per_s_1e6", last, "objects/s");
    report("store_objects_held", stats.objects as f64, "objects");
    report("store_heap_bytes_per_object", heap_per_object, "bytes");
    Ok(())
}

/// Leaves of the wide graph of trivial tasks: 2 * WIDE_LEAVES - 1 applications.
const WIDE_LEAVES: u64 = 256;
/// The Mandelbrot job of the throughput figures: large enough that tasks dominate.
const MANDELBROT: ((u32, u32), (u32, u32), u32) = ((512, 512), (64, 64), 256);

/// Tasks per second for a wide graph of trivial tasks (a tree of adds) and the time of a
/// Mandelbrot job, on one CPU (nothing started ahead) and then on every CPU, in the same boot
/// (docs/ARCHITECTURE.md, "CPUs"). The memo is bypassed, so every task runs each time.
fn throughput(ev: &mut super::NodeEvaluator, p: &super::Procedures) -> Result<(), alloc::string::String> {
    let zero = blob(ev, &0u64.to_le_bytes());
    let mut level: alloc::vec::Vec<_> = (1..=WIDE_LEAVES)
        .map(|i| {
            let value = blob(ev, &i.to_le_bytes());
            apply(ev, p.add, &[value, zero], 1 << 20)
        })
        .collect();
    while level.len() > 1 {
        level = level.chunks(2).map(|pair| apply(ev, p.add, pair, 1 << 20)).collect();
    }
    let wide = level[0];
    let ((w, h), tile, max_iter) = MANDELBROT;
    let image = super::demo::mandelbrot(ev, p, (w, h), tile, max_iter);
    let cpus = crate::arch::smp::cpus();
    let settings: &[(bool, usize)] = if cpus > 1 { &[(false, 1), (true, cpus)] } else { &[(false, 1)] };
    let mut want = None;
    for &(run_ahead, n) in settings {
        ev.executor.run_ahead = run_ahead;
        let before = ev.stats().tasks_run;
        let start = clock::micros_since_boot();
        let sum = ev.eval_fresh(wide).map_err(|e| alloc::format!("{e}"))?;
        let elapsed = clock::micros_since_boot() - start;
        let tasks = ev.stats().tasks_run - before;
        report(&alloc::format!("wide_tasks_per_s_{n}cpu"), tasks as f64 / (elapsed as f64 / 1e6), "tasks/s");
        let start = clock::micros_since_boot();
        let rendered = ev.eval_fresh(image).map_err(|e| alloc::format!("{e}"))?;
        let elapsed = clock::micros_since_boot() - start;
        report(&alloc::format!("mandelbrot_ms_{n}cpu"), elapsed as f64 / 1000.0, "ms");
        // The same results whichever CPUs ran the tasks.
        if *want.get_or_insert((sum, rendered)) != (sum, rendered) {
            return Err("the results differ between one CPU and all of them".into());
        }
    }
    ev.executor.run_ahead = true;
    Ok(())
}

fn report(name: &str, value: f64, unit: &str) {
    println!("cairn: bench {name} {value:.3} {unit}");
}
