//! The task SDK: what a Cairn task links against. For now, the object model (handles, trees,
//! thunks; docs/OBJECTS.md); the syscall ABI joins it with tasks.

#![no_std]

pub use cairn_object as object;
