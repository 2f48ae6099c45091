//! Jobs coordinated by a node of a three-node cluster (docs/SCHEDULER.md, "Nodes coordinate"):
//! the same results as one node, memos first, placement by locality, verification, a liar
//! caught; and the coordinating node killed mid-job, the job handed on to another.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use cairn_bootcfg::NodeConfig;
use common::cluster::{Cluster, cairn, mandelbrot_job, moved_bytes, result_of, show, wordcount_job};

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_node_coordinates_a_job_across_its_peers() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), &[]);
    let job = wordcount_job(dir.path(), 6);
    let (_single, single_address) = cairn_tests::serving_node(NodeConfig::default());
    let single =
        cairn().args(["eval", "--node", &single_address, "--job", job.to_str().unwrap()]).output().unwrap();
    assert_eq!(single.status.code(), Some(0), "{}", show(&single));

    // Handed to node 1, the chunks spread: every node runs maps, each where its chunk is.
    let spread = cluster.eval(&job, &["--spread", "--via", "1"]);
    assert_eq!(spread.status.code(), Some(0), "{}", show(&spread));
    assert_eq!(result_of(&spread), result_of(&single), "three nodes and one give the same handle");
    let text = stderr(&spread);
    assert!(
        text.contains("7 tasks on 3 nodes") && text.contains("coordinated by node 1"),
        "{}",
        show(&spread)
    );
    for node in 0..3 {
        assert!(text.contains(&format!("node {node}: ")), "node {node} ran tasks: {}", show(&spread));
    }
    assert!(
        moved_bytes(&spread) < 32 * 1024,
        "locality moved {} bytes:\n{}",
        moved_bytes(&spread),
        show(&spread)
    );
    // The word counts themselves, as the result's bytes.
    assert!(String::from_utf8_lossy(&spread.stdout).contains("cairn"), "{}", show(&spread));

    // A trace of a fresh job across the cluster: one process per node, tasks on every node's
    // CPUs, the coordination on node 0, all in the format's rules (docs/TRACES.md).
    let image = mandelbrot_job(dir.path(), 6);
    let trace_file = dir.path().join("trace.json");
    let traced = cairn()
        .args(["trace", image.to_str().unwrap(), "--cluster", cluster.state_path.to_str().unwrap(), "-o"])
        .arg(&trace_file)
        .output()
        .unwrap();
    assert_eq!(traced.status.code(), Some(0), "{}", show(&traced));
    let trace: serde_json::Value = serde_json::from_slice(&std::fs::read(&trace_file).unwrap()).unwrap();
    cairn_tools::trace::validate(&trace).unwrap();
    let events = trace["traceEvents"].as_array().unwrap();
    let processes: Vec<&str> = events
        .iter()
        .filter(|e| e["name"] == "process_name")
        .map(|e| e["args"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(processes, ["node 0 (10.1.0.1)", "node 1 (10.1.0.2)", "node 2 (10.1.0.3)"]);
    for pid in 0..3 {
        assert!(
            events.iter().any(|e| e["pid"] == pid && e["name"] == "task"),
            "node {pid} ran tasks: {}",
            show(&traced)
        );
    }
    let coordinated: Vec<&serde_json::Value> = events.iter().filter(|e| e["name"] == "coordinate").collect();
    assert_eq!(coordinated.len(), 1, "{trace}");
    assert_eq!(coordinated[0]["pid"], 0);
    assert_eq!(coordinated[0]["args"]["tasks"], 25, "24 tiles and the image");
    // Every task span lies within the coordination (the clocks aligned to within a round trip).
    let (start, end) = (
        coordinated[0]["ts"].as_i64().unwrap(),
        coordinated[0]["ts"].as_i64().unwrap() + coordinated[0]["dur"].as_i64().unwrap(),
    );
    for task in events.iter().filter(|e| e["name"] == "task") {
        let ts = task["ts"].as_i64().unwrap();
        assert!(ts >= start - 20_000 && ts <= end + 20_000, "task at {ts} outside {start}..{end}");
    }

    // Again, through node 0: the memos answer every task.
    let again = cluster.eval(&job, &[]);
    assert_eq!(result_of(&again), result_of(&single));
    assert!(stderr(&again).contains("(none run; 7 from memos)"), "{}", show(&again));

    // Verification: each task on two nodes, memos ignored.
    let verified = cluster.eval(&job, &["--verify", "--via", "2"]);
    assert_eq!(verified.status.code(), Some(0), "{}", show(&verified));
    assert!(
        String::from_utf8_lossy(&verified.stdout)
            .contains("verify: every task gave the same result on two nodes"),
        "{}",
        show(&verified)
    );
    assert_eq!(result_of(&verified), result_of(&single));
    // A task that reads RDRAND disagrees with itself, and the coordinator says so.
    let rdrand = dir.path().join("rdrand.toml");
    std::fs::write(
        &rdrand,
        format!(
            "[root]\ntask = \"{}\"\nargs = [{{ text = \"rdrand\" }}]\n",
            env!("CARGO_BIN_FILE_CAIRN_TASKS_hostile")
        ),
    )
    .unwrap();
    let caught = cluster.eval(&rdrand, &["--verify"]);
    assert_eq!(caught.status.code(), Some(1), "{}", show(&caught));
    let line = String::from_utf8_lossy(&caught.stdout)
        .lines()
        .find(|l| l.starts_with("verify: MISMATCH thunk:"))
        .map(String::from)
        .unwrap_or_else(|| panic!("{}", show(&caught)));
    assert_eq!(line.matches("blob:").count(), 2, "both results are named: {line}");
    assert_eq!(line.matches("node ").count(), 2, "both nodes are named: {line}");

    // A task that fails is the job's failure, reported as the coordinator saw it; the job is
    // not handed on to another node.
    let failing = dir.path().join("fail.toml");
    std::fs::write(
        &failing,
        format!(
            "[root]\ntask = \"{}\"\nargs = [{{ text = \"hlt\" }}]\n",
            env!("CARGO_BIN_FILE_CAIRN_TASKS_hostile")
        ),
    )
    .unwrap();
    let failed = cluster.eval(&failing, &[]);
    assert_eq!(failed.status.code(), Some(2), "{}", show(&failed));
    assert!(stderr(&failed).contains("node 0 coordinated the job"), "{}", show(&failed));
    assert!(!stderr(&failed).contains("handing it on"), "{}", show(&failed));

    // Objects the coordinator lacks are named, not guessed at: the root, or a thunk under it.
    let mut n2 = cluster.client(2);
    let absent = cairn_object::Handle::blob(&[7u8; 100]);
    let err = n2.coordinate(absent, &cairn_sched_options()).unwrap_err().to_string();
    assert!(err.contains(&format!("{absent} is not on this node")), "{err}");
    let limits = cairn_object::Limits::new(1 << 20).unwrap();
    let inner = cairn_object::thunk::encode(limits, absent, &[]).unwrap();
    let inner_h = cairn_object::store::name(cairn_object::Kind::Thunk, &inner).unwrap();
    let outer = cairn_object::thunk::encode(limits, absent, &[inner_h]).unwrap();
    let outer_h = cairn_object::store::name(cairn_object::Kind::Thunk, &outer).unwrap();
    n2.put(outer_h, &outer, |_| {}).unwrap();
    let err = n2.coordinate(outer_h, &cairn_sched_options()).unwrap_err().to_string();
    assert!(err.contains(&format!("{inner_h} is not among the job's objects")), "{err}");
}

fn cairn_sched_options() -> cairn_sched::Options {
    cairn_sched::Options {
        placement: cairn_sched::Placement::Locality,
        verify: false,
        spread: false,
        recall: true,
        seed: 1,
    }
}

#[test]
fn the_coordinator_killed_mid_job_hands_the_job_on_and_memos_make_the_rerun_cheap() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), &[]);
    let job = mandelbrot_job(dir.path(), 8);
    let (_single, single_address) = cairn_tests::serving_node(NodeConfig::default());
    let reference =
        cairn().args(["eval", "--node", &single_address, "--job", job.to_str().unwrap()]).output().unwrap();
    assert_eq!(reference.status.code(), Some(0), "{}", show(&reference));

    let mut child = cairn()
        .args(["eval", "--cluster", cluster.state_path.to_str().unwrap(), "--job", job.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once the peers have run some of its tasks, node 0 (the coordinator) dies.
    let began = Instant::now();
    let ran_on_peers = || -> u64 {
        (1..3)
            .map(|n| {
                let stats = cluster.client(n).stats().unwrap();
                let line =
                    stats.lines().find_map(|l| l.strip_prefix("tasks_run=")).unwrap_or("0").to_string();
                line.parse::<u64>().unwrap()
            })
            .sum()
    };
    while ran_on_peers() < 4 {
        assert!(began.elapsed() < Duration::from_secs(120), "the peers ran nothing");
        assert!(child.try_wait().unwrap().is_none(), "the job ended before the coordinator was killed");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: the pid of a QEMU this test's cluster started.
    unsafe { libc::kill(cluster.state.nodes[0].qemu_pid as libc::pid_t, libc::SIGKILL) };
    let mut transcript = String::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        transcript.push_str(&line.unwrap());
        transcript.push('\n');
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{transcript}");
    assert!(transcript.contains("node 0 did not finish the job"), "{transcript}");
    assert!(transcript.contains("coordinated by node 1 (after node 0 failed)"), "{transcript}");
    assert!(transcript.contains("lost node 0"), "the new coordinator found node 0 gone: {transcript}");
    // What the peers finished before is answered by their memos, not run again.
    let memos = transcript
        .split(" from memos)")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no summary: {transcript}"));
    assert!(memos >= 4, "{memos} from memos: {transcript}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.lines().next().unwrap().parse::<cairn_object::Handle>().unwrap(),
        result_of(&reference),
        "{transcript}"
    );
}

/// A job whose root (identity) takes `tiles` Mandelbrot pixels, each on the set's neck (it never
/// escapes) iterated about `iterations` times (each tile its own count, so each its own thunk):
/// tasks that each take a while, all ready at once.
fn slow_tiles_job(dir: &std::path::Path, tiles: u32, iterations: u32) -> std::path::PathBuf {
    let mandelbrot = env!("CARGO_BIN_FILE_CAIRN_TASKS_mandelbrot");
    let identity = env!("CARGO_BIN_FILE_CAIRN_TASKS_identity");
    let args: Vec<String> = (0..tiles)
        .map(|i| {
            format!(
                "{{ task = \"{mandelbrot}\", args = [{{ text = \"tile\" }}, {{ u32s = [1, 1, 0, 0, 1, 1, {}] }}] }}",
                iterations + i
            )
        })
        .collect();
    let job = dir.join("slow-tiles.toml");
    std::fs::write(&job, format!("[root]\ntask = \"{identity}\"\nargs = [{}]\n", args.join(", "))).unwrap();
    job
}

/// How many tasks each node ran, from the summary's `(node 0: N, node 1: M; ...)`.
fn runs_per_node(output: &std::process::Output) -> Vec<usize> {
    let text = stderr(output);
    let line = text.lines().find(|l| l.contains(" tasks on ")).unwrap_or_else(|| panic!("{}", show(output)));
    let within = line.split_once('(').and_then(|(_, r)| r.split_once(';')).map(|(l, _)| l).unwrap_or("");
    within.split(", ").filter_map(|part| part.split_once(": ")?.1.parse().ok()).collect()
}

/// A job's tail (docs/SCHEDULER.md, "The tail"): one long tile and twenty short ones, all
/// ready at once and sent round robin, so that six short ones wait behind the long one. The
/// nodes that finish theirs take those back: the long tile's node runs it and little else,
/// where without the tail's moves every node would run seven tiles.
#[test]
fn short_tasks_queued_behind_a_long_one_move_to_idle_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), &[]);
    let mandelbrot = env!("CARGO_BIN_FILE_CAIRN_TASKS_mandelbrot");
    let identity = env!("CARGO_BIN_FILE_CAIRN_TASKS_identity");
    // Each a pixel on the set's neck (it never escapes): its time is its iterations (the long
    // one about a second under TCG, within the 2 s task budget; a short one, a millisecond).
    let tile = |iterations: u32| {
        format!(
            "{{ task = \"{mandelbrot}\", args = [{{ text = \"tile\" }}, {{ u32s = [1, 1, 0, 0, 1, 1, {iterations}] }}] }}"
        )
    };
    let mut tiles = vec![tile(2_500_000)];
    tiles.extend((0..20).map(|i| tile(1000 + i)));
    let job = dir.path().join("tail.toml");
    std::fs::write(&job, format!("[root]\ntask = \"{identity}\"\nargs = [{}]\n", tiles.join(", "))).unwrap();
    let out = cluster.eval(&job, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let runs = runs_per_node(&out);
    assert_eq!(runs.len(), 3, "{}", show(&out));
    assert_eq!(runs.iter().sum::<usize>(), 22, "every task ran once: {}", show(&out));
    // The long tile's node: the tile, perhaps the root, perhaps one short tile it began first.
    assert!(
        runs.iter().any(|r| *r <= 3),
        "no node was left with the long tile alone: {runs:?}\n{}",
        show(&out)
    );
}

