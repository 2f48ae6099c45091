//! The simulated cluster: nodes, links and faults around the real scheduler, driven by one
//! queue of events in virtual time (ties broken by the order they were made).

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::vec::Vec;

use cairn_object::Handle;

use super::workload::{Job, result_of};
use super::{Config, Outcome};
use crate::NodeId;
use crate::messages::{Action, Event, Order};
use crate::scheduler::Scheduler;

#[derive(Default)]
struct Node {
    crash_at: Option<u64>,
    /// Cut off from everyone in [from, to).
    partition: Option<(u64, u64)>,
    slow: bool,
    corrupt: bool,
    wrong: bool,
    holds: BTreeSet<Handle>,
    memo: BTreeMap<Handle, Handle>,
    /// When its CPU is next free.
    cpu_free: u64,
}

impl Node {
    fn up(&self, t: u64) -> bool {
        self.crash_at.is_none_or(|c| t < c) && self.partition.is_none_or(|(from, to)| t < from || t >= to)
    }
}

pub(crate) struct World<'a> {
    config: &'a Config,
    /// Each task's duration and result size.
    durations: Vec<u64>,
    output_bytes: Vec<u64>,
    scheduler: Scheduler,
    now: u64,
    /// (time, sequence) -> event for the scheduler.
    queue: BTreeMap<(u64, u64), Event>,
    sequence: u64,
    rng: u64,
    nodes: Vec<Node>,
    trace: blake3::Hasher,
    events: u64,
    /// Nodes the scheduler was told sent wrong bytes.
    caught: Vec<bool>,
    ran_on_caught: usize,
    scheduler_ns: u64,
    finished: Option<Result<crate::messages::Report, String>>,
}

impl<'a> World<'a> {
    pub(crate) fn new(config: &'a Config) -> World<'a> {
        let Job { graph, objects, mut durations, output_bytes } = config.workload.job();
        if let Some(recorded) = &config.recorded {
            // Its own generator: recorded durations change no fault's draw.
            let mut draws = config.faults.seed ^ 0x5ca1_ab1e_d0d0_cafe;
            for (task, duration) in graph.tasks.iter().zip(durations.iter_mut()) {
                let leaf = task.args.iter().all(|a| matches!(a, crate::graph::Arg::Value(_)));
                if let Some(us) = recorded.draw(leaf, &mut draws) {
                    *duration = us;
                }
            }
        }
        let mut nodes: Vec<Node> = (0..config.nodes).map(|_| Node::default()).collect();
        let mut rng = config.faults.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        // Faults never touch node 0: one honest node always stays up.
        let faults = &config.faults;
        let others = config.nodes.saturating_sub(1) as u64;
        let pick = |rng: &mut u64| (others > 0).then(|| 1 + (next(rng) % others) as usize);
        for _ in 0..faults.crashes {
            if let Some(n) = pick(&mut rng) {
                nodes[n].crash_at = Some(next(&mut rng) % config.horizon_us.max(1));
            }
        }
        for _ in 0..faults.partitions {
            if let Some(n) = pick(&mut rng) {
                let from = next(&mut rng) % config.horizon_us.max(1);
                nodes[n].partition = Some((from, from + config.partition_us));
            }
        }
        for _ in 0..faults.slow {
            if let Some(n) = pick(&mut rng) {
                nodes[n].slow = true;
            }
        }
        for _ in 0..faults.corrupt {
            if let Some(n) = pick(&mut rng) {
                nodes[n].corrupt = true;
            }
        }
        for _ in 0..faults.wrong {
            if let Some(n) = pick(&mut rng) {
                nodes[n].wrong = true;
            }
        }
        let objects = objects.into_iter().collect();
        let scheduler = Scheduler::new(graph, objects, config.nodes, config.options);
        World {
            config,
            durations,
            output_bytes,
            scheduler,
            now: 0,
            queue: BTreeMap::new(),
            sequence: 0,
            rng,
            caught: alloc::vec![false; config.nodes],
            nodes,
            trace: blake3::Hasher::new(),
            events: 0,
            ran_on_caught: 0,
            scheduler_ns: 0,
            finished: None,
        }
    }

    pub(crate) fn run(mut self, clock: &mut dyn FnMut() -> u64) -> Outcome {
        let started = clock();
        self.scheduler.start();
        self.scheduler_ns += clock() - started;
        self.drain(clock);
        // A scheduler that never ends (work sent to a node for ever, say) fails the run
        // rather than hang it: far more events than any sound run needs.
        let cap = 64 * (self.scheduler.graph().tasks.len() as u64 + self.config.nodes as u64) + 1_000_000;
        while self.finished.is_none() {
            let event = match self.queue.pop_first() {
                _ if self.events >= cap => Event::Stalled {
                    why: alloc::format!("the simulation passed {cap} events without an end"),
                },
                Some(((t, _), event)) => {
                    self.now = t;
                    event
                }
                None => Event::Stalled { why: String::from("nothing more happens in the simulated cluster") },
            };
            self.record(&event);
            let started = clock();
            self.scheduler.handle(event);
            self.scheduler_ns += clock() - started;
            self.drain(clock);
        }
        let finished = self.finished.take().expect("the loop ends when it is set");
        let report = finished.as_ref().ok();
        Outcome {
            result: finished
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|r| r.result.ok_or_else(|| "no result".into())),
            makespan_us: self.now,
            tasks: self.scheduler.graph().tasks.len(),
            dispatched: report.map_or(0, |r| r.dispatched),
            recalled: report.map_or(0, |r| r.recalled),
            moved_bytes: report.map_or(0, |r| r.moved_bytes),
            uploaded_bytes: report.map_or(0, |r| r.uploaded_bytes),
            lost_nodes: report.map_or(0, |r| r.lost_nodes.len()),
            bad_peers: report.map_or(0, |r| r.bad_peers.len()),
            mismatches: report.map_or(0, |r| r.mismatches.len()),
            events: self.events,
            trace: *self.trace.finalize().as_bytes(),
            ran_on_caught: self.ran_on_caught,
            scheduler_ns: self.scheduler_ns,
        }
    }

