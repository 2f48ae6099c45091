//! Trees (docs/OBJECTS.md, "Trees"): an ordered sequence of handles, encoded as their 40-byte
//! forms back to back. Nothing else: no count, no padding, so each tree has one encoding.

use alloc::vec::Vec;

use crate::context;
use crate::error::{DecodeError, Problem};
use crate::handle::{Digest, Handle, Kind, MAX_SIZE};

/// A validated, borrowed view of a tree's encoding; entries are read in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tree<'a> {
    encoding: &'a [u8],
}

impl<'a> Tree<'a> {
    /// Checks that `encoding` is a canonical tree: whole handles, each canonical.
    pub fn decode(encoding: &'a [u8]) -> Result<Tree<'a>, DecodeError> {
        if !encoding.len().is_multiple_of(Handle::LEN) {
            let whole = encoding.len() - encoding.len() % Handle::LEN;
            return Err(DecodeError::new(whole, Problem::TreeLength { len: encoding.len() }));
        }
        for (i, chunk) in encoding.as_chunks::<{ Handle::LEN }>().0.iter().enumerate() {
            Handle::from_bytes(chunk).map_err(|e| e.offset(i * Handle::LEN))?;
        }
        Ok(Tree { encoding })
    }

    pub fn len(&self) -> usize {
        self.encoding.len() / Handle::LEN
    }

    pub fn is_empty(&self) -> bool {
        self.encoding.is_empty()
    }

    pub fn get(&self, index: usize) -> Option<Handle> {
        let bytes = self.encoding.get(index * Handle::LEN..(index + 1) * Handle::LEN)?;
        Some(Handle::from_validated(bytes))
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = Handle> + 'a {
        self.encoding.as_chunks::<{ Handle::LEN }>().0.iter().map(|h| Handle::from_validated(h))
    }

    pub fn encoding(&self) -> &'a [u8] {
        self.encoding
    }

    /// The tree's name.
    pub fn handle(&self) -> Handle {
        name_encoding(Kind::Tree, &context::TREE_KEY, self.encoding, self.iter())
    }
}

/// The canonical encoding of a tree with these entries.
pub fn encode(entries: &[Handle]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * Handle::LEN);
    for e in entries {
        out.extend_from_slice(e.as_bytes());
    }
    out
}

/// A tree's (or thunk's) footprint: its own encoding plus the sizes its entries declare,
/// saturating at [`MAX_SIZE`]. Shared entries count once per reference: an upper bound on the
/// bytes needed to have the whole object locally, which is what placement needs.
pub fn footprint(encoding_len: usize, entries: impl Iterator<Item = Handle>) -> u64 {
    entries.fold(encoding_len as u64, |acc, e| acc.saturating_add(e.size())).min(MAX_SIZE)
}

/// Names a validated tree-shaped encoding under a context key (trees and thunks).
pub(crate) fn name_encoding(
    kind: Kind,
    context_key: &[u8; 32],
    encoding: &[u8],
    entries: impl Iterator<Item = Handle>,
) -> Handle {
    use blake3::hazmat::HasherExt;
    let mut hasher = blake3::Hasher::new_from_context_key(context_key);
    hasher.update(encoding);
    let digest = Digest(*hasher.finalize().as_bytes());
    Handle::named(kind, footprint(encoding.len(), entries), digest)
}
