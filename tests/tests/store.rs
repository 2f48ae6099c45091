//! The store on a disk (docs/STORE.md), on real nodes: what a client stored comes back after the
//! node is killed and booted again on the same disk; a disk that holds something else stops the
//! API; a full disk is a full store.

use cairn_tests::stat;
use std::path::Path;

use cairn_object::{Handle, Kind, Limits};
use cairn_proto::ErrorCode;
use cairn_tests::nbd::{Cut, NbdServer};
use cairn_tests::{BOOT_TIMEOUT, Node, serving_node_with};
use cairn_tools::client::{Client, Refused};
use cairn_tools::qemu::{NbdDisk, NodeOptions, StoreDisk};
use cairn_tools::secure::SecureStream;

fn with_disk(path: &Path, size: u64) -> NodeOptions {
    NodeOptions { disk: Some(StoreDisk { path: path.to_path_buf(), size }), ..NodeOptions::default() }
}

fn blob(seed: u32, len: usize) -> (Handle, Vec<u8>) {
    let bytes: Vec<u8> =
        (0..len as u32).map(|i| (i.wrapping_mul(2654435761) ^ seed) as u8 ^ (i >> 13) as u8).collect();
    (Handle::blob(&bytes), bytes)
}

#[test]
fn what_a_client_stored_comes_back_after_the_node_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("store.qcow2");
    let objects = [blob(1, 3 << 20), blob(2, 5000), blob(3, 100)];
    {
        let (node, address) = serving_node_with(with_disk(&disk, 64 << 20));
        assert!(
            node.transcript().iter().any(|l| l.contains("cairn: store disk 64 MiB, new")),
            "{:?}",
            node.transcript()
        );
        let mut client = Client::connect(&address).unwrap();
        for (handle, bytes) in &objects {
            client.put(*handle, bytes, |_| {}).unwrap();
        }
        let stats = client.stats().unwrap();
        assert_eq!(stat(&stats, "disk_objects"), 3, "{stats}");
        // Killed (SIGKILL) as it stands: only what the disk was told to flush counts.
    }
    let (node, address) = serving_node_with(with_disk(&disk, 64 << 20));
    let line =
        node.transcript().iter().find(|l| l.contains("cairn: store disk")).cloned().unwrap_or_default();
    assert!(line.contains("3 objects"), "{line}");
    let mut client = Client::connect(&address).unwrap();
    assert_eq!(client.missing(&objects.iter().map(|o| o.0).collect::<Vec<_>>()).unwrap(), []);
    for (handle, bytes) in &objects {
        assert!(client.get(*handle, |_, _| {}).unwrap() == *bytes, "{handle} came back different");
    }
    let stats = client.stats().unwrap();
    assert_eq!(stat(&stats, "disk_objects"), 3, "{stats}");
}

#[test]
fn a_disk_holding_something_else_stops_the_api_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("other.raw");
    std::fs::write(&disk, vec![0x5a; 4 << 20]).unwrap();
    let mut node = Node::boot_with(NodeOptions {
        config: cairn_bootcfg::NodeConfig { mode: cairn_bootcfg::Mode::Serve, ..Default::default() },
        ..with_disk(&disk, 4 << 20)
    });
    node.expect(
        r"^cairn: api off: the store's disk: the disk holds something other than a Cairn store",
        BOOT_TIMEOUT,
    );
    // Nothing was written to it.
    assert!(std::fs::read(&disk).unwrap().iter().all(|b| *b == 0x5a));
}

#[test]
fn a_full_disk_is_a_full_store_and_the_node_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("small.raw");
    let (_node, address) = serving_node_with(with_disk(&disk, 2 << 20));
    let mut client = Client::connect(&address).unwrap();
    let (big, big_bytes) = blob(9, 3 << 20);
    let err = client.put(big, &big_bytes, |_| {}).unwrap_err();
    let refused = err.downcast_ref::<Refused>().unwrap_or_else(|| panic!("{err:#}"));
    assert_eq!(refused.code, ErrorCode::StoreFull, "{err:#}");
    assert!(refused.message.contains("full"), "{}", refused.message);
    let (small, small_bytes) = blob(10, 20_000);
    client.put(small, &small_bytes, |_| {}).unwrap();
    assert!(client.get(small, |_, _| {}).unwrap() == small_bytes);
}

