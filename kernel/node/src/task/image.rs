//! Loaded task images, cached per procedure: the read-only pages of an ELF that hold file bytes
//! are prepared once and lent to every task that runs it; writable ones are copied per task.
//! Pages with no file bytes (`.bss`, and any other zero fill) cost nothing until a task touches
//! them: they are paged in on demand, so an image's memory is bounded by its file, never by
//! the sizes its headers claim.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::vec::Vec;

use cairn_elf::LoadPlan;
use cairn_eval::Failure;
use cairn_object::Handle;
use spin::Once;

use crate::memory::FRAME_SIZE;
use crate::memory::aspace::{AddressSpace, Perm};
use crate::memory::{OwnedFrame, objects::NodeStore};

/// At most this many images stay cached, and their pages take at most [`CACHE_BYTES`]; the
/// least recently used images go first.
const CACHED_IMAGES: usize = 32;
const CACHE_BYTES: u64 = 64 << 20;

/// A page of the image that holds bytes from the file.
struct FilePage {
    virt: u64,
    /// Read-only pages are lent to every task; writable ones are a template each task copies.
    frame: OwnedFrame,
}

struct Segment {
    perm: Perm,
    /// The pages the segment covers.
    start: u64,
    end: u64,
    /// The pages among them that hold file bytes, by address; the rest are zero.
    file_pages: Vec<FilePage>,
}

pub struct Image {
    pub entry: u64,
    /// Pages the image covers, charged to every task's memory limit.
    pub pages: u64,
    segments: Vec<Segment>,
}

/// The page every read-only zero page of every image maps to. Nothing ever writes it.
static ZERO_FRAME: Once<Option<OwnedFrame>> = Once::new();

fn zero_frame() -> Option<u64> {
    ZERO_FRAME.call_once(OwnedFrame::alloc).as_ref().map(OwnedFrame::phys)
}

/// What a task's touch of an image page it has not mapped yet means.
pub enum ZeroFill {
    /// A zero page of the image, to map with these permissions.
    Page(Perm),
    /// Not a zero page of the image, or an access its permissions forbid.
    No,
}

impl Image {
    fn load(elf: &[u8], plan: LoadPlan) -> Result<Image, Failure> {
        let mut segments = Vec::new();
        segments.try_reserve_exact(plan.segments.len()).map_err(|_| Failure::NodeOutOfMemory)?;
        for segment in &plan.segments {
            let perm = Perm { write: segment.perms.write, execute: segment.perms.execute };
            let (start, end) = segment.pages();
            let file_end = segment.vaddr + segment.file_size;
            // Only pages that hold file bytes get memory now: at most the file's size.
            let file_range = if segment.file_size == 0 {
                start..start
            } else {
                (segment.vaddr & !(FRAME_SIZE - 1))..file_end.next_multiple_of(FRAME_SIZE).min(end)
            };
            let mut file_pages = Vec::new();
            file_pages
                .try_reserve_exact(((file_range.end - file_range.start) / FRAME_SIZE) as usize)
                .map_err(|_| Failure::NodeOutOfMemory)?;
            for virt in file_range.step_by(FRAME_SIZE as usize) {
                let mut frame = OwnedFrame::alloc().ok_or(Failure::NodeOutOfMemory)?;
                let bytes = frame.bytes_mut();
                bytes.fill(0);
                let lo = virt.max(segment.vaddr);
                let hi = (virt + FRAME_SIZE).min(file_end);
                if lo < hi {
                    // cairn_elf checked that the file range lies inside the file.
                    let from = (segment.file_offset + (lo - segment.vaddr)) as usize;
                    bytes[(lo - virt) as usize..(hi - virt) as usize]
                        .copy_from_slice(&elf[from..from + (hi - lo) as usize]);
                }
                file_pages.push(FilePage { virt, frame });
            }
            segments.push(Segment { perm, start, end, file_pages });
        }
        Ok(Image { entry: plan.entry, pages: plan.pages(), segments })
    }

