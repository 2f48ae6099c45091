//! The node API's secure channel (docs/PROTOCOL.md, "The secure channel"): every connection,
//! host to node and node to node, begins with a Noise_IK handshake over X25519, ChaCha20-Poly1305
//! and BLAKE2s (the `snow` crate), and then carries the protocol's frames in sealed records.
//!
//! Pure and sans-IO: the node and the host tool hand it bytes and send what it gives back. Before
//! the handshake ends the responder holds one fixed-size buffer and nothing else, whatever the
//! other side sends; records are at most [`MAX_RECORD`] bytes.

#![no_std]

extern crate alloc;

mod aead;
mod keys;
mod record;

pub use aead::{KEYSTREAM_LEN, Keystream};
pub use keys::{KeyRing, PublicKey, Role, SecretKey};
pub use record::{AHEAD, Direction, KeystreamOrder, Prepared, Transport};

use alloc::boxed::Box;
use core::fmt;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver, FallbackResolver};
use snow::types::{Cipher, Dh, Hash, Random};

/// The Noise protocol name: IK, because the client knows the node's key before it connects, and
/// the node can then tell an unknown client from its first message.
pub const PATTERN: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
/// Bound into the handshake hash: a client of another protocol (or version) fails the handshake.
pub const PROLOGUE: &[u8] = b"cairn node API, channel version 1";
pub const KEY_LEN: usize = 32;
/// The client's first message: its ephemeral key, its static key sealed, and an empty payload's
/// tag (32 + 48 + 16).
pub const HELLO_LEN: usize = 96;
/// The node's answer: its ephemeral key and an empty payload's tag (32 + 16).
pub const REPLY_LEN: usize = 48;
/// Every message on the wire, handshake or record, is a 2-byte big-endian length and then that
/// many bytes.
pub const LEN_PREFIX: usize = 2;
/// The largest Noise message.
pub const MAX_RECORD: usize = 65535;
/// The AEAD tag in each record.
pub const TAG_LEN: usize = 16;
/// The most plaintext one record carries.
pub const MAX_PLAIN: usize = MAX_RECORD - TAG_LEN;

/// What went wrong on a channel. Every one of them ends the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelError {
    /// A handshake message whose length field is not the pattern's.
    BadHandshakeLength { expected: usize, got: usize },
    /// The handshake did not verify: not this protocol, the wrong node key, or altered bytes.
    Handshake,
    /// A record shorter than its tag.
    BadRecordLength { len: usize },
    /// A record did not verify: altered, replayed, reordered or from another session.
    Record,
    /// No randomness for the ephemeral key.
    Entropy,
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelError::BadHandshakeLength { expected, got } => {
                write!(f, "handshake message of {got} bytes, expected {expected}: not a Cairn channel")
            }
            ChannelError::Handshake => write!(
                f,
                "the handshake failed: the other side has another key than expected, speaks another protocol, or bytes were altered"
            ),
            ChannelError::BadRecordLength { len } => {
                write!(f, "record of {len} bytes is shorter than its tag")
            }
            ChannelError::Record => {
                write!(f, "a record failed authentication: altered, replayed or out of order")
            }
            ChannelError::Entropy => write!(f, "no randomness for the handshake"),
        }
    }
}

impl core::error::Error for ChannelError {}

/// The node's side of a handshake: it collects the client's hello in a fixed buffer.
pub struct Responder {
    hello: [u8; LEN_PREFIX + HELLO_LEN],
    filled: usize,
}

/// A handshake the node accepted: the session's keys, who the client is, and what to send back.
pub struct Accepted {
    pub transport: Transport,
    pub client: PublicKey,
    pub reply: [u8; LEN_PREFIX + REPLY_LEN],
}

impl Default for Responder {
    fn default() -> Self {
        Responder { hello: [0; LEN_PREFIX + HELLO_LEN], filled: 0 }
    }
}

impl Responder {
    pub fn new() -> Responder {
        Responder::default()
    }

