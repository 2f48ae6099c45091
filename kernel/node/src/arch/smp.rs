//! A second CPU, the helper: started at boot, it runs in ring 0 with the kernel's page tables
//! and does the work the boot CPU hands it through [`offer`]: hashing uploads while they arrive
//! (memory::objects), and computing the secure channel's keystreams ahead of the records that
//! will use them (net::ahead). It never runs tasks, takes no device interrupts
//! and holds no locks the boot CPU's interrupt handlers take; between pieces of work it halts
//! until the boot CPU wakes it with an IPI.
//!
//! Start-up is the INIT-SIPI-SIPI sequence: the helper starts in real mode at a page below
//! 1 MiB, which holds the trampoline below; it switches straight to long mode with temporary
//! page tables (the kernel's upper half plus an identity map of the low 2 MiB), jumps to
//! [`helper_main`] in the kernel, and there moves to the kernel's own tables.

use alloc::sync::Arc;
use alloc::vec;
use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bootloader_api::BootInfo;
use spin::Mutex;
use x86_64::PhysAddr;
use x86_64::registers::control::{Cr0, Cr0Flags, Cr3, Cr3Flags};
use x86_64::registers::model_specific::{Efer, EferFlags, Msr};
use x86_64::structures::paging::PhysFrame;

use super::{clock, cpu, gdt, trap};
use crate::memory::{self, FRAME_SIZE, phys_to_virt};

/// Work the helper CPU can do. `run` does one piece of it (a span, a keystream) and returns:
/// the helper goes round the work it holds piece by piece, so that none waits behind another,
/// for as long as the work is offered.
pub trait HelperWork: Send + Sync {
    fn run(&self);
    /// Whether `run` would find something to do now (checked before the helper halts).
    fn has_work(&self) -> bool;
    /// Whether the boot CPU may take pieces of it when it would otherwise halt ([`help`]).
    fn shared_with_boot_cpu(&self) -> bool {
        false
    }
}

const WAKE_VECTOR: u8 = 0xf0;
const SPURIOUS_VECTOR: u8 = 0xff;
const HELPER_STACK_BYTES: usize = 64 * 1024;

// Local APIC registers (offsets from its base).
const APIC_ID: usize = 0x20;
const APIC_EOI: usize = 0xb0;
const APIC_SPURIOUS: usize = 0xf0;
const APIC_ICR_LOW: usize = 0x300;
const APIC_ICR_HIGH: usize = 0x310;
const ICR_PENDING: u32 = 1 << 12;
const ICR_INIT: u32 = 0x4500;
const ICR_STARTUP: u32 = 0x4600;
const ICR_FIXED: u32 = 0x4000;

/// Virtual address of the local APIC (each CPU sees its own there) and of its EOI register,
/// which the helper's wake-up handler writes.
static LAPIC: AtomicU64 = AtomicU64::new(0);
#[unsafe(no_mangle)]
static CAIRN_HELPER_EOI: AtomicU64 = AtomicU64::new(0);
static HELPER_APIC_ID: AtomicU64 = AtomicU64::new(0);
static ONLINE: AtomicBool = AtomicBool::new(false);
/// Set by the helper just before it halts; the boot CPU sends a wake-up only then.
static SLEEPING: AtomicBool = AtomicBool::new(false);
static BUSY_US: AtomicU64 = AtomicU64::new(0);
/// Kinds of work held at once: the keystreams, and one upload.
const SLOTS: usize = 2;
static WORK: Mutex<[Option<Arc<dyn HelperWork>>; SLOTS]> = Mutex::new([None, None]);

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

// The helper's wake-up interrupt only acknowledges itself: waking from HLT is its whole job.
global_asm!(
    r#"
    .section .text.cairn_helper_wake, "ax"
    .global cairn_helper_wake, cairn_helper_spurious
cairn_helper_wake:
    push rax
    mov rax, qword ptr [rip + CAIRN_HELPER_EOI]
    mov dword ptr [rax], 0
    pop rax
    iretq
cairn_helper_spurious:
    iretq
    "#
);

