//! Collection, compaction and the ring (docs/STORE.md, "Space"): what nothing keeps goes, what
//! something keeps stays through any number of laps, and a crash at any write of a compaction
//! loses nothing a commit returned for that was not collected.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use cairn_object::{Handle, Kind, Limits};
use proptest::prelude::*;

use super::tests::{SimDisk, blob, key};
use super::*;

fn small_store() -> DiskStore<SimDisk> {
    DiskStore::format(SimDisk::new(MIN_DEVICE as usize), [9; 16]).unwrap()
}

fn reopen_clean(store: DiskStore<SimDisk>) -> DiskStore<SimDisk> {
    DiskStore::open(store.into_device().crash(|_| false)).unwrap().0
}

#[test]
fn the_log_goes_round_many_laps_keeping_what_is_kept() {
    let mut store = small_store();
    let lap = store.log_len();
    let mut kept: BTreeMap<Handle, Vec<u8>> = BTreeMap::new();
    let mut written = 0u64;
    let mut round = 0u32;
    while written < 12 * lap {
        // A few objects each round; every fifth is pinned, the rest are garbage by next round.
        for i in 0..6u32 {
            let (h, b) = blob(round * 100 + i, 1000 + ((round * 7919 + i * 104_729) % 30_000) as usize);
            store.put(&h, &b).unwrap();
            written += b.len() as u64;
            if (round + i).is_multiple_of(5) {
                store.set_note(space::PINS, h.as_bytes(), Some(h.as_bytes())).unwrap();
                kept.insert(h, b);
            }
        }
        store.commit().unwrap();
        // Unpin the oldest once there are many, so that the live set stays small.
        while kept.len() > 12 {
            let old = *kept.keys().next().unwrap();
            store.set_note(space::PINS, old.as_bytes(), None).unwrap();
            kept.remove(&old);
        }
        let collected = store.collect(&[], None).unwrap();
        assert_eq!(collected.kept, kept.len() as u64, "round {round}");
        let compacted = store.compact(u64::MAX).unwrap();
        assert!(compacted.reclaimed > 0, "round {round}: {compacted:?}");
        if round.is_multiple_of(7) {
            store = reopen_clean(store);
        }
        for (h, b) in &kept {
            assert_eq!(store.get(h).unwrap().as_ref(), Some(b), "round {round}: lost {h}");
        }
        assert_eq!(store.stats().objects, kept.len() as u64);
        round += 1;
    }
    assert!(store.tail > LOG_START + 10 * lap, "the log went round at least ten times");
    let store = reopen_clean(store);
    assert_eq!(store.stats().objects, kept.len() as u64);
}

#[test]
fn what_trees_thunks_memo_entries_and_jobs_reach_is_kept() {
    let mut store = small_store();
    let put = |store: &mut DiskStore<SimDisk>, kind: Kind, bytes: Vec<u8>| {
        let h = cairn_object::store::name(kind, &bytes).unwrap();
        store.put(&h, &bytes).unwrap();
        h
    };
    let blobs: Vec<Handle> =
        (0..6).map(|i| put(&mut store, Kind::Blob, blob(i, 500 + i as usize).1)).collect();
    let tree = put(&mut store, Kind::Tree, cairn_object::tree::encode(&[blobs[0], blobs[1]]));
    let thunk = put(
        &mut store,
        Kind::Thunk,
        cairn_object::thunk::encode(Limits::new(1 << 20).unwrap(), blobs[2], &[tree]).unwrap(),
    );
    // A memo entry keeps its value (the tree, and through it two blobs); a job note keeps the
    // job and the journal; the thunk is kept by the caller's roots.
    store.set_note(space::MEMO, &key(1), Some(tree.as_bytes())).unwrap();
    store.set_note(space::JOBS, blobs[3].as_bytes(), Some(blobs[4].as_bytes())).unwrap();
    store.commit().unwrap();
    let collected = store.collect(&[thunk], None).unwrap();
    assert_eq!((collected.objects, collected.kept), (1, 7), "only blobs[5] goes");
    assert!(!store.contains(&blobs[5]));
    store.compact(u64::MAX).unwrap();
    let mut store = reopen_clean(store);
    for h in blobs[..5].iter().chain([&tree, &thunk]) {
        assert!(store.get(h).unwrap().is_some(), "{h}");
    }
    assert_eq!(store.get(&blobs[5]).unwrap(), None, "forgotten for good once compacted");
    // Without the caller's root, the thunk goes, and so does its procedure (blobs[2]).
    let collected = store.collect(&[], None).unwrap();
    assert_eq!(collected.objects, 2);
}