    /// Carries out every action the scheduler has for now.
    fn drain(&mut self, clock: &mut dyn FnMut() -> u64) {
        loop {
            let started = clock();
            let action = self.scheduler.next_action();
            self.scheduler_ns += clock() - started;
            let Some(action) = action else { return };
            match action {
                Action::Progress(_) => {}
                Action::Finished(outcome) => {
                    self.finished = Some(outcome);
                    return;
                }
                Action::AskMissing { node, handles } => {
                    let Some(at) = self.reach(node, 40 * handles.len() as u64) else { continue };
                    let n = &self.nodes[node];
                    let missing: Vec<Handle> =
                        handles.iter().filter(|h| !n.holds.contains(h)).copied().collect();
                    let back = at + self.hop(40 * missing.len() as u64);
                    self.at(back, Event::Missing { node, missing });
                }
                Action::Upload { node, handle } => {
                    let Some(at) = self.reach(node, handle.size()) else { continue };
                    self.nodes[node].holds.insert(handle);
                    let back = at + self.hop(0);
                    self.at(back, Event::Uploaded { node, handle, bytes: handle.size() });
                }
                Action::Recall { node, thunks } => {
                    let Some(at) = self.reach(node, 40 * thunks.len() as u64) else { continue };
                    let n = &self.nodes[node];
                    let entries: Vec<(Handle, Handle)> = if n.memo.is_empty() {
                        Vec::new()
                    } else {
                        thunks.iter().filter_map(|t| n.memo.get(t).map(|v| (*t, *v))).collect()
                    };
                    let back = at + self.hop(80 * entries.len() as u64);
                    self.at(back, Event::Recalled { node, entries });
                }
                Action::FetchResult { node, handle } => {
                    let Some(at) = self.reach(node, 0) else { continue };
                    let back = at + self.hop(handle.size());
                    let n = &self.nodes[node];
                    let event = if n.corrupt || !n.holds.contains(&handle) {
                        Event::ResultWrong { node, why: String::from("wrong bytes for the result") }
                    } else {
                        Event::ResultFetched { node }
                    };
                    self.at(back, event);
                }
                Action::Run { node, order } => {
                    if self.caught[node] {
                        self.ran_on_caught += 1;
                    }
                    self.run_task(node, order);
                }
            }
        }
    }

    fn record(&mut self, event: &Event) {
        self.events += 1;
        self.trace.update(&self.now.to_le_bytes());
        let (tag, node, task, peer, handle): (u8, NodeId, usize, NodeId, Option<&Handle>) = match event {
            Event::Missing { node, missing } => (1, *node, missing.len(), 0, missing.first()),
            Event::Uploaded { node, handle, .. } => (2, *node, 0, 0, Some(handle)),
            Event::Recalled { node, entries } => (3, *node, entries.len(), 0, entries.first().map(|e| &e.1)),
            Event::Done { node, task, result, .. } => (4, *node, *task, 0, Some(result)),
            Event::Failed { node, task, .. } => (5, *node, *task, 0, None),
            Event::BadPeer { node, task, peer, .. } => (6, *node, *task, *peer, None),
            Event::FetchFailed { node, task, peer, .. } => (7, *node, *task, *peer, None),
            Event::ResultFetched { node } => (8, *node, 0, 0, None),
            Event::ResultWrong { node, .. } => (9, *node, 0, 0, None),
            Event::Lost { node, .. } => (10, *node, 0, 0, None),
            Event::Stalled { .. } => (11, 0, 0, 0, None),
            Event::Moved { from, task, to } => (12, *from, *task, *to, None),
        };
        self.trace.update(&[tag]);
        for n in [node, task, peer] {
            self.trace.update(&(n as u64).to_le_bytes());
        }
        if let Some(h) = handle {
            self.trace.update(h.as_bytes());
        }
        match event {
            Event::BadPeer { peer, .. } => self.caught[*peer] = true,
            Event::ResultWrong { node, .. } => self.caught[*node] = true,
            _ => {}
        }
    }

