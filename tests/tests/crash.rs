//! Crash tests of the store on a disk (docs/STORE.md, "Crash tests"): a node is killed at
//! random moments while clients stream puts and evaluations to it, booted again on the same
//! disk, and everything it acknowledged must be there: every object (`HAVE`, and `GET` byte for
//! byte), every evaluation (a memo hit with the same result), and nothing wrong ever served.
//!
//! - `sigkill_...`: QEMU killed with SIGKILL, on a raw file disk (the host keeps every write
//!   QEMU made: this tests the node's own ordering of writes, commits and answers).
//! - `power_cut_...`: the disk is served by the harness's NBD server (`cairn_tests::nbd`), which
//!   loses, at the cut, the writes not yet flushed: all of them, or a seeded random subset of
//!   their sectors; then QEMU is killed.
//!
//! `CAIRN_CRASH_CUTS` cuts of each kind (3 by default, for CI); `CAIRN_CRASH_SEED` repeats a
//! run's choices (each test prints its seed; timing still varies). The benchmark:
//!
//! ```text
//! CAIRN_CRASH_CUTS=100 cargo test --release -p cairn-tests --test crash -- --nocapture
//! ```

use cairn_tests::stat;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_bootcfg::{LogLevel, Mode, NodeConfig};
use cairn_object::{Handle, Kind, Limits};
use cairn_tests::nbd::{Cut, Moment, NbdServer, SplitMix};
use cairn_tests::{BOOT_TIMEOUT, Node, READY_LINE, free_port};
use cairn_tools::client::{Client, WrongObject};
use cairn_tools::qemu::{NbdDisk, NodeOptions, StoreDisk};

/// The store's disk. Big enough for two checkpoints (one per 64 MiB of log) before it is
/// replaced by a blank one.
const DISK_SIZE: u64 = 256 << 20;
/// Once the log is this long, everything on the disk is checked and the next cut starts on a
/// blank disk.
const FRESH_DISK_AFTER: u64 = 160 << 20;
/// New objects larger than 64 KiB stop once a session has put this much (the disk must not fill).
const SESSION_BYTES: u64 = 40 << 20;
/// Objects (and evaluations) acknowledged earlier than the last session, checked again at each
/// boot; all of them are checked before a disk is replaced and at the end.
const RECHECK_SAMPLE: usize = 12;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Crash {
    Sigkill,
    PowerCut,
}

impl Crash {
    fn name(self) -> &'static str {
        match self {
            Crash::Sigkill => "sigkill",
            Crash::PowerCut => "power-cut",
        }
    }
}

#[test]
fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    crash_test(Crash::Sigkill);
}

#[test]
fn power_cut_loses_nothing_acknowledged() {
    crash_test(Crash::PowerCut);
}

fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(text.trim().parse().unwrap_or_else(|_| panic!("{name}={text} is not a number")))
}

/// An object's bytes: made from a seed, or kept (thunks and task programs).
#[derive(Clone)]
enum Source {
    Made { seed: u64, len: usize },
    Kept(Arc<Vec<u8>>),
}

impl Source {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Source::Made { seed, len } => {
                let mut rng = SplitMix::new(*seed);
                let mut bytes: Vec<u8> = Vec::with_capacity(len + 8);
                while bytes.len() < *len {
                    bytes.extend_from_slice(&rng.next_u64().to_le_bytes());
                }
                bytes.truncate(*len);
                bytes
            }
            Source::Kept(bytes) => bytes.to_vec(),
        }
    }

    fn len(&self) -> u64 {
        match self {
            Source::Made { len, .. } => *len as u64,
            Source::Kept(bytes) => bytes.len() as u64,
        }
    }
}

/// What the disk's node acknowledged, and in which session.
#[derive(Default)]
struct Known {
    objects: BTreeMap<Handle, (Source, usize)>,
    /// Thunk → (result, session).
    evals: BTreeMap<Handle, (Handle, usize)>,
    /// The task programs (`add`, `mandelbrot`) are on this disk.
    programs: Option<Programs>,
    /// The last lines about its disk the node of the last session printed.
    last_words: Vec<String>,
}

#[derive(Clone, Copy)]
struct Programs {
    add: Handle,
    mandelbrot: Handle,
}

/// Over all cuts of a test.
#[derive(Default)]
struct Tally {
    objects: u64,
    bytes: u64,
    lost: u64,
    wrong: u64,
    evals: u64,
    memo_lost: u64,
    /// Flushes the NBD server saw (power cuts).
    flushes: u64,
    problems: Vec<String>,
}

