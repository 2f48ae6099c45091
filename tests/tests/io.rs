//! Jobs with declared IO against real upstreams on the host (docs/IO.md): an HTTP server and a
//! TCP sink on 127.0.0.1, which the guest reaches as 10.0.2.2 through QEMU user networking.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use cairn_bootcfg::NodeConfig;
use cairn_object::Handle;
use cairn_tests::serving_node;

const PAGES: [(&str, &str); 2] = [
    ("/a.txt", "The quick brown fox jumps over the lazy dog. The dog sleeps."),
    ("/b.txt", "A fox, a dog and a cat: the cat wins, the fox naps."),
];

/// A host server on 127.0.0.1 that handles each connection with `serve` until stopped; stopping
/// closes the listening socket, so later connections are refused.
struct Server {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(serve: impl Fn(TcpStream) + Send + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    serve(stream);
                }
            }
        });
        Server { port, stop, thread: Some(thread) }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        assert!(TcpStream::connect(("127.0.0.1", self.port)).is_err(), "the server is down");
    }
}

/// Serves PAGES over HTTP/1.0 and counts the requests.
fn http_server(requests: Arc<Mutex<Vec<String>>>) -> Server {
    let pages: BTreeMap<&str, &str> = PAGES.into_iter().collect();
    Server::start(move |mut stream| {
        let mut head = Vec::new();
        let mut byte = [0u8];
        while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        let path = head.split(' ').nth(1).unwrap_or("").to_string();
        requests.lock().unwrap().push(path.clone());
        let reply = match pages.get(path.as_str()) {
            Some(body) => format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()),
            None => "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string(),
        };
        let _ = stream.write_all(reply.as_bytes());
    })
}

/// Keeps every connection's bytes.
fn sink(received: Arc<Mutex<Vec<Vec<u8>>>>) -> Server {
    Server::start(move |mut stream| {
        let mut bytes = Vec::new();
        let _ = stream.read_to_end(&mut bytes);
        received.lock().unwrap().push(bytes);
    })
}

/// What the wordcount task computes (userlib/tasks/src/bin/wordcount.rs), on the host.
fn word_counts(texts: &[&str]) -> String {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for text in texts {
        for word in text.split(|c: char| !c.is_ascii_alphabetic()).filter(|w| !w.is_empty()) {
            *counts.entry(word.to_ascii_lowercase()).or_default() += 1;
        }
    }
    counts.iter().map(|(w, n)| format!("{w} {n}\n")).collect()
}

fn cairn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_FILE_CAIRN_TOOLS_cairn")).args(args).stdin(Stdio::null()).output().unwrap()
}

fn field(output: &Output, name: &str) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no `{name}` in:\n{stdout}"));
    line[name.len()..].split_whitespace().next().unwrap().to_string()
}

