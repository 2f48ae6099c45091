//! The kernel's page-table mapper, on top of the bootloader's tables and the linear map.

use core::sync::atomic::{AtomicU64, Ordering};

use spin::Mutex;
use x86_64::registers::control::Cr3;
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageTable, PageTableFlags, PhysFrame, Size4KiB, Translate,
    mapper::MapToError, mapper::UnmapError,
};
use x86_64::{PhysAddr, VirtAddr};

static NEXT_MMIO: AtomicU64 = AtomicU64::new(MMIO_BASE);
static KERNEL_PML4: AtomicU64 = AtomicU64::new(0);
static MAPPER: Mutex<Option<OffsetPageTable<'static>>> = Mutex::new(None);

/// Kernel-managed virtual ranges, above the bootloader's (which config.rs keeps below
/// 0xffff_c000_0000_0000).
pub const MMIO_BASE: u64 = 0xffff_d000_0000_0000;
pub const SCRATCH_BASE: u64 = 0xffff_e000_0000_0000;

pub fn init(phys_offset: u64) {
    let (l4_frame, _) = Cr3::read();
    KERNEL_PML4.store(l4_frame.start_address().as_u64(), Ordering::Relaxed);
    let l4_virt = phys_offset + l4_frame.start_address().as_u64();
    // SAFETY: CR3 points at the active level-4 table, which lies in the linear map at
    // phys_offset; this is the only mutable reference the kernel ever creates to it.
    let mapper =
        unsafe { OffsetPageTable::new(&mut *(l4_virt as *mut PageTable), VirtAddr::new(phys_offset)) };
    *MAPPER.lock() = Some(mapper);
    // Create the level-3 tables of the kernel-managed windows now: task address spaces copy
    // the kernel's level-4 entries when they are made, so the set must not grow later.
    for window in [MMIO_BASE, SCRATCH_BASE] {
        if let Some(frame) = super::alloc_frame() {
            let flags = PageTableFlags::PRESENT | PageTableFlags::NO_EXECUTE;
            if map_page(window, frame, flags).is_ok() {
                let _ = unmap_page(window);
            }
            let _ = super::free_frames(frame, 1);
        }
    }
}

/// Physical address of the kernel's level-4 table.
pub fn kernel_pml4() -> u64 {
    KERNEL_PML4.load(Ordering::Relaxed)
}

struct KernelFrames;

// SAFETY: frames come from the kernel's frame allocator, which hands each one out once.
unsafe impl FrameAllocator<Size4KiB> for KernelFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        super::alloc_frame().map(|p| PhysFrame::containing_address(PhysAddr::new(p)))
    }
}

#[derive(Debug)]
pub enum MapError {
    OutOfFrames,
    AlreadyMapped(u64),
    NotMapped(u64),
    Misaligned(u64),
}

impl core::fmt::Display for MapError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MapError::OutOfFrames => write!(f, "no free frame for a page table"),
            MapError::AlreadyMapped(v) => write!(f, "page {v:#x} is already mapped"),
            MapError::NotMapped(v) => write!(f, "page {v:#x} is not mapped"),
            MapError::Misaligned(v) => write!(f, "address {v:#x} is not page aligned"),
        }
    }
}

fn page(virt: u64) -> Result<Page<Size4KiB>, MapError> {
    Page::from_start_address(VirtAddr::try_new(virt).map_err(|_| MapError::Misaligned(virt))?)
        .map_err(|_| MapError::Misaligned(virt))
}

/// Maps one 4 KiB page `virt` to frame `phys`.
pub fn map_page(virt: u64, phys: u64, flags: PageTableFlags) -> Result<(), MapError> {
    let page = page(virt)?;
    let frame = PhysFrame::from_start_address(PhysAddr::new(phys)).map_err(|_| MapError::Misaligned(phys))?;
    let mut guard = MAPPER.lock();
    let mapper = guard.as_mut().expect("paging::init runs first");
    // SAFETY: callers map frames they own (fresh frames or device memory) at addresses in the
    // kernel-managed ranges above, so no existing Rust reference is aliased or invalidated.
    let result = unsafe { mapper.map_to(page, frame, flags, &mut KernelFrames) };
    match result {
        Ok(flush) => {
            flush.flush();
            Ok(())
        }
        Err(MapToError::FrameAllocationFailed) => Err(MapError::OutOfFrames),
        Err(_) => Err(MapError::AlreadyMapped(virt)),
    }
}

/// Unmaps `virt` and returns the frame it pointed at (which the caller still owns).
pub fn unmap_page(virt: u64) -> Result<u64, MapError> {
    let page = page(virt)?;
    let mut guard = MAPPER.lock();
    let mapper = guard.as_mut().expect("paging::init runs first");
    match mapper.unmap(page) {
        Ok((frame, flush)) => {
            flush.flush();
            Ok(frame.start_address().as_u64())
        }
        Err(UnmapError::PageNotMapped) => Err(MapError::NotMapped(virt)),
        Err(_) => Err(MapError::NotMapped(virt)),
    }
}

/// Maps `len` bytes of device memory at physical `phys` into the MMIO window, uncached, and
/// returns the virtual address of `phys`.
pub fn map_mmio(phys: u64, len: u64) -> Result<u64, MapError> {
    let first = phys & !0xfff;
    let pages = (phys + len.max(1) - first).div_ceil(0x1000);
    let base = NEXT_MMIO.fetch_add(pages * 0x1000, Ordering::Relaxed);
    let flags = PageTableFlags::PRESENT
        | PageTableFlags::WRITABLE
        | PageTableFlags::NO_CACHE
        | PageTableFlags::WRITE_THROUGH
        | PageTableFlags::NO_EXECUTE;
    for i in 0..pages {
        map_page(base + i * 0x1000, first + i * 0x1000, flags)?;
    }
    Ok(base + (phys - first))
}

/// Physical address behind `virt`, if mapped.
pub fn translate(virt: u64) -> Option<u64> {
    let guard = MAPPER.lock();
    guard.as_ref()?.translate_addr(VirtAddr::try_new(virt).ok()?).map(|p| p.as_u64())
}

/// Like [`translate`], but gives up instead of waiting if the page tables are locked (the
/// fault handler may have interrupted a mapping in progress).
pub fn try_translate(virt: u64) -> Option<u64> {
    let guard = MAPPER.try_lock()?;
    guard.as_ref()?.translate_addr(VirtAddr::try_new(virt).ok()?).map(|p| p.as_u64())
}
