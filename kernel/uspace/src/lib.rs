//! What the kernel decides about a task's memory and registers, as plain functions: where an
//! address falls, whether a syscall pointer is acceptable, what a page fault means, and which
//! RFLAGS and RIP values may be handed back to ring 3. The kernel's arch code only applies them.

#![no_std]

mod trap;

pub use trap::{Trap, exception_name, name_trap};

use cairn_abi::layout::{ARGS_BASE, HEAP_BASE, IMAGE_BASE, IMAGE_END, OBJECTS_BASE, STACK_MAX, STACK_TOP};

pub const PAGE: u64 = 4096;
/// One past the highest user address (the lower canonical half).
pub const USER_END: u64 = 0x0000_8000_0000_0000;
/// The objects window is as large as the heap window below it.
pub const OBJECTS_END: u64 = OBJECTS_BASE + (OBJECTS_BASE - HEAP_BASE);
// The objects window never reaches the stack's guard page.
const _: () = assert!(OBJECTS_END <= STACK_TOP - STACK_MAX - PAGE);

/// The largest heap: the heap window less one unmapped guard page before the objects window,
/// so that at any memory limit the heap, the objects and the stack stay apart.
pub const HEAP_MAX: u64 = OBJECTS_BASE - HEAP_BASE - PAGE;

/// The heap a task gets from the bytes its limit leaves for it, kept inside its window.
pub fn heap_bytes(available: u64) -> u64 {
    available.min(HEAP_MAX) & !(PAGE - 1)
}

/// Where an address lies in a task's address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Region {
    Image,
    Args,
    /// Inside the heap the task was given.
    Heap,
    /// Past the heap the task was given, in the heap window: the task ran out of memory.
    BeyondHeap,
    Stack,
    /// The unmapped page below the largest stack.
    StackGuard,
    Objects,
    /// The kernel half, or a non-canonical address.
    Kernel,
    Unmapped,
}

pub fn classify(addr: u64, heap_bytes: u64) -> Region {
    let stack_bottom = STACK_TOP - STACK_MAX;
    // Whatever a caller passes, the heap ends inside its window: no overflow, no overlap.
    let heap_end = HEAP_BASE + heap_bytes.min(HEAP_MAX);
    match addr {
        a if a >= USER_END => Region::Kernel,
        a if (IMAGE_BASE..IMAGE_END).contains(&a) => Region::Image,
        a if (ARGS_BASE..ARGS_BASE + PAGE * 16).contains(&a) => Region::Args,
        a if (HEAP_BASE..heap_end).contains(&a) => Region::Heap,
        a if (HEAP_BASE..OBJECTS_BASE).contains(&a) => Region::BeyondHeap,
        a if (OBJECTS_BASE..OBJECTS_END).contains(&a) => Region::Objects,
        a if (stack_bottom..STACK_TOP).contains(&a) => Region::Stack,
        a if (stack_bottom - PAGE..stack_bottom).contains(&a) => Region::StackGuard,
        _ => Region::Unmapped,
    }
}

/// True if `[ptr, ptr + len)` lies wholly in the user half (it may still be unmapped, which
/// the kernel checks page by page).
pub fn user_range(ptr: u64, len: u64) -> bool {
    ptr.checked_add(len).is_some_and(|end| end <= USER_END)
}

pub fn is_canonical(addr: u64) -> bool {
    let top = addr >> 47;
    top == 0 || top == 0x1_ffff
}

const CF: u64 = 1 << 0;
const RESERVED_1: u64 = 1 << 1;
const PF: u64 = 1 << 2;
const AF: u64 = 1 << 4;
const ZF: u64 = 1 << 6;
const SF: u64 = 1 << 7;
const TF: u64 = 1 << 8;
pub const IF: u64 = 1 << 9;
const DF: u64 = 1 << 10;
const OF: u64 = 1 << 11;
const AC: u64 = 1 << 18;
const ID: u64 = 1 << 21;
/// The flags a task may set for itself; never IOPL, NT, RF, VM, VIF or VIP.
const USER_FLAGS: u64 = CF | PF | AF | ZF | SF | TF | DF | OF | AC | ID;

/// RFLAGS to return to ring 3 with: the task's own arithmetic and control flags, interrupts
/// always on (so the timer can preempt it), I/O privilege always 0.
pub fn user_rflags(saved: u64) -> u64 {
    (saved & USER_FLAGS) | IF | RESERVED_1
}

/// Flags cleared on every `syscall` entry (the SFMASK MSR): interrupts until the kernel is on
/// its own stack, and everything that would change how kernel code behaves (direction,
/// alignment checks, single-step, nested task, I/O privilege).
pub const SYSCALL_FLAG_MASK: u64 = IF | TF | DF | AC | (1 << 14) | (3 << 12);

