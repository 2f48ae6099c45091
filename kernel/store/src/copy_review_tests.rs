//! Review of compaction's piece-at-a-time copies (96cb003): an abandoned copy's pieces left
//! past the tail, longer than what is appended after them, with the power going at every write
//! and flush and any subset of unflushed sectors surviving (the older write of a sector kept,
//! the newer lost); copies and abandoned copies across the end of the ring; a ring nearly full;
//! a read that fails mid-copy; and a property test of puts, pins, damage, collections and
//! crashes with pieces smaller than the objects.

extern crate std;

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use cairn_object::{Handle, Kind, Limits};

use super::tests::SimDisk;
use super::*;

/// A blob unique to its seed.
fn blob(seed: u32, len: usize) -> (Handle, Vec<u8>) {
    let mut bytes: Vec<u8> =
        (0..len as u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 ^ seed as u8).collect();
    let n = len.min(4);
    bytes[..n].copy_from_slice(&seed.to_le_bytes()[..n]);
    (Handle::blob(&bytes), bytes)
}

fn store_on(device_len: usize, piece: usize) -> DiskStore<SimDisk> {
    let mut store = DiskStore::format(SimDisk::new(device_len), [6; 16]).unwrap();
    store.copy_chunk = piece;
    store
}

fn open(disk: SimDisk, piece: usize) -> DiskStore<SimDisk> {
    let (mut store, _) = DiskStore::open(disk).unwrap();
    store.copy_chunk = piece;
    store
}

fn pin<D: Device>(store: &mut DiskStore<D>, h: &Handle) -> Result<(), StoreError> {
    store.set_note(space::PINS, h.as_bytes(), Some(h.as_bytes()))
}

/// Flips a byte of an object's bytes where the disk holds them, durably (damage, not a crash).
fn damage(store: &mut DiskStore<SimDisk>, h: &Handle, offset: usize) {
    let v = store.index.objects[h].position + record::HEADER_LEN + Handle::LEN as u64 + offset as u64;
    let at = ring::place(&store.superblock, v) as usize;
    store.device.current[at] ^= 0x55;
    store.device.durable[at] ^= 0x55;
}

