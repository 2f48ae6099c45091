//! The node's object store: the in-memory store of `cairn-object`, with large objects kept in
//! whole pages of their own so that a task can be given them read-only without a copy.

use alloc::alloc::{Layout, alloc, alloc_zeroed, dealloc};
use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use cairn_object::store::{MemStore, OBJECT_OVERHEAD, Store, StoreError, StoreStats};
use cairn_object::{Handle, Kind};

use super::{FRAME_SIZE, phys_to_virt};

/// Objects at least this large get pages of their own; smaller ones are copied when mapped.
pub const PAGE_ALIGNED_MIN: usize = 2048;

/// A page-aligned, page-rounded heap buffer: its pages hold nothing but its bytes (and zeros),
/// so they can be mapped into a task without leaking anything else.
pub struct PageBuf {
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
        // SAFETY: ptr..ptr+len lives as long as self and is initialised: zeroed at allocation,
        // or (`for_writing`) written in full before the buffer is read (UploadPages only reads
        // it once every byte has arrived).
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
        // SAFETY: allocated (zeroed, for_writing or copy_of) with this very layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// Bytes held by upload buffers not yet stored or dropped: they count against the store's room
/// so that several uploads at once cannot promise more memory than the store has.
static UPLOADS_IN_FLIGHT: AtomicU64 = AtomicU64::new(0);
/// Memory for an object a task creates, allocated fallibly before anything is copied: pages of
/// its own when it is large (so it is lent to tasks without another copy), else an ordinary
/// buffer.
pub enum NewObject {
    Small(Vec<u8>),
    Pages(PageBuf),
}

impl NewObject {
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            NewObject::Small(v) => v,
            NewObject::Pages(p) => p.as_mut(),
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            NewObject::Small(v) => Bytes::from(v),
            NewObject::Pages(p) => Bytes::from_owner(p),
        }
    }
}

mod disk;
mod shared;
mod spans;

pub use disk::{NO_DISK, PinRefused, ScrubReport};
pub use shared::NodeStore;
pub use spans::{UploadPages, blob_digest_on_both_cpus, helper_hashed_bytes};

/// Log a node writes between checkpoints (docs/STORE.md): at about 100 MiB/s of checking under
/// TCG, a restart reads at most about a second of it.
const CHECKPOINT_EVERY: u64 = 64 << 20;

/// The store on the node's disk (docs/STORE.md).
pub type DiskObjects = cairn_store::DiskStore<crate::drivers::blk::Disk>;

/// The node's objects: in memory, and on its disk when it has one. With a disk, memory is a
/// cache: every object is written to the disk as it is stored (and made durable before a client
/// is told), objects evicted from memory stay on the disk, and one needed again is read back
/// (checked against its handle) when it is pinned.
pub struct StoreCore {
    inner: MemStore,
    disk: Option<spin::Mutex<DiskObjects>>,
    /// Memo entries the disk holds: at most [`KEPT_MEMO_ENTRIES`], since the index of the
    /// disk's notes lives in memory.
    memo_on_disk: usize,
}

/// The handle of `bytes` as an object of `kind`; a blob by the digest already computed from
/// them, if there is one.
fn name_of(kind: Kind, bytes: &[u8], blob_digest: Option<[u8; 32]>) -> Result<Handle, StoreError> {
    match blob_digest {
        Some(digest) => cairn_object::store::name_blob_with_digest(kind, bytes, digest),
        None => cairn_object::store::name(kind, bytes),
    }
    .map_err(|error| StoreError::Invalid { kind, error })
}

/// Bytes from a client or a peer are the object they claim, or the claim is refused.
fn check_claim(claimed: &Handle, bytes: &[u8], blob_digest: Option<[u8; 32]>) -> Result<(), StoreError> {
    let named = name_of(claimed.kind(), bytes, blob_digest)?;
    if named != *claimed {
        return Err(StoreError::Mismatch { claimed: *claimed, actual: named });
    }
    Ok(())
}

