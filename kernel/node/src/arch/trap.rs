//! Every CPU exception and hardware interrupt enters through one assembly path that saves all
//! registers into a [`TrapFrame`] and calls [`trap_dispatch`].
//!
//! One uniform frame (instead of the `x86-interrupt` ABI) is what a task switch needs later: the
//! frame *is* the interrupted context, and returning from the trap resumes whatever it holds.

use core::arch::global_asm;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use spin::Mutex;
use x86_64::instructions::tables::lidt;
use x86_64::registers::control::Cr2;
use x86_64::structures::DescriptorTablePointer;
use x86_64::{PrivilegeLevel, VirtAddr};

use super::{gdt, pic};
use crate::drivers::qemu_exit::{self, Status};
use crate::memory;

/// Vectors with a stub: the 32 exceptions, the 16 legacy PIC interrupts, and the local APIC's
/// three (its timer, the wake-up IPI and the spurious vector), which come after them in the
/// table of stubs.
const PIC_STUBS_END: usize = 48;
pub const LAPIC_TIMER_VECTOR: u8 = 0xef;
pub const WAKE_VECTOR: u8 = 0xf0;
pub const SPURIOUS_VECTOR: u8 = 0xff;
const LAPIC_VECTORS: [u8; 3] = [LAPIC_TIMER_VECTOR, WAKE_VECTOR, SPURIOUS_VECTOR];
const STUB_SIZE: usize = 16;

/// Saved state of the interrupted code, in the order the stub pushes it (lowest address first).
#[repr(C)]
#[derive(Clone, Debug)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    // Pushed by the CPU.
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

// The common path clears DF and AC before any Rust code runs: a task may have set either, and
// AC set in the kernel would switch SMAP off for it. (SYSCALL clears both through SFMASK.)
// Each stub is padded to STUB_SIZE bytes so that the IDT can compute its address from the
// vector. Exceptions 8, 10-14, 17, 21, 29 and 30 push an error code; the others get a zero so
// that the frame has one shape.
global_asm!(
    r#"
    .section .text.trap_stubs, "ax"
    .balign 16
    .global cairn_trap_stubs
cairn_trap_stubs:
    .irp vector, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,239,240,255
    .balign 16
    .if (\vector == 8) || (\vector >= 10 && \vector <= 14) || (\vector == 17) || (\vector == 21) || (\vector == 29) || (\vector == 30)
    .else
    push 0
    .endif
    push \vector
    jmp cairn_trap_common
    .endr

cairn_trap_common:
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push rdi
    push rbp
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    mov rdi, rsp
    cld
    pushfq
    and qword ptr [rsp], ~0x40000
    popfq
    call {dispatch}
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rbp
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rbx
    pop rax
    add rsp, 16
    iretq
    "#,
    dispatch = sym trap_dispatch,
);

unsafe extern "C" {
    static cairn_trap_stubs: u8;
}

#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct IdtEntry {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

impl IdtEntry {
    const MISSING: IdtEntry = IdtEntry {
        offset_low: 0,
        selector: 0,
        ist: 0,
        type_attr: 0,
        offset_mid: 0,
        offset_high: 0,
        reserved: 0,
    };

