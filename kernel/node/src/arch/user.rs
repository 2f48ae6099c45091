//! Ring 3: entering a task and getting control back.
//!
//! The kernel runs a task like a function call: [`run`] loads the task's registers, drops to
//! ring 3, and returns when the task makes a syscall, faults, or is interrupted (the timer
//! tick that preempts it). The context is saved in the [`UserContext`], so calling `run` again
//! resumes the task exactly where it stopped. Each CPU runs one task at a time; what the entry
//! and exit paths need lives in the CPU's own block (`arch::percpu`).

use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, Ordering};

use x86_64::VirtAddr;
use x86_64::registers::control::{Cr4, Cr4Flags};
use x86_64::registers::model_specific::{Efer, EferFlags, LStar, Msr, SFMask, Star};
use x86_64::registers::rflags::RFlags;
use x86_64::registers::segmentation::{DS, ES, FS, GS, Segment};

use super::gdt;
use super::percpu::{self, PerCpu};
use super::trap::TrapFrame;

/// A task's registers while the kernel holds it.
#[repr(C)]
#[derive(Clone, Debug, Default)]
pub struct UserContext {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
    /// DS, ES, FS and GS as the task left them (a new task starts with null selectors). Kept
    /// across every syscall and interrupt: were they reset on the way back, a task could see
    /// when the timer had interrupted it.
    pub segments: [u64; 4],
}

/// Why [`run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Syscall,
    Exception { vector: u64, error_code: u64, cr2: u64 },
    Interrupt,
}

const EXIT_SYSCALL: u64 = 0;
const EXIT_EXCEPTION: u64 = 1;
const EXIT_INTERRUPT: u64 = 2;

const USER_CS: u64 = 0x23;
const USER_SS: u64 = 0x1b;

// On entry, DS, ES, FS and GS are loaded from the context: null for a new task, whatever the last
// task put in them, and what this task left in them when it is resumed, whether it made a
// syscall or was interrupted (their bases stay zero: see `init_cpu`; the kernel never uses them).
// `cairn_enter_user(context, percpu)` keeps the kernel's stack pointer and the context in the
// CPU's block; the syscall entry finds the block with SWAPGS (GS's base is the block only
// between its two SWAPGS, with interrupts off), and `cairn_leave_user(code, kernel_rsp)`
// returns from `cairn_enter_user` with `code`.
global_asm!(
    r#"
    .section .text.cairn_user, "ax"
    .global cairn_enter_user
cairn_enter_user:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    mov [rsi + {kernel_rsp}], rsp
    mov [rsi + {context}], rdi
    mov ds, word ptr [rdi + 144]
    mov es, word ptr [rdi + 152]
    mov fs, word ptr [rdi + 160]
    mov gs, word ptr [rdi + 168]
    push {user_ss}
    push qword ptr [rdi + 128]
    push qword ptr [rdi + 136]
    push {user_cs}
    push qword ptr [rdi + 120]
    mov rax, [rdi + 0]
    mov rbx, [rdi + 8]
    mov rcx, [rdi + 16]
    mov rdx, [rdi + 24]
    mov rsi, [rdi + 32]
    mov rbp, [rdi + 48]
    mov r8, [rdi + 56]
    mov r9, [rdi + 64]
    mov r10, [rdi + 72]
    mov r11, [rdi + 80]
    mov r12, [rdi + 88]
    mov r13, [rdi + 96]
    mov r14, [rdi + 104]
    mov r15, [rdi + 112]
    mov rdi, [rdi + 40]
    iretq

    .global cairn_syscall_entry
cairn_syscall_entry:
    swapgs
    mov gs:[{user_rsp}], rsp
    mov rsp, gs:[{context}]
    mov [rsp + 0], rax
    mov [rsp + 8], rbx
    mov [rsp + 16], rcx
    mov [rsp + 24], rdx
    mov [rsp + 32], rsi
    mov [rsp + 40], rdi
    mov [rsp + 48], rbp
    mov [rsp + 56], r8
    mov [rsp + 64], r9
    mov [rsp + 72], r10
    mov [rsp + 80], r11
    mov [rsp + 88], r12
    mov [rsp + 96], r13
    mov [rsp + 104], r14
    mov [rsp + 112], r15
    mov [rsp + 120], rcx
    mov [rsp + 136], r11
    mov rax, gs:[{user_rsp}]
    mov [rsp + 128], rax
    mov rsi, gs:[{kernel_rsp}]
    swapgs
    mov eax, ds
    movzx eax, ax
    mov [rsp + 144], rax
    mov eax, es
    movzx eax, ax
    mov [rsp + 152], rax
    mov eax, fs
    movzx eax, ax
    mov [rsp + 160], rax
    mov eax, gs
    movzx eax, ax
    mov [rsp + 168], rax
    xor edi, edi

    .global cairn_leave_user
cairn_leave_user:
    mov rsp, rsi
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    mov rax, rdi
    ret
    "#,
    user_ss = const USER_SS,
    user_cs = const USER_CS,
    kernel_rsp = const percpu::KERNEL_RSP_OFFSET,
    user_rsp = const percpu::USER_RSP_OFFSET,
    context = const percpu::CURRENT_CONTEXT_OFFSET,
);