/// A job that runs longer than a link's stall allowance (10 s) after its last quick request
/// (the probe, the seeding, the one memo lookup: every tile is ready at once) loses no peer:
/// a link to a peer that has nothing to do for the job is not a peer that stalled.
#[test]
fn a_long_job_loses_no_peer_to_its_own_idle_links() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), &[]);
    let job = slow_tiles_job(dir.path(), 90, 1_000_000);
    let began = Instant::now();
    let out = cluster.eval(&job, &[]);
    let took = began.elapsed();
    // Verification asks no memo at all: every quick link is idle from the seeding on.
    let began = Instant::now();
    let verified = cluster.eval(&job, &["--verify"]);
    let took_verified = began.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(took > Duration::from_secs(11), "the job took only {took:?}: not long enough to show anything");
    assert!(!stderr(&out).contains("lost"), "took {took:?}: {}", show(&out));
    assert_eq!(verified.status.code(), Some(0), "took {took_verified:?}: {}", show(&verified));
    assert!(!stderr(&verified).contains("lost"), "took {took_verified:?}: {}", show(&verified));
}

/// A job whose client has gone (its connection reset, as a dead client's is; one that only
/// closes its side is still owed the answer) is let go of, as an EVAL's is: nobody would get its
/// answer, and the node would refuse every other COORDINATE (busy) while its tasks kept the
/// cluster's CPUs.
#[test]
fn a_job_whose_client_left_is_let_go() {
    use cairn_object::{Handle, Kind, Limits};
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), &[]);
    // A root that is a value is the job's result at once, on any node.
    let mut n0 = cluster.client(0);
    let value = Handle::blob(b"a value");
    let (result, _) = n0.coordinate(value, &cairn_sched_options()).unwrap();
    assert_eq!(result, value);

    // The slow tiles' job, put on node 0 by hand.
    let put = |client: &mut cairn_tools::client::Client, kind: Kind, bytes: &[u8]| {
        let handle = cairn_object::store::name(kind, bytes).unwrap();
        client.put(handle, bytes, |_| {}).unwrap();
        handle
    };
    let mandelbrot = std::fs::read(env!("CARGO_BIN_FILE_CAIRN_TASKS_mandelbrot")).unwrap();
    let identity = std::fs::read(env!("CARGO_BIN_FILE_CAIRN_TASKS_identity")).unwrap();
    let (mandelbrot, identity) = (put(&mut n0, Kind::Blob, &mandelbrot), put(&mut n0, Kind::Blob, &identity));
    let limits = Limits::new(16 << 20).unwrap();
    let tiles: Vec<Handle> = (0..90u32)
        .map(|i| {
            let params: Vec<u8> =
                [1u32, 1, 0, 0, 1, 1, 1_000_000 + i].iter().flat_map(|v| v.to_le_bytes()).collect();
            let args = [Handle::blob(b"tile"), Handle::blob(&params)];
            put(&mut n0, Kind::Thunk, &cairn_object::thunk::encode(limits, mandelbrot, &args).unwrap())
        })
        .collect();
    let root = put(&mut n0, Kind::Thunk, &cairn_object::thunk::encode(limits, identity, &tiles).unwrap());

    // HELLO and COORDINATE, and no waiting for the answers.
    let mut stream = cairn_tools::secure::SecureStream::connect(&cluster.state.nodes[0].api).unwrap();
    let mut frames = Vec::new();
    let hello = cairn_proto::Message::Hello { client: "leaving".into() };
    cairn_proto::encode(&cairn_proto::Frame { request: 1, message: hello }, &mut frames);
    let coordinate =
        cairn_proto::Message::Coordinate { root, placement: 0, verify: false, spread: false, seed: 1 };
    cairn_proto::encode(&cairn_proto::Frame { request: 2, message: coordinate }, &mut frames);
    std::io::Write::write_all(&mut stream, &frames).unwrap();
    // Once the job runs on the peers, its client dies.
    let began = Instant::now();
    while (1..3).map(|n| cairn_tests::stat(&cluster.client(n).stats().unwrap(), "tasks_run")).sum::<u64>() < 2
    {
        assert!(began.elapsed() < Duration::from_secs(60), "the peers ran nothing");
        std::thread::sleep(Duration::from_millis(50));
    }
    socket2::SockRef::from(stream.tcp()).set_linger(Some(Duration::ZERO)).unwrap();
    drop(stream);
    let killed = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let answer = n0.coordinate(value, &cairn_sched_options());
    assert!(answer.is_ok(), "{:?} after the job's client left: {:#}", killed.elapsed(), answer.unwrap_err());
}

