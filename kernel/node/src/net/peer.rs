//! The node as a client of its peers, over the cluster network (docs/CLUSTER.md):
//! - `fetch`: get the objects it lacks from a peer, checking every one against its handle
//!   before storing it (a peer that sends wrong bytes is named, and nothing of it is kept);
//! - `relocate`: run a thunk on a peer: ship the thunk and exactly the inputs the peer lacks,
//!   have it evaluate, and bring the result handle back.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use bytes::Bytes;
use cairn_object::store::{Store, StoreError};
use cairn_object::{Handle, Kind, Thunk};
use cairn_proto::{Frame, MAX_CHUNK, MAX_INLINE, Message, encode};

use super::Network;
use super::link::{Link, STALL_US};
use crate::arch::clock;
use crate::jobs::NodeEvaluator;
use crate::memory::objects::NodeStore;

/// While a link is busy, the node still answers others at least this often.
const SERVE_EVERY_US: u64 = 10_000;
/// How a fetch error that is a peer's wrong bytes begins (the API answers it as `wrong hash`).
pub const WRONG_BYTES: &str = "wrong bytes from a peer";

/// What a node does for its own clients while it waits on a peer: serve what its store can
/// answer (net::busy), given the cluster network the link uses and the store. Two nodes
/// fetching from each other would otherwise wait for each other until both gave up.
pub type ServeOthers<'a> = dyn FnMut(&mut Network, &NodeStore) + 'a;

/// A [`Link`] the node waits on, serving its own clients meanwhile.
struct PeerLink<'n> {
    network: &'n mut Network,
    others: &'n mut ServeOthers<'n>,
    link: Option<Link>,
    last_served: u64,
}

impl<'n> PeerLink<'n> {
    fn open(
        network: &'n mut Network,
        others: &'n mut ServeOthers<'n>,
        to: ([u8; 4], u16),
    ) -> Result<PeerLink<'n>, String> {
        let link = Link::open(network, to)?;
        Ok(PeerLink { network, others, link: Some(link), last_served: clock::micros_since_boot() })
    }

    fn link(&mut self) -> &mut Link {
        self.link.as_mut().expect("held until dropped")
    }

    fn peer(&self) -> &str {
        &self.link.as_ref().expect("held until dropped").peer
    }

    /// Moves packets, serving others now and then; an error if the peer refused, closed or
    /// stalled.
    fn step(&mut self, store: &NodeStore) -> Result<(), String> {
        self.network.device.rearm();
        self.network.poll();
        let link = self.link.as_mut().expect("held until dropped");
        let progressed = link.pump(self.network)?;
        let now = clock::micros_since_boot();
        // Others are served while the peer streams, too, not only while it is quiet.
        if !progressed || now.saturating_sub(self.last_served) >= SERVE_EVERY_US {
            (self.others)(self.network, store);
            self.network.poll();
            self.last_served = clock::micros_since_boot();
        }
        if !progressed {
            x86_64::instructions::interrupts::enable_and_hlt();
        }
        Ok(())
    }

    /// Sends frames' bytes, sealed once the handshake is done (it is waited for).
    fn send(&mut self, frames: &[u8], store: &NodeStore) -> Result<(), String> {
        self.link().queue(frames);
        while !self.link().all_sent() {
            self.step(store)?;
        }
        Ok(())
    }

    fn send_message(&mut self, request: u32, message: Message, store: &NodeStore) -> Result<(), String> {
        let mut out = Vec::new();
        encode(&Frame { request, message }, &mut out);
        self.send(&out, store)
    }

    /// The next frame from the peer; its ERROR frames become errors.
    fn receive(&mut self, store: &NodeStore) -> Result<Frame, String> {
        loop {
            if let Some(frame) = self.link().next_frame()? {
                return Ok(frame);
            }
            self.step(store)?;
        }
    }
}

impl Drop for PeerLink<'_> {
    fn drop(&mut self) {
        if let Some(link) = self.link.take() {
            link.close(self.network);
        }
    }
}