/// The page-fault error code, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultAccess {
    pub present: bool,
    pub write: bool,
    pub execute: bool,
}

impl FaultAccess {
    pub fn from_error_code(code: u64) -> FaultAccess {
        FaultAccess { present: code & 1 != 0, write: code & 2 != 0, execute: code & 16 != 0 }
    }
}

/// What a page fault in ring 3 means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultVerdict {
    /// First touch of heap or stack: map a zeroed page and resume.
    PageIn,
    OutOfMemory,
    StackOverflow,
    /// Anything else: the task dies with a trap.
    Violation,
}

pub fn page_fault_verdict(addr: u64, access: FaultAccess, heap_bytes: u64) -> FaultVerdict {
    match classify(addr, heap_bytes) {
        Region::Heap | Region::Stack if !access.present && !access.execute => FaultVerdict::PageIn,
        Region::BeyondHeap => FaultVerdict::OutOfMemory,
        Region::StackGuard => FaultVerdict::StackOverflow,
        _ => FaultVerdict::Violation,
    }
}

/// A task's time budget, counted in the time spent on the task: running, and the kernel's work
/// for it (syscalls, page-ins), but not the time the node spends serving others meanwhile, nor
/// the time its CPU waits for a lock another CPU holds ([`Budget::forgive`]).
/// Times are microseconds of any monotonic clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    limit_us: u64,
    spent_us: u64,
    /// Time counted while the task's CPU waited for others, taken off what it spent.
    forgiven_us: u64,
    /// When the current stretch of work for the task began; `None` while paused.
    since: Option<u64>,
}

impl Budget {
    /// A budget of `limit_us`, running from `now`.
    pub fn start(limit_us: u64, now: u64) -> Budget {
        Budget { limit_us, spent_us: 0, forgiven_us: 0, since: Some(now) }
    }

    /// Stops counting (the node is about to serve others).
    pub fn pause(&mut self, now: u64) {
        if let Some(since) = self.since.take() {
            self.spent_us = self.spent_us.saturating_add(now.saturating_sub(since));
        }
    }

    /// Counts again from `now`.
    pub fn resume(&mut self, now: u64) {
        if self.since.is_none() {
            self.since = Some(now);
        }
    }

    /// Takes `us` off the time spent: time the task's CPU spent waiting for another CPU (for a
    /// lock it held) while counting for the task. Never more than was counted.
    pub fn forgive(&mut self, us: u64) {
        self.forgiven_us = self.forgiven_us.saturating_add(us);
    }

    /// Time spent on the task up to `now`.
    pub fn spent(&self, now: u64) -> u64 {
        let running = self.since.map_or(0, |since| now.saturating_sub(since));
        self.spent_us.saturating_add(running).saturating_sub(self.forgiven_us)
    }

    pub fn exceeded(&self, now: u64) -> bool {
        self.spent(now) > self.limit_us
    }

