//! Running ahead (docs/EVALUATION.md): an executor that takes what the walk offers ahead and
//! finishes it in a shuffled order must leave every outcome, memo entry and counter as they are
//! with nothing run ahead; and what is offered is pure, ready, offered once, and bounded.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use cairn_eval::{Application, Ceilings, Evaluator, Executor, Failure, Io, LOOKAHEAD_DECODES, NoIo, Stats};
use cairn_object::io::Effect;
use cairn_object::store::{MemStore, Store, StoreError, StoreStats};
use cairn_object::{Handle, Kind, Limits, Thunk, thunk};
use proptest::prelude::*;

mod common;
use common::{number, op, put_thunk, read, task};

/// `add` sums its arguments; `fail` and `timeout` fail (remembered, not remembered); `tail`
/// returns add(add(its arguments), 1), a thunk with a thunk argument; `loop` returns itself.
fn run(store: &mut dyn Store, app: &Application<'_>) -> Result<Handle, Failure> {
    let name = ["add", "fail", "timeout", "tail", "loop"]
        .into_iter()
        .find(|n| op(n) == app.procedure)
        .ok_or_else(|| Failure::InvalidThunk("unknown fake procedure".into()))?;
    match name {
        "add" => Ok(number(app.args.iter().map(read).fold(0, u64::wrapping_add))),
        "fail" => Err(Failure::TaskError(format!("boom {}", app.args.len()))),
        "timeout" => Err(Failure::Timeout),
        "tail" => {
            let inner = task(store, "add", app.args);
            Ok(task(store, "add", &[inner, number(1)]))
        }
        "loop" => Ok(app.thunk),
        _ => unreachable!(),
    }
}

/// An application taken ahead: what it is, and once finished, its outcome.
struct Started {
    limits: Limits,
    procedure: Handle,
    args: Vec<Handle>,
    outcome: Option<Result<Handle, Failure>>,
}

/// Takes what is offered ahead (up to `room` unapplied at once), checks every offer, and
/// finishes them in an order drawn from `seed`, whenever it is called; `apply` returns the
/// outcome of the run ahead.
struct Fake {
    room: usize,
    rng: u64,
    ceilings: Ceilings,
    started: BTreeMap<Handle, Started>,
    /// Offered in this evaluation (taken or not).
    offered: BTreeSet<Handle>,
    /// Every offer, and how many applications had been made when it came.
    offers: Vec<(Handle, usize)>,
    applies: usize,
    in_evaluation: bool,
    evaluations: u64,
}

impl Fake {
    fn new(room: usize, seed: u64, ceilings: Ceilings) -> Fake {
        Fake {
            room,
            rng: seed | 1,
            ceilings,
            started: BTreeMap::new(),
            offered: BTreeSet::new(),
            offers: Vec::new(),
            applies: 0,
            in_evaluation: false,
            evaluations: 0,
        }
    }

    fn next(&mut self) -> u64 {
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Finishes some of what runs ahead, in a random order, as other CPUs would.
    fn progress(&mut self, store: &mut MemStore) {
        let running: Vec<Handle> =
            self.started.iter().filter(|(_, s)| s.outcome.is_none()).map(|(h, _)| *h).collect();
        if running.is_empty() {
            return;
        }
        let count = self.next() as usize % (running.len() + 1);
        for _ in 0..count {
            let pick = running[self.next() as usize % running.len()];
            self.finish(store, pick);
        }
    }

    fn finish(&mut self, store: &mut MemStore, thunk: Handle) {
        let started = self.started.get_mut(&thunk).expect("started");
        if started.outcome.is_none() {
            let app = Application {
                thunk,
                limits: started.limits,
                procedure: started.procedure,
                args: &started.args,
            };
            started.outcome = Some(run(store, &app));
        }
    }
}

impl Executor<MemStore> for Fake {
    fn apply(&mut self, store: &mut MemStore, app: &Application<'_>) -> Result<Handle, Failure> {
        assert!(self.in_evaluation);
        self.applies += 1;
        self.progress(store);
        if self.started.contains_key(&app.thunk) {
            self.finish(store, app.thunk);
            let started = self.started.remove(&app.thunk).unwrap();
            assert_eq!(
                (started.limits, started.procedure, &started.args[..]),
                (app.limits, app.procedure, app.args)
            );
            return started.outcome.unwrap();
        }
        run(store, app)
    }

