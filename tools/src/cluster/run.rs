//! Evaluating a job across a cluster (docs/CLUSTER.md): the host drives the scheduler
//! (`cairn_sched`, docs/SCHEDULER.md), which decides everything; this file only carries its
//! actions to the nodes and their answers back. Quick requests (which objects a node lacks,
//! uploads, memo lookups, the result) go over one connection per node, in turn; each node's
//! tasks go over another, from a thread of its own, so that nodes run at once.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use cairn_object::Handle;
use cairn_proto::ErrorCode;
use cairn_sched::{Action, Event, Graph, NodeId, Options, Order, Scheduler};

use super::lifecycle::{API_PORT, NodeState};
use super::queue::NodeQueue;
use crate::client::{Client, Refused, TaskFailed, WrongObject};

/// How long the host waits for any node to answer before it gives up.
const PATIENCE: Duration = Duration::from_secs(600);

/// The scheduler's report of the job, with what only the driver knows.
#[derive(Debug, Default)]
pub struct Report {
    pub job: cairn_sched::Report,
    /// The result's bytes, fetched from a node and checked against the handle.
    pub value: Option<Vec<u8>>,
    pub wall: Duration,
    /// What each task's evaluation took on the node that ran it (tasks answered by a memo
    /// left out), by kind, for `cairn sim --durations`.
    pub durations: cairn_sched::sim::Recorded,
}

/// A task as a node's thread gets it: the order, with the bytes and addresses it needs.
struct Work {
    order: Order,
    uploads: Vec<(Handle, Vec<u8>)>,
    fetches: Vec<(NodeId, [u8; 4], Vec<Handle>)>,
}

/// An event from a node's thread, with how long the node took to evaluate, if it did.
type Timed = (Event, Option<u64>);

fn worker(node: NodeId, address: String, orders: Arc<NodeQueue<Work>>, events: mpsc::Sender<Timed>) {
    // Should the thread panic, its node is lost rather than its task waited on for ever.
    struct Panicked(NodeId, Arc<NodeQueue<Work>>, mpsc::Sender<Timed>);
    impl Drop for Panicked {
        fn drop(&mut self) {
            if std::thread::panicking() {
                self.1.gone();
                self.1.finished();
                let _ = self.2.send((Event::Lost { node: self.0, why: "its thread panicked".into() }, None));
            }
        }
    }
    let _panicked = Panicked(node, orders.clone(), events.clone());
    let mut client = match Client::connect(&address) {
        Ok(c) => c,
        Err(e) => {
            orders.gone();
            let _ = events.send((Event::Lost { node, why: format!("{e:#}") }, None));
            return;
        }
    };
    while let Some(work) = orders.take() {
        let timed = run_order(&mut client, node, &work);
        let lost = matches!(timed.0, Event::Lost { .. });
        if lost {
            orders.gone();
        }
        // Idle before the answer is seen: the coordinator may then give this node a task back.
        orders.finished();
        if events.send(timed).is_err() || lost {
            return;
        }
    }
}

/// Closes every node's queue when the job is over, however it ends: their threads end.
struct Queues(Vec<Arc<NodeQueue<Work>>>);

impl Queues {
    /// A node the scheduler is told is lost takes nothing more: what waits for it is placed
    /// again, and its queue no longer counts for the tail.
    fn lost(&self, event: &Event) {
        if let Event::Lost { node, .. } = event
            && let Some(queue) = self.0.get(*node)
        {
            queue.gone();
        }
    }
}

impl Drop for Queues {
    fn drop(&mut self) {
        for queue in &self.0 {
            queue.close();
        }
    }
}

/// A job's tail (docs/SCHEDULER.md, "The tail"): each node with nothing to do takes the last
/// task of the longest queue that the scheduler lets move to it. Whether one moved.
fn take_back_for_idle(queues: &Queues, scheduler: &mut Scheduler) -> bool {
    let mut moved = false;
    for to in 0..queues.0.len() {
        if !queues.0[to].idle() {
            continue;
        }
        let mut donors: Vec<(usize, NodeId)> = (0..queues.0.len())
            .filter(|&n| n != to)
            .map(|n| (queues.0[n].waiting(), n))
            .filter(|(waiting, _)| *waiting > 0)
            .collect();
        donors.sort_unstable_by(|a, b| b.cmp(a));
        for (_, from) in donors {
            let may_move = |w: &Work| scheduler.movable(w.order.task, from, to);
            if let Some(work) = queues.0[from].take_back(TAIL_LOOK, may_move) {
                scheduler.handle(Event::Moved { from, task: work.order.task, to });
                moved = true;
                break;
            }
        }
    }
    moved
}

