//! EVALs under way (docs/EVALUATION.md, "Several evaluations at once"; docs/ARCHITECTURE.md,
//! "CPUs"). The node's loop begins a walk for each EVAL it takes, up to [`UNDER_WAY`] at once,
//! and steps each in turn. A walk whose next task is started on another CPU steps aside until
//! that task is done, so the tasks of several EVALs run at once, one per CPU. Between steps
//! the loop serves the API in full, so new EVALs come in while others run. Other queued work
//! (jobs with IO, GC, FETCH, ...) waits until no EVAL is under way: it may need the evaluator
//! or the store to itself.

use alloc::format;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use cairn_eval::{NoIo, Walk};
use cairn_proto::Message;

use super::api::{Api, Queued};
use crate::arch::clock;
use crate::jobs::NodeEvaluator;

/// EVALs under way at once, node-wide; more wait in their connections' queues.
pub const UNDER_WAY: usize = 16;
/// How long a walk goes on at one step (at least one application) before the node serves the
/// network and steps the others: a long graph on one CPU, where tasks run inline, must not keep
/// new EVALs (or the others) waiting for its end.
const SLICE_US: u64 = 1000;

/// The most EVALs ever under way at once, and those let go because their client left: STATS.
static MOST_AT_ONCE: AtomicUsize = AtomicUsize::new(0);
static LET_GO: AtomicU64 = AtomicU64::new(0);

/// `evaluations_most_at_once` and `evaluations_let_go`, for STATS.
pub fn stats() -> (usize, u64) {
    (MOST_AT_ONCE.load(Ordering::Relaxed), LET_GO.load(Ordering::Relaxed))
}

/// Who asked for an evaluation.
pub enum Origin {
    /// An EVAL from a client (on the cluster API if `on_cluster`).
    Api { queued: Queued, on_cluster: bool },
    /// A task of the job this node coordinates (`net::coordinate`), numbered.
    Coordinator { job: u64 },
}

struct Evaluating {
    walk: Walk,
    origin: Origin,
    began_us: u64,
}

/// An evaluation's answer, for whoever asked.
pub struct Finished {
    pub origin: Origin,
    pub answer: Message,
}

#[derive(Default)]
pub struct Evaluations {
    under_way: Vec<Evaluating>,
    /// The walk the next [`Evaluations::step`] looks at first.
    next: usize,
}

impl Evaluations {
    pub fn is_empty(&self) -> bool {
        self.under_way.is_empty()
    }

    /// Whether another EVAL may begin now.
    pub fn has_room(&self) -> bool {
        self.under_way.len() < UNDER_WAY
    }

    /// Begins the evaluation of `handle` (`fresh`: ignoring the memo) that `origin` asks for;
    /// with no memory to keep it, its answer (an error) is returned at once.
    pub fn begin(
        &mut self,
        ev: &mut NodeEvaluator,
        (handle, fresh): (cairn_object::Handle, bool),
        origin: Origin,
    ) -> Option<Finished> {
        if self.under_way.try_reserve(1).is_err() {
            let answer = Message::Error {
                code: cairn_proto::ErrorCode::Internal,
                message: "the node has no memory for another evaluation now".into(),
            };
            return Some(Finished { origin, answer });
        }
        let walk = ev.begin(handle, fresh);
        self.under_way.push(Evaluating { walk, origin, began_us: clock::micros_since_boot() });
        MOST_AT_ONCE.fetch_max(self.under_way.len(), Ordering::Relaxed);
        None
    }

    /// Lets go of the EVALs whose client has gone: nobody would get their answers, and their
    /// tasks would only keep CPUs from the others.
    /// `coordinating` is the job this node coordinates now, if any.
    pub fn let_go_unwanted(
        &mut self,
        ev: &mut NodeEvaluator,
        api: &Api,
        cluster_api: Option<&Api>,
        coordinating: Option<u64>,
    ) {
        let mut at = 0;
        while at < self.under_way.len() {
            let e = &self.under_way[at];
            let wanted = match (&e.origin, cluster_api) {
                (Origin::Api { queued, on_cluster: false }, _) => api.wanted(queued),
                (Origin::Api { queued, on_cluster: true }, Some(cluster_api)) => cluster_api.wanted(queued),
                (Origin::Api { on_cluster: true, .. }, None) => false,
                (Origin::Coordinator { job }, _) => coordinating == Some(*job),
            };
            if wanted {
                at += 1;
            } else {
                ev.abandon(self.under_way.remove(at).walk);
                // The walk after it keeps its turn.
                if at < self.next {
                    self.next -= 1;
                }
                LET_GO.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Steps the walks in turn, from where the last call stopped, until one moves (runs
    /// applications for up to [`SLICE_US`], or ends): the loop serves the network after each
    /// walk that moved, so that on one CPU, where every task runs inline, nobody waits for a
    /// round of all the walks. Returns the answer of a walk that ended, if one did, and whether any walk moved (then
    /// the loop comes back at once, rather than wait).
    pub fn step(&mut self, ev: &mut NodeEvaluator) -> (Option<Finished>, bool) {
        for _ in 0..self.under_way.len() {
            if self.next >= self.under_way.len() {
                self.next = 0;
            }
            let e = &mut self.under_way[self.next];
            let since = clock::micros_since_boot();
            let mut moved = false;
            let outcome = loop {
                let before = e.walk.stats().tasks_run;
                if let Some(outcome) = ev.step(&mut e.walk, &mut NoIo, 1) {
                    break Some(outcome);
                }
                let progressed = !e.walk.is_waiting() || e.walk.stats().tasks_run != before;
                moved |= progressed;
                if !progressed
                    || e.walk.is_waiting()
                    || clock::micros_since_boot().saturating_sub(since) >= SLICE_US
                {
                    break None;
                }
            };
            let Some(outcome) = outcome else {
                self.next += 1;
                if moved {
                    return (None, true);
                }
                continue;
            };
            let e = self.under_way.remove(self.next);
            let stats = e.walk.stats();
            crate::trace::record(cairn_proto::trace::Span {
                handle: Some(e.walk.root()),
                ok: outcome.is_ok(),
                count: stats.tasks_run,
                bytes: stats.memo_hits,
                ..crate::trace::since(cairn_proto::trace::SpanKind::Eval, e.began_us)
            });
            let answer = match outcome {
                Ok(result) => Message::Evaluated {
                    result,
                    tasks_run: stats.tasks_run,
                    memo_hits: stats.memo_hits,
                    micros: clock::micros_since_boot() - e.began_us,
                },
                Err(e) => Message::EvalFailed { thunk: e.thunk, failure: format!("{}", e.failure) },
            };
            return (Some(Finished { origin: e.origin, answer }), true);
        }
        (None, false)
    }
}
