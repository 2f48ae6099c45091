//! Outgoing TCP for jobs' IO (docs/IO.md): the `cairn_io::Transport` of the node. It connects
//! only to the endpoint of the capability it is given, and drives the network itself while it
//! waits (the node's API connections keep receiving into their buffers meanwhile).

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use cairn_io::{Capability, Transport};
use smoltcp::socket::tcp;
use smoltcp::wire::IpAddress;

use super::Network;
use crate::arch::clock;

/// A connection that makes no progress for this long fails.
const STALL_US: u64 = 10_000_000;
/// However a server paces itself (a byte every 9 s keeps clear of the stall), one request ends
/// by a deadline: this long, plus its bytes at [`DEADLINE_RATE`] bytes per second.
const DEADLINE_BASE_US: u64 = 30_000_000;
const DEADLINE_RATE: u64 = 256 * 1024;
const BUFFER: usize = 64 * 1024;
const FIRST_LOCAL_PORT: u16 = 49152;

pub struct NetTransport<'a> {
    network: &'a mut Network,
    next_port: u16,
    /// What is left of the job's time for IO: all its requests together may take no longer
    /// than one evaluation may (the node's `eval_time_s`).
    budget_us: u64,
}

impl<'a> NetTransport<'a> {
    pub fn new(network: &'a mut Network, budget_us: u64) -> NetTransport<'a> {
        NetTransport { network, next_port: FIRST_LOCAL_PORT, budget_us }
    }

    fn local_port(&mut self) -> u16 {
        let port = self.next_port;
        self.next_port = if port == u16::MAX { FIRST_LOCAL_PORT } else { port + 1 };
        port
    }

    /// Connects, sends `data` then FIN, and collects what the peer sends (if `keep_reply`) until
    /// `done` says the exchange is over.
    fn converse(
        &mut self,
        capability: &Capability,
        data: &[u8],
        limit: usize,
        keep_reply: bool,
        done: fn(tcp::State) -> bool,
    ) -> Result<Vec<u8>, String> {
        let endpoint = capability.endpoint();
        let [a, b, c, d] = endpoint.ip;
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; BUFFER]),
            tcp::SocketBuffer::new(vec![0; BUFFER]),
        );
        socket.set_ack_delay(None);
        let local_port = self.local_port();
        socket
            .connect(self.network.iface.context(), (IpAddress::v4(a, b, c, d), endpoint.port), local_port)
            .map_err(|e| format!("cannot connect: {e:?}"))?;
        let handle = self.network.sockets.add(socket);
        let started = clock::micros_since_boot();
        let for_bytes =
            (data.len() as u64).saturating_add(limit as u64).saturating_mul(1_000_000) / DEADLINE_RATE;
        let own = DEADLINE_BASE_US.saturating_add(for_bytes);
        let deadline = if self.budget_us < own {
            (started.saturating_add(self.budget_us), "the job's IO ran past the time one evaluation may take")
        } else {
            (started.saturating_add(own), "the server did not finish in time")
        };
        let outcome = self.drive(handle, data, limit, keep_reply, done, deadline);
        self.budget_us = self.budget_us.saturating_sub(clock::micros_since_boot().saturating_sub(started));
        let socket = self.network.sockets.get_mut::<tcp::Socket>(handle);
        if outcome.is_err() {
            socket.abort();
            self.network.poll();
        }
        self.network.sockets.remove(handle);
        outcome
    }

    fn drive(
        &mut self,
        handle: smoltcp::iface::SocketHandle,
        data: &[u8],
        limit: usize,
        keep_reply: bool,
        done: fn(tcp::State) -> bool,
        (deadline, late): (u64, &'static str),
    ) -> Result<Vec<u8>, String> {
        let (mut sent, mut fin_sent, mut connected) = (0, false, false);
        let mut reply = Vec::new();
        let mut last_progress = clock::micros_since_boot();
        loop {
            self.network.device.rearm();
            self.network.poll();
            let socket = self.network.sockets.get_mut::<tcp::Socket>(handle);
            let mut progressed = false;
            if socket.may_send() || socket.may_recv() {
                connected = true;
            }
            if socket.can_send() && sent < data.len() {
                let n = socket.send_slice(&data[sent..]).map_err(|e| format!("send failed: {e:?}"))?;
                sent += n;
                progressed |= n > 0;
            }
            if sent == data.len() && !fin_sent && socket.may_send() {
                socket.close();
                fin_sent = true;
                progressed = true;
            }
            while socket.can_recv() {
                let n = socket
                    .recv(|bytes| {
                        if keep_reply {
                            reply.extend_from_slice(bytes);
                        }
                        (bytes.len(), bytes.len())
                    })
                    .map_err(|e| format!("receive failed: {e:?}"))?;
                progressed |= n > 0;
                if reply.len() > limit {
                    return Err(format!("the reply is larger than {limit} bytes"));
                }
            }
            let state = socket.state();
            if !connected && state == tcp::State::Closed {
                return Err("connection refused".into());
            }
            if connected && fin_sent && done(state) && !socket.can_recv() {
                self.network.poll();
                return Ok(reply);
            }
            if connected && state == tcp::State::Closed && sent < data.len() {
                return Err(format!("the peer closed after {sent} of {} bytes", data.len()));
            }
            let now = clock::micros_since_boot();
            if now > deadline {
                return Err(late.into());
            }
            if progressed {
                last_progress = now;
            } else if now - last_progress > STALL_US {
                return Err(format!("no progress for {} s (state {state})", STALL_US / 1_000_000));
            } else {
                self.network.poll();
                x86_64::instructions::interrupts::enable_and_hlt();
            }
        }
    }
}

impl Transport for NetTransport<'_> {
    fn exchange(&mut self, capability: &Capability, request: &[u8], limit: usize) -> Result<Vec<u8>, String> {
        // Over once the peer has closed its side and everything it sent is read.
        self.converse(capability, request, limit, true, |state| {
            matches!(
                state,
                tcp::State::CloseWait
                    | tcp::State::LastAck
                    | tcp::State::Closing
                    | tcp::State::TimeWait
                    | tcp::State::Closed
            )
        })
    }

    fn send(&mut self, capability: &Capability, data: &[u8]) -> Result<(), String> {
        // Over once the peer has acknowledged everything, our FIN included.
        self.converse(capability, data, 0, false, |state| {
            matches!(
                state,
                tcp::State::FinWait2
                    | tcp::State::TimeWait
                    | tcp::State::Closed
                    | tcp::State::Closing
                    | tcp::State::LastAck
            )
        })
        .map(|_| ())
    }

    fn now_ms(&self) -> u64 {
        // Wall-clock time from the RTC; the node's uptime if it has none (docs/IO.md).
        clock::wall_ms().unwrap_or(clock::micros_since_boot() / 1000)
    }
}
