//! One API connection from this node to a peer (docs/CLUSTER.md), as a state machine that
//! never waits: [`Link::pump`] moves whatever bytes can move now, [`Link::queue`] adds frames
//! to send, [`Link::next_frame`] takes an answer if one is whole. A node that waits on one peer
//! (FETCH, RELOCATE: `net::peer`) loops over it; a node coordinating a job (`net::coordinate`)
//! pumps one per peer from its loop, so that every peer works at once.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use cairn_channel::{Initiator, LEN_PREFIX, REPLY_LEN, Transport};
use cairn_proto::{Frame, Message, decode, encode};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::IpAddress;

use super::Network;
use crate::arch::clock;

/// A peer that makes no progress for this long has failed.
pub const STALL_US: u64 = 10_000_000;
/// However a peer paces itself, one exchange with it ends by a deadline: this long, plus the
/// time the bytes actually exchanged take at [`DEADLINE_RATE`] bytes per second (not the sizes
/// handles claim: a peer that delivers nothing earns no time).
const DEADLINE_BASE_US: u64 = 30_000_000;
const DEADLINE_RATE: u64 = 256 * 1024;
/// Each socket's buffers, and so the most bytes in flight either way. The cluster network
/// carries frames as UDP datagrams through the host's hub (docs/CLUSTER.md); a 256 KiB window
/// let a burst overflow the receiving side's socket on the host, and each loss cost a TCP
/// retransmission timeout (about a second) where a window a quarter as large costs nothing.
const BUFFER: usize = 64 * 1024;
/// A gap this long between two pumps is the node's absence (other work held its loop), which
/// neither the stall time nor the deadline counts.
const AWAY_US: u64 = 1_000_000;
static NEXT_PORT: core::sync::atomic::AtomicU16 = core::sync::atomic::AtomicU16::new(40000);

fn local_port() -> u16 {
    let port = NEXT_PORT.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    if port >= 48000 {
        NEXT_PORT.store(40000, core::sync::atomic::Ordering::Relaxed);
    }
    port
}

enum Channel {
    Handshake(Box<Initiator>),
    Open(Transport),
    /// Only while the handshake is taken out to finish it.
    Gone,
}

pub struct Link {
    socket: SocketHandle,
    pub peer: String,
    /// The secure channel (docs/PROTOCOL.md): the handshake until the peer's reply, then records.
    channel: Channel,
    /// Frames' bytes queued before the handshake ended, sealed once it has.
    unsealed: Vec<u8>,
    /// Bytes to send, sealed (or the hello), and how many have gone.
    wire_out: Vec<u8>,
    wire_sent: usize,
    /// Bytes received and not yet taken by the channel.
    wire_in: Vec<u8>,
    /// Frames' bytes, opened.
    input: Vec<u8>,
    connected: bool,
    last_progress: u64,
    /// No progress for this long is a failure (longer while the peer evaluates).
    pub stall_us: u64,
    /// When the exchange must be over, whatever the peer does.
    deadline: u64,
    /// A peer says WELCOME once.
    welcomed: bool,
    /// When the link was last pumped: time the node spent elsewhere (its loop blocked by other
    /// work) is not the peer's silence.
    last_pumped: u64,
}

/// How often an idle link's connection is probed.
const KEEP_ALIVE_MS: u64 = 1000;

impl Link {
    /// Begins a connection to the peer at `to` (its cluster address and API port), which must
    /// be one of this node's configured peers, and says HELLO.
    pub fn open(network: &mut Network, to: ([u8; 4], u16)) -> Result<Link, String> {
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
        // A probe each second the link is idle: a peer that was killed and booted again answers
        // it with a reset, and the link fails at once. (Without it, a link waiting on a task's
        // answer would wait out the task's whole budget, while heartbeats on fresh connections
        // found the new peer alive.)
        socket.set_keep_alive(Some(smoltcp::time::Duration::from_millis(KEEP_ALIVE_MS)));
        socket
            .connect(network.iface.context(), (IpAddress::v4(a, b, c, d), to.1), local_port())
            .map_err(|e| format!("cannot connect to {peer}: {e:?}"))?;
        let socket = network.sockets.add(socket);
        let now = clock::micros_since_boot();
        let mut link = Link {
            socket,
            peer,
            channel: Channel::Handshake(Box::new(initiator)),
            unsealed: Vec::new(),
            wire_out: hello.to_vec(),
            wire_sent: 0,
            wire_in: Vec::new(),
            input: Vec::new(),
            connected: false,
            last_progress: now,
            stall_us: STALL_US,
            deadline: now + DEADLINE_BASE_US,
            welcomed: false,
            last_pumped: now,
        };
        link.queue_message(0, Message::Hello { client: "cairn-node".into() });
        Ok(link)
    }

