//! The node API's connections: TCP sockets on port 7070, each with its protocol session, and the
//! node-wide ceilings on what they may hold (docs/SECURITY.md): answers queued and bytes held per
//! connection (the session pauses, and the node stops reading), connections per client address,
//! a minimum pace in the middle of a request, and room kept for new clients by closing the
//! connection idle the longest when every slot is taken. The decisions are
//! `cairn_proto::admission`'s, tested on the host.

use alloc::collections::VecDeque;
use alloc::format;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::Cell;

use cairn_bootcfg::Ceilings;
use cairn_channel::PublicKey;
use cairn_proto::ErrorCode;
use cairn_proto::admission::{
    self, Admission, DownloadPace, HANDSHAKE_DEADLINE_US, Handshake, Pace, SlotView, UploadPace,
};
use cairn_proto::secure::Guard;
use cairn_proto::session::{NodeApi, Session, SessionLimits, Work};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::IpAddress;

use super::Network;
use crate::arch::clock;

pub const PORT: u16 = 7070;
/// Each socket's receive and send buffers.
const BUFFER: usize = 256 * 1024;
/// A whole record of the secure channel on the wire.
const FULL_RECORD: usize = cairn_channel::LEN_PREFIX + cairn_channel::MAX_RECORD;
/// Queued work a connection may have outstanding at once.
const WORK_PER_CONNECTION: usize = 8;
/// A connection the node closed is reset if the client has not closed its side this long
/// after: a client that never does must not keep the slot (in FIN-WAIT) forever.
const CLOSE_GRACE_US: u64 = 200_000;

pub(super) struct Slot {
    socket: SocketHandle,
    pub(super) session: Option<Session>,
    /// The secure channel in front of the session (docs/PROTOCOL.md).
    guard: Guard,
    /// When the connection began: it must authenticate by [`HANDSHAKE_DEADLINE_US`].
    opened_at: u64,
    pub(super) last_active: u64,
    /// Counts connections on this slot, so an answer for a closed one is not given to the next.
    pub(super) generation: u64,
    /// The client's address while connected.
    peer: Option<IpAddress>,
    pace: Pace,
    /// When the node closed its side.
    closed_at: Option<u64>,
    /// Reset by the node for another connection's sake during this round of polling.
    aborted: bool,
    /// The upload in progress, which must keep up (`admission::UploadPace`): the room it was
    /// promised is not held at a trickle.
    upload: Option<UploadPace>,
    /// The download in progress, which the client must read at the same pace.
    download: Option<DownloadPace>,
}

/// Work a session queued (a job), to be run by the node's loop with the network at hand.
pub struct Queued {
    pub(super) slot: usize,
    pub(super) generation: u64,
    pub(super) request: u32,
    pub work: Work,
}

/// Connections the ceilings ended, for STATS.
#[derive(Clone, Copy, Debug, Default)]
pub struct Refusals {
    /// Refused: the client address held as many connections as it may.
    pub per_client: u64,
    /// Dropped for dribbling: below the minimum pace in the middle of a request.
    pub too_slow: u64,
    /// Closed while quiet to make room for a new client.
    pub evicted: u64,
    /// Closed for moving no bytes for `api_idle_s` (a client that stopped reading included).
    pub idle: u64,
    /// Closed before authenticating: the handshake took too long, failed, or made way for a
    /// newer one (at most `MAX_HANDSHAKES` at once).
    pub handshake: u64,
}

/// The API's connections, each a socket and its session.
pub(super) struct Connections {
    pub(super) slots: Vec<Slot>,
    /// A connection that moves no bytes for this long is closed (node config `api_idle_s`).
    idle_timeout_us: u64,
    limits: SessionLimits,
    per_client: u64,
    min_rate: u64,
    pub(super) queued: VecDeque<Queued>,
    pub(super) refusals: Refusals,
    /// When the connections were last polled.
    last_poll: u64,
    /// Slots whose sessions ran this round (their answers go out after the commit), and those
    /// that sent bytes: kept between rounds, with room for every slot, so that a round
    /// allocates nothing for them.
    polled: Vec<usize>,
    heard: Vec<usize>,
}