fn show(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// send(sink, reduce(map(get a), map(get b))), granted `capabilities` (TOML lines).
fn wordcount_job(dir: &Path, http_port: u16, sink_port: u16, capabilities: &str) -> std::path::PathBuf {
    let wordcount = env!("CARGO_BIN_FILE_CAIRN_TASKS_wordcount");
    let map = |path: &str| {
        format!(
            r#"{{ task = "{wordcount}", args = [{{ text = "map" }}, {{ http_get = "http://10.0.2.2:{http_port}{path}" }}] }}"#
        )
    };
    let job = format!(
        "[capabilities]\n{capabilities}\n\n[root]\ntcp_send = \"10.0.2.2:{sink_port}\"\ndata = {{ task = \"{wordcount}\", args = [{{ text = \"reduce\" }}, {}, {}] }}\n",
        map(PAGES[0].0),
        map(PAGES[1].0)
    );
    let path = dir.join(format!("job-{}.toml", capabilities.len()));
    std::fs::write(&path, job).unwrap();
    path
}

#[test]
fn a_job_fetches_counts_sends_once_and_replays_without_its_upstream_here_and_elsewhere() {
    let requests = Arc::new(Mutex::new(Vec::new()));
    let received = Arc::new(Mutex::new(Vec::new()));
    let mut http = http_server(requests.clone());
    let mut out = sink(received.clone());
    let dir = tempfile::tempdir().unwrap();
    let caps = format!("http_get = [\"10.0.2.2:{}\"]\ntcp_send = [\"10.0.2.2:{}\"]", http.port, out.port);
    let job_file = wordcount_job(dir.path(), http.port, out.port, &caps);
    let bundle = dir.path().join("job.bundle");

    let (_node, address) = serving_node(NodeConfig::default());
    let submitted = cairn(&[
        "submit",
        "--node",
        &address,
        job_file.to_str().unwrap(),
        "--export",
        bundle.to_str().unwrap(),
    ]);
    assert_eq!(submitted.status.code(), Some(0), "{}", show(&submitted));
    let expected = word_counts(&[PAGES[0].1, PAGES[1].1]);
    let result = field(&submitted, "result");
    assert_eq!(result, Handle::blob(expected.as_bytes()).to_string(), "{}", show(&submitted));
    assert_eq!(
        *received.lock().unwrap(),
        [expected.as_bytes().to_vec()],
        "the summary went out exactly once"
    );
    assert_eq!(requests.lock().unwrap().len(), 2);
    let job = field(&submitted, "job");
    // The journal's times are wall-clock times from the node's RTC (QEMU gives it the host's
    // time): within a minute of the host's clock.
    let journal_handle: Handle = field(&submitted, "journal").parse().unwrap();
    let journal =
        cairn_tools::client::Client::connect(&address).unwrap().get(journal_handle, |_, _| {}).unwrap();
    let journal = cairn_io::Journal::decode(&journal).unwrap();
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    assert_eq!(journal.entries().len(), 3);
    for entry in journal.entries() {
        assert!(entry.at_ms.abs_diff(now_ms) < 60_000, "journal time {} vs host {now_ms}", entry.at_ms);
    }
    // `journal export` writes the same bundle as `submit --export`.
    let exported = dir.path().join("exported.bundle");
    let export = cairn(&[
        "journal",
        "export",
        "--node",
        &address,
        &field(&submitted, "journal"),
        "-o",
        exported.to_str().unwrap(),
    ]);
    assert_eq!(export.status.code(), Some(0), "{}", show(&export));
    assert!(std::fs::read(&exported).unwrap() == std::fs::read(&bundle).unwrap());

    // Replay with the upstream gone: same result, nothing fetched, nothing sent.
    http.stop();
    let replayed = cairn(&["replay", "--node", &address, &job]);
    assert_eq!(replayed.status.code(), Some(0), "{}", show(&replayed));
    assert_eq!(field(&replayed, "result"), result);
    assert!(String::from_utf8_lossy(&replayed.stdout).contains("replay: identical"));
    assert_eq!(received.lock().unwrap().len(), 1, "a replay sends nothing");
    let stats = cairn(&["stats", "--node", &address]);
    assert!(String::from_utf8_lossy(&stats.stdout).contains("jobs_replayed=1"), "{}", show(&stats));

    // A job submitted again with the upstream down fails, naming the request it could not make.
    let again = cairn(&["submit", "--node", &address, job_file.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1), "{}", show(&again));
    assert!(String::from_utf8_lossy(&again.stderr).contains("connection refused"), "{}", show(&again));

    // Another node: it has never seen the job. Import the journal, replay: identical.
    let (_other, other) = serving_node(NodeConfig::default());
    let unknown = cairn(&["replay", "--node", &other, &job]);
    assert_ne!(unknown.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no journal of job"), "{}", show(&unknown));
    let imported = cairn(&["journal", "import", "--node", &other, bundle.to_str().unwrap()]);
    assert_eq!(imported.status.code(), Some(0), "{}", show(&imported));
    let elsewhere = cairn(&["replay", "--node", &other, &job]);
    assert_eq!(elsewhere.status.code(), Some(0), "{}", show(&elsewhere));
    assert_eq!(field(&elsewhere, "result"), result);
    assert_eq!(received.lock().unwrap().len(), 1);
    out.stop();
}

#[test]
fn io_the_manifest_does_not_grant_is_refused_naming_the_capability() {
    let requests = Arc::new(Mutex::new(Vec::new()));
    let received = Arc::new(Mutex::new(Vec::new()));
    let mut http = http_server(requests.clone());
    let mut out = sink(received.clone());
    let dir = tempfile::tempdir().unwrap();
    let (_node, address) = serving_node(NodeConfig::default());

    // The pages may be fetched, but the summary may not be sent.
    let job_file =
        wordcount_job(dir.path(), http.port, out.port, &format!("http_get = [\"10.0.2.2:{}\"]", http.port));
    let refused = cairn(&["submit", "--node", &address, job_file.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1), "{}", show(&refused));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("missing capability")
            && stderr.contains(&format!("`tcp.send 10.0.2.2:{}`", out.port)),
        "{}",
        show(&refused)
    );

    // A hostile task makes its own manifest and job tree granting the send, and returns the
    // request: a task's objects are only data, so it is refused just the same.
    let forge = dir.path().join("forge.toml");
    std::fs::write(
        &forge,
        format!(
            "[capabilities]\nhttp_get = [\"10.0.2.2:{}\"]\n[root]\ntask = \"{}\"\nargs = [{{ text = \"forge-io\" }}, {{ text = \"10.0.2.2:{}\" }}]\n",
            http.port,
            env!("CARGO_BIN_FILE_CAIRN_TASKS_hostile"),
            out.port
        ),
    )
    .unwrap();
    let forged = cairn(&["submit", "--node", &address, forge.to_str().unwrap()]);
    assert_eq!(forged.status.code(), Some(1), "{}", show(&forged));
    let stderr = String::from_utf8_lossy(&forged.stderr);
    assert!(stderr.contains("missing capability") && stderr.contains("tcp.send"), "{}", show(&forged));

    // Outside a job (a plain EVAL) there is no IO at all, even for a well-formed request.
    let mut client = cairn_tools::client::Client::connect(&address).unwrap();
    let endpoint = format!("10.0.2.2:{}", out.port).into_bytes();
    let data = b"sent by a plain evaluation, which may not send anything".to_vec();
    let (endpoint_h, data_h) = (Handle::blob(&endpoint), Handle::blob(&data));
    let thunk = cairn_object::thunk::encode(
        cairn_object::io::limits(),
        cairn_object::io::Effect::TcpSend.procedure(),
        &[endpoint_h, data_h],
    )
    .unwrap();
    let thunk_h = cairn_object::store::name(cairn_object::Kind::Thunk, &thunk).unwrap();
    client.upload_missing(&[(endpoint_h, endpoint), (data_h, data), (thunk_h, thunk)]).unwrap();
    let err = client.eval(thunk_h).expect_err("refused").to_string();
    assert!(err.contains("missing capability") && err.contains("only for a job"), "{err}");

    assert!(received.lock().unwrap().is_empty(), "nothing reached the sink");
    assert!(
        String::from_utf8_lossy(&cairn(&["stats", "--node", &address]).stdout).contains("jobs_submitted=2")
    );
    http.stop();
    out.stop();
}
