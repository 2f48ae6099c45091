//! The task SDK. A task is a `no_std` program for `x86_64-unknown-none` whose author writes one
//! function and names it with [`task!`]:
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//! use cairn_userlib::{Handle, TaskResult};
//!
//! fn run(args: &[Handle]) -> TaskResult {
//!     let text = cairn_userlib::open(&args[0]);
//!     Ok(cairn_userlib::create_blob(&(text.len() as u64).to_le_bytes()))
//! }
//! cairn_userlib::task!(run);
//! ```
//!
//! A task can read the objects it was given (blob bytes are mapped read-only, not copied), create
//! blobs, trees and thunks, and return a handle or an error. Nothing else: there is no API for
//! time, randomness, devices or the network, and the kernel enforces that (docs/EVALUATION.md).

#![no_std]

extern crate alloc;

use alloc::string::String;

pub use cairn_abi as abi;
pub use cairn_object::{self as object, Handle, Kind, Limits, Thunk, Tree};

#[cfg(target_os = "none")]
pub mod rt;
#[cfg(target_os = "none")]
pub use rt::{create_blob, create_thunk, create_tree, fail, io_request, open, open_thunk, open_tree};

/// Why a task gave up; becomes the `task error` of docs/EVALUATION.md.
#[derive(Debug)]
pub struct TaskError(pub String);

impl<T: core::fmt::Display> From<T> for TaskError {
    fn from(e: T) -> TaskError {
        TaskError(alloc::format!("{e}"))
    }
}

pub type TaskResult = Result<Handle, TaskError>;

/// Declares the task's entry point: `task!(run)` with `fn run(args: &[Handle]) -> TaskResult`.
#[macro_export]
macro_rules! task {
    ($run:path) => {
        #[unsafe(no_mangle)]
        /// # Safety
        /// Only the kernel calls this, with the arguments it mapped for the task.
        pub unsafe extern "C" fn _start(args: *const u8, count: usize, heap_bytes: usize) -> ! {
            // SAFETY: the caller's contract is rt::start's.
            unsafe { $crate::rt::start(args, count, heap_bytes, $run) }
        }
    };
}
