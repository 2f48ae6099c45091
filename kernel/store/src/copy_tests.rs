//! Compaction copies an object a piece at a time ([`COPY_CHUNK`]): objects larger than a piece
//! move intact, a damaged byte anywhere in one is found before its copy counts (the object is
//! dropped, never copied), a crash at any write of a copy loses nothing acknowledged, and no
//! buffer the size of the object is needed.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use cairn_object::{Handle, Kind, Limits};

use super::tests::{SimDisk, blob};
use super::*;
use crate::hostile_tests::LIMIT;

/// A small piece, so that objects of a few pieces fit a small disk.
const PIECE: usize = 4096;

fn store_on(device_len: usize, piece: usize) -> DiskStore<SimDisk> {
    let mut store = DiskStore::format(SimDisk::new(device_len), [5; 16]).unwrap();
    store.copy_chunk = piece;
    store
}

fn reopen(store: DiskStore<SimDisk>) -> (DiskStore<SimDisk>, Recovery) {
    let piece = store.copy_chunk;
    let (mut store, recovery) = DiskStore::open(store.into_device().crash(|_| false)).unwrap();
    store.copy_chunk = piece;
    (store, recovery)
}

fn pin(store: &mut DiskStore<SimDisk>, h: &Handle) {
    store.set_note(space::PINS, h.as_bytes(), Some(h.as_bytes())).unwrap();
}

/// Blobs, a tree and a thunk larger than a piece, their sizes around the pieces' boundaries.
fn large_objects() -> Vec<(Handle, Vec<u8>)> {
    let mut objects: Vec<(Handle, Vec<u8>)> =
        [PIECE - 1, PIECE, PIECE + 1, 3 * PIECE, 3 * PIECE + 1, 50_000, 120_000]
            .iter()
            .enumerate()
            .map(|(i, len)| blob(10 + i as u32, *len))
            .collect();
    // Entries straddle the pieces (4096 is no multiple of 40).
    let entries: Vec<Handle> = (0..700u32).map(|i| Handle::blob(&i.to_le_bytes())).collect();
    let tree = cairn_object::tree::encode(&entries);
    objects.push((cairn_object::store::name(Kind::Tree, &tree).unwrap(), tree));
    let thunk =
        cairn_object::thunk::encode(Limits::new(1 << 20).unwrap(), objects[0].0, &entries[..400]).unwrap();
    objects.push((cairn_object::store::name(Kind::Thunk, &thunk).unwrap(), thunk));
    objects
}

/// Garbage first, then `objects`, pinned and committed: a compaction copies every one of them.
fn fill(store: &mut DiskStore<SimDisk>, objects: &[(Handle, Vec<u8>)]) {
    let (g, gb) = blob(1, 30_000);
    store.put(&g, &gb).unwrap();
    for (h, b) in objects {
        assert!(store.put(h, b).unwrap());
        pin(store, h);
    }
    store.commit().unwrap();
    assert_eq!(store.collect(&[], None).unwrap().objects, 1);
}

/// The object records between log offsets `from` and `to`, by handle.
fn object_records(store: &mut DiskStore<SimDisk>, from: u64, to: u64) -> Vec<(u64, Handle)> {
    let mut found = Vec::new();
    let mut at = from;
    while at < to {
        let header = store.read_header(at).unwrap().expect("a record");
        if let RecordKind::Object(_) = header.kind {
            let mut handle = [0u8; Handle::LEN];
            store.read_at(at + record::HEADER_LEN, &mut handle).unwrap();
            found.push((at, Handle::from_bytes(&handle).unwrap()));
        }
        at += header.record_len();
    }
    found
}

/// Flips a byte of an object's bytes where the disk holds them, durably (damage, not a crash).
fn damage(store: &mut DiskStore<SimDisk>, h: &Handle, offset: usize) {
    let v = store.index.objects[h].position + record::HEADER_LEN + Handle::LEN as u64 + offset as u64;
    let at = ring::place(&store.superblock, v) as usize;
    store.device.current[at] ^= 0x55;
    store.device.durable[at] ^= 0x55;
}

