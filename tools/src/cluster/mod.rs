//! Clusters of nodes on one machine (docs/CLUSTER.md): their lifecycle, the L2 hub between
//! them, and evaluation across them, which the scheduler (`cairn_sched`) coordinates: in a node
//! the job is handed to (`handoff`), or in the host (`run`).

pub mod control;
pub mod daemon;
pub mod faults;
pub mod handoff;
pub mod hub;
pub mod lifecycle;
mod queue;
pub mod run;
