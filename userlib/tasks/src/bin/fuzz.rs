//! The syscall fuzzer's task (cairn-fuzz, docs/SECURITY.md): runs its first argument as a
//! program of raw syscalls with arbitrary arguments, memory touches and busy loops, then exits
//! with the handle the last CREATE wrote (or its first argument). Whatever the program does,
//! the kernel must contain it: most programs end in a task failure, which is fine; a kernel
//! panic, a hang or a node that stops answering is not.
//!
//! The task's state that the program reads and writes (the handle slots and the data) is only
//! ever reached through raw pointers, since the kernel and the program's own touches write it
//! behind the compiler's back.
#![no_std]
#![no_main]

extern crate alloc;

use core::arch::asm;

use cairn_fuzz::program::{self, DATA_LEN, Decoder, Env, HANDLE_LEN, Op, SCRATCH_LEN, SLOTS};
use cairn_userlib::abi::{SYS_CREATE, SYS_EXIT, SYS_OPEN, layout};
use cairn_userlib::{Handle, TaskResult, open};

fn run(args: &[Handle]) -> TaskResult {
    let program = open(args.first().ok_or("fuzz needs a program")?);
    // SAFETY: the kernel maps the arguments page, header (heap_bytes) first, for the task's life.
    let heap_bytes = unsafe { (layout::ARGS_BASE as *const u64).read() };
    // The first allocation: it starts the heap, and zeroing it touches its pages.
    let scratch = alloc::vec![0u8; SCRATCH_LEN].leak().as_mut_ptr();
    for (i, arg) in args.iter().take(SLOTS).enumerate() {
        // SAFETY: slot i lies in the scratch area, which nothing else references.
        unsafe { scratch.add(i * HANDLE_LEN).cast::<[u8; HANDLE_LEN]>().write(*arg.as_bytes()) };
    }
    let stack: u64;
    // SAFETY: reads the stack pointer.
    unsafe { asm!("mov {}, rsp", out(reg) stack) };
    let mut env = Env { heap_bytes, stack, scratch: scratch as u64, opened: (0, 0) };
    let mut result = env.slot(0);
    for op in Decoder::new(program) {
        // SAFETY: none; this is the fuzz. The kernel must contain whatever the op does, and
        // ends the task on anything it may not do.
        unsafe { execute(op, &mut env, &mut result) };
    }
    // SAFETY: SYS_EXIT reads 40 bytes at rdi (the kernel checks where) and never returns.
    unsafe { asm!("syscall", in("rax") SYS_EXIT, in("rdi") result, options(noreturn)) }
}

/// Runs one op; `result` is where the handle to exit with lies.
///
/// # Safety
/// None: ops write anywhere the kernel lets them, the task's own state included.
unsafe fn execute(op: Op, env: &mut Env, result: &mut u64) {
    let data = env.data() as *mut u8;
    match op {
        Op::Syscall { number, args } => {
            let number = env.resolve(number);
            let [a0, a1, a2, a3] = args.map(|a| env.resolve(a));
            let (rax, rdx): (u64, u64);
            // SAFETY: the fuzz; the kernel validates every argument.
            unsafe {
                asm!("syscall", inlateout("rax") number => rax, in("rdi") a0, in("rsi") a1,
                    inlateout("rdx") a2 => rdx, in("r10") a3, lateout("rcx") _, lateout("r11") _,
                    options(nostack));
            }
            match number {
                SYS_OPEN => env.opened = (rax, rdx),
                SYS_CREATE => *result = a3,
                _ => {}
            }
        }
        Op::Touch { addr, write } => {
            let addr = env.resolve(addr) as *mut u8;
            // SAFETY: the fuzz; a bad address is the task's fault.
            unsafe {
                if write {
                    addr.write_volatile(0xa5);
                } else {
                    core::hint::black_box(addr.read_volatile());
                }
            }
        }
        Op::Spin { rounds } => {
            for i in 0..u32::from(rounds) * 4 {
                core::hint::black_box(i);
            }
        }
        Op::Forge { slot, how } => {
            let read = |i: u8| {
                // SAFETY: slots lie in the scratch area.
                unsafe { (env.slot(i) as *const [u8; HANDLE_LEN]).read_volatile() }
            };
            let handle = program::forge(how, read);
            // SAFETY: as above.
            unsafe { (env.slot(slot) as *mut [u8; HANDLE_LEN]).write_volatile(handle) };
        }
        Op::Compose { at, count, slots } => {
            let (at, room) = program::data_span(at, usize::from(count) * HANDLE_LEN);
            for (k, &slot) in slots.iter().take(room / HANDLE_LEN).enumerate() {
                // SAFETY: slots and data are disjoint parts of the scratch area; the entry
                // fits the data (data_span).
                unsafe {
                    let entry = (env.slot(slot) as *const [u8; HANDLE_LEN]).read_volatile();
                    data.add(at + k * HANDLE_LEN).cast::<[u8; HANDLE_LEN]>().write_unaligned(entry);
                }
            }
        }
        Op::Fill { at, len, seed } => {
            let (at, len) = program::data_span(at, usize::from(len));
            debug_assert!(at + len <= DATA_LEN);
            for i in 0..len {
                // SAFETY: within the data (data_span).
                unsafe { data.add(at + i).write_volatile(cairn_fuzz::pattern_byte(seed, i)) };
            }
        }
    }
}

cairn_userlib::task!(run);