unsafe extern "C" {
    fn cairn_enter_user(context: *mut UserContext, percpu: *const PerCpu) -> u64;
    fn cairn_syscall_entry();
    fn cairn_leave_user(code: u64, kernel_rsp: u64) -> !;
}

/// Stack the CPU switches to when a task is interrupted (TSS.RSP0). Whatever runs on it is
/// abandoned when control goes back to [`run`]'s caller, so it never holds anything.
const TRAP_STACK_SIZE: usize = 64 * 1024;
#[repr(align(16))]
#[allow(dead_code, reason = "only the CPU uses the bytes")]
struct TrapStack([u8; TRAP_STACK_SIZE]);
static mut TRAP_STACK: TrapStack = TrapStack([0; TRAP_STACK_SIZE]);

/// Whether ring-3 CPUID faults (and is answered by the kernel) on this CPU.
static CPUID_FAULTING: AtomicU64 = AtomicU64::new(0);

const MSR_PLATFORM_INFO: u32 = 0xce;
const MSR_MISC_FEATURES_ENABLES: u32 = 0x140;

const MSR_FS_BASE: u32 = 0xc000_0100;
const MSR_GS_BASE: u32 = 0xc000_0101;
const MSR_TSC_AUX: u32 = 0xc000_0103;

/// The CPU protections [`init`] could switch on, for the boot log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hardening {
    /// SGDT, SIDT, SLDT, SMSW and STR fault in ring 3 (they would reveal kernel addresses).
    pub umip: bool,
    /// The kernel cannot execute task pages.
    pub smep: bool,
    /// The kernel cannot touch task pages except through its own mapping of them.
    pub smap: bool,
    /// IA32_TSC_AUX is fixed at 0 (RDPID reads it in ring 3, and CR4.TSD does not stop it).
    pub tsc_aux: bool,
    /// Ring-3 CPUID faults, and the kernel answers it.
    pub cpuid_faulting: bool,
}

static HARDENING: spin::Once<Hardening> = spin::Once::new();

/// What [`init`] switched on.
pub fn hardening() -> Hardening {
    HARDENING.get().copied().unwrap_or_default()
}

/// XCR0 for the kernel (everything `arch::cpu::enable_simd` enabled) and for tasks.
static KERNEL_XCR0: AtomicU64 = AtomicU64::new(0);
static TASK_XCR0: AtomicU64 = AtomicU64::new(0);
fn set_xcr0(value: u64) {
    let current = &percpu::current().current_xcr0;
    if value == 0 || current.load(Ordering::Relaxed) == value {
        return;
    }
    // SAFETY: both values come from `init`: the kernel's XCR0 as enable_simd set it, or x87|SSE,
    // a subset of it that is always valid.
    unsafe { x86_64::registers::xcontrol::XCr0::write_raw(value) };
    current.store(value, Ordering::Relaxed);
}

/// Before a task's SIMD state is loaded: the XCR0 tasks run with.
pub fn enter_task_xcr0() {
    set_xcr0(TASK_XCR0.load(Ordering::Relaxed));
}

