//! The worked examples of docs/OBJECTS.md: the values here and in the doc must agree.

use cairn_object::store::{self, MemStore, Store};
use cairn_object::{Handle, Kind, Limits, Thunk, Tree, thunk, tree};

const DOC: &str = include_str!("../../../docs/OBJECTS.md");
const FOX: &[u8] = b"The quick brown fox jumps over the lazy dog";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn doc_has(text: &str) {
    assert!(DOC.contains(text), "docs/OBJECTS.md does not contain `{text}`");
}

fn check(handle: Handle, text: &str) {
    assert_eq!(handle.to_string(), text);
    assert_eq!(text.parse::<Handle>().unwrap(), handle);
    doc_has(&format!("`{text}`"));
}

#[test]
fn empty_blob() {
    let h = Handle::blob(b"");
    check(h, "blob:=");
    assert_eq!(h.kind(), Kind::Blob);
    assert_eq!(h.size(), 0);
    assert_eq!(h.literal(), Some(&b""[..]));
    let digest = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";
    assert_eq!(h.digest().to_string(), digest);
    doc_has(digest);
}

#[test]
fn hello() {
    let h = Handle::blob(b"hello");
    check(h, "blob:=68656c6c6f");
    assert_eq!(
        hex(h.as_bytes()),
        "010105000000000068656c6c6f000000000000000000000000000000000000000000000000000000"
    );
    doc_has("hello  01 01 050000000000 68656c6c6f000000000000000000000000000000000000000000000000000000");
    let digest = "ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f";
    assert_eq!(h.digest().to_string(), digest);
    doc_has(digest);
}

#[test]
fn fox_is_named_by_its_plain_blake3_digest() {
    let h = Handle::blob(FOX);
    check(h, "blob:2f1514181aadccd913abd94cfa592701a5686ab23f8df1dff1b74710febc6d4a:43");
    assert_eq!(h.digest().0, *blake3::hash(FOX).as_bytes());
    assert!(!h.is_literal());
    doc_has("fox    01 00 2b0000000000 2f1514181aadccd913abd94cfa592701a5686ab23f8df1dff1b74710febc6d4a");
}

#[test]
fn tree_of_two() {
    let encoding = tree::encode(&[Handle::blob(b"hello"), Handle::blob(FOX)]);
    assert_eq!(encoding.len(), 80);
    let t = Tree::decode(&encoding).unwrap();
    assert_eq!(t.len(), 2);
    assert_eq!(t.get(1), Some(Handle::blob(FOX)));
    let h = t.handle();
    check(h, "tree:adba9f05178f08836d0ae85ed1fb4704d8082278d4fed9cc2f34bea1c0b4137b:128");
    assert_eq!(h.size(), 80 + 5 + 43);
    let derived = blake3::Hasher::new_derive_key("cairn 2026-11 object tree v1").update(&encoding).finalize();
    assert_eq!(h.digest().0, *derived.as_bytes());
    doc_has("tree   02 00 800000000000 adba9f05178f08836d0ae85ed1fb4704d8082278d4fed9cc2f34bea1c0b4137b");
}

#[test]
fn empty_tree() {
    check(
        Tree::decode(&[]).unwrap().handle(),
        "tree:168708f7469ea157379103d6b2596af0038244168a81663c19f769dcb593e74f:0",
    );
}

#[test]
fn thunk_applying_fox_to_hello() {
    let limits = Limits::new(1 << 20).unwrap();
    check(limits.handle(), "blob:=0000100000000000");
    let encoding = thunk::encode(limits, Handle::blob(FOX), &[Handle::blob(b"hello")]).unwrap();
    let t = Thunk::decode(&encoding).unwrap();
    assert_eq!(t.limits().memory_bytes(), 1 << 20);
    assert_eq!(t.procedure(), Handle::blob(FOX));
    assert_eq!(t.args().collect::<Vec<_>>(), [Handle::blob(b"hello")]);
    let h = t.handle();
    check(h, "thunk:f4b6432493bf1ac569f81b234ad8c5e6060f23a7585b56243342138605bb835c:176");
    doc_has("thunk  03 00 b00000000000 f4b6432493bf1ac569f81b234ad8c5e6060f23a7585b56243342138605bb835c");
    // The same entries as a tree have another name.
    assert_ne!(Tree::decode(&encoding).unwrap().handle().digest(), h.digest());
}

#[test]
fn store_round_trip_and_zero_copy() {
    let mut s = MemStore::new(1 << 20);
    let data = bytes::Bytes::from(FOX.repeat(10));
    let h = s.put(Kind::Blob, data.clone()).unwrap();
    let got = s.get(&h).unwrap();
    assert_eq!(got, data);
    assert_eq!(got.as_ptr(), data.as_ptr(), "get must hand out the stored bytes, not a copy");
    assert!(s.contains(&h));
    assert_eq!(s.stats().objects, 1);
    assert_eq!(s.stats().bytes, 430);
    // Storing it again changes nothing; literal blobs are never stored.
    s.put(Kind::Blob, data).unwrap();
    let lit = s.put(Kind::Blob, bytes::Bytes::from_static(b"hi")).unwrap();
    assert!(s.contains(&lit));
    assert_eq!(s.get(&lit).unwrap(), &b"hi"[..]);
    assert_eq!((s.stats().objects, s.stats().bytes), (1, 430));
    assert_eq!(store::name(Kind::Blob, FOX).unwrap(), Handle::blob(FOX));
}