impl Connections {
    pub(super) fn new(network: &mut Network, idle_timeout_s: u32, ceilings: &Ceilings) -> Connections {
        let slots: Vec<Slot> = (0..ceilings.api_connections)
            .map(|_| {
                let mut socket = tcp::Socket::new(
                    tcp::SocketBuffer::new(vec![0; BUFFER]),
                    tcp::SocketBuffer::new(vec![0; BUFFER]),
                );
                // Acknowledge at once: the node polls in bursts, and a delayed ACK stalls the
                // sender for a whole delay on every window.
                socket.set_ack_delay(None);
                Slot {
                    socket: network.sockets.add(socket),
                    session: None,
                    guard: Guard::new(),
                    opened_at: 0,
                    last_active: 0,
                    generation: 0,
                    peer: None,
                    pace: Pace::default(),
                    closed_at: None,
                    aborted: false,
                    upload: None,
                    download: None,
                }
            })
            .collect();
        let count = slots.len();
        Connections {
            polled: Vec::with_capacity(count),
            heard: Vec::with_capacity(count),
            slots,
            idle_timeout_us: u64::from(idle_timeout_s) * 1_000_000,
            limits: SessionLimits {
                queue_bytes: ceilings.api_queue_bytes() as usize,
                held_bytes: ceilings.api_held_bytes() as usize,
                work: WORK_PER_CONNECTION,
            },
            per_client: ceilings.api_connections_per_client,
            min_rate: ceilings.api_min_rate,
            queued: VecDeque::new(),
            refusals: Refusals::default(),
            last_poll: clock::micros_since_boot(),
        }
    }