    fn start_evaluation(&mut self, _eval: u64) {
        assert!(!self.in_evaluation, "an evaluation began before the last one ended");
        assert!(self.started.is_empty());
        self.in_evaluation = true;
        self.evaluations += 1;
        self.offered.clear();
    }

    fn room_ahead(&self) -> usize {
        self.room.saturating_sub(self.started.len())
    }

    fn start_ahead(&mut self, store: &mut MemStore, app: &Application<'_>) -> bool {
        assert!(self.in_evaluation);
        assert!(self.room_ahead() > 0, "offered with no room");
        assert!(self.offered.insert(app.thunk), "{} offered twice in one evaluation", app.thunk);
        // Pure and ready, exactly the thunk as stored, within the ceilings.
        assert!(Effect::of(&app.procedure).is_none(), "IO offered ahead");
        assert!(app.args.iter().all(|a| a.kind() != Kind::Thunk), "offered with a thunk argument");
        let bytes = store.get(&app.thunk).expect("offered a thunk the store lacks");
        let t = Thunk::decode(&bytes).unwrap();
        assert_eq!((t.limits(), t.procedure()), (app.limits, app.procedure));
        assert!(t.args().eq(app.args.iter().copied()));
        assert!(app.limits.memory_bytes() <= self.ceilings.task_memory_bytes);
        assert!(app.args.len() as u64 <= self.ceilings.tree_entries);
        self.offers.push((app.thunk, self.applies));
        self.progress(store);
        let started =
            Started { limits: app.limits, procedure: app.procedure, args: app.args.to_vec(), outcome: None };
        self.started.insert(app.thunk, started);
        true
    }

