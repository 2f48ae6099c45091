//! Which connections a node keeps (docs/SECURITY.md, the `api_*` ceilings), as pure decisions
//! over what each connection did, so that they are tested on the host. The kernel applies them
//! to its TCP sockets.

/// A connection in the middle of a request is judged on the bytes it sent over windows this
/// long.
pub const PACE_WINDOW_US: u64 = 10_000_000;

/// A connection must have been quiet this long before it is closed to make room.
pub const EVICT_AFTER_IDLE_US: u64 = 1_000_000;

/// A connection's pace while it owes the node the rest of a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pace {
    window_start: Option<u64>,
    bytes: u64,
}

impl Pace {
    /// Records `bytes` received at `now`. `owing`: the connection is in the middle of a request
    /// and the node is reading from it (a connection the node itself has paused owes nothing).
    /// False once a whole window passed with fewer than `min_rate` bytes per second: a client
    /// that dribbles a byte now and then must not hold a slot forever.
    pub fn observe(&mut self, now: u64, bytes: u64, owing: bool, min_rate: u64) -> bool {
        if !owing {
            *self = Pace::default();
            return true;
        }
        let start = *self.window_start.get_or_insert(now);
        self.bytes = self.bytes.saturating_add(bytes);
        let elapsed = now.saturating_sub(start);
        if elapsed < PACE_WINDOW_US {
            return true;
        }
        let needed = min_rate.saturating_mul(elapsed) / 1_000_000;
        let kept_up = self.bytes >= needed;
        *self = Pace { window_start: Some(now), bytes: 0 };
        kept_up
    }
}

/// What the node knows of one connection slot, for [`evict`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotView {
    /// A client is connected.
    pub connected: bool,
    /// Nothing pending either way: no partial request, no work or answers owed.
    pub quiet: bool,
    /// How long since bytes last moved.
    pub idle_us: u64,
}

/// When every slot holds a connection, the one to close so that a new client can get in: the
/// quiet connection idle the longest, if it has been idle a while. `None` if a slot is free or
/// every connection is busy or fresh.
pub fn evict(slots: &[SlotView]) -> Option<usize> {
    if slots.iter().any(|s| !s.connected) {
        return None;
    }
    slots
        .iter()
        .enumerate()
        .filter(|(_, s)| s.quiet && s.idle_us >= EVICT_AFTER_IDLE_US)
        .max_by_key(|(_, s)| s.idle_us)
        .map(|(i, _)| i)
}

/// Whether a new connection from an address that already holds `held` may stay.
pub fn admit(held: u64, per_client: u64) -> bool {
    held < per_client
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    #[test]
    fn a_dribbler_is_dropped_after_one_window_and_a_steady_client_is_not() {
        let mut dribbler = Pace::default();
        // A byte every 2 s, mid-request, against 1024 B/s.
        let verdicts: alloc::vec::Vec<bool> =
            (0..8).map(|i| dribbler.observe(i * 2 * S, 1, true, 1024)).collect();
        assert_eq!(verdicts.iter().position(|ok| !ok), Some(5), "dropped once a whole window passed");
        let mut steady = Pace::default();
        assert!((0..100).all(|i| steady.observe(i * S / 2, 1024, true, 1024)));
    }

    #[test]
    fn pace_only_counts_while_a_request_is_owed() {
        let mut p = Pace::default();
        assert!(p.observe(0, 1, true, 1024));
        // The request completed (or the node paused the connection): the window starts over.
        assert!(p.observe(9 * S, 0, false, 1024));
        assert!(p.observe(30 * S, 1, true, 1024));
        assert!(p.observe(39 * S, 0, true, 1024));
        assert!(!p.observe(41 * S, 0, true, 1024));
        // A clock that goes backwards never panics.
        assert!(Pace::default().observe(5, 0, true, u64::MAX));
    }

    #[test]
    fn eviction_makes_room_only_when_every_slot_is_taken() {
        let quiet = |idle_us| SlotView { connected: true, quiet: true, idle_us };
        let busy = |idle_us| SlotView { connected: true, quiet: false, idle_us };
        let free = SlotView { connected: false, quiet: true, idle_us: 0 };
        assert_eq!(evict(&[quiet(5 * S), free]), None);
        assert_eq!(evict(&[quiet(5 * S), quiet(9 * S), busy(99 * S)]), Some(1));
        assert_eq!(evict(&[busy(99 * S), quiet(S / 2)]), None, "fresh and busy connections stay");
        assert_eq!(evict(&[]), None);
        assert!(admit(0, 1) && !admit(1, 1));
    }
}
