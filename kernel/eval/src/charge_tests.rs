//! What walks charge to the evaluator's shared ceilings (frames, look-ahead tables): every
//! charge comes back, however a walk ends, and no ceiling changes what a walk evaluates.

extern crate std;

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use bytes::Bytes;
use cairn_object::store::{MemStore, Store};
use cairn_object::{Handle, Kind, Limits, thunk};
use proptest::prelude::*;

use super::*;
use crate::Walk;

/// One slot of a look-ahead table (ahead.rs `Offered`), and the smallest table.
const SLOT: u64 = 44;
const FIRST_TABLE: u64 = 64 * SLOT;

fn number(n: u64) -> Handle {
    Handle::blob(&n.to_le_bytes())
}

fn read(h: &Handle) -> u64 {
    u64::from_le_bytes(h.literal().expect("a number")[..8].try_into().unwrap())
}

fn op(name: &str) -> Handle {
    Handle::blob(format!("op:{name}").as_bytes())
}

fn task(store: &mut MemStore, name: &str, args: &[Handle]) -> Handle {
    let encoding = thunk::encode(Limits::new(1 << 20).unwrap(), op(name), args).unwrap();
    store.put(Kind::Thunk, Bytes::from(encoding)).unwrap()
}

/// Runs everything at `apply`; takes every offer (up to `room` at a time, counted per
/// evaluation) and records it, as an executor with other CPUs would.
#[derive(Default)]
struct Inline {
    room: usize,
    current: u64,
    offers: BTreeMap<u64, usize>,
}

impl Executor<MemStore> for Inline {
    fn apply(&mut self, _: &mut MemStore, app: &Application<'_>) -> Result<Handle, Failure> {
        if app.procedure == op("fail") {
            return Err(Failure::TaskError(format!("boom {}", app.args.len())));
        }
        Ok(number(app.args.iter().map(read).fold(0, u64::wrapping_add)))
    }
    fn start_evaluation(&mut self, eval: u64) {
        self.current = eval;
    }
    fn resume_evaluation(&mut self, eval: u64) {
        self.current = eval;
    }
    fn room_ahead(&self) -> usize {
        self.room
    }
    fn start_ahead(&mut self, _: &mut MemStore, _: &Application<'_>) -> bool {
        *self.offers.entry(self.current).or_default() += 1;
        true
    }
}

fn evaluator(room: usize, lookahead_bytes: u64) -> Evaluator<MemStore, Inline> {
    // Fresh walks over a shared graph apply it as a tree: a few thousand applications do.
    let ceilings = Ceilings { lookahead_bytes, applications: 3000, ..Ceilings::default() };
    Evaluator::new(MemStore::new(1 << 26), Inline { room, ..Inline::default() }).with_ceilings(ceilings)
}

/// add over `n` ready leaves add(first + i, 1): wide enough for a charged frame and many offers.
fn wide(ev: &mut Evaluator<MemStore, Inline>, first: u64, n: u64) -> Handle {
    let leaves: Vec<Handle> =
        (0..n).map(|i| task(&mut ev.store, "add", &[number(first + i), number(1)])).collect();
    task(&mut ev.store, "add", &leaves)
}

fn held<E>(ev: &Evaluator<MemStore, E>) -> (u64, u64) {
    (ev.frames_held.load(Ordering::Relaxed), ev.lookahead_held.load(Ordering::Relaxed))
}

#[test]
fn every_charge_comes_back_however_walks_end() {
    let mut ev = evaluator(1000, 16 << 20);
    for round in 0..5u64 {
        let roots: Vec<Handle> = (0..12).map(|i| wide(&mut ev, 1000 * (round * 12 + i), 100)).collect();
        let mut walks: Vec<Walk> = roots.iter().map(|root| ev.begin(*root, true)).collect();
        for (i, walk) in walks.iter_mut().enumerate() {
            // Some not stepped at all, some part way, some to the end.
            for _ in 0..i % 4 * 20 {
                if ev.step(walk, &mut NoIo, 1).is_some() {
                    break;
                }
            }
        }
        let (frames, tables) = held(&ev);
        assert!(frames > 0 && tables > 0, "walks under way hold charges: {frames} {tables}");
        let mut walks = walks.into_iter().enumerate();
        for (i, mut walk) in &mut walks {
            match i % 3 {
                0 => ev.abandon(walk),
                1 => drop(walk),
                _ => while ev.step(&mut walk, &mut NoIo, 7).is_none() {},
            }
        }
        assert_eq!(held(&ev), (0, 0), "round {round}");
    }
    assert!(ev.executor.offers.values().sum::<usize>() > 0);
}

#[test]
fn a_walk_past_the_ceiling_offers_again_once_another_walk_gives_its_table_back() {
    // Room for one first table: the first walk's.
    let mut ev = evaluator(1000, FIRST_TABLE);
    let (a, b) = (wide(&mut ev, 0, 100), wide(&mut ev, 1000, 100));
    let mut first = ev.begin(a, true);
    assert!(ev.step(&mut first, &mut NoIo, 1).is_none());
    let mut second = ev.begin(b, true);
    assert!(ev.step(&mut second, &mut NoIo, 1).is_none());
    assert_eq!(second.stats().started_ahead, 0, "no room for a second table");
    assert_eq!(held(&ev).1, FIRST_TABLE);
    ev.abandon(first);
    assert_eq!(held(&ev).1, 0);
    let outcome = loop {
        if let Some(outcome) = ev.step(&mut second, &mut NoIo, 1) {
            break outcome;
        }
    };
    assert_eq!(read(&outcome.unwrap()), (1000..1100).sum::<u64>() + 100);
    // Not "nothing more": the rest of its first table's worth, once the room came back.
    assert_eq!(second.stats().started_ahead, 32);
}

