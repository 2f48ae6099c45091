//! Three-node clusters on one virtual L2 (docs/CLUSTER.md), the host coordinating (the nodes
//! coordinate in coordinate.rs): the same results as one node,
//! placement by locality, a node killed mid-job, verification on two nodes, tasks that time
//! out, nodes fetching from each other, and a peer that sends corrupted objects; and each
//! node's disk kept from one `cluster up` to the next.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use cairn_bootcfg::NodeConfig;
use cairn_object::Handle;
use cairn_tools::client::Client;
use cairn_tools::cluster::lifecycle::{in_use_by_qemu, node_disk};
use common::cluster::{Cluster, cairn, mandelbrot_job, moved_bytes, result_of, show, wordcount_job};

#[test]
fn three_nodes_agree_with_one_place_by_locality_verify_and_survive_a_lost_node() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), &[]);

    // Peers: each node lists the other two.
    let stats = Client::connect(&cluster.state.nodes[0].api).unwrap().stats().unwrap();
    assert!(stats.contains("cluster_ip=10.1.0.1") && stats.contains("peers=10.1.0.2,10.1.0.3"), "{stats}");

    // Wordcount with its chunks spread over the nodes, then the same on one node.
    let job = wordcount_job(dir.path(), 6);
    let durations = dir.path().join("durations.json");
    let spread = cluster.eval_by_host(&job, &["--spread", "--record-durations", durations.to_str().unwrap()]);
    assert_eq!(spread.status.code(), Some(0), "{}", show(&spread));
    // What each task took, by kind, for the simulator: six maps, one reduce.
    let recorded: serde_json::Value = serde_json::from_slice(&std::fs::read(&durations).unwrap()).unwrap();
    let times = |key: &str| -> Vec<u64> {
        recorded[key].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect()
    };
    assert_eq!((times("leaf_us").len(), times("inner_us").len()), (6, 1), "{recorded}");
    assert!(times("leaf_us").iter().chain(&times("inner_us")).all(|us| *us > 0), "{recorded}");
    let sim = cairn()
        .args([
            "sim",
            "--nodes",
            "3",
            "--tasks",
            "6",
            "--no-recall",
            "--durations",
            durations.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(sim.status.code(), Some(0), "{}", show(&sim));
    let (_single, single_address) = cairn_tests::serving_node(NodeConfig::default());
    let single =
        cairn().args(["eval", "--node", &single_address, "--job", job.to_str().unwrap()]).output().unwrap();
    assert_eq!(single.status.code(), Some(0), "{}", show(&single));
    assert_eq!(result_of(&spread), result_of(&single), "three nodes and one give the same handle");

    // Again: every task is answered by some node's memo, and nothing runs.
    let again = cluster.eval_by_host(&job, &[]);
    assert_eq!(result_of(&again), result_of(&single));
    assert!(String::from_utf8_lossy(&again.stderr).contains("(none run; 7 from memos)"), "{}", show(&again));

    // Locality placement ran each map where its chunk was; random placement moved chunks.
    // (A second cluster run would hit the memos, so the baseline runs on fresh data: a
    // different chunk size.)
    let locality = moved_bytes(&spread);
    let dir2 = tempfile::tempdir().unwrap();
    let job2 = wordcount_job(dir2.path(), 6);
    std::fs::write(
        dir2.path().join("chunk0.txt"),
        format!("{} fresh", std::fs::read_to_string(dir2.path().join("chunk0.txt")).unwrap()),
    )
    .unwrap();
    let random = cluster.eval_by_host(&job2, &["--spread", "--placement", "random", "--seed", "3"]);
    assert_eq!(random.status.code(), Some(0), "{}", show(&random));
    assert!(locality < 32 * 1024, "locality moved {locality} bytes:\n{}", show(&spread));
    assert!(moved_bytes(&random) > 96 * 1024, "random placement moved {} bytes", moved_bytes(&random));

    // Verification: every task on two nodes, memos ignored; all agree.
    let verified = cluster.eval_by_host(&job, &["--verify"]);
    assert_eq!(verified.status.code(), Some(0), "{}", show(&verified));
    assert!(
        String::from_utf8_lossy(&verified.stdout)
            .contains("verify: every task gave the same result on two nodes"),
        "{}",
        show(&verified)
    );
    assert_eq!(result_of(&verified), result_of(&single));
    // A task that reads RDRAND (which no kernel can trap) is caught disagreeing with itself.
    let rdrand = dir.path().join("rdrand.toml");
    std::fs::write(
        &rdrand,
        format!(
            "[root]\ntask = \"{}\"\nargs = [{{ text = \"rdrand\" }}]\n",
            env!("CARGO_BIN_FILE_CAIRN_TASKS_hostile")
        ),
    )
    .unwrap();
    let caught = cluster.eval_by_host(&rdrand, &["--verify"]);
    assert_eq!(caught.status.code(), Some(1), "{}", show(&caught));
    let line = String::from_utf8_lossy(&caught.stdout)
        .lines()
        .find(|l| l.starts_with("verify: MISMATCH thunk:"))
        .map(String::from)
        .unwrap_or_else(|| panic!("{}", show(&caught)));
    assert_eq!(line.matches("blob:").count(), 2, "both results are named: {line}");

    // A task that runs out its time budget: a timeout is the node's, not the task's (EVAL-5),
    // so the task runs again on each other node before the evaluation gives up, naming it.
    let looping = dir.path().join("loop.toml");
    std::fs::write(
        &looping,
        format!(
            "[root]\ntask = \"{}\"\nargs = [{{ text = \"loop\" }}]\n",
            env!("CARGO_BIN_FILE_CAIRN_TASKS_hostile")
        ),
    )
    .unwrap();
    let timed_out = cluster.eval_by_host(&looping, &[]);
    assert_eq!(timed_out.status.code(), Some(2), "{}", show(&timed_out));
    let stderr = String::from_utf8_lossy(&timed_out.stderr);
    assert_eq!(stderr.matches("it runs again").count(), 2, "{}", show(&timed_out));
    for node in 0..3 {
        assert!(
            stderr.contains(&format!("task 0 started on node {node}")),
            "each node tried it once: {}",
            show(&timed_out)
        );
    }
    assert!(stderr.trim_end().ends_with("failed: timeout"), "{}", show(&timed_out));

    // Relocation by a node: node 0 holds identity(2 MiB blob) and runs it on node 1, shipping
    // the thunk and what node 1 lacks (in chunks); the result handle comes back through node 0.
    let mut n0 = Client::connect(&cluster.state.nodes[0].api).unwrap();
    let identity = std::fs::read(env!("CARGO_BIN_FILE_CAIRN_TASKS_identity")).unwrap();
    let big: Vec<u8> = (0..(2u32 << 20)).map(|i| (i.wrapping_mul(2246822519) >> 7) as u8).collect();
    let (procedure, big_h) = (Handle::blob(&identity), Handle::blob(&big));
    let thunk =
        cairn_object::thunk::encode(cairn_object::Limits::new(16 << 20).unwrap(), procedure, &[big_h])
            .unwrap();
    let thunk_h = cairn_object::store::name(cairn_object::Kind::Thunk, &thunk).unwrap();
    n0.upload_missing(&[(procedure, identity), (big_h, big.clone()), (thunk_h, thunk)]).unwrap();
    let mut n1 = Client::connect(&cluster.state.nodes[1].api).unwrap();
    assert_eq!(n1.missing(&[big_h, thunk_h]).unwrap(), [big_h, thunk_h]);
    let relocated = n0.relocate(([10, 1, 0, 2], 7070), thunk_h).unwrap();
    assert_eq!((relocated.result, relocated.tasks_run), (big_h, 1));
    assert!(n1.missing(&[big_h, thunk_h]).unwrap().is_empty(), "node 1 received the thunk and its input");
    assert!(n0.stats().unwrap().contains("relocated=1"));
    let err = n0.relocate(([10, 1, 0, 9], 7070), thunk_h).unwrap_err().to_string();
    assert!(err.contains("not a peer"), "{err}");

    // Two nodes fetching from each other at the same time: each answers the other's GETs while
    // it waits on its own fetch (net::busy); otherwise both would wait until their fetches
    // stalled out.
    let a: Vec<u8> = (0..(4u32 << 20)).map(|i| (i.wrapping_mul(3266489917) >> 5) as u8).collect();
    let b: Vec<u8> = (0..(4u32 << 20)).map(|i| (i.wrapping_mul(668265263) >> 9) as u8).collect();
    let (a_h, b_h) = (Handle::blob(&a), Handle::blob(&b));
    n1.put(a_h, &a, |_| {}).unwrap();
    Client::connect(&cluster.state.nodes[2].api).unwrap().put(b_h, &b, |_| {}).unwrap();
    let fetching = |node: usize, from: [u8; 4], handle: Handle| {
        let api = cluster.state.nodes[node].api.clone();
        std::thread::spawn(move || {
            Client::connect(&api).unwrap().fetch((from, 7070), &[handle]).map_err(|e| e.to_string())
        })
    };
    let (one, two) = (fetching(1, [10, 1, 0, 3], b_h), fetching(2, [10, 1, 0, 2], a_h));
    assert_eq!(one.join().unwrap(), Ok((1, b.len() as u64)), "node 1 fetching from node 2");
    assert_eq!(two.join().unwrap(), Ok((1, a.len() as u64)), "node 2 fetching from node 1");

    // A node killed while it works: its tasks run elsewhere and the image is the same.
    let mandelbrot = mandelbrot_job(dir.path(), 4);
    let reference = cairn()
        .args(["eval", "--node", &single_address, "--job", mandelbrot.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(reference.status.code(), Some(0), "{}", show(&reference));
    let mut child = cairn()
        .args([
            "eval",
            "--cluster",
            cluster.state_path.to_str().unwrap(),
            "--coordinator",
            "host",
            "--job",
            mandelbrot.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let victim = cluster.state.nodes[2].qemu_pid;
    let mut killed = false;
    let mut transcript = String::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        transcript.push_str(&line);
        transcript.push('\n');
        // Node 2 has finished one task and has more queued: kill it now.
        if !killed && line.contains(" done on node 2 ") {
            // SAFETY: the pid of a QEMU this test's cluster started.
            unsafe { libc::kill(victim as libc::pid_t, libc::SIGKILL) };
            killed = true;
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(killed, "node 2 never got work:\n{transcript}");
    assert_eq!(out.status.code(), Some(0), "{transcript}");
    assert!(transcript.contains("node 2 lost"), "{transcript}");
    let status = cairn()
        .args(["cluster", "status", "--state", cluster.state_path.to_str().unwrap()])
        .output()
        .unwrap();
    let status_text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status_text.contains("node 2  DOWN") && status_text.contains("2 of 3 nodes up"),
        "{}",
        show(&status)
    );
    assert!(
        status_text.lines().filter(|l| l.contains("  up  ")).all(|l| !l.contains("tasks_run 0 ")),
        "{}",
        show(&status)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.lines().next().unwrap().parse::<Handle>().unwrap(),
        result_of(&reference),
        "{transcript}"
    );
}

#[test]
fn a_peer_that_sends_corrupted_objects_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), &["--fault", "1=corrupt-objects"]);
    let [n0, n1, n2] = [0, 1, 2].map(|i| Client::connect(&cluster.state.nodes[i].api).unwrap());
    let (mut n0, mut n1, mut n2) = (n0, n1, n2);
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2654435761) >> 9) as u8).collect();
    let handle = Handle::blob(&blob);
    n1.put(handle, &blob, |_| {}).unwrap();
    n2.put(handle, &blob, |_| {}).unwrap();

    // Node 0 asks the faulty node 1: the wrong bytes are caught and nothing is stored.
    let err = n0.fetch(([10, 1, 0, 2], 7070), &[handle]).unwrap_err().to_string();
    assert!(
        err.contains("wrong bytes") && err.contains("10.1.0.2:7070") && err.contains(&handle.to_string()),
        "{err}"
    );
    assert_eq!(n0.missing(&[handle]).unwrap(), [handle]);
    // Only peers: a client cannot point a node at an address of its choosing.
    let err = n0.fetch(([10, 1, 0, 9], 7070), &[handle]).unwrap_err().to_string();
    assert!(err.contains("10.1.0.9 is not a peer of this node"), "{err}");
    // From the honest node 2 the same object arrives, checked.
    assert_eq!(n0.fetch(([10, 1, 0, 3], 7070), &[handle]).unwrap(), (1, blob.len() as u64));
    assert!(n0.get(handle, |_, _| {}).unwrap() == blob);

    // A whole job on this cluster: the bad peer is caught, avoided, and the result is right.
    let job = wordcount_job(dir.path(), 6);
    let out = cluster.eval_by_host(&job, &["--spread"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("node 1 sending wrong bytes"), "{}", show(&out));
    let (_single, single) = cairn_tests::serving_node(NodeConfig::default());
    let reference =
        cairn().args(["eval", "--node", &single, "--job", job.to_str().unwrap()]).output().unwrap();
    assert_eq!(result_of(&out), result_of(&reference));
}

