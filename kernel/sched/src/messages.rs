//! What goes into the scheduler and what comes out of it (docs/SCHEDULER.md): its options,
//! the events it takes, the actions it gives, and the report it ends with.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use cairn_object::Handle;

use crate::NodeId;
use crate::place::Placement;

/// Handles the probing phase asks about at most, over all nodes together.
pub const PROBE_HANDLES: usize = 1 << 22;

/// Tasks one memo round asks the nodes about at most (each as written and as applied).
pub const RECALL_TASKS: usize = 1024;

/// Up to this many nodes, a memo round asks every node about every task of the round; on a
/// larger cluster, each task is asked of its likely holders only (docs/SCHEDULER.md, "Limits").
pub const RECALL_ALL_NODES: usize = 64;
/// An input held by more nodes than this says nothing of where its task ran.
pub const RECALL_HOLDERS: usize = 8;

/// Times a task may fail to get its inputs from peers before the job gives up.
pub const MAX_FETCH_FAILURES: u32 = 5;
/// Times a task may fail for a reason that is the node's rather than the task's (see
/// [`node_failure`]) before the job gives up.
pub const MAX_NODE_FAILURES: u32 = 2;

/// Whether a node's report of a failed task (the failure as the node sent it) says something
/// about the node rather than the task: a timeout (the budget is wall-clock time, and a loaded
/// node is slow) or the node out of memory. EVAL-5 keeps these out of the memo for the same
/// reason; the task runs again, elsewhere if it can. Whole-text matches: a task's own error
/// message that merely ends like one of these is the task's.
pub fn node_failure(failure: &str) -> bool {
    failure == "timeout" || failure == "node out of memory"
}

#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub placement: Placement,
    /// Every task runs on two different nodes, memo ignored, and the results are compared.
    pub verify: bool,
    /// Start with the job's data spread over the nodes, round robin, instead of uploading each
    /// object where it is first needed.
    pub spread: bool,
    /// Ask the nodes' memos before running a task (memo first). Off only in simulations that
    /// model no memo.
    pub recall: bool,
    pub seed: u64,
}

/// Two nodes that disagree about one task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub thunk: Handle,
    pub first: (NodeId, Handle),
    pub second: (NodeId, Handle),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub result: Option<Handle>,
    pub tasks: usize,
    /// Applications run, per node.
    pub runs: BTreeMap<NodeId, usize>,
    /// Tasks answered by some node's memo instead of running.
    pub recalled: usize,
    /// Bytes moved from node to node.
    pub moved_bytes: u64,
    /// Bytes uploaded by the driver (the job's own objects).
    pub uploaded_bytes: u64,
    pub lost_nodes: Vec<NodeId>,
    pub mismatches: Vec<Mismatch>,
    /// Nodes caught sending wrong bytes, with what the one that caught them said.
    pub bad_peers: Vec<(NodeId, String)>,
    /// Tasks sent to a node (more than `tasks` when some ran again or were verified).
    pub dispatched: usize,
}

/// What a node is asked to do for one task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order {
    pub task: usize,
    /// The thunk as applied (its arguments values), and its encoding, to upload if missing.
    pub applied: Handle,
    pub applied_bytes: Vec<u8>,
    /// The job's own objects the node lacks and no trusted peer holds.
    pub uploads: Vec<Handle>,
    /// What the node fetches from which peer.
    pub fetches: Vec<(NodeId, Vec<Handle>)>,
    /// Ignore the node's memo (verification: the node must compute it itself).
    pub fresh: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Ask `node` which of `handles` it lacks; the answer is [`Event::Missing`].
    AskMissing { node: NodeId, handles: Vec<Handle> },
    /// Put one of the job's own objects on `node`; the answer is [`Event::Uploaded`].
    Upload { node: NodeId, handle: Handle },
    /// Ask `node`'s memo about `thunks`; the answer is [`Event::Recalled`].
    Recall { node: NodeId, thunks: Vec<Handle> },
    /// Have `node` run a task; the answer is `Done`, `Failed`, `BadPeer` or `FetchFailed`.
    Run { node: NodeId, order: Order },
    /// Get the result's bytes from `node` and check them against `handle`; the answer is
    /// `ResultFetched` or `ResultWrong`.
    FetchResult { node: NodeId, handle: Handle },
    /// A line for whoever follows the job.
    Progress(String),
    /// The job is over: its report, or why it failed. Nothing follows.
    Finished(Result<Report, String>),
}

/// What happened. Any request to a node may instead be answered by `Lost` for that node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Missing {
        node: NodeId,
        missing: Vec<Handle>,
    },
    Uploaded {
        node: NodeId,
        handle: Handle,
        bytes: u64,
    },
    Recalled {
        node: NodeId,
        entries: Vec<(Handle, Handle)>,
    },
    Done {
        node: NodeId,
        task: usize,
        result: Handle,
        moved: u64,
        uploaded: u64,
        ran: bool,
    },
    /// The task failed there: `failure` as the node sent it, `why` as printable text.
    Failed {
        node: NodeId,
        task: usize,
        failure: String,
        why: String,
    },
    /// A peer sent wrong bytes while this node fetched from it.
    BadPeer {
        node: NodeId,
        task: usize,
        peer: NodeId,
        why: String,
    },
    /// The node could not fetch from a peer (busy too long, gone): the task is tried again.
    FetchFailed {
        node: NodeId,
        task: usize,
        peer: NodeId,
        why: String,
    },
    ResultFetched {
        node: NodeId,
    },
    ResultWrong {
        node: NodeId,
        why: String,
    },
    /// The driver took back `task`, sent to `from` and not started there, for `to`, a node
    /// with nothing to do, having asked [`crate::Scheduler::movable`] (docs/SCHEDULER.md, "The
    /// tail"). The task goes to `to`, or, if it no longer may, wherever placement says.
    Moved {
        from: NodeId,
        task: usize,
        to: NodeId,
    },
    /// The node stopped answering.
    Lost {
        node: NodeId,
        why: String,
    },
    /// Nothing came for longer than the driver waits: the job fails with `why`.
    Stalled {
        why: String,
    },
}
