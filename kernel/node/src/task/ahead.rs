//! Applications started ahead on the other CPUs (docs/EVALUATION.md, "Running ahead";
//! docs/ARCHITECTURE.md, "CPUs").
//!
//! The evaluator offers pure applications whose arguments are all values before its walk
//! reaches them. Each becomes a [`Job`] in the node's run queue, which every CPU that runs
//! tasks takes work from (`arch::smp`'s `HelperWork`). When the walk reaches one, the boot
//! CPU takes its outcome, or runs it itself if no CPU has begun it, or, while it waits, runs
//! other queued jobs and serves the network. Outcomes are the same whichever CPU ran them: a
//! pure application's outcome is a function of its name, and the walk records everything in
//! its own order.
//!
//! Pins: a job pins its procedure and arguments while it waits and runs, then its result until
//! the boot CPU has taken it over (or let it go: an evaluation that ends without reaching a job
//! abandons it).

use alloc::collections::{BTreeMap, VecDeque};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use cairn_eval::{Application, Failure};
use cairn_object::store::Store;
use cairn_object::{Handle, Limits};
use spin::Mutex;

use super::{Runner, TaskCeilings, TaskStats};
use crate::arch::percpu::{self, MAX_CPUS};
use crate::arch::smp::{self, HelperWork};
use crate::memory::objects::NodeStore;

/// Jobs started and not yet taken, per CPU that runs tasks: enough that no CPU waits for the
/// walk to offer more, few enough that an evaluation cut short wastes little.
const STARTED_PER_CPU: usize = 2;

/// Jobs started (by every evaluation under way) and not yet taken or let go, node-wide.
static STARTED: AtomicUsize = AtomicUsize::new(0);
/// Jobs finished so far, on any CPU: the node's loop looks at it before halting.
static FINISHED: AtomicU64 = AtomicU64::new(0);

/// How many more jobs may be started ahead now, node-wide: enough that no CPU waits for a
/// walk to offer more, few enough that evaluations cut short waste little.
pub fn room() -> usize {
    let others = smp::task_cpus_other_than_boot();
    if others == 0 {
        return 0;
    }
    ((others + 1) * STARTED_PER_CPU).saturating_sub(STARTED.load(Ordering::Relaxed))
}

/// Jobs finished so far: what a waiting walk waits for may be among those finished since the
/// last look.
pub fn finished() -> u64 {
    FINISHED.load(Ordering::SeqCst)
}

/// What [`run_one_queued`] did.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    Ran,
    /// Jobs wait, but none for long enough (the oldest will have in `in_us`): another CPU may
    /// be about to take it.
    Young {
        in_us: u64,
    },
    None,
}

/// Runs the oldest queued job on the boot CPU with its `local` runner, if it has waited at
/// least `min_wait_us` (an idle CPU takes a job within microseconds; the boot CPU takes only
/// what no other CPU could, since while it runs a task it serves only reads, and no new EVAL
/// begins), unless the boot CPU runs no tasks.
pub fn run_one_queued(local: &mut Runner, min_wait_us: u64) -> Queued {
    let Some(queue) = queue().filter(|_| !others_only()) else { return Queued::None };
    let now = crate::arch::clock::micros_since_boot();
    let job = {
        let mut jobs = queue.jobs.lock();
        match jobs.front() {
            None => return Queued::None,
            Some(job) if now.saturating_sub(job.queued_at) < min_wait_us => {
                return Queued::Young { in_us: min_wait_us - now.saturating_sub(job.queued_at) };
            }
            Some(_) => jobs.pop_front(),
        }
    };
    match job {
        Some(job) => {
            job.run_on(local);
            Queued::Ran
        }
        None => Queued::None,
    }
}

/// One application started ahead.
pub struct Job {
    thunk: Handle,
    /// When it was queued (microseconds since boot).
    queued_at: u64,
    limits: Limits,
    procedure: Handle,
    args: Vec<Handle>,
    budget_us: u64,
    ceilings: TaskCeilings,
    store: NodeStore,
    done: AtomicBool,
    state: Mutex<State>,
}

