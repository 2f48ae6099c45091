//! Evaluating a graph across a cluster (docs/CLUSTER.md). The host coordinates: it asks every
//! node's memo first, places each ready task, has the chosen node fetch what it lacks straight
//! from the peers that hold it (over the cluster network, checked on receipt), and evaluates
//! there. A node that stops answering is dropped and its work runs elsewhere; with `verify`,
//! every task runs on two nodes and their results are compared.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use cairn_object::{Handle, Kind};
use cairn_proto::ErrorCode;

use super::graph::{Arg, Candidate, Graph, Holders, NodeId, Placement, place};
use super::lifecycle::{API_PORT, NodeState};
use crate::client::{Client, Refused, TaskFailed, WrongObject};

/// Times a task may fail to get its inputs from peers before the evaluation gives up.
const MAX_FETCH_FAILURES: u32 = 5;
/// Times a task may fail for a reason that is the node's rather than the task's before the
/// evaluation gives up (see [`node_failure`]).
const MAX_NODE_FAILURES: u32 = 2;

/// Whether a node's report of a failed task (the failure as the node sent it) says something
/// about the node rather than the task: a timeout (the budget is wall-clock time, and a loaded
/// node is slow) or the node running out of memory. EVAL-5 keeps these out of the memo for the
/// same reason; the task runs again, elsewhere if it can. Whole-text matches: a task's own
/// error message that merely ends like one of these is the task's.
fn node_failure(failure: &str) -> bool {
    failure == "timeout" || failure == "node out of memory"
}

#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub placement: Placement,
    pub verify: bool,
    /// Start with the graph's data blobs spread over the nodes, round robin, instead of
    /// uploading each where it is first needed.
    pub spread: bool,
    pub seed: u64,
}

/// Two nodes that disagree about one task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub thunk: Handle,
    pub first: (NodeId, Handle),
    pub second: (NodeId, Handle),
}

#[derive(Debug, Default)]
pub struct Report {
    pub result: Option<Handle>,
    /// The result's bytes, fetched from a node and checked against the handle.
    pub value: Option<Vec<u8>>,
    pub tasks: usize,
    /// Applications run, per node.
    pub runs: BTreeMap<NodeId, usize>,
    /// Tasks answered by some node's memo instead of running.
    pub recalled: usize,
    /// Bytes moved from node to node.
    pub moved_bytes: u64,
    /// Bytes uploaded from the host.
    pub uploaded_bytes: u64,
    pub lost_nodes: Vec<NodeId>,
    pub mismatches: Vec<Mismatch>,
    /// Peers caught sending wrong bytes, with what the fetching node said.
    pub bad_peers: Vec<(NodeId, String)>,
    pub wall: Duration,
}

/// What a node is asked to do for one task.
struct Order {
    task: usize,
    applied: Handle,
    applied_bytes: Vec<u8>,
    uploads: Vec<(Handle, Vec<u8>)>,
    fetches: Vec<(NodeId, [u8; 4], Vec<Handle>)>,
    /// Ignore the node's memo (verification: the node must compute it itself).
    fresh: bool,
}

