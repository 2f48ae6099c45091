//! Hashing a blob's whole spans (`cairn_object::hash::SPAN_LEN`) on both CPUs: an upload's,
//! while it arrives (the boot CPU writes bytes at the end while the helper hashes spans already
//! written), and an object read back from the disk, whose bytes are all there at once.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use cairn_object::hash::{self, SPAN_LEN};

use super::{PageBuf, UPLOADS_IN_FLIGHT};
use crate::arch::smp::{self, HelperWork};

/// Spans of uploads and reads the other CPUs hashed, for STATS.
static HELPER_SPANS: AtomicU64 = AtomicU64::new(0);

/// Bytes the other CPUs hashed for uploads and reads.
pub fn helper_hashed_bytes() -> u64 {
    HELPER_SPANS.load(Ordering::Relaxed) * SPAN_LEN as u64
}

/// `SpanHashing::next` once nothing more may be claimed.
const CLOSED: usize = usize::MAX;

/// A buffer and the hashing of its whole spans, shared with the other CPUs (arch::smp). Bytes
/// are only ever touched through `base`, a pointer into `buffer`'s allocation (which never
/// moves): below `ready` they are read, past it only the owner writes.
struct SpanHashing<B> {
    buffer: B,
    base: *mut u8,
    len: usize,
    spans: usize,
    /// Spans whose bytes are all written.
    ready: AtomicUsize,
    /// The next span to hash: whoever moves it on from `i` hashes span `i`.
    next: AtomicUsize,
    done: AtomicUsize,
    cvs: Box<[UnsafeCell<[u8; 32]>]>,
}

// SAFETY: span `i`'s chaining value is written only by the one CPU that claimed `i` through
// `next`, and read only after `done` counts it (Release/Acquire); the bytes are written only
// past `ready` by the owner and read only below it.
unsafe impl<B: Send> Sync for SpanHashing<B> {}
// SAFETY: `base` points into `buffer`, which is Send and moves with it.
unsafe impl<B: Send> Send for SpanHashing<B> {}

impl<B> SpanHashing<B> {
    /// `base` must point to `len` bytes owned by `buffer`, which stay where they are.
    fn new(buffer: B, base: *mut u8, len: usize, ready: usize) -> SpanHashing<B> {
        let spans = hash::full_spans(len);
        SpanHashing {
            buffer,
            base,
            len,
            spans,
            ready: AtomicUsize::new(ready.min(spans)),
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            cvs: (0..spans).map(|_| UnsafeCell::new([0; 32])).collect(),
        }
    }

    /// Hashes the next span if one is written and unclaimed; false if there is none.
    fn hash_next(&self) -> bool {
        loop {
            let i = self.next.load(Ordering::SeqCst);
            if i >= self.spans || i >= self.ready.load(Ordering::SeqCst) {
                return false;
            }
            if self.next.compare_exchange(i, i + 1, Ordering::SeqCst, Ordering::SeqCst).is_err() {
                continue;
            }
            // SAFETY: span i lies below `ready`, so all its bytes were written and none will be
            // again; it is inside the buffer because i < spans = len / SPAN_LEN.
            let span = unsafe { core::slice::from_raw_parts(self.base.add(i * SPAN_LEN), SPAN_LEN) };
            let cv = hash::span_cv(span, i);
            // SAFETY: this CPU alone claimed span i (the exchange above), so nothing else writes
            // or reads this cell until `done` is raised below.
            unsafe { *self.cvs[i].get() = cv };
            self.done.fetch_add(1, Ordering::Release);
            return true;
        }
    }

    /// Hashes what is left here, waits for the helper, and takes the buffer back with the
    /// digest of all its bytes (which must all be written).
    fn finish(shared: Arc<SpanHashing<B>>, offered: Option<Arc<dyn HelperWork>>) -> (B, [u8; 32]) {
        // Alongside the helper until every span is claimed; only then is it taken back (taking
        // it back first left all of a read's spans, or an upload's last ones, to this CPU).
        while shared.hash_next() {}
        if let Some(offered) = offered {
            smp::withdraw(&offered);
        }
        // The helper may still be finishing the last span it claimed.
        while shared.done.load(Ordering::Acquire) < shared.spans {
            core::hint::spin_loop();
        }
        let mut owned = sole_owner(shared);
        let cvs: Vec<[u8; 32]> = owned.cvs.iter_mut().map(|cv| *cv.get_mut()).collect();
        // SAFETY: every byte was written (the caller's promise) and no other CPU holds the
        // buffer any more (`sole_owner`).
        let bytes = unsafe { core::slice::from_raw_parts(owned.base, owned.len) };
        let digest = hash::blob_digest_with_spans(bytes, &cvs);
        (owned.buffer, digest)
    }
}

