//! The node's store as every CPU sees it: one [`StoreCore`] behind a lock, reached through
//! cloneable handles. Tasks on any CPU read and create objects through it while the boot CPU
//! evaluates and serves; each call holds the lock only for itself (docs/ARCHITECTURE.md,
//! "Locks"), so a task that runs for seconds never holds it.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use cairn_object::store::{Store, StoreError, StoreStats};
use cairn_object::{Handle, Kind};
use spin::{Mutex, MutexGuard};

use super::{DiskObjects, NewObject, PinRefused, ScrubReport, StoreCore, UploadPages};

#[derive(Clone)]
pub struct NodeStore {
    core: Arc<Mutex<StoreCore>>,
    /// Whether a disk is attached: without one, memo notes are not kept anywhere, and asking
    /// for them need not take the lock (every evaluation asks, under emulation a lock costs).
    has_disk: Arc<AtomicBool>,
}

/// Methods of the core, each under the lock for the length of the call.
macro_rules! forward {
    ($($(#[$doc:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)*) => {
        $($(#[$doc])* pub fn $name(&self $(, $arg: $ty)*) -> $ret { self.lock().$name($($arg),*) })*
    };
}

impl NodeStore {
    pub fn new(limit_bytes: u64) -> NodeStore {
        NodeStore {
            core: Arc::new(Mutex::new(StoreCore::new(limit_bytes))),
            has_disk: Arc::new(AtomicBool::new(false)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, StoreCore> {
        if let Some(core) = self.core.try_lock() {
            return core;
        }
        // Another CPU holds it: the wait is not the work of the task this CPU runs.
        let since = crate::arch::clock::micros_since_boot();
        let core = self.core.lock();
        let waited = crate::arch::clock::micros_since_boot().saturating_sub(since);
        crate::arch::percpu::current().store_wait_us.fetch_add(waited, Ordering::Relaxed);
        core
    }

    /// Keeps the store on `disk` from now on.
    pub fn attach_disk(&self, disk: DiskObjects) {
        self.lock().attach_disk(disk);
        self.has_disk.store(true, Ordering::Release);
    }

    forward! {
        fn disk_stats(&self) -> Option<cairn_store::Stats>;
        fn sync(&self) -> Result<(), StoreError>;
        fn holds_durably(&self, handle: &Handle) -> bool;
        fn disk_failed(&self) -> bool;
        fn room(&self) -> u64;
        fn room_at_most(&self) -> u64;
        fn upload_pages(&self, len: usize) -> Option<UploadPages>;
        fn put_upload(&self, claimed: &Handle, bytes: Bytes, digest: [u8; 32]) -> Result<(), StoreError>;
        fn new_object(&self, len: usize) -> Option<NewObject>;
        fn frames_of(&self, handle: &Handle) -> Option<(u64, Bytes)>;
        fn set_pin(&self, handle: &Handle, pinned: bool) -> Result<(), PinRefused>;
        fn collect(&self, roots: &[Handle], goal: Option<u64>) -> Result<(cairn_store::Collected, cairn_store::Compacted), StoreError>;
        fn journals_on_disk(&self) -> Option<Vec<(Handle, Handle)>>;
        fn disk_room(&self) -> u64;
        fn memo_on_disk(&self) -> usize;
        fn journal_of(&self, job: &Handle) -> Option<Handle>;
        fn keep_journal(&self, job: &Handle, journal: &Handle) -> Result<(), StoreError>;
    }

    /// Stores a task's new object and pins it, under one lock: between two calls, another CPU's
    /// task (making room) or a GC could let the object go before the pin. The pin is
    /// whether it was taken.
    pub fn put_new_pinned(
        &self,
        kind: Kind,
        object: NewObject,
        blob_digest: Option<[u8; 32]>,
    ) -> Result<(Handle, bool), StoreError> {
        let mut core = self.lock();
        let handle = core.put_new(kind, object, blob_digest)?;
        let pinned = core.pin(&handle);
        Ok((handle, pinned))
    }

    /// Reads every object on the disk and checks it against its handle (docs/STORE.md,
    /// "Scrub"), calling `between` after each without the lock (the node serves reads
    /// meanwhile, and those take it).
    pub fn scrub(&self, mut between: impl FnMut()) -> Result<ScrubReport, StoreError> {
        let handles = self.lock().scrub_list()?;
        let mut report = ScrubReport::default();
        for handle in handles {
            self.lock().scrub_one(handle, &mut report)?;
            between();
        }
        Ok(report)
    }
}

impl Store for NodeStore {
    fn put(&mut self, kind: Kind, bytes: Bytes) -> Result<Handle, StoreError> {
        self.lock().put(kind, bytes)
    }

    fn put_verified(&mut self, claimed: &Handle, bytes: Bytes) -> Result<(), StoreError> {
        self.lock().put_verified(claimed, bytes)
    }

    // A literal object is its handle: answered without the lock (every application asks about
    // its arguments and result, and small values are literals).
    fn get(&self, handle: &Handle) -> Option<Bytes> {
        match handle.literal() {
            Some(bytes) => Some(Bytes::copy_from_slice(bytes)),
            None => self.lock().get(handle),
        }
    }

    fn contains(&self, handle: &Handle) -> bool {
        handle.is_literal() || self.lock().contains(handle)
    }

    fn stats(&self) -> StoreStats {
        self.lock().stats()
    }

    fn pin(&mut self, handle: &Handle) -> bool {
        handle.is_literal() || self.lock().pin(handle)
    }

    fn unpin(&mut self, handle: &Handle) {
        if !handle.is_literal() {
            self.lock().unpin(handle)
        }
    }

    fn reclaim(&mut self, bytes: u64, second_chance: bool) -> bool {
        self.lock().reclaim(bytes, second_chance)
    }

    fn recall_memo(&self, thunk: &Handle) -> Option<Handle> {
        if !self.has_disk.load(Ordering::Acquire) {
            return None;
        }
        self.lock().recall_memo(thunk)
    }

    fn keep_memo(&mut self, thunk: &Handle, value: &Handle) {
        if self.has_disk.load(Ordering::Acquire) {
            self.lock().keep_memo(thunk, value)
        }
    }
}
