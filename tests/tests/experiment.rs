//! `cairn experiment` and the cluster's faults (docs/EXPERIMENTS.md): a sweep over packet loss
//! written as a table and plots; a node killed and booted again mid-job; a partition, healed.

mod common;

use cairn_tools::experiment::run::RunRow;
use common::cluster::{Cluster, cairn, result_of, show, wordcount_job};

fn rows(dir: &std::path::Path) -> Vec<RunRow> {
    let mut reader = csv::Reader::from_path(dir.join("results.csv")).unwrap();
    reader.deserialize().map(|r| r.unwrap()).collect()
}

#[test]
fn a_sweep_over_loss_writes_a_table_and_plots_and_every_run_gives_the_same_result() {
    let dir = tempfile::tempdir().unwrap();
    let _turn = common::cluster::turn(3);
    let exp = dir.path().join("loss.toml");
    std::fs::write(
        &exp,
        "name = \"loss\"\nruns = 1\nspread = true\n[workload]\nkind = \"wordcount\"\nchunks = 6\nchunk_kib = 64\n[faults]\ndelay_ms = 1\n[sweep]\ndrop = [0.0, 0.05]\n",
    )
    .unwrap();
    let out = cairn().args(["experiment", exp.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let results = dir.path().join("loss-results");
    let rows = rows(&results);
    assert_eq!(rows.len(), 2, "{}", show(&out));
    assert_eq!((rows[0].setting.as_str(), rows[1].setting.as_str()), ("drop=0.0", "drop=0.05"));
    assert_eq!((rows[0].x, rows[1].x), (0.0, 0.05));
    for row in &rows {
        assert!(row.ok, "{row:?}");
        assert_eq!((row.tasks, row.lost_nodes, row.reruns), (7, 0, 0), "{row:?}");
        assert!(row.makespan_s > 0.0 && row.wire_bytes > 0, "{row:?}");
    }
    assert_eq!(rows[0].result, rows[1].result, "loss changes how long, never what");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(results.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["results_agree"], true);
    assert_eq!(json["swept"], "drop");
    assert_eq!(json["settings"].as_array().unwrap().len(), 2);
    for plot in ["makespan.svg", "wire.svg", "reruns.svg"] {
        let svg = std::fs::read_to_string(results.join(plot)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>") && svg.contains(">\ndrop\n<"),
            "{plot}"
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("drop=0.05") && stdout.contains("wrote "), "{stdout}");
}

/// A peer killed mid-job and booted again at once (with its disk and addresses): the
/// coordinator's links to the old one fail on the new one's reset, rather than wait out a
/// task's whole budget while heartbeats on fresh connections find the peer alive.
#[test]
fn a_peer_killed_and_booted_again_mid_job_is_lost_and_the_job_ends() {
    let dir = tempfile::tempdir().unwrap();
    // Alone: beside another test's cluster, the job once reached node 2 only after its kill
    // (so it was never lost, and waited on its reboot instead).
    let _turn = common::cluster::turn_alone();
    let exp = dir.path().join("kill.toml");
    std::fs::write(
        &exp,
        "runs = 1\ntimeout_s = 100\n[workload]\nkind = \"mandelbrot\"\n[sweep]\ndelay_ms = [0, 1]\n\
         [[events]]\nat_s = 0.8\nkill = 2\n[[events]]\nat_s = 2.5\nrestart = 2\n",
    )
    .unwrap();
    let out = cairn().args(["experiment", exp.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let rows = rows(&dir.path().join("kill-results"));
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert!(row.ok, "{row:?}\n{}", show(&out));
        assert_eq!(row.lost_nodes, 1, "{row:?}");
        // Found lost at its restart (2.5 s), not at its tasks' budgets: well within this.
        assert!(row.makespan_s < 60.0, "{row:?}");
    }
    assert_eq!(rows[0].result, rows[1].result);
}

/// `cairn cluster faults --partition`, `kill` and `restart` on a running cluster.
#[test]
fn a_partitioned_node_is_lost_to_the_job_and_a_killed_one_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(dir.path(), &["--fresh-disks"]);
    let state = cluster.state_path.to_str().unwrap();
    let job = wordcount_job(dir.path(), 6);
    let reference = cluster.eval_by_host(&job, &[]);
    assert_eq!(reference.status.code(), Some(0), "{}", show(&reference));

    let cut = cairn().args(["cluster", "faults", "--state", state, "--partition", "2"]).output().unwrap();
    assert_eq!(cut.status.code(), Some(0), "{}", show(&cut));
    assert!(String::from_utf8_lossy(&cut.stdout).contains("partition 2"), "{}", show(&cut));
    let wordcount2 = dir.path().join("second");
    std::fs::create_dir(&wordcount2).unwrap();
    let job2 = wordcount_job(&wordcount2, 6);
    let cut_off = cluster.eval(&job2, &[]);
    assert_eq!(cut_off.status.code(), Some(0), "{}", show(&cut_off));
    let summary = String::from_utf8_lossy(&cut_off.stderr);
    assert!(summary.contains("lost node 2") && !summary.contains("node 2: "), "{}", show(&cut_off));
    assert_eq!(result_of(&cut_off), result_of(&reference), "the same text, the same counts");

    let healed = cairn().args(["cluster", "faults", "--state", state]).output().unwrap();
    assert!(String::from_utf8_lossy(&healed.stdout).contains("faults: none"), "{}", show(&healed));
    let killed = cairn().args(["cluster", "kill", "1", "--state", state]).output().unwrap();
    assert_eq!(killed.status.code(), Some(0), "{}", show(&killed));
    let status = cairn().args(["cluster", "status", "--state", state]).output().unwrap();
    assert!(String::from_utf8_lossy(&status.stdout).contains("2 of 3 nodes up"), "{}", show(&status));
    let back = cairn().args(["cluster", "restart", "1", "--state", state]).output().unwrap();
    assert_eq!(back.status.code(), Some(0), "{}", show(&back));
    assert!(String::from_utf8_lossy(&back.stdout).contains("node 1 serving again"), "{}", show(&back));
    let status = cairn().args(["cluster", "status", "--state", state]).output().unwrap();
    assert!(String::from_utf8_lossy(&status.stdout).contains("3 of 3 nodes up"), "{}", show(&status));
    // Bad requests are named, and change nothing.
    let bad = cairn().args(["cluster", "kill", "7", "--state", state]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("node 7"), "{}", show(&bad));
    let bad = cairn().args(["cluster", "faults", "--state", state, "--drop", "1.5"]).output().unwrap();
    assert!(String::from_utf8_lossy(&bad.stderr).contains("probability"), "{}", show(&bad));
}
