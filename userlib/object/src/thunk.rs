//! Thunks (docs/OBJECTS.md, "Thunks"): a deferred application. Encoded exactly like a tree whose
//! entries are `[limits, procedure, arg...]`, and named under the thunk context, so a thunk and
//! the tree with the same entries have different names.

use alloc::vec::Vec;

use crate::context;
use crate::error::{DecodeError, Problem};
use crate::handle::{Handle, Kind};
use crate::tree::{self, Tree};

const PAGE: u64 = 4096;

/// Resource limits of an application. Encoded as little-endian u64 fields in a literal blob;
/// version 1 has one field (memory bytes), and the literal has room for four.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    memory_bytes: u64,
}

impl Limits {
    /// `memory_bytes` must be a non-zero multiple of 4096.
    pub fn new(memory_bytes: u64) -> Result<Limits, Problem> {
        if memory_bytes == 0 || !memory_bytes.is_multiple_of(PAGE) {
            return Err(Problem::LimitsField { field: 0 });
        }
        Ok(Limits { memory_bytes })
    }

    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes
    }

    pub fn encode(&self) -> [u8; 8] {
        self.memory_bytes.to_le_bytes()
    }

    pub fn handle(&self) -> Handle {
        Handle::blob(&self.encode())
    }

    pub fn decode(bytes: &[u8]) -> Result<Limits, DecodeError> {
        if bytes.is_empty() || bytes.len() % 8 != 0 || bytes.len() > 32 {
            return Err(DecodeError::new(0, Problem::LimitsLength { len: bytes.len() }));
        }
        if bytes.len() > 8 {
            // Fields this version does not know: refuse rather than ignore a limit.
            return Err(DecodeError::new(8, Problem::LimitsField { field: 1 }));
        }
        let memory = u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
        Limits::new(memory).map_err(|p| DecodeError::new(0, p))
    }
}

/// A validated, borrowed view of a thunk's encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thunk<'a> {
    tree: Tree<'a>,
    limits: Limits,
}

impl<'a> Thunk<'a> {
    pub fn decode(encoding: &'a [u8]) -> Result<Thunk<'a>, DecodeError> {
        let tree = Tree::decode(encoding)?;
        if tree.len() < 2 {
            return Err(DecodeError::new(0, Problem::ThunkTooShort { entries: tree.len() }));
        }
        let limits_handle = tree.get(0).expect("two entries");
        let limits_bytes =
            limits_handle.literal().ok_or(DecodeError::new(0, Problem::ThunkLimitsNotLiteral))?;
        // Errors inside the limits point into the literal bytes, which start at offset 8.
        let limits = Limits::decode(limits_bytes).map_err(|e| e.offset(8))?;
        let procedure = tree.get(1).expect("two entries");
        if procedure.kind() != Kind::Blob {
            let kind = procedure.kind();
            return Err(DecodeError::new(Handle::LEN, Problem::ProcedureNotBlob { kind }));
        }
        Ok(Thunk { tree, limits })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The task's ELF blob.
    pub fn procedure(&self) -> Handle {
        self.tree.get(1).expect("validated")
    }

    pub fn args(&self) -> impl ExactSizeIterator<Item = Handle> + 'a {
        self.tree.iter().skip(2)
    }

    pub fn encoding(&self) -> &'a [u8] {
        self.tree.encoding()
    }

    pub fn handle(&self) -> Handle {
        tree::name_encoding(Kind::Thunk, &context::THUNK_KEY, self.encoding(), self.tree.iter())
    }
}

/// The canonical encoding of the application of `procedure` (a blob) to `args` under `limits`.
pub fn encode(limits: Limits, procedure: Handle, args: &[Handle]) -> Result<Vec<u8>, Problem> {
    if procedure.kind() != Kind::Blob {
        return Err(Problem::ProcedureNotBlob { kind: procedure.kind() });
    }
    let mut entries = Vec::with_capacity(args.len() + 2);
    entries.push(limits.handle());
    entries.push(procedure);
    entries.extend_from_slice(args);
    Ok(tree::encode(&entries))
}
