//! The client's side of the secure channel (docs/PROTOCOL.md, "The secure channel"): a TCP
//! stream to a node that reads and writes plaintext and carries sealed records, after a Noise_IK
//! handshake that proves this client's key to the node and the node's key to this client.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, bail};
use cairn_channel::{
    HELLO_LEN, Initiator, LEN_PREFIX, PublicKey, REPLY_LEN, Responder, SecretKey, Transport,
};

use crate::keys;

/// Handshakes cut short that [`SecureStream::connect_as`] tries again (about 3 s in all).
const HANDSHAKE_RETRIES: usize = 5;
/// How long a node may take to answer the handshake. A node gives a handshake 5 s before it
/// closes it (docs/SECURITY.md); one that says nothing for this long is not answering at all (a
/// stopped VM still has its connections accepted by the host), and waiting on would hang.
const HANDSHAKE_PATIENCE: Duration = Duration::from_secs(30);

/// The node ended a handshake before its reply.
#[derive(Debug)]
struct CutShort(String);

impl std::fmt::Display for CutShort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CutShort {}

pub struct SecureStream {
    tcp: TcpStream,
    transport: Transport,
    /// Opened bytes not yet read.
    plain: Vec<u8>,
    plain_at: usize,
    /// Sealed bytes to send (reused).
    sealed: Vec<u8>,
}

impl SecureStream {
    /// Connects to the node at `address` as this user's client key, expecting the key recorded
    /// for that address (crate::keys).
    pub fn connect(address: &str) -> anyhow::Result<SecureStream> {
        let node = keys::node_key(address)?;
        let me = keys::client_key()?;
        Self::connect_as(address, &me, &node)
    }

    /// Connects as `me`, expecting the node's key to be `node`. A handshake the node cut short
    /// (it makes room among handshakes under a flood, docs/SECURITY.md) is tried again a few
    /// times; one that does not verify is not.
    pub fn connect_as(address: &str, me: &SecretKey, node: &PublicKey) -> anyhow::Result<SecureStream> {
        let mut pause = Duration::from_millis(100);
        for _ in 0..HANDSHAKE_RETRIES {
            let tcp = TcpStream::connect(address)
                .with_context(|| format!("cannot connect to the node at {address}"))?;
            match Self::handshake(tcp, me, node, address) {
                Err(e) if e.is::<CutShort>() => std::thread::sleep(pause),
                outcome => return outcome,
            }
            pause *= 2;
        }
        let tcp = TcpStream::connect(address)
            .with_context(|| format!("cannot connect to the node at {address}"))?;
        Self::handshake(tcp, me, node, address)
    }

    /// Like [`SecureStream::connect`] with a timeout on connecting.
    pub fn connect_timeout(address: SocketAddr, timeout: Duration) -> anyhow::Result<SecureStream> {
        let name = address.to_string();
        let node = keys::node_key(&name)?;
        let me = keys::client_key()?;
        let tcp = TcpStream::connect_timeout(&address, timeout)
            .with_context(|| format!("cannot connect to the node at {name}"))?;
        Self::handshake(tcp, &me, &node, &name)
    }

    /// The handshake over an open TCP connection.
    pub fn handshake(
        mut tcp: TcpStream,
        me: &SecretKey,
        node: &PublicKey,
        address: &str,
    ) -> anyhow::Result<SecureStream> {
        let (initiator, hello) = Initiator::new(me, node, keys::random_bytes()?)?;
        let _ = tcp.set_nodelay(true);
        tcp.write_all(&hello)
            .with_context(|| format!("the node at {address} closed the connection before the handshake"))?;
        let mut reply = [0u8; LEN_PREFIX + REPLY_LEN];
        tcp.set_read_timeout(Some(HANDSHAKE_PATIENCE))?;
        if let Err(e) = tcp.read_exact(&mut reply) {
            if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
                bail!(
                    "the node at {address} did not answer the handshake within {} s",
                    HANDSHAKE_PATIENCE.as_secs()
                );
            }
            return Err(CutShort(format!(
                "the node at {address} ended the handshake ({e}): it does not hold the key {node} expected for it, or it is busy with other handshakes"
            ))
            .into());
        }
        tcp.set_read_timeout(None)?;
        let transport = initiator
            .finish(&reply)
            .map_err(|e| anyhow::anyhow!("the node at {address} is not the node whose key is {node}: {e}"))?;
        Ok(SecureStream { tcp, transport, plain: Vec::new(), plain_at: 0, sealed: Vec::new() })
    }

    /// The node's side of a handshake, for host-side stand-ins of a node (test fakes): the
    /// client's key comes back, for the caller to authorize.
    pub fn accept(mut tcp: TcpStream, node: &SecretKey) -> anyhow::Result<(SecureStream, PublicKey)> {
        let mut hello = [0u8; LEN_PREFIX + HELLO_LEN];
        tcp.read_exact(&mut hello).context("the client left before its hello")?;
        let mut responder = Responder::new();
        responder.take(&hello)?;
        let accepted = responder.answer(node, keys::random_bytes()?)?;
        tcp.write_all(&accepted.reply)?;
        let stream = SecureStream {
            tcp,
            transport: accepted.transport,
            plain: Vec::new(),
            plain_at: 0,
            sealed: Vec::new(),
        };
        Ok((stream, accepted.client))
    }

    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.tcp.set_read_timeout(timeout)
    }

    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.tcp.set_write_timeout(timeout)
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.tcp.set_nodelay(on)
    }

    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.tcp.shutdown(how)
    }

    /// The TCP connection underneath, for tests that misbehave below the channel.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }
}

impl Read for SecureStream {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let mut wire = [0u8; 64 * 1024];
        while self.plain_at == self.plain.len() {
            self.plain.clear();
            self.plain_at = 0;
            let n = self.tcp.read(&mut wire)?;
            if n == 0 {
                return Ok(0);
            }
            let mut at = 0;
            while at < n {
                let (taken, opened) = self
                    .transport
                    .open(&wire[at..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("from the node: {e}")))?;
                if let Some(bytes) = opened {
                    self.plain.extend_from_slice(bytes);
                }
                at += taken;
            }
        }
        let n = out.len().min(self.plain.len() - self.plain_at);
        out[..n].copy_from_slice(&self.plain[self.plain_at..self.plain_at + n]);
        self.plain_at += n;
        Ok(n)
    }
}

impl Write for SecureStream {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.sealed.clear();
        self.transport.seal(bytes, &mut self.sealed);
        self.tcp.write_all(&self.sealed)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

/// Resolves `address` (HOST:PORT) to its first socket address.
pub fn resolve(address: &str) -> anyhow::Result<SocketAddr> {
    address.to_socket_addrs()?.next().with_context(|| format!("{address} resolves to no address"))
}