/// Gets every handle the node lacks from the peer at `from`; returns (objects, bytes) fetched.
pub fn fetch(
    network: &mut Network,
    others: &mut ServeOthers<'_>,
    ev: &mut NodeEvaluator,
    from: ([u8; 4], u16),
    handles: &[Handle],
) -> Result<(u64, u64), String> {
    let began_us = clock::micros_since_boot();
    let fetched = fetch_untraced(network, others, ev, from, handles);
    if fetched.as_ref().is_ok_and(|(objects, _)| *objects == 0) {
        return fetched;
    }
    let (count, bytes) = fetched.as_ref().map_or((0, 0), |f| *f);
    crate::trace::record(cairn_proto::trace::Span {
        peer: from.0,
        count,
        bytes,
        ok: fetched.is_ok(),
        ..crate::trace::since(cairn_proto::trace::SpanKind::Fetch, began_us)
    });
    fetched
}

fn fetch_untraced(
    network: &mut Network,
    others: &mut ServeOthers<'_>,
    ev: &mut NodeEvaluator,
    from: ([u8; 4], u16),
    handles: &[Handle],
) -> Result<(u64, u64), String> {
    let mut wanted: Vec<Handle> =
        handles.iter().copied().filter(|h| !h.is_literal() && !ev.store.contains(h)).collect();
    wanted.sort();
    wanted.dedup();
    if wanted.is_empty() {
        return Ok((0, 0));
    }
    let total: u64 = wanted.iter().map(|h| h.size()).sum();
    if total > ev.store.room() {
        return Err(format!("{total} bytes do not fit in the store"));
    }
    let mut link = PeerLink::open(network, others, from)?;
    let mut request = Vec::new();
    for (i, h) in wanted.iter().enumerate() {
        encode(&Frame { request: i as u32 + 1, message: Message::Get { handle: *h } }, &mut request);
    }
    link.send(&request, &ev.store)?;
    let mut bytes_in = 0u64;
    let mut stored = 0;
    // Each asked-for object is answered once: a second answer is the peer's mistake, and must
    // not count as another object.
    let mut answered = vec![false; wanted.len()];
    while stored < wanted.len() {
        let frame = link.receive(&ev.store)?;
        let index = (frame.request as usize).checked_sub(1).filter(|i| *i < wanted.len());
        if let Some(i) = index {
            if answered[i] {
                return Err(format!("{} answered {} twice", link.peer(), wanted[i]));
            }
            answered[i] = true;
        }
        let asked = index.map(|i| wanted[i]);
        match frame.message {
            Message::Object { handle, bytes } if asked == Some(handle) => {
                bytes_in += bytes.len() as u64;
                store(ev, link.peer(), handle, bytes)?;
                stored += 1;
            }
            Message::ObjectBegin { handle, len } if asked == Some(handle) => {
                // A blob's handle gives its length; a tree's or thunk's gives its footprint,
                // which its encoding (whole entries) cannot exceed.
                if !cairn_proto::length_fits(&handle, len) {
                    return Err(format!(
                        "{WRONG_BYTES}: {} announced {len} bytes for {handle}, which has {}",
                        link.peer(),
                        handle.size()
                    ));
                }
                // Straight into pages of the object's own, hashed as they arrive (on the helper
                // CPU when there is one), as uploads from clients are.
                ev.make_room(len.saturating_add(cairn_object::store::OBJECT_OVERHEAD));
                let mut upload = ev
                    .store
                    .upload_pages(len as usize)
                    .ok_or_else(|| format!("{handle} ({len} bytes) does not fit in the store"))?;
                let mut written = 0u64;
                while written < len {
                    match link.receive(&ev.store)?.message {
                        Message::ObjectChunk { offset, bytes: chunk }
                            if offset == written && offset + chunk.len() as u64 <= len =>
                        {
                            upload.write_at(offset as usize, &chunk);
                            written += chunk.len() as u64;
                        }
                        _ => return Err(format!("{} interrupted {handle}", link.peer())),
                    }
                }
                bytes_in += len;
                let (bytes, digest) = upload.finish();
                checked(ev.store.put_upload(&handle, bytes, digest), link.peer(), handle)?;
                stored += 1;
            }
            _ => return Err(format!("{} answered out of turn", link.peer())),
        }
    }
    Ok((wanted.len() as u64, bytes_in))
}

fn store(ev: &mut NodeEvaluator, peer: &str, handle: Handle, bytes: Vec<u8>) -> Result<(), String> {
    checked(ev.store.put_verified(&handle, Bytes::from(bytes)), peer, handle)
}