/// Before the kernel uses SIMD itself: its own XCR0.
pub fn enter_kernel_xcr0() {
    set_xcr0(KERNEL_XCR0.load(Ordering::Relaxed));
}

/// SYSCALL/SYSRET MSRs, no-execute, RDTSC and CPUID for ring 3, the trap stack, and every
/// protection the CPU offers against what a task could see or do (docs/SECURITY.md), on the
/// boot CPU; then [`init_cpu`] does the same on each other CPU, which must come out the same.
pub fn init() -> Hardening {
    percpu::init_boot_cpu();
    let top = VirtAddr::from_ptr(&raw const TRAP_STACK) + TRAP_STACK_SIZE as u64;
    gdt::set_kernel_stack(top);
    let hardening = init_cpu();
    let kernel_xcr0 = if Cr4::read().contains(Cr4Flags::OSXSAVE) {
        x86_64::registers::xcontrol::XCr0::read_raw()
    } else {
        0
    };
    // The fixed CPUID answer says x86-64-v2 and no AVX: where tasks get it, they run with x87
    // and SSE state only, so that what they can execute is what CPUID and XGETBV tell them.
    let task_xcr0 = if cpuid_faulting() && kernel_xcr0 != 0 { 0b11 } else { kernel_xcr0 };
    KERNEL_XCR0.store(kernel_xcr0, Ordering::Relaxed);
    TASK_XCR0.store(task_xcr0, Ordering::Relaxed);
    percpu::current().current_xcr0.store(kernel_xcr0, Ordering::Relaxed);
    *HARDENING.call_once(|| hardening)
}

/// What [`init`] does on this CPU alone (its MSRs and CR4): on the boot CPU, and on each other
/// CPU as it comes up, with its block installed. Returns what it could switch on, and whether
/// CPUID faults, which must match the boot CPU's for tasks to run here.
pub fn init_cpu() -> Hardening {
    let selectors = gdt::selectors();
    let cpuid_faults;
    // SAFETY: these MSRs and CR4 bits configure how ring 3 enters the kernel; the values follow
    // the GDT layout every CPU shares, and LSTAR points at cairn_syscall_entry above.
    unsafe {
        Efer::update(|f| f.insert(EferFlags::SYSTEM_CALL_EXTENSIONS | EferFlags::NO_EXECUTE_ENABLE));
        Star::write(selectors.user_code, selectors.user_data, selectors.kernel_code, selectors.kernel_data)
            .expect("GDT order matches SYSRET");
        LStar::write(VirtAddr::new(cairn_syscall_entry as *const () as u64));
        SFMask::write(RFlags::from_bits_truncate(cairn_uspace::SYSCALL_FLAG_MASK));
        Cr4::update(|cr4| {
            cr4.insert(Cr4Flags::TIMESTAMP_DISABLE);
            cr4.remove(Cr4Flags::FSGSBASE);
        });
        // CPUID faulting, where the CPU has it (QEMU does): ring-3 CPUID raises #GP and the
        // kernel answers with one fixed description (docs/EVALUATION.md, "Tasks").
        let platform_info = Msr::new(MSR_PLATFORM_INFO).read();
        cpuid_faults = platform_info & (1 << 31) != 0;
        if cpuid_faults {
            let mut misc = Msr::new(MSR_MISC_FEATURES_ENABLES);
            misc.write(misc.read() | 1);
            if percpu::is_boot_cpu() {
                CPUID_FAULTING.store(1, Ordering::Relaxed);
            }
        }
        // The kernel never uses FS or GS; their bases stay zero for every task. KERNEL_GS_BASE
        // holds this CPU's block (arch::percpu), which SWAPGS alone reads.
        for msr in [MSR_FS_BASE, MSR_GS_BASE] {
            Msr::new(msr).write(0);
        }
    }
    let leaf7 = core::arch::x86_64::__cpuid_count(7, 0);
    let extended = core::arch::x86_64::__cpuid(0x8000_0000).eax;
    let rdtscp = extended >= 0x8000_0001 && core::arch::x86_64::__cpuid(0x8000_0001).edx & (1 << 27) != 0;
    let hardening = Hardening {
        umip: leaf7.ecx & (1 << 2) != 0,
        smep: leaf7.ebx & (1 << 7) != 0,
        smap: leaf7.ebx & (1 << 20) != 0,
        tsc_aux: rdtscp || leaf7.ecx & (1 << 22) != 0,
        cpuid_faulting: cpuid_faults,
    };
    // SAFETY: each CR4 bit is set only where CPUID reports the feature. The kernel never
    // executes task pages (SMEP) and reaches task memory only through its linear map of the
    // frames, never at task addresses (SMAP).
    unsafe {
        Cr4::update(|cr4| {
            cr4.set(Cr4Flags::USER_MODE_INSTRUCTION_PREVENTION, hardening.umip);
            cr4.set(Cr4Flags::SUPERVISOR_MODE_EXECUTION_PROTECTION, hardening.smep);
            cr4.set(Cr4Flags::SUPERVISOR_MODE_ACCESS_PREVENTION, hardening.smap);
        });
        if hardening.tsc_aux {
            Msr::new(MSR_TSC_AUX).write(0);
        }
    }
    hardening
}

