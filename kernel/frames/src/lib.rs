//! A bitmap allocator of 4 KiB physical frames.
//!
//! The kernel hands it the usable regions of the boot memory map and a piece of memory to keep
//! the bitmap in; everything else is plain arithmetic, so it is tested here on the host. It
//! supports single frames (page tables, task pages) and physically contiguous runs (virtio DMA
//! queues), and it refuses to free what it did not hand out.

#![no_std]

use core::fmt;

pub const FRAME_SIZE: u64 = 4096;

/// A half-open range `[start, end)` of physical addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    pub end: u64,
}

impl Region {
    pub const fn new(start: u64, end: u64) -> Region {
        Region { start, end }
    }

    /// The frame numbers wholly inside this region.
    fn frames(self) -> core::ops::Range<u64> {
        let first = self.start.div_ceil(FRAME_SIZE);
        let end = self.end / FRAME_SIZE;
        first..end.max(first)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreeError {
    /// The address is not frame-aligned.
    Misaligned(u64),
    /// The frame was never usable memory.
    NotManaged(u64),
    /// The frame is already free.
    DoubleFree(u64),
}

impl fmt::Display for FreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FreeError::Misaligned(a) => write!(f, "frame address {a:#x} is not 4 KiB aligned"),
            FreeError::NotManaged(a) => write!(f, "frame {a:#x} is not managed memory"),
            FreeError::DoubleFree(a) => write!(f, "frame {a:#x} is already free"),
        }
    }
}

/// Bitmap over the frames from the lowest to the highest usable one; a set bit is a free frame.
/// A second bitmap remembers which frames are managed at all, so that a stray free of a hole in
/// the memory map (firmware, MMIO) is caught instead of corrupting the pool.
pub struct FrameAllocator<'a> {
    free: &'a mut [u64],
    managed: &'a mut [u64],
    base_frame: u64,
    frame_count: u64,
    free_count: u64,
    managed_count: u64,
    /// Word index where the last single-frame search ended; the next search starts there.
    hint: usize,
}

impl<'a> FrameAllocator<'a> {
    /// How many `u64` words of storage [`FrameAllocator::new`] needs for these regions
    /// (both bitmaps together).
    pub fn storage_words(regions: impl IntoIterator<Item = Region>) -> usize {
        match span(regions) {
            Some((lo, hi)) => 2 * words_for(hi - lo),
            None => 0,
        }
    }

