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

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root,
};

pub const CHUNK_LEN: usize = 1024;
const LANES: usize = 8;
const BLOCK_LEN: usize = 64;
const CHUNK_START: u32 = 1;
const CHUNK_END: u32 = 2;
const PARENT: u32 = 4;
const IV: [u32; 8] =
    [0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19];

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

/// The chaining value of the subtree of `input`, which starts at byte `offset` of the whole
/// (a multiple of the chunk length), in a whole longer than `input`. Callers check
/// [`available`] first.
pub fn subtree_cv(input: &[u8], offset: u64) -> ChainingValue {
    assert!(available(), "cairn_blake3x8::subtree_cv needs AVX2");
    subtree(input, offset)
}

/// Whole chunks in the largest subtree hashed level by level in one piece (a 64 KiB span).
const WIDE_CHUNKS: usize = 64;

fn subtree(input: &[u8], offset: u64) -> ChainingValue {
    if input.len() <= CHUNK_LEN {
        return blake3::Hasher::new().set_input_offset(offset).update(input).finalize_non_root();
    }
    let chunks = input.len() / CHUNK_LEN;
    if input.len().is_multiple_of(CHUNK_LEN)
        && chunks.is_power_of_two()
        && (LANES..=WIDE_CHUNKS).contains(&chunks)
    {
        return whole_subtree(input, offset);
    }
    let left_len = left_subtree_len(input.len() as u64) as usize;
    let (left, right) = input.split_at(left_len);
    merge_subtrees_non_root(&subtree(left, offset), &subtree(right, offset + left_len as u64), Mode::Hash)
}

