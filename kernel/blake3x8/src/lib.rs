//! Plain BLAKE3 hashing whose chunk compression runs 8 chunks at a time in AVX2 registers and
//! rotates words with shifts instead of byte shuffles.
//!
//! Why: the `blake3` crate's SIMD kernels rotate by 16 and 8 bits with (V)PSHUFB. Under QEMU's
//! TCG that one instruction costs about 54 ns, against about 3 ns for a shift-and-or rotation
//! (measured in a Cairn guest), so those kernels spend most of their time shuffling. On real
//! hardware PSHUFB is cheap and the `blake3` crate is faster: the kernel measures both at boot
//! and keeps the faster one (`cairn_object::hash`). The result is always exactly BLAKE3: the
//! tree above the chunks is built with `blake3::hazmat`, and tests compare every length class
//! against the `blake3` crate.

#![no_std]

use blake3::hazmat::{ChainingValue, HasherExt, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root};

pub const CHUNK_LEN: usize = 1024;
const LANES: usize = 8;
const BLOCK_LEN: usize = 64;
const CHUNK_START: u32 = 1;
const CHUNK_END: u32 = 2;
const IV: [u32; 8] = [
    0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19,
];

/// True if this CPU (and the OS, through XCR0) can run [`hash`].
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{__cpuid, __cpuid_count, _xgetbv};
        let leaf1 = __cpuid(1);
        let osxsave = leaf1.ecx & (1 << 27) != 0;
        let avx2 = __cpuid_count(7, 0).ebx & (1 << 5) != 0;
        // SAFETY: XGETBV is available whenever CPUID reports OSXSAVE.
        osxsave && avx2 && unsafe { _xgetbv(0) } & 0b110 == 0b110
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// BLAKE3 of `input`, identical to `blake3::hash`. Callers check [`available`] first.
pub fn hash(input: &[u8]) -> [u8; 32] {
    assert!(available(), "cairn_blake3x8::hash needs AVX2");
    if input.len() <= CHUNK_LEN {
        return *blake3::hash(input).as_bytes();
    }
    let left_len = left_subtree_len(input.len() as u64) as usize;
    let (left, right) = input.split_at(left_len);
    *merge_subtrees_root(&subtree(left, 0), &subtree(right, left_len as u64), Mode::Hash).as_bytes()
}

