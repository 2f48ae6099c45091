//! A node with a disk and four CPUs, kept busy at once by evaluations whose tasks open large
//! blobs memory no longer holds (read back from the disk and hashed on several CPUs under the
//! store's lock), tasks that create large blobs, evaluations abandoned early, and an operator
//! collecting and scrubbing the disk and reading large objects meanwhile. No deadlock, no
//! wrong result, and once everything has ended no pin is left behind (`store_pinned` back at
//! its idle value). `CAIRN_DISK_CPUS_SECS` sets how long it runs (default 60).

use cairn_tests::{stat, thunk};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cairn_bootcfg::{LogLevel, NodeConfig};
use cairn_fuzz::Rng;
use cairn_object::Handle;
use cairn_tests::pinned::upload_pinned;
use cairn_tests::serving_node_with;
use cairn_tools::client::Client;
use cairn_tools::qemu::{NodeOptions, StoreDisk};

/// A text of `len` bytes, mostly zeros (cheap to count), with `word` every 4 KiB and "common"
/// every 64 KiB.
fn text(word: &str, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    for at in (0..len - 16).step_by(4096) {
        let w = if at % 65536 == 0 { "common" } else { word };
        bytes[at..at + w.len()].copy_from_slice(w.as_bytes());
    }
    bytes
}

fn counts_of(texts: &[&[u8]]) -> Vec<u8> {
    let mut counts: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    for t in texts {
        for word in t.split(|b| !b.is_ascii_alphabetic()).filter(|w| !w.is_empty()) {
            *counts.entry(word.to_ascii_lowercase()).or_default() += 1;
        }
    }
    counts
        .iter()
        .map(|(w, n)| format!("{} {n}\n", String::from_utf8_lossy(w)))
        .collect::<String>()
        .into_bytes()
}