#[test]
fn each_node_keeps_its_own_disk_from_one_up_to_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up_nodes(dir.path(), 2, &["--disk-size", "64M"]);
    let state_path = cluster.state_path.clone();
    let disks = [0, 1].map(|i| node_disk(&state_path, i));
    for (i, disk) in disks.iter().enumerate() {
        assert_eq!(cluster.state.nodes[i].disk.as_deref(), Some(disk.as_path()));
        assert!(cluster.up.contains(&format!("disk {} (new)", disk.display())), "{}", cluster.up);
        // QEMU holds it: another `up` (or `cairn node --disk`) on it would be refused.
        assert!(in_use_by_qemu(disk), "{}", disk.display());
    }
    let blob: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2246822519) >> 11) as u8).collect();
    let handle = Handle::blob(&blob);
    cluster.client(0).put(handle, &blob, |_| {}).unwrap();
    let down = cluster.down();
    let pattern = dir.path().join("cluster.node-{0..1}.qcow2");
    assert!(down.contains(&format!("disks kept: {}", pattern.display())), "{down}");

    // Up again: node 0 has the object from its disk, node 1 (its own disk) does not.
    let cluster = Cluster::up_nodes(dir.path(), 2, &[]);
    assert!(cluster.up.contains(&format!("disk {} (kept)", disks[0].display())), "{}", cluster.up);
    let mut n0 = cluster.client(0);
    assert!(n0.missing(&[handle]).unwrap().is_empty());
    assert!(n0.get(handle, |_, _| {}).unwrap() == blob, "the same bytes");
    assert_eq!(cluster.client(1).missing(&[handle]).unwrap(), [handle]);
    let status =
        cairn().args(["cluster", "status", "--state", state_path.to_str().unwrap()]).output().unwrap();
    let status_text = String::from_utf8_lossy(&status.stdout);
    assert!(status_text.contains(&format!("disk {} (1 objects)", disks[0].display())), "{}", show(&status));
    drop(n0);
    cluster.down();

    // Fresh disks, and one node fewer: node 0 starts empty, node 1's disk is left alone.
    let cluster = Cluster::up_nodes(dir.path(), 1, &["--fresh-disks"]);
    assert!(cluster.up.contains(&format!("disk {} (new)", disks[0].display())), "{}", cluster.up);
    assert!(
        cluster
            .up
            .contains(&format!("disks this cluster does not use, left as they are: {}", disks[1].display())),
        "{}",
        cluster.up
    );
    assert_eq!(cluster.client(0).missing(&[handle]).unwrap(), [handle]);
    assert!(disks[1].exists());
}

