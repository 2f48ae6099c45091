//! The work of a cluster evaluation as a graph of tasks, and where to run each (docs/CLUSTER.md).
//! Pure: the driver (`run.rs`) owns the connections and feeds this what the nodes say.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::{anyhow, bail};
use cairn_object::{Handle, Kind, Limits, Thunk};

pub type NodeId = usize;

/// An argument: a value, or the value of another task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arg {
    Value(Handle),
    Task(usize),
}

#[derive(Clone, Debug)]
pub struct Task {
    /// The thunk as written.
    pub written: Handle,
    pub limits: Limits,
    pub procedure: Handle,
    pub args: Vec<Arg>,
}

/// The thunks reachable from a root through thunk arguments, each once, children before
/// parents. Thunks a task returns (dynamic graphs) run where their parent ran.
#[derive(Debug)]
pub struct Graph {
    pub tasks: Vec<Task>,
    pub root: Arg,
}

impl Graph {
    pub fn build(root: Handle, open: impl Fn(&Handle) -> Option<Vec<u8>>) -> anyhow::Result<Graph> {
        let mut tasks = Vec::new();
        let mut index: HashMap<Handle, usize> = HashMap::new();
        let root = Self::visit(root, &open, &mut tasks, &mut index, 0)?;
        Ok(Graph { tasks, root })
    }

    fn visit(
        handle: Handle,
        open: &impl Fn(&Handle) -> Option<Vec<u8>>,
        tasks: &mut Vec<Task>,
        index: &mut HashMap<Handle, usize>,
        depth: usize,
    ) -> anyhow::Result<Arg> {
        if handle.kind() != Kind::Thunk {
            return Ok(Arg::Value(handle));
        }
        if let Some(&i) = index.get(&handle) {
            return Ok(Arg::Task(i));
        }
        if depth > 10_000 {
            bail!("the graph is deeper than 10000 thunks");
        }
        let bytes = open(&handle).ok_or_else(|| anyhow!("{handle} is not among the job's objects"))?;
        let thunk = Thunk::decode(&bytes)?;
        if cairn_object::io::Effect::of(&thunk.procedure()).is_some() {
            bail!("{handle} is an IO request: run jobs with IO on one node (`cairn submit`)");
        }
        let mut args = Vec::new();
        for arg in thunk.args() {
            args.push(Self::visit(arg, open, tasks, index, depth + 1)?);
        }
        tasks.push(Task { written: handle, limits: thunk.limits(), procedure: thunk.procedure(), args });
        index.insert(handle, tasks.len() - 1);
        Ok(Arg::Task(tasks.len() - 1))
    }

    /// Values the graph starts from (procedures and value arguments), without literals.
    pub fn leaves(&self) -> BTreeSet<Handle> {
        let mut out = BTreeSet::new();
        for task in &self.tasks {
            out.insert(task.procedure);
            for arg in &task.args {
                if let Arg::Value(h) = arg {
                    out.insert(*h);
                }
            }
        }
        if let Arg::Value(h) = self.root {
            out.insert(h);
        }
        out.retain(|h| !h.is_literal());
        out
    }

    pub fn procedures(&self) -> BTreeSet<Handle> {
        self.tasks.iter().map(|t| t.procedure).filter(|h| !h.is_literal()).collect()
    }
}

/// How ready tasks are placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Where the fewest input bytes are missing; by load when inputs are small.
    Locality,
    /// Anywhere alive, by a seeded random choice (the baseline).
    Random,
}

/// Inputs smaller than this in total are not worth waiting for: balance load instead.
pub const SMALL_INPUTS: u64 = 64 * 1024;

/// Which nodes hold which objects.
#[derive(Debug, Default, Clone)]
pub struct Holders {
    map: HashMap<Handle, BTreeSet<NodeId>>,
}

impl Holders {
    pub fn add(&mut self, handle: Handle, node: NodeId) {
        if !handle.is_literal() {
            self.map.entry(handle).or_default().insert(node);
        }
    }

    pub fn holds(&self, handle: &Handle, node: NodeId) -> bool {
        handle.is_literal() || self.map.get(handle).is_some_and(|s| s.contains(&node))
    }

    pub fn holders(&self, handle: &Handle) -> impl Iterator<Item = NodeId> + '_ {
        self.map.get(handle).into_iter().flatten().copied()
    }

    /// Forgets a node (it died): what only it held is held by nobody now.
    pub fn drop_node(&mut self, node: NodeId) {
        for set in self.map.values_mut() {
            set.remove(&node);
        }
    }

    /// Bytes of `inputs` that `node` lacks.
    pub fn missing_bytes(&self, inputs: &[Handle], node: NodeId) -> u64 {
        inputs.iter().filter(|h| !self.holds(h, node)).map(|h| h.size()).sum()
    }
}

