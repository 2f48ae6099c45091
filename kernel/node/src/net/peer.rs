//! The node as a client of its peers, over the cluster network (docs/CLUSTER.md):
//! - `fetch`: get the objects it lacks from a peer, checking every one against its handle
//!   before storing it (a peer that sends wrong bytes is named, and nothing of it is kept);
//! - `relocate`: run a thunk on a peer: ship the thunk and exactly the inputs the peer lacks,
//!   have it evaluate, and bring the result handle back.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use bytes::Bytes;
use cairn_channel::{Initiator, LEN_PREFIX, REPLY_LEN, Transport};
use cairn_object::store::{Store, StoreError};
use cairn_object::{Handle, Kind, Thunk};
use cairn_proto::{Frame, MAX_CHUNK, MAX_INLINE, Message, decode, encode};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::IpAddress;

use super::Network;
use crate::arch::clock;
use crate::jobs::NodeEvaluator;
use crate::memory::objects::NodeStore;

/// A peer that makes no progress for this long has failed.
const STALL_US: u64 = 10_000_000;
/// However a peer paces itself, one exchange with it ends by a deadline: this long, plus the
/// time the bytes actually exchanged take at [`DEADLINE_RATE`] bytes per second (not the sizes
/// handles claim: a peer that delivers nothing earns no time).
const DEADLINE_BASE_US: u64 = 30_000_000;
const DEADLINE_RATE: u64 = 256 * 1024;
/// While a link is busy, the node still answers others at least this often.
const SERVE_EVERY_US: u64 = 10_000;
const BUFFER: usize = 256 * 1024;
/// How a fetch error that is a peer's wrong bytes begins (the API answers it as `wrong hash`).
pub const WRONG_BYTES: &str = "wrong bytes from a peer";
static NEXT_PORT: core::sync::atomic::AtomicU16 = core::sync::atomic::AtomicU16::new(40000);

fn local_port() -> u16 {
    let port = NEXT_PORT.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    if port >= 48000 {
        NEXT_PORT.store(40000, core::sync::atomic::Ordering::Relaxed);
    }
    port
}

/// What a node does for its own clients while it waits on a peer: serve what its store can
/// answer (net::busy), given the cluster network the link uses and the store. Two nodes
/// fetching from each other would otherwise wait for each other until both gave up.
pub type ServeOthers<'a> = dyn FnMut(&mut Network, &NodeStore) + 'a;

enum Channel {
    Handshake(Box<Initiator>),
    Open(Transport),
    /// Only while the handshake is taken out to finish it.
    Gone,
}

/// One API connection to a peer, driven by polling the cluster network.
struct PeerLink<'n> {
    network: &'n mut Network,
    others: &'n mut ServeOthers<'n>,
    socket: SocketHandle,
    peer: String,
    /// The secure channel (docs/PROTOCOL.md): the handshake until the peer's reply, then records.
    channel: Channel,
    /// Bytes to send, sealed (or the hello), and how many have gone.
    wire_out: Vec<u8>,
    wire_sent: usize,
    /// Bytes received and not yet taken by the channel.
    wire_in: Vec<u8>,
    /// Frames' bytes, opened.
    input: Vec<u8>,
    connected: bool,
    last_progress: u64,
    last_served: u64,
    /// No progress for this long is a failure (longer while the peer evaluates).
    stall_us: u64,
    /// When the exchange must be over, whatever the peer does.
    deadline: u64,
    /// A peer says WELCOME once.
    welcomed: bool,
}

