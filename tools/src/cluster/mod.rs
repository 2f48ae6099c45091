//! Clusters of nodes on one machine (docs/CLUSTER.md): their lifecycle, the L2 hub between
//! them, and evaluation across them with placement, relocation, failure recovery and
//! verification.

pub mod graph;
pub mod hub;
pub mod lifecycle;
pub mod run;
