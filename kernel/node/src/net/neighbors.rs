//! Keeping the cluster network's neighbors known. smoltcp asks for at most one unknown
//! address a second (its neighbor cache is rate-limited as a whole), so a node that opened
//! links to two peers it had not talked to within the last minute waited a second for the
//! second one: a coordinated job's start, every time. The node instead sends one small datagram
//! a second to its next peer (UDP port 9, discard), in turn: the datagram makes the interface
//! ask for the peer's address when it has none, long before a job needs it.

use alloc::vec;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::udp;
use smoltcp::wire::IpAddress;

use super::Network;
use crate::arch::clock;

const EVERY_US: u64 = 1_000_000;

/// The largest cluster `cairn cluster up` makes (tools' `lifecycle::MAX_NODES`). A coordinating
/// node talks to all its peers at once; smoltcp's neighbour cache (8 addresses unless a feature
/// says otherwise) must hold every one of them, or the addresses it lets go of cost a second
/// each, all through a job (a review measured 44 small tasks on 12 nodes: 9.4 to 22 s
/// node-coordinated against 0.4 to 0.7 s by the host).
const CLUSTER_NODES: usize = 16;
const _: () = assert!(
    smoltcp::config::IFACE_NEIGHBOR_CACHE_COUNT >= CLUSTER_NODES,
    "smoltcp's neighbour cache must hold every peer of the largest cluster (feature iface-neighbor-cache-count-16)"
);
const LOCAL_PORT: u16 = 9;

pub struct Neighbors {
    socket: SocketHandle,
    peers: alloc::vec::Vec<[u8; 4]>,
    next: usize,
    at_us: u64,
}

impl Neighbors {
    pub fn new(network: &mut Network, peers: &[[u8; 4]]) -> Neighbors {
        let mut socket = udp::Socket::new(
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 256]),
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 256]),
        );
        // Bound, so that peers' datagrams to the same port are taken (and dropped) here.
        let _ = socket.bind(LOCAL_PORT);
        Neighbors { socket: network.sockets.add(socket), peers: peers.to_vec(), next: 0, at_us: 0 }
    }

    /// Sends the next peer its datagram when one is due.
    pub fn keep(&mut self, network: &mut Network) {
        let now = clock::micros_since_boot();
        if self.peers.is_empty() || now < self.at_us {
            return;
        }
        self.at_us = now + EVERY_US;
        let [a, b, c, d] = self.peers[self.next % self.peers.len()];
        self.next = self.next.wrapping_add(1);
        let socket = network.sockets.get_mut::<udp::Socket>(self.socket);
        while socket.can_recv() {
            let _ = socket.recv();
        }
        let _ = socket.send_slice(b"cairn", (IpAddress::v4(a, b, c, d), LOCAL_PORT));
    }
}