unsafe extern "C" {
    static cairn_helper_trampoline: u8;
    static cairn_helper_long_mode: u8;
    static cairn_helper_trampoline_end: u8;
    static cairn_helper_wake: u8;
    static cairn_helper_spurious: u8;
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

/// Whether the helper CPU is running.
pub fn online() -> bool {
    ONLINE.load(Ordering::Acquire)
}

/// Starts the helper CPU, the first other processor the MADT lists as usable. Returns its APIC
/// id, or why there is none.
pub fn start(boot_info: &BootInfo) -> Result<u32, alloc::string::String> {
    let cpus = super::acpi::cpus(boot_info)?;
    let apic_base_msr = Msr::new(0x1b);
    // SAFETY: IA32_APIC_BASE exists on every x86_64 CPU; reading it has no side effect.
    let apic_base = unsafe { apic_base_msr.read() };
    if apic_base & (1 << 10) != 0 {
        // x2APIC mode (firmware on large machines may leave it on): its registers are MSRs,
        // not the MMIO page this module drives.
        return Err("the local APIC is in x2APIC mode, which the helper start-up does not drive".into());
    }
    let base = apic_base & 0x000f_ffff_ffff_f000;
    let lapic = memory::paging::map_mmio(base, FRAME_SIZE).map_err(|e| alloc::format!("local APIC: {e}"))?;
    LAPIC.store(lapic, Ordering::Relaxed);
    CAIRN_HELPER_EOI.store(lapic + APIC_EOI as u64, Ordering::Relaxed);
    let me = lapic_read(APIC_ID) >> 24;
    let helper = cpus
        .iter()
        .find(|c| c.usable && c.apic_id != me && c.apic_id < 255)
        .ok_or_else(|| alloc::format!("only one CPU ({} listed)", cpus.len()))?
        .apic_id;

    let low = LowMemory::alloc().ok_or("no free page below 1 MiB for the trampoline")?;
    let stack = vec![0u8; HELPER_STACK_BYTES].leak();
    let stack_top = (stack.as_ptr() as u64 + HELPER_STACK_BYTES as u64) & !15;
    low.write_trampoline(stack_top);

    send_ipi(helper, ICR_INIT);
    wait_us(10_000);
    let vector = (low.trampoline >> 12) as u32;
    for _ in 0..2 {
        send_ipi(helper, ICR_STARTUP | vector);
        wait_us(200);
    }
    let deadline = clock::micros_since_boot() + 1_000_000;
    while !online() && clock::micros_since_boot() < deadline {
        core::hint::spin_loop();
    }
    if !online() {
        // The pages stay reserved: a CPU that starts late must not find them reused.
        core::mem::forget(low);
        return Err(alloc::format!("CPU {helper} did not come up within a second"));
    }
    HELPER_APIC_ID.store(u64::from(helper), Ordering::Relaxed);
    Ok(helper)
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
            put64(Param::Entry, helper_main as extern "C" fn() -> ! as usize as u64);
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

/// Where the helper CPU arrives from the trampoline, on its own stack, still on the temporary
/// page tables and GDT.
extern "C" fn helper_main() -> ! {
    gdt::load_on_helper();
    let kernel_l4 = PhysFrame::containing_address(PhysAddr::new(memory::paging::kernel_pml4()));
    // SAFETY: the kernel's level-4 table maps everything this code and its stack use (the
    // temporary tables copied its upper half), and nothing below refers to the low pages.
    unsafe { Cr3::write(kernel_l4, Cr3Flags::empty()) };
    cpu::enable_simd();
    trap::init_helper(&[
        (WAKE_VECTOR, &raw const cairn_helper_wake as u64),
        (SPURIOUS_VECTOR, &raw const cairn_helper_spurious as u64),
    ]);
    // Software-enable this CPU's local APIC so that it takes the wake-up IPI; its local
    // interrupt lines stay masked, so it never sees the PIC's interrupts.
    lapic_write(APIC_SPURIOUS, 0x100 | u32::from(SPURIOUS_VECTOR));
    ONLINE.store(true, Ordering::Release);
    loop {
        x86_64::instructions::interrupts::disable();
        // SLEEPING is set before looking for work: an offer or poke made before this is seen
        // below, and one made after it sees SLEEPING and sends the wake-up, which stays pending
        // until the STI of enable_and_hlt and then ends the HLT.
        SLEEPING.store(true, Ordering::SeqCst);
        let works = WORK.lock().clone();
        let mut worked = false;
        for work in works.iter().flatten().filter(|w| w.has_work()) {
            SLEEPING.store(false, Ordering::SeqCst);
            let started = clock::micros_since_boot();
            work.run();
            BUSY_US.fetch_add(clock::micros_since_boot() - started, Ordering::Relaxed);
            worked = true;
        }
        // Let go of the work before halting: whoever offered it may be waiting to own it again.
        drop(works);
        if !worked {
            x86_64::instructions::interrupts::enable_and_hlt();
            SLEEPING.store(false, Ordering::SeqCst);
        }
    }
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

/// Wakes the helper if it is halted.
pub fn poke() {
    if online() && SLEEPING.load(Ordering::SeqCst) {
        send_ipi(HELPER_APIC_ID.load(Ordering::Relaxed) as u32, ICR_FIXED | u32::from(WAKE_VECTOR));
    }
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
