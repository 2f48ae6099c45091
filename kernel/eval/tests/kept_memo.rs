//! A store that keeps memo entries beyond the evaluator (as a node's disk does across restarts):
//! a new evaluator over it finds what an earlier one learned (docs/STORE.md, "What the disk
//! keeps").

use std::collections::BTreeMap;

use bytes::Bytes;
use cairn_eval::{Application, Evaluator, Executor, Failure, Replay};
use cairn_object::store::{MemStore, Store, StoreError, StoreStats};
use cairn_object::{Handle, Kind, Limits, thunk};

/// A memory store plus a memo that outlives evaluators.
struct Keeping {
    objects: MemStore,
    memo: BTreeMap<Handle, Handle>,
}

impl Store for Keeping {
    fn put(&mut self, kind: Kind, bytes: Bytes) -> Result<Handle, StoreError> {
        self.objects.put(kind, bytes)
    }
    fn put_verified(&mut self, claimed: &Handle, bytes: Bytes) -> Result<(), StoreError> {
        self.objects.put_verified(claimed, bytes)
    }
    fn get(&self, handle: &Handle) -> Option<Bytes> {
        self.objects.get(handle)
    }
    fn contains(&self, handle: &Handle) -> bool {
        self.objects.contains(handle)
    }
    fn stats(&self) -> StoreStats {
        self.objects.stats()
    }
    fn pin(&mut self, handle: &Handle) -> bool {
        self.objects.pin(handle)
    }
    fn unpin(&mut self, handle: &Handle) {
        self.objects.unpin(handle)
    }
    fn reclaim(&mut self, bytes: u64, second_chance: bool) -> bool {
        self.objects.reclaim(bytes, second_chance)
    }
    fn recall_memo(&self, thunk: &Handle) -> Option<Handle> {
        self.memo.get(thunk).copied()
    }
    fn keep_memo(&mut self, thunk: &Handle, value: &Handle) {
        self.memo.insert(*thunk, *value);
    }
}

/// `add` sums two u64 blobs; `fail` fails deterministically; `count` counts its runs.
#[derive(Default)]
struct Ops {
    runs: u64,
}

fn op(name: &str) -> Handle {
    Handle::blob(format!("op:{name}").as_bytes())
}

fn number(store: &mut dyn Store, n: u64) -> Handle {
    store.put(Kind::Blob, Bytes::copy_from_slice(&n.to_le_bytes())).unwrap()
}

fn read(store: &dyn Store, h: &Handle) -> u64 {
    u64::from_le_bytes(store.get(h).unwrap()[..8].try_into().unwrap())
}

fn thunk_of(store: &mut dyn Store, name: &str, args: &[Handle]) -> Handle {
    let enc = thunk::encode(Limits::new(1 << 20).unwrap(), op(name), args).unwrap();
    store.put(Kind::Thunk, Bytes::from(enc)).unwrap()
}

impl Executor<Keeping> for Ops {
    fn apply(&mut self, store: &mut Keeping, app: &Application<'_>) -> Result<Handle, Failure> {
        self.runs += 1;
        if app.procedure == op("fail") {
            return Err(Failure::TaskError("no".into()));
        }
        let sum = app.args.iter().map(|a| read(store, a)).sum();
        Ok(number(store, sum))
    }
}

fn evaluator(store: Keeping) -> Evaluator<Keeping, Ops> {
    Evaluator::new(store, Ops::default())
}

fn fresh_store() -> Keeping {
    Keeping { objects: MemStore::new(1 << 24), memo: BTreeMap::new() }
}

#[test]
fn a_new_evaluator_finds_values_the_store_kept_and_runs_nothing() {
    let mut first = evaluator(fresh_store());
    let (a, b) = (number(&mut first.store, 40), number(&mut first.store, 2));
    let inner = thunk_of(&mut first.store, "add", &[a, b]);
    let outer = thunk_of(&mut first.store, "add", &[inner, a]);
    let value = first.eval(outer).unwrap();
    assert_eq!(read(&first.store, &value), 82);
    // Both thunks as written (and `outer` as applied, its argument evaluated).
    assert_eq!(first.store.memo.get(&outer), Some(&value));
    assert!(first.store.memo.contains_key(&inner));

    let mut second = evaluator(first.store);
    assert_eq!(second.eval(outer), Ok(value));
    assert_eq!(second.executor.runs, 0);
    assert_eq!(second.stats().memo_hits, 1);
    // What the store kept is what `replay` checks against.
    assert_eq!(second.replay(inner), Replay::Identical(Ok(Handle::blob(&42u64.to_le_bytes()))));
    assert_eq!(second.executor.runs, 1, "replay runs it again");
}

#[test]
fn a_kept_value_the_store_no_longer_holds_is_no_hit() {
    let mut first = evaluator(fresh_store());
    let a = number(&mut first.store, 7);
    let t = thunk_of(&mut first.store, "add", &[a, a]);
    first.eval(t).unwrap();
    // Forged: the memo names a value no store holds.
    let mut store = first.store;
    let gone = Handle::blob(&[9; 100]);
    store.memo.insert(t, gone);
    let mut second = evaluator(store);
    let value = second.eval(t).unwrap();
    assert_eq!(read(&second.store, &value), 14);
    assert_eq!(second.executor.runs, 1, "run again, not answered with what is not there");
}

#[test]
fn errors_fresh_runs_and_io_are_not_kept() {
    let mut ev = evaluator(fresh_store());
    let a = number(&mut ev.store, 1);
    let failing = thunk_of(&mut ev.store, "fail", &[a]);
    assert!(ev.eval(failing).is_err());
    let fresh = thunk_of(&mut ev.store, "add", &[a, a, a]);
    ev.eval_fresh(fresh).unwrap();
    assert!(ev.store.memo.is_empty(), "{:?}", ev.store.memo);
}
