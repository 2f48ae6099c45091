//! Errors that say what was wrong and where: the byte (or character) position and the rule.

use core::fmt;

use crate::handle::{Kind, LITERAL_MAX};

/// A rule of docs/OBJECTS.md that some input broke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// A handle must be exactly 40 bytes.
    HandleLength {
        len: usize,
    },
    UnknownKind {
        value: u8,
    },
    UnknownForm {
        value: u8,
    },
    /// Only blobs are ever literal.
    LiteralNotBlob {
        kind: Kind,
    },
    LiteralTooLong {
        size: u64,
    },
    /// A blob of at most 32 bytes must be literal, so that it has one name.
    SmallBlobNotLiteral {
        size: u64,
    },
    /// Bytes of a literal handle past its length must be zero.
    LiteralPadding,
    /// A tree encoding is a whole number of 40-byte handles.
    TreeLength {
        len: usize,
    },
    /// A thunk has limits, a procedure, and zero or more arguments.
    ThunkTooShort {
        entries: usize,
    },
    /// A thunk's first entry must be a literal blob holding its limits.
    ThunkLimitsNotLiteral,
    /// Limits are 1 to 4 little-endian u64 fields; version 1 defines one (memory bytes).
    LimitsLength {
        len: usize,
    },
    LimitsField {
        field: usize,
    },
    /// A thunk's procedure must be a blob (an ELF file).
    ProcedureNotBlob {
        kind: Kind,
    },
    /// The object's bytes do not have the name it was claimed to have.
    Mismatch,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::HandleLength { len } => write!(f, "a handle is 40 bytes, not {len}"),
            Problem::UnknownKind { value } => {
                write!(f, "unknown kind {value:#04x} (expected 0x01 blob, 0x02 tree, 0x03 thunk)")
            }
            Problem::UnknownForm { value } => {
                write!(f, "unknown form {value:#04x} (expected 0x00 digest or 0x01 literal)")
            }
            Problem::LiteralNotBlob { kind } => write!(f, "a {kind} cannot be literal"),
            Problem::LiteralTooLong { size } => {
                write!(f, "a literal holds at most {LITERAL_MAX} bytes, not {size}")
            }
            Problem::SmallBlobNotLiteral { size } => {
                write!(f, "a blob of {size} bytes must be literal (at most {LITERAL_MAX} bytes)")
            }
            Problem::LiteralPadding => write!(f, "literal padding must be zero"),
            Problem::TreeLength { len } => {
                write!(f, "tree encoding of {len} bytes is not a whole number of 40-byte handles")
            }
            Problem::ThunkTooShort { entries } => {
                write!(f, "a thunk needs limits and a procedure, but has {entries} entries")
            }
            Problem::ThunkLimitsNotLiteral => {
                write!(f, "a thunk's first entry must be a literal blob of limits")
            }
            Problem::LimitsLength { len } => {
                write!(f, "limits are 8 to 32 bytes in whole u64 fields, not {len} bytes")
            }
            Problem::LimitsField { field } => write!(f, "limits field {field} is not valid"),
            Problem::ProcedureNotBlob { kind } => {
                write!(f, "a thunk's procedure must be a blob, not a {kind}")
            }
            Problem::Mismatch => write!(f, "the bytes do not match the claimed handle"),
        }
    }
}

/// Bad binary input: `at` is the byte offset in that input where the problem was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    pub at: usize,
    pub problem: Problem,
}

impl DecodeError {
    pub(crate) fn new(at: usize, problem: Problem) -> DecodeError {
        DecodeError { at, problem }
    }

    pub(crate) fn offset(self, by: usize) -> DecodeError {
        DecodeError { at: self.at + by, ..self }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "byte {}: {}", self.at, self.problem)
    }
}

/// Bad handle text: `at` is the character position (0-based) where parsing failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextError {
    pub at: usize,
    pub what: TextProblem,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TextProblem {
    MissingColon,
    UnknownKind,
    NotHex,
    DigestLength {
        digits: usize,
    },
    OddLiteralLength,
    MissingSize,
    BadSize,
    /// The text parsed, but the handle it spells breaks a rule.
    Invalid(Problem),
}

impl fmt::Display for TextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "handle text, character {}: ", self.at)?;
        match &self.what {
            TextProblem::MissingColon => write!(f, "expected `kind:` (blob:, tree: or thunk:)"),
            TextProblem::UnknownKind => write!(f, "unknown kind (expected blob, tree or thunk)"),
            TextProblem::NotHex => write!(f, "expected a lowercase hex digit"),
            TextProblem::DigestLength { digits } => {
                write!(f, "a digest is 64 hex digits, not {digits}")
            }
            TextProblem::OddLiteralLength => write!(f, "literal hex has an odd number of digits"),
            TextProblem::MissingSize => write!(f, "expected `:size` after the digest"),
            TextProblem::BadSize => write!(f, "size is not a decimal number below 2^48"),
            TextProblem::Invalid(p) => write!(f, "{p}"),
        }
    }
}

impl core::error::Error for DecodeError {}
impl core::error::Error for TextError {}
