//! A task's address space: the kernel half shared (supervisor-only), the lower half the task's
//! own. Frames the space allocated are freed with it; frames it borrowed (objects mapped
//! read-only from the store) are marked and left alone.

use x86_64::registers::control::{Cr3, Cr3Flags};
use x86_64::structures::paging::mapper::MapToError;
use x86_64::structures::paging::{
    Mapper, OffsetPageTable, Page, PageTable, PageTableFlags, PhysFrame, Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

use super::paging::MapError;
use super::{FRAME_SIZE, alloc_frame, free_frames, phys_to_virt};

/// Marks a leaf that maps a frame the address space does not own.
const BORROWED: PageTableFlags = PageTableFlags::BIT_9;
const TABLE_FLAGS: PageTableFlags =
    PageTableFlags::PRESENT.union(PageTableFlags::WRITABLE).union(PageTableFlags::USER_ACCESSIBLE);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perm {
    pub write: bool,
    pub execute: bool,
}

impl Perm {
    pub const READ: Perm = Perm { write: false, execute: false };
    pub const READ_WRITE: Perm = Perm { write: true, execute: false };

    fn flags(self) -> PageTableFlags {
        let mut flags = PageTableFlags::PRESENT | PageTableFlags::USER_ACCESSIBLE;
        if self.write {
            flags |= PageTableFlags::WRITABLE;
        }
        if !self.execute {
            flags |= PageTableFlags::NO_EXECUTE;
        }
        flags
    }
}

pub struct AddressSpace {
    pml4: u64,
}

struct Frames;

// SAFETY: frames come from the kernel allocator, each handed out once, zeroed.
unsafe impl x86_64::structures::paging::FrameAllocator<Size4KiB> for Frames {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        alloc_frame().map(|p| PhysFrame::containing_address(PhysAddr::new(p)))
    }
}

impl AddressSpace {
    pub fn new() -> Result<AddressSpace, MapError> {
        let pml4 = alloc_frame().ok_or(MapError::OutOfFrames)?;
        let kernel = super::paging::kernel_pml4();
        // SAFETY: both tables are page-table frames in the linear map; the new one is ours
        // alone, and the kernel's upper-half entries are only read.
        unsafe {
            let src = &*(phys_to_virt(kernel) as *const PageTable);
            let dst = &mut *(phys_to_virt(pml4) as *mut PageTable);
            for i in 256..512 {
                dst[i] = src[i].clone();
            }
        }
        Ok(AddressSpace { pml4 })
    }

