//! Naming an object fed in pieces, with exactly the result of [`super::name`]: a disk store
//! checks a large object as it copies it, a piece at a time, never holding the whole of it.

use blake3::hazmat::HasherExt;

use crate::context;
use crate::error::{DecodeError, Problem};
use crate::handle::{BlobNamer, Digest, Handle, Kind, MAX_SIZE};
use crate::thunk::Limits;

/// [`super::name`] of the bytes given to [`ObjectNamer::update`] one piece after another,
/// whatever the pieces' sizes: a tree's or thunk's entries are checked as they complete (an
/// entry may straddle pieces), and the first problem is the one [`super::name`] reports.
#[derive(Clone)]
pub struct ObjectNamer {
    kind: Kind,
    /// A blob's name.
    blob: BlobNamer,
    /// A tree's or thunk's encoding, under its kind's context.
    hasher: blake3::Hasher,
    len: usize,
    /// The entry being gathered: its first `len % Handle::LEN` bytes.
    entry: [u8; Handle::LEN],
    entries: usize,
    /// The entries' sizes, summed saturating (as a footprint is).
    sizes: u64,
    /// The first entry that is no canonical handle.
    bad_entry: Option<DecodeError>,
    /// A thunk's first problem with its limits or procedure.
    bad_thunk: Option<DecodeError>,
}

impl ObjectNamer {
    pub fn new(kind: Kind) -> ObjectNamer {
        let key = match kind {
            Kind::Thunk => &context::THUNK_KEY,
            _ => &context::TREE_KEY,
        };
        ObjectNamer {
            kind,
            blob: BlobNamer::new(),
            hasher: blake3::Hasher::new_from_context_key(key),
            len: 0,
            entry: [0; Handle::LEN],
            entries: 0,
            sizes: 0,
            bad_entry: None,
            bad_thunk: None,
        }
    }

    pub fn update(&mut self, mut bytes: &[u8]) {
        if self.kind == Kind::Blob {
            self.blob.update(bytes);
            self.len += bytes.len();
            return;
        }
        self.hasher.update(bytes);
        while !bytes.is_empty() {
            let have = self.len % Handle::LEN;
            let n = bytes.len().min(Handle::LEN - have);
            self.entry[have..have + n].copy_from_slice(&bytes[..n]);
            self.len += n;
            bytes = &bytes[n..];
            if have + n == Handle::LEN {
                let entry = self.entry;
                self.check_entry(&entry);
            }
        }
    }

    /// The checks [`crate::Tree::decode`] and [`crate::Thunk::decode`] make of entry
    /// `self.entries`, reported in the order they make them.
    fn check_entry(&mut self, entry: &[u8; Handle::LEN]) {
        let (i, at) = (self.entries, self.entries * Handle::LEN);
        self.entries += 1;
        let handle = match Handle::from_bytes(entry) {
            Ok(handle) => handle,
            Err(e) => {
                self.bad_entry.get_or_insert(e.offset(at));
                return;
            }
        };
        self.sizes = self.sizes.saturating_add(handle.size());
        if self.kind != Kind::Thunk || self.bad_thunk.is_some() {
            return;
        }
        self.bad_thunk = match i {
            0 => match handle.literal() {
                None => Some(DecodeError::new(0, Problem::ThunkLimitsNotLiteral)),
                Some(limits) => Limits::decode(limits).err().map(|e| e.offset(8)),
            },
            1 if handle.kind() != Kind::Blob => {
                Some(DecodeError::new(Handle::LEN, Problem::ProcedureNotBlob { kind: handle.kind() }))
            }
            _ => None,
        };
    }