    fn end_evaluation(&mut self, _eval: u64) {
        assert!(self.in_evaluation);
        self.in_evaluation = false;
        self.started.clear();
    }
}

/// Answers every IO request with a number that says how many came before it: a reordered or
/// repeated request shows.
struct Counter {
    served: Cell<u64>,
}

impl Io<MemStore> for Counter {
    fn perform(&mut self, _: &mut MemStore, _: Effect, app: &Application<'_>) -> Result<Handle, Failure> {
        self.served.set(self.served.get() + 1);
        Ok(number(self.served.get() * 1000 + read(&app.args[0])))
    }
}

fn http_get(store: &mut dyn Store, n: u64) -> Handle {
    put_thunk(store, cairn_object::io::limits(), Effect::HttpGet.procedure(), &[number(n)])
}

fn evaluator(room: usize, seed: u64, ceilings: Ceilings) -> Evaluator<MemStore, Fake> {
    Evaluator::new(MemStore::new(1 << 26), Fake::new(room, seed, ceilings)).with_ceilings(ceilings)
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Add,
    Fail,
    Timeout,
    Tail,
    Io,
    Loop,
}

#[derive(Clone, Debug)]
enum Arg {
    Value(u8),
    /// An earlier node (modulo how many there are).
    Node(usize),
    /// A thunk no store holds.
    Missing,
}

#[derive(Clone, Debug)]
struct Node {
    op: Op,
    args: Vec<Arg>,
    /// Asks for more memory than the node allows.
    greedy: bool,
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Eval,
    WithIo,
    Fresh,
    Replay,
}

fn node() -> impl Strategy<Value = Node> {
    let op = prop_oneof![
        8 => Just(Op::Add),
        1 => Just(Op::Fail),
        1 => Just(Op::Timeout),
        2 => Just(Op::Tail),
        1 => Just(Op::Io),
        1 => Just(Op::Loop),
    ];
    let arg = prop_oneof![
        6 => any::<u8>().prop_map(Arg::Value),
        8 => any::<usize>().prop_map(Arg::Node),
        1 => Just(Arg::Missing),
    ];
    let args =
        prop_oneof![3 => prop::collection::vec(arg.clone(), 0..5), 1 => prop::collection::vec(arg, 8..40)];
    (op, args, prop::bool::weighted(0.05)).prop_map(|(op, args, greedy)| Node { op, args, greedy })
}

fn ceilings() -> impl Strategy<Value = Ceilings> {
    (
        prop::sample::select(vec![4u64, 25, 100_000]),
        prop::sample::select(vec![2u64, 4, 10_000]),
        prop::sample::select(vec![2u64, 1000]),
        prop::sample::select(vec![10u64, 1000]),
        // No room for a look-ahead table, room for the first, and plenty.
        prop::sample::select(vec![0u64, 3000, 16 << 20]),
    )
        .prop_map(|(applications, depth, memo_entries, tree_entries, lookahead_bytes)| Ceilings {
            task_memory_bytes: 1 << 20,
            applications,
            depth,
            memo_entries,
            tree_entries,
            lookahead_bytes,
            ..Ceilings::default()
        })
}

/// Stores the graph; node i's handle is the i-th.
fn build(store: &mut MemStore, nodes: &[Node]) -> Vec<Handle> {
    let missing = task(&mut MemStore::new(1 << 20), "add", &[number(404)]);
    let mut handles: Vec<Handle> = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let args: Vec<Handle> = node
            .args
            .iter()
            .map(|arg| match arg {
                Arg::Value(v) => number(u64::from(*v)),
                Arg::Node(j) if i > 0 => handles[j % i],
                Arg::Node(j) => number(*j as u64),
                Arg::Missing => missing,
            })
            .collect();
        let limits = Limits::new(if node.greedy { 1 << 21 } else { 1 << 20 }).unwrap();
        let handle = match node.op {
            Op::Io => {
                put_thunk(store, cairn_object::io::limits(), Effect::HttpGet.procedure(), &[number(i as u64)])
            }
            Op::Add => put_thunk(store, limits, op("add"), &args),
            Op::Fail => put_thunk(store, limits, op("fail"), &args),
            Op::Timeout => put_thunk(store, limits, op("timeout"), &args),
            Op::Tail => put_thunk(store, limits, op("tail"), &args),
            Op::Loop => put_thunk(store, limits, op("loop"), &args),
        };
        handles.push(handle);
    }
    handles
}

/// What an evaluator observably did: every evaluation's outcome, its stats after each (less
/// what ran ahead), and the memo at the end.
fn observe(
    room: usize,
    seed: u64,
    c: Ceilings,
    nodes: &[Node],
    plan: &[(Mode, usize)],
) -> (Vec<String>, Stats) {
    let mut ev = evaluator(room, seed, c);
    let handles = build(&mut ev.store, nodes);
    let mut seen = Vec::new();
    let mut io = Counter { served: Cell::new(0) };
    for (mode, pick) in plan {
        let root = handles[pick % handles.len()];
        let outcome = match mode {
            Mode::Eval => format!("{:?}", ev.eval(root)),
            Mode::WithIo => format!("{:?}", ev.eval_with_io(root, &mut io)),
            Mode::Fresh => format!("{:?}", ev.eval_fresh(root)),
            Mode::Replay => format!("{:?}", ev.replay(root)),
        };
        assert!(!ev.executor.in_evaluation, "end_evaluation after {mode:?}");
        let stats = Stats { started_ahead: 0, ..ev.stats() };
        seen.push(format!("{mode:?} {root}: {outcome} {stats:?}"));
    }
    seen.extend(ev.memo().iter().map(|(thunk, outcome)| format!("memo {thunk}: {outcome:?}")));
    seen.push(format!("io served {}", io.served.get()));
    if room == 0 {
        assert!(ev.executor.offers.is_empty());
    }
    (seen, ev.stats())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn running_ahead_changes_no_outcome_memo_entry_or_counter(
        nodes in prop::collection::vec(node(), 1..30),
        plan in prop::collection::vec(
            (prop_oneof![Just(Mode::Eval), Just(Mode::WithIo), Just(Mode::Fresh), Just(Mode::Replay)], any::<usize>()),
            1..6,
        ),
        c in ceilings(),
        seed in any::<u64>(),
    ) {
        let (in_order, _) = observe(0, seed, c, &nodes, &plan);
        for room in [1, 3, 64] {
            let (ahead, stats) = observe(room, seed, c, &nodes, &plan);
            prop_assert_eq!(&ahead, &in_order, "room {}", room);
            prop_assert!(stats.started_ahead <= stats.tasks_run + (room as u64) * plan.len() as u64);
        }
    }
}

