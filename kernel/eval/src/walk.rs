//! One evaluation's walk (EVAL-1 .. EVAL-7) with an explicit work stack: deep dynamic graphs
//! (fib returning thunks) never recurse on the kernel stack, and a walk can stop at any
//! application and go on later. That is how a node evaluates several thunks at once
//! (docs/EVALUATION.md, "Several evaluations at once"): it steps each of its walks in turn, and
//! a walk whose next application runs elsewhere steps aside until its outcome is in.

use alloc::vec::Vec;

use cairn_object::store::Store;
use cairn_object::{Handle, Kind};

use crate::ahead::{self, Ahead};
use crate::error::EvalError;
use crate::eval::{Applied, Applying, Evaluator, Executor, Frame, Io, Pending, Start, Stats, release};
use crate::memo::Outcome;

/// An evaluation under way: made by [`Evaluator::begin`], moved along by [`Evaluator::step`]
/// until that returns its outcome, or let go with [`Evaluator::abandon`].
pub struct Walk {
    id: u64,
    root: Handle,
    use_memo: bool,
    /// Whether an application whose outcome is not in yet makes the walk step aside
    /// (`Executor::poll_ready`) rather than wait for it in `apply`.
    steps_aside: bool,
    phase: Phase,
    root_pinned: bool,
    stack: Vec<Frame>,
    pending: Pending,
    /// Applications made so far, against the step ceiling.
    steps: u64,
    /// The thunk as applied that the frame on top waits for, if it stepped aside.
    awaiting: Option<Handle>,
    ahead: Ahead,
    stats: Stats,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing done yet: the root is not even looked at.
    New,
    Walking,
    Over,
}

impl Walk {
    /// What the walk evaluates.
    pub fn root(&self) -> Handle {
        self.root
    }

    /// What this evaluation did so far: its own share of the evaluator's counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Whether the walk stepped aside for an application that runs elsewhere.
    pub fn is_waiting(&self) -> bool {
        self.awaiting.is_some()
    }

    pub(crate) fn into_parts(self) -> (Vec<Frame>, Ahead) {
        (self.stack, self.ahead)
    }
}

impl Stats {
    fn add_since(&mut self, now: &Stats, before: &Stats) {
        self.tasks_run += now.tasks_run - before.tasks_run;
        self.memo_hits += now.memo_hits - before.memo_hits;
        self.io_requests += now.io_requests - before.io_requests;
        self.started_ahead += now.started_ahead - before.started_ahead;
    }
}

impl<S: Store, E: Executor<S>> Evaluator<S, E> {
    /// Begins evaluating `root` (with the memo, or `fresh`: ignoring it), for a caller that
    /// evaluates several thunks at once: nothing is done until the first [`Evaluator::step`].
    /// The walk steps aside whenever its next application runs elsewhere and is not done.
    pub fn begin(&mut self, root: Handle, fresh: bool) -> Walk {
        self.begin_with(root, !fresh, true, Vec::new(), Ahead::new())
    }

    pub(crate) fn begin_with(
        &mut self,
        root: Handle,
        use_memo: bool,
        steps_aside: bool,
        stack: Vec<Frame>,
        ahead: Ahead,
    ) -> Walk {
        self.next_evaluation += 1;
        Walk {
            id: self.next_evaluation,
            root,
            use_memo,
            steps_aside,
            phase: Phase::New,
            root_pinned: false,
            stack,
            pending: None,
            steps: 0,
            awaiting: None,
            ahead,
            stats: Stats::default(),
        }
    }

    /// Moves `walk` along: until its outcome (returned; the walk is over), until it steps aside
    /// for an application that runs elsewhere, or until it has made `applications` more
    /// applications (then `None`, and the caller steps it again later). A walk only stops
    /// between applications, where nothing it holds is unpinned.
    pub fn step(&mut self, walk: &mut Walk, io: &mut dyn Io<S>, applications: u64) -> Option<Outcome> {
        let before = self.stats;
        let outcome = self.walk(walk, io, applications);
        let now = self.stats;
        walk.stats.add_since(&now, &before);
        if outcome.is_some() {
            self.finish(walk);
        }
        outcome
    }

    /// Lets go of an evaluation before its end (nobody waits for its outcome any more): its
    /// frames' pins, its root's, and whatever the executor started for it.
    pub fn abandon(&mut self, mut walk: Walk) {
        for frame in walk.stack.drain(..) {
            release(&mut self.store, &frame);
        }
        self.finish(&mut walk);
    }

