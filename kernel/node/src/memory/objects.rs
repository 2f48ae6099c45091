//! The node's object store: the in-memory store of `cairn-object`, with large objects kept in
//! whole pages of their own so that a task can be given them read-only without a copy.

use alloc::alloc::{Layout, alloc_zeroed, dealloc};
use core::ptr::NonNull;

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

// SAFETY: PageBuf owns its allocation exclusively and never mutates it after construction.
unsafe impl Send for PageBuf {}

impl PageBuf {
    fn copy_of(bytes: &[u8]) -> Option<PageBuf> {
        let layout = Layout::from_size_align(bytes.len().next_multiple_of(FRAME_SIZE as usize), FRAME_SIZE as usize).ok()?;
        // SAFETY: layout has a non-zero size (callers pass at least PAGE_ALIGNED_MIN bytes).
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) })?;
        // SAFETY: the new allocation is at least bytes.len() long and does not overlap `bytes`.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr.as_ptr(), bytes.len()) };
        Some(PageBuf { ptr, len: bytes.len(), layout })
    }
}

impl AsRef<[u8]> for PageBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: ptr..ptr+len is initialised and lives as long as self.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for PageBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in copy_of with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

pub struct NodeStore {
    inner: MemStore,
}

impl NodeStore {
    pub fn new(limit_bytes: u64) -> NodeStore {
        NodeStore { inner: MemStore::new(limit_bytes) }
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
        let kind = claimed.kind();
        let actual = cairn_object::store::name(kind, &bytes).map_err(|error| StoreError::Invalid { kind, error })?;
        if actual != *claimed {
            return Err(StoreError::Mismatch { claimed: *claimed, actual });
        }
        self.inner.put_placed(kind, bytes, Self::placed).map(|_| ())
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