#[test]
fn an_evaluation_run_to_its_end_leaves_no_lookahead_charge() {
    // Room for one first table.
    let mut ev = evaluator(1000, FIRST_TABLE);
    let (a, b) = (wide(&mut ev, 0, 100), wide(&mut ev, 1000, 100));
    ev.eval(a).unwrap();
    assert_eq!(ev.executor.offers.values().sum::<usize>(), 32);
    // No walk is under way now, but the table `run` keeps in `spare` is still charged to the
    // ceiling of "all walks under way" (docs/EVALUATION.md, Bounds)...
    let after_eval = held(&ev).1;
    // ... so a walk begun now (an API EVAL on a node, after a job) has no room for its own.
    let mut walk = ev.begin(b, true);
    while ev.step(&mut walk, &mut NoIo, 1).is_none() {}
    assert_eq!((after_eval, walk.stats().started_ahead), (0, 32), "held after eval, offers after");
}

/// Whether it fails, whether it is a leaf (all its arguments values), and its arguments: values,
/// or earlier nodes (modulo how many there are).
type Node = (bool, bool, Vec<(bool, u8)>);

/// A graph: node i applies add or fail to values and earlier nodes (wide ones too).
fn graph(ev: &mut Evaluator<MemStore, Inline>, nodes: &[Node]) -> Vec<Handle> {
    let mut handles: Vec<Handle> = Vec::new();
    for (i, (fails, leaf, args)) in nodes.iter().enumerate() {
        let args: Vec<Handle> = args
            .iter()
            .map(|(earlier, n)| match (earlier, i) {
                (true, i) if i > 0 && !leaf => handles[usize::from(*n) % i],
                _ => number(u64::from(*n)),
            })
            .collect();
        let name = if *fails { "fail" } else { "add" };
        handles.push(task(&mut ev.store, name, &args));
    }
    handles
}

/// Each walk's outcome and stats (less what ran ahead) with walks interleaved as `plan` says,
/// and the memo after; checks the charges against the ceilings all along and that they all
/// come back.
fn observe(
    room: usize,
    lookahead_bytes: u64,
    nodes: &[Node],
    roots: &[(usize, bool)],
    plan: &[(usize, u64, bool)],
) -> Vec<String> {
    let mut ev = evaluator(room, lookahead_bytes);
    let handles = graph(&mut ev, nodes);
    let mut walks: Vec<Option<Walk>> =
        roots.iter().map(|(pick, fresh)| Some(ev.begin(handles[pick % handles.len()], *fresh))).collect();
    let mut seen = vec![String::from("abandoned"); walks.len()];
    let step = |ev: &mut Evaluator<MemStore, Inline>,
                walks: &mut [Option<Walk>],
                w: usize,
                n: u64,
                seen: &mut [String]| {
        let Some(walk) = walks[w].as_mut() else { return };
        if let Some(outcome) = ev.step(walk, &mut NoIo, n) {
            let stats = Stats { started_ahead: 0, ..walk.stats() };
            seen[w] = format!("{outcome:?} {stats:?}");
            walks[w] = None;
        }
        assert!(held(ev).1 <= lookahead_bytes, "{} past {lookahead_bytes}", held(ev).1);
    };
    for (w, n, abandon) in plan {
        let w = w % roots.len();
        if *abandon {
            if let Some(walk) = walks[w].take() {
                ev.abandon(walk);
            }
        } else {
            step(&mut ev, &mut walks, w, *n, &mut seen);
        }
    }
    for w in 0..roots.len() {
        for _ in 0..10_000 {
            step(&mut ev, &mut walks, w, 1000, &mut seen);
        }
    }
    assert_eq!(held(&ev), (0, 0), "every charge back");
    seen.extend(ev.memo().iter().map(|(thunk, outcome)| format!("memo {thunk}: {outcome:?}")));
    seen.push(format!("{:?}", Stats { started_ahead: 0, ..ev.stats() }));
    seen
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn no_lookahead_ceiling_changes_what_interleaved_walks_evaluate(
        nodes in prop::collection::vec(
            (
                prop::bool::weighted(0.05),
                prop::bool::weighted(0.6),
                prop::collection::vec((prop::bool::weighted(0.5), any::<u8>()), 0..60),
            ),
            1..60,
        ),
        roots in prop::collection::vec((any::<usize>(), any::<bool>()), 1..5),
        plan in prop::collection::vec((any::<usize>(), 1..5u64, prop::bool::weighted(0.05)), 0..40),
    ) {
        let in_order = observe(0, 0, &nodes, &roots, &plan);
        // None, one first table, one and a bit, two tables and a growth, plenty.
        for ceiling in [0, FIRST_TABLE, FIRST_TABLE + 100, 2 * FIRST_TABLE + 128 * SLOT, 16 << 20] {
            prop_assert_eq!(&observe(1000, ceiling, &nodes, &roots, &plan), &in_order, "ceiling {}", ceiling);
        }
    }
}