/// A root over `n` ready leaves.
fn wide(ev: &mut Evaluator<MemStore, Fake>, n: u64) -> (Handle, Vec<Handle>) {
    let leaves: Vec<Handle> = (0..n).map(|i| task(&mut ev.store, "add", &[number(i), number(1)])).collect();
    (task(&mut ev.store, "add", &leaves), leaves)
}

fn offered(ev: &Evaluator<MemStore, Fake>) -> Vec<Handle> {
    ev.executor.offers.iter().map(|(h, _)| *h).collect()
}

fn offered_before_any_apply(ev: &Evaluator<MemStore, Fake>) -> Vec<Handle> {
    ev.executor.offers.iter().filter(|(_, applies)| *applies == 0).map(|(h, _)| *h).collect()
}

#[test]
fn every_leaf_of_a_wide_graph_is_offered_before_the_first_application() {
    let mut ev = evaluator(1000, 7, Ceilings::default());
    let (root, leaves) = wide(&mut ev, 100);
    assert_eq!(read(&ev.eval(root).unwrap()), (0..100).sum::<u64>() + 100);
    assert_eq!(offered_before_any_apply(&ev), leaves, "in argument order");
    assert_eq!(offered(&ev), leaves);
    assert_eq!(ev.stats(), Stats { tasks_run: 101, memo_hits: 0, io_requests: 0, started_ahead: 100 });
}

#[test]
fn without_room_for_its_table_a_walk_offers_nothing_and_evaluates_all() {
    let mut ev = evaluator(1000, 7, Ceilings { lookahead_bytes: 0, ..Ceilings::default() });
    let (root, _) = wide(&mut ev, 100);
    assert_eq!(read(&ev.eval(root).unwrap()), (0..100).sum::<u64>() + 100);
    assert!(offered(&ev).is_empty());
    assert_eq!(ev.stats(), Stats { tasks_run: 101, memo_hits: 0, io_requests: 0, started_ahead: 0 });
}

#[test]
fn with_little_room_the_rest_is_offered_as_room_comes_back() {
    let mut ev = evaluator(3, 7, Ceilings::default());
    let (root, leaves) = wide(&mut ev, 100);
    ev.eval(root).unwrap();
    assert_eq!(offered_before_any_apply(&ev), leaves[..3]);
    assert_eq!(offered(&ev), leaves, "each leaf, as the ones before it are applied");
    assert_eq!(ev.stats().started_ahead, 100);
}

#[test]
fn a_reduce_over_maps_over_values_gets_the_maps_offered() {
    let mut ev = evaluator(64, 3, Ceilings::default());
    let maps: Vec<Handle> = (0..10).map(|i| task(&mut ev.store, "tail", &[number(i)])).collect();
    let reduce = task(&mut ev.store, "add", &maps);
    ev.eval(reduce).unwrap();
    assert_eq!(offered_before_any_apply(&ev), maps);
}

#[test]
fn a_map_over_a_split_gets_the_splits_leaves_offered() {
    // reduce(map(split_i)) where each split_i is add(leaf, leaf) over ready leaves.
    let mut ev = evaluator(64, 3, Ceilings::default());
    let mut leaves = Vec::new();
    let maps: Vec<Handle> = (0..5)
        .map(|i| {
            let (a, b) =
                (task(&mut ev.store, "add", &[number(i)]), task(&mut ev.store, "add", &[number(i + 100)]));
            leaves.extend([a, b]);
            let split = task(&mut ev.store, "add", &[a, b]);
            task(&mut ev.store, "tail", &[split])
        })
        .collect();
    let reduce = task(&mut ev.store, "add", &maps);
    ev.eval(reduce).unwrap();
    assert_eq!(offered_before_any_apply(&ev), leaves, "the leaves, two levels down");
}

