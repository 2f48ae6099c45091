//! The node's object store on a disk (docs/STORE.md): an append-only log of checksummed
//! records after two superblock copies, and an index in memory rebuilt at start from the last
//! checkpoint and the records after it. Pure and sans-IO: the node hands it a [`Device`] (its
//! virtio-blk driver); the tests hand it a simulated disk that loses unflushed writes.
//!
//! The durability contract: what [`DiskStore::commit`] returned for is on the disk, and comes
//! back after any crash; anything read is checked against its handle first, and a wrong byte
//! is an error, never an answer.

#![no_std]

extern crate alloc;

pub mod device;
mod gc;
mod index;
pub mod record;
mod recovery;
mod ring;
pub mod superblock;

#[cfg(test)]
mod compaction_review_tests;
#[cfg(test)]
mod copy_review_tests;
#[cfg(test)]
mod copy_tests;
#[cfg(test)]
mod gc_tests;
#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod ring_review_tests;
#[cfg(test)]
mod tests;

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use cairn_object::store::name;
use cairn_object::{Handle, Kind};

pub use device::{Device, DeviceError, SECTOR};
pub use gc::{Collected, Compacted};
pub use index::{Index, Location, NoteKey, NoteValue};
use record::{HEADER_LEN, Header, MAX_PAYLOAD, RecordKind, payload_digest, record_key, record_len};
use superblock::{Checkpoint, LOG_START, Superblock};

/// The namespaces of notes a node keeps (docs/STORE.md, "What the disk keeps").
pub mod space {
    /// A memo entry: a thunk's handle → the value it evaluated to.
    pub const MEMO: u8 = 1;
    /// A job's handle → the handle of its latest journal.
    pub const JOBS: u8 = 2;
    /// An object an operator pinned → the same handle.
    pub const PINS: u8 = 3;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// The disk holds no store (all zeros where the superblocks go).
    NotFormatted,
    /// The disk holds something else.
    Foreign,
    /// Both superblock copies fail their checksums.
    SuperblockDamaged,
    Unsupported {
        version: u32,
    },
    /// The disk is smaller than the store written on it.
    DeviceShrunk {
        store: u64,
        device: u64,
    },
    DeviceTooSmall {
        len: u64,
    },
    Device(DeviceError),
    /// No room in the log for a record of `needed` bytes.
    Full {
        needed: u64,
        free: u64,
    },
    TooLarge {
        len: u64,
    },
    /// An object's bytes on the disk are not what its handle names.
    Corrupt {
        handle: Handle,
    },
    /// No memory for a record's bytes.
    NoMemory {
        len: u64,
    },
    /// The checkpoint the superblock names does not check, and the log cannot be read past it.
    CheckpointDamaged {
        position: u64,
    },
    /// An object larger than this disk takes ([`DiskStore::max_object`]).
    TooLargeForDisk {
        len: u64,
        limit: u64,
    },
    /// Compaction found no record where the log must hold one.
    CompactionLost {
        position: u64,
    },
    /// A write or flush failed earlier: what was appended since the last commit may or may not
    /// be on the disk, so nothing more is stored until the store is opened again.
    Failed,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::NotFormatted => write!(f, "the disk holds no store"),
            StoreError::Foreign => write!(f, "the disk holds something other than a Cairn store"),
            StoreError::SuperblockDamaged => write!(f, "both copies of the store's superblock are damaged"),
            StoreError::Unsupported { version } => {
                write!(f, "store format version {version} is not supported")
            }
            StoreError::DeviceShrunk { store, device } => {
                write!(f, "the store was written on {store} bytes; the disk has {device}")
            }
            StoreError::DeviceTooSmall { len } => write!(f, "a disk of {len} bytes is too small for a store"),
            StoreError::Device(e) => write!(f, "{e}"),
            StoreError::Full { needed, free } => {
                write!(f, "store full: a record of {needed} bytes, {free} bytes free")
            }
            StoreError::TooLarge { len } => write!(f, "an object of {len} bytes is larger than a record"),
            StoreError::Corrupt { handle } => write!(f, "the disk's copy of {handle} is damaged"),
            StoreError::NoMemory { len } => write!(f, "no memory for a record of {len} bytes"),
            StoreError::Failed => write!(
                f,
                "an earlier write to the disk failed; nothing more is stored until the node restarts"
            ),
            StoreError::TooLargeForDisk { len, limit } => write!(
                f,
                "an object of {len} bytes is larger than this disk takes (a sixteenth of it: {limit} bytes)"
            ),
            StoreError::CompactionLost { position } => {
                write!(
                    f,
                    "compaction found no record at log offset {position}, between the head and the tail"
                )
            }
            StoreError::CheckpointDamaged { position } => write!(
                f,
                "the checkpoint at {position} is damaged and the log cannot be read past it: what came after it would be lost, so the store is not opened"
            ),
        }
    }
}

