//! docs/EVALUATION.md with a fake executor: procedures are blobs `op:NAME` run in Rust.

use std::collections::BTreeMap;

use bytes::Bytes;
use cairn_eval::{Application, Ceilings, EvalError, Evaluator, Executor, Failure, Replay, Stats};
use cairn_object::store::{MemStore, Store};
use cairn_object::{Handle, Kind, Limits, thunk};

#[derive(Default)]
struct Fake {
    runs: BTreeMap<&'static str, u64>,
    flaky_counter: u64,
}

const OPS: [&str; 11] =
    ["identity", "add", "fib", "fail", "timeout", "forge", "self", "flaky", "concat", "count", "countdown"];

fn op(name: &str) -> Handle {
    Handle::blob(format!("op:{name}").as_bytes())
}

fn u64_blob(store: &mut dyn Store, n: u64) -> Handle {
    store.put(Kind::Blob, Bytes::copy_from_slice(&n.to_le_bytes())).unwrap()
}

fn read_u64(store: &dyn Store, h: &Handle) -> u64 {
    u64::from_le_bytes(store.get(h).unwrap()[..8].try_into().unwrap())
}

fn make_thunk(store: &mut dyn Store, name: &str, args: &[Handle]) -> Handle {
    let enc = thunk::encode(Limits::new(1 << 20).unwrap(), op(name), args).unwrap();
    store.put(Kind::Thunk, Bytes::from(enc)).unwrap()
}

impl Executor<MemStore> for Fake {
    fn apply(&mut self, store: &mut MemStore, app: &Application<'_>) -> Result<Handle, Failure> {
        let name = OPS
            .into_iter()
            .find(|n| op(n) == app.procedure)
            .ok_or_else(|| Failure::InvalidThunk("unknown fake procedure".into()))?;
        *self.runs.entry(name).or_default() += 1;
        for a in app.args {
            assert_ne!(a.kind(), Kind::Thunk, "EVAL-2: tasks only see values");
        }
        match name {
            "identity" => Ok(app.args[0]),
            "add" => {
                let sum = read_u64(store, &app.args[0]) + read_u64(store, &app.args[1]);
                Ok(u64_blob(store, sum))
            }
            "fib" => {
                let n = read_u64(store, &app.args[0]);
                if n < 2 {
                    return Ok(app.args[0]);
                }
                // A dynamic graph: return add(fib(n-1), fib(n-2)) as a thunk (EVAL-2.3).
                let (a, b) = (u64_blob(store, n - 1), u64_blob(store, n - 2));
                let fa = make_thunk(store, "fib", &[a]);
                let fb = make_thunk(store, "fib", &[b]);
                Ok(make_thunk(store, "add", &[fa, fb]))
            }
            "fail" => Err(Failure::TaskError("boom".into())),
            "timeout" => Err(Failure::Timeout),
            "forge" => Ok(Handle::blob(&[0x5a; 64])),
            "self" => Ok(app.thunk),
            "flaky" => {
                self.flaky_counter += 1;
                Ok(u64_blob(store, self.flaky_counter))
            }
            "concat" => {
                let mut out = Vec::new();
                for a in app.args {
                    out.extend_from_slice(&store.get(a).unwrap());
                }
                Ok(store.put(Kind::Blob, Bytes::from(out)).unwrap())
            }
            "count" => Ok(u64_blob(store, app.args.len() as u64)),
            // countdown(n): a tail call to countdown(n - 1), ending in an error with a long message.
            "countdown" => match read_u64(store, &app.args[0]) {
                0 => Err(Failure::TaskError("x".repeat(4096))),
                n => {
                    let next = u64_blob(store, n - 1);
                    Ok(make_thunk(store, "countdown", &[next]))
                }
            },
            _ => unreachable!(),
        }
    }
}

fn evaluator() -> Evaluator<MemStore, Fake> {
    Evaluator::new(MemStore::new(1 << 26), Fake::default())
}

