use alloc::string::ToString;
use alloc::vec::Vec;

use proptest::prelude::*;

use super::*;

fn key(n: u8) -> SecretKey {
    SecretKey::from_bytes([n; KEY_LEN])
}

/// A node with key 1 and a client with key 2, handshaken: (client's transport, node's).
fn pair() -> (Transport, Transport, PublicKey) {
    let (node, client) = (key(1), key(2));
    let (initiator, hello) = Initiator::new(&client, &node.public(), [7; 32]).unwrap();
    let mut responder = Responder::new();
    assert_eq!(responder.take(&hello).unwrap(), hello.len());
    let accepted = responder.answer(&node, [9; 32]).unwrap();
    let client_transport = initiator.finish(&accepted.reply).unwrap();
    (client_transport, accepted.transport, accepted.client)
}

/// Opens every record in `wire`, fed `step` bytes at a time.
fn open_all(transport: &mut Transport, wire: &[u8], step: usize) -> Result<Vec<u8>, ChannelError> {
    let mut plain = Vec::new();
    for piece in wire.chunks(step.max(1)) {
        let mut rest = piece;
        while !rest.is_empty() {
            let (taken, opened) = transport.open(rest)?;
            if let Some(bytes) = opened {
                plain.extend_from_slice(bytes);
            }
            rest = &rest[taken..];
        }
    }
    Ok(plain)
}

#[test]
fn the_node_learns_the_clients_key_and_both_sides_talk() {
    let (mut client, mut node, who) = pair();
    assert_eq!(who, key(2).public());
    let mut wire = Vec::new();
    client.seal(b"hello node", &mut wire);
    assert_eq!(open_all(&mut node, &wire, 3).unwrap(), b"hello node");
    let mut back = Vec::new();
    node.seal(b"hello client", &mut back);
    assert_eq!(open_all(&mut client, &back, 1000).unwrap(), b"hello client");
}

#[test]
fn large_messages_span_records_and_their_size_is_known() {
    let (mut client, mut node, _) = pair();
    let message: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
    let mut wire = Vec::new();
    client.seal(&message, &mut wire);
    assert_eq!(wire.len(), Transport::sealed_len(message.len()));
    assert_eq!(wire.len(), message.len() + 4 * (LEN_PREFIX + TAG_LEN), "four records");
    assert_eq!(open_all(&mut node, &wire, 4096).unwrap(), message);
}

#[test]
fn plain_room_fits_what_it_promises() {
    for room in [0, 17, 18, 19, 1000, LEN_PREFIX + MAX_RECORD, LEN_PREFIX + MAX_RECORD + 1, 256 * 1024] {
        let plain = Transport::plain_room(room);
        assert!(plain == 0 || Transport::sealed_len(plain) <= room, "room {room}: {plain}");
        assert!(Transport::sealed_len(plain + 1) > room, "room {room}: {plain} + 1 would fit too");
    }
}

#[test]
fn a_client_that_expects_another_node_key_is_refused() {
    let (node, client, impostor) = (key(1), key(2), key(3));
    let (_, hello) = Initiator::new(&client, &impostor.public(), [7; 32]).unwrap();
    let mut responder = Responder::new();
    responder.take(&hello).unwrap();
    assert_eq!(responder.answer(&node, [9; 32]).err(), Some(ChannelError::Handshake));
}

#[test]
fn a_node_without_the_expected_key_cannot_answer() {
    // Someone in the middle with their own key answers the hello: the client's check fails.
    let (node, client, mallory) = (key(1), key(2), key(3));
    let (initiator, hello) = Initiator::new(&client, &node.public(), [7; 32]).unwrap();
    let mut responder = Responder::new();
    responder.take(&hello).unwrap();
    assert!(responder.answer(&mallory, [9; 32]).is_err(), "mallory cannot read the hello");
    // Nor can a reply made for another hello be used.
    let (_, other_hello) = Initiator::new(&client, &node.public(), [8; 32]).unwrap();
    let mut other = Responder::new();
    other.take(&other_hello).unwrap();
    let reply = other.answer(&node, [9; 32]).unwrap().reply;
    assert_eq!(initiator.finish(&reply).err(), Some(ChannelError::Handshake));
}