    /// Memory the image holds while cached.
    fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.file_pages.len() as u64 * FRAME_SIZE).sum()
    }

    /// Puts every writable file page of an address space that already maps this image back to
    /// its initial contents; `false` if the space does not map it as expected. (Zero pages a
    /// task touched were added to the space, and its reset unmaps them.)
    pub fn reset(&self, space: &mut AddressSpace) -> bool {
        self.segments.iter().filter(|s| s.perm.write).all(|s| {
            s.file_pages
                .iter()
                .all(|page| space.refill_if_written(page.virt, |f| f.copy_from_slice(page.frame.bytes())))
        })
    }

    /// Maps the image's file pages into a task's address space; zero pages come on demand.
    pub fn map_into(&self, space: &mut AddressSpace) -> Result<(), Failure> {
        for segment in &self.segments {
            for page in &segment.file_pages {
                let mapped = if segment.perm.write {
                    space
                        .map_new_filled(page.virt, segment.perm, |f| f.copy_from_slice(page.frame.bytes()))
                        .map(|_| ())
                } else {
                    space.map_borrowed(page.virt, page.frame.phys(), segment.perm)
                };
                mapped.map_err(|_| Failure::NodeOutOfMemory)?;
            }
        }
        Ok(())
    }

    /// Whether `addr`, not mapped, is a zero page of the image that an access of this kind may
    /// touch.
    pub fn zero_fill(&self, addr: u64, write: bool, execute: bool) -> ZeroFill {
        let Some(segment) = self.segments.iter().find(|s| (s.start..s.end).contains(&addr)) else {
            return ZeroFill::No;
        };
        let page = addr & !(FRAME_SIZE - 1);
        let is_file_page = segment.file_pages.binary_search_by_key(&page, |p| p.virt).is_ok();
        if is_file_page || (write && !segment.perm.write) || (execute && !segment.perm.execute) {
            return ZeroFill::No;
        }
        ZeroFill::Page(segment.perm)
    }

    /// Maps the zero page at `page` for a task: a fresh frame if writable, else the shared zero
    /// frame, lent read-only.
    pub fn map_zero(space: &mut AddressSpace, page: u64, perm: Perm) -> Result<(), Failure> {
        let mapped = if perm.write {
            space.map_new(page, perm).map(|_| ())
        } else {
            let zero = zero_frame().ok_or(Failure::NodeOutOfMemory)?;
            space.map_borrowed(page, zero, perm)
        };
        mapped.map_err(|_| Failure::NodeOutOfMemory)
    }
}

#[derive(Default)]
pub struct ImageCache {
    images: BTreeMap<Handle, (u64, Image)>,
    clock: u64,
    bytes: u64,
}

impl ImageCache {
    /// The image of `procedure`, loading it if need be, but only if `fits` its page count:
    /// an image too large for the task's limit is refused from its headers, before any of it
    /// is loaded.
    pub fn get(
        &mut self,
        store: &NodeStore,
        procedure: &Handle,
        fits: impl Fn(u64) -> bool,
    ) -> Result<&Image, Failure> {
        use cairn_object::store::Store;
        self.clock += 1;
        if !self.images.contains_key(procedure) {
            let elf = store.get(procedure).ok_or(Failure::MissingObject(*procedure))?;
            let plan = cairn_elf::plan(&elf)
                .map_err(|e| Failure::InvalidThunk(format!("procedure {procedure}: {e}")))?;
            if !fits(plan.pages()) {
                return Err(Failure::OutOfMemory { limit: 0 });
            }
            // Room first, the new image's pages counted at most: two large images used in turn
            // must not both be held while one loads.
            let most = plan.pages().saturating_mul(4096);
            while !self.images.is_empty()
                && (self.images.len() >= CACHED_IMAGES || self.bytes.saturating_add(most) > CACHE_BYTES)
            {
                let oldest = self.images.iter().min_by_key(|(_, (used, _))| *used).map(|(h, _)| *h);
                if let Some((_, evicted)) = oldest.and_then(|h| self.images.remove(&h)) {
                    self.bytes -= evicted.bytes();
                }
            }
            let image = Image::load(&elf, plan)?;
            self.bytes += image.bytes();
            self.images.insert(*procedure, (self.clock, image));
        }
        let entry = self.images.get_mut(procedure).ok_or(Failure::MissingObject(*procedure))?;
        entry.0 = self.clock;
        Ok(&entry.1)
    }
}
