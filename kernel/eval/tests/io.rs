//! Evaluation with IO (docs/IO.md, docs/EVALUATION.md EVAL-8): IO requests go to the job's IO
//! layer, are never memoized, and neither is anything whose value depends on them; pure work
//! on their results still is.

use std::cell::Cell;

use bytes::Bytes;
use cairn_eval::{Application, Evaluator, Executor, Failure, Io};
use cairn_object::io::Effect;
use cairn_object::store::{MemStore, Store};
use cairn_object::{Handle, Kind, Limits, thunk};

/// Procedures: `op:upper` upper-cases a blob; `op:fetch-upper` returns upper(http.get(arg)).
struct Fake;

fn op(name: &str) -> Handle {
    Handle::blob(format!("op:{name}").as_bytes())
}

fn put_thunk(store: &mut MemStore, limits: Limits, procedure: Handle, args: &[Handle]) -> Handle {
    store.put(Kind::Thunk, Bytes::from(thunk::encode(limits, procedure, args).unwrap())).unwrap()
}

fn task(store: &mut MemStore, name: &str, args: &[Handle]) -> Handle {
    put_thunk(store, Limits::new(1 << 20).unwrap(), op(name), args)
}

fn http_get(store: &mut MemStore, url: &str) -> Handle {
    let url = store.put(Kind::Blob, Bytes::copy_from_slice(url.as_bytes())).unwrap();
    put_thunk(store, cairn_object::io::limits(), Effect::HttpGet.procedure(), &[url])
}

impl Executor<MemStore> for Fake {
    fn apply(&mut self, store: &mut MemStore, app: &Application<'_>) -> Result<Handle, Failure> {
        if app.procedure == op("upper") {
            let bytes = store.get(&app.args[0]).unwrap().to_ascii_uppercase();
            return Ok(store.put(Kind::Blob, Bytes::from(bytes)).unwrap());
        }
        if app.procedure == op("fetch-upper") {
            let url = String::from_utf8(store.get(&app.args[0]).unwrap().to_vec()).unwrap();
            let get = http_get(store, &url);
            return Ok(task(store, "upper", &[get]));
        }
        Err(Failure::InvalidThunk("unknown".into()))
    }
}

/// Answers http.get with a page that changes on every request, like a real upstream might.
struct Upstream {
    served: Cell<u64>,
}

impl Io<MemStore> for Upstream {
    fn perform(
        &mut self,
        store: &mut MemStore,
        effect: Effect,
        app: &Application<'_>,
    ) -> Result<Handle, Failure> {
        assert_eq!(effect, Effect::HttpGet);
        assert_eq!(app.procedure, Effect::HttpGet.procedure());
        self.served.set(self.served.get() + 1);
        let page = format!("page version {} is much longer than a literal", self.served.get());
        Ok(store.put(Kind::Blob, Bytes::from(page.into_bytes())).unwrap())
    }
}

fn evaluator() -> Evaluator<MemStore, Fake> {
    Evaluator::new(MemStore::new(1 << 24), Fake)
}

#[test]
fn io_outside_a_job_is_refused_and_not_remembered() {
    let mut ev = evaluator();
    let get = http_get(&mut ev.store, "http://10.0.2.2:8080/");
    let root = task(&mut ev.store, "upper", &[get]);
    let err = ev.eval(root).unwrap_err();
    assert_eq!(err.thunk, get, "the error names the IO request");
    assert!(matches!(&err.failure, Failure::MissingCapability(why) if why.contains("http.get")), "{err}");
    assert!(ev.memo().get(&root).is_none() && ev.memo().get(&get).is_none());
}

#[test]
fn io_results_are_not_memoized_but_pure_work_on_them_is() {
    let mut ev = evaluator();
    let get = http_get(&mut ev.store, "http://10.0.2.2:8080/a");
    let root = task(&mut ev.store, "upper", &[get]);
    let mut upstream = Upstream { served: Cell::new(0) };

    let first = ev.eval_with_io(root, &mut upstream).unwrap();
    assert_eq!(&ev.store.get(&first).unwrap()[..], b"PAGE VERSION 1 IS MUCH LONGER THAN A LITERAL");
    assert_eq!(ev.stats().io_requests, 1);
    // Neither the request nor the thunk as written is remembered: their values depend on the
    // outside world. upper(page 1) is a pure function of its input and is remembered.
    assert!(ev.memo().get(&get).is_none());
    assert!(ev.memo().get(&root).is_none());
    assert_eq!(ev.memo().len(), 1);

    // The upstream changed: a second run sees the new page, not a stale memo entry.
    let second = ev.eval_with_io(root, &mut upstream).unwrap();
    assert_eq!(&ev.store.get(&second).unwrap()[..], b"PAGE VERSION 2 IS MUCH LONGER THAN A LITERAL");
    assert_eq!(upstream.served.get(), 2);
}

#[test]
fn a_task_that_returns_an_io_request_is_not_memoized_either() {
    let mut ev = evaluator();
    let url = ev.store.put(Kind::Blob, Bytes::from_static(b"http://10.0.2.2:8080/tail-call")).unwrap();
    let root = task(&mut ev.store, "fetch-upper", &[url]);
    let mut upstream = Upstream { served: Cell::new(0) };
    ev.eval_with_io(root, &mut upstream).unwrap();
    assert!(ev.memo().get(&root).is_none(), "fetch-upper's value depends on IO made by its tail call");
    let second = ev.eval_with_io(root, &mut upstream).unwrap();
    assert_eq!(&ev.store.get(&second).unwrap()[..], b"PAGE VERSION 2 IS MUCH LONGER THAN A LITERAL");
}

#[test]
fn io_failures_fail_the_job_naming_the_request_and_are_not_remembered() {
    struct Down;
    impl Io<MemStore> for Down {
        fn perform(&mut self, _: &mut MemStore, _: Effect, _: &Application<'_>) -> Result<Handle, Failure> {
            Err(Failure::Io("connection refused".into()))
        }
    }
    let mut ev = evaluator();
    let get = http_get(&mut ev.store, "http://10.0.2.2:8080/down");
    let root = task(&mut ev.store, "upper", &[get]);
    let err = ev.eval_with_io(root, &mut Down).unwrap_err();
    assert_eq!(err.thunk, get);
    assert_eq!(err.failure, Failure::Io("connection refused".into()));
    assert!(ev.memo().is_empty());
    // Recovered upstream: the job now succeeds.
    assert!(ev.eval_with_io(root, &mut Upstream { served: Cell::new(0) }).is_ok());
}

#[test]
fn an_io_layer_that_returns_an_object_it_did_not_store_is_caught() {
    struct Liar;
    impl Io<MemStore> for Liar {
        fn perform(&mut self, _: &mut MemStore, _: Effect, _: &Application<'_>) -> Result<Handle, Failure> {
            Ok(Handle::blob(&[9u8; 100]))
        }
    }
    let mut ev = evaluator();
    let get = http_get(&mut ev.store, "http://10.0.2.2:8080/");
    assert!(matches!(ev.eval_with_io(get, &mut Liar).unwrap_err().failure, Failure::ForgedHandle(_)));
}