#[test]
fn every_flipped_bit_of_the_hello_fails() {
    let (node, client) = (key(1), key(2));
    let (_, hello) = Initiator::new(&client, &node.public(), [7; 32]).unwrap();
    for byte in 0..hello.len() {
        let mut bad = hello;
        bad[byte] ^= 0x10;
        let mut responder = Responder::new();
        let outcome = responder.take(&bad).and_then(|_| responder.answer(&node, [9; 32]));
        assert!(outcome.is_err(), "byte {byte} flipped was accepted");
    }
}

#[test]
fn a_flipped_bit_in_a_record_fails() {
    let (mut client, mut node, _) = pair();
    let mut wire = Vec::new();
    client.seal(b"PUT an object", &mut wire);
    for byte in 0..wire.len() {
        let (mut client, mut node, _) = pair();
        let mut wire = Vec::new();
        client.seal(b"PUT an object", &mut wire);
        wire[byte] ^= 1;
        let opened = open_all(&mut node, &wire, wire.len());
        assert!(opened.is_err() || opened.as_deref() == Ok(&b""[..]), "byte {byte}: {opened:?}");
    }
    assert_eq!(open_all(&mut node, &wire, 5).unwrap(), b"PUT an object");
}

#[test]
fn records_replayed_reordered_or_dropped_fail() {
    let (mut client, mut node, _) = pair();
    let (mut first, mut second) = (Vec::new(), Vec::new());
    client.seal(b"one", &mut first);
    client.seal(b"two", &mut second);
    // Out of order: the second record first.
    let (_, mut fresh, _) = pair();
    assert_eq!(open_all(&mut fresh, &second, 100).err(), Some(ChannelError::Record));
    // In order, then the first again.
    assert_eq!(open_all(&mut node, &first, 100).unwrap(), b"one");
    assert_eq!(open_all(&mut node, &second, 100).unwrap(), b"two");
    assert_eq!(open_all(&mut node, &first, 100).err(), Some(ChannelError::Record));
}

#[test]
fn a_replayed_hello_gets_a_session_nobody_can_use() {
    let (node, client) = (key(1), key(2));
    let (initiator, hello) = Initiator::new(&client, &node.public(), [7; 32]).unwrap();
    let mut responder = Responder::new();
    responder.take(&hello).unwrap();
    let accepted = responder.answer(&node, [9; 32]).unwrap();
    let mut real = initiator.finish(&accepted.reply).unwrap();
    let mut recorded = Vec::new();
    real.seal(b"SUBMIT job", &mut recorded);
    // The recorder sends the same hello and the same record to the node again: the node's new
    // ephemeral key gives another session, and the record does not open under it.
    let mut again = Responder::new();
    again.take(&hello).unwrap();
    let mut replayed = again.answer(&node, [10; 32]).unwrap().transport;
    assert_eq!(open_all(&mut replayed, &recorded, 1000).err(), Some(ChannelError::Record));
}

#[test]
fn handshake_messages_of_the_wrong_length_fail_at_the_length_field() {
    let mut responder = Responder::new();
    assert_eq!(
        responder.take(&[0x00, 0x0c, 1, 2, 3]),
        Err(ChannelError::BadHandshakeLength { expected: HELLO_LEN, got: 12 })
    );
    // A plaintext protocol frame (4-byte length first) is not mistaken for a hello.
    let mut responder = Responder::new();
    assert!(responder.take(&[0, 0, 0, 20, 1, 1]).is_err());
    // Bytes after the hello are left for the records.
    let (node, client) = (key(1), key(2));
    let (_, hello) = Initiator::new(&client, &node.public(), [7; 32]).unwrap();
    let mut more = hello.to_vec();
    more.extend_from_slice(b"records");
    let mut responder = Responder::new();
    assert_eq!(responder.take(&more).unwrap(), hello.len());
    assert!(responder.complete());
}