/// What the clients of one session saw: what was acknowledged, and anything wrong.
#[derive(Default)]
struct Session {
    /// Set just before the crash: errors after it are the crash's.
    crashed: AtomicBool,
    objects: Mutex<Vec<(Handle, Source)>>,
    evals: Mutex<Vec<(Handle, Handle)>>,
    programs: Mutex<Option<Programs>>,
    wrong: Mutex<Vec<String>>,
    failures: Mutex<Vec<String>>,
}

impl Session {
    /// Files the error that stops a client: wrong bytes are always wrong; anything else is the
    /// crash's, or a failure if it came before the crash.
    fn error(&self, what: &str, e: &anyhow::Error) {
        if is_wrong(e) {
            self.wrong.lock().unwrap().push(format!("{what}: {e:#}"));
        } else if !self.crashed.load(Ordering::SeqCst) {
            self.failures.lock().unwrap().push(format!("{what} before the crash: {e:#}"));
        }
    }
}

/// A client error that means the node served bytes that are not what was asked for.
fn is_wrong(e: &anyhow::Error) -> bool {
    e.downcast_ref::<WrongObject>().is_some() || format!("{e:#}").contains("invalid object")
}

/// The disk the node boots on, across cuts.
enum Disk {
    File { _dir: tempfile::TempDir, path: std::path::PathBuf },
    Nbd(NbdServer),
}

impl Disk {
    fn blank(crash: Crash) -> Disk {
        match crash {
            Crash::Sigkill => {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("store.raw");
                Disk::File { _dir: dir, path }
            }
            Crash::PowerCut => Disk::Nbd(NbdServer::blank(DISK_SIZE).unwrap()),
        }
    }

    fn options(&self) -> NodeOptions {
        let config = NodeConfig { mode: Mode::Serve, log_level: LogLevel::Info, ..NodeConfig::default() };
        match self {
            Disk::File { path, .. } => NodeOptions {
                config,
                disk: Some(StoreDisk { path: path.clone(), size: DISK_SIZE }),
                ..NodeOptions::default()
            },
            Disk::Nbd(server) => NodeOptions {
                config,
                nbd_disk: Some(NbdDisk { port: server.port() }),
                ..NodeOptions::default()
            },
        }
    }
}

/// Boots a serving node on `disk`; it must find (or make) its store. Returns the node, its API
/// address and the node's line about its store.
fn boot(disk: &Disk) -> (Node, String, String) {
    let port = free_port();
    let mut node = Node::boot_with(NodeOptions { api_port: Some(port), ..disk.options() });
    node.expect(READY_LINE, BOOT_TIMEOUT);
    // A disk the node cannot use (one without FLUSH among them) or a store it cannot recover
    // stops its API, and it says so here.
    let line = node.expect(r"^cairn: (store disk .*|api off: .*)$", BOOT_TIMEOUT)[1].to_string();
    if line.starts_with("api off") {
        node.fail("the node did not take its store disk");
    }
    node.expect(r"^cairn: net ip=10\.0\.2\.15/24 ", BOOT_TIMEOUT);
    (node, format!("127.0.0.1:{port}"), line)
}

