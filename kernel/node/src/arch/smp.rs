//! The other CPUs: started at boot, each runs in the kernel with its own GDT, TSS, stacks and
//! block (`arch::percpu`), and does the work the boot CPU offers through [`offer`]: tasks
//! (task::ahead's run queue), hashing uploads while they arrive (memory::objects), computing
//! the secure channel's keystreams ahead of the records that use them (net::ahead). They take
//! no device interrupts (the PIC's go to the boot CPU alone): only their local APIC's timer,
//! which preempts the tasks they run, and a wake-up IPI. Between pieces of work a CPU halts
//! until it is woken.
//!
//! Start-up is the INIT-SIPI-SIPI sequence, one CPU at a time: the CPU starts in real mode at a
//! page below 1 MiB, which holds the trampoline below; it switches straight to long mode with
//! temporary page tables (the kernel's upper half plus an identity map of the low 2 MiB), jumps
//! to [`cpu_main`] in the kernel, and there moves to the kernel's own tables.

use alloc::sync::Arc;
use core::arch::global_asm;
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use bootloader_api::BootInfo;
use spin::Mutex;
use x86_64::registers::control::{Cr0, Cr0Flags, Cr3, Cr3Flags};
use x86_64::registers::model_specific::{Efer, EferFlags, Msr};
use x86_64::structures::paging::PhysFrame;
use x86_64::{PhysAddr, VirtAddr};

use super::percpu::{self, MAX_CPUS, PerCpu};
use super::{clock, cpu, gdt, trap, user};
use crate::memory::{self, FRAME_SIZE, phys_to_virt};

/// Work the other CPUs can do. `run` does one piece of it (a span, a keystream, a task) and
/// returns: a CPU goes round the work it finds piece by piece, so that none waits behind
/// another, for as long as the work is offered.
pub trait HelperWork: Send + Sync {
    fn run(&self);
    /// Whether `run` would find something to do now on this CPU (checked before it halts).
    fn has_work(&self) -> bool;
    /// Whether the boot CPU may take pieces of it when it would otherwise halt ([`help`]).
    fn shared_with_boot_cpu(&self) -> bool {
        false
    }
}

const CPU_STACK_BYTES: usize = 256 * 1024;
/// The stack a CPU switches to when a task on it is interrupted (TSS.RSP0).
const TRAP_STACK_BYTES: usize = 64 * 1024;
/// The local APIC timer's rate on the other CPUs: it preempts their tasks, as the PIT does the
/// boot CPU's.
const TIMER_HZ: u64 = 100;
/// How long a CPU looks for more work after it last did some, before it halts (and must be
/// woken with an IPI).
pub const SPIN_BEFORE_HALT_US: u64 = 100;

// Local APIC registers (offsets from its base).
const APIC_ID: usize = 0x20;
const APIC_EOI: usize = 0xb0;
const APIC_SPURIOUS: usize = 0xf0;
const APIC_ICR_LOW: usize = 0x300;
const APIC_ICR_HIGH: usize = 0x310;
const APIC_LVT_TIMER: usize = 0x320;
const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_TIMER_INITIAL: usize = 0x380;
const APIC_TIMER_CURRENT: usize = 0x390;
const APIC_TIMER_DIVIDE: usize = 0x3e0;
const ICR_PENDING: u32 = 1 << 12;
const ICR_INIT: u32 = 0x4500;
const ICR_STARTUP: u32 = 0x4600;
const ICR_FIXED: u32 = 0x4000;
const LVT_MASKED: u32 = 1 << 16;
const LVT_PERIODIC: u32 = 1 << 17;
const APIC_ENABLED: u32 = 1 << 8;

