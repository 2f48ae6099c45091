//! Disks at their limits and disks written by someone else: each case once made the store lose
//! acknowledged data, panic, or take a crash for the end of the log (review of 377b836).

extern crate std;

use core::cell::Cell;
use std::alloc::{GlobalAlloc, Layout, System};

use super::*;
use crate::record::{Header, RecordKind, payload_digest, record_key, record_len};
use crate::superblock::{Checkpoint, LOG_START, Superblock};
use crate::tests::{DISK, SimDisk, blob, key, new_store, reopen};

/// An allocator that refuses large allocations on the thread that asks it to.
struct Limited;

std::thread_local! { pub(crate) static LIMIT: Cell<usize> = const { Cell::new(usize::MAX) }; }

// SAFETY: forwards to the system allocator, or returns null (an allocation failure).
unsafe impl GlobalAlloc for Limited {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > LIMIT.with(Cell::get) {
            return core::ptr::null_mut();
        }
        // SAFETY: the caller's layout, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: allocated by System above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > LIMIT.with(Cell::get) {
            return core::ptr::null_mut();
        }
        // SAFETY: as in dealloc.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Limited = Limited;

fn both(disk: &mut SimDisk, at: u64, bytes: &[u8]) {
    let at = at as usize;
    disk.current[at..at + bytes.len()].copy_from_slice(bytes);
    disk.durable[at..at + bytes.len()].copy_from_slice(bytes);
}

/// A well-formed, correctly keyed checkpoint record of an empty index and a superblock naming
/// it: anyone who can read the store id (it is in the superblock) can write these.
fn crafted(position: u64, seq: u64, superblock_seq: u64) -> SimDisk {
    let mut disk = new_store().into_device();
    let payload = Index::default().encode();
    let mut header =
        Header { kind: RecordKind::Checkpoint, payload_len: payload.len() as u32, seq, checksum: [0; 32] };
    let digest = payload_digest(RecordKind::Checkpoint, &payload);
    header.checksum = header.expected_checksum(&record_key(&[7; 16]), &[0; 32], digest.as_bytes());
    let mut record = header.encode().to_vec();
    record.extend_from_slice(&payload);
    record.resize(record_len(payload.len() as u64) as usize, 0);
    if position.checked_add(record.len() as u64).is_some_and(|end| end <= DISK as u64) {
        both(&mut disk, position, &record);
    }
    let superblock = Superblock {
        store_id: [7; 16],
        sequence: superblock_seq,
        device_len: DISK as u64,
        checkpoint: Some(Checkpoint { position, seq, prev: [0; 32] }),
        head: LOG_START,
    };
    both(&mut disk, superblock.offset(), &superblock.encode());
    disk
}

/// Where the room for ordinary records ends now: the reserve (which grows with the index) lies
/// beyond it.
fn room_end(store: &DiskStore<SimDisk>) -> u64 {
    store.superblock.head + store.log_len() - store.reserve()
}

/// A store filled with the largest objects it takes, up to where one more would not fit before
/// the reserve with `spare` bytes to spare; the commit's tail.
fn fill_up_to(store: &mut DiskStore<SimDisk>, spare: u64) -> u64 {
    let max = store.max_object();
    for seed in 100.. {
        let room = room_end(store) - store.tail - spare - 104;
        if room <= max {
            break;
        }
        let (h, b) = blob(seed, if room > max + 8192 { max as usize } else { 4096 });
        store.put(&h, &b).unwrap();
        store.commit().unwrap();
    }
    store.tail
}

#[test]
fn a_commit_into_the_last_sector_before_the_reserve_succeeds() {
    let mut store = DiskStore::format(SimDisk::new(1 << 20), [7; 16]).unwrap();
    // An object whose record ends one sector before the reserve: its commit's padding takes
    // that sector.
    let tail = fill_up_to(&mut store, 1024);
    let end = room_end(&store) / 512 * 512;
    let n = (end - 512 - tail - 104) as usize;
    let (h, b) = blob(1, n);
    store.put(&h, &b).unwrap();
    store.commit().unwrap();
    assert_eq!(store.tail, end);
    let (mut store, _) = reopen(store);
    assert_eq!(store.get(&h).unwrap(), Some(b));
    // And now it is full, and says so.
    assert!(matches!(store.set_note(1, &key(3), Some(&key(4))), Err(StoreError::Full { .. })));
}

#[test]
fn a_damaged_checkpoint_stops_the_store_rather_than_lose_what_came_after_it() {
    let mut store = new_store();
    let before = blob(1, 3000);
    store.put(&before.0, &before.1).unwrap();
    store.checkpoint().unwrap();
    let at = store.superblock.checkpoint.unwrap().position;
    let after = blob(2, 3000);
    store.put(&after.0, &after.1).unwrap();
    store.commit().unwrap();
    let mut disk = store.into_device().crash(|_| false);
    disk.current[at as usize + 64 + 10] ^= 1;
    disk.durable.clone_from(&disk.current);
    assert_eq!(DiskStore::open(disk).err(), Some(StoreError::CheckpointDamaged { position: at }));
}

