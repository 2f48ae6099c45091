//! The node's trace (docs/TRACES.md): spans of its work in one ring of fixed size
//! (`cairn_proto::trace::Ring`), recorded from every CPU and read through TRACE.

use cairn_object::store::Store;
use cairn_proto::trace::{Ring, Span, SpanKind};
use core::sync::atomic::{AtomicU64, Ordering};
use spin::Mutex;

use crate::arch::{clock, percpu};

/// Spans the ring holds: the most recent this many.
pub const CAPACITY: usize = 1 << 16;

static RING: Mutex<Option<Ring>> = Mutex::new(None);
/// Off only while `cairn bench` measures what recording costs.
static ENABLED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(true);
/// Spans not recorded because the ring was busy (a span recorded from an interrupt while the
/// interrupted code held the ring): never waited for.
static MISSED: AtomicU64 = AtomicU64::new(0);

/// Sets the ring up; without memory for it the node records nothing, and says so.
pub fn init() {
    match Ring::with_capacity(CAPACITY) {
        Some(ring) => *RING.lock() = Some(ring),
        None => log::warn!("trace: no memory for {CAPACITY} spans; recording nothing"),
    }
}

/// Gives the ring's memory back (the benchmark, once it has measured what recording costs:
/// what it measures next needs the heap).
pub fn release() {
    *RING.lock() = None;
}

/// Turns recording on or off (the benchmark's comparison).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Records `span` (its CPU set to this one), unless the ring is busy this instant.
pub fn record(mut span: Span) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    span.cpu = percpu::current().index as u8;
    match RING.try_lock() {
        Some(mut ring) => {
            if let Some(ring) = ring.as_mut() {
                ring.record(span);
            }
        }
        None => {
            MISSED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A span of `kind` from `began_us` to now.
pub fn since(kind: SpanKind, began_us: u64) -> Span {
    let now = clock::micros_since_boot();
    Span::new(kind, 0, began_us, now.saturating_sub(began_us))
}

/// What TRACE answers: up to `max` spans from `since` on.
pub fn read(since: u64, max: usize) -> cairn_proto::Message {
    let now_us = clock::micros_since_boot();
    let ring = RING.lock();
    let Some(ring) = ring.as_ref() else {
        return cairn_proto::Message::Error {
            code: cairn_proto::ErrorCode::Unexpected,
            message: "this node records no trace (no memory for it at boot)".into(),
        };
    };
    let (spans, next, lost) = ring.read(since, max);
    cairn_proto::Message::Traced { now_us, next, lost, spans }
}

/// Spans never recorded because the ring was busy (STATS `trace_missed`).
pub fn missed() -> u64 {
    MISSED.load(Ordering::Relaxed)
}

/// What the store let go of since the loop last looked, as one instant of the trace.
#[derive(Default)]
pub struct Evictions {
    seen: (u64, u64),
}

impl Evictions {
    pub fn note(&mut self, ev: &crate::jobs::NodeEvaluator) {
        let stats = ev.store.stats();
        let now = (stats.evictions, stats.evicted_bytes);
        if now.0 > self.seen.0 {
            let at = clock::micros_since_boot();
            record(Span {
                count: now.0 - self.seen.0,
                bytes: now.1.saturating_sub(self.seen.1),
                ..Span::new(SpanKind::Evict, 0, at, 0)
            });
        }
        self.seen = now;
    }
}
