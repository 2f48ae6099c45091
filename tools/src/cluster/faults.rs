//! Faults the cluster's switch puts on the wire (docs/EXPERIMENTS.md): frames dropped,
//! delayed, reordered and rate limited, and nodes partitioned. What happens to each frame is
//! decided here from a seed, with no clock and no socket: the switch (`hub.rs`) asks
//! [`Wire::route`] when each copy of a frame is to be delivered, and delivers it then.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The wire's faults, the same for every link (docs/EXPERIMENTS.md, "Faults").
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinkFaults {
    /// The probability that a frame is lost, on each link it crosses (0 to 1).
    pub drop: f64,
    /// Latency added to every frame, in milliseconds.
    pub delay_ms: f64,
    /// A further latency, uniform from 0 to this, drawn for each frame.
    pub jitter_ms: f64,
    /// The probability that a frame is held back by `reorder_ms`, so that frames sent after it
    /// overtake it (0 to 1).
    pub reorder: f64,
    /// How long a reordered frame is held back (5 ms when 0).
    pub reorder_ms: f64,
    /// What each node may send, in KiB/s (0: no limit). Frames wait their turn behind the
    /// node's earlier ones; past a second's worth of waiting they are dropped, as a full queue
    /// drops them.
    pub rate_kib_s: f64,
    /// Groups of nodes (by index) that reach only each other; nodes in no group form one more
    /// group together. Empty: no partition.
    pub partition: Vec<Vec<usize>>,
}

/// Parses groups of node indices like `0,1/2` (a partition).
pub fn parse_partition(text: &str) -> Result<Vec<Vec<usize>>, String> {
    text.split('/')
        .map(|group| {
            group
                .split(',')
                .map(|n| {
                    n.trim()
                        .parse::<usize>()
                        .map_err(|_| format!("`{n}` in partition `{text}` is not a node index"))
                })
                .collect()
        })
        .collect()
}

/// A reordered frame's hold when `reorder_ms` is not given.
const DEFAULT_REORDER_MS: f64 = 5.0;
/// The most a rate-limited node's frames wait in the switch before new ones are dropped.
const MAX_QUEUE: Duration = Duration::from_secs(1);

impl LinkFaults {
    /// Checks the values, naming the first that is out of range.
    pub fn check(&self, nodes: usize) -> Result<(), String> {
        for (name, p) in [("drop", self.drop), ("reorder", self.reorder)] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("{name} is a probability, from 0 to 1 (not {p})"));
            }
        }
        for (name, v) in [
            ("delay_ms", self.delay_ms),
            ("jitter_ms", self.jitter_ms),
            ("reorder_ms", self.reorder_ms),
            ("rate_kib_s", self.rate_kib_s),
        ] {
            if !v.is_finite() || !(0.0..=3_600_000.0).contains(&v) {
                return Err(format!("{name} must be from 0 to 3,600,000 (not {v})"));
            }
        }
        let mut seen = vec![false; nodes];
        for node in self.partition.iter().flatten() {
            match seen.get_mut(*node) {
                None => return Err(format!("the partition names node {node}, but the cluster has {nodes}")),
                Some(true) => return Err(format!("the partition names node {node} twice")),
                Some(s) => *s = true,
            }
        }
        Ok(())
    }

    /// Whether frames from node `a` reach node `b` across the partition.
    pub fn connected(&self, a: usize, b: usize) -> bool {
        let group = |n: usize| self.partition.iter().position(|g| g.contains(&n));
        group(a) == group(b)
    }

    pub fn is_none(&self) -> bool {
        *self == LinkFaults::default()
    }
}

/// The wire's state: the faults, the seeded draws, and when each node's link is next free.
pub struct Wire {
    faults: LinkFaults,
    rng: u64,
    /// Per sending node, when its last frame has finished going out (rate limit).
    free_at: Vec<Duration>,
}

impl Wire {
    pub fn new(nodes: usize, faults: LinkFaults, seed: u64) -> Wire {
        Wire {
            faults,
            rng: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            free_at: vec![Duration::ZERO; nodes],
        }
    }