#[test]
fn four_cpus_with_a_disk_under_reads_back_gc_and_scrub_stay_right_and_leave_no_pins() {
    let secs: u64 = std::env::var("CAIRN_DISK_CPUS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let cpus: u32 = std::env::var("CAIRN_DISK_CPUS_N").ok().and_then(|s| s.parse().ok()).unwrap_or(4);
    let dir = tempfile::tempdir().unwrap();
    let config = NodeConfig { log_level: LogLevel::Info, ..NodeConfig::default() };
    let (mut node, address) = serving_node_with(NodeOptions {
        cpus,
        memory_mib: 256,
        config,
        disk: Some(StoreDisk { path: dir.path().join("store.qcow2"), size: 1 << 30 }),
        ..NodeOptions::default()
    });
    let wc_elf = std::fs::read(env!("CARGO_BIN_FILE_CAIRN_TASKS_wordcount")).unwrap();
    let mb_elf = std::fs::read(env!("CARGO_BIN_FILE_CAIRN_TASKS_mandelbrot")).unwrap();
    let hostile_elf = std::fs::read(env!("CARGO_BIN_FILE_CAIRN_TASKS_hostile")).unwrap();
    let (wc, mb, hostile) = (Handle::blob(&wc_elf), Handle::blob(&mb_elf), Handle::blob(&hostile_elf));
    let mut client = Client::connect(&address).unwrap();
    let limit = stat(&client.stats().unwrap(), "store_limit");
    // Sixteen texts that together are more than memory holds: most are read back from the disk.
    let len = (limit / 12) as usize & !4095;
    let words = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo",
        "lima", "mike", "november", "oscar", "papa",
    ];
    let texts: Vec<Vec<u8>> = words.iter().map(|w| text(w, len)).collect();
    let text_handles: Vec<Handle> = texts.iter().map(|t| Handle::blob(t)).collect();
    let mut base = vec![(wc, wc_elf), (mb, mb_elf), (hostile, hostile_elf)];
    for t in &texts {
        base.push((Handle::blob(t), t.clone()));
    }
    client.upload_missing(&base).unwrap();
    for (h, _) in &base {
        client.pin(*h, true).unwrap();
    }
    let idle = client.stats().unwrap();
    eprintln!("store_limit={limit} text_len={len} idle store_pinned={}", stat(&idle, "store_pinned"));
    let idle_pinned = stat(&idle, "store_pinned");
    assert!(stat(&idle, "store_evictions") > 0, "memory had to let texts go: {idle}");

    let deadline = Instant::now() + Duration::from_secs(secs);
    let seed = std::process::id() as u64;
    let map = Handle::blob(b"map");
    let reduce = Handle::blob(b"reduce");
    let mut threads = Vec::new();
    // Word counts over several texts, the memo ignored so that every map runs again.
    for c in 0..2u64 {
        let (address, texts, text_handles) = (address.clone(), texts.clone(), text_handles.clone());
        threads.push(std::thread::spawn(move || {
            let mut client = Client::connect(&address).unwrap();
            let mut rng = Rng::for_case(seed, c);
            let mut n = 0;
            while Instant::now() < deadline {
                let mut objects = Vec::new();
                let pick: Vec<usize> = (0..rng.range(3, 9)).map(|_| rng.below(16) as usize).collect();
                let maps: Vec<Handle> =
                    pick.iter().map(|&i| thunk(wc, &[map, text_handles[i]], 4 << 20, &mut objects)).collect();
                let mut args = vec![reduce];
                args.extend(&maps);
                let root = thunk(wc, &args, 16 << 20, &mut objects);
                upload_pinned(&mut client, &objects, root);
                let want = counts_of(&pick.iter().map(|&i| texts[i].as_slice()).collect::<Vec<_>>());
                let got = client.eval_fresh(root).unwrap_or_else(|e| panic!("client {c} eval {n}: {e:#}"));
                assert_eq!(got.result, Handle::blob(&want), "client {c} eval {n}");
                client.pin(root, false).unwrap();
                n += 1;
            }
            eprintln!("client {c}: {n} word counts");
        }));
    }
    // Large tiles made on every CPU, and graphs that fail early (abandoning what ran ahead).
    {
        let address = address.clone();
        threads.push(std::thread::spawn(move || {
            let mut client = Client::connect(&address).unwrap();
            let mut rng = Rng::for_case(seed, 7);
            let (mut n, mut failed) = (0, 0);
            let tile = Handle::blob(b"tile");
            while Instant::now() < deadline {
                let mut objects = Vec::new();
                let tiles: Vec<Handle> = (0..6)
                    .map(|_| {
                        let w = 512 + rng.below(512) as u32;
                        let params: Vec<u8> =
                            [w, 256, 0, 0, w, 256, 1].iter().flat_map(|v| v.to_le_bytes()).collect();
                        let p = Handle::blob(&params);
                        objects.push((p, params));
                        thunk(mb, &[tile, p], 8 << 20, &mut objects)
                    })
                    .collect();
                let fail = rng.chance(40);
                let mut args = vec![reduce];
                if fail {
                    let mode = Handle::blob(b"read-unmapped");
                    args.push(thunk(hostile, &[mode], 4 << 20, &mut objects));
                }
                // Tiles of one iteration are all zeros: counted, they hold no word.
                let counted: Vec<Handle> =
                    tiles.iter().map(|t| thunk(wc, &[map, *t], 4 << 20, &mut objects)).collect();
                args.extend(&counted);
                let root = thunk(wc, &args, 16 << 20, &mut objects);
                upload_pinned(&mut client, &objects, root);
                match (fail, client.eval_fresh(root)) {
                    (false, Ok(got)) => assert_eq!(got.result, Handle::blob(b""), "tiles {n}"),
                    (true, Err(e)) => {
                        assert!(format!("{e:#}").contains("page fault"), "tiles {n}: {e:#}");
                        failed += 1;
                    }
                    (fail, got) => panic!("tiles {n} (fail {fail}): {got:?}"),
                }
                client.pin(root, false).unwrap();
                n += 1;
            }
            eprintln!("tiles: {n} graphs, {failed} failed early");
        }));
    }
    // The operator: GC, scrub, and reads of large texts (from the disk) while all that runs.
    {
        let (address, texts, text_handles) = (address.clone(), texts.clone(), text_handles.clone());
        threads.push(std::thread::spawn(move || {
            let mut client = Client::connect(&address).unwrap();
            let mut rng = Rng::for_case(seed, 9);
            let (mut gcs, mut scrubs, mut reads) = (0, 0, 0);
            while Instant::now() < deadline {
                match rng.below(3) {
                    0 => {
                        if let Err(e) = client.gc(0) {
                            panic!("gc: {e:#}");
                        }
                        gcs += 1;
                    }
                    1 => {
                        let s = client.scrub().unwrap();
                        assert_eq!(s.damaged_total, 0);
                        scrubs += 1;
                    }
                    _ => {
                        let i = rng.below(16) as usize;
                        assert!(client.get(text_handles[i], |_, _| {}).unwrap() == texts[i]);
                        reads += 1;
                    }
                }
            }
            eprintln!("operator: {gcs} gc, {scrubs} scrubs, {reads} reads");
        }));
    }
    let failed = threads.into_iter().map(|t| t.join().is_err()).fold(false, |a, b| a | b);
    if failed {
        node.kill();
        let _ = node.finish(Duration::from_secs(10));
        for line in node.transcript() {
            if line.contains("store") || line.contains("warn") || line.contains("error") {
                eprintln!("CONSOLE {line}");
            }
        }
        panic!("a client failed");
    }
    // Abandoned tasks may still be running: give them their budget to end.
    std::thread::sleep(Duration::from_secs(5));
    let stats = Client::connect(&address).unwrap().stats().unwrap();
    eprintln!("{stats}");
    assert_eq!(stat(&stats, "store_pinned"), idle_pinned, "pins left behind:\n{stats}");
    node.kill();
}

