//! Frames to bytes and back (docs/PROTOCOL.md, "Frames" and "Messages").

use alloc::string::String;
use alloc::vec::Vec;

use cairn_object::Handle;

use crate::{ErrorCode, Frame, HEADER, MAX_CHUNK, MAX_FRAME, MAX_TEXT, Message, ProtoError, VERSION};

mod kind {
    pub const HELLO: u8 = 0x01;
    pub const HAVE: u8 = 0x02;
    pub const PUT: u8 = 0x03;
    pub const PUT_BEGIN: u8 = 0x04;
    pub const PUT_CHUNK: u8 = 0x05;
    pub const GET: u8 = 0x06;
    pub const EVAL: u8 = 0x07;
    pub const STATS: u8 = 0x08;
    pub const SUBMIT: u8 = 0x09;
    pub const REPLAY: u8 = 0x0a;
    pub const JOURNAL: u8 = 0x0b;
    pub const FETCH: u8 = 0x0c;
    pub const RECALL: u8 = 0x0d;
    pub const EVAL_FRESH: u8 = 0x0e;
    pub const RELOCATE: u8 = 0x0f;
    pub const SCRUB: u8 = 0x10;
    pub const PIN: u8 = 0x11;
    pub const UNPIN: u8 = 0x12;
    pub const GC: u8 = 0x13;
    pub const COORDINATE: u8 = 0x14;
    pub const TRACE: u8 = 0x15;
    pub const WELCOME: u8 = 0x81;
    pub const MISSING: u8 = 0x82;
    pub const STORED: u8 = 0x83;
    pub const OBJECT: u8 = 0x86;
    pub const OBJECT_BEGIN: u8 = 0x87;
    pub const OBJECT_CHUNK: u8 = 0x88;
    pub const EVALUATED: u8 = 0x89;
    pub const EVAL_FAILED: u8 = 0x8a;
    pub const STATS_REPLY: u8 = 0x8b;
    pub const JOB_DONE: u8 = 0x8c;
    pub const JOB_FAILED: u8 = 0x8d;
    pub const REPLAYED: u8 = 0x8e;
    pub const FETCHED: u8 = 0x8f;
    pub const RECALLED: u8 = 0x90;
    pub const SCRUBBED: u8 = 0x91;
    pub const PINNED: u8 = 0x92;
    pub const COLLECTED: u8 = 0x93;
    pub const COORDINATED: u8 = 0x94;
    pub const TRACED: u8 = 0x95;
    pub const ERROR: u8 = 0xff;
}

fn kind_of(message: &Message) -> u8 {
    match message {
        Message::Hello { .. } => kind::HELLO,
        Message::Welcome { .. } => kind::WELCOME,
        Message::Have { .. } => kind::HAVE,
        Message::Missing { .. } => kind::MISSING,
        Message::Put { .. } => kind::PUT,
        Message::PutBegin { .. } => kind::PUT_BEGIN,
        Message::PutChunk { .. } => kind::PUT_CHUNK,
        Message::Stored { .. } => kind::STORED,
        Message::Get { .. } => kind::GET,
        Message::Object { .. } => kind::OBJECT,
        Message::ObjectBegin { .. } => kind::OBJECT_BEGIN,
        Message::ObjectChunk { .. } => kind::OBJECT_CHUNK,
        Message::Eval { .. } => kind::EVAL,
        Message::EvalFresh { .. } => kind::EVAL_FRESH,
        Message::Evaluated { .. } => kind::EVALUATED,
        Message::EvalFailed { .. } => kind::EVAL_FAILED,
        Message::Stats => kind::STATS,
        Message::StatsReply { .. } => kind::STATS_REPLY,
        Message::Error { .. } => kind::ERROR,
        Message::Submit { .. } => kind::SUBMIT,
        Message::JobDone { .. } => kind::JOB_DONE,
        Message::JobFailed { .. } => kind::JOB_FAILED,
        Message::Replay { .. } => kind::REPLAY,
        Message::Replayed { .. } => kind::REPLAYED,
        Message::Journal { .. } => kind::JOURNAL,
        Message::Fetch { .. } => kind::FETCH,
        Message::Relocate { .. } => kind::RELOCATE,
        Message::Fetched { .. } => kind::FETCHED,
        Message::Recall { .. } => kind::RECALL,
        Message::Recalled { .. } => kind::RECALLED,
        Message::Scrub => kind::SCRUB,
        Message::Scrubbed { .. } => kind::SCRUBBED,
        Message::Pin { .. } => kind::PIN,
        Message::Unpin { .. } => kind::UNPIN,
        Message::Pinned { .. } => kind::PINNED,
        Message::Gc { .. } => kind::GC,
        Message::Collected { .. } => kind::COLLECTED,
        Message::Coordinate { .. } => kind::COORDINATE,
        Message::Coordinated { .. } => kind::COORDINATED,
        Message::Trace { .. } => kind::TRACE,
        Message::Traced { .. } => kind::TRACED,
    }
}