    fn at(&mut self, t: u64, event: Event) {
        self.sequence += 1;
        self.queue.insert((t, self.sequence), event);
    }

    /// One message of `bytes`: latency, transfer, jitter, and a retransmission if dropped.
    fn hop(&mut self, bytes: u64) -> u64 {
        let net = self.config.network;
        let faults = self.config.faults;
        let mut t = net.latency_us + bytes.saturating_mul(1_000_000) / net.bandwidth.max(1);
        if faults.jitter_us > 0 {
            t += next(&mut self.rng) % faults.jitter_us;
        }
        if faults.drop > 0.0 && (next(&mut self.rng) % 1_000_000) < (faults.drop * 1e6) as u64 {
            t += self.config.retransmit_us;
        }
        t
    }

    /// When a request of `bytes` from the coordinator reaches `node`; None if it does not (the
    /// coordinator's wait ends in `Lost`).
    fn reach(&mut self, node: NodeId, bytes: u64) -> Option<u64> {
        let at = self.now + self.hop(bytes);
        if self.nodes[node].up(at) {
            return Some(at);
        }
        let timeout = self.now + self.config.request_timeout_us;
        self.at(timeout, Event::Lost { node, why: String::from("no answer") });
        None
    }

    fn run_task(&mut self, node: NodeId, order: Order) {
        let task = order.task;
        let sent: u64 =
            order.applied_bytes.len() as u64 + order.uploads.iter().map(|h| h.size()).sum::<u64>();
        let Some(mut t) = self.reach(node, sent) else { return };
        let uploaded = order.uploads.iter().map(|h| h.size()).sum();
        self.nodes[node].holds.extend(order.uploads.iter().copied());
        let mut moved = 0u64;
        for (peer, handles) in &order.fetches {
            let bytes: u64 = handles.iter().map(|h| h.size()).sum();
            let p = &self.nodes[*peer];
            if !p.up(t) || !handles.iter().all(|h| p.holds.contains(h)) {
                let back = t + self.config.request_timeout_us + self.hop(0);
                let why = String::from("the peer did not answer");
                return self.at(back, Event::FetchFailed { node, task, peer: *peer, why });
            }
            if p.corrupt {
                let back = t + self.hop(bytes) + self.hop(0);
                let why = String::from("wrong bytes from a peer");
                return self.at(back, Event::BadPeer { node, task, peer: *peer, why });
            }
            t += self.hop(bytes);
            moved += bytes;
            self.nodes[node].holds.extend(handles.iter().copied());
        }
        let n = &self.nodes[node];
        let procedure = self.scheduler.graph().tasks[task].procedure;
        let args = cairn_object::Thunk::decode(&order.applied_bytes).map(|t| t.args().collect::<Vec<_>>());
        let lacks = match &args {
            Ok(args) => !args.iter().chain([&procedure]).all(|h| h.is_literal() || n.holds.contains(h)),
            Err(_) => true,
        };
        if lacks {
            // A scheduler that ships too little: the task fails, and the job with it.
            let why = String::from("an input was never shipped");
            let back = t + self.hop(0);
            return self.at(back, Event::Failed { node, task, failure: why.clone(), why });
        }
        if !order.fresh
            && let Some(result) = n.memo.get(&order.applied).copied()
        {
            let back = t + self.hop(0);
            return self.at(back, Event::Done { node, task, result, moved, uploaded, ran: false });
        }
        let start = t.max(n.cpu_free);
        let end = start + self.durations[task] * if n.slow { 4 } else { 1 };
        let (wrong, bytes) = (n.wrong, self.output_bytes[task]);
        self.nodes[node].cpu_free = end;
        if !self.nodes[node].up(end) {
            let lost = end + self.config.request_timeout_us;
            return self.at(lost, Event::Lost { node, why: String::from("no answer") });
        }
        let result = result_of(&order.applied, bytes, wrong);
        let n = &mut self.nodes[node];
        n.holds.insert(result);
        n.memo.insert(order.applied, result);
        let back = end + self.hop(0);
        self.at(back, Event::Done { node, task, result, moved, uploaded, ran: true });
    }
}

/// xorshift64.
fn next(rng: &mut u64) -> u64 {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    *rng
}
