//! The evaluator: its state (store, memo, ceilings), and how a thunk starts and an application is
//! made (EVAL-1 .. EVAL-7). The walk over a graph is in `walk`.

use alloc::string::ToString;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::AtomicU64;

use bytes::Bytes;
use cairn_object::io::Effect;
use cairn_object::store::Store;
use cairn_object::{Handle, Kind, Limits, Thunk, thunk};
use smallvec::SmallVec;

use crate::ahead::Ahead;
use crate::charge::Charge;
use crate::error::{EvalError, Failure};
use crate::memo::{Memo, Outcome};

/// One application, with every argument already a value (EVAL-2).
#[derive(Clone, Debug)]
pub struct Application<'a> {
    /// The thunk as applied: its arguments evaluated.
    pub thunk: Handle,
    pub limits: Limits,
    pub procedure: Handle,
    pub args: &'a [Handle],
}

/// Runs procedures. Objects the task creates go into `store`; the handle it returns must be
/// there too (or be one of its inputs).
pub trait Executor<S: Store> {
    fn apply(&mut self, store: &mut S, app: &Application<'_>) -> Result<Handle, Failure>;

    /// Evaluation `eval` begins: budgets that span all its applications start here. Several
    /// evaluations may be under way at once ([`Walk`]); each call below is for the evaluation
    /// last begun or resumed.
    fn start_evaluation(&mut self, _eval: u64) {}

    /// Evaluation `eval`, begun earlier, goes on: what follows is its work.
    fn resume_evaluation(&mut self, _eval: u64) {}

    /// For an evaluation that may wait ([`Evaluator::step`]): whether `apply(app)` would return
    /// without waiting. An executor that runs applications elsewhere starts `app` now if it has
    /// not yet, and says false until its outcome is in; the walk then steps aside and asks again
    /// later. The default runs everything at `apply`.
    fn poll_ready(&mut self, _store: &mut S, _app: &Application<'_>) -> bool {
        true
    }

    /// How many more applications `start_ahead` would take now; 0 (the default) means
    /// everything runs in order at `apply`, as on one CPU.
    fn room_ahead(&self) -> usize {
        0
    }

    /// Starts `app` elsewhere (another CPU) before the evaluation reaches it. If taken (true),
    /// a later `apply` of an application with the same `thunk` must return the outcome of that
    /// run; the executor keeps it until then or until `end_evaluation`. Only pure applications
    /// (procedure not an IO effect) whose arguments are all values, within the node's
    /// ceilings, are offered.
    fn start_ahead(&mut self, _store: &mut S, _app: &Application<'_>) -> bool {
        false
    }

    /// Evaluation `eval` is over: what was started for it and never applied may be dropped.
    fn end_evaluation(&mut self, _eval: u64) {}
}

/// Performs IO requests (applications of an [`Effect`] procedure) for one job (docs/IO.md):
/// the job's capabilities and journal live behind this. Its results are never memoized.
pub trait Io<S: Store> {
    fn perform(&mut self, store: &mut S, effect: Effect, app: &Application<'_>) -> Result<Handle, Failure>;
}

/// The IO of an evaluation that is not a job: every request is refused.
pub struct NoIo;

impl<S: Store> Io<S> for NoIo {
    fn perform(&mut self, _: &mut S, effect: Effect, _: &Application<'_>) -> Result<Handle, Failure> {
        Err(Failure::MissingCapability(alloc::format!(
            "{effect}: IO is performed only for a job that declares it (cairn submit)"
        )))
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Applications that ran a task.
    pub tasks_run: u64,
    /// Outcomes taken from the memo instead of running anything.
    pub memo_hits: u64,
    /// IO requests handed to the job's IO layer.
    pub io_requests: u64,
    /// Applications offered to the executor ahead of the walk, and taken (docs/EVALUATION.md,
    /// "Running ahead"); each is still counted in `tasks_run` when the walk applies it.
    pub started_ahead: u64,
}

/// What [`Evaluator::replay`] found (EVAL-6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replay {
    /// Nothing is remembered for this thunk.
    NotRecorded,
    Identical(Outcome),
    Differs {
        recorded: Outcome,
        replayed: Outcome,
    },
    /// The replay hit a failure of the node (timeout, ...): no verdict either way.
    Inconclusive(EvalError),
}

/// What one evaluation may use on this node (docs/SECURITY.md), whatever its thunks ask for.
/// Going past one fails with `node limit` or `step limit`, never remembered: another node, or
/// this one configured otherwise, may allow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ceilings {
    /// The largest memory limit a thunk may declare.
    pub task_memory_bytes: u64,
    /// Applications (tasks run and IO requests) in one evaluation.
    pub applications: u64,
    /// Thunks waiting on their arguments at once (how deep thunks nest inside arguments).
    pub depth: u64,
    /// Entries the memo keeps; past that, the least recently used go.
    pub memo_entries: u64,
    /// Bytes the memo's remembered errors may take; past that, the least recently used go.
    pub memo_error_bytes: u64,
    /// Arguments one thunk may have (its encoding, and the one applied, are built in memory).
    pub tree_entries: u64,
    /// Heap the frames of all evaluations under way may take together (a frame's lists of
    /// arguments, values and pins): several EVALs over wide thunks must not take the heap the
    /// rest of the node needs.
    pub frame_bytes: u64,
    /// Heap the look-ahead tables of all evaluations under way may take together (what each
    /// offered, so that it offers nothing twice). Past it, a walk offers nothing more; it still
    /// evaluates everything, in order.
    pub lookahead_bytes: u64,
}

impl Default for Ceilings {
    fn default() -> Self {
        Ceilings {
            task_memory_bytes: 256 << 20,
            applications: 100_000,
            depth: 10_000,
            memo_entries: 250_000,
            memo_error_bytes: 16 << 20,
            tree_entries: 1 << 18,
            frame_bytes: 64 << 20,
            lookahead_bytes: 16 << 20,
        }
    }
}

pub struct Evaluator<S, E> {
    pub store: S,
    pub executor: E,
    pub(crate) memo: Memo,
    pub(crate) stats: Stats,
    pub(crate) ceilings: Ceilings,
    /// The work stack and look-ahead memory of evaluations that run to the end at once, kept
    /// between them so that evaluating allocates nothing for them.
    pub(crate) spare: Option<(Vec<Frame>, Ahead)>,
    /// The identity of the next evaluation begun (for the executor).
    pub(crate) next_evaluation: u64,
    /// Heap the frames of every evaluation under way take (`Ceilings::frame_bytes`).
    frames_held: Arc<AtomicU64>,
    /// Heap the look-ahead tables of every evaluation take (`Ceilings::lookahead_bytes`).
    pub(crate) lookahead_held: Arc<AtomicU64>,
}

/// Most thunks have a handful of arguments: keep them inline.
type Handles = SmallVec<[Handle; 4]>;

/// A thunk being evaluated: its arguments so far, and every thunk that will share its outcome
/// (the thunk as written, the tail calls it made, and each of those with arguments evaluated).
pub(crate) struct Frame {
    pub(crate) chain: Handles,
    /// `chain[clean_from..]` may be memoized. The outcome of the thunks before it depends on IO
    /// (an argument or a tail call performed some), so they are not functions of their names.
    pub(crate) clean_from: usize,
    pub(crate) current: Handle,
    pub(crate) limits: Limits,
    pub(crate) procedure: Handle,
    pub(crate) args: Handles,
    pub(crate) done: Handles,
    /// What this frame pinned in the store (its arguments, and their values as they come),
    /// exactly: an unpin of what it never pinned would take someone else's pin.
    pub(crate) pinned: Handles,
    /// `args[..ahead]` have been looked into for work to start ahead.
    pub(crate) ahead: usize,
    _charge: Charge,
}

/// What a frame's lists take of the heap, charged against the ceiling of all frames: three
/// lists of handles (arguments, values, pins), inline up to four (no heap, no charge).
fn frame_charge(held: &Arc<AtomicU64>, args: usize, ceiling: u64) -> Result<Charge, u64> {
    if args <= 4 {
        return Ok(Charge::none());
    }
    Charge::take(held, (3 * args * Handle::LEN) as u64, ceiling)
}

impl Frame {
    /// Something this frame depends on came from IO: nothing in its chain so far is pure.
    pub(crate) fn taint(&mut self) {
        self.clean_from = self.chain.len();
    }

