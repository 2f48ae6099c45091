//! An in-memory store with a limit that makes room for new objects by evicting objects nothing
//! pins, least recently used first.
//!
//! Recency is kept the CLOCK way, an approximation of LRU that costs nothing on a read: every
//! object has a bit that `get` sets; eviction sweeps the objects in handle order from where it
//! last stopped, clears the bits it finds set (a second chance) and evicts the first unpinned
//! objects whose bit was already clear. An object read since the last sweep passed it survives
//! the next pass; one nobody read goes first.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::cell::Cell;
use core::ops::Bound;

use bytes::Bytes;

use super::{Store, StoreError, StoreStats, name};
use crate::handle::{Handle, Kind};

/// Bytes the limit counts for every object besides its own: its handle, its entry in the
/// index and the rounding of its allocation. Without it, a store of millions of tiny objects
/// would hold several times its limit in real memory.
pub const OBJECT_OVERHEAD: u64 = 192;

/// Victims are collected and removed in batches of this many, so eviction allocates little.
const EVICT_BATCH: usize = 64;

#[derive(Debug)]
struct Entry {
    bytes: Bytes,
    pins: u32,
    /// Read since the eviction sweep last passed (CLOCK's reference bit).
    referenced: Cell<bool>,
    /// When it was stored, counted in objects stored.
    born: u64,
}

#[derive(Debug)]
pub struct MemStore {
    objects: BTreeMap<Handle, Entry>,
    /// Bytes of the objects held.
    bytes: u64,
    limit: u64,
    pinned: u64,
    /// What the pinned objects count against the limit: room eviction can never make.
    pinned_used: u64,
    /// Where the last eviction sweep stopped.
    hand: Option<Handle>,
    /// Objects stored so far (to tell the newest ones).
    stored: u64,
    evictions: u64,
    evicted_bytes: u64,
}

impl MemStore {
    pub fn new(limit: u64) -> MemStore {
        MemStore {
            objects: BTreeMap::new(),
            bytes: 0,
            limit,
            pinned: 0,
            pinned_used: 0,
            hand: None,
            stored: 0,
            evictions: 0,
            evicted_bytes: 0,
        }
    }

    /// Drops every object nothing pins for which `keep` says no (a collection elsewhere forgot
    /// them: a cache must not go on serving them); returns how many.
    pub fn drop_unpinned(&mut self, keep: impl Fn(&Handle) -> bool) -> u64 {
        let mut dropped = 0;
        let mut bytes = 0;
        self.objects.retain(|handle, entry| {
            let stays = entry.pins > 0 || keep(handle);
            if !stays {
                dropped += 1;
                bytes += entry.bytes.len() as u64;
            }
            stays
        });
        self.bytes -= bytes;
        dropped
    }

    /// The objects something has pinned (a collection elsewhere must keep them).
    pub fn pinned_handles(&self) -> impl Iterator<Item = &Handle> {
        self.objects.iter().filter(|(_, e)| e.pins > 0).map(|(h, _)| h)
    }

    fn used(&self) -> u64 {
        self.bytes + self.objects.len() as u64 * OBJECT_OVERHEAD
    }

    /// What the limit still allows, without evicting.
    pub fn free(&self) -> u64 {
        self.limit.saturating_sub(self.used())
    }

    /// Evicts objects nothing pins, least recently used first (see the module's note), until
    /// `wanted` bytes are free or nothing more can go; returns whether they are.
    pub fn make_room(&mut self, wanted: u64) -> bool {
        self.sweep(wanted, 2)
    }

