//! Jobs end to end on the host (docs/IO.md): a fake upstream behind the Transport trait, the
//! real evaluator, manifests, capabilities, journals and replay.

use std::collections::BTreeMap;

use bytes::Bytes;
use cairn_eval::{Application, Evaluator, Executor, Failure};
use cairn_io::{Capability, Job, JobIo, Journal, Manifest, Transport};
use cairn_object::io::{Effect, Endpoint};
use cairn_object::store::{MemStore, Store};
use cairn_object::{Handle, Kind, Limits, thunk};
use proptest::prelude::*;

/// `op:concat` joins its blob arguments.
struct Concat;

impl Executor<MemStore> for Concat {
    fn apply(&mut self, store: &mut MemStore, app: &Application<'_>) -> Result<Handle, Failure> {
        let mut out = Vec::new();
        for a in app.args {
            out.extend_from_slice(&store.get(a).unwrap());
        }
        Ok(store.put(Kind::Blob, Bytes::from(out)).unwrap())
    }
}

#[derive(Default)]
struct Upstream {
    pages: BTreeMap<String, String>,
    /// Every connection: (effect, endpoint, bytes sent).
    log: Vec<(Effect, Endpoint, Vec<u8>)>,
    down: bool,
}

impl Transport for Upstream {
    fn exchange(&mut self, cap: &Capability, request: &[u8], _limit: usize) -> Result<Vec<u8>, String> {
        self.log.push((cap.effect(), cap.endpoint(), request.to_vec()));
        if self.down {
            return Err("connection refused".into());
        }
        let text = String::from_utf8(request.to_vec()).unwrap();
        let path = text.split(' ').nth(1).unwrap_or("/");
        Ok(match self.pages.get(path) {
            Some(body) => {
                format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
            }
            None => b"HTTP/1.0 404 Not Found\r\n\r\n".to_vec(),
        })
    }
    fn send(&mut self, cap: &Capability, data: &[u8]) -> Result<(), String> {
        self.log.push((cap.effect(), cap.endpoint(), data.to_vec()));
        if self.down { Err("connection refused".into()) } else { Ok(()) }
    }
    fn now_ms(&self) -> u64 {
        42
    }
}

fn blob(store: &mut MemStore, bytes: &[u8]) -> Handle {
    store.put(Kind::Blob, Bytes::copy_from_slice(bytes)).unwrap()
}

fn thunk_of(store: &mut MemStore, limits: Limits, procedure: Handle, args: &[Handle]) -> Handle {
    store.put(Kind::Thunk, Bytes::from(thunk::encode(limits, procedure, args).unwrap())).unwrap()
}

fn io(store: &mut MemStore, effect: Effect, args: &[&[u8]]) -> Handle {
    let args: Vec<Handle> = args.iter().map(|a| blob(store, a)).collect();
    thunk_of(store, cairn_object::io::limits(), effect.procedure(), &args)
}

/// send(10.0.2.2:9000, concat(get /a, get /b, get /a)) as a job with `manifest`.
fn job(store: &mut MemStore, manifest: &str) -> (Handle, Job) {
    let a = io(store, Effect::HttpGet, &[b"http://10.0.2.2:8080/a"]);
    let b = io(store, Effect::HttpGet, &[b"http://10.0.2.2:8080/b"]);
    let summary = thunk_of(store, Limits::new(1 << 20).unwrap(), Handle::blob(b"op:concat"), &[a, b, a]);
    let sink = blob(store, b"10.0.2.2:9000");
    let root = thunk_of(store, cairn_object::io::limits(), Effect::TcpSend.procedure(), &[sink, summary]);
    let manifest = Manifest::parse(manifest.as_bytes()).unwrap();
    let (tree, manifest_bytes) = Job::encode(root, &manifest);
    blob(store, &manifest_bytes);
    let handle = store.put(Kind::Tree, Bytes::from(tree)).unwrap();
    (handle, Job::load(&handle, |h| store.get(h)).unwrap())
}

const GRANTS: &str = "http.get 10.0.2.2:8080\n# the summary goes out here\ntcp.send 10.0.2.2:9000\n";

fn upstream() -> Upstream {
    let mut up = Upstream::default();
    up.pages.insert("/a".into(), "the first page, long enough not to be a literal. ".into());
    up.pages.insert("/b".into(), "the second page, also longer than thirty-two bytes. ".into());
    up
}