    pub(crate) fn tainted(&self) -> bool {
        self.clean_from > 0
    }
}

#[allow(clippy::large_enum_variant, reason = "a transient return value; boxing would allocate per thunk")]
pub(crate) enum Start {
    Done(Outcome),
    Frame(Frame),
}

/// An outcome on its way to the frame that asked for it, and whether it depends on IO.
pub(crate) type Pending = Option<(Outcome, bool)>;

impl<S: Store, E: Executor<S>> Evaluator<S, E> {
    pub fn new(store: S, executor: E) -> Self {
        Evaluator {
            store,
            executor,
            memo: Memo::bounded(&Ceilings::default()),
            stats: Stats::default(),
            ceilings: Ceilings::default(),
            spare: None,
            next_evaluation: 0,
            frames_held: Arc::new(AtomicU64::new(0)),
            lookahead_held: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn with_step_limit(mut self, limit: u64) -> Self {
        self.ceilings.applications = limit;
        self
    }

    pub fn with_ceilings(mut self, ceilings: Ceilings) -> Self {
        self.ceilings = ceilings;
        self.memo.set_capacity(usize::try_from(ceilings.memo_entries).unwrap_or(usize::MAX));
        self.memo.set_error_limit(usize::try_from(ceilings.memo_error_bytes).unwrap_or(usize::MAX));
        self
    }

    pub fn ceilings(&self) -> Ceilings {
        self.ceilings
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    pub fn memo(&self) -> &Memo {
        &self.memo
    }

    /// Evaluates `handle` to a value, using and filling the memo. IO requests are refused.
    pub fn eval(&mut self, handle: Handle) -> Outcome {
        self.run(handle, true, &mut NoIo)
    }

    /// Evaluates `handle` with `io` performing its IO requests (a job, docs/IO.md). Pure work
    /// uses and fills the memo as in [`Evaluator::eval`]; whatever depends on IO does not.
    pub fn eval_with_io(&mut self, handle: Handle, io: &mut dyn Io<S>) -> Outcome {
        self.run(handle, true, io)
    }

    /// Evaluates `handle` without reading or writing the memo (EVAL-6's "ignoring the memo").
    pub fn eval_fresh(&mut self, handle: Handle) -> Outcome {
        self.run(handle, false, &mut NoIo)
    }

    /// The outcome remembered for `thunk`: in the memo, or else in the store's own memo (a
    /// node's disk keeps values across restarts), if the value is still there.
    pub fn recorded(&self, thunk: &Handle) -> Option<Outcome> {
        if let Some(outcome) = self.memo.get(thunk) {
            return Some(outcome);
        }
        let value = self.store.recall_memo(thunk)?;
        self.store.contains(&value).then_some(Ok(value))
    }

    pub fn replay(&mut self, thunk: Handle) -> Replay {
        let Some(recorded) = self.recorded(&thunk) else {
            return Replay::NotRecorded;
        };
        match self.run(thunk, false, &mut NoIo) {
            Err(e) if !e.failure.is_deterministic() => Replay::Inconclusive(e),
            replayed if replayed == recorded => Replay::Identical(recorded),
            replayed => Replay::Differs { recorded, replayed },
        }
    }

    /// Runs an evaluation to its end here and now: the executor's `apply` may wait, and the
    /// walk never steps aside.
    fn run(&mut self, root: Handle, use_memo: bool, io: &mut dyn Io<S>) -> Outcome {
        // A root the memo answers needs no walk at all (as its first step would answer it).
        if use_memo
            && root.kind() == Kind::Thunk
            && let Some(outcome) = self.memo.get(&root)
        {
            self.stats.memo_hits += 1;
            return outcome;
        }
        let (stack, mut ahead) = self.spare.take().unwrap_or_else(|| (Vec::new(), Ahead::new()));
        ahead.unpark(&self.lookahead_held, self.ceilings.lookahead_bytes);
        let mut walk = self.begin_with(root, use_memo, false, stack, ahead);
        let outcome = loop {
            if let Some(outcome) = self.step(&mut walk, io, u64::MAX) {
                break outcome;
            }
        };
        let (stack, mut ahead) = walk.into_parts();
        // Kept for the next evaluation, but not charged: only walks under way are.
        ahead.park();
        self.spare = Some((stack, ahead));
        outcome
    }

    /// Whether one more thunk may wait on its arguments: the depth ceiling, and memory for it.
    pub(crate) fn room_for_child(&self, stack: &mut Vec<Frame>) -> Result<(), Failure> {
        if stack.len() as u64 >= self.ceilings.depth {
            return Err(Failure::NodeLimit(alloc::format!(
                "thunks nest deeper than the {} this node allows",
                self.ceilings.depth
            )));
        }
        stack.try_reserve(1).map_err(|_| Failure::NodeOutOfMemory)
    }

    /// EVAL-1 for values; otherwise a memo hit or a new frame for the thunk.
    pub(crate) fn start(&mut self, handle: Handle, use_memo: bool) -> Start {
        if handle.kind() != Kind::Thunk {
            return Start::Done(Ok(handle));
        }
        if use_memo && let Some(outcome) = self.recorded(&handle) {
            self.stats.memo_hits += 1;
            return Start::Done(outcome);
        }
        let fail = |failure| Start::Done(Err(EvalError { thunk: handle, failure }));
        let Some(bytes) = self.store.get(&handle) else {
            return fail(Failure::MissingObject(handle));
        };
        match Thunk::decode(&bytes) {
            Ok(t) if t.limits().memory_bytes() > self.ceilings.task_memory_bytes => {
                fail(Failure::NodeLimit(alloc::format!(
                    "the thunk asks for {} bytes of memory; this node allows at most {} per task",
                    t.limits().memory_bytes(),
                    self.ceilings.task_memory_bytes
                )))
            }
            Ok(t) if t.args().len() as u64 > self.ceilings.tree_entries => {
                fail(Failure::NodeLimit(alloc::format!(
                    "the thunk has {} arguments; this node allows at most {}",
                    t.args().len(),
                    self.ceilings.tree_entries
                )))
            }
            Ok(t) => {
                // What the frame's lists take of the heap, charged against the ceiling of all
                // frames (of every evaluation under way) before anything is allocated.
                let charge = match frame_charge(&self.frames_held, t.args().len(), self.ceilings.frame_bytes)
                {
                    Ok(charge) => charge,
                    Err(held) => {
                        return fail(Failure::NodeLimit(alloc::format!(
                            "a frame of {} arguments does not fit beside the {held} bytes the frames of the evaluations under way hold; this node allows {} bytes of frames",
                            t.args().len(),
                            self.ceilings.frame_bytes
                        )));
                    }
                };
                // As many arguments as the thunk's encoding holds: allocate for them fallibly.
                let (mut args, mut done) = (Handles::new(), Handles::new());
                if args.try_reserve_exact(t.args().len()).is_err()
                    || done.try_reserve_exact(t.args().len()).is_err()
                {
                    return fail(Failure::NodeOutOfMemory);
                }
                args.extend(t.args());
                // The arguments stay (until the frame is done) for when they are evaluated:
                // other work may need the store's room meanwhile.
                let mut pinned = Handles::new();
                if pinned.try_reserve_exact(args.len()).is_err() {
                    return fail(Failure::NodeOutOfMemory);
                }
                pinned.extend(args.iter().copied().filter(|arg| self.store.pin(arg)));
                Start::Frame(Frame {
                    chain: smallvec::smallvec![handle],
                    clean_from: 0,
                    current: handle,
                    limits: t.limits(),
                    procedure: t.procedure(),
                    args,
                    done,
                    pinned,
                    ahead: 0,
                    _charge: charge,
                })
            }
            Err(e) => {
                let outcome = Err(EvalError { thunk: handle, failure: Failure::InvalidThunk(e.to_string()) });
                if use_memo {
                    self.memo.record(handle, &outcome, &mut |_, _| {});
                }
                Start::Done(outcome)
            }
        }
    }

    /// Applies a frame whose arguments are all values. `awaiting` is the thunk as applied if
    /// this frame stepped aside for it before (everything up to the executor is done then). A
    /// walk that may step aside does so (returns `Waiting`, with `awaiting` set) rather than
    /// have the executor wait.
    pub(crate) fn apply(&mut self, frame: &mut Frame, walk: Applying<'_>, io: &mut dyn Io<S>) -> Applied {
        let current = frame.current;
        let fail = move |failure| Applied::Done(Err(EvalError { thunk: current, failure }));
        let applied = match walk.awaiting.take() {
            Some(applied) => applied,
            None => match self.prepare(frame, walk.use_memo, walk.steps, io) {
                Ok(applied) => applied,
                Err(done) => return done,
            },
        };
        let app = Application {
            thunk: applied,
            limits: frame.limits,
            procedure: frame.procedure,
            args: &frame.done,
        };
        if walk.may_step_aside && !self.executor.poll_ready(&mut self.store, &app) {
            *walk.awaiting = Some(applied);
            return Applied::Waiting;
        }
        self.stats.tasks_run += 1;
        self.relieve_pressure();
        match self.executor.apply(&mut self.store, &app) {
            // The executor enforces EVAL-3 (it knows what the task may name). A result the store
            // lacks is then one this node does not hold (an entry of a tree it opened, say):
            // missing, not remembered, rather than a failure another node would not have.
            Ok(result) if !self.store.contains(&result) => fail(Failure::MissingObject(result)),
            Ok(result) if result.kind() == Kind::Thunk => Applied::Tail(result),
            Ok(result) => Applied::Done(Ok(result)),
            Err(failure) => fail(failure),
        }
    }

    /// Everything of an application before a task runs: the thunk as applied (stored), a memo
    /// hit, the step ceiling, and IO, which is performed here. `Ok` is the thunk a task must run.
    fn prepare(
        &mut self,
        frame: &mut Frame,
        use_memo: bool,
        steps: &mut u64,
        io: &mut dyn Io<S>,
    ) -> Result<Handle, Applied> {
        let current = frame.current;
        let fail = move |failure| Err(Applied::Done(Err(EvalError { thunk: current, failure })));
        // With no thunk among the arguments, the thunk as applied is the thunk as written.
        let applied = if frame.done == frame.args {
            frame.current
        } else {
            let encoding = match thunk::encode(frame.limits, frame.procedure, &frame.done) {
                Ok(encoding) => encoding,
                Err(problem) => return fail(Failure::InvalidThunk(problem.to_string())),
            };
            match self.store.put(Kind::Thunk, Bytes::from(encoding)) {
                Ok(handle) => handle,
                Err(_) => return fail(Failure::NodeOutOfMemory),
            }
        };
        if applied != frame.current {
            if frame.chain.try_reserve(1).is_err() {
                return fail(Failure::NodeOutOfMemory);
            }
            frame.chain.push(applied);
            if use_memo && let Some(outcome) = self.memo.get(&applied) {
                self.stats.memo_hits += 1;
                return Err(Applied::Done(outcome));
            }
        }
        *steps += 1;
        if *steps > self.ceilings.applications {
            return fail(Failure::StepLimit { limit: self.ceilings.applications });
        }
        let effect = Effect::of(&frame.procedure);
        if effect.is_some() {
            // An IO request is never memoized, and neither is anything waiting on it.
            frame.taint();
        }
        let Some(effect) = effect else { return Ok(applied) };
        self.stats.io_requests += 1;
        let app = Application {
            thunk: applied,
            limits: frame.limits,
            procedure: frame.procedure,
            args: &frame.done,
        };
        match io.perform(&mut self.store, effect, &app) {
            // The IO layer stores every response; one it did not is its bug (and IO is never
            // remembered either way).
            Ok(result) if !self.store.contains(&result) => fail(Failure::ForgedHandle(result)),
            Ok(result) => Err(Applied::Done(Ok(result))),
            Err(failure) => fail(failure),
        }
    }

    /// A frame is done: its arguments' values are let go, and its outcome remembered.
    pub(crate) fn remember(&mut self, frame: &Frame, outcome: &Outcome, use_memo: bool) {
        release(&mut self.store, frame);
        if use_memo {
            let store = &mut self.store;
            let chain = &frame.chain[frame.clean_from.min(frame.chain.len())..];
            self.memo.record_all(chain, outcome, &mut |value, pin| pin_in(store, value, pin));
            if let Ok(value) = outcome {
                for thunk in chain {
                    self.store.keep_memo(thunk, value);
                }
            }
        }
    }

    /// With the store nearly full, makes room before more work starts.
    pub(crate) fn relieve_pressure(&mut self) {
        let stats = self.store.stats();
        if stats.used.saturating_mul(100) > stats.limit.saturating_mul(HIGH_WATER_PERCENT) {
            // Gently: what is not needed yet but was just stored (a thunk's arguments before
            // its frame pins them) must not go for room nobody has asked for.
            self.free_up(stats.limit / 100 * (100 - HIGH_WATER_PERCENT + 5), false);
        }
    }

    /// Makes `bytes` free in the store if it can: objects nothing pins go first, least
    /// recently used first; then memo entries, least recently used first, which lets go of the
    /// values they pinned. For whoever is about to store something (an upload, say).
    pub fn make_room(&mut self, bytes: u64) -> bool {
        self.free_up(bytes, true)
    }

    /// Objects read since the last sweep (what was just uploaded, say) are spared while old
    /// memo entries can still go; then, if `thorough`, everything unpinned is fair game.
    fn free_up(&mut self, bytes: u64, thorough: bool) -> bool {
        while !self.store.reclaim(bytes, true) {
            let store = &mut self.store;
            if self.memo.evict(MEMO_EVICT_BATCH, &mut |value, pin| pin_in(store, value, pin)) == 0 {
                return thorough && self.store.reclaim(bytes, false);
            }
        }
        true
    }
}

/// Past this share of its limit, the store is relieved before more work starts.
const HIGH_WATER_PERCENT: u64 = 85;
/// Memo entries let go at a time when the store needs room.
const MEMO_EVICT_BATCH: usize = 256;

/// Lets go of what a frame pinned: its arguments, and the values they gave.
pub(crate) fn release<S: Store>(store: &mut S, frame: &Frame) {
    for handle in &frame.pinned {
        store.unpin(handle);
    }
}

fn pin_in<S: Store>(store: &mut S, value: Handle, pin: bool) {
    if pin {
        store.pin(&value);
    } else {
        store.unpin(&value);
    }
}

/// What `apply` needs of the walk it works for.
pub(crate) struct Applying<'a> {
    pub use_memo: bool,
    /// Applications made so far, against the step ceiling.
    pub steps: &'a mut u64,
    pub awaiting: &'a mut Option<Handle>,
    pub may_step_aside: bool,
}

pub(crate) enum Applied {
    Done(Outcome),
    Tail(Handle),
    /// The executor runs it elsewhere and its outcome is not in yet (`Executor::poll_ready`).
    Waiting,
}

#[cfg(test)]
#[path = "charge_tests.rs"]
mod charge_tests;
