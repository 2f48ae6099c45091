//! Which BLAKE3 implementation names large blobs. The digest is the same either way; only the
//! speed differs, and which is faster depends on where the code runs (see `cairn-blake3x8`):
//! the node measures both at boot and may switch.

use blake3::hazmat::{HasherExt, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root};
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

/// Bytes in a span: the unit in which a blob's hash can be computed piece by piece, as its
/// bytes arrive or on several CPUs. A power-of-two number of BLAKE3 chunks, so that every whole
/// span of a longer blob is a subtree of its BLAKE3 tree.
pub const SPAN_LEN: usize = 64 * 1024;

/// How many whole spans of a blob of `len` bytes [`blob_digest_with_spans`] takes chaining
/// values for (none for a blob of one span or less: its span would be the root).
pub fn full_spans(len: usize) -> usize {
    if len <= SPAN_LEN { 0 } else { len / SPAN_LEN }
}

/// The chaining value of span `index` of a blob longer than one span: `span` is its bytes
/// `index * SPAN_LEN ..` and must be [`SPAN_LEN`] long.
pub fn span_cv(span: &[u8], index: usize) -> [u8; 32] {
    assert_eq!(span.len(), SPAN_LEN, "a span is SPAN_LEN bytes");
    subtree_cv(span, (index * SPAN_LEN) as u64)
}

/// BLAKE3 of a blob, given the chaining value of each of its [`full_spans`] (from
/// [`span_cv`]); only the bytes after the last whole span are hashed here.
pub fn blob_digest_with_spans(bytes: &[u8], span_cvs: &[[u8; 32]]) -> [u8; 32] {
    assert_eq!(span_cvs.len(), full_spans(bytes.len()), "one chaining value per whole span");
    if span_cvs.is_empty() {
        return blob_digest(bytes);
    }
    let left_len = left_subtree_len(bytes.len() as u64) as usize;
    let (left, right) = bytes.split_at(left_len);
    let (left_cv, right_cv) =
        (spanned_subtree(left, 0, span_cvs), spanned_subtree(right, left_len, span_cvs));
    *merge_subtrees_root(&left_cv, &right_cv, Mode::Hash).as_bytes()
}

/// The chaining value of the subtree `input` at `offset`, from `span_cvs` where it is a span.
fn spanned_subtree(input: &[u8], offset: usize, span_cvs: &[[u8; 32]]) -> [u8; 32] {
    // BLAKE3 splits a subtree at a power of two chunks, so every subtree of exactly one span
    // starts on a span boundary.
    if input.len() == SPAN_LEN {
        return span_cvs[offset / SPAN_LEN];
    }
    if input.len() < SPAN_LEN {
        return subtree_cv(input, offset as u64);
    }
    let left_len = left_subtree_len(input.len() as u64) as usize;
    let (left, right) = input.split_at(left_len);
    let (left_cv, right_cv) =
        (spanned_subtree(left, offset, span_cvs), spanned_subtree(right, offset + left_len, span_cvs));
    merge_subtrees_non_root(&left_cv, &right_cv, Mode::Hash)
}

/// The chaining value of a non-root subtree, with the implementation in use.
fn subtree_cv(input: &[u8], offset: u64) -> [u8; 32] {
    if input.len() >= WIDE_MIN && SHIFT_ROTATE_AVX2.load(Ordering::Relaxed) {
        cairn_blake3x8::subtree_cv(input, offset)
    } else {
        blake3::Hasher::new().set_input_offset(offset).update(input).finalize_non_root()
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

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    fn blob(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(167).wrapping_add(seed) ^ (i >> 11) as u8).collect()
    }

    fn by_spans(bytes: &[u8]) -> [u8; 32] {
        let cvs: Vec<[u8; 32]> =
            (0..full_spans(bytes.len())).map(|i| span_cv(&bytes[i * SPAN_LEN..][..SPAN_LEN], i)).collect();
        blob_digest_with_spans(bytes, &cvs)
    }

    #[test]
    fn span_hashing_is_blake3_at_every_boundary() {
        for wide in [false, true] {
            use_shift_rotate_avx2(wide);
            for len in [
                0,
                1,
                1024,
                SPAN_LEN - 1,
                SPAN_LEN,
                SPAN_LEN + 1,
                2 * SPAN_LEN,
                2 * SPAN_LEN + 1024,
                3 * SPAN_LEN + 17,
                4 * SPAN_LEN,
                5 * SPAN_LEN - 1,
                8 * SPAN_LEN + 3 * 1024 + 5,
                33 * SPAN_LEN,
            ] {
                let bytes = blob(len, len as u8);
                assert_eq!(by_spans(&bytes), *blake3::hash(&bytes).as_bytes(), "length {len}, wide {wide}");
            }
        }
    }

    #[test]
    fn a_wrong_span_value_changes_the_digest() {
        let bytes = blob(3 * SPAN_LEN + 100, 9);
        let mut cvs: Vec<[u8; 32]> = (0..3).map(|i| span_cv(&bytes[i * SPAN_LEN..][..SPAN_LEN], i)).collect();
        cvs[1][0] ^= 1;
        assert_ne!(blob_digest_with_spans(&bytes, &cvs), *blake3::hash(&bytes).as_bytes());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn span_hashing_is_blake3(len in 0usize..(6 * SPAN_LEN), seed in any::<u8>()) {
            let bytes = blob(len, seed);
            prop_assert_eq!(by_spans(&bytes), *blake3::hash(&bytes).as_bytes());
        }
    }
}
