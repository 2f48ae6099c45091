//! Which BLAKE3 implementation names large blobs. The digest is the same either way; only the
//! speed differs, and which is faster depends on where the code runs (see `cairn-blake3x8`):
//! the node measures both at boot and may switch.

use core::sync::atomic::{AtomicBool, Ordering};

/// Blobs at least this large go to the 8-lane implementation when it is chosen.
const WIDE_MIN: usize = 16 * 1024;

static SHIFT_ROTATE_AVX2: AtomicBool = AtomicBool::new(false);

/// Chooses the shift-rotate AVX2 implementation for large blobs (or the `blake3` crate's own
/// choice, the default); returns whether it is in use, since it needs AVX2.
pub fn use_shift_rotate_avx2(on: bool) -> bool {
    let on = on && cairn_blake3x8::available();
    SHIFT_ROTATE_AVX2.store(on, Ordering::Relaxed);
    on
}

pub fn shift_rotate_avx2_in_use() -> bool {
    SHIFT_ROTATE_AVX2.load(Ordering::Relaxed)
}

/// BLAKE3 of a blob's bytes.
pub fn blob_digest(bytes: &[u8]) -> [u8; 32] {
    if bytes.len() >= WIDE_MIN && SHIFT_ROTATE_AVX2.load(Ordering::Relaxed) {
        cairn_blake3x8::hash(bytes)
    } else {
        *blake3::hash(bytes).as_bytes()
    }
}

/// Both implementations on `sample`: their times in `clock` units (each run once before it is
/// timed, so that neither pays for first use: under emulation that is code translation), and
/// whether they agreed.
pub fn compare(sample: &[u8], mut clock: impl FnMut() -> u64) -> Option<(u64, u64, bool)> {
    if !cairn_blake3x8::available() {
        return None;
    }
    let crate_path = |s: &[u8]| *blake3::hash(core::hint::black_box(s)).as_bytes();
    let wide_path = |s: &[u8]| cairn_blake3x8::hash(core::hint::black_box(s));
    let (a, b) = (crate_path(sample), wide_path(sample));
    let t0 = clock();
    crate_path(sample);
    let t1 = clock();
    wide_path(sample);
    let t2 = clock();
    Some((t1 - t0, t2 - t1, a == b))
}
