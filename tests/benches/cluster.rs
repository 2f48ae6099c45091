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
    let job = |salt: &str| {
        let mut maps = Vec::new();
        for c in 0..12 {
            let mut text = String::from(salt);
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
    // Node against host coordinator, alternated, each on a fresh cluster (no memo answers);
    // the medians of ROUNDS rounds side by side at the end (the host is noisy).
    const ROUNDS: usize = 5;
    let mut times: std::collections::BTreeMap<(&str, &str), Vec<f64>> = Default::default();
    for round in 0..ROUNDS {
        for coordinator in ["host", "node"] {
            with_cluster(dir.path(), 3, |state| {
                let (ok, out, err) = cairn(&[
                    "eval",
                    "--cluster",
                    state,
                    "--coordinator",
                    coordinator,
                    "--job",
                    mandelbrot.to_str().unwrap(),
                ]);
                assert!(ok, "{out}{err}");
                let (secs, moved, result) = summary(&out, &err);
                times.entry(("mandelbrot", coordinator)).or_default().push(secs);
                println!(
                    "{}",
                    serde_json::json!({"bench": "coordinator-mandelbrot", "coordinator": coordinator, "round": round, "tiles": tiles.len(), "nodes": 3, "seconds": secs, "moved_bytes": moved, "result": result})
                );
                let path = job(&format!("{coordinator}{round}"));
                let (ok, out, err) = cairn(&[
                    "eval",
                    "--cluster",
                    state,
                    "--coordinator",
                    coordinator,
                    "--job",
                    path.to_str().unwrap(),
                    "--spread",
                ]);
                assert!(ok, "{out}{err}");
                let (secs, moved, _) = summary(&out, &err);
                times.entry(("wordcount-spread", coordinator)).or_default().push(secs);
                println!(
                    "{}",
                    serde_json::json!({"bench": "coordinator-wordcount-spread", "coordinator": coordinator, "round": round, "chunks": 12, "chunk_kib": 256, "nodes": 3, "placement": "locality", "seconds": secs, "moved_bytes": moved})
                );
            });
        }
    }
    for job in ["mandelbrot", "wordcount-spread"] {
        let (host, node) = (median(&times[&(job, "host")]), median(&times[&(job, "node")]));
        println!(
            "{}",
            serde_json::json!({"bench": "coordinator-medians", "job": job, "rounds": ROUNDS, "host_seconds": host, "node_seconds": node, "node_over_host": node / host})
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