#[test]
fn a_goal_forgets_the_least_recently_used_first() {
    let mut store = small_store();
    let objects: Vec<_> = (0..10).map(|i| blob(i, 10_000)).collect();
    for (h, b) in &objects {
        store.put(h, b).unwrap();
    }
    store.commit().unwrap();
    // Used again, in reverse: objects[9] is now the least recently used.
    for (h, _) in objects.iter().rev() {
        store.get(h).unwrap();
    }
    let collected = store.collect(&[], Some(25_000)).unwrap();
    assert_eq!((collected.objects, collected.bytes), (3, 30_000));
    for (i, (h, _)) in objects.iter().enumerate() {
        assert_eq!(store.contains(h), i < 7, "{i}");
    }
}

#[test]
fn a_full_ring_of_live_objects_compacts_what_it_can_and_stays_full_cleanly() {
    let mut store = small_store();
    let mut all = Vec::new();
    for i in 0.. {
        let (h, b) = blob(i, 50_000);
        match store.put(&h, &b) {
            Ok(_) => all.push((h, b)),
            Err(StoreError::Full { .. }) => break,
            Err(e) => panic!("{e}"),
        }
        store.set_note(space::PINS, h.as_bytes(), Some(h.as_bytes())).unwrap_or(());
    }
    store.commit().unwrap();
    // Everything is pinned: nothing goes, and compaction moves what it can (it gives back only
    // the notes' records and paddings), losing nothing.
    assert_eq!(store.collect(&[], None).unwrap().objects, 0);
    store.compact(u64::MAX).unwrap();
    let mut store = reopen_clean(store);
    assert_eq!(store.stats().objects, all.len() as u64);
    for (h, b) in &all {
        assert_eq!(store.get(h).unwrap().as_ref(), Some(b));
    }
}

/// What a test run did.
#[derive(Debug, Clone)]
enum Op {
    Put(u32, usize),
    Commit,
    Checkpoint,
    /// Collect, keeping the promised objects whose bit is set, then compact by the goal.
    Gc(u64, u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0u32..400, prop_oneof![0usize..100, 100usize..5000, 20_000usize..60_000]).prop_map(|(s, l)| Op::Put(s, l)),
        2 => Just(Op::Commit),
        1 => Just(Op::Checkpoint),
        2 => (any::<u64>(), prop_oneof![Just(u64::MAX), 0u64..300_000]).prop_map(|(m, g)| Op::Gc(m, g)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Laps, collections and compactions with the power going at a random write or flush and
    /// a random subset of the unflushed sectors kept: every object a commit returned for and
    /// no collection forgot is there after the restart, and everything held reads back right.
    #[test]
    fn what_a_commit_returned_for_and_gc_kept_survives_any_crash(
        ops in prop::collection::vec(op(), 1..90),
        power_fails_after in 0usize..200,
        kept in prop::collection::vec(any::<bool>(), 64),
        restarts in 1usize..3,
    ) {
        let mut disk = small_store().into_device();
        let mut promised: BTreeMap<Handle, Vec<u8>> = BTreeMap::new();
        for round in 0..restarts {
            let (mut store, _) = DiskStore::open(disk.clone()).unwrap();
            store.device.ops_left = Some(power_fails_after + round * 13);
            let mut uncommitted: Vec<(Handle, Vec<u8>)> = Vec::new();
            for op in &ops {
                let outcome = match op {
                    Op::Put(seed, len) => {
                        let (h, b) = blob(*seed + round as u32 * 1000, *len);
                        store.put(&h, &b).map(|_| uncommitted.push((h, b)))
                    }
                    Op::Commit | Op::Checkpoint => {
                        let done = if matches!(op, Op::Commit) { store.commit() } else { store.checkpoint() };
                        done.map(|_| promised.extend(uncommitted.drain(..)))
                    }
                    Op::Gc(mask, goal) => {
                        let roots: Vec<Handle> =
                            promised.keys().enumerate().filter(|(i, _)| mask >> (i % 64) & 1 == 1).map(|(_, h)| *h).collect();
                        match store.collect(&roots, None) {
                            Ok(_) => {
                                // What it forgot is no longer promised (a crash may bring it back).
                                promised.retain(|h, _| store.contains(h) || store.index.objects.contains_key(h));
                                uncommitted.retain(|(h, _)| store.index.objects.contains_key(h));
                                for r in roots.iter().filter(|r| !r.is_literal()) {
                                    prop_assert!(store.index.objects.contains_key(r), "a root was forgotten");
                                }
                                store.compact(*goal).map(|_| promised.extend(uncommitted.drain(..)))
                            }
                            Err(e) => Err(e),
                        }
                    }
                };
                if outcome.is_err() {
                    break;
                }
            }
            let mut i = 0;
            disk = store.into_device().crash(|_| { i += 1; kept[i % kept.len()] });
            let (mut store, _) = DiskStore::open(disk.clone()).unwrap();
            for (h, b) in &promised {
                let got = store.get(h).unwrap();
                prop_assert_eq!(got.as_ref(), Some(b), "lost {}", h);
            }
            let held: Vec<Handle> = store.index.objects.keys().copied().collect();
            for h in held {
                prop_assert!(store.get(&h).is_ok(), "a wrong byte held for {}", h);
            }
        }
    }
}
