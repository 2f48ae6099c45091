//! The cluster benchmark (docs/CLUSTER.md): the Mandelbrot job on 1, 2 and 3 nodes, and a
//! wordcount whose chunks start spread over 3 nodes, with locality placement and with random
//! placement; then both jobs on 3 nodes coordinated by a node and by the host, alternated
//! (docs/SCHEDULER.md, "Nodes coordinate"). Run: `cargo bench -p cairn-tests --bench cluster`.
//! Prints one JSON object a line.

use std::path::Path;
use std::process::{Command, Stdio};

fn cairn(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_FILE_CAIRN_TOOLS_cairn"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// (seconds, bytes moved between nodes, result) from `cairn eval --cluster`'s summary.
fn summary(stdout: &str, stderr: &str) -> (f64, u64, String) {
    let line = stderr.lines().find(|l| l.contains(" tasks on ")).expect("a summary line");
    let secs = line.split(" in ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    let moved =
        line.split("moved between nodes ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    (secs, moved, stdout.lines().next().unwrap_or("").to_string())
}

/// Stops the cluster when dropped, so that a failed run leaves no nodes behind.
struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        cairn(&["cluster", "down", "--state", &self.0]);
    }
}

/// A fresh cluster of `nodes` (empty disks: no memo answers from an earlier run).
fn with_cluster<T>(dir: &Path, nodes: usize, f: impl FnOnce(&str) -> T) -> T {
    let state = dir.join(format!("cluster-{nodes}.json"));
    let state = state.to_str().unwrap();
    let (ok, out, err) =
        cairn(&["cluster", "up", "--nodes", &nodes.to_string(), "--state", state, "--fresh-disks"]);
    assert!(ok, "{out}{err}");
    let _down = Down(state.to_string());
    f(state)
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let elf = env!("CARGO_BIN_FILE_CAIRN_TASKS_mandelbrot");
    let (w, h) = (512u32, 256u32);
    let mut tiles = Vec::new();
    for y in (0..h).step_by(64) {
        for x in (0..w).step_by(64) {
            tiles.push(format!("{{ task = \"{elf}\", memory_mib = 2, args = [{{ text = \"tile\" }}, {{ u32s = [{w}, {h}, {x}, {y}, 64, 64, 400] }}] }}"));
        }
    }
    let mandelbrot = dir.path().join("mandelbrot.toml");
    std::fs::write(&mandelbrot, format!("[root]\ntask = \"{elf}\"\nmemory_mib = 8\nargs = [{{ text = \"image\" }}, {{ u32s = [{w}, {h}, 64, 64] }}, {}]\n", tiles.join(", "))).unwrap();
    let mut base = None;
    for nodes in 1..=3 {
        let (secs, moved, result) = with_cluster(dir.path(), nodes, |state| {
            let (ok, out, err) = cairn(&["eval", "--cluster", state, "--job", mandelbrot.to_str().unwrap()]);
            assert!(ok, "{out}{err}");
            summary(&out, &err)
        });
        let base_secs = *base.get_or_insert(secs);
        println!(
            "{}",
            serde_json::json!({"bench": "mandelbrot", "tiles": tiles.len(), "nodes": nodes, "seconds": secs, "speedup": base_secs / secs, "moved_bytes": moved, "result": result})
        );
    }

    // Wordcount: 12 chunks of 256 KiB, spread round robin over 3 nodes.
    let words = ["cairn", "stone", "path", "summit", "trail", "marker", "ridge", "valley", "mist", "granite"];
    let wc = env!("CARGO_BIN_FILE_CAIRN_TASKS_wordcount");
    // Each job's counts differ (one more "cairn" than the last job's), so that no map's value,
    // and so no reduce, is one a node remembers.
    let jobs_made = std::cell::Cell::new(0);
    let job = |salt: &str| {
        jobs_made.set(jobs_made.get() + 1);
        let mut maps = Vec::new();
        for c in 0..12 {
            let mut text = format!("{salt} {}", "cairn ".repeat(jobs_made.get()));
            let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ c;
            while text.len() < 256 * 1024 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                text.push_str(words[(state % 10) as usize]);
                text.push(' ');
            }
            let file = dir.path().join(format!("chunk-{salt}-{c}.txt"));
            std::fs::write(&file, text).unwrap();
            maps.push(format!(
                "{{ task = \"{wc}\", args = [{{ text = \"map\" }}, \"{}\"] }}",
                file.display()
            ));
        }
        let path = dir.path().join(format!("wordcount-{salt}.toml"));
        std::fs::write(
            &path,
            format!("[root]\ntask = \"{wc}\"\nargs = [{{ text = \"reduce\" }}, {}]\n", maps.join(", ")),
        )
        .unwrap();
        path
    };
    // Node against host coordinator on one cluster of 3: a run of each job first to warm the
    // nodes (TCG translates a task's code on its first run), then ROUNDS pairs, alternated
    // (node first, then host first). No memo answers: each run's tiles ask for another memory
    // limit (another thunk, the same work), and each wordcount has fresh data. The host is
    // noisy (the same work has taken from 6 to 11 CPU-seconds here): the medians, and the
    // median of the pairs' ratios, side by side at the end.
    const ROUNDS: usize = 10;
    let tiles_job = |memory_mib: usize| {
        let path = dir.path().join(format!("mandelbrot-{memory_mib}.toml"));
        let text = std::fs::read_to_string(&mandelbrot).unwrap();
        // The root's limit too: its applied thunk (the tiles' values) would be the same.
        let text = text.replace("memory_mib = 2,", &format!("memory_mib = {memory_mib},"));
        let text = text.replace("memory_mib = 8\n", &format!("memory_mib = {}\n", 8 + memory_mib));
        std::fs::write(&path, text).unwrap();
        path
    };
    let eval = |state: &str, coordinator: &str, job: &Path, extra: &[&str]| {
        let path = job.to_str().unwrap();
        let mut args = vec!["eval", "--cluster", state, "--coordinator", coordinator, "--job", path];
        args.extend_from_slice(extra);
        let (ok, out, err) = cairn(&args);
        assert!(ok, "{out}{err}");
        summary(&out, &err)
    };
    // Bytes moved, each coordinator on a fresh cluster: on one cluster, the nodes keep the
    // tiles' and maps' values from run to run, and later runs move less.
    for coordinator in ["node", "host"] {
        with_cluster(dir.path(), 3, |state| {
            let (secs, moved, _) = eval(state, coordinator, &mandelbrot, &[]);
            let (wc_secs, wc_moved, _) =
                eval(state, coordinator, &job(&format!("fresh-{coordinator}")), &["--spread"]);
            println!(
                "{}",
                serde_json::json!({"bench": "coordinator-fresh", "coordinator": coordinator, "mandelbrot_seconds": secs, "mandelbrot_moved_bytes": moved, "wordcount_seconds": wc_secs, "wordcount_moved_bytes": wc_moved})
            );
        });
    }
    let mut times: std::collections::BTreeMap<(&str, &str), Vec<f64>> = Default::default();
    with_cluster(dir.path(), 3, |state| {
        let run = |coordinator: &str, job: &Path, extra: &[&str]| eval(state, coordinator, job, extra);
        run("node", &tiles_job(3), &[]);
        run("node", &job("warm"), &["--spread"]);
        for round in 0..ROUNDS {
            let order = if round % 2 == 0 { ["node", "host"] } else { ["host", "node"] };
            for (i, coordinator) in order.into_iter().enumerate() {
                let (secs, moved, result) = run(coordinator, &tiles_job(4 + 2 * round + i), &[]);
                times.entry(("mandelbrot", coordinator)).or_default().push(secs);
                println!(
                    "{}",
                    serde_json::json!({"bench": "coordinator-mandelbrot", "coordinator": coordinator, "round": round, "tiles": tiles.len(), "nodes": 3, "seconds": secs, "moved_bytes": moved, "result": result})
                );
                let (secs, moved, _) =
                    run(coordinator, &job(&format!("{coordinator}{round}")), &["--spread"]);
                times.entry(("wordcount-spread", coordinator)).or_default().push(secs);
                println!(
                    "{}",
                    serde_json::json!({"bench": "coordinator-wordcount-spread", "coordinator": coordinator, "round": round, "chunks": 12, "chunk_kib": 256, "nodes": 3, "placement": "locality", "seconds": secs, "moved_bytes": moved})
                );
            }
        }
    });
    for job in ["mandelbrot", "wordcount-spread"] {
        let (hosts, nodes) = (&times[&(job, "host")], &times[&(job, "node")]);
        let ratios: Vec<f64> = nodes.iter().zip(hosts).map(|(n, h)| n / h).collect();
        println!(
            "{}",
            serde_json::json!({"bench": "coordinator-medians", "job": job, "rounds": ROUNDS, "host_seconds": median(hosts), "node_seconds": median(nodes), "node_over_host": median(nodes) / median(hosts), "pairs_node_over_host_median": median(&ratios)})
        );
    }
    with_cluster(dir.path(), 3, |state| {
        // Fresh data for each run, so that no memo answers.
        for (placement, seed, salt) in
            [("locality", "1", "a"), ("random", "1", "b"), ("random", "2", "c"), ("random", "3", "d")]
        {
            let path = job(salt);
            let (ok, out, err) = cairn(&[
                "eval",
                "--cluster",
                state,
                "--job",
                path.to_str().unwrap(),
                "--spread",
                "--placement",
                placement,
                "--seed",
                seed,
            ]);
            assert!(ok, "{out}{err}");
            let (secs, moved, _) = summary(&out, &err);
            println!(
                "{}",
                serde_json::json!({"bench": "wordcount-spread", "chunks": 12, "chunk_kib": 256, "nodes": 3, "placement": placement, "seed": seed, "seconds": secs, "moved_bytes": moved})
            );
        }
    });
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}