/// The chaining value of the subtree of `input`, which starts at byte `offset` of the whole.
fn subtree(input: &[u8], offset: u64) -> ChainingValue {
    if input.len() <= CHUNK_LEN {
        return blake3::Hasher::new().set_input_offset(offset).update(input).finalize_non_root();
    }
    if input.len() == LANES * CHUNK_LEN {
        let mut cvs = [[0u8; 32]; LANES];
        // SAFETY: `hash` checked that the CPU and OS support AVX2.
        unsafe { x86::hash8(input.try_into().expect("8 chunks"), offset / CHUNK_LEN as u64, &mut cvs) };
        let pairs: [ChainingValue; 4] = core::array::from_fn(|i| merge_subtrees_non_root(&cvs[2 * i], &cvs[2 * i + 1], Mode::Hash));
        let quads = [merge_subtrees_non_root(&pairs[0], &pairs[1], Mode::Hash), merge_subtrees_non_root(&pairs[2], &pairs[3], Mode::Hash)];
        return merge_subtrees_non_root(&quads[0], &quads[1], Mode::Hash);
    }
    let left_len = left_subtree_len(input.len() as u64) as usize;
    let (left, right) = input.split_at(left_len);
    merge_subtrees_non_root(&subtree(left, offset), &subtree(right, offset + left_len as u64), Mode::Hash)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{BLOCK_LEN, CHUNK_END, CHUNK_LEN, CHUNK_START, IV, LANES};

    core::arch::global_asm!(include_str!("rounds.s"));

    unsafe extern "C" {
        fn cairn_b3x8_rounds(state: *mut [u32; LANES], message: *const [u32; LANES], scratch: *mut [u32; LANES]);
    }

    /// Chaining values of 8 consecutive whole chunks, the first with chunk counter `counter`.
    /// Everything but the rounds is plain Rust (the kernel is built without SIMD registers).
    ///
    /// # Safety
    /// The CPU and OS must support AVX2.
    pub unsafe fn hash8(input: &[u8; LANES * CHUNK_LEN], counter: u64, out: &mut [[u8; 32]; LANES]) {
        let mut h = [[0u32; LANES]; 8];
        for (i, row) in h.iter_mut().enumerate() {
            *row = [IV[i]; LANES];
        }
        let lo: [u32; LANES] = core::array::from_fn(|lane| (counter + lane as u64) as u32);
        let hi: [u32; LANES] = core::array::from_fn(|lane| ((counter + lane as u64) >> 32) as u32);
        for block in 0..CHUNK_LEN / BLOCK_LEN {
            // Word w of this block, for each lane, in one row.
            let mut message = [[0u32; LANES]; 16];
            for (lane, chunk) in input.chunks_exact(CHUNK_LEN).enumerate() {
                let bytes = &chunk[block * BLOCK_LEN..][..BLOCK_LEN];
                for (w, word) in bytes.chunks_exact(4).enumerate() {
                    message[w][lane] = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
                }
            }
            let mut flags = 0;
            if block == 0 {
                flags |= CHUNK_START;
            }
            if block == CHUNK_LEN / BLOCK_LEN - 1 {
                flags |= CHUNK_END;
            }
            let mut v = [[0u32; LANES]; 16];
            v[..8].copy_from_slice(&h);
            for i in 0..4 {
                v[8 + i] = [IV[i]; LANES];
            }
            v[12] = lo;
            v[13] = hi;
            v[14] = [BLOCK_LEN as u32; LANES];
            v[15] = [flags; LANES];
            let mut scratch = [0u32; LANES];
            // SAFETY: both arrays are 16 rows of 8 u32s and the scratch is 32 bytes, as the
            // routine expects; AVX2 is available (the caller's contract), and the routine
            // clobbers only caller-saved vector registers, which the kernel never keeps values in.
            unsafe { cairn_b3x8_rounds(v.as_mut_ptr(), message.as_ptr(), &mut scratch) };
            for i in 0..8 {
                for lane in 0..LANES {
                    h[i][lane] = v[i][lane] ^ v[i + 8][lane];
                }
            }
        }
        for (lane, cv) in out.iter_mut().enumerate() {
            for (i, row) in h.iter().enumerate() {
                cv[4 * i..4 * i + 4].copy_from_slice(&row[lane].to_le_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data(len: usize, seed: u8) -> alloc_free::Buf {
        alloc_free::Buf::new(len, seed)
    }

    mod alloc_free {
        extern crate std;
        pub struct Buf(pub std::vec::Vec<u8>);
        impl Buf {
            pub fn new(len: usize, seed: u8) -> Buf {
                Buf((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed).rotate_left((i % 7) as u32)).collect())
            }
        }
    }

    #[test]
    fn every_length_class_matches_blake3() {
        if !available() {
            return; // Nothing to compare on a CPU without AVX2.
        }
        for len in [0, 1, 64, 1023, 1024, 1025, 2048, 4096, 8191, 8192, 8193, 16384, 3 * 8192 + 17, 65536, 100_000, 1 << 20] {
            let buf = data(len, 7);
            assert_eq!(hash(&buf.0), *blake3::hash(&buf.0).as_bytes(), "length {len}");
        }
    }

    proptest! {
        #[test]
        fn random_inputs_match_blake3(len in 0usize..200_000, seed in any::<u8>()) {
            if available() {
                let buf = data(len, seed);
                prop_assert_eq!(hash(&buf.0), *blake3::hash(&buf.0).as_bytes());
            }
        }
    }
}