#[test]
fn objects_larger_than_a_piece_are_copied_intact() {
    let objects = large_objects();
    for piece in [PIECE, 1000, COPY_CHUNK] {
        let mut store = store_on(4 << 20, piece);
        fill(&mut store, &objects);
        let used: Vec<u64> = objects.iter().map(|(h, _)| store.index.objects[h].used).collect();
        let stop = store.tail;
        let done = store.compact(u64::MAX).unwrap();
        assert_eq!((done.copied, done.damaged), (objects.len() as u64, 0), "piece {piece}");
        assert_eq!(done.copied_bytes, objects.iter().map(|(_, b)| b.len() as u64).sum::<u64>());
        assert!(store.superblock.head >= stop, "piece {piece}: the head passed every original");
        // Each copy is one record after the old tail, read back and checked as any other.
        let tail = store.tail;
        let copies = object_records(&mut store, stop, tail);
        assert_eq!(copies.len(), objects.len());
        for ((h, b), used) in objects.iter().zip(used) {
            let at = store.index.objects[h];
            assert!(at.position >= stop && copies.contains(&(at.position, *h)), "piece {piece}: {h}");
            assert_eq!(at.used, used, "a copy is not a use");
            assert!(store.get(h).unwrap().as_ref() == Some(b), "piece {piece}: {h}");
        }
        let (mut store, recovery) = reopen(store);
        assert_eq!(recovery.damaged_objects, 0);
        for (h, b) in &objects {
            assert!(store.get(h).unwrap().as_ref() == Some(b), "piece {piece}: {h} after a restart");
        }
    }
}

#[test]
fn a_damaged_byte_anywhere_in_a_large_object_drops_it_and_is_never_copied() {
    let objects = large_objects();
    let big = objects.iter().position(|(_, b)| b.len() == 120_000).unwrap();
    let tree = objects.iter().position(|(h, _)| h.kind() == Kind::Tree).unwrap();
    let thunk = objects.iter().position(|(h, _)| h.kind() == Kind::Thunk).unwrap();
    let mut cases = Vec::new();
    // The first piece, both sides of every boundary of a few pieces, the middle, the last piece.
    for offset in
        [0, 1, PIECE - 1, PIECE, PIECE + 1, 2 * PIECE - 1, 2 * PIECE, 60_000, 120_000 - PIECE, 119_999]
    {
        cases.push((big, offset));
    }
    // An entry that straddles the first boundary (bytes 4080 .. 4120), and the last byte.
    for offset in [0, 4095, 4096, 4100, 27_999] {
        cases.push((tree, offset));
    }
    // The limits, the procedure, an argument.
    for offset in [8, 41, 4097, 16_079] {
        cases.push((thunk, offset));
    }
    for (victim, offset) in cases {
        let mut store = store_on(4 << 20, PIECE);
        fill(&mut store, &objects);
        let (bad, _) = objects[victim];
        damage(&mut store, &bad, offset);
        let stop = store.tail;
        let done = store.compact(u64::MAX).unwrap();
        let what = alloc::format!("{} damaged at {offset}", bad.kind());
        assert_eq!((done.damaged, done.copied), (1, objects.len() as u64 - 1), "{what}");
        assert!(!store.index.objects.contains_key(&bad), "{what}: still held");
        assert_eq!(store.get(&bad).unwrap(), None, "{what}");
        let tail = store.tail;
        let copies = object_records(&mut store, stop, tail);
        assert!(copies.iter().all(|(_, h)| *h != bad), "{what}: a record of it was written");
        for (h, b) in objects.iter().filter(|(h, _)| *h != bad) {
            assert!(store.get(h).unwrap().as_ref() == Some(b), "{what}: {h}");
        }
        let (mut store, recovery) = reopen(store);
        assert_eq!((recovery.damaged_objects, recovery.dropped_records), (0, 0), "{what}");
        assert!(!store.contains(&bad), "{what}: back after a restart");
        for (h, b) in objects.iter().filter(|(h, _)| *h != bad) {
            assert!(store.get(h).unwrap().as_ref() == Some(b), "{what}: {h} after a restart");
        }
        // The log goes on cleanly where the abandoned copy was: the object can be put again.
        let (_, good) = &objects[victim];
        assert!(store.put(&bad, good).unwrap());
        store.commit().unwrap();
        let (mut store, _) = reopen(store);
        assert!(store.get(&bad).unwrap().as_ref() == Some(good), "{what}: put again");
    }
}