enum State {
    Queued {
        pinned: Vec<Handle>,
    },
    Running {
        pinned: Vec<Handle>,
    },
    /// The outcome and the time it took; `pinned` is what the outcome holds (its result).
    Done {
        outcome: Result<Handle, Failure>,
        spent_us: u64,
        pinned: Vec<Handle>,
    },
    /// Let go before it ran, or taken: nothing is held any more.
    Over,
    /// The evaluation ended while it ran: whoever finishes it lets go of everything.
    Abandoned {
        pinned: Vec<Handle>,
    },
}

impl Job {
    pub fn budget_us(&self) -> u64 {
        self.budget_us
    }

    /// Runs the job on this CPU with `runner`, unless someone else has begun it.
    fn run_on(&self, runner: &mut Runner) {
        let pinned = {
            let mut state = self.state.lock();
            match core::mem::replace(&mut *state, State::Over) {
                State::Queued { pinned } => {
                    *state = State::Running { pinned: Vec::new() };
                    pinned
                }
                other => {
                    *state = other;
                    return;
                }
            }
        };
        let app = Application {
            thunk: self.thunk,
            limits: self.limits,
            procedure: self.procedure,
            args: &self.args,
        };
        let mut store = self.store.clone();
        let began_us = crate::arch::clock::micros_since_boot();
        let (outcome, spent_us, _) = runner.apply_once(&mut store, &app, self.ceilings, self.budget_us, true);
        crate::trace::record(cairn_proto::trace::Span {
            handle: Some(self.thunk),
            ok: outcome.is_ok(),
            ..crate::trace::since(cairn_proto::trace::SpanKind::Task, began_us)
        });
        if matches!(outcome, Err(Failure::NodeFault(_))) {
            // The boot CPU runs it again; this CPU starts its next task from nothing this left.
            runner.forget_warm();
        }
        percpu::current().count_task(spent_us);
        // Its inputs are let go once it has run; its result stays pinned until it is taken.
        unpin_all(&mut store, &pinned);
        let mut held = Vec::new();
        if let Ok(result) = &outcome {
            if held.try_reserve_exact(1).is_ok() {
                held.push(*result);
            } else {
                store.unpin(result);
            }
        }
        let mut state = self.state.lock();
        match core::mem::replace(&mut *state, State::Over) {
            State::Abandoned { pinned } => {
                unpin_all(&mut store, &pinned);
                unpin_all(&mut store, &held);
            }
            _ => *state = State::Done { outcome, spent_us, pinned: held },
        }
        // SeqCst, as the boot CPU's checks in `wait` and in the node's loop: either it sees the
        // job done, or this CPU sees it asleep and wakes it.
        self.done.store(true, Ordering::SeqCst);
        FINISHED.fetch_add(1, Ordering::SeqCst);
        smp::wake_boot_cpu();
    }
}

fn unpin_all(store: &mut NodeStore, handles: &[Handle]) {
    for handle in handles {
        store.unpin(handle);
    }
}

/// The node's run queue, offered to the other CPUs as work.
struct RunQueue {
    jobs: Mutex<VecDeque<Arc<Job>>>,
    /// Each CPU's runner, by CPU index (the boot CPU's is the executor's own).
    runners: [Mutex<Option<Runner>>; MAX_CPUS],
    /// What the other CPUs' tasks did, for STATS.
    stats: Mutex<TaskStats>,
}

impl RunQueue {
    fn pop(&self) -> Option<Arc<Job>> {
        self.jobs.lock().pop_front()
    }
}

impl HelperWork for RunQueue {
    fn run(&self) {
        let Some(job) = self.pop() else { return };
        let index = percpu::current().index;
        let mut slot = self.runners[index].lock();
        let runner = slot.get_or_insert_with(Runner::new);
        let before = runner.stats;
        job.run_on(runner);
        // What the task was lent or added is given back now, not when this CPU next runs one.
        runner.let_go();
        let after = runner.stats;
        drop(slot);
        let mut stats = self.stats.lock();
        stats.syscalls += after.syscalls - before.syscalls;
        stats.page_ins += after.page_ins - before.page_ins;
        stats.preemptions += after.preemptions - before.preemptions;
    }

