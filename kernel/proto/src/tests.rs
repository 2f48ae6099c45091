extern crate std;

use alloc::string::ToString;
use alloc::vec;
use alloc::vec::Vec;

use cairn_object::Handle;
use proptest::prelude::*;

use crate::*;

fn handle() -> impl Strategy<Value = Handle> {
    proptest::collection::vec(any::<u8>(), 0..100).prop_map(|b| Handle::blob(&b))
}

fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), 0..max)
        .prop_map(|c| c.into_iter().collect::<String>())
        .prop_filter("fits", |s| s.len() <= 256)
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        text(40).prop_map(|client| Message::Hello { client }),
        (any::<u8>(), any::<[u8; 32]>(), any::<u32>(), any::<u64>()).prop_map(
            |(version, node_id, max_frame, offers)| Message::Welcome { version, node_id, max_frame, offers }
        ),
        proptest::collection::vec(handle(), 0..20).prop_map(|handles| Message::Have { handles }),
        proptest::collection::vec(handle(), 0..20).prop_map(|handles| Message::Missing { handles }),
        (handle(), proptest::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(handle, bytes)| Message::Put { handle, bytes }),
        handle().prop_map(|handle| Message::PutBegin { handle, len: handle.size() }),
        (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(offset, bytes)| Message::PutChunk { offset, bytes }),
        handle().prop_map(|handle| Message::Stored { handle }),
        handle().prop_map(|handle| Message::Get { handle }),
        (handle(), proptest::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(handle, bytes)| Message::Object { handle, bytes }),
        handle().prop_map(|handle| Message::ObjectBegin { handle, len: handle.size() }),
        (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(offset, bytes)| Message::ObjectChunk { offset, bytes }),
        handle().prop_map(|handle| Message::Eval { handle }),
        handle().prop_map(|handle| Message::EvalFresh { handle }),
        (handle(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(result, tasks_run, memo_hits, micros)| Message::Evaluated {
                result,
                tasks_run,
                memo_hits,
                micros
            }
        ),
        (handle(), text(60)).prop_map(|(thunk, failure)| Message::EvalFailed { thunk, failure }),
        Just(Message::Stats),
        text(60).prop_map(|text| Message::StatsReply { text }),
        handle().prop_map(|job| Message::Submit { job }),
        (handle(), handle(), handle()).prop_map(|(job, journal, result)| Message::JobDone {
            job,
            journal,
            result
        }),
        (handle(), handle(), handle(), text(60))
            .prop_map(|(job, journal, thunk, failure)| Message::JobFailed { job, journal, thunk, failure }),
        handle().prop_map(|handle| Message::Replay { handle }),
        (handle(), handle(), handle(), proptest::option::of(handle())).prop_map(
            |(job, journal, result, recorded)| Message::Replayed { job, journal, result, recorded }
        ),
        handle().prop_map(|journal| Message::Journal { journal }),
        (any::<[u8; 4]>(), any::<u16>(), proptest::collection::vec(handle(), 0..10))
            .prop_map(|(ip, port, handles)| Message::Fetch { from: (ip, port), handles }),
        (any::<u64>(), any::<u64>()).prop_map(|(objects, bytes)| Message::Fetched { objects, bytes }),
        (any::<[u8; 4]>(), any::<u16>(), handle())
            .prop_map(|(ip, port, thunk)| Message::Relocate { to: (ip, port), thunk }),
        proptest::collection::vec(handle(), 0..10).prop_map(|thunks| Message::Recall { thunks }),
        proptest::collection::vec((handle(), handle()), 0..10)
            .prop_map(|entries| Message::Recalled { entries }),
        Just(Message::Scrub),
        handle().prop_map(|handle| Message::Pin { handle }),
        handle().prop_map(|handle| Message::Unpin { handle }),
        (handle(), any::<bool>()).prop_map(|(handle, pinned)| Message::Pinned { handle, pinned }),
        any::<u64>().prop_map(|goal| Message::Gc { goal }),
        (handle(), 0u8..3, any::<bool>(), any::<bool>(), any::<u64>()).prop_map(
            |(root, placement, verify, spread, seed)| Message::Coordinate {
                root,
                placement,
                verify,
                spread,
                seed
            }
        ),
        (handle(), text(60)).prop_map(|(result, report)| Message::Coordinated { result, report }),
        any::<u64>().prop_map(|since| Message::Trace { since }),
        (
            any::<[u64; 3]>(),
            proptest::collection::vec(
                (
                    0usize..8,
                    any::<u8>(),
                    any::<bool>(),
                    any::<[u64; 4]>(),
                    any::<[u8; 4]>(),
                    proptest::option::of(handle())
                ),
                0..5
            )
        )
            .prop_map(|([now_us, next, lost], spans)| Message::Traced {
                now_us,
                next,
                lost,
                spans: spans
                    .into_iter()
                    .map(|(k, cpu, ok, [begin_us, dur_us, bytes, count], peer, handle)| crate::trace::Span {
                        kind: crate::trace::SpanKind::ALL[k],
                        cpu,
                        ok,
                        begin_us,
                        dur_us,
                        bytes,
                        count,
                        peer,
                        handle,
                    })
                    .collect(),
            }),
        any::<[u64; 6]>().prop_map(|[objects, bytes, kept, copied_bytes, reclaimed, free]| {
            Message::Collected { objects, bytes, kept, copied_bytes, reclaimed, free }
        }),
        (any::<[u64; 4]>(), 0..u64::MAX - 10, proptest::collection::vec(handle(), 0..10)).prop_map(
            |([checked, bytes, restored, unchecked], unlisted, damaged)| Message::Scrubbed {
                checked,
                bytes,
                damaged_total: unlisted + damaged.len() as u64,
                damaged,
                restored,
                unchecked
            }
        ),
        (0usize..6, text(60)).prop_map(|(c, message)| Message::Error {
            code: [
                ErrorCode::BadFrame,
                ErrorCode::WrongHash,
                ErrorCode::NotFound,
                ErrorCode::StoreFull,
                ErrorCode::Unexpected,
                ErrorCode::Internal
            ][c],
            message
        }),
    ]
}

