//! The wire fuzzer against the node's side of a connection (cairn_proto::session) on the host:
//! mutated frames of every message type, fed in pieces of every size while the fake node is
//! busy or not, its work answered and its output read at random. Nothing may panic, a session
//! must never stall (neither taking input nor having anything to give), and what it holds
//! stays within its SessionLimits: answers queued are checked directly, everything else
//! through the bytes it has allocated (a counting allocator).
//!
//! `cargo test` runs a million frames (about a second); the `soak` test, ignored, as many as
//! `CAIRN_FUZZ_FRAMES` says.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use cairn_fuzz::Rng;
use cairn_fuzz::wire::Mutator;
use cairn_object::store::{MemStore, Store, StoreError};
use cairn_object::{Handle, Kind};
use cairn_proto::session::{NodeApi, Session, SessionLimits, UploadBuffer, Work};
use cairn_proto::{ErrorCode, MAX_FRAME, Message};

/// Bytes allocated and not yet freed, by every thread (the tests here take turns).
static LIVE: AtomicUsize = AtomicUsize::new(0);
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

struct Counting;

// SAFETY: forwards to the system allocator, counting what it hands out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract, unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract, unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const STORE: u64 = 4 << 20;
/// Small ceilings, so that cases reach them.
const LIMITS: SessionLimits = SessionLimits { queue_bytes: 64 << 10, held_bytes: 256 << 10, work: 8 };
/// The most a session may have allocated at once, beyond the store: a partial frame and a
/// decoded one, the held bytes and a piece more, the queued answers and one more frame, and an
/// upload's buffer (bounded by the store's room).
const BOUND: usize =
    3 * (MAX_FRAME + 64) + LIMITS.held_bytes + (64 << 10) + LIMITS.queue_bytes + STORE as usize;

struct FakeNode {
    store: MemStore,
    busy: bool,
}

impl NodeApi for FakeNode {
    fn node_id(&self) -> [u8; 32] {
        [7; 32]
    }
    fn contains(&self, h: &Handle) -> bool {
        self.store.contains(h)
    }
    fn get(&self, h: &Handle) -> Option<Bytes> {
        self.store.get(h)
    }
    fn put_verified(&mut self, h: &Handle, bytes: Bytes) -> Result<(), StoreError> {
        self.store.put_verified(h, bytes)
    }
    fn room(&self) -> u64 {
        let s = self.store.stats();
        s.limit.saturating_sub(s.used)
    }
    fn upload_buffer(&mut self, len: usize) -> Option<Box<dyn UploadBuffer>> {
        Some(Box::new(vec![0u8; len]))
    }
    fn put_upload(&mut self, h: &Handle, buffer: Box<dyn UploadBuffer>) -> Result<(), StoreError> {
        self.store.put_verified(h, buffer.into_bytes())
    }
    fn stats(&self) -> String {
        format!("objects={}", self.store.stats().objects)
    }
    fn adopt_journal(&mut self, journal: &Handle) -> Result<Handle, String> {
        self.store.contains(journal).then_some(*journal).ok_or_else(|| "not here".into())
    }
    fn recall(&self, thunk: &Handle) -> Option<Handle> {
        (thunk.kind() == Kind::Thunk).then(|| Handle::blob(b"remembered"))
    }
    fn busy(&self) -> bool {
        self.busy
    }
}

/// What the node answers to queued work: a failure, as most fuzzed work gets.
fn answer(work: &Work) -> Message {
    match work {
        Work::Eval { handle, .. } => Message::EvalFailed { thunk: *handle, failure: "missing object".into() },
        _ => Message::Error { code: ErrorCode::NotFound, message: "no such job".into() },
    }
}

#[derive(Default)]
struct Totals {
    cases: u64,
    frames: u64,
    bytes: u64,
    /// Frames the sessions sent back.
    answers: u64,
    /// Sessions that gave up on their client (after a bad frame).
    closed: u64,
    peak_over_baseline: usize,
}

impl Totals {
    fn add(&mut self, t: Totals) {
        self.cases += t.cases;
        self.frames += t.frames;
        self.bytes += t.bytes;
        self.answers += t.answers;
        self.closed += t.closed;
        self.peak_over_baseline = self.peak_over_baseline.max(t.peak_over_baseline);
    }
}

/// Frames in a session's output.
fn count_frames(out: &[u8]) -> u64 {
    let mut at = 0;
    let mut n = 0;
    while let Ok(Some((_, used))) = cairn_proto::decode(&out[at..]) {
        at += used;
        n += 1;
    }
    n
}