fn crash_test(crash: Crash) {
    let cuts = env_u64("CAIRN_CRASH_CUTS").unwrap_or(3);
    let seed = env_u64("CAIRN_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
            % 1_000_000_007
    });
    println!("crash: {} seed {seed} (CAIRN_CRASH_SEED={seed} repeats its choices)", crash.name());
    let started = Instant::now();
    let mut rng = SplitMix::new(seed ^ crash as u64);
    let mut tally = Tally::default();
    let mut disk = Disk::blank(crash);
    let mut known = Known::default();
    let mut session = 0;
    for cut in 0..=cuts {
        let (mut node, mut address, line) = boot(&disk);
        if session > 0 {
            let stats = Client::connect(&address).unwrap().stats().unwrap();
            let replace = stat(&stats, "disk_log_bytes") > FRESH_DISK_AFTER;
            let all = replace || cut == cuts;
            verify(&node, &address, &mut known, session, all, &mut rng, &mut tally);
            println!("crash: {} boot {cut}: {line}", crash.name());
            if cut == cuts {
                break;
            }
            if replace {
                println!(
                    "crash: {}: a blank disk from cut {} on (the last one's {} objects all checked)",
                    crash.name(),
                    cut + 1,
                    known.objects.len()
                );
                node.kill();
                disk = Disk::blank(crash);
                known = Known::default();
                (node, address, _) = boot(&disk);
            }
        }
        session += 1;
        disk = run_session(crash, node, disk, &address, session, &mut known, &mut rng, &mut tally, cut, cuts);
    }
    println!(
        "crash: {} {cuts} cuts, {} objects acknowledged ({} MiB), {} lost, {} wrong; {} evaluations, {} memo entries lost ({:.0?}, seed {seed})",
        crash.name(),
        tally.objects,
        tally.bytes >> 20,
        tally.lost,
        tally.wrong,
        tally.evals,
        tally.memo_lost,
        started.elapsed(),
    );
    if crash == Crash::PowerCut && tally.objects > 0 {
        assert!(tally.flushes > 0, "objects were acknowledged, yet the node never flushed its NBD disk");
    }
    assert!(
        tally.problems.is_empty() && tally.lost == 0 && tally.wrong == 0 && tally.memo_lost == 0,
        "{} crash test failed (CAIRN_CRASH_SEED={seed}):\n{}",
        crash.name(),
        tally.problems.join("\n")
    );
}

/// Streams puts and evaluations to `node` from two clients, crashes it at a seeded moment,
/// and records what was acknowledged. Returns the disk to boot on next.
#[allow(clippy::too_many_arguments)]
fn run_session(
    crash: Crash,
    mut node: Node,
    disk: Disk,
    address: &str,
    session: usize,
    known: &mut Known,
    rng: &mut SplitMix,
    tally: &mut Tally,
    cut: u64,
    cuts: u64,
) -> Disk {
    let state = Arc::new(Session::default());
    let kill_after = Duration::from_millis(rng.below(300..3000));
    let (put_seed, eval_seed, cut_seed) = (rng.next_u64(), rng.next_u64(), rng.next_u64());
    // The objects a session may read back or put again.
    let pool: Vec<(Handle, Source)> = known.objects.iter().map(|(h, (s, _))| (*h, s.clone())).collect();
    let programs = known.programs;
    let threads = [
        {
            let (state, address) = (state.clone(), address.to_string());
            std::thread::spawn(move || put_stream(&address, put_seed, pool, &state))
        },
        {
            let (state, address) = (state.clone(), address.to_string());
            std::thread::spawn(move || eval_stream(&address, eval_seed, programs, &state))
        },
    ];
    std::thread::sleep(kill_after);
    state.crashed.store(true, Ordering::SeqCst);
    let (disk, how) = match disk {
        Disk::Nbd(server) => {
            let how = if cut % 2 == 0 { Cut::DropAll } else { Cut::KeepRandom { seed: cut_seed } };
            let moment = [Moment::Now, Moment::BeforeFlush, Moment::AfterWrite][rng.below(0..3) as usize];
            // Half the time the node lives on a little with its disk gone (its writes and
            // flushes fail): it must not acknowledge anything then either.
            let gap = Duration::from_millis(if rng.below(0..2) == 0 { 0 } else { rng.below(1..200) });
            let (image, report) = server.cut_at(moment, how, Duration::from_secs(2));
            std::thread::sleep(gap);
            node.kill();
            let stats = report.stats;
            tally.flushes += stats.flushes;
            let kept = match how {
                Cut::DropAll => format!("{} unflushed sectors dropped", report.unflushed_sectors),
                Cut::KeepRandom { seed } => format!(
                    "{} of {} unflushed sectors kept (cut seed {seed})",
                    report.kept_sectors, report.unflushed_sectors
                ),
            };
            let missed = if report.moment_missed { " (not seen: cut at once)" } else { "" };
            let how = format!(
                "power cut after {kill_after:?} at {moment:?}{missed}, SIGKILL {gap:?} later: {kept}; {} writes, {} flushes",
                stats.writes, stats.flushes
            );
            (Disk::Nbd(NbdServer::start(image).unwrap()), how)
        }
        disk @ Disk::File { .. } => {
            // SIGKILL (std's Child::kill): nothing of the node runs after it.
            node.kill();
            (disk, format!("SIGKILL after {kill_after:?}"))
        }
    };
    for thread in threads {
        thread.join().expect("a client thread panicked");
    }
    // What the node said about its disk, for a problem found at the next boot.
    node.finish(Duration::from_secs(5));
    let mut said: Vec<String> =
        node.transcript().iter().filter(|l| l.contains("store") || l.contains("disk")).cloned().collect();
    known.last_words = said.split_off(said.len().saturating_sub(5));
    let objects = std::mem::take(&mut *state.objects.lock().unwrap());
    let evals = std::mem::take(&mut *state.evals.lock().unwrap());
    let (mut new_objects, mut new_bytes) = (0, 0);
    for (handle, source) in objects {
        if let std::collections::btree_map::Entry::Vacant(entry) = known.objects.entry(handle) {
            new_objects += 1;
            new_bytes += source.len();
            entry.insert((source, session));
        }
    }
    let mut new_evals = 0;
    for (thunk, result) in evals {
        if known.evals.insert(thunk, (result, session)).is_none() {
            new_evals += 1;
        }
    }
    if known.programs.is_none() {
        known.programs = *state.programs.lock().unwrap();
    }
    tally.objects += new_objects;
    tally.bytes += new_bytes;
    tally.evals += new_evals;
    let wrong = std::mem::take(&mut *state.wrong.lock().unwrap());
    tally.wrong += wrong.len() as u64;
    tally.problems.extend(wrong.into_iter().map(|w| format!("cut {cut}: wrong bytes served: {w}")));
    let failures = std::mem::take(&mut *state.failures.lock().unwrap());
    tally.problems.extend(failures.into_iter().map(|f| format!("cut {cut}: {f}")));
    println!(
        "crash: {} cut {}/{cuts}: {how}; {new_objects} objects ({} KiB), {new_evals} evaluations acknowledged",
        crash.name(),
        cut + 1,
        new_bytes >> 10,
    );
    disk
}

