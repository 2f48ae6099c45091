//! The task SDK: the object model and the syscall ABI that Cairn tasks link against.
//!
//! Empty until the object model lands (docs/ARCHITECTURE.md lists what goes here).

#![no_std]
