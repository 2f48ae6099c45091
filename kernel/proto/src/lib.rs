//! The node API's wire protocol (docs/PROTOCOL.md): length-prefixed, versioned frames carrying
//! one message each. Decoding is a pure function of the bytes received so far: it says
//! "need more", returns a message, or names what is wrong. It never panics, and it never
//! allocates more than the frame it has already received, which is bounded by [`MAX_FRAME`].

#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use cairn_object::Handle;

pub const VERSION: u8 = 1;
/// Largest frame body (after the length field). Objects larger than one frame travel in chunks.
pub const MAX_FRAME: usize = 1 << 20;
/// Largest chunk of object bytes in one frame, leaving room for the chunk's header.
pub const MAX_CHUNK: usize = MAX_FRAME - 256;
/// Bytes before the payload: length (4), version (1), type (1), flags (2), request id (4).
pub const HEADER: usize = 12;
/// Objects up to this size travel in one PUT or OBJECT frame; larger ones in chunks.
pub const MAX_INLINE: usize = MAX_CHUNK;
/// Largest text field (an ERROR's message, a failure, a report); a longer one is cut.
pub const MAX_TEXT: usize = 4096;

/// Whether `len` bytes can be the object `handle` names (docs/PROTOCOL.md, PUT-BEGIN): a blob's
/// length is its size; a tree's or thunk's encoding is whole entries, and no more than its
/// footprint (its size, which also counts what its entries declare).
pub fn length_fits(handle: &Handle, len: u64) -> bool {
    match handle.kind() {
        cairn_object::Kind::Blob => len == handle.size(),
        _ => len.is_multiple_of(Handle::LEN as u64) && len <= handle.size(),
    }
}

