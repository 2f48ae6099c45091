//! Running an experiment: for each setting, each run on a fresh cluster (empty disks: no memo
//! answers from an earlier run), the wire's faults set before the job starts and the events
//! applied at their times while it runs.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use anyhow::Context;
use cairn_object::Handle;
use serde::Serialize;

use super::{Coordinator, Event, Experiment, Setting};
use crate::cluster::control::{self, Plan};
use crate::cluster::lifecycle::{self, DiskOptions, NodeState, UpOptions};
use crate::qemu::Accel;

/// One run of the job: what it took, moved and ran again (a row of the results table).
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct RunRow {
    pub setting: String,
    pub x: f64,
    pub run: usize,
    /// The seed of the wire's draws in this run.
    pub seed: u64,
    pub ok: bool,
    /// Why the run failed (empty when it did not).
    pub error: String,
    /// The job's wall time from its hand-off (or the host's start) to its result.
    pub makespan_s: f64,
    pub moved_bytes: u64,
    pub uploaded_bytes: u64,
    /// Bytes the job's coordination sent over the cluster's wire: those moved between nodes,
    /// and with a node coordinating, its uploads to its peers too.
    pub wire_bytes: u64,
    pub tasks: u64,
    /// Evaluations run (a task run twice counts twice).
    pub task_runs: u64,
    /// Tasks answered by a memo.
    pub recalled: u64,
    /// Evaluations beyond one per task not answered by a memo: work done again.
    pub reruns: u64,
    pub lost_nodes: u64,
    /// Coordinating nodes that failed before one finished the job.
    pub handed_on: u64,
    pub result: String,
}

/// What one job run gave.
struct Outcome {
    wall: Duration,
    result: Handle,
    tasks: u64,
    task_runs: u64,
    recalled: u64,
    moved: u64,
    uploaded: u64,
    lost: u64,
    handed_on: u64,
}

/// Runs every setting of `experiment` `runs` times; `cluster_dir` holds the clusters' state
/// and disks, `job` is the job file. Each run is reported to `progress` as it ends.
pub fn run(
    experiment: &Experiment,
    job: &Path,
    cluster_dir: &Path,
    progress: &mut dyn FnMut(&RunRow),
) -> anyhow::Result<Vec<RunRow>> {
    let file = crate::jobfile::JobFile::read(job)?;
    anyhow::ensure!(
        file.manifest.grants().is_empty(),
        "an experiment's job is pure work; this one asks for IO ({})",
        job.display()
    );
    let objects = Arc::new(file.objects);
    std::fs::create_dir_all(cluster_dir)
        .with_context(|| format!("cannot create {}", cluster_dir.display()))?;
    let state_path = cluster_dir.join("cluster.json");
    let mut rows = Vec::new();
    for setting in experiment.settings()? {
        for run in 0..experiment.runs {
            let seed = experiment.seed.wrapping_add(run as u64);
            let mut row =
                RunRow { setting: setting.label.clone(), x: setting.x, run, seed, ..RunRow::default() };
            match one_run(experiment, &setting, seed, file.root, &objects, &state_path) {
                Ok(outcome) => {
                    row.ok = true;
                    row.makespan_s = outcome.wall.as_secs_f64();
                    row.moved_bytes = outcome.moved;
                    row.uploaded_bytes = outcome.uploaded;
                    row.wire_bytes = outcome.moved
                        + if experiment.coordinator == Coordinator::Node { outcome.uploaded } else { 0 };
                    row.tasks = outcome.tasks;
                    row.task_runs = outcome.task_runs;
                    row.recalled = outcome.recalled;
                    row.reruns = (outcome.task_runs + outcome.recalled).saturating_sub(outcome.tasks);
                    row.lost_nodes = outcome.lost;
                    row.handed_on = outcome.handed_on;
                    row.result = outcome.result.to_string();
                }
                Err(e) => row.error = format!("{e:#}"),
            }
            progress(&row);
            rows.push(row);
        }
    }
    Ok(rows)
}

/// Stops a run's cluster however the run ends.
struct Down<'a>(&'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = lifecycle::down(self.0);
    }
}

