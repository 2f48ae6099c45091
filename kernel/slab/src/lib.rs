//! Size classes for the kernel heap. A node holds millions of small objects (and their index
//! entries); a first-fit list allocator slows down as its free list grows with them (measured:
//! 10,000 creates/s fell to 600/s). Here every allocation of at most [`MAX_SMALL`] bytes comes
//! from the free list of its size class, a power of two from 16 to 2048 bytes: taking and
//! returning a block is O(1) however many are live. Lists are refilled with whole slabs that
//! the caller gets from the general heap; blocks freed go back to their list, not to the heap.
//!
//! The lists are intrusive: a free block holds the address of the next. That is the one use of
//! raw memory here, confined to [`Slabs::pop`], [`Slabs::push`] and [`Slabs::refill`], whose
//! callers promise the blocks are theirs to hand over.

#![no_std]

use core::alloc::Layout;
use core::ptr::NonNull;

/// The classes: 16, 32, ..., 2048 bytes.
pub const CLASSES: usize = 8;
const MIN_SHIFT: u32 = 4;
/// The largest allocation served from a class; larger ones go to the general heap.
pub const MAX_SMALL: usize = 16 << (CLASSES - 1);
/// A slab: what a class's list is refilled with at once.
pub const SLAB_BYTES: usize = 64 * 1024;
/// Slabs are aligned to this, so every block is aligned to its own size.
pub const SLAB_ALIGN: usize = 4096;

/// The class of an allocation, if a class serves it: its size and alignment rounded up to a
/// power of two of at least 16 and at most [`MAX_SMALL`] (a block of class `c` is aligned to
/// its size, so any alignment up to it is met).
pub fn class_of(layout: Layout) -> Option<usize> {
    let size = layout.size().max(layout.align()).max(1 << MIN_SHIFT);
    if size > MAX_SMALL {
        return None;
    }
    Some((size.next_power_of_two().trailing_zeros() - MIN_SHIFT) as usize)
}

/// Bytes of a block of class `c`.
pub const fn block_bytes(class: usize) -> usize {
    1 << (class as u32 + MIN_SHIFT)
}

/// Counts for the boot log and STATS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlabStats {
    /// Slabs taken from the general heap.
    pub slabs: u64,
    /// Blocks handed out and not returned.
    pub live: u64,
}

/// The free lists of every class.
pub struct Slabs {
    heads: [Option<NonNull<u8>>; CLASSES],
    stats: SlabStats,
}

// SAFETY: the lists hold addresses of memory the owner handed over; nothing in them refers to
// a thread. Whoever shares a Slabs between CPUs wraps it in a lock.
unsafe impl Send for Slabs {}

impl Default for Slabs {
    fn default() -> Self {
        Slabs::new()
    }
}

impl Slabs {
    pub const fn new() -> Slabs {
        Slabs { heads: [None; CLASSES], stats: SlabStats { slabs: 0, live: 0 } }
    }

    pub fn stats(&self) -> SlabStats {
        self.stats
    }

    /// A free block of class `class`, or `None` if its list is empty (refill it, then ask again).
    pub fn pop(&mut self, class: usize) -> Option<NonNull<u8>> {
        let block = self.heads[class]?;
        // SAFETY: every block on a list was given to `push` or `refill`, whose callers promise
        // it is at least a word long, aligned, and ours until popped; its first word holds the
        // next block's address (or zero), written there by `link`.
        let next = unsafe { block.cast::<usize>().as_ptr().read() };
        self.heads[class] = NonNull::new(next as *mut u8);
        self.stats.live += 1;
        Some(block)
    }

    /// Returns a block to its class's list.
    ///
    /// # Safety
    /// `block` must have come from [`Slabs::pop`] for the same `class`, and no one may use it
    /// after this call.
    pub unsafe fn push(&mut self, class: usize, block: NonNull<u8>) {
        // SAFETY: the caller's promise: the block is ours and at least a word long, aligned.
        unsafe { self.link(class, block) };
        self.stats.live = self.stats.live.saturating_sub(1);
    }

    /// # Safety
    /// `block` must be at least a word long, word-aligned, and unused by anyone.
    unsafe fn link(&mut self, class: usize, block: NonNull<u8>) {
        let next = self.heads[class].map_or(0, |n| n.as_ptr() as usize);
        // SAFETY: per the contract, the block's first word is ours to write.
        unsafe { block.cast::<usize>().as_ptr().write(next) };
        self.heads[class] = Some(block);
    }

