//! Review of [`super::ObjectNamer`] (f094109): any 40-byte entries at all (every kind byte and
//! form, literals of every length with and without padding garbage, small blobs in digest
//! form, sizes up to and past the footprint's limit), thunks whose limits and procedure are
//! anything, a trailing partial entry, and pieces of any size (empty ones too): the namer's
//! answer is `store::name`'s, error and offset included.

extern crate std;

use alloc::vec::Vec;

use proptest::prelude::*;

use super::{ObjectNamer, name};
use crate::{Handle, Kind, LITERAL_MAX, MAX_SIZE};

/// One 40-byte entry: mostly well formed, often not.
fn entry() -> impl Strategy<Value = [u8; Handle::LEN]> {
    let kind = prop_oneof![4 => 1u8..=3, 1 => any::<u8>()];
    let form = prop_oneof![4 => 0u8..=1, 1 => any::<u8>()];
    let size = prop_oneof![
        3 => 0u64..=(LITERAL_MAX as u64 + 2),
        2 => any::<u64>().prop_map(|s| s & MAX_SIZE),
        1 => Just(MAX_SIZE),
        1 => (MAX_SIZE - 100)..=MAX_SIZE,
    ];
    let garbage = prop::option::of((8usize..40, 1u8..));
    (kind, form, size, any::<[u8; 32]>(), garbage).prop_map(|(kind, form, size, digest, garbage)| {
        let mut e = [0u8; Handle::LEN];
        e[0] = kind;
        e[1] = form;
        e[2..8].copy_from_slice(&size.to_le_bytes()[..6]);
        if form == 1 {
            // A literal: its bytes, zeros after them (unless garbage lands there).
            let n = (size as usize).min(LITERAL_MAX);
            e[8..8 + n].copy_from_slice(&digest[..n]);
        } else {
            e[8..].copy_from_slice(&digest);
        }
        if let Some((at, b)) = garbage {
            e[at] ^= b;
        }
        e
    })
}

/// One well-formed entry: a literal blob of any length, or a digest-form handle of any kind
/// whose size is as large as a handle holds (so that footprints saturate).
fn good_entry() -> impl Strategy<Value = [u8; Handle::LEN]> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..=LITERAL_MAX).prop_map(|b| *Handle::blob(&b).as_bytes()),
        (1u8..=3, (LITERAL_MAX as u64 + 1)..=MAX_SIZE, any::<[u8; 32]>()).prop_map(|(kind, size, digest)| {
            let mut e = [0u8; Handle::LEN];
            e[0] = kind;
            e[2..8].copy_from_slice(&size.to_le_bytes()[..6]);
            e[8..].copy_from_slice(&digest);
            e
        }),
    ]
}

/// A thunk's first entry: the limits, as literals of many lengths and values.
fn limits() -> impl Strategy<Value = [u8; Handle::LEN]> {
    prop_oneof![
        3 => (1u64..64).prop_map(|pages| *Handle::blob(&(pages * 4096).to_le_bytes()).as_bytes()),
        1 => any::<u64>().prop_map(|m| *Handle::blob(&m.to_le_bytes()).as_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..=LITERAL_MAX)
            .prop_map(|b| *Handle::blob(&b).as_bytes()),
        1 => entry(),
    ]
}

fn encoding() -> impl Strategy<Value = (Kind, Vec<u8>)> {
    let kind = prop::sample::select(Kind::ALL.to_vec());
    let entries = prop_oneof![
        prop::collection::vec(entry(), 0..60),
        prop::collection::vec(good_entry(), 0..60),
        // Good but for one entry.
        (prop::collection::vec(good_entry(), 1..60), any::<prop::sample::Index>(), entry()).prop_map(
            |(mut v, i, e)| {
                let at = i.index(v.len());
                v[at] = e;
                v
            }
        ),
    ];
    let tail = prop_oneof![4 => Just(Vec::new()), 1 => prop::collection::vec(any::<u8>(), 1..40)];
    let blob = prop_oneof![
        0usize..=(LITERAL_MAX + 2),
        0usize..5000,
        (64usize * 1024 - 3)..(64 * 1024 + 3),
        100_000usize..200_000,
    ];
    (kind, limits(), entries, tail, blob, any::<u8>()).prop_map(
        |(kind, limits, entries, tail, blob, seed)| {
            let bytes = match kind {
                Kind::Blob => (0..blob).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect(),
                Kind::Tree => entries.concat(),
                Kind::Thunk => [[limits].as_slice(), &entries].concat().concat(),
            };
            (kind, [bytes, tail].concat())
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_entries_in_any_pieces_are_named_or_refused_as_whole(
        (kind, bytes) in encoding(),
        cuts in prop::collection::vec(prop_oneof![Just(0usize), 1usize..50, 38usize..43, 1usize..70_000], 1..12),
    ) {
        let mut namer = ObjectNamer::new(kind);
        let mut rest = bytes.as_slice();
        for (steps, cut) in cuts.iter().cycle().enumerate() {
            if rest.is_empty() && steps >= cuts.len() {
                break;
            }
            // An empty piece now and then, but never only empty ones.
            let cut = if steps >= cuts.len() { (*cut).max(1) } else { *cut };
            let (piece, after) = rest.split_at(cut.min(rest.len()));
            namer.update(piece);
            rest = after;
        }
        prop_assert_eq!(namer.len(), bytes.len());
        let whole = name(kind, &bytes);
        prop_assert_eq!(namer.finish(), whole.clone(), "{} of {} bytes", kind, bytes.len());
        COUNTS.with(|c| c.borrow_mut()[usize::from(whole.is_ok())] += 1);
    }
}

std::thread_local! { static COUNTS: core::cell::RefCell<[u32; 2]> = const { core::cell::RefCell::new([0; 2]) }; }

/// The property above sees both: objects, and encodings that are none.
#[test]
fn the_property_sees_good_and_bad_encodings() {
    any_entries_in_any_pieces_are_named_or_refused_as_whole();
    let [bad, good] = COUNTS.with(|c| *c.borrow());
    assert!(bad > 300 && good > 300, "{bad} bad, {good} good");
}

/// Every single entry (each kind, each form, every literal length, sizes at the limits) as the
/// only entry of a tree and as a thunk's procedure and first argument, fed a byte at a time.
#[test]
fn every_kind_of_single_entry_is_judged_as_decode_judges_it() {
    let limits = *crate::Limits::new(4096).unwrap().handle().as_bytes();
    let procedure = *Handle::blob(&[7; 100]).as_bytes();
    for kind in 0u8..=4 {
        for form in 0u8..=2 {
            for size in (0u64..=34).chain([MAX_SIZE - 1, MAX_SIZE]) {
                for padding in [false, true] {
                    let mut e = [0u8; Handle::LEN];
                    e[0] = kind;
                    e[1] = form;
                    e[2..8].copy_from_slice(&size.to_le_bytes()[..6]);
                    if padding {
                        e[39] = 1;
                    }
                    for (k, bytes) in [
                        (Kind::Tree, e.to_vec()),
                        (Kind::Thunk, [limits, e].concat()),
                        (Kind::Thunk, [limits, procedure, e].concat()),
                        (Kind::Thunk, [e, procedure].concat()),
                    ] {
                        let mut namer = ObjectNamer::new(k);
                        bytes.iter().for_each(|b| namer.update(&[*b]));
                        assert_eq!(namer.finish(), name(k, &bytes), "{k}: {e:?}");
                    }
                }
            }
        }
    }
}
