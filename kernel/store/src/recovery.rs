//! Opening a store (docs/STORE.md, "Recovery"): the superblock, its checkpoint, and the
//! commits after it that check, read a commit at a time.

use alloc::vec::Vec;

use cairn_object::store::name;
use cairn_object::{Handle, Kind};

use crate::index::{self, Index, Location, NoteKey, NoteValue};
use crate::record::{self, HEADER_LEN, Header, RecordKind, payload_digest};
use crate::superblock::{self, Checkpoint, LOG_START, Superblock};
use crate::{Device, DiskStore, MIN_DEVICE, Recovery, SECTOR, StoreError};

/// The furthest a head may be (2^62 bytes of log: centuries of writing at any disk's speed).
const MAX_HEAD: u64 = 1 << 62;

impl<D: Device> DiskStore<D> {
    /// Opens the store on `device`: the newer valid superblock, its checkpoint, and every
    /// record after it that checks, up to the first that does not.
    pub fn open(mut device: D) -> Result<(DiskStore<D>, Recovery), StoreError> {
        let mut copies = [[0u8; superblock::COPY_LEN as usize]; 2];
        for (i, copy) in copies.iter_mut().enumerate() {
            device.read(i as u64 * superblock::COPY_LEN, copy)?;
        }
        let superblock = Superblock::choose(Superblock::decode(&copies[0]), Superblock::decode(&copies[1]))?;
        if device.len() < superblock.device_len {
            return Err(StoreError::DeviceShrunk { store: superblock.device_len, device: device.len() });
        }
        let device_len = superblock.device_len;
        if !device_len.is_multiple_of(SECTOR) || device_len < MIN_DEVICE {
            return Err(StoreError::SuperblockDamaged);
        }
        let head = superblock.head;
        // A head past MAX_HEAD was made up (offsets only grow by what is written), and offsets
        // a lap and a record past it would overflow.
        if head < LOG_START || !head.is_multiple_of(record::ALIGN) || head > MAX_HEAD {
            return Err(StoreError::SuperblockDamaged);
        }
        let mut store = DiskStore::empty(device, superblock);
        let mut recovery = Recovery::default();
        match superblock.checkpoint {
            // Without a checkpoint the log was never cut: it begins at its first record.
            None if head != LOG_START => return Err(StoreError::SuperblockDamaged),
            None => {}
            Some(checkpoint) => {
                let aligned =
                    checkpoint.position >= head && checkpoint.position.is_multiple_of(record::ALIGN);
                let within_a_lap = checkpoint.position - head.min(checkpoint.position) < store.log_len();
                if !aligned || !within_a_lap || checkpoint.seq == u64::MAX {
                    return Err(StoreError::SuperblockDamaged);
                }
                // A checkpoint that does not check (it was flushed before the superblock named
                // it) is damaged. While the log is still whole from its first record (nothing
                // reclaimed yet) the scan starts there, but it must get past the checkpoint, or
                // what came after it would be lost; once records have been reclaimed there is
                // nothing to start from.
                recovery.from_checkpoint = store.load_checkpoint(checkpoint)?;
                if !recovery.from_checkpoint {
                    if head != LOG_START {
                        return Err(StoreError::CheckpointDamaged { position: checkpoint.position });
                    }
                    store.scan(&mut recovery)?;
                    if store.tail <= checkpoint.position {
                        return Err(StoreError::CheckpointDamaged { position: checkpoint.position });
                    }
                }
            }
        }
        store.scan(&mut recovery)?;
        store.index.forget_before(head);
        store.written = store.tail;
        store.durable = store.tail;
        Ok((store, recovery))
    }

    fn load_checkpoint(&mut self, checkpoint: Checkpoint) -> Result<bool, StoreError> {
        let Some((header, payload)) =
            self.read_record(checkpoint.position, checkpoint.seq, &checkpoint.prev)?
        else {
            return Ok(false);
        };
        if header.kind != RecordKind::Checkpoint {
            return Ok(false);
        }
        // Positions the index names lie before the checkpoint itself; those before the head
        // were copied by a compaction after the checkpoint (the scan finds the copies) or
        // forgotten, and go once the scan is done.
        let Some(index) = Index::decode(&payload, checkpoint.position) else {
            return Ok(false);
        };
        self.index = index;
        self.tail = checkpoint.position + header.record_len();
        self.next_seq = checkpoint.seq + 1;
        self.prev = header.checksum;
        Ok(true)
    }

    /// The well-formed header at log offset `position`, if one is there (not yet checked).
    pub(crate) fn read_header(&mut self, position: u64) -> Result<Option<Header>, StoreError> {
        let mut bytes = [0u8; HEADER_LEN as usize];
        self.read_at(position, &mut bytes)?;
        Ok(Header::decode(&bytes))
    }