    /// Builds an allocator in which every whole frame of `usable` is free, except those that
    /// overlap a `reserved` region (for example the memory that holds `storage` itself).
    /// `storage` must have at least [`FrameAllocator::storage_words`] words.
    pub fn new(
        storage: &'a mut [u64],
        usable: impl IntoIterator<Item = Region> + Clone,
        reserved: &[Region],
    ) -> FrameAllocator<'a> {
        let (lo, hi) = span(usable.clone()).unwrap_or((0, 0));
        let words = words_for(hi - lo);
        assert!(storage.len() >= 2 * words, "frame bitmap storage too small");
        let (free, rest) = storage.split_at_mut(words);
        let managed = &mut rest[..words];
        free.fill(0);
        managed.fill(0);
        // Whole words at a time: a few hundred thousand frames are set up in microseconds even
        // under emulation, where a per-frame loop cost tens of milliseconds.
        for frames in usable.into_iter().map(Region::frames).filter(|f| !f.is_empty()) {
            let range = (frames.start - lo) as usize..(frames.end - lo) as usize;
            set_bits(managed, range.clone(), true);
            set_bits(free, range, true);
        }
        for r in reserved {
            let first = (r.start / FRAME_SIZE).clamp(lo, hi);
            let end = r.end.div_ceil(FRAME_SIZE).clamp(lo, hi);
            if first < end {
                set_bits(free, (first - lo) as usize..(end - lo) as usize, false);
            }
        }
        let count = |bits: &[u64]| bits.iter().map(|w| u64::from(w.count_ones())).sum();
        FrameAllocator {
            free_count: count(free),
            managed_count: count(managed),
            free,
            managed,
            base_frame: lo,
            frame_count: hi - lo,
            hint: 0,
        }
    }

    pub fn free_frames(&self) -> u64 {
        self.free_count
    }

    pub fn managed_frames(&self) -> u64 {
        self.managed_count
    }

    /// Allocates one frame and returns its physical address.
    pub fn alloc(&mut self) -> Option<u64> {
        if self.free_count == 0 {
            return None;
        }
        let words = self.free.len();
        for step in 0..words {
            let w = (self.hint + step) % words;
            if self.free[w] != 0 {
                let bit = self.free[w].trailing_zeros() as usize;
                self.free[w] &= !(1 << bit);
                self.free_count -= 1;
                self.hint = w;
                return Some(self.addr_of(w * 64 + bit));
            }
        }
        None
    }

    /// Allocates `count` physically contiguous frames whose first address is a multiple of
    /// `align` bytes (a power of two, at least [`FRAME_SIZE`]).
    pub fn alloc_contiguous(&mut self, count: u64, align: u64) -> Option<u64> {
        if count == 0 || count > self.free_count || !align.is_power_of_two() {
            return None;
        }
        let align_frames = (align / FRAME_SIZE).max(1);
        let mut idx = 0u64;
        while idx + count <= self.frame_count {
            let frame = self.base_frame + idx;
            let misalign = frame % align_frames;
            if misalign != 0 {
                idx += align_frames - misalign;
                continue;
            }
            let run = idx as usize..(idx + count) as usize;
            match find_bit(self.free, run.clone(), false) {
                // Restart just past the taken frame: no run through it can work.
                Some(taken) => idx = taken as u64 + 1,
                None => {
                    set_bits(self.free, run, false);
                    self.free_count -= count;
                    return Some(frame * FRAME_SIZE);
                }
            }
        }
        None
    }

    /// Allocates the lowest free frame that lies wholly below physical address `limit`; for
    /// hardware that can only reach low memory (a second CPU starts in real mode, under 1 MiB).
    pub fn alloc_below(&mut self, limit: u64) -> Option<u64> {
        let end = (limit / FRAME_SIZE).saturating_sub(self.base_frame).min(self.frame_count) as usize;
        let idx = find_bit(self.free, 0..end, true)?;
        self.set_free(idx, false);
        self.free_count -= 1;
        Some(self.addr_of(idx))
    }

    /// Returns one frame to the pool.
    pub fn free(&mut self, addr: u64) -> Result<(), FreeError> {
        self.free_contiguous(addr, 1)
    }

    /// Returns `count` frames starting at `addr`; nothing is freed if any of them is invalid.
    pub fn free_contiguous(&mut self, addr: u64, count: u64) -> Result<(), FreeError> {
        if !addr.is_multiple_of(FRAME_SIZE) {
            return Err(FreeError::Misaligned(addr));
        }
        for i in 0..count {
            let a = addr + i * FRAME_SIZE;
            let idx = self.index_of(a).ok_or(FreeError::NotManaged(a))?;
            if self.managed[idx / 64] & (1 << (idx % 64)) == 0 {
                return Err(FreeError::NotManaged(a));
            }
            if self.is_free(idx) {
                return Err(FreeError::DoubleFree(a));
            }
        }
        for i in 0..count {
            let idx = self.index_of(addr + i * FRAME_SIZE).expect("checked above");
            self.set_free(idx, true);
        }
        self.free_count += count;
        Ok(())
    }

    fn addr_of(&self, idx: usize) -> u64 {
        (self.base_frame + idx as u64) * FRAME_SIZE
    }

    fn index_of(&self, addr: u64) -> Option<usize> {
        let frame = addr / FRAME_SIZE;
        (frame >= self.base_frame && frame < self.base_frame + self.frame_count)
            .then(|| (frame - self.base_frame) as usize)
    }

    fn is_free(&self, idx: usize) -> bool {
        self.free[idx / 64] & (1 << (idx % 64)) != 0
    }

    fn set_free(&mut self, idx: usize, free: bool) {
        if free {
            self.free[idx / 64] |= 1 << (idx % 64);
        } else {
            self.free[idx / 64] &= !(1 << (idx % 64));
        }
    }
}

/// Lowest and one-past-highest whole frame number over all regions.
fn span(regions: impl IntoIterator<Item = Region>) -> Option<(u64, u64)> {
    regions.into_iter().map(Region::frames).filter(|f| !f.is_empty()).fold(None, |acc, f| match acc {
        None => Some((f.start, f.end)),
        Some((lo, hi)) => Some((lo.min(f.start), hi.max(f.end))),
    })
}

