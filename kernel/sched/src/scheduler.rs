//! One job's coordination as a state machine (docs/SCHEDULER.md): events in, actions out.
//!
//! The job goes through three phases. *Probing*: every node is asked which of the job's
//! leaves it lacks. *Seeding*: procedures go to every node (they are small and every node may
//! run them) and, with `spread`, the data round robin. *Running*: ready tasks are first looked
//! up in every node's memo (one RECALL per node for all the tasks that became ready, unless
//! verifying), then placed, shipped (fetches from trusted peers, uploads of the job's own
//! objects) and evaluated; the result is fetched from a trusted holder and checked.

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use cairn_object::{Handle, Kind};

use crate::NodeId;
use crate::graph::{Arg, Graph};
use crate::holders::Holders;
use crate::messages::{
    Action, Event, MAX_FETCH_FAILURES, MAX_NODE_FAILURES, Mismatch, Options, PROBE_HANDLES, Report,
    node_failure,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    Waiting,
    Running,
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    New,
    Probing,
    Seeding,
    Running,
    Over,
}

pub struct Scheduler {
    pub(crate) graph: Graph,
    /// The job's own objects, which the driver can upload.
    pub(crate) objects: BTreeSet<Handle>,
    pub(crate) options: Options,
    pub(crate) phase: Phase,
    pub(crate) holders: Holders,
    pub(crate) alive: Vec<bool>,
    /// Nodes caught sending wrong bytes: never a source or a placement again.
    pub(crate) suspect: Vec<bool>,
    pub(crate) load: Vec<usize>,
    /// Every node that takes work (alive, not suspect), by (load, id).
    pub(crate) by_load: BTreeSet<(usize, NodeId)>,
    pub(crate) status: Vec<Status>,
    pub(crate) results: Vec<Option<Handle>>,
    /// Per task, how many of its argument tasks (each counted once) have no result.
    pub(crate) unresolved: Vec<usize>,
    /// Waiting tasks whose arguments all have values and whose memo lookup is over.
    pub(crate) ready: BTreeSet<usize>,
    /// Waiting tasks whose arguments all have values, for the next memo lookup.
    pub(crate) to_ask: BTreeSet<usize>,
    /// Tasks the nodes' memos were asked about (or will not be).
    pub(crate) recalled_asked: Vec<bool>,
    /// Tasks in the memo lookup under way.
    pub(crate) in_recall: Vec<bool>,
    /// Tasks done, tasks sent and not answered, and live nodes.
    pub(crate) finished: usize,
    pub(crate) running: usize,
    pub(crate) live: usize,
    /// The recall round under way: the nodes yet to answer, and the tasks asked.
    pub(crate) recall_waiting: BTreeSet<NodeId>,
    pub(crate) recall_batch: Vec<usize>,
    /// Thunks of the round (as written and as applied) to their task.
    pub(crate) recall_thunks: BTreeMap<Handle, usize>,
    /// What every node was asked whether it holds (sorted).
    pub(crate) probed: Vec<Handle>,
    /// Nodes yet to answer in the probing or seeding phase.
    pub(crate) phase_waiting: BTreeMap<NodeId, usize>,
    /// The node asked for the result's bytes.
    pub(crate) fetching_result: Option<NodeId>,
    /// In verify mode: the first result of a task and where it came from.
    pub(crate) first_result: Vec<Option<(NodeId, Handle)>>,
    /// Per task, nodes it failed on for the node's sake (a timeout, a failed fetch): it goes
    /// elsewhere while another node can take it.
    pub(crate) avoided: Vec<Vec<NodeId>>,
    /// Per task, peers a fetch of its inputs failed from: other holders come first.
    pub(crate) avoid_sources: Vec<Vec<NodeId>>,
    /// Tasks a node is working on.
    pub(crate) in_flight: Vec<BTreeSet<usize>>,
    pub(crate) fetch_failures: Vec<u32>,
    pub(crate) node_failures: Vec<u32>,
    pub(crate) rng: u64,
    pub(crate) report: Report,
    pub(crate) out: VecDeque<Action>,
    /// Why the job failed, when it was for an object of the job that no live node holds and
    /// the driver does not have: given it, the driver can run the job again.
    pub(crate) lacking: Option<Handle>,
}