#[test]
fn eval_1_values_evaluate_to_themselves_and_trees_are_not_entered() {
    let mut ev = evaluator();
    let blob = u64_blob(&mut ev.store, 7);
    assert_eq!(ev.eval(blob), Ok(blob));
    let inner = make_thunk(&mut ev.store, "fail", &[]);
    let tree = ev.store.put(Kind::Tree, Bytes::from(cairn_object::tree::encode(&[inner]))).unwrap();
    assert_eq!(ev.eval(tree), Ok(tree));
    assert_eq!(ev.stats(), Stats::default());
}

#[test]
fn eval_2_arguments_are_evaluated_first_and_tail_calls_continue() {
    let mut ev = evaluator();
    let (two, three) = (u64_blob(&mut ev.store, 2), u64_blob(&mut ev.store, 3));
    let inner = make_thunk(&mut ev.store, "add", &[two, three]);
    let outer = make_thunk(&mut ev.store, "add", &[inner, three]);
    let result = ev.eval(outer).unwrap();
    assert_eq!(read_u64(&ev.store, &result), 8);

    let ten = u64_blob(&mut ev.store, 10);
    let fib = make_thunk(&mut ev.store, "fib", &[ten]);
    let result = ev.eval(fib).unwrap();
    assert_eq!(read_u64(&ev.store, &result), 55);
    assert_eq!(result.kind(), Kind::Blob);
}

#[test]
fn fib_60_as_a_dynamic_graph_runs_each_subproblem_once() {
    // Without memo sharing this is ~10^12 applications; with it, each fib(k) runs once.
    let mut ev = evaluator();
    let n = u64_blob(&mut ev.store, 60);
    let fib = make_thunk(&mut ev.store, "fib", &[n]);
    let result = ev.eval(fib).unwrap();
    assert_eq!(read_u64(&ev.store, &result), 1548008755920);
    // fib(0..=60) each run once, plus the adds that combine them.
    assert!(ev.stats().tasks_run < 200, "{:?}", ev.stats());
}

#[test]
fn a_result_the_store_lacks_is_missing_and_not_remembered() {
    // The executor enforces EVAL-3; a result the store does not hold is an object this node
    // lacks, which another node may hold: never a remembered failure.
    let mut ev = evaluator();
    let t = make_thunk(&mut ev.store, "forge", &[]);
    let err = ev.eval(t).unwrap_err();
    assert_eq!(err.thunk, t);
    assert_eq!(err.failure, Failure::MissingObject(Handle::blob(&[0x5a; 64])));
    assert!(ev.memo().get(&t).is_none());
}

#[test]
fn eval_4_second_evaluation_is_all_memo_hits() {
    let mut ev = evaluator();
    let (a, b) = (u64_blob(&mut ev.store, 40), u64_blob(&mut ev.store, 2));
    let t = make_thunk(&mut ev.store, "add", &[a, b]);
    let first = ev.eval(t).unwrap();
    assert_eq!(ev.stats(), Stats { tasks_run: 1, memo_hits: 0, ..Stats::default() });
    assert_eq!(ev.eval(t).unwrap(), first);
    assert_eq!(ev.stats(), Stats { tasks_run: 1, memo_hits: 1, ..Stats::default() });
    assert_eq!(ev.executor.runs["add"], 1);
}

#[test]
fn eval_4_thunks_with_equal_evaluated_arguments_share_work() {
    let mut ev = evaluator();
    let five = u64_blob(&mut ev.store, 5);
    let direct = make_thunk(&mut ev.store, "count", &[five]);
    let via_identity = make_thunk(&mut ev.store, "identity", &[five]);
    let indirect = make_thunk(&mut ev.store, "count", &[via_identity]);
    let r1 = ev.eval(direct).unwrap();
    let r2 = ev.eval(indirect).unwrap();
    assert_eq!(r1, r2);
    assert_eq!(ev.executor.runs["count"], 1, "count([5]) must run once");
    assert_eq!(ev.stats().memo_hits, 1);
}

