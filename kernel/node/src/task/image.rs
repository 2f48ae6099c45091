//! Loaded task images, cached per procedure: the read-only and executable pages of an ELF are
//! prepared once and lent to every task that runs it; only writable pages are copied per task.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::vec::Vec;

use cairn_elf::LoadPlan;
use cairn_eval::Failure;
use cairn_object::Handle;

use crate::memory::FRAME_SIZE;
use crate::memory::aspace::{AddressSpace, Perm};
use crate::memory::{OwnedFrame, objects::NodeStore};

/// At most this many images stay cached; the least recently loaded one goes first.
const CACHED_IMAGES: usize = 32;

struct Page {
    virt: u64,
    perm: Perm,
    content: Content,
}

enum Content {
    /// Never written by tasks: one frame lent read-only to all of them.
    Shared(OwnedFrame),
    /// Written by tasks: each gets a copy of these bytes.
    Template(alloc::boxed::Box<[u8; FRAME_SIZE as usize]>),
}

pub struct Image {
    pub entry: u64,
    pub pages: u64,
    layout: Vec<Page>,
}

impl Image {
    fn load(elf: &[u8], procedure: &Handle) -> Result<Image, Failure> {
        let plan: LoadPlan =
            cairn_elf::plan(elf).map_err(|e| Failure::InvalidThunk(format!("procedure {procedure}: {e}")))?;
        let mut layout = Vec::new();
        for segment in &plan.segments {
            let perm = Perm { write: segment.perms.write, execute: segment.perms.execute };
            let (first, end) = segment.pages();
            for virt in (first..end).step_by(FRAME_SIZE as usize) {
                let mut bytes = [0u8; FRAME_SIZE as usize];
                // The part of this page backed by the file (the rest is zero: .bss).
                let lo = virt.max(segment.vaddr);
                let hi = (virt + FRAME_SIZE).min(segment.vaddr + segment.file_size);
                if lo < hi {
                    let from = (segment.file_offset + (lo - segment.vaddr)) as usize;
                    bytes[(lo - virt) as usize..(hi - virt) as usize]
                        .copy_from_slice(&elf[from..from + (hi - lo) as usize]);
                }
                let content = if perm.write {
                    Content::Template(alloc::boxed::Box::new(bytes))
                } else {
                    let mut frame = OwnedFrame::alloc().ok_or(Failure::NodeOutOfMemory)?;
                    frame.bytes_mut().copy_from_slice(&bytes);
                    Content::Shared(frame)
                };
                layout.push(Page { virt, perm, content });
            }
        }
        Ok(Image { entry: plan.entry, pages: plan.pages(), layout })
    }

    /// Puts every writable page of an address space that already maps this image back to its
    /// initial contents; `false` if the space does not map it as expected.
    pub fn reset(&self, space: &mut AddressSpace) -> bool {
        self.layout.iter().all(|page| match &page.content {
            Content::Shared(_) => true,
            Content::Template(bytes) => space.refill_if_written(page.virt, |f| f.copy_from_slice(&bytes[..])),
        })
    }

    /// Maps the image into a task's address space.
    pub fn map_into(&self, space: &mut AddressSpace) -> Result<(), Failure> {
        for page in &self.layout {
            let mapped = match &page.content {
                Content::Shared(frame) => space.map_borrowed(page.virt, frame.phys(), page.perm),
                Content::Template(bytes) => {
                    space.map_new_filled(page.virt, page.perm, |f| f.copy_from_slice(&bytes[..])).map(|_| ())
                }
            };
            mapped.map_err(|_| Failure::NodeOutOfMemory)?;
        }
        Ok(())
    }
}

#[derive(Default)]
pub struct ImageCache {
    images: BTreeMap<Handle, (u64, Image)>,
    clock: u64,
}

impl ImageCache {
    pub fn get(&mut self, store: &NodeStore, procedure: &Handle) -> Result<&Image, Failure> {
        use cairn_object::store::Store;
        self.clock += 1;
        if !self.images.contains_key(procedure) {
            let elf = store.get(procedure).ok_or(Failure::MissingObject(*procedure))?;
            let image = Image::load(&elf, procedure)?;
            if self.images.len() >= CACHED_IMAGES {
                let oldest = self.images.iter().min_by_key(|(_, (used, _))| *used).map(|(h, _)| *h);
                if let Some(h) = oldest {
                    self.images.remove(&h);
                }
            }
            self.images.insert(*procedure, (self.clock, image));
        }
        let entry = self.images.get_mut(procedure).expect("present");
        entry.0 = self.clock;
        Ok(&entry.1)
    }
}