    /// Bytes given so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The name of everything given, or why it is no object of the kind.
    pub fn finish(&self) -> Result<Handle, DecodeError> {
        if self.kind == Kind::Blob {
            return Ok(self.blob.finish());
        }
        if !self.len.is_multiple_of(Handle::LEN) {
            let whole = self.len - self.len % Handle::LEN;
            return Err(DecodeError::new(whole, Problem::TreeLength { len: self.len }));
        }
        if let Some(e) = &self.bad_entry {
            return Err(e.clone());
        }
        if self.kind == Kind::Thunk {
            if self.entries < 2 {
                return Err(DecodeError::new(0, Problem::ThunkTooShort { entries: self.entries }));
            }
            if let Some(e) = &self.bad_thunk {
                return Err(e.clone());
            }
        }
        // A footprint: the encoding's length plus the entries' sizes, saturating, at most MAX_SIZE.
        let footprint = (self.len as u64).saturating_add(self.sizes).min(MAX_SIZE);
        Ok(Handle::named(self.kind, footprint, Digest(*self.hasher.finalize().as_bytes())))
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use alloc::vec::Vec;

    use proptest::prelude::*;

    use super::*;
    use crate::hash::SPAN_LEN;
    use crate::store::name;
    use crate::{thunk, tree};

    /// Names `bytes` fed in pieces of `piece` bytes (the last one shorter).
    fn in_pieces(kind: Kind, bytes: &[u8], piece: usize) -> Result<Handle, DecodeError> {
        let mut namer = ObjectNamer::new(kind);
        bytes.chunks(piece.max(1)).for_each(|p| namer.update(p));
        assert_eq!(namer.len(), bytes.len());
        namer.finish()
    }

    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(167).wrapping_add(seed) ^ (i >> 11) as u8).collect()
    }

    fn entries(n: usize) -> Vec<Handle> {
        (0..n).map(|i| Handle::blob(&bytes(i % 70, i as u8))).collect()
    }

    /// Piece sizes around an entry, a BLAKE3 chunk and a span, and ones that straddle them.
    const PIECES: [usize; 12] = [1, 7, 39, 40, 41, 64, 1000, 1024, 4096, 4097, SPAN_LEN, SPAN_LEN + 40];

    #[test]
    fn blobs_of_every_size_around_the_boundaries_are_named_as_whole() {
        let mut lens = Vec::from([0, 1, 31, 32, 33, 40, 1023, 1024, 1025, 3 * SPAN_LEN + 17, 1 << 20]);
        for edge in [SPAN_LEN, 2 * SPAN_LEN, 4096] {
            lens.extend([edge - 1, edge, edge + 1]);
        }
        for len in lens {
            let b = bytes(len, len as u8);
            for piece in PIECES.into_iter().chain([len, len + 1]) {
                assert_eq!(
                    in_pieces(Kind::Blob, &b, piece),
                    name(Kind::Blob, &b),
                    "length {len}, piece {piece}"
                );
            }
        }
    }

    #[test]
    fn trees_and_thunks_of_many_sizes_are_named_as_whole() {
        let limits = crate::Limits::new(1 << 20).unwrap();
        let procedure = Handle::blob(&bytes(100, 1));
        for n in [0, 1, 2, 3, 25, 26, 27, 102, 103, 1638, 1639, 1640, 3300] {
            let t = tree::encode(&entries(n));
            let k = thunk::encode(limits, procedure, &entries(n)).unwrap();
            for piece in PIECES.into_iter().chain([t.len(), t.len() + 1]) {
                assert!(name(Kind::Tree, &t).is_ok());
                assert_eq!(
                    in_pieces(Kind::Tree, &t, piece),
                    name(Kind::Tree, &t),
                    "{n} entries, piece {piece}"
                );
                assert!(name(Kind::Thunk, &k).is_ok());
                assert_eq!(
                    in_pieces(Kind::Thunk, &k, piece),
                    name(Kind::Thunk, &k),
                    "{n} args, piece {piece}"
                );
            }
        }
        // A tree of large entries: its footprint saturates at MAX_SIZE as a whole tree's does.
        let big =
            Handle::from_bytes(&[[1, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f].as_slice(), &[9; 32]].concat())
                .unwrap();
        let t = tree::encode(&[big; 5]);
        assert_eq!(in_pieces(Kind::Tree, &t, 17), name(Kind::Tree, &t));
    }

    #[test]
    fn encodings_that_are_no_object_fail_as_whole_ones_do() {
        let limits = crate::Limits::new(1 << 20).unwrap();
        let procedure = Handle::blob(&bytes(100, 1));
        let good = thunk::encode(limits, procedure, &entries(30)).unwrap();
        let mut cases: Vec<(Kind, Vec<u8>)> = Vec::new();
        for kind in [Kind::Tree, Kind::Thunk] {
            cases.push((kind, Vec::new()));
            cases.push((kind, good[..good.len() - 1].to_vec()));
            cases.push((kind, good[..Handle::LEN].to_vec()));
            // A bad entry byte (kind, form, size, literal padding) anywhere, also with a bad length.
            for at in [0, 1, 2, 7, 8, 39, 40, 41, 47, 80, 81, 600, 1201, good.len() - 40, good.len() - 1] {
                for flip in [0x01, 0x80, 0xff] {
                    let mut b = good.clone();
                    b[at] ^= flip;
                    cases.push((kind, b.clone()));
                    b.push(0);
                    cases.push((kind, b));
                }
            }
        }
        // A thunk whose limits are not literal or not valid, or whose procedure is no blob.
        let tree_entry = Handle::from_bytes(&tree::encode(&entries(2))[..40]).unwrap();
        let a_tree = crate::Tree::decode(&tree::encode(&[tree_entry])).unwrap().handle();
        for first_two in
            [[procedure, procedure], [Handle::blob(&[0; 8]), procedure], [limits.handle(), a_tree]]
        {
            cases.push((Kind::Thunk, tree::encode(&[first_two.as_slice(), &entries(3)].concat())));
        }
        for (kind, b) in cases {
            let whole = name(kind, &b);
            for piece in PIECES {
                assert_eq!(in_pieces(kind, &b, piece), whole, "{kind} of {} bytes, piece {piece}", b.len());
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_bytes_in_any_pieces_are_named_as_whole(
            kind in prop::sample::select(Kind::ALL.to_vec()),
            n in 0usize..40,
            damage in prop::option::of((any::<prop::sample::Index>(), 1u8..)),
            cuts in prop::collection::vec(1usize..300, 1..20),
        ) {
            let limits = crate::Limits::new(4096).unwrap();
            let mut b = match kind {
                Kind::Blob => bytes(n * 97, n as u8),
                Kind::Tree => tree::encode(&entries(n)),
                Kind::Thunk => thunk::encode(limits, Handle::blob(&bytes(50, 2)), &entries(n)).unwrap(),
            };
            if let (Some((at, flip)), false) = (damage, b.is_empty()) {
                let at = at.index(b.len());
                b[at] ^= flip;
            }
            let mut namer = ObjectNamer::new(kind);
            let mut rest = b.as_slice();
            for cut in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (piece, after) = rest.split_at((*cut).min(rest.len()));
                namer.update(piece);
                rest = after;
            }
            prop_assert_eq!(namer.finish(), name(kind, &b));
        }
    }
}
