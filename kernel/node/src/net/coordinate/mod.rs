//! A job coordinated by this node across its peers (docs/SCHEDULER.md, "Nodes coordinate"):
//! the node drives the cluster scheduler (`cairn_sched`), which decides everything, and
//! carries its actions to the peers and its answers back, as the host's `cairn eval
//! --coordinator host` does. Node 0 of the scheduler is this node; node `i` is the `i`th of its
//! configured peers. Each peer gets two links, both pumped from the node's loop, never waited
//! on: one for quick requests (HAVE, PUT, RECALL), one that runs its tasks in turn (the inputs
//! it lacks, FETCH from other peers, then EVAL). This node runs its own tasks through its own
//! evaluations (`net::evaluations`), beside any EVALs its clients sent.

use alloc::collections::{BTreeSet, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use bytes::Bytes;
use cairn_object::Handle;
use cairn_object::store::{OBJECT_OVERHEAD, Store};
use cairn_proto::{ErrorCode, Frame, MAX_CHUNK, MAX_FRAME, MAX_INLINE, MAX_TEXT, Message, encode};
use cairn_sched::{Action, Event, Graph, GraphError, NodeId, Options, Order, Placement, Scheduler};

use super::Network;
use super::api::Queued;
use super::evaluations::{Evaluations, Origin};
use super::link::Link;
use super::peer::{ServeOthers, WRONG_BYTES};
use crate::arch::clock;
use crate::jobs::NodeEvaluator;
use quick::Quick;
use runner::{Runner, put};

mod quick;
mod runner;

/// The most tasks a job this node coordinates may have: the scheduler's state grows with them.
pub const MAX_TASKS: usize = 1 << 16;
/// The most arguments its tasks may have in all, and the heap each is reckoned to take (in the
/// graph, the scheduler's lists and the probes of its leaves).
pub const MAX_ARGUMENTS: usize = 1 << 20;
const ARGUMENT_BYTES: usize = 512;
/// A link idle this long is opened afresh before its next request: the peer may have closed it
/// meanwhile (idle, or to make room for other clients: docs/SECURITY.md).
const REOPEN_AFTER_US: u64 = 900_000;
/// While a peer runs a task (silent for as long as the task's budget), its quick link asks it a
/// HAVE of nothing this often, which a busy node answers: a peer that stops answering is lost
/// within a link's stall time.
const HEARTBEAT_US: u64 = 2_000_000;
/// How many of a queue's last tasks an idle node may take back (see `take_back_for_idle`).
const TAIL_LOOK: usize = 4;
/// Handles one HAVE or FETCH frame holds, with room to spare.
const BATCH: usize = (MAX_FRAME - 64) / Handle::LEN;

/// Numbers the jobs a node coordinates, so that a task's answer finds its own job.
static JOBS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

pub struct Coordination {
    /// This job's number (`Origin::Coordinator`).
    pub job: u64,
    scheduler: Scheduler,
    /// The COORDINATE this answers.
    pub asked: Queued,
    pub on_cluster: bool,
    /// Cluster addresses by node id: this node's, then its peers'.
    addresses: Vec<[u8; 4]>,
    quick: Vec<Quick>,
    runners: Vec<Runner>,
    lost: Vec<bool>,
    /// This node's own tasks: waiting, and the one its evaluations run.
    local_queue: VecDeque<Order>,
    local_running: Option<(Order, u64)>,
    events: VecDeque<Event>,
    /// The peer to get the result's bytes from, and the result.
    result_from: Option<(NodeId, Handle)>,
    /// Whether the peers' task links were opened (at the first step).
    opened_ahead: bool,
    pub root: Handle,
    pub began_us: u64,
    next_request: u32,
    /// An object of the job this node had at the start and lost since (evicted): the job
    /// fails for lack of it, as for one the scheduler finds no holder of.
    lacking: Option<Handle>,
    /// Per idle node, the queues' tails (each queue's last task) it last found nothing to take
    /// back from.
    futile_tails: Vec<Option<Vec<(NodeId, usize)>>>,
}

fn placement(code: u8) -> Placement {
    match code {
        1 => Placement::MinAbsent,
        2 => Placement::Random,
        _ => Placement::Locality,
    }
}

impl Coordination {
    /// Begins coordinating `root` (a COORDINATE from `asked`): the job's graph from this node's
    /// store, over this node (`own`) and its `peers`. An error is the answer to give at once.
    #[allow(clippy::result_large_err, reason = "the error is the answer to send, made once")]
    pub fn begin(
        ev: &NodeEvaluator,
        (root, code, verify, spread, seed): (Handle, u8, bool, bool, u64),
        (own, peers): ([u8; 4], &[[u8; 4]]),
        asked: Queued,
        on_cluster: bool,
    ) -> Result<Coordination, (Queued, Message)> {
        let refuse = |asked, message| Err((asked, Message::Error { code: ErrorCode::NotFound, message }));
        if !root.is_literal() && !ev.store.contains(&root) {
            return refuse(
                asked,
                format!("{root} is not on this node (upload the job's objects to it first)"),
            );
        }
        // What the graph and the scheduler take grows with the arguments: bounded by the heap
        // this node has free now (ARGUMENT_BYTES each), so a job too wide is refused rather than
        // run the node out of memory.
        let max_args = (crate::memory::heap::usage().1 / ARGUMENT_BYTES).min(MAX_ARGUMENTS);
        let open = |h: &Handle| ev.store.get(h).map(|b| b.to_vec());
        let graph = match Graph::build_within(root, MAX_TASKS, max_args, open) {
            Ok(graph) => graph,
            Err(e @ GraphError::Missing(_)) => {
                return refuse(
                    asked,
                    format!("{e} (upload the job's objects to the coordinating node first)"),
                );
            }
            // Not a missing object: a job this node will not coordinate, as it is.
            Err(e) => {
                return Err((asked, Message::Error { code: ErrorCode::Unexpected, message: format!("{e}") }));
            }
        };
        // The job's objects this node holds: it puts them wherever they are needed.
        let mut objects = BTreeSet::new();
        for task in &graph.tasks {
            objects.insert(task.written);
            objects.insert(task.procedure);
            for arg in &task.args {
                if let cairn_sched::Arg::Value(h) = arg {
                    objects.insert(*h);
                }
            }
        }
        objects.retain(|h| !h.is_literal() && ev.store.contains(h));
        let options = Options { placement: placement(code), verify, spread, recall: true, seed };
        let nodes = 1 + peers.len();
        let mut scheduler = Scheduler::new(graph, objects, nodes, options);
        scheduler.start();
        let mut addresses = alloc::vec![own];
        addresses.extend_from_slice(peers);
        Ok(Coordination {
            job: JOBS.fetch_add(1, core::sync::atomic::Ordering::Relaxed),
            scheduler,
            asked,
            on_cluster,
            addresses,
            quick: (0..nodes).map(|_| Quick::default()).collect(),
            runners: (0..nodes).map(|_| Runner::default()).collect(),
            lost: alloc::vec![false; nodes],
            local_queue: VecDeque::new(),
            local_running: None,
            events: VecDeque::new(),
            result_from: None,
            opened_ahead: false,
            root,
            began_us: clock::micros_since_boot(),
            next_request: 1,
            lacking: None,
            futile_tails: alloc::vec![None; nodes],
        })
    }

    /// Moves the job along: takes the scheduler's actions, pumps the links, runs this node's
    /// next task. Returns whether anything moved, and the answer once the job is over.
    pub fn step(
        &mut self,
        cluster: &mut Network,
        others: &mut ServeOthers<'_>,
        ev: &mut NodeEvaluator,
        evaluations: &mut Evaluations,
    ) -> (bool, Option<Message>) {
        let (mut moved, mut handled) = (false, false);
        if !self.opened_ahead {
            // Each peer's task link is opened now, so that its handshake overlaps the probing
            // and the memo round rather than follow them.
            self.opened_ahead = true;
            let now = clock::micros_since_boot();
            for node in 1..self.addresses.len() {
                match Link::open(cluster, (self.addresses[node], super::api::PORT)) {
                    Ok(link) => {
                        self.runners[node].link = Some(link);
                        self.runners[node].idle_since = now;
                    }
                    Err(why) => self.lose(node, why, cluster),
                }
            }
        }
        loop {
            if let Some(answer) = self.take_actions(ev) {
                self.close(cluster);
                return (true, Some(answer));
            }
            let Some(event) = self.events.pop_front() else { break };
            moved = true;
            handled = true;
            self.scheduler.handle(event);
        }
        for node in 1..self.addresses.len() {
            if self.lost[node] {
                continue;
            }
            let outcome =
                self.pump_quick(node, cluster, ev).and_then(|m| Ok(m | self.pump_runner(node, cluster, ev)?));
            match outcome {
                Ok(m) => moved |= m,
                Err(why) => {
                    moved = true;
                    self.lose(node, why, cluster);
                }
            }
        }
        moved |= self.run_local(cluster, others, ev, evaluations);
        // Only after answers: queues and idle nodes change with them, and nothing else.
        if handled {
            moved |= self.take_back_for_idle();
        }
        if let Some((node, handle)) = self.result_from.take() {
            // Once a job: waiting on the peer (serving others meanwhile) is simplest.
            let from = (self.addresses[node], super::api::PORT);
            self.events.push_back(match super::peer::fetch(cluster, others, ev, from, &[handle]) {
                Ok(_) => Event::ResultFetched { node },
                Err(why) if why.starts_with(WRONG_BYTES) => Event::ResultWrong { node, why },
                Err(why) => Event::Lost { node, why },
            });
            moved = true;
        }
        (moved, None)
    }

    /// The job's tasks.
    pub fn tasks(&self) -> usize {
        self.scheduler.graph().tasks.len()
    }

    /// This node's evaluation of a task ended with `answer`.
    pub fn evaluated(&mut self, answer: Message) {
        let Some((order, moved)) = self.local_running.take() else { return };
        self.events.push_back(match answer {
            Message::Evaluated { result, tasks_run, .. } => {
                Event::Done { node: 0, task: order.task, result, moved, uploaded: 0, ran: tasks_run > 0 }
            }
            Message::EvalFailed { failure, .. } => {
                Event::Failed { node: 0, task: order.task, why: failure.clone(), failure }
            }
            other => {
                Event::Stalled { why: format!("this node could not evaluate a task: {}", describe(&other)) }
            }
        });
    }

    /// Gives the scheduler's actions to whoever carries them out; the answer once it is over.
    fn take_actions(&mut self, ev: &mut NodeEvaluator) -> Option<Message> {
        while let Some(action) = self.scheduler.next_action() {
            match action {
                Action::Progress(line) => log::info!("coordinate: {line}"),
                Action::Finished(Ok(report)) => return Some(self.coordinated(&report)),
                Action::Finished(Err(why)) => {
                    // For lack of one of the job's objects: NOT_FOUND, which tells the client
                    // that given it (it may have kept it back, spreading the data itself), the
                    // job can run again here. Any other failure is the job's.
                    let lacked = self.scheduler.lacking().or(self.lacking);
                    let code = if lacked.is_some() { ErrorCode::NotFound } else { ErrorCode::Internal };
                    return Some(Message::Error { code, message: why });
                }
                Action::Run { node: 0, order } => self.local_queue.push_back(order),
                Action::Run { node, order } => match self.runners.get_mut(node) {
                    Some(runner) if !self.lost[node] => runner.queue.push_back(order),
                    _ => self.events.push_back(Event::Lost { node, why: "lost earlier".into() }),
                },
                action @ (Action::AskMissing { node: 0, .. }
                | Action::Upload { node: 0, .. }
                | Action::Recall { node: 0, .. }
                | Action::FetchResult { node: 0, .. }) => {
                    let event = self.answer_locally(action, ev);
                    self.events.push_back(event);
                }
                Action::FetchResult { node, handle } => self.result_from = Some((node, handle)),
                Action::AskMissing { node, .. }
                | Action::Upload { node, .. }
                | Action::Recall { node, .. } => match self.quick.get_mut(node) {
                    Some(quick) if !self.lost[node] => quick.queue.push_back(action),
                    _ => self.events.push_back(Event::Lost { node, why: "lost earlier".into() }),
                },
            }
        }
        None
    }

    /// A quick request to this node itself, answered from its store and memo.
    fn answer_locally(&self, action: Action, ev: &NodeEvaluator) -> Event {
        match action {
            Action::AskMissing { handles, .. } => Event::Missing {
                node: 0,
                missing: handles.into_iter().filter(|h| !ev.store.contains(h)).collect(),
            },
            Action::Upload { handle, .. } => match ev.store.contains(&handle) {
                true => Event::Uploaded { node: 0, handle, bytes: 0 },
                false => Event::Stalled {
                    why: format!("{handle}, an object of the job, is no longer on this node"),
                },
            },
            Action::Recall { thunks, .. } => Event::Recalled {
                node: 0,
                entries: thunks
                    .into_iter()
                    .filter_map(|t| match ev.recorded(&t) {
                        Some(Ok(value)) => Some((t, value)),
                        _ => None,
                    })
                    .collect(),
            },
            Action::FetchResult { handle, .. } => match ev.store.contains(&handle) {
                true => Event::ResultFetched { node: 0 },
                false => Event::ResultWrong { node: 0, why: format!("{handle} is not on this node") },
            },
            _ => Event::Stalled { why: "an action this node cannot answer itself".into() },
        }
    }

    fn request_id(&mut self) -> u32 {
        self.next_request = self.next_request.wrapping_add(1).max(1);
        self.next_request
    }

    /// The link in `slot`, opened if there is none or it has been idle since `idle_since` for
    /// longer than [`REOPEN_AFTER_US`].
    fn link<'l>(
        slot: &'l mut Option<Link>,
        idle_since: u64,
        cluster: &mut Network,
        to: [u8; 4],
    ) -> Result<&'l mut Link, String> {
        let stale = clock::micros_since_boot().saturating_sub(idle_since) >= REOPEN_AFTER_US;
        if stale && let Some(old) = slot.take() {
            old.close(cluster);
        }
        if slot.is_none() {
            *slot = Some(Link::open(cluster, (to, super::api::PORT))?);
        }
        Ok(slot.as_mut().expect("opened above"))
    }

    /// Starts this node's next task when it runs none: the applied thunk stored, the inputs
    /// fetched from peers (waiting on them, serving others meanwhile), then an evaluation.
    fn run_local(
        &mut self,
        cluster: &mut Network,
        others: &mut ServeOthers<'_>,
        ev: &mut NodeEvaluator,
        evaluations: &mut Evaluations,
    ) -> bool {
        if self.local_running.is_some() {
            return false;
        }
        let Some(order) = self.local_queue.pop_front() else { return false };
        let task = order.task;
        let len = order.applied_bytes.len() as u64;
        if !ev.store.contains(&order.applied) {
            ev.make_room(len + OBJECT_OVERHEAD);
            if let Err(e) = ev.store.put_verified(&order.applied, Bytes::from(order.applied_bytes.clone())) {
                self.events.push_back(Event::Stalled { why: format!("storing task {task}'s thunk: {e}") });
                return true;
            }
        }
        if let Some(missing) = order.uploads.iter().find(|h| !ev.store.contains(h)) {
            self.lacking = Some(*missing);
            self.events.push_back(Event::Stalled {
                why: format!("{missing}, an object of the job, is no longer on this node"),
            });
            return true;
        }
        let mut moved = 0u64;
        for (peer, handles) in &order.fetches {
            if self.lost.get(*peer) != Some(&false) {
                self.events.push_back(Event::FetchFailed { node: 0, task, peer: *peer, why: "lost".into() });
                return true;
            }
            let from = (self.addresses[*peer], super::api::PORT);
            match super::peer::fetch(cluster, others, ev, from, handles) {
                Ok((_, bytes)) => moved = moved.saturating_add(bytes),
                Err(why) => {
                    let peer = *peer;
                    self.events.push_back(if why.starts_with(WRONG_BYTES) {
                        Event::BadPeer { node: 0, task, peer, why }
                    } else {
                        Event::FetchFailed { node: 0, task, peer, why }
                    });
                    return true;
                }
            }
        }
        let (applied, fresh) = (order.applied, order.fresh);
        self.local_running = Some((order, moved));
        if let Some(refused) = evaluations.begin(ev, (applied, fresh), Origin::Coordinator { job: self.job })
        {
            self.evaluated(refused.answer);
        }
        true
    }

    /// A job's tail (docs/SCHEDULER.md, "The tail"): each node with nothing to do takes the
    /// last task of the longest queue of tasks not yet started that the scheduler lets it
    /// have (the move costs no more input bytes than placement accepts). Only the last
    /// [`TAIL_LOOK`] of each queue are looked at, longest queue first: a queue whose tasks may
    /// not move (their data is where they are) is not scanned whole at every event. Whether
    /// one moved.
    fn take_back_for_idle(&mut self) -> bool {
        let nodes = self.addresses.len();
        let mut moved = false;
        for to in 0..nodes {
            let idle = match to {
                0 => self.local_running.is_none() && self.local_queue.is_empty(),
                _ => self.runners[to].running.is_none() && self.runners[to].queue.is_empty(),
            };
            if !idle || self.lost[to] {
                continue;
            }
            let mut donors: Vec<(usize, NodeId)> = (0..nodes)
                .filter(|&n| n != to && !self.lost[n])
                .map(|n| (self.waiting(n).len(), n))
                .filter(|(waiting, _)| *waiting > 0)
                .collect();
            donors.sort_unstable_by(|a, b| b.cmp(a));
            // Tails looked at in vain are not looked at again until one changes (a task queued
            // at its back, or taken from it): a node whose tasks may not move would otherwise
            // be asked about at every answer while its queue drains from the front.
            let tails: Vec<(NodeId, usize)> =
                donors.iter().filter_map(|&(_, n)| Some((n, self.waiting(n).back()?.task))).collect();
            if self.futile_tails[to].as_ref() == Some(&tails) {
                continue;
            }
            let found = donors.into_iter().find_map(|(_, from)| {
                let waiting = self.waiting(from);
                let at = (waiting.len().saturating_sub(TAIL_LOOK)..waiting.len())
                    .rev()
                    .find(|&i| self.scheduler.movable(waiting[i].task, from, to))?;
                Some((from, at))
            });
            let Some((from, at)) = found else {
                self.futile_tails[to] = Some(tails);
                continue;
            };
            self.futile_tails[to] = None;
            let waiting = if from == 0 { &mut self.local_queue } else { &mut self.runners[from].queue };
            let Some(order) = waiting.remove(at) else { continue };
            self.events.push_back(Event::Moved { from, task: order.task, to });
            moved = true;
        }
        moved
    }

    /// A node's tasks not yet started: this node's own, or those queued for a peer.
    fn waiting(&self, node: NodeId) -> &VecDeque<Order> {
        if node == 0 { &self.local_queue } else { &self.runners[node].queue }
    }

    fn lose(&mut self, node: NodeId, why: String, cluster: &mut Network) {
        self.lost[node] = true;
        for link in [self.quick[node].link.take(), self.runners[node].link.take()].into_iter().flatten() {
            link.close(cluster);
        }
        self.quick[node] = Quick::default();
        self.runners[node] = Runner::default();
        self.events.push_back(Event::Lost { node, why });
    }

    /// Lets go of the job (its client has gone): its links to the peers close, so that they
    /// let go of its tasks too; this node's own evaluation of one is let go by the loop.
    pub fn abandon(mut self, cluster: &mut Network) {
        log::info!("coordinate: the job's client has gone; letting go of the job");
        self.close(cluster);
    }

    fn close(&mut self, cluster: &mut Network) {
        for node in 0..self.addresses.len() {
            for link in [self.quick[node].link.take(), self.runners[node].link.take()].into_iter().flatten() {
                link.close(cluster);
            }
        }
    }

    /// The COORDINATED answer: the result and the report, nodes named by cluster address.
    fn coordinated(&self, report: &cairn_sched::Report) -> Message {
        let name = |node: NodeId| {
            let [a, b, c, d] = self.addresses.get(node).copied().unwrap_or_default();
            format!("{a}.{b}.{c}.{d}")
        };
        let Some(result) = report.result else {
            return Message::Error {
                code: ErrorCode::Internal,
                message: "the job ended without a result".into(),
            };
        };
        let mut text = String::new();
        let runs: Vec<String> =
            report.runs.iter().map(|(n, count)| format!("{}:{count}", name(*n))).collect();
        let lost: Vec<String> = report.lost_nodes.iter().map(|n| name(*n)).collect();
        let _ = write!(
            text,
            "tasks={}\ndispatched={}\nrecalled={}\nmoved_bytes={}\nuploaded_bytes={}\nmicros={}\nnodes={}\nruns={}\nlost={}\nmismatches={}\n",
            report.tasks,
            report.dispatched,
            report.recalled,
            report.moved_bytes,
            report.uploaded_bytes,
            clock::micros_since_boot().saturating_sub(self.began_us),
            self.addresses.len(),
            runs.join(","),
            lost.join(","),
            report.mismatches.len(),
        );
        // Whole lines only, as many as the text field holds: a line cut short would name a
        // handle that is not one.
        let mismatches = report.mismatches.iter().take(16).map(|m| {
            format!(
                "mismatch={} {}={} {}={}\n",
                m.thunk,
                name(m.first.0),
                m.first.1,
                name(m.second.0),
                m.second.1
            )
        });
        // (A peer's words, cut to a line that leaves room for others.)
        let bad_peers = report.bad_peers.iter().take(16).map(|(peer, why)| {
            let why: String = why.chars().take(256).map(|c| if c == '\n' { ' ' } else { c }).collect();
            format!("bad_peer={} {why}\n", name(*peer))
        });
        for line in mismatches.chain(bad_peers) {
            if text.len() + line.len() <= MAX_TEXT {
                text.push_str(&line);
            }
        }
        Message::Coordinated { result, report: text }
    }
}

fn describe(message: &Message) -> &'static str {
    // Its name only: formatting a whole message (up to a frame) to say it came out of turn
    // would cost more than the answer is worth.
    match message {
        Message::Missing { .. } => "MISSING",
        Message::Stored { .. } => "STORED",
        Message::Fetched { .. } => "FETCHED",
        Message::Recalled { .. } => "RECALLED",
        Message::Evaluated { .. } => "EVALUATED",
        Message::EvalFailed { .. } => "EVAL-FAILED",
        Message::Object { .. } | Message::ObjectBegin { .. } | Message::ObjectChunk { .. } => "an object",
        Message::Error { .. } => "ERROR",
        _ => "another message",
    }
}