#[test]
fn too_little_memory_at_start_is_an_error_not_the_end_of_the_log() {
    let mut store = new_store();
    let big = blob(1, 200_000);
    store.put(&big.0, &big.1).unwrap();
    store.set_note(1, &key(1), Some(&key(9))).unwrap();
    store.commit().unwrap();
    let disk = store.into_device().crash(|_| false);
    let copy = disk.clone();
    LIMIT.with(|c| c.set(100_000));
    let opened = DiskStore::open(copy);
    LIMIT.with(|c| c.set(usize::MAX));
    assert!(matches!(opened.err(), Some(StoreError::NoMemory { .. })));
    let (store, _) = DiskStore::open(disk).unwrap();
    assert!(store.contains(&big.0) && store.note(1, &key(1)).is_some());
}

#[test]
fn crafted_superblocks_and_checkpoints_are_refused_not_panicked_on() {
    // A checkpoint off a record boundary, at the last sequence number, before the log.
    for (position, seq) in
        [(LOG_START + 184, 0), (LOG_START, u64::MAX), (512, 0), (DISK as u64, 0), (u64::MAX - 63, 0)]
    {
        let opened = DiskStore::open(crafted(position, seq, 2));
        assert_eq!(opened.err(), Some(StoreError::SuperblockDamaged), "checkpoint at {position}, seq {seq}");
    }
    // The last superblock sequence number: the next checkpoint cannot be numbered.
    let (mut store, _) = DiskStore::open(crafted(LOG_START, 0, u64::MAX)).unwrap();
    assert_eq!(store.checkpoint(), Err(StoreError::SuperblockDamaged));
}

/// Only the chain stops a record left from an earlier life of the log (never acknowledged) at
/// the sequence number a new, acknowledged commit expects next from overriding it.
#[test]
fn a_stale_record_at_the_expected_place_does_not_override_a_commit() {
    let mut store = new_store();
    let (x, xb) = blob(1, 216);
    let (y, yb) = blob(2, 88);
    store.put(&x, &xb).unwrap();
    store.put(&y, &yb).unwrap();
    store.set_note(1, &key(1), Some(&key(0xb))).unwrap();
    store.device.ops_left = Some(1); // the write goes out, the flush does not
    assert!(store.commit().is_err());
    let disk = store.into_device().crash(|i| i == 1);
    let (mut store, _) = DiskStore::open(disk).unwrap();
    assert_eq!(store.tail, LOG_START);
    store.set_note(1, &key(1), Some(&key(0xc))).unwrap();
    store.commit().unwrap();
    let (store, _) = reopen(store);
    assert_eq!(store.note(1, &key(1)), Some(&key(0xc)), "the acknowledged value");
}

/// A commit cut short counts not at all: a note about an object is never found without it.
#[test]
fn a_torn_last_commit_counts_not_at_all() {
    let mut store = new_store();
    let (x, xb) = blob(1, 1200);
    store.put(&x, &xb).unwrap();
    store.set_note(1, &key(1), Some(&x.as_bytes()[..40].try_into().unwrap())).unwrap();
    store.device.ops_left = Some(1);
    assert!(store.commit().is_err());
    let disk = store.into_device().crash(|i| i != 1); // only the middle of x is lost
    let (store, recovery) = DiskStore::open(disk).unwrap();
    assert_eq!(recovery.dropped_records, 3);
    assert!(!store.contains(&x));
    assert_eq!(store.note(1, &key(1)), None);
}

/// An object whose record ends exactly on a sector boundary still leaves room for the padding
/// that closes its commit; an object that does not fit is refused before it is taken.
#[test]
fn an_object_reaching_into_the_reserve_is_refused_before_it_is_taken() {
    let mut store = DiskStore::format(SimDisk::new(1 << 20), [7; 16]).unwrap();
    let tail = fill_up_to(&mut store, 0);
    let n = (room_end(&store) - tail - 104) as usize;
    let (h, b) = blob(1, n);
    assert!(matches!(store.put(&h, &b), Err(StoreError::Full { .. })));
    assert!(!store.contains(&h));
    let (h, b) = blob(2, n - 512);
    store.put(&h, &b).unwrap();
    store.commit().unwrap();
    assert!(store.contains(&h));
}

/// A commit that fails leaves nothing counted as stored, and the store takes nothing more (it
/// cannot know what reached the disk) instead of growing its buffer round after round.
#[test]
fn after_a_failed_commit_nothing_is_claimed_and_nothing_more_taken() {
    let mut store = new_store();
    let (x, xb) = blob(1, 5000);
    store.put(&x, &xb).unwrap();
    assert!(!store.contains(&x), "not durable before its commit");
    store.device.ops_left = Some(0);
    assert!(store.commit().is_err());
    assert!(!store.contains(&x));
    for _ in 0..100 {
        assert_eq!(store.commit(), Err(StoreError::Failed));
    }
    assert_eq!(store.set_note(1, &key(1), None), Err(StoreError::Failed));
    assert!(store.pending.len() < 8192, "{} bytes held", store.pending.len());
}
