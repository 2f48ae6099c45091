//! The kernel heap: `linked_list_allocator` over one contiguous run of physical memory.

use linked_list_allocator::LockedHeap;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

pub fn init(start: u64, bytes: usize) {
    // SAFETY: memory::init hands over a range that is mapped, unused and reserved for the heap
    // for the life of the kernel; init is called exactly once.
    unsafe { HEAP.lock().init(start as *mut u8, bytes) };
}

/// (used, free) bytes, for self tests and stats.
pub fn usage() -> (usize, usize) {
    let heap = HEAP.lock();
    (heap.used(), heap.free())
}