/// Appends a text field of at most [`MAX_TEXT`] bytes: a longer one (a task's failure message,
/// escaped, can be longer) is cut at a character boundary and says so, rather than making a
/// frame the receiver must reject.
fn put_text(out: &mut Vec<u8>, text: &str) {
    if text.len() <= MAX_TEXT {
        out.extend_from_slice(text.as_bytes());
        return;
    }
    const MARK: &str = " [cut: ";
    let note = alloc::format!("{MARK}{} bytes]", text.len());
    let mut end = MAX_TEXT - note.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&text.as_bytes()[..end]);
    out.extend_from_slice(note.as_bytes());
}

/// Appends `frame` to `out`. Objects larger than `MAX_INLINE` must be chunked, and lists
/// bounded, by the caller; should one not be, the frame becomes `ERROR internal` rather than
/// one the receiver must refuse, and nothing panics.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.push(VERSION);
    out.push(kind_of(&frame.message));
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&frame.request.to_le_bytes());
    match &frame.message {
        Message::Hello { client: text } | Message::StatsReply { text } => {
            out.extend_from_slice(text.as_bytes())
        }
        Message::Welcome { version, node_id, max_frame, offers } => {
            out.push(*version);
            out.extend_from_slice(node_id);
            out.extend_from_slice(&max_frame.to_le_bytes());
            out.extend_from_slice(&offers.to_le_bytes());
        }
        Message::Fetch { from: (ip, port), handles } => {
            out.extend_from_slice(ip);
            out.extend_from_slice(&port.to_le_bytes());
            for h in handles {
                out.extend_from_slice(h.as_bytes());
            }
        }
        Message::Relocate { to: (ip, port), thunk } => {
            out.extend_from_slice(ip);
            out.extend_from_slice(&port.to_le_bytes());
            out.extend_from_slice(thunk.as_bytes());
        }
        Message::Fetched { objects, bytes } => {
            out.extend_from_slice(&objects.to_le_bytes());
            out.extend_from_slice(&bytes.to_le_bytes());
        }
        Message::Recalled { entries } => {
            for (thunk, value) in entries {
                out.extend_from_slice(thunk.as_bytes());
                out.extend_from_slice(value.as_bytes());
            }
        }
        Message::Recall { thunks: handles } | Message::Have { handles } | Message::Missing { handles } => {
            for h in handles {
                out.extend_from_slice(h.as_bytes());
            }
        }
        Message::Put { handle, bytes } | Message::Object { handle, bytes } => {
            out.extend_from_slice(handle.as_bytes());
            out.extend_from_slice(bytes);
        }
        Message::PutBegin { handle, len } | Message::ObjectBegin { handle, len } => {
            out.extend_from_slice(handle.as_bytes());
            out.extend_from_slice(&len.to_le_bytes());
        }
        Message::PutChunk { offset, bytes } | Message::ObjectChunk { offset, bytes } => {
            out.extend_from_slice(&offset.to_le_bytes());
            out.extend_from_slice(bytes);
        }
        Message::Stored { handle }
        | Message::Get { handle }
        | Message::Eval { handle }
        | Message::EvalFresh { handle }
        | Message::Submit { job: handle }
        | Message::Replay { handle }
        | Message::Journal { journal: handle }
        | Message::Pin { handle }
        | Message::Unpin { handle } => out.extend_from_slice(handle.as_bytes()),
        Message::Pinned { handle, pinned } => {
            out.extend_from_slice(handle.as_bytes());
            out.push(u8::from(*pinned));
        }
        Message::Gc { goal } => out.extend_from_slice(&goal.to_le_bytes()),
        Message::Collected { objects, bytes, kept, copied_bytes, reclaimed, free } => {
            for v in [objects, bytes, kept, copied_bytes, reclaimed, free] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        Message::JobDone { job, journal, result } => {
            for h in [job, journal, result] {
                out.extend_from_slice(h.as_bytes());
            }
        }
        Message::JobFailed { job, journal, thunk, failure } => {
            for h in [job, journal, thunk] {
                out.extend_from_slice(h.as_bytes());
            }
            put_text(out, failure);
        }
        Message::Replayed { job, journal, result, recorded } => {
            for h in [job, journal, result] {
                out.extend_from_slice(h.as_bytes());
            }
            if let Some(recorded) = recorded {
                out.extend_from_slice(recorded.as_bytes());
            }
        }
        Message::Evaluated { result, tasks_run, memo_hits, micros } => {
            out.extend_from_slice(result.as_bytes());
            for v in [tasks_run, memo_hits, micros] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        Message::EvalFailed { thunk, failure } => {
            out.extend_from_slice(thunk.as_bytes());
            put_text(out, failure);
        }
        Message::Scrubbed { checked, bytes, damaged_total, damaged, restored, unchecked } => {
            for v in [checked, bytes, damaged_total, restored, unchecked] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            for h in damaged {
                out.extend_from_slice(h.as_bytes());
            }
        }
        Message::Coordinate { root, placement, verify, spread, seed } => {
            out.extend_from_slice(root.as_bytes());
            out.push(*placement);
            out.push(u8::from(*verify) | (u8::from(*spread) << 1));
            out.extend_from_slice(&seed.to_le_bytes());
        }
        Message::Coordinated { result, report } => {
            out.extend_from_slice(result.as_bytes());
            put_text(out, report);
        }
        Message::Trace { since } => out.extend_from_slice(&since.to_le_bytes()),
        Message::Traced { now_us, next, lost, spans } => {
            for v in [now_us, next, lost] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            for span in spans {
                crate::trace::encode_span(span, out);
            }
        }
        Message::Stats | Message::Scrub => {}
        Message::Error { code, message } => {
            out.extend_from_slice(&(*code as u16).to_le_bytes());
            put_text(out, message);
        }
    }
    let len = out.len() - start - 4;
    if len > MAX_FRAME {
        // A caller should have chunked or bounded it; the peer must still get a frame it can
        // decode, so it gets this one instead of one it would refuse (and no one panics).
        out.truncate(start);
        let message = "the answer would not fit in one frame".into();
        return encode(
            &Frame { request: frame.request, message: Message::Error { code: ErrorCode::Internal, message } },
            out,
        );
    }
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
}

/// Decodes the first frame in `buf`: `Ok(None)` if more bytes are needed, else the frame and
/// how many bytes it took. A length field out of bounds is an error as soon as it arrives.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, ProtoError> {
    let Some(len_bytes) = buf.get(..4) else { return Ok(None) };
    let len = u32::from_le_bytes(len_bytes.try_into().expect("4 bytes"));
    if (len as usize) < HEADER - 4 || len as usize > MAX_FRAME {
        return Err(ProtoError::BadLength { len });
    }
    let total = 4 + len as usize;
    let Some(frame) = buf.get(..total) else { return Ok(None) };
    let (kind, request) = check_header(frame)?;
    let message = Payload { kind, bytes: &frame[HEADER..] }.message()?;
    Ok(Some((Frame { request, message }, total)))
}