    fn has_work(&self) -> bool {
        smp::runs_tasks_here() && !self.jobs.lock().is_empty()
    }
}

/// The run queue once the other CPUs have taken it. An offer they could not take (every slot
/// held, e.g. by uploads in progress) is made again next time: remembering the refusal would
/// leave the node without running ahead until it restarts.
static QUEUE: Mutex<Option<Arc<RunQueue>>> = Mutex::new(None);

/// The configuration's `boot_cpu_tasks`: whether the boot CPU runs tasks when others can.
static BOOT_CPU_TASKS: AtomicBool = AtomicBool::new(true);

pub fn set_boot_cpu_tasks(yes: bool) {
    BOOT_CPU_TASKS.store(yes, Ordering::Relaxed);
}

/// Whether every task must go to the other CPUs: they run tasks, and the configuration keeps
/// the boot CPU to evaluating and serving.
pub fn others_only() -> bool {
    !BOOT_CPU_TASKS.load(Ordering::Relaxed) && queue().is_some()
}

/// The run queue, offered to the other CPUs the first time it is needed; None if no other CPU
/// runs tasks (or they could not take it now).
fn queue() -> Option<Arc<RunQueue>> {
    let mut offered = QUEUE.lock();
    if offered.is_none() {
        if smp::task_cpus_other_than_boot() == 0 {
            return None;
        }
        let queue = Arc::new(RunQueue {
            jobs: Mutex::new(VecDeque::new()),
            runners: [const { Mutex::new(None) }; MAX_CPUS],
            stats: Mutex::new(TaskStats::default()),
        });
        if !smp::offer(queue.clone()) {
            return None;
        }
        *offered = Some(queue);
    }
    offered.clone()
}

/// What the other CPUs' tasks did so far.
pub fn other_cpus_stats() -> TaskStats {
    QUEUE.lock().as_ref().map(|q| *q.stats.lock()).unwrap_or_default()
}

/// The jobs one executor started for its evaluation, by thunk.
#[derive(Default)]
pub struct Started {
    jobs: BTreeMap<Handle, Arc<Job>>,
    /// Results of jobs taken, pinned until the evaluator has had them (the next call).
    taken: Vec<Handle>,
    store: Option<NodeStore>,
}

impl Started {
    /// Queues `app` for the other CPUs, whatever the [`room`] (the caller looked); false if it
    /// could not be (no other CPU runs tasks, no memory, or it is started already).
    pub fn start(
        &mut self,
        store: &mut NodeStore,
        app: &Application<'_>,
        ceilings: TaskCeilings,
        budget_us: u64,
    ) -> bool {
        let Some(queue) = queue() else { return false };
        if self.jobs.contains_key(&app.thunk) {
            return false;
        }
        let (mut args, mut pinned) = (Vec::new(), Vec::new());
        if args.try_reserve_exact(app.args.len()).is_err()
            || pinned.try_reserve_exact(app.args.len() + 1).is_err()
        {
            return false;
        }
        args.extend_from_slice(app.args);
        for handle in core::iter::once(&app.procedure).chain(app.args) {
            if store.pin(handle) {
                pinned.push(*handle);
            }
        }
        let job = Arc::new(Job {
            thunk: app.thunk,
            queued_at: crate::arch::clock::micros_since_boot(),
            limits: app.limits,
            procedure: app.procedure,
            args,
            budget_us,
            ceilings,
            store: store.clone(),
            done: AtomicBool::new(false),
            state: Mutex::new(State::Queued { pinned }),
        });
        self.store.get_or_insert_with(|| store.clone());
        self.jobs.insert(app.thunk, job.clone());
        STARTED.fetch_add(1, Ordering::Relaxed);
        queue.jobs.lock().push_back(job);
        smp::poke();
        true
    }

    /// The job started for `thunk`, if any; it is the caller's from now on.
    pub fn take(&mut self, thunk: &Handle) -> Option<Arc<Job>> {
        let job = self.jobs.remove(thunk)?;
        STARTED.fetch_sub(1, Ordering::Relaxed);
        Some(job)
    }

