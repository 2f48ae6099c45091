//! The cluster's L2: each node's second card is a QEMU `socket` netdev that sends every
//! Ethernet frame as a UDP datagram to this switch on 127.0.0.1. The switch learns which node
//! each source MAC address is behind and sends unicast frames only there; broadcasts and frames
//! for unknown addresses go to every other node. (Flooding everything, as a hub does, filled
//! idle nodes' receive queues with other nodes' transfers and cost retransmissions.)

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};

/// Where a frame goes: the learned port of its destination, or every other node.
fn destinations<'a>(
    frame: &[u8],
    from: SocketAddr,
    nodes: &'a [SocketAddr],
    learned: &mut HashMap<[u8; 6], SocketAddr>,
) -> Vec<&'a SocketAddr> {
    if frame.len() >= 12 {
        let source: [u8; 6] = frame[6..12].try_into().expect("6 bytes");
        if source[0] & 1 == 0 {
            learned.insert(source, from);
        }
        let dest: [u8; 6] = frame[0..6].try_into().expect("6 bytes");
        if dest[0] & 1 == 0
            && let Some(port) = learned.get(&dest)
        {
            return nodes.iter().filter(|n| *n == port && **n != from).collect();
        }
    }
    nodes.iter().filter(|n| **n != from).collect()
}

/// Switches frames between `nodes` (their UDP ports on 127.0.0.1) until the process ends.
pub fn serve(socket: UdpSocket, nodes: Vec<SocketAddr>) {
    let mut frame = vec![0u8; 65536];
    let mut learned = HashMap::new();
    loop {
        let Ok((len, from)) = socket.recv_from(&mut frame) else { continue };
        if !nodes.contains(&from) {
            continue; // only the cluster's own nodes are on this wire
        }
        for node in destinations(&frame[..len], from, &nodes, &mut learned) {
            // A node that is gone (killed) just misses the frame, as on a real wire.
            let _ = socket.send_to(&frame[..len], node);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn frame(dest: [u8; 6], source: [u8; 6]) -> Vec<u8> {
        let mut f = dest.to_vec();
        f.extend_from_slice(&source);
        f.extend_from_slice(b"\x08\x00payload");
        f
    }

    #[test]
    fn unicast_goes_to_the_learned_port_and_the_rest_floods() {
        let nodes: Vec<SocketAddr> = (1..=3).map(|p| SocketAddr::from(([127, 0, 0, 1], p))).collect();
        let mut learned = HashMap::new();
        let (a, b) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        // b is unknown: flood to the others.
        assert_eq!(destinations(&frame(b, a), nodes[0], &nodes, &mut learned), [&nodes[1], &nodes[2]]);
        // b answers from node 2 (index 1): now known.
        assert_eq!(destinations(&frame(a, b), nodes[1], &nodes, &mut learned), [&nodes[0]]);
        assert_eq!(destinations(&frame(b, a), nodes[0], &nodes, &mut learned), [&nodes[1]]);
        // Broadcasts always flood.
        assert_eq!(
            destinations(&frame([0xff; 6], a), nodes[0], &nodes, &mut learned),
            [&nodes[1], &nodes[2]]
        );
        // A runt frame floods rather than being misread.
        assert_eq!(destinations(b"short", nodes[2], &nodes, &mut learned), [&nodes[0], &nodes[1]]);
    }

    #[test]
    fn frames_reach_other_nodes_and_not_the_sender_or_strangers() {
        let hub = UdpSocket::bind("127.0.0.1:0").unwrap();
        let hub_addr = hub.local_addr().unwrap();
        let nodes: Vec<UdpSocket> = (0..3).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        for n in &nodes {
            n.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        }
        let addrs = nodes.iter().map(|n| n.local_addr().unwrap()).collect();
        std::thread::spawn(move || serve(hub, addrs));
        let broadcast = frame([0xff; 6], [2, 0, 0, 0, 0, 1]);
        nodes[0].send_to(&broadcast, hub_addr).unwrap();
        let mut buf = [0u8; 64];
        for n in &nodes[1..] {
            let (len, from) = n.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..len], from), (&broadcast[..], hub_addr));
        }
        assert!(nodes[0].recv_from(&mut buf).is_err(), "the sender does not hear itself");
        let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
        stranger.send_to(&broadcast, hub_addr).unwrap();
        assert!(nodes[1].recv_from(&mut buf).is_err(), "frames from outside the cluster are dropped");
    }
}
