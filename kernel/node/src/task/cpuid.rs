//! The one CPUID answer every task gets (docs/EVALUATION.md, "Tasks"): the same on every node,
//! so no task can learn what machine it runs on or behave differently because of it.
//!
//! Leaf 0 reports vendor "CairnTaskABI" and max leaf 1; leaf 1 reports x86-64-v2 (SSE to SSE4.2,
//! POPCNT, CMPXCHG16B), which every machine Cairn runs on has; no TSC, no RDRAND, no AVX, no
//! hypervisor bit. Every other leaf, including the extended ones, is all zeros.

use crate::arch::user::UserContext;

pub fn answer(ctx: &mut UserContext) {
    let leaf = ctx.rax as u32;
    let (eax, ebx, ecx, edx) = match leaf {
        // "Cair" "nTas" "kABI" in EBX, EDX, ECX order.
        0 => (1, u32::from_le_bytes(*b"Cair"), u32::from_le_bytes(*b"kABI"), u32::from_le_bytes(*b"nTas")),
        1 => {
            // ECX: SSE3(0) SSSE3(9) CX16(13) SSE4.1(19) SSE4.2(20) POPCNT(23).
            let ecx = 1 | (1 << 9) | (1 << 13) | (1 << 19) | (1 << 20) | (1 << 23);
            // EDX: FPU(0) CX8(8) CMOV(15) MMX(23) FXSR(24) SSE(25) SSE2(26).
            let edx = 1 | (1 << 8) | (1 << 15) | (1 << 23) | (1 << 24) | (1 << 25) | (1 << 26);
            (0, 0, ecx, edx)
        }
        _ => (0, 0, 0, 0),
    };
    ctx.rax = eax as u64;
    ctx.rbx = ebx as u64;
    ctx.rcx = ecx as u64;
    ctx.rdx = edx as u64;
}