    fn finish(&mut self, walk: &mut Walk) {
        if walk.phase != Phase::Walking {
            walk.phase = Phase::Over;
            return;
        }
        walk.phase = Phase::Over;
        walk.stack.clear();
        walk.awaiting = None;
        if walk.root_pinned {
            self.store.unpin(&walk.root);
        }
        self.executor.end_evaluation(walk.id);
    }

    fn walk(&mut self, walk: &mut Walk, io: &mut dyn Io<S>, applications: u64) -> Option<Outcome> {
        match walk.phase {
            Phase::Over => {
                return Some(Err(EvalError {
                    thunk: walk.root,
                    failure: crate::Failure::NodeFault("stepped a walk that was over".into()),
                }));
            }
            Phase::New => {
                // A root the memo answers needs nothing else (as `start` would answer it), not
                // even a pin: on a node every store call takes a lock.
                if walk.use_memo
                    && walk.root.kind() == Kind::Thunk
                    && let Some(outcome) = self.memo.get(&walk.root)
                {
                    self.stats.memo_hits += 1;
                    walk.phase = Phase::Over;
                    return Some(outcome);
                }
                walk.phase = Phase::Walking;
                self.executor.start_evaluation(walk.id);
                walk.ahead.begin();
                // What the evaluation was asked for stays while it runs, whatever the store
                // evicts.
                walk.root_pinned = self.store.pin(&walk.root);
                walk.stack.clear();
                match self.start(walk.root, walk.use_memo) {
                    Start::Done(outcome) => return Some(outcome),
                    Start::Frame(frame) => walk.stack.push(frame),
                }
                // Now that the root's arguments are pinned, room for the work ahead.
                self.relieve_pressure();
            }
            Phase::Walking => self.executor.resume_evaluation(walk.id),
        }
        let use_memo = walk.use_memo;
        let mut made = 0u64;
        loop {
            let stack = &mut walk.stack;
            let frame = stack.last_mut().expect("a frame is always pending here");
            match walk.pending.take() {
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
                        return Some(outcome);
                    }
                    walk.pending = Some((outcome, frame.tainted()));
                    continue;
                }
                None => {}
            }
            self.look_ahead(stack, &mut walk.ahead, use_memo);
            let frame = stack.last_mut().expect("non-empty");
            if frame.done.len() < frame.args.len() {
                let arg = frame.args[frame.done.len()];
                match self.start(arg, use_memo) {
                    Start::Done(outcome) => walk.pending = Some((outcome, false)),
                    Start::Frame(child) => match self.room_for_child(stack) {
                        Ok(()) => stack.push(child),
                        Err(failure) => {
                            release(&mut self.store, &child);
                            walk.pending = Some((Err(EvalError { thunk: arg, failure }), false));
                        }
                    },
                }
                continue;
            }

            // Every argument is a value: the frame is applied next. Here, with nothing on its
            // way to a frame, is where the walk may stop and go on later.
            if walk.awaiting.is_none() && made >= applications {
                return None;
            }
            made += 1;
            let applying = Applying {
                use_memo,
                steps: &mut walk.steps,
                awaiting: &mut walk.awaiting,
                may_step_aside: walk.steps_aside,
            };
            let outcome = match self.apply(frame, applying, io) {
                Applied::Waiting => return None,
                Applied::Tail(next) => match self.start(next, use_memo) {
                    Start::Frame(mut next_frame) => {
                        let frame = stack.last_mut().expect("non-empty");
                        let mut chain = core::mem::take(&mut frame.chain);
                        if chain.try_reserve(next_frame.chain.len()).is_err() {
                            release(&mut self.store, &next_frame);
                            frame.chain = chain;
                            let frame = stack.pop().expect("non-empty");
                            let outcome =
                                Err(EvalError { thunk: next, failure: crate::Failure::NodeOutOfMemory });
                            self.remember(&frame, &outcome, use_memo);
                            if stack.is_empty() {
                                return Some(outcome);
                            }
                            walk.pending = Some((outcome, frame.tainted()));
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
                return Some(outcome);
            }
            walk.pending = Some((outcome, frame.tainted()));
        }
    }

    /// For the frame on top (new, the root's, an argument's or a tail call's, or resumed), when
    /// other CPUs have room: starts what is ready among the arguments it has yet to evaluate.
    fn look_ahead(&mut self, stack: &mut [Frame], ahead: &mut Ahead, use_memo: bool) {
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
            tables_held: &self.lookahead_held,
        };
        let from = frame.ahead.max(frame.done.len());
        frame.ahead = ahead.look(&mut cx, &frame.args, from, depth);
    }
}