enum Event {
    Done {
        node: NodeId,
        task: usize,
        result: Handle,
        moved: u64,
        uploaded: u64,
        ran: bool,
    },
    /// The task itself failed: deterministic, so the whole evaluation fails (unless the
    /// failure is the node's, see [`node_failure`]).
    Failed {
        node: NodeId,
        task: usize,
        failure: TaskFailed,
    },
    /// A peer sent wrong bytes while this node fetched from it.
    BadPeer {
        node: NodeId,
        task: usize,
        peer: NodeId,
        why: String,
    },
    /// The node could not fetch from a peer (busy too long, gone): the task is tried again.
    FetchFailed {
        node: NodeId,
        task: usize,
        peer: NodeId,
        why: String,
    },
    Lost {
        node: NodeId,
        why: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Waiting,
    Running,
    Done,
}

fn worker(node: NodeId, address: String, orders: mpsc::Receiver<Order>, events: mpsc::Sender<Event>) {
    let mut client = match Client::connect(&address) {
        Ok(c) => c,
        Err(e) => {
            let _ = events.send(Event::Lost { node, why: format!("{e:#}") });
            return;
        }
    };
    for order in orders {
        let event = run_order(&mut client, node, &order);
        let lost = matches!(event, Event::Lost { .. });
        if events.send(event).is_err() || lost {
            return;
        }
    }
}

fn run_order(client: &mut Client, node: NodeId, order: &Order) -> Event {
    let lost = |e: anyhow::Error| Event::Lost { node, why: format!("{e:#}") };
    let mut uploaded = 0;
    let mut moved: u64 = 0;
    for (handle, bytes) in
        order.uploads.iter().chain(std::iter::once(&(order.applied, order.applied_bytes.clone())))
    {
        match client.missing(&[*handle]) {
            Ok(m) if m.is_empty() => continue,
            Ok(_) => {}
            Err(e) => return lost(e),
        }
        if let Err(e) = client.put(*handle, bytes, |_| {}) {
            return lost(e);
        }
        uploaded += bytes.len() as u64;
    }
    for (peer, ip, handles) in &order.fetches {
        match client.fetch((*ip, API_PORT), handles) {
            // The figure is the node's: saturate rather than trust it not to overflow.
            Ok((_, bytes)) => moved = moved.saturating_add(bytes),
            Err(e) => {
                // Told apart by the error's type, not its text, which is partly the node's.
                let Some(refused) = e.downcast_ref::<Refused>() else { return lost(e) };
                let why = format!("{e:#}");
                if refused.code == ErrorCode::WrongHash || refused.message.contains("wrong bytes") {
                    return Event::BadPeer { node, task: order.task, peer: *peer, why };
                }
                // The node answered (with an error): it is the peer that failed, not this node.
                return Event::FetchFailed { node, task: order.task, peer: *peer, why };
            }
        }
    }
    let outcome = if order.fresh { client.eval_fresh(order.applied) } else { client.eval(order.applied) };
    match outcome {
        Ok(evaluated) => Event::Done {
            node,
            task: order.task,
            result: evaluated.result,
            moved,
            uploaded,
            ran: evaluated.tasks_run > 0,
        },
        // A failure reported by the node is the task's; a broken connection is the node's.
        Err(e) => match e.downcast::<TaskFailed>() {
            Ok(failure) => Event::Failed { node, task: order.task, failure },
            Err(e) => lost(e),
        },
    }
}

struct Coordinator<'a> {
    graph: &'a Graph,
    nodes: &'a [NodeState],
    objects: &'a HashMap<Handle, Vec<u8>>,
    options: Options,
    holders: Holders,
    alive: Vec<bool>,
    /// Nodes a peer was caught lying from: never used as a source again.
    suspect: BTreeSet<NodeId>,
    load: Vec<usize>,
    status: Vec<Status>,
    results: Vec<Option<Handle>>,
    /// In verify mode: the first result of a task and where it came from.
    first_result: Vec<Option<(NodeId, Handle)>>,
    /// Where each task was sent (to avoid running both verify copies on one node).
    placed_on: Vec<BTreeSet<NodeId>>,
    /// Tasks a node is working on.
    in_flight: Vec<BTreeSet<usize>>,
    /// Failed fetches per task (a peer busy for too long); bounded by MAX_FETCH_FAILURES.
    fetch_failures: Vec<u32>,
    /// Failures per task that were the node's (node_failure); bounded by MAX_NODE_FAILURES.
    node_failures: Vec<u32>,
    orders: Vec<Option<mpsc::Sender<Order>>>,
    probes: Vec<Option<Client>>,
    rng: u64,
    report: Report,
}

