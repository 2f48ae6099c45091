//! Review of compaction moving the head without a checkpoint (cb8f7ae): copies of objects
//! committed before the last checkpoint now lie only after it, so whatever keeps recovery's
//! scan from reaching them makes `forget_before` drop objects that were kept and durable.

use cairn_object::Handle;

use super::tests::{SimDisk, blob, key, new_store};
use super::*;

/// Flips a byte of the log at offset `v` on the disk, durably (damage, not a crash).
fn damage(store: DiskStore<SimDisk>, v: u64) -> SimDisk {
    let at = ring::place(&store.superblock, v) as usize;
    let mut disk = store.into_device().crash(|_| false);
    disk.current[at] ^= 0x55;
    disk.durable[at] ^= 0x55;
    disk
}

/// Two objects committed and checkpointed; a compaction with a small goal copies both and
/// moves the head past them (no checkpoint). One copy is damaged on the disk: the copies'
/// commit is the last, so recovery takes it for a commit cut short and drops it, and then
/// forgets the other object too, although its copy (and even its old record) is intact.
/// Before cb8f7ae the compaction ended with a checkpoint naming the copies, and only the
/// damaged object was lost (found damaged when read).
#[test]
fn a_damaged_copy_in_the_last_commit_loses_only_itself() {
    let mut store = new_store();
    let (a, ab) = blob(1, 3000);
    let (b, bb) = blob(2, 3000);
    store.put(&a, &ab).unwrap();
    store.put(&b, &bb).unwrap();
    store.set_note(space::PINS, a.as_bytes(), Some(a.as_bytes())).unwrap();
    store.set_note(space::PINS, b.as_bytes(), Some(b.as_bytes())).unwrap();
    store.checkpoint().unwrap();
    let first = store.index.objects[&a].position;
    let done = store.compact(2 * record::record_len(3040)).unwrap();
    assert_eq!(done.copied, 2);
    assert!(store.superblock.head > first, "the head moved past the originals");
    let b_copy = store.index.objects[&b].position;
    let disk = damage(store, b_copy + record::HEADER_LEN + Handle::LEN as u64 + 100);
    let (mut store, _) = DiskStore::open(disk).unwrap();
    assert!(store.get(&a).unwrap().as_deref() == Some(&ab[..]), "a pinned, intact object was lost");
}

/// A checkpoint, then an ordinary commit (a note), then a compaction with a small goal: the
/// copy lies after the note. The note's record is damaged on the disk: recovery's scan stops
/// there (docs: "the commits after it are not found"), never sees the copy, and forgets the
/// object that the checkpoint placed before the head: an object committed and checkpointed
/// before the damage is silently gone. Before cb8f7ae the compaction's checkpoint held it.
#[test]
fn damage_after_the_checkpoint_does_not_lose_what_the_checkpoint_held() {
    let mut store = new_store();
    let (a, ab) = blob(3, 3000);
    store.put(&a, &ab).unwrap();
    store.set_note(space::PINS, a.as_bytes(), Some(a.as_bytes())).unwrap();
    store.checkpoint().unwrap();
    let note_at = store.tail;
    store.set_note(space::MEMO, &key(9), Some(a.as_bytes())).unwrap();
    store.commit().unwrap();
    let done = store.compact(1).unwrap();
    assert_eq!(done.copied, 1);
    let disk = damage(store, note_at + record::HEADER_LEN + 5);
    let (mut store, _) = DiskStore::open(disk).unwrap();
    assert!(store.get(&a).unwrap().as_deref() == Some(&ab[..]), "a pinned, checkpointed object was lost");
}