    /// Evicts as [`MemStore::make_room`] does, in at most `passes` passes over the objects.
    /// One pass spares whatever was read since the last sweep passed it, and leaves the newest
    /// quarter of the objects alone altogether (what a client just uploaded for its next
    /// evaluation, say), so that a caller can let older things go first.
    fn sweep(&mut self, wanted: u64, passes: usize) -> bool {
        let newest = if passes == 1 { (self.objects.len() as u64 / 4).max(16) } else { 0 };
        let young_from = self.stored.saturating_sub(newest);
        if self.limit.saturating_sub(self.pinned_used) < wanted {
            return false; // even evicting everything unpinned would not do: evict nothing
        }
        let mut budget = self.objects.len().saturating_mul(passes);
        while self.free() < wanted && budget > 0 {
            let mut victims: Vec<Handle> = Vec::new();
            if victims.try_reserve_exact(EVICT_BATCH).is_err() {
                return false;
            }
            let mut freeing = 0u64;
            let after = self.hand.map_or(Bound::Unbounded, Bound::Excluded);
            let before = self.hand.map_or(Bound::Unbounded, Bound::Included);
            let sweep = self
                .objects
                .range((after, Bound::Unbounded))
                .chain(self.objects.range((Bound::Unbounded, before)));
            let mut last = None;
            for (handle, entry) in sweep {
                budget = budget.saturating_sub(1);
                last = Some(*handle);
                if entry.born >= young_from && passes == 1 {
                    // Spared, its bit untouched.
                } else if entry.pins == 0 && !entry.referenced.replace(false) {
                    victims.push(*handle);
                    freeing += entry.bytes.len() as u64 + OBJECT_OVERHEAD;
                }
                if victims.len() == EVICT_BATCH || self.free() + freeing >= wanted || budget == 0 {
                    break;
                }
            }
            self.hand = last.or(self.hand);
            for handle in victims {
                if let Some(entry) = self.objects.remove(&handle) {
                    self.bytes -= entry.bytes.len() as u64;
                    self.evictions += 1;
                    self.evicted_bytes += entry.bytes.len() as u64;
                }
            }
            if last.is_none() {
                break; // nothing left to sweep
            }
        }
        self.free() >= wanted
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
        let placed = place(bytes).ok_or(self.full(needed))?;
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
    /// computed from these very bytes (the node hashes uploads as they arrive, see
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
            return Err(self.full(bytes.len() as u64));
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
        let placed = place(bytes).ok_or(self.full(needed))?;
        debug_assert_eq!(placed.len() as u64, needed, "place must keep the bytes");
        self.insert(actual, placed)
    }

    /// Stores `bytes` as the object `handle` without naming them again: the caller has checked
    /// them against the handle (the disk store checks every object it reads).
    pub fn put_checked_placed(
        &mut self,
        handle: &Handle,
        bytes: Bytes,
        place: impl FnOnce(Bytes) -> Option<Bytes>,
    ) -> Result<(), StoreError> {
        self.put_named_placed(handle, *handle, bytes, place)
    }

    fn full(&self, needed: u64) -> StoreError {
        StoreError::Full { needed, used: self.used(), limit: self.limit }
    }

    fn insert(&mut self, handle: Handle, bytes: Bytes) -> Result<(), StoreError> {
        if handle.is_literal() {
            return Ok(());
        }
        if let Some(entry) = self.objects.get_mut(&handle) {
            // Stored again: as good as new for eviction (a client re-uploading its inputs).
            self.stored += 1;
            entry.born = self.stored;
            entry.referenced.set(true);
            return Ok(());
        }
        let needed = bytes.len() as u64 + OBJECT_OVERHEAD;
        if !self.make_room(needed) {
            return Err(self.full(bytes.len() as u64));
        }
        self.bytes += bytes.len() as u64;
        self.stored += 1;
        // New objects start referenced: a sweep passes them once before they may go.
        self.objects.insert(handle, Entry { bytes, pins: 0, referenced: Cell::new(true), born: self.stored });
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
            None => self.objects.get(handle).map(|entry| {
                entry.referenced.set(true);
                entry.bytes.clone()
            }),
        }
    }

    fn contains(&self, handle: &Handle) -> bool {
        handle.is_literal() || self.objects.contains_key(handle)
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            objects: self.objects.len() as u64,
            bytes: self.bytes,
            used: self.used(),
            limit: self.limit,
            pinned: self.pinned,
            pinned_used: self.pinned_used,
            evictions: self.evictions,
            evicted_bytes: self.evicted_bytes,
        }
    }

    fn pin(&mut self, handle: &Handle) -> bool {
        if handle.is_literal() {
            return true;
        }
        match self.objects.get_mut(handle) {
            Some(entry) => {
                if entry.pins == 0 {
                    self.pinned += 1;
                    self.pinned_used += entry.bytes.len() as u64 + OBJECT_OVERHEAD;
                }
                entry.pins = entry.pins.saturating_add(1);
                true
            }
            None => false,
        }
    }

    fn unpin(&mut self, handle: &Handle) {
        if let Some(entry) = self.objects.get_mut(handle)
            && entry.pins > 0
        {
            entry.pins -= 1;
            if entry.pins == 0 {
                self.pinned -= 1;
                self.pinned_used -= entry.bytes.len() as u64 + OBJECT_OVERHEAD;
            }
        }
    }

    fn reclaim(&mut self, bytes: u64, second_chance: bool) -> bool {
        self.sweep(bytes, if second_chance { 1 } else { 2 })
    }
}
