//! Static keys and what each may do on a node (docs/SECURITY.md, "Keys and roles").

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use snow::params::DHChoice;
use snow::resolvers::{CryptoResolver, DefaultResolver};
use zeroize::Zeroize;

use crate::KEY_LEN;

/// An X25519 public key: who a node or a client is.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey(pub [u8; KEY_LEN]);

impl PublicKey {
    pub fn from_slice(bytes: &[u8]) -> Option<PublicKey> {
        bytes.try_into().ok().map(PublicKey)
    }

    /// From 64 hexadecimal digits.
    pub fn parse(text: &str) -> Option<PublicKey> {
        parse_hex(text).map(PublicKey)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// An X25519 private key: any 32 bytes from a good random source. It is never printed (its
/// `Debug` says only that it is one) and its bytes are wiped when it is dropped.
#[derive(Clone)]
pub struct SecretKey([u8; KEY_LEN]);

impl SecretKey {
    /// `bytes` must come from a cryptographic random source.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> SecretKey {
        SecretKey(bytes)
    }

    /// From 64 hexadecimal digits (a key file).
    pub fn parse(text: &str) -> Option<SecretKey> {
        parse_hex(text).map(SecretKey)
    }

    /// The key's bytes, for the handshake and for writing a key file; never for a log.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The key as 64 hexadecimal digits, for a key file.
    pub fn to_hex(&self) -> String {
        let mut out = String::with_capacity(2 * KEY_LEN);
        for b in self.0 {
            out.push(char::from_digit(u32::from(b >> 4), 16).expect("a nibble"));
            out.push(char::from_digit(u32::from(b & 15), 16).expect("a nibble"));
        }
        out
    }

    pub fn public(&self) -> PublicKey {
        let mut dh = DefaultResolver.resolve_dh(&DHChoice::Curve25519).expect("snow has X25519");
        dh.set(&self.0);
        PublicKey::from_slice(dh.pubkey()).expect("an X25519 public key is 32 bytes")
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(for {})", self.public())
    }
}

fn parse_hex(text: &str) -> Option<[u8; KEY_LEN]> {
    let text = text.trim().as_bytes();
    if text.len() != 2 * KEY_LEN {
        return None;
    }
    let mut out = [0u8; KEY_LEN];
    for (i, pair) in text.as_chunks::<2>().0.iter().enumerate() {
        let hi = char::from(pair[0]).to_digit(16)?;
        let lo = char::from(pair[1]).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// What a key may do on a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    /// Everything: objects, evaluation, IO jobs, replay, journals, statistics.
    #[default]
    Client,
    /// What cluster work needs: objects, memo lookups, evaluation of pure thunks, fetches and
    /// relocation. Never IO jobs, replay, journal import or statistics.
    Peer,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Client => "client",
            Role::Peer => "peer",
        })
    }
}

/// The keys a node accepts, and as what.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyRing {
    pub clients: Vec<PublicKey>,
    pub peers: Vec<PublicKey>,
}

impl KeyRing {
    /// A key listed as both is a client: the role that may do more was given on purpose.
    pub fn role(&self, key: &PublicKey) -> Option<Role> {
        if self.clients.contains(key) {
            Some(Role::Client)
        } else if self.peers.contains(key) {
            Some(Role::Peer)
        } else {
            None
        }
    }
}