    /// Carves a slab of [`SLAB_BYTES`] at `slab` into blocks of class `class` and puts them on
    /// its list.
    ///
    /// # Safety
    /// `slab` must point at [`SLAB_BYTES`] bytes aligned to [`SLAB_ALIGN`], unused by anyone,
    /// that stay valid for as long as this `Slabs` hands out blocks of them.
    pub unsafe fn refill(&mut self, class: usize, slab: NonNull<u8>) {
        let size = block_bytes(class);
        // Last block first, so that the list hands them out in address order.
        for i in (0..SLAB_BYTES / size).rev() {
            // SAFETY: block i lies inside the slab (i * size < SLAB_BYTES), aligned to its size.
            unsafe { self.link(class, slab.add(i * size)) };
        }
        self.stats.slabs += 1;
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;
    use std::alloc::{alloc, dealloc};
    use std::collections::BTreeMap;
    use std::vec::Vec;

    /// Slabs from the host's allocator, freed at the end.
    struct Arena {
        slabs: Slabs,
        taken: Vec<NonNull<u8>>,
    }

    const SLAB: Layout = match Layout::from_size_align(SLAB_BYTES, SLAB_ALIGN) {
        Ok(l) => l,
        Err(_) => panic!(),
    };

    impl Arena {
        fn new() -> Arena {
            Arena { slabs: Slabs::new(), taken: Vec::new() }
        }
        fn alloc(&mut self, layout: Layout) -> NonNull<u8> {
            let class = class_of(layout).unwrap();
            if let Some(b) = self.slabs.pop(class) {
                return b;
            }
            // SAFETY: a fresh host allocation of the slab layout, kept until the arena drops.
            let slab = NonNull::new(unsafe { alloc(SLAB) }).unwrap();
            self.taken.push(slab);
            unsafe { self.slabs.refill(class, slab) };
            self.slabs.pop(class).unwrap()
        }
    }

    impl Drop for Arena {
        fn drop(&mut self) {
            for slab in self.taken.drain(..) {
                // SAFETY: allocated in `alloc` with this layout.
                unsafe { dealloc(slab.as_ptr(), SLAB) };
            }
        }
    }

    #[test]
    fn classes_cover_sizes_and_alignments() {
        let l = |size, align| Layout::from_size_align(size, align).unwrap();
        assert_eq!(class_of(l(1, 1)), Some(0));
        assert_eq!(class_of(l(16, 8)), Some(0));
        assert_eq!(class_of(l(17, 1)), Some(1));
        assert_eq!(class_of(l(40, 8)), Some(2));
        assert_eq!(class_of(l(8, 64)), Some(2), "alignment rounds up the class");
        assert_eq!(class_of(l(2048, 1)), Some(7));
        assert_eq!(class_of(l(2049, 1)), None);
        assert_eq!(class_of(l(16, 4096)), None);
        assert_eq!(block_bytes(7), MAX_SMALL);
    }

    proptest! {
        /// Whatever the order of allocations and frees, live blocks never overlap, are aligned
        /// and big enough, and freed blocks are handed out again.
        #[test]
        fn blocks_never_overlap_and_are_reused(ops in proptest::collection::vec((1usize..3000, 0u8..4, any::<bool>()), 1..2000)) {
            let mut arena = Arena::new();
            let mut live: BTreeMap<usize, (usize, Layout)> = BTreeMap::new();
            for (size, align_shift, free_one) in ops {
                if free_one && let Some((&addr, &(_, layout))) = live.iter().next() {
                    live.remove(&addr);
                    let class = class_of(layout).unwrap();
                    unsafe { arena.slabs.push(class, NonNull::new(addr as *mut u8).unwrap()) };
                    continue;
                }
                let layout = Layout::from_size_align(size, 1 << (align_shift * 2)).unwrap();
                if class_of(layout).is_none() {
                    continue;
                }
                let block = arena.alloc(layout).as_ptr() as usize;
                prop_assert_eq!(block % layout.align(), 0);
                let len = block_bytes(class_of(layout).unwrap());
                prop_assert!(len >= size);
                if let Some((&prev, &(prev_len, _))) = live.range(..=block).next_back() {
                    prop_assert!(prev + prev_len <= block, "overlaps the block before");
                }
                if let Some((&next, _)) = live.range(block + 1..).next() {
                    prop_assert!(block + len <= next, "overlaps the block after");
                }
                live.insert(block, (len, layout));
            }
            prop_assert_eq!(arena.slabs.stats().live, live.len() as u64);
        }
    }

    #[test]
    fn a_freed_block_comes_back_first() {
        let mut arena = Arena::new();
        let layout = Layout::from_size_align(100, 8).unwrap();
        let a = arena.alloc(layout);
        let _b = arena.alloc(layout);
        unsafe { arena.slabs.push(class_of(layout).unwrap(), a) };
        assert_eq!(arena.alloc(layout), a);
        assert_eq!(arena.slabs.stats().slabs, 1);
    }
}
