//! Single instructions with known encodings, for the self tests that check the trap path:
//! each one raises a specific exception, and its length lets the handler resume after it.

/// Length of the `mov rax, [rdi]` in [`read_u64`].
pub const READ_LEN: u64 = 3;
/// Length of `ud2`.
pub const UD2_LEN: u64 = 2;

/// Reads 8 bytes at any address; an unmapped address raises a page fault at this instruction.
pub fn read_u64(addr: u64) -> u64 {
    let value: u64;
    // SAFETY: a single load into a register: it writes no memory and no Rust reference is
    // created, so whatever the address holds cannot break an invariant. A fault is handled by the
    // trap path (expected by a self test, or fatal).
    unsafe {
        core::arch::asm!("mov rax, qword ptr [rdi]", in("rdi") addr, out("rax") value,
            options(nostack, readonly, preserves_flags));
    }
    value
}

/// Raises #BP (a trap: the saved RIP already points past it).
pub fn breakpoint() {
    // SAFETY: int3 only transfers control to the breakpoint handler, which returns.
    unsafe { core::arch::asm!("int3", options(nomem, nostack)) };
}

/// Raises #UD.
pub fn invalid_opcode() {
    // SAFETY: ud2 faults without side effects; the self test's handler resumes after it.
    unsafe { core::arch::asm!("ud2", options(nomem, nostack)) };
}

/// Runs SSE and (if enabled) AVX instructions and returns a value computed by them (42), so
/// that a missing CR0/CR4/XCR0 bit shows up as #UD rather than passing silently.
pub fn simd_sum(avx: bool) -> u64 {
    let sse: u64;
    // SAFETY: uses only xmm0/xmm1 and general registers. The kernel is built without SSE, so the
    // compiler never keeps values in vector registers and they need no clobber declaration
    // (which the soft-float target would refuse).
    unsafe {
        core::arch::asm!(
            "movq xmm0, {a}", "movq xmm1, {b}", "paddq xmm0, xmm1", "movq {out}, xmm0",
            a = in(reg) 40u64, b = in(reg) 2u64, out = out(reg) sse, options(nomem, nostack),
        );
    }
    if !avx {
        return sse;
    }
    let upper: u64;
    // SAFETY: as above, for ymm0/ymm1 (AVX1 only); only called when XCR0 enables AVX state.
    unsafe {
        core::arch::asm!(
            "vmovq xmm0, {a}", "vinsertf128 ymm0, ymm0, xmm0, 1", "vextractf128 xmm1, ymm0, 1",
            "vmovq {out}, xmm1", "vzeroupper",
            a = in(reg) sse, out = out(reg) upper, options(nomem, nostack),
        );
    }
    upper
}
