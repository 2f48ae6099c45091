//! `cairn experiment EXP.toml`: a job under a fault plan, run after run, into a results table
//! and plots (docs/EXPERIMENTS.md).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use cairn_tools::experiment::{Experiment, report, run};
use cairn_tools::untrusted::escape;
use clap::Args;

#[derive(Args)]
pub struct ExperimentArgs {
    /// The experiment: the job, the cluster, the faults and the sweep (TOML).
    pub experiment: PathBuf,
    /// Where the results go (made if missing): results.csv, results.json, the plots, and the
    /// runs' clusters. Default: EXP-results beside the experiment file.
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    /// Runs per setting, instead of the file's.
    #[arg(long)]
    pub runs: Option<usize>,
}

pub fn experiment(args: &ExperimentArgs) -> anyhow::Result<ExitCode> {
    let (mut experiment, dir) = Experiment::read(&args.experiment)?;
    if let Some(runs) = args.runs {
        anyhow::ensure!((1..=1000).contains(&runs), "--runs: 1 to 1,000 runs per setting");
        experiment.runs = runs;
    }
    let stem =
        args.experiment.file_stem().map_or_else(|| "experiment".into(), |s| s.to_string_lossy().into_owned());
    let out = args.out.clone().unwrap_or_else(|| dir.join(format!("{stem}-results")));
    let workload = out.join("workload");
    std::fs::create_dir_all(&workload).with_context(|| format!("cannot create {}", workload.display()))?;
    let job = experiment.workload.job_file(&workload, &dir)?;
    let settings = experiment.settings()?;
    let title = experiment.name.clone().unwrap_or(stem);
    eprintln!(
        "cairn: experiment {}: {} settings x {} runs on {} nodes, a fresh cluster each",
        escape(&title),
        settings.len(),
        experiment.runs,
        experiment.nodes
    );
    let rows = run::run(&experiment, &job, &out.join("clusters"), &mut |row| {
        if row.ok {
            eprintln!(
                "cairn: {} run {}: {:.2} s, moved {} bytes ({} over the wire), {} run again, {} nodes lost",
                row.setting,
                row.run,
                row.makespan_s,
                row.moved_bytes,
                row.wire_bytes,
                row.reruns,
                row.lost_nodes
            );
        } else {
            // The error may quote a node's words.
            eprintln!("cairn: {} run {}: FAILED: {}", row.setting, row.run, escape(&row.error));
        }
    })?;
    let files = report::write(&out, &title, experiment.swept(), &rows)?;
    println!(
        "{:<24} {:>5} {:>7} {:>12} {:>12} {:>12} {:>12} {:>8}",
        "setting", "runs", "failed", "makespan s", "(min-max)", "moved bytes", "wire bytes", "re-runs"
    );
    for s in report::summarize(&rows) {
        println!(
            "{:<24} {:>5} {:>7} {:>12.2} {:>12} {:>12.0} {:>12.0} {:>8.1}",
            s.setting,
            s.runs,
            s.failed,
            s.makespan_median_s,
            format!("{:.2}-{:.2}", s.makespan_min_s, s.makespan_max_s),
            s.moved_median_bytes,
            s.wire_median_bytes,
            s.reruns_median
        );
    }
    let agree = report::results_agree(&rows);
    if !agree {
        println!("RESULTS DIFFER between runs: a fault changed what the job computed (see results.csv)");
    }
    for file in files {
        println!("wrote {}", file.display());
    }
    // Failed runs are results of the experiment, but one where none ended measured nothing
    // (a cluster that never came up, a job that cannot run); a result that differs is a bug.
    let none_ended = !rows.iter().any(|r| r.ok);
    if none_ended {
        println!("NO RUN ENDED: see the errors in results.csv");
    }
    Ok(if agree && !none_ended { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