/// How many of a queue's last tasks an idle node may take back.
const TAIL_LOOK: usize = 4;

fn run_order(client: &mut Client, node: NodeId, work: &Work) -> Timed {
    let event = order_event(client, node, work);
    match event {
        Ok((event, micros)) => (event, Some(micros)),
        Err(event) => (event, None),
    }
}

/// The answer to one order: the event and the node's microseconds, or an event without them.
fn order_event(client: &mut Client, node: NodeId, work: &Work) -> Result<(Event, u64), Event> {
    let lost = |e: anyhow::Error| Event::Lost { node, why: format!("{e:#}") };
    let order = &work.order;
    let mut uploaded = 0;
    let mut moved: u64 = 0;
    let applied = (order.applied, order.applied_bytes.clone());
    for (handle, bytes) in work.uploads.iter().chain(std::iter::once(&applied)) {
        match client.missing(&[*handle]) {
            Ok(m) if m.is_empty() => continue,
            Ok(_) => {}
            Err(e) => return Err(lost(e)),
        }
        if let Err(e) = client.put(*handle, bytes, |_| {}) {
            return Err(lost(e));
        }
        uploaded += bytes.len() as u64;
    }
    for (peer, ip, handles) in &work.fetches {
        match client.fetch((*ip, API_PORT), handles) {
            // The figure is the node's: saturate rather than trust it not to overflow.
            Ok((_, bytes)) => moved = moved.saturating_add(bytes),
            Err(e) => {
                // Told apart by the error's type, not its text, which is partly the node's.
                let Some(refused) = e.downcast_ref::<Refused>() else { return Err(lost(e)) };
                let why = format!("{e:#}");
                if refused.code == ErrorCode::WrongHash || refused.message.contains("wrong bytes") {
                    return Err(Event::BadPeer { node, task: order.task, peer: *peer, why });
                }
                // The node answered (with an error): it is the peer that failed, not this node.
                return Err(Event::FetchFailed { node, task: order.task, peer: *peer, why });
            }
        }
    }
    let outcome = if order.fresh { client.eval_fresh(order.applied) } else { client.eval(order.applied) };
    match outcome {
        Ok(evaluated) => Ok((
            Event::Done {
                node,
                task: order.task,
                result: evaluated.result,
                moved,
                uploaded,
                ran: evaluated.tasks_run > 0,
            },
            evaluated.micros,
        )),
        // A failure reported by the node is the task's; a broken connection is the node's.
        Err(e) => match e.downcast::<TaskFailed>() {
            // TaskFailed's Display escapes the node's words.
            Ok(failure) => Err(Event::Failed {
                node,
                task: order.task,
                why: failure.to_string(),
                failure: failure.failure,
            }),
            Err(e) => Err(lost(e)),
        },
    }
}

/// The host's side of the quick requests, on one connection per node.
struct Probes<'a> {
    clients: Vec<Option<Client>>,
    objects: &'a HashMap<Handle, Vec<u8>>,
    value: Option<Vec<u8>>,
}

