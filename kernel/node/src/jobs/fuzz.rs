//! The `fuzz` mode: runs generated syscall-fuzz programs (cairn-fuzz) as ring-3 tasks, in the
//! kernel itself and with no network, so that a million of them fit in a soak under TCG
//! (`cairn fuzz`; docs/SECURITY.md). Every `CHECK_EVERY` programs it also runs tasks with known
//! results, to show the node still works; it shuts down with success only if all of those
//! passed. Most programs end in a task failure, which is fine: what must never happen is a
//! kernel panic, a hang, or wrong answers afterwards.
//!
//! Console lines (for machines): `cairn: fuzz progress ...` every `PROGRESS_EVERY` programs,
//! `cairn: fuzz check FAILED ...` for a check that failed, and a last `cairn: fuzz done ...`.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use cairn_eval::{EvalError, Failure};
use cairn_fuzz::generate;
use cairn_object::store::{Store, StoreError};
use cairn_object::{Handle, Kind, Limits, thunk};

use super::{NodeEvaluator, Procedures, node_evaluator};
use crate::arch::clock;
use crate::drivers::qemu_exit::Status;
use crate::println;

const MIB: u64 = 1 << 20;
/// Each program's memory limit (thunks it makes may ask for more, up to the node's ceiling).
const PROGRAM_MEMORY: u64 = 4 * MIB;
const STORE_LIMIT: u64 = 64 * MIB;
const CHECK_EVERY: u64 = 100;
const PROGRESS_EVERY: u64 = 1000;

/// The program running now, for the panic handler: a panic names the program to replay.
static ACTIVE: AtomicBool = AtomicBool::new(false);
static SEED: AtomicU64 = AtomicU64::new(0);
static CURRENT: AtomicU64 = AtomicU64::new(0);

/// Called by the panic handler before it reports: names the program that was running.
pub fn note_panic() {
    if ACTIVE.load(Ordering::Relaxed) {
        crate::drivers::serial::write_fmt_raw(format_args!(
            "cairn: fuzz panic in program seed={} index={}\n",
            SEED.load(Ordering::Relaxed),
            CURRENT.load(Ordering::Relaxed)
        ));
    }
}

/// The ceilings the programs run under: the node's, with tighter budgets, so that a program
/// that loops costs a quarter of a second rather than the default two, and one that tail-calls
/// itself (a thunk of the fuzz task on its own program, easily made) stops after 64
/// applications rather than after the evaluation's time.
fn ceilings(node: &cairn_bootcfg::Ceilings) -> cairn_bootcfg::Ceilings {
    cairn_bootcfg::Ceilings { task_time_ms: 250, eval_time_s: 2, eval_applications: 64, ..*node }
}

/// An evaluator and what every program is given besides itself (cairn_fuzz::generate::args).
struct Bench {
    ev: NodeEvaluator,
    p: Procedures,
    extra: [Handle; 3],
}

impl Bench {
    fn new(node: &cairn_bootcfg::Ceilings) -> Bench {
        let (mut ev, p) = node_evaluator(STORE_LIMIT, &ceilings(node));
        let literal = Handle::blob(b"a literal");
        let inner = thunk::encode(limits(MIB), p.identity, &[literal]).expect("procedures are blobs");
        let inner = put(&mut ev, Kind::Thunk, inner).expect("an empty store has room");
        let tree = cairn_object::tree::encode(&[p.identity, p.add, literal, inner]);
        let tree = put(&mut ev, Kind::Tree, tree).expect("an empty store has room");
        let large: Vec<u8> = (0..3000).map(|i| cairn_fuzz::pattern_byte(1, i)).collect();
        let large = put(&mut ev, Kind::Blob, large).expect("an empty store has room");
        // Every program names them: a full store must not evict them.
        for h in [inner, tree, large] {
            ev.store.pin(&h);
        }
        Bench { ev, extra: [p.fuzz, tree, large], p }
    }

    /// The thunk of the fuzz task applied to `program` and the extras.
    fn program(&mut self, program: Vec<u8>) -> Result<Handle, StoreError> {
        let program = put(&mut self.ev, Kind::Blob, program)?;
        let [procedure, tree, large] = self.extra;
        let args = [program, procedure, tree, large];
        let encoding =
            thunk::encode(limits(PROGRAM_MEMORY), self.p.fuzz, &args).expect("procedures are blobs");
        put(&mut self.ev, Kind::Thunk, encoding)
    }
}

fn limits(bytes: u64) -> Limits {
    Limits::new(bytes).expect("whole pages")
}

fn put(ev: &mut NodeEvaluator, kind: Kind, bytes: Vec<u8>) -> Result<Handle, StoreError> {
    ev.store.put(kind, Bytes::from(bytes))
}

/// Counts over the whole run, across evaluators.
#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    by_kind: BTreeMap<&'static str, u64>,
    checks: u64,
    checks_ok: u64,
    tasks_run: u64,
    syscalls: u64,
    page_ins: u64,
    store_resets: u64,
}

impl Tally {
    fn outcome(&mut self, outcome: &Result<Handle, EvalError>) {
        match outcome {
            Ok(_) => self.ok += 1,
            Err(e) => {
                self.failed += 1;
                *self.by_kind.entry(e.failure.name()).or_default() += 1;
            }
        }
    }

    /// Takes an evaluator's counters before it is replaced.
    fn absorb(&mut self, ev: &NodeEvaluator) {
        self.tasks_run += ev.stats().tasks_run;
        self.syscalls += ev.executor.stats().syscalls;
        self.page_ins += ev.executor.stats().page_ins;
    }