impl Scheduler {
    /// A job over `nodes` nodes (ids 0..nodes); `objects` are the job's own objects, which
    /// the driver can upload. Nothing happens until [`Scheduler::start`].
    pub fn new(graph: Graph, objects: BTreeSet<Handle>, nodes: usize, options: Options) -> Scheduler {
        let tasks = graph.tasks.len();
        let mut unresolved = alloc::vec![0; tasks];
        for (i, task) in graph.tasks.iter().enumerate() {
            let mut args: Vec<usize> = task
                .args
                .iter()
                .filter_map(|a| match a {
                    Arg::Task(j) => Some(*j),
                    Arg::Value(_) => None,
                })
                .collect();
            args.sort_unstable();
            args.dedup();
            unresolved[i] = args.len();
        }
        let asked = !options.recall || options.verify;
        let roots: BTreeSet<usize> = (0..tasks).filter(|t| unresolved[*t] == 0).collect();
        let (ready, to_ask) = if asked { (roots, BTreeSet::new()) } else { (BTreeSet::new(), roots) };
        Scheduler {
            objects,
            options,
            phase: Phase::New,
            holders: Holders::default(),
            alive: alloc::vec![true; nodes],
            suspect: alloc::vec![false; nodes],
            load: alloc::vec![0; nodes],
            by_load: (0..nodes).map(|n| (0, n)).collect(),
            status: alloc::vec![Status::Waiting; tasks],
            results: alloc::vec![None; tasks],
            unresolved,
            ready,
            to_ask,
            recalled_asked: alloc::vec![asked; tasks],
            in_recall: alloc::vec![false; tasks],
            finished: 0,
            running: 0,
            live: nodes,
            recall_waiting: BTreeSet::new(),
            recall_batch: Vec::new(),
            recall_thunks: BTreeMap::new(),
            probed: Vec::new(),
            phase_waiting: BTreeMap::new(),
            fetching_result: None,
            first_result: alloc::vec![None; tasks],
            avoided: alloc::vec![Vec::new(); tasks],
            avoid_sources: alloc::vec![Vec::new(); tasks],
            in_flight: alloc::vec![BTreeSet::new(); nodes],
            fetch_failures: alloc::vec![0; tasks],
            node_failures: alloc::vec![0; tasks],
            rng: options.seed | 1,
            report: Report { tasks, ..Report::default() },
            out: VecDeque::new(),
            lacking: None,
            graph,
        }
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Begins the job: the first actions are ready to take.
    pub fn start(&mut self) {
        if self.phase != Phase::New {
            return;
        }
        if self.alive.is_empty() {
            return self.fail(String::from("the cluster has no nodes"));
        }
        if self.options.verify && self.alive.len() < 2 {
            return self.fail(String::from("--verify needs at least two nodes"));
        }
        self.phase = Phase::Probing;
        // Procedures always; the data too unless asking every node about all of it would cost
        // more than PROBE_HANDLES (then a node's data is found when a task needs it there).
        let leaves = self.graph.leaves();
        self.probed = if leaves.len().saturating_mul(self.alive.len()) <= PROBE_HANDLES {
            leaves
        } else {
            self.graph.procedures()
        };
        // (A node the driver reported lost before the start is not asked.)
        for node in (0..self.alive.len()).filter(|n| self.alive[*n]) {
            self.phase_waiting.insert(node, 1);
            self.out.push_back(Action::AskMissing { node, handles: self.probed.clone() });
        }
        self.advance();
    }

    /// The next action to take, if any.
    pub fn next_action(&mut self) -> Option<Action> {
        self.out.pop_front()
    }

    /// The job's object it failed for lack of, if that is why it failed: one the driver did
    /// not have (it started from part of the job's objects) and no live trusted node holds.
    pub fn lacking(&self) -> Option<Handle> {
        self.lacking
    }

    pub fn is_over(&self) -> bool {
        self.phase == Phase::Over
    }

    /// Takes in what happened; the actions it leads to follow from [`Scheduler::next_action`].
    pub fn handle(&mut self, event: Event) {
        if self.phase == Phase::Over || !self.names_known(&event) {
            return;
        }
        match event {
            Event::Missing { node, missing } => {
                if self.alive.get(node) != Some(&true) || self.phase != Phase::Probing {
                    return;
                }
                let mut missing = missing;
                missing.sort_unstable();
                for i in 0..self.probed.len() {
                    let leaf = self.probed[i];
                    if missing.binary_search(&leaf).is_err() {
                        self.holders.add(leaf, node);
                    }
                }
                self.answered(node);
            }
            Event::Uploaded { node, handle, bytes } => {
                if self.alive.get(node) != Some(&true) {
                    return;
                }
                self.holders.add(handle, node);
                self.report.uploaded_bytes = self.report.uploaded_bytes.saturating_add(bytes);
                if self.phase == Phase::Seeding {
                    self.answered(node);
                }
            }
            Event::Recalled { node, entries } => {
                if !self.recall_waiting.remove(&node) {
                    return;
                }
                for (thunk, value) in entries {
                    let Some(&task) = self.recall_thunks.get(&thunk) else { continue };
                    if self.status[task] == Status::Waiting && self.results[task].is_none() {
                        self.holders.add(value, node);
                        self.finish(task, value);
                        self.report.recalled += 1;
                    }
                }
            }
            Event::Done { node, task, result, moved, uploaded, ran } => {
                if !self.answer_from(node, task) {
                    return;
                }
                self.report.moved_bytes = self.report.moved_bytes.saturating_add(moved);
                self.report.uploaded_bytes = self.report.uploaded_bytes.saturating_add(uploaded);
                if ran {
                    *self.report.runs.entry(node).or_default() += 1;
                }
                if self.status[task] != Status::Running {
                    return self.advance(); // a late answer for work already redone elsewhere
                }
                self.holders.add(result, node);
                self.done(node, task, result);
            }
            Event::Failed { node, task, failure, why } => {
                if !self.answer_from(node, task) {
                    return;
                }
                if !node_failure(&failure) || self.node_failures[task] >= MAX_NODE_FAILURES {
                    return self.fail(format!("task {task} failed on node {node}: {why}"));
                }
                self.node_failures[task] += 1;
                self.progress(format!(
                    "cairn: task {task} failed on node {node} ({why}), which says more about the node than the task; it runs again"
                ));
                self.set_status(task, Status::Waiting);
                // It runs elsewhere if another node can take it (see `dispatch`).
                self.avoid(task, node);
            }
            Event::BadPeer { node, task, peer, why } => {
                if !self.answer_from(node, task) {
                    return;
                }
                self.progress(format!("cairn: node {node} caught node {peer} sending wrong bytes: {why}"));
                self.report.bad_peers.push((peer, why));
                self.make_suspect(peer);
                self.set_status(task, Status::Waiting);
            }
            Event::FetchFailed { node, task, peer, why } => {
                if !self.answer_from(node, task) {
                    return;
                }
                self.fetch_failures[task] += 1;
                let failures = self.fetch_failures[task];
                if failures > MAX_FETCH_FAILURES {
                    return self.fail(format!(
                        "task {task}: its inputs could not be fetched {failures} times; the last, node {node} from node {peer}: {why}"
                    ));
                }
                self.progress(format!(
                    "cairn: node {node} could not fetch from node {peer} ({why}); task {task} runs again"
                ));
                self.set_status(task, Status::Waiting);
                // Elsewhere, and from another source, where there are others.
                self.avoid(task, node);
                if !self.avoid_sources[task].contains(&peer) {
                    self.avoid_sources[task].push(peer);
                }
            }
            Event::ResultFetched { node } => {
                if self.fetching_result != Some(node) {
                    return;
                }
                let result = self.result();
                self.succeed(result);
                return;
            }
            Event::ResultWrong { node, why } => {
                if self.fetching_result != Some(node) {
                    return;
                }
                self.fetching_result = None;
                self.progress(format!(
                    "cairn: the host caught node {node} sending wrong bytes for the result: {why}"
                ));
                self.report.bad_peers.push((node, why));
                self.make_suspect(node);
            }
            Event::Moved { from, task, to } => self.moved(from, task, to),
            Event::Lost { node, why } => self.lose(node, &why),
            Event::Stalled { why } => return self.fail(why),
        }
        self.advance();
    }

    /// Whether the nodes and task an event names exist (a driver passing on what came over a
    /// network may get anything): events naming others are ignored.
    fn names_known(&self, event: &Event) -> bool {
        let nodes = self.alive.len();
        let tasks = self.graph.tasks.len();
        match event {
            Event::Missing { node, .. }
            | Event::Uploaded { node, .. }
            | Event::Recalled { node, .. }
            | Event::ResultFetched { node }
            | Event::ResultWrong { node, .. }
            | Event::Lost { node, .. } => *node < nodes,
            Event::Done { node, task, .. } | Event::Failed { node, task, .. } => {
                *node < nodes && *task < tasks
            }
            Event::BadPeer { node, task, peer, .. } | Event::FetchFailed { node, task, peer, .. } => {
                *node < nodes && *task < tasks && *peer < nodes
            }
            Event::Moved { from, task, to } => *from < nodes && *task < tasks && *to < nodes,
            Event::Stalled { .. } => true,
        }
    }

    fn avoid(&mut self, task: usize, node: NodeId) {
        if !self.avoided[task].contains(&node) {
            self.avoided[task].push(node);
        }
    }

    /// An answer about `task` from `node`: whether the node was working on it (else it is
    /// late, from a node since lost or for a task taken back, and is ignored).
    pub(crate) fn answer_from(&mut self, node: NodeId, task: usize) -> bool {
        if !self.in_flight.get_mut(node).is_some_and(|tasks| tasks.remove(&task)) {
            return false;
        }
        self.running -= 1;
        self.set_load(node, self.load[node].saturating_sub(1));
        true
    }

    pub(crate) fn done(&mut self, node: NodeId, task: usize, result: Handle) {
        if self.options.verify {
            match self.first_result[task] {
                None => {
                    self.first_result[task] = Some((node, result));
                    self.set_status(task, Status::Waiting); // the second copy
                    self.progress(format!("cairn: task {task} done on node {node} (1 of 2)"));
                    return;
                }
                Some((first_node, first)) if first != result => {
                    let thunk = self.applied(task).map(|(h, _)| h).unwrap_or(self.graph.tasks[task].written);
                    self.progress(format!(
                        "cairn: MISMATCH for {thunk}: node {first_node} says {first}, node {node} says {result}"
                    ));
                    self.report.mismatches.push(Mismatch {
                        thunk,
                        first: (first_node, first),
                        second: (node, result),
                    });
                }
                Some(_) => {}
            }
        }
        self.finish(task, result);
        let total = self.graph.tasks.len();
        self.progress(format!("cairn: task {task} done on node {node} ({} of {total})", self.finished));
    }

    pub(crate) fn answered(&mut self, node: NodeId) {
        if let Some(left) = self.phase_waiting.get_mut(&node) {
            *left -= 1;
            if *left == 0 {
                self.phase_waiting.remove(&node);
            }
        }
    }

    pub(crate) fn progress(&mut self, line: String) {
        self.out.push_back(Action::Progress(line));
    }

    pub(crate) fn fail(&mut self, why: String) {
        self.phase = Phase::Over;
        self.out.push_back(Action::Finished(Err(why)));
    }

    pub(crate) fn result(&self) -> Option<Handle> {
        match self.graph.root {
            Arg::Value(h) => Some(h),
            Arg::Task(root) => self.results[root],
        }
    }

    pub(crate) fn takes_work(&self, node: NodeId) -> bool {
        self.alive[node] && !self.suspect[node]
    }

    pub(crate) fn set_load(&mut self, node: NodeId, load: usize) {
        if self.takes_work(node) {
            self.by_load.remove(&(self.load[node], node));
            self.by_load.insert((load, node));
        }
        self.load[node] = load;
    }

    pub(crate) fn set_status(&mut self, task: usize, status: Status) {
        match (self.status[task] == Status::Done, status == Status::Done) {
            (false, true) => self.finished += 1,
            (true, false) => self.finished -= 1,
            _ => {}
        }
        self.status[task] = status;
        self.refresh(task);
    }

    /// Puts a task in the set it belongs to: ready, to ask the memos about, or neither.
    pub(crate) fn refresh(&mut self, task: usize) {
        self.ready.remove(&task);
        self.to_ask.remove(&task);
        if self.status[task] != Status::Waiting || self.unresolved[task] != 0 {
            return;
        }
        if self.recalled_asked[task] {
            self.ready.insert(task);
        } else if !self.in_recall[task] {
            self.to_ask.insert(task);
        }
    }

    /// Sets or clears a task's result, keeping its dependents' counts of missing arguments.
    pub(crate) fn set_result(&mut self, task: usize, result: Option<Handle>) {
        let had = self.results[task].is_some();
        self.results[task] = result;
        if had == result.is_some() {
            return;
        }
        for i in 0..self.graph.dependents(task).len() {
            let d = self.graph.dependents(task)[i];
            if had {
                self.unresolved[d] += 1;
            } else {
                self.unresolved[d] -= 1;
            }
            self.refresh(d);
        }
    }

    pub(crate) fn finish(&mut self, task: usize, result: Handle) {
        self.set_status(task, Status::Done);
        self.set_result(task, Some(result));
    }

    /// A task to compute again: its result is gone, or was never trusted.
    pub(crate) fn redo(&mut self, task: usize) {
        self.set_status(task, Status::Waiting);
        self.set_result(task, None);
        self.first_result[task] = None;
        self.avoided[task].clear();
        self.avoid_sources[task].clear();
    }

    pub(crate) fn make_suspect(&mut self, node: NodeId) {
        if self.suspect[node] {
            return;
        }
        if self.alive[node] {
            self.by_load.remove(&(self.load[node], node));
        }
        self.suspect[node] = true;
        // Its memo is no better than its bytes.
        self.recall_waiting.remove(&node);
    }

    pub(crate) fn lose(&mut self, node: NodeId, why: &str) {
        if !self.alive.get(node).is_some_and(|a| *a) {
            return;
        }
        self.progress(format!("cairn: node {node} lost ({why}); its tasks run elsewhere"));
        if self.takes_work(node) {
            self.by_load.remove(&(self.load[node], node));
        }
        self.alive[node] = false;
        self.live -= 1;
        self.holders.drop_node(node);
        self.report.lost_nodes.push(node);
        self.phase_waiting.remove(&node);
        self.recall_waiting.remove(&node);
        if self.fetching_result == Some(node) {
            self.fetching_result = None;
        }
        let taken = core::mem::take(&mut self.in_flight[node]);
        self.running -= taken.len();
        for task in taken {
            if self.status[task] == Status::Running {
                self.set_status(task, Status::Waiting);
            }
        }
        // Finished results that only the lost node held are gone: their tasks run again.
        for task in 0..self.graph.tasks.len() {
            if let (Status::Done, Some(result)) = (self.status[task], self.results[task])
                && !result.is_literal()
                && self.holders.holders(&result).next().is_none()
                && self.needed(task)
            {
                self.redo(task);
            }
        }
    }

    /// Does the root, or a task not yet done, still need this task's value?
    pub(crate) fn needed(&self, task: usize) -> bool {
        self.graph.root == Arg::Task(task)
            || self.graph.dependents(task).iter().any(|d| self.status[*d] != Status::Done)
    }

    pub(crate) fn resolved_args(&self, task: usize) -> Option<Vec<Handle>> {
        self.graph.tasks[task]
            .args
            .iter()
            .map(|a| match a {
                Arg::Value(h) => Some(*h),
                Arg::Task(j) => self.results[*j],
            })
            .collect()
    }

    /// The applied thunk of a task whose arguments all have values: its handle and encoding.
    pub(crate) fn applied(&self, task: usize) -> Option<(Handle, Vec<u8>)> {
        let args = self.resolved_args(task)?;
        let t = &self.graph.tasks[task];
        let bytes = cairn_object::thunk::encode(t.limits, t.procedure, &args).ok()?;
        Some((cairn_object::store::name(Kind::Thunk, &bytes).ok()?, bytes))
    }
}
