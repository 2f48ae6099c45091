//! Physical frames, page tables and the kernel heap, built from the boot memory map.
//!
//! The bootloader maps all physical memory at `phys_offset` (at least the first 4 GiB, which
//! covers the local APIC and 32-bit BARs). The frame bitmap and the heap live in that linear
//! map; [`paging`] maps everything else (MMIO above 4 GiB, task address spaces).

pub mod aspace;
pub mod heap;
pub mod objects;
pub mod paging;

use bootloader_api::BootInfo;
use bootloader_api::info::MemoryRegionKind;
pub use cairn_frames::FRAME_SIZE;
use cairn_frames::{FrameAllocator, Region};
use core::sync::atomic::{AtomicU64, Ordering};
use spin::Mutex;

const MAX_REGIONS: usize = 256;
/// The heap gets this share of usable memory (the rest stays as frames for page tables, DMA
/// and task address spaces).
const HEAP_SHARE_PERCENT: u64 = 50;
const MIN_HEAP_BYTES: u64 = 4 << 20;

static FRAMES: Mutex<Option<FrameAllocator<'static>>> = Mutex::new(None);
static PHYS_OFFSET: AtomicU64 = AtomicU64::new(0);
static KERNEL_IMAGE_BASE: AtomicU64 = AtomicU64::new(0);
/// One past the highest physical address the linear map covers.
static LINEAR_END: AtomicU64 = AtomicU64::new(0);

#[derive(Clone, Copy, Debug)]
pub struct MemoryReport {
    pub usable_bytes: u64,
    pub heap_bytes: u64,
    pub free_frames: u64,
    pub regions: usize,
}

#[derive(Debug)]
pub enum InitError {
    NoPhysicalMapping,
    TooManyRegions,
    NoRoomForBitmap { bytes: u64 },
    NoRoomForHeap,
}

impl core::fmt::Display for InitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            InitError::NoPhysicalMapping => write!(f, "bootloader did not map physical memory"),
            InitError::TooManyRegions => {
                write!(f, "memory map has more than {MAX_REGIONS} usable regions")
            }
            InitError::NoRoomForBitmap { bytes } => {
                write!(f, "no usable region can hold the {bytes}-byte frame bitmap")
            }
            InitError::NoRoomForHeap => write!(f, "no contiguous memory for a 4 MiB heap"),
        }
    }
}

pub fn init(boot_info: &BootInfo) -> Result<MemoryReport, InitError> {
    let phys_offset = boot_info.physical_memory_offset.into_option().ok_or(InitError::NoPhysicalMapping)?;
    PHYS_OFFSET.store(phys_offset, Ordering::Relaxed);
    KERNEL_IMAGE_BASE.store(boot_info.kernel_image_offset, Ordering::Relaxed);

    let mut usable = [Region::new(0, 0); MAX_REGIONS];
    let mut count = 0;
    for r in boot_info.memory_regions.iter().filter(|r| r.kind == MemoryRegionKind::Usable) {
        // Keep page 0 out: a null physical address must never be a valid frame.
        let start = r.start.max(FRAME_SIZE);
        if start >= r.end {
            continue;
        }
        // UEFI splits memory into many adjacent pieces; merging them keeps the list short.
        if count > 0 && usable[count - 1].end == start {
            usable[count - 1].end = r.end;
            continue;
        }
        *usable.get_mut(count).ok_or(InitError::TooManyRegions)? = Region::new(start, r.end);
        count += 1;
    }
    let usable = &usable[..count];
    // The bootloader maps up to the end of the memory map, and at least 4 GiB.
    let map_end = boot_info.memory_regions.iter().map(|r| r.end).max().unwrap_or(0).max(4 << 30);
    LINEAR_END.store(map_end, Ordering::Relaxed);
    let usable_bytes: u64 = usable.iter().map(|r| r.end - r.start).sum();

    // The bitmap goes at the start of the first region large enough to hold it.
    let words = FrameAllocator::storage_words(usable.iter().copied());
    let bitmap_bytes = (words as u64 * 8).next_multiple_of(FRAME_SIZE);
    let bitmap_phys = usable
        .iter()
        .map(|r| r.start.next_multiple_of(FRAME_SIZE))
        .zip(usable.iter())
        .find(|(start, r)| start + bitmap_bytes <= r.end)
        .map(|(start, _)| start)
        .ok_or(InitError::NoRoomForBitmap { bytes: bitmap_bytes })?;
    // SAFETY: [bitmap_phys, +bitmap_bytes) is usable RAM inside the bootloader's linear map, and
    // it is reserved below so that no frame allocation can ever hand it out again.
    let storage = unsafe { core::slice::from_raw_parts_mut((phys_offset + bitmap_phys) as *mut u64, words) };
    let reserved = [Region::new(bitmap_phys, bitmap_phys + bitmap_bytes)];
    let mut frames = FrameAllocator::new(storage, usable.iter().copied(), &reserved);

    // The heap is one physically contiguous run used through the linear map: no page-table
    // work at boot, and huge pages from the bootloader's mapping.
    let mut heap_frames = (usable_bytes * HEAP_SHARE_PERCENT / 100) / FRAME_SIZE;
    let heap_phys = loop {
        if heap_frames * FRAME_SIZE < MIN_HEAP_BYTES {
            return Err(InitError::NoRoomForHeap);
        }
        if let Some(phys) = frames.alloc_contiguous(heap_frames, 2 << 20) {
            break phys;
        }
        heap_frames = heap_frames * 3 / 4;
    };
    let heap_bytes = heap_frames * FRAME_SIZE;
    heap::init(phys_offset + heap_phys, heap_bytes as usize);

    let free_frames = frames.free_frames();
    *FRAMES.lock() = Some(frames);
    paging::init(phys_offset);
    Ok(MemoryReport { usable_bytes, heap_bytes, free_frames, regions: count })
}