/// Version and flags checked, the type and request id of a frame whose header is in `frame`.
fn check_header(frame: &[u8]) -> Result<(u8, u32), ProtoError> {
    let (version, kind, flags) = (frame[4], frame[5], u16::from_le_bytes([frame[6], frame[7]]));
    if version != VERSION {
        return Err(ProtoError::BadVersion { version });
    }
    if flags != 0 {
        return Err(ProtoError::BadFlags { flags });
    }
    Ok((kind, u32::from_le_bytes(frame[8..12].try_into().expect("4 bytes"))))
}

/// Bytes of a PUT-CHUNK frame before its object bytes: the header and the offset.
pub(crate) const CHUNK_HEAD: usize = HEADER + 8;

/// What the first bytes of a frame say about it, for streaming a PUT-CHUNK's bytes straight to
/// where they go instead of collecting the whole frame first.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Peek {
    NeedMore,
    /// A PUT-CHUNK of `len` object bytes for `offset` follows the first [`CHUNK_HEAD`] bytes.
    PutChunk {
        request: u32,
        offset: u64,
        len: usize,
    },
    /// Any other frame: decode it whole.
    Other,
}

/// Looks at the start of a frame, with the same checks as [`decode`].
/// Whether the frame `buf` begins with is one a busy node answers (HELLO, HAVE, GET, and
/// PUT-BEGIN, whose bytes stream in): read from its header alone, without decoding it.
pub(crate) fn answerable_when_busy(buf: &[u8]) -> bool {
    matches!(buf.get(5), Some(&(kind::HELLO | kind::HAVE | kind::GET | kind::PUT_BEGIN)))
}

