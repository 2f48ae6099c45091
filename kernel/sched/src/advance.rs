//! How the scheduler moves a job along between answers: seeding, memo rounds, placement and
//! shipping, and fetching the result.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use cairn_object::Handle;

use crate::NodeId;
use crate::graph::Arg;
use crate::messages::{Action, Order, RECALL_ALL_NODES, RECALL_HOLDERS, RECALL_TASKS, Report};
use crate::place::{Candidates, place};
use crate::scheduler::{Phase, Scheduler, Status};

impl Scheduler {
    /// Moves the job along as far as it can go without an answer.
    pub(crate) fn advance(&mut self) {
        loop {
            if self.phase == Phase::Over {
                return;
            }
            if self.live == 0 {
                return self.fail(String::from("every node is lost"));
            }
            match self.phase {
                Phase::New | Phase::Over => return,
                Phase::Probing | Phase::Seeding if !self.phase_waiting.is_empty() => return,
                Phase::Probing => {
                    self.phase = Phase::Seeding;
                    self.seed();
                    continue;
                }
                Phase::Seeding => {
                    self.phase = Phase::Running;
                    continue;
                }
                Phase::Running => {}
            }
            let Arg::Task(root) = self.graph.root else {
                let result = self.result();
                self.succeed(result);
                return;
            };
            if self.status[root] == Status::Done {
                if self.fetching_result.is_none() && !self.fetch_result(root) {
                    continue; // no trusted holder: the root runs again
                }
                return;
            }
            self.ask_memos();
            let mut changed = false;
            let ready: Vec<usize> = self.ready.iter().copied().collect();
            for task in ready {
                if self.phase == Phase::Over {
                    return;
                }
                if self.ready.contains(&task) {
                    changed |= self.dispatch(task);
                }
            }
            if self.phase == Phase::Over {
                return;
            }
            if changed {
                continue;
            }
            if self.running == 0 && self.recall_waiting.is_empty() {
                return self.fail(String::from("no task can be placed on the live nodes"));
            }
            return;
        }
    }

    /// Procedures to every node, and with `spread` the data round robin.
    pub(crate) fn seed(&mut self) {
        let procedures = self.graph.procedures();
        let live: Vec<NodeId> = (0..self.alive.len()).filter(|n| self.alive[*n]).collect();
        let mut next = 0;
        for h in self.graph.leaves() {
            let targets: Vec<NodeId> = if procedures.binary_search(&h).is_ok() {
                live.clone()
            } else if self.options.spread && !live.is_empty() {
                next += 1;
                alloc::vec![live[(next - 1) % live.len()]]
            } else {
                continue;
            };
            for node in targets {
                if self.holders.holds(&h, node) || !self.objects.contains(&h) {
                    continue;
                }
                *self.phase_waiting.entry(node).or_default() += 1;
                self.out.push_back(Action::Upload { node, handle: h });
            }
        }
    }

    /// One RECALL per trusted live node for the ready tasks not asked about yet, when no
    /// round is under way (a node answers between its evaluations: one request per round, not
    /// one per task).
    pub(crate) fn ask_memos(&mut self) {
        if !self.recall_waiting.is_empty() {
            return;
        }
        // The round before is over: its tasks not found are ready.
        for task in core::mem::take(&mut self.recall_batch) {
            self.in_recall[task] = false;
            self.recalled_asked[task] = true;
            self.refresh(task);
        }
        self.recall_thunks.clear();
        // A round asks about RECALL_TASKS tasks at most: one frame per node (82 KB), whatever
        // the job's width.
        while let Some(task) = self.to_ask.pop_first() {
            if self.recall_batch.len() == RECALL_TASKS {
                self.to_ask.insert(task);
                break;
            }
            self.in_recall[task] = true;
            self.recall_batch.push(task);
            if let Some((applied, _)) = self.applied(task) {
                self.recall_thunks.insert(self.graph.tasks[task].written, task);
                self.recall_thunks.insert(applied, task);
            }
        }
        if self.recall_batch.is_empty() {
            return;
        }
        let asked: Vec<NodeId> = (0..self.alive.len()).filter(|n| self.takes_work(*n)).collect();
        if asked.len() <= RECALL_ALL_NODES {
            let thunks: Vec<Handle> = self.recall_thunks.keys().copied().collect();
            for node in asked {
                self.recall_waiting.insert(node);
                self.out.push_back(Action::Recall { node, thunks: thunks.clone() });
            }
        } else {
            // A large cluster: each task is asked of its likely holders only (see
            // `likely_holders`), so a round costs the batch, not the batch times the nodes.
            let mut per_node: BTreeMap<NodeId, Vec<Handle>> = BTreeMap::new();
            for &task in &self.recall_batch {
                let Some((applied, _)) = self.applied(task) else { continue };
                for node in self.likely_holders(task) {
                    let thunks = per_node.entry(node).or_default();
                    thunks.push(self.graph.tasks[task].written);
                    thunks.push(applied);
                }
            }
            for (node, mut thunks) in per_node {
                thunks.sort_unstable();
                thunks.dedup();
                self.recall_waiting.insert(node);
                self.out.push_back(Action::Recall { node, thunks });
            }
        }
        if self.recall_waiting.is_empty() {
            self.ask_memos(); // nobody to ask: the round is over at once
        }
    }

