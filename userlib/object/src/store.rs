//! Where objects live (docs/OBJECTS.md, "The store"). Objects are kept by handle as
//! reference-counted [`Bytes`]: `get` hands out the stored bytes without copying them.

use alloc::collections::BTreeMap;
use core::fmt;

use bytes::Bytes;

use crate::error::DecodeError;
use crate::handle::{Handle, Kind};
use crate::thunk::Thunk;
use crate::tree::Tree;

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
    /// The most bytes the store will hold.
    pub limit: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// The bytes are not a valid encoding of the kind.
    Invalid { kind: Kind, error: DecodeError },
    /// The bytes name a different object than the one claimed.
    Mismatch { claimed: Handle, actual: Handle },
    /// Storing `needed` more bytes would pass the limit.
    Full { needed: u64, used: u64, limit: u64 },
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
}

/// An in-memory store with a byte limit.
#[derive(Debug)]
pub struct MemStore {
    objects: BTreeMap<Handle, Bytes>,
    bytes: u64,
    limit: u64,
}

impl MemStore {
    pub fn new(limit_bytes: u64) -> MemStore {
        MemStore { objects: BTreeMap::new(), bytes: 0, limit: limit_bytes }
    }

    /// Like [`Store::put`], but a new object's bytes are first handed to `place`, which may move
    /// them (a kernel keeps large objects in whole pages) and must return the same bytes, or
    /// `None` if it has no room. Names the bytes once, whatever `place` does.
    pub fn put_placed(
        &mut self,
        kind: Kind,
        bytes: Bytes,
        place: impl FnOnce(Bytes) -> Option<Bytes>,
    ) -> Result<Handle, StoreError> {
        let handle = name(kind, &bytes).map_err(|error| StoreError::Invalid { kind, error })?;
        if handle.is_literal() || self.objects.contains_key(&handle) {
            return Ok(handle);
        }
        let needed = bytes.len() as u64;
        let placed = place(bytes).ok_or(StoreError::Full { needed, used: self.bytes, limit: self.limit })?;
        debug_assert_eq!(placed.len() as u64, needed, "place must keep the bytes");
        self.insert(handle, placed)?;
        Ok(handle)
    }

    /// `put_verified`, with `place` choosing where the bytes live (as in [`MemStore::put_placed`]).
    /// The bytes are named once: a check that hashes twice would halve upload speed.
    pub fn put_verified_placed(
        &mut self,
        claimed: &Handle,
        bytes: Bytes,
        place: impl FnOnce(Bytes) -> Option<Bytes>,
    ) -> Result<(), StoreError> {
        let kind = claimed.kind();
        let actual = name(kind, &bytes).map_err(|error| StoreError::Invalid { kind, error })?;
        self.put_named_placed(claimed, actual, bytes, place)
    }

    /// [`MemStore::put_verified_placed`] for a blob whose BLAKE3 digest the caller has already
    /// computed from these very bytes (the node hashes uploads while they arrive, see
    /// `hash::blob_digest_with_spans`), so they are not hashed again. Anything but a blob is
    /// named from its bytes as usual.
    pub fn put_verified_digest_placed(
        &mut self,
        claimed: &Handle,
        bytes: Bytes,
        blob_digest: [u8; 32],
        place: impl FnOnce(Bytes) -> Option<Bytes>,
    ) -> Result<(), StoreError> {
        if claimed.kind() != Kind::Blob || bytes.len() <= crate::LITERAL_MAX {
            return self.put_verified_placed(claimed, bytes, place);
        }
        let actual = Handle::named(Kind::Blob, bytes.len() as u64, crate::Digest(blob_digest));
        self.put_named_placed(claimed, actual, bytes, place)
    }

    /// Stores a blob of more than `LITERAL_MAX` bytes whose BLAKE3 digest the caller computed
    /// from these very bytes (a kernel hashes large objects span by span, checking a task's
    /// budget in between), in place: the bytes are kept as they are. Returns its handle. A new
    /// object is refused as `Full` if it needs more than `room` bytes.
    pub fn put_hashed_blob(
        &mut self,
        bytes: Bytes,
        blob_digest: [u8; 32],
        room: u64,
    ) -> Result<Handle, StoreError> {
        if bytes.len() <= crate::LITERAL_MAX {
            return Ok(Handle::blob(&bytes));
        }
        let handle = Handle::named(Kind::Blob, bytes.len() as u64, crate::Digest(blob_digest));
        if !self.objects.contains_key(&handle) && bytes.len() as u64 > room {
            return Err(StoreError::Full { needed: bytes.len() as u64, used: self.bytes, limit: self.limit });
        }
        self.insert(handle, bytes)?;
        Ok(handle)
    }

    fn put_named_placed(
        &mut self,
        claimed: &Handle,
        actual: Handle,
        bytes: Bytes,
        place: impl FnOnce(Bytes) -> Option<Bytes>,
    ) -> Result<(), StoreError> {
        if actual != *claimed {
            return Err(StoreError::Mismatch { claimed: *claimed, actual });
        }
        if actual.is_literal() || self.objects.contains_key(&actual) {
            return Ok(());
        }
        let needed = bytes.len() as u64;
        let placed = place(bytes).ok_or(StoreError::Full { needed, used: self.bytes, limit: self.limit })?;
        debug_assert_eq!(placed.len() as u64, needed, "place must keep the bytes");
        self.insert(actual, placed)
    }

    fn insert(&mut self, handle: Handle, bytes: Bytes) -> Result<(), StoreError> {
        if handle.is_literal() || self.objects.contains_key(&handle) {
            return Ok(());
        }
        let needed = bytes.len() as u64;
        if self.bytes.saturating_add(needed) > self.limit {
            return Err(StoreError::Full { needed, used: self.bytes, limit: self.limit });
        }
        self.bytes += needed;
        self.objects.insert(handle, bytes);
        Ok(())
    }
}

impl Store for MemStore {
    fn put(&mut self, kind: Kind, bytes: Bytes) -> Result<Handle, StoreError> {
        let handle = name(kind, &bytes).map_err(|error| StoreError::Invalid { kind, error })?;
        self.insert(handle, bytes)?;
        Ok(handle)
    }

    fn put_verified(&mut self, claimed: &Handle, bytes: Bytes) -> Result<(), StoreError> {
        self.put_verified_placed(claimed, bytes, Some)
    }

    fn get(&self, handle: &Handle) -> Option<Bytes> {
        match handle.literal() {
            Some(bytes) => Some(Bytes::copy_from_slice(bytes)),
            None => self.objects.get(handle).cloned(),
        }
    }

    fn contains(&self, handle: &Handle) -> bool {
        handle.is_literal() || self.objects.contains_key(handle)
    }

    fn stats(&self) -> StoreStats {
        StoreStats { objects: self.objects.len() as u64, bytes: self.bytes, limit: self.limit }
    }
}

impl core::error::Error for StoreError {}
