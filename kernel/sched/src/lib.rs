//! The cluster scheduler of docs/SCHEDULER.md, sans IO. A [`Scheduler`] holds one job: its
//! graph of tasks, what each node holds and runs, and what is done. It consumes [`Event`]s
//! (a node answered, a task finished, a node was lost) and returns [`Action`]s (ask a node's
//! memo, send a node a task, fetch the result); whoever drives it owns the sockets and the
//! clock: the host's `cairn eval --cluster`, a node, or the simulator (`cairn sim`). No clock,
//! no randomness but a seeded generator, so the same events give the same actions.

#![no_std]

extern crate alloc;

mod advance;
mod graph;
mod holders;
mod messages;
mod place;
mod scheduler;
pub mod sim;
mod tail;

pub use graph::{Arg, Graph, GraphError, MAX_DEPTH, Task};
pub use holders::Holders;
pub use messages::{
    Action, Event, MAX_FETCH_FAILURES, MAX_NODE_FAILURES, Mismatch, Options, Order, PROBE_HANDLES,
    RECALL_ALL_NODES, RECALL_HOLDERS, RECALL_TASKS, Report, node_failure,
};
pub use place::{Candidates, Placement, SMALL_INPUTS, place};
pub use scheduler::Scheduler;

/// A node of the cluster, by its index in the driver's list.
pub type NodeId = usize;