    fn mapper(&mut self) -> OffsetPageTable<'_> {
        // SAFETY: pml4 is this space's level-4 table in the linear map; `&mut self` makes this
        // the only mapper for it.
        unsafe {
            OffsetPageTable::new(
                &mut *(phys_to_virt(self.pml4) as *mut PageTable),
                VirtAddr::new(phys_to_virt(0) as u64),
            )
        }
    }

    fn map(&mut self, virt: u64, phys: u64, flags: PageTableFlags) -> Result<(), MapError> {
        let page = Page::<Size4KiB>::from_start_address(VirtAddr::new(virt))
            .map_err(|_| MapError::Misaligned(virt))?;
        let frame =
            PhysFrame::from_start_address(PhysAddr::new(phys)).map_err(|_| MapError::Misaligned(phys))?;
        // SAFETY: lower-half mappings of this space only; the kernel never holds references
        // into them except through `read`/`write` below, which translate first.
        let result =
            unsafe { self.mapper().map_to_with_table_flags(page, frame, flags, TABLE_FLAGS, &mut Frames) };
        match result {
            // Not the active space, or a fresh page: no stale TLB entry to flush either way
            // unless active, and flushing is cheap.
            Ok(flush) => {
                flush.flush();
                Ok(())
            }
            Err(MapToError::FrameAllocationFailed) => Err(MapError::OutOfFrames),
            Err(_) => Err(MapError::AlreadyMapped(virt)),
        }
    }

    /// Maps a fresh zeroed frame the space owns; returns its physical address.
    pub fn map_new(&mut self, virt: u64, perm: Perm) -> Result<u64, MapError> {
        let phys = alloc_frame().ok_or(MapError::OutOfFrames)?;
        if let Err(e) = self.map(virt, phys, perm.flags()) {
            let _ = free_frames(phys, 1);
            return Err(e);
        }
        Ok(phys)
    }

    /// Maps a fresh frame the space owns after `fill` has written its contents (the frame is
    /// zeroed first, and not yet visible to the task while `fill` runs).
    pub fn map_new_filled(
        &mut self,
        virt: u64,
        perm: Perm,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<u64, MapError> {
        let phys = alloc_frame().ok_or(MapError::OutOfFrames)?;
        // SAFETY: the frame was just allocated to us alone and lies in the linear map.
        fill(unsafe { core::slice::from_raw_parts_mut(phys_to_virt(phys), FRAME_SIZE as usize) });
        if let Err(e) = self.map(virt, phys, perm.flags()) {
            let _ = free_frames(phys, 1);
            return Err(e);
        }
        Ok(phys)
    }

    /// Rewrites the contents of a page this space owns (a task's writable page being reset).
    /// `false` if the page is not mapped or not owned.
    pub fn refill(&mut self, virt: u64, fill: impl FnOnce(&mut [u8])) -> bool {
        match self.translate(virt) {
            Some((phys, flags)) if !flags.contains(BORROWED) => {
                let frame = phys & !(FRAME_SIZE - 1);
                // SAFETY: an owned frame of this space, in the linear map; the task is not running.
                fill(unsafe { core::slice::from_raw_parts_mut(phys_to_virt(frame), FRAME_SIZE as usize) });
                true
            }
            _ => false,
        }
    }

    /// Like [`refill`](Self::refill), but only if the task ever wrote the page (the CPU's dirty
    /// bit; it is left set, since clearing it would cost a TLB flush on every reset).
    /// `false` if the page is not an owned mapping.
    pub fn refill_if_written(&mut self, virt: u64, fill: impl FnOnce(&mut [u8])) -> bool {
        match self.translate(virt) {
            Some((_, flags)) if flags.contains(BORROWED) => false,
            Some((_, flags)) if !flags.contains(PageTableFlags::DIRTY) => true,
            Some((phys, _)) => {
                let frame = phys & !(FRAME_SIZE - 1);
                // SAFETY: an owned frame of this space, in the linear map; the task is not running.
                fill(unsafe { core::slice::from_raw_parts_mut(phys_to_virt(frame), FRAME_SIZE as usize) });
                true
            }
            None => false,
        }
    }

    /// Unmaps a page, freeing its frame if this space owns it.
    pub fn unmap(&mut self, virt: u64) -> Result<(), MapError> {
        let page = Page::<Size4KiB>::from_start_address(VirtAddr::new(virt))
            .map_err(|_| MapError::Misaligned(virt))?;
        let owned = matches!(self.translate(virt), Some((_, flags)) if !flags.contains(BORROWED));
        let (frame, flush) = self.mapper().unmap(page).map_err(|_| MapError::NotMapped(virt))?;
        flush.flush();
        if owned {
            let _ = free_frames(frame.start_address().as_u64(), 1);
        }
        Ok(())
    }

    /// Maps a frame someone else owns (it must outlive this space), read-only.
    pub fn map_borrowed(&mut self, virt: u64, phys: u64, perm: Perm) -> Result<(), MapError> {
        self.map(virt, phys, perm.flags() | BORROWED)
    }

    /// The level-1 table that would hold `virt`'s entry, if the tables down to it exist.
    fn leaf_table(&self, virt: u64) -> Option<u64> {
        // A direct walk: task mappings are always 4 KiB pages in the lower half, and this runs
        // on every syscall and reset, where the generic mapper's checks cost too much.
        if virt >= cairn_uspace::USER_END {
            return None;
        }
        let mut table = self.pml4;
        for level in (2..=4).rev() {
            let index = (virt >> (12 + 9 * (level - 1))) as usize & 511;
            // SAFETY: `table` is a page table of this space (the root, or a present non-leaf
            // entry's target), in the linear map; it is only read.
            let entry = unsafe { &(&*(phys_to_virt(table) as *const PageTable))[index] };
            if !entry.flags().contains(PageTableFlags::PRESENT)
                || entry.flags().contains(PageTableFlags::HUGE_PAGE)
            {
                return None;
            }
            table = entry.addr().as_u64();
        }
        Some(table)
    }

    /// The physical address and flags behind a user address.
    fn translate(&mut self, virt: u64) -> Option<(u64, PageTableFlags)> {
        let table = self.leaf_table(virt)?;
        // SAFETY: a level-1 table of this space, in the linear map; it is only read.
        let entry = unsafe { &(&*(phys_to_virt(table) as *const PageTable))[(virt >> 12) as usize & 511] };
        let flags = entry.flags();
        flags.contains(PageTableFlags::PRESENT).then(|| (entry.addr().as_u64() + (virt & 0xfff), flags))
    }

    /// Whether a user page is mapped at all.
    pub fn is_mapped(&mut self, virt: u64) -> bool {
        self.translate(virt).is_some()
    }

    /// Records that the kernel wrote the page at `virt`, as the CPU would have had the task
    /// written it, so that a reset restores it: the kernel writes through the linear map,
    /// which leaves the task's own dirty bit clear.
    fn mark_written(&mut self, virt: u64) {
        let Some(table) = self.leaf_table(virt) else { return };
        // SAFETY: a level-1 table of this space, in the linear map; `&mut self` makes this the
        // only reference, and the task is not running. Setting DIRTY on a present entry needs
        // no TLB flush: the CPU itself only ever sets it.
        let entry =
            unsafe { &mut (&mut *(phys_to_virt(table) as *mut PageTable))[(virt >> 12) as usize & 511] };
        if entry.flags().contains(PageTableFlags::PRESENT) {
            entry.set_flags(entry.flags() | PageTableFlags::DIRTY);
        }
    }

    /// Copies task memory into `out`; `false` if any byte is not mapped for the task.
    pub fn read(&mut self, virt: u64, out: &mut [u8]) -> bool {
        self.copy(virt, out.len(), false, |chunk_virt, offset, len| {
            // SAFETY: `chunk_virt` is the linear-map address of mapped task memory (checked by
            // `copy`), and `out` is a distinct kernel buffer.
            unsafe { core::ptr::copy_nonoverlapping(chunk_virt, out.as_mut_ptr().add(offset), len) };
        })
    }

    /// Copies `bytes` into task memory; `false` if any byte is not mapped writable for the task.
    /// The pages written count as written by the task ([`Self::mark_written`]).
    pub fn write(&mut self, virt: u64, bytes: &[u8]) -> bool {
        let copied = self.copy(virt, bytes.len(), true, |chunk_virt, offset, len| {
            // SAFETY: as in `read`, and the page is writable for the task.
            unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr().add(offset), chunk_virt, len) };
        });
        if copied && !bytes.is_empty() {
            let last = (virt + bytes.len() as u64 - 1) & !(FRAME_SIZE - 1);
            for page in ((virt & !(FRAME_SIZE - 1))..=last).step_by(FRAME_SIZE as usize) {
                self.mark_written(page);
            }
        }
        copied
    }

    fn copy(
        &mut self,
        virt: u64,
        len: usize,
        write: bool,
        mut each: impl FnMut(*mut u8, usize, usize),
    ) -> bool {
        if !cairn_uspace::user_range(virt, len as u64) {
            return false;
        }
        let allowed = |flags: PageTableFlags| {
            flags.contains(PageTableFlags::USER_ACCESSIBLE)
                && (!write || flags.contains(PageTableFlags::WRITABLE))
        };
        // The common case, within one page: one walk.
        if len > 0 && virt / FRAME_SIZE == (virt + len as u64 - 1) / FRAME_SIZE {
            return match self.translate(virt) {
                Some((phys, flags)) if allowed(flags) => {
                    each(phys_to_virt(phys), 0, len);
                    true
                }
                _ => false,
            };
        }
        // Check every page first so that a failed copy changes nothing.
        let mut done = 0;
        while done < len {
            let at = virt + done as u64;
            let chunk = (FRAME_SIZE - at % FRAME_SIZE).min((len - done) as u64) as usize;
            match self.translate(at) {
                Some((_, flags)) if allowed(flags) => {}
                _ => return false,
            }
            done += chunk;
        }
        let mut done = 0;
        while done < len {
            let at = virt + done as u64;
            let chunk = (FRAME_SIZE - at % FRAME_SIZE).min((len - done) as u64) as usize;
            let (phys, _) = self.translate(at).expect("checked above");
            each(phys_to_virt(phys), done, chunk);
            done += chunk;
        }
        true
    }

    pub fn is_active(&self) -> bool {
        Cr3::read().0.start_address().as_u64() == self.pml4
    }

    /// Makes this the active address space.
    pub fn activate(&self) {
        let frame = PhysFrame::containing_address(PhysAddr::new(self.pml4));
        // SAFETY: the kernel half is identical to the kernel's own tables, so kernel code and
        // data stay mapped across the switch.
        unsafe { Cr3::write(frame, Cr3Flags::empty()) };
    }
}

