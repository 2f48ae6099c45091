//! The cluster's L2: each node's second card is a QEMU `socket` netdev that sends every
//! Ethernet frame as a UDP datagram to the hub on 127.0.0.1; the hub repeats it to every other
//! node. A hub, not a switch: with a handful of nodes, flooding costs less than learning.

use std::net::{SocketAddr, UdpSocket};

/// Repeats frames between `nodes` (their UDP ports on 127.0.0.1) until the process ends.
pub fn serve(socket: UdpSocket, nodes: Vec<SocketAddr>) {
    let mut frame = vec![0u8; 65536];
    loop {
        let Ok((len, from)) = socket.recv_from(&mut frame) else { continue };
        for node in nodes.iter().filter(|n| **n != from) {
            // A node that is gone (killed) just misses the frame, as on a real wire.
            let _ = socket.send_to(&frame[..len], node);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn frames_reach_every_other_node_and_not_the_sender() {
        let hub = UdpSocket::bind("127.0.0.1:0").unwrap();
        let hub_addr = hub.local_addr().unwrap();
        let nodes: Vec<UdpSocket> = (0..3).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        for n in &nodes {
            n.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        }
        let addrs = nodes.iter().map(|n| n.local_addr().unwrap()).collect();
        std::thread::spawn(move || serve(hub, addrs));
        nodes[0].send_to(b"frame from node 0", hub_addr).unwrap();
        let mut buf = [0u8; 64];
        for n in &nodes[1..] {
            let (len, from) = n.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..len], from), (&b"frame from node 0"[..], hub_addr));
        }
        assert!(nodes[0].recv_from(&mut buf).is_err(), "the sender does not hear itself");
    }
}
