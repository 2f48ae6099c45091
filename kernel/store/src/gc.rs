//! Collection and compaction (docs/STORE.md, "Space"). Collection forgets the objects nothing
//! keeps: not reachable from the notes (memo values, journals, pins) or from roots the caller
//! names, following trees' entries and thunks' procedures and arguments. Compaction copies the
//! live records at the head of the log to its tail and moves the head past them, so that the
//! ring can be written over there; a checkpoint makes both durable at once.

use alloc::collections::BTreeSet;
use alloc::vec::Vec;

use cairn_object::thunk::Thunk;
use cairn_object::tree::Tree;
use cairn_object::{Handle, Kind};

use crate::record::{HEADER_LEN, RecordKind};
use crate::{Device, DiskStore, SECTOR, StoreError, space};

/// What a collection forgot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    pub objects: u64,
    pub bytes: u64,
    /// Objects kept: reachable, or not needed to reach the goal.
    pub kept: u64,
}

/// What a compaction did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Compacted {
    /// Live objects copied to the tail.
    pub copied: u64,
    pub copied_bytes: u64,
    /// Bytes of the ring given back: how far the head moved.
    pub reclaimed: u64,
    /// Live objects found damaged on the way (dropped, as a read would).
    pub damaged: u64,
}

impl<D: Device> DiskStore<D> {
    /// Every object reachable from `roots` or from the notes: memo values, the keys and values
    /// of jobs (a job and its latest journal), and pins. A damaged tree or thunk keeps only
    /// itself (its bytes cannot be read). Too little memory for the walk is an error, and
    /// nothing is forgotten.
    pub fn reachable(&mut self, roots: &[Handle]) -> Result<BTreeSet<Handle>, StoreError> {
        let from_notes = self.index.notes.iter().flat_map(|((space, key), value)| {
            let key = (*space == space::JOBS).then_some(key);
            [Some(value), key].into_iter().flatten().filter_map(|b| Handle::from_bytes(b).ok())
        });
        let mut stack: Vec<Handle> = Vec::new();
        stack.try_reserve(roots.len() + self.index.notes.len()).map_err(|_| no_memory(roots.len()))?;
        stack.extend(roots.iter().copied().chain(from_notes));
        let mut live = BTreeSet::new();
        while let Some(handle) = stack.pop() {
            if handle.is_literal() || !self.index.objects.contains_key(&handle) || !live.insert(handle) {
                continue;
            }
            if handle.kind() == Kind::Blob {
                continue;
            }
            let bytes = match self.get(&handle) {
                Ok(Some(bytes)) => bytes,
                Ok(None) | Err(StoreError::Corrupt { .. }) => continue,
                Err(e) => return Err(e),
            };
            let children: Vec<Handle> = match handle.kind() {
                Kind::Tree => Tree::decode(&bytes).map(|t| t.iter().collect()).unwrap_or_default(),
                _ => Thunk::decode(&bytes)
                    .map(|t| core::iter::once(t.procedure()).chain(t.args()).collect())
                    .unwrap_or_default(),
            };
            stack.try_reserve(children.len()).map_err(|_| no_memory(children.len()))?;
            stack.extend(children);
        }
        Ok(live)
    }

    /// Forgets the objects not reachable (see [`DiskStore::reachable`]): with a goal, the least
    /// recently used first until `goal` bytes are forgotten; without one, all of them. Durable
    /// (and their room reclaimed) with the next [`DiskStore::compact`]; until then a crash
    /// brings them back, which is harmless.
    pub fn collect(&mut self, roots: &[Handle], goal: Option<u64>) -> Result<Collected, StoreError> {
        let live = self.reachable(roots)?;
        let mut unreached: Vec<(u64, Handle, u32)> = Vec::new();
        let count = self.index.objects.len() - live.len().min(self.index.objects.len());
        unreached.try_reserve_exact(count).map_err(|_| no_memory(count))?;
        unreached.extend(
            self.index.objects.iter().filter(|(h, _)| !live.contains(h)).map(|(h, at)| (at.used, *h, at.len)),
        );
        unreached.sort_unstable();
        let mut collected = Collected::default();
        for (_, handle, len) in unreached {
            if goal.is_some_and(|goal| collected.bytes >= goal) {
                break;
            }
            self.index.remove_object(&handle);
            collected.objects += 1;
            collected.bytes += u64::from(len);
        }
        collected.kept = self.index.objects.len() as u64;
        Ok(collected)
    }

