//! The default job (`cargo run --release`): a wordcount over text split into chunks (map and
//! reduce) and a Mandelbrot image rendered as tiles, evaluated, evaluated again from the memo,
//! and replayed. The image goes to the host over the console (`cairn: object ...`).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use cairn_eval::Replay;
use cairn_object::Handle;
use cairn_object::store::Store;

use super::{NodeEvaluator, apply, blob, node_evaluator, u32s};
use crate::drivers::qemu_exit::Status;
use crate::println;

/// The text to count: Cairn's own documentation, as it was built into this kernel.
const TEXT: &[&str] = &[
    include_str!("../../../../README.md"),
    include_str!("../../../../docs/ARCHITECTURE.md"),
    include_str!("../../../../docs/OBJECTS.md"),
    include_str!("../../../../docs/EVALUATION.md"),
];
const CHUNKS: usize = 8;
const IMAGE: (u32, u32) = (256, 192);
const TILE: (u32, u32) = (64, 64);
const MAX_ITER: u32 = 64;

pub fn run() -> Status {
    crate::trace::init();
    let (mut ev, p) = node_evaluator(256 << 20, &cairn_bootcfg::Ceilings::default());
    let mib = 1 << 20;

    // Wordcount: one map thunk per chunk (cut at line ends), one reduce over all of them.
    let text: Vec<u8> = TEXT.concat().into_bytes();
    let (map, reduce) = (blob(&mut ev, b"map"), blob(&mut ev, b"reduce"));
    let mut maps = Vec::new();
    let mut start = 0;
    for i in 1..=CHUNKS {
        let mut end = text.len() * i / CHUNKS;
        while end < text.len() && text[end] != b'\n' {
            end += 1;
        }
        let chunk = blob(&mut ev, &text[start..end]);
        maps.push(apply(&mut ev, p.wordcount, &[map, chunk], 4 * mib));
        start = end;
    }
    let mut reduce_args = alloc::vec![reduce];
    reduce_args.extend(&maps);
    let wordcount = apply(&mut ev, p.wordcount, &reduce_args, 4 * mib);

    let mandelbrot = mandelbrot(&mut ev, &p, IMAGE, TILE, MAX_ITER);

    println!(
        "job: wordcount over {} bytes in {CHUNKS} chunks; mandelbrot {}x{} in {} tiles",
        text.len(),
        IMAGE.0,
        IMAGE.1,
        (IMAGE.0 / TILE.0) * (IMAGE.1 / TILE.1)
    );
    let Some(results) = evaluate(&mut ev, wordcount, mandelbrot, "first evaluation") else {
        return Status::Failure;
    };
    if evaluate(&mut ev, wordcount, mandelbrot, "second evaluation") != Some(results) {
        println!("job: the second evaluation gave other results");
        return Status::Failure;
    }

    let mut identical = true;
    for (name, root) in [("wordcount", wordcount), ("mandelbrot", mandelbrot)] {
        match ev.replay(root) {
            Replay::Identical(_) => {}
            other => {
                identical = false;
                println!("replay: {name} differs: {other:?}");
            }
        }
    }
    if !identical {
        return Status::Failure;
    }
    println!("replay: identical");
    send_object(&ev, "mandelbrot.ppm", &results.1);
    send_trace();
    Status::Success
}

/// A Mandelbrot image of `image` pixels rendered as tiles of `tile` (one thunk each), and one
/// thunk that assembles them into a PPM image: the root.
pub fn mandelbrot(
    ev: &mut NodeEvaluator,
    p: &super::Procedures,
    image: (u32, u32),
    tile: (u32, u32),
    max_iter: u32,
) -> Handle {
    let mib = 1 << 20;
    let tile_mode = blob(ev, b"tile");
    let mut tiles = Vec::new();
    for y in (0..image.1).step_by(tile.1 as usize) {
        for x in (0..image.0).step_by(tile.0 as usize) {
            let params = blob(ev, &u32s(&[image.0, image.1, x, y, tile.0, tile.1, max_iter]));
            tiles.push(apply(ev, p.mandelbrot, &[tile_mode, params], 2 * mib));
        }
    }
    let image_mode = blob(ev, b"image");
    let image_params = blob(ev, &u32s(&[image.0, image.1, tile.0, tile.1]));
    let mut image_args = alloc::vec![image_mode, image_params];
    image_args.extend(&tiles);
    apply(ev, p.mandelbrot, &image_args, 4 * mib)
}