/// A node as placement sees it.
#[derive(Clone, Copy, Debug)]
pub struct Candidate {
    pub node: NodeId,
    /// Tasks queued or running there.
    pub load: usize,
}

/// Chooses a node for a task with `inputs` among `candidates` (alive, not excluded).
pub fn place(
    inputs: &[Handle],
    candidates: &[Candidate],
    holders: &Holders,
    policy: Placement,
    rng: &mut u64,
) -> Option<NodeId> {
    if candidates.is_empty() {
        return None;
    }
    match policy {
        Placement::Random => {
            // xorshift64: reproducible runs for a given seed.
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            Some(candidates[(*rng % candidates.len() as u64) as usize].node)
        }
        Placement::Locality => {
            let cost: BTreeMap<NodeId, u64> =
                candidates.iter().map(|c| (c.node, holders.missing_bytes(inputs, c.node))).collect();
            let least = *cost.values().min().expect("non-empty");
            // Every node within SMALL_INPUTS of the best is as good as the best: take the least
            // loaded of those (then the fewer missing bytes, then the lower id).
            candidates
                .iter()
                .filter(|c| cost[&c.node] <= least + SMALL_INPUTS)
                .min_by_key(|c| (c.load, cost[&c.node], c.node))
                .map(|c| c.node)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn blob(n: usize, seed: u8) -> Handle {
        Handle::blob(&vec![seed; n])
    }

    #[test]
    fn big_inputs_go_where_they_are_and_small_ones_balance_load() {
        let (a, b) = (blob(1 << 20, 1), blob(1 << 20, 2));
        let mut holders = Holders::default();
        holders.add(a, 0);
        holders.add(b, 2);
        let idle = |node| Candidate { node, load: 0 };
        let mut rng = 1;
        assert_eq!(
            place(&[a], &[idle(0), idle(1), idle(2)], &holders, Placement::Locality, &mut rng),
            Some(0)
        );
        assert_eq!(
            place(&[b], &[idle(0), idle(1), idle(2)], &holders, Placement::Locality, &mut rng),
            Some(2)
        );
        // Even when busy, a node holding 1 MiB of input beats an idle one that would fetch it.
        assert_eq!(
            place(&[a], &[Candidate { node: 0, load: 3 }, idle(1)], &holders, Placement::Locality, &mut rng),
            Some(0)
        );
        // Small inputs: the least loaded node wins.
        let small = blob(1000, 3);
        holders.add(small, 0);
        assert_eq!(
            place(
                &[small],
                &[Candidate { node: 0, load: 2 }, Candidate { node: 1, load: 1 }, idle(2)],
                &holders,
                Placement::Locality,
                &mut rng
            ),
            Some(2)
        );
        assert_eq!(place(&[a], &[], &holders, Placement::Locality, &mut rng), None);
    }

    #[test]
    fn losing_a_node_forgets_what_it_held() {
        let a = blob(100, 1);
        let mut holders = Holders::default();
        holders.add(a, 1);
        holders.add(a, 2);
        holders.drop_node(1);
        assert_eq!(holders.holders(&a).collect::<Vec<_>>(), [2]);
        assert_eq!(holders.missing_bytes(&[a, Handle::blob(b"literal")], 1), 100);
    }

    proptest! {
        #[test]
        fn locality_never_moves_more_than_any_other_choice_by_more_than_the_slack(
            sizes in proptest::collection::vec(1usize..200_000, 1..6),
            held in proptest::collection::vec(proptest::collection::vec(any::<bool>(), 3), 6),
            loads in proptest::collection::vec(0usize..4, 3),
        ) {
            let inputs: Vec<Handle> = sizes.iter().enumerate().map(|(i, n)| blob(*n, i as u8)).collect();
            let mut holders = Holders::default();
            for (h, held_by) in inputs.iter().zip(&held) {
                for (node, _) in held_by.iter().enumerate().filter(|(_, held)| **held) {
                    holders.add(*h, node);
                }
            }
            let candidates: Vec<Candidate> = (0..3).map(|node| Candidate { node, load: loads[node] }).collect();
            let chosen = place(&inputs, &candidates, &holders, Placement::Locality, &mut 7).unwrap();
            let best = (0..3).map(|n| holders.missing_bytes(&inputs, n)).min().unwrap();
            prop_assert!(holders.missing_bytes(&inputs, chosen) <= best + SMALL_INPUTS);
            let random = place(&inputs, &candidates, &holders, Placement::Random, &mut 7).unwrap();
            prop_assert!(random < 3);
        }
    }
}