    /// Moves the head forward by at least `goal` bytes of log if it can: each live object
    /// record it passes is copied to the tail first (read and checked, like any read). When
    /// the ring has no room for the next copy it moves the head as far as it has got (a
    /// superblock write, which costs no log), and stops if that gives nothing back; it writes a
    /// checkpoint to pass the last one, and one at the end. Stops at the tail as it was. The
    /// new head is durable when this returns.
    pub fn compact(&mut self, goal: u64) -> Result<Compacted, StoreError> {
        self.commit()?;
        let reserve = core::mem::replace(&mut self.use_reserve, true);
        let done = self.compact_using_reserve(goal);
        self.use_reserve = reserve;
        done
    }

    fn compact_using_reserve(&mut self, goal: u64) -> Result<Compacted, StoreError> {
        // Without a checkpoint the log must begin at its first record: make one to move from.
        if self.superblock.checkpoint.is_none() {
            self.checkpoint_from(self.superblock.head)?;
        }
        let (start, stop) = (self.superblock.head, self.tail);
        let mut at = start;
        let mut done = Compacted::default();
        while at < stop && at - start < goal {
            // The head may not pass the checkpoint recovery starts from: a new one first.
            if self.superblock.checkpoint.is_some_and(|c| c.position == at) {
                match self.checkpoint_from(at) {
                    Ok(()) => {}
                    // No room for it: stop here (what was passed is given back below).
                    Err(StoreError::Full { .. }) => break,
                    Err(e) => return Err(e),
                }
            }
            let Some(header) = self.read_header(at)? else {
                // Between the head and the tail every record is a committed one.
                return Err(StoreError::CompactionLost { position: at });
            };
            if let RecordKind::Object(_) = header.kind {
                let mut handle = [0u8; Handle::LEN];
                self.read_at(at + HEADER_LEN, &mut handle)?;
                let handle =
                    Handle::from_bytes(&handle).map_err(|_| StoreError::CompactionLost { position: at })?;
                if self.index.objects.get(&handle).is_some_and(|l| l.position == at) {
                    // Room for the copy and a checkpoint; without it, give back what has been
                    // passed, if anything.
                    if header.record_len() + self.checkpoint_len() + 3 * SECTOR > self.free() {
                        if at == self.superblock.head {
                            break;
                        }
                        self.move_head(at)?;
                        continue;
                    }
                    match self.get(&handle) {
                        Ok(Some(bytes)) => {
                            let used = self.index.objects.get(&handle).map_or(0, |l| l.used);
                            let kind = RecordKind::Object(handle.kind());
                            let position = self.append(kind, &[handle.as_bytes(), &bytes])?;
                            let len = bytes.len() as u32;
                            self.index.objects.insert(handle, crate::Location { position, len, used });
                            done.copied += 1;
                            done.copied_bytes += u64::from(len);
                        }
                        Ok(None) => {}
                        Err(StoreError::Corrupt { .. }) => done.damaged += 1,
                        Err(e) => return Err(e),
                    }
                }
            }
            at += header.record_len();
        }
        // A checkpoint ends it (one, whose room every copy left): from then on no index places
        // anything before the head, so neither damage in the log after an older checkpoint nor
        // a restart can forget an object moved here, or bring back one collected.
        if at > start {
            match self.checkpoint_from(at) {
                Ok(()) => {}
                // It passed a checkpoint on the way and so has no room for another: the head
                // still moves (the copies are after that checkpoint, where recovery finds them).
                Err(StoreError::Full { .. }) => self.move_head(at)?,
                Err(e) => return Err(e),
            }
        }
        done.reclaimed = at - start;
        Ok(done)
    }
}

fn no_memory(entries: usize) -> StoreError {
    StoreError::NoMemory { len: (entries * Handle::LEN) as u64 }
}