impl core::error::Error for StoreError {}

impl From<DeviceError> for StoreError {
    fn from(e: DeviceError) -> Self {
        StoreError::Device(e)
    }
}

/// The smallest disk a store is made on.
pub const MIN_DEVICE: u64 = 1 << 20;
/// Records waiting for a commit beyond this many bytes are written out (not flushed) at once,
/// so that a large commit holds little memory.
pub const WRITE_BEHIND: usize = 4 << 20;
/// Compaction copies an object this many bytes at a time, checking each piece as it goes, so
/// that a copy never needs a buffer the object's size (a node's heap may have the room only in
/// smaller pieces). The virtio-blk driver's largest request.
pub const COPY_CHUNK: usize = 1 << 20;

/// What opening a store found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Whether it started from a checkpoint (else from the log's first record).
    pub from_checkpoint: bool,
    /// Records read after the starting point.
    pub records_scanned: u64,
    /// Bytes of the log read after the starting point.
    pub bytes_scanned: u64,
    /// Object records whose bytes were not what their handles name: not held.
    pub damaged_objects: u64,
    /// Records of a last commit found cut short (or with a damaged object), which do not count:
    /// the log ends where that commit began.
    pub dropped_records: u64,
}

pub struct DiskStore<D: Device> {
    device: D,
    superblock: Superblock,
    key: [u8; 32],
    /// Where the next record goes.
    tail: u64,
    next_seq: u64,
    /// The checksum of the last record appended, which the next one chains from.
    prev: [u8; 32],
    /// Where the records not yet written begin (a sector boundary, except after recovery).
    written: u64,
    /// Records appended and not yet written, to be written at `written`. Past [`WRITE_BEHIND`]
    /// bytes their whole sectors are written (not yet flushed) as they come.
    pending: Vec<u8>,
    /// Where the durable records end: the last commit's tail.
    durable: u64,
    /// `pending` is written out past this many bytes ([`WRITE_BEHIND`]; less in tests).
    write_behind: usize,
    /// Compaction copies objects this many bytes at a time ([`COPY_CHUNK`]; less in tests).
    copy_chunk: usize,
    /// A write or flush failed: the store takes nothing more (see [`StoreError::Failed`]).
    failed: bool,
    index: Index,
    /// Counts puts and gets, to tell which objects were used least recently.
    clock: u64,
    /// Compaction's copies and checkpoints may use the ring's reserve ([`DiskStore::reserve`]).
    use_reserve: bool,
    /// Commits that wrote and flushed something.
    commits: u64,
    /// Names what a read brings back, to check it against its handle.
    namer: Namer,
}

/// Names bytes read back as an object of a kind (None: they are no such object), handing the
/// bytes back: a node hashes large blobs on two CPUs.
pub type Namer = fn(Kind, Vec<u8>) -> (Vec<u8>, Option<Handle>);

fn name_here(kind: Kind, bytes: Vec<u8>) -> (Vec<u8>, Option<Handle>) {
    let named = name(kind, &bytes).ok();
    (bytes, named)
}

