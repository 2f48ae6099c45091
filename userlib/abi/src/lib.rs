//! The task ABI (docs/EVALUATION.md, "Tasks"), shared by the kernel and the task runtime.
//!
//! A task enters at its ELF entry point as `extern "C" fn(args: *const [u8; 40], count: usize,
//! heap_bytes: usize) -> !`. The arguments page (read-only, at `layout::ARGS_BASE`) starts with
//! a header of `ARGS_HEADER` bytes (`heap_bytes` and `count` as little-endian u64s, then zeros),
//! followed by the argument handles; `args` points at the first handle. It talks to the
//! kernel only through `syscall`, number in `rax`, arguments in `rdi`, `rsi`, `rdx`, `r10`,
//! results in `rax` and `rdx`. A call that is malformed in any way (unknown number, a pointer
//! outside the task's memory, a handle the task may not name) ends the task with an error;
//! syscalls never return failure codes, so task code has no error paths to get wrong.

#![no_std]

/// End the task with a result: `rdi` points at a 40-byte handle.
pub const SYS_EXIT: u64 = 0;
/// End the task with an error message: `rdi` = pointer, `rsi` = length (at most 4 KiB used).
pub const SYS_FAIL: u64 = 1;
/// Map an object read-only: `rdi` points at a handle the task may name. Returns its bytes'
/// address in `rax` and length in `rdx` (a blob's content, or a tree's or thunk's encoding).
/// Entries of a tree or thunk opened this way become handles the task may name.
pub const SYS_OPEN: u64 = 2;
/// Create an object: `rdi` = kind (1 blob, 2 tree, 3 thunk), `rsi` = pointer, `rdx` = length of
/// its bytes (content or encoding), `r10` = where to write the new 40-byte handle. Every entry of
/// a tree or thunk must be a handle the task may name.
pub const SYS_CREATE: u64 = 3;

/// End the task with `out of memory`: its heap (sized from the thunk's memory limit) is
/// exhausted. No arguments.
pub const SYS_OOM: u64 = 4;

/// Bytes before the first argument handle on the arguments page.
pub const ARGS_HEADER: usize = 64;

/// Largest error message the kernel keeps from SYS_FAIL.
pub const MAX_FAIL_MESSAGE: usize = 4096;

/// The task's address space (lower half). Everything else is unmapped for the task.
pub mod layout {
    /// ELF segments must lie in `[IMAGE_BASE, IMAGE_END)`.
    pub const IMAGE_BASE: u64 = 0x0000_0000_0040_0000;
    pub const IMAGE_END: u64 = 0x0000_0000_4000_0000;
    /// The argument handles, read-only.
    pub const ARGS_BASE: u64 = 0x0000_0000_7000_0000;
    /// The heap: the task's allocator owns `[HEAP_BASE, HEAP_BASE + heap_bytes)`, paged in on
    /// first touch and counted against the memory limit.
    pub const HEAP_BASE: u64 = 0x0000_0010_0000_0000;
    /// Objects opened with SYS_OPEN are mapped from here up.
    pub const OBJECTS_BASE: u64 = 0x0000_0020_0000_0000;
    /// The stack grows down from STACK_TOP; STACK_MAX bytes at most, with an unmapped guard
    /// page below.
    pub const STACK_TOP: u64 = 0x0000_7fff_ffff_0000;
    pub const STACK_MAX: u64 = 1 << 20;
}
