//! What a running cluster is told to suffer (docs/EXPERIMENTS.md): the wire's faults and the
//! nodes that are to be down. `cairn cluster faults|kill|restart` and `cairn experiment` write
//! it beside the state file; the cluster's daemon reads it when it changes, sets the switch's
//! faults, kills the nodes newly down and boots again those no longer down.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::faults::LinkFaults;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Plan {
    /// The wire's faults, on every link.
    pub links: LinkFaults,
    /// The seed of the wire's draws (which frames are dropped, delayed, held back).
    pub seed: u64,
    /// Nodes (by index) to be down: killed, as by a power cut. A node taken off this list is
    /// booted again, with its disk, keys and addresses.
    pub down: Vec<usize>,
}

impl Plan {
    pub fn check(&self, nodes: usize) -> anyhow::Result<()> {
        self.links.check(nodes).map_err(anyhow::Error::msg)?;
        if let Some(node) = self.down.iter().find(|n| **n >= nodes) {
            anyhow::bail!("node {node} cannot be down: the cluster has nodes 0 to {}", nodes - 1);
        }
        Ok(())
    }

    /// Node `node` to be down (killed) or up again (`cairn cluster kill|restart`): refused for
    /// a node the cluster does not have, and for booting one that is not down (the daemon would
    /// boot nothing, and the caller wait for a new QEMU in vain).
    pub fn set_down(&mut self, nodes: usize, node: usize, down: bool) -> anyhow::Result<()> {
        if node >= nodes {
            anyhow::bail!("the cluster has no node {node} (it has nodes 0 to {})", nodes.saturating_sub(1));
        }
        if down {
            if !self.down.contains(&node) {
                self.down.push(node);
            }
        } else if self.down.contains(&node) {
            self.down.retain(|n| *n != node);
        } else {
            anyhow::bail!("node {node} is not down (only a node killed with `cairn cluster kill` restarts)");
        }
        Ok(())
    }
}

/// The plan's file for the cluster with state file `state_path`.
pub fn path(state_path: &Path) -> PathBuf {
    state_path.with_extension("faults.json")
}