impl<D: Device> DiskStore<D> {
    /// Whether `device` has never held a store (zeros where the superblocks go).
    pub fn is_blank(device: &mut D) -> Result<bool, StoreError> {
        let mut copies = [0u8; 2 * superblock::COPY_LEN as usize];
        device.read(0, &mut copies)?;
        Ok(copies.iter().all(|b| *b == 0))
    }

    /// Makes a new, empty store on `device`, whatever it held; `store_id` should be random.
    pub fn format(mut device: D, store_id: [u8; 16]) -> Result<DiskStore<D>, StoreError> {
        let len = device.len() - device.len() % SECTOR;
        if len < MIN_DEVICE {
            return Err(StoreError::DeviceTooSmall { len });
        }
        // Both copies, so that a stale copy of an earlier store never outranks this one.
        for sequence in 0..2 {
            let superblock =
                Superblock { store_id, sequence, device_len: len, checkpoint: None, head: LOG_START };
            device.write(superblock.offset(), &superblock.encode())?;
        }
        device.flush()?;
        let superblock =
            Superblock { store_id, sequence: 1, device_len: len, checkpoint: None, head: LOG_START };
        Ok(DiskStore::empty(device, superblock))
    }

    fn empty(device: D, superblock: Superblock) -> DiskStore<D> {
        DiskStore {
            device,
            key: record_key(&superblock.store_id),
            superblock,
            tail: LOG_START,
            next_seq: 0,
            prev: [0; 32],
            written: LOG_START,
            pending: Vec::new(),
            durable: LOG_START,
            write_behind: WRITE_BEHIND,
            copy_chunk: COPY_CHUNK,
            failed: false,
            index: Index::default(),
            clock: 0,
            use_reserve: false,
            commits: 0,
            namer: name_here,
        }
    }

    /// Appends a record (not yet durable: see [`DiskStore::commit`]).
    fn append(&mut self, kind: RecordKind, parts: &[&[u8]]) -> Result<u64, StoreError> {
        self.append_in(kind, parts, false)
    }

    /// [`DiskStore::append`], for a note being taken away (which may use more of the ring).
    fn append_in(
        &mut self,
        kind: RecordKind,
        parts: &[&[u8]],
        removing_a_note: bool,
    ) -> Result<u64, StoreError> {
        let payload_len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        if payload_len > MAX_PAYLOAD {
            return Err(StoreError::TooLarge { len: payload_len });
        }
        if self.failed {
            return Err(StoreError::Failed);
        }
        let len = record_len(payload_len);
        // Room for this record and the padding that closes its commit (at least a header, up to
        // a sector boundary; a whole sector if the record ends on one). The padding itself
        // needs exactly its own length, and may use what the record could.
        let (needed, free) = match kind {
            RecordKind::Pad => (len, self.free()),
            _ => ((self.tail + len + 1).next_multiple_of(SECTOR) - self.tail, self.room(removing_a_note)),
        };
        if needed > free {
            return Err(StoreError::Full { needed, free });
        }
        self.pending.try_reserve(len as usize).map_err(|_| StoreError::NoMemory { len })?;
        let mut header =
            Header { kind, payload_len: payload_len as u32, seq: self.next_seq, checksum: [0; 32] };
        let digest = match kind {
            RecordKind::Object(_) => payload_digest(kind, parts[0]),
            _ => payload_digest(kind, &parts.concat()),
        };
        header.checksum = header.expected_checksum(&self.key, &self.prev, digest.as_bytes());
        let position = self.tail;
        let start = self.pending.len();
        self.pending.extend_from_slice(&header.encode());
        for part in parts {
            self.pending.extend_from_slice(part);
        }
        self.pending.resize(start + len as usize, 0);
        self.tail += len;
        self.next_seq += 1;
        self.prev = header.checksum;
        if self.pending.len() >= self.write_behind {
            self.write_pending(false).inspect_err(|_| self.failed = true)?;
        }
        Ok(position)
    }