    /// The record at `position` if it is the one expected there: sequence `seq`, chained from
    /// `prev`. An object record's bytes are checked by the caller.
    fn read_record(
        &mut self,
        position: u64,
        seq: u64,
        prev: &[u8; 32],
    ) -> Result<Option<(Header, Vec<u8>)>, StoreError> {
        let Some(header) = self.read_header(position)? else { return Ok(None) };
        // A record lies at most a lap after the head (it may cross the end of the disk).
        let beyond_the_head =
            (position + header.record_len()).saturating_sub(self.superblock.head) > self.log_len();
        if header.seq != seq || beyond_the_head {
            return Ok(None);
        }
        let mut payload = Vec::new();
        if payload.try_reserve_exact(header.payload_len as usize).is_err() {
            // Not the end of the log: the node has too little memory to read it.
            return Err(StoreError::NoMemory { len: u64::from(header.payload_len) });
        }
        payload.resize(header.payload_len as usize, 0);
        self.read_at(position + HEADER_LEN, &mut payload)?;
        let digest = payload_digest(header.kind, &payload);
        if header.expected_checksum(&self.key, prev, digest.as_bytes()) != header.checksum {
            return Ok(None);
        }
        Ok(Some((header, payload)))
    }

    /// Reads the log forward from `tail`, a commit at a time: a commit's records count once its
    /// closing padding record is read. The last commit found counts only if it is whole and all
    /// its objects' bytes are what their handles name: otherwise it was cut short by a crash
    /// (it was never acknowledged) and the log ends where it began. An object damaged in an
    /// earlier commit is not held, and the rest of that commit still counts.
    fn scan(&mut self, recovery: &mut Recovery) -> Result<(), StoreError> {
        let mut commit = Commit::starting(self.tail, self.next_seq, self.prev);
        // A closed commit with a damaged object, applied only if another commit follows it.
        let mut suspect: Option<Commit> = None;
        let (mut at, mut seq, mut prev) = (self.tail, self.next_seq, self.prev);
        while let Some((header, payload)) = self.read_record(at, seq, &prev)? {
            match header.kind {
                RecordKind::Object(kind) => match object_in(kind, &payload) {
                    Some(handle) => {
                        let len = (payload.len() - Handle::LEN) as u32;
                        commit.objects.push((handle, Location { position: at, len, used: 0 }));
                    }
                    None => commit.damaged += 1,
                },
                RecordKind::Note(space) => {
                    let Some((key, value)) = note_in(&payload) else { break };
                    commit.notes.push((space, key, value));
                }
                // The scan already knows everything a checkpoint it passes holds.
                RecordKind::Checkpoint => {}
                RecordKind::Pad => commit.closed = true,
            }
            recovery.records_scanned += 1;
            recovery.bytes_scanned += header.record_len();
            at += header.record_len();
            seq += 1;
            prev = header.checksum;
            if commit.closed {
                commit.end = at;
                if let Some(earlier) = suspect.take() {
                    self.apply(earlier, recovery);
                }
                let next = Commit::starting(at, seq, prev);
                let done = core::mem::replace(&mut commit, next);
                if done.damaged > 0 {
                    suspect = Some(done);
                } else {
                    self.apply(done, recovery);
                }
            }
        }
        // The log ends before `commit` (not closed) and before `suspect`, if any.
        let end = suspect.as_ref().unwrap_or(&commit);
        recovery.dropped_records = seq - end.seq;
        self.tail = end.start;
        self.next_seq = end.seq;
        self.prev = end.prev;
        Ok(())
    }

    fn apply(&mut self, commit: Commit, recovery: &mut Recovery) {
        recovery.damaged_objects += commit.damaged;
        for (handle, location) in commit.objects {
            self.index.insert_object(handle, location);
        }
        for (space, key, value) in commit.notes {
            self.index.set_note(space, key, value);
        }
    }
}

/// The handle and bytes of an object record's payload, if they agree.
fn object_in(kind: Kind, payload: &[u8]) -> Option<Handle> {
    let handle = Handle::from_bytes(payload.get(..Handle::LEN)?).ok()?;
    let bytes = &payload[Handle::LEN..];
    (handle.kind() == kind && !handle.is_literal() && name(kind, bytes).ok()? == handle).then_some(handle)
}

/// A note record's key and value (none: removed); None if it is not a note's payload.
fn note_in(payload: &[u8]) -> Option<(NoteKey, Option<NoteValue>)> {
    let key: NoteKey = payload.get(..index::KEY_LEN)?.try_into().ok()?;
    match payload.len() {
        index::KEY_LEN => Some((key, None)),
        len if len == 2 * index::KEY_LEN => Some((key, Some(payload[index::KEY_LEN..].try_into().ok()?))),
        _ => None,
    }
}

/// The records of one commit met in a scan, applied to the index once it is known whole.
struct Commit {
    /// Where it begins, and the sequence number and chain there.
    start: u64,
    seq: u64,
    prev: [u8; 32],
    /// Where it ends (after its closing padding record), once closed.
    end: u64,
    closed: bool,
    objects: Vec<(Handle, Location)>,
    notes: Vec<(u8, NoteKey, Option<NoteValue>)>,
    damaged: u64,
}

impl Commit {
    fn starting(start: u64, seq: u64, prev: [u8; 32]) -> Commit {
        Commit {
            start,
            seq,
            prev,
            end: start,
            closed: false,
            objects: Vec::new(),
            notes: Vec::new(),
            damaged: 0,
        }
    }
}
