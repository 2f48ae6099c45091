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