    /// The nodes whose memo most likely holds `task`'s value, on a cluster too large to ask
    /// every node: those holding one of its inputs that few nodes hold (placement runs a task
    /// where its inputs are, so that is where it ran before). A task without such an input is
    /// asked of nobody and runs.
    fn likely_holders(&self, task: usize) -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> = Vec::new();
        for input in self.resolved_args(task).unwrap_or_default() {
            if self.holders.count(&input) <= RECALL_HOLDERS {
                nodes.extend(self.holders.holders(&input).filter(|n| self.takes_work(*n)));
            }
        }
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    /// Places and ships a ready task; whether anything changed (sent, or a lost input's
    /// producer set to run again).
    pub(crate) fn dispatch(&mut self, task: usize) -> bool {
        // (Its arguments all have values: `unresolved` counts those without.)
        if self.unresolved[task] != 0 {
            return false;
        }
        let inputs = self.inputs(task);
        // Never the node that made verification's first copy; not a node the task failed on
        // for the node's sake, unless no other can take it.
        let first_copy: Vec<NodeId> = self.first_result[task].map(|(n, _)| n).into_iter().collect();
        let mut excluded = first_copy.clone();
        excluded.extend(self.avoided[task].iter().copied());
        let mut chosen = None;
        for excluded in [&excluded, &first_copy] {
            let candidates =
                Candidates { by_load: &self.by_load, load: &self.load, excluded, live: self.live };
            chosen = place(&inputs, &candidates, &self.holders, self.options.placement, &mut self.rng);
            if chosen.is_some() {
                break;
            }
        }
        let Some(node) = chosen else {
            if self.options.verify {
                self.fail(String::from("verification needs two live nodes"));
            }
            return false;
        };
        self.ship(task, node, &inputs)
    }

    /// The objects a ready task reads that are not literals: its procedure and arguments,
    /// sorted, each once.
    pub(crate) fn inputs(&self, task: usize) -> Vec<Handle> {
        let mut inputs = alloc::vec![self.graph.tasks[task].procedure];
        inputs.extend(self.resolved_args(task).unwrap_or_default());
        inputs.retain(|h| !h.is_literal());
        inputs.sort_unstable();
        inputs.dedup();
        inputs
    }

    /// Sends a ready task to `node` with what it lacks of `inputs`: fetched from peers, or
    /// uploaded. Whether anything changed (see `dispatch`).
    pub(crate) fn ship(&mut self, task: usize, node: NodeId, inputs: &[Handle]) -> bool {
        let Some((applied, applied_bytes)) = self.applied(task) else { return false };
        // Each missing input comes from the least loaded trusted holder, else from the driver.
        let mut fetches: BTreeMap<NodeId, Vec<Handle>> = BTreeMap::new();
        let mut uploads = Vec::new();
        for h in inputs.iter().filter(|h| !self.holders.holds(h, node)) {
            // Sources a fetch of this task failed from come last.
            let avoid = &self.avoid_sources[task];
            let source = self
                .holders
                .holders(h)
                .filter(|p| self.takes_work(*p) && *p != node)
                .min_by_key(|p| (avoid.contains(p), self.load[*p], *p));
            match source {
                Some(peer) => fetches.entry(peer).or_default().push(*h),
                None if self.objects.contains(h) => uploads.push(*h),
                None => {
                    // An intermediate result no trusted node holds: run its task again first.
                    if let Some(j) = (0..self.graph.tasks.len()).find(|&j| self.results[j] == Some(*h)) {
                        self.redo(j);
                        return true;
                    }
                    // One of the job's objects that only lost or lying nodes held, and the
                    // driver lacks: the task can never run here. Said at once, naming it, so
                    // that a driver that has it can give it and run the job again.
                    self.lacking = Some(*h);
                    self.fail(format!(
                        "task {task} needs {h}, an object of the job that no live trusted node holds"
                    ));
                    return true;
                }
            }
        }
        let order = Order {
            task,
            applied,
            applied_bytes,
            uploads,
            fetches: fetches.into_iter().collect(),
            fresh: self.options.verify,
        };
        self.progress(format!("cairn: task {task} started on node {node}"));
        self.out.push_back(Action::Run { node, order });
        self.set_status(task, Status::Running);
        self.in_flight[node].insert(task);
        self.running += 1;
        self.set_load(node, self.load[node] + 1);
        self.report.dispatched += 1;
        true
    }

    /// Ends the job with `result` and the report so far.
    pub(crate) fn succeed(&mut self, result: Option<Handle>) {
        let report = Report { result, ..core::mem::take(&mut self.report) };
        self.phase = Phase::Over;
        self.out.push_back(Action::Finished(Ok(report)));
    }

    /// Asks a trusted holder for the result's bytes; false if none is left (the root is then
    /// set to run again).
    pub(crate) fn fetch_result(&mut self, root: usize) -> bool {
        let Some(result) = self.results[root] else { return false };
        if result.is_literal() {
            self.succeed(Some(result));
            return true;
        }
        let holder = self.holders.holders(&result).find(|n| self.takes_work(*n));
        match holder {
            Some(node) => {
                self.fetching_result = Some(node);
                self.out.push_back(Action::FetchResult { node, handle: result });
                true
            }
            None => {
                self.redo(root);
                false
            }
        }
    }
}