    /// Whether the job started for `thunk` is done; None if none was started.
    pub fn is_done(&self, thunk: &Handle) -> Option<bool> {
        self.jobs.get(thunk).map(|job| job.done.load(Ordering::Acquire))
    }

    /// The job's outcome: it runs here if no CPU has begun it; otherwise the boot CPU runs other
    /// queued jobs, serves the network, or halts until a job is done.
    pub fn wait(
        &mut self,
        job: Arc<Job>,
        store: &mut NodeStore,
        local: &mut Runner,
    ) -> (Result<Handle, Failure>, u64) {
        loop {
            if job.done.load(Ordering::Acquire) {
                let mut state = job.state.lock();
                if let State::Done { outcome, spent_us, pinned } =
                    core::mem::replace(&mut *state, State::Over)
                {
                    if self.taken.try_reserve(pinned.len()).is_ok() {
                        self.taken.extend(pinned);
                    } else {
                        unpin_all(store, &pinned);
                    }
                    return (outcome, spent_us);
                }
                return (Err(Failure::NodeFault("a task started ahead lost its outcome".into())), 0);
            }
            // Its own turn first (it may still be queued), then any other; none if the boot CPU
            // runs no tasks.
            let queued = queue().filter(|_| !others_only()).and_then(|q| {
                let mut jobs = q.jobs.lock();
                let at = jobs.iter().position(|j| Arc::ptr_eq(j, &job)).unwrap_or(0);
                jobs.remove(at)
            });
            if let Some(next) = queued {
                next.run_on(local);
                continue;
            }
            crate::net::busy::serve(store);
            // A moment's look before halting: the job may be about to end.
            let until = crate::arch::clock::micros_since_boot() + smp::SPIN_BEFORE_HALT_US;
            while !job.done.load(Ordering::Acquire) && crate::arch::clock::micros_since_boot() < until {
                core::hint::spin_loop();
            }
            x86_64::instructions::interrupts::disable();
            smp::boot_cpu_sleeping();
            if job.done.load(Ordering::SeqCst) {
                smp::boot_cpu_awake();
                x86_64::instructions::interrupts::enable();
                continue;
            }
            // The CPU that finishes it sends the wake-up; the timer tick bounds the wait anyway.
            x86_64::instructions::interrupts::enable_and_hlt();
            smp::boot_cpu_awake();
        }
    }

    /// Lets go of a job the evaluation will not take after all.
    pub fn abandon(&mut self, job: Arc<Job>, store: &mut NodeStore) {
        let mut state = job.state.lock();
        match core::mem::replace(&mut *state, State::Over) {
            State::Queued { pinned } | State::Done { pinned, .. } => unpin_all(store, &pinned),
            State::Running { pinned } => *state = State::Abandoned { pinned },
            State::Over | State::Abandoned { .. } => {}
        }
        drop(state);
        if let Some(queue) = queue() {
            queue.jobs.lock().retain(|j| !Arc::ptr_eq(j, &job));
        }
    }

    /// Keeps the pin on `result` (of a task the boot CPU ran itself) until the evaluator has had
    /// it, as for the results of jobs taken.
    pub fn hold(&mut self, store: &mut NodeStore, result: Handle) {
        if self.taken.try_reserve(1).is_ok() {
            self.taken.push(result);
            self.store.get_or_insert_with(|| store.clone());
        } else {
            store.unpin(&result);
        }
    }

    /// The results taken last time are the evaluator's now.
    pub fn release_taken(&mut self, store: &mut NodeStore) {
        unpin_all(store, &self.taken);
        self.taken.clear();
    }

    /// The evaluation is over: every job it did not take is let go.
    pub fn end(&mut self) {
        if self.jobs.is_empty() && self.taken.is_empty() {
            return;
        }
        let Some(mut store) = self.store.clone() else { return };
        self.release_taken(&mut store);
        while let Some((_, job)) = self.jobs.pop_first() {
            STARTED.fetch_sub(1, Ordering::Relaxed);
            self.abandon(job, &mut store);
        }
    }
}