    pub fn limit(&self) -> u64 {
        self.limit_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn regions() {
        let heap = 1 << 20;
        assert_eq!(classify(IMAGE_BASE, heap), Region::Image);
        assert_eq!(classify(ARGS_BASE, heap), Region::Args);
        assert_eq!(classify(HEAP_BASE + heap - 1, heap), Region::Heap);
        assert_eq!(classify(HEAP_BASE + heap, heap), Region::BeyondHeap);
        assert_eq!(classify(OBJECTS_BASE, heap), Region::Objects);
        assert_eq!(classify(STACK_TOP - 8, heap), Region::Stack);
        assert_eq!(classify(STACK_TOP - STACK_MAX - 8, heap), Region::StackGuard);
        assert_eq!(classify(STACK_TOP, heap), Region::Unmapped);
        assert_eq!(classify(0, heap), Region::Unmapped);
        assert_eq!(classify(0xffff_8000_0000_0000, heap), Region::Kernel);
    }

    #[test]
    fn faults() {
        let heap = 1 << 20;
        let read = FaultAccess::from_error_code(0b100);
        let exec = FaultAccess::from_error_code(0b10100);
        let write_present = FaultAccess::from_error_code(0b111);
        assert_eq!(page_fault_verdict(HEAP_BASE + 5, read, heap), FaultVerdict::PageIn);
        assert_eq!(page_fault_verdict(HEAP_BASE + 5, exec, heap), FaultVerdict::Violation);
        assert_eq!(page_fault_verdict(HEAP_BASE + 5, write_present, heap), FaultVerdict::Violation);
        assert_eq!(page_fault_verdict(HEAP_BASE + heap, read, heap), FaultVerdict::OutOfMemory);
        assert_eq!(page_fault_verdict(STACK_TOP - STACK_MAX - 1, read, heap), FaultVerdict::StackOverflow);
        assert_eq!(page_fault_verdict(0xffff_8000_0000_1000, write_present, heap), FaultVerdict::Violation);
        assert_eq!(page_fault_verdict(ARGS_BASE, write_present, heap), FaultVerdict::Violation);
    }

    #[test]
    fn canonical_addresses() {
        assert!(is_canonical(0x0000_7fff_ffff_ffff));
        assert!(!is_canonical(0x0000_8000_0000_0000));
        assert!(!is_canonical(0x1234_0000_0000_0000));
        assert!(is_canonical(0xffff_8000_0000_0000));
    }

    #[test]
    fn heap_windows_hold_at_every_limit() {
        for heap in [0, PAGE, 1 << 30, HEAP_MAX, HEAP_MAX + PAGE, 64 << 30, u64::MAX - PAGE, u64::MAX] {
            // The heap never reaches the objects window, whatever the limit.
            assert_ne!(classify(OBJECTS_BASE - 1, heap), Region::Heap, "heap {heap:#x}");
            assert_eq!(classify(OBJECTS_BASE, heap), Region::Objects, "heap {heap:#x}");
            assert_eq!(classify(STACK_TOP - 8, heap), Region::Stack, "heap {heap:#x}");
            assert_eq!(classify(STACK_TOP - STACK_MAX - 8, heap), Region::StackGuard, "heap {heap:#x}");
            assert!(heap_bytes(heap) <= HEAP_MAX);
            assert_eq!(heap_bytes(heap) % PAGE, 0);
        }
        assert_eq!(classify(OBJECTS_BASE - 1, u64::MAX), Region::BeyondHeap, "the guard page");
    }

    #[test]
    fn budgets_count_only_the_time_spent_on_the_task() {
        let mut b = Budget::start(1000, 10);
        assert!(!b.exceeded(1010));
        b.pause(500);
        // Serving others for a long time does not count.
        b.resume(100_000);
        assert_eq!(b.spent(100_100), 590);
        assert!(!b.exceeded(100_400));
        assert!(b.exceeded(100_511));
        b.pause(100_600);
        b.pause(200_000);
        assert_eq!(b.spent(300_000), 1090);
        // A clock that goes backwards never underflows.
        let b = Budget::start(5, 100);
        assert_eq!(b.spent(50), 0);
    }

    proptest! {
        #[test]
        fn forgiven_waits_come_off_what_was_spent_and_never_below_zero(
            steps in proptest::collection::vec((0u64..1_000, 0u64..1_000, any::<bool>()), 1..20),
        ) {
            // Stretches of work, each with a wait inside it forgiven (never more than the
            // stretch): what is spent is the work alone, and the budget runs out only on that.
            let (mut b, mut now, mut work) = (Budget::start(5_000, 0), 0u64, 0u64);
            for (stretch, wait, pause) in steps {
                let wait = wait.min(stretch);
                now += stretch;
                b.forgive(wait);
                work += stretch - wait;
                prop_assert_eq!(b.spent(now), work);
                prop_assert_eq!(b.exceeded(now), work > 5_000);
                if pause {
                    b.pause(now);
                    now += 7;
                    b.resume(now);
                }
            }
            let mut forgiving = Budget::start(10, 0);
            forgiving.forgive(100);
            prop_assert_eq!(forgiving.spent(50), 0);
        }

        fn classify_never_panics(addr in any::<u64>(), heap in any::<u64>()) {
            let _ = classify(addr, heap);
            let _ = page_fault_verdict(addr, FaultAccess::from_error_code(heap & 0x1f), heap);
        }

        #[test]
        fn user_rflags_never_grant_io_privilege_and_keep_interrupts_on(saved in any::<u64>()) {
            let f = user_rflags(saved);
            prop_assert_eq!(f & (3 << 12), 0, "IOPL");
            prop_assert_eq!(f & (1 << 14), 0, "NT");
            prop_assert_eq!(f & (1 << 17), 0, "VM");
            prop_assert_ne!(f & IF, 0);
            prop_assert_eq!(f & !(USER_FLAGS | IF | RESERVED_1), 0);
        }

        #[test]
        fn user_ranges_never_reach_the_kernel(ptr in any::<u64>(), len in any::<u64>()) {
            if user_range(ptr, len) {
                prop_assert!(ptr < USER_END || len == 0);
                prop_assert!(ptr + len <= USER_END);
            }
        }
    }
}
