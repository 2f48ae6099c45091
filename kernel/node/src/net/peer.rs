//! Fetching objects from a peer node over the cluster network (docs/CLUSTER.md): the node is a
//! client of the peer's API, asks for what it lacks, and checks every object against its handle
//! before storing it. A peer that sends wrong bytes is named in the error, and nothing of that
//! object is kept.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use bytes::Bytes;
use cairn_object::Handle;
use cairn_object::store::{Store, StoreError};
use cairn_proto::{Frame, Message, decode, encode};
use smoltcp::socket::tcp;
use smoltcp::wire::IpAddress;

use super::Network;
use crate::arch::clock;
use crate::jobs::NodeEvaluator;

const STALL_US: u64 = 10_000_000;
/// How a fetch error that is a peer's wrong bytes begins (the API answers it as `wrong hash`).
pub const WRONG_BYTES: &str = "wrong bytes from a peer";
const BUFFER: usize = 256 * 1024;
static NEXT_PORT: core::sync::atomic::AtomicU16 = core::sync::atomic::AtomicU16::new(40000);

fn local_port() -> u16 {
    let port = NEXT_PORT.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    if port >= 48000 {
        NEXT_PORT.store(40000, core::sync::atomic::Ordering::Relaxed);
    }
    port
}

/// An object arriving in chunks.
struct Incoming {
    handle: Handle,
    bytes: Vec<u8>,
    len: usize,
}

/// Gets every handle the node lacks from the peer at `from`; returns (objects, bytes) fetched.
pub fn fetch(network: &mut Network, ev: &mut NodeEvaluator, from: ([u8; 4], u16), handles: &[Handle]) -> Result<(u64, u64), String> {
    let [a, b, c, d] = from.0;
    let peer = format!("{a}.{b}.{c}.{d}:{}", from.1);
    let mut wanted: Vec<Handle> = handles.iter().copied().filter(|h| !h.is_literal() && !ev.store.contains(h)).collect();
    wanted.sort();
    wanted.dedup();
    if wanted.is_empty() {
        return Ok((0, 0));
    }
    let total: u64 = wanted.iter().map(|h| h.size()).sum();
    if total > ev.store.room() {
        return Err(format!("{total} bytes from {peer} do not fit in the store"));
    }
    let mut request = Vec::new();
    encode(&Frame { request: 0, message: Message::Hello { client: "cairn-node".into() } }, &mut request);
    for (i, h) in wanted.iter().enumerate() {
        encode(&Frame { request: i as u32 + 1, message: Message::Get { handle: *h } }, &mut request);
    }
    let mut socket = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; BUFFER]), tcp::SocketBuffer::new(vec![0; BUFFER]));
    socket.set_ack_delay(None);
    socket
        .connect(network.iface.context(), (IpAddress::v4(a, b, c, d), from.1), local_port())
        .map_err(|e| format!("cannot connect to {peer}: {e:?}"))?;
    let socket = network.sockets.add(socket);
    let outcome = converse(network, ev, socket, &peer, &request, &wanted);
    let s = network.sockets.get_mut::<tcp::Socket>(socket);
    s.abort();
    network.poll();
    network.sockets.remove(socket);
    outcome.map(|bytes| (wanted.len() as u64, bytes))
}

fn converse(network: &mut Network, ev: &mut NodeEvaluator, socket: smoltcp::iface::SocketHandle, peer: &str, request: &[u8], wanted: &[Handle]) -> Result<u64, String> {
    let (mut sent, mut connected, mut stored, mut bytes_in) = (0, false, 0usize, 0u64);
    let mut input: Vec<u8> = Vec::new();
    let mut incoming: Option<Incoming> = None;
    let mut last_progress = clock::micros_since_boot();
    loop {
        network.device.rearm();
        network.poll();
        let s = network.sockets.get_mut::<tcp::Socket>(socket);
        let mut progressed = false;
        connected |= s.may_send();
        if !connected && s.state() == tcp::State::Closed {
            return Err(format!("{peer} refused the connection"));
        }
        if s.can_send() && sent < request.len() {
            sent += s.send_slice(&request[sent..]).map_err(|e| format!("sending to {peer}: {e:?}"))?;
            progressed = true;
        }
        while s.can_recv() {
            s.recv(|b| {
                input.extend_from_slice(b);
                (b.len(), ())
            })
            .map_err(|e| format!("receiving from {peer}: {e:?}"))?;
            progressed = true;
        }
        if connected && !s.may_recv() && input.is_empty() && stored < wanted.len() {
            return Err(format!("{peer} closed the connection after {stored} of {} objects", wanted.len()));
        }
        let mut used = 0;
        while let Some((frame, len)) = decode(&input[used..]).map_err(|e| format!("{peer} sent a malformed frame: {e}"))? {
            used += len;
            let index = frame.request as usize;
            match frame.message {
                Message::Welcome { .. } => {}
                Message::Object { handle, bytes } if index >= 1 && wanted.get(index - 1) == Some(&handle) => {
                    bytes_in += bytes.len() as u64;
                    store(ev, peer, handle, bytes)?;
                    stored += 1;
                }
                Message::ObjectBegin { handle, len } if wanted.get(index.wrapping_sub(1)) == Some(&handle) && incoming.is_none() => {
                    incoming = Some(Incoming { handle, bytes: Vec::with_capacity(len as usize), len: len as usize });
                }
                Message::ObjectChunk { offset, bytes } => {
                    let Some(object) = incoming.as_mut().filter(|o| offset as usize == o.bytes.len() && o.bytes.len() + bytes.len() <= o.len) else {
                        return Err(format!("{peer} sent a chunk that continues no object"));
                    };
                    object.bytes.extend_from_slice(&bytes);
                    if object.bytes.len() == object.len {
                        let object = incoming.take().expect("present");
                        bytes_in += object.len as u64;
                        store(ev, peer, object.handle, object.bytes)?;
                        stored += 1;
                    }
                }
                Message::Error { message, .. } => return Err(format!("{peer}: {message}")),
                _ => return Err(format!("{peer} answered out of turn")),
            }
        }
        input.drain(..used);
        if stored == wanted.len() {
            return Ok(bytes_in);
        }
        let now = clock::micros_since_boot();
        if progressed {
            last_progress = now;
        } else if now - last_progress > STALL_US {
            return Err(format!("{peer} made no progress for {} s", STALL_US / 1_000_000));
        } else {
            network.poll();
            x86_64::instructions::interrupts::enable_and_hlt();
        }
    }
}

fn store(ev: &mut NodeEvaluator, peer: &str, handle: Handle, bytes: Vec<u8>) -> Result<(), String> {
    match ev.store.put_verified(&handle, Bytes::from(bytes)) {
        Ok(()) => Ok(()),
        Err(StoreError::Mismatch { actual, .. }) => Err(format!("{WRONG_BYTES}: {peer} sent wrong bytes for {handle} (they are {actual}); not stored")),
        Err(e) => Err(format!("storing {handle} from {peer}: {e}")),
    }
}
