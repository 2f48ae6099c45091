//! What the store knows, in memory: where each object's record is, and the notes (memo entries,
//! pins, jobs: 40-byte keys to 40-byte values, by namespace). A checkpoint record holds all of
//! it (docs/STORE.md, "Checkpoints").

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use cairn_object::{Handle, Kind};

pub const KEY_LEN: usize = 40;
pub type NoteKey = [u8; KEY_LEN];
pub type NoteValue = [u8; KEY_LEN];

const MAGIC: [u8; 4] = *b"CKP1";
const OBJECT_ENTRY: usize = Handle::LEN + 8 + 4;
const NOTE_ENTRY: usize = 1 + 2 * KEY_LEN;

/// Where an object's record is: its position in the log and its bytes' length; and, in memory
/// only, when it was last used (for collecting the least recently used first).
#[derive(Clone, Copy, Debug)]
pub struct Location {
    pub position: u64,
    pub len: u32,
    pub used: u64,
}

impl PartialEq for Location {
    fn eq(&self, other: &Location) -> bool {
        (self.position, self.len) == (other.position, other.len)
    }
}

impl Eq for Location {}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Index {
    pub objects: BTreeMap<Handle, Location>,
    pub notes: BTreeMap<(u8, NoteKey), NoteValue>,
    /// Bytes of the objects held.
    pub object_bytes: u64,
}

impl Index {
    pub fn insert_object(&mut self, handle: Handle, location: Location) {
        // The bytes counted are those of the location held (an object named again has the
        // same bytes, but a checkpoint or record may say otherwise: they are not trusted here).
        if let Some(old) = self.objects.insert(handle, location) {
            self.object_bytes -= u64::from(old.len);
        }
        self.object_bytes += u64::from(location.len);
    }

    pub fn remove_object(&mut self, handle: &Handle) {
        if let Some(at) = self.objects.remove(handle) {
            self.object_bytes -= u64::from(at.len);
        }
    }

    /// Forgets the objects whose records lie before `head` (given back to the ring).
    pub fn forget_before(&mut self, head: u64) {
        let mut gone = 0;
        self.objects.retain(|_, at| {
            let keep = at.position >= head;
            if !keep {
                gone += u64::from(at.len);
            }
            keep
        });
        self.object_bytes -= gone;
    }

    pub fn set_note(&mut self, space: u8, key: NoteKey, value: Option<NoteValue>) {
        match value {
            Some(value) => self.notes.insert((space, key), value),
            None => self.notes.remove(&(space, key)),
        };
    }

    pub fn encoded_len(&self) -> usize {
        MAGIC.len() + 16 + self.objects.len() * OBJECT_ENTRY + self.notes.len() * NOTE_ENTRY
    }

    /// The checkpoint's payload; None if there is no memory for it.
    pub fn try_encode(&self) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        out.try_reserve_exact(self.encoded_len()).ok()?;
        self.encode_into(&mut out);
        Some(out)
    }

    #[cfg(test)]
    pub fn encode(&self) -> Vec<u8> {
        self.try_encode().expect("memory for a test's index")
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&(self.objects.len() as u64).to_le_bytes());
        for (handle, at) in &self.objects {
            out.extend_from_slice(handle.as_bytes());
            out.extend_from_slice(&at.position.to_le_bytes());
            out.extend_from_slice(&at.len.to_le_bytes());
        }
        out.extend_from_slice(&(self.notes.len() as u64).to_le_bytes());
        for ((space, key), value) in &self.notes {
            out.push(*space);
            out.extend_from_slice(key);
            out.extend_from_slice(value);
        }
    }

    /// The index a checkpoint holds; None if it is not one (its checksum has already been
    /// checked, so this only fails for a store written by something else).
    pub fn decode(bytes: &[u8], log_end: u64) -> Option<Index> {
        let mut rest = bytes.strip_prefix(&MAGIC)?;
        let mut take = |n: usize| -> Option<&[u8]> {
            let (head, tail) = rest.split_at_checked(n)?;
            rest = tail;
            Some(head)
        };
        let mut index = Index::default();
        let objects = u64::from_le_bytes(take(8)?.try_into().ok()?);
        for _ in 0..objects {
            let entry = take(OBJECT_ENTRY)?;
            let handle = Handle::from_bytes(&entry[..Handle::LEN]).ok()?;
            let position = u64::from_le_bytes(entry[Handle::LEN..Handle::LEN + 8].try_into().ok()?);
            let len = u32::from_le_bytes(entry[Handle::LEN + 8..].try_into().ok()?);
            // Each record lies whole in the log before the checkpoint, on a record boundary.
            let record_end = position
                .checked_add(crate::record::HEADER_LEN + Handle::LEN as u64 + u64::from(len))
                .filter(|end| *end <= log_end);
            let placed =
                position >= crate::superblock::LOG_START && position.is_multiple_of(crate::record::ALIGN);
            let sized = handle.kind() != Kind::Blob || handle.size() == u64::from(len);
            // Written from a map: each handle once (a second entry would replace the first).
            let repeated = index.objects.contains_key(&handle);
            if handle.is_literal() || !placed || !sized || record_end.is_none() || repeated {
                return None;
            }
            index.insert_object(handle, Location { position, len, used: 0 });
        }
        let notes = u64::from_le_bytes(take(8)?.try_into().ok()?);
        for _ in 0..notes {
            let entry = take(NOTE_ENTRY)?;
            let key: NoteKey = entry[1..1 + KEY_LEN].try_into().ok()?;
            let value: NoteValue = entry[1 + KEY_LEN..].try_into().ok()?;
            index.notes.insert((entry[0], key), value);
        }
        rest.is_empty().then_some(index)
    }
}
