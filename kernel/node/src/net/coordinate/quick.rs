//! A peer's link for quick requests (HAVE, PUT, RECALL, heartbeats), one at a time, in order.

use super::*;

/// A request to a peer that takes one answer.
pub(super) struct Pending {
    pub(super) request: u32,
    /// None: a heartbeat (HAVE of nothing).
    pub(super) action: Option<Action>,
    /// The bytes an upload sent (not its handle's size: a tree's or thunk's is its footprint).
    pub(super) bytes: u64,
}

/// A peer's link for quick requests: one at a time, in order.
#[derive(Default)]
pub(super) struct Quick {
    pub(super) link: Option<Link>,
    pub(super) queue: VecDeque<Action>,
    pub(super) pending: Option<Pending>,
    /// HAVE batches still unanswered, and what the answered ones said is missing.
    pub(super) batches_left: usize,
    pub(super) missing: Vec<Handle>,
    /// When the link last finished a request, and when the peer last answered a heartbeat.
    pub(super) idle_since: u64,
    pub(super) last_beat: u64,
}

impl Coordination {
    /// Sends the peer's next quick request, and takes its answer when it comes.
    pub(super) fn pump_quick(
        &mut self,
        node: NodeId,
        cluster: &mut Network,
        ev: &NodeEvaluator,
    ) -> Result<bool, String> {
        let to = self.addresses[node];
        let now = clock::micros_since_boot();
        if self.quick[node].pending.is_none() {
            let beat_due = self.runners[node].running.is_some()
                && now.saturating_sub(self.quick[node].last_beat) >= HEARTBEAT_US;
            let action = match self.quick[node].queue.pop_front() {
                Some(action) => Some(action),
                None if beat_due => None,
                // Idle: nothing is asked, so nothing is waited for.
                None => return Ok(false),
            };
            let request = self.request_id();
            let quick = &mut self.quick[node];
            let link = Self::link(&mut quick.link, quick.idle_since, cluster, to)?;
            link.renew(0);
            let mut sent = 0;
            match &action {
                None => link.queue_message(request, Message::Have { handles: Vec::new() }),
                Some(Action::AskMissing { handles, .. }) => {
                    quick.batches_left = handles.len().div_ceil(BATCH).max(1);
                    quick.missing.clear();
                    if handles.is_empty() {
                        link.queue_message(request, Message::Have { handles: Vec::new() });
                    }
                    for batch in handles.chunks(BATCH) {
                        link.queue_message(request, Message::Have { handles: batch.to_vec() });
                    }
                }
                Some(Action::Upload { handle, .. }) => {
                    let bytes = ev.store.get(handle).ok_or_else(|| {
                        format!("{handle}, an object of the job, is no longer on this node")
                    })?;
                    sent = put(link, request, *handle, &bytes);
                }
                Some(Action::Recall { thunks, .. }) => {
                    link.queue_message(request, Message::Recall { thunks: thunks.clone() })
                }
                Some(_) => return Err("not a quick request".into()),
            }
            quick.pending = Some(Pending { request, action, bytes: sent });
        }
        let quick = &mut self.quick[node];
        let link = quick.link.as_mut().expect("a request is pending on it");
        let moved = link.pump(cluster)?;
        while let Some(frame) = link.next_answer()? {
            let Some(pending) = quick.pending.as_ref() else {
                return Err(format!("{} answered what was not asked", link.peer));
            };
            if frame.request != pending.request {
                return Err(format!("{} answered request {} out of turn", link.peer, frame.request));
            }
            let event = match (&pending.action, frame.message) {
                (None, Message::Missing { handles }) if handles.is_empty() => {
                    quick.pending = None;
                    quick.last_beat = now;
                    quick.idle_since = now;
                    break;
                }
                (Some(Action::AskMissing { .. }), Message::Missing { handles }) => {
                    quick.missing.extend(handles);
                    quick.batches_left -= 1;
                    if quick.batches_left > 0 {
                        continue;
                    }
                    Event::Missing { node, missing: core::mem::take(&mut quick.missing) }
                }
                (Some(Action::Upload { handle, .. }), Message::Stored { handle: stored })
                    if stored == *handle =>
                {
                    Event::Uploaded { node, handle: *handle, bytes: pending.bytes }
                }
                (Some(Action::Recall { .. }), Message::Recalled { entries }) => {
                    Event::Recalled { node, entries }
                }
                (_, Message::Error { message, .. }) => return Err(format!("{}: {message}", link.peer)),
                (_, other) => return Err(format!("{} answered {} out of turn", link.peer, describe(&other))),
            };
            quick.pending = None;
            quick.idle_since = now;
            self.events.push_back(event);
            break;
        }
        Ok(moved)
    }
}
