//! The CPU's random number instructions, for the kernel's own entropy (docs/SECURITY.md,
//! "Entropy"). Tasks never get these values; they can execute RDRAND themselves, which no
//! kernel can trap (docs/EVALUATION.md).

use core::arch::asm;
use core::arch::x86_64::{__cpuid, __cpuid_count};

/// Attempts per value: both instructions may fail transiently when the hardware is drained.
const RETRIES: usize = 64;

pub fn has_rdrand() -> bool {
    __cpuid(1).ecx & (1 << 30) != 0
}

pub fn has_rdseed() -> bool {
    __cpuid(0).eax >= 7 && __cpuid_count(7, 0).ebx & (1 << 18) != 0
}

/// 64 bits from RDSEED (the conditioned entropy source itself), if it gives them.
pub fn rdseed64() -> Option<u64> {
    if !has_rdseed() {
        return None;
    }
    (0..RETRIES).find_map(|_| {
        let (value, ok): (u64, u8);
        // SAFETY: CPUID says the instruction exists; it writes only the named register and CF.
        unsafe { asm!("rdseed {v}", "setc {ok}", v = out(reg) value, ok = out(reg_byte) ok, options(nomem, nostack)) };
        (ok == 1).then_some(value)
    })
}

/// 64 bits from RDRAND (a DRBG the hardware reseeds), if it gives them.
pub fn rdrand64() -> Option<u64> {
    if !has_rdrand() {
        return None;
    }
    (0..RETRIES).find_map(|_| {
        let (value, ok): (u64, u8);
        // SAFETY: as in rdseed64.
        unsafe { asm!("rdrand {v}", "setc {ok}", v = out(reg) value, ok = out(reg_byte) ok, options(nomem, nostack)) };
        (ok == 1).then_some(value)
    })
}