    /// A present 64-bit interrupt gate (interrupts stay off in the handler).
    fn gate(handler: u64, selector: u16, ist: Option<u16>, dpl: PrivilegeLevel) -> IdtEntry {
        IdtEntry {
            offset_low: handler as u16,
            selector,
            ist: ist.map_or(0, |i| i as u8 + 1),
            type_attr: 0x8e | ((dpl as u8) << 5),
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

static mut IDT: [IdtEntry; 256] = [IdtEntry::MISSING; 256];

pub fn init() {
    let stubs = &raw const cairn_trap_stubs as u64;
    let selector = gdt::selectors().kernel_code.0;
    // SAFETY: runs once on the boot CPU before interrupts are enabled and before any other CPU
    // is started; nothing else reads or writes the IDT concurrently.
    let idt = unsafe { (&raw mut IDT).as_mut().expect("a static") };
    for (vector, entry) in idt.iter_mut().enumerate().take(PIC_STUBS_END) {
        // IST stacks are per CPU: each CPU's TSS names its own.
        let ist = match vector {
            1 => Some(gdt::DEBUG_IST),
            2 => Some(gdt::NMI_IST),
            3 => Some(gdt::BREAKPOINT_IST),
            8 => Some(gdt::DOUBLE_FAULT_IST),
            18 => Some(gdt::MACHINE_CHECK_IST),
            _ => None,
        };
        let handler = stubs + (vector * STUB_SIZE) as u64;
        *entry = IdtEntry::gate(handler, selector, ist, PrivilegeLevel::Ring0);
    }
    for (i, vector) in LAPIC_VECTORS.into_iter().enumerate() {
        let handler = stubs + ((PIC_STUBS_END + i) * STUB_SIZE) as u64;
        idt[vector as usize] = IdtEntry::gate(handler, selector, None, PrivilegeLevel::Ring0);
    }
    load();
}

/// Loads the IDT on this CPU (every CPU shares it).
pub fn load() {
    let pointer = DescriptorTablePointer {
        limit: (core::mem::size_of::<[IdtEntry; 256]>() - 1) as u16,
        base: VirtAddr::from_ptr(&raw const IDT),
    };
    // SAFETY: the IDT is a static, so it outlives its use by the CPU, and every present entry
    // points at a stub in this file.
    unsafe { lidt(&pointer) };
}

pub use cairn_uspace::exception_name;

/// What an exception looked like, as printed and as checked by the self tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExceptionReport {
    pub vector: u64,
    pub rip: u64,
    pub error_code: u64,
    pub cr2: u64,
}

impl fmt::Display for ExceptionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (vector {}) rip={:#018x} error_code={:#x} cr2={:#x}",
            exception_name(self.vector),
            self.vector,
            self.rip,
            self.error_code,
            self.cr2
        )
    }
}

/// A self test announces the one exception it is about to cause and how many instruction bytes
/// to skip to resume after it; the handler records the report instead of stopping the node.
struct Expected {
    vector: u64,
    skip_bytes: u64,
    caught: Option<ExceptionReport>,
}

static EXPECTED: Mutex<Option<Expected>> = Mutex::new(None);

/// Runs `f`, which must raise exception `vector` from an instruction `skip_bytes` long (0 for
/// traps such as int3, which already point past themselves), and returns what was reported.
pub fn catch_exception(vector: u64, skip_bytes: u64, f: impl FnOnce()) -> Option<ExceptionReport> {
    *EXPECTED.lock() = Some(Expected { vector, skip_bytes, caught: None });
    f();
    EXPECTED.lock().take().and_then(|e| e.caught)
}

static IN_FATAL: AtomicBool = AtomicBool::new(false);

/// #DB traps that struck in ring 0 and were let go (see `exception`).
pub static DEFERRED_DEBUG_TRAPS: AtomicU64 = AtomicU64::new(0);

#[unsafe(no_mangle)]
extern "C" fn trap_dispatch(frame: &mut TrapFrame) {
    if frame.cs & 3 == 3 {
        // A task was running: acknowledge a device interrupt, then hand the task's state to
        // whoever called user::run. Faults are the task's, never the kernel's.
        if (32..48).contains(&frame.vector) {
            pic::handle_irq((frame.vector - 32) as u8);
        } else {
            local_apic_interrupt(frame.vector);
        }
        super::user::trap_from_user(frame);
    }
    match frame.vector {
        0..=31 => exception(frame),
        32..=47 => pic::handle_irq((frame.vector - 32) as u8),
        vector => local_apic_interrupt(vector),
    }
}

