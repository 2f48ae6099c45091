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

    /// The node served no one for `gap_us` (a job's IO, say): that time is not the client's.
    pub fn pause(&mut self, gap_us: u64) {
        if let Some(start) = self.window_start.as_mut() {
            *start = start.saturating_add(gap_us);
        }
    }
}

/// The node's loop polls connections far more often than this; a longer gap is time it spent
/// serving no one, which no client's pace, upload or idleness is charged for.
pub const POLL_GAP_US: u64 = 100_000;

/// What the node knows of one connection slot, for [`evict`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotView {
    /// A client is connected.
    pub connected: bool,
    /// Nothing pending either way: no partial request, no work or answers owed.
    pub quiet: bool,
    /// How long since bytes last moved.
    pub idle_us: u64,
    /// The client proved its key (docs/PROTOCOL.md, "The secure channel"): until then a
    /// connection is only a handshake, and the first to go when room is needed.
    pub authenticated: bool,
}

/// When every slot holds a connection, the one to close so that a new client can get in: the
/// quiet connection idle the longest, if it has been idle a while. `None` if a slot is free or
/// every connection is busy or fresh.
pub fn evict(slots: &[SlotView]) -> Option<usize> {
    if slots.iter().any(|s| !s.connected) {
        return None;
    }
    idlest(slots.iter().copied().enumerate())
}

/// A connection that has not authenticated this long is only a handshake that stalled (an
/// honest one takes milliseconds): it goes first when room is needed. A younger one may be the
/// very client the room is for.
pub const EVICT_HANDSHAKE_AFTER_US: u64 = 250_000;

/// The connection to close for room: a stalled handshake (idle the longest), or else the quiet
/// connection idle the longest, if it has been idle a while.
fn idlest(slots: impl Iterator<Item = (usize, SlotView)>) -> Option<usize> {
    slots
        .filter(|(_, s)| {
            if s.authenticated {
                s.quiet && s.idle_us >= EVICT_AFTER_IDLE_US
            } else {
                s.idle_us >= EVICT_HANDSHAKE_AFTER_US
            }
        })
        .max_by_key(|(_, s)| (!s.authenticated, s.idle_us))
        .map(|(i, _)| i)
}

/// A connection must finish its handshake (and prove its key with a first record) this soon.
pub const HANDSHAKE_DEADLINE_US: u64 = 5_000_000;
/// Handshakes in progress at once: past this, the oldest is closed for a new one.
pub const MAX_HANDSHAKES: usize = 8;

/// A handshake in progress, for [`handshake_to_close`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handshake {
    pub slot: usize,
    /// When the connection began.
    pub since: u64,
    /// Its hello named a key the node serves: it is one record from done, and whoever sent it
    /// holds that key (or replays a recording of it).
    pub known_key: bool,
}

/// With `handshaking` unauthenticated connections, the one to close before another handshake
/// starts, if they are at [`MAX_HANDSHAKES`]: the oldest of those that have not sent a hello
/// naming a key the node serves (a flood of empty or made-up handshakes then displaces only
/// itself), else the oldest.
pub fn handshake_to_close(handshaking: &[Handshake]) -> Option<usize> {
    if handshaking.len() < MAX_HANDSHAKES {
        return None;
    }
    handshaking.iter().min_by_key(|h| (h.known_key, h.since)).map(|h| h.slot)
}

/// What becomes of a new connection from an address that already holds some.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Admit,
    /// Admit it, closing this one of the address's own connections (quiet, idle the longest):
    /// behind NAT (QEMU's user networking included) every client shares one address, and idle
    /// connections must not lock the others out.
    AdmitClosing(usize),
    Refuse,
}

/// Admits a new connection from an address whose open connections are `held` (slot index and
/// view), if it holds fewer than `per_client` or one of them is quiet and idle a while.
pub fn admit(held: &[(usize, SlotView)], per_client: u64) -> Admission {
    if (held.len() as u64) < per_client {
        return Admission::Admit;
    }
    match idlest(held.iter().copied()) {
        Some(index) => Admission::AdmitClosing(index),
        None => Admission::Refuse,
    }
}