/// Whether the frame `buf` begins with is a GET (read from its header alone).
pub(crate) fn begins_with_get(buf: &[u8]) -> bool {
    buf.get(5) == Some(&kind::GET)
}

pub(crate) fn peek(buf: &[u8]) -> Result<Peek, ProtoError> {
    let Some(len_bytes) = buf.get(..4) else { return Ok(Peek::NeedMore) };
    let len = u32::from_le_bytes(len_bytes.try_into().expect("4 bytes"));
    if (len as usize) < HEADER - 4 || len as usize > MAX_FRAME {
        return Err(ProtoError::BadLength { len });
    }
    let Some(head) = buf.get(..HEADER) else { return Ok(Peek::NeedMore) };
    let (kind, request) = check_header(head)?;
    if kind != kind::PUT_CHUNK {
        return Ok(Peek::Other);
    }
    let payload = len as usize + 4 - HEADER;
    if payload < 8 {
        // Too short for an offset: let `decode` name the problem once the frame is whole.
        return Ok(Peek::Other);
    }
    if payload - 8 > MAX_CHUNK {
        return Err(ProtoError::Malformed { kind, at: 8 + MAX_CHUNK, what: "chunk is too large" });
    }
    let Some(offset) = buf.get(HEADER..CHUNK_HEAD) else { return Ok(Peek::NeedMore) };
    Ok(Peek::PutChunk {
        request,
        offset: u64::from_le_bytes(offset.try_into().expect("8 bytes")),
        len: payload - 8,
    })
}

/// An error found in a part of a payload that starts `by` bytes in.
fn shift(error: ProtoError, by: usize) -> ProtoError {
    match error {
        ProtoError::Malformed { kind, at, what } => ProtoError::Malformed { kind, at: at + by, what },
        ProtoError::BadHandle { kind, at, error } => ProtoError::BadHandle { kind, at: at + by, error },
        other => other,
    }
}

struct Payload<'a> {
    kind: u8,
    bytes: &'a [u8],
}