/// A subtree of a power-of-two number of whole chunks (8 to [`WIDE_CHUNKS`]): the chunks 8 at a
/// time, then each level of parents 8 at a time while there are that many, the last few merges
/// one by one.
fn whole_subtree(input: &[u8], offset: u64) -> ChainingValue {
    let mut cvs = [[0u8; 32]; WIDE_CHUNKS];
    let mut count = input.len() / CHUNK_LEN;
    let groups = input.as_chunks::<{ LANES * CHUNK_LEN }>().0;
    for (group, out) in groups.iter().zip(cvs.as_chunks_mut::<LANES>().0) {
        let counter =
            (offset + (group.as_ptr() as usize - input.as_ptr() as usize) as u64) / CHUNK_LEN as u64;
        // SAFETY: callers checked that the CPU and OS support AVX2.
        unsafe { x86::hash8(group, counter, out) };
    }
    while count >= 2 * LANES {
        for i in 0..count / (2 * LANES) {
            let children: [[u8; 32]; 2 * LANES] =
                cvs[2 * LANES * i..][..2 * LANES].try_into().expect("16 values");
            // SAFETY: as above.
            unsafe {
                x86::parents8(&children, (&mut cvs[LANES * i..][..LANES]).try_into().expect("8 values"))
            };
        }
        count /= 2;
    }
    while count > 1 {
        for i in 0..count / 2 {
            cvs[i] = merge_subtrees_non_root(&cvs[2 * i], &cvs[2 * i + 1], Mode::Hash);
        }
        count /= 2;
    }
    cvs[0]
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{BLOCK_LEN, CHUNK_END, CHUNK_LEN, CHUNK_START, IV, LANES, PARENT};

    core::arch::global_asm!(include_str!("rounds.s"));

    unsafe extern "C" {
        fn cairn_b3x8_chunks(
            cv: *mut [u32; LANES],
            messages: *const [[u32; LANES]; 16],
            constants: *const [u32; LANES],
            flags: *const [u32; LANES],
            scratch: *mut [u32; LANES],
            blocks: usize,
        );
    }

    const BLOCKS: usize = CHUNK_LEN / BLOCK_LEN;

    /// Chaining values of 8 consecutive whole chunks, the first with chunk counter `counter`.
    /// The message words are rearranged here (the kernel is built without SIMD registers, so
    /// this is plain Rust); all 16 blocks' rounds run in one call of the generated routine.
    ///
    /// # Safety
    /// The CPU and OS must support AVX2.
    pub unsafe fn hash8(input: &[u8; LANES * CHUNK_LEN], counter: u64, out: &mut [[u8; 32]; LANES]) {
        // messages[block][w][pair]: word w of the block in the chunks of lanes 2 * pair (low
        // half) and 2 * pair + 1, which is the routine's layout of 8 u32 lanes. Words move two at
        // a time: under emulation every memory access costs an address translation.
        let mut messages = [[[0u64; LANES / 2]; 16]; BLOCKS];
        for (block, rows) in messages.iter_mut().enumerate() {
            for lane in (0..LANES).step_by(2) {
                let at = |l: usize, w: usize| {
                    let i = l * CHUNK_LEN + block * BLOCK_LEN + w * 4;
                    u64::from_le_bytes(input[i..i + 8].try_into().expect("8 bytes"))
                };
                for w in (0..16).step_by(2) {
                    let (a, b) = (at(lane, w), at(lane + 1, w));
                    let even = (a & 0xffff_ffff) | (b << 32);
                    let odd = (a >> 32) | (b & 0xffff_ffff_0000_0000);
                    rows[w][lane / 2] = even;
                    rows[w + 1][lane / 2] = odd;
                }
            }
        }
        let lo: [u32; LANES] = core::array::from_fn(|lane| (counter + lane as u64) as u32);
        let hi: [u32; LANES] = core::array::from_fn(|lane| ((counter + lane as u64) >> 32) as u32);
        let constants = [
            [IV[0]; LANES],
            [IV[1]; LANES],
            [IV[2]; LANES],
            [IV[3]; LANES],
            lo,
            hi,
            [BLOCK_LEN as u32; LANES],
        ];
        let flags: [[u32; LANES]; BLOCKS] = core::array::from_fn(|block| {
            let start = if block == 0 { CHUNK_START } else { 0 };
            let end = if block == BLOCKS - 1 { CHUNK_END } else { 0 };
            [start | end; LANES]
        });
        let mut cv: [[u32; LANES]; 8] = core::array::from_fn(|i| [IV[i]; LANES]);
        let mut scratch = [[0u32; LANES]; 16];
        // SAFETY: every pointer is to an array of the shape the routine's header describes
        // (gen_rounds.py); AVX2 is available (the caller's contract), and the routine clobbers
        // only caller-saved registers and vector registers, which the kernel keeps no values in.
        unsafe {
            cairn_b3x8_chunks(
                cv.as_mut_ptr(),
                messages.as_ptr().cast(),
                constants.as_ptr(),
                flags.as_ptr(),
                scratch.as_mut_ptr(),
                BLOCKS,
            )
        };
        lanes_out(&cv, out);
    }

    /// The parents of 8 pairs of chaining values: `out[j]` joins `children[2j]` and
    /// `children[2j + 1]`.
    ///
    /// # Safety
    /// The CPU and OS must support AVX2.
    pub unsafe fn parents8(children: &[[u8; 32]; 2 * LANES], out: &mut [[u8; 32]; LANES]) {
        // A parent's message is its left child's chaining value, then its right child's.
        let mut message = [[0u32; LANES]; 16];
        for (lane, [left, right]) in children.as_chunks::<2>().0.iter().enumerate() {
            for (w, word) in left.as_chunks::<4>().0.iter().chain(right.as_chunks::<4>().0).enumerate() {
                message[w][lane] = u32::from_le_bytes(*word);
            }
        }
        let constants = [
            [IV[0]; LANES],
            [IV[1]; LANES],
            [IV[2]; LANES],
            [IV[3]; LANES],
            [0; LANES],
            [0; LANES],
            [BLOCK_LEN as u32; LANES],
        ];
        let flags = [[PARENT; LANES]];
        let mut cv: [[u32; LANES]; 8] = core::array::from_fn(|i| [IV[i]; LANES]);
        let mut scratch = [[0u32; LANES]; 16];
        // SAFETY: as in hash8, with one block.
        unsafe {
            cairn_b3x8_chunks(
                cv.as_mut_ptr(),
                &message,
                constants.as_ptr(),
                flags.as_ptr(),
                scratch.as_mut_ptr(),
                1,
            )
        };
        lanes_out(&cv, out);
    }

    /// Each lane's chaining value as bytes, from the routine's rows.
    fn lanes_out(cv: &[[u32; LANES]; 8], out: &mut [[u8; 32]; LANES]) {
        for (lane, out) in out.iter_mut().enumerate() {
            for (i, row) in cv.iter().enumerate() {
                out[4 * i..4 * i + 4].copy_from_slice(&row[lane].to_le_bytes());
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
                Buf((0..len)
                    .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed).rotate_left((i % 7) as u32))
                    .collect())
            }
        }
    }

    #[test]
    fn every_length_class_matches_blake3() {
        if !available() {
            return; // Nothing to compare on a CPU without AVX2.
        }
        for len in [
            0,
            1,
            64,
            1023,
            1024,
            1025,
            2048,
            4096,
            8191,
            8192,
            8193,
            16384,
            3 * 8192 + 17,
            65536,
            100_000,
            1 << 20,
        ] {
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