/// Reads `uploaded N bytes` from the summary.
fn uploaded_bytes(output: &std::process::Output) -> u64 {
    let text = stderr(output);
    let at = text.find("uploaded ").unwrap_or_else(|| panic!("no summary in:\n{}", show(output)));
    text[at + 9..].split(' ').next().unwrap().parse().unwrap()
}

/// The node's report says what it did: the bytes it uploaded (not the footprints their handles
/// declare, which for a thunk count its procedure), and whole handles in every mismatch.
#[test]
fn a_nodes_report_counts_what_it_sent_and_names_whole_handles() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), &[]);
    // Everything the job has, on each of the two peers at most, is all the node could upload.
    let job = slow_tiles_job(dir.path(), 12, 1000);
    let elves = [env!("CARGO_BIN_FILE_CAIRN_TASKS_mandelbrot"), env!("CARGO_BIN_FILE_CAIRN_TASKS_identity")];
    let procedures: u64 = elves.iter().map(|e| std::fs::metadata(e).unwrap().len()).sum();
    let thunks = 13 * 1024;
    let out = cluster.eval(&job, &["--spread"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let ran_on_peers = !stderr(&out).contains("node 1: 0") || !stderr(&out).contains("node 2: 0");
    assert!(ran_on_peers, "{}", show(&out));
    assert!(
        uploaded_bytes(&out) <= 2 * (procedures + thunks),
        "the job's objects are {procedures} + at most {thunks} bytes: {}",
        show(&out)
    );

    // Twenty tasks that disagree with themselves: every mismatch the node names is whole.
    let hostile = env!("CARGO_BIN_FILE_CAIRN_TASKS_hostile");
    let identity = env!("CARGO_BIN_FILE_CAIRN_TASKS_identity");
    let args: Vec<String> = (0..20)
        .map(|i| format!("{{ task = \"{hostile}\", args = [{{ text = \"rdrand\" }}, {{ u32s = [{i}] }}] }}"))
        .collect();
    let rdrand = dir.path().join("rdrand20.toml");
    std::fs::write(&rdrand, format!("[root]\ntask = \"{identity}\"\nargs = [{}]\n", args.join(", ")))
        .unwrap();
    let caught = cluster.eval(&rdrand, &["--verify"]);
    assert_eq!(caught.status.code(), Some(1), "{}", show(&caught));
    let stdout = String::from_utf8_lossy(&caught.stdout).into_owned();
    let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with("verify: MISMATCH ")).collect();
    assert!(lines.len() >= 8, "{}", show(&caught));
    for line in lines {
        let values: Vec<&str> = line.split(" -> ").skip(1).map(|v| v.split(',').next().unwrap()).collect();
        assert_eq!(values.len(), 2, "{line}");
        for value in values {
            assert!(value.parse::<cairn_object::Handle>().is_ok(), "`{value}` is not a handle: {line}");
        }
    }
}