/// Virtual address of the local APIC (each CPU sees its own there).
static LAPIC: AtomicU64 = AtomicU64::new(0);
/// The other CPUs up and working.
static ONLINE: AtomicUsize = AtomicUsize::new(0);
/// The block of the CPU being started, for it to install.
static STARTING: AtomicPtr<PerCpu> = AtomicPtr::new(core::ptr::null_mut());
/// Set by each CPU (bit = its index) just before it halts; woken only then.
static SLEEPING: AtomicU64 = AtomicU64::new(0);
/// CPUs (bit = index) that may run tasks: set up exactly as the boot CPU (arch::user).
static RUNS_TASKS: AtomicU64 = AtomicU64::new(0);
/// APIC ids by CPU index, for wake-ups.
static APIC_IDS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static BUSY_US: AtomicU64 = AtomicU64::new(0);
/// Kinds of work held at once: the tasks, the keystreams, and two uploads (or blobs read back
/// from the disk) being hashed.
const SLOTS: usize = 4;
static WORK: Mutex<[Option<Arc<dyn HelperWork>>; SLOTS]> = Mutex::new([None, None, None, None]);

// The trampoline, copied to a page below 1 MiB and entered there in real mode with CS = the
// page's segment and IP = 0. Bytes 8..56 are parameters written before the copy is started
// (offsets in `Param`), then comes a GDT with a 64-bit code and a data segment.
global_asm!(
    r#"
    .section .rodata.cairn_helper_trampoline, "a"
    .global cairn_helper_trampoline, cairn_helper_long_mode, cairn_helper_trampoline_end
    .code16
cairn_helper_trampoline:
    jmp 1f
    .balign 8
    .skip 48
    .quad 0
    .quad 0x00209a0000000000
    .quad 0x0000920000000000
1:
    cli
    cld
    mov %cs, %ax
    mov %ax, %ds
    lgdtl 8
    movl 28, %eax
    mov %eax, %cr4
    movl 24, %eax
    mov %eax, %cr3
    movl 32, %eax
    xor %edx, %edx
    mov $0xc0000080, %ecx
    wrmsr
    movl 36, %eax
    mov %eax, %cr0
    ljmpl *16
    .code64
cairn_helper_long_mode:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %eax, %eax
    mov %ax, %fs
    mov %ax, %gs
    mov cairn_helper_trampoline+40(%rip), %rsp
    mov cairn_helper_trampoline+48(%rip), %rax
    push $0
    jmp *%rax
cairn_helper_trampoline_end:
    "#,
    options(att_syntax)
);

unsafe extern "C" {
    static cairn_helper_trampoline: u8;
    static cairn_helper_long_mode: u8;
    static cairn_helper_trampoline_end: u8;
}

/// Offsets of the trampoline's parameters.
#[derive(Clone, Copy)]
enum Param {
    GdtLimit = 8,
    GdtBase = 10,
    FarOffset = 16,
    FarSelector = 20,
    Cr3 = 24,
    Cr4 = 28,
    Efer = 32,
    Cr0 = 36,
    Stack = 40,
    Entry = 48,
}
const TRAMPOLINE_GDT: usize = 56;

fn lapic_read(offset: usize) -> u32 {
    // SAFETY: LAPIC holds the uncached mapping of this CPU's local APIC page (set before any
    // caller runs); `offset` is a register inside it.
    unsafe { core::ptr::read_volatile((LAPIC.load(Ordering::Relaxed) as usize + offset) as *const u32) }
}

fn lapic_write(offset: usize, value: u32) {
    // SAFETY: as in lapic_read.
    unsafe { core::ptr::write_volatile((LAPIC.load(Ordering::Relaxed) as usize + offset) as *mut u32, value) }
}

/// Sends an IPI and waits (briefly) until the local APIC has taken it.
fn send_ipi(apic_id: u32, command: u32) {
    lapic_write(APIC_ICR_HIGH, apic_id << 24);
    lapic_write(APIC_ICR_LOW, command);
    for _ in 0..100_000 {
        if lapic_read(APIC_ICR_LOW) & ICR_PENDING == 0 {
            return;
        }
        core::hint::spin_loop();
    }
}

fn wait_us(us: u64) {
    let until = clock::micros_since_boot() + us;
    while clock::micros_since_boot() < until {
        core::hint::spin_loop();
    }
}

/// Whether any other CPU is working.
pub fn online() -> bool {
    ONLINE.load(Ordering::Acquire) > 0
}

/// How many CPUs the node runs on, the boot CPU included.
pub fn cpus() -> usize {
    1 + ONLINE.load(Ordering::Acquire)
}

