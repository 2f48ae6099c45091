//! The kernel heap: size classes (`cairn-slab`) for every allocation of up to 2 KiB, so that
//! millions of small objects and index entries stay as fast to allocate as the first, in front
//! of `linked_list_allocator` over one contiguous run of physical memory, which serves larger
//! allocations and the classes' slabs.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;

use cairn_slab::{SLAB_ALIGN, SLAB_BYTES, SlabStats, Slabs};
use linked_list_allocator::LockedHeap;
use spin::Mutex;

struct KernelHeap {
    general: LockedHeap,
    small: Mutex<Slabs>,
}

const SLAB: Layout = match Layout::from_size_align(SLAB_BYTES, SLAB_ALIGN) {
    Ok(layout) => layout,
    Err(_) => panic!("a slab's layout is valid"),
};

// SAFETY: small allocations come from the free lists of their class, refilled with slabs the
// general heap hands out and never takes back, so every block is used by one owner at a time;
// everything else is the general heap's, which is a correct allocator. Both are locked.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = cairn_slab::class_of(layout) else {
            // SAFETY: the caller's contract, passed on.
            return unsafe { self.general.alloc(layout) };
        };
        let mut small = self.small.lock();
        if let Some(block) = small.pop(class) {
            return block.as_ptr();
        }
        // SAFETY: SLAB has a non-zero size.
        let Some(slab) = NonNull::new(unsafe { self.general.alloc(SLAB) }) else {
            return core::ptr::null_mut();
        };
        // SAFETY: the slab was just allocated with SLAB's size and alignment, is ours alone, and
        // is never given back to the general heap.
        unsafe { small.refill(class, slab) };
        small.pop(class).map_or(core::ptr::null_mut(), NonNull::as_ptr)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match (cairn_slab::class_of(layout), NonNull::new(ptr)) {
            // SAFETY: the caller's contract: `ptr` came from `alloc` with this layout, so from
            // this class's list, and is no longer used.
            (Some(class), Some(block)) => unsafe { self.small.lock().push(class, block) },
            // SAFETY: as above, from the general heap.
            _ => unsafe { self.general.dealloc(ptr, layout) },
        }
    }
}

#[global_allocator]
static HEAP: KernelHeap = KernelHeap { general: LockedHeap::empty(), small: Mutex::new(Slabs::new()) };

pub fn init(start: u64, bytes: usize) {
    // SAFETY: memory::init hands over a range that is mapped, unused and reserved for the heap
    // for the life of the kernel; init is called exactly once.
    unsafe { HEAP.general.lock().init(start as *mut u8, bytes) };
}

/// (used, free) bytes of the general heap (slabs count as used), for self tests and stats.
pub fn usage() -> (usize, usize) {
    let heap = HEAP.general.lock();
    (heap.used(), heap.free())
}

/// Slabs taken and small blocks live.
pub fn small_stats() -> SlabStats {
    HEAP.small.lock().stats()
}