    /// Writes the records not yet written: all of them (`all`, the tail on a sector boundary),
    /// or their whole sectors.
    fn write_pending(&mut self, all: bool) -> Result<(), StoreError> {
        let pending_end = self.written + self.pending.len() as u64;
        let end = if all { pending_end } else { pending_end - pending_end % SECTOR };
        if end <= self.written {
            return Ok(());
        }
        // A store opened after a crash may end inside a sector: that sector is written again
        // whole, with the bytes it already holds (docs/STORE.md: sectors are written atomically).
        let sector_start = self.written - self.written % SECTOR;
        let head_len = (self.written - sector_start) as usize;
        if head_len > 0 && end < sector_start + SECTOR {
            return Ok(());
        }
        let n = (end - self.written) as usize;
        let mut rest = &self.pending[..n];
        let mut at = self.written;
        if head_len > 0 {
            let mut first = vec![0u8; SECTOR as usize];
            ring::read_at(&mut self.device, &self.superblock, sector_start, &mut first[..head_len])?;
            let (into_first, after) = rest.split_at(SECTOR as usize - head_len);
            first[head_len..].copy_from_slice(into_first);
            ring::write_at(&mut self.device, &self.superblock, sector_start, &first)?;
            rest = after;
            at = sector_start + SECTOR;
        }
        if !rest.is_empty() {
            ring::write_at(&mut self.device, &self.superblock, at, rest)?;
        }
        self.pending.drain(..n);
        self.written = end;
        Ok(())
    }

    /// Adds an object (its bytes are checked against its handle by the caller, who named them);
    /// false if the store already holds it. Durable once [`DiskStore::commit`] returns.
    pub fn put(&mut self, handle: &Handle, bytes: &[u8]) -> Result<bool, StoreError> {
        if handle.is_literal() || self.index.objects.contains_key(handle) {
            return Ok(false);
        }
        if bytes.len() as u64 > self.max_object() {
            return Err(StoreError::TooLargeForDisk { len: bytes.len() as u64, limit: self.max_object() });
        }
        let position = self.append(RecordKind::Object(handle.kind()), &[handle.as_bytes(), bytes])?;
        self.clock += 1;
        self.index.insert_object(*handle, Location { position, len: bytes.len() as u32, used: self.clock });
        Ok(true)
    }

    /// Sets (or with None, removes) a note. Durable once [`DiskStore::commit`] returns.
    pub fn set_note(
        &mut self,
        space: u8,
        key: &NoteKey,
        value: Option<&NoteValue>,
    ) -> Result<(), StoreError> {
        let value_bytes: &[u8] = value.map_or(&[], |v| &v[..]);
        let removing = value.is_none() && self.index.notes.contains_key(&(space, *key));
        self.append_in(RecordKind::Note(space), &[key, value_bytes], removing)?;
        self.index.set_note(space, *key, value.copied());
        Ok(())
    }

    pub fn note(&self, space: u8, key: &NoteKey) -> Option<&NoteValue> {
        self.index.notes.get(&(space, *key))
    }

    /// Every note of a namespace.
    pub fn notes(&self, space: u8) -> impl Iterator<Item = (&NoteKey, &NoteValue)> {
        self.index
            .notes
            .range((space, [0; index::KEY_LEN])..=(space, [0xff; index::KEY_LEN]))
            .map(|((_, k), v)| (k, v))
    }

    /// Writes what was appended since the last commit and flushes: every record appended so far
    /// is then durable. One write and one flush however many records (group commit).
    pub fn commit(&mut self) -> Result<(), StoreError> {
        if self.failed {
            return Err(StoreError::Failed);
        }
        // Records written out ahead of the commit (write-behind) are not durable either.
        if self.tail == self.durable {
            return Ok(());
        }
        // Every commit ends with a padding record, which also takes it to a sector boundary:
        // recovery counts a commit only once it has read its padding (records are 64-byte
        // aligned, so a gap holds at least a header; none left, a whole sector).
        let gap = match self.tail.next_multiple_of(SECTOR) - self.tail {
            0 => SECTOR,
            gap => gap,
        };
        self.append(RecordKind::Pad, &[&vec![0u8; (gap - HEADER_LEN) as usize]])?;
        // Whatever fails from here leaves the disk unknown: nothing more is taken, so that no
        // one is told something is stored that may not be.
        let written = self.write_pending(true).and_then(|()| self.device.flush().map_err(StoreError::from));
        if let Err(e) = written {
            self.failed = true;
            return Err(e);
        }
        self.durable = self.tail;
        self.commits += 1;
        Ok(())
    }