pub fn phys_to_virt(phys: u64) -> *mut u8 {
    (PHYS_OFFSET.load(Ordering::Relaxed) + phys) as *mut u8
}

pub fn linear_map_end() -> u64 {
    LINEAR_END.load(Ordering::Relaxed)
}

pub fn kernel_image_base() -> u64 {
    KERNEL_IMAGE_BASE.load(Ordering::Relaxed)
}

/// A zeroed physical frame, or `None` when memory is exhausted.
pub fn alloc_frame() -> Option<u64> {
    let frame = FRAMES.lock().as_mut()?.alloc()?;
    // SAFETY: the frame was just handed out to us alone, and it lies in the linear map.
    unsafe { core::ptr::write_bytes(phys_to_virt(frame), 0, FRAME_SIZE as usize) };
    Some(frame)
}

/// A zeroed frame wholly below physical address `limit`, for hardware that only reaches low
/// memory; `None` if there is none.
pub fn alloc_frame_below(limit: u64) -> Option<u64> {
    let frame = FRAMES.lock().as_mut()?.alloc_below(limit)?;
    // SAFETY: as in alloc_frame.
    unsafe { core::ptr::write_bytes(phys_to_virt(frame), 0, FRAME_SIZE as usize) };
    Some(frame)
}

/// `len` bytes of physical memory at `phys`, read through the linear map: for firmware tables.
/// `None` if any of it lies outside the map.
pub fn read_physical(phys: u64, len: usize) -> Option<&'static [u8]> {
    if phys == 0 || phys.checked_add(len as u64)? > linear_map_end() {
        return None;
    }
    // SAFETY: the range lies inside the bootloader's linear map of physical memory, which stays
    // mapped for the kernel's lifetime; callers only read firmware tables, which nothing writes.
    Some(unsafe { core::slice::from_raw_parts(phys_to_virt(phys), len) })
}

pub fn alloc_contiguous(count: u64, align: u64) -> Option<u64> {
    FRAMES.lock().as_mut()?.alloc_contiguous(count, align)
}

pub fn free_frames(phys: u64, count: u64) -> Result<(), cairn_frames::FreeError> {
    match FRAMES.lock().as_mut() {
        Some(frames) => frames.free_contiguous(phys, count),
        None => Err(cairn_frames::FreeError::NotManaged(phys)),
    }
}

pub fn free_frame_count() -> u64 {
    FRAMES.lock().as_ref().map_or(0, |f| f.free_frames())
}

/// True if `[addr, addr + len)` is mapped in the kernel half; used by the backtrace walker so it
/// never faults on a corrupt frame pointer. Answers false while the page tables are locked.
pub fn is_mapped_kernel(addr: u64, len: u64) -> bool {
    if addr < 0xffff_8000_0000_0000 || addr.checked_add(len).is_none() {
        return false;
    }
    let first = addr & !(FRAME_SIZE - 1);
    let last = (addr + len - 1) & !(FRAME_SIZE - 1);
    (first..=last).step_by(FRAME_SIZE as usize).all(|page| paging::try_translate(page).is_some())
}

/// The ramdisk the bootloader loaded, if any.
pub fn boot_ramdisk(boot_info: &BootInfo) -> Option<&'static [u8]> {
    let addr = boot_info.ramdisk_addr.into_option()?;
    // SAFETY: the bootloader mapped the ramdisk at `addr` for `ramdisk_len` bytes, outside every
    // usable region, and nothing ever writes to it.
    Some(unsafe { core::slice::from_raw_parts(addr as *const u8, boot_info.ramdisk_len as usize) })
}

/// One physical frame owned by its holder, zeroed on allocation and freed on drop.
pub struct OwnedFrame {
    phys: u64,
}

impl OwnedFrame {
    pub fn alloc() -> Option<OwnedFrame> {
        alloc_frame().map(|phys| OwnedFrame { phys })
    }

    pub fn phys(&self) -> u64 {
        self.phys
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the frame is ours alone (the allocator handed it out once) and lies in the
        // linear map; the borrow of self keeps it alive.
        unsafe { core::slice::from_raw_parts(phys_to_virt(self.phys), FRAME_SIZE as usize) }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes this the only reference.
        unsafe { core::slice::from_raw_parts_mut(phys_to_virt(self.phys), FRAME_SIZE as usize) }
    }
}

impl Drop for OwnedFrame {
    fn drop(&mut self) {
        if let Err(e) = free_frames(self.phys, 1) {
            log::error!("leaking frame: {e}");
        }
    }
}