/// Whether this CPU (not the boot CPU) was set up as the boot CPU was: the same protections,
/// CPUID faulting where the boot CPU has it, and the kernel's XCR0. Tasks run only on CPUs
/// where they would see exactly what they see on the boot CPU.
pub fn same_as_boot_cpu(hardening: &Hardening) -> bool {
    let boot = self::hardening();
    let xcr0 = if Cr4::read().contains(Cr4Flags::OSXSAVE) {
        x86_64::registers::xcontrol::XCr0::read_raw()
    } else {
        0
    };
    boot == *hardening && xcr0 == KERNEL_XCR0.load(Ordering::Relaxed)
}

pub fn cpuid_faulting() -> bool {
    CPUID_FAULTING.load(Ordering::Relaxed) != 0
}

/// Runs the task until it makes a syscall, faults or is interrupted. Interrupts are on again
/// when this returns.
pub fn run(context: &mut UserContext) -> Exit {
    context.rflags = cairn_uspace::user_rflags(context.rflags);
    if !cairn_uspace::is_canonical(context.rip) || context.rip >= cairn_uspace::USER_END {
        // IRETQ to a non-canonical RIP would fault in ring 0; report it as the task's fault.
        return Exit::Exception { vector: 13, error_code: 0, cr2: context.rip };
    }
    x86_64::instructions::interrupts::disable();
    let cpu = percpu::current();
    // SAFETY: the context holds only task registers (RFLAGS sanitized and RIP checked above),
    // CS/SS are the ring-3 selectors, and the task's address space is active; `cpu` is this
    // CPU's block; control comes back through cairn_syscall_entry or trap_from_user, which
    // restore the kernel stack saved in it.
    let code = unsafe { cairn_enter_user(context, cpu) };
    x86_64::instructions::interrupts::enable();
    match code {
        EXIT_SYSCALL => Exit::Syscall,
        EXIT_EXCEPTION => Exit::Exception {
            vector: cpu.last_vector.load(Ordering::Relaxed),
            error_code: cpu.last_error.load(Ordering::Relaxed),
            cr2: cpu.last_cr2.load(Ordering::Relaxed),
        },
        _ => Exit::Interrupt,
    }
}

