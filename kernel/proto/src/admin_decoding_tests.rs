//! The administration messages (SCRUB, SCRUBBED, PIN, UNPIN, PINNED, GC, COLLECTED; review of
//! 4be808b and cb345a1): any payload under their types decodes to an error or to the message
//! that encodes back to the same bytes, never a panic. `tests::arbitrary_bytes_never_panic`
//! rarely reaches them (a random type byte with a valid header), so these build the header.

use alloc::vec::Vec;

use cairn_object::Handle;
use proptest::prelude::*;

use crate::*;

const ADMIN_KINDS: [u8; 7] = [0x10, 0x11, 0x12, 0x13, 0x91, 0x92, 0x93];

fn frame_of(kind: u8, request: u32, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&((HEADER - 4 + payload.len()) as u32).to_le_bytes());
    bytes.extend_from_slice(&[VERSION, kind, 0, 0]);
    bytes.extend_from_slice(&request.to_le_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// Payloads near the valid ones: handles (valid or with a byte changed), counts, flags.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    let handle = proptest::collection::vec(any::<u8>(), 0..80).prop_map(|b| *Handle::blob(&b).as_bytes());
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        (
            proptest::collection::vec(any::<u64>(), 0..7),
            proptest::collection::vec(handle, 0..4),
            any::<Option<(usize, u8)>>(),
            proptest::collection::vec(any::<u8>(), 0..3),
        )
            .prop_map(|(counts, handles, flip, tail)| {
                let mut out = Vec::new();
                for c in counts {
                    out.extend_from_slice(&(c % 8).to_le_bytes());
                }
                for h in handles {
                    out.extend_from_slice(&h);
                }
                if let Some((at, x)) = flip
                    && !out.is_empty()
                {
                    let i = at % out.len();
                    out[i] ^= x;
                }
                out.extend_from_slice(&tail);
                out
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn administration_payloads_never_panic_and_decode_canonically(
        kind in prop::sample::select(&ADMIN_KINDS[..]),
        request in any::<u32>(),
        payload in payload(),
    ) {
        let bytes = frame_of(kind, request, &payload);
        if let Ok(Some((frame, used))) = decode(&bytes) {
            prop_assert_eq!(used, bytes.len());
            let mut again = Vec::new();
            encode(&frame, &mut again);
            prop_assert_eq!(again, bytes, "{:?}", frame);
        }
    }
}
