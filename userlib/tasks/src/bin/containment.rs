//! Tasks that try to exhaust the node, outlast their budget, or observe what ran before them
//! (docs/SECURITY.md; tests/tests/tasks.rs runs each mode). The first argument names the mode;
//! some modes take more: `self` is this procedure's own handle, for modes that build thunks of
//! themselves.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;
use core::arch::asm;

use cairn_userlib::abi::{SYS_CREATE, SYS_FAIL, layout};
use cairn_userlib::{Handle, Limits, TaskResult, create_blob, create_thunk, open};

/// A page of `.data` (file-backed, so a reused address space restores it from the image only
/// if it was written) that the kernel writes into and the task never does.
#[repr(C, align(4096))]
struct Page([u8; 4096]);
static mut DATA_PAGE: Page = Page([1; 4096]);
/// The same in `.bss`.
static mut BSS_PAGE: Page = Page([0; 4096]);

fn arg(args: &[Handle], i: usize, what: &str) -> Result<Handle, &'static str> {
    args.get(i).copied().ok_or(match what {
        "self" => "this mode needs the procedure's own handle",
        _ => "this mode needs another argument",
    })
}

fn number(args: &[Handle], i: usize) -> Result<u64, cairn_userlib::TaskError> {
    cairn_tasks::read_u64(&arg(args, i, "number")?)
}