    /// Gives the exchange room for `bytes` more (at [`DEADLINE_RATE`]) and `extra_us` more.
    pub fn extend_deadline(&mut self, bytes: u64, extra_us: u64) {
        let for_bytes = bytes.saturating_mul(1_000_000) / DEADLINE_RATE;
        self.deadline = self.deadline.saturating_add(for_bytes).saturating_add(extra_us);
    }

    /// A fresh allowance for the next exchange on a link kept open between requests.
    pub fn renew(&mut self, extra_us: u64) {
        let now = clock::micros_since_boot();
        self.deadline = now.saturating_add(DEADLINE_BASE_US).saturating_add(extra_us);
        self.last_progress = now;
        self.stall_us = STALL_US.saturating_add(extra_us);
    }

    /// Queues frames' bytes, sealed once the handshake is done.
    pub fn queue(&mut self, frames: &[u8]) {
        self.extend_deadline(frames.len() as u64, 0);
        match &mut self.channel {
            Channel::Open(transport) => transport.seal(frames, &mut self.wire_out),
            _ => self.unsealed.extend_from_slice(frames),
        }
    }

    pub fn queue_message(&mut self, request: u32, message: Message) {
        let mut out = Vec::new();
        encode(&Frame { request, message }, &mut out);
        self.queue(&out);
    }

    /// Whether everything queued has gone to the socket.
    pub fn all_sent(&self) -> bool {
        matches!(self.channel, Channel::Open(_)) && self.unsealed.is_empty() && self.wire_out.is_empty()
    }

    /// Moves what bytes can move now (the caller polls the interface); true if any did. An
    /// error if the peer refused, closed or stalled, or ran past the deadline.
    pub fn pump(&mut self, network: &mut Network) -> Result<bool, String> {
        let now = clock::micros_since_boot();
        let away = now.saturating_sub(self.last_pumped);
        if away > AWAY_US {
            self.last_progress = self.last_progress.saturating_add(away);
            self.deadline = self.deadline.saturating_add(away);
        }
        self.last_pumped = now;
        let s = network.sockets.get_mut::<tcp::Socket>(self.socket);
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
        Ok(progressed)
    }

    /// Finishes the handshake with the peer's reply, and opens the records received since.
    fn open_records(&mut self) -> Result<(), String> {
        if let Channel::Handshake(_) = self.channel {
            let Some(reply) = self.wire_in.get(..LEN_PREFIX + REPLY_LEN) else { return Ok(()) };
            let reply: [u8; LEN_PREFIX + REPLY_LEN] = reply.try_into().expect("sliced to length");
            let Channel::Handshake(initiator) = core::mem::replace(&mut self.channel, Channel::Gone) else {
                unreachable!("matched above")
            };
            let mut transport = initiator
                .finish(&reply)
                .map_err(|e| format!("{} is not the peer this node knows: {e}", self.peer))?;
            self.wire_in.drain(..LEN_PREFIX + REPLY_LEN);
            if !self.unsealed.is_empty() {
                transport.seal(&self.unsealed, &mut self.wire_out);
                self.unsealed = Vec::new();
            }
            self.channel = Channel::Open(transport);
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

    /// The next whole frame from the peer, if one has arrived; its ERROR frames become errors.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, String> {
        match self.next_answer()? {
            Some(Frame { message: Message::Error { message, .. }, .. }) => {
                Err(format!("{}: {message}", self.peer))
            }
            other => Ok(other),
        }
    }

    /// The next whole frame from the peer, if one has arrived, ERROR frames included (the
    /// peer's answer to a request, not the link's failure).
    pub fn next_answer(&mut self) -> Result<Option<Frame>, String> {
        loop {
            let Some((frame, used)) =
                decode(&self.input).map_err(|e| format!("{} sent a malformed frame: {e}", self.peer))?
            else {
                return Ok(None);
            };
            self.input.drain(..used);
            match frame.message {
                // Once, in answer to HELLO; more would keep the node waiting forever.
                Message::Welcome { .. } if !self.welcomed => self.welcomed = true,
                Message::Welcome { .. } => return Err(format!("{} said WELCOME twice", self.peer)),
                _ => return Ok(Some(frame)),
            }
        }
    }

    /// Ends the connection and gives its socket back.
    pub fn close(self, network: &mut Network) {
        network.sockets.get_mut::<tcp::Socket>(self.socket).abort();
        network.poll();
        network.sockets.remove(self.socket);
    }
}