/// The local APIC's timer and wake-up only interrupt (a task, or a HLT); the spurious vector
/// takes no EOI.
fn local_apic_interrupt(vector: u64) {
    if vector == u64::from(LAPIC_TIMER_VECTOR) || vector == u64::from(WAKE_VECTOR) {
        super::smp::lapic_eoi();
    }
}

fn exception(frame: &mut TrapFrame) {
    let report = ExceptionReport {
        vector: frame.vector,
        rip: frame.rip,
        error_code: frame.error_code,
        cr2: if frame.vector == 14 { Cr2::read_raw() } else { 0 },
    };
    if let Some(expected) = EXPECTED.try_lock().as_mut().and_then(|e| e.as_mut())
        && expected.vector == frame.vector
        && expected.caught.is_none()
    {
        crate::println!("cairn: caught expected exception: {report}");
        expected.caught = Some(report);
        frame.rip += expected.skip_bytes;
        return;
    }
    if frame.vector == 1 {
        // The kernel never single-steps itself and sets no breakpoints: a #DB in ring 0 is one
        // a task left pending (`mov ss` then `syscall` with TF set delivers it at the first
        // instruction of the syscall entry). It belongs to no one; carry on without TF.
        DEFERRED_DEBUG_TRAPS.fetch_add(1, Ordering::Relaxed);
        frame.rflags &= !(1 << 8);
        return;
    }
    fatal(&report, frame.rbp);
}

/// Prints the report and a frame-pointer backtrace, then stops the node with a failure status.
fn fatal(report: &ExceptionReport, rbp: u64) -> ! {
    if IN_FATAL.swap(true, Ordering::SeqCst) {
        // A fault while reporting a fault: say the least possible and stop.
        crate::drivers::serial::write_fmt_raw(format_args!("cairn: nested fault: {report}\n"));
        qemu_exit::exit(Status::Failure);
    }
    crate::drivers::serial::write_fmt_raw(format_args!("cairn: fatal exception: {report}\n"));
    print_backtrace(report.rip, rbp);
    qemu_exit::exit(Status::Failure);
}

/// Walks the chain of saved frame pointers (the kernel is built with frame pointers), checking
/// each frame is mapped before reading it, so a corrupt stack ends the walk instead of faulting.
pub fn print_backtrace(rip: u64, mut rbp: u64) {
    let out = crate::drivers::serial::write_fmt_raw;
    out(format_args!("cairn: backtrace (kernel image at {:#x}):\n", memory::kernel_image_base()));
    out(format_args!("cairn:   #0  {rip:#018x}\n"));
    for depth in 1..32 {
        if rbp == 0 || rbp % 8 != 0 || !memory::is_mapped_kernel(rbp, 16) {
            break;
        }
        // SAFETY: rbp is 8-aligned and the 16 bytes at it are mapped kernel memory (checked
        // above); at worst they are not a frame record and we print a meaningless address (or,
        // as the mapped range includes the MMIO window, read a device register: this runs only
        // on the way to stopping the node).
        let (next, ret) = unsafe { (*(rbp as *const u64), *((rbp + 8) as *const u64)) };
        if ret == 0 {
            break;
        }
        out(format_args!("cairn:   #{depth:<2} {ret:#018x}\n"));
        rbp = next;
    }
}

/// The panic path shares the fault report's backtrace.
pub fn fatal_panic(info: &core::panic::PanicInfo) -> ! {
    x86_64::instructions::interrupts::disable();
    if IN_FATAL.swap(true, Ordering::SeqCst) {
        qemu_exit::exit(Status::Failure);
    }
    crate::drivers::serial::write_fmt_raw(format_args!("cairn: kernel panic: {info}\n"));
    let rbp: u64;
    let rip: u64;
    // SAFETY: reads the current frame pointer and instruction pointer; no memory is touched.
    unsafe {
        core::arch::asm!("mov {}, rbp", "lea {}, [rip]", out(reg) rbp, out(reg) rip);
    }
    print_backtrace(rip, rbp);
    qemu_exit::exit(Status::Failure);
}