/// Switches back to the kernel's own tables (before a task's space is dropped).
pub fn activate_kernel() {
    let frame = PhysFrame::containing_address(PhysAddr::new(super::paging::kernel_pml4()));
    // SAFETY: the kernel's level-4 table maps all kernel memory.
    unsafe { Cr3::write(frame, Cr3Flags::empty()) };
}

impl Drop for AddressSpace {
    fn drop(&mut self) {
        if self.is_active() {
            activate_kernel();
        }
        // SAFETY: walks only the lower half of this space's own tables, which no one else uses
        // (the space is not active: callers switch to the kernel's tables first).
        unsafe { free_tables(self.pml4, 4) };
        let _ = free_frames(self.pml4, 1);
    }
}

/// Frees the lower-half subtree under the table at `phys` (level 4 .. 1).
///
/// # Safety
/// `phys` must be a page table of a task address space that is not active.
unsafe fn free_tables(phys: u64, level: u8) {
    // SAFETY: per the contract, a page table frame in the linear map.
    let table = unsafe { &mut *(phys_to_virt(phys) as *mut PageTable) };
    let entries = if level == 4 { 0..256 } else { 0..512 };
    for i in entries {
        let entry = &mut table[i];
        if !entry.flags().contains(PageTableFlags::PRESENT) {
            continue;
        }
        let child = entry.addr().as_u64();
        if level > 1 {
            // SAFETY: a present non-leaf entry of a task table points at a task page table.
            unsafe { free_tables(child, level - 1) };
            let _ = free_frames(child, 1);
        } else if !entry.flags().contains(BORROWED) {
            let _ = free_frames(child, 1);
        }
        entry.set_unused();
    }
}