impl<'n> PeerLink<'n> {
    fn open(
        network: &'n mut Network,
        others: &'n mut ServeOthers<'n>,
        to: ([u8; 4], u16),
    ) -> Result<PeerLink<'n>, String> {
        let [a, b, c, d] = to.0;
        let peer = format!("{a}.{b}.{c}.{d}:{}", to.1);
        // Only configured peers, each checked against its key: a node connects to no address a
        // client names, and trusts no impostor at a peer's address.
        let keys = super::keys();
        let peer_key = keys
            .peers
            .iter()
            .find(|(ip, _)| *ip == to.0)
            .map(|(_, key)| *key)
            .ok_or_else(|| format!("{peer} is not a peer of this node (no key for it)"))?;
        let seed = crate::entropy::seed().ok_or("no entropy for a handshake")?;
        let (initiator, hello) = Initiator::new(&keys.guard.secret, &peer_key, seed)
            .map_err(|e| format!("cannot begin a handshake with {peer}: {e}"))?;
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; BUFFER]),
            tcp::SocketBuffer::new(vec![0; BUFFER]),
        );
        socket.set_ack_delay(None);
        socket
            .connect(network.iface.context(), (IpAddress::v4(a, b, c, d), to.1), local_port())
            .map_err(|e| format!("cannot connect to {peer}: {e:?}"))?;
        let socket = network.sockets.add(socket);
        Ok(PeerLink {
            network,
            others,
            socket,
            peer,
            channel: Channel::Handshake(Box::new(initiator)),
            wire_out: hello.to_vec(),
            wire_sent: 0,
            wire_in: Vec::new(),
            input: Vec::new(),
            connected: false,
            last_progress: clock::micros_since_boot(),
            last_served: clock::micros_since_boot(),
            stall_us: STALL_US,
            deadline: clock::micros_since_boot() + DEADLINE_BASE_US,
            welcomed: false,
        })
    }

    /// Gives the exchange room for `bytes` more (at [`DEADLINE_RATE`]) and `extra_us` more.
    fn extend_deadline(&mut self, bytes: u64, extra_us: u64) {
        let for_bytes = bytes.saturating_mul(1_000_000) / DEADLINE_RATE;
        self.deadline = self.deadline.saturating_add(for_bytes).saturating_add(extra_us);
    }

    /// Moves packets; an error if the peer refused, closed or stalled.
    fn step(&mut self, store: &NodeStore) -> Result<(), String> {
        self.network.device.rearm();
        self.network.poll();
        let s = self.network.sockets.get_mut::<tcp::Socket>(self.socket);
        let mut progressed = false;
        self.connected |= s.may_send();
        if !self.connected && s.state() == tcp::State::Closed {
            return Err(format!("{} refused the connection", self.peer));
        }
        if s.can_send() && self.wire_sent < self.wire_out.len() {
            self.wire_sent += s
                .send_slice(&self.wire_out[self.wire_sent..])
                .map_err(|e| format!("sending to {}: {e:?}", self.peer))?;
            if self.wire_sent == self.wire_out.len() {
                self.wire_out.clear();
                self.wire_sent = 0;
            }
            progressed = true;
            // Bytes taken by the peer are progress; bytes received are only once they open
            // into the protocol's bytes (an empty record now and then is not).
            self.last_progress = clock::micros_since_boot();
        }
        while s.can_recv() {
            let input = &mut self.wire_in;
            s.recv(|b| {
                input.extend_from_slice(b);
                (b.len(), ())
            })
            .map_err(|e| format!("receiving from {}: {e:?}", self.peer))?;
            progressed = true;
        }
        if self.connected && !s.may_recv() && !progressed {
            return Err(format!("{} closed the connection", self.peer));
        }
        self.open_records()?;
        let now = clock::micros_since_boot();
        if now > self.deadline {
            return Err(format!("{} did not finish in time", self.peer));
        }
        if now.saturating_sub(self.last_progress) > self.stall_us {
            return Err(format!("{} made no progress for {} s", self.peer, self.stall_us / 1_000_000));
        }
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

    /// Finishes the handshake with the peer's reply, and opens the records received since.
    fn open_records(&mut self) -> Result<(), String> {
        if let Channel::Handshake(_) = self.channel {
            let Some(reply) = self.wire_in.get(..LEN_PREFIX + REPLY_LEN) else { return Ok(()) };
            let reply: [u8; LEN_PREFIX + REPLY_LEN] = reply.try_into().expect("sliced to length");
            let Channel::Handshake(initiator) = core::mem::replace(&mut self.channel, Channel::Gone) else {
                unreachable!("matched above")
            };
            let transport = initiator
                .finish(&reply)
                .map_err(|e| format!("{} is not the peer this node knows: {e}", self.peer))?;
            self.channel = Channel::Open(transport);
            self.wire_in.drain(..LEN_PREFIX + REPLY_LEN);
            self.last_progress = clock::micros_since_boot();
        }
        let Channel::Open(transport) = &mut self.channel else { return Ok(()) };
        let (mut at, mut opened_bytes) = (0, 0u64);
        while at < self.wire_in.len() {
            super::ahead::order_keystreams(transport);
            let (taken, opened) =
                transport.open(&self.wire_in[at..]).map_err(|e| format!("from {}: {e}", self.peer))?;
            if let Some(plain) = opened {
                self.input.extend_from_slice(plain);
                opened_bytes += plain.len() as u64;
            }
            at += taken;
        }
        self.wire_in.clear();
        if opened_bytes > 0 {
            // The exchange's time grows with what the peer delivers, not with what it claims.
            self.extend_deadline(opened_bytes, 0);
            self.last_progress = clock::micros_since_boot();
        }
        Ok(())
    }

    /// Sends frames' bytes, sealed once the handshake is done (it is waited for).
    fn send(&mut self, frames: &[u8], store: &NodeStore) -> Result<(), String> {
        while !matches!(self.channel, Channel::Open(_)) {
            self.step(store)?;
        }
        let Channel::Open(transport) = &mut self.channel else { unreachable!("waited for above") };
        transport.seal(frames, &mut self.wire_out);
        self.extend_deadline(frames.len() as u64, 0);
        while !self.wire_out.is_empty() {
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
            if let Some((frame, used)) =
                decode(&self.input).map_err(|e| format!("{} sent a malformed frame: {e}", self.peer))?
            {
                self.input.drain(..used);
                match frame.message {
                    Message::Error { message, .. } => return Err(format!("{}: {message}", self.peer)),
                    // Once, in answer to HELLO; more would keep the node waiting forever.
                    Message::Welcome { .. } if !self.welcomed => {
                        self.welcomed = true;
                        continue;
                    }
                    Message::Welcome { .. } => return Err(format!("{} said WELCOME twice", self.peer)),
                    _ => return Ok(frame),
                }
            }
            self.step(store)?;
        }
    }
}

