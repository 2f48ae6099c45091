//! Tasks that try to escape: each mode (the first argument, a blob) attempts one thing the
//! kernel must contain (docs/EVALUATION.md; tests/tests/tasks.rs runs each one).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;
use core::arch::asm;

use cairn_userlib::abi::{SYS_CREATE, SYS_EXIT, layout};
use cairn_userlib::{Handle, TaskResult, create_blob, create_tree, open};

const KERNEL_ADDRESS: u64 = 0xffff_8000_0000_1000;

#[inline(never)]
#[allow(unconditional_recursion, reason = "the stack overflow is the point")]
fn recurse(depth: u64) -> u64 {
    let frame = [depth; 512];
    // black_box keeps the 4 KiB frame from being optimised away.
    core::hint::black_box(&frame);
    recurse(depth + 1) + frame[7]
}

fn run(args: &[Handle]) -> TaskResult {
    let mode = open(args.first().ok_or("hostile needs a mode")?);
    // SAFETY (all blocks below): these instructions are the attack; the kernel must contain them.
    unsafe {
        match mode {
            b"hlt" => asm!("hlt"),
            b"cli" => asm!("cli"),
            b"port-out" => asm!("out dx, eax", in("dx") 0xf4u16, in("eax") 0x11u32),
            b"port-in" => asm!("in al, dx", in("dx") 0x60u16, out("al") _),
            b"write-kernel" => (KERNEL_ADDRESS as *mut u64).write_volatile(0x4141),
            b"read-unmapped" => {
                core::hint::black_box((0x5555_0000_0000u64 as *const u64).read_volatile());
            }
            b"exec-heap" => {
                let code: Vec<u8> = vec![0xc3]; // ret
                let f: extern "C" fn() = core::mem::transmute(code.as_ptr());
                f();
            }
            b"exec-args" => {
                let f: extern "C" fn() = core::mem::transmute(layout::ARGS_BASE as *const u8);
                f();
            }
            b"stack-overflow" => {
                core::hint::black_box(recurse(0));
            }
            b"unknown-syscall" => asm!("syscall", in("rax") 99u64, lateout("rcx") _, lateout("r11") _),
            b"wild-pointer" => {
                asm!("syscall", in("rax") SYS_EXIT, in("rdi") KERNEL_ADDRESS, lateout("rcx") _, lateout("r11") _)
            }
            b"huge-length" => {
                let byte = 0u8;
                let mut out = [0u8; 40];
                asm!("syscall", in("rax") SYS_CREATE, in("rdi") 1u64, in("rsi") &byte as *const u8,
                    in("rdx") 1u64 << 60, in("r10") out.as_mut_ptr(), lateout("rcx") _, lateout("r11") _);
            }
            b"alloc-beyond-limit" => {
                let mut big: Vec<u8> = Vec::new();
                big.resize(1 << 30, 1);
                core::hint::black_box(&big);
            }
            b"loop" => loop {
                core::hint::spin_loop();
            },
            b"rdtsc" => {
                core::hint::black_box(core::arch::x86_64::_rdtsc());
            }
            b"wrfsbase" => asm!("wrfsbase {}", in(reg) 0x1000u64),
            b"trap-flag" => asm!("pushfq", "or qword ptr [rsp], 0x100", "popfq", "nop", "nop"),
            // Direction and alignment-check flags set across a syscall: the kernel must clear
            // them on entry and still copy the blob correctly.
            b"flags-syscall" => {
                asm!("pushfq", "or qword ptr [rsp], 0x40400", "popfq", "std");
                let h = create_blob(b"copied forwards, whatever the flags say");
                asm!("cld", "pushfq", "and qword ptr [rsp], ~0x40000", "popfq");
                return Ok(h);
            }
            // Each of these returns what an earlier task on the node may have left behind, then
            // leaves something itself: a node that reuses address spaces must return zeros.
            b"residue-static" => {
                static mut COUNT: u64 = 0;
                COUNT += 1;
                return Ok(create_blob(&COUNT.to_le_bytes()));
            }
            b"residue-stack" => {
                let old: u64;
                asm!("mov {old}, [rsp - 1024]", "mov qword ptr [rsp - 1024], {mark}", old = out(reg) old,
                    mark = in(reg) 0xdead_beef_u64);
                return Ok(create_blob(&old.to_le_bytes()));
            }
            b"residue-heap" => {
                let spot = (layout::HEAP_BASE + (1 << 16)) as *mut u64;
                let old = spot.read_volatile();
                spot.write_volatile(0xdead_beef);
                return Ok(create_blob(&old.to_le_bytes()));
            }
            b"cpuid" => {
                let mut out = Vec::new();
                for leaf in [0u32, 1, 7, 0x8000_0000] {
                    let r = core::arch::x86_64::__cpuid_count(leaf, 0);
                    for v in [r.eax, r.ebx, r.ecx, r.edx] {
                        out.extend_from_slice(&v.to_le_bytes());
                    }
                }
                return Ok(create_blob(&out));
            }
            // A handle with the right bytes for an object the task was never given.
            b"forge-open" => {
                core::hint::black_box(open(&Handle::blob(&[0x42; 64])));
            }
            b"forge-return" => return Ok(Handle::blob(&[0x42; 64])),
            b"forge-tree" => return Ok(create_tree(&[Handle::blob(&[0x42; 64])])),
            // Nondeterminism the kernel cannot trap (docs/EVALUATION.md, known leaks): the
            // hardware random number generator. Verification across nodes catches it.
            b"rdrand" => {
                let (mut value, mut ok) = (0u64, 0u8);
                for _ in 0..16 {
                    asm!("rdrand {v}", "setc {ok}", v = out(reg) value, ok = out(reg_byte) ok);
                    if ok == 1 {
                        break;
                    }
                }
                if ok != 1 {
                    return Err("RDRAND gave no value".into());
                }
                let mut out = Vec::from(&b"a value from RDRAND, different on every run: "[..]);
                out.extend_from_slice(&value.to_le_bytes());
                return Ok(create_blob(&out));
            }
            // IO the job never declared: a manifest and a job tree granting it, made by the task
            // (they are only data), and an IO request to the endpoint given as the second
            // argument. The kernel must refuse the request, naming the missing capability.
            b"forge-io" => {
                let endpoint = *args.get(1).ok_or("forge-io needs an endpoint")?;
                let text =
                    alloc::format!("tcp.send {}\n", core::str::from_utf8(open(&endpoint)).unwrap_or("?"));
                let manifest = create_blob(text.as_bytes());
                let data = create_blob(b"exfiltrated by a task that holds no capability");
                let request =
                    cairn_userlib::io_request(cairn_userlib::object::io::Effect::TcpSend, &[endpoint, data]);
                create_tree(&[request, manifest]);
                return Ok(request);
            }
            _ => return Err("unknown hostile mode".into()),
        }
    }
    Err("the attack did not stop the task".into())
}

cairn_userlib::task!(run);