#[test]
fn eval_5_deterministic_failures_are_remembered_and_node_failures_are_not() {
    let mut ev = evaluator();
    let fail = make_thunk(&mut ev.store, "fail", &[]);
    let e1 = ev.eval(fail).unwrap_err();
    assert_eq!(ev.eval(fail).unwrap_err(), e1);
    assert_eq!(ev.executor.runs["fail"], 1);

    let timeout = make_thunk(&mut ev.store, "timeout", &[]);
    assert_eq!(ev.eval(timeout).unwrap_err().failure, Failure::Timeout);
    assert_eq!(ev.eval(timeout).unwrap_err().failure, Failure::Timeout);
    assert_eq!(ev.executor.runs["timeout"], 2, "a timeout must be retried, not remembered");
    assert!(ev.memo().get(&timeout).is_none());
}

#[test]
fn eval_7_an_argument_failure_fails_the_parent_naming_the_innermost_thunk() {
    let mut ev = evaluator();
    let one = u64_blob(&mut ev.store, 1);
    let fail = make_thunk(&mut ev.store, "fail", &[]);
    let parent = make_thunk(&mut ev.store, "add", &[fail, one]);
    let grandparent = make_thunk(&mut ev.store, "identity", &[parent]);
    let err = ev.eval(grandparent).unwrap_err();
    assert_eq!(err, EvalError { thunk: fail, failure: Failure::TaskError("boom".into()) });
    assert_eq!(err.to_string(), format!("{fail} failed: task error: boom"));
    assert!(!ev.executor.runs.contains_key("add"), "the parent must not run");
    // Remembered for the parent too, since it is deterministic.
    assert_eq!(ev.memo().get(&parent), Some(Err(err)));
}

#[test]
fn missing_and_invalid_thunks_are_errors_not_panics() {
    let mut ev = evaluator();
    let other = {
        let mut s = MemStore::new(1 << 20);
        make_thunk(&mut s, "count", &[])
    };
    let err = ev.eval(other).unwrap_err();
    assert_eq!(err.failure, Failure::MissingObject(other));
    assert!(ev.memo().is_empty(), "a missing object is not remembered");

    let unknown = {
        let enc = thunk::encode(Limits::new(4096).unwrap(), Handle::blob(b"op:nope"), &[]).unwrap();
        ev.store.put(Kind::Thunk, Bytes::from(enc)).unwrap()
    };
    assert!(matches!(ev.eval(unknown).unwrap_err().failure, Failure::InvalidThunk(_)));
}

#[test]
fn runaway_tail_calls_hit_the_step_limit_which_is_not_remembered() {
    let mut ev = evaluator().with_step_limit(50);
    let t = make_thunk(&mut ev.store, "self", &[]);
    let err = ev.eval(t).unwrap_err();
    assert_eq!(err.failure, Failure::StepLimit { limit: 50 });
    assert!(ev.memo().get(&t).is_none());
}

#[test]
fn eval_6_replay_reports_identical_or_the_two_outcomes() {
    let mut ev = evaluator();
    let ten = u64_blob(&mut ev.store, 10);
    let fib = make_thunk(&mut ev.store, "fib", &[ten]);
    assert_eq!(ev.replay(fib), Replay::NotRecorded);
    let result = ev.eval(fib);
    let runs_before = ev.executor.runs["fib"];
    assert_eq!(ev.replay(fib), Replay::Identical(result));
    assert!(ev.executor.runs["fib"] > runs_before, "replay must execute again, ignoring the memo");

    let flaky = make_thunk(&mut ev.store, "flaky", &[]);
    let recorded = ev.eval(flaky);
    match ev.replay(flaky) {
        Replay::Differs { recorded: r, replayed } => {
            assert_eq!(r, recorded);
            assert_ne!(replayed, recorded);
        }
        other => panic!("expected differs, got {other:?}"),
    }
    // Replay does not overwrite what was remembered.
    assert_eq!(ev.memo().get(&flaky), Some(recorded));
}

#[test]
fn many_arguments_are_evaluated_in_order() {
    let mut ev = evaluator();
    let parts: Vec<Handle> = (0..20u64)
        .map(|i| {
            let b = ev.store.put(Kind::Blob, Bytes::from(format!("<{i}>"))).unwrap();
            make_thunk(&mut ev.store, "identity", &[b])
        })
        .collect();
    let t = make_thunk(&mut ev.store, "concat", &parts);
    let result = ev.eval(t).unwrap();
    let expected: String = (0..20).map(|i| format!("<{i}>")).collect();
    assert_eq!(ev.store.get(&result).unwrap(), expected.as_bytes());
}