impl Coordinator<'_> {
    fn live(&self) -> Vec<NodeId> {
        (0..self.nodes.len()).filter(|n| self.alive[*n]).collect()
    }

    fn lose(&mut self, node: NodeId, why: &str, progress: &mut dyn FnMut(&str)) {
        if !self.alive[node] {
            return;
        }
        progress(&format!("cairn: node {node} lost ({why}); its tasks run elsewhere"));
        self.alive[node] = false;
        self.orders[node] = None;
        self.probes[node] = None;
        self.holders.drop_node(node);
        self.report.lost_nodes.push(node);
        for task in std::mem::take(&mut self.in_flight[node]) {
            if self.status[task] == Status::Running {
                self.status[task] = Status::Waiting;
                self.placed_on[task].remove(&node);
            }
        }
        // Finished results that only the lost node held are gone: their tasks run again.
        for task in 0..self.graph.tasks.len() {
            if let (Status::Done, Some(result)) = (self.status[task], self.results[task])
                && !result.is_literal()
                && self.holders.holders(&result).next().is_none()
                && self.needed(task)
            {
                self.status[task] = Status::Waiting;
                self.results[task] = None;
                self.first_result[task] = None;
                self.placed_on[task].clear();
            }
        }
    }

    /// Does a task not yet done (or the root) still need this task's value?
    fn needed(&self, task: usize) -> bool {
        self.graph.root == Arg::Task(task)
            || self
                .graph
                .tasks
                .iter()
                .enumerate()
                .any(|(i, t)| self.status[i] != Status::Done && t.args.contains(&Arg::Task(task)))
    }

    fn resolved_args(&self, task: usize) -> Option<Vec<Handle>> {
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
    fn applied(&self, task: usize) -> anyhow::Result<Option<(Handle, Vec<u8>)>> {
        let Some(args) = self.resolved_args(task) else { return Ok(None) };
        let t = &self.graph.tasks[task];
        let bytes = cairn_object::thunk::encode(t.limits, t.procedure, &args).map_err(|p| anyhow!("{p}"))?;
        Ok(Some((cairn_object::store::name(Kind::Thunk, &bytes)?, bytes)))
    }

    /// Asks every live node's memo about these tasks (as written, and as applied), one RECALL
    /// per node for all of them: a node answers only between evaluations, so asking task by
    /// task would make every dispatch wait for every busy node. Tasks remembered somewhere are
    /// done.
    fn recall(&mut self, tasks: &[usize], progress: &mut dyn FnMut(&str)) -> anyhow::Result<()> {
        let mut asked: HashMap<Handle, usize> = HashMap::new();
        for &task in tasks {
            if let Some((applied, _)) = self.applied(task)? {
                asked.insert(self.graph.tasks[task].written, task);
                asked.insert(applied, task);
            }
        }
        if asked.is_empty() {
            return Ok(());
        }
        let thunks: Vec<Handle> = asked.keys().copied().collect();
        for node in self.live() {
            if self.suspect.contains(&node) {
                continue; // its memo is no better than its bytes
            }
            let Some(probe) = self.probes[node].as_mut() else { continue };
            match probe.recall(&thunks) {
                Ok(entries) => {
                    for (thunk, value) in entries {
                        let Some(&task) = asked.get(&thunk) else { continue };
                        if self.status[task] == Status::Waiting {
                            self.holders.add(value, node);
                            self.finish(task, value);
                            self.report.recalled += 1;
                        }
                    }
                }
                Err(e) => self.lose(node, &format!("{e:#}"), progress),
            }
        }
        Ok(())
    }

    fn dispatch(&mut self, task: usize, progress: &mut dyn FnMut(&str)) -> anyhow::Result<bool> {
        let Some(args) = self.resolved_args(task) else { return Ok(false) };
        let Some((applied, applied_bytes)) = self.applied(task)? else { return Ok(false) };
        let t = &self.graph.tasks[task];
        let mut inputs = vec![t.procedure];
        inputs.extend(args.iter().copied());
        inputs.retain(|h| !h.is_literal());
        let candidates: Vec<Candidate> = self
            .live()
            .into_iter()
            .filter(|n| !self.placed_on[task].contains(n) && !self.suspect.contains(n))
            .map(|node| Candidate { node, load: self.load[node] })
            .collect();
        let Some(node) = place(&inputs, &candidates, &self.holders, self.options.placement, &mut self.rng)
        else {
            if self.live().is_empty() {
                bail!("every node is lost");
            }
            if self.options.verify {
                bail!("verification needs two live nodes");
            }
            return Ok(false);
        };
        // Each missing input comes from a live, trusted peer that holds it, else from the host.
        let mut fetches: BTreeMap<NodeId, Vec<Handle>> = BTreeMap::new();
        let mut uploads = Vec::new();
        for h in inputs.iter().filter(|h| !self.holders.holds(h, node)) {
            // Of the trusted holders, the least loaded: a node answers only between its own
            // evaluations, so a busy source makes the fetch crawl.
            let source = self
                .holders
                .holders(h)
                .filter(|p| self.alive[*p] && !self.suspect.contains(p) && *p != node)
                .min_by_key(|p| (self.load[*p], *p));
            match (source, self.objects.get(h)) {
                (Some(peer), _) => fetches.entry(peer).or_default().push(*h),
                (None, Some(bytes)) => uploads.push((*h, bytes.clone())),
                (None, None) => {
                    // An intermediate result no live node holds: run its task again first.
                    let producer = (0..self.graph.tasks.len()).find(|&j| self.results[j] == Some(*h));
                    if let Some(j) = producer {
                        self.status[j] = Status::Waiting;
                        self.results[j] = None;
                        self.first_result[j] = None;
                        self.placed_on[j].clear();
                    }
                    return Ok(false);
                }
            }
        }
        let fetches = fetches.into_iter().map(|(peer, hs)| (peer, self.nodes[peer].cluster_ip, hs)).collect();
        let order = Order { task, applied, applied_bytes, uploads, fetches, fresh: self.options.verify };
        let Some(sender) = self.orders[node].as_ref() else { return Ok(false) };
        if sender.send(order).is_err() {
            self.lose(node, "its worker stopped", progress);
            return Ok(false);
        }
        progress(&format!("cairn: task {task} started on node {node}"));
        self.status[task] = Status::Running;
        self.placed_on[task].insert(node);
        self.in_flight[node].insert(task);
        self.load[node] += 1;
        Ok(true)
    }

    /// Brings the root's value to the host from a trusted holder. A holder caught sending
    /// wrong bytes becomes suspect and the root runs again elsewhere; false until fetched.
    fn fetch_root(&mut self, root: usize, progress: &mut dyn FnMut(&str)) -> bool {
        let Some(result) = self.results[root] else { return false };
        let holders: Vec<NodeId> =
            self.holders.holders(&result).filter(|n| self.alive[*n] && !self.suspect.contains(n)).collect();
        for node in holders {
            let Some(probe) = self.probes[node].as_mut() else { continue };
            match probe.get(result, |_, _| {}) {
                Ok(bytes) => {
                    self.report.value = Some(bytes);
                    return true;
                }
                Err(e) => {
                    let why = format!("{e:#}");
                    if e.downcast_ref::<WrongObject>().is_some() {
                        progress(&format!(
                            "cairn: the host caught node {node} sending wrong bytes for the result: {why}"
                        ));
                        self.report.bad_peers.push((node, why));
                        self.suspect.insert(node);
                    } else {
                        self.lose(node, &why, progress);
                    }
                }
            }
        }
        // No trusted holder: compute the root again.
        self.status[root] = Status::Waiting;
        self.results[root] = None;
        self.placed_on[root].clear();
        false
    }

    fn finish(&mut self, task: usize, result: Handle) {
        self.status[task] = Status::Done;
        self.results[task] = Some(result);
    }

    fn on_event(&mut self, event: Event, progress: &mut dyn FnMut(&str)) -> anyhow::Result<()> {
        match event {
            Event::Done { node, task, result, moved, uploaded, ran } => {
                self.load[node] = self.load[node].saturating_sub(1);
                self.in_flight[node].remove(&task);
                self.report.moved_bytes = self.report.moved_bytes.saturating_add(moved);
                self.report.uploaded_bytes = self.report.uploaded_bytes.saturating_add(uploaded);
                if ran {
                    *self.report.runs.entry(node).or_default() += 1;
                }
                if self.status[task] != Status::Running {
                    return Ok(()); // a late answer for work already redone elsewhere
                }
                self.holders.add(result, node);
                let total = self.graph.tasks.len();
                if self.options.verify {
                    match self.first_result[task] {
                        None => {
                            self.first_result[task] = Some((node, result));
                            self.status[task] = Status::Waiting; // the second copy
                            progress(&format!("cairn: task {task} done on node {node} (1 of 2)"));
                            return Ok(());
                        }
                        Some((first_node, first)) if first != result => {
                            let t = &self.graph.tasks[task];
                            let args = self.resolved_args(task).unwrap_or_default();
                            let thunk = cairn_object::thunk::encode(t.limits, t.procedure, &args)
                                .ok()
                                .and_then(|b| cairn_object::store::name(Kind::Thunk, &b).ok())
                                .unwrap_or(t.written);
                            progress(&format!(
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
                let finished = self.status.iter().filter(|s| **s == Status::Done).count();
                progress(&format!("cairn: task {task} done on node {node} ({finished} of {total})"));
            }
            Event::Failed { node, task, failure } => {
                self.load[node] = self.load[node].saturating_sub(1);
                // TaskFailed's Display escapes the node's words.
                let why = failure.to_string();
                if !node_failure(&failure.failure) || self.node_failures[task] >= MAX_NODE_FAILURES {
                    bail!("task {task} failed on node {node}: {why}");
                }
                self.node_failures[task] += 1;
                self.in_flight[node].remove(&task);
                progress(&format!(
                    "cairn: task {task} failed on node {node} ({why}), which says more about the node than the task; it runs again"
                ));
                self.status[task] = Status::Waiting;
                // The node stays among those the task was placed on, so that it runs elsewhere,
                // unless no other node could take it.
                let elsewhere = self
                    .live()
                    .into_iter()
                    .any(|n| !self.placed_on[task].contains(&n) && !self.suspect.contains(&n));
                if !elsewhere {
                    self.placed_on[task].clear();
                }
            }
            Event::BadPeer { node, task, peer, why } => {
                self.load[node] = self.load[node].saturating_sub(1);
                self.in_flight[node].remove(&task);
                progress(&format!("cairn: node {node} caught node {peer} sending wrong bytes: {why}"));
                self.report.bad_peers.push((peer, why));
                self.suspect.insert(peer);
                self.status[task] = Status::Waiting;
                self.placed_on[task].remove(&node);
            }
            Event::FetchFailed { node, task, peer, why } => {
                self.load[node] = self.load[node].saturating_sub(1);
                self.in_flight[node].remove(&task);
                self.fetch_failures[task] += 1;
                if self.fetch_failures[task] > MAX_FETCH_FAILURES {
                    bail!(
                        "task {task}: node {node} could not fetch its inputs from node {peer} {MAX_FETCH_FAILURES} times: {why}"
                    );
                }
                progress(&format!(
                    "cairn: node {node} could not fetch from node {peer} ({why}); task {task} runs again"
                ));
                self.status[task] = Status::Waiting;
                self.placed_on[task].remove(&node);
            }
            Event::Lost { node, why } => self.lose(node, &why, progress),
        }
        Ok(())
    }
}

/// Evaluates `graph` on the cluster's nodes. `objects` holds every object of the graph that the
/// host has (the job's own objects), to upload where no node has them.
pub fn run(
    graph: &Graph,
    objects: &HashMap<Handle, Vec<u8>>,
    nodes: &[NodeState],
    options: Options,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let n = nodes.len();
    if n == 0 {
        bail!("the cluster has no nodes");
    }
    if options.verify && n < 2 {
        bail!("--verify needs at least two nodes");
    }
    let (events_tx, events) = mpsc::channel();
    let mut orders = Vec::new();
    let mut probes = Vec::new();
    for node in nodes {
        let (tx, rx) = mpsc::channel();
        let events_tx = events_tx.clone();
        let (index, address) = (node.index, node.api.clone());
        std::thread::spawn(move || worker(index, address, rx, events_tx));
        orders.push(Some(tx));
        probes.push(Client::connect(&node.api).ok());
    }
    let tasks = graph.tasks.len();
    let mut c = Coordinator {
        graph,
        nodes,
        objects,
        options,
        holders: Holders::default(),
        alive: probes.iter().map(Option::is_some).collect(),
        suspect: BTreeSet::new(),
        load: vec![0; n],
        status: vec![Status::Waiting; tasks],
        results: vec![None; tasks],
        first_result: vec![None; tasks],
        placed_on: vec![BTreeSet::new(); tasks],
        in_flight: vec![BTreeSet::new(); n],
        fetch_failures: vec![0; tasks],
        node_failures: vec![0; tasks],
        orders,
        probes,
        rng: options.seed | 1,
        report: Report { tasks, ..Report::default() },
    };
    // What each node has already, and (with `spread`) the data placed round robin.
    let leaves: Vec<Handle> = graph.leaves().into_iter().collect();
    for node in c.live() {
        if let Some(probe) = c.probes[node].as_mut() {
            let missing = probe.missing(&leaves)?;
            for h in leaves.iter().filter(|h| !missing.contains(h)) {
                c.holders.add(*h, node);
            }
        }
    }
    let procedures = graph.procedures();
    let live = c.live();
    let mut next = 0;
    for h in &leaves {
        let targets: Vec<NodeId> = if procedures.contains(h) {
            live.clone() // code goes everywhere: it is small and every node may run it
        } else if options.spread && !live.is_empty() {
            // (With no node answering there is nowhere to spread to; the loop below says so.)
            next += 1;
            vec![live[(next - 1) % live.len()]]
        } else {
            continue;
        };
        for node in targets {
            if c.holders.holds(h, node) {
                continue;
            }
            let bytes = objects.get(h).ok_or_else(|| anyhow!("{h} is not among the job's objects"))?;
            let probe = c.probes[node].as_mut().ok_or_else(|| anyhow!("node {node} is not connected"))?;
            probe.put(*h, bytes, |_| {})?;
            c.holders.add(*h, node);
            c.report.uploaded_bytes += bytes.len() as u64;
        }
    }
    let mut idle_rounds = 0;

    while let Arg::Task(root) = graph.root {
        if c.status[root] == Status::Done && c.fetch_root(root, progress) {
            break;
        }
        let ready: Vec<usize> =
            (0..tasks).filter(|&t| c.status[t] == Status::Waiting && c.resolved_args(t).is_some()).collect();
        let mut dispatched = false;
        if !options.verify {
            let fresh: Vec<usize> = ready.iter().copied().filter(|&t| c.first_result[t].is_none()).collect();
            let before = c.report.recalled;
            c.recall(&fresh, progress)?;
            dispatched |= c.report.recalled > before;
        }
        for task in ready {
            if c.status[task] == Status::Waiting {
                dispatched |= c.dispatch(task, progress)?;
            }
        }
        if c.live().is_empty() {
            bail!("every node is lost");
        }
        let running = c.status.contains(&Status::Running);
        if !running && !dispatched {
            // Nothing placeable this round (a lost result is being redone first); a few rounds
            // of that with nothing running means no progress is possible.
            idle_rounds += 1;
            if idle_rounds > tasks + 2 {
                bail!("no task can be placed on the live nodes");
            }
            continue;
        }
        idle_rounds = 0;
        if running {
            match events.recv_timeout(Duration::from_secs(600)) {
                Ok(event) => c.on_event(event, progress)?,
                Err(_) => bail!("no node answered for 600 s"),
            }
            while let Ok(event) = events.try_recv() {
                c.on_event(event, progress)?;
            }
        }
    }
    c.report.result = match graph.root {
        Arg::Value(h) => Some(h),
        Arg::Task(root) => c.results[root],
    };
    c.report.wall = started.elapsed();
    Ok(c.report)
}

#[cfg(test)]
mod tests {
    use super::node_failure;

    #[test]
    fn only_the_nodes_failures_are_retried() {
        assert!(node_failure("timeout"));
        assert!(node_failure("node out of memory"));
        assert!(!node_failure("out of memory: limit is 4096 bytes"));
        assert!(!node_failure("task error: timeout"));
        assert!(!node_failure("trap: page fault"));
        // A task cannot pass its own error off as the node's by how it ends.
        assert!(!node_failure("task error: x failed: timeout"));
    }
}