#[test]
fn records_shorter_than_a_tag_fail() {
    let (_, mut node, _) = pair();
    assert_eq!(node.open(&[0, 3, 1, 2, 3]).err(), Some(ChannelError::BadRecordLength { len: 3 }));
}

#[test]
fn keys_print_and_parse_but_secrets_do_not_show() {
    let secret = key(5);
    let public = secret.public();
    assert_eq!(PublicKey::parse(&public.to_string()), Some(public));
    assert_eq!(SecretKey::parse(&secret.to_hex()).map(|s| s.public()), Some(public));
    let debug = alloc::format!("{secret:?}");
    assert!(!debug.contains(&secret.to_hex()), "{debug}");
    assert!(PublicKey::parse("xyz").is_none());
    assert!(PublicKey::parse(&"g".repeat(64)).is_none());
}

#[test]
fn roles_come_from_the_key_ring() {
    let ring = KeyRing {
        clients: alloc::vec![key(1).public()],
        peers: alloc::vec![key(2).public(), key(1).public()],
    };
    assert_eq!(ring.role(&key(1).public()), Some(Role::Client));
    assert_eq!(ring.role(&key(2).public()), Some(Role::Peer));
    assert_eq!(ring.role(&key(3).public()), None);
}

#[test]
fn different_seeds_give_different_sessions() {
    let (node, client) = (key(1), key(2));
    let (_, a) = Initiator::new(&client, &node.public(), [7; 32]).unwrap();
    let (_, b) = Initiator::new(&client, &node.public(), [8; 32]).unwrap();
    assert_ne!(a[..34], b[..34], "ephemeral keys come from the seed");
}

proptest! {
    #[test]
    fn any_split_of_the_stream_opens_the_same(messages in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..3000), 1..6), step in 1usize..5000) {
        let (mut client, mut node, _) = pair();
        let mut wire = Vec::new();
        let mut all = Vec::new();
        for m in &messages {
            client.seal(m, &mut wire);
            all.extend_from_slice(m);
        }
        prop_assert_eq!(open_all(&mut node, &wire, step).unwrap(), all);
    }

    #[test]
    fn garbage_never_panics_the_responder(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let mut responder = Responder::new();
        if responder.take(&bytes).is_ok() && responder.complete() {
            let _ = responder.answer(&key(1), [1; 32]);
        }
    }

    #[test]
    fn garbage_never_panics_a_transport(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        let (_, mut node, _) = pair();
        let _ = open_all(&mut node, &bytes, 7);
    }
}

/// The same handshake as [`pair`] (same keys and seeds) made by snow alone: its transports are
/// the reference the records must match byte for byte.
fn snow_pair() -> (snow::TransportState, snow::TransportState) {
    let (node, client) = (key(1), key(2));
    let node_public = node.public();
    let mut initiator = builder([7; 32])
        .local_private_key(client.expose())
        .and_then(|b| b.remote_public_key(&node_public.0))
        .and_then(|b| b.build_initiator())
        .unwrap();
    let mut responder =
        builder([9; 32]).local_private_key(node.expose()).and_then(|b| b.build_responder()).unwrap();
    let (mut hello, mut reply, mut scratch) = ([0u8; 200], [0u8; 200], [0u8; 200]);
    let n = initiator.write_message(&[], &mut hello).unwrap();
    responder.read_message(&hello[..n], &mut scratch).unwrap();
    let n = responder.write_message(&[], &mut reply).unwrap();
    initiator.read_message(&reply[..n], &mut scratch).unwrap();
    (initiator.into_transport_mode().unwrap(), responder.into_transport_mode().unwrap())
}

/// A keystream computed ahead, as the node's helper CPU hands it back.
struct Computed(Option<Keystream>, u64);

impl Prepared for Computed {
    fn counter(&self) -> u64 {
        self.1
    }
    fn take(&mut self) -> Option<Keystream> {
        self.0.take()
    }
}

