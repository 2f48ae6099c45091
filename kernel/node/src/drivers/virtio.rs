//! The `virtio-drivers` HAL: DMA memory from the frame allocator, BARs through the MMIO window,
//! and buffers outside the linear map (on a stack, say) bounced through DMA pages.

use alloc::collections::BTreeMap;
use core::ptr::NonNull;

use spin::Mutex;
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

use crate::memory::{self, FRAME_SIZE};

pub struct KernelHal;

/// Bounce pages lent to the device: device address → (driver buffer, pages).
static BOUNCES: Mutex<BTreeMap<u64, (usize, usize)>> = Mutex::new(BTreeMap::new());

fn linear_phys(virt: u64, len: u64) -> Option<u64> {
    let base = memory::phys_to_virt(0) as u64;
    // Heap and DMA memory live in the linear map, which is physically contiguous.
    let phys = virt.checked_sub(base)?;
    (phys.checked_add(len)? <= memory::linear_map_end()).then_some(phys)
}

// SAFETY: DMA pages come from the frame allocator (contiguous, zeroed, owned until dealloc);
// MMIO addresses are mapped uncached by paging::map_mmio; shared buffers are either in the
// linear map (so their physical address is exact) or copied through bounce pages.
unsafe impl Hal for KernelHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let phys = memory::alloc_contiguous(pages as u64, FRAME_SIZE).expect("DMA memory for virtio");
        let virt = memory::phys_to_virt(phys);
        // SAFETY: fresh frames, ours alone, in the linear map.
        unsafe { core::ptr::write_bytes(virt, 0, pages * FRAME_SIZE as usize) };
        (phys, NonNull::new(virt).expect("linear map is not null"))
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        match memory::free_frames(paddr, pages as u64) {
            Ok(()) => 0,
            Err(_) => -1,
        }
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        let virt = memory::paging::map_mmio(paddr, size as u64).expect("mapping a virtio BAR");
        NonNull::new(virt as *mut u8).expect("MMIO window is not null")
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> PhysAddr {
        let (virt, len) = (buffer.as_ptr() as *mut u8 as u64, buffer.len());
        if let Some(phys) = linear_phys(virt, len as u64) {
            return phys;
        }
        let pages = len.div_ceil(FRAME_SIZE as usize).max(1);
        let (phys, bounce) = Self::dma_alloc(pages, direction);
        if direction != BufferDirection::DeviceToDriver {
            // SAFETY: the caller lends us `buffer` for reading; the bounce pages are ours.
            unsafe { core::ptr::copy_nonoverlapping(virt as *const u8, bounce.as_ptr(), len) };
        }
        BOUNCES.lock().insert(phys, (virt as usize, pages));
        phys
    }

    unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, direction: BufferDirection) {
        let Some((virt, pages)) = BOUNCES.lock().remove(&paddr) else { return };
        if direction != BufferDirection::DriverToDevice {
            // SAFETY: the device is done with the bounce pages; `buffer` is the caller's, lent
            // for writing back.
            unsafe {
                core::ptr::copy_nonoverlapping(memory::phys_to_virt(paddr), virt as *mut u8, buffer.len())
            };
        }
        let _ = memory::free_frames(paddr, pages as u64);
    }
}