/// How long an upload may go before its bytes must keep up with [`UPLOAD_RATE`].
pub const UPLOAD_GRACE_US: u64 = 10_000_000;
/// Bytes per second an upload must average (after [`UPLOAD_GRACE_US`]) while the node reads
/// from it: the room it was promised at its start is not held by a trickle.
pub const UPLOAD_RATE: u64 = 256 * 1024;

/// A download's progress: the client must take [`UPLOAD_RATE`] bytes per second, judged over
/// each window of [`PACE_WINDOW_US`] (not on average: the buffers between the node and the
/// client swallow megabytes at the start, which an average would count as credit for minutes).
/// A client that reads a large object at a trickle must not hold it, and the download place
/// others wait for, for as long as it likes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DownloadPace(Pace);

impl DownloadPace {
    /// Records `bytes` the node sent at `now`; false once a window fell short.
    pub fn observe(&mut self, now: u64, bytes: u64) -> bool {
        self.0.observe(now, bytes, true, UPLOAD_RATE)
    }

    /// The node served no one for `gap_us`.
    pub fn pause(&mut self, gap_us: u64) {
        self.0.pause(gap_us);
    }
}

/// An upload's progress: the time the node was reading from it, and the bytes it sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UploadPace {
    last: Option<u64>,
    reading_us: u64,
    bytes: u64,
}

impl UploadPace {
    /// Records `bytes` received at `now`; `reading`: the node read from the connection since
    /// the last call (time it paused the connection does not count). False once the upload
    /// falls behind [`UPLOAD_RATE`].
    pub fn observe(&mut self, now: u64, bytes: u64, reading: bool) -> bool {
        if let Some(last) = self.last
            && reading
        {
            self.reading_us = self.reading_us.saturating_add(now.saturating_sub(last));
        }
        self.last = Some(now);
        self.bytes = self.bytes.saturating_add(bytes);
        let due = self.reading_us.saturating_sub(UPLOAD_GRACE_US).saturating_mul(UPLOAD_RATE) / 1_000_000;
        self.bytes >= due
    }

