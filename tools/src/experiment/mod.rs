//! `cairn experiment EXP.toml` (docs/EXPERIMENTS.md): a job run several times on a fresh
//! cluster under each setting of a fault plan, and what each run took, moved and ran again, as
//! a table (CSV and JSON) and plots (SVG).
//!
//! ```toml
//! nodes = 3
//! runs = 3
//! [workload]
//! kind = "wordcount"
//! [faults]          # the wire in every run
//! delay_ms = 1
//! [sweep]           # one setting per value of one fault
//! drop = [0.0, 0.02, 0.05]
//! [[events]]        # in every run, at a time after the job starts
//! at_s = 1.0
//! kill = 2
//! ```

pub mod report;
pub mod run;
pub mod workload;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::cluster::faults::LinkFaults;
use crate::cluster::lifecycle::MAX_NODES;

/// An experiment as its file says it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// A title for the plots and the summary.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "default_nodes")]
    pub nodes: usize,
    /// Runs of the job per setting.
    #[serde(default = "default_runs")]
    pub runs: usize,
    /// Who coordinates each run: a node (`node`, the default) or this host (`host`).
    #[serde(default)]
    pub coordinator: Coordinator,
    #[serde(default)]
    pub placement: PlacementName,
    /// Start with the job's data spread over the nodes.
    #[serde(default)]
    pub spread: bool,
    /// The wire's draws in run r of every setting use seed + r.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// A run still going after this long is stopped and counted as failed.
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    /// Virtual CPUs and memory of each node.
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    pub workload: workload::Workload,
    /// The wire's faults in every run, before the sweep changes one of them.
    #[serde(default)]
    pub faults: LinkFaults,
    /// One fault and the values it takes, a setting each; none: one setting, `faults`.
    #[serde(default)]
    pub sweep: toml::Table,
    /// What happens during each run, at given times after the job starts.
    #[serde(default)]
    pub events: Vec<Event>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Coordinator {
    #[default]
    Node,
    Host,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PlacementName {
    #[default]
    Locality,
    MinAbsent,
    Random,
}

impl PlacementName {
    pub fn placement(self) -> cairn_sched::Placement {
        match self {
            PlacementName::Locality => cairn_sched::Placement::Locality,
            PlacementName::MinAbsent => cairn_sched::Placement::MinAbsent,
            PlacementName::Random => cairn_sched::Placement::Random,
        }
    }
}

/// Something that happens `at_s` seconds after a run's job starts: one of a node killed, a
/// node booted again, or the wire's faults replaced (a partition healed, say).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub at_s: f64,
    #[serde(default)]
    pub kill: Option<usize>,
    #[serde(default)]
    pub restart: Option<usize>,
    #[serde(default)]
    pub faults: Option<LinkFaults>,
}

/// The longest a run may be given (timeout_s): eleven days and a half.
const MAX_TIMEOUT_S: f64 = 1_000_000.0;

fn default_nodes() -> usize {
    3
}
fn default_runs() -> usize {
    3
}
fn default_seed() -> u64 {
    1
}
fn default_timeout() -> f64 {
    300.0
}
fn default_cpus() -> u32 {
    2
}
fn default_memory() -> u32 {
    512
}

/// One setting of the experiment: the wire's faults in its runs, and its value on the plots'
/// x axis.
#[derive(Clone, Debug, PartialEq)]
pub struct Setting {
    /// `drop=0.02`, or `base` without a sweep.
    pub label: String,
    pub x: f64,
    pub faults: LinkFaults,
}