/// The size of a new object: tens of bytes to a few MiB, most of them small.
fn object_len(rng: &mut SplitMix, big_allowed: bool) -> usize {
    let len = match rng.below(0..100) {
        0..50 => rng.below(33..2048),
        50..80 => rng.below(2048..256 << 10),
        80..95 => rng.below(256 << 10..1 << 20),
        _ => rng.below(1 << 20..4 << 20),
    };
    (if big_allowed { len } else { len.min(64 << 10) }) as usize
}

/// Puts new objects, puts acknowledged ones again and reads acknowledged ones back (which must
/// be byte-identical), until the node is gone.
fn put_stream(address: &str, seed: u64, mut pool: Vec<(Handle, Source)>, state: &Session) {
    let mut rng = SplitMix::new(seed);
    let mut client = match Client::connect(address) {
        Ok(client) => client,
        Err(e) => {
            state.error("connect", &e);
            return;
        }
    };
    let mut sent = 0;
    loop {
        let choice = rng.below(0..100);
        if choice < 10 && !pool.is_empty() {
            let (handle, source) = &pool[rng.below(0..pool.len() as u64) as usize];
            match client.get(*handle, |_, _| {}) {
                Ok(bytes) if bytes == source.bytes() => {}
                Ok(_) => state.wrong.lock().unwrap().push(format!("GET {handle}: other bytes than put")),
                Err(e) => {
                    state.error(&format!("GET {handle}"), &e);
                    return;
                }
            }
        } else if choice < 15 && !pool.is_empty() {
            let (handle, source) = &pool[rng.below(0..pool.len() as u64) as usize];
            if let Err(e) = client.put(*handle, &source.bytes(), |_| {}) {
                state.error(&format!("PUT {handle} again"), &e);
                return;
            }
        } else {
            let source =
                Source::Made { seed: rng.next_u64(), len: object_len(&mut rng, sent < SESSION_BYTES) };
            let bytes = source.bytes();
            let handle = Handle::blob(&bytes);
            if let Err(e) = client.put(handle, &bytes, |_| {}) {
                state.error(&format!("PUT {handle} ({} bytes)", bytes.len()), &e);
                return;
            }
            sent += bytes.len() as u64;
            state.objects.lock().unwrap().push((handle, source.clone()));
            pool.push((handle, source));
        }
    }
}

/// Puts a thunk (recorded as an acknowledged object).
fn put_thunk(
    client: &mut Client,
    memory: u64,
    procedure: Handle,
    args: &[Handle],
    state: &Session,
) -> anyhow::Result<Handle> {
    let bytes = cairn_object::thunk::encode(Limits::new(memory).unwrap(), procedure, args).unwrap();
    let thunk = cairn_object::store::name(Kind::Thunk, &bytes).unwrap();
    client.put(thunk, &bytes, |_| {})?;
    state.objects.lock().unwrap().push((thunk, Source::Kept(Arc::new(bytes))));
    Ok(thunk)
}