/// CREATE a blob of `len` bytes at `ptr`, writing the handle to `out`: raw, so that the task
/// chooses where the kernel writes.
///
/// # Safety
/// The kernel checks `ptr`, `len` and `out`; a bad one ends the task.
unsafe fn raw_create(ptr: u64, len: u64, out: u64) {
    // SAFETY: a syscall; the kernel validates every argument.
    unsafe {
        asm!("syscall", inout("rax") SYS_CREATE => _, in("rdi") 1u64, in("rsi") ptr, in("rdx") len,
            in("r10") out, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
}

/// A tiny ELF: one code page that writes a byte at the last byte of a `bss_bytes` zero segment
/// after it, then exits with its first argument (rdi points at it on entry).
fn elf_touching_bss(bss_bytes: u64) -> Vec<u8> {
    const CODE_AT: u64 = 64 + 2 * 56;
    let bss_start = layout::IMAGE_BASE + 0x1000;
    let last = bss_start + bss_bytes - 1;
    let mut code = vec![0x48, 0xb8]; // mov rax, imm64
    code.extend_from_slice(&last.to_le_bytes());
    code.extend_from_slice(&[0xc6, 0x00, 0x01]); // mov byte [rax], 1
    code.extend_from_slice(&[0x31, 0xc0, 0x0f, 0x05]); // xor eax, eax; syscall (EXIT rdi)
    let mut elf = vec![0u8; CODE_AT as usize];
    elf[..8].copy_from_slice(b"\x7fELF\x02\x01\x01\x00");
    let put = |elf: &mut Vec<u8>, at: usize, bytes: &[u8]| elf[at..at + bytes.len()].copy_from_slice(bytes);
    put(&mut elf, 16, &2u16.to_le_bytes()); // ET_EXEC
    put(&mut elf, 18, &0x3eu16.to_le_bytes()); // x86_64
    put(&mut elf, 20, &1u32.to_le_bytes());
    put(&mut elf, 24, &(layout::IMAGE_BASE + CODE_AT).to_le_bytes()); // entry
    put(&mut elf, 32, &64u64.to_le_bytes()); // program headers
    put(&mut elf, 52, &64u16.to_le_bytes());
    put(&mut elf, 54, &56u16.to_le_bytes());
    put(&mut elf, 56, &2u16.to_le_bytes());
    let file_len = CODE_AT + code.len() as u64;
    // (flags, offset, address, file size, memory size)
    let segments = [(5u32, 0u64, layout::IMAGE_BASE, file_len, file_len), (6, 0, bss_start, 0, bss_bytes)];
    for (i, (flags, offset, vaddr, file, mem)) in segments.into_iter().enumerate() {
        let at = 64 + i * 56;
        put(&mut elf, at, &1u32.to_le_bytes()); // PT_LOAD
        put(&mut elf, at + 4, &flags.to_le_bytes());
        put(&mut elf, at + 8, &offset.to_le_bytes());
        put(&mut elf, at + 16, &vaddr.to_le_bytes());
        put(&mut elf, at + 24, &vaddr.to_le_bytes());
        put(&mut elf, at + 32, &file.to_le_bytes());
        put(&mut elf, at + 40, &mem.to_le_bytes());
        put(&mut elf, at + 48, &4096u64.to_le_bytes());
    }
    elf.extend_from_slice(&code);
    elf
}

fn limits(bytes: u64) -> Limits {
    Limits::new(bytes).unwrap_or_else(|_| cairn_userlib::fail("bad limits"))
}

fn run(args: &[Handle]) -> TaskResult {
    let mode = open(&arg(args, 0, "mode")?);
    match mode {
        // A thunk of itself asking for 1 TiB, tail-called: the node's memory ceiling refuses it
        // before anything is allocated (it used to end in a kernel allocation failure).
        b"ask-1tib" => {
            let inner = create_blob(b"create-at-heap");
            Ok(create_thunk(limits(1 << 40), arg(args, 1, "self")?, &[inner]))
        }
        b"create-at-heap" => {
            // SAFETY: the kernel checks the range; 2^39 bytes are not the task's memory.
            unsafe { raw_create(layout::HEAP_BASE, 1 << 39, layout::HEAP_BASE) };
            Err("a 512 GiB CREATE returned".into())
        }
        // A blob made straight from heap pages the task never touched: the kernel pages them in
        // as the task's own access would (it used to refuse them as "not the task's memory").
        b"create-untouched" => {
            let mut out = [0u8; 40];
            let len = number(args, 1)?;
            // SAFETY: the kernel checks the range and pages it in.
            unsafe { raw_create(layout::HEAP_BASE + (1 << 20), len, out.as_mut_ptr() as u64) };
            Ok(Handle::from_bytes(&out)?)
        }
        // An ELF whose headers claim a zero segment of nearly 1 GiB, under a 4 MiB limit, and
        // one of 8 MiB under 16 MiB that touches its last byte.
        b"huge-bss" => {
            let elf = create_blob(&elf_touching_bss(layout::IMAGE_END - layout::IMAGE_BASE - 0x1000));
            Ok(create_thunk(limits(4 << 20), elf, &[create_blob(b"huge bss ran")]))
        }
        b"bss-8mib" => {
            let elf = create_blob(&elf_touching_bss(8 << 20));
            Ok(create_thunk(limits(16 << 20), elf, &[create_blob(b"bss ok")]))
        }
        // What was in a page the kernel wrote for the previous run of this procedure.
        b"residue-kernel-data" | b"residue-kernel-bss" => {
            let page = if mode == b"residue-kernel-data" { &raw mut DATA_PAGE } else { &raw mut BSS_PAGE };
            let mut seen = [0u8; 40];
            // SAFETY: the task is single-threaded; the kernel writes the page only during the
            // CREATE below.
            unsafe {
                let base = page as *mut u8;
                core::ptr::copy_nonoverlapping(base, seen.as_mut_ptr(), seen.len());
                let content = b"a blob whose handle the kernel writes into the page";
                raw_create(content.as_ptr() as u64, content.len() as u64, base as u64);
            }
            Ok(create_blob(&seen))
        }
        // CREATE after CREATE of the same 2 MiB (stored once): the kernel's work for the task
        // counts against its budget, and the node keeps answering meanwhile.
        b"budget-dodge" => {
            let big = vec![7u8; 2 << 20];
            loop {
                create_blob(&big);
            }
        }
        // Segment selectors: set them all, then (in another run) read them.
        b"segments-set" => {
            // SAFETY: 0x1b is the user data selector; loading it is allowed in ring 3.
            unsafe {
                asm!("mov ds, {0:x}", "mov es, {0:x}", "mov fs, {0:x}", "mov gs, {0:x}", in(reg) 0x1bu64)
            };
            Ok(create_blob(b"set"))
        }
        // Selectors set once must stay through syscalls and timer ticks: were they reset on the
        // way back to the task, it would see when it had been interrupted (a clock).
        b"segments-hold" => {
            // SAFETY: 0x1b is the user data selector; loading it is allowed in ring 3.
            unsafe {
                asm!("mov ds, {0:x}", "mov es, {0:x}", "mov fs, {0:x}", "mov gs, {0:x}", in(reg) 0x1bu64)
            };
            let mut changed = 0u64;
            for round in 0..20u8 {
                create_blob(&[round; 1 << 16]);
                for _ in 0..500_000 {
                    let (ds, fs, gs): (u64, u64, u64);
                    // SAFETY: reading segment registers has no effect.
                    unsafe {
                        asm!("mov {0:x}, ds", "mov {1:x}, fs", "mov {2:x}, gs",
                            out(reg) ds, out(reg) fs, out(reg) gs, options(nomem, nostack));
                    }
                    changed += u64::from((ds as u16, fs as u16, gs as u16) != (0x1b, 0x1b, 0x1b));
                }
            }
            Ok(create_blob(if changed == 0 { b"held" } else { b"changed" }))
        }
        b"segments-read" => {
            let (ds, es, fs, gs): (u64, u64, u64, u64);
            // SAFETY: reading segment registers has no effect.
            unsafe {
                asm!("mov {0:x}, ds", "mov {1:x}, es", "mov {2:x}, fs", "mov {3:x}, gs",
                    out(reg) ds, out(reg) es, out(reg) fs, out(reg) gs);
            }
            let words = [ds as u16, es as u16, fs as u16, gs as u16];
            Ok(create_blob(&words.map(u16::to_le_bytes).concat()))
        }
        b"sgdt" => {
            let mut gdtr = [0u8; 10];
            // SAFETY: the attack: SGDT reveals where the kernel's GDT lies unless UMIP stops it.
            unsafe { asm!("sgdt [{}]", in(reg) gdtr.as_mut_ptr()) };
            Ok(create_blob(&gdtr))
        }
        b"rdpid" => {
            let value: u64;
            // SAFETY: RDPID reads IA32_TSC_AUX, which the kernel fixes at 0.
            unsafe { asm!("rdpid {}", out(reg) value) };
            Ok(create_blob(&value.to_le_bytes()))
        }
        // What the task may execute must agree with what CPUID and XGETBV tell it.
        b"simd-agree" => {
            let leaf1 = core::arch::x86_64::__cpuid(1);
            if leaf1.ecx & (1 << 27) == 0 {
                return Ok(create_blob(b"agree: no OSXSAVE"));
            }
            let (lo, hi): (u32, u32);
            // SAFETY: XGETBV with ECX = 0 reads XCR0; CPUID said OSXSAVE, so it is allowed.
            unsafe { asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi) };
            let xcr0 = u64::from(hi) << 32 | u64::from(lo);
            let cpuid_avx = leaf1.ecx & (1 << 28) != 0;
            if cpuid_avx != (xcr0 & 0b110 == 0b110) {
                return Err(alloc::format!("CPUID says AVX={cpuid_avx}, XCR0 is {xcr0:#x}").into());
            }
            Ok(create_blob(if cpuid_avx { b"agree: avx" } else { b"agree: sse" }))
        }
        b"int3" => {
            // SAFETY: the attack: a breakpoint trap.
            unsafe { asm!("int3") };
            Err("int3 returned".into())
        }
        b"int80" => {
            // SAFETY: the attack: a software interrupt to a kernel gate.
            unsafe { asm!("int 0x80") };
            Err("int 0x80 returned".into())
        }
        b"ud2" => {
            // SAFETY: the attack: an undefined instruction.
            unsafe { asm!("ud2") };
            Err("ud2 returned".into())
        }
        b"xsetbv" => {
            // SAFETY: the attack: XSETBV is privileged.
            unsafe { asm!("xsetbv", in("ecx") 0u32, in("eax") 3u32, in("edx") 0u32) };
            Err("xsetbv returned".into())
        }
        // Thunks nested `n` deep inside each other's arguments, returned as a tail call.
        b"nest" => {
            let (n, identity) = (number(args, 1)?, arg(args, 2, "identity")?);
            let mut t = create_blob(b"the innermost value");
            for _ in 0..n {
                t = create_thunk(limits(1 << 20), identity, &[t]);
            }
            Ok(t)
        }
        // countdown n: a tail call to countdown n-1, ending in an error with a 4 KiB message.
        b"countdown" => {
            let n = number(args, 1)?;
            if n == 0 {
                let message = vec![b'x'; 4096];
                // SAFETY: SYS_FAIL reads the message and never returns.
                unsafe {
                    asm!("syscall", in("rax") SYS_FAIL, in("rdi") message.as_ptr(), in("rsi") message.len(),
                        options(noreturn));
                }
            }
            let next = create_blob(&(n - 1).to_le_bytes());
            Ok(create_thunk(limits(1 << 20), arg(args, 2, "self")?, &[arg(args, 0, "mode")?, next, args[2]]))
        }
        // A failure message longer than the kernel keeps (4 KiB) and than a frame may carry.
        b"fail-long" => {
            let message = vec![b'y'; 10_000];
            // SAFETY: SYS_FAIL reads at most 4 KiB of the message and never returns.
            unsafe {
                asm!("syscall", in("rax") SYS_FAIL, in("rdi") message.as_ptr(), in("rsi") message.len(),
                    options(noreturn));
            }
        }
        // A failure message that tries to forge console lines and steer a terminal.
        // A 4 KiB message of its own for each number: errors the memo cannot share.
        b"fail-distinct" => Err(alloc::format!("{:020}", number(args, 1)?).repeat(200).into()),
        b"fail-forge" => Err("forged\ncairn: ready boot_ms=0 mem_mib=0\r\x1b[2J".into()),
        _ => Err("unknown containment mode".into()),
    }
}

cairn_userlib::task!(run);
