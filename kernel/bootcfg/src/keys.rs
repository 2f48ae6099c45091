//! The node's keys (docs/SECURITY.md, "Keys and roles"): its private key, the client keys it
//! serves and its peers' keys by cluster address. They come from outside the image (QEMU's
//! fw_cfg file `opt/cairn/keys`), never from the image's own configuration, so that an image
//! can be shared. The text has the configuration's `key = value` lines:
//!
//! ```text
//! node_key = <64 hex digits>
//! client_keys = <64 hex digits> ...
//! peer_keys = 10.1.0.2=<64 hex digits> ...
//! ```
//!
//! Errors name the line and the key, never a value: the value may be a secret.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use cairn_channel::{KeyRing, PublicKey, SecretKey};

use crate::{fmt_ipv4, parse_ipv4};

/// The fw_cfg file the keys travel in.
pub const FW_CFG_NAME: &str = "opt/cairn/keys";

#[derive(Clone, Debug)]
pub struct NodeKeys {
    pub secret: SecretKey,
    pub clients: Vec<PublicKey>,
    /// Each peer's cluster address and key: the node checks a peer's key when it connects to it,
    /// and serves that key as a peer.
    pub peers: Vec<([u8; 4], PublicKey)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeysError {
    NotUtf8,
    Line { line: usize, what: &'static str },
    Missing { key: &'static str },
}

impl fmt::Display for KeysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeysError::NotUtf8 => write!(f, "node keys are not UTF-8"),
            KeysError::Line { line, what } => write!(f, "node keys line {line}: {what}"),
            KeysError::Missing { key } => write!(f, "node keys have no `{key}`"),
        }
    }
}

impl NodeKeys {
    /// The keys the node serves, and as what.
    pub fn ring(&self) -> KeyRing {
        KeyRing { clients: self.clients.clone(), peers: self.peers.iter().map(|(_, key)| *key).collect() }
    }

    /// The key of the peer at `ip`, if it is one.
    pub fn peer(&self, ip: [u8; 4]) -> Option<PublicKey> {
        self.peers.iter().find(|(at, _)| *at == ip).map(|(_, key)| *key)
    }

    pub fn parse(bytes: &[u8]) -> Result<NodeKeys, KeysError> {
        let text = core::str::from_utf8(bytes).map_err(|_| KeysError::NotUtf8)?;
        let (mut secret, mut clients, mut peers) = (None, None, None);
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let bad = |what| KeysError::Line { line, what };
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let (key, value) = content.split_once('=').ok_or(bad("expected `key = value`"))?;
            match key.trim() {
                "node_key" if secret.is_some() => return Err(bad("`node_key` given twice")),
                "node_key" => {
                    secret = Some(SecretKey::parse(value).ok_or(bad("`node_key` is not 64 hex digits"))?)
                }
                "client_keys" if clients.is_some() => return Err(bad("`client_keys` given twice")),
                "client_keys" => {
                    let keys: Option<Vec<PublicKey>> =
                        value.split_whitespace().map(PublicKey::parse).collect();
                    clients = Some(keys.ok_or(bad("a client key is not 64 hex digits"))?);
                }
                "peer_keys" if peers.is_some() => return Err(bad("`peer_keys` given twice")),
                "peer_keys" => {
                    let mut list = Vec::new();
                    for entry in value.split_whitespace() {
                        let (ip, key) = entry.split_once('=').ok_or(bad("a peer is not ADDRESS=KEY"))?;
                        let ip = parse_ipv4(ip).ok_or(bad("a peer's address is not an IPv4 address"))?;
                        let key = PublicKey::parse(key).ok_or(bad("a peer key is not 64 hex digits"))?;
                        list.push((ip, key));
                    }
                    peers = Some(list);
                }
                _ => return Err(bad("unknown key (expected node_key, client_keys or peer_keys)")),
            }
        }
        Ok(NodeKeys {
            secret: secret.ok_or(KeysError::Missing { key: "node_key" })?,
            clients: clients.unwrap_or_default(),
            peers: peers.unwrap_or_default(),
        })
    }

    /// The text [`NodeKeys::parse`] reads (it holds the private key: write it only where the
    /// node's owner alone can read it).
    pub fn to_text(&self) -> String {
        let mut out = format!("node_key = {}\n", self.secret.to_hex());
        let clients: Vec<String> = self.clients.iter().map(|k| format!("{k}")).collect();
        out.push_str(&format!("client_keys = {}\n", clients.join(" ")));
        let peers: Vec<String> = self.peers.iter().map(|(ip, k)| format!("{}={k}", fmt_ipv4(*ip))).collect();
        out.push_str(&format!("peer_keys = {}\n", peers.join(" ")));
        out
    }
}