/// Sets or clears bits `range` of `bits`, a word at a time where it can.
fn set_bits(bits: &mut [u64], range: core::ops::Range<usize>, value: bool) {
    let mut i = range.start;
    while i < range.end {
        let (word, bit) = (i / 64, i % 64);
        let n = (64 - bit).min(range.end - i);
        let mask = if n == 64 { !0 } else { ((1u64 << n) - 1) << bit };
        if value {
            bits[word] |= mask;
        } else {
            bits[word] &= !mask;
        }
        i += n;
    }
}

/// The first index in `range` whose bit equals `value`.
fn find_bit(bits: &[u64], range: core::ops::Range<usize>, value: bool) -> Option<usize> {
    let mut i = range.start;
    while i < range.end {
        let (word, bit) = (i / 64, i % 64);
        let n = (64 - bit).min(range.end - i);
        let mask = if n == 64 { !0 } else { ((1u64 << n) - 1) << bit };
        let w = if value { bits[word] } else { !bits[word] } & mask;
        if w != 0 {
            return Some(word * 64 + w.trailing_zeros() as usize);
        }
        i += n;
    }
    None
}

fn words_for(frames: u64) -> usize {
    frames.div_ceil(64) as usize
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;
    use std::vec;
    use std::vec::Vec;

    fn storage_for(regions: &[Region]) -> Vec<u64> {
        vec![0; FrameAllocator::storage_words(regions.iter().copied())]
    }

    #[test]
    fn hands_out_only_whole_usable_frames() {
        // A partial frame at each end of the first region, and a hole between the regions.
        let regions = [Region::new(0x1800, 0x5800), Region::new(0x10000, 0x12000)];
        let mut storage = storage_for(&regions);
        let mut fa = FrameAllocator::new(&mut storage, regions.iter().copied(), &[]);
        assert_eq!(fa.managed_frames(), 3 + 2);
        let got: BTreeSet<u64> = core::iter::from_fn(|| fa.alloc()).collect();
        let want: BTreeSet<u64> = [0x2000, 0x3000, 0x4000, 0x10000, 0x11000].into();
        assert_eq!(got, want);
        assert_eq!(fa.free_frames(), 0);
    }

    #[test]
    fn reserved_frames_are_never_handed_out() {
        let regions = [Region::new(0, 0x10000)];
        let mut storage = storage_for(&regions);
        let mut fa =
            FrameAllocator::new(&mut storage, regions.iter().copied(), &[Region::new(0x3000, 0x4001)]);
        let got: Vec<u64> = core::iter::from_fn(|| fa.alloc()).collect();
        assert_eq!(got.len(), 14);
        assert!(!got.contains(&0x3000) && !got.contains(&0x4000));
    }

    #[test]
    fn contiguous_runs_respect_alignment_and_holes() {
        let regions = [Region::new(0x1000, 0x4000), Region::new(0x5000, 0x20000)];
        let mut storage = storage_for(&regions);
        let mut fa = FrameAllocator::new(&mut storage, regions.iter().copied(), &[]);
        // Four frames cannot start at 0x1000 (hole at 0x4000); the first 16 KiB-aligned start
        // with four free frames after it is 0x8000.
        assert_eq!(fa.alloc_contiguous(4, 0x4000), Some(0x8000));
        assert_eq!(fa.alloc_contiguous(3, 0x1000), Some(0x1000));
        assert_eq!(fa.alloc_contiguous(100, 0x1000), None);
        fa.free_contiguous(0x8000, 4).unwrap();
        assert_eq!(fa.alloc_contiguous(4, 0x4000), Some(0x8000));
    }

    #[test]
    fn low_frames_come_lowest_first_and_only_below_the_limit() {
        let regions = [Region::new(0x1000, 0x4000), Region::new(0x9000, 0x20000)];
        let mut storage = storage_for(&regions);
        let mut fa =
            FrameAllocator::new(&mut storage, regions.iter().copied(), &[Region::new(0x1000, 0x2000)]);
        assert_eq!(fa.alloc_below(0x3000), Some(0x2000));
        // 0x3000 ends at the limit 0x4000, so it fits; nothing else below 0x4000 is left.
        assert_eq!(fa.alloc_below(0x4000), Some(0x3000));
        assert_eq!(fa.alloc_below(0x9fff), None, "a frame must end at or below the limit");
        assert_eq!(fa.alloc_below(0xa000), Some(0x9000));
        assert_eq!(fa.alloc_below(0), None);
        assert_eq!(fa.free_frames(), 0x17 - 1);
        fa.free(0x2000).unwrap();
        assert_eq!(fa.alloc_below(u64::MAX), Some(0x2000));
    }

    #[test]
    fn bad_frees_are_refused_and_change_nothing() {
        let regions = [Region::new(0x10000, 0x20000)];
        let mut storage = storage_for(&regions);
        let mut fa = FrameAllocator::new(&mut storage, regions.iter().copied(), &[]);
        let a = fa.alloc().unwrap();
        let before = fa.free_frames();
        assert_eq!(fa.free(a + 1), Err(FreeError::Misaligned(a + 1)));
        assert_eq!(fa.free(0x1000), Err(FreeError::NotManaged(0x1000)));
        assert_eq!(fa.free_contiguous(a, 2), Err(FreeError::DoubleFree(a + 0x1000)));
        assert_eq!(fa.free_frames(), before);
        fa.free(a).unwrap();
        assert_eq!(fa.free(a), Err(FreeError::DoubleFree(a)));
    }

    #[test]
    fn empty_memory_map_allocates_nothing() {
        let mut storage = [];
        let mut fa = FrameAllocator::new(&mut storage, core::iter::empty(), &[]);
        assert_eq!(fa.alloc(), None);
        assert_eq!(fa.alloc_contiguous(1, FRAME_SIZE), None);
    }

    proptest! {
        /// The word-at-a-time bit helpers agree with a plain vector of booleans.
        #[test]
        fn bit_helpers_match_a_naive_model(
            ops in proptest::collection::vec((0usize..300, 0usize..300, any::<bool>()), 1..40)
        ) {
            let mut bits = vec![0u64; 5];
            let mut model = vec![false; 320];
            for (a, b, value) in ops {
                let range = a.min(b)..a.max(b);
                set_bits(&mut bits, range.clone(), value);
                model[range.clone()].iter_mut().for_each(|m| *m = value);
                for want in [false, true] {
                    let expected = range.clone().find(|&i| model[i] == want);
                    prop_assert_eq!(find_bit(&bits, range.clone(), want), expected);
                }
            }
            for (i, &m) in model.iter().enumerate() {
                prop_assert_eq!(bits[i / 64] & (1 << (i % 64)) != 0, m);
            }
        }

        /// Any sequence of allocations and frees keeps the pool consistent: no frame is handed
        /// out twice, every frame handed out is usable, and the free count adds up.
        #[test]
        fn never_hands_out_a_frame_twice(
            ops in proptest::collection::vec((0u8..3, 1u64..6, 0usize..64), 1..200)
        ) {
            let regions = [Region::new(0x3000, 0x40000), Region::new(0x50000, 0x58000)];
            let mut storage = storage_for(&regions);
            let mut fa = FrameAllocator::new(&mut storage, regions.iter().copied(), &[]);
            let total = fa.free_frames();
            let mut held: Vec<(u64, u64)> = Vec::new();
            for (op, count, pick) in ops {
                match op {
                    0 => if let Some(a) = fa.alloc() { held.push((a, 1)); },
                    1 => if let Some(a) = fa.alloc_contiguous(count, FRAME_SIZE << (count % 3)) {
                        held.push((a, count));
                    },
                    _ => if !held.is_empty() {
                        let (a, n) = held.swap_remove(pick % held.len());
                        fa.free_contiguous(a, n).unwrap();
                    },
                }
                let mut seen = BTreeSet::new();
                for &(a, n) in &held {
                    for i in 0..n {
                        let f = a + i * FRAME_SIZE;
                        prop_assert!(regions.iter().any(|r| f >= r.start && f + FRAME_SIZE <= r.end));
                        prop_assert!(seen.insert(f), "frame {:#x} handed out twice", f);
                    }
                }
                prop_assert_eq!(fa.free_frames() + seen.len() as u64, total);
            }
        }
    }
}