/// Whether this CPU may run tasks: the boot CPU always, another only if it was set up exactly
/// like the boot CPU.
pub fn runs_tasks_here() -> bool {
    let index = percpu::current().index;
    index == 0 || RUNS_TASKS.load(Ordering::Acquire) & (1 << index) != 0
}

/// CPUs other than the boot CPU that run tasks.
pub fn task_cpus_other_than_boot() -> usize {
    RUNS_TASKS.load(Ordering::Acquire).count_ones() as usize
}

/// Acknowledges the local APIC's interrupt on this CPU.
pub fn lapic_eoi() {
    lapic_write(APIC_EOI, 0);
}

/// Starts every other processor the MADT lists as usable, one at a time. Returns how many came
/// up, or why none did.
pub fn start(boot_info: &BootInfo) -> Result<usize, alloc::string::String> {
    let cpus = super::acpi::cpus(boot_info)?;
    let apic_base_msr = Msr::new(0x1b);
    // SAFETY: IA32_APIC_BASE exists on every x86_64 CPU; reading it has no side effect.
    let apic_base = unsafe { apic_base_msr.read() };
    if apic_base & (1 << 10) != 0 {
        // x2APIC mode (firmware on large machines may leave it on): its registers are MSRs,
        // not the MMIO page this module drives.
        return Err("the local APIC is in x2APIC mode, which the start-up does not drive".into());
    }
    let base = apic_base & 0x000f_ffff_ffff_f000;
    let lapic = memory::paging::map_mmio(base, FRAME_SIZE).map_err(|e| alloc::format!("local APIC: {e}"))?;
    LAPIC.store(lapic, Ordering::Relaxed);
    let me = lapic_read(APIC_ID) >> 24;
    APIC_IDS[0].store(u64::from(me), Ordering::Relaxed);
    enable_boot_cpu_apic();
    let others: alloc::vec::Vec<u32> =
        cpus.iter().filter(|c| c.usable && c.apic_id != me && c.apic_id < 255).map(|c| c.apic_id).collect();
    if others.is_empty() {
        return Err(alloc::format!("only one CPU ({} listed)", cpus.len()));
    }
    let low = LowMemory::alloc().ok_or("no free page below 1 MiB for the trampoline")?;
    for apic_id in others {
        let Some(block) = percpu::new_cpu(apic_id) else {
            log::warn!("smp: more than {MAX_CPUS} CPUs; the rest stay halted");
            break;
        };
        let mut stack = alloc::vec::Vec::new();
        if stack.try_reserve_exact(CPU_STACK_BYTES).is_err() {
            log::warn!("smp: no memory for CPU {apic_id}'s stack");
            break;
        }
        stack.resize(CPU_STACK_BYTES, 0u8);
        let stack = stack.leak();
        let stack_top = (stack.as_ptr() as u64 + CPU_STACK_BYTES as u64) & !15;
        low.write_trampoline(stack_top);
        STARTING.store(block as *const PerCpu as *mut PerCpu, Ordering::Release);
        let before = ONLINE.load(Ordering::Acquire);
        send_ipi(apic_id, ICR_INIT);
        wait_us(10_000);
        let vector = (low.trampoline >> 12) as u32;
        for _ in 0..2 {
            send_ipi(apic_id, ICR_STARTUP | vector);
            wait_us(200);
        }
        let deadline = clock::micros_since_boot() + 1_000_000;
        while ONLINE.load(Ordering::Acquire) == before && clock::micros_since_boot() < deadline {
            core::hint::spin_loop();
        }
        if ONLINE.load(Ordering::Acquire) == before {
            // The pages stay reserved: a CPU that starts late must not find them reused, and
            // no other CPU is started with them.
            core::mem::forget(low);
            log::warn!("smp: CPU {apic_id} did not come up within a second; no more are started");
            return Ok(ONLINE.load(Ordering::Acquire));
        }
        APIC_IDS[block.index].store(u64::from(apic_id), Ordering::Relaxed);
    }
    Ok(ONLINE.load(Ordering::Acquire))
}

