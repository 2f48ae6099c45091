//! The 40-byte handle (docs/OBJECTS.md, "Handles").
//!
//! ```text
//! offset len field
//!  0      1  kind: 0x01 blob, 0x02 tree, 0x03 thunk
//!  1      1  form: 0x00 named by digest, 0x01 literal (a blob's bytes, inline)
//!  2      6  size, u48 little-endian: a blob's length; a tree's or thunk's footprint
//!  8     32  digest, or the literal bytes followed by zeros
//! ```

use core::fmt;

use crate::error::{DecodeError, Problem};

/// Blobs of at most this many bytes are literal: the handle holds the bytes.
pub const LITERAL_MAX: usize = 32;
/// Sizes are 48-bit; a footprint that would be larger saturates here.
pub const MAX_SIZE: u64 = (1 << 48) - 1;

const FORM_DIGEST: u8 = 0;
const FORM_LITERAL: u8 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Kind {
    Blob = 1,
    Tree = 2,
    Thunk = 3,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Blob, Kind::Tree, Kind::Thunk];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Blob => "blob",
            Kind::Tree => "tree",
            Kind::Thunk => "thunk",
        }
    }

    fn from_byte(value: u8) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| *k as u8 == value)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A 256-bit BLAKE3 digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(pub [u8; 32]);

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

/// The name of an object. Every value of this type is canonical: it can only be made by
/// naming bytes or by [`Handle::from_bytes`], which checks every rule.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct Handle([u8; Handle::LEN]);

impl Handle {
    pub const LEN: usize = 40;

    /// Names a blob: literal if it is at most 32 bytes, else BLAKE3 of the bytes.
    pub fn blob(bytes: &[u8]) -> Handle {
        if bytes.len() <= LITERAL_MAX {
            let mut h = [0u8; Handle::LEN];
            h[0] = Kind::Blob as u8;
            h[1] = FORM_LITERAL;
            h[2..8].copy_from_slice(&size_bytes(bytes.len() as u64));
            h[8..8 + bytes.len()].copy_from_slice(bytes);
            Handle(h)
        } else {
            Handle::named(Kind::Blob, bytes.len() as u64, Digest(crate::hash::blob_digest(bytes)))
        }
    }

    /// A digest-form handle. Callers guarantee the digest was computed by the kind's rule.
    pub(crate) fn named(kind: Kind, size: u64, digest: Digest) -> Handle {
        debug_assert!(kind != Kind::Blob || size > LITERAL_MAX as u64);
        let mut h = [0u8; Handle::LEN];
        h[0] = kind as u8;
        h[1] = FORM_DIGEST;
        h[2..8].copy_from_slice(&size_bytes(size.min(MAX_SIZE)));
        h[8..].copy_from_slice(&digest.0);
        Handle(h)
    }

    /// Checks 40 bytes against every rule of the handle layout.
    pub fn from_bytes(bytes: &[u8]) -> Result<Handle, DecodeError> {
        let h: [u8; Handle::LEN] =
            bytes.try_into().map_err(|_| DecodeError::new(0, Problem::HandleLength { len: bytes.len() }))?;
        let kind = Kind::from_byte(h[0]).ok_or(DecodeError::new(0, Problem::UnknownKind { value: h[0] }))?;
        let size = u64::from_le_bytes([h[2], h[3], h[4], h[5], h[6], h[7], 0, 0]);
        match h[1] {
            FORM_LITERAL => {
                if kind != Kind::Blob {
                    return Err(DecodeError::new(1, Problem::LiteralNotBlob { kind }));
                }
                if size > LITERAL_MAX as u64 {
                    return Err(DecodeError::new(2, Problem::LiteralTooLong { size }));
                }
                if let Some(i) = h[8 + size as usize..].iter().position(|&b| b != 0) {
                    return Err(DecodeError::new(8 + size as usize + i, Problem::LiteralPadding));
                }
            }
            FORM_DIGEST => {
                if kind == Kind::Blob && size <= LITERAL_MAX as u64 {
                    return Err(DecodeError::new(2, Problem::SmallBlobNotLiteral { size }));
                }
            }
            value => return Err(DecodeError::new(1, Problem::UnknownForm { value })),
        }
        Ok(Handle(h))
    }

    /// For bytes already checked by [`Handle::from_bytes`] (entries of a decoded tree): skips
    /// re-checking on every read of an entry.
    pub(crate) fn from_validated(bytes: &[u8]) -> Handle {
        debug_assert!(Handle::from_bytes(bytes).is_ok());
        Handle(bytes.try_into().expect("40 bytes"))
    }

    pub fn as_bytes(&self) -> &[u8; Handle::LEN] {
        &self.0
    }

    pub fn kind(&self) -> Kind {
        Kind::from_byte(self.0[0]).expect("handles are validated on construction")
    }

    /// A blob's length in bytes; a tree's or thunk's footprint (docs/OBJECTS.md, "Sizes").
    pub fn size(&self) -> u64 {
        let h = &self.0;
        u64::from_le_bytes([h[2], h[3], h[4], h[5], h[6], h[7], 0, 0])
    }

    pub fn is_literal(&self) -> bool {
        self.0[1] == FORM_LITERAL
    }

    /// The bytes of a literal blob.
    pub fn literal(&self) -> Option<&[u8]> {
        self.is_literal().then(|| &self.0[8..8 + self.size() as usize])
    }

    /// The object's digest. For a literal blob it is computed (BLAKE3 of the bytes), so it
    /// always matches what `b3sum` prints for the same bytes.
    pub fn digest(&self) -> Digest {
        match self.literal() {
            Some(bytes) => Digest(*blake3::hash(bytes).as_bytes()),
            None => Digest(self.0[8..].try_into().expect("32 bytes")),
        }
    }
}

/// Names a blob fed in pieces (a file read in chunks), with the same result as [`Handle::blob`].
#[derive(Clone, Default)]
pub struct BlobNamer {
    hasher: blake3::Hasher,
    len: u64,
    head: [u8; LITERAL_MAX],
}

impl BlobNamer {
    pub fn new() -> BlobNamer {
        BlobNamer::default()
    }

    pub fn update(&mut self, bytes: &[u8]) {
        if self.len < LITERAL_MAX as u64 {
            let start = self.len as usize;
            let n = bytes.len().min(LITERAL_MAX - start);
            self.head[start..start + n].copy_from_slice(&bytes[..n]);
        }
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
    }

    pub fn finish(&self) -> Handle {
        if self.len <= LITERAL_MAX as u64 {
            Handle::blob(&self.head[..self.len as usize])
        } else {
            Handle::named(Kind::Blob, self.len, Digest(*self.hasher.finalize().as_bytes()))
        }
    }
}

fn size_bytes(size: u64) -> [u8; 6] {
    let b = size.to_le_bytes();
    [b[0], b[1], b[2], b[3], b[4], b[5]]
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Handle({self})")
    }
}
