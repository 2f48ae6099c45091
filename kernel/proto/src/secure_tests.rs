//! The node's side of the secure channel, driven with a real client handshake: who gets in,
//! what each role may ask, and that nothing reaches the session from a stranger.

use alloc::string::ToString;
use alloc::vec::Vec;

use cairn_channel::{Initiator, KeyRing, SecretKey, Transport};
use cairn_object::Handle;

use crate::fake_node::{FakeNode, node};
use crate::secure::{Guard, NodeKeys};
use crate::session::Session;
use crate::{ErrorCode, Frame, Message, decode, encode};

const NODE: u8 = 1;
const CLIENT: u8 = 2;
const PEER: u8 = 3;
const STRANGER: u8 = 4;

fn secret(n: u8) -> SecretKey {
    SecretKey::from_bytes([n; 32])
}

fn keys() -> NodeKeys {
    NodeKeys {
        secret: secret(NODE),
        ring: KeyRing {
            clients: alloc::vec![secret(CLIENT).public()],
            peers: alloc::vec![secret(PEER).public()],
        },
    }
}

struct Connection {
    guard: Guard,
    session: Session,
    node: FakeNode,
    keys: NodeKeys,
    /// Seeds differ per handshake, as the node's entropy pool makes them.
    seeds: u8,
    /// What the node sent after its handshake reply, not yet read.
    unread: Vec<u8>,
    /// The per-key ceiling's answer.
    admit: fn(&cairn_channel::PublicKey) -> Result<(), alloc::string::String>,
}

impl Connection {
    fn new() -> Connection {
        Connection {
            admit: |_| Ok(()),
            guard: Guard::new(),
            session: Session::new(),
            node: node(),
            keys: keys(),
            seeds: 0,
            unread: Vec::new(),
        }
    }

    /// Hands `bytes` to the node as a socket would, in pieces.
    fn deliver(&mut self, bytes: &[u8]) {
        for piece in bytes.chunks(61) {
            let mut rest = piece;
            while !rest.is_empty() {
                let (seeds, admit) = (&mut self.seeds, self.admit);
                let taken = self.guard.receive(
                    rest,
                    &mut self.session,
                    &mut self.node,
                    &self.keys,
                    &mut || {
                        *seeds += 1;
                        Some([*seeds; 32])
                    },
                    &mut |key| admit(key),
                );
                rest = &rest[taken..];
            }
        }
    }

    fn sent(&mut self) -> Vec<u8> {
        let mut out = core::mem::take(&mut self.unread);
        while self.guard.has_output(&self.session) {
            out.extend(self.guard.output(&mut self.session, 100_000));
        }
        out
    }
}

/// A client with key `me` that connects: (its transport, the connection).
fn connect(me: u8) -> (Transport, Connection) {
    let mut connection = Connection::new();
    let (initiator, hello) = Initiator::new(&secret(me), &secret(NODE).public(), [6; 32]).unwrap();
    connection.deliver(&hello);
    let reply = connection.sent();
    let transport = initiator.finish(reply[..50].try_into().unwrap()).unwrap();
    connection.unread = reply[50..].to_vec();
    (transport, connection)
}

fn request(transport: &mut Transport, messages: &[(u32, Message)]) -> Vec<u8> {
    let mut plain = Vec::new();
    for (request, message) in messages {
        encode(&Frame { request: *request, message: message.clone() }, &mut plain);
    }
    let mut sealed = Vec::new();
    transport.seal(&plain, &mut sealed);
    sealed
}

fn answers(transport: &mut Transport, mut wire: &[u8]) -> Vec<Frame> {
    let mut plain = Vec::new();
    while !wire.is_empty() {
        let (taken, opened) = transport.open(wire).unwrap();
        if let Some(bytes) = opened {
            plain.extend_from_slice(bytes);
        }
        wire = &wire[taken..];
    }
    let mut frames = Vec::new();
    let mut at = 0;
    while let Some((frame, used)) = decode(&plain[at..]).unwrap() {
        frames.push(frame);
        at += used;
    }
    frames
}

#[test]
fn a_client_key_is_served_after_its_first_record() {
    let (mut t, mut c) = connect(CLIENT);
    assert!(!c.guard.authenticated(), "a hello alone may be a recording");
    let bytes = b"hello".to_vec();
    let handle = Handle::blob(&bytes);
    let wire = request(&mut t, &[(1, Message::Put { handle, bytes }), (2, Message::Stats)]);
    c.deliver(&wire);
    assert!(c.guard.authenticated());
    let out = c.sent();
    let frames = answers(&mut t, &out);
    assert_eq!(frames[0].message, Message::Stored { handle });
    assert!(matches!(frames[1].message, Message::StatsReply { .. }), "{:?}", frames[1]);
}

#[test]
fn a_stranger_key_is_refused_sealed_and_nothing_is_stored() {
    let (mut t, mut c) = connect(STRANGER);
    let out = c.sent();
    let frames = answers(&mut t, &out);
    match &frames[..] {
        [Frame { request: 0, message: Message::Error { code: ErrorCode::Forbidden, message } }] => {
            assert!(message.contains(&secret(STRANGER).public().to_string()), "{message}")
        }
        other => panic!("{other:?}"),
    }
    let bytes = [9u8; 1000].to_vec();
    let handle = Handle::blob(&bytes);
    c.deliver(&request(&mut t, &[(1, Message::Put { handle, bytes })]));
    assert!(!c.node.store_contains(&handle));
    assert!(c.session.closing());
}