/// In a cluster, a scrub fetches what it finds damaged again from a peer that holds it
/// (docs/STORE.md, "Scrub"): node 0's copy is overwritten on its disk while the cluster is down.
#[test]
fn a_scrub_fetches_damaged_objects_again_from_a_peer() {
    let dir = tempfile::tempdir().unwrap();
    let blob: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2654435761) >> 9) as u8).collect();
    let handle = Handle::blob(&blob);
    let disk = {
        let cluster = Cluster::up_nodes(dir.path(), 2, &["--disk-size", "64M"]);
        for node in 0..2 {
            cluster.client(node).put(handle, &blob, |_| {}).unwrap();
        }
        // Pinned and compacted on node 0: its record lies before the checkpoint, which a
        // restart does not read again (so the damage is found by the scrub, not at start).
        let mut n0 = cluster.client(0);
        n0.pin(handle, true).unwrap();
        n0.gc(0).unwrap();
        node_disk(&cluster.state_path, 0)
    };
    let mut image = std::fs::read(&disk).unwrap();
    let key = handle.as_bytes();
    // Its object records: a record header (`CRc1`, kind 1) and then the handle. (The handle is
    // in the checkpoint's index too, which is left alone.)
    let object_record = |i: usize| i >= 64 && image[i - 64..i - 60] == *b"CRc1" && image[i - 60] == 1;
    let places: Vec<usize> = image
        .windows(key.len())
        .enumerate()
        .filter(|(i, w)| *w == key && object_record(*i))
        .map(|(i, _)| i)
        .collect();
    assert!(!places.is_empty(), "the object is on the disk");
    for at in places {
        image[at + 140..at + 652].fill(0x3c);
    }
    std::fs::write(&disk, &image).unwrap();

    let cluster = Cluster::up_nodes(dir.path(), 2, &[]);
    let mut n0 = cluster.client(0);
    let report = n0.scrub().unwrap();
    assert_eq!((report.damaged_total, report.restored, &report.damaged), (1, 1, &vec![handle]), "{report:?}");
    assert!(n0.get(handle, |_, _| {}).unwrap() == blob, "the peer's copy, checked");
    let again = n0.scrub().unwrap();
    assert_eq!(again.damaged_total, 0, "{again:?}");
}
