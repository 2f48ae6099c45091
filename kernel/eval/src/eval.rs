//! EVAL-1 .. EVAL-7 with an explicit work stack: deep dynamic graphs (fib returning thunks) never
//! recurse on the kernel stack.

use alloc::string::ToString;
use alloc::vec::Vec;

use bytes::Bytes;
use cairn_object::io::Effect;
use cairn_object::store::Store;
use cairn_object::{Handle, Kind, Limits, Thunk, thunk};
use smallvec::SmallVec;

use crate::ahead::{self, Ahead};
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

    /// An evaluation begins: budgets that span all its applications start here.
    fn start_evaluation(&mut self) {}

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

    /// The evaluation is over: what was started ahead and never applied may be dropped.
    fn end_evaluation(&mut self) {}
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
        }
    }
}

pub struct Evaluator<S, E> {
    pub store: S,
    pub executor: E,
    memo: Memo,
    stats: Stats,
    ceilings: Ceilings,
    /// The work stack, kept between evaluations so that evaluating allocates nothing for it.
    stack: Vec<Frame>,
    ahead: Ahead,
}

/// Most thunks have a handful of arguments: keep them inline.
type Handles = SmallVec<[Handle; 4]>;

/// A thunk being evaluated: its arguments so far, and every thunk that will share its outcome
/// (the thunk as written, the tail calls it made, and each of those with arguments evaluated).
struct Frame {
    chain: Handles,
    /// `chain[clean_from..]` may be memoized. The outcome of the thunks before it depends on IO
    /// (an argument or a tail call performed some), so they are not functions of their names.
    clean_from: usize,
    current: Handle,
    limits: Limits,
    procedure: Handle,
    args: Handles,
    done: Handles,
    /// What this frame pinned in the store (its arguments, and their values as they come),
    /// exactly: an unpin of what it never pinned would take someone else's pin.
    pinned: Handles,
    /// `args[..ahead]` have been looked into for work to start ahead.
    ahead: usize,
}

impl Frame {
    /// Something this frame depends on came from IO: nothing in its chain so far is pure.
    fn taint(&mut self) {
        self.clean_from = self.chain.len();
    }

    fn tainted(&self) -> bool {
        self.clean_from > 0
    }
}

#[allow(clippy::large_enum_variant, reason = "a transient return value; boxing would allocate per thunk")]
enum Start {
    Done(Outcome),
    Frame(Frame),
}

/// An outcome on its way to the frame that asked for it, and whether it depends on IO.
type Pending = Option<(Outcome, bool)>;