#[test]
fn a_peer_key_does_cluster_work_but_no_jobs_replays_journals_or_stats() {
    let (mut t, mut c) = connect(PEER);
    let bytes = b"input".to_vec();
    let handle = Handle::blob(&bytes);
    let job = Handle::blob(b"job");
    c.deliver(&request(
        &mut t,
        &[
            (1, Message::Put { handle, bytes }),
            (2, Message::Submit { job }),
            (3, Message::Replay { handle: job }),
            (4, Message::Journal { journal: handle }),
            (5, Message::Stats),
            (6, Message::Scrub),
            (7, Message::Pin { handle }),
            (8, Message::Gc { goal: 0 }),
            (9, Message::Coordinate { root: job, placement: 0, verify: false, spread: false, seed: 1 }),
            (10, Message::Trace { since: 0 }),
            (11, Message::Get { handle }),
        ],
    ));
    let out = c.sent();
    let frames = answers(&mut t, &out);
    assert_eq!(frames[0].message, Message::Stored { handle });
    let forbidden = ["SUBMIT", "REPLAY", "JOURNAL", "STATS", "SCRUB", "PIN", "GC", "COORDINATE", "TRACE"];
    for (frame, what) in frames[1..10].iter().zip(forbidden) {
        match &frame.message {
            Message::Error { code: ErrorCode::Forbidden, message } => {
                assert!(message.contains(what), "{message}")
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    assert!(matches!(frames[10].message, Message::Object { .. }));
    assert!(c.session.take_work().is_none(), "no job was queued for a peer");
}

#[test]
fn garbage_before_the_handshake_gets_no_answer_and_ends_the_connection() {
    let mut c = Connection::new();
    c.deliver(b"\x00\x00\x00\x14GET / HTTP/1.1\r\n\r\n");
    assert!(c.sent().is_empty());
    assert!(c.session.closing());
    assert!(!c.guard.authenticated());
}

#[test]
fn a_flipped_bit_ends_the_connection_and_nothing_half_done_is_stored() {
    let (mut t, mut c) = connect(CLIENT);
    let bytes = [7u8; 1000].to_vec();
    let handle = Handle::blob(&bytes);
    let mut wire = request(&mut t, &[(1, Message::Put { handle, bytes })]);
    let last = wire.len() - 1;
    wire[last / 2] ^= 4;
    c.deliver(&wire);
    assert!(!c.node.store_contains(&handle));
    assert!(c.session.closing());
    let frames = answers(&mut t, &c.sent());
    assert!(matches!(frames[0].message, Message::Error { code: ErrorCode::BadFrame, .. }), "{frames:?}");
}

#[test]
fn a_recorded_session_replayed_runs_nothing() {
    let mut recording = Vec::new();
    let bytes = [8u8; 1000].to_vec();
    let handle = Handle::blob(&bytes);
    {
        let mut c = Connection::new();
        let (initiator, hello) = Initiator::new(&secret(CLIENT), &secret(NODE).public(), [6; 32]).unwrap();
        c.deliver(&hello);
        let reply = c.sent();
        let mut t = initiator.finish(reply[..50].try_into().unwrap()).unwrap();
        recording.extend_from_slice(&hello);
        recording.extend_from_slice(&request(&mut t, &[(1, Message::Put { handle, bytes })]));
    }
    // A new connection draws a new seed, as a node's would: the first connection's was 1.
    let mut c = Connection { seeds: 1, ..Connection::new() };
    c.deliver(&recording);
    assert!(!c.node.store_contains(&handle));
    assert!(!c.guard.authenticated());
    assert!(c.session.closing());
}

#[test]
fn a_key_over_its_connections_hears_why_before_any_request_is_handled() {
    let mut c = Connection::new();
    c.admit = |key| Err(alloc::format!("key {key} holds the 2 connections one client may have"));
    let (initiator, hello) = Initiator::new(&secret(CLIENT), &secret(NODE).public(), [6; 32]).unwrap();
    c.deliver(&hello);
    let reply = c.sent();
    let mut t = initiator.finish(reply[..50].try_into().unwrap()).unwrap();
    let (handle, bytes) = (Handle::blob(&[3u8; 1000]), [3u8; 1000].to_vec());
    c.deliver(&request(&mut t, &[(1, Message::Put { handle, bytes })]));
    assert!(!c.node.store_contains(&handle), "the request was handled");
    let frames = answers(&mut t, &c.sent());
    match &frames[..] {
        [Frame { request: 0, message: Message::Error { code: ErrorCode::Busy, message } }] => {
            assert!(message.contains("holds the 2 connections"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.guard.client(), Some(secret(CLIENT).public()));
}

#[test]
fn no_entropy_no_answer() {
    let mut c = Connection::new();
    let (_, hello) = Initiator::new(&secret(CLIENT), &secret(NODE).public(), [6; 32]).unwrap();
    let taken = c.guard.receive(&hello, &mut c.session, &mut c.node, &c.keys, &mut || None, &mut |_| Ok(()));
    assert_eq!(taken, hello.len());
    assert!(c.sent().is_empty());
    assert!(c.session.closing());
}
