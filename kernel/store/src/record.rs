//! Records (docs/STORE.md, "Records"): a 64-byte header, then the payload, padded to 64 bytes.
//! Each header's checksum is a keyed BLAKE3 (the key comes from the store's id) of the header's
//! fields, the checksum of the record before it, and the payload's digest: a record from
//! another store, from an earlier pass over the same place, or out of order does not check.

use cairn_object::{Handle, Kind};

pub const HEADER_LEN: u64 = 64;
/// Records start on this boundary.
pub const ALIGN: u64 = 64;
const MAGIC: [u8; 4] = *b"CRc1";

/// The largest payload a record may carry.
pub const MAX_PAYLOAD: u64 = u32::MAX as u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// An object: its handle (40 bytes), then its bytes. The handle is the payload's digest.
    Object(Kind),
    /// A note in a namespace: a 40-byte key and a 40-byte value (memo entries, pins, jobs).
    Note(u8),
    /// The whole index, from which recovery can start (docs/STORE.md, "Checkpoints").
    Checkpoint,
    /// Fills a commit up to a sector boundary, so that no later write touches a durable sector.
    Pad,
}

impl RecordKind {
    fn code(self) -> (u8, u8) {
        match self {
            RecordKind::Object(kind) => (1, kind as u8),
            RecordKind::Note(space) => (2, space),
            RecordKind::Checkpoint => (3, 0),
            RecordKind::Pad => (4, 0),
        }
    }

    fn from_code(code: u8, sub: u8) -> Option<RecordKind> {
        Some(match code {
            1 => RecordKind::Object(*Kind::ALL.iter().find(|k| **k as u8 == sub)?),
            2 => RecordKind::Note(sub),
            3 if sub == 0 => RecordKind::Checkpoint,
            4 if sub == 0 => RecordKind::Pad,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: RecordKind,
    pub payload_len: u32,
    pub seq: u64,
    pub checksum: [u8; 32],
}

impl Header {
    /// Bytes the record takes on the disk, header and padding included.
    pub fn record_len(&self) -> u64 {
        record_len(u64::from(self.payload_len))
    }

    pub fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut h = self.fields();
        h[24..56].copy_from_slice(&self.checksum);
        h
    }

    fn fields(&self) -> [u8; HEADER_LEN as usize] {
        let mut h = [0u8; HEADER_LEN as usize];
        let (code, sub) = self.kind.code();
        h[0..4].copy_from_slice(&MAGIC);
        h[4] = code;
        h[5] = sub;
        h[8..12].copy_from_slice(&self.payload_len.to_le_bytes());
        h[16..24].copy_from_slice(&self.seq.to_le_bytes());
        h
    }

    /// A header whose fields are well formed (its checksum is checked with the payload).
    pub fn decode(bytes: &[u8; HEADER_LEN as usize]) -> Option<Header> {
        if bytes[0..4] != MAGIC || bytes[6..8] != [0, 0] || bytes[12..16] != [0; 4] || bytes[56..64] != [0; 8]
        {
            return None;
        }
        Some(Header {
            kind: RecordKind::from_code(bytes[4], bytes[5])?,
            payload_len: u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")),
            seq: u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes")),
            checksum: bytes[24..56].try_into().expect("32 bytes"),
        })
    }

    /// The checksum this header must carry, given the previous record's checksum and the
    /// payload's digest ([`payload_digest`]).
    pub fn expected_checksum(&self, key: &[u8; 32], prev: &[u8; 32], digest: &[u8]) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_keyed(key);
        hasher.update(&self.fields()[..24]);
        hasher.update(prev);
        hasher.update(digest);
        *hasher.finalize().as_bytes()
    }
}

/// What a record's checksum covers of its payload: an object's handle (which names its bytes:
/// they are checked against it whenever they are read), or BLAKE3 of anything else.
pub fn payload_digest(kind: RecordKind, payload: &[u8]) -> PayloadDigest {
    match kind {
        RecordKind::Object(_) => {
            let mut handle = [0u8; Handle::LEN];
            let n = payload.len().min(Handle::LEN);
            handle[..n].copy_from_slice(&payload[..n]);
            PayloadDigest::Handle(handle)
        }
        _ => PayloadDigest::Hash(*blake3::hash(payload).as_bytes()),
    }
}

pub enum PayloadDigest {
    Handle([u8; Handle::LEN]),
    Hash([u8; 32]),
}

impl PayloadDigest {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            PayloadDigest::Handle(h) => h,
            PayloadDigest::Hash(h) => h,
        }
    }
}

pub fn record_len(payload_len: u64) -> u64 {
    (HEADER_LEN + payload_len).next_multiple_of(ALIGN)
}

/// The key records are checksummed with, from the store's id.
pub fn record_key(store_id: &[u8; 16]) -> [u8; 32] {
    blake3::derive_key("cairn store v1 record checksums", store_id)
}
