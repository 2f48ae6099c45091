//! Property tests of the rules in docs/OBJECTS.md.

use bytes::Bytes;
use cairn_object::store::{self, MemStore, Store, StoreError};
use cairn_object::{Handle, Kind, Limits, Thunk, Tree, thunk, tree};
use proptest::prelude::*;

fn blob_bytes() -> impl Strategy<Value = Vec<u8>> {
    // Around the literal boundary, and well past it.
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..=40),
        proptest::collection::vec(any::<u8>(), 41..2000),
    ]
}

/// Any canonical handle: blobs, trees and thunks, literal and not.
fn handle() -> impl Strategy<Value = Handle> {
    let blob = blob_bytes().prop_map(|b| Handle::blob(&b));
    blob.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(|entries| Tree::decode(&tree::encode(
                &entries
            ))
            .unwrap()
            .handle()),
            (1u64..64, blob_bytes(), proptest::collection::vec(inner, 0..4)).prop_map(
                |(pages, proc_bytes, args)| {
                    let enc =
                        thunk::encode(Limits::new(pages * 4096).unwrap(), Handle::blob(&proc_bytes), &args)
                            .unwrap();
                    Thunk::decode(&enc).unwrap().handle()
                }
            ),
        ]
    })
}

fn object() -> impl Strategy<Value = (Kind, Vec<u8>)> {
    prop_oneof![
        blob_bytes().prop_map(|b| (Kind::Blob, b)),
        proptest::collection::vec(handle(), 0..5).prop_map(|e| (Kind::Tree, tree::encode(&e))),
        (1u64..8, blob_bytes(), proptest::collection::vec(handle(), 0..3)).prop_map(|(p, b, a)| {
            (Kind::Thunk, thunk::encode(Limits::new(p * 4096).unwrap(), Handle::blob(&b), &a).unwrap())
        }),
    ]
}

proptest! {
    #[test]
    fn handle_bytes_and_text_round_trip(h in handle()) {
        prop_assert_eq!(Handle::from_bytes(h.as_bytes()).unwrap(), h);
        prop_assert_eq!(h.to_string().parse::<Handle>().unwrap(), h);
    }

    #[test]
    fn naming_in_pieces_matches_naming_at_once(bytes in blob_bytes(), cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..5)) {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        cuts.sort();
        let mut namer = cairn_object::BlobNamer::new();
        let mut last = 0;
        for c in cuts.into_iter().chain([bytes.len()]) {
            namer.update(&bytes[last..c]);
            last = c;
        }
        prop_assert_eq!(namer.finish(), Handle::blob(&bytes));
    }

    #[test]
    fn tree_encoding_round_trips(entries in proptest::collection::vec(handle(), 0..12)) {
        let enc = tree::encode(&entries);
        let t = Tree::decode(&enc).unwrap();
        prop_assert_eq!(t.iter().collect::<Vec<_>>(), entries.clone());
        prop_assert_eq!(tree::encode(&t.iter().collect::<Vec<_>>()), enc);
    }

    #[test]
    fn blob_names_are_plain_blake3(bytes in blob_bytes()) {
        prop_assert_eq!(Handle::blob(&bytes).digest().0, *blake3::hash(&bytes).as_bytes());
        prop_assert_eq!(Handle::blob(&bytes).size(), bytes.len() as u64);
    }

    /// Changing any one byte of an object's bytes changes its name (or makes it invalid).
    #[test]
    fn changing_any_byte_changes_the_name((kind, bytes) in object(), pos in any::<prop::sample::Index>(), flip in 1u8..=255) {
        prop_assume!(!bytes.is_empty());
        let name = store::name(kind, &bytes).unwrap();
        let mut changed = bytes.clone();
        let i = pos.index(changed.len());
        changed[i] ^= flip;
        if let Ok(other) = store::name(kind, &changed) {
            prop_assert_ne!(other, name);
        }
    }

    /// The same bytes named as different kinds never share a digest.
    #[test]
    fn kinds_never_collide(entries in proptest::collection::vec(handle(), 2..6)) {
        let enc = tree::encode(&entries);
        let as_blob = Handle::blob(&enc).digest();
        let as_tree = Tree::decode(&enc).unwrap().handle().digest();
        prop_assert_ne!(as_blob, as_tree);
        if let Ok(t) = Thunk::decode(&enc) {
            prop_assert_ne!(t.handle().digest(), as_tree);
            prop_assert_ne!(t.handle().digest(), as_blob);
        }
    }

    /// Every 40-byte string is either rejected, or is a handle that encodes back to itself.
    #[test]
    fn non_canonical_handles_are_rejected(raw in proptest::collection::vec(any::<u8>(), 40), kind in 1u8..=3, form in 0u8..=1, size in 0u64..70) {
        let mut raw = raw;
        // Bias towards nearly valid handles, where canonicity bugs hide.
        raw[0] = kind;
        raw[1] = form;
        raw[2..8].copy_from_slice(&size.to_le_bytes()[..6]);
        match Handle::from_bytes(&raw) {
            Ok(h) => {
                prop_assert_eq!(&h.as_bytes()[..], &raw[..]);
                if h.is_literal() {
                    prop_assert_eq!(Handle::blob(h.literal().unwrap()), h);
                    prop_assert!(raw[8 + size as usize..].iter().all(|&b| b == 0));
                } else {
                    prop_assert!(kind != 1 || size > 32);
                }
            }
            Err(e) => prop_assert!(e.at < 40),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = Handle::from_bytes(&raw);
        if let Ok(t) = Tree::decode(&raw) { prop_assert_eq!(tree::encode(&t.iter().collect::<Vec<_>>()), raw.clone()); }
        let _ = Thunk::decode(&raw);
        let _ = String::from_utf8_lossy(&raw).parse::<Handle>();
    }

    #[test]
    fn arbitrary_text_never_panics_the_parser(text in "\\PC{0,90}", h in handle()) {
        let _ = text.parse::<Handle>();
        // Any change to a valid text form either fails or yields a different handle.
        let good = h.to_string();
        let mut chars: Vec<char> = good.chars().collect();
        let i = text.len() % chars.len();
        chars[i] = if chars[i] == '0' { '1' } else { '0' };
        let changed: String = chars.into_iter().collect();
        if let Ok(other) = changed.parse::<Handle>() { prop_assert_ne!(other, h); }
    }

    /// put_verified rejects every single-byte tampering of the bytes or of the claimed handle.
    #[test]
    fn put_verified_rejects_single_byte_tampering((kind, bytes) in object(), pos in any::<prop::sample::Index>(), flip in 1u8..=255, in_handle in any::<bool>()) {
        let claimed = store::name(kind, &bytes).unwrap();
        let mut s = MemStore::new(1 << 24);
        if in_handle {
            let mut raw = *claimed.as_bytes();
            let i = pos.index(Handle::LEN);
            raw[i] ^= flip;
            if let Ok(forged) = Handle::from_bytes(&raw) {
                let result = s.put_verified(&forged, Bytes::from(bytes.clone()));
                prop_assert!(result.is_err(), "tampered handle {} accepted", forged);
            }
        } else {
            prop_assume!(!bytes.is_empty());
            let mut tampered = bytes.clone();
            let i = pos.index(tampered.len());
            tampered[i] ^= flip;
            let result = s.put_verified(&claimed, Bytes::from(tampered));
            let rejected = matches!(result, Err(StoreError::Mismatch { .. }) | Err(StoreError::Invalid { .. }));
            prop_assert!(rejected, "tampered bytes accepted");
        }
        prop_assert_eq!(s.stats().objects, 0);
        // The untampered object is accepted.
        s.put_verified(&claimed, Bytes::from(bytes)).unwrap();
        prop_assert!(s.contains(&claimed));
    }
}

