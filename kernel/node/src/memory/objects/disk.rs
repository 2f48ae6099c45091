//! What a node's disk keeps besides objects, and what an operator asks of it: memo entries
//! and jobs' journals as notes, pins, collection, scrub (docs/STORE.md).

use alloc::vec::Vec;

use cairn_object::Handle;
use cairn_object::store::{Store, StoreError};

use super::{StoreCore, disk_error};

/// Memo entries a node keeps on its disk (about 16 MiB of index); past that, new entries are
/// remembered in memory only, until GC makes room.
const KEPT_MEMO_ENTRIES: usize = 131_072;

/// An object record's header and handle, and the padding of its commit at most.
const OBJECT_RECORD_OVERHEAD: u64 = 64 + 40 + 64 + 512;

/// Why a node without a disk refuses what needs one.
pub const NO_DISK: &str = "this node has no disk (its objects are in memory only)";

/// Why a pin (or unpin) was not taken.
pub enum PinRefused {
    NoDisk(&'static str),
    NotThere(alloc::string::String),
    /// The disk is full, or failed.
    Disk(StoreError),
}

/// What a scrub found.
#[derive(Default)]
pub struct ScrubReport {
    pub checked: u64,
    pub bytes: u64,
    pub damaged_total: u64,
    /// The first [`SCRUB_LISTED`] of them.
    pub damaged: Vec<Handle>,
    /// Damaged on the disk, and written again from a good copy in memory.
    pub rewritten: u64,
    /// Not read for want of memory.
    pub unchecked: u64,
}

/// Damaged objects a scrub's answer names (40 KiB of handles); it counts them all.
const SCRUB_LISTED: usize = 1024;

/// A handle as a note's key or value.
fn note_of(handle: &Handle) -> cairn_store::NoteKey {
    *handle.as_bytes()
}

fn handle_of(note: &cairn_store::NoteValue) -> Option<Handle> {
    Handle::from_bytes(note).ok()
}

impl StoreCore {
    /// The objects a scrub reads (docs/STORE.md, "Scrub"): every one the disk holds.
    pub fn scrub_list(&self) -> Result<Vec<Handle>, StoreError> {
        let Some(disk) = &self.disk else { return Ok(Vec::new()) };
        let disk = disk.lock();
        disk.object_handles().map_err(|e| disk_error(&disk, e))
    }

    /// Reads one object on the disk and checks it against its handle. A damaged object is
    /// dropped from the disk's index, never served; if memory holds a good copy (it was checked
    /// when stored), that copy is written to the disk again.
    pub fn scrub_one(&self, handle: Handle, report: &mut ScrubReport) -> Result<(), StoreError> {
        let Some(disk) = &self.disk else { return Ok(()) };
        let read = disk.lock().get(&handle);
        match read {
            Ok(Some(bytes)) => {
                report.checked += 1;
                report.bytes += bytes.len() as u64;
            }
            Ok(None) => {}
            Err(cairn_store::StoreError::Corrupt { handle }) => {
                log::warn!("store: scrub: {handle} is damaged on the disk; dropped");
                report.damaged_total += 1;
                if report.damaged.len() < SCRUB_LISTED && report.damaged.try_reserve(1).is_ok() {
                    report.damaged.push(handle);
                }
                // Best effort (the heap may lack room for the record): without it, the
                // object is missing from the disk, and HAVE says so.
                if let Some(good) = self.inner.get(&handle)
                    && self.persist(&handle, &good).is_ok()
                {
                    report.rewritten += 1;
                }
            }
            Err(cairn_store::StoreError::NoMemory { .. }) => report.unchecked += 1,
            Err(e) => return Err(disk_error(&disk.lock(), e)),
        }
        Ok(())
    }

    /// Pins (or unpins) an object on the disk (docs/STORE.md, "Space"): durable with the
    /// next commit, which comes before the answer. Only an object the disk holds is pinned.
    pub fn set_pin(&self, handle: &Handle, pinned: bool) -> Result<(), PinRefused> {
        let Some(disk) = &self.disk else { return Err(PinRefused::NoDisk(NO_DISK)) };
        let mut disk = disk.lock();
        if pinned && !handle.is_literal() && disk.len_of(handle).is_none() {
            return Err(PinRefused::NotThere(alloc::format!("{handle} is not on this node's disk")));
        }
        let value = pinned.then(|| note_of(handle));
        let set = disk.set_note(cairn_store::space::PINS, &note_of(handle), value.as_ref());
        set.map_err(|e| PinRefused::Disk(disk_error(&disk, e)))
    }

