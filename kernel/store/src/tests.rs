use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

use cairn_object::Handle;
use proptest::prelude::*;

use super::*;

/// A disk in memory that can crash: writes are seen by reads at once but are only durable after
/// a flush; a crash keeps any subset of the sectors written since (as a disk's cache may), and
/// a disk can be made to fail after a number of writes and flushes (the power goes mid-commit).
#[derive(Clone)]
pub(crate) struct SimDisk {
    pub(crate) current: Vec<u8>,
    pub(crate) durable: Vec<u8>,
    pub(crate) unflushed: Vec<(u64, Vec<u8>)>,
    pub(crate) ops_left: Option<usize>,
}

impl SimDisk {
    pub(crate) fn new(len: usize) -> SimDisk {
        SimDisk { current: vec![0; len], durable: vec![0; len], unflushed: Vec::new(), ops_left: None }
    }

    fn spend(&mut self) -> Result<(), DeviceError> {
        match &mut self.ops_left {
            Some(0) => Err(DeviceError("the power is off")),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// The power comes back: what was flushed, and the unflushed sectors `keep` chooses.
    pub(crate) fn crash(mut self, mut keep: impl FnMut(usize) -> bool) -> SimDisk {
        let mut disk = self.durable.clone();
        for (i, (offset, sector)) in self.unflushed.drain(..).enumerate() {
            if keep(i) {
                disk[offset as usize..offset as usize + sector.len()].copy_from_slice(&sector);
            }
        }
        SimDisk { current: disk.clone(), durable: disk, unflushed: Vec::new(), ops_left: None }
    }
}

impl Device for SimDisk {
    fn len(&self) -> u64 {
        self.current.len() as u64
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let start = offset as usize;
        let src = self.current.get(start..start + buf.len()).ok_or(DeviceError("read past the end"))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write(&mut self, offset: u64, bytes: &[u8]) -> Result<(), DeviceError> {
        assert!(
            offset.is_multiple_of(SECTOR) && (bytes.len() as u64).is_multiple_of(SECTOR),
            "whole sectors"
        );
        self.spend()?;
        let start = offset as usize;
        self.current.get(start..start + bytes.len()).ok_or(DeviceError("write past the end"))?;
        self.current[start..start + bytes.len()].copy_from_slice(bytes);
        for (i, sector) in bytes.chunks(SECTOR as usize).enumerate() {
            self.unflushed.push((offset + i as u64 * SECTOR, sector.to_vec()));
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), DeviceError> {
        self.spend()?;
        self.durable.clone_from(&self.current);
        self.unflushed.clear();
        Ok(())
    }
}

pub(crate) const DISK: usize = 4 << 20;

pub(crate) fn blob(seed: u32, len: usize) -> (Handle, Vec<u8>) {
    let bytes: Vec<u8> =
        (0..len as u32).map(|i| (i.wrapping_mul(2654435761) ^ seed.wrapping_mul(40503)) as u8).collect();
    (Handle::blob(&bytes), bytes)
}

pub(crate) fn key(n: u8) -> NoteKey {
    [n; 40]
}

pub(crate) fn new_store() -> DiskStore<SimDisk> {
    DiskStore::format(SimDisk::new(DISK), [7; 16]).unwrap()
}

pub(crate) fn reopen(store: DiskStore<SimDisk>) -> (DiskStore<SimDisk>, Recovery) {
    DiskStore::open(store.into_device().crash(|_| false)).unwrap()
}

#[test]
fn committed_objects_and_notes_come_back_after_a_restart() {
    let mut store = new_store();
    let objects: Vec<_> = (0..20).map(|i| blob(i, 40 + i as usize * 997)).collect();
    for (handle, bytes) in &objects {
        assert!(store.put(handle, bytes).unwrap());
        assert!(!store.put(handle, bytes).unwrap(), "a second put of the same object is nothing");
    }
    store.set_note(1, &key(1), Some(&key(2))).unwrap();
    store.set_note(1, &key(3), Some(&key(4))).unwrap();
    store.set_note(1, &key(3), None).unwrap();
    store.set_note(2, &key(1), Some(&key(9))).unwrap();
    // Readable before the commit too, from what is about to be written.
    assert_eq!(store.get(&objects[3].0).unwrap().unwrap(), objects[3].1);
    store.commit().unwrap();
    let (mut store, recovery) = reopen(store);
    assert!(!recovery.from_checkpoint);
    assert_eq!(recovery.damaged_objects, 0);
    for (handle, bytes) in &objects {
        assert_eq!(store.get(handle).unwrap().as_ref(), Some(bytes));
    }
    assert_eq!(store.note(1, &key(1)), Some(&key(2)));
    assert_eq!(store.note(1, &key(3)), None);
    assert_eq!(store.notes(2).collect::<Vec<_>>(), [(&key(1), &key(9))]);
    assert_eq!(store.stats().objects, 20);
}

#[test]
fn a_checkpoint_is_where_the_next_start_begins() {
    let mut store = new_store();
    let before: Vec<_> = (0..10).map(|i| blob(i, 5000)).collect();
    for (h, b) in &before {
        store.put(h, b).unwrap();
    }
    store.set_note(3, &key(1), Some(&key(1))).unwrap();
    store.checkpoint().unwrap();
    let after = blob(99, 7000);
    store.put(&after.0, &after.1).unwrap();
    store.commit().unwrap();
    let (mut store, recovery) = reopen(store);
    assert!(recovery.from_checkpoint);
    // The checkpoint's commit padding, then the object and its commit's padding.
    assert_eq!(recovery.records_scanned, 3);
    for (h, b) in before.iter().chain([&after]) {
        assert_eq!(store.get(h).unwrap().as_ref(), Some(b));
    }
    assert_eq!(store.note(3, &key(1)), Some(&key(1)));
    // And again, on top of that.
    store.checkpoint().unwrap();
    let (mut store, recovery) = reopen(store);
    assert_eq!(recovery.records_scanned, 1, "the checkpoint's commit padding");
    assert_eq!(store.get(&after.0).unwrap().as_ref(), Some(&after.1));
}

#[test]
fn disks_that_hold_no_store_are_refused_by_name() {
    assert_eq!(DiskStore::open(SimDisk::new(DISK)).err(), Some(StoreError::NotFormatted));
    let mut other = SimDisk::new(DISK);
    other.current[..4096].fill(0x5a);
    assert_eq!(DiskStore::open(other).err(), Some(StoreError::Foreign));
    assert_eq!(
        DiskStore::format(SimDisk::new(64 * 1024), [1; 16]).err(),
        Some(StoreError::DeviceTooSmall { len: 64 * 1024 })
    );
    // Both superblocks damaged (a Cairn magic, wrong checksums).
    let store = new_store();
    let mut disk = store.into_device();
    disk.current[100] ^= 1;
    disk.current[4096 + 100] ^= 1;
    assert_eq!(DiskStore::open(disk).err(), Some(StoreError::SuperblockDamaged));
}

#[test]
fn a_damaged_superblock_copy_falls_back_to_the_other() {
    let mut store = new_store();
    let object = blob(1, 3000);
    store.put(&object.0, &object.1).unwrap();
    store.checkpoint().unwrap();
    let mut disk = store.into_device();
    // The newer copy (the checkpoint's, sequence 2 at offset 0) is torn.
    disk.current[40] ^= 0xff;
    let (mut store, recovery) = DiskStore::open(disk).unwrap();
    assert!(!recovery.from_checkpoint, "the older copy names no checkpoint");
    assert_eq!(store.get(&object.0).unwrap(), Some(object.1), "the log holds it all");
}

#[test]
fn a_full_disk_says_so_and_the_store_goes_on() {
    let mut store = new_store();
    let mut stored = Vec::new();
    let mut err = None;
    for i in 0..100 {
        let object = blob(i, 100_000);
        match store.put(&object.0, &object.1) {
            Ok(_) => stored.push(object),
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let err = err.expect("4 MiB fills up");
    assert!(matches!(err, StoreError::Full { .. }), "{err}");
    assert!(alloc::format!("{err}").starts_with("store full"), "{err}");
    store.commit().unwrap();
    let small = blob(1000, 100);
    store.put(&small.0, &small.1).unwrap();
    store.commit().unwrap();
    let (mut store, _) = reopen(store);
    for (h, b) in stored.iter().chain([&small]) {
        assert_eq!(store.get(h).unwrap().as_ref(), Some(b));
    }
}

#[test]
fn damaged_bytes_are_never_served_and_scrub_finds_them() {
    let mut store = new_store();
    let objects: Vec<_> = (0..5).map(|i| blob(i, 20_000)).collect();
    for (h, b) in &objects {
        store.put(h, b).unwrap();
    }
    store.commit().unwrap();
    // A later commit: the damaged one is not the last (see the next test for that).
    let later = blob(77, 500);
    store.put(&later.0, &later.1).unwrap();
    store.commit().unwrap();
    let target = store.index.objects[&objects[2].0];
    let mut disk = store.into_device();
    // Garbage over a sector in the middle of the object's bytes.
    let at = (target.position + 4096).next_multiple_of(SECTOR) as usize;
    disk.current[at..at + 512].fill(0xee);
    disk.durable.clone_from(&disk.current);
    let (mut store, recovery) = DiskStore::open(disk.clone()).unwrap();
    assert_eq!(recovery.damaged_objects, 1, "found at start, and not held");
    assert!(!store.contains(&objects[2].0));
    for (i, (h, b)) in objects.iter().enumerate().filter(|(i, _)| *i != 2) {
        assert_eq!(store.get(h).unwrap().as_ref(), Some(b), "object {i} after the damaged one");
    }
    // Damaged after the store was opened: reading says so, and scrub lists it.
    let mut store = {
        let mut disk = disk;
        disk.current[at..at + 512].copy_from_slice(&objects[2].1[..512]);
        let (store, _) = DiskStore::open(disk).unwrap();
        store
    };
    let victim = store.index.objects[&objects[4].0];
    let at = (victim.position + 1024) as usize;
    store.device.current[at] ^= 1;
    let victim = store.index.objects[&objects[3].0];
    store.device.current[(victim.position + 2048) as usize] ^= 1;
    assert_eq!(store.get(&objects[4].0), Err(StoreError::Corrupt { handle: objects[4].0 }));
    // No longer held, so that a client's put writes it again.
    assert!(!store.contains(&objects[4].0));
    assert_eq!(store.get(&objects[4].0), Ok(None));
    assert!(store.put(&objects[4].0, &objects[4].1).unwrap());
    store.commit().unwrap();
    assert_eq!(store.get(&objects[4].0).unwrap().as_ref(), Some(&objects[4].1));
    assert_eq!(store.scrub().unwrap(), [objects[3].0]);
}

/// The last commit cannot tell media damage from a crash that cut it short (never
/// acknowledged): it does not count, and recovery says how many records it dropped; the commits
/// before it all do.
#[test]
fn damage_in_the_last_commit_drops_that_commit_and_says_so() {
    let mut store = new_store();
    let first = blob(1, 3000);
    store.put(&first.0, &first.1).unwrap();
    store.commit().unwrap();
    let (x, xb) = blob(2, 20_000);
    store.put(&x, &xb).unwrap();
    store.set_note(1, &key(1), Some(&x.as_bytes()[..40].try_into().unwrap())).unwrap();
    store.commit().unwrap();
    let at = (store.index.objects[&x].position + 8192) as usize;
    let mut disk = store.into_device();
    disk.current[at] ^= 1;
    disk.durable.clone_from(&disk.current);
    let (mut store, recovery) = DiskStore::open(disk).unwrap();
    assert_eq!(recovery.dropped_records, 3, "the object, the note and the padding");
    assert!(!store.contains(&x));
    assert_eq!(store.note(1, &key(1)), None, "no note about an object not held");
    assert_eq!(store.get(&first.0).unwrap(), Some(first.1));
}

/// What a test run did, and what it was promised.
#[derive(Debug, Clone)]
enum Op {
    Put(u32, usize),
    Note(u8, u8, Option<u8>),
    Commit,
    Checkpoint,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u32..200, prop_oneof![0usize..100, 100usize..5000, Just(70_000)]).prop_map(|(s, l)| Op::Put(s, l)),
        2 => (0u8..3, 0u8..8, prop::option::of(0u8..255)).prop_map(|(s, k, v)| Op::Note(s, k, v)),
        2 => Just(Op::Commit),
        1 => Just(Op::Checkpoint),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// The power goes at a random write or flush, and the disk keeps a random subset of what
    /// was not flushed: every object and note a commit returned for is there after the restart,
    /// and everything held reads back right.
    #[test]
    fn what_a_commit_returned_for_survives_any_crash(
        ops in prop::collection::vec(op(), 1..40),
        power_fails_after in 0usize..60,
        kept in prop::collection::vec(any::<bool>(), 64),
        restarts in 1usize..3,
        write_behind in prop_oneof![Just(WRITE_BEHIND), 512usize..20_000],
    ) {
        let mut disk = new_store().into_device();
        // Promised: objects, and each note's last committed value (None: none), with the
        // values set after it that may or may not have reached the disk.
        let mut promised: BTreeMap<Handle, Vec<u8>> = BTreeMap::new();
        type Noted = (Option<NoteValue>, Vec<Option<NoteValue>>);
        let mut notes: BTreeMap<(u8, NoteKey), Noted> = BTreeMap::new();
        for round in 0..restarts {
            let (mut store, _) = DiskStore::open(disk.clone()).unwrap();
            store.device.ops_left = Some(power_fails_after + round * 7);
            store.write_behind = write_behind;
            let mut uncommitted: Vec<(Handle, Vec<u8>)> = Vec::new();
            let mut unnoted: Vec<((u8, NoteKey), Option<NoteValue>)> = Vec::new();
            for op in &ops {
                let outcome = match op {
                    Op::Put(seed, len) => {
                        let (h, b) = blob(*seed + round as u32 * 1000, *len);
                        store.put(&h, &b).map(|_| uncommitted.push((h, b)))
                    }
                    Op::Note(space, k, v) => {
                        let value = v.map(key);
                        store.set_note(*space, &key(*k), value.as_ref()).map(|_| unnoted.push(((*space, key(*k)), value)))
                    }
                    Op::Commit | Op::Checkpoint => {
                        let done = if matches!(op, Op::Commit) { store.commit() } else { store.checkpoint() };
                        done.map(|_| {
                            promised.extend(uncommitted.drain(..));
                            for (k, v) in unnoted.drain(..) {
                                *notes.entry(k).or_default() = (v, Vec::new());
                            }
                        })
                    }
                };
                if outcome.is_err() {
                    break;
                }
            }
            // Values set but not committed may or may not be there.
            for (k, v) in unnoted {
                notes.entry(k).or_default().1.push(v);
            }
            let mut i = 0;
            disk = store.into_device().crash(|_| { i += 1; kept[i % kept.len()] });
            // An object whose record was torn (never promised) may be found damaged: it is
            // then not held.
            let (mut store, _) = DiskStore::open(disk.clone()).unwrap();
            for (h, b) in &promised {
                let got = store.get(h).unwrap();
                prop_assert_eq!(got.as_ref(), Some(b), "lost {}", h);
            }
            let held: Vec<Handle> = store.index.objects.keys().copied().collect();
            for h in held {
                prop_assert!(store.get(&h).is_ok(), "a wrong byte held for {}", h);
            }
            for (k, (committed, later)) in notes.iter_mut() {
                let now = store.note(k.0, &k.1).copied();
                prop_assert!(now == *committed || later.contains(&now), "note {:?}: {:?}, committed {:?}, later {:?}", k, now, committed, later);
                // What is there now is what the next round starts from.
                *committed = now;
                later.clear();
            }
        }
    }
}