impl Probes<'_> {
    /// Carries out one quick request; the answer, or `Lost` if the node did not give one.
    fn ask(&mut self, action: &Action) -> anyhow::Result<Event> {
        let node = match action {
            Action::AskMissing { node, .. }
            | Action::Upload { node, .. }
            | Action::Recall { node, .. }
            | Action::FetchResult { node, .. } => *node,
            _ => bail!("not a request for the host's connection"),
        };
        let Some(client) = self.clients[node].as_mut() else {
            return Ok(Event::Lost { node, why: "not connected".into() });
        };
        let lost = |e: anyhow::Error| Event::Lost { node, why: format!("{e:#}") };
        Ok(match action {
            Action::AskMissing { handles, .. } => match client.missing(handles) {
                Ok(missing) => Event::Missing { node, missing },
                Err(e) => lost(e),
            },
            Action::Upload { handle, .. } => {
                let bytes = self
                    .objects
                    .get(handle)
                    .ok_or_else(|| anyhow!("{handle} is not among the job's objects"))?;
                match client.put(*handle, bytes, |_| {}) {
                    Ok(_) => Event::Uploaded { node, handle: *handle, bytes: bytes.len() as u64 },
                    Err(e) => lost(e),
                }
            }
            Action::Recall { thunks, .. } => match client.recall(thunks) {
                Ok(entries) => Event::Recalled { node, entries },
                Err(e) => lost(e),
            },
            Action::FetchResult { handle, .. } => match client.get(*handle, |_, _| {}) {
                Ok(bytes) => {
                    self.value = Some(bytes);
                    Event::ResultFetched { node }
                }
                Err(e) if e.downcast_ref::<WrongObject>().is_some() => {
                    Event::ResultWrong { node, why: format!("{e:#}") }
                }
                Err(e) => lost(e),
            },
            _ => unreachable!("matched above"),
        })
    }
}

/// Evaluates `graph` on the cluster's nodes. `objects` holds every object of the graph that the
/// host has (the job's own objects), to upload where no node has them.
pub fn run(
    graph: Graph,
    objects: &HashMap<Handle, Vec<u8>>,
    nodes: &[NodeState],
    options: Options,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let (events_tx, events) = mpsc::channel();
    let orders = Queues(nodes.iter().map(|_| Arc::new(NodeQueue::default())).collect());
    for (index, node) in nodes.iter().enumerate() {
        let events_tx = events_tx.clone();
        let (address, queue) = (node.api.clone(), orders.0[index].clone());
        std::thread::spawn(move || worker(index, address, queue, events_tx));
    }
    let mut probes = Probes {
        clients: nodes.iter().map(|n| Client::connect(&n.api).ok()).collect(),
        objects,
        value: None,
    };
    let own: BTreeSet<Handle> = objects.keys().copied().collect();
    let mut scheduler = Scheduler::new(graph, own, nodes.len(), options);
    scheduler.start();
    let mut durations = cairn_sched::sim::Recorded::default();
    let mut look_for_idle = false;
    loop {
        while let Some(action) = scheduler.next_action() {
            match action {
                Action::Progress(line) => progress(&line),
                Action::Finished(outcome) => {
                    let report = outcome.map_err(anyhow::Error::msg)?;
                    let value = match report.result.as_ref().and_then(Handle::literal) {
                        Some(bytes) => Some(bytes.to_vec()),
                        None => probes.value.take(),
                    };
                    return Ok(Report { job: report, value, wall: started.elapsed(), durations });
                }
                Action::Run { node, order } => {
                    let uploads = order
                        .uploads
                        .iter()
                        .map(|h| {
                            Ok((
                                *h,
                                objects
                                    .get(h)
                                    .ok_or_else(|| anyhow!("{h} is not among the job's objects"))?
                                    .clone(),
                            ))
                        })
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    let fetches = order
                        .fetches
                        .iter()
                        .map(|(peer, hs)| (*peer, nodes[*peer].cluster_ip, hs.clone()))
                        .collect();
                    if !orders.0[node].push(Work { order, uploads, fetches }) {
                        scheduler.handle(Event::Lost { node, why: "its worker stopped".into() });
                    }
                }
                request => {
                    let answer = probes.ask(&request)?;
                    orders.lost(&answer);
                    scheduler.handle(answer);
                }
            }
        }
        // Once the answer's actions are out: a node that has just been given work is not idle.
        if std::mem::take(&mut look_for_idle) && take_back_for_idle(&orders, &mut scheduler) {
            continue;
        }
        match events.recv_timeout(PATIENCE) {
            Ok((event, micros)) => {
                if let (Event::Done { task, ran: true, .. }, Some(micros)) = (&event, micros)
                    && let Some(t) = scheduler.graph().tasks.get(*task)
                {
                    let leaf = t.args.iter().all(|a| matches!(a, cairn_sched::Arg::Value(_)));
                    if leaf { &mut durations.leaf_us } else { &mut durations.inner_us }.push(micros);
                }
                orders.lost(&event);
                scheduler.handle(event);
                look_for_idle = true;
            }
            Err(_) => scheduler
                .handle(Event::Stalled { why: format!("no node answered for {} s", PATIENCE.as_secs()) }),
        }
    }
}