fn one_run(
    experiment: &Experiment,
    setting: &Setting,
    seed: u64,
    root: Handle,
    objects: &Arc<Vec<(Handle, Vec<u8>)>>,
    state_path: &Path,
) -> anyhow::Result<Outcome> {
    let options = UpOptions {
        nodes: experiment.nodes,
        memory_mib: experiment.memory_mib,
        cpus: experiment.cpus,
        accel: Accel::Tcg,
        faults: Vec::new(),
        disks: Some(DiskOptions { fresh: true, ..DiskOptions::default() }),
    };
    let state = lifecycle::up(&options, state_path).context("cannot bring the run's cluster up")?.state;
    let _down = Down(state_path);
    let mut plan = Plan { links: setting.faults.clone(), seed, down: Vec::new() };
    control::write(state_path, state.nodes.len(), &plan)?;
    // The switch picks the plan up within a few milliseconds; the job must not start before.
    std::thread::sleep(Duration::from_millis(200));
    let sched = cairn_sched::Options {
        placement: experiment.placement.placement(),
        verify: false,
        spread: experiment.spread,
        recall: true,
        seed,
    };
    let (tx, rx) = mpsc::channel();
    let (nodes, objects, coordinator) = (state.nodes.clone(), objects.clone(), experiment.coordinator);
    std::thread::spawn(move || {
        let _ = tx.send(job(coordinator, root, &objects, &nodes, &sched));
    });
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(experiment.timeout_s);
    let mut events: Vec<&Event> = experiment.events.iter().collect();
    events.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    let mut events = events.into_iter().peekable();
    loop {
        let next_event = events.peek().map(|e| started + Duration::from_secs_f64(e.at_s));
        let wake = next_event.map_or(deadline, |t| t.min(deadline));
        match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
            Ok(outcome) => return outcome,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                anyhow::bail!("the job's thread ended without an answer")
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() >= deadline {
            // The cluster goes down with `_down`, and the job's thread with its connections.
            anyhow::bail!("the job did not end within timeout_s ({} s)", experiment.timeout_s);
        }
        while let Some(event) =
            events.next_if(|e| started + Duration::from_secs_f64(e.at_s) <= Instant::now())
        {
            if let Some(node) = event.kill {
                plan.down.retain(|n| *n != node);
                plan.down.push(node);
            }
            if let Some(node) = event.restart {
                plan.down.retain(|n| *n != node);
            }
            if let Some(faults) = &event.faults {
                plan.links = faults.clone();
            }
            control::write(state_path, state.nodes.len(), &plan)?;
        }
    }
}

/// The job on the cluster, coordinated by node 0 or by this host; nothing printed.
fn job(
    coordinator: Coordinator,
    root: Handle,
    objects: &[(Handle, Vec<u8>)],
    nodes: &[NodeState],
    options: &cairn_sched::Options,
) -> anyhow::Result<Outcome> {
    let mut quiet = |_: &str| {};
    match coordinator {
        Coordinator::Node => {
            let handed = crate::cluster::handoff::run(root, objects, nodes, 0, options, &mut quiet)?;
            let field = |key: &str| handed.report.get(key).map(String::as_str).unwrap_or("");
            let task_runs = field("runs")
                .split(',')
                .filter_map(|r| r.rsplit_once(':'))
                .filter_map(|(_, n)| n.parse::<u64>().ok())
                .sum();
            Ok(Outcome {
                wall: handed.wall,
                result: handed.result,
                tasks: handed.count("tasks"),
                task_runs,
                recalled: handed.count("recalled"),
                moved: handed.count("moved_bytes"),
                uploaded: handed.count("uploaded_bytes"),
                lost: field("lost").split(',').filter(|a| !a.is_empty()).count() as u64,
                handed_on: handed.failed.len() as u64,
            })
        }
        Coordinator::Host => {
            let objects: HashMap<Handle, Vec<u8>> = objects.iter().cloned().collect();
            let graph = cairn_sched::Graph::build(root, usize::MAX, |h| objects.get(h).cloned())
                .map_err(anyhow::Error::msg)?;
            let report = crate::cluster::run::run(graph, &objects, nodes, *options, &mut quiet)?;
            let job = report.job;
            Ok(Outcome {
                wall: report.wall,
                result: job.result.context("the job ended without a result")?,
                tasks: job.tasks as u64,
                task_runs: job.runs.values().sum::<usize>() as u64,
                recalled: job.recalled as u64,
                moved: job.moved_bytes,
                uploaded: job.uploaded_bytes,
                lost: job.lost_nodes.len() as u64,
                handed_on: 0,
            })
        }
    }
}