impl Experiment {
    /// Reads and checks an experiment file; paths in it are relative to it.
    pub fn read(path: &Path) -> anyhow::Result<(Experiment, PathBuf)> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let experiment = Experiment::parse(&text).with_context(|| format!("in {}", path.display()))?;
        let dir = path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        Ok((experiment, dir))
    }

    pub fn parse(text: &str) -> anyhow::Result<Experiment> {
        let experiment: Experiment = toml::from_str(text)?;
        experiment.check()?;
        Ok(experiment)
    }

    fn check(&self) -> anyhow::Result<()> {
        if !(1..=MAX_NODES).contains(&self.nodes) {
            bail!("nodes: a cluster has 1 to {MAX_NODES} nodes (not {})", self.nodes);
        }
        if !(1..=1000).contains(&self.runs) {
            bail!("runs: 1 to 1,000 runs per setting (not {})", self.runs);
        }
        // Bounded: a run's deadline and its events' times are Durations and Instants, which a
        // time like 1e300 s would overflow (a panic mid-experiment, its cluster up).
        if !(self.timeout_s.is_finite() && self.timeout_s > 0.0 && self.timeout_s <= MAX_TIMEOUT_S) {
            bail!("timeout_s must be a positive number of seconds, at most {MAX_TIMEOUT_S}");
        }
        if !(1..=64).contains(&self.cpus) {
            bail!("cpus: 1 to 64 (not {})", self.cpus);
        }
        self.faults.check(self.nodes).map_err(|e| anyhow::anyhow!("faults: {e}"))?;
        for setting in self.settings()? {
            setting.faults.check(self.nodes).map_err(|e| anyhow::anyhow!("sweep, {}: {e}", setting.label))?;
        }
        for (i, event) in self.events.iter().enumerate() {
            let what = [event.kill.is_some(), event.restart.is_some(), event.faults.is_some()];
            if what.iter().filter(|w| **w).count() != 1 {
                bail!("events[{i}]: give exactly one of kill, restart or faults");
            }
            // (An event after the timeout would never happen.)
            if !(0.0..=self.timeout_s).contains(&event.at_s) {
                bail!(
                    "events[{i}]: at_s must be a time from 0 to timeout_s ({} s), in seconds",
                    self.timeout_s
                );
            }
            if let Some(node) = event.kill.or(event.restart).filter(|n| *n >= self.nodes) {
                bail!("events[{i}] names node {node}, but the cluster has nodes 0 to {}", self.nodes - 1);
            }
            if let Some(faults) = &event.faults {
                faults.check(self.nodes).map_err(|e| anyhow::anyhow!("events[{i}]: {e}"))?;
            }
        }
        // In the order they happen (as a run applies them): a restart of a node not down, or a
        // kill of one already down, would change nothing, silently.
        let mut order: Vec<(usize, &Event)> = self.events.iter().enumerate().collect();
        order.sort_by(|a, b| a.1.at_s.total_cmp(&b.1.at_s));
        let mut down = Vec::new();
        for (i, event) in order {
            if let Some(node) = event.kill {
                if down.contains(&node) {
                    bail!("events[{i}] kills node {node} at {} s, when it is down already", event.at_s);
                }
                down.push(node);
            }
            if let Some(node) = event.restart {
                if !down.contains(&node) {
                    bail!(
                        "events[{i}] restarts node {node} at {} s, but no event has killed it by then",
                        event.at_s
                    );
                }
                down.retain(|n| *n != node);
            }
        }
        Ok(())
    }

    /// The settings, in the sweep's order: each a copy of `faults` with the swept one set.
    pub fn settings(&self) -> anyhow::Result<Vec<Setting>> {
        let mut keys = self.sweep.iter();
        let Some((key, values)) = keys.next() else {
            return Ok(vec![Setting { label: "base".into(), x: 0.0, faults: self.faults.clone() }]);
        };
        if keys.next().is_some() {
            bail!("sweep: one fault at a time (it has {})", self.sweep.len());
        }
        let values = values.as_array().with_context(|| format!("sweep: {key} needs a list of values"))?;
        if values.is_empty() {
            bail!("sweep: {key} has no values");
        }
        let base = toml::Table::try_from(&self.faults)?;
        let mut settings = Vec::new();
        for (i, value) in values.iter().enumerate() {
            let mut table = base.clone();
            table.insert(key.clone(), value.clone());
            let faults: LinkFaults = toml::Value::Table(table)
                .try_into()
                .with_context(|| format!("sweep: {key} = {value} is not a fault the wire has"))?;
            // Settings are told apart by their label in the table and the summary: one given
            // twice would count each other's runs.
            if settings.iter().any(|s: &Setting| s.faults == faults) {
                bail!("sweep: {key} = {value} is given twice");
            }
            let x = value.as_float().or_else(|| value.as_integer().map(|v| v as f64)).unwrap_or(i as f64);
            settings.push(Setting { label: format!("{key}={value}"), x, faults });
        }
        Ok(settings)
    }

    /// The name of the swept fault (the plots' x axis).
    pub fn swept(&self) -> Option<&str> {
        self.sweep.keys().next().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        name = "loss"
        runs = 2
        [workload]
        kind = "wordcount"
        chunks = 6
        [faults]
        delay_ms = 1
        [sweep]
        drop = [0.0, 0.05]
        [[events]]
        at_s = 0.5
        kill = 2
        [[events]]
        at_s = 2
        restart = 2
    "#;

    #[test]
    fn an_experiment_reads_into_one_setting_per_swept_value() {
        let e = Experiment::parse(EXAMPLE).unwrap();
        assert_eq!((e.nodes, e.runs, e.coordinator, e.seed), (3, 2, Coordinator::Node, 1));
        let settings = e.settings().unwrap();
        assert_eq!(settings.len(), 2);
        assert_eq!(settings[1].label, "drop=0.05");
        assert_eq!(settings[1].x, 0.05);
        assert_eq!(settings[1].faults, LinkFaults { drop: 0.05, delay_ms: 1.0, ..LinkFaults::default() });
        assert_eq!(e.swept(), Some("drop"));
        assert_eq!(e.events[1], Event { at_s: 2.0, kill: None, restart: Some(2), faults: None });
    }

    #[test]
    fn without_a_sweep_there_is_one_setting() {
        let e = Experiment::parse("[workload]\nkind = \"mandelbrot\"\n").unwrap();
        let settings = e.settings().unwrap();
        assert_eq!(settings.len(), 1);
        assert!(settings[0].faults.is_none());
    }

    #[test]
    fn mistakes_are_named() {
        let bad = |text: &str| format!("{:#}", Experiment::parse(text).unwrap_err());
        let w = "[workload]\nkind = \"wordcount\"\n";
        assert!(bad(&format!("{w}[sweep]\nloss = [0.1]\n")).contains("loss"));
        assert!(bad(&format!("{w}[sweep]\ndrop = [0.1]\ndelay_ms = [1]\n")).contains("one fault at a time"));
        assert!(bad(&format!("{w}[sweep]\ndrop = [2.0]\n")).contains("probability"));
        assert!(bad(&format!("{w}[sweep]\ndrop = [0.0, 0.1, 0]\n")).contains("given twice"));
        assert!(bad(&format!("{w}[[events]]\nat_s = 1\nkill = 3\n")).contains("node 3"));
        assert!(bad(&format!("{w}[[events]]\nat_s = 1\nkill = 1\nrestart = 1\n")).contains("exactly one"));
        assert!(bad(&format!("nodes = 0\n{w}")).contains("1 to 16"));
        assert!(bad(&format!("{w}colour = 1\n")).contains("colour"));
        assert!(bad("nodes = 3\n").contains("workload"));
        // Times a Duration or an Instant cannot hold, or events after the run is over.
        assert!(bad(&format!("timeout_s = 1e300\n{w}")).contains("timeout_s"));
        assert!(bad(&format!("{w}[[events]]\nat_s = 1e300\nkill = 1\n")).contains("at_s"));
        assert!(bad(&format!("timeout_s = 10\n{w}[[events]]\nat_s = 11\nkill = 1\n")).contains("at_s"));
        assert!(bad(&format!("{w}[[events]]\nat_s = nan\nkill = 1\n")).contains("at_s"));
        // Restarts of nodes not down, kills of nodes down: in time order, not the file's.
        assert!(bad(&format!("{w}[[events]]\nat_s = 1\nrestart = 1\n")).contains("no event has killed it"));
        let late_kill = format!("{w}[[events]]\nat_s = 2\nrestart = 1\n[[events]]\nat_s = 3\nkill = 1\n");
        assert!(bad(&late_kill).contains("events[0] restarts node 1 at 2 s"));
        let twice = format!("{w}[[events]]\nat_s = 1\nkill = 1\n[[events]]\nat_s = 2\nkill = 1\n");
        assert!(bad(&twice).contains("down already"));
        let again = format!("{twice}[[events]]\nat_s = 1.5\nrestart = 1\n");
        assert!(Experiment::parse(&again).is_ok(), "killed, back, killed again");
        assert!(bad("[workload]\nkind = \"sort\"\n").contains("sort"));
    }
}