    /// Forgets the objects on the disk that nothing keeps (docs/STORE.md, "Space"): not
    /// pinned, not reached from memo entries or jobs, nor from `roots` or what memory has
    /// pinned (the evaluator's memo and what it is using); with a goal, the least recently used
    /// first until that many bytes are forgotten. Then compacts the whole log.
    pub fn collect(
        &mut self,
        roots: &[Handle],
        goal: Option<u64>,
    ) -> Result<(cairn_store::Collected, cairn_store::Compacted), StoreError> {
        let Some(disk) = &self.disk else { return Err(StoreError::Disk(NO_DISK.into())) };
        let mut all: Vec<Handle> = Vec::new();
        let pinned = self.inner.pinned_handles().count();
        let no_memory = || StoreError::Disk("no memory for the list of roots".into());
        all.try_reserve_exact(roots.len() + pinned).map_err(|_| no_memory())?;
        all.extend(roots.iter().copied().chain(self.inner.pinned_handles().copied()));
        let mut disk = disk.lock();
        let collected = disk.collect(&all, goal).map_err(|e| disk_error(&disk, e))?;
        // Memory must not go on serving (and tasks building on) what the disk forgot: a value
        // made from it would reach the disk while it does not.
        self.inner.drop_unpinned(|h| disk.len_of(h).is_some());
        let compacted = disk.compact(u64::MAX).map_err(|e| disk_error(&disk, e))?;
        Ok((collected, compacted))
    }

    /// Every job and its latest journal the disk keeps; None if there is no memory for the list.
    pub fn journals_on_disk(&self) -> Option<Vec<(Handle, Handle)>> {
        let mut all = Vec::new();
        let Some(disk) = &self.disk else { return Some(all) };
        let disk = disk.lock();
        all.try_reserve_exact(disk.notes(cairn_store::space::JOBS).count()).ok()?;
        let jobs = disk.notes(cairn_store::space::JOBS);
        all.extend(jobs.filter_map(|(job, journal)| Some((handle_of(job)?, handle_of(journal)?))));
        Some(all)
    }

    /// The largest object the disk could take now (no disk: no limit): an upload larger is
    /// refused before it starts.
    pub fn disk_room(&self) -> u64 {
        let Some(disk) = &self.disk else { return u64::MAX };
        let disk = disk.lock();
        disk.max_object().min(disk.stats().free_bytes.saturating_sub(OBJECT_RECORD_OVERHEAD))
    }

    /// Memo entries the disk keeps.
    pub fn memo_on_disk(&self) -> usize {
        self.memo_on_disk
    }

    /// The latest journal the disk keeps for `job`.
    pub fn journal_of(&self, job: &Handle) -> Option<Handle> {
        let disk = self.disk.as_ref()?.lock();
        handle_of(disk.note(cairn_store::space::JOBS, &note_of(job))?)
    }

    /// Keeps `journal` as the latest of `job` on the disk (durable with the next commit, which
    /// comes before the answer that names it).
    pub fn keep_journal(&self, job: &Handle, journal: &Handle) -> Result<(), StoreError> {
        let Some(disk) = &self.disk else { return Ok(()) };
        let mut disk = disk.lock();
        let kept = disk.set_note(cairn_store::space::JOBS, &note_of(job), Some(&note_of(journal)));
        kept.map_err(|e| disk_error(&disk, e))
    }

    /// Memo entries on the disk outlive restarts; the evaluator asks here when its own memo
    /// (in memory) has no entry.
    pub(super) fn memo_value_on_disk(&self, thunk: &Handle) -> Option<Handle> {
        let disk = self.disk.as_ref()?.lock();
        handle_of(disk.note(cairn_store::space::MEMO, &note_of(thunk))?)
    }

    /// Written with the objects the evaluation made, and durable with them before the answer
    /// that could tell a client about it (the node commits before it answers). A memo is a
    /// cache: an entry the disk has no room for is only not kept.
    pub(super) fn keep_memo_on_disk(&mut self, thunk: &Handle, value: &Handle) {
        let Some(disk) = &self.disk else { return };
        let mut disk = disk.lock();
        let key = note_of(thunk);
        let known = disk.note(cairn_store::space::MEMO, &key).copied();
        if known == Some(note_of(value)) || disk.failed() {
            return;
        }
        if known.is_none() && self.memo_on_disk >= KEPT_MEMO_ENTRIES {
            return;
        }
        if disk.set_note(cairn_store::space::MEMO, &key, Some(&note_of(value))).is_ok() && known.is_none() {
            self.memo_on_disk += 1;
        }
    }
}