/// The boot CPU takes the wake-up IPI (the others wake it when a task it waits for is done).
/// If its local APIC was software-disabled, enabling it must keep the PIC's interrupts coming
/// through LINT0 (virtual wire mode), as they came before.
fn enable_boot_cpu_apic() {
    let spurious = lapic_read(APIC_SPURIOUS);
    if spurious & APIC_ENABLED == 0 {
        lapic_write(APIC_LVT_LINT0, 0x700);
        lapic_write(APIC_LVT_LINT1, 0x400);
    }
    lapic_write(APIC_SPURIOUS, APIC_ENABLED | u32::from(trap::SPURIOUS_VECTOR));
}

/// The trampoline page and the temporary page tables, all below 4 GiB (the trampoline loads
/// CR3 with 32 bits) and the trampoline below 1 MiB (a start-up IPI names a real-mode page).
struct LowMemory {
    trampoline: u64,
    tables: [u64; 3],
}

impl LowMemory {
    fn alloc() -> Option<LowMemory> {
        // Frames already taken are freed by Drop if a later one is missing.
        let mut low = LowMemory { trampoline: memory::alloc_frame_below(1 << 20)?, tables: [0; 3] };
        for table in low.tables.iter_mut() {
            *table = memory::alloc_frame_below(4 << 30)?;
        }
        Some(low)
    }

    /// Copies the trampoline in, builds the temporary tables and fills in the parameters.
    fn write_trampoline(&self, stack_top: u64) {
        let [pml4, pdpt, pd] = self.tables;
        // SAFETY: all four frames are ours alone (just allocated, zeroed) and in the linear map;
        // the kernel's level-4 table is only read, and the trampoline's bytes are a static.
        unsafe {
            let l4 = phys_to_virt(pml4) as *mut u64;
            let kernel_l4 = phys_to_virt(memory::paging::kernel_pml4()) as *const u64;
            // The upper half (the kernel, its heap and the linear map) as the kernel sees it.
            core::ptr::copy_nonoverlapping(kernel_l4.add(256), l4.add(256), 256);
            // The low 2 MiB identity-mapped with one large page, for the switch to paging.
            let (present_writable, large) = (0b11, 1 << 7);
            *l4 = pdpt | present_writable;
            *(phys_to_virt(pdpt) as *mut u64) = pd | present_writable;
            *(phys_to_virt(pd) as *mut u64) = present_writable | large;

            let start = &raw const cairn_helper_trampoline;
            let len = &raw const cairn_helper_trampoline_end as usize - start as usize;
            let page = phys_to_virt(self.trampoline);
            core::ptr::copy_nonoverlapping(start, page, len);
            let put32 =
                |param: Param, value: u32| (page.add(param as usize) as *mut u32).write_unaligned(value);
            let put64 =
                |param: Param, value: u64| (page.add(param as usize) as *mut u64).write_unaligned(value);
            (page.add(Param::GdtLimit as usize) as *mut u16).write_unaligned(23);
            put32(Param::GdtBase, (self.trampoline + TRAMPOLINE_GDT as u64) as u32);
            let long_mode = &raw const cairn_helper_long_mode as u64 - start as u64;
            put32(Param::FarOffset, (self.trampoline + long_mode) as u32);
            (page.add(Param::FarSelector as usize) as *mut u16).write_unaligned(0x08);
            put32(Param::Cr3, pml4 as u32);
            // PAE and global pages; cpu::enable_simd sets the rest once in the kernel.
            put32(Param::Cr4, (1 << 5) | (1 << 7));
            let efer = Efer::read() & (EferFlags::LONG_MODE_ENABLE | EferFlags::NO_EXECUTE_ENABLE);
            put32(Param::Efer, efer.bits() as u32);
            let cr0 = Cr0::read() | Cr0Flags::PROTECTED_MODE_ENABLE | Cr0Flags::PAGING;
            put32(Param::Cr0, cr0.bits() as u32);
            put64(Param::Stack, stack_top);
            put64(Param::Entry, cpu_main as extern "C" fn() -> ! as usize as u64);
        }
    }
}

impl Drop for LowMemory {
    fn drop(&mut self) {
        for frame in core::iter::once(self.trampoline).chain(self.tables).filter(|f| *f != 0) {
            let _ = memory::free_frames(frame, 1);
        }
    }
}