    /// Connections other than `slot` that `peer` holds open and that have not authenticated
    /// (not on their way out): the per-address ceiling counts handshakes only, so that one
    /// client behind a shared address (NAT) cannot close another's connections.
    fn held_by(&self, network: &Network, peer: IpAddress, slot: usize, now: u64) -> Vec<(usize, SlotView)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(i, s)| {
                *i != slot
                    && s.peer == Some(peer)
                    && !s.guard.authenticated()
                    && s.closed_at.is_none()
                    && network.sockets.get::<tcp::Socket>(s.socket).is_active()
            })
            .map(|(i, s)| (i, Self::view(network, s, now)))
            .collect()
    }

    /// Authenticated connections other than `slot` (not on their way out), with their keys:
    /// the per-client ceiling counts a key's connections.
    fn keyed(&self, network: &Network, slot: usize, now: u64) -> Vec<(usize, SlotView, PublicKey)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(i, s)| {
                *i != slot
                    && s.closed_at.is_none()
                    // Half-closed ones too: a client that shut its side down while it is owed
                    // answers still holds its slot.
                    && network.sockets.get::<tcp::Socket>(s.socket).is_active()
            })
            .filter_map(|(i, s)| Some((i, Self::view(network, s, now), s.guard.client()?)))
            .collect()
    }

    /// What [`admission`] needs to know of a slot.
    fn view(network: &Network, slot: &Slot, now: u64) -> SlotView {
        let socket = network.sockets.get::<tcp::Socket>(slot.socket);
        // A connection on its way out frees its slot soon: no need to close another.
        let connected = socket.is_active() && !slot.session.as_ref().is_some_and(Session::closing);
        let quiet = slot
            .session
            .as_ref()
            .is_none_or(|s| !s.mid_request() && !s.owes_answers() && !s.has_output() && !s.closing());
        SlotView {
            connected,
            quiet,
            idle_us: now.saturating_sub(slot.last_active),
            authenticated: slot.guard.authenticated(),
        }
    }

    /// Moves bytes between the sockets and their sessions, which ask `node`; true if anything
    /// happened. `served` counts connections. Without `timeouts` (while the node evaluates),
    /// no connection is closed for idleness: the evaluation is not the clients' idleness.
    pub(super) fn poll(
        &mut self,
        network: &mut Network,
        node: &mut dyn NodeApi,
        served: &Cell<u64>,
        timeouts: bool,
    ) -> bool {
        let now = clock::micros_since_boot();
        let keys = super::keys();
        self.pause_if_unserved(now);
        let mut busy = false;
        // A key's own connection closed to make room for its next one.
        let mut closing_for_keys = Vec::new();
        let (mut polled, mut heard) = (core::mem::take(&mut self.polled), core::mem::take(&mut self.heard));
        polled.clear();
        heard.clear();
        for index in 0..self.slots.len() {
            let socket = network.sockets.get_mut::<tcp::Socket>(self.slots[index].socket);
            if !socket.is_open() {
                let slot = &mut self.slots[index];
                if core::mem::take(&mut slot.aborted) {
                    // Closed by the node during this round: its reset goes out with the next
                    // network poll, and listening now would forget whom to send it to.
                    continue;
                }
                slot.session = None;
                // The channel's keys, and the keystreams it ordered, go with the connection.
                slot.guard = Guard::new();
                slot.peer = None;
                slot.closed_at = None;
                // Listening can only fail if the socket is not closed, which it is here.
                let _ = socket.listen(PORT);
                continue;
            }
            if !socket.is_active() {
                continue; // still listening
            }
            if self.slots[index].session.is_none() {
                let peer = socket.remote_endpoint().map(|e| e.addr);
                let admission = match peer {
                    Some(p) => admission::admit(&self.held_by(network, p, index, now), self.per_client),
                    None => Admission::Admit,
                };
                if let Admission::AdmitClosing(idle) = admission {
                    self.close_to_make_room(network, idle, now);
                }
                self.limit_handshakes(network, index);
                self.start_session(index, peer, admission != Admission::Refuse, now, served);
            }
            // Only a connection that may prove its key in this round (bytes waiting, no proof
            // yet) needs the others' keys, so that the loop does not list them for every one.
            let may_prove = !self.slots[index].guard.authenticated()
                && network.sockets.get::<tcp::Socket>(self.slots[index].socket).can_recv();
            let keyed = if may_prove { self.keyed(network, index, now) } else { Vec::new() };
            let per_client = self.per_client;
            let mut key_refused = false;
            let mut admit_key = |key: &PublicKey| {
                let held: Vec<(usize, SlotView)> =
                    keyed.iter().filter(|(_, _, k)| k == key).map(|(i, view, _)| (*i, *view)).collect();
                match admission::admit(&held, per_client) {
                    Admission::Admit => Ok(()),
                    Admission::AdmitClosing(idle) => {
                        closing_for_keys.push(idle);
                        Ok(())
                    }
                    Admission::Refuse => {
                        key_refused = true;
                        Err(format!("key {key} holds the {per_client} connections one client may have"))
                    }
                }
            };
            let socket = network.sockets.get_mut::<tcp::Socket>(self.slots[index].socket);
            let slot = &mut self.slots[index];
            let session = slot.session.as_mut().expect("set above");
            let guard = &mut slot.guard;
            // Input held back (behind an EVAL just answered, or while the node was busy).
            session.resume(node);
            let mut received = 0;
            let reading = session.accepts_input();
            // A session that holds all it may, or whose answers go unread, gets no more bytes:
            // they stay in the socket, and TCP makes the client wait.
            if (session.accepts_input() || guard.handshaking()) && socket.can_recv() {
                let _ = socket.recv(|bytes| {
                    // Record by record, so that a session that fills up stops the reading.
                    while received < bytes.len() && (session.accepts_input() || guard.handshaking()) {
                        order_keystreams(guard, session);
                        received += guard.receive(
                            &bytes[received..],
                            session,
                            node,
                            &keys.guard,
                            &mut crate::entropy::seed,
                            &mut admit_key,
                        );
                    }
                    (received, ())
                });
                slot.last_active = now;
                busy = true;
            }
            if key_refused {
                self.refusals.per_client += 1;
            }
            if !guard.authenticated() && now.saturating_sub(slot.opened_at) > HANDSHAKE_DEADLINE_US {
                self.refusals.handshake += 1;
                socket.abort();
                continue;
            }
            let owing = session.mid_request() && session.accepts_input();
            slot.upload = session.upload_len().map(|_| slot.upload.unwrap_or_default());
            let late = slot.upload.as_mut().is_some_and(|u| !u.observe(now, received as u64, reading));
            if !slot.pace.observe(now, received as u64, owing, self.min_rate) || late {
                self.refusals.too_slow += 1;
                socket.abort();
                continue;
            }
            while let Some((request, work)) = session.take_work() {
                self.queued.push_back(Queued { slot: index, generation: slot.generation, request, work });
            }
            if received > 0 {
                heard.push(index);
            }
            polled.push(index);
        }
        // Group commit: what every session stored this round becomes durable at once, before
        // any of their answers (STORED) goes out. If it cannot, the connections heard from this
        // round are reset instead: none of them may be told of something that is not durable.
        if let Err(why) = node.commit() {
            log::warn!("store: {why}; resetting {} connections rather than answer them", heard.len());
            for &index in &heard {
                network.sockets.get_mut::<tcp::Socket>(self.slots[index].socket).abort();
            }
        }
        for &index in &polled {
            let socket = network.sockets.get_mut::<tcp::Socket>(self.slots[index].socket);
            if !socket.is_open() {
                continue;
            }
            let slot = &mut self.slots[index];
            let Some(session) = slot.session.as_mut() else { continue };
            let guard = &mut slot.guard;
            let mut sent = 0;
            while socket.can_send() && guard.has_output(session) {
                order_keystreams(guard, session);
                let room = socket.send_capacity() - socket.send_queue();
                // While a full record is still on its way, wait for room for another whole one:
                // full records cost the least each, and their keystreams are computed ahead.
                if room < FULL_RECORD && socket.send_queue() >= FULL_RECORD {
                    break;
                }
                let out = guard.output(session, room);
                if out.is_empty() {
                    break;
                }
                sent += socket.send_slice(&out).unwrap_or(0);
                slot.last_active = now;
                busy = true;
            }
            slot.download = session.downloading().then(|| slot.download.unwrap_or_default());
            if slot.download.as_mut().is_some_and(|d| !d.observe(now, sent as u64)) {
                self.refusals.too_slow += 1;
                socket.abort();
                continue;
            }
            // Close when the session gives up, or when the client has closed its side and has
            // been answered (including queued work and input held back): otherwise the slot
            // would stay half-closed and never listen again.
            let client_done = socket.state() == tcp::State::CloseWait && !session.owes_answers();
            let ended = (session.closing() && !guard.handshaking()) || client_done;
            if ended && !guard.has_output(session) {
                let closed_at = *slot.closed_at.get_or_insert(now);
                if now.saturating_sub(closed_at) > CLOSE_GRACE_US {
                    socket.abort();
                } else {
                    socket.close();
                }
            } else if timeouts
                && !session.awaits_work()
                && now.saturating_sub(slot.last_active) > self.idle_timeout_us
            {
                // (A client waiting for its EVAL or job is not idle: EVALs run while the node
                // serves in full.)
                self.refusals.idle += 1;
                socket.abort();
            }
        }
        for index in closing_for_keys {
            self.close_to_make_room(network, index, now);
        }
        (self.polled, self.heard) = (polled, heard);
        self.make_room(network, now);
        busy
    }

    /// A new connection on `index`: its session, refused at once if its client holds all it may.
    fn start_session(
        &mut self,
        index: usize,
        peer: Option<IpAddress>,
        admitted: bool,
        now: u64,
        served: &Cell<u64>,
    ) {
        let slot = &mut self.slots[index];
        served.set(served.get() + 1);
        slot.last_active = now;
        slot.generation += 1;
        slot.peer = peer;
        slot.pace = Pace::default();
        slot.closed_at = None;
        slot.upload = None;
        slot.download = None;
        slot.guard = Guard::new();
        slot.opened_at = now;
        let mut session = Session::with_limits(self.limits);
        if !admitted {
            self.refusals.per_client += 1;
            let who = peer.map(|p| format!("{p}")).unwrap_or_default();
            session.refuse(
                ErrorCode::Busy,
                format!(
                    "{who} has the {} connections not yet authenticated that one address may have",
                    self.per_client
                ),
            );
        }
        slot.session = Some(session);
    }

    /// After a gap in which the node polled no connection (it ran a job's IO, for one), moves
    /// every connection's clocks on by the gap: its pace, upload and idleness are the client's
    /// doing only while the node serves.
    fn pause_if_unserved(&mut self, now: u64) {
        let gap = now.saturating_sub(self.last_poll);
        self.last_poll = now;
        if gap <= admission::POLL_GAP_US {
            return;
        }
        for slot in &mut self.slots {
            slot.last_active = slot.last_active.saturating_add(gap);
            slot.pace.pause(gap);
            if let Some(upload) = slot.upload.as_mut() {
                upload.pause(gap);
            }
            if let Some(download) = slot.download.as_mut() {
                download.pause(gap);
            }
            if let Some(closed) = slot.closed_at.as_mut() {
                *closed = closed.saturating_add(gap);
            }
            slot.opened_at = slot.opened_at.saturating_add(gap);
        }
    }

    /// Before a handshake starts on `index`, closes the oldest one in progress if there are as
    /// many as the node allows: unauthenticated connections cost little, and no more than that.
    fn limit_handshakes(&mut self, network: &mut Network, index: usize) {
        let handshaking: Vec<Handshake> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(i, s)| {
                *i != index
                    && s.session.is_some()
                    && s.closed_at.is_none()
                    && !s.guard.authenticated()
                    && network.sockets.get::<tcp::Socket>(s.socket).is_active()
            })
            .map(|(i, s)| Handshake {
                slot: i,
                since: s.opened_at,
                known_key: s.guard.hello_from_known_key(),
            })
            .collect();
        if let Some(closing) = admission::handshake_to_close(&handshaking) {
            self.refusals.handshake += 1;
            self.slots[closing].aborted = true;
            network.sockets.get_mut::<tcp::Socket>(self.slots[closing].socket).abort();
        }
    }

    /// With every slot taken, closes the quiet connection idle the longest, so that a new
    /// client is not locked out by connections that hold slots and do nothing.
    fn make_room(&mut self, network: &mut Network, now: u64) {
        // Connections the node has closed (their answers sent) wait for the client's last ACK;
        // with no slot listening, the one closed longest goes now, so that clients that open,
        // send garbage and vanish, many a second, cannot keep every slot closing.
        let listening =
            self.slots.iter().any(|slot| !network.sockets.get::<tcp::Socket>(slot.socket).is_active());
        if !listening
            && let Some(slot) = self
                .slots
                .iter()
                .filter(|slot| {
                    slot.closed_at.is_some() && slot.session.as_ref().is_none_or(|s| !s.has_output())
                })
                .min_by_key(|slot| slot.closed_at)
        {
            network.sockets.get_mut::<tcp::Socket>(slot.socket).abort();
            return;
        }
        let views: Vec<SlotView> = self.slots.iter().map(|slot| Self::view(network, slot, now)).collect();
        if let Some(index) = admission::evict(&views) {
            self.close_to_make_room(network, index, now);
        }
    }

    /// Closes the quiet connection on `index`, saying why, so that another client gets in.
    fn close_to_make_room(&mut self, network: &mut Network, index: usize, now: u64) {
        let slot = &mut self.slots[index];
        let socket = network.sockets.get_mut::<tcp::Socket>(slot.socket);
        if !slot.guard.authenticated() {
            // Only a handshake: it is owed no word and no graceful close, and its slot is free
            // at once.
            self.refusals.handshake += 1;
            slot.aborted = true;
            socket.abort();
            return;
        }
        self.refusals.evicted += 1;
        if let Some(session) = slot.session.as_mut() {
            session.refuse(ErrorCode::Busy, "closed while idle to make room for another client".into());
            // Sealed, once the channel is open; a handshake is closed without a word.
            let out = slot.guard.output(session, socket.send_capacity() - socket.send_queue());
            let _ = socket.send_slice(&out);
        }
        slot.closed_at = Some(now);
        socket.close();
    }
}

/// Keystreams computed ahead (net::ahead) only for a client that has proven its key and is
/// being served, not for one being refused.
fn order_keystreams(guard: &mut Guard, session: &Session) {
    if !guard.authenticated() || session.closing() {
        return;
    }
    if let Some(transport) = guard.transport() {
        super::ahead::order_keystreams(transport);
    }
}