/// Memory is a cache in front of the disk: objects pushed out of a small node's memory are
/// still held, served from the disk (checked against their handles on the way).
#[test]
fn objects_evicted_from_memory_are_served_from_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("cache.raw");
    let (_node, address) = serving_node_with(NodeOptions { memory_mib: 192, ..with_disk(&disk, 256 << 20) });
    let mut client = Client::connect(&address).unwrap();
    let objects: Vec<_> = (0..4).map(|i| blob(20 + i, 15 << 20)).collect();
    for (handle, bytes) in &objects {
        client.put(*handle, bytes, |_| {}).unwrap();
    }
    let stats = client.stats().unwrap();
    assert!(stat(&stats, "store_evictions") > 0, "memory had to let some go: {stats}");
    assert_eq!(stat(&stats, "disk_objects"), 4, "{stats}");
    let helped = stat(&stats, "helper_hashed_bytes");
    for (handle, bytes) in &objects {
        assert!(client.get(*handle, |_, _| {}).unwrap() == *bytes, "{handle}");
    }
    // What was read back from the disk was checked with the helper CPU hashing spans too.
    let stats = client.stats().unwrap();
    assert!(stat(&stats, "helper_hashed_bytes") > helped, "{stats}");
}

/// A node takes a checkpoint once 64 MiB of log follow the last one, so that a restart reads
/// only the log after it (docs/STORE.md, "Recovery").
#[test]
fn a_node_checkpoints_so_that_a_restart_reads_little() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("checkpoint.raw");
    let objects: Vec<_> = (0..3).map(|i| blob(40 + i, 24 << 20)).collect();
    {
        let (_node, address) = serving_node_with(with_disk(&disk, 512 << 20));
        let mut client = Client::connect(&address).unwrap();
        for (handle, bytes) in &objects {
            client.put(*handle, bytes, |_| {}).unwrap();
        }
        // One more round of the node's loop, which checkpoints.
        client.stats().unwrap();
    }
    let (node, address) = serving_node_with(with_disk(&disk, 512 << 20));
    let line =
        node.transcript().iter().find(|l| l.contains("cairn: store disk")).cloned().unwrap_or_default();
    assert!(line.contains("3 objects") && line.contains("from a checkpoint"), "{line}");
    let mut client = Client::connect(&address).unwrap();
    assert!(client.get(objects[1].0, |_, _| {}).unwrap() == objects[1].1);
}

/// What a node learned lives on its disk too: after a restart, a thunk it evaluated is a memo
/// hit, and a job it ran replays from the journal the disk kept (docs/STORE.md, "What the disk
/// keeps").
#[test]
fn memo_entries_and_journals_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("memo.raw");
    let wordcount = env!("CARGO_BIN_FILE_CAIRN_TASKS_wordcount");
    let job_file = dir.path().join("job.toml");
    let text = "a cairn a marker of stones";
    std::fs::write(
        &job_file,
        format!("[root]\ntask = \"{wordcount}\"\nargs = [{{ text = \"map\" }}, {{ text = \"{text}\" }}]\n"),
    )
    .unwrap();
    let job = cairn_tools::jobfile::JobFile::read(&job_file).unwrap();
    let (done, evaluated) = {
        let (_node, address) = serving_node_with(with_disk(&disk, 64 << 20));
        let mut client = Client::connect(&address).unwrap();
        for (handle, bytes) in &job.objects {
            client.put(*handle, bytes, |_| {}).unwrap();
        }
        let done = client.submit(job.job).unwrap();
        let evaluated = client.eval(job.root).unwrap();
        assert_eq!((evaluated.tasks_run, evaluated.memo_hits), (0, 1), "the job's run filled the memo");
        let stats = client.stats().unwrap();
        assert_eq!(stat(&stats, "disk_memo_entries"), 1, "{stats}");
        (done, evaluated)
    };
    let result = done.result.clone().unwrap();
    assert_eq!(evaluated.result, result);

    let (_node, address) = serving_node_with(with_disk(&disk, 64 << 20));
    let mut client = Client::connect(&address).unwrap();
    let again = client.eval(job.root).unwrap();
    assert_eq!((again.result, again.tasks_run, again.memo_hits), (result, 0, 1));
    assert!(client.get(result, |_, _| {}).is_ok(), "the value is there too");
    // The job's latest journal, kept on the disk: its replay is identical.
    let replayed = client.replay(job.job).unwrap();
    assert_eq!(replayed.journal, done.journal);
    assert_eq!((replayed.result.unwrap(), replayed.recorded), (result, Some(result)));
    let stats = client.stats().unwrap();
    assert_eq!((stat(&stats, "tasks_run"), stat(&stats, "jobs_replayed")), (0, 1), "{stats}");
}