/// A peer killed mid-job (no reset comes from a VM that is gone: only silence) is found lost
/// and its tasks run elsewhere; the job ends with the one node's result, in good time.
#[test]
fn a_peer_killed_mid_job_is_lost_and_the_job_ends() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), &[]);
    let job = slow_tiles_job(dir.path(), 24, 1_000_000);
    let mut child = cairn()
        .args(["eval", "--cluster", cluster.state_path.to_str().unwrap(), "--job", job.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let began = Instant::now();
    while cairn_tests::stat(&cluster.client(1).stats().unwrap(), "tasks_run") < 2 {
        assert!(began.elapsed() < Duration::from_secs(60), "node 1 ran nothing");
        assert!(child.try_wait().unwrap().is_none(), "the job ended before node 1 was killed");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: the pid of a QEMU this test's cluster started.
    unsafe { libc::kill(cluster.state.nodes[1].qemu_pid as libc::pid_t, libc::SIGKILL) };
    let killed = Instant::now();
    let out = child.wait_with_output().unwrap();
    let took = killed.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(stderr(&out).contains("lost node 1"), "{}", show(&out));
    assert!(took < Duration::from_secs(60), "the job took {took:?} after node 1 died: {}", show(&out));
    eprintln!("{took:?}: {}", show(&out));
}

/// A job's graph is held in the coordinating node's heap (each argument of each thunk, and its
/// leaves again while the job starts): a COORDINATE of a graph bigger than the heap is refused
/// with an error that says so, and the node keeps serving.
#[test]
fn a_graph_too_big_for_the_heap_is_refused_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up_nodes(dir.path(), 1, &[]);
    let mut n0 = cluster.client(0);
    let identity = std::fs::read(env!("CARGO_BIN_FILE_CAIRN_TASKS_identity")).unwrap();
    let procedure = cairn_object::Handle::blob(&identity);
    n0.put(procedure, &identity, |_| {}).unwrap();
    let limits = cairn_object::Limits::new(1 << 20).unwrap();
    // Thunks of 100,000 literal arguments each (4 MB): 48 bytes an argument in the graph.
    let mut wide = Vec::new();
    for i in 0..30u32 {
        let mut args = vec![cairn_object::Handle::blob(b"x"); 100_000];
        args[0] = cairn_object::Handle::blob(&i.to_le_bytes());
        let bytes = cairn_object::thunk::encode(limits, procedure, &args).unwrap();
        let handle = cairn_object::store::name(cairn_object::Kind::Thunk, &bytes).unwrap();
        n0.put(handle, &bytes, |_| {}).unwrap();
        wide.push(handle);
    }
    let root = cairn_object::thunk::encode(limits, procedure, &wide).unwrap();
    let root_h = cairn_object::store::name(cairn_object::Kind::Thunk, &root).unwrap();
    n0.put(root_h, &root, |_| {}).unwrap();
    let answer = n0.coordinate(root_h, &cairn_sched_options());
    let alive = cairn_tools::client::Client::connect(&cluster.state.nodes[0].api).and_then(|mut c| c.stats());
    let log = std::fs::read_to_string(&cluster.state.log).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect();
    assert!(alive.is_ok(), "the node is gone after {answer:?}:\n{}", tail.join("\n"));
    let err = answer.unwrap_err().to_string();
    assert!(err.contains("the node refused"), "{err}");
}

/// What a one-node cluster refuses to coordinate, each refusal naming what is wrong and nothing
/// that is not: an IO request is not an object to upload; verification needs a second node.
#[test]
fn refusals_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up_nodes(dir.path(), 1, &[]);
    let mut n0 = cluster.client(0);
    let limits = cairn_object::Limits::new(1 << 20).unwrap();
    let io = cairn_object::io::Effect::HttpGet.procedure();
    let get =
        cairn_object::thunk::encode(limits, io, &[cairn_object::Handle::blob(b"http://10.0.2.2/")]).unwrap();
    let get_h = cairn_object::store::name(cairn_object::Kind::Thunk, &get).unwrap();
    n0.put(get_h, &get, |_| {}).unwrap();
    let err = n0.coordinate(get_h, &cairn_sched_options()).unwrap_err().to_string();
    assert!(err.contains("is an IO request"), "{err}");
    assert!(!err.contains("upload the job's objects"), "the job's objects are all there: {err}");

    let identity = std::fs::read(env!("CARGO_BIN_FILE_CAIRN_TASKS_identity")).unwrap();
    let procedure = cairn_object::Handle::blob(&identity);
    n0.put(procedure, &identity, |_| {}).unwrap();
    let root = cairn_object::thunk::encode(limits, procedure, &[cairn_object::Handle::blob(b"x")]).unwrap();
    let root_h = cairn_object::store::name(cairn_object::Kind::Thunk, &root).unwrap();
    n0.put(root_h, &root, |_| {}).unwrap();
    let verify = cairn_sched::Options { verify: true, ..cairn_sched_options() };
    let err = n0.coordinate(root_h, &verify).unwrap_err().to_string();
    assert!(err.contains("needs at least two nodes"), "{err}");
    // And without verification the one node runs it.
    let (result, _) = n0.coordinate(root_h, &cairn_sched_options()).unwrap();
    assert_eq!(result, cairn_object::Handle::blob(b"x"));
}