/// What a node offers, in HELLO's reply.
pub mod offers {
    pub const HAVE: u64 = 1 << 0;
    pub const PUT: u64 = 1 << 1;
    pub const GET: u64 = 1 << 2;
    pub const EVAL: u64 = 1 << 3;
    pub const STATS: u64 = 1 << 4;
    /// SUBMIT, REPLAY and JOURNAL (docs/IO.md).
    pub const JOBS: u64 = 1 << 5;
    /// FETCH and RECALL (docs/CLUSTER.md).
    pub const CLUSTER: u64 = 1 << 6;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Client → node: who is asking.
    Hello {
        client: String,
    },
    /// Node → client.
    Welcome {
        version: u8,
        node_id: [u8; 32],
        max_frame: u32,
        offers: u64,
    },
    /// Client → node: which of these do you lack?
    Have {
        handles: Vec<Handle>,
    },
    /// Node → client: the ones it lacks, in the order asked.
    Missing {
        handles: Vec<Handle>,
    },
    /// Client → node: a whole object, at most [`MAX_INLINE`] bytes.
    Put {
        handle: Handle,
        bytes: Vec<u8>,
    },
    /// Client → node: an object of `len` bytes follows in `PutChunk`s, in order.
    PutBegin {
        handle: Handle,
        len: u64,
    },
    PutChunk {
        offset: u64,
        bytes: Vec<u8>,
    },
    /// Node → client: the object is stored (its name checked).
    Stored {
        handle: Handle,
    },
    /// Client → node.
    Get {
        handle: Handle,
    },
    /// Node → client: a whole object.
    Object {
        handle: Handle,
        bytes: Vec<u8>,
    },
    /// Node → client: an object of `len` bytes follows in `ObjectChunk`s, in order.
    ObjectBegin {
        handle: Handle,
        len: u64,
    },
    ObjectChunk {
        offset: u64,
        bytes: Vec<u8>,
    },
    /// Client → node: evaluate a thunk (or any handle).
    Eval {
        handle: Handle,
    },
    /// Client → node: evaluate without reading or writing the memo (every task runs again;
    /// for verification). Answered like EVAL.
    EvalFresh {
        handle: Handle,
    },
    /// Node → client: the value, and what it took.
    Evaluated {
        result: Handle,
        tasks_run: u64,
        memo_hits: u64,
        micros: u64,
    },
    /// Node → client: the evaluation failed; `thunk` is the failing thunk.
    EvalFailed {
        thunk: Handle,
        failure: String,
    },
    Stats,
    /// Node → client: `key=value` lines.
    StatsReply {
        text: String,
    },
    /// Client → node: run a job (a tree [root thunk, manifest]) with the IO its manifest grants.
    Submit {
        job: Handle,
    },
    /// Node → client: the job's value and its journal (stored on the node).
    JobDone {
        job: Handle,
        journal: Handle,
        result: Handle,
    },
    /// Node → client: the job failed; `thunk` is the failing thunk. The journal holds the IO
    /// performed before the failure.
    JobFailed {
        job: Handle,
        journal: Handle,
        thunk: Handle,
        failure: String,
    },
    /// Client → node: evaluate a job again from its journal alone (a job: its latest journal on
    /// this node; or a journal). No IO is performed.
    Replay {
        handle: Handle,
    },
    /// Node → client: the replay's value and the value the journal recorded (none if the job
    /// had failed).
    Replayed {
        job: Handle,
        journal: Handle,
        result: Handle,
        recorded: Option<Handle>,
    },
    /// Client → node: remember this journal (already stored, with its job and responses) as the
    /// latest of its job. Answered with STORED.
    Journal {
        journal: Handle,
    },
    /// Client → node: get these objects from the peer node at `from` (its cluster address and
    /// API port), checking each on receipt; the ones already here are skipped.
    Fetch {
        from: ([u8; 4], u16),
        handles: Vec<Handle>,
    },
    /// Node → client: the objects are here; how many were fetched and their bytes.
    Fetched {
        objects: u64,
        bytes: u64,
    },
    /// Client → node: run this thunk on the peer at `to`: ship it and the inputs the peer
    /// lacks, have the peer evaluate it. Answered with the peer's EVALUATED or EVAL-FAILED.
    Relocate {
        to: ([u8; 4], u16),
        thunk: Handle,
    },
    /// Client → node: which of these thunks has the node's memo a value for?
    Recall {
        thunks: Vec<Handle>,
    },
    /// Node → client: `(thunk, value)` for each one remembered, in the order asked.
    Recalled {
        entries: Vec<(Handle, Handle)>,
    },
    /// Client → node: read every object the node's disk holds and check it against its handle
    /// (administration; docs/STORE.md, "Scrub").
    Scrub,
    /// Node → client: what a scrub checked: objects and their bytes; how many were damaged
    /// (each is dropped from the store: never served) and the first of them; and how many it
    /// could not read for want of memory.
    Scrubbed {
        checked: u64,
        bytes: u64,
        damaged_total: u64,
        damaged: Vec<Handle>,
        /// Damaged objects held again: written back from memory or fetched from a peer.
        restored: u64,
        unchecked: u64,
    },
    /// Client → node: keep this object on the node's disk through every collection, with
    /// everything it reaches (administration; docs/STORE.md, "Space").
    Pin {
        handle: Handle,
    },
    /// Client → node: let a pinned object go at the next collection (if nothing else keeps it).
    Unpin {
        handle: Handle,
    },
    /// Node → client: the object is now pinned (or not), durably.
    Pinned {
        handle: Handle,
        pinned: bool,
    },
    /// Client → node: forget the objects on the disk that nothing keeps (with a goal in bytes,
    /// the least recently used first until that much is forgotten; 0: all of them), then
    /// compact the log (administration).
    Gc {
        goal: u64,
    },
    /// Node → client: what a collection forgot and what its compaction gave back.
    Collected {
        objects: u64,
        bytes: u64,
        /// Objects the disk still holds.
        kept: u64,
        /// Bytes of live objects the compaction copied.
        copied_bytes: u64,
        /// Bytes of log given back to the ring.
        reclaimed: u64,
        /// Bytes the disk can take now.
        free: u64,
    },
    /// Client → node: evaluate the thunk `root` across this node's cluster, this node
    /// coordinating (docs/SCHEDULER.md, "Nodes coordinate"). The job's objects must be on this
    /// node already. `placement`: 0 locality, 1 min-absent, 2 random.
    Coordinate {
        root: Handle,
        placement: u8,
        verify: bool,
        spread: bool,
        seed: u64,
    },
    /// Node → client: the job's value (stored on the coordinating node), and its report as
    /// `key=value` lines.
    Coordinated {
        result: Handle,
        report: String,
    },
    /// Client → node: the spans the node recorded from sequence number `since` on
    /// (docs/TRACES.md); administration.
    Trace {
        since: u64,
    },
    /// Node → client: the node's clock now (microseconds since it booted), the sequence number
    /// after the last span given (ask from there for more), how many spans from `since` on were
    /// lost (written over), and the spans, at most one frame of them.
    Traced {
        now_us: u64,
        next: u64,
        lost: u64,
        spans: Vec<trace::Span>,
    },
    /// Either way: the request (or the connection, for request id 0) failed.
    Error {
        code: ErrorCode,
        message: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// The frame could not be decoded; the node closes the connection after saying so.
    BadFrame = 1,
    /// The object's bytes do not have the name the client claimed.
    WrongHash = 2,
    NotFound = 3,
    StoreFull = 4,
    /// A message the receiver does not accept here (e.g. a chunk without a begin).
    Unexpected = 5,
    Internal = 6,
    /// The node will not serve this connection now (a ceiling on connections: too many from
    /// one client, or closed while idle to make room); the node closes it after saying so.
    Busy = 7,
    /// The key this connection authenticated with may not make this request (a peer key asking
    /// for an IO job, a replay, a journal import or statistics), or is not authorized at all.
    Forbidden = 8,
}

impl ErrorCode {
    fn from_u16(v: u16) -> Option<ErrorCode> {
        [
            ErrorCode::BadFrame,
            ErrorCode::WrongHash,
            ErrorCode::NotFound,
            ErrorCode::StoreFull,
            ErrorCode::Unexpected,
            ErrorCode::Internal,
            ErrorCode::Busy,
            ErrorCode::Forbidden,
        ]
        .into_iter()
        .find(|c| *c as u16 == v)
    }
}

/// One frame: a message and the request it belongs to (replies echo the request's id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub request: u32,
    pub message: Message,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProtoError {
    /// The length field says more than [`MAX_FRAME`] (or less than the fixed header).
    BadLength {
        len: u32,
    },
    BadVersion {
        version: u8,
    },
    UnknownType {
        kind: u8,
    },
    /// Flags are reserved and must be zero.
    BadFlags {
        flags: u16,
    },
    /// The payload does not have the shape its type requires; `at` is the payload offset.
    Malformed {
        kind: u8,
        at: usize,
        what: &'static str,
    },
    BadHandle {
        kind: u8,
        at: usize,
        error: cairn_object::DecodeError,
    },
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::BadLength { len } => {
                write!(f, "frame length {len} is outside 8..={MAX_FRAME}")
            }
            ProtoError::BadVersion { version } => {
                write!(f, "protocol version {version} is not supported (this side speaks {VERSION})")
            }
            ProtoError::UnknownType { kind } => write!(f, "unknown message type {kind:#04x}"),
            ProtoError::BadFlags { flags } => write!(f, "reserved flags {flags:#06x} must be zero"),
            ProtoError::Malformed { kind, at, what } => {
                write!(f, "message {kind:#04x}, payload byte {at}: {what}")
            }
            ProtoError::BadHandle { kind, at, error } => {
                write!(f, "message {kind:#04x}, payload byte {at}: {error}")
            }
        }
    }
}

impl core::error::Error for ProtoError {}

pub mod admission;
mod codec;
pub mod secure;
pub mod session;
pub mod trace;
pub use codec::{decode, encode};

#[cfg(test)]
mod admin_decoding_tests;
#[cfg(test)]
mod fake_node;
#[cfg(test)]
mod secure_tests;
#[cfg(test)]
mod tests;