/// A sector of an object's record overwritten with garbage on the disk: a read finds it (the
/// object is not served), and `cairn scrub` reports it and drops it (docs/STORE.md, "Scrub").
#[test]
fn a_damaged_sector_is_never_served_and_scrub_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("damaged.raw");
    let (_node, address) = serving_node_with(NodeOptions { memory_mib: 192, ..with_disk(&disk, 256 << 20) });
    let mut client = Client::connect(&address).unwrap();
    let objects: Vec<_> = (0..4).map(|i| blob(60 + i, 15 << 20)).collect();
    for (handle, bytes) in &objects {
        client.put(*handle, bytes, |_| {}).unwrap();
    }
    let stats = client.stats().unwrap();
    assert!(stat(&stats, "store_evictions") > 0, "some are on the disk only: {stats}");
    let clean = client.scrub().unwrap();
    assert_eq!((clean.checked, clean.bytes, clean.damaged_total), (4, 4 * (15 << 20), 0));

    // One sector in the middle of each object's bytes, where its record lies on the disk.
    let mut image = std::fs::read(&disk).unwrap();
    for (handle, _) in &objects {
        // A record's payload starts with the object's handle, then its bytes.
        let key = handle.as_bytes();
        let at = image.windows(key.len()).position(|w| w == key).expect("the object is on the disk");
        let sector = (at + (7 << 20)) / 512 * 512;
        image[sector..sector + 512].fill(0xa5);
    }
    std::fs::write(&disk, &image).unwrap();

    // Read: right bytes (from memory) or an error; never wrong ones (the client checks too).
    let mut unreadable = Vec::new();
    for (handle, bytes) in &objects {
        match client.get(*handle, |_, _| {}) {
            Ok(got) => assert!(got == *bytes, "{handle}"),
            Err(e) => {
                assert!(format!("{e:#}").contains("not on this node"), "{e:#}");
                unreadable.push(*handle);
            }
        }
    }
    assert!(!unreadable.is_empty(), "an object only the disk held was read");

    let output = std::process::Command::new(env!("CARGO_BIN_FILE_CAIRN_TOOLS_cairn"))
        .args(["scrub", "--node", &address])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    let damaged: Vec<&str> = stdout.lines().filter_map(|l| l.strip_prefix("damaged ")).collect();
    assert_eq!(damaged.len(), 4 - unreadable.len(), "the ones a read had not found yet: {stdout}");
    // What memory held may have gone back to the disk (if the heap had room to write it);
    // the rest is missing, to be put again.
    let handles: Vec<Handle> = objects.iter().map(|o| o.0).collect();
    let missing = client.missing(&handles).unwrap();
    assert!(unreadable.iter().all(|h| missing.contains(h)), "{missing:?}");
    for (handle, bytes) in objects.iter().filter(|o| missing.contains(&o.0)) {
        client.put(*handle, bytes, |_| {}).unwrap();
    }
    let again = client.scrub().unwrap();
    assert_eq!((again.checked, again.damaged_total), (4, 0), "{again:?}");
    for (handle, bytes) in &objects {
        assert!(client.get(*handle, |_, _| {}).unwrap() == *bytes, "{handle}");
    }
}

