//! Runs a thunk's procedure as a ring-3 task: the kernel side of docs/EVALUATION.md's executor.
//!
//! Each application gets a fresh address space (or the last one of the same procedure, reset)
//! with the ELF's file pages, the argument handles, and zero pages, heap and stack paged in on
//! first touch against the thunk's memory limit. The task runs until it exits, fails, faults,
//! or spends its time budget; timer ticks preempt it so that a looping task never holds the
//! node. What any task may use is capped by the node's ceilings (docs/SECURITY.md).

pub mod ahead;
pub mod builtin;
mod cpuid;
mod image;
mod run;
mod simd;
mod syscall;

use alloc::format;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use cairn_abi::ARGS_HEADER;
use cairn_abi::layout::STACK_TOP;
use cairn_eval::{Application, Executor, Failure};
use cairn_object::Handle;

use crate::arch::clock;
use crate::memory::FRAME_SIZE;
use crate::memory::aspace::{AddressSpace, Perm};
use crate::memory::objects::NodeStore;
use run::Task;
use simd::Simd;

/// A task that meets an NMI or a machine check runs again from the start this many times
/// before its evaluation fails with `node fault`: the fault was the machine's, not the task's.
const NODE_FAULT_RETRIES: u32 = 2;

/// Tasks running now on any CPU, and the most that ever ran at once (STATS
/// `tasks_most_at_once`).
static RUNNING: AtomicUsize = AtomicUsize::new(0);
static MOST_RUNNING: AtomicUsize = AtomicUsize::new(0);

pub fn most_at_once() -> usize {
    MOST_RUNNING.load(Ordering::Relaxed)
}

#[derive(Clone, Copy, Debug, Default)]
pub struct TaskStats {
    pub syscalls: u64,
    pub page_ins: u64,
    pub preemptions: u64,
    /// Tasks run again after a hardware event (NMI, machine check) interrupted them.
    pub node_fault_retries: u64,
}

/// What one task may use on this node, from its ceilings (docs/SECURITY.md). The memory
/// ceiling is the evaluator's: a thunk asking for more never reaches the executor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskCeilings {
    /// Time one task may run, counting the kernel's work for it.
    pub time_us: u64,
    /// Time all the tasks of one evaluation may run together.
    pub eval_time_us: u64,
    /// Bytes one task may create as objects.
    pub create_bytes: u64,
    /// Objects one task may create.
    pub objects: u64,
    /// Handles one task may name beyond its arguments.
    pub handles: u64,
    /// Entries of one tree or thunk a task creates.
    pub tree_entries: u64,
}

impl TaskCeilings {
    pub fn from_config(c: &cairn_bootcfg::Ceilings) -> TaskCeilings {
        TaskCeilings {
            time_us: c.task_time_us(),
            eval_time_us: c.eval_time_us(),
            create_bytes: c.task_create_bytes(),
            objects: c.task_objects,
            handles: c.task_handles,
            tree_entries: c.tree_entries,
        }
    }
}

/// The evaluator's executor, on the boot CPU: it runs applications there, or takes the outcome
/// of those it started on the other CPUs (`ahead`), and keeps the budgets that span an
/// evaluation, for each of the evaluations under way (docs/EVALUATION.md, "Several evaluations
/// at once").
pub struct TaskExecutor {
    pub ceilings: TaskCeilings,
    /// The boot CPU's own images and address space.
    local: Runner,
    /// The evaluations under way, and which of them the evaluator works for now.
    evaluations: Vec<Evaluation>,
    current: usize,
    /// For an evaluation begun when no memory was left to note it (and for calls outside any).
    scratch: Evaluation,
    /// Whether applications may be started ahead on the other CPUs (`cairn bench` turns it off
    /// to measure one CPU beside many in the same boot).
    pub run_ahead: bool,
}

/// What one evaluation under way has started, and spent.
#[derive(Default)]
struct Evaluation {
    id: u64,
    /// Time its tasks have spent so far.
    spent_us: u64,
    started: ahead::Started,
}

/// What one CPU keeps between the tasks it runs: images, the last address space, SIMD state.
/// Each CPU has its own, so an address space is only ever used, and its TLB entries only ever
/// cached, on the CPU that made it.
pub struct Runner {
    pub stats: TaskStats,
    images: image::ImageCache,
    simd: Simd,
    /// The address space of the last task, kept to be reset and reused when the same procedure
    /// runs next: no page tables to build or free, no address-space switch.
    warm: Option<Warm>,
}