impl Payload<'_> {
    fn malformed(&self, at: usize, what: &'static str) -> ProtoError {
        ProtoError::Malformed { kind: self.kind, at, what }
    }

    fn exact(&self, len: usize) -> Result<(), ProtoError> {
        if self.bytes.len() == len {
            Ok(())
        } else {
            Err(self.malformed(self.bytes.len().min(len), "payload has the wrong length"))
        }
    }

    fn handle(&self, at: usize) -> Result<Handle, ProtoError> {
        let bytes = self
            .bytes
            .get(at..at + Handle::LEN)
            .ok_or_else(|| self.malformed(at, "expected a 40-byte handle"))?;
        Handle::from_bytes(bytes).map_err(|error| ProtoError::BadHandle {
            kind: self.kind,
            at: at + error.at,
            error,
        })
    }

    fn u64_at(&self, at: usize) -> Result<u64, ProtoError> {
        let bytes = self.bytes.get(at..at + 8).ok_or_else(|| self.malformed(at, "expected 8 bytes"))?;
        Ok(u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
    }

    fn text(&self, at: usize, max: usize) -> Result<String, ProtoError> {
        let bytes = &self.bytes[at.min(self.bytes.len())..];
        if bytes.len() > max {
            return Err(self.malformed(at + max, "text is too long"));
        }
        core::str::from_utf8(bytes)
            .map(String::from)
            .map_err(|e| self.malformed(at + e.valid_up_to(), "text is not UTF-8"))
    }

    fn handles(&self) -> Result<Vec<Handle>, ProtoError> {
        if !self.bytes.len().is_multiple_of(Handle::LEN) {
            return Err(self.malformed(
                self.bytes.len() - self.bytes.len() % Handle::LEN,
                "not a whole number of handles",
            ));
        }
        (0..self.bytes.len() / Handle::LEN).map(|i| self.handle(i * Handle::LEN)).collect()
    }

    fn chunk(&self) -> Result<(u64, Vec<u8>), ProtoError> {
        let offset = self.u64_at(0)?;
        if self.bytes.len() - 8 > MAX_CHUNK {
            return Err(self.malformed(8 + MAX_CHUNK, "chunk is too large"));
        }
        Ok((offset, self.bytes[8..].to_vec()))
    }

    fn message(&self) -> Result<Message, ProtoError> {
        Ok(match self.kind {
            kind::HELLO => Message::Hello { client: self.text(0, 256)? },
            kind::WELCOME => {
                self.exact(1 + 32 + 4 + 8)?;
                Message::Welcome {
                    version: self.bytes[0],
                    node_id: self.bytes[1..33].try_into().expect("32 bytes"),
                    max_frame: u32::from_le_bytes(self.bytes[33..37].try_into().expect("4 bytes")),
                    offers: self.u64_at(37)?,
                }
            }
            kind::HAVE => Message::Have { handles: self.handles()? },
            kind::RECALL => Message::Recall { thunks: self.handles()? },
            kind::FETCH => {
                let head =
                    self.bytes.get(..6).ok_or_else(|| self.malformed(0, "expected an address and a port"))?;
                let from = ([head[0], head[1], head[2], head[3]], u16::from_le_bytes([head[4], head[5]]));
                let rest = Payload { kind: self.kind, bytes: &self.bytes[6..] };
                Message::Fetch { from, handles: rest.handles().map_err(|e| shift(e, 6))? }
            }
            kind::RELOCATE => {
                self.exact(6 + Handle::LEN)?;
                let to = (
                    [self.bytes[0], self.bytes[1], self.bytes[2], self.bytes[3]],
                    u16::from_le_bytes([self.bytes[4], self.bytes[5]]),
                );
                Message::Relocate { to, thunk: self.handle(6)? }
            }
            kind::FETCHED => {
                self.exact(16)?;
                Message::Fetched { objects: self.u64_at(0)?, bytes: self.u64_at(8)? }
            }
            kind::RECALLED => {
                let handles = self.handles()?;
                if handles.len() % 2 != 0 {
                    return Err(self.malformed(self.bytes.len(), "expected pairs of handles"));
                }
                Message::Recalled { entries: handles.chunks(2).map(|p| (p[0], p[1])).collect() }
            }
            kind::MISSING => Message::Missing { handles: self.handles()? },
            kind::PUT => Message::Put { handle: self.handle(0)?, bytes: self.bytes[Handle::LEN..].to_vec() },
            kind::OBJECT => {
                Message::Object { handle: self.handle(0)?, bytes: self.bytes[Handle::LEN..].to_vec() }
            }
            kind::PUT_BEGIN | kind::OBJECT_BEGIN => {
                self.exact(Handle::LEN + 8)?;
                let (handle, len) = (self.handle(0)?, self.u64_at(Handle::LEN)?);
                if !crate::length_fits(&handle, len) {
                    let why = if handle.kind() == cairn_object::Kind::Blob {
                        "length differs from the handle's size"
                    } else {
                        "length is not whole entries within the handle's footprint"
                    };
                    return Err(self.malformed(Handle::LEN, why));
                }
                if self.kind == kind::PUT_BEGIN {
                    Message::PutBegin { handle, len }
                } else {
                    Message::ObjectBegin { handle, len }
                }
            }
            kind::PUT_CHUNK => {
                let (offset, bytes) = self.chunk()?;
                Message::PutChunk { offset, bytes }
            }
            kind::OBJECT_CHUNK => {
                let (offset, bytes) = self.chunk()?;
                Message::ObjectChunk { offset, bytes }
            }
            kind::STORED
            | kind::GET
            | kind::EVAL
            | kind::EVAL_FRESH
            | kind::SUBMIT
            | kind::REPLAY
            | kind::JOURNAL
            | kind::PIN
            | kind::UNPIN => {
                self.exact(Handle::LEN)?;
                let handle = self.handle(0)?;
                match self.kind {
                    kind::PIN => Message::Pin { handle },
                    kind::UNPIN => Message::Unpin { handle },
                    kind::STORED => Message::Stored { handle },
                    kind::GET => Message::Get { handle },
                    kind::SUBMIT => Message::Submit { job: handle },
                    kind::REPLAY => Message::Replay { handle },
                    kind::JOURNAL => Message::Journal { journal: handle },
                    kind::EVAL_FRESH => Message::EvalFresh { handle },
                    _ => Message::Eval { handle },
                }
            }
            kind::JOB_DONE => {
                self.exact(3 * Handle::LEN)?;
                Message::JobDone { job: self.handle(0)?, journal: self.handle(40)?, result: self.handle(80)? }
            }
            kind::JOB_FAILED => Message::JobFailed {
                job: self.handle(0)?,
                journal: self.handle(40)?,
                thunk: self.handle(80)?,
                failure: self.text(120, MAX_TEXT)?,
            },
            kind::REPLAYED => {
                let recorded = match self.bytes.len() {
                    120 => None,
                    160 => Some(self.handle(120)?),
                    _ => return Err(self.malformed(self.bytes.len().min(120), "expected 3 or 4 handles")),
                };
                Message::Replayed {
                    job: self.handle(0)?,
                    journal: self.handle(40)?,
                    result: self.handle(80)?,
                    recorded,
                }
            }
            kind::EVALUATED => {
                self.exact(Handle::LEN + 24)?;
                Message::Evaluated {
                    result: self.handle(0)?,
                    tasks_run: self.u64_at(40)?,
                    memo_hits: self.u64_at(48)?,
                    micros: self.u64_at(56)?,
                }
            }
            kind::EVAL_FAILED => {
                Message::EvalFailed { thunk: self.handle(0)?, failure: self.text(Handle::LEN, MAX_TEXT)? }
            }
            kind::STATS | kind::SCRUB => {
                self.exact(0)?;
                if self.kind == kind::STATS { Message::Stats } else { Message::Scrub }
            }
            kind::PINNED => {
                self.exact(Handle::LEN + 1)?;
                let pinned = match self.bytes[Handle::LEN] {
                    0 => false,
                    1 => true,
                    _ => return Err(self.malformed(Handle::LEN, "expected 0 or 1")),
                };
                Message::Pinned { handle: self.handle(0)?, pinned }
            }
            kind::COORDINATE => {
                self.exact(Handle::LEN + 2 + 8)?;
                let placement = self.bytes[Handle::LEN];
                if placement > 2 {
                    return Err(self.malformed(Handle::LEN, "placement is 0, 1 or 2"));
                }
                let flags = self.bytes[Handle::LEN + 1];
                if flags & !0b11 != 0 {
                    return Err(self.malformed(Handle::LEN + 1, "unknown option flags"));
                }
                Message::Coordinate {
                    root: self.handle(0)?,
                    placement,
                    verify: flags & 1 != 0,
                    spread: flags & 2 != 0,
                    seed: self.u64_at(Handle::LEN + 2)?,
                }
            }
            kind::COORDINATED => {
                Message::Coordinated { result: self.handle(0)?, report: self.text(Handle::LEN, MAX_TEXT)? }
            }
            kind::TRACE => {
                self.exact(8)?;
                Message::Trace { since: self.u64_at(0)? }
            }
            kind::TRACED => {
                let spans = crate::trace::decode_spans(self.bytes.get(24..).unwrap_or_default())
                    .map_err(|what| self.malformed(24, what))?;
                Message::Traced {
                    now_us: self.u64_at(0)?,
                    next: self.u64_at(8)?,
                    lost: self.u64_at(16)?,
                    spans,
                }
            }
            kind::GC => {
                self.exact(8)?;
                Message::Gc { goal: self.u64_at(0)? }
            }
            kind::COLLECTED => {
                self.exact(48)?;
                Message::Collected {
                    objects: self.u64_at(0)?,
                    bytes: self.u64_at(8)?,
                    kept: self.u64_at(16)?,
                    copied_bytes: self.u64_at(24)?,
                    reclaimed: self.u64_at(32)?,
                    free: self.u64_at(40)?,
                }
            }
            kind::SCRUBBED => {
                let counts = self.bytes.get(..40).ok_or_else(|| self.malformed(0, "expected five counts"))?;
                let count =
                    |i: usize| u64::from_le_bytes(counts[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
                let rest = Payload { kind: self.kind, bytes: &self.bytes[40..] };
                let damaged = rest.handles().map_err(|e| shift(e, 40))?;
                if damaged.len() as u64 > count(2) {
                    return Err(self.malformed(40, "more damaged objects listed than counted"));
                }
                Message::Scrubbed {
                    checked: count(0),
                    bytes: count(1),
                    damaged_total: count(2),
                    damaged,
                    restored: count(3),
                    unchecked: count(4),
                }
            }
            kind::STATS_REPLY => Message::StatsReply { text: self.text(0, MAX_FRAME)? },
            kind::ERROR => {
                let code = self.bytes.get(..2).ok_or_else(|| self.malformed(0, "expected an error code"))?;
                let code = u16::from_le_bytes([code[0], code[1]]);
                let code =
                    ErrorCode::from_u16(code).ok_or_else(|| self.malformed(0, "unknown error code"))?;
                Message::Error { code, message: self.text(2, MAX_TEXT)? }
            }
            other => return Err(ProtoError::UnknownType { kind: other }),
        })
    }
}