impl<B: Send + 'static> HelperWork for SpanHashing<B> {
    fn run(&self) {
        if self.hash_next() {
            HELPER_SPANS.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn has_work(&self) -> bool {
        let i = self.next.load(Ordering::SeqCst);
        i < self.spans && i < self.ready.load(Ordering::SeqCst)
    }
}

/// Waits until the other CPUs have let go of `shared` (each drops its reference as soon as it
/// finds no more work in it) and takes it over.
fn sole_owner<B>(mut shared: Arc<SpanHashing<B>>) -> SpanHashing<B> {
    loop {
        match Arc::try_unwrap(shared) {
            Ok(owned) => return owned,
            Err(still_shared) => shared = still_shared,
        }
        core::hint::spin_loop();
    }
}

/// The BLAKE3 digest of a blob read back from the disk, its spans hashed by the other CPUs as
/// well as this one when it has room for the work; the bytes come back with it.
pub fn blob_digest_on_both_cpus(mut bytes: Vec<u8>) -> (Vec<u8>, [u8; 32]) {
    if hash::full_spans(bytes.len()) < 2 || !smp::online() {
        let digest = hash::blob_digest(&bytes);
        return (bytes, digest);
    }
    let (base, len) = (bytes.as_mut_ptr(), bytes.len());
    let shared = Arc::new(SpanHashing::new(bytes, base, len, usize::MAX));
    let work: Arc<dyn HelperWork> = shared.clone();
    let offered = smp::offer(work.clone()).then_some(work);
    SpanHashing::finish(shared, offered)
}

/// Memory an upload is written into: pages of its own, so storing it needs no copy. Its bytes
/// are written front to back, and it becomes an object only once all of them have been, so its
/// uninitialised part is never read. Whole spans are hashed as soon as they are written, by the
/// other CPUs when there are some; finishing hashes whatever is left.
pub struct UploadPages {
    shared: Option<Arc<SpanHashing<PageBuf>>>,
    offered: Option<Arc<dyn HelperWork>>,
    len: u64,
    written: usize,
}

impl UploadPages {
    /// Pages set aside for an upload (counted in `UPLOADS_IN_FLIGHT` until stored or dropped).
    pub(super) fn new(pages: PageBuf) -> UploadPages {
        let (base, len) = (pages.ptr.as_ptr(), pages.len);
        UPLOADS_IN_FLIGHT.fetch_add(len as u64, Ordering::Relaxed);
        let shared = Arc::new(SpanHashing::new(pages, base, len, 0));
        let work: Arc<dyn HelperWork> = shared.clone();
        let offered = (shared.spans >= 2 && smp::offer(work.clone())).then_some(work);
        UploadPages { shared: Some(shared), offered, len: len as u64, written: 0 }
    }

    /// Writes `bytes` at `offset`, which must be where the last write ended.
    pub fn write_at(&mut self, offset: usize, bytes: &[u8]) {
        let Some(shared) = self.shared.as_ref() else { return };
        assert!(
            offset == self.written && offset + bytes.len() <= shared.len,
            "uploads are written in order, within bounds"
        );
        // SAFETY: offset..offset+len lies inside the allocation (checked above) and past
        // `ready`, where no other CPU reads; `bytes` cannot overlap memory this buffer owns.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), shared.base.add(offset), bytes.len()) };
        self.written += bytes.len();
        let ready = (self.written / SPAN_LEN).min(shared.spans);
        if ready > shared.ready.load(Ordering::Relaxed) {
            shared.ready.store(ready, Ordering::SeqCst);
            if self.offered.is_some() {
                smp::poke();
            }
        }
    }

    /// The bytes (all of them must have been written) and their BLAKE3 digest.
    pub fn finish(mut self) -> (Bytes, [u8; 32]) {
        let Some(shared) = self.shared.take() else { return (Bytes::new(), hash::blob_digest(&[])) };
        assert_eq!(self.written, shared.len, "an upload becomes an object only when complete");
        let (pages, digest) = SpanHashing::finish(shared, self.offered.take());
        (Bytes::from_owner(pages), digest)
    }
}

impl Drop for UploadPages {
    fn drop(&mut self) {
        UPLOADS_IN_FLIGHT.fetch_sub(self.len, Ordering::Relaxed);
        if let Some(shared) = self.shared.take() {
            // An upload cut off: stop the helper, and free the pages here rather than on it.
            shared.next.store(CLOSED, Ordering::SeqCst);
            if let Some(offered) = self.offered.take() {
                smp::withdraw(&offered);
            }
            drop(sole_owner(shared));
        }
    }
}
