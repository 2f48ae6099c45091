//! The superblock (docs/STORE.md, "Superblock"): two copies, at bytes 0 and 4096, written in
//! turn, each with a sequence number and a checksum; the valid copy with the higher sequence
//! number is the store's. A write torn by a crash spoils one copy at most, and the other is
//! the previous state, which is still consistent (the log is scanned forward from it).

use crate::StoreError;

pub const MAGIC: [u8; 8] = *b"CAIRNSB1";
pub const VERSION: u32 = 2;
/// Bytes each copy takes on the disk.
pub const COPY_LEN: u64 = 4096;
/// Where the log begins: after both copies.
pub const LOG_START: u64 = 2 * COPY_LEN;
/// No checkpoint yet.
pub const NO_CHECKPOINT: u64 = u64::MAX;
const FIELDS_LEN: usize = 136;
const CHECKSUM_AT: usize = FIELDS_LEN - 32;

/// Where recovery starts: a checkpoint record, which holds the whole index as it was there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub position: u64,
    pub seq: u64,
    /// The checksum of the record before the checkpoint, which the checkpoint's own checksum
    /// chains from (docs/STORE.md, "Records").
    pub prev: [u8; 32],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub store_id: [u8; 16],
    /// Incremented on every write; copy `sequence % 2` holds it.
    pub sequence: u64,
    pub device_len: u64,
    pub checkpoint: Option<Checkpoint>,
    /// Where the oldest record still needed begins (a log offset, docs/STORE.md, "The log is
    /// a ring"): the log may be written up to one lap past it, never further.
    pub head: u64,
}

impl Superblock {
    /// Where this superblock's copy goes.
    pub fn offset(&self) -> u64 {
        (self.sequence % 2) * COPY_LEN
    }

    pub fn encode(&self) -> [u8; COPY_LEN as usize] {
        let mut block = [0u8; COPY_LEN as usize];
        block[0..8].copy_from_slice(&MAGIC);
        block[8..12].copy_from_slice(&VERSION.to_le_bytes());
        block[12..16].copy_from_slice(&(COPY_LEN as u32).to_le_bytes());
        block[16..32].copy_from_slice(&self.store_id);
        block[32..40].copy_from_slice(&self.sequence.to_le_bytes());
        block[40..48].copy_from_slice(&self.device_len.to_le_bytes());
        let (position, seq, prev) = match self.checkpoint {
            Some(c) => (c.position, c.seq, c.prev),
            None => (NO_CHECKPOINT, 0, [0; 32]),
        };
        block[48..56].copy_from_slice(&position.to_le_bytes());
        block[56..64].copy_from_slice(&seq.to_le_bytes());
        block[64..96].copy_from_slice(&prev);
        block[96..104].copy_from_slice(&self.head.to_le_bytes());
        let checksum = *blake3::hash(&block[..CHECKSUM_AT]).as_bytes();
        block[CHECKSUM_AT..FIELDS_LEN].copy_from_slice(&checksum);
        block
    }

    /// A copy that checks, or why not. All zeros is [`Copy::Blank`] (a disk never formatted).
    pub fn decode(block: &[u8]) -> Copy {
        if block.iter().all(|b| *b == 0) {
            return Copy::Blank;
        }
        if block.len() < FIELDS_LEN || block[0..8] != MAGIC {
            return Copy::Foreign;
        }
        if *blake3::hash(&block[..CHECKSUM_AT]).as_bytes() != block[CHECKSUM_AT..FIELDS_LEN] {
            return Copy::Damaged;
        }
        let u32_at = |at: usize| u32::from_le_bytes(block[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(block[at..at + 8].try_into().expect("8 bytes"));
        if u32_at(8) != VERSION || u64::from(u32_at(12)) != COPY_LEN {
            return Copy::Unsupported { version: u32_at(8) };
        }
        let position = u64_at(48);
        let checkpoint = (position != NO_CHECKPOINT).then(|| Checkpoint {
            position,
            seq: u64_at(56),
            prev: block[64..96].try_into().expect("32 bytes"),
        });
        Copy::Valid(Superblock {
            store_id: block[16..32].try_into().expect("16 bytes"),
            sequence: u64_at(32),
            device_len: u64_at(40),
            checkpoint,
            head: u64_at(96),
        })
    }

    /// The store's superblock from its two copies.
    pub fn choose(first: Copy, second: Copy) -> Result<Superblock, StoreError> {
        match (first, second) {
            (Copy::Valid(a), Copy::Valid(b)) => Ok(if b.sequence > a.sequence { b } else { a }),
            (Copy::Valid(a), _) | (_, Copy::Valid(a)) => Ok(a),
            (Copy::Blank, Copy::Blank) => Err(StoreError::NotFormatted),
            (Copy::Unsupported { version }, _) | (_, Copy::Unsupported { version }) => {
                Err(StoreError::Unsupported { version })
            }
            (Copy::Foreign, Copy::Foreign | Copy::Blank) | (Copy::Blank, Copy::Foreign) => {
                Err(StoreError::Foreign)
            }
            _ => Err(StoreError::SuperblockDamaged),
        }
    }
}

/// What one copy of the superblock turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Copy {
    Valid(Superblock),
    Blank,
    /// Not a Cairn store's superblock at all.
    Foreign,
    /// A Cairn superblock whose checksum fails.
    Damaged,
    Unsupported {
        version: u32,
    },
}