/// identity(identity(...(identity(blob)))), `depth` thunks deep.
fn nested(ev: &mut Evaluator<MemStore, Fake>, depth: usize) -> (Handle, Handle) {
    let blob = u64_blob(&mut ev.store, 42);
    let mut t = blob;
    for _ in 0..depth {
        t = make_thunk(&mut ev.store, "identity", &[t]);
    }
    (t, blob)
}

#[test]
fn deep_nesting_stops_at_the_depth_ceiling_without_recursing_and_is_not_remembered() {
    // 100,000 deep panicked the kernel (allocation failure); now a node limit, not remembered.
    let mut ev = evaluator().with_ceilings(Ceilings { depth: 1000, ..Ceilings::default() });
    let (t, _) = nested(&mut ev, 100_000);
    let err = ev.eval(t).unwrap_err();
    assert!(matches!(&err.failure, Failure::NodeLimit(why) if why.contains("deeper than the 1000")), "{err}");
    assert!(!err.failure.is_deterministic());
    assert!(ev.memo().get(&t).is_none());
    // With room for it, the same graph evaluates on an explicit stack, not the native one.
    let mut ev = evaluator().with_ceilings(Ceilings { depth: 200_000, ..Ceilings::default() });
    let (t, blob) = nested(&mut ev, 100_000);
    assert_eq!(ev.eval(t), Ok(blob));
}

#[test]
fn a_long_chain_of_tail_calls_ending_in_an_error_shares_one_copy_of_it() {
    let mut ev = evaluator().with_ceilings(Ceilings { applications: 200_000, ..Ceilings::default() });
    let start = u64_blob(&mut ev.store, 120_000);
    let t = make_thunk(&mut ev.store, "countdown", &[start]);
    let err = ev.eval(t).unwrap_err();
    assert_eq!(err.failure, Failure::TaskError("x".repeat(4096)));
    // Every link of the chain is remembered (EVAL-4), each with the same error.
    assert!(ev.memo().len() > 120_000, "{}", ev.memo().len());
    assert_eq!(ev.memo().get(&t), Some(Err(err)));
}

#[test]
fn a_thunk_asking_for_more_memory_than_the_node_allows_fails_with_node_limit() {
    let mut ev = evaluator().with_ceilings(Ceilings { task_memory_bytes: 1 << 20, ..Ceilings::default() });
    let blob = u64_blob(&mut ev.store, 1);
    let big = thunk::encode(Limits::new(1 << 40).unwrap(), op("identity"), &[blob]).unwrap();
    let big = ev.store.put(Kind::Thunk, Bytes::from(big)).unwrap();
    let err = ev.eval(big).unwrap_err();
    assert_eq!(
        err.failure,
        Failure::NodeLimit(
            "the thunk asks for 1099511627776 bytes of memory; this node allows at most 1048576 per task"
                .into()
        )
    );
    assert!(ev.memo().is_empty(), "another node may allow it");
    assert_eq!(ev.executor.runs.get("identity"), None, "nothing ran");
    // At the ceiling exactly, it runs.
    let ok = make_thunk(&mut ev.store, "identity", &[blob]);
    assert_eq!(ev.eval(ok), Ok(blob));
}

#[test]
fn a_thunk_with_more_arguments_than_the_node_allows_fails_with_node_limit() {
    let mut ev = evaluator().with_ceilings(Ceilings { tree_entries: 100, ..Ceilings::default() });
    let blob = u64_blob(&mut ev.store, 1);
    let wide = make_thunk(&mut ev.store, "count", &vec![blob; 101]);
    let err = ev.eval(wide).unwrap_err();
    assert_eq!(
        err.failure,
        Failure::NodeLimit("the thunk has 101 arguments; this node allows at most 100".into())
    );
    let fits = make_thunk(&mut ev.store, "count", &vec![blob; 100]);
    let counted = ev.eval(fits).unwrap();
    assert_eq!(read_u64(&ev.store, &counted), 100);
}