    /// New faults from now on (frames already on their way keep their times).
    pub fn set(&mut self, faults: LinkFaults, seed: u64) {
        self.faults = faults;
        self.rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    }

    /// A draw uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        // xorshift64: the same seed gives the same faults.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    /// When the copy of a `len`-byte frame sent by node `from` at `now` reaches each of `to`
    /// (times on the same clock as `now`); those not listed never get it.
    pub fn route(&mut self, now: Duration, len: usize, from: usize, to: &[usize]) -> Vec<(usize, Duration)> {
        let f = &self.faults;
        let mut leaves = now;
        if f.rate_kib_s > 0.0 {
            let free = self.free_at.get(from).copied().unwrap_or_default().max(now);
            if free - now > MAX_QUEUE {
                return Vec::new(); // the node's queue is full
            }
            // A rate low enough (1e-20 KiB/s passes `check`) puts a frame's sending past what a
            // Duration holds: it never leaves, rather than panic the switch's thread.
            let sending = Duration::try_from_secs_f64(len as f64 / (f.rate_kib_s * 1024.0));
            leaves = free.saturating_add(sending.unwrap_or(Duration::MAX));
            if let Some(slot) = self.free_at.get_mut(from) {
                *slot = leaves;
            }
        }
        let (drop, delay, jitter, reorder) = (f.drop, f.delay_ms, f.jitter_ms, f.reorder);
        let hold = if f.reorder_ms > 0.0 { f.reorder_ms } else { DEFAULT_REORDER_MS };
        let mut out = Vec::with_capacity(to.len());
        for &node in to {
            if !self.faults.connected(from, node) {
                continue;
            }
            // Every draw is made whatever the faults, so that one setting changed leaves the
            // others' draws as they were.
            let (lost, extra, held) =
                (self.uniform() < drop, self.uniform() * jitter, self.uniform() < reorder);
            if lost {
                continue;
            }
            let ms = delay + extra + if held { hold } else { 0.0 };
            out.push((node, leaves.saturating_add(Duration::from_secs_f64(ms / 1000.0))));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn no_faults_deliver_every_copy_at_once() {
        let mut wire = Wire::new(3, LinkFaults::default(), 1);
        assert_eq!(wire.route(ms(7), 1500, 0, &[1, 2]), [(1, ms(7)), (2, ms(7))]);
    }

    #[test]
    fn drops_come_at_the_rate_asked_and_repeat_with_the_seed() {
        let faults = LinkFaults { drop: 0.1, ..LinkFaults::default() };
        let delivered = |seed| {
            let mut wire = Wire::new(2, faults.clone(), seed);
            (0..20_000).map(|i| wire.route(ms(i), 100, 0, &[1]).len()).collect::<Vec<_>>()
        };
        let (a, b, c) = (delivered(5), delivered(5), delivered(6));
        assert_eq!(a, b, "the same seed drops the same frames");
        assert_ne!(a, c);
        let lost = a.iter().filter(|n| **n == 0).count();
        assert!((1_700..2_300).contains(&lost), "{lost} of 20,000 lost at 10 %");
    }

    #[test]
    fn delay_and_jitter_stay_in_their_range() {
        let faults = LinkFaults { delay_ms: 20.0, jitter_ms: 10.0, ..LinkFaults::default() };
        let mut wire = Wire::new(2, faults, 3);
        let times: Vec<Duration> = (0..1000).map(|_| wire.route(ms(100), 100, 1, &[0])[0].1).collect();
        assert!(times.iter().all(|t| *t >= ms(120) && *t <= ms(130)), "{:?}", times.iter().max());
        assert!(times.iter().any(|t| *t > ms(128)) && times.iter().any(|t| *t < ms(122)), "jitter spreads");
    }

    #[test]
    fn reordered_frames_are_overtaken_by_later_ones() {
        let faults = LinkFaults { reorder: 0.5, reorder_ms: 10.0, ..LinkFaults::default() };
        let mut wire = Wire::new(2, faults, 9);
        let arrivals: Vec<Duration> = (0..100).map(|i| wire.route(ms(i), 100, 0, &[1])[0].1).collect();
        let overtaken = arrivals.windows(2).filter(|w| w[1] < w[0]).count();
        assert!(overtaken > 10, "{overtaken} of 100 frames overtaken");
    }

    #[test]
    fn a_rate_limit_spaces_frames_and_drops_past_a_full_queue() {
        // 100 KiB/s: a 1,024-byte frame takes 10 ms.
        let faults = LinkFaults { rate_kib_s: 100.0, ..LinkFaults::default() };
        let mut wire = Wire::new(2, faults, 1);
        let first = wire.route(ms(0), 1024, 0, &[1]);
        let second = wire.route(ms(0), 1024, 0, &[1]);
        assert_eq!(first, [(1, ms(10))]);
        assert_eq!(second, [(1, ms(20))]);
        // The other node's link is its own.
        assert_eq!(wire.route(ms(0), 1024, 1, &[0]), [(0, ms(10))]);
        // A burst: after a second's worth of queue, frames are dropped until it drains.
        let sent = (0..200).filter(|_| !wire.route(ms(0), 1024, 0, &[1]).is_empty()).count();
        assert!((99..=101).contains(&sent), "{sent} of 200 queued");
        assert_eq!(wire.route(ms(2000), 1024, 0, &[1]), [(1, ms(2010))], "drained by then");
    }

    #[test]
    fn a_rate_too_low_for_a_frame_to_leave_holds_it_rather_than_panic() {
        // Within `check`'s range, but a frame would take longer than a `Duration` holds.
        let faults = LinkFaults { rate_kib_s: 1e-20, ..LinkFaults::default() };
        assert!(faults.check(2).is_ok());
        let mut wire = Wire::new(2, faults, 1);
        let first = wire.route(ms(0), 1500, 0, &[1]);
        assert!(first.iter().all(|(_, at)| *at > ms(3_600_000)), "{first:?}");
        assert!(wire.route(ms(5), 1500, 0, &[1]).is_empty(), "the node's queue is full");
    }

    #[test]
    fn a_partition_cuts_exactly_the_links_between_groups() {
        let faults = LinkFaults { partition: vec![vec![2]], ..LinkFaults::default() };
        let mut wire = Wire::new(4, faults.clone(), 1);
        let reached: Vec<usize> = wire.route(ms(0), 60, 0, &[1, 2, 3]).into_iter().map(|(n, _)| n).collect();
        assert_eq!(reached, [1, 3], "node 2 is cut off; the rest form a group");
        assert!(wire.route(ms(0), 60, 2, &[0, 1, 3]).is_empty());
        assert!(faults.connected(0, 3) && !faults.connected(1, 2));
    }

    #[test]
    fn partitions_parse_and_nonsense_is_named() {
        assert_eq!(parse_partition("0,1/2").unwrap(), vec![vec![0, 1], vec![2]]);
        assert_eq!(parse_partition("2").unwrap(), vec![vec![2]]);
        assert!(parse_partition("0,x").unwrap_err().contains("`x`"));
        assert!(parse_partition("").is_err());
    }

    #[test]
    fn values_out_of_range_are_named() {
        let bad = |f: LinkFaults| f.check(3).unwrap_err();
        assert!(bad(LinkFaults { drop: 1.5, ..LinkFaults::default() }).contains("drop"));
        assert!(bad(LinkFaults { delay_ms: -1.0, ..LinkFaults::default() }).contains("delay_ms"));
        assert!(bad(LinkFaults { rate_kib_s: f64::NAN, ..LinkFaults::default() }).contains("rate_kib_s"));
        assert!(bad(LinkFaults { partition: vec![vec![3]], ..LinkFaults::default() }).contains("node 3"));
        assert!(
            bad(LinkFaults { partition: vec![vec![1], vec![1]], ..LinkFaults::default() }).contains("twice")
        );
        assert!(
            LinkFaults { drop: 0.05, partition: vec![vec![0, 1]], ..LinkFaults::default() }.check(3).is_ok()
        );
    }
}
