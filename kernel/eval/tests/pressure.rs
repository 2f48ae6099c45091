//! The evaluator with a store and a memo under pressure (docs/SECURITY.md): garbage is evicted,
//! what an evaluation still needs is pinned, the memo keeps to its capacity and lets go of what
//! it pinned, and a full store never stops the next evaluation.

use bytes::Bytes;
use cairn_eval::{Application, Ceilings, Evaluator, Executor, Failure};
use cairn_object::store::{MemStore, OBJECT_OVERHEAD, Store};
use cairn_object::{Handle, Kind, Limits, thunk};

/// `big N`: a fresh blob of N bytes; `garbage N`: N objects nobody keeps, then a small value;
/// `concat`: its arguments' bytes, one after the other (it reads every one).
struct Fake;

fn op(name: &str) -> Handle {
    Handle::blob(format!("op:{name}").as_bytes())
}

fn number(store: &dyn Store, h: &Handle) -> u64 {
    u64::from_le_bytes(store.get(h).unwrap()[..8].try_into().unwrap())
}

impl Executor<MemStore> for Fake {
    fn apply(&mut self, store: &mut MemStore, app: &Application<'_>) -> Result<Handle, Failure> {
        let put = |store: &mut MemStore, bytes: Vec<u8>| {
            store.put(Kind::Blob, Bytes::from(bytes)).map_err(|_| Failure::NodeOutOfMemory)
        };
        if app.procedure == op("big") {
            let n = number(store, &app.args[0]);
            let seed = number(store, &app.args[1]);
            put(store, (0..n).map(|i| (i ^ seed) as u8).collect())
        } else if app.procedure == op("garbage") {
            let n = number(store, &app.args[0]);
            for i in 0..n {
                put(store, format!("garbage {i} of a task that keeps none of it").repeat(20).into_bytes())?;
            }
            put(store, b"the small value a garbage task returns".to_vec())
        } else if app.procedure == op("concat") {
            let mut out = Vec::new();
            for a in app.args {
                out.extend_from_slice(&store.get(a).ok_or(Failure::MissingObject(*a))?);
            }
            put(store, out)
        } else {
            Err(Failure::InvalidThunk("unknown fake procedure".into()))
        }
    }
}

/// Stores a thunk as a node's API does: making room first, as the client's upload would.
fn thunk_of(ev: &mut Evaluator<MemStore, Fake>, name: &str, args: &[Handle]) -> Handle {
    let encoding = thunk::encode(Limits::new(1 << 20).unwrap(), op(name), args).unwrap();
    assert!(ev.make_room(encoding.len() as u64 + OBJECT_OVERHEAD));
    ev.store.put(Kind::Thunk, Bytes::from(encoding)).unwrap()
}

fn n(v: u64) -> Handle {
    Handle::blob(&v.to_le_bytes())
}

#[test]
fn garbage_is_evicted_and_what_an_evaluation_needs_is_kept() {
    // Room for about 40 KB: each garbage task makes ~16 KB it does not keep.
    let mut ev = Evaluator::new(MemStore::new(40_000), Fake);
    for round in 0..20u64 {
        // concat(big(2000), garbage(20), big(2000)): the first value must survive the garbage.
        let first = thunk_of(&mut ev, "big", &[n(2000), n(round)]);
        let junk = thunk_of(&mut ev, "garbage", &[n(20)]);
        let last = thunk_of(&mut ev, "big", &[n(2000), n(round + 1000)]);
        let root = thunk_of(&mut ev, "concat", &[first, junk, last]);
        let value = ev.eval(root).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(ev.store.get(&value).unwrap().len(), 2000 + 38 + 2000);
        let stats = ev.store.stats();
        assert!(stats.used <= stats.limit, "{stats:?}");
    }
    assert!(ev.store.stats().evictions > 100, "{:?}", ev.store.stats());
}

#[test]
fn the_memo_keeps_to_its_capacity_and_lets_go_of_what_it_pinned() {
    let ceilings = Ceilings { memo_entries: 10, ..Ceilings::default() };
    let mut ev = Evaluator::new(MemStore::new(1 << 24), Fake).with_ceilings(ceilings);
    let thunks: Vec<Handle> = (0..100).map(|i| thunk_of(&mut ev, "big", &[n(100), n(i)])).collect();
    for t in &thunks {
        ev.eval(*t).unwrap();
    }
    assert!(ev.memo().len() <= 10, "{}", ev.memo().len());
    assert!(ev.memo().evictions() >= 90);
    // Only the values the memo still remembers are pinned.
    assert!(ev.store.stats().pinned <= 10, "{:?}", ev.store.stats());
    // A forgotten thunk runs again and gets the same value.
    let again = ev.eval(thunks[0]).unwrap();
    assert_eq!(ev.store.get(&again).unwrap().len(), 100);
}

#[test]
fn a_store_full_of_memoized_values_makes_room_for_the_next_evaluation() {
    // Every value is remembered (and so pinned) until the store needs the room back.
    let per_value = 1000 + OBJECT_OVERHEAD;
    let mut ev = Evaluator::new(MemStore::new(30 * per_value), Fake);
    for i in 0..200u64 {
        let t = thunk_of(&mut ev, "big", &[n(1000), n(i)]);
        let value = ev.eval(t).unwrap_or_else(|e| panic!("evaluation {i}: {e}"));
        assert!(ev.store.contains(&value));
        let stats = ev.store.stats();
        assert!(stats.used <= stats.limit, "{stats:?}");
    }
    assert!(ev.memo().evictions() > 0 && ev.memo().len() < 200);
}

#[test]
fn every_pin_an_evaluation_takes_is_let_go() {
    let ceilings = Ceilings { depth: 3, ..Ceilings::default() };
    let mut ev = Evaluator::new(MemStore::new(1 << 24), Fake).with_ceilings(ceilings);
    let a = thunk_of(&mut ev, "big", &[n(3000), n(1)]);
    let b = thunk_of(&mut ev, "big", &[n(3000), n(2)]);
    let both = thunk_of(&mut ev, "concat", &[a, b]);
    let deeper = thunk_of(&mut ev, "concat", &[both, a]);
    let too_deep = thunk_of(&mut ev, "concat", &[deeper, b]);
    let nope = thunk_of(&mut ev, "nope", &[]);
    let failing = thunk_of(&mut ev, "concat", &[a, nope]);
    // Without the memo, nothing stays pinned once an evaluation ends, however it ends.
    assert!(ev.eval_fresh(deeper).is_ok());
    assert!(matches!(ev.eval_fresh(too_deep).unwrap_err().failure, Failure::NodeLimit(_)));
    assert!(ev.eval_fresh(failing).is_err());
    assert_eq!(ev.store.stats().pinned, 0);
    // With it, exactly the values it remembers.
    ev.eval(deeper).unwrap();
    let remembered: std::collections::BTreeSet<Handle> =
        ev.memo().iter().filter_map(|(_, o)| o.ok()).collect();
    let stored = remembered.iter().filter(|h| !h.is_literal()).count() as u64;
    assert_eq!(ev.store.stats().pinned, stored);
}