struct Warm {
    procedure: Handle,
    space: AddressSpace,
    args_pages: u64,
    /// Bytes of the argument pages the last task's arguments filled (the rest is zero).
    args_bytes: u64,
    /// Pages the last task added (heap, stack, zero pages of the image, opened objects), to
    /// unmap at reset.
    added: Vec<u64>,
    /// Objects whose pages the space still lends until reset.
    lent: Vec<Bytes>,
}

impl TaskExecutor {
    pub fn new(ceilings: TaskCeilings) -> TaskExecutor {
        TaskExecutor {
            ceilings,
            local: Runner::new(),
            evaluations: Vec::new(),
            current: usize::MAX,
            scratch: Evaluation::default(),
            run_ahead: true,
        }
    }

    /// The evaluation the evaluator works for now, and the boot CPU's runner.
    fn parts(&mut self) -> (&mut Evaluation, &mut Runner) {
        let evaluation = match self.evaluations.get_mut(self.current) {
            Some(evaluation) => evaluation,
            None => &mut self.scratch,
        };
        (evaluation, &mut self.local)
    }

    fn evaluation(&mut self) -> &mut Evaluation {
        self.parts().0
    }

    /// What the evaluation under way has left of its time, and the budget of its next task.
    fn budgets(&mut self) -> (u64, u64) {
        let ceilings = self.ceilings;
        let eval_left = ceilings.eval_time_us.saturating_sub(self.evaluation().spent_us);
        (eval_left, ceilings.time_us.min(eval_left))
    }

    /// Runs a task queued for the other CPUs on this one if it has waited `min_wait_us` and the
    /// boot CPU runs tasks: what the node's loop does when every evaluation waits.
    pub fn run_a_queued_task(&mut self, min_wait_us: u64) -> ahead::Queued {
        ahead::run_one_queued(&mut self.local, min_wait_us)
    }

    /// What the node's tasks did so far, on every CPU.
    pub fn stats(&self) -> TaskStats {
        self.local.stats.plus(&ahead::other_cpus_stats())
    }

    fn eval_time_failure(&self) -> Failure {
        Failure::NodeLimit(format!(
            "the evaluation's tasks ran past the {} s this node allows one evaluation",
            self.ceilings.eval_time_us / 1_000_000
        ))
    }
}

impl TaskStats {
    fn plus(&self, other: &TaskStats) -> TaskStats {
        TaskStats {
            syscalls: self.syscalls + other.syscalls,
            page_ins: self.page_ins + other.page_ins,
            preemptions: self.preemptions + other.preemptions,
            node_fault_retries: self.node_fault_retries + other.node_fault_retries,
        }
    }
}

impl Default for Runner {
    fn default() -> Self {
        Runner::new()
    }
}

impl Runner {
    pub fn new() -> Runner {
        Runner {
            stats: TaskStats::default(),
            images: image::ImageCache::default(),
            simd: Simd::new(),
            warm: None,
        }
    }

    /// The next task starts in a fresh address space.
    pub fn forget_warm(&mut self) {
        self.warm = None;
    }

    /// Gives back now what the last task's space holds until the next task resets it: the pages
    /// it added, and the store's objects lent to it, which the store stops counting once it
    /// evicts them. The space itself stays warm for the next task of the same procedure (its
    /// reset then has nothing of these left to undo). The other CPUs call it after every job:
    /// otherwise each of them kept the large objects its last task opened alive, outside the
    /// store's accounting, for as long as it ran nothing else (one CPU's worth was always
    /// allowed for; four CPUs' worth left a full node without the heap GC needs).
    pub fn let_go(&mut self) {
        let Some(warm) = self.warm.as_mut() else { return };
        let mut unmapped = true;
        for page in warm.added.drain(..) {
            unmapped &= warm.space.unmap(page).is_ok();
        }
        if !unmapped {
            // As a reset that finds the space not as expected: start the next one fresh.
            self.warm = None;
            return;
        }
        warm.lent.clear();
        warm.lent.shrink_to_fit();
    }