/// Runs cases `first..first + cases` of `seed` over one fake node, each in a fresh session or
/// (half the time) in the one before it, if that one is still open.
fn run(seed: u64, first: u64, cases: u64) -> Totals {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mutator = Mutator::new(seed);
    let mut node = FakeNode { store: MemStore::new(STORE), busy: false };
    let mut rng = Rng::new(seed);
    let mut totals = Totals::default();
    let mut session = Session::with_limits(LIMITS);
    let mut baseline = LIVE.load(Ordering::Relaxed);
    for index in first..first + cases {
        let case = mutator.case(index);
        if session.closing() || rng.chance(50) {
            totals.closed += u64::from(session.closing());
            session = Session::with_limits(LIMITS);
            baseline = LIVE.load(Ordering::Relaxed);
        }
        let mut input = &case.bytes[..];
        let mut stalled = 0;
        while !session.closing() && (!input.is_empty() || session.owes_answers() || session.has_output()) {
            node.busy = rng.chance(20);
            let mut progress = false;
            if session.accepts_input() && !input.is_empty() {
                let n = rng.pick(&[1, 7, 12, 100, 4096, 65536, usize::MAX]).min(input.len());
                session.feed(&input[..n], &mut node);
                input = &input[n..];
                progress = true;
            }
            while let Some((request, work)) = session.take_work() {
                session.deliver(request, answer(&work));
                progress = true;
            }
            let out = session.output(rng.pick(&[0, 100, 64 << 10, usize::MAX]));
            totals.answers += count_frames(&out);
            progress |= !out.is_empty();
            stalled = if progress { 0 } else { stalled + 1 };
            node.busy = false;
            session.resume(&mut node);
            assert!(
                session.pending_output() <= LIMITS.queue_bytes + 2 * MAX_FRAME,
                "case {index}: {} bytes of answers queued",
                session.pending_output()
            );
            let held = LIVE.load(Ordering::Relaxed).saturating_sub(baseline);
            totals.peak_over_baseline = totals.peak_over_baseline.max(held);
            assert!(held <= BOUND, "case {index}: the session holds {held} bytes");
            // With its work answered, its answers read and the node idle, a session goes on:
            // it takes input, queues work or answers. It never waits on nothing.
            assert!(stalled < 100, "case {index}: the session stopped making progress");
        }
        totals.cases += 1;
        totals.frames += case.frames as u64;
        totals.bytes += case.bytes.len() as u64;
    }
    totals.closed += u64::from(session.closing());
    // Whatever the sessions held went with them: what is left is the store's.
    drop((mutator, session));
    let left = LIVE.load(Ordering::Relaxed);
    let store = node.store.stats();
    assert!(store.used <= store.limit, "{store:?}");
    drop(node);
    let freed = left - LIVE.load(Ordering::Relaxed);
    assert!(freed >= store.bytes as usize, "the store's bytes were counted");
    totals
}

fn report(what: &str, t: &Totals, secs: f64) {
    println!(
        "{what}: {} frames ({} bytes) in {} cases, {} answers, {} sessions closed, peak {} KiB held: {:.0} frames/s",
        t.frames,
        t.bytes,
        t.cases,
        t.answers,
        t.closed,
        t.peak_over_baseline >> 10,
        t.frames as f64 / secs
    );
}

#[test]
fn a_million_mutated_frames_never_panic_stall_or_overfill_a_session() {
    let started = Instant::now();
    let mut totals = Totals::default();
    while totals.frames < 1_000_000 {
        totals.add(run(1, totals.cases, 1000));
    }
    report("session fuzz", &totals, started.elapsed().as_secs_f64());
    assert!(totals.closed > totals.cases / 4, "mutated cases are refused");
    assert!(totals.answers > totals.cases, "valid frames are answered");
}

/// As long as asked: `CAIRN_FUZZ_FRAMES` frames (default 20 million), seed `CAIRN_FUZZ_SEED`.
#[test]
#[ignore = "a soak: CAIRN_FUZZ_FRAMES=N cargo test --release -p cairn-fuzz --test session -- --ignored"]
fn soak() {
    let env = |key, default| std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let (frames, seed): (u64, u64) = (env("CAIRN_FUZZ_FRAMES", 20_000_000), env("CAIRN_FUZZ_SEED", 2));
    let started = Instant::now();
    let mut totals = Totals::default();
    while totals.frames < frames {
        totals.add(run(seed, totals.cases, 10_000));
    }
    report(&format!("session fuzz, seed {seed}"), &totals, started.elapsed().as_secs_f64());
}