    /// Takes what it needs of `bytes` for the hello; returns how many it took. A length field
    /// that is not the hello's fails at once.
    pub fn take(&mut self, bytes: &[u8]) -> Result<usize, ChannelError> {
        let n = (self.hello.len() - self.filled).min(bytes.len());
        self.hello[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
        self.filled += n;
        if self.filled >= LEN_PREFIX {
            expect_len(&self.hello, HELLO_LEN)?;
        }
        Ok(n)
    }

    /// Whether the whole hello is here.
    pub fn complete(&self) -> bool {
        self.filled == self.hello.len()
    }

    /// Answers a complete hello as `node`, with `seed` for the ephemeral key. The client's key is
    /// only claimed until its first record verifies: a recorded hello can be replayed, but
    /// nobody without the client's keys can follow it with a record.
    pub fn answer(&self, node: &SecretKey, seed: [u8; 32]) -> Result<Accepted, ChannelError> {
        if !self.complete() {
            return Err(ChannelError::BadHandshakeLength { expected: HELLO_LEN, got: self.filled });
        }
        let mut noise = builder(seed)
            .local_private_key(node.expose())
            .and_then(|b| b.build_responder())
            .map_err(|_| ChannelError::Handshake)?;
        let mut payload = [0u8; HELLO_LEN];
        noise.read_message(&self.hello[LEN_PREFIX..], &mut payload).map_err(|_| ChannelError::Handshake)?;
        let client =
            noise.get_remote_static().and_then(PublicKey::from_slice).ok_or(ChannelError::Handshake)?;
        let mut reply = [0u8; LEN_PREFIX + REPLY_LEN];
        let len = noise.write_message(&[], &mut reply[LEN_PREFIX..]).map_err(|_| ChannelError::Handshake)?;
        debug_assert_eq!(len, REPLY_LEN);
        reply[..LEN_PREFIX].copy_from_slice(&(REPLY_LEN as u16).to_be_bytes());
        let (to_node, to_client) = split(&mut noise)?;
        Ok(Accepted { transport: Transport::new(to_client, to_node), client, reply })
    }
}

/// The client's side of a handshake.
pub struct Initiator {
    noise: snow::HandshakeState,
}

impl Initiator {
    /// Begins a handshake as `me` with the node whose key is `node`; returns the hello to send.
    pub fn new(
        me: &SecretKey,
        node: &PublicKey,
        seed: [u8; 32],
    ) -> Result<(Initiator, [u8; LEN_PREFIX + HELLO_LEN]), ChannelError> {
        let mut noise = builder(seed)
            .local_private_key(me.expose())
            .and_then(|b| b.remote_public_key(&node.0))
            .and_then(|b| b.build_initiator())
            .map_err(|_| ChannelError::Handshake)?;
        let mut hello = [0u8; LEN_PREFIX + HELLO_LEN];
        let len = noise.write_message(&[], &mut hello[LEN_PREFIX..]).map_err(|_| ChannelError::Handshake)?;
        debug_assert_eq!(len, HELLO_LEN);
        hello[..LEN_PREFIX].copy_from_slice(&(HELLO_LEN as u16).to_be_bytes());
        Ok((Initiator { noise }, hello))
    }

    /// Finishes the handshake with the node's reply: only the node holding the expected key can
    /// produce one that verifies.
    pub fn finish(mut self, reply: &[u8; LEN_PREFIX + REPLY_LEN]) -> Result<Transport, ChannelError> {
        expect_len(reply, REPLY_LEN)?;
        let mut payload = [0u8; REPLY_LEN];
        self.noise.read_message(&reply[LEN_PREFIX..], &mut payload).map_err(|_| ChannelError::Handshake)?;
        let (to_node, to_client) = split(&mut self.noise)?;
        Ok(Transport::new(to_node, to_client))
    }
}

/// The session's two keys, initiator to responder first (Noise's Split()), once the handshake
/// is over. The records under them are Noise transport messages (`aead`), sealed here rather
/// than by snow so that their keystreams can be computed ahead.
fn split(noise: &mut snow::HandshakeState) -> Result<([u8; KEY_LEN], [u8; KEY_LEN]), ChannelError> {
    if !noise.is_handshake_finished() {
        return Err(ChannelError::Handshake);
    }
    Ok(noise.dangerously_get_raw_split())
}

fn expect_len(message: &[u8], expected: usize) -> Result<(), ChannelError> {
    let got = usize::from(u16::from_be_bytes([message[0], message[1]]));
    if got != expected {
        return Err(ChannelError::BadHandshakeLength { expected, got });
    }
    Ok(())
}

fn builder<'a>(seed: [u8; 32]) -> snow::Builder<'a> {
    let resolver = FallbackResolver::new(Box::new(SeededResolver(seed)), Box::new(DefaultResolver));
    snow::Builder::with_resolver(PATTERN.parse().expect("a valid Noise pattern"), Box::new(resolver))
        .prologue(PROLOGUE)
        .expect("the prologue is set once")
}

/// Gives snow a ChaCha20 generator from the caller's seed (the node's entropy pool, or the host's
/// operating system); everything else comes from snow's default resolver.
struct SeededResolver([u8; 32]);

struct SeededRng(ChaCha20Rng);

impl Random for SeededRng {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SeededRng(ChaCha20Rng::from_seed(self.0))))
    }
    fn resolve_dh(&self, _: &DHChoice) -> Option<Box<dyn Dh>> {
        None
    }
    fn resolve_hash(&self, _: &HashChoice) -> Option<Box<dyn Hash>> {
        None
    }
    fn resolve_cipher(&self, _: &CipherChoice) -> Option<Box<dyn Cipher>> {
        None
    }
}

#[cfg(test)]
mod tests;
