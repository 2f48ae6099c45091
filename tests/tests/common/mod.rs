//! Helpers the QEMU tests share.

// Each test binary uses only some of them.
#![allow(dead_code)]

pub mod cluster;
