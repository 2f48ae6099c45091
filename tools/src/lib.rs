//! Host-side library behind the `cairn` CLI and the QEMU tests: finding QEMU, writing images,
//! booting nodes and reading their consoles.

pub mod bundle;
pub mod client;
pub mod cloud;
pub mod cluster;
pub mod experiment;
pub mod hash;
pub mod host;
pub mod jobfile;
pub mod keys;
pub mod qemu;
pub mod received;
pub mod secure;
pub mod trace;
pub mod untrusted;