/// Evaluates both roots and prints their results and the work it took.
/// `ev.eval(root)`, as an evaluation span of the trace.
fn traced_eval(ev: &mut NodeEvaluator, root: Handle) -> Result<Handle, cairn_eval::EvalError> {
    let (before, began_us) = (ev.stats(), crate::arch::clock::micros_since_boot());
    let outcome = ev.eval(root);
    let after = ev.stats();
    crate::trace::record(cairn_proto::trace::Span {
        handle: Some(root),
        ok: outcome.is_ok(),
        count: after.tasks_run - before.tasks_run,
        bytes: after.memo_hits - before.memo_hits,
        ..crate::trace::since(cairn_proto::trace::SpanKind::Eval, began_us)
    });
    outcome
}

fn evaluate(
    ev: &mut NodeEvaluator,
    wordcount: Handle,
    mandelbrot: Handle,
    label: &str,
) -> Option<(Handle, Handle)> {
    let before = ev.stats();
    let counts = traced_eval(ev, wordcount);
    let image = traced_eval(ev, mandelbrot);
    let after = ev.stats();
    let (counts, image) = match (counts, image) {
        (Ok(c), Ok(i)) => (c, i),
        (c, i) => {
            for e in [c.err(), i.err()].into_iter().flatten() {
                println!("job: {e}");
            }
            return None;
        }
    };
    let counts_text = ev.store.get(&counts).unwrap_or_default();
    let mut top: Vec<(u64, &[u8])> = counts_text
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let space = line.iter().position(|&b| b == b' ')?;
            let n = core::str::from_utf8(&line[space + 1..]).ok()?.parse().ok()?;
            Some((n, &line[..space]))
        })
        .collect();
    let distinct = top.len();
    top.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    let top: Vec<_> =
        top.iter().take(5).map(|(n, w)| format!("{} {n}", core::str::from_utf8(w).unwrap_or("?"))).collect();
    println!("job: wordcount -> {counts} ({distinct} distinct words; most frequent: {})", top.join(", "));
    println!("job: mandelbrot -> {image}");
    println!(
        "job: {label}: tasks_run={} memo_hits={}",
        after.tasks_run - before.tasks_run,
        after.memo_hits - before.memo_hits
    );
    // Where the tasks ran (docs/ARCHITECTURE.md, "CPUs"): counts since boot, per CPU.
    let per_cpu: Vec<String> = crate::arch::percpu::all()
        .map(|cpu| format!("{}", cpu.tasks.load(core::sync::atomic::Ordering::Relaxed)))
        .collect();
    println!(
        "job: {label} ran on cpus={} tasks_per_cpu={} started_ahead={}",
        crate::arch::smp::cpus(),
        per_cpu.join(","),
        after.started_ahead - before.started_ahead
    );
    Some((counts, image))
}

/// Prints an object for the host: a header line, base64 lines, an end line. The host checks
/// the handle before saving it.
fn send_object(ev: &NodeEvaluator, name: &str, handle: &Handle) {
    let Some(bytes) = ev.store.get(handle) else { return };
    send_bytes(name, handle, &bytes);
}

/// The job's trace (docs/TRACES.md), as an object of spans back to back: `cairn --trace FILE`
/// turns it into a trace file; otherwise the host drops it.
fn send_trace() {
    let cairn_proto::Message::Traced { spans, .. } = crate::trace::read(0, crate::trace::CAPACITY) else {
        return;
    };
    let mut bytes = Vec::new();
    for span in &spans {
        cairn_proto::trace::encode_span(span, &mut bytes);
    }
    send_bytes("trace.spans", &Handle::blob(&bytes), &bytes);
}

fn send_bytes(name: &str, handle: &Handle, bytes: &[u8]) {
    println!("cairn: object {name} {handle} {}", bytes.len());
    for line in bytes.chunks(57) {
        println!("{}", base64(line));
    }
    println!("cairn: object-end");
}

fn base64(bytes: &[u8]) -> alloc::string::String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = alloc::string::String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let n = (group[0] as u32) << 16
            | (*group.get(1).unwrap_or(&0) as u32) << 8
            | *group.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= group.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