/// The power goes at each write or flush of a compaction of large objects (one of them
/// damaged, so that a copy is abandoned after some of it was written), keeping none, all or
/// some of the unflushed sectors: every object acknowledged and intact is there and right, and
/// nothing held reads wrong.
#[test]
fn a_crash_at_any_write_of_a_large_copy_loses_nothing_acknowledged() {
    let objects = large_objects();
    let big = objects.iter().position(|(_, b)| b.len() == 120_000).unwrap();
    let mut store = store_on(4 << 20, PIECE);
    fill(&mut store, &objects);
    // Recovery takes damage in the last commit for a crash and drops that commit (docs/STORE.md,
    // "Known limits"): the objects' commit is not the last.
    store.checkpoint().unwrap();
    let bad = objects[big].0;
    damage(&mut store, &bad, 100_000);
    let before = store.into_device();
    let keeps: [fn(usize) -> bool; 4] = [|_| false, |_| true, |i| i % 2 == 0, |i| i % 7 < 3];
    let mut cut = 0;
    loop {
        let (mut store, _) = DiskStore::open(before.clone()).unwrap();
        store.copy_chunk = PIECE;
        store.device.ops_left = Some(cut);
        let finished = store.compact(u64::MAX).is_ok();
        for keep in keeps {
            let (mut store, _) = DiskStore::open(store.device.clone().crash(keep)).unwrap();
            for (h, b) in objects.iter().filter(|(h, _)| *h != bad) {
                assert!(store.get(h).unwrap().as_ref() == Some(b), "cut at {cut}: {h}");
                assert!(store.note(space::PINS, h.as_bytes()).is_some(), "cut at {cut}: pin of {h}");
            }
            assert!(!matches!(store.get(&bad), Ok(Some(_))), "cut at {cut}: the damaged object served");
            let held: Vec<Handle> = store.index.objects.keys().copied().collect();
            for h in held {
                assert!(
                    store.get(&h).is_ok_and(|b| b.is_some()) || h == bad,
                    "cut at {cut}: {h} reads wrong"
                );
            }
        }
        if finished {
            break;
        }
        cut += 1;
    }
    assert!(cut > objects.len(), "the power went at every write of the copies ({cut})");
}

/// A node's heap may have tens of MB free in no piece as large as an object: compaction of an
/// object larger than any allocation the heap grants still copies it. (Before copies went a
/// piece at a time, the whole object was read into one buffer, and this was `NoMemory`.)
#[test]
fn compaction_needs_no_allocation_the_size_of_an_object() {
    let mut store = store_on(40 << 20, COPY_CHUNK);
    let (h, b) = blob(3, 2 * COPY_CHUNK + COPY_CHUNK / 3);
    assert!(b.len() as u64 <= store.max_object());
    let objects = [(h, b)];
    fill(&mut store, &objects);
    // A restart from a checkpoint, so that the store holds no buffer left from the put.
    store.checkpoint().unwrap();
    let (mut store, _) = reopen(store);
    let limit = COPY_CHUNK + COPY_CHUNK / 2;
    LIMIT.with(|c| c.set(limit));
    let done = store.compact(u64::MAX);
    LIMIT.with(|c| c.set(usize::MAX));
    let done = done.unwrap();
    assert_eq!((done.copied, done.damaged), (1, 0));
    let (mut store, _) = reopen(store);
    assert_eq!(store.get(&h).unwrap().as_deref(), Some(&objects[0].1[..]));
    // A read still returns the object whole, and so needs one buffer its size.
    LIMIT.with(|c| c.set(limit));
    let read = store.get(&h);
    LIMIT.with(|c| c.set(usize::MAX));
    assert!(matches!(read, Err(StoreError::NoMemory { .. })));
}

/// Pinned objects of a few pieces each, copied again and again as the log goes round a small
/// disk, with restarts: every one stays right.
#[test]
fn many_laps_of_large_copies_keep_what_is_pinned() {
    let mut store = store_on(1 << 20, 1000);
    let mut kept: BTreeMap<Handle, Vec<u8>> = BTreeMap::new();
    for round in 0..40u32 {
        for i in 0..3u32 {
            let (h, b) = blob(round * 10 + i, [1500, 20_000, 55_000][i as usize]);
            if store.put(&h, &b).unwrap() && (round + i).is_multiple_of(2) {
                pin(&mut store, &h);
                kept.insert(h, b);
            }
        }
        store.commit().unwrap();
        while kept.len() > 6 {
            let old = *kept.keys().next().unwrap();
            store.set_note(space::PINS, old.as_bytes(), None).unwrap();
            kept.remove(&old);
        }
        store.collect(&[], None).unwrap();
        store.compact(u64::MAX).unwrap();
        if round % 5 == 4 {
            store = reopen(store).0;
        }
        for (h, b) in &kept {
            assert!(store.get(h).unwrap().as_ref() == Some(b), "round {round}: {h}");
        }
    }
    assert!(store.tail > LOG_START + 3 * store.log_len(), "the log went round");
}