#[test]
fn a_job_fetches_sends_once_and_replays_from_its_journal_alone() {
    let mut ev = Evaluator::new(MemStore::new(1 << 24), Concat);
    let (job_handle, job) = job(&mut ev.store, GRANTS);
    let mut up = upstream();
    let mut io = JobIo::live(job_handle, job.manifest.clone(), &mut up);
    let result = ev.eval_with_io(job.root, &mut io).unwrap();
    let mut journal = io.into_journal();
    journal.result = Some(result);
    let expected = format!("{}{}{}", up.pages["/a"], up.pages["/b"], up.pages["/a"]);
    assert_eq!(&ev.store.get(&result).unwrap()[..], expected.as_bytes(), "send returns what it sent");
    // /a is fetched once although the job asks twice, and the summary goes out once.
    let effects: Vec<Effect> = up.log.iter().map(|(e, _, _)| *e).collect();
    assert_eq!(effects, [Effect::HttpGet, Effect::HttpGet, Effect::TcpSend]);
    assert_eq!(up.log[2].2, expected.as_bytes());
    assert_eq!(journal.entries().len(), 3);

    // The journal travels as text and comes back equal.
    let journal = Journal::decode(journal.encode().as_bytes()).unwrap();

    // Replay: no transport at all, and the same result.
    let mut replay = JobIo::replay(job.manifest.clone(), journal.clone());
    assert_eq!(ev.eval_with_io(job.root, &mut replay), Ok(result));

    // Replay on a fresh node that has only the job's inputs and the journal's responses.
    let mut fresh = Evaluator::new(MemStore::new(1 << 24), Concat);
    let (_, job2) = self::job(&mut fresh.store, GRANTS);
    for response in journal.responses() {
        fresh.store.put(Kind::Blob, ev.store.get(&response).unwrap()).unwrap();
    }
    assert_eq!(fresh.eval_with_io(job2.root, &mut JobIo::replay(job2.manifest, journal)), Ok(result));
}

#[test]
fn a_journal_without_an_answer_names_the_request() {
    let mut ev = Evaluator::new(MemStore::new(1 << 24), Concat);
    let (job_handle, job) = job(&mut ev.store, GRANTS);
    let mut up = upstream();
    let mut io = JobIo::live(job_handle, job.manifest.clone(), &mut up);
    ev.eval_with_io(job.root, &mut io).unwrap();
    let full = io.into_journal();
    let dropped = full.entries()[1].clone();
    let journal = full.without_entry(1);
    let err = ev.eval_with_io(job.root, &mut JobIo::replay(job.manifest, journal)).unwrap_err();
    assert_eq!(err.thunk, dropped.request);
    assert!(
        matches!(&err.failure, Failure::Io(why) if why.contains("no answer") && why.contains("http.get 10.0.2.2:8080")),
        "{err}"
    );
}

#[test]
fn requests_outside_the_manifest_fail_naming_the_capability_and_connect_nowhere() {
    let mut ev = Evaluator::new(MemStore::new(1 << 24), Concat);
    // http.get is granted, but on another port, and tcp.send not at all.
    let (job_handle, job) = job(&mut ev.store, "http.get 10.0.2.2:8081\n");
    let mut up = upstream();
    let err = ev.eval_with_io(job.root, &mut JobIo::live(job_handle, job.manifest, &mut up)).unwrap_err();
    assert!(
        matches!(&err.failure, Failure::MissingCapability(why) if why.contains("`http.get 10.0.2.2:8080`")),
        "{err}"
    );
    assert!(up.log.is_empty(), "nothing was contacted");

    let (job_handle, job) = self::job(&mut ev.store, "http.get 10.0.2.2:8080\n");
    let err = ev.eval_with_io(job.root, &mut JobIo::live(job_handle, job.manifest, &mut up)).unwrap_err();
    assert!(
        matches!(&err.failure, Failure::MissingCapability(why) if why.contains("`tcp.send 10.0.2.2:9000`")),
        "{err}"
    );
    assert!(up.log.iter().all(|(e, _, _)| *e == Effect::HttpGet), "the summary was not sent");
}

#[test]
fn upstream_failures_and_bad_pages_are_io_errors() {
    let mut ev = Evaluator::new(MemStore::new(1 << 24), Concat);
    let (job_handle, job) = job(&mut ev.store, GRANTS);
    let mut up = upstream();
    up.down = true;
    let err =
        ev.eval_with_io(job.root, &mut JobIo::live(job_handle, job.manifest.clone(), &mut up)).unwrap_err();
    assert!(matches!(&err.failure, Failure::Io(why) if why.contains("connection refused")), "{err}");
    let mut up = upstream();
    up.pages.remove("/b");
    let err = ev.eval_with_io(job.root, &mut JobIo::live(job_handle, job.manifest, &mut up)).unwrap_err();
    assert!(matches!(&err.failure, Failure::Io(why) if why.contains("/b") && why.contains("404")), "{err}");
}

#[test]
fn no_job_reaches_a_clouds_metadata_server() {
    // Link-local: where GCE's (and AWS's, Azure's, OpenStack's) metadata server answers, which
    // holds a node's configuration, its private key included (docs/CLOUD.md).
    for text in ["tcp.request 169.254.169.254:80", "http.get 169.254.169.254:80", "tcp.send 169.254.0.1:9"] {
        let err = Manifest::parse(text.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("link-local") && err.contains("line 1"), "{text}: {err}");
    }
    assert!(Manifest::parse(b"http.get 169.253.169.254:80\ntcp.send 10.0.2.2:9000\n").is_ok());
}

