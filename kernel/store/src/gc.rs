//! Collection and compaction (docs/STORE.md, "Space"). Collection forgets the objects nothing
//! keeps: not reachable from the notes (memo values, journals, pins) or from roots the caller
//! names, following trees' entries and thunks' procedures and arguments. Compaction copies the
//! live records at the head of the log to its tail and moves the head past them, so that the
//! ring can be written over there; a checkpoint makes both durable at once.

use alloc::collections::BTreeSet;
use alloc::vec::Vec;

use cairn_object::store::ObjectNamer;
use cairn_object::thunk::Thunk;
use cairn_object::tree::Tree;
use cairn_object::{DecodeError, Handle, Kind};

use crate::record::{self, HEADER_LEN, Header, RecordKind, record_len};
use crate::{Device, DiskStore, Location, SECTOR, StoreError, ring, space};

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
    /// record it passes is copied to the tail first, a piece at a time, its bytes named as they
    /// pass and the copy counting only if they are what its handle names (else the object is
    /// dropped and counted damaged, as a read would find it). When
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
                    match self.copy_object(&handle)? {
                        Some(len) => {
                            done.copied += 1;
                            done.copied_bytes += u64::from(len);
                        }
                        None => done.damaged += 1,
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

impl<D: Device> DiskStore<D> {
    /// Copies an object's record to the tail a piece at a time ([`crate::COPY_CHUNK`]), naming
    /// the bytes as they pass: its length; None if they are not what its handle names (then it
    /// is no longer held, as after a read, and nothing of the copy counts).
    ///
    /// The record's checksum covers its handle, not its bytes, so its header is known before
    /// them. Its pieces may be written (not flushed) as they come: until the record is finished
    /// they lie past the tail, no commit covers them, and an abandoned copy is written over by
    /// what is appended next. A crash meanwhile is a crash before a commit.
    fn copy_object(&mut self, handle: &Handle) -> Result<Option<u32>, StoreError> {
        let at = self.index.objects[handle];
        let payload_len = Handle::LEN as u64 + u64::from(at.len);
        let len = record_len(payload_len);
        // As `append`: room for the record and the padding that closes its commit.
        let (needed, free) = ((self.tail + len + 1).next_multiple_of(SECTOR) - self.tail, self.room(false));
        if needed > free {
            return Err(StoreError::Full { needed, free });
        }
        if self.failed {
            return Err(StoreError::Failed);
        }
        let kind = RecordKind::Object(handle.kind());
        let mut header =
            Header { kind, payload_len: payload_len as u32, seq: self.next_seq, checksum: [0; 32] };
        header.checksum = header.expected_checksum(&self.key, &self.prev, handle.as_bytes());
        let position = self.tail;
        let copied = self.copy_pieces(&header, handle, at.position, u64::from(at.len));
        let named = match copied {
            Ok(named) => named,
            Err(e) => {
                if !self.failed {
                    self.abandon(position);
                }
                return Err(e);
            }
        };
        if named.as_ref() != Ok(handle) {
            self.abandon(position);
            // Not held any more, as a read that finds it damaged leaves it.
            self.index.remove_object(handle);
            return Ok(None);
        }
        self.tail += len;
        self.next_seq += 1;
        self.prev = header.checksum;
        self.index.objects.insert(*handle, Location { position, ..at });
        Ok(Some(at.len))
    }

    /// Puts the record's header, handle and bytes (read from the record at `from`) after what
    /// is pending, naming the bytes; writes whole sectors out whenever a piece would take the
    /// pending bytes past a piece, so that they never need a buffer much larger.
    fn copy_pieces(
        &mut self,
        header: &Header,
        handle: &Handle,
        from: u64,
        len: u64,
    ) -> Result<Result<Handle, DecodeError>, StoreError> {
        let record_len = header.record_len();
        self.reserve_pending(HEADER_LEN as usize + Handle::LEN)?;
        self.pending.extend_from_slice(&header.encode());
        self.pending.extend_from_slice(handle.as_bytes());
        let mut namer = ObjectNamer::new(handle.kind());
        let source = from + HEADER_LEN + Handle::LEN as u64;
        // Compaction commits before it starts: what it copies is on the disk.
        debug_assert!(source + len <= self.written.min(self.tail));
        let mut done = 0;
        while done < len {
            let n = (len - done).min(self.copy_chunk as u64) as usize;
            if self.pending.len() + n > self.copy_chunk {
                self.write_pending(false).inspect_err(|_| self.failed = true)?;
            }
            self.reserve_pending(n + record::ALIGN as usize)?;
            let start = self.pending.len();
            self.pending.resize(start + n, 0);
            ring::read_at(&mut self.device, &self.superblock, source + done, &mut self.pending[start..])?;
            namer.update(&self.pending[start..]);
            done += n as u64;
        }
        // Zeros to the record's end (reserved with the last piece: less than 64 bytes). Pieces
        // written out may have taken `written` past the tail.
        let end = (self.tail + record_len - self.written) as usize;
        self.reserve_pending(end - self.pending.len())?;
        self.pending.resize(end, 0);
        if self.pending.len() >= self.write_behind {
            self.write_pending(false).inspect_err(|_| self.failed = true)?;
        }
        Ok(namer.finish())
    }

    /// Room for `n` more pending bytes, exactly: growing by doubling would want a buffer twice
    /// as large as the pieces need.
    fn reserve_pending(&mut self, n: usize) -> Result<(), StoreError> {
        self.pending.try_reserve_exact(n).map_err(|_| StoreError::NoMemory { len: n as u64 })
    }

    /// Takes back a record begun at `position` (the tail) and not finished. What was written of
    /// it lies past the tail in no commit, and what is appended next is written over it.
    fn abandon(&mut self, position: u64) {
        debug_assert_eq!(position, self.tail);
        if self.written <= position {
            self.pending.truncate((position - self.written) as usize);
        } else {
            // Everything before it was written: the next write reads back the start of the
            // sector it begins in (as after a restart that ends inside a sector).
            self.pending.clear();
            self.written = position;
        }
    }
}

fn no_memory(entries: usize) -> StoreError {
    StoreError::NoMemory { len: (entries * Handle::LEN) as u64 }
}