impl<S: Store, E: Executor<S>> Evaluator<S, E> {
    pub fn new(store: S, executor: E) -> Self {
        Evaluator {
            store,
            executor,
            memo: Memo::bounded(&Ceilings::default()),
            stats: Stats::default(),
            ceilings: Ceilings::default(),
            stack: Vec::new(),
            ahead: Ahead::new(),
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

    fn run(&mut self, root: Handle, use_memo: bool, io: &mut dyn Io<S>) -> Outcome {
        // A root the memo answers needs nothing else (as `start` would answer it), not even a
        // pin: on a node every store call takes a lock.
        if use_memo
            && root.kind() == Kind::Thunk
            && let Some(outcome) = self.memo.get(&root)
        {
            self.stats.memo_hits += 1;
            return outcome;
        }
        self.executor.start_evaluation();
        self.ahead.begin();
        // What the evaluation was asked for stays while it runs, whatever the store evicts.
        let pinned = self.store.pin(&root);
        let mut stack = core::mem::take(&mut self.stack);
        stack.clear();
        let outcome = self.run_with(root, use_memo, io, &mut stack);
        self.stack = stack;
        if pinned {
            self.store.unpin(&root);
        }
        self.executor.end_evaluation();
        outcome
    }

    fn run_with(
        &mut self,
        root: Handle,
        use_memo: bool,
        io: &mut dyn Io<S>,
        stack: &mut Vec<Frame>,
    ) -> Outcome {
        let mut steps = 0u64;
        let mut pending: Pending = match self.start(root, use_memo) {
            Start::Done(outcome) => return outcome,
            Start::Frame(frame) => {
                stack.push(frame);
                None
            }
        };
        // Now that the root's arguments are pinned, room for the work ahead.
        self.relieve_pressure();
        loop {
            let frame = stack.last_mut().expect("a frame is always pending here");
            match pending.take() {
                Some((Ok(value), from_io)) => {
                    if from_io {
                        frame.taint();
                    }
                    // An argument's value stays until the frame is done with it, whatever
                    // the store evicts meanwhile.
                    if frame.pinned.try_reserve(1).is_ok() && self.store.pin(&value) {
                        frame.pinned.push(value);
                    }
                    frame.done.push(value)
                }
                // EVAL-7: a failed argument fails the thunk with the same error.
                Some((Err(error), from_io)) => {
                    let mut frame = stack.pop().expect("non-empty");
                    if from_io {
                        frame.taint();
                    }
                    let outcome = Err(error);
                    self.remember(&frame, &outcome, use_memo);
                    if stack.is_empty() {
                        return outcome;
                    }
                    pending = Some((outcome, frame.tainted()));
                    continue;
                }
                None => {}
            }
            self.look_ahead(stack, use_memo);
            let frame = stack.last_mut().expect("non-empty");
            if frame.done.len() < frame.args.len() {
                let arg = frame.args[frame.done.len()];
                match self.start(arg, use_memo) {
                    Start::Done(outcome) => pending = Some((outcome, false)),
                    Start::Frame(child) => match self.room_for_child(stack) {
                        Ok(()) => stack.push(child),
                        Err(failure) => {
                            release(&mut self.store, &child);
                            pending = Some((Err(EvalError { thunk: arg, failure }), false));
                        }
                    },
                }
                continue;
            }

            let outcome = match self.apply(frame, use_memo, &mut steps, io) {
                Applied::Tail(next) => match self.start(next, use_memo) {
                    Start::Frame(mut next_frame) => {
                        let frame = stack.last_mut().expect("non-empty");
                        let mut chain = core::mem::take(&mut frame.chain);
                        if chain.try_reserve(next_frame.chain.len()).is_err() {
                            release(&mut self.store, &next_frame);
                            frame.chain = chain;
                            let frame = stack.pop().expect("non-empty");
                            let outcome = Err(EvalError { thunk: next, failure: Failure::NodeOutOfMemory });
                            self.remember(&frame, &outcome, use_memo);
                            if stack.is_empty() {
                                return outcome;
                            }
                            pending = Some((outcome, frame.tainted()));
                            continue;
                        }
                        chain.extend(next_frame.chain.drain(..));
                        next_frame.chain = chain;
                        next_frame.clean_from = frame.clean_from;
                        release(&mut self.store, frame);
                        *frame = next_frame;
                        continue;
                    }
                    Start::Done(outcome) => outcome,
                },
                Applied::Done(outcome) => outcome,
            };
            let frame = stack.pop().expect("non-empty");
            self.remember(&frame, &outcome, use_memo);
            if stack.is_empty() {
                return outcome;
            }
            pending = Some((outcome, frame.tainted()));
        }
    }

    /// For the frame on top (new, the root's, an argument's or a tail call's, or resumed), when
    /// other CPUs have room: starts what is ready among the arguments it has yet to evaluate.
    fn look_ahead(&mut self, stack: &mut [Frame], use_memo: bool) {
        // How deep below the frame thunks may nest before the walk stops at the depth ceiling.
        let depth = usize::try_from(self.ceilings.depth).unwrap_or(usize::MAX).saturating_sub(stack.len());
        let Some(frame) = stack.last_mut() else { return };
        if frame.ahead >= frame.args.len() || self.executor.room_ahead() == 0 {
            return;
        }
        let mut cx = ahead::Context {
            store: &mut self.store,
            executor: &mut self.executor,
            memo: use_memo.then_some(&self.memo),
            ceilings: &self.ceilings,
            stats: &mut self.stats,
        };
        let from = frame.ahead.max(frame.done.len());
        frame.ahead = self.ahead.look(&mut cx, &frame.args, from, depth);
    }

    /// Whether one more thunk may wait on its arguments: the depth ceiling, and memory for it.
    fn room_for_child(&self, stack: &mut Vec<Frame>) -> Result<(), Failure> {
        if stack.len() as u64 >= self.ceilings.depth {
            return Err(Failure::NodeLimit(alloc::format!(
                "thunks nest deeper than the {} this node allows",
                self.ceilings.depth
            )));
        }
        stack.try_reserve(1).map_err(|_| Failure::NodeOutOfMemory)
    }

    /// EVAL-1 for values; otherwise a memo hit or a new frame for the thunk.
    fn start(&mut self, handle: Handle, use_memo: bool) -> Start {
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

    /// Applies a frame whose arguments are all values.
    fn apply(&mut self, frame: &mut Frame, use_memo: bool, steps: &mut u64, io: &mut dyn Io<S>) -> Applied {
        let current = frame.current;
        let fail = move |failure| Applied::Done(Err(EvalError { thunk: current, failure }));
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
                return Applied::Done(outcome);
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
        let app = Application {
            thunk: applied,
            limits: frame.limits,
            procedure: frame.procedure,
            args: &frame.done,
        };
        if let Some(effect) = effect {
            self.stats.io_requests += 1;
            return match io.perform(&mut self.store, effect, &app) {
                // The IO layer stores every response; one it did not is its bug (and IO is never
                // remembered either way).
                Ok(result) if !self.store.contains(&result) => fail(Failure::ForgedHandle(result)),
                Ok(result) => Applied::Done(Ok(result)),
                Err(failure) => fail(failure),
            };
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

    /// A frame is done: its arguments' values are let go, and its outcome remembered.
    fn remember(&mut self, frame: &Frame, outcome: &Outcome, use_memo: bool) {
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
    fn relieve_pressure(&mut self) {
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
fn release<S: Store>(store: &mut S, frame: &Frame) {
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

enum Applied {
    Done(Outcome),
    Tail(Handle),
}