#[cfg(test)]
mod tail_tests {
    //! The host's take-back with a node lost.
    use std::collections::{BTreeSet, HashMap};

    use cairn_object::{Handle, Kind, Limits};
    use cairn_sched::{Action, Event, Graph, Options, Placement, Scheduler};

    use super::*;

    /// A root over `width` map tasks, each over a small blob: (graph, objects).
    fn job(width: usize) -> (Graph, HashMap<Handle, Vec<u8>>) {
        let mut objects = HashMap::new();
        let procedure = Handle::blob(&[7u8; 100]);
        objects.insert(procedure, vec![7u8; 100]);
        let mut maps = Vec::new();
        for i in 0..width {
            let bytes = vec![i as u8; 1000];
            let blob = Handle::blob(&bytes);
            objects.insert(blob, bytes);
            let t = cairn_object::thunk::encode(Limits::new(1 << 20).unwrap(), procedure, &[blob]).unwrap();
            let h = cairn_object::store::name(Kind::Thunk, &t).unwrap();
            objects.insert(h, t);
            maps.push(h);
        }
        let t = cairn_object::thunk::encode(Limits::new(1 << 20).unwrap(), procedure, &maps).unwrap();
        let root = cairn_object::store::name(Kind::Thunk, &t).unwrap();
        objects.insert(root, t);
        let graph = Graph::build(root, usize::MAX, |h| objects.get(h).cloned()).unwrap();
        (graph, objects)
    }

    /// Carries out the scheduler's quick actions as nodes that hold everything and remember
    /// nothing; Run orders go to the queues, as `run` does.
    fn pump(s: &mut Scheduler, queues: &Queues) {
        while let Some(action) = s.next_action() {
            match action {
                Action::AskMissing { node, .. } => s.handle(Event::Missing { node, missing: vec![] }),
                Action::Recall { node, .. } => s.handle(Event::Recalled { node, entries: vec![] }),
                Action::Run { node, order } => {
                    if !queues.0[node].push(Work { order, uploads: vec![], fetches: vec![] }) {
                        s.handle(Event::Lost { node, why: "its worker stopped".into() });
                    }
                }
                Action::Progress(_) => {}
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_lost_nodes_queue_is_dropped_and_the_tail_moves_from_a_live_one() {
        let (graph, objects) = job(12);
        let own: BTreeSet<Handle> = objects.keys().copied().collect();
        let options =
            Options { placement: Placement::Locality, verify: false, spread: false, recall: true, seed: 1 };
        let mut s = Scheduler::new(graph, own, 3, options);
        let queues = Queues((0..3).map(|_| Arc::new(NodeQueue::default())).collect());
        s.start();
        pump(&mut s, &queues);
        let lens: Vec<usize> = queues.0.iter().map(|q| q.waiting()).collect();
        assert_eq!(lens, vec![4, 4, 4], "round robin");
        // Node 2 is lost with one task running and three waiting: they are dropped, and with
        // its running one placed again on nodes 0 and 1.
        queues.0[2].take().unwrap();
        let lost = Event::Lost { node: 2, why: "reset".into() };
        queues.lost(&lost);
        s.handle(lost);
        pump(&mut s, &queues);
        assert_eq!(queues.0[2].waiting(), 0, "dropped");
        assert_eq!(queues.0[0].waiting() + queues.0[1].waiting(), 12, "placed again");
        // Node 1's thread runs all of its; node 0's has not started one.
        while queues.0[1].waiting() > 0 {
            let work = queues.0[1].take().unwrap();
            queues.0[1].finished();
            let _ = work;
        }
        assert!(queues.0[1].idle());
        let before = queues.0[0].waiting();
        assert!(take_back_for_idle(&queues, &mut s), "idle node 1 takes from node 0");
        pump(&mut s, &queues);
        assert_eq!((queues.0[0].waiting(), queues.0[1].waiting()), (before - 1, 1));
    }
}
