//! Heap that walks take on the node's behalf (frames, look-ahead tables), charged against a
//! ceiling shared by every walk under way before it is allocated, and given back when what
//! holds the charge is dropped, wherever that happens.

use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, Ordering};

/// Bytes counted in a shared total until dropped.
#[derive(Default)]
pub(crate) struct Charge {
    /// None for a charge of nothing (no count to keep, no atomics).
    held: Option<Arc<AtomicU64>>,
    bytes: u64,
}

impl Charge {
    pub(crate) fn none() -> Charge {
        Charge::default()
    }

    /// Charges `bytes` to `held`, unless it would then be over `ceiling`; the error is what
    /// `held` counted before.
    pub(crate) fn take(held: &Arc<AtomicU64>, bytes: u64, ceiling: u64) -> Result<Charge, u64> {
        let before = held.fetch_add(bytes, Ordering::Relaxed);
        if before.saturating_add(bytes) > ceiling {
            held.fetch_sub(bytes, Ordering::Relaxed);
            return Err(before);
        }
        Ok(Charge { held: Some(held.clone()), bytes })
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if let Some(held) = &self.held {
            held.fetch_sub(self.bytes, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_stop_at_the_ceiling_and_come_back_when_dropped() {
        let held = Arc::new(AtomicU64::new(0));
        let first = Charge::take(&held, 60, 100).unwrap();
        assert_eq!(Charge::take(&held, 41, 100).err(), Some(60));
        let second = Charge::take(&held, 40, 100).unwrap();
        assert_eq!(held.load(Ordering::Relaxed), 100);
        drop(first);
        assert_eq!(held.load(Ordering::Relaxed), 40);
        drop(second);
        drop(Charge::none());
        assert_eq!(held.load(Ordering::Relaxed), 0);
    }
}