    /// The node served no one for `gap_us`: not time the upload had to send in.
    pub fn pause(&mut self, gap_us: u64) {
        if let Some(last) = self.last.as_mut() {
            *last = last.saturating_add(gap_us);
        }
    }
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
        let quiet = |idle_us| SlotView { connected: true, quiet: true, idle_us, authenticated: true };
        let busy = |idle_us| SlotView { connected: true, quiet: false, idle_us, authenticated: true };
        let free = SlotView { connected: false, quiet: true, idle_us: 0, authenticated: false };
        assert_eq!(evict(&[quiet(5 * S), free]), None);
        assert_eq!(evict(&[quiet(5 * S), quiet(9 * S), busy(99 * S)]), Some(1));
        assert_eq!(evict(&[busy(99 * S), quiet(S / 2)]), None, "fresh and busy connections stay");
        assert_eq!(evict(&[]), None);
    }

    #[test]
    fn an_address_at_its_limit_gets_in_by_closing_its_own_idle_connection() {
        let quiet = |idle_us| SlotView { connected: true, quiet: true, idle_us, authenticated: true };
        let busy = |idle_us| SlotView { connected: true, quiet: false, idle_us, authenticated: true };
        assert_eq!(admit(&[], 1), Admission::Admit);
        assert_eq!(admit(&[(3, busy(0))], 2), Admission::Admit);
        // At its limit: the one of its own idle the longest goes; busy or fresh ones stay.
        assert_eq!(
            admit(&[(3, quiet(2 * S)), (7, quiet(20 * S)), (9, busy(99 * S))], 3),
            Admission::AdmitClosing(7)
        );
        assert_eq!(admit(&[(3, busy(99 * S)), (4, quiet(S / 2))], 2), Admission::Refuse);
    }

    #[test]
    fn time_the_node_served_no_one_is_not_charged_to_a_client() {
        // An upload at 1 MiB/s, then 94 s in which the node polled no connection (a job's IO):
        // neither pace counts the gap once it is paused.
        let (mut upload, mut pace) = (UploadPace::default(), Pace::default());
        for i in 0..20 {
            assert!(upload.observe(i * S, 1 << 20, true));
            assert!(pace.observe(i * S, 1 << 20, true, 32 << 10));
        }
        upload.pause(94 * S);
        pace.pause(94 * S);
        assert!(upload.observe(114 * S, 1 << 20, true), "the upload was charged for the node's gap");
        assert!(pace.observe(114 * S, 1 << 20, true, 32 << 10));
        // Unpaused, the same gap would have ended both.
        let (mut upload, mut pace) = (UploadPace::default(), Pace::default());
        for i in 0..20 {
            upload.observe(i * S, 1 << 20, true);
            pace.observe(i * S, 0, true, 32 << 10);
        }
        assert!(!upload.observe(114 * S, 1 << 20, true));
        assert!(!pace.observe(114 * S, 0, true, 32 << 10));
    }

    #[test]
    fn a_download_read_at_a_trickle_fails_its_second_window_whatever_went_at_first() {
        // 10 MB swallowed by buffers at once, then 32 KiB/s.
        let mut trickle = DownloadPace::default();
        assert!(trickle.observe(0, 10 << 20));
        let verdicts: alloc::vec::Vec<bool> = (1..30).map(|i| trickle.observe(i * S, 32 << 10)).collect();
        assert_eq!(verdicts.iter().position(|ok| !ok), Some(19), "judged at 10 s, then at 20 s");
        let mut steady = DownloadPace::default();
        assert!((0..600).all(|i| steady.observe(i * S, 300 << 10)));
    }

    #[test]
    fn connections_that_never_authenticated_go_first() {
        let quiet = |idle_us| SlotView { connected: true, quiet: true, idle_us, authenticated: true };
        let handshake = |idle_us| SlotView { connected: true, quiet: true, idle_us, authenticated: false };
        // A stalled handshake goes before a client idle for a minute, the older one first; one
        // that has just begun stays (it may be the client the room is for).
        assert_eq!(evict(&[quiet(60 * S), handshake(S / 2), handshake(S)]), Some(2));
        assert_eq!(evict(&[quiet(60 * S), handshake(S / 10)]), Some(0));
        assert_eq!(evict(&[quiet(S / 2), handshake(S / 10)]), None);
        assert_eq!(admit(&[(1, quiet(60 * S)), (4, handshake(S))], 2), Admission::AdmitClosing(4));
        // At most MAX_HANDSHAKES at once: the oldest goes, but a hello from a key the node
        // serves outlives any number of newer empty or made-up ones.
        let shake = |slot: usize, since: u64, known_key: bool| Handshake { slot, since, known_key };
        let mut many: alloc::vec::Vec<Handshake> =
            (0..MAX_HANDSHAKES).map(|i| shake(i, 100 - i as u64, false)).collect();
        assert_eq!(handshake_to_close(&many[..MAX_HANDSHAKES - 1]), None);
        assert_eq!(handshake_to_close(&many), Some(MAX_HANDSHAKES - 1));
        many[MAX_HANDSHAKES - 1].known_key = true;
        assert_eq!(handshake_to_close(&many), Some(MAX_HANDSHAKES - 2));
        let all_known: alloc::vec::Vec<Handshake> =
            many.iter().map(|h| shake(h.slot, h.since, true)).collect();
        assert_eq!(handshake_to_close(&all_known), Some(MAX_HANDSHAKES - 1));
    }

    #[test]
    fn an_upload_must_keep_up_once_its_grace_is_over_counting_only_time_the_node_reads() {
        let mut trickle = UploadPace::default();
        // 1.3 KB/s, read all the while: fine through the grace, behind soon after.
        let verdicts: alloc::vec::Vec<bool> = (0..30).map(|i| trickle.observe(i * S, 1300, true)).collect();
        assert_eq!(verdicts.iter().position(|ok| !ok), Some(11));
        let mut steady = UploadPace::default();
        assert!((0..600).all(|i| steady.observe(i * S, 300 << 10, true)));
        // Paused by the node for a minute: that minute is not the client's.
        let mut paused = UploadPace::default();
        assert!((0..60).all(|i| paused.observe(i * S, 0, false)));
        assert!(paused.observe(61 * S, 0, true));
        // An upload that sends nothing at all is behind as soon as its grace is over.
        let mut silent = UploadPace::default();
        let verdicts: alloc::vec::Vec<bool> = (0..20).map(|i| silent.observe(i * S, 0, true)).collect();
        assert_eq!(verdicts.iter().position(|ok| !ok), Some(11));
    }
}