impl Drop for PeerLink<'_> {
    fn drop(&mut self) {
        self.network.sockets.get_mut::<tcp::Socket>(self.socket).abort();
        self.network.poll();
        self.network.sockets.remove(self.socket);
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
    encode(&Frame { request: 0, message: Message::Hello { client: "cairn-node".into() } }, &mut request);
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
                return Err(format!("{} answered {} twice", link.peer, wanted[i]));
            }
            answered[i] = true;
        }
        let asked = index.map(|i| wanted[i]);
        match frame.message {
            Message::Object { handle, bytes } if asked == Some(handle) => {
                bytes_in += bytes.len() as u64;
                store(ev, &link.peer, handle, bytes)?;
                stored += 1;
            }
            Message::ObjectBegin { handle, len } if asked == Some(handle) => {
                // A blob's handle gives its length; a tree's or thunk's gives its footprint,
                // which its encoding (whole entries) cannot exceed.
                if !cairn_proto::length_fits(&handle, len) {
                    return Err(format!(
                        "{WRONG_BYTES}: {} announced {len} bytes for {handle}, which has {}",
                        link.peer,
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
                        _ => return Err(format!("{} interrupted {handle}", link.peer)),
                    }
                }
                bytes_in += len;
                let (bytes, digest) = upload.finish();
                checked(ev.store.put_upload(&handle, bytes, digest), &link.peer, handle)?;
                stored += 1;
            }
            _ => return Err(format!("{} answered out of turn", link.peer)),
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
    link.send_message(0, Message::Hello { client: "cairn-node".into() }, &ev.store)?;
    // HAVE in batches that each fit a frame, however many inputs the thunk has.
    let mut missing = Vec::new();
    for batch in inputs.chunks(HAVE_BATCH) {
        link.send_message(1, Message::Have { handles: batch.to_vec() }, &ev.store)?;
        match link.receive(&ev.store)?.message {
            Message::Missing { handles } if handles.iter().all(|h| batch.binary_search(h).is_ok()) => {
                missing.extend(handles)
            }
            _ => return Err(format!("{} answered HAVE out of turn", link.peer)),
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
            _ => return Err(format!("{} did not store {handle}", link.peer)),
        }
    }
    link.send_message(3, Message::Eval { handle: thunk }, &ev.store)?;
    // The peer evaluates in silence, for as long as its evaluation may take.
    let evaluation_us = ev.executor.ceilings.eval_time_us;
    link.stall_us = evaluation_us.saturating_add(STALL_US);
    link.extend_deadline(0, evaluation_us);
    match link.receive(&ev.store)?.message {
        answer @ (Message::Evaluated { .. } | Message::EvalFailed { .. }) => Ok(answer),
        _ => Err(format!("{} answered EVAL out of turn", link.peer)),
    }
}