/// Names an object read back from the disk: a large blob's spans are hashed on both CPUs.
pub fn name_read(kind: Kind, bytes: Vec<u8>) -> (Vec<u8>, Option<Handle>) {
    if kind != Kind::Blob {
        let named = cairn_object::store::name(kind, &bytes).ok();
        return (bytes, named);
    }
    let (bytes, digest) = blob_digest_on_both_cpus(bytes);
    let named = cairn_object::store::name_blob_with_digest(kind, &bytes, digest).ok();
    (bytes, named)
}

/// What a disk error is to the store's users: a full disk is a full store.
fn disk_error(disk: &DiskObjects, e: cairn_store::StoreError) -> StoreError {
    match e {
        cairn_store::StoreError::Full { needed, free } => {
            let limit = disk.stats().device_bytes.saturating_sub(cairn_store::superblock::LOG_START);
            StoreError::Full { needed, used: limit.saturating_sub(free), limit }
        }
        e => StoreError::Disk(alloc::format!("{e}")),
    }
}

impl StoreCore {
    pub fn new(limit_bytes: u64) -> StoreCore {
        StoreCore { inner: MemStore::new(limit_bytes), disk: None, memo_on_disk: 0 }
    }

    /// Keeps the store on `disk` from now on.
    pub fn attach_disk(&mut self, mut disk: DiskObjects) {
        disk.set_namer(name_read);
        self.memo_on_disk = disk.notes(cairn_store::space::MEMO).count();
        self.disk = Some(spin::Mutex::new(disk));
    }

    pub fn disk_stats(&self) -> Option<cairn_store::Stats> {
        self.disk.as_ref().map(|d| d.lock().stats())
    }

    /// Writes an object to the disk (if the node has one and it lacks it), durable with the
    /// next commit ([`NodeStore::sync`]).
    fn persist(&self, handle: &Handle, bytes: &[u8]) -> Result<(), StoreError> {
        let Some(disk) = &self.disk else { return Ok(()) };
        let mut disk = disk.lock();
        let put = disk.put(handle, bytes);
        put.map(|_| ()).map_err(|e| disk_error(&disk, e))
    }

    /// Makes everything written to the disk so far durable (the node's loop calls it each
    /// round, so that objects its tasks made are not left unflushed for long). A disk that
    /// failed is reported once (then STATS says `disk_failed=1`, and every store is refused).
    pub fn sync(&self) -> Result<(), StoreError> {
        let Some(disk) = &self.disk else { return Ok(()) };
        let mut disk = disk.lock();
        if disk.failed() {
            return Ok(());
        }
        let committed = disk.commit();
        committed.map_err(|e| disk_error(&disk, e))?;
        // A checkpoint every so often, so that a restart reads only the log after it.
        if disk.since_checkpoint() >= CHECKPOINT_EVERY {
            let checkpointed = disk.checkpoint();
            checkpointed.map_err(|e| disk_error(&disk, e))?;
        }
        Ok(())
    }

    /// What the node tells clients and peers it holds (HAVE): with a disk, only what is durable
    /// there (what a task made this round is not, yet); without one, what memory holds.
    pub fn holds_durably(&self, handle: &Handle) -> bool {
        match &self.disk {
            Some(disk) => disk.lock().contains(handle),
            None => self.inner.contains(handle),
        }
    }

    pub fn disk_failed(&self) -> bool {
        self.disk.as_ref().is_some_and(|d| d.lock().failed())
    }

    /// An object only the disk holds, read and checked; None if it is not there or its copy is
    /// damaged (which the log says).
    fn read_from_disk(&self, handle: &Handle) -> Option<Bytes> {
        let disk = self.disk.as_ref()?;
        match disk.lock().get(handle) {
            Ok(bytes) => bytes.map(Bytes::from),
            Err(e) => {
                log::warn!("store: {e}");
                None
            }
        }
    }

    /// Brings an object the disk holds back into memory; true if memory holds it now.
    fn load(&mut self, handle: &Handle) -> bool {
        if self.inner.contains(handle) {
            return true;
        }
        // Room first, so that the object read is not one copy too many.
        let Some(len) = self.disk.as_ref().and_then(|d| d.lock().len_of(handle)) else { return false };
        self.make_room(u64::from(len));
        let Some(bytes) = self.read_from_disk(handle) else { return false };
        let room = self.room().saturating_sub(OBJECT_OVERHEAD);
        self.inner
            .put_checked_placed(handle, bytes, |b| if b.len() as u64 > room { None } else { Self::placed(b) })
            .is_ok()
    }

