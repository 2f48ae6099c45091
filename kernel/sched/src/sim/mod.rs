//! A deterministic simulator of a cluster running one job under the scheduler (docs/SCHEDULER.md,
//! "Simulation"): N nodes with a virtual clock, links with latency and bandwidth, task durations
//! from a model, and faults drawn from a seed. The scheduler is the real one; only the nodes
//! and the network are models. The same configuration gives the same run, down to the hash of
//! every event delivered.

mod workload;
mod world;

use alloc::string::String;

use cairn_object::Handle;

use crate::messages::Options;

pub use workload::Workload;

/// The network between the coordinator and the nodes, and between nodes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Network {
    /// One way, per message.
    pub latency_us: u64,
    /// Bytes per second of one transfer (no contention is modelled).
    pub bandwidth: u64,
}

/// Faults, drawn from `seed`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    pub seed: u64,
    /// Chance that a message is dropped; TCP sends it again after `retransmit_us`.
    pub drop: f64,
    /// Each message is delayed by up to this much more, at random.
    pub jitter_us: u64,
    /// Nodes that crash at a random time within the job's first `horizon_us`.
    pub crashes: usize,
    /// Nodes cut off from everyone for a while (from a random time, for `partition_us`).
    pub partitions: usize,
    /// Nodes whose tasks take four times as long.
    pub slow: usize,
    /// Nodes that send wrong bytes for what they hold (content addressing catches them).
    pub corrupt: usize,
    /// Nodes that compute wrong results (only verification catches them).
    pub wrong: usize,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub nodes: usize,
    pub workload: Workload,
    pub options: Options,
    pub network: Network,
    pub faults: Faults,
    /// How long the coordinator waits on one request before it takes the node for lost.
    pub request_timeout_us: u64,
    /// A dropped message is sent again this much later.
    pub retransmit_us: u64,
    /// Faults happen within this long after the start.
    pub horizon_us: u64,
    pub partition_us: u64,
    /// Task durations from a recorded run, in place of the workload's model (none: the model).
    pub recorded: Option<Recorded>,
}

/// Durations of the tasks of a real run (`cairn eval --cluster --record-durations`), by kind:
/// leaves (tasks that take no other task's value) and the rest. A simulated task's duration is
/// drawn from its kind's, by a generator seeded with the fault seed: the same seed, the same
/// draws. A kind with none recorded draws from the other.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recorded {
    pub leaf_us: alloc::vec::Vec<u64>,
    pub inner_us: alloc::vec::Vec<u64>,
}

impl Recorded {
    /// A duration for task `task` (a leaf or not), drawn with `rng`; none if nothing was recorded.
    pub(crate) fn draw(&self, leaf: bool, rng: &mut u64) -> Option<u64> {
        let (first, second) =
            if leaf { (&self.leaf_us, &self.inner_us) } else { (&self.inner_us, &self.leaf_us) };
        let from = if first.is_empty() { second } else { first };
        if from.is_empty() {
            return None;
        }
        // SplitMix64.
        *rng = rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Some(from[(z % from.len() as u64) as usize])
    }
}

impl Config {
    /// A fault-free cluster on a LAN: 100 us one way, 1 GB/s.
    pub fn new(nodes: usize, workload: Workload, options: Options) -> Config {
        Config {
            nodes,
            workload,
            options,
            network: Network { latency_us: 100, bandwidth: 1_000_000_000 },
            faults: Faults::default(),
            request_timeout_us: 10_000_000,
            retransmit_us: 200_000,
            horizon_us: 1_000_000,
            partition_us: 20_000_000,
            recorded: None,
        }
    }
}

/// What a simulated run did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The job's result, or why it failed.
    pub result: Result<Handle, String>,
    /// Virtual time from the start to the end.
    pub makespan_us: u64,
    pub tasks: usize,
    /// Tasks sent to nodes past one per task (runs again after faults, and verification's).
    pub dispatched: usize,
    pub recalled: usize,
    /// Bytes moved between nodes, and from the coordinator.
    pub moved_bytes: u64,
    pub uploaded_bytes: u64,
    pub lost_nodes: usize,
    pub bad_peers: usize,
    pub mismatches: usize,
    /// Events delivered to the scheduler, and BLAKE3 of all of them in order.
    pub events: u64,
    pub trace: [u8; 32],
    /// Nodes that were sent a task after the scheduler was told they sent wrong bytes.
    pub ran_on_caught: usize,
    /// Time spent inside the scheduler, as measured by the caller's clock.
    pub scheduler_ns: u64,
}

/// Runs `config`'s job to its end. `clock` gives the host's time in nanoseconds, to measure
/// the scheduler's own cost (it never changes the run).
pub fn run(config: &Config, clock: &mut dyn FnMut() -> u64) -> Outcome {
    world::World::new(config).run(clock)
}
