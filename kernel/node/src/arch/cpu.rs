//! CPU feature setup the bootloader leaves to us.

use core::arch::x86_64::{__cpuid, __cpuid_count};

use x86_64::registers::control::{Cr0, Cr0Flags, Cr4, Cr4Flags};
use x86_64::registers::xcontrol::{XCr0, XCr0Flags};

/// What [`enable_simd`] switched on, for the boot log and the self tests.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimdState {
    pub xsave: bool,
    pub avx: bool,
    pub avx512: bool,
}

/// Lets code use SSE, and AVX where the CPU has it.
///
/// The BIOS path of the bootloader hands over CR4 = PAE only, so without this any SSE
/// instruction raises #UD. `blake3` picks SIMD code from CPUID at run time, so CPUID saying
/// "AVX2" must also mean the OS has enabled it (CR4.OSXSAVE + XCR0).
pub fn enable_simd() -> SimdState {
    let mut state = SimdState::default();
    let leaf1 = __cpuid(1);
    let has_xsave = leaf1.ecx & (1 << 26) != 0;
    let has_avx = leaf1.ecx & (1 << 28) != 0;

    // SAFETY: EM=0/MP=1 and OSFXSR/OSXMMEXCPT are the architectural way to enable SSE; the
    // kernel itself is compiled without SSE, so no live state is affected.
    unsafe {
        Cr0::update(|cr0| {
            cr0.remove(Cr0Flags::EMULATE_COPROCESSOR);
            cr0.insert(Cr0Flags::MONITOR_COPROCESSOR);
        });
        Cr4::update(|cr4| {
            cr4.insert(Cr4Flags::OSFXSR | Cr4Flags::OSXMMEXCPT_ENABLE);
            if has_xsave {
                cr4.insert(Cr4Flags::OSXSAVE);
            }
        });
    }
    if !has_xsave {
        return state;
    }
    state.xsave = true;

    // Only enable state components the CPU reports in CPUID.(EAX=0DH,ECX=0):EAX.
    let supported = __cpuid_count(0xd, 0).eax as u64;
    let mut xcr0 = XCr0Flags::X87 | XCr0Flags::SSE;
    if has_avx && supported & XCr0Flags::AVX.bits() != 0 {
        xcr0 |= XCr0Flags::AVX;
        state.avx = true;
        let avx512 = XCr0Flags::OPMASK | XCr0Flags::ZMM_HI256 | XCr0Flags::HI16_ZMM;
        if supported & avx512.bits() == avx512.bits() {
            xcr0 |= avx512;
            state.avx512 = true;
        }
    }
    // SAFETY: every bit set is reported as supported by CPUID leaf 0xD, and X87|SSE are always
    // required together; CR4.OSXSAVE was set above.
    unsafe { XCr0::write(xcr0) };
    state
}

/// True if CPUID reports an invariant TSC (it ticks at a constant rate in every power state).
pub fn has_invariant_tsc() -> bool {
    __cpuid(0x8000_0000).eax >= 0x8000_0007 && __cpuid(0x8000_0007).edx & (1 << 8) != 0
}

/// The BLAKE3 implementation the `blake3` crate picks on this CPU, following its own order
/// (AVX-512, AVX2, SSE4.1, SSE2) from CPUID and from what XCR0 lets the OS use: shown in the boot
/// log so that a measurement says which path it measured.
pub fn blake3_path(simd: &SimdState) -> &'static str {
    let leaf1 = __cpuid(1);
    let leaf7 = __cpuid_count(7, 0);
    let avx2 = leaf7.ebx & (1 << 5) != 0;
    let avx512 = leaf7.ebx & (1 << 16) != 0 && leaf7.ebx & (1 << 31) != 0;
    if simd.avx512 && avx512 {
        "avx512"
    } else if simd.avx && avx2 {
        "avx2"
    } else if leaf1.ecx & (1 << 19) != 0 {
        "sse4.1"
    } else {
        "sse2"
    }
}