/// Orders and computes every keystream `transport` wants for `direction`.
fn prepare(transport: &mut Transport, direction: Direction) -> usize {
    let mut ordered = 0;
    while let Some(order) = transport.order(direction) {
        let counter = order.counter();
        transport.expect(direction, Box::new(Computed(Some(order.compute()), counter)));
        ordered += 1;
    }
    ordered
}

#[test]
fn records_are_noise_transport_messages() {
    let (mut client, _, _) = pair();
    let (mut snow_client, mut snow_node) = snow_pair();
    for len in [0, 1, 63, 64, 65, 1000, MAX_PLAIN] {
        let message: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
        // Ours sealed, snow's opened; and snow's sealed is the very same bytes.
        let mut wire = Vec::new();
        client.seal(&message, &mut wire);
        if len == 0 {
            assert!(wire.is_empty(), "nothing to send makes no record");
            continue;
        }
        let mut expected = alloc::vec![0u8; len + TAG_LEN];
        let n = snow_client.write_message(&message, &mut expected).unwrap();
        assert_eq!(&wire[LEN_PREFIX..], &expected[..n], "{len} bytes sealed");
        let mut opened = alloc::vec![0u8; len];
        assert_eq!(snow_node.read_message(&wire[LEN_PREFIX..], &mut opened).unwrap(), len);
        assert_eq!(opened, message);
        // And back: snow's node seals, our client opens.
        let mut back = alloc::vec![0u8; len + TAG_LEN];
        let n = snow_node.write_message(&message, &mut back).unwrap();
        let mut framed = ((n as u16).to_be_bytes()).to_vec();
        framed.extend_from_slice(&back[..n]);
        assert_eq!(open_all(&mut client, &framed, 4096).unwrap(), message, "{len} bytes opened");
    }
}

#[test]
fn records_are_rfc_8439_chacha20_poly1305() {
    use chacha20poly1305::aead::{Aead, KeyInit};
    let (mut client, _, _) = pair();
    let key = client.send.key_for_tests();
    let cipher = chacha20poly1305::ChaCha20Poly1305::new(&key.into());
    for counter in 0u64..3 {
        let message = alloc::vec![counter as u8; 100];
        let mut wire = Vec::new();
        client.seal(&message, &mut wire);
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&counter.to_le_bytes());
        assert_eq!(wire[LEN_PREFIX..], cipher.encrypt(&nonce.into(), &message[..]).unwrap()[..]);
    }
}

#[test]
fn only_a_stream_of_full_records_orders_keystreams_and_never_more_than_ahead() {
    let (mut client, _, _) = pair();
    let mut wire = Vec::new();
    client.seal(b"small", &mut wire);
    assert!(client.order(Direction::Send).is_none(), "a small record is no stream");
    client.seal(&alloc::vec![1u8; MAX_PLAIN], &mut wire);
    assert_eq!(prepare(&mut client, Direction::Send), AHEAD as usize);
    assert!(client.order(Direction::Send).is_none());
    assert!(client.order(Direction::Receive).is_none(), "the other way streams nothing yet");
}

#[test]
fn a_keystream_for_another_key_or_record_is_never_used() {
    let (mut client, mut node, _) = pair();
    let (mut other, _, _) = {
        let (node, client) = (key(3), key(4));
        let (initiator, hello) = Initiator::new(&client, &node.public(), [1; 32]).unwrap();
        let mut responder = Responder::new();
        responder.take(&hello).unwrap();
        let accepted = responder.answer(&node, [2; 32]).unwrap();
        (initiator.finish(&accepted.reply).unwrap(), accepted.transport, ())
    };
    let big = alloc::vec![7u8; MAX_PLAIN];
    let (mut wire, mut scratch) = (Vec::new(), Vec::new());
    client.seal(&big, &mut wire);
    other.seal(&big, &mut scratch);
    // Another session's keystream for record 1, and this session's for a later record, offered
    // for record 1: neither is used, and the record is still right.
    let foreign = other.order(Direction::Send).unwrap();
    assert_eq!(foreign.counter(), 1);
    client.expect(Direction::Send, Box::new(Computed(Some(foreign.compute()), 1)));
    let orders: Vec<KeystreamOrder> = core::iter::from_fn(|| client.order(Direction::Send)).collect();
    let last = orders.into_iter().last().unwrap();
    assert_eq!(last.counter(), AHEAD);
    client.expect(Direction::Send, Box::new(Computed(Some(last.compute()), 1)));
    client.seal(&big, &mut wire);
    assert_eq!(open_all(&mut node, &wire, 10_000).unwrap().len(), 2 * MAX_PLAIN);
}