/// Inputs bigger than one frame (PUT-BEGIN and chunks), spread by the coordinating node to its
/// peers and fetched between them: the same result as the host's own coordination.
#[test]
fn inputs_bigger_than_a_frame_are_spread_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), &[]);
    let words = ["cairn", "stone", "path", "summit", "trail", "marker"];
    let mut maps = Vec::new();
    for c in 0..3u64 {
        let mut text = String::new();
        let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ c;
        while text.len() < 1_300_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            text.push_str(words[(state % words.len() as u64) as usize]);
            text.push(if state % 13 == 0 { '\n' } else { ' ' });
        }
        let file = dir.path().join(format!("big{c}.txt"));
        std::fs::write(&file, text).unwrap();
        maps.push(format!(
            "{{ task = \"{}\", args = [{{ text = \"map\" }}, \"{}\"] }}",
            env!("CARGO_BIN_FILE_CAIRN_TASKS_wordcount"),
            file.display()
        ));
    }
    let job = dir.path().join("big.toml");
    std::fs::write(
        &job,
        format!(
            "[root]\ntask = \"{}\"\nargs = [{{ text = \"reduce\" }}, {}]\n",
            env!("CARGO_BIN_FILE_CAIRN_TASKS_wordcount"),
            maps.join(", ")
        ),
    )
    .unwrap();
    let by_node = cluster.eval(&job, &["--spread"]);
    assert_eq!(by_node.status.code(), Some(0), "{}", show(&by_node));
    assert!(!stderr(&by_node).contains("lost"), "{}", show(&by_node));
    let by_host = cluster.eval_by_host(&job, &["--verify"]);
    assert_eq!(by_host.status.code(), Some(0), "{}", show(&by_host));
    assert_eq!(result_of(&by_node), result_of(&by_host), "{}\n{}", show(&by_node), show(&by_host));
}