#[test]
fn manifests_and_jobs_say_what_is_wrong() {
    for (text, needle) in [
        ("http.get", "expected `effect endpoint`"),
        ("http.put 10.0.2.2:80", "unknown effect `http.put`"),
        ("tcp.send 10.0.2.2", "not an endpoint"),
        ("\n\ntcp.send 1.2.3.4:5 extra", "line 3"),
    ] {
        let err = Manifest::parse(text.as_bytes()).unwrap_err().to_string();
        assert!(err.contains(needle), "{text}: {err}");
    }
    let store = MemStore::new(1 << 20);
    let not_a_tree = Handle::blob(b"x");
    assert!(Job::load(&not_a_tree, |h| store.get(h)).unwrap_err().to_string().contains("not a job"));
    let absent = Handle::from_bytes(&{
        let mut b = *Handle::blob(&[1u8; 80]).as_bytes();
        b[0] = Kind::Tree as u8;
        b
    })
    .unwrap();
    assert!(Job::load(&absent, |h| store.get(h)).unwrap_err().to_string().contains("not on this node"));
}

#[test]
fn journals_reject_malformed_text() {
    for (text, needle) in [
        ("", "line 1"),
        ("cairn-journal 2\n", "line 1"),
        ("cairn-journal 1\nwork x\n", "line 2"),
        ("cairn-journal 1\njob blob:=00\nio soon http.get blob:=00 blob:=00\n", "not a time"),
        ("cairn-journal 1\njob blob:=00\nio 1 ftp.get blob:=00 blob:=00\n", "unknown effect"),
        (
            "cairn-journal 1\njob blob:=00\nio 1 http.get blob:=00 blob:=01\nio 2 http.get blob:=00 blob:=02\n",
            "answered twice",
        ),
        ("cairn-journal 1\njob blob:=00\nresult blob:=00\nio 1 http.get blob:=00 blob:=01\n", "line 4"),
    ] {
        let err = Journal::decode(text.as_bytes()).unwrap_err().to_string();
        assert!(err.contains(needle), "{text:?}: {err}");
    }
}

proptest! {
    #[test]
    fn manifests_round_trip(grants in proptest::collection::vec((0..3usize, any::<[u8; 4]>(), 1u16..), 0..8)) {
        // Link-local addresses (169.254.0.0/16) are refused when a manifest is read: none here.
        let outside = |ip: [u8; 4]| if ip[..2] == [169, 254] { [170, 254, ip[2], ip[3]] } else { ip };
        let m = Manifest::new(grants.into_iter().map(|(e, ip, port)| (Effect::ALL[e], Endpoint { ip: outside(ip), port })));
        prop_assert_eq!(Manifest::parse(m.render().as_bytes()).unwrap(), m);
    }

    #[test]
    fn journals_round_trip(entries in proptest::collection::vec((any::<u64>(), 0..3usize, any::<[u8; 20]>(), any::<[u8; 40]>()), 0..6), result: bool) {
        let mut j = Journal::new(Handle::blob(b"job"));
        for (at_ms, e, request, response) in entries {
            j.record(cairn_io::Entry { at_ms, effect: Effect::ALL[e], request: Handle::blob(&request), response: Handle::blob(&response) });
        }
        j.result = result.then(|| Handle::blob(b"result"));
        prop_assert_eq!(Journal::decode(j.encode().as_bytes()).unwrap(), j);
    }

    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = Manifest::parse(&bytes);
        let _ = Journal::decode(&bytes);
    }
}

#[test]
fn hostile_journals_are_refused_cheaply_and_say_what_is_wrong() {
    let head = format!("cairn-journal 1\njob {}\n", Handle::blob(b"job"));
    // A line of nine million spaces: refused without splitting it into nine million words.
    let spaces = format!("{head}io{}\n", " ".repeat(9_000_000));
    let err = Journal::decode(spaces.as_bytes()).unwrap_err();
    assert_eq!(err.line, 3);
    assert!(err.why.len() < 200, "the message quotes an excerpt, not the line: {} bytes", err.why.len());
    // A word of a million letters is quoted as an excerpt too.
    let long = format!("{head}result {}\n", "x".repeat(1_000_000));
    assert!(Journal::decode(long.as_bytes()).unwrap_err().why.len() < 200);
    // More entries than a journal may have.
    let mut text = head.clone();
    for i in 0..=cairn_io::MAX_JOURNAL_ENTRIES as u32 {
        text.push_str(&format!(
            "io 1 http.get {} {}\n",
            Handle::blob(&[i.to_le_bytes(); 9].concat()),
            Handle::blob(b"r")
        ));
    }
    let err = Journal::decode(text.as_bytes()).unwrap_err();
    assert!(err.why.contains("entries a journal may have"), "{err}");
}