/// Evaluates `add` on u64 blobs (some through a nested thunk) and Mandelbrot tiles (a value
/// the evaluation makes and the disk must keep), until the node is gone.
fn eval_stream(address: &str, seed: u64, programs: Option<Programs>, state: &Session) {
    let mut rng = SplitMix::new(seed);
    let run = |rng: &mut SplitMix| -> anyhow::Result<()> {
        let mut client = Client::connect(address)?;
        let programs = match programs {
            Some(programs) => programs,
            None => {
                let mut put = |path: &str| -> anyhow::Result<Handle> {
                    let bytes = std::fs::read(path).unwrap();
                    let handle = Handle::blob(&bytes);
                    client.put(handle, &bytes, |_| {})?;
                    state.objects.lock().unwrap().push((handle, Source::Kept(Arc::new(bytes))));
                    Ok(handle)
                };
                let programs = Programs {
                    add: put(env!("CARGO_BIN_FILE_CAIRN_TASKS_add"))?,
                    mandelbrot: put(env!("CARGO_BIN_FILE_CAIRN_TASKS_mandelbrot"))?,
                };
                *state.programs.lock().unwrap() = Some(programs);
                programs
            }
        };
        let u64_blob = |n: u64| Handle::blob(&n.to_le_bytes());
        loop {
            let (thunk, expected) = match rng.below(0..3) {
                0 => {
                    let (a, b) = (rng.below(0..1 << 40), rng.below(0..1 << 40));
                    let thunk =
                        put_thunk(&mut client, 1 << 20, programs.add, &[u64_blob(a), u64_blob(b)], state)?;
                    (thunk, Some(u64_blob(a + b)))
                }
                1 => {
                    let (a, b, c) = (rng.below(0..1 << 40), rng.below(0..1 << 40), rng.below(0..1 << 40));
                    let inner =
                        put_thunk(&mut client, 1 << 20, programs.add, &[u64_blob(a), u64_blob(b)], state)?;
                    let thunk = put_thunk(&mut client, 1 << 20, programs.add, &[inner, u64_blob(c)], state)?;
                    (thunk, Some(u64_blob(a + b + c)))
                }
                _ => {
                    let (tw, th) = (rng.below(8..48) as u32, rng.below(8..48) as u32);
                    let (x, y) =
                        (rng.below(0..(256 - tw) as u64) as u32, rng.below(0..(256 - th) as u64) as u32);
                    let params: Vec<u8> = [256, 256, x, y, tw, th, rng.below(20..200) as u32]
                        .iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect();
                    let args = [Handle::blob(b"tile"), Handle::blob(&params)];
                    (put_thunk(&mut client, 2 << 20, programs.mandelbrot, &args, state)?, None)
                }
            };
            let evaluated = client.eval(thunk)?;
            if expected.is_some_and(|e| e != evaluated.result) {
                state
                    .wrong
                    .lock()
                    .unwrap()
                    .push(format!("EVAL {thunk}: {} is not the sum", evaluated.result));
            }
            state.evals.lock().unwrap().push((thunk, evaluated.result));
        }
    };
    if let Err(e) = run(&mut rng) {
        state.error("evaluation", &e);
    }
}

/// Checks on a freshly booted node what earlier sessions acknowledged: every object present
/// and byte-identical, every evaluation a memo hit with the same result. Those of the last
/// session are all read and evaluated; older ones only a sample, unless `all`.
#[allow(clippy::too_many_arguments)]
fn verify(
    node: &Node,
    address: &str,
    known: &mut Known,
    session: usize,
    all: bool,
    rng: &mut SplitMix,
    tally: &mut Tally,
) {
    let problems = tally.problems.len();
    check(node, address, known, session, all, rng, tally);
    if tally.problems.len() > problems {
        tally.problems.push(format!("the node of session {session} said last: {:?}", known.last_words));
    }
}