fn bytes_of(frames: &[Frame]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        encode(f, &mut out);
    }
    out
}

proptest! {
    #[test]
    fn frames_round_trip_even_split_anywhere(
        messages in proptest::collection::vec((any::<u32>(), message()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let frames: Vec<Frame> = messages.into_iter().map(|(request, message)| Frame { request, message }).collect();
        let bytes = bytes_of(&frames);
        // Everything before a frame's end decodes as "need more".
        let first_len = { let mut one = Vec::new(); encode(&frames[0], &mut one); one.len() };
        let partial = cut.index(first_len);
        prop_assert_eq!(decode(&bytes[..partial]).unwrap(), None);
        let mut at = 0;
        for expected in &frames {
            let (frame, used) = decode(&bytes[at..]).unwrap().expect("a whole frame");
            prop_assert_eq!(&frame, expected);
            at += used;
        }
        prop_assert_eq!(at, bytes.len());
    }

    /// The decoder is total: any bytes give need-more, a frame, or an error, never a panic, and
    /// it never looks past the length it was promised.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        if let Ok(Some((_, used))) = decode(&bytes) {
            prop_assert!(used <= bytes.len());
        }
    }

    /// Flipping any byte of a valid frame gives an error, need-more, or a different frame.
    #[test]
    fn single_byte_corruption_is_never_silent_about_the_header(
        message in message(), at in any::<prop::sample::Index>(), flip in 1u8..=255
    ) {
        let original = Frame { request: 7, message };
        let mut bytes = bytes_of(core::slice::from_ref(&original));
        let i = at.index(bytes.len());
        bytes[i] ^= flip;
        if let Ok(Some((frame, _))) = decode(&bytes) {
            prop_assert_ne!(frame, original);
        }
    }
}