proptest! {
    #[test]
    fn keystreams_computed_ahead_give_the_same_records(
        lens in prop::collection::vec(prop_oneof![Just(MAX_PLAIN), 0usize..200, Just(MAX_PLAIN + 1)], 1..12),
        supplied in prop::collection::vec(any::<bool>(), 12),
    ) {
        let (mut ahead_client, mut ahead_node, _) = pair();
        let (mut plain_client, mut plain_node, _) = pair();
        let (mut ahead_wire, mut plain_wire, mut all) = (Vec::new(), Vec::new(), Vec::new());
        for (i, len) in lens.iter().enumerate() {
            let message: Vec<u8> = (0..*len).map(|j| (i * 7 + j) as u8).collect();
            // Some orders are computed, some are lost (take gives nothing): the records are
            // the same either way.
            while let Some(order) = ahead_client.order(Direction::Send) {
                let counter = order.counter();
                let stream = supplied[i].then(|| order.compute());
                ahead_client.expect(Direction::Send, Box::new(Computed(stream, counter)));
            }
            prepare(&mut ahead_node, Direction::Receive);
            ahead_client.seal(&message, &mut ahead_wire);
            plain_client.seal(&message, &mut plain_wire);
            all.extend_from_slice(&message);
        }
        prop_assert_eq!(&ahead_wire, &plain_wire);
        let mut opened = Vec::new();
        let mut rest = &ahead_wire[..];
        while !rest.is_empty() {
            prepare(&mut ahead_node, Direction::Receive);
            let (taken, plain) = ahead_node.open(rest).unwrap();
            opened.extend_from_slice(plain.unwrap_or(&[]));
            rest = &rest[taken..];
        }
        prop_assert_eq!(&opened, &all);
        prop_assert_eq!(open_all(&mut plain_node, &plain_wire, 9000).unwrap(), all);
    }
}

/// Lengths around every boundary of the construction: Poly1305's 16-byte blocks, ChaCha20's
/// 64-byte blocks, and the largest record.
const EDGE_LENGTHS: [usize; 24] = [
    1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257, 4095, 4096, 4097, 32760, 65503,
    65504, 65518, MAX_PLAIN,
];

/// A keystream computed ahead that counts how many records took it.
struct Counted(Option<Keystream>, u64, alloc::sync::Arc<core::sync::atomic::AtomicUsize>);

impl Prepared for Counted {
    fn counter(&self) -> u64 {
        self.1
    }
    fn take(&mut self) -> Option<Keystream> {
        self.2.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        self.0.take()
    }
}

fn prepare_counted(
    transport: &mut Transport,
    direction: Direction,
    used: &alloc::sync::Arc<core::sync::atomic::AtomicUsize>,
) {
    while let Some(order) = transport.order(direction) {
        let counter = order.counter();
        transport.expect(direction, Box::new(Counted(Some(order.compute()), counter, used.clone())));
    }
}