/// Space (docs/STORE.md, "Space"): a full disk says so; `cairn gc` forgets what nothing keeps
/// (not what is pinned, nor memo values or a job's journal and what it names) and compacts the
/// log, after which the disk takes more; after a restart, what was kept is there and what was
/// collected is not.
#[test]
fn gc_frees_what_nothing_keeps_and_pins_memo_and_journals_stay() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("gc.raw");
    let wordcount = env!("CARGO_BIN_FILE_CAIRN_TASKS_wordcount");
    let job_file = dir.path().join("job.toml");
    std::fs::write(
        &job_file,
        format!(
            "[root]\ntask = \"{wordcount}\"\nargs = [{{ text = \"map\" }}, {{ text = \"one two two\" }}]\n"
        ),
    )
    .unwrap();
    let job = cairn_tools::jobfile::JobFile::read(&job_file).unwrap();
    let mut garbage = Vec::new();
    let (pinned, pinned_bytes) = blob(90, 1 << 20);
    let (late, late_bytes) = blob(91, 1 << 20);
    let result = {
        let (_node, address) = serving_node_with(with_disk(&disk, 24 << 20));
        let mut client = Client::connect(&address).unwrap();
        for (handle, bytes) in &job.objects {
            client.put(*handle, bytes, |_| {}).unwrap();
        }
        let done = client.submit(job.job).unwrap();
        client.put(pinned, &pinned_bytes, |_| {}).unwrap();
        client.pin(pinned, true).unwrap();
        // Objects nothing keeps, until the disk is full: the next one is refused, by name.
        for i in 0.. {
            let (handle, bytes) = blob(200 + i, 1 << 20);
            match client.put(handle, &bytes, |_| {}) {
                Ok(()) => garbage.push((handle, bytes)),
                Err(err) => {
                    let refused = err.downcast_ref::<Refused>().unwrap_or_else(|| panic!("{err:#}"));
                    assert_eq!(refused.code, ErrorCode::StoreFull, "{err:#}");
                    break;
                }
            }
        }
        assert!(garbage.len() >= 2, "{}", garbage.len());
        assert!(client.put(late, &late_bytes, |_| {}).is_err(), "full");
        // A pin of something the disk lacks is refused too.
        let err = client.pin(late, true).unwrap_err();
        assert!(format!("{err:#}").contains("is not on this node's disk"), "{err:#}");

        let output = std::process::Command::new(env!("CARGO_BIN_FILE_CAIRN_TOOLS_cairn"))
            .args(["gc", "--node", &address])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
        let expected = format!("collected {} objects ({} bytes)", garbage.len(), garbage.len() << 20);
        assert!(stdout.contains(&expected), "{stdout}");
        // Gone from memory too: nothing goes on serving (or building on) what the disk forgot.
        assert!(client.get(garbage[0].0, |_, _| {}).is_err(), "served after it was collected");
        client.put(late, &late_bytes, |_| {}).unwrap_or_else(|e| panic!("{e:#}\n{stdout}"));
        // The job's objects stayed (its journal names the job, and through it them all).
        let job_handles: Vec<Handle> = job.objects.iter().map(|o| o.0).collect();
        assert_eq!(client.missing(&job_handles).unwrap(), []);
        done.result.unwrap()
    };
    let (_node, address) = serving_node_with(with_disk(&disk, 24 << 20));
    let mut client = Client::connect(&address).unwrap();
    let garbage_handles: Vec<Handle> = garbage.iter().map(|g| g.0).collect();
    assert_eq!(client.missing(&garbage_handles).unwrap(), garbage_handles, "collected for good");
    assert!(client.get(pinned, |_, _| {}).unwrap() == pinned_bytes);
    assert!(client.get(late, |_, _| {}).unwrap() == late_bytes);
    let again = client.eval(job.root).unwrap();
    assert_eq!((again.result, again.tasks_run), (result, 0), "the memo entry and its value stayed");
    let replayed = client.replay(job.job).unwrap();
    assert_eq!(replayed.recorded, Some(result), "the journal stayed");
    // Unpinned, it goes at the next collection (and so does `late`, which nothing keeps).
    client.pin(pinned, false).unwrap();
    let collected = client.gc(0).unwrap();
    assert_eq!((collected.objects, collected.bytes), (2, 2 << 20), "{collected:?}");
    assert_eq!(client.missing(&[pinned, late]).unwrap(), [pinned, late]);
}