    fn by_kind(&self) -> String {
        let kinds: Vec<String> =
            self.by_kind.iter().map(|(k, n)| format!("{}:{n}", k.replace(' ', "_"))).collect();
        if kinds.is_empty() { "none".into() } else { kinds.join(",") }
    }
}

pub fn run(config: &cairn_bootcfg::NodeConfig) -> Status {
    let cairn_bootcfg::Fuzz { seed, programs, first } = config.fuzz;
    SEED.store(seed, Ordering::Relaxed);
    println!("cairn: fuzz start seed={seed} first={first} programs={programs}");
    let mut bench = Bench::new(&config.ceilings);
    let mut tally = Tally::default();
    let started = clock::micros_since_boot();
    let rate = |done: u64| done * 1_000_000 / (clock::micros_since_boot() - started).max(1);
    for index in first..first.saturating_add(programs) {
        CURRENT.store(index, Ordering::Relaxed);
        ACTIVE.store(true, Ordering::Relaxed);
        let thunk = match bench.program(generate::program(seed, index)) {
            Ok(thunk) => thunk,
            Err(_) => {
                // The store is full: a fresh one, and the program again.
                reset(&mut bench, &mut tally, &config.ceilings);
                bench.program(generate::program(seed, index)).expect("a fresh store has room")
            }
        };
        let outcome = bench.ev.eval_fresh(thunk);
        ACTIVE.store(false, Ordering::Relaxed);
        tally.outcome(&outcome);
        if matches!(&outcome, Err(EvalError { failure: Failure::NodeOutOfMemory, .. })) {
            reset(&mut bench, &mut tally, &config.ceilings);
        }
        let done = index - first + 1;
        if done.is_multiple_of(CHECK_EVERY) || done == programs {
            check(&mut bench, &mut tally, &config.ceilings, index);
        }
        if done.is_multiple_of(PROGRESS_EVERY) && done < programs {
            // The heap in use and the store's objects: a leak shows as growth across resets.
            println!(
                "cairn: fuzz progress done={done} next={} ok={} failed={} checks_ok={}/{} rate_per_s={} heap_kib={} objects={}",
                index + 1,
                tally.ok,
                tally.failed,
                tally.checks_ok,
                tally.checks,
                rate(done),
                crate::memory::heap::usage().0 >> 10,
                bench.ev.store.stats().objects
            );
        }
    }
    tally.absorb(&bench.ev);
    let ms = (clock::micros_since_boot() - started) / 1000;
    println!(
        "cairn: fuzz done seed={seed} first={first} programs={programs} ok={} failed={} by_kind={} checks={} checks_ok={} tasks_run={} syscalls={} page_ins={} store_resets={} ms={ms} rate_per_s={}",
        tally.ok,
        tally.failed,
        tally.by_kind(),
        tally.checks,
        tally.checks_ok,
        tally.tasks_run,
        tally.syscalls,
        tally.page_ins,
        tally.store_resets,
        rate(programs)
    );
    if tally.checks_ok == tally.checks { Status::Success } else { Status::Failure }
}

fn reset(bench: &mut Bench, tally: &mut Tally, node: &cairn_bootcfg::Ceilings) {
    tally.absorb(&bench.ev);
    tally.store_resets += 1;
    *bench = Bench::new(node);
}

/// Tasks with known results, each fresh so that the memo cannot answer: `add` of a number
/// that changes with `index`, and the fuzz task on a program whose result is known.
fn check(bench: &mut Bench, tally: &mut Tally, node: &cairn_bootcfg::Ceilings, index: u64) {
    for attempt in 0..2 {
        match try_check(bench, index) {
            Ok(()) => {
                tally.checks += 1;
                tally.checks_ok += 1;
                return;
            }
            // A full store is the programs' doing, not a fault: once more, in a fresh one.
            Err(why) if attempt == 0 && why.contains("out of memory") => reset(bench, tally, node),
            Err(why) => {
                tally.checks += 1;
                println!(
                    "cairn: fuzz check FAILED after program seed={} index={index}: {why}",
                    SEED.load(Ordering::Relaxed)
                );
                return;
            }
        }
    }
}

fn try_check(bench: &mut Bench, index: u64) -> Result<(), String> {
    let store_error = |e: StoreError| format!("node out of memory: {e}");
    let n = 1_000_000 + index;
    let a = put(&mut bench.ev, Kind::Blob, n.to_le_bytes().into()).map_err(store_error)?;
    let b = put(&mut bench.ev, Kind::Blob, 3u64.to_le_bytes().into()).map_err(store_error)?;
    let add = thunk::encode(limits(MIB), bench.p.add, &[a, b]).expect("procedures are blobs");
    let add = put(&mut bench.ev, Kind::Thunk, add).map_err(store_error)?;
    let expected = Handle::blob(&(n + 3).to_le_bytes());
    match bench.ev.eval_fresh(add) {
        Ok(h) if h == expected => {}
        Ok(h) => return Err(format!("add({n}, 3) gave {h}, not {expected}")),
        Err(e) => return Err(format!("add({n}, 3) failed: {}", e.failure)),
    }
    let (program, content) = generate::check_program(index as u32, 300);
    let thunk = bench.program(program).map_err(store_error)?;
    let expected = Handle::blob(&content);
    match bench.ev.eval_fresh(thunk) {
        Ok(h) if h == expected && bench.ev.store.get(&h).is_some_and(|b| b[..] == content[..]) => Ok(()),
        Ok(h) => Err(format!("the check program gave {h}, not {expected}")),
        Err(e) => Err(format!("the check program failed: {}", e.failure)),
    }
}