#[test]
fn records_sealed_and_opened_with_keystreams_computed_ahead_match_snow() {
    use core::sync::atomic::Ordering;
    let (mut client, _, _) = pair();
    let (mut snow_client, mut snow_node) = snow_pair();
    let (sealed_ahead, opened_ahead) = (alloc::sync::Arc::default(), alloc::sync::Arc::default());
    // A full record before each edge length keeps both directions streaming, so that every record
    // after the first takes a keystream computed ahead.
    let lengths: Vec<usize> = EDGE_LENGTHS.iter().flat_map(|&len| [MAX_PLAIN, len]).collect();
    for (i, &len) in lengths.iter().enumerate() {
        let message: Vec<u8> = (0..len).map(|j| (i * 7 + j * 13) as u8).collect();
        prepare_counted(&mut client, Direction::Send, &sealed_ahead);
        let mut wire = Vec::new();
        client.seal(&message, &mut wire);
        let mut expected = alloc::vec![0u8; len + TAG_LEN];
        let n = snow_client.write_message(&message, &mut expected).unwrap();
        assert_eq!(&wire[LEN_PREFIX..], &expected[..n], "{len} bytes sealed");
        // Snow's node seals; our client opens.
        let mut back = alloc::vec![0u8; len + TAG_LEN];
        let n = snow_node.write_message(&message, &mut back).unwrap();
        let mut framed = (n as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&back[..n]);
        let mut rest = &framed[..];
        let mut opened = Vec::new();
        while !rest.is_empty() {
            prepare_counted(&mut client, Direction::Receive, &opened_ahead);
            let (taken, plain) = client.open(rest).unwrap();
            opened.extend_from_slice(plain.unwrap_or(&[]));
            rest = &rest[taken..];
        }
        assert_eq!(opened, message, "{len} bytes opened");
    }
    assert_eq!(sealed_ahead.load(Ordering::Relaxed), lengths.len() - 1);
    assert_eq!(opened_ahead.load(Ordering::Relaxed), lengths.len() - 1);
}

#[test]
fn a_tampered_record_fails_with_its_keystream_computed_ahead() {
    for at in [0, 1, LEN_PREFIX, LEN_PREFIX + 100, LEN_PREFIX + MAX_PLAIN - 1, LEN_PREFIX + MAX_PLAIN + 3] {
        let (mut client, mut node, _) = pair();
        let big = alloc::vec![9u8; MAX_PLAIN];
        let mut wire = Vec::new();
        client.seal(&big, &mut wire);
        client.seal(&big, &mut wire);
        // The first record makes the node stream; the second opens with a keystream ahead.
        let first = LEN_PREFIX + MAX_RECORD;
        let (taken, plain) = node.open(&wire[..first]).unwrap();
        assert_eq!((taken, plain.map(<[u8]>::len)), (first, Some(MAX_PLAIN)));
        assert_eq!(prepare(&mut node, Direction::Receive), AHEAD as usize);
        wire[first + at] ^= 0x20;
        assert!(
            open_all(&mut node, &wire[first..], 70_000).is_err(),
            "byte {at} of the second record flipped"
        );
    }
}

#[test]
fn records_far_into_a_session_are_still_rfc_8439() {
    use chacha20poly1305::aead::{Aead, KeyInit};
    for counter in [1u64 << 32, (1 << 32) + 7, 1 << 56, u64::MAX - 3, u64::MAX - 1] {
        let (mut client, mut node, _) = pair();
        let cipher = chacha20poly1305::ChaCha20Poly1305::new(&client.send.key_for_tests().into());
        client.send.skip_to_for_tests(counter);
        node.receive.skip_to_for_tests(counter);
        let message = alloc::vec![counter as u8; 1000];
        let mut wire = Vec::new();
        client.seal(&message, &mut wire);
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&counter.to_le_bytes());
        assert_eq!(
            wire[LEN_PREFIX..],
            cipher.encrypt(&nonce.into(), &message[..]).unwrap()[..],
            "record {counter}"
        );
        assert_eq!(open_all(&mut node, &wire, 300).unwrap(), message, "record {counter}");
    }
}

#[test]
#[should_panic(expected = "nonces are exhausted")]
fn the_reserved_last_nonce_is_never_used() {
    let (mut client, _, _) = pair();
    client.send.skip_to_for_tests(u64::MAX);
    client.seal(b"one record too many", &mut Vec::new());
}