/// A peer that sends wrong bytes, with a node coordinating: caught and avoided by the node, and
/// as the coordinator itself, caught by the client, which hands the job on. Never a wrong result.
#[test]
fn a_peer_that_sends_wrong_bytes_is_caught_by_the_coordinating_node() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), &["--fault", "1=corrupt-objects"]);
    let job = wordcount_job(dir.path(), 6);
    let out = cluster.eval(&job, &["--spread"]);
    // Node 1 coordinating: its answer's bytes are wrong too.
    let via_liar = cluster.eval(&job, &["--spread", "--verify", "--via", "1"]);
    let reference = cluster.eval_by_host(&job, &[]);
    assert_eq!(reference.status.code(), Some(0), "{}", show(&reference));
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(stderr(&out).contains("node 1 sending wrong bytes"), "{}", show(&out));
    assert_eq!(result_of(&out), result_of(&reference), "{}", show(&out));
    assert_eq!(via_liar.status.code(), Some(0), "{}", show(&via_liar));
    assert_eq!(result_of(&via_liar), result_of(&reference), "{}", show(&via_liar));
}

/// Runs `cairn` with `args` and waits for it at most `limit`: its output, or None (and it is
/// killed) if it ran longer.
fn run_within(args: &[&str], limit: Duration) -> Option<std::process::Output> {
    let mut child = cairn().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let began = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if began.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            eprintln!("still running after {limit:?}, killed: {}", show(&out));
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(child.wait_with_output().unwrap())
}