/// Where another CPU arrives from the trampoline, on its own stack, still on the temporary
/// page tables and GDT.
extern "C" fn cpu_main() -> ! {
    let kernel_l4 = PhysFrame::containing_address(PhysAddr::new(memory::paging::kernel_pml4()));
    // SAFETY: the kernel's level-4 table maps everything this code and its stack use (the
    // temporary tables copied its upper half), and nothing below refers to the low pages.
    unsafe { Cr3::write(kernel_l4, Cr3Flags::empty()) };
    cpu::enable_simd();
    // SAFETY: the boot CPU published this CPU's block before starting it, and starts no other
    // CPU until this one is online.
    let block: &'static PerCpu = unsafe { &*STARTING.load(Ordering::Acquire) };
    let mut trap_stack = alloc::vec::Vec::new();
    let ready = trap_stack.try_reserve_exact(TRAP_STACK_BYTES).is_ok() && {
        trap_stack.resize(TRAP_STACK_BYTES, 0u8);
        let top = (trap_stack.leak().as_ptr() as u64 + TRAP_STACK_BYTES as u64) & !15;
        gdt::init_other_cpu(VirtAddr::new(top)).is_some()
    };
    if !ready {
        // Without its own TSS this CPU cannot run tasks; it only comes up to be counted.
        log::warn!("smp: no memory for CPU {}'s tables; it stays halted", block.apic_id);
        ONLINE.fetch_add(1, Ordering::Release);
        loop {
            x86_64::instructions::interrupts::disable();
            x86_64::instructions::hlt();
        }
    }
    trap::load();
    percpu::install_on_this_cpu(block);
    let hardening = user::init_cpu();
    block.current_xcr0.store(x86_64::registers::xcontrol::XCr0::read_raw(), Ordering::Relaxed);
    // Its local interrupt lines stay masked, so it never sees the PIC's interrupts; its timer
    // preempts its tasks.
    lapic_write(APIC_LVT_LINT0, LVT_MASKED);
    lapic_write(APIC_LVT_LINT1, LVT_MASKED);
    lapic_write(APIC_SPURIOUS, APIC_ENABLED | u32::from(trap::SPURIOUS_VECTOR));
    start_timer();
    let bit = 1u64 << block.index;
    if user::same_as_boot_cpu(&hardening) {
        RUNS_TASKS.fetch_or(bit, Ordering::AcqRel);
    } else {
        log::warn!(
            "smp: CPU {} is not set up like the boot CPU ({hardening:?}); it runs no tasks",
            block.apic_id
        );
    }
    ONLINE.fetch_add(1, Ordering::Release);
    let mut worked_at = 0;
    loop {
        x86_64::instructions::interrupts::disable();
        // Right after work, more usually follows (the next task of a graph): look again for a
        // moment before halting, since a wake-up IPI costs far more than that under emulation.
        let spinning = clock::micros_since_boot().saturating_sub(worked_at) < SPIN_BEFORE_HALT_US;
        // SLEEPING is set before looking for work: an offer or poke made before this is seen
        // below, and one made after it sees SLEEPING and sends the wake-up, which stays pending
        // until the STI of enable_and_hlt and then ends the HLT.
        if !spinning {
            SLEEPING.fetch_or(bit, Ordering::SeqCst);
        }
        let mut worked = false;
        for slot in 0..SLOTS {
            // Only the work being run is held, and only while it runs: whoever offered any work
            // may be waiting to own it again (`spans::sole_owner`, under the store's lock when a
            // blob is read back from the disk), and a task (RunQueue) runs for seconds and needs
            // that lock itself. Holding a clone of every slot across a task stalled that owner
            // for the whole task, or for ever.
            let Some(work) = WORK.lock()[slot].clone() else { continue };
            if !work.has_work() {
                continue;
            }
            SLEEPING.fetch_and(!bit, Ordering::SeqCst);
            x86_64::instructions::interrupts::enable();
            let started = clock::micros_since_boot();
            work.run();
            drop(work);
            worked_at = clock::micros_since_boot();
            BUSY_US.fetch_add(worked_at - started, Ordering::Relaxed);
            x86_64::instructions::interrupts::disable();
            worked = true;
        }
        if worked {
            continue;
        }
        if spinning {
            x86_64::instructions::interrupts::enable();
            for _ in 0..64 {
                core::hint::spin_loop();
            }
        } else {
            x86_64::instructions::interrupts::enable_and_hlt();
            SLEEPING.fetch_and(!bit, Ordering::SeqCst);
        }
    }
}