#[test]
fn oversized_lengths_are_refused_before_the_bytes_arrive() {
    let mut header = ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec();
    assert_eq!(decode(&header), Err(ProtoError::BadLength { len: MAX_FRAME as u32 + 1 }));
    header = 3u32.to_le_bytes().to_vec();
    assert_eq!(decode(&header), Err(ProtoError::BadLength { len: 3 }));
    assert_eq!(
        ProtoError::BadLength { len: 5_000_000 }.to_string(),
        "frame length 5000000 is outside 8..=1048576"
    );
}

#[test]
fn errors_name_what_is_wrong() {
    let mut bytes = bytes_of(&[Frame { request: 1, message: Message::Stats }]);
    bytes[4] = 9;
    assert_eq!(
        decode(&bytes).unwrap_err().to_string(),
        "protocol version 9 is not supported (this side speaks 1)"
    );
    bytes[4] = VERSION;
    bytes[5] = 0x42;
    assert_eq!(decode(&bytes).unwrap_err().to_string(), "unknown message type 0x42");
    bytes[5] = 0x08;
    bytes[6] = 1;
    assert_eq!(decode(&bytes).unwrap_err().to_string(), "reserved flags 0x0001 must be zero");

    let mut have =
        bytes_of(&[Frame { request: 1, message: Message::Have { handles: vec![Handle::blob(b"x")] } }]);
    have.push(0);
    let len = (have.len() - 4) as u32;
    have[..4].copy_from_slice(&len.to_le_bytes());
    assert_eq!(
        decode(&have).unwrap_err().to_string(),
        "message 0x02, payload byte 40: not a whole number of handles"
    );

    let mut get = bytes_of(&[Frame { request: 1, message: Message::Get { handle: Handle::blob(b"x") } }]);
    get[HEADER] = 9; // the handle's kind byte
    assert_eq!(
        decode(&get).unwrap_err().to_string(),
        "message 0x06, payload byte 0: byte 0: unknown kind 0x09 (expected 0x01 blob, 0x02 tree, 0x03 thunk)"
    );

    let big = Handle::blob(&[1u8; 100]);
    let mut begin = bytes_of(&[Frame { request: 1, message: Message::PutBegin { handle: big, len: 100 } }]);
    begin[HEADER + 40] = 99;
    assert_eq!(
        decode(&begin).unwrap_err().to_string(),
        "message 0x04, payload byte 40: length differs from the handle's size"
    );
}

#[test]
fn text_longer_than_a_field_allows_is_cut_and_says_so() {
    // A task's failure message, escaped, can be four times the 4 KiB a task may give.
    let failure = alloc::format!("task error: {}", "é\\x1b".repeat(3000));
    let frame = Frame { request: 9, message: Message::EvalFailed { thunk: Handle::blob(b"t"), failure } };
    let bytes = bytes_of(&[frame]);
    let (decoded, used) = crate::decode(&bytes).unwrap().unwrap();
    assert_eq!(used, bytes.len());
    let Message::EvalFailed { failure, .. } = decoded.message else { panic!("{decoded:?}") };
    assert!(failure.len() <= 4096 && failure.starts_with("task error: é\\x1b"), "{}", failure.len());
    assert!(failure.ends_with(" [cut: 18012 bytes]"), "{}", &failure[failure.len() - 40..]);
    let error = Frame {
        request: 1,
        message: Message::Error { code: ErrorCode::Unexpected, message: "x".repeat(5000) },
    };
    assert!(crate::decode(&bytes_of(&[error])).unwrap().is_some());
}

#[test]
fn a_message_too_large_for_a_frame_becomes_an_error_instead_of_a_panic() {
    let handles = vec![Handle::blob(&[7u8; 40]); crate::MAX_FRAME / Handle::LEN + 10];
    let bytes = bytes_of(&[Frame { request: 5, message: Message::Missing { handles } }]);
    let (frame, _) = crate::decode(&bytes).unwrap().unwrap();
    assert_eq!(frame.request, 5);
    assert!(matches!(frame.message, Message::Error { code: ErrorCode::Internal, .. }), "{frame:?}");
}
