//! Fuzzers that try to crash a Cairn node (docs/SECURITY.md, "What the node guarantees").
//!
//! - [`program`] and [`generate`]: the syscall fuzzer. A program is a byte string of operations
//!   (syscalls with arbitrary arguments, memory touches, short busy loops) that the `fuzz` task
//!   executes in ring 3; any byte string decodes to some program. The generator makes them from
//!   a seed; the kernel's `fuzz` mode and `cairn fuzz --node` run them.
//! - [`wire`] (feature `wire`, host side): the wire fuzzer. Valid frames of every message type,
//!   mutated, for the node's session and for a real node (`cairn fuzz-wire`).
//!
//! Pure `no_std` + `alloc`; everything is deterministic in its seed, so that any case a run
//! reports can be made again.

#![no_std]

extern crate alloc;

pub mod generate;
pub mod program;
#[cfg(feature = "wire")]
pub mod wire;

pub use generate::{check_program, program};
pub use program::{Decoder, Env, Op, Value};

/// SplitMix64: tiny, fast, and good enough to choose fuzz cases; the same seed gives the same
/// numbers on the host, in the kernel and in a task.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The generator of case `index` of a run seeded with `seed`: cases are independent, so any
    /// one can be made again without the ones before it.
    pub fn for_case(seed: u64, index: u64) -> Rng {
        let mut mixer = Rng(seed ^ index.wrapping_mul(0xd6e8_feb8_6659_fd93));
        Rng(mixer.next_u64())
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// An index into `weights`, chosen in proportion to them.
    pub fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let mut pick = self.below(total);
        for (i, &w) in weights.iter().enumerate() {
            if pick < u64::from(w) {
                return i;
            }
            pick -= u64::from(w);
        }
        weights.len() - 1
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// The `i`th byte of the pseudo-random pattern `seed` (what `Fill` writes): the task, the kernel
/// and the host compute the same bytes without sharing any.
pub fn pattern_byte(seed: u32, i: usize) -> u8 {
    let mut z = (u64::from(seed) << 32 | i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z ^= z >> 29;
    (z.wrapping_mul(0xbf58_476d_1ce4_e5b9) >> 56) as u8
}
