//! The node's object store: the in-memory store of `cairn-object`, with large objects kept in
//! whole pages of their own so that a task can be given them read-only without a copy.

use alloc::alloc::{Layout, alloc, alloc_zeroed, dealloc};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use cairn_object::store::{MemStore, Store, StoreError, StoreStats};
use cairn_object::{Handle, Kind};

use super::{FRAME_SIZE, phys_to_virt};

/// Objects at least this large get pages of their own; smaller ones are copied when mapped.
const PAGE_ALIGNED_MIN: usize = 2048;

/// A page-aligned, page-rounded heap buffer: its pages hold nothing but its bytes (and zeros),
/// so they can be mapped into a task without leaking anything else.
struct PageBuf {
    ptr: NonNull<u8>,
    len: usize,
    layout: Layout,
}

// SAFETY: PageBuf owns its allocation exclusively; it is only written through `&mut self`.
unsafe impl Send for PageBuf {}

impl PageBuf {
    /// `len` zero bytes in pages of their own; None if the heap has no room.
    fn zeroed(len: usize) -> Option<PageBuf> {
        let layout = Self::layout(len)?;
        // SAFETY: layout has a non-zero size; a null result (no memory) is handled.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) })?;
        Some(PageBuf { ptr, len, layout })
    }

    /// Pages for `len` bytes that the caller will write in full (see [`UploadPages`]): only the
    /// padding after them is zeroed, since zeroing 64 MiB costs about 0.2 s under emulation.
    fn for_writing(len: usize) -> Option<PageBuf> {
        let layout = Self::layout(len)?;
        // SAFETY: layout has a non-zero size; a null result (no memory) is handled.
        let ptr = NonNull::new(unsafe { alloc(layout) })?;
        // SAFETY: the padding lies inside the allocation, after the first `len` bytes.
        unsafe { core::ptr::write_bytes(ptr.as_ptr().add(len), 0, layout.size() - len) };
        Some(PageBuf { ptr, len, layout })
    }

    fn layout(len: usize) -> Option<Layout> {
        Layout::from_size_align(len.max(1).next_multiple_of(FRAME_SIZE as usize), FRAME_SIZE as usize).ok()
    }

    fn copy_of(bytes: &[u8]) -> Option<PageBuf> {
        let mut buf = PageBuf::zeroed(bytes.len())?;
        buf.as_mut().copy_from_slice(bytes);
        Some(buf)
    }
}

impl AsRef<[u8]> for PageBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: ptr..ptr+len is initialised (zeroed at allocation) and lives as long as self.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl AsMut<[u8]> for PageBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in as_ref, and `&mut self` makes this the only reference.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for PageBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in copy_of with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// Bytes held by upload buffers not yet stored or dropped: they count against the store's room
/// so that several uploads at once cannot promise more memory than the store has.
static UPLOADS_IN_FLIGHT: AtomicU64 = AtomicU64::new(0);

/// Memory an upload is written into: pages of its own, so storing it needs no copy. Its bytes
/// are written front to back, and it becomes an object only once all of them have been, so its
/// uninitialised part is never read.
pub struct UploadPages {
    pages: Option<PageBuf>,
    len: u64,
    written: usize,
}

impl UploadPages {
    /// Writes `bytes` at `offset`, which must be where the last write ended.
    pub fn write_at(&mut self, offset: usize, bytes: &[u8]) {
        let Some(pages) = self.pages.as_mut() else { return };
        assert!(offset == self.written && offset + bytes.len() <= pages.len, "uploads are written in order, within bounds");
        // SAFETY: offset..offset+len lies inside the allocation (checked above), and `bytes`
        // cannot overlap memory this buffer owns exclusively.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), pages.ptr.as_ptr().add(offset), bytes.len()) };
        self.written += bytes.len();
    }

    /// The bytes; all of them must have been written.
    pub fn into_bytes(mut self) -> Bytes {
        let Some(pages) = self.pages.take() else { return Bytes::new() };
        assert_eq!(self.written, pages.len, "an upload becomes an object only when complete");
        Bytes::from_owner(pages)
    }
}

impl Drop for UploadPages {
    fn drop(&mut self) {
        UPLOADS_IN_FLIGHT.fetch_sub(self.len, Ordering::Relaxed);
    }
}

pub struct NodeStore {
    inner: MemStore,
}

impl NodeStore {
    pub fn new(limit_bytes: u64) -> NodeStore {
        NodeStore { inner: MemStore::new(limit_bytes) }
    }

    /// Bytes the store could still take, less what uploads in progress have been promised.
    pub fn room(&self) -> u64 {
        let stats = self.inner.stats();
        stats.limit.saturating_sub(stats.bytes).saturating_sub(UPLOADS_IN_FLIGHT.load(Ordering::Relaxed))
    }

    /// Zeroed pages for an upload of `len` bytes, if the store has room and the heap memory.
    pub fn upload_pages(&self, len: usize) -> Option<UploadPages> {
        if len as u64 > self.room() {
            return None;
        }
        let pages = PageBuf::for_writing(len)?;
        UPLOADS_IN_FLIGHT.fetch_add(len as u64, Ordering::Relaxed);
        Some(UploadPages { pages: Some(pages), len: len as u64, written: 0 })
    }

    /// Stores a finished upload (the bytes of an [`UploadPages`]) if it is the object `claimed`
    /// names. The bytes are already in pages of their own, so they are not copied again.
    pub fn put_upload(&mut self, claimed: &Handle, bytes: Bytes) -> Result<(), StoreError> {
        debug_assert!(bytes.is_empty() || bytes.as_ptr() as u64 % FRAME_SIZE == 0);
        self.inner.put_verified_placed(claimed, bytes, Some)
    }

    /// Large objects move into pages of their own; `None` if the heap has no room.
    fn placed(bytes: Bytes) -> Option<Bytes> {
        if bytes.len() < PAGE_ALIGNED_MIN {
            return Some(bytes);
        }
        PageBuf::copy_of(&bytes).map(Bytes::from_owner)
    }

    /// The physical pages holding an object, if it has pages of its own: `(first frame, len)`.
    pub fn frames_of(&self, handle: &Handle) -> Option<(u64, Bytes)> {
        let bytes = self.inner.get(handle)?;
        if bytes.len() < PAGE_ALIGNED_MIN || bytes.as_ptr() as u64 % FRAME_SIZE != 0 {
            return None;
        }
        let offset = phys_to_virt(0) as u64;
        let phys = (bytes.as_ptr() as u64).checked_sub(offset)?;
        Some((phys, bytes))
    }
}

impl Store for NodeStore {
    fn put(&mut self, kind: Kind, bytes: Bytes) -> Result<Handle, StoreError> {
        self.inner.put_placed(kind, bytes, Self::placed)
    }

    fn put_verified(&mut self, claimed: &Handle, bytes: Bytes) -> Result<(), StoreError> {
        self.inner.put_verified_placed(claimed, bytes, Self::placed)
    }

    fn get(&self, handle: &Handle) -> Option<Bytes> {
        self.inner.get(handle)
    }

    fn contains(&self, handle: &Handle) -> bool {
        self.inner.contains(handle)
    }

    fn stats(&self) -> StoreStats {
        self.inner.stats()
    }
}
