//! What each CPU keeps for itself: where its kernel stack was when it entered a task, the task's
//! context, why the task last came back, its XCR0, and its counters. A CPU finds its own block
//! through IA32_KERNEL_GS_BASE: while the kernel runs, GS's base is 0 (the task's, which is
//! always 0) and KERNEL_GS_BASE points here; the syscall entry swaps the two for the few
//! instructions that need the block before any register is free (arch/user.rs).

use alloc::boxed::Box;
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use x86_64::registers::model_specific::Msr;

const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// CPUs a node drives at most (the rest the MADT lists are left halted).
pub const MAX_CPUS: usize = 64;

/// One CPU's block. The first three fields are read and written by arch/user.rs's assembly at
/// the offsets below: keep them first, in this order.
#[repr(C)]
pub struct PerCpu {
    pub kernel_rsp: AtomicU64,
    pub user_rsp: AtomicU64,
    pub current_context: AtomicU64,
    /// 0 for the boot CPU, then in the order the CPUs came up.
    pub index: usize,
    pub apic_id: u32,
    pub last_vector: AtomicU64,
    pub last_error: AtomicU64,
    pub last_cr2: AtomicU64,
    /// The XCR0 this CPU runs with now (written only when it changes).
    pub current_xcr0: AtomicU64,
    /// Tasks this CPU ran to an outcome, and the time it spent in them (STATS, `cairn stats`).
    pub tasks: AtomicU64,
    pub task_us: AtomicU64,
    /// Time this CPU spent waiting for the store's lock while another CPU held it: a task's
    /// budget does not count it (`task::run`).
    pub store_wait_us: AtomicU64,
}

pub const KERNEL_RSP_OFFSET: usize = 0;
pub const USER_RSP_OFFSET: usize = 8;
pub const CURRENT_CONTEXT_OFFSET: usize = 16;

impl PerCpu {
    const fn new(index: usize, apic_id: u32) -> PerCpu {
        PerCpu {
            kernel_rsp: AtomicU64::new(0),
            user_rsp: AtomicU64::new(0),
            current_context: AtomicU64::new(0),
            index,
            apic_id,
            last_vector: AtomicU64::new(0),
            last_error: AtomicU64::new(0),
            last_cr2: AtomicU64::new(0),
            current_xcr0: AtomicU64::new(0),
            tasks: AtomicU64::new(0),
            task_us: AtomicU64::new(0),
            store_wait_us: AtomicU64::new(0),
        }
    }
}

impl PerCpu {
    /// A task ran to an outcome on this CPU, taking `spent_us` of its time.
    pub fn count_task(&self, spent_us: u64) {
        self.tasks.fetch_add(1, Ordering::Relaxed);
        self.task_us.fetch_add(spent_us, Ordering::Relaxed);
    }
}

static BOOT_CPU: PerCpu = PerCpu::new(0, 0);
static CPUS: [AtomicPtr<PerCpu>; MAX_CPUS] = [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_CPUS];
static COUNT: AtomicUsize = AtomicUsize::new(0);

fn install(cpu: &'static PerCpu) {
    // SAFETY: KERNEL_GS_BASE only matters to SWAPGS, which only arch/user.rs's syscall entry
    // executes, in pairs; the block is 'static, so the pointer stays valid.
    unsafe { Msr::new(MSR_KERNEL_GS_BASE).write(cpu as *const PerCpu as u64) };
    CPUS[cpu.index].store(cpu as *const PerCpu as *mut PerCpu, Ordering::Release);
}

/// The boot CPU's block, installed on it (before any task runs).
pub fn init_boot_cpu() {
    COUNT.store(1, Ordering::Release);
    install(&BOOT_CPU);
}

/// A block for the next CPU to come up, with its index; installed by [`install_on_this_cpu`].
pub fn new_cpu(apic_id: u32) -> Option<&'static PerCpu> {
    let index = COUNT.load(Ordering::Acquire);
    if index >= MAX_CPUS {
        return None;
    }
    COUNT.store(index + 1, Ordering::Release);
    Some(Box::leak(Box::new(PerCpu::new(index, apic_id))))
}

/// Run by a CPU that has just come up, on itself.
pub fn install_on_this_cpu(cpu: &'static PerCpu) {
    install(cpu);
}

/// This CPU's block.
pub fn current() -> &'static PerCpu {
    // SAFETY: reading KERNEL_GS_BASE has no side effect; in the kernel it always holds this
    // CPU's block, installed before anything calls this (see the module comment).
    let ptr = unsafe { Msr::new(MSR_KERNEL_GS_BASE).read() } as *const PerCpu;
    // SAFETY: the pointer was installed from a 'static block and is never changed.
    unsafe { &*ptr }
}

/// Whether this is the boot CPU (the one that serves the network and evaluates).
pub fn is_boot_cpu() -> bool {
    current().index == 0
}

/// Every CPU up so far, by index.
pub fn all() -> impl Iterator<Item = &'static PerCpu> {
    CPUS.iter().filter_map(|p| {
        let ptr = p.load(Ordering::Acquire);
        // SAFETY: only 'static blocks are stored.
        (!ptr.is_null()).then(|| unsafe { &*ptr })
    })
}