#[test]
fn io_remembered_and_unreachable_thunks_are_not_offered_and_replays_ignore_the_memo() {
    let mut ev = evaluator(64, 5, Ceilings::default());
    let (root, leaves) = wide(&mut ev, 10);
    ev.eval(root).unwrap();
    // Remembered leaves are not offered again; a new one is, and IO never is.
    let fresh = task(&mut ev.store, "add", &[number(99)]);
    let get = http_get(&mut ev.store, 1);
    let mut args = leaves.clone();
    args.extend([fresh, get]);
    let second = task(&mut ev.store, "add", &args);
    ev.executor.offers.clear();
    ev.eval_with_io(second, &mut Counter { served: Cell::new(0) }).unwrap();
    assert_eq!(offered(&ev), [fresh]);
    // A replay evaluates everything again, so everything pure is offered again.
    ev.executor.offers.clear();
    assert!(matches!(ev.replay(root), cairn_eval::Replay::Identical(_)));
    assert_eq!(offered(&ev), leaves);
    // Nothing is offered below a remembered thunk: the walk never enters it.
    let above = task(&mut ev.store, "add", &[root, fresh]);
    ev.executor.offers.clear();
    ev.eval(above).unwrap();
    assert!(offered(&ev).is_empty(), "{:?}", offered(&ev));
    // Nor past the depth ceiling, where the walk stops.
    let mut ev = evaluator(64, 5, Ceilings { depth: 2, ..Ceilings::default() });
    let leaf = task(&mut ev.store, "add", &[number(1)]);
    let mid = task(&mut ev.store, "add", &[leaf]);
    let top = task(&mut ev.store, "add", &[mid]);
    assert!(matches!(ev.eval(top).unwrap_err().failure, Failure::NodeLimit(_)));
    assert!(offered(&ev).is_empty(), "{:?}", offered(&ev));
}

#[test]
fn a_tail_call_s_frame_looks_ahead_too() {
    let mut ev = evaluator(64, 5, Ceilings::default());
    let map = task(&mut ev.store, "tail", &[number(4), number(5)]);
    assert_eq!(read(&ev.eval(map).unwrap()), 10);
    // tail(4, 5) returned add(add(4, 5), 1): the inner add is offered when its frame is made.
    let inner = Thunk::decode(
        &thunk::encode(Limits::new(1 << 20).unwrap(), op("add"), &[number(4), number(5)]).unwrap(),
    )
    .unwrap()
    .handle();
    assert_eq!(offered(&ev), [inner]);
    assert_eq!(ev.stats().started_ahead, 1);
}

#[test]
fn an_executor_without_room_sees_no_offer_and_every_evaluation_ends() {
    let mut ev = evaluator(0, 1, Ceilings::default());
    let (root, _) = wide(&mut ev, 10);
    ev.eval(root).unwrap();
    assert_eq!(ev.eval(number(3)), Ok(number(3)), "a value: returns early");
    let missing = task(&mut MemStore::new(1 << 20), "add", &[]);
    assert!(ev.eval(missing).is_err());
    assert!(matches!(ev.replay(root), cairn_eval::Replay::Identical(_)));
    assert!(ev.executor.offers.is_empty());
    assert!(!ev.executor.in_evaluation);
    assert_eq!(ev.executor.evaluations, 4);
    assert_eq!(ev.stats().started_ahead, 0);
}

/// A memory store that counts the thunks read from it.
struct Counting {
    objects: MemStore,
    thunk_reads: Cell<usize>,
}

