//! Node-wide ceilings (docs/SECURITY.md): what any one task, evaluation or client connection may
//! use on this node, whatever a thunk or a client asks for. Every resource a task or a client
//! can ask for has one, so that nothing they send can exhaust the node.

/// The ceilings, each a key of the node configuration. Defaults fit a 512 MiB node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ceilings {
    /// Memory one task may use (its image, arguments, heap, stack and opened copies), MiB.
    pub task_memory_mib: u64,
    /// Time one task may run, counting the kernel's work on its behalf, milliseconds.
    pub task_time_ms: u64,
    /// Bytes one task may create as objects, MiB (every CREATE counts, stored or not).
    pub task_create_mib: u64,
    /// Objects one task may create.
    pub task_objects: u64,
    /// Handles one task may name beyond its arguments: what it created, what it opened, and
    /// the entries of the trees it opened (the kernel keeps them to check EVAL-3).
    pub task_handles: u64,
    /// Entries in one tree or thunk, made by a task or uploaded by a client.
    pub tree_entries: u64,
    /// Time one evaluation may take, all its tasks and the kernel's work for it, seconds.
    pub eval_time_s: u64,
    /// Applications (tasks run and IO performed) in one evaluation.
    pub eval_applications: u64,
    /// Thunks one evaluation may have waiting on their arguments at once.
    pub eval_depth: u64,
    /// Entries the memo keeps; past that, the least recently used go (their values with them,
    /// once nothing else keeps those).
    pub memo_entries: u64,
    /// Bytes the memo's remembered errors may take (their messages), MiB; past that, the least
    /// recently used errors go.
    pub memo_error_mib: u64,
    /// Client connections served at once, per API.
    pub api_connections: u64,
    /// Connections one client address may hold at once.
    pub api_connections_per_client: u64,
    /// Bytes of answers queued for one connection before it is paused, MiB.
    pub api_queue_mib: u64,
    /// Bytes one connection may send behind work not yet answered before the node stops
    /// reading from it, MiB.
    pub api_held_mib: u64,
    /// Bytes per second a connection must keep up while it is in the middle of a request.
    pub api_min_rate: u64,
}

impl Default for Ceilings {
    fn default() -> Self {
        Ceilings {
            task_memory_mib: 256,
            task_time_ms: 2_000,
            task_create_mib: 64,
            task_objects: 100_000,
            task_handles: 1 << 18,
            tree_entries: 1 << 18,
            eval_time_s: 300,
            eval_applications: 100_000,
            eval_depth: 10_000,
            memo_entries: 250_000,
            memo_error_mib: 16,
            api_connections: 16,
            api_connections_per_client: 12,
            api_queue_mib: 1,
            api_held_mib: 1,
            api_min_rate: 32 << 10,
        }
    }
}

/// One ceiling as a configuration key: its name, where it lives, and the values it may take.
pub struct CeilingKey {
    pub key: &'static str,
    pub min: u64,
    pub max: u64,
    pub get: fn(&Ceilings) -> u64,
    pub set: fn(&mut Ceilings, u64),
}

macro_rules! key {
    ($field:ident, $min:expr, $max:expr) => {
        CeilingKey {
            key: stringify!($field),
            min: $min,
            max: $max,
            get: |c| c.$field,
            set: |c, v| c.$field = v,
        }
    };
}

/// Every ceiling key. The largest task memory keeps a task's heap inside its window of the
/// address space (cairn_abi::layout), with the guard page after it.
pub const CEILING_KEYS: &[CeilingKey] = &[
    key!(task_memory_mib, 1, 32 * 1024),
    key!(task_time_ms, 10, 3_600_000),
    key!(task_create_mib, 1, 32 * 1024),
    key!(task_objects, 1, 100_000_000),
    key!(task_handles, 1, 100_000_000),
    key!(tree_entries, 2, 100_000_000),
    key!(eval_time_s, 1, 7 * 86_400),
    key!(eval_applications, 1, 1_000_000_000),
    key!(eval_depth, 1, 1_000_000),
    key!(memo_entries, 1, 100_000_000),
    key!(memo_error_mib, 1, 4096),
    key!(api_connections, 1, 256),
    key!(api_connections_per_client, 1, 256),
    key!(api_queue_mib, 1, 1024),
    key!(api_held_mib, 1, 1024),
    key!(api_min_rate, 1, 1 << 30),
];

impl Ceilings {
    pub fn task_memory_bytes(&self) -> u64 {
        self.task_memory_mib << 20
    }
    pub fn task_create_bytes(&self) -> u64 {
        self.task_create_mib << 20
    }
    pub fn task_time_us(&self) -> u64 {
        self.task_time_ms * 1000
    }
    pub fn eval_time_us(&self) -> u64 {
        self.eval_time_s * 1_000_000
    }
    pub fn memo_error_bytes(&self) -> u64 {
        self.memo_error_mib << 20
    }
    pub fn api_queue_bytes(&self) -> u64 {
        self.api_queue_mib << 20
    }
    pub fn api_held_bytes(&self) -> u64 {
        self.api_held_mib << 20
    }
}