/// A coordinating node with one CPU (`cluster up --cpus 1`): no other CPU takes its own tasks
/// and it steals none while it coordinates, yet its share of the job still runs and the job
/// ends, with the result the host's coordination gives.
#[test]
fn a_coordinator_with_one_cpu_still_runs_its_own_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), &["--cpus", "1"]);
    let job = slow_tiles_job(dir.path(), 24, 1_000_000);
    let state = cluster.state_path.to_str().unwrap();
    let began = Instant::now();
    let out =
        run_within(&["eval", "--cluster", state, "--job", job.to_str().unwrap()], Duration::from_secs(180))
            .expect("the node-coordinated job on one-CPU nodes did not end in 180 s");
    let took = began.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(!stderr(&out).contains("lost"), "took {took:?}: {}", show(&out));
    let text = stderr(&out);
    assert!(!text.contains("node 0: 0") && text.contains("node 0: "), "node 0 ran its share: {}", show(&out));
    // The host's coordination of the same job (every task from the memos now) names the same result.
    let by_host = cluster.eval_by_host(&job, &[]);
    assert_eq!(result_of(&by_host), result_of(&out), "{}", show(&by_host));
    eprintln!("{took:?}: {}", show(&out));
}

/// `--spread` with a node coordinating: the host puts each node's share on it itself. A peer
/// that hangs (its VM stopped: it accepts connections and never answers) must not hang the
/// host: without `--spread` the coordinating node finds it lost within its links' stall time
/// and the job ends; with it, the host waits on the peer's handshake.
#[test]
fn a_hung_peer_does_not_hang_a_spread_hand_off() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::up(dir.path(), &[]);
    let job = wordcount_job(dir.path(), 6);
    let state = cluster.state_path.to_str().unwrap().to_string();
    let pid = cluster.state.nodes[2].qemu_pid as libc::pid_t;
    // SAFETY: the pid of a QEMU this test's cluster started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let job = job.to_str().unwrap();
    let plain = run_within(&["eval", "--cluster", &state, "--job", job], Duration::from_secs(120));
    let spread =
        run_within(&["eval", "--cluster", &state, "--job", job, "--spread"], Duration::from_secs(120));
    // SAFETY: as above; the cluster goes down with node 2 dead.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    cluster.stop();
    let plain = plain.expect("without --spread the job did not end in 120 s with node 2 hung");
    assert_eq!(plain.status.code(), Some(0), "{}", show(&plain));
    let spread = spread.expect("with --spread the job did not end in 120 s with node 2 hung");
    assert_eq!(spread.status.code(), Some(0), "{}", show(&spread));
    assert_eq!(result_of(&spread), result_of(&plain));
}

