//! A connection's secure channel on the node's side (docs/PROTOCOL.md, "The secure channel"),
//! in front of its [`Session`]: the client's hello, the node's reply, and then every byte both
//! ways in sealed records. The session sees only bytes that opened, and learns the role of the
//! key that sent them; a key the node does not know gets one sealed refusal and nothing else.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use cairn_channel::{
    ChannelError, KeyRing, LEN_PREFIX, PublicKey, REPLY_LEN, Responder, SecretKey, Transport,
};

use crate::ErrorCode;
use crate::session::{NodeApi, Session};

/// The node's keys: its own, and the keys it serves.
pub struct NodeKeys {
    pub secret: SecretKey,
    pub ring: KeyRing,
}

enum State {
    Handshake(Responder),
    Open {
        transport: Transport,
        /// The key the client claimed in its hello (proven by its first record).
        client: PublicKey,
        /// The node serves that key: making such a hello takes the key's private half (or a
        /// recording of one), so it outranks other handshakes while it completes.
        known: bool,
        /// Set once a record from the client opens: until then, the hello may be a recording.
        proven: bool,
        /// A record failed to open: nothing more is read, only the refusal is sent.
        broken: bool,
    },
    Failed,
}

pub struct Guard {
    state: State,
    /// The node's reply to the hello, until sent.
    reply: Option<[u8; LEN_PREFIX + REPLY_LEN]>,
}

impl Default for Guard {
    fn default() -> Self {
        Guard { state: State::Handshake(Responder::new()), reply: None }
    }
}

impl Guard {
    pub fn new() -> Guard {
        Guard::default()
    }

    /// Whether the client has proven it holds its key (a record of its opened). Before that a
    /// connection is only a handshake, and is treated as one.
    pub fn authenticated(&self) -> bool {
        matches!(self.state, State::Open { proven: true, .. })
    }

    /// Whether the client's hello is still awaited. A connection the node refused (a ceiling)
    /// still completes its handshake, so that the client can read why, sealed.
    pub fn handshaking(&self) -> bool {
        matches!(self.state, State::Handshake(_))
    }

    /// Whether the hello named a key the node serves (not yet proven).
    pub fn hello_from_known_key(&self) -> bool {
        matches!(self.state, State::Open { known: true, .. })
    }

    /// The client's key, once it has proven it.
    pub fn client(&self) -> Option<PublicKey> {
        match &self.state {
            State::Open { client, proven: true, .. } => Some(*client),
            _ => None,
        }
    }

    /// Takes bytes from the socket; returns how many it used (the rest waits, so that the
    /// session's limits still make TCP hold the client back). `seed` gives the randomness for
    /// the node's ephemeral key; `admit` is asked once, when the client has proven its key and
    /// before any of its requests is handled, whether that key may have another connection
    /// (docs/SECURITY.md: the per-client ceiling counts keys); if not, the client hears why.
    pub fn receive(
        &mut self,
        bytes: &[u8],
        session: &mut Session,
        node: &mut dyn NodeApi,
        keys: &NodeKeys,
        seed: &mut dyn FnMut() -> Option<[u8; 32]>,
        admit: &mut dyn FnMut(&PublicKey) -> Result<(), String>,
    ) -> usize {
        match &mut self.state {
            State::Failed => bytes.len(),
            State::Handshake(responder) => {
                let taken = match responder.take(bytes) {
                    Ok(taken) => taken,
                    Err(_) => {
                        // Not a Cairn channel: nothing is answered, the connection just ends.
                        self.state = State::Failed;
                        session.abandon();
                        return bytes.len();
                    }
                };
                if !responder.complete() {
                    return taken;
                }
                let Some(seed) = seed() else {
                    self.state = State::Failed;
                    session.abandon();
                    return bytes.len();
                };
                match responder.answer(&keys.secret, seed) {
                    Ok(accepted) => {
                        self.reply = Some(accepted.reply);
                        self.state = State::Open {
                            transport: accepted.transport,
                            client: accepted.client,
                            known: keys.ring.role(&accepted.client).is_some(),
                            proven: false,
                            broken: false,
                        };
                        match keys.ring.role(&accepted.client) {
                            // Refused already (a ceiling on connections): that is what it hears.
                            _ if session.closing() => {}
                            Some(role) => session.set_role(role),
                            // Sealed, so only the key's holder reads it.
                            None => session.refuse(
                                ErrorCode::Forbidden,
                                format!("key {} is not authorized on this node", accepted.client),
                            ),
                        }
                    }
                    Err(_) => {
                        self.state = State::Failed;
                        session.abandon();
                        return bytes.len();
                    }
                }
                taken
            }
            State::Open { broken: true, .. } => bytes.len(),
            State::Open { transport, proven, client, .. } => match transport.open(bytes) {
                Ok((taken, Some(plain))) => {
                    if !*proven {
                        *proven = true;
                        if !session.closing()
                            && let Err(why) = admit(client)
                        {
                            session.refuse(ErrorCode::Busy, why);
                            return taken;
                        }
                    }
                    session.feed(plain, node);
                    taken
                }
                Ok((taken, None)) => taken,
                Err(error) => {
                    self.fail_open(session, error);
                    bytes.len()
                }
            },
        }
    }

    /// A record that did not open ends the connection; the client hears why, sealed (only the
    /// real client can read it, and it is the one whose bytes were altered).
    fn fail_open(&mut self, session: &mut Session, error: ChannelError) {
        session.refuse(ErrorCode::BadFrame, format!("{error}"));
        if let State::Open { broken, .. } = &mut self.state {
            *broken = true;
        }
    }

    /// The session's records once the handshake is done (for keystreams computed ahead), while
    /// they still flow.
    pub fn transport(&mut self) -> Option<&mut Transport> {
        match &mut self.state {
            State::Open { transport, broken: false, .. } => Some(transport),
            _ => None,
        }
    }

    /// Whether anything waits to be sent.
    pub fn has_output(&self, session: &Session) -> bool {
        self.reply.is_some() || (matches!(self.state, State::Open { .. }) && session.has_output())
    }

    /// Up to `room` bytes to send: the handshake's reply first, then the session's output sealed.
    pub fn output(&mut self, session: &mut Session, room: usize) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(reply) = self.reply {
            if room < reply.len() {
                return out;
            }
            out.extend_from_slice(&reply);
            self.reply = None;
        }
        if let State::Open { transport, .. } = &mut self.state {
            let plain = session.output(Transport::plain_room(room - out.len()));
            if !plain.is_empty() {
                transport.seal(&plain, &mut out);
            }
        }
        out
    }
}