/// Group commit (docs/STORE.md, "On a node"): objects that arrive together are made durable by
/// one commit, not one each, and none is acknowledged before it. 64 PUTs sent back to back.
#[test]
fn puts_that_arrive_together_share_a_commit() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("group.raw");
    let objects: Vec<_> = (0..64).map(|i| blob(300 + i, 2000)).collect();
    {
        let (_node, address) = serving_node_with(with_disk(&disk, 64 << 20));
        let before = stat(&Client::connect(&address).unwrap().stats().unwrap(), "disk_commits");
        let mut raw = SecureStream::connect(&address).unwrap();
        let mut wire = Vec::new();
        for (i, (handle, bytes)) in objects.iter().enumerate() {
            let frame = cairn_proto::Frame {
                request: i as u32 + 1,
                message: cairn_proto::Message::Put { handle: *handle, bytes: bytes.clone() },
            };
            cairn_proto::encode(&frame, &mut wire);
        }
        raw.write_all(&wire).unwrap();
        raw.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
        let (mut replies, mut buf, mut stored) = (Vec::new(), vec![0u8; 65536], 0);
        while stored < objects.len() {
            let got = raw.read(&mut buf).unwrap();
            assert!(got > 0, "the node closed after {stored} answers");
            replies.extend_from_slice(&buf[..got]);
            while let Some((frame, used)) = cairn_proto::decode(&replies).unwrap() {
                assert!(matches!(frame.message, cairn_proto::Message::Stored { .. }), "{frame:?}");
                replies.drain(..used);
                stored += 1;
            }
        }
        let commits = stat(&Client::connect(&address).unwrap().stats().unwrap(), "disk_commits") - before;
        assert!(commits < 16, "{commits} commits for 64 objects sent together");
    }
    // Killed: every acknowledged object is there.
    let (_node, address) = serving_node_with(with_disk(&disk, 64 << 20));
    let handles: Vec<Handle> = objects.iter().map(|o| o.0).collect();
    assert_eq!(Client::connect(&address).unwrap().missing(&handles).unwrap(), []);
}

/// Benchmark (docs/STORE.md, "Figures"): how long a node takes to serve again after a crash
/// with 1 GiB stored. `cargo test --release -p cairn-tests --test store -- --ignored --nocapture`
#[test]
#[ignore = "a benchmark of about a minute; run it by name with --ignored"]
fn bench_recovery_after_a_crash_with_1_gib_stored() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("recovery.qcow2");
    let objects: Vec<(Handle, Vec<u8>)> = (0..16).map(|i| blob(500 + i, 64 << 20)).collect();
    {
        let (_node, address) = serving_node_with(with_disk(&disk, 4 << 30));
        let mut client = Client::connect(&address).unwrap();
        let started = std::time::Instant::now();
        for (handle, bytes) in &objects {
            client.put(*handle, bytes, |_| {}).unwrap();
        }
        let secs = started.elapsed().as_secs_f64();
        println!("bench: put 1 GiB in 16 objects of 64 MiB: {secs:.1} s, {:.1} MiB/s", 1024.0 / secs);
        // Killed (SIGKILL) right after the last STORED.
    }
    let started = std::time::Instant::now();
    let (node, address) = serving_node_with(with_disk(&disk, 4 << 30));
    let serving = started.elapsed();
    let line =
        node.transcript().iter().find(|l| l.contains("cairn: store disk")).cloned().unwrap_or_default();
    println!(
        "bench: serving again {:.2} s after QEMU started (boot and recovery); {line}",
        serving.as_secs_f64()
    );
    let mut client = Client::connect(&address).unwrap();
    let handles: Vec<Handle> = objects.iter().map(|o| o.0).collect();
    assert_eq!(client.missing(&handles).unwrap(), []);
    assert!(client.get(objects[15].0, |_, _| {}).unwrap() == objects[15].1);
}