    /// Runs the application once on this CPU; returns its outcome and the time spent on it.
    /// A result is pinned in the store before the objects the task made are let go: the caller
    /// lets go of that pin once the evaluator has had the result (tasks on the other CPUs evict
    /// meanwhile). With `pin_result`, a result that cannot be pinned is a missing object (its
    /// outcome waits for the boot CPU to take it: nothing may evict it meanwhile); without, it is
    /// returned unpinned, as the evaluator then finds it.
    fn apply_once(
        &mut self,
        store: &mut NodeStore,
        app: &Application<'_>,
        ceilings: TaskCeilings,
        budget_us: u64,
        pin_result: bool,
    ) -> (Result<Handle, Failure>, u64, bool) {
        use cairn_object::store::Store;
        // The budget counts from here: loading an image (a large ELF, again and again if two
        // procedures take turns) is work done for the task.
        let started = clock::micros_since_boot();
        let since = |now: u64| now.saturating_sub(started);
        // The image, the arguments and the top stack page must fit the limit before any of
        // them is loaded or mapped: a header may claim far more than the file holds.
        let limit = app.limits.memory_bytes();
        let args_bytes = (ARGS_HEADER + app.args.len() * Handle::LEN) as u64;
        let fixed_pages = |image_pages: u64| image_pages + args_bytes.div_ceil(FRAME_SIZE) + 1;
        let limit_pages = limit / FRAME_SIZE;
        let image = match self.images.get(store, &app.procedure, |pages| fixed_pages(pages) <= limit_pages) {
            Ok(image) => image,
            Err(Failure::OutOfMemory { .. }) => return (Err(Failure::OutOfMemory { limit }), 0, false),
            Err(failure) => return (Err(failure), since(clock::micros_since_boot()), false),
        };
        if fixed_pages(image.pages) > limit_pages {
            return (Err(Failure::OutOfMemory { limit }), 0, false);
        }
        // A warm space borrows its image's read-only frames: it is reused only for the very
        // procedure just fetched from the cache (the cache never evicts the image it returns),
        // and dropped otherwise, before any of them could be freed and handed out again.
        let reused = match self.warm.take() {
            Some(warm) if warm.procedure == app.procedure => reset(warm, image),
            _ => None,
        };
        let fresh = reused.is_none();
        let (space, args_pages, args_used) = match reused {
            Some(reused) => reused,
            None => match fresh_space(image) {
                Ok(space) => (space, 0, 0),
                Err(failure) => return (Err(failure), 0, false),
            },
        };
        let mut task = match Task::new(space, args_pages, args_used, image, app, ceilings, budget_us, started)
        {
            Ok(task) => task,
            Err(failure) => return (Err(failure), 0, false),
        };
        if fresh {
            task.space.activate();
        }
        let running = RUNNING.fetch_add(1, Ordering::Relaxed) + 1;
        // (A read first: the read-modify-write is rarely needed, and under emulation costly.)
        if running > MOST_RUNNING.load(Ordering::Relaxed) {
            MOST_RUNNING.fetch_max(running, Ordering::Relaxed);
        }
        let outcome = task.run(store, image, &mut self.stats, &mut self.simd);
        RUNNING.fetch_sub(1, Ordering::Relaxed);
        task.settle_waits();
        let spent = task.budget.spent(clock::micros_since_boot());
        // The result's pin: a task's own object keeps the pin CREATE took (no store call); an
        // argument of a task on this CPU is pinned by the evaluator's frame already; anything
        // else is pinned now.
        let own = match &outcome {
            Ok(result) => {
                task.created.iter().position(|h| h == result).map(|at| task.created.swap_remove(at))
            }
            Err(_) => None,
        };
        let pinned = own.is_some()
            || matches!(&outcome, Ok(result)
                if (pin_result || !app.args.contains(result)) && store.pin(result));
        let outcome = match outcome {
            Ok(result) if pin_result && !pinned => Err(Failure::MissingObject(result)),
            outcome => outcome,
        };
        // The evaluator takes over the result (it pins what it keeps) before the store is
        // touched again.
        for handle in task.created.drain(..) {
            store.unpin(&handle);
        }
        self.warm = Some(Warm {
            procedure: app.procedure,
            space: task.space,
            args_pages: task.args_pages,
            args_bytes,
            added: task.added,
            lent: task.lent,
        });
        (outcome, spent, pinned)
    }
}

impl Executor<NodeStore> for TaskExecutor {
    fn start_evaluation(&mut self, eval: u64) {
        // Without memory to note it, it shares the scratch evaluation (budgets then count for
        // both) rather than fail here.
        if self.evaluations.try_reserve(1).is_ok() {
            self.evaluations.push(Evaluation { id: eval, ..Evaluation::default() });
            self.current = self.evaluations.len() - 1;
        } else {
            self.current = usize::MAX;
        }
    }

    fn resume_evaluation(&mut self, eval: u64) {
        self.current = self.evaluations.iter().position(|e| e.id == eval).unwrap_or(usize::MAX);
    }

