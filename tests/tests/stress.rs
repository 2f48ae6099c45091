//! A node with four CPUs on this two-core host, kept busy by several clients at once: wide
//! graphs of adds with known sums, hostile tasks mixed in as leaves (docs/ARCHITECTURE.md,
//! "CPUs"). No deadlock, no wrong result, every hostile leaf fails its graph with its own error,
//! and every CPU ran tasks. `CAIRN_STRESS_SECS` sets how long it runs (default 40; the closing
//! notes' runs use minutes).

use cairn_tests::thunk;
use std::time::{Duration, Instant};

use cairn_bootcfg::{LogLevel, NodeConfig};
use cairn_fuzz::Rng;
use cairn_object::Handle;
use cairn_tests::serving_node_with;
use cairn_tools::client::Client;
use cairn_tools::qemu::NodeOptions;

/// Hostile leaves, and what the graph over one must fail with.
const HOSTILE: &[(&str, &str)] = &[
    ("read-unmapped", "page fault: read of 0x555500000000"),
    ("hlt", "privileged instruction (hlt)"),
    ("write-kernel", "page fault: write of 0xffff800000001000"),
    ("stack-overflow", "stack overflow"),
    ("forge-open", "forged handle"),
    ("loop", "timeout"),
];

struct Graph {
    root: Handle,
    objects: Vec<(Handle, Vec<u8>)>,
    /// The sum, or the error a hostile leaf must give.
    expect: Result<u64, &'static str>,
}

/// A balanced tree of adds over 8 to 64 leaves; one in four graphs has a hostile leaf.
fn graph(rng: &mut Rng, add: Handle, hostile: Handle) -> Graph {
    let mut objects = Vec::new();
    let leaves = rng.range(8, 65) as usize;
    let bad = rng.chance(25).then(|| (rng.below(leaves as u64) as usize, rng.pick(HOSTILE)));
    let mut sum = 0u64;
    let zero = Handle::blob(&0u64.to_le_bytes());
    let mut level: Vec<Handle> = (0..leaves)
        .map(|i| match bad {
            Some((at, (mode, _))) if at == i => {
                let mode = Handle::blob(mode.as_bytes());
                thunk(hostile, &[mode], 4 << 20, &mut objects)
            }
            _ => {
                // Fresh values each time, so that the memo cannot answer.
                let value = rng.below(1 << 40);
                sum += value;
                let value = Handle::blob(&value.to_le_bytes());
                thunk(add, &[value, zero], 1 << 20, &mut objects)
            }
        })
        .collect();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| if pair.len() == 2 { thunk(add, pair, 1 << 20, &mut objects) } else { pair[0] })
            .collect();
    }
    Graph { root: level[0], objects, expect: bad.map_or(Ok(sum), |(_, (_, error))| Err(error)) }
}

#[test]
fn four_cpus_on_two_cores_under_several_clients_give_every_result_right() {
    let secs: u64 = std::env::var("CAIRN_STRESS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(40);
    let config = NodeConfig { log_level: LogLevel::Info, ..NodeConfig::default() };
    let (mut node, address) =
        serving_node_with(NodeOptions { cpus: 4, memory_mib: 1024, config, ..NodeOptions::default() });
    let add_elf = std::fs::read(env!("CARGO_BIN_FILE_CAIRN_TASKS_add")).unwrap();
    let hostile_elf = std::fs::read(env!("CARGO_BIN_FILE_CAIRN_TASKS_hostile")).unwrap();
    let (add, hostile) = (Handle::blob(&add_elf), Handle::blob(&hostile_elf));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let seed = std::process::id() as u64;
    let clients: Vec<_> = (0..3u64)
        .map(|c| {
            let (address, add_elf, hostile_elf) = (address.clone(), add_elf.clone(), hostile_elf.clone());
            std::thread::spawn(move || {
                let mut client = Client::connect(&address).unwrap();
                client.upload_missing(&[(add, add_elf), (hostile, hostile_elf)]).unwrap();
                let mut rng = Rng::for_case(seed, c);
                let (mut graphs, mut failed) = (0u64, 0u64);
                while Instant::now() < deadline {
                    let g = graph(&mut rng, add, hostile);
                    client.upload_missing(&g.objects).unwrap();
                    let outcome = client.eval(g.root);
                    match (&g.expect, outcome) {
                        (Ok(sum), Ok(evaluated)) => {
                            assert_eq!(
                                evaluated.result,
                                Handle::blob(&sum.to_le_bytes()),
                                "seed {seed} client {c}"
                            )
                        }
                        (Err(error), Err(e)) => {
                            let message = format!("{e:#}");
                            assert!(
                                message.contains(error),
                                "seed {seed} client {c}: want {error}, got {message}"
                            );
                            failed += 1;
                        }
                        (want, got) => panic!("seed {seed} client {c}: want {want:?}, got {got:?}"),
                    }
                    graphs += 1;
                }
                (graphs, failed)
            })
        })
        .collect();
    let mut total = (0, 0);
    for client in clients {
        let (graphs, failed) = client.join().expect("a client failed");
        total = (total.0 + graphs, total.1 + failed);
    }
    let stats = Client::connect(&address).unwrap().stats().unwrap();
    let per_cpu: Vec<u64> = (0..4)
        .map(|i| {
            let key = format!("cpu{i}_tasks=");
            stats.lines().find_map(|l| l.strip_prefix(&key)?.parse().ok()).unwrap_or(0)
        })
        .collect();
    eprintln!(
        "stress: {secs} s, {} graphs ({} with a hostile leaf), tasks per CPU {per_cpu:?}",
        total.0, total.1
    );
    assert!(total.0 > 3 && total.1 > 0, "too little ran: {total:?}");
    assert!(per_cpu.iter().all(|&n| n > 0), "a CPU ran no tasks: {per_cpu:?}\n{stats}");
    node.kill();
}