impl Store for Counting {
    fn put(&mut self, kind: Kind, bytes: Bytes) -> Result<Handle, StoreError> {
        self.objects.put(kind, bytes)
    }
    fn put_verified(&mut self, claimed: &Handle, bytes: Bytes) -> Result<(), StoreError> {
        self.objects.put_verified(claimed, bytes)
    }
    fn get(&self, handle: &Handle) -> Option<Bytes> {
        if handle.kind() == Kind::Thunk {
            self.thunk_reads.set(self.thunk_reads.get() + 1);
        }
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
}

/// Takes every offer and notes how many thunks had been read at the first application.
#[derive(Default)]
struct Greedy {
    reads_at_first_apply: Option<usize>,
    taken: usize,
}

impl Executor<Counting> for Greedy {
    fn apply(&mut self, store: &mut Counting, app: &Application<'_>) -> Result<Handle, Failure> {
        self.reads_at_first_apply.get_or_insert(store.thunk_reads.get());
        run(&mut store.objects, app)
    }
    fn room_ahead(&self) -> usize {
        usize::MAX
    }
    fn start_ahead(&mut self, _: &mut Counting, _: &Application<'_>) -> bool {
        self.taken += 1;
        true
    }
}

#[test]
fn a_look_ahead_decodes_at_most_its_cap_however_large_the_graph() {
    // root over 1000 chains a_i = add(b_i, 0, 0), b_i = add(c_i, 0), c_i = add(i): 3000 thunks.
    let store = Counting { objects: MemStore::new(1 << 26), thunk_reads: Cell::new(0) };
    let mut ev = Evaluator::new(store, Greedy::default());
    let chains: Vec<Handle> = (0..1000)
        .map(|i| {
            let c = task(&mut ev.store, "add", &[number(i)]);
            // Arguments that make each link, as applied, a thunk of its own (add(i) = add(add(i))
            // as applied would be one memo hit).
            let b = task(&mut ev.store, "add", &[c, number(0)]);
            task(&mut ev.store, "add", &[b, number(0), number(0)])
        })
        .collect();
    let root = task(&mut ev.store, "add", &chains);
    let value = ev.eval(root).unwrap();
    assert_eq!(read(&value), (0..1000).sum::<u64>());
    // Before the first application the walk made four frames (root, a_0, b_0, c_0), reading
    // each; each looked ahead once, at most the cap each.
    let reads = ev.executor.reads_at_first_apply.unwrap();
    assert!(reads <= 4 * (1 + LOOKAHEAD_DECODES), "{reads}");
    assert!(reads >= LOOKAHEAD_DECODES, "the root's look ahead used its cap: {reads}");
    // Yet, as the walk goes on, every leaf is offered once.
    assert_eq!(ev.executor.taken, 1000);
    assert_eq!(ev.stats().started_ahead, 1000);
    assert_eq!(ev.stats().tasks_run, 3001);
}

#[test]
fn a_wide_frame_of_remembered_thunks_is_not_rescanned_at_every_step() {
    let store = Counting { objects: MemStore::new(1 << 26), thunk_reads: Cell::new(0) };
    let mut ev = Evaluator::new(store, Greedy::default());
    let leaves: Vec<Handle> = (0..20_000).map(|i| task(&mut ev.store, "add", &[number(i)])).collect();
    let first = task(&mut ev.store, "add", &leaves);
    ev.eval(first).unwrap();
    assert_eq!(ev.executor.taken, 20_000);
    // Now all remembered: another root over them runs one task and reads no leaf.
    let again = task(&mut ev.store, "add", &[&leaves[..], &[number(1)]].concat());
    let before = ev.store.thunk_reads.get();
    ev.eval(again).unwrap();
    assert_eq!(ev.store.thunk_reads.get() - before, 1, "only the root");
    assert_eq!(ev.executor.taken, 20_000);
}

#[test]
fn no_io_refuses_what_is_never_offered() {
    // An IO request at the root of an evaluation that is not a job: refused, nothing offered.
    let mut ev = evaluator(64, 9, Ceilings::default());
    let get = http_get(&mut ev.store, 3);
    let root = task(&mut ev.store, "add", &[get]);
    assert!(matches!(ev.eval(root).unwrap_err().failure, Failure::MissingCapability(_)));
    assert!(ev.eval_with_io(root, &mut NoIo).is_err());
    assert!(offered(&ev).is_empty());
}
