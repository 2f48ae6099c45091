//! Where objects live (docs/OBJECTS.md, "The store"). Objects are kept by handle as
//! reference-counted [`Bytes`]: `get` hands out the stored bytes without copying them. A full
//! store makes room by evicting objects nothing pins, least recently used first ([`MemStore`]).

mod mem;
mod pieces;
#[cfg(test)]
mod pieces_review_tests;

use core::fmt;

use bytes::Bytes;

use crate::error::DecodeError;
use crate::handle::{Handle, Kind};
use crate::thunk::Thunk;
use crate::tree::Tree;

pub use mem::{MemStore, OBJECT_OVERHEAD};
pub use pieces::ObjectNamer;

/// [`name`], for a blob whose BLAKE3 digest the caller computed from these very bytes.
pub fn name_blob_with_digest(kind: Kind, bytes: &[u8], blob_digest: [u8; 32]) -> Result<Handle, DecodeError> {
    if kind != Kind::Blob || bytes.len() <= crate::LITERAL_MAX {
        return name(kind, bytes);
    }
    Ok(Handle::named(Kind::Blob, bytes.len() as u64, crate::Digest(blob_digest)))
}

/// Names an object's bytes as `kind`, checking a tree's or thunk's encoding first.
pub fn name(kind: Kind, bytes: &[u8]) -> Result<Handle, DecodeError> {
    Ok(match kind {
        Kind::Blob => Handle::blob(bytes),
        Kind::Tree => Tree::decode(bytes)?.handle(),
        Kind::Thunk => Thunk::decode(bytes)?.handle(),
    })
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Objects held (literal blobs are never stored: their handle is their content).
    pub objects: u64,
    /// Bytes held, counting each object's bytes once.
    pub bytes: u64,
    /// What the limit counts: the bytes, and [`OBJECT_OVERHEAD`] for every object.
    pub used: u64,
    /// The most the store will hold (of `used`).
    pub limit: u64,
    /// Objects that something pins (they are never evicted), and what they count.
    pub pinned: u64,
    pub pinned_used: u64,
    /// Objects evicted to make room, and their bytes, since the store began.
    pub evictions: u64,
    pub evicted_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// The bytes are not a valid encoding of the kind.
    Invalid { kind: Kind, error: DecodeError },
    /// The bytes name a different object than the one claimed.
    Mismatch { claimed: Handle, actual: Handle },
    /// Storing `needed` more bytes would pass the limit.
    Full { needed: u64, used: u64, limit: u64 },
    /// The disk that keeps the store failed, or is full (docs/STORE.md).
    Disk(alloc::string::String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Invalid { kind, error } => write!(f, "invalid {kind}: {error}"),
            StoreError::Mismatch { claimed, actual } => {
                write!(f, "object claimed to be {claimed} is really {actual}")
            }
            StoreError::Full { needed, used, limit } => write!(
                f,
                "store is full: {needed} more bytes would exceed the limit ({used} of {limit} bytes used)"
            ),
            StoreError::Disk(why) => write!(f, "the store's disk: {why}"),
        }
    }
}

pub trait Store {
    /// Stores `bytes` as an object of `kind` and returns its name.
    fn put(&mut self, kind: Kind, bytes: Bytes) -> Result<Handle, StoreError>;

    /// Stores bytes from an untrusted source only if they are the object `claimed` names.
    fn put_verified(&mut self, claimed: &Handle, bytes: Bytes) -> Result<(), StoreError>;

    /// The object's bytes (a blob's content, a tree's or thunk's encoding), without copying.
    fn get(&self, handle: &Handle) -> Option<Bytes>;

    fn contains(&self, handle: &Handle) -> bool;

    fn stats(&self) -> StoreStats;

    /// Keeps the object from eviction until as many [`Store::unpin`]s; false if the store does
    /// not hold it (a literal blob is always there: true).
    fn pin(&mut self, handle: &Handle) -> bool;

    fn unpin(&mut self, handle: &Handle);

    /// Evicts objects nothing pins, least recently used first, until `bytes` more would fit;
    /// true if they do. With `second_chance`, an object read (or stored) since the last sweep
    /// passed it is spared this time: only one pass is made.
    fn reclaim(&mut self, bytes: u64, second_chance: bool) -> bool;

    /// The value `thunk` was found to have, from a memo the store keeps beyond the evaluator's
    /// (a node's disk, across restarts); None if the store keeps no such memo or lacks it.
    fn recall_memo(&self, _thunk: &Handle) -> Option<Handle> {
        None
    }

    /// Keeps the memo entry `thunk` → `value` beyond the evaluator's memory, if the store can
    /// (the evaluator calls it for deterministic values only).
    fn keep_memo(&mut self, _thunk: &Handle, _value: &Handle) {}
}

impl core::error::Error for StoreError {}