    /// Bytes the store could still take without evicting anything, less what uploads in
    /// progress have been promised.
    pub fn room(&self) -> u64 {
        self.inner.free().saturating_sub(UPLOADS_IN_FLIGHT.load(Ordering::Relaxed))
    }

    /// The most the store could take if everything that may go went (memo entries included,
    /// which only the evaluator can let go of), less what uploads in progress have been promised.
    pub fn room_at_most(&self) -> u64 {
        self.inner.stats().limit.saturating_sub(UPLOADS_IN_FLIGHT.load(Ordering::Relaxed))
    }

    /// Evicts objects nothing pins, least recently used first, until a new object of `len`
    /// bytes fits beside what uploads in progress have been promised; true if it does.
    pub fn make_room(&mut self, len: u64) -> bool {
        let wanted = len.saturating_add(OBJECT_OVERHEAD);
        if self.room() >= wanted {
            return true;
        }
        self.inner.make_room(wanted.saturating_add(UPLOADS_IN_FLIGHT.load(Ordering::Relaxed)))
    }

    /// Pages for an upload of `len` bytes, if the store has room and the heap memory. Uploads
    /// of several spans are offered to the other CPUs, which hashes them as they arrive.
    /// It evicts nothing itself (a busy node's store is only read): callers that may, make
    /// room first ([`NodeStore::make_room`]).
    pub fn upload_pages(&self, len: usize) -> Option<UploadPages> {
        if len as u64 + OBJECT_OVERHEAD > self.room() {
            return None;
        }
        let pages = PageBuf::for_writing(len)?;
        Some(UploadPages::new(pages))
    }

    /// Stores a finished upload (from [`UploadPages::finish`]) if it is the object `claimed`
    /// names. The bytes are already in pages of their own, so they are not copied again, and
    /// already hashed.
    pub fn put_upload(&mut self, claimed: &Handle, bytes: Bytes, digest: [u8; 32]) -> Result<(), StoreError> {
        debug_assert!(bytes.is_empty() || (bytes.as_ptr() as u64).is_multiple_of(FRAME_SIZE));
        if self.disk.is_some() {
            // On the disk before memory (a cache). Durable before the client hears STORED:
            // the node commits once a round, before any answer goes out (group commit).
            check_claim(claimed, &bytes, Some(digest))?;
            self.persist(claimed, &bytes)?;
            let _ = self.inner.put_checked_placed(claimed, bytes, Some);
            return Ok(());
        }
        self.inner.put_verified_digest_placed(claimed, bytes, digest, Some)
    }

    /// A zeroed buffer for a new object of `len` bytes, if the store has room for it (evicting
    /// what nothing pins if need be) and the heap the memory; nothing is allocated otherwise.
    pub fn new_object(&mut self, len: usize) -> Option<NewObject> {
        if !self.make_room(len as u64) {
            return None;
        }
        if len < PAGE_ALIGNED_MIN {
            let mut v = Vec::new();
            v.try_reserve_exact(len).ok()?;
            v.resize(len, 0);
            return Some(NewObject::Small(v));
        }
        PageBuf::zeroed(len).map(NewObject::Pages)
    }

    /// Stores an object made in a [`NewObject`]: a blob whose digest the caller computed from
    /// these bytes is not hashed again; anything else is named (and checked) as it is stored.
    pub fn put_new(
        &mut self,
        kind: Kind,
        object: NewObject,
        blob_digest: Option<[u8; 32]>,
    ) -> Result<Handle, StoreError> {
        let bytes = object.into_bytes();
        // `new_object` made room before the bytes were made; uploads may have taken some
        // since, so look again, as `put` does.
        self.make_room(bytes.len() as u64);
        let room = self.room().saturating_sub(OBJECT_OVERHEAD);
        if self.disk.is_some() {
            // Named here, on the disk first, then in memory: memory never holds what the disk
            // was refused.
            let named = name_of(kind, &bytes, blob_digest)?;
            self.persist(&named, &bytes)?;
            self.inner.put_checked_placed(&named, bytes, |b| (b.len() as u64 <= room).then_some(b))?;
            return Ok(named);
        }
        match (kind, blob_digest) {
            (Kind::Blob, Some(digest)) => self.inner.put_hashed_blob(bytes, digest, room),
            // Already where it should live: small, or in pages of its own.
            _ => self.inner.put_placed(kind, bytes, |b| (b.len() as u64 <= room).then_some(b)),
        }
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
        if bytes.len() < PAGE_ALIGNED_MIN || !(bytes.as_ptr() as u64).is_multiple_of(FRAME_SIZE) {
            return None;
        }
        let offset = phys_to_virt(0) as u64;
        let phys = (bytes.as_ptr() as u64).checked_sub(offset)?;
        Some((phys, bytes))
    }
}

