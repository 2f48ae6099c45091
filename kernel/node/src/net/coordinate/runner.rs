//! A peer's link for tasks, one at a time: its inputs, its fetches from other peers, its
//! evaluation.

use super::*;

/// Where a task on a peer has got to.
pub(super) enum Stage {
    /// Asked which of its uploads (and the applied thunk) the peer lacks: answers to come.
    Have {
        left: usize,
        missing: Vec<Handle>,
    },
    /// Putting the ones it lacks, one at a time: those left.
    Put {
        left: Vec<Handle>,
    },
    /// Having the peer fetch from other peers, a batch at a time: the index of the batch.
    Fetch {
        next: usize,
    },
    Eval,
    /// A task with nothing to upload or fetch: its applied thunk put and its EVAL sent at once
    /// (one round trip instead of three); whether the thunk's STORED has come.
    Direct {
        stored: bool,
    },
}

pub(super) struct Running {
    pub(super) order: Order,
    pub(super) stage: Stage,
    /// The order's fetches in frames: (peer, handles).
    pub(super) fetches: Vec<(NodeId, Vec<Handle>)>,
    pub(super) moved: u64,
    pub(super) uploaded: u64,
    /// The bytes of the object being put.
    pub(super) putting: u64,
    /// The request id all of the task's requests carry, and what its HAVE asked (sorted).
    pub(super) request: u32,
    pub(super) wanted: Vec<Handle>,
}

/// A peer's link for tasks: one at a time, in order.
#[derive(Default)]
pub(super) struct Runner {
    pub(super) link: Option<Link>,
    pub(super) queue: VecDeque<Order>,
    pub(super) running: Option<Running>,
    /// When the link last finished a task.
    pub(super) idle_since: u64,
}

impl Coordination {
    /// Moves the peer's task along: its inputs, its fetches, its evaluation.
    pub(super) fn pump_runner(
        &mut self,
        node: NodeId,
        cluster: &mut Network,
        ev: &NodeEvaluator,
    ) -> Result<bool, String> {
        let to = self.addresses[node];
        let eval_us = ev.executor.ceilings.eval_time_us;
        let now = clock::micros_since_boot();
        if self.runners[node].running.is_none() {
            let Some(order) = self.runners[node].queue.pop_front() else {
                // Idle: nothing is asked, so nothing is waited for; but a link opened ahead of
                // its first task finishes its handshake meanwhile.
                return match self.runners[node].link.as_mut() {
                    Some(link) if !link.all_sent() => link.pump(cluster),
                    _ => Ok(false),
                };
            };
            let request = self.request_id();
            let runner = &mut self.runners[node];
            let link = Self::link(&mut runner.link, runner.idle_since, cluster, to)?;
            link.renew(0);
            runner.running = Some(start(link, request, order, eval_us));
        }
        let runner = &mut self.runners[node];
        let link = runner.link.as_mut().expect("a task is running on it");
        let moved = link.pump(cluster)?;
        while let Some(frame) = link.next_answer()? {
            let running = runner
                .running
                .as_mut()
                .ok_or_else(|| format!("{} answered what was not asked", link.peer))?;
            let task = running.order.task;
            if frame.request != running.request {
                return Err(format!("{} answered request {} out of turn", link.peer, frame.request));
            }
            let event = match (&mut running.stage, frame.message) {
                (Stage::Have { .. }, Message::Missing { handles })
                    if handles.iter().any(|h| running.wanted.binary_search(h).is_err()) =>
                {
                    return Err(format!("{} answered HAVE with handles it was not asked about", link.peer));
                }
                (Stage::Have { left, missing }, Message::Missing { handles }) => {
                    missing.extend(handles);
                    *left -= 1;
                    if *left > 0 {
                        continue;
                    }
                    let left = core::mem::take(missing);
                    running.stage = Stage::Put { left };
                    None
                }
                (Stage::Put { left }, Message::Stored { handle }) if left.last() == Some(&handle) => {
                    left.pop();
                    running.uploaded = running.uploaded.saturating_add(running.putting);
                    None
                }
                (Stage::Fetch { next }, Message::Fetched { bytes, .. }) => {
                    // The figure is the peer's: saturate rather than trust it not to overflow.
                    running.moved = running.moved.saturating_add(bytes);
                    *next += 1;
                    None
                }
                (Stage::Fetch { next }, Message::Error { code, message }) => {
                    let peer = running.fetches[*next].0;
                    let why = format!("{}: {message}", link.peer);
                    Some(if code == ErrorCode::WrongHash || message.contains(WRONG_BYTES) {
                        Event::BadPeer { node, task, peer, why }
                    } else {
                        // The node answered (with an error): it is the peer that failed.
                        Event::FetchFailed { node, task, peer, why }
                    })
                }
                (Stage::Direct { stored: stored @ false }, Message::Stored { handle })
                    if handle == running.order.applied =>
                {
                    *stored = true;
                    running.uploaded = running.uploaded.saturating_add(running.putting);
                    None
                }
                (
                    Stage::Eval | Stage::Direct { stored: true },
                    Message::Evaluated { result, tasks_run, .. },
                ) => Some(Event::Done {
                    node,
                    task,
                    result,
                    moved: running.moved,
                    uploaded: running.uploaded,
                    ran: tasks_run > 0,
                }),
                (Stage::Eval | Stage::Direct { stored: true }, Message::EvalFailed { failure, .. }) => {
                    Some(Event::Failed { node, task, why: failure.clone(), failure })
                }
                (_, Message::Error { message, .. }) => return Err(format!("{}: {message}", link.peer)),
                (_, other) => return Err(format!("{} answered {} out of turn", link.peer, describe(&other))),
            };
            if let Some(event) = event {
                runner.running = None;
                runner.idle_since = now;
                self.events.push_back(event);
                break;
            }
            // The next request of the task, if the last one has its answer.
            let request = frame.request;
            match &mut running.stage {
                Stage::Put { left } => match left.last() {
                    Some(handle) => {
                        let bytes = if *handle == running.order.applied {
                            Bytes::from(running.order.applied_bytes.clone())
                        } else {
                            ev.store.get(handle).ok_or_else(|| {
                                format!("{handle}, an object of the job, is no longer on this node")
                            })?
                        };
                        running.putting = put(link, request, *handle, &bytes);
                    }
                    None => running.stage = Stage::Fetch { next: 0 },
                },
                Stage::Fetch { .. } | Stage::Have { .. } | Stage::Eval | Stage::Direct { .. } => {}
            }
            if let Stage::Fetch { next } = running.stage {
                match running.fetches.get(next) {
                    Some((peer, handles)) => {
                        let from = (self.addresses[*peer], crate::net::api::PORT);
                        link.renew(eval_us);
                        link.queue_message(request, Message::Fetch { from, handles: handles.clone() });
                    }
                    None => {
                        // The peer evaluates in silence, for as long as its evaluation may take.
                        link.renew(eval_us);
                        let handle = running.order.applied;
                        let message = if running.order.fresh {
                            Message::EvalFresh { handle }
                        } else {
                            Message::Eval { handle }
                        };
                        link.queue_message(request, message);
                        running.stage = Stage::Eval;
                    }
                }
            }
        }
        Ok(moved)
    }
}

