//! A cluster of fake nodes that carries out the scheduler's actions at once, in memory: what
//! the host's driver does with sockets, with faults on demand. A task's result is a function
//! of its applied thunk, so every honest run of a job ends with the same root.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};

use cairn_object::{Handle, Kind, Limits};
use cairn_sched::{Action, Arg, Event, Graph, NodeId, Options, Placement, Report, Scheduler};

pub fn procedure() -> Handle {
    Handle::blob(&[7u8; 100])
}

/// What an honest node computes for an applied thunk (at least 33 bytes: never a literal).
pub fn compute(applied: &Handle) -> Handle {
    let mut bytes = b"result of ".to_vec();
    bytes.extend_from_slice(applied.as_bytes());
    Handle::blob(&bytes)
}

/// A job: its objects (thunks and data) and its root.
pub struct Job {
    pub objects: HashMap<Handle, Vec<u8>>,
    pub root: Handle,
}

impl Job {
    /// `shape[i]` lists the arguments of thunk i: `Ok(j)` thunk j (j < i), `Err(n)` a data blob
    /// of n bytes. The last thunk is the root.
    pub fn new(shape: &[Vec<Result<usize, usize>>]) -> Job {
        let mut objects = HashMap::new();
        let mut thunks: Vec<Handle> = Vec::new();
        objects.insert(procedure(), vec![7u8; 100]);
        for (i, args) in shape.iter().enumerate() {
            let args: Vec<Handle> = args
                .iter()
                .enumerate()
                .map(|(k, a)| match a {
                    Ok(j) => thunks[*j],
                    Err(n) => {
                        let bytes: Vec<u8> =
                            (0..*n).map(|b| (b as u8) ^ (i as u8) ^ (k as u8 * 31)).collect();
                        let h = Handle::blob(&bytes);
                        objects.insert(h, bytes);
                        h
                    }
                })
                .collect();
            let bytes =
                cairn_object::thunk::encode(Limits::new(1 << 20).unwrap(), procedure(), &args).unwrap();
            let h = cairn_object::store::name(Kind::Thunk, &bytes).unwrap();
            objects.insert(h, bytes);
            thunks.push(h);
        }
        Job { objects, root: *thunks.last().unwrap() }
    }

    pub fn graph(&self) -> Graph {
        Graph::build(self.root, usize::MAX, |h| self.objects.get(h).cloned()).unwrap()
    }

    /// The root's value, computed here as an honest node would.
    pub fn expected(&self) -> Handle {
        let graph = self.graph();
        let mut results: Vec<Handle> = Vec::new();
        for task in &graph.tasks {
            let args: Vec<Handle> = task
                .args
                .iter()
                .map(|a| match a {
                    Arg::Value(h) => *h,
                    Arg::Task(j) => results[*j],
                })
                .collect();
            let bytes = cairn_object::thunk::encode(task.limits, task.procedure, &args).unwrap();
            results.push(compute(&cairn_object::store::name(Kind::Thunk, &bytes).unwrap()));
        }
        match graph.root {
            Arg::Value(h) => h,
            Arg::Task(t) => results[t],
        }
    }
}

#[derive(Default, Clone)]
pub struct Node {
    pub dead: bool,
    pub holds: BTreeSet<Handle>,
    pub memo: BTreeMap<Handle, Handle>,
    /// Sends wrong bytes to whoever fetches from it, and for the result.
    pub lies_in_fetches: bool,
    /// Computes wrong results (only verification catches it).
    pub computes_wrong: bool,
    /// Dies when asked to run its (n+1)th task.
    pub dies_after: Option<usize>,
    /// Fails its tasks with this (e.g. "timeout").
    pub fails_with: Option<String>,
    pub ran: Vec<Handle>,
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    /// Seeded choice of which finished task answers next (tasks finish in any order).
    pub rng: u64,
    pub actions: Vec<Action>,
}

pub fn options() -> Options {
    Options { placement: Placement::Locality, verify: false, spread: false, recall: true, seed: 1 }
}

impl Cluster {
    pub fn new(nodes: usize) -> Cluster {
        Cluster { nodes: vec![Node::default(); nodes], rng: 1, actions: Vec::new() }
    }

    fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Runs `job` to its end; the report or the failure.
    pub fn run(&mut self, job: &Job, options: Options) -> Result<Report, String> {
        let own: BTreeSet<Handle> = job.objects.keys().copied().collect();
        self.run_owning(job, options, own).0
    }

