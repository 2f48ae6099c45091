//! The cluster's L2: each node's second card is a QEMU `socket` netdev that sends every
//! Ethernet frame as a UDP datagram to this switch on 127.0.0.1. The switch learns which node
//! each source MAC address is behind and sends unicast frames only there; broadcasts and frames
//! for unknown addresses go to every other node. (Flooding everything, as a hub does, filled
//! idle nodes' receive queues with other nodes' transfers and cost retransmissions.) The wire's
//! faults (`faults.rs`, set through [`Control`]) drop, delay, reorder and rate limit frames,
//! and partition nodes (docs/EXPERIMENTS.md).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::faults::{LinkFaults, Wire};

/// Where a frame goes: the learned port of its destination, or every other node (indices into
/// the nodes' ports).
fn destinations(
    frame: &[u8],
    from: usize,
    nodes: usize,
    learned: &mut HashMap<[u8; 6], usize>,
) -> Vec<usize> {
    if frame.len() >= 12 {
        let source: [u8; 6] = frame[6..12].try_into().expect("6 bytes");
        if source[0] & 1 == 0 {
            learned.insert(source, from);
        }
        let dest: [u8; 6] = frame[0..6].try_into().expect("6 bytes");
        if dest[0] & 1 == 0
            && let Some(&port) = learned.get(&dest)
        {
            return if port != from { vec![port] } else { Vec::new() };
        }
    }
    (0..nodes).filter(|n| *n != from).collect()
}

/// The wire's faults as the cluster's daemon last set them; the switch picks a change up with
/// the next frame.
#[derive(Default)]
pub struct Control {
    faults: Mutex<(LinkFaults, u64)>,
    generation: AtomicU64,
}

impl Control {
    pub fn set(&self, faults: LinkFaults, seed: u64) {
        *self.faults.lock().unwrap_or_else(|e| e.into_inner()) = (faults, seed);
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// A frame on its way: when it is due, its sequence number (ties keep the order sent), the node
/// it goes to, its bytes.
type Held = (Duration, u64, usize, Vec<u8>);

/// Frames held back (delayed) at most, in bytes: past this a frame is dropped, as by a full
/// queue.
const MAX_HELD_BYTES: usize = 64 << 20;

/// Switches frames between `nodes` (their UDP ports on 127.0.0.1) until the process ends.
pub fn serve(socket: UdpSocket, nodes: Vec<SocketAddr>, control: std::sync::Arc<Control>) {
    let mut frame = vec![0u8; 65536];
    let mut learned = HashMap::new();
    let started = Instant::now();
    let mut wire = Wire::new(nodes.len(), LinkFaults::default(), 0);
    let (mut seen, mut faulty) = (0u64, false);
    let mut held: BinaryHeap<Reverse<Held>> = BinaryHeap::new();
    let (mut held_bytes, mut sequence) = (0usize, 0u64);
    let mut timeout = None;
    loop {
        let now = started.elapsed();
        while held.peek().is_some_and(|Reverse((at, ..))| *at <= now) {
            let Reverse((_, _, to, bytes)) = held.pop().expect("peeked");
            held_bytes -= bytes.len();
            let _ = socket.send_to(&bytes, nodes[to]);
        }
        // Wake for the next held frame's time, or now and then to see it all through.
        let wait = held.peek().map_or(Duration::from_millis(100), |Reverse((at, ..))| at.saturating_sub(now));
        let wait = wait.max(Duration::from_micros(100));
        // Set only when it changes: with no faults it never does, and the data path (which
        // shares the host's cores with the nodes) makes one system call a frame, not two.
        if timeout != Some(wait) {
            let _ = socket.set_read_timeout(Some(wait));
            timeout = Some(wait);
        }
        let Ok((len, from)) = socket.recv_from(&mut frame) else { continue };
        // Only the cluster's own nodes are on this wire.
        let Some(from) = nodes.iter().position(|n| *n == from) else { continue };
        let generation = control.generation.load(Ordering::Acquire);
        if generation != seen {
            seen = generation;
            let (faults, seed) = control.faults.lock().unwrap_or_else(|e| e.into_inner()).clone();
            faulty = !faults.is_none();
            wire.set(faults, seed);
        }
        let to = destinations(&frame[..len], from, nodes.len(), &mut learned);
        if !faulty {
            for node in to {
                // A node that is gone (killed) just misses the frame, as on a real wire.
                let _ = socket.send_to(&frame[..len], nodes[node]);
            }
            continue;
        }
        let now = started.elapsed();
        for (node, at) in wire.route(now, len, from, &to) {
            if at <= now {
                let _ = socket.send_to(&frame[..len], nodes[node]);
            } else if held_bytes + len <= MAX_HELD_BYTES {
                held_bytes += len;
                sequence += 1;
                held.push(Reverse((at, sequence, node, frame[..len].to_vec())));
            }
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
        let mut learned = HashMap::new();
        let (a, b) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        // b is unknown: flood to the others.
        assert_eq!(destinations(&frame(b, a), 0, 3, &mut learned), [1, 2]);
        // b answers from node 1: now known.
        assert_eq!(destinations(&frame(a, b), 1, 3, &mut learned), [0]);
        assert_eq!(destinations(&frame(b, a), 0, 3, &mut learned), [1]);
        // Broadcasts always flood.
        assert_eq!(destinations(&frame([0xff; 6], a), 0, 3, &mut learned), [1, 2]);
        // A runt frame floods rather than being misread.
        assert_eq!(destinations(b"short", 2, 3, &mut learned), [0, 1]);
        // A frame for the sender's own address goes nowhere.
        assert!(destinations(&frame(a, a), 0, 3, &mut learned).is_empty());
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
        std::thread::spawn(move || serve(hub, addrs, Default::default()));
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

    #[test]
    fn the_switch_holds_delayed_frames_and_cuts_a_partition() {
        let hub = UdpSocket::bind("127.0.0.1:0").unwrap();
        let hub_addr = hub.local_addr().unwrap();
        let nodes: Vec<UdpSocket> = (0..3).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        for n in &nodes {
            n.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        }
        let addrs = nodes.iter().map(|n| n.local_addr().unwrap()).collect();
        let control = std::sync::Arc::new(Control::default());
        control.set(LinkFaults { delay_ms: 150.0, partition: vec![vec![2]], ..LinkFaults::default() }, 1);
        let switch = control.clone();
        std::thread::spawn(move || serve(hub, addrs, switch));
        let broadcast = frame([0xff; 6], [2, 0, 0, 0, 0, 1]);
        let sent = Instant::now();
        nodes[0].send_to(&broadcast, hub_addr).unwrap();
        let mut buf = [0u8; 64];
        let (len, _) = nodes[1].recv_from(&mut buf).unwrap();
        let took = sent.elapsed();
        assert_eq!(&buf[..len], &broadcast[..]);
        assert!(took >= Duration::from_millis(150), "delivered after {took:?}");
        assert!(nodes[2].recv_from(&mut buf).is_err(), "node 2 is cut off");
        // Healed: at once, and node 2 hears again.
        control.set(LinkFaults::default(), 1);
        nodes[0].send_to(&broadcast, hub_addr).unwrap();
        assert!(nodes[2].recv_from(&mut buf).is_ok());
        assert!(nodes[1].recv_from(&mut buf).is_ok());
    }
}