/// A small deterministic generator for subsets of sectors.
fn xorshift(mut x: u64) -> impl FnMut() -> u64 {
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

/// Which of `n` unflushed sector writes survive: none, all, alternate ones, every prefix
/// (older writes kept, newer lost: an abandoned copy's sector kept and what was written over
/// it lost) and every suffix a few apart, and random subsets.
fn survivals(n: usize) -> Vec<Vec<bool>> {
    let mut all = Vec::from([alloc::vec![false; n], alloc::vec![true; n]]);
    all.push((0..n).map(|i| i % 2 == 0).collect());
    all.push((0..n).map(|i| i % 2 == 1).collect());
    let step = (n / 6).max(1);
    for k in (1..n).step_by(step).chain([1, 2, n.saturating_sub(1)]) {
        all.push((0..n).map(|i| i < k).collect());
        all.push((0..n).map(|i| i >= k).collect());
    }
    for seed in 1..6u64 {
        let mut next = xorshift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        all.push((0..n).map(|_| next() % 3 != 0).collect());
    }
    all
}

/// What every recovered store must show: each of `kept` right (and its pin there), each object
/// it holds readable and right, never a damaged one served, and a damaged one, if held, only
/// at its own old record (never at a copy of it). Then the log must go on: a put after the
/// recovery is durable.
fn check_recovered(
    mut store: DiskStore<SimDisk>,
    kept: &BTreeMap<Handle, Vec<u8>>,
    damaged: &BTreeMap<Handle, u64>,
    what: &str,
) {
    let head = store.superblock.head;
    for (h, b) in kept {
        assert!(store.get(h).unwrap().as_ref() == Some(b), "{what}: lost {h}");
        assert!(store.note(space::PINS, h.as_bytes()).is_some(), "{what}: the pin of {h}");
    }
    let held: Vec<(Handle, Location)> = store.index.objects.iter().map(|(h, l)| (*h, *l)).collect();
    for (h, at) in held {
        assert!(at.position >= head, "{what}: {h} held before the head");
        match damaged.get(&h) {
            Some(old) => {
                assert_eq!(at.position, *old, "{what}: damaged {h} held somewhere other than its old record");
                assert!(!matches!(store.get(&h), Ok(Some(_))), "{what}: damaged {h} served");
            }
            None => assert!(matches!(store.get(&h), Ok(Some(_))), "{what}: {h} held but reads wrong"),
        }
    }
    // The log goes on where recovery ended it, over whatever lies past the tail.
    let piece = store.copy_chunk;
    let (n, nb) = blob(0xdead_0000 + kept.len() as u32, 700);
    match store.put(&n, &nb) {
        Ok(_) => {}
        Err(StoreError::Full { .. }) => return,
        Err(e) => panic!("{what}: a put after recovery: {e}"),
    }
    store.commit().unwrap();
    let mut store = open(store.into_device().crash(|_| false), piece);
    assert!(store.get(&n).unwrap().as_deref() == Some(&nb[..]), "{what}: a put after recovery");
    for (h, b) in kept {
        assert!(store.get(h).unwrap().as_ref() == Some(b), "{what}: lost {h} after a put");
    }
}

/// Runs `work` on a store opened from `before`, the power going at each of its writes and
/// flushes in turn, and checks every recovery from every survival of the unflushed sectors.
/// Returns the store as the uninterrupted run leaves it.
fn at_every_cut(
    before: &SimDisk,
    piece: usize,
    work: &dyn Fn(&mut DiskStore<SimDisk>) -> Result<(), StoreError>,
    kept: &BTreeMap<Handle, Vec<u8>>,
    damaged: &BTreeMap<Handle, u64>,
    what: &str,
) -> DiskStore<SimDisk> {
    // Every cut of a short run; about 150 of a long one, spread over it (and its first few).
    let mut store = open(before.clone(), piece);
    store.device.ops_left = Some(usize::MAX);
    work(&mut store).unwrap();
    let ops = usize::MAX - store.device.ops_left.unwrap();
    let stride = ops / 150 + 1;
    let mut cut = 0;
    loop {
        let mut store = open(before.clone(), piece);
        store.device.ops_left = Some(cut);
        let finished = work(&mut store).is_ok();
        if finished {
            store.device.ops_left = None;
            return store;
        }
        let disk = store.into_device();
        for survive in survivals(disk.unflushed.len()) {
            let mut i = 0;
            let crashed = disk.clone().crash(|_| {
                i += 1;
                survive[i - 1]
            });
            let (store, _) = DiskStore::open(crashed).unwrap();
            let mut store = store;
            store.copy_chunk = piece;
            check_recovered(store, kept, damaged, &alloc::format!("{what}, cut at {cut}"));
        }
        cut += if cut < 8 { 1 } else { stride };
    }
}

/// A damaged object of 60 KB copied in pieces of 1000 bytes: its header and most of it are
/// written out before the damage is found, and what compaction appends after it (the other
/// copies and a checkpoint) is far shorter. The power goes at every write and flush, any
/// subset of the sectors surviving (among them the abandoned copy's header, with what was
/// written over it lost): the kept objects always come back, the damaged one is never held at
/// a copy, and the log goes on past the abandoned bytes. Then, from the finished compaction,
/// small commits are written over the abandoned bytes, and the same object is put again, good,
/// where its abandoned copy began; the power goes at each of their writes too.
#[test]
fn an_abandoned_copy_longer_than_what_follows_it_is_never_taken_for_a_record() {
    let piece = 1000;
    for victim_at in 0..3 {
        let mut store = store_on(1 << 20, piece);
        let (a, ab) = blob(1, 60_000);
        let small: Vec<(Handle, Vec<u8>)> = (0..3).map(|i| blob(10 + i, 2000)).collect();
        let mut order: Vec<(Handle, Vec<u8>)> = small.clone();
        order.insert(victim_at, (a, ab.clone()));
        for (h, b) in &order {
            store.put(h, b).unwrap();
            pin(&mut store, h).unwrap();
        }
        store.commit().unwrap();
        store.checkpoint().unwrap();
        damage(&mut store, &a, 59_000);
        let old = store.index.objects[&a].position;
        let stop = store.tail;
        let kept: BTreeMap<Handle, Vec<u8>> = small.iter().cloned().collect();
        let damaged = BTreeMap::from([(a, old)]);
        let before = store.into_device();
        let what = alloc::format!("damaged object {victim_at} of 4");
        let compact = |s: &mut DiskStore<SimDisk>| {
            let done = s.compact(u64::MAX)?;
            assert_eq!((done.copied, done.damaged), (3, 1));
            Ok(())
        };
        let mut store = at_every_cut(&before, piece, &compact, &kept, &damaged, &what);
        // The abandoned copy really was longer than what followed it, and its bytes are there.
        let abandoned_end = stop + record::record_len(Handle::LEN as u64 + ab.len() as u64);
        assert!(store.tail + 20_000 < abandoned_end, "{what}: {} vs {abandoned_end}", store.tail);
        let mut last = [0u8; 64];
        store.read_at(abandoned_end - 2048, &mut last).unwrap();
        assert!(last.iter().any(|b| *b != 0), "{what}: the abandoned bytes were never written");

        // Small commits over the abandoned bytes, then the same object again, good.
        let before = store.into_device().crash(|_| false);
        let more: Vec<(Handle, Vec<u8>)> = (0..6).map(|i| blob(100 + i, 300 + 997 * i as usize)).collect();
        let puts = |s: &mut DiskStore<SimDisk>| {
            for (h, b) in &more {
                s.put(h, b)?;
                pin(s, h)?;
                s.commit()?;
            }
            Ok(())
        };
        // Only what committed before the cut is owed: check with the kept set alone (the puts'
        // commits are checked once they finish).
        let store =
            at_every_cut(&before, piece, &puts, &kept, &damaged, &alloc::format!("{what}, puts after"));
        let mut all = kept.clone();
        all.extend(more.iter().cloned());
        let before = store.into_device().crash(|_| false);
        let store = open(before.clone(), piece);
        assert!(!store.index.objects.contains_key(&a));
        let again = |s: &mut DiskStore<SimDisk>| {
            s.put(&a, &ab)?;
            pin(s, &a)?;
            s.commit()
        };
        let mut store =
            at_every_cut(&before, piece, &again, &all, &BTreeMap::new(), &alloc::format!("{what}, again"));
        assert!(store.get(&a).unwrap().as_deref() == Some(&ab[..]));
        all.insert(a, ab.clone());
        check_recovered(open(store.into_device().crash(|_| false), piece), &all, &BTreeMap::new(), &what);
    }
}

/// The log goes round a small disk until a copy of a large object crosses the end of the ring;
/// that compaction is run again with the power going at every write, once as it was and once
/// with the straddling object damaged (its abandoned copy crosses the end): nothing kept is
/// lost, and the damaged object is never held at a copy.
#[test]
fn copies_and_abandoned_copies_across_the_end_of_the_ring() {
    let piece = 1000;
    let mut store = store_on(1 << 20, piece);
    let lap = store.log_len();
    let mut kept: BTreeMap<Handle, Vec<u8>> = BTreeMap::new();
    let mut found = 0;
    for round in 0..200u32 {
        let (h, b) = blob(1000 + round, 41_000 + 37 * round as usize);
        store.put(&h, &b).unwrap();
        pin(&mut store, &h).unwrap();
        store.commit().unwrap();
        kept.insert(h, b);
        while kept.len() > 4 {
            let old = *kept.keys().next().unwrap();
            store.set_note(space::PINS, old.as_bytes(), None).unwrap();
            kept.remove(&old);
        }
        // A commit after the objects', so that damage to one is not in the last commit.
        store.set_note(space::MEMO, &[round as u8; 40], Some(&[1; 40])).unwrap();
        store.commit().unwrap();
        store.collect(&[], None).unwrap();
        let before = store.device.clone().crash(|_| false);
        let stop = store.tail;
        store.compact(u64::MAX).unwrap();
        let straddler = kept.keys().copied().find(|h| {
            let at = store.index.objects[h];
            let end = at.position + record::record_len(Handle::LEN as u64 + u64::from(at.len));
            at.position >= stop && (at.position - LOG_START) / lap != (end - 1 - LOG_START) / lap
        });
        let Some(straddler) = straddler else { continue };
        found += 1;
        let what = alloc::format!("round {round}");
        let compact = |s: &mut DiskStore<SimDisk>| {
            s.collect(&[], None)?;
            s.compact(u64::MAX).map(|_| ())
        };
        at_every_cut(&before, piece, &compact, &kept, &BTreeMap::new(), &what);
        let mut bad = open(before.clone(), piece);
        let old = bad.index.objects[&straddler].position;
        let len = bad.index.objects[&straddler].len as usize;
        damage(&mut bad, &straddler, len - 1);
        let mut others = kept.clone();
        others.remove(&straddler);
        let damaged = BTreeMap::from([(straddler, old)]);
        let before = bad.into_device();
        let compact = |s: &mut DiskStore<SimDisk>| {
            s.collect(&[], None)?;
            let done = s.compact(u64::MAX)?;
            assert_eq!(done.damaged, 1);
            Ok(())
        };
        at_every_cut(&before, piece, &compact, &others, &damaged, &alloc::format!("{what}, damaged"));
        if found == 3 {
            break;
        }
    }
    assert_eq!(found, 3, "copies crossed the end of the ring");
}

/// A ring filled with pinned objects until nothing more fits, one of them damaged: compaction
/// (room checked with each record's whole length before its header is written) copies the
/// rest, whatever the power does.
#[test]
fn a_ring_nearly_full_of_pinned_objects_is_compacted_around_a_damaged_one() {
    for piece in [512, 4096] {
        let mut store = store_on(1 << 20, piece);
        let mut kept: BTreeMap<Handle, Vec<u8>> = BTreeMap::new();
        for i in 0..1000u32 {
            let (h, b) = blob(5000 + i, 9_000 + 1313 * (i as usize % 7));
            match store.put(&h, &b).and_then(|_| pin(&mut store, &h)).and_then(|_| store.commit()) {
                Ok(()) => {
                    kept.insert(h, b);
                }
                Err(StoreError::Full { .. }) => break,
                Err(e) => panic!("{e}"),
            }
        }
        store.set_note(space::MEMO, &[1; 40], Some(&[1; 40])).unwrap();
        // From a checkpoint, so that opening the store does not find the damage first.
        store.checkpoint().unwrap();
        assert!(store.stats().free_bytes < 20_000, "the ring is nearly full: {:?}", store.stats());
        let victim = *kept.keys().nth(kept.len() / 2).unwrap();
        let old = store.index.objects[&victim].position;
        damage(&mut store, &victim, 8_000);
        kept.remove(&victim);
        let damaged = BTreeMap::from([(victim, old)]);
        let before = store.into_device();
        let compact = |s: &mut DiskStore<SimDisk>| {
            let done = s.compact(u64::MAX)?;
            assert_eq!(done.damaged, 1, "{done:?}");
            Ok(())
        };
        let what = alloc::format!("piece {piece}, {} objects", kept.len());
        let store = at_every_cut(&before, piece, &compact, &kept, &damaged, &what);
        check_recovered(open(store.into_device().crash(|_| false), piece), &kept, &damaged, &what);
    }
}

/// A device whose reads fail from a given read on (a bad cable, a driver timeout): the error
/// is no crash, and the store goes on.
#[derive(Clone)]
struct FlakyReads {
    disk: SimDisk,
    reads_left: Option<usize>,
}

impl Device for FlakyReads {
    fn len(&self) -> u64 {
        self.disk.len()
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        match &mut self.reads_left {
            Some(0) => return Err(DeviceError("read failed")),
            Some(n) => *n -= 1,
            None => {}
        }
        self.disk.read(offset, buf)
    }

    fn write(&mut self, offset: u64, bytes: &[u8]) -> Result<(), DeviceError> {
        self.disk.write(offset, bytes)
    }

    fn flush(&mut self) -> Result<(), DeviceError> {
        self.disk.flush()
    }
}

/// A read fails at each point of a compaction of large objects (so copies are taken back
/// after some of their pieces were written): the error is returned, the store takes more
/// (another compaction, puts, commits), and after any crash from there everything committed
/// is back; the copies made before the failure stay held.
#[test]
fn a_read_that_fails_mid_copy_takes_the_copy_back_and_the_store_goes_on() {
    let piece = 1000;
    let mut store = store_on(1 << 20, piece);
    let objects: Vec<(Handle, Vec<u8>)> = (0..4).map(|i| blob(300 + i, 7_000 + 9_000 * i as usize)).collect();
    for (h, b) in &objects {
        store.put(h, b).unwrap();
        pin(&mut store, h).unwrap();
    }
    store.commit().unwrap();
    store.checkpoint().unwrap();
    let kept: BTreeMap<Handle, Vec<u8>> = objects.iter().cloned().collect();
    let before = store.into_device();
    let mut failures = 0;
    for reads in 0.. {
        let (mut store, _) = DiskStore::open(FlakyReads { disk: before.clone(), reads_left: None }).unwrap();
        store.copy_chunk = piece;
        store.device.reads_left = Some(reads);
        if store.compact(u64::MAX).is_ok() {
            break;
        }
        failures += 1;
        store.device.reads_left = None;
        let what = alloc::format!("reads {reads}");
        if store.failed() {
            // The read was part of a write (the start of a sector read back): a crash.
            let disk = store.into_device().disk.crash(|_| true);
            check_recovered(open(disk, piece), &kept, &BTreeMap::new(), &what);
            continue;
        }
        let (h, b) = blob(900 + reads as u32, 5_000);
        store.put(&h, &b).unwrap();
        pin(&mut store, &h).unwrap();
        store.commit().unwrap();
        for (h, _) in &objects {
            assert!(store.contains(h), "reads {reads}: {h} not held durably after the commit");
        }
        let mut more = kept.clone();
        more.insert(h, b);
        let disk = store.into_device().disk;
        let compact = |s: &mut DiskStore<SimDisk>| s.compact(u64::MAX).map(|_| ());
        if reads % 7 != 0 {
            check_recovered(open(disk.crash(|_| false), piece), &more, &BTreeMap::new(), &what);
            continue;
        }
        let store = at_every_cut(&disk, piece, &compact, &more, &BTreeMap::new(), &what);
        check_recovered(open(store.into_device().crash(|_| false), piece), &more, &BTreeMap::new(), &what);
    }
    assert!(failures > 20, "reads failed at many points ({failures})");
}

/// Trees and thunks with thousands of entries copied in pieces that are no multiple of an
/// entry (and an empty tree), intact across a restart.
#[test]
fn trees_and_thunks_copied_in_odd_pieces_are_intact() {
    for piece in [512, 999, 1001, 4096 + 40] {
        let mut store = store_on(1 << 20, piece);
        let entries: Vec<Handle> = (0..1200u32).map(|i| blob(i, 33 + i as usize % 50).0).collect();
        let mut objects = Vec::new();
        for n in [0, 1, 25, 26, 1200] {
            let t = cairn_object::tree::encode(&entries[..n]);
            objects.push((cairn_object::store::name(Kind::Tree, &t).unwrap(), t));
        }
        let limits = Limits::new(1 << 20).unwrap();
        for n in [0, 1, 1198] {
            let k = cairn_object::thunk::encode(limits, entries[7], &entries[..n]).unwrap();
            objects.push((cairn_object::store::name(Kind::Thunk, &k).unwrap(), k));
        }
        for (h, b) in &objects {
            store.put(h, b).unwrap();
            pin(&mut store, h).unwrap();
        }
        store.commit().unwrap();
        let done = store.compact(u64::MAX).unwrap();
        assert_eq!((done.copied, done.damaged), (objects.len() as u64, 0), "piece {piece}");
        let kept: BTreeMap<Handle, Vec<u8>> = objects.into_iter().collect();
        check_recovered(
            open(store.into_device().crash(|_| false), piece),
            &kept,
            &BTreeMap::new(),
            "odd pieces",
        );
    }
}

mod property {
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Put(u32, usize),
        Unpin(usize),
        Damage(usize, usize),
        Gc(Option<u64>, u64),
        Checkpoint,
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (any::<u32>(), prop_oneof![33usize..600, 600usize..8_000, 8_000usize..60_000]).prop_map(|(s, l)| Op::Put(s, l)),
            2 => any::<usize>().prop_map(Op::Unpin),
            2 => (any::<usize>(), any::<usize>()).prop_map(|(i, o)| Op::Damage(i, o)),
            3 => (prop::option::of(0u64..100_000), prop_oneof![Just(u64::MAX), 1u64..200_000]).prop_map(|(g, c)| Op::Gc(g, c)),
            1 => Just(Op::Checkpoint),
            1 => Just(Op::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

        /// Pinned objects larger and smaller than a piece, put and committed, unpinned,
        /// damaged on the disk (never in the last commit), collected and compacted (copies
        /// abandoned where the damage is), checkpoints and clean restarts; the power goes at a
        /// random write or flush and a random subset of unflushed sectors survives. Every
        /// object committed, pinned and not damaged comes back right; a damaged one is never
        /// served, nor held anywhere but its own old record; everything held reads right.
        #[test]
        fn puts_damage_collections_and_crashes_with_small_pieces(
            ops in prop::collection::vec(op(), 1..60),
            piece in prop_oneof![Just(512usize), Just(1000), 3000usize..70_000],
            extra_sectors in 0u64..40,
            power_fails_after in 0usize..300,
            survive_seed in any::<u64>(),
            survive_odds in 1u64..4,
        ) {
            let len = (MIN_DEVICE + extra_sectors * SECTOR) as usize;
            let mut store = store_on(len, piece);
            store.device.ops_left = Some(power_fails_after);
            let mut kept: BTreeMap<Handle, Vec<u8>> = BTreeMap::new();
            let mut damaged: BTreeMap<Handle, u64> = BTreeMap::new();
            let mut seen: BTreeSet<Handle> = BTreeSet::new();
            for (n, op) in ops.iter().enumerate() {
                let outcome = match op {
                    Op::Put(seed, len) => {
                        let (h, b) = blob(*seed, (*len).min(store.max_object() as usize));
                        if !seen.insert(h) {
                            continue;
                        }
                        store.put(&h, &b).and_then(|_| pin(&mut store, &h)).and_then(|_| store.commit())
                            .map(|_| { kept.insert(h, b); })
                    }
                    Op::Unpin(i) if !kept.is_empty() => {
                        let h = *kept.keys().nth(i % kept.len()).unwrap();
                        kept.remove(&h);
                        store.set_note(space::PINS, h.as_bytes(), None).and_then(|_| store.commit())
                    }
                    Op::Damage(i, o) if !kept.is_empty() => {
                        // A commit after it first, so that it is not in the last commit.
                        let marked = store.set_note(space::MEMO, &[n as u8; 40], Some(&[2; 40]))
                            .and_then(|_| store.commit());
                        if marked.is_ok() {
                            let h = *kept.keys().nth(i % kept.len()).unwrap();
                            let at = store.index.objects[&h];
                            damage(&mut store, &h, o % at.len as usize);
                            kept.remove(&h);
                            damaged.insert(h, at.position);
                        }
                        marked
                    }
                    Op::Unpin(_) | Op::Damage(..) => Ok(()),
                    Op::Gc(goal, compact) => store.collect(&[], *goal).and_then(|_| store.compact(*compact)).map(|_| ()),
                    Op::Checkpoint => store.checkpoint(),
                    Op::Reopen => {
                        let ops_left = store.device.ops_left;
                        store = open(store.into_device().crash(|_| false), piece);
                        store.device.ops_left = ops_left;
                        Ok(())
                    }
                };
                match outcome {
                    Ok(()) | Err(StoreError::Full { .. }) => {}
                    Err(_) => break,
                }
            }
            let mut next = xorshift(survive_seed | 1);
            let crashed = store.into_device().crash(|_| next() % 4 < survive_odds);
            let (recovered, _) = DiskStore::open(crashed).unwrap();
            let mut recovered = recovered;
            recovered.copy_chunk = piece;
            check_recovered(recovered, &kept, &damaged, "after the crash");
        }
    }
}
