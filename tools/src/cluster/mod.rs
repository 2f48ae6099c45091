//! Clusters of nodes on one machine (docs/CLUSTER.md): their lifecycle, the L2 hub between
//! them, and evaluation across them, which the scheduler (`cairn_sched`) coordinates.

pub mod hub;
pub mod lifecycle;
pub mod run;