    fn apply(&mut self, store: &mut NodeStore, app: &Application<'_>) -> Result<Handle, Failure> {
        let ceilings = self.ceilings;
        self.evaluation().started.release_taken(store);
        let mut ahead = self.evaluation().started.take(&app.thunk);
        if ahead.is_none() && ahead::others_only() {
            let (eval_left, budget_us) = self.budgets();
            let started = &mut self.evaluation().started;
            if eval_left > 0 && started.start(store, app, ceilings, budget_us) {
                ahead = started.take(&app.thunk);
            }
        }
        let mut retries = 0;
        loop {
            let (eval_left, local_budget_us) = self.budgets();
            if eval_left == 0 {
                if let Some(job) = ahead {
                    self.evaluation().started.abandon(job, store);
                }
                return Err(self.eval_time_failure());
            }
            let (outcome, spent, budget_us) = match ahead.take() {
                Some(job) => {
                    let budget_us = job.budget_us();
                    let (evaluation, local) = self.parts();
                    let (outcome, spent) = evaluation.started.wait(job, store, local);
                    (outcome, spent, budget_us)
                }
                None => {
                    let began_us = crate::arch::clock::micros_since_boot();
                    let (outcome, spent, pinned) =
                        self.local.apply_once(store, app, ceilings, local_budget_us, false);
                    crate::trace::record(cairn_proto::trace::Span {
                        handle: Some(app.thunk),
                        ok: outcome.is_ok(),
                        ..crate::trace::since(cairn_proto::trace::SpanKind::Task, began_us)
                    });
                    if pinned && let Ok(result) = &outcome {
                        // Until the evaluator has it (the next call), as for a job's result.
                        self.evaluation().started.hold(store, *result);
                    }
                    crate::arch::percpu::current().count_task(spent);
                    (outcome, spent, local_budget_us)
                }
            };
            let evaluation = self.evaluation();
            evaluation.spent_us = evaluation.spent_us.saturating_add(spent);
            match outcome {
                Err(Failure::NodeFault(_)) if retries < NODE_FAULT_RETRIES => {
                    // Start again from nothing the interrupted run left, on this CPU.
                    retries += 1;
                    self.local.stats.node_fault_retries += 1;
                    self.local.warm = None;
                }
                Err(Failure::Timeout) if budget_us < ceilings.time_us => {
                    return Err(self.eval_time_failure());
                }
                outcome => return outcome,
            }
        }
    }

    fn poll_ready(&mut self, store: &mut NodeStore, app: &Application<'_>) -> bool {
        let ceilings = self.ceilings;
        let (eval_left, budget_us) = self.budgets();
        let started = &mut self.evaluation().started;
        started.release_taken(store);
        if let Some(done) = started.is_done(&app.thunk) {
            return done;
        }
        // Started now on whichever CPU is free; the walk steps aside until it is done. With no
        // other CPU, or no time left (`apply` says so), it runs here at `apply`.
        !(eval_left > 0 && started.start(store, app, ceilings, budget_us))
    }

    fn room_ahead(&self) -> usize {
        if self.run_ahead { ahead::room() } else { 0 }
    }

    fn start_ahead(&mut self, store: &mut NodeStore, app: &Application<'_>) -> bool {
        let ceilings = self.ceilings;
        let (eval_left, budget_us) = self.budgets();
        let started = &mut self.evaluation().started;
        started.release_taken(store);
        eval_left > 0 && ahead::room() > 0 && started.start(store, app, ceilings, budget_us)
    }

    fn end_evaluation(&mut self, eval: u64) {
        match self.evaluations.iter().position(|e| e.id == eval) {
            Some(at) => self.evaluations.swap_remove(at).started.end(),
            None => core::mem::take(&mut self.scratch).started.end(),
        }
        self.current = usize::MAX;
    }
}

/// A new address space with the image and the top stack page mapped.
fn fresh_space(image: &image::Image) -> Result<AddressSpace, Failure> {
    let mut space = AddressSpace::new().map_err(|_| Failure::NodeOutOfMemory)?;
    image.map_into(&mut space)?;
    // Every task touches the top of its stack at once: map it now rather than fault.
    space.map_new(STACK_TOP - FRAME_SIZE, Perm::READ_WRITE).map_err(|_| Failure::NodeOutOfMemory)?;
    Ok(space)
}

/// Makes a used address space indistinguishable from a fresh one: pages the last task added
/// are gone, writable image pages and the stack page hold their initial contents (whether the
/// task or the kernel wrote them). `None` (and the space is dropped) if anything does not look
/// as expected.
fn reset(mut warm: Warm, image: &image::Image) -> Option<(AddressSpace, u64, u64)> {
    for page in warm.added.drain(..) {
        warm.space.unmap(page).ok()?;
    }
    drop(warm.lent);
    if !image.reset(&mut warm.space) || !warm.space.refill_if_written(STACK_TOP - FRAME_SIZE, |f| f.fill(0)) {
        return None;
    }
    Some((warm.space, warm.args_pages, warm.args_bytes))
}