impl Store for StoreCore {
    // New objects may not eat into room promised to uploads in progress (`room`), and make room
    // by evicting what nothing pins; an object the store already holds needs no room, so the
    // check is made only when one is placed.
    fn put(&mut self, kind: Kind, bytes: Bytes) -> Result<Handle, StoreError> {
        self.make_room(bytes.len() as u64);
        let room = self.room().saturating_sub(OBJECT_OVERHEAD);
        if self.disk.is_some() {
            // On the disk first, then in memory (see `put_new`).
            let named = name_of(kind, &bytes, None)?;
            self.persist(&named, &bytes)?;
            self.inner.put_checked_placed(&named, bytes, |b| {
                if b.len() as u64 > room { None } else { Self::placed(b) }
            })?;
            return Ok(named);
        }
        self.inner.put_placed(kind, bytes, |b| if b.len() as u64 > room { None } else { Self::placed(b) })
    }

    /// From a client (or a peer): with a disk, written there even if memory holds it already
    /// (memory may hold what a task made and the disk not yet); durable with the round's
    /// commit, before any answer goes out (see `put_upload`).
    fn put_verified(&mut self, claimed: &Handle, bytes: Bytes) -> Result<(), StoreError> {
        if self.disk.is_some() {
            check_claim(claimed, &bytes, None)?;
            self.persist(claimed, &bytes)?;
            if !self.inner.contains(claimed) {
                self.make_room(bytes.len() as u64);
                let room = self.room().saturating_sub(OBJECT_OVERHEAD);
                let _ = self.inner.put_checked_placed(claimed, bytes, |b| {
                    if b.len() as u64 > room { None } else { Self::placed(b) }
                });
            }
            return Ok(());
        }
        if !self.inner.contains(claimed) {
            self.make_room(bytes.len() as u64);
        }
        let room = self.room().saturating_sub(OBJECT_OVERHEAD);
        self.inner.put_verified_placed(claimed, bytes, |b| {
            if b.len() as u64 > room { None } else { Self::placed(b) }
        })
    }

    fn get(&self, handle: &Handle) -> Option<Bytes> {
        self.inner.get(handle).or_else(|| self.read_from_disk(handle))
    }

    fn contains(&self, handle: &Handle) -> bool {
        self.inner.contains(handle) || self.disk.as_ref().is_some_and(|d| d.lock().contains(handle))
    }

    fn stats(&self) -> StoreStats {
        self.inner.stats()
    }

    /// An object only the disk holds comes back into memory to be pinned (tasks map it).
    fn pin(&mut self, handle: &Handle) -> bool {
        self.load(handle) && self.inner.pin(handle)
    }

    fn unpin(&mut self, handle: &Handle) {
        self.inner.unpin(handle)
    }

    fn reclaim(&mut self, bytes: u64, second_chance: bool) -> bool {
        self.inner.reclaim(bytes.saturating_add(UPLOADS_IN_FLIGHT.load(Ordering::Relaxed)), second_chance)
    }

    /// Memo entries on the disk outlive restarts; the evaluator asks here when its own memo
    /// (in memory) has no entry.
    fn recall_memo(&self, thunk: &Handle) -> Option<Handle> {
        self.memo_value_on_disk(thunk)
    }

    fn keep_memo(&mut self, thunk: &Handle, value: &Handle) {
        self.keep_memo_on_disk(thunk, value)
    }
}
