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
pub mod store;
mod text;
pub mod thunk;
pub mod tree;

pub use error::{DecodeError, Problem, TextError};
pub use handle::{BlobNamer, Digest, Handle, Kind, LITERAL_MAX, MAX_SIZE};
pub use thunk::{Limits, Thunk};
pub use tree::Tree;

/// BLAKE3 key-derivation contexts; changing one renames every object of that kind.
pub mod context {
    pub const TREE: &str = "cairn 2026-11 object tree v1";
    pub const THUNK: &str = "cairn 2026-11 object thunk v1";
}