/// Whether a task needs nothing on its peer but its applied thunk: no uploads, no fetches.
pub(super) fn is_direct(order: &Order) -> bool {
    order.uploads.is_empty() && order.fetches.is_empty() && !order.applied.is_literal()
}

/// Sends a task's first requests to its peer: a direct one's PUT and EVAL at once (one round
/// trip instead of three), any other's HAVE of what it needs.
pub(super) fn start(link: &mut Link, request: u32, order: Order, eval_us: u64) -> Running {
    let mut wanted: Vec<Handle> = order.uploads.clone();
    wanted.push(order.applied);
    let mut fetches = Vec::new();
    for (peer, handles) in &order.fetches {
        for batch in handles.chunks(BATCH) {
            fetches.push((*peer, batch.to_vec()));
        }
    }
    let (stage, putting) = if is_direct(&order) {
        // The thunk is small: put it whether or not the peer has it, and ask at once.
        let sent = put(link, request, order.applied, &order.applied_bytes);
        link.renew(eval_us);
        let handle = order.applied;
        link.queue_message(
            request,
            if order.fresh { Message::EvalFresh { handle } } else { Message::Eval { handle } },
        );
        (Stage::Direct { stored: false }, sent)
    } else {
        let left = wanted.len().div_ceil(BATCH);
        for batch in wanted.chunks(BATCH) {
            link.queue_message(request, Message::Have { handles: batch.to_vec() });
        }
        (Stage::Have { left, missing: Vec::new() }, 0)
    };
    wanted.sort_unstable();
    Running { order, stage, fetches, moved: 0, uploaded: 0, putting, request, wanted }
}

/// Puts an object on a peer: whole, or in chunks. Returns its length.
pub(super) fn put(link: &mut Link, request: u32, handle: Handle, bytes: &[u8]) -> u64 {
    if bytes.len() <= MAX_INLINE {
        link.queue_message(request, Message::Put { handle, bytes: bytes.to_vec() });
        return bytes.len() as u64;
    }
    let mut out = Vec::new();
    encode(&Frame { request, message: Message::PutBegin { handle, len: bytes.len() as u64 } }, &mut out);
    for (i, chunk) in bytes.chunks(MAX_CHUNK).enumerate() {
        let message = Message::PutChunk { offset: (i * MAX_CHUNK) as u64, bytes: chunk.to_vec() };
        encode(&Frame { request, message }, &mut out);
    }
    link.queue(&out);
    bytes.len() as u64
}