/// A store's verdict on an object from `peer`, as the error FETCH reports.
fn checked(outcome: Result<(), StoreError>, peer: &str, handle: Handle) -> Result<(), String> {
    match outcome {
        Ok(()) => Ok(()),
        Err(StoreError::Mismatch { actual, .. }) => Err(format!(
            "{WRONG_BYTES}: {peer} sent wrong bytes for {handle} (they are {actual}); not stored"
        )),
        Err(e) => Err(format!("storing {handle} from {peer}: {e}")),
    }
}

/// Handles one HAVE frame holds, with room to spare.
const HAVE_BATCH: usize = (cairn_proto::MAX_FRAME - 64) / Handle::LEN;

/// Runs `thunk` on the peer at `to`: ships the thunk and the inputs the peer lacks (its
/// procedure and arguments, which must be values here), and returns the peer's answer.
pub fn relocate(
    network: &mut Network,
    others: &mut ServeOthers<'_>,
    ev: &NodeEvaluator,
    to: ([u8; 4], u16),
    thunk: Handle,
) -> Result<Message, String> {
    let began_us = clock::micros_since_boot();
    let answer = relocate_untraced(network, others, ev, to, thunk);
    crate::trace::record(cairn_proto::trace::Span {
        peer: to.0,
        handle: Some(thunk),
        ok: matches!(answer, Ok(Message::Evaluated { .. })),
        ..crate::trace::since(cairn_proto::trace::SpanKind::Relocate, began_us)
    });
    answer
}

fn relocate_untraced(
    network: &mut Network,
    others: &mut ServeOthers<'_>,
    ev: &NodeEvaluator,
    to: ([u8; 4], u16),
    thunk: Handle,
) -> Result<Message, String> {
    let bytes = ev.store.get(&thunk).ok_or_else(|| format!("{thunk} is not on this node"))?;
    if thunk.kind() != Kind::Thunk {
        return Err(format!("{thunk} is not a thunk"));
    }
    let decoded = Thunk::decode(&bytes).map_err(|e| format!("{thunk}: {e}"))?;
    let mut inputs = vec![thunk, decoded.procedure()];
    for arg in decoded.args() {
        if arg.kind() == Kind::Thunk {
            return Err(format!(
                "{thunk} has an unevaluated argument {arg}: relocate thunks whose arguments are values"
            ));
        }
        inputs.push(arg);
    }
    inputs.retain(|h| !h.is_literal());
    inputs.sort();
    inputs.dedup();
    let mut link = PeerLink::open(network, others, to)?;
    // HAVE in batches that each fit a frame, however many inputs the thunk has.
    let mut missing = Vec::new();
    for batch in inputs.chunks(HAVE_BATCH) {
        link.send_message(1, Message::Have { handles: batch.to_vec() }, &ev.store)?;
        match link.receive(&ev.store)?.message {
            Message::Missing { handles } if handles.iter().all(|h| batch.binary_search(h).is_ok()) => {
                missing.extend(handles)
            }
            _ => return Err(format!("{} answered HAVE out of turn", link.peer())),
        }
    }
    for handle in &missing {
        let bytes = ev.store.get(handle).ok_or_else(|| format!("{handle} is not on this node"))?;
        if bytes.len() <= MAX_INLINE {
            link.send_message(2, Message::Put { handle: *handle, bytes: bytes.to_vec() }, &ev.store)?;
        } else {
            link.send_message(2, Message::PutBegin { handle: *handle, len: bytes.len() as u64 }, &ev.store)?;
            for (i, chunk) in bytes.chunks(MAX_CHUNK).enumerate() {
                link.send_message(
                    2,
                    Message::PutChunk { offset: (i * MAX_CHUNK) as u64, bytes: chunk.to_vec() },
                    &ev.store,
                )?;
            }
        }
        match link.receive(&ev.store)?.message {
            Message::Stored { handle: stored } if stored == *handle => {}
            _ => return Err(format!("{} did not store {handle}", link.peer())),
        }
    }
    link.send_message(3, Message::Eval { handle: thunk }, &ev.store)?;
    // The peer evaluates in silence, for as long as its evaluation may take.
    let evaluation_us = ev.executor.ceilings.eval_time_us;
    link.link().stall_us = evaluation_us.saturating_add(STALL_US);
    link.link().extend_deadline(0, evaluation_us);
    match link.receive(&ev.store)?.message {
        answer @ (Message::Evaluated { .. } | Message::EvalFailed { .. }) => Ok(answer),
        _ => Err(format!("{} answered EVAL out of turn", link.peer())),
    }
}