/// Called by the trap path for anything that arrives while a task runs: saves the task's state
/// into its context and returns to [`run`]'s caller.
pub fn trap_from_user(frame: &TrapFrame) -> ! {
    let cpu = percpu::current();
    // SAFETY: cairn_enter_user set this CPU's current context to the context of the task that
    // was just interrupted, which `run`'s caller keeps borrowed until run returns.
    let ctx = unsafe { &mut *(cpu.current_context.load(Ordering::Relaxed) as *mut UserContext) };
    ctx.rax = frame.rax;
    ctx.rbx = frame.rbx;
    ctx.rcx = frame.rcx;
    ctx.rdx = frame.rdx;
    ctx.rsi = frame.rsi;
    ctx.rdi = frame.rdi;
    ctx.rbp = frame.rbp;
    ctx.r8 = frame.r8;
    ctx.r9 = frame.r9;
    ctx.r10 = frame.r10;
    ctx.r11 = frame.r11;
    ctx.r12 = frame.r12;
    ctx.r13 = frame.r13;
    ctx.r14 = frame.r14;
    ctx.r15 = frame.r15;
    ctx.rip = frame.rip;
    ctx.rsp = frame.rsp;
    ctx.rflags = frame.rflags;
    // The trap path leaves the data selectors as the task had them.
    ctx.segments = [
        u64::from(DS::get_reg().0),
        u64::from(ES::get_reg().0),
        u64::from(FS::get_reg().0),
        u64::from(GS::get_reg().0),
    ];
    let code = if frame.vector < 32 {
        cpu.last_vector.store(frame.vector, Ordering::Relaxed);
        cpu.last_error.store(frame.error_code, Ordering::Relaxed);
        let cr2 = if frame.vector == 14 { x86_64::registers::control::Cr2::read_raw() } else { 0 };
        cpu.last_cr2.store(cr2, Ordering::Relaxed);
        EXIT_EXCEPTION
    } else {
        EXIT_INTERRUPT
    };
    // SAFETY: unwinds to the kernel stack cairn_enter_user saved on this CPU; the trap stack
    // frames being abandoned hold no locks or resources.
    unsafe { cairn_leave_user(code, cpu.kernel_rsp.load(Ordering::Relaxed)) }
}

/// XSAVE area of one task: SIMD state is the task's, and the kernel's own SIMD use (BLAKE3 in
/// syscalls) must not leak into it.
#[repr(C, align(64))]
pub struct SimdState([u8; 4096]);

/// The one fixed state every task starts from: x87 and SSE/AVX registers in their initial
/// state (XSTATE_BV = 0), MXCSR = 0x1f80 (all exceptions masked, round to nearest), and the
/// x87 control word 0x037f in the legacy area, for FXRSTOR on a CPU without XSAVE (XRSTOR
/// ignores it: XSTATE_BV = 0 means the initial state).
pub static INITIAL_SIMD: SimdState = {
    let mut area = [0u8; 4096];
    area[0] = 0x7f;
    area[1] = 0x03;
    let mxcsr = 0x1f80u32.to_le_bytes();
    area[24] = mxcsr[0];
    area[25] = mxcsr[1];
    area[26] = mxcsr[2];
    area[27] = mxcsr[3];
    SimdState(area)
};

impl SimdState {
    pub fn new() -> SimdState {
        SimdState([0; 4096])
    }

    pub fn save(&mut self) {
        if KERNEL_XCR0.load(Ordering::Relaxed) == 0 {
            // SAFETY: no XSAVE on this CPU (KERNEL_XCR0 is 0): FXSAVE's 512 bytes, 16-byte
            // aligned, fit the area many times over.
            unsafe { core::arch::asm!("fxsave64 [{}]", in(reg) self.0.as_mut_ptr(), options(nostack)) };
            return;
        }
        let mask = x86_64::registers::xcontrol::XCr0::read_raw();
        // SAFETY: the area is 64-byte aligned and 4 KiB, larger than any XSAVE layout for the
        // components enabled in XCR0.
        unsafe {
            core::arch::asm!("xsave64 [{}]", in(reg) self.0.as_mut_ptr(), in("eax") mask as u32,
                in("edx") (mask >> 32) as u32, options(nostack));
        }
    }

    pub fn restore(&self) {
        if KERNEL_XCR0.load(Ordering::Relaxed) == 0 {
            // SAFETY: as in save; the area holds a valid legacy image (INITIAL_SIMD's, or FXSAVE's).
            unsafe { core::arch::asm!("fxrstor64 [{}]", in(reg) self.0.as_ptr(), options(nostack)) };
            return;
        }
        let mask = x86_64::registers::xcontrol::XCr0::read_raw();
        // SAFETY: as in save; the area was produced by `initial` or by `save`.
        unsafe {
            core::arch::asm!("xrstor64 [{}]", in(reg) self.0.as_ptr(), in("eax") mask as u32,
                in("edx") (mask >> 32) as u32, options(nostack));
        }
    }
}