    /// [`Cluster::run`] by a driver that has only `own` of the job's objects; also what the
    /// scheduler says it lacked.
    pub fn run_owning(
        &mut self,
        job: &Job,
        options: Options,
        own: BTreeSet<Handle>,
    ) -> (Result<Report, String>, Option<Handle>) {
        let mut s = Scheduler::new(job.graph(), own, self.nodes.len(), options);
        s.start();
        let mut running: Vec<Event> = Vec::new();
        for _ in 0..1_000_000 {
            while let Some(action) = s.next_action() {
                self.actions.push(action.clone());
                match action {
                    Action::Progress(_) => {}
                    Action::Finished(outcome) => return (outcome, s.lacking()),
                    Action::Run { node, order } => running.push(self.run_task(node, &order, job)),
                    other => {
                        let answer = self.answer(&other, job);
                        s.handle(answer);
                    }
                }
            }
            assert!(!running.is_empty(), "the scheduler waits for nothing");
            let at = (self.next() % running.len() as u64) as usize;
            s.handle(running.swap_remove(at));
        }
        panic!("the job never ended");
    }

    pub fn answer(&mut self, action: &Action, job: &Job) -> Event {
        let node = match action {
            Action::AskMissing { node, .. }
            | Action::Upload { node, .. }
            | Action::Recall { node, .. }
            | Action::FetchResult { node, .. } => *node,
            _ => unreachable!(),
        };
        let n = &mut self.nodes[node];
        if n.dead {
            return Event::Lost { node, why: "dead".into() };
        }
        match action {
            Action::AskMissing { handles, .. } => Event::Missing {
                node,
                missing: handles.iter().filter(|h| !n.holds.contains(h)).copied().collect(),
            },
            Action::Upload { handle, .. } => {
                n.holds.insert(*handle);
                Event::Uploaded { node, handle: *handle, bytes: job.objects[handle].len() as u64 }
            }
            Action::Recall { thunks, .. } => Event::Recalled {
                node,
                entries: thunks
                    .iter()
                    .filter_map(|t| n.memo.get(t).filter(|v| n.holds.contains(v)).map(|v| (*t, *v)))
                    .collect(),
            },
            Action::FetchResult { handle, .. } => {
                if n.lies_in_fetches || !n.holds.contains(handle) {
                    Event::ResultWrong { node, why: "wrong bytes".into() }
                } else {
                    Event::ResultFetched { node }
                }
            }
            _ => unreachable!(),
        }
    }

    pub fn run_task(&mut self, node: NodeId, order: &cairn_sched::Order, job: &Job) -> Event {
        let task = order.task;
        if self.nodes[node].dead || self.nodes[node].dies_after == Some(self.nodes[node].ran.len()) {
            self.nodes[node].dead = true;
            return Event::Lost { node, why: "dead".into() };
        }
        let mut moved = 0;
        for (peer, handles) in &order.fetches {
            let p = &self.nodes[*peer];
            if p.dead {
                return Event::FetchFailed { node, task, peer: *peer, why: "peer gone".into() };
            }
            if p.lies_in_fetches {
                return Event::BadPeer { node, task, peer: *peer, why: "wrong bytes".into() };
            }
            assert!(handles.iter().all(|h| p.holds.contains(h)), "fetch from a peer that lacks it");
            moved += handles.iter().map(|h| h.size()).sum::<u64>();
            self.nodes[node].holds.extend(handles.iter().copied());
        }
        let n = &mut self.nodes[node];
        let mut uploaded = 0;
        for h in &order.uploads {
            assert!(job.objects.contains_key(h));
            uploaded += job.objects[h].len() as u64;
            n.holds.insert(*h);
        }
        let thunk = cairn_object::thunk::Thunk::decode(&order.applied_bytes).unwrap();
        assert_eq!(thunk.handle(), order.applied);
        for input in thunk.args().chain(std::iter::once(thunk.procedure())) {
            assert!(
                input.is_literal() || n.holds.contains(&input),
                "task {task} on node {node} lacks {input}"
            );
        }
        if let Some(failure) = &n.fails_with {
            return Event::Failed { node, task, failure: failure.clone(), why: failure.clone() };
        }
        if !order.fresh
            && let Some(v) = n.memo.get(&order.applied).copied()
        {
            return Event::Done { node, task, result: v, moved, uploaded, ran: false };
        }
        n.ran.push(order.applied);
        let result = if n.computes_wrong { Handle::blob(&[0xee; 64]) } else { compute(&order.applied) };
        n.holds.insert(result);
        n.memo.insert(order.applied, result);
        Event::Done { node, task, result, moved, uploaded, ran: true }
    }

    /// Nodes that were sent a task after `since` actions.
    pub fn ran_on(&self) -> BTreeSet<NodeId> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::Run { node, .. } => Some(*node),
                _ => None,
            })
            .collect()
    }
}

/// A map over `width` blobs of `bytes` each, reduced by one task.
pub fn map_reduce(width: usize, bytes: usize) -> Job {
    let mut shape: Vec<Vec<Result<usize, usize>>> = (0..width).map(|_| vec![Err(bytes)]).collect();
    shape.push((0..width).map(Ok).collect());
    Job::new(&shape)
}
