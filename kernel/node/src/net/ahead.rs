//! Keystreams computed ahead on the other CPUs (arch::smp). A connection streaming full records
//! orders the keystreams of its next records (`cairn_channel::Transport::order`); the helper
//! computes them while the boot CPU moves bytes, so the boot CPU's share of a record is only the
//! MAC and an XOR (docs/ARCHITECTURE.md, "CPUs").
//!
//! A keystream is computed by whichever CPU claims it first: when a record's turn comes and the
//! helper has not begun its keystream, the boot CPU takes it back and computes just the bytes the
//! record needs; if the helper has begun, the boot CPU waits for it (one keystream, well under a
//! millisecond). At most [`IN_FLIGHT`] keystreams exist at once, node-wide.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::sync::{Arc, Weak};
use core::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};

use cairn_channel::{Direction, Keystream, KeystreamOrder, Prepared, Transport};
use spin::Mutex;

use crate::arch::smp::{self, HelperWork};

/// Keystreams ordered and not yet used, node-wide: about 64 KiB each.
pub const IN_FLIGHT: usize = 32;

const WAITING: u8 = 0;
const CLAIMED: u8 = 1;
const COMPUTED: u8 = 2;

static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Keystreams computed ahead (by the helper, or by the boot CPU instead of halting), and those
/// the boot CPU took back, for STATS.
static AHEAD: AtomicU64 = AtomicU64::new(0);
static TAKEN_BACK: AtomicU64 = AtomicU64::new(0);

struct Job {
    counter: u64,
    state: AtomicU8,
    order: Mutex<Option<KeystreamOrder>>,
    stream: Mutex<Option<Keystream>>,
}

impl Job {
    fn claim(&self) -> bool {
        self.state.compare_exchange(WAITING, CLAIMED, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A record's claim on its keystream.
struct Ticket(Arc<Job>);

impl Prepared for Ticket {
    fn counter(&self) -> u64 {
        self.0.counter
    }

    fn take(&mut self) -> Option<Keystream> {
        if self.0.claim() {
            // Not begun: the record computes only the bytes it needs, here.
            TAKEN_BACK.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        while self.0.state.load(Ordering::Acquire) != COMPUTED {
            core::hint::spin_loop();
        }
        self.0.stream.lock().take()
    }
}

/// The keystreams waiting for the helper, oldest first. Only weak references: a connection that
/// ends drops its tickets, and the helper skips what nobody waits for.
struct Queue(Mutex<VecDeque<Weak<Job>>>);

impl HelperWork for Queue {
    fn run(&self) {
        let Some(job) = self.0.lock().pop_front() else { return };
        let Some(job) = job.upgrade() else { return };
        if !job.claim() {
            return;
        }
        let order = job.order.lock().take();
        if let Some(order) = order {
            *job.stream.lock() = Some(order.compute());
            AHEAD.fetch_add(1, Ordering::Relaxed);
        }
        job.state.store(COMPUTED, Ordering::Release);
    }

    fn has_work(&self) -> bool {
        !self.0.lock().is_empty()
    }

    fn shared_with_boot_cpu(&self) -> bool {
        true
    }
}

static QUEUE: spin::Once<Arc<Queue>> = spin::Once::new();

/// Hands the queue to the other CPUs, once it is online (at boot, before any connection).
pub fn start() {
    let queue = QUEUE.call_once(|| Arc::new(Queue(Mutex::new(VecDeque::with_capacity(IN_FLIGHT)))));
    if !smp::offer(queue.clone()) {
        log::warn!("smp: the helper took no keystream work; records compute their own");
    }
}

/// Orders what `transport` wants computed ahead, both ways, while the node-wide ceiling allows.
pub fn order_keystreams(transport: &mut Transport) {
    let Some(queue) = QUEUE.get().filter(|_| smp::online()) else { return };
    let mut ordered = false;
    for direction in [Direction::Receive, Direction::Send] {
        while LIVE.load(Ordering::Relaxed) < IN_FLIGHT {
            let Some(order) = transport.order(direction) else { break };
            LIVE.fetch_add(1, Ordering::Relaxed);
            let job = Arc::new(Job {
                counter: order.counter(),
                state: AtomicU8::new(WAITING),
                order: Mutex::new(Some(order)),
                stream: Mutex::new(None),
            });
            queue.0.lock().push_back(Arc::downgrade(&job));
            transport.expect(direction, Box::new(Ticket(job)));
            ordered = true;
        }
    }
    if ordered {
        smp::poke();
    }
}

/// Keystreams computed ahead, those the boot CPU computed with their records because nobody had
/// begun them, and those ordered and not yet used or dropped.
pub fn stats() -> (u64, u64, usize) {
    (AHEAD.load(Ordering::Relaxed), TAKEN_BACK.load(Ordering::Relaxed), LIVE.load(Ordering::Relaxed))
}
