//! Cairn's one data type: content-addressed objects. The rules are in docs/OBJECTS.md; this
//! crate is their executable form, shared by the kernel, the task SDK and the host tools.
//!
//! - A [`Handle`] names an object: 40 bytes carrying its [`Kind`], its size and its digest (or,
//!   for a blob of at most 32 bytes, the bytes themselves).
//! - A blob's digest is exactly BLAKE3 of its bytes; trees and thunks hash their canonical
//!   encoding under their own BLAKE3 key-derivation context, so kinds never share a name.
//! - [`tree`] and [`thunk`] define the one canonical encoding of each, and decoding rejects
//!   anything else.
//! - [`store`] keeps objects by handle, verifying what untrusted sources claim.

#![no_std]

extern crate alloc;

pub mod dir;
mod error;
mod handle;
pub mod hash;
pub mod io;
mod set;
pub mod store;
mod text;
pub mod thunk;
pub mod tree;

pub use error::{DecodeError, Problem, TextError};
pub use handle::{BlobNamer, Digest, Handle, Kind, LITERAL_MAX, MAX_SIZE};
pub use set::HandleSet;
pub use thunk::{Limits, Thunk};
pub use tree::Tree;

/// At most the first 64 characters of `text`, and `…` if there was more: for error messages
/// that quote untrusted input, so that a message never grows with what it quotes.
pub fn excerpt(text: &str) -> alloc::string::String {
    const MAX: usize = 64;
    match text.char_indices().nth(MAX) {
        None => alloc::string::String::from(text),
        Some((end, _)) => alloc::format!("{}…", &text[..end]),
    }
}

/// BLAKE3 key-derivation contexts; changing one renames every object of that kind.
pub mod context {
    pub const TREE: &str = "cairn 2026-11 object tree v1";
    pub const THUNK: &str = "cairn 2026-11 object thunk v1";

    /// `blake3::hazmat::hash_derive_key_context` of the contexts above, precomputed: naming a
    /// small tree then costs one compression instead of two. A test checks them.
    pub(crate) const TREE_KEY: [u8; 32] = [
        13, 6, 58, 135, 239, 143, 128, 23, 186, 23, 168, 22, 169, 107, 190, 87, 57, 240, 229, 57, 242, 55,
        36, 79, 175, 69, 11, 215, 181, 175, 71, 39,
    ];
    pub(crate) const THUNK_KEY: [u8; 32] = [
        148, 87, 42, 18, 231, 174, 171, 71, 241, 226, 158, 28, 63, 217, 15, 119, 113, 48, 123, 223, 178, 239,
        208, 18, 96, 106, 197, 13, 13, 176, 53, 53,
    ];

    #[cfg(test)]
    #[test]
    fn precomputed_context_keys_match_their_contexts() {
        assert_eq!(blake3::hazmat::hash_derive_key_context(TREE), TREE_KEY);
        assert_eq!(blake3::hazmat::hash_derive_key_context(THUNK), THUNK_KEY);
    }
}