#[test]
fn full_store_says_so_and_keeps_what_it_pins() {
    let overhead = store::OBJECT_OVERHEAD;
    let mut s = MemStore::new(100 + 2 * overhead);
    let a = s.put(Kind::Blob, bytes::Bytes::from(vec![1u8; 60])).unwrap();
    assert!(s.pin(&a));
    let err = s.put(Kind::Blob, bytes::Bytes::from(vec![2u8; 60])).unwrap_err();
    assert_eq!(err, store::StoreError::Full { needed: 60, used: 60 + overhead, limit: 100 + 2 * overhead });
    assert_eq!(
        err.to_string(),
        "store is full: 60 more bytes would exceed the limit (252 of 484 bytes used)"
    );
    assert!(s.contains(&a));
    assert_eq!((s.stats().objects, s.stats().evictions, s.stats().pinned), (1, 0, 1));
    // Unpinned, it makes room: the new object evicts it.
    s.unpin(&a);
    let b = s.put(Kind::Blob, bytes::Bytes::from(vec![2u8; 60])).unwrap();
    assert!(s.contains(&b) && !s.contains(&a));
    assert_eq!((s.stats().evictions, s.stats().evicted_bytes), (1, 60));
}

#[test]
fn eviction_takes_the_least_recently_read_first_and_never_what_is_pinned() {
    let size = 1000u64;
    let mut s = MemStore::new(10 * (size + store::OBJECT_OVERHEAD));
    let blob = |i: u32| bytes::Bytes::from(vec![i as u8; size as usize]);
    let handles: Vec<Handle> = (0..10).map(|i| s.put(Kind::Blob, blob(i)).unwrap()).collect();
    assert!(s.pin(&handles[3]));
    // A sweep gives every new object one pass; reading some of them again keeps them longer.
    assert!(s.reclaim(0, false));
    for _ in 0..3 {
        s.put(Kind::Blob, blob(100)).unwrap();
        s.get(&handles[5]);
        s.get(&handles[6]);
        for i in 101..110 {
            s.put(Kind::Blob, blob(i)).unwrap();
            s.get(&handles[5]);
            s.get(&handles[6]);
        }
    }
    assert!(s.contains(&handles[3]), "pinned");
    assert!(s.contains(&handles[5]) && s.contains(&handles[6]), "read all along");
    assert!(!s.contains(&handles[0]) && !s.contains(&handles[9]), "never read again");
    assert!(s.stats().used <= s.stats().limit);
    // Pins protect even when nothing else can make room.
    for h in &handles {
        s.pin(h);
    }
    let big = bytes::Bytes::from(vec![7u8; 9 * size as usize]);
    assert!(matches!(s.put(Kind::Blob, big), Err(store::StoreError::Full { .. })));
    assert!(s.contains(&handles[3]) && s.contains(&handles[5]));
}

#[test]
fn errors_name_what_is_wrong() {
    let mut bad = *Handle::blob(FOX).as_bytes();
    bad[0] = 7;
    let err = Handle::from_bytes(&bad).unwrap_err();
    assert_eq!(err.to_string(), "byte 0: unknown kind 0x07 (expected 0x01 blob, 0x02 tree, 0x03 thunk)");
    assert_eq!(
        Handle::from_bytes(&bad[..39]).unwrap_err().to_string(),
        "byte 0: a handle is 40 bytes, not 39"
    );

    let mut padded = *Handle::blob(b"hello").as_bytes();
    padded[20] = 1;
    assert_eq!(Handle::from_bytes(&padded).unwrap_err().to_string(), "byte 20: literal padding must be zero");

    let err = Tree::decode(&[0u8; 81]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "byte 80: tree encoding of 81 bytes is not a whole number of 40-byte handles"
    );
    let mut two = tree::encode(&[Handle::blob(b"a"), Handle::blob(b"b")]);
    two[41] = 9;
    assert_eq!(
        Tree::decode(&two).unwrap_err().to_string(),
        "byte 41: unknown form 0x09 (expected 0x00 digest or 0x01 literal)"
    );

    let not_a_thunk = tree::encode(&[Handle::blob(b"xx"), Handle::blob(FOX)]);
    assert_eq!(
        Thunk::decode(&not_a_thunk).unwrap_err().to_string(),
        "byte 8: limits are 8 to 32 bytes in whole u64 fields, not 2 bytes"
    );

    for (text, message) in [
        ("blub:=00", "handle text, character 0: unknown kind (expected blob, tree or thunk)"),
        ("blob", "handle text, character 4: expected `kind:` (blob:, tree: or thunk:)"),
        ("blob:=0g", "handle text, character 7: expected a lowercase hex digit"),
        ("blob:=000", "handle text, character 9: literal hex has an odd number of digits"),
        ("tree:abcd:3", "handle text, character 5: a digest is 64 hex digits, not 4"),
        (
            "blob:2f1514181aadccd913abd94cfa592701a5686ab23f8df1dff1b74710febc6d4a:043",
            "handle text, character 70: size is not a decimal number below 2^48",
        ),
        (
            "blob:2f1514181aadccd913abd94cfa592701a5686ab23f8df1dff1b74710febc6d4a:5",
            "handle text, character 0: a blob of 5 bytes must be literal (at most 32 bytes)",
        ),
        ("tree:=00", "handle text, character 0: a tree cannot be literal"),
    ] {
        assert_eq!(text.parse::<Handle>().unwrap_err().to_string(), message, "for {text:?}");
    }
}