/// A node whose disk fails under it (here its NBD disk is cut while it runs: every write and
/// flush after that fails) answers no evaluation: the memo entry it would promise could not be
/// kept, and after a restart the thunk would not be a hit (docs/STORE.md, "What the disk keeps").
#[test]
fn a_node_whose_disk_failed_answers_no_evaluation() {
    let server = NbdServer::blank(64 << 20).unwrap();
    let (_node, address) = serving_node_with(NodeOptions {
        nbd_disk: Some(NbdDisk { port: server.port() }),
        ..NodeOptions::default()
    });
    let mut client = Client::connect(&address).unwrap();
    let add = std::fs::read(env!("CARGO_BIN_FILE_CAIRN_TASKS_add")).unwrap();
    let procedure = Handle::blob(&add);
    client.put(procedure, &add, |_| {}).unwrap();
    let thunks: Vec<Handle> = (0..2u64)
        .map(|i| {
            let args = [Handle::blob(&i.to_le_bytes()), Handle::blob(&3u64.to_le_bytes())];
            let bytes = cairn_object::thunk::encode(Limits::new(1 << 20).unwrap(), procedure, &args).unwrap();
            let thunk = cairn_object::store::name(Kind::Thunk, &bytes).unwrap();
            client.put(thunk, &bytes, |_| {}).unwrap();
            thunk
        })
        .collect();
    let _ = server.cut(Cut::DropAll);
    // The first finds the disk failing as it commits the memo entry; the second, failed.
    for thunk in thunks {
        let err = client.eval(thunk).unwrap_err();
        let refused = err.downcast_ref::<Refused>().unwrap_or_else(|| panic!("{err:#}"));
        assert_eq!(refused.code, ErrorCode::Internal, "{err:#}");
    }
    let stats = client.stats().unwrap();
    assert_eq!(stat(&stats, "disk_failed"), 1, "{stats}");
}

/// A disk that cannot flush (docs/STORE.md, "On a node") stops the node's API, unless the node's
/// configuration says `disk_without_flush = yes`: then the node serves, and says loudly that
/// its data is not durable.
#[test]
fn a_disk_that_cannot_flush_is_used_only_when_the_configuration_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("volatile.raw");
    let serve = cairn_bootcfg::NodeConfig { mode: cairn_bootcfg::Mode::Serve, ..Default::default() };
    let mut node = Node::boot_with(NodeOptions {
        config: serve.clone(),
        disk_cannot_flush: true,
        ..with_disk(&disk, 16 << 20)
    });
    node.expect(r"^cairn: api off: the store's disk: the device cannot flush its writes", BOOT_TIMEOUT);
    drop(node);
    let (node, address) = serving_node_with(NodeOptions {
        config: cairn_bootcfg::NodeConfig { disk_without_flush: true, ..serve },
        disk_cannot_flush: true,
        ..with_disk(&disk, 16 << 20)
    });
    assert!(
        node.transcript()
            .iter()
            .any(|l| l.contains("cairn: store disk cannot flush") && l.contains("NOT durable")),
        "{:?}",
        node.transcript()
    );
    let (handle, bytes) = blob(700, 5000);
    let mut client = Client::connect(&address).unwrap();
    client.put(handle, &bytes, |_| {}).unwrap();
    assert!(client.get(handle, |_, _| {}).unwrap() == bytes);
}