/// With `--spread`, the coordinating node is not given the data put on its peers. A peer killed
/// mid-job takes the only copy of its share with it: the coordinator names the object it lacks,
/// the client gives it everything and asks again, and the job ends with the right result.
#[test]
fn data_a_killed_peer_held_alone_is_given_to_the_coordinator_and_the_job_ends() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), &[]);
    let (mandelbrot, identity) =
        (env!("CARGO_BIN_FILE_CAIRN_TASKS_mandelbrot"), env!("CARGO_BIN_FILE_CAIRN_TASKS_identity"));
    // Each middle task takes a slow tile and 64 KiB of data: it runs where its data is.
    let middles: Vec<String> = (0..9u32)
        .map(|i| {
            let data = dir.path().join(format!("data{i}.bin"));
            std::fs::write(&data, vec![i as u8; 64 * 1024]).unwrap();
            format!(
                "{{ task = \"{identity}\", args = [\"{}\", {{ task = \"{mandelbrot}\", args = [{{ text = \"tile\" }}, {{ u32s = [1, 1, 0, 0, 1, 1, {}] }}] }}] }}",
                data.display(),
                600_000 + i
            )
        })
        .collect();
    let job = dir.path().join("spread-slow.toml");
    std::fs::write(&job, format!("[root]\ntask = \"{identity}\"\nargs = [{}]\n", middles.join(", ")))
        .unwrap();
    let mut child = cairn()
        .args(["eval", "--cluster", cluster.state_path.to_str().unwrap(), "--job", job.to_str().unwrap()])
        .arg("--spread")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let began = Instant::now();
    while cairn_tests::stat(&cluster.client(2).stats().unwrap(), "tasks_run") < 1 {
        assert!(began.elapsed() < Duration::from_secs(60), "node 2 ran nothing");
        assert!(child.try_wait().unwrap().is_none(), "the job ended before node 2 was killed");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: the pid of a QEMU this test's cluster started.
    unsafe { libc::kill(cluster.state.nodes[2].qemu_pid as libc::pid_t, libc::SIGKILL) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(stderr(&out).contains("the coordinator lacks an object of the job"), "{}", show(&out));
    // The host, which has every object, coordinating the same job over the two nodes left.
    let reference = cluster.eval_by_host(&job, &[]);
    assert_eq!(reference.status.code(), Some(0), "{}", show(&reference));
    assert_eq!(result_of(&out), result_of(&reference), "{}\n{}", show(&out), show(&reference));
}