    /// An object's bytes, checked against its handle (a literal's are in it). None if the store
    /// does not hold it.
    pub fn get(&mut self, handle: &Handle) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(literal) = handle.literal() {
            return Ok(Some(literal.to_vec()));
        }
        self.clock += 1;
        let clock = self.clock;
        let Some(at) = self.index.objects.get_mut(handle).map(|at| {
            at.used = clock;
            *at
        }) else {
            return Ok(None);
        };
        let start = at.position + HEADER_LEN + Handle::LEN as u64;
        let mut bytes = Vec::new();
        bytes
            .try_reserve_exact(at.len as usize)
            .map_err(|_| StoreError::NoMemory { len: u64::from(at.len) })?;
        // Written to the disk up to `written`, the rest still in `pending`.
        let end = start + u64::from(at.len);
        let on_disk = end.min(self.written).saturating_sub(start);
        bytes.resize(on_disk as usize, 0);
        if on_disk > 0 {
            self.read_at(start, &mut bytes)?;
        }
        if end > self.written {
            let from = (start.max(self.written) - self.written) as usize;
            bytes.extend_from_slice(&self.pending[from..from + (end - start - on_disk) as usize]);
        }
        match (self.namer)(handle.kind(), bytes) {
            (bytes, Some(actual)) if actual == *handle => Ok(Some(bytes)),
            _ => {
                // Not held any more: a later put writes it again.
                self.index.remove_object(handle);
                Err(StoreError::Corrupt { handle: *handle })
            }
        }
    }

    /// Whether the store holds the object durably (a literal always): appended objects count
    /// once their commit returns.
    pub fn contains(&self, handle: &Handle) -> bool {
        handle.is_literal() || self.index.objects.get(handle).is_some_and(|at| at.position < self.durable)
    }

    /// Whether a write or flush has failed (see [`StoreError::Failed`]).
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// The length of an object the store holds (durably or not).
    pub fn len_of(&self, handle: &Handle) -> Option<u32> {
        self.index.objects.get(handle).map(|at| at.len)
    }

    /// Writes the whole index as a checkpoint record and points the superblock at it, so that
    /// the next start reads from here rather than the whole log.
    pub fn checkpoint(&mut self) -> Result<(), StoreError> {
        self.checkpoint_from(self.superblock.head)
    }

    /// A checkpoint after which the log begins at `head` (everything before it is reclaimed):
    /// every record the index names lies at or after it.
    fn checkpoint_from(&mut self, head: u64) -> Result<(), StoreError> {
        let reserve = core::mem::replace(&mut self.use_reserve, true);
        let done = self.checkpoint_from_using_reserve(head);
        self.use_reserve = reserve;
        done
    }

    fn checkpoint_from_using_reserve(&mut self, head: u64) -> Result<(), StoreError> {
        self.commit()?;
        let prev = self.prev;
        let encoded =
            self.index.try_encode().ok_or(StoreError::NoMemory { len: self.index.encoded_len() as u64 })?;
        let position = self.append(RecordKind::Checkpoint, &[&encoded])?;
        let seq = self.next_seq - 1;
        self.commit()?;
        self.write_superblock(Some(Checkpoint { position, seq, prev }), head)
    }

    /// Writes and flushes the next superblock: the log starts from `checkpoint`, at `head`.
    fn write_superblock(&mut self, checkpoint: Option<Checkpoint>, head: u64) -> Result<(), StoreError> {
        let superblock = Superblock {
            sequence: self.superblock.sequence.checked_add(1).ok_or(StoreError::SuperblockDamaged)?,
            checkpoint,
            head,
            ..self.superblock
        };
        let written =
            self.device.write(superblock.offset(), &superblock.encode()).and_then(|()| self.device.flush());
        if let Err(e) = written {
            self.failed = true;
            return Err(e.into());
        }
        self.superblock = superblock;
        Ok(())
    }

    /// Moves the head forward to `head` (at or before the last checkpoint) without a new
    /// checkpoint: what lies before it is given back to the ring. Everything appended so far
    /// is committed first, so the copies of whatever the index still places before `head` are
    /// durable, and recovery finds them after the checkpoint (docs/STORE.md, "Recovery").
    fn move_head(&mut self, head: u64) -> Result<(), StoreError> {
        if self.tail != self.durable {
            self.commit()?;
            // The copies' commit must not be the last one: recovery drops a last commit with a
            // damaged object (a crash cut it short) and would then forget every object copied
            // in it, since the head has passed their old records. A commit of one padding
            // record after it makes it an earlier commit, of which only damaged objects go.
            self.append(RecordKind::Pad, &[&[0u8; (SECTOR - HEADER_LEN) as usize]])?;
            let written =
                self.write_pending(true).and_then(|()| self.device.flush().map_err(StoreError::from));
            if let Err(e) = written {
                self.failed = true;
                return Err(e);
            }
            self.durable = self.tail;
            self.commits += 1;
        }
        debug_assert!(self.superblock.checkpoint.is_some_and(|c| head <= c.position));
        self.write_superblock(self.superblock.checkpoint, head)
    }

    /// Bytes of log after the last checkpoint: what the next start reads and checks.
    pub fn since_checkpoint(&self) -> u64 {
        self.tail - self.superblock.checkpoint.map_or(self.superblock.head, |c| c.position)
    }

    /// The handles of every object the store holds (durably or not), in a fresh list.
    pub fn object_handles(&self) -> Result<Vec<Handle>, StoreError> {
        let mut handles = Vec::new();
        let count = self.index.objects.len();
        handles
            .try_reserve_exact(count)
            .map_err(|_| StoreError::NoMemory { len: (count * Handle::LEN) as u64 })?;
        handles.extend(self.index.objects.keys().copied());
        Ok(handles)
    }

    /// Reads every object back and checks it against its handle; the damaged ones.
    pub fn scrub(&mut self) -> Result<Vec<Handle>, StoreError> {
        let handles = self.object_handles()?;
        let mut damaged = Vec::new();
        for handle in handles {
            match self.get(&handle) {
                Ok(_) => {}
                Err(StoreError::Corrupt { handle }) => damaged.push(handle),
                Err(e) => return Err(e),
            }
        }
        Ok(damaged)
    }

    pub fn stats(&self) -> Stats {
        Stats {
            objects: self.index.objects.len() as u64,
            object_bytes: self.index.object_bytes,
            log_bytes: self.tail - self.superblock.head,
            free_bytes: self.free().saturating_sub(self.reserve()),
            commits: self.commits,
            device_bytes: self.superblock.device_len,
        }
    }

    /// How reads name what they bring back (by default BLAKE3 here, on this CPU).
    pub fn set_namer(&mut self, namer: Namer) {
        self.namer = namer;
    }

    /// The device, for the caller to reclaim (tests simulate crashes through it).
    pub fn into_device(self) -> D {
        self.device
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    pub objects: u64,
    pub object_bytes: u64,
    /// Bytes of log between the head and the tail: what holds records that may be needed.
    pub log_bytes: u64,
    /// Bytes objects and notes may still take (the ring up to the head, less the reserve kept
    /// for compaction and checkpoints).
    pub free_bytes: u64,
    pub device_bytes: u64,
    /// Commits (each one write and one flush) since the store was opened.
    pub commits: u64,
}