/// The local APIC timer at [`TIMER_HZ`], measured against the TSC.
fn start_timer() {
    lapic_write(APIC_TIMER_DIVIDE, 0b11); // divide by 16
    lapic_write(APIC_LVT_TIMER, LVT_MASKED | u32::from(trap::LAPIC_TIMER_VECTOR));
    lapic_write(APIC_TIMER_INITIAL, u32::MAX);
    let window_us = 10_000;
    wait_us(window_us);
    let counted = u64::from(u32::MAX - lapic_read(APIC_TIMER_CURRENT));
    let per_tick = (counted * 1_000_000 / window_us / TIMER_HZ).clamp(1, u64::from(u32::MAX)) as u32;
    lapic_write(APIC_LVT_TIMER, LVT_PERIODIC | u32::from(trap::LAPIC_TIMER_VECTOR));
    lapic_write(APIC_TIMER_INITIAL, per_tick);
}

/// Does one piece of the helper's work on this CPU, if there is some: the boot CPU calls it when
/// it would otherwise halt, so that when the helper is the bottleneck (hashing an upload and
/// computing its keystreams) the boot CPU's idle moments go to the same work. Called with no
/// task live (the work may use SIMD registers); returns whether it did anything.
pub fn help() -> bool {
    if !online() {
        return false;
    }
    let works = WORK.lock().clone();
    let Some(work) = works.iter().flatten().find(|w| w.shared_with_boot_cpu() && w.has_work()) else {
        return false;
    };
    work.run();
    true
}

/// Wakes the other CPUs that are halted, so that they look for work.
pub fn poke() {
    let sleeping = SLEEPING.load(Ordering::SeqCst) & !1;
    if !online() || sleeping == 0 {
        return;
    }
    for index in 1..MAX_CPUS {
        if sleeping & (1 << index) != 0 {
            wake(index);
        }
    }
}

/// Wakes the boot CPU if it is halted waiting (task::ahead: a task it waits for is done).
pub fn wake_boot_cpu() {
    if SLEEPING.load(Ordering::SeqCst) & 1 != 0 {
        wake(0);
    }
}

/// Marks the boot CPU as about to halt until [`wake_boot_cpu`]: call with interrupts off, then
/// check for what it waits on, then `enable_and_hlt`, then [`boot_cpu_awake`].
pub fn boot_cpu_sleeping() {
    SLEEPING.fetch_or(1, Ordering::SeqCst);
}

pub fn boot_cpu_awake() {
    SLEEPING.fetch_and(!1, Ordering::SeqCst);
}

fn wake(index: usize) {
    send_ipi(APIC_IDS[index].load(Ordering::Relaxed) as u32, ICR_FIXED | u32::from(trap::WAKE_VECTOR));
}

/// Hands `work` to the helper if it is running and has room for it; returns whether it took it.
pub fn offer(work: Arc<dyn HelperWork>) -> bool {
    if !online() {
        return false;
    }
    {
        let mut slots = WORK.lock();
        let Some(slot) = slots.iter_mut().find(|s| s.is_none()) else { return false };
        *slot = Some(work);
    }
    poke();
    true
}

/// Takes back `work` if the helper holds it. The helper may still be inside a `run` of it;
/// the work must stay safe for that (hold what it touches through its `Arc`).
pub fn withdraw(work: &Arc<dyn HelperWork>) {
    let mut slots = WORK.lock();
    for slot in slots.iter_mut() {
        if slot.as_ref().is_some_and(|w| Arc::ptr_eq(w, work)) {
            *slot = None;
        }
    }
}

/// Microseconds the helper has spent on work since boot (STATS `helper_busy_ms`).
pub fn busy_us() -> u64 {
    BUSY_US.load(Ordering::Relaxed)
}