/// The plan now in force (none written: no faults, every node up).
pub fn read(state_path: &Path) -> anyhow::Result<Plan> {
    let path = path(state_path);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            serde_json::from_str(&text).with_context(|| format!("{} is not a fault plan", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Plan::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Puts `plan` in force, checked against the cluster's `nodes`: whole (written aside, then
/// renamed), so the daemon never reads half of it.
pub fn write(state_path: &Path, nodes: usize, plan: &Plan) -> anyhow::Result<()> {
    plan.check(nodes)?;
    let path = path(state_path);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(plan)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
}

/// Removes the plan (a cluster coming up starts with none).
pub fn clear(state_path: &Path) {
    let _ = std::fs::remove_file(path(state_path));
}

/// The most of a plan's file the daemon reads (a plan is a few hundred bytes).
const MAX_PLAN_BYTES: u64 = 1 << 20;

/// Follows the plan's file for the daemon: the plan when the file has changed since last asked.
#[derive(Default)]
pub struct Watch {
    /// The file's bytes when last asked (none: no file, or one that could not be read).
    seen: Option<Vec<u8>>,
    /// Its modification time and length when last read (none: no file).
    stamp: Option<(Option<std::time::SystemTime>, u64)>,
    read_once: bool,
}

impl Watch {
    /// A changed plan, or why the file could not be used (once per change). Told by the bytes,
    /// not the file's time and length: the time has the kernel's coarse clock, and two plans of
    /// one length written within a tick (events at one time) left the second unseen.
    ///
    /// The daemon asks every turn of its loop (about every 10 ms a node) and the file changes a
    /// few times an experiment: the bytes are read only when the time or length differ from the
    /// last read, or the time is within a second (a second write within the clock's tick).
    pub fn changed(&mut self, state_path: &Path) -> Option<anyhow::Result<Plan>> {
        use std::io::Read;
        let path = path(state_path);
        let meta = std::fs::metadata(&path).ok();
        let modified = meta.as_ref().and_then(|m| m.modified().ok());
        let stamp = meta.map(|m| (modified, m.len()));
        let settled =
            modified.is_some_and(|t| t.elapsed().is_ok_and(|age| age > std::time::Duration::from_secs(1)));
        if self.read_once && stamp == self.stamp && (settled || stamp.is_none()) {
            return None;
        }
        (self.read_once, self.stamp) = (true, stamp);
        let bytes = std::fs::File::open(&path).ok().and_then(|file| {
            let mut bytes = Vec::new();
            file.take(MAX_PLAN_BYTES + 1).read_to_end(&mut bytes).ok().map(|_| bytes)
        });
        if bytes == self.seen {
            return None;
        }
        self.seen = bytes;
        Some(match &self.seen {
            // Missing (no faults) or unreadable (the error): as `read` finds it.
            None => read(state_path),
            Some(bytes) if bytes.len() as u64 > MAX_PLAN_BYTES => {
                Err(anyhow::anyhow!("{} is not a fault plan (over {MAX_PLAN_BYTES} bytes)", path.display()))
            }
            Some(bytes) => serde_json::from_slice(bytes)
                .with_context(|| format!("{} is not a fault plan", path.display())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_round_trips_and_a_missing_one_is_no_faults() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("c.json");
        assert_eq!(read(&state).unwrap(), Plan::default());
        let plan = Plan { links: LinkFaults { drop: 0.02, ..LinkFaults::default() }, seed: 7, down: vec![1] };
        write(&state, 3, &plan).unwrap();
        assert_eq!(read(&state).unwrap(), plan);
        assert!(path(&state).ends_with("c.faults.json"));
        let mut watch = Watch::default();
        assert_eq!(watch.changed(&state).unwrap().unwrap(), plan);
        assert!(watch.changed(&state).is_none(), "unchanged");
        clear(&state);
        assert_eq!(watch.changed(&state).unwrap().unwrap(), Plan::default());
    }

    #[test]
    fn a_plan_replaced_by_one_of_the_same_length_at_once_is_seen() {
        // The file's modification time has the kernel's coarse clock (milliseconds): two plans
        // of the same length written within one tick leave the same stamp.
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("c.json");
        let mut watch = Watch::default();
        for i in 0..50 {
            let a = Plan { down: vec![1], seed: i, ..Plan::default() };
            let b = Plan { down: vec![2], seed: i, ..Plan::default() };
            write(&state, 3, &a).unwrap();
            assert_eq!(watch.changed(&state).unwrap().unwrap(), a);
            write(&state, 3, &b).unwrap();
            assert_eq!(watch.changed(&state).map(|p| p.unwrap()), Some(b), "round {i}");
        }
    }

    #[test]
    fn a_settled_plan_is_not_read_again_and_its_next_change_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("c.json");
        let mut watch = Watch::default();
        assert!(watch.changed(&state).is_none(), "no file, as at the start: no change");
        let a = Plan { down: vec![1], ..Plan::default() };
        write(&state, 3, &a).unwrap();
        assert_eq!(watch.changed(&state).unwrap().unwrap(), a);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert!(watch.changed(&state).is_none(), "settled and unchanged");
        // Bytes changed behind an unchanged stamp would not be seen: the stamp is what is
        // watched once settled. A real write moves the time on.
        let b = Plan { down: vec![2], ..Plan::default() };
        write(&state, 3, &b).unwrap();
        assert_eq!(watch.changed(&state).map(|p| p.unwrap()), Some(b));
        clear(&state);
        assert_eq!(watch.changed(&state).unwrap().unwrap(), Plan::default(), "removed: no faults");
    }

    #[test]
    fn kill_and_restart_refuse_a_node_out_of_range_or_not_down() {
        let mut plan = Plan::default();
        assert!(plan.set_down(3, 9, false).unwrap_err().to_string().contains("no node 9"));
        assert!(plan.set_down(3, 3, true).unwrap_err().to_string().contains("no node 3"));
        assert!(plan.set_down(3, 1, false).unwrap_err().to_string().contains("node 1 is not down"));
        plan.set_down(3, 1, true).unwrap();
        plan.set_down(3, 1, true).unwrap();
        assert_eq!(plan.down, [1], "killed twice, listed once");
        plan.set_down(3, 1, false).unwrap();
        assert!(plan.down.is_empty());
    }

    #[test]
    fn a_bad_plan_is_refused_before_it_is_written_and_a_bad_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("c.json");
        let err = write(&state, 3, &Plan { down: vec![3], ..Plan::default() }).unwrap_err();
        assert!(err.to_string().contains("node 3"), "{err}");
        assert!(!path(&state).exists());
        std::fs::write(path(&state), "{\"links\": {\"loss\": 1}}").unwrap();
        let err = read(&state).unwrap_err();
        assert!(format!("{err:#}").contains("unknown field `loss`"), "{err:#}");
    }
}