#[allow(clippy::too_many_arguments)]
fn check(
    node: &Node,
    address: &str,
    known: &mut Known,
    session: usize,
    all: bool,
    rng: &mut SplitMix,
    tally: &mut Tally,
) {
    let mut client =
        Client::connect(address).unwrap_or_else(|e| node.fail(&format!("no client after a boot: {e:#}")));
    let handles: Vec<Handle> = known.objects.keys().copied().collect();
    let mut missing = Vec::new();
    for chunk in handles.chunks(1000) {
        missing.extend(client.missing(chunk).unwrap_or_else(|e| node.fail(&format!("HAVE: {e:#}"))));
    }
    for handle in &missing {
        let (source, acknowledged) = known.objects.remove(handle).unwrap();
        tally.lost += 1;
        tally.problems.push(format!(
            "lost: {handle} ({} bytes, acknowledged in session {acknowledged}, checked after session {session})",
            source.len()
        ));
    }
    let older: Vec<Handle> =
        known.objects.iter().filter(|(_, (_, s))| *s != session).map(|(h, _)| *h).collect();
    let sample: Vec<Handle> = (0..RECHECK_SAMPLE.min(older.len()))
        .map(|_| older[rng.below(0..older.len() as u64) as usize])
        .collect();
    let check: Vec<Handle> = known
        .objects
        .iter()
        .filter(|(h, (_, s))| all || *s == session || sample.contains(h))
        .map(|(h, _)| *h)
        .collect();
    for handle in check {
        let (source, acknowledged) = known.objects[&handle].clone();
        match client.get(handle, |_, _| {}) {
            Ok(bytes) if bytes == source.bytes() => {}
            Ok(_) => {
                tally.wrong += 1;
                tally
                    .problems
                    .push(format!("wrong bytes: GET {handle} (acknowledged in session {acknowledged})"));
            }
            Err(e) if is_wrong(&e) => {
                tally.wrong += 1;
                tally.problems.push(format!("wrong bytes: GET {handle}: {e:#}"));
            }
            Err(e) => {
                known.objects.remove(&handle);
                tally.lost += 1;
                tally.problems.push(format!(
                    "lost: GET {handle} (acknowledged in session {acknowledged}, present by HAVE): {e:#}"
                ));
                client = Client::connect(address).unwrap_or_else(|e| node.fail(&format!("{e:#}")));
            }
        }
    }
    let older: Vec<Handle> =
        known.evals.iter().filter(|(_, (_, s))| *s != session).map(|(h, _)| *h).collect();
    let sample: Vec<Handle> = (0..RECHECK_SAMPLE.min(older.len()))
        .map(|_| older[rng.below(0..older.len() as u64) as usize])
        .collect();
    let check: Vec<(Handle, Handle, usize)> = known
        .evals
        .iter()
        .filter(|(t, (_, s))| all || *s == session || sample.contains(t))
        .map(|(t, (r, s))| (*t, *r, *s))
        .collect();
    for (thunk, result, acknowledged) in check {
        match client.eval(thunk) {
            Ok(again) if again.result != result => {
                tally.wrong += 1;
                tally.problems.push(format!(
                    "wrong result: EVAL {thunk} gave {} after the crash, {result} before (session {acknowledged})",
                    again.result
                ));
            }
            Ok(again) if again.tasks_run != 0 || again.memo_hits == 0 => {
                known.evals.remove(&thunk);
                tally.memo_lost += 1;
                tally.problems.push(format!(
                    "memo entry lost: EVAL {thunk} (acknowledged in session {acknowledged}) ran {} tasks, {} memo hits",
                    again.tasks_run, again.memo_hits
                ));
            }
            Ok(_) => {}
            Err(e) => {
                known.evals.remove(&thunk);
                tally.memo_lost += 1;
                tally.problems.push(format!("memo entry lost: EVAL {thunk} (session {acknowledged}): {e:#}"));
                client = Client::connect(address).unwrap_or_else(|e| node.fail(&format!("{e:#}")));
            }
        }
        // A value the evaluation made is an object the disk keeps too.
        if !result.is_literal() {
            match client.get(result, |_, _| {}) {
                Ok(_) => {}
                Err(e) if is_wrong(&e) => {
                    tally.wrong += 1;
                    tally.problems.push(format!("wrong bytes: GET {result}, the value of {thunk}: {e:#}"));
                }
                Err(e) => {
                    tally.lost += 1;
                    tally.problems.push(format!("lost: GET {result}, the value of {thunk}: {e:#}"));
                    client = Client::connect(address).unwrap_or_else(|e| node.fail(&format!("{e:#}")));
                }
            }
        }
    }
}