/// Every CPU keeps the address space of the last task it ran, and with it the pages of the
/// large objects that task opened (lent, not copied), until it runs another task: memory the
/// store no longer counts once it evicts them. With one CPU that is one object at most; with
/// four it is four, and a node whose store is full then lacks the heap for what its store
/// promises: here a GC of objects as large as those texts (it once read each whole and failed
/// with tens of MB of heap free in smaller pieces; it copies 1 MiB at a time now).
/// CAIRN_DISK_CPUS_N sets the CPUs.
#[test]
fn objects_lent_to_tasks_that_ended_do_not_starve_the_node() {
    let cpus: u32 = std::env::var("CAIRN_DISK_CPUS_N").ok().and_then(|s| s.parse().ok()).unwrap_or(4);
    let dir = tempfile::tempdir().unwrap();
    let mut config = NodeConfig { log_level: LogLevel::Info, ..NodeConfig::default() };
    config.ceilings.task_time_ms =
        std::env::var("CAIRN_DISK_CPUS_TASK_MS").ok().and_then(|s| s.parse().ok()).unwrap_or(30_000);
    config.ceilings.eval_time_s = 600;
    let (mut node, address) = serving_node_with(NodeOptions {
        cpus,
        memory_mib: 256,
        config,
        disk: Some(StoreDisk { path: dir.path().join("store.qcow2"), size: 1 << 30 }),
        ..NodeOptions::default()
    });
    let wc_elf = std::fs::read(env!("CARGO_BIN_FILE_CAIRN_TASKS_wordcount")).unwrap();
    let wc = Handle::blob(&wc_elf);
    let mut client = Client::connect(&address).unwrap();
    let limit = stat(&client.stats().unwrap(), "store_limit");
    let len = (limit / 5) as usize & !4095;
    let words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"];
    let texts: Vec<Vec<u8>> = words.iter().map(|w| text(w, len)).collect();
    let (map, reduce) = (Handle::blob(b"map"), Handle::blob(b"reduce"));
    let mut objects = vec![(wc, wc_elf)];
    let maps: Vec<Handle> = texts
        .iter()
        .map(|t| {
            objects.push((Handle::blob(t), t.clone()));
            thunk(wc, &[map, Handle::blob(t)], 4 << 20, &mut objects)
        })
        .collect();
    let mut args = vec![reduce];
    args.extend(&maps);
    let root = thunk(wc, &args, 16 << 20, &mut objects);
    client.upload_missing(&objects).unwrap();
    client.pin(root, true).unwrap();
    let want = counts_of(&texts.iter().map(|t| t.as_slice()).collect::<Vec<_>>());
    let got = client.eval(root);
    let stats = client.stats().unwrap();
    eprintln!("{}", stats.lines().filter(|l| l.starts_with("cpu")).collect::<Vec<_>>().join(" "));
    assert_eq!(got.unwrap().result, Handle::blob(&want));
    eprintln!(
        "cpus={cpus} text_len={len} store_used={} tasks_started_ahead={}",
        stat(&stats, "store_used"),
        stat(&stats, "tasks_started_ahead")
    );
    // Everything the texts' pages were counted for is long evicted or collectable; the node
    // must have the heap for a GC of objects of this size.
    eprintln!(
        "{}",
        stats
            .lines()
            .filter(|l| l.starts_with("heap") || l.starts_with("frames") || l.starts_with("store_"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    for round in 0..3 {
        if let Err(e) = client.gc(0) {
            panic!("gc round {round} with {cpus} CPUs: {e:#}");
        }
    }
    node.kill();
}