/// A digest computed elsewhere (the node hashes uploads as they arrive) names the blob only
/// if it is the bytes' own: the store still compares it with the claim.
#[test]
fn put_with_a_precomputed_digest_checks_it_against_the_claim() {
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let claimed = Handle::blob(&bytes);
    let own = *blake3::hash(&bytes).as_bytes();
    let mut s = MemStore::new(1 << 30);
    let other = *blake3::hash(b"something else").as_bytes();
    let refused = s.put_verified_digest_placed(&claimed, Bytes::from(bytes.clone()), other, Some);
    assert!(matches!(refused, Err(StoreError::Mismatch { .. })), "{refused:?}");
    assert!(!s.contains(&claimed));
    s.put_verified_digest_placed(&claimed, Bytes::from(bytes.clone()), own, Some).unwrap();
    assert_eq!(s.get(&claimed).as_deref(), Some(&bytes[..]));
    // Trees are named from their bytes whatever digest comes with them.
    let tree = tree::encode(&[claimed]);
    let tree_handle = store::name(Kind::Tree, &tree).unwrap();
    s.put_verified_digest_placed(&tree_handle, Bytes::from(tree), other, Some).unwrap();
    assert!(s.contains(&tree_handle));
}

#[derive(Clone, Debug)]
enum Op {
    Put(u16, u16),
    Get(u16),
    Pin(u16),
    Unpin(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u16..64, 33u16..3000).prop_map(|(i, len)| Op::Put(i, len)),
        (0u16..64).prop_map(Op::Get),
        (0u16..64).prop_map(Op::Pin),
        (0u16..64).prop_map(Op::Unpin),
    ]
}

proptest! {
    /// Whatever is put, read, pinned and unpinned, the store stays within its limit, never
    /// evicts a pinned object, and never holds wrong bytes.
    #[test]
    fn eviction_keeps_the_limit_and_the_pins(ops in proptest::collection::vec(op(), 0..300)) {
        let mut s = MemStore::new(20_000);
        let bytes = |i: u16, len: u16| Bytes::from(vec![i as u8; len as usize]);
        let mut pins: std::collections::BTreeMap<Handle, u32> = Default::default();
        let mut known: std::collections::BTreeMap<u16, (Handle, Bytes)> = Default::default();
        for op in ops {
            match op {
                Op::Put(i, len) => {
                    let b = bytes(i, len);
                    if let Ok(h) = s.put(Kind::Blob, b.clone()) {
                        known.insert(i, (h, b));
                    }
                }
                Op::Get(i) => {
                    if let Some((h, b)) = known.get(&i) && let Some(got) = s.get(h) {
                        prop_assert_eq!(&got, b);
                    }
                }
                Op::Pin(i) => {
                    if let Some((h, _)) = known.get(&i) && s.pin(h) {
                        *pins.entry(*h).or_default() += 1;
                    }
                }
                Op::Unpin(i) => {
                    if let Some((h, _)) = known.get(&i) && let Some(n) = pins.get_mut(h) && *n > 0 {
                        s.unpin(h);
                        *n -= 1;
                    }
                }
            }
            let stats = s.stats();
            prop_assert!(stats.used <= stats.limit, "{stats:?}");
            for (h, n) in &pins {
                if *n > 0 {
                    prop_assert!(s.contains(h), "pinned {h} was evicted");
                }
            }
        }
    }
}
