//! One client connection on the node's side, as a pure state machine: bytes in, bytes out.
//! The kernel moves bytes between it and a TCP socket; tests drive it directly.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use bytes::Bytes;
pub use cairn_channel::Role;
use cairn_object::Handle;
use cairn_object::store::StoreError;

use crate::codec::{CHUNK_HEAD, Peek, answerable_when_busy, begins_with_get, peek};
use crate::{ErrorCode, Frame, MAX_CHUNK, MAX_FRAME, MAX_INLINE, Message, VERSION, decode, encode, offers};

/// Memory an upload is written into, in order, which becomes the object's bytes without
/// another copy once every byte has been written.
pub trait UploadBuffer: Send {
    /// Writes `bytes` at `offset`; the session writes each byte exactly once, front to back.
    fn write_at(&mut self, offset: usize, bytes: &[u8]);
    /// The bytes, once all of them have been written.
    fn into_bytes(self: Box<Self>) -> Bytes;
    /// The bytes, and their BLAKE3 digest if the buffer computed it as they arrived (`None`:
    /// the store hashes them).
    fn into_bytes_and_digest(self: Box<Self>) -> (Bytes, Option<[u8; 32]>) {
        (self.into_bytes(), None)
    }
}

impl UploadBuffer for Vec<u8> {
    fn write_at(&mut self, offset: usize, bytes: &[u8]) {
        self[offset..offset + bytes.len()].copy_from_slice(bytes);
    }
    fn into_bytes(self: Box<Self>) -> Bytes {
        Bytes::from(*self)
    }
}

/// What a session needs from the node.
pub trait NodeApi {
    fn node_id(&self) -> [u8; 32];
    fn contains(&self, handle: &Handle) -> bool;
    fn get(&self, handle: &Handle) -> Option<Bytes>;
    /// Stores bytes only if they are the object `handle` names.
    fn put_verified(&mut self, handle: &Handle, bytes: Bytes) -> Result<(), StoreError>;
    /// Bytes the node could still store (for refusing an upload before it starts).
    fn room(&self) -> u64;
    /// Memory for an upload of `len` bytes, or None if the node cannot spare it.
    fn upload_buffer(&mut self, len: usize) -> Option<Box<dyn UploadBuffer>>;
    /// Stores a finished upload (a buffer from `upload_buffer`) if it is the object `handle` names.
    fn put_upload(&mut self, handle: &Handle, buffer: Box<dyn UploadBuffer>) -> Result<(), StoreError>;
    fn stats(&self) -> String;
    /// Remembers a stored journal as the latest of its job; the job's handle, or why not.
    fn adopt_journal(&mut self, journal: &Handle) -> Result<Handle, String>;
    /// The value the memo holds for `thunk`, if it remembers one.
    fn recall(&self, thunk: &Handle) -> Option<Handle>;
    /// Makes durable everything stored since the last commit (a node with a disk). The node
    /// calls it once a round, after every session has handled its input and before any answer
    /// goes out: one flush for every upload that finished in the round (group commit).
    fn commit(&mut self) -> Result<(), String> {
        Ok(())
    }
    /// Whether a download of `len` more bytes may start now. Downloads hold their objects
    /// until sent, even objects the store has since evicted, so a node bounds them together.
    fn may_download(&self, _len: u64) -> bool {
        true
    }
    /// True while the node is in the middle of an evaluation and can only read its store: the
    /// session then answers HELLO, HAVE and GET, takes uploads' bytes (`upload_buffer` must
    /// work) but stores them only later, and keeps everything else for later.
    fn busy(&self) -> bool {
        false
    }
    /// The spans recorded from `since` on, as a TRACED answer (docs/TRACES.md).
    fn trace(&self, since: u64) -> Message {
        let _ = since;
        Message::Error { code: ErrorCode::Unexpected, message: "this node records no trace".into() }
    }
}

/// Requests that take the node a while (evaluation, and anything that needs the network): the
/// session queues them, the node runs them when it can and answers through
/// [`Session::deliver`]. An EVAL is answered before anything the client sent after it; the
/// jobs are answered when they end, and later requests meanwhile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Work {
    /// With `fresh`, the memo is neither read nor written.
    Eval {
        handle: Handle,
        fresh: bool,
    },
    Submit {
        job: Handle,
    },
    Replay {
        handle: Handle,
    },
    Fetch {
        from: ([u8; 4], u16),
        handles: Vec<Handle>,
    },
    Relocate {
        to: ([u8; 4], u16),
        thunk: Handle,
    },
    /// Check every object on the node's disk (it reads them all: seconds per GiB).
    Scrub,
    /// Pin (or unpin) an object on the node's disk.
    Pin {
        handle: Handle,
        pinned: bool,
    },
    /// Collect and compact the node's disk.
    Gc {
        goal: u64,
    },
    /// Evaluate `root` across the node's cluster, the node coordinating.
    Coordinate {
        root: Handle,
        placement: u8,
        verify: bool,
        spread: bool,
        seed: u64,
    },
}

/// An upload in progress.
struct Upload {
    request: u32,
    handle: Handle,
    /// Bytes announced: the blob's size, or the tree's or thunk's encoding.
    len: usize,
    buffer: Box<dyn UploadBuffer>,
    filled: usize,
}

/// A download in progress: the object and how far it has been sent.
struct Download {
    request: u32,
    bytes: Bytes,
    sent: usize,
}

/// Pairs one RECALLED frame holds; a RECALL asking for more gets this many (the client asks
/// again for the rest).
const MAX_RECALLED: usize = (MAX_FRAME - 64) / (2 * Handle::LEN);

/// What one connection may hold on the node (docs/SECURITY.md, the `api_*` ceilings). Past
/// either, the session stops taking input until the client catches up: the node then stops
/// reading its socket, and TCP makes the client wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// Bytes of answers waiting to be sent (downloads not yet sent included).
    pub queue_bytes: usize,
    /// Bytes received and held behind work not answered yet (or while the node is busy).
    pub held_bytes: usize,
    /// Requests queued for the node and not answered yet.
    pub work: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits { queue_bytes: 1 << 20, held_bytes: 1 << 20, work: 8 }
    }
}

/// What a key of this role may not ask for, by name (docs/SECURITY.md, "Keys and roles"): a
/// peer does cluster work (objects, memo lookups, pure evaluation, fetches and relocation), never
/// IO jobs, replay, journal import or administration.
fn forbidden(role: Role, message: &Message) -> Option<&'static str> {
    match (role, message) {
        (Role::Client, _) => None,
        (Role::Peer, Message::Submit { .. }) => Some("SUBMIT (IO jobs)"),
        (Role::Peer, Message::Replay { .. }) => Some("REPLAY"),
        (Role::Peer, Message::Journal { .. }) => Some("JOURNAL (journal import)"),
        (Role::Peer, Message::Stats) => Some("STATS (administration)"),
        (Role::Peer, Message::Scrub) => Some("SCRUB (administration)"),
        (Role::Peer, Message::Pin { .. } | Message::Unpin { .. }) => Some("PIN and UNPIN (administration)"),
        (Role::Peer, Message::Gc { .. }) => Some("GC (administration)"),
        // A peer's coordination would have this node coordinate peers in turn: jobs come from
        // clients.
        (Role::Peer, Message::Coordinate { .. }) => Some("COORDINATE (cluster jobs)"),
        (Role::Peer, Message::Trace { .. }) => Some("TRACE (administration)"),
        (Role::Peer, _) => None,
    }
}

#[derive(Default)]
pub struct Session {
    limits: SessionLimits,
    /// What the connection's key may ask for (a client until the channel says otherwise).
    role: Role,
    input: Vec<u8>,
    /// Encoded frames not yet handed out; `output[sent..]` is what remains.
    output: Vec<u8>,
    sent: usize,
    upload: Option<Upload>,
    /// Bytes of the current PUT-CHUNK still to come; they go straight into the upload.
    chunk_left: usize,
    /// A refused PUT-BEGIN's request and the bytes it announced: the chunks the client sent
    /// behind it (before it could read the refusal) are dropped without a word, so that the
    /// connection goes on.
    refused_upload: Option<(u32, u64)>,
    downloads: VecDeque<Download>,
    work: VecDeque<(u32, Work)>,
    closing: bool,
    /// Bytes received but not handled yet: everything after an EVAL still out, or what a busy
    /// node cannot answer yet. [`Session::resume`] goes on with them.
    held: Vec<u8>,
    /// The request id of the EVAL the node is running for this session.
    awaiting: Option<u32>,
    /// Work queued and not yet answered.
    outstanding: usize,
    /// An upload whose bytes all arrived while the node was busy: stored once it is not.
    completed: Option<Upload>,
}

impl Session {
    pub fn new() -> Session {
        Session::default()
    }

    pub fn with_limits(limits: SessionLimits) -> Session {
        Session { limits, ..Session::default() }
    }

    /// Sets what the connection's key may ask for, once the channel has authenticated it.
    pub fn set_role(&mut self, role: Role) {
        self.role = role;
    }

    /// Bytes of answers not sent yet, the rest of every download included.
    pub fn pending_output(&self) -> usize {
        let downloads: usize = self.downloads.iter().map(|d| d.bytes.len() - d.sent).sum();
        self.output.len() - self.sent + downloads
    }

    /// Whether the node should hand this session more bytes now: not while it holds as much
    /// as it may behind unanswered work, nor while the client leaves its answers unread.
    pub fn accepts_input(&self) -> bool {
        !self.closing && self.held.len() < self.limits.held_bytes && !self.paused()
    }

    /// True while answers pile up unread or too much work is queued: frames wait.
    fn paused(&self) -> bool {
        self.pending_output() >= self.limits.queue_bytes || self.outstanding >= self.limits.work
    }

    /// The length of the upload in progress, if there is one (a node gives it a deadline).
    pub fn upload_len(&self) -> Option<usize> {
        self.upload.as_ref().map(|u| u.len)
    }

    /// True in the middle of a request: part of a frame, or an upload not yet complete. A
    /// connection then owes the node bytes, at a reasonable rate (the node's `api_min_rate`).
    pub fn mid_request(&self) -> bool {
        !self.input.is_empty() || self.upload.is_some() || self.chunk_left > 0
    }

    /// True once the session has said why it gives up; the caller closes the connection after
    /// the output is sent.
    pub fn closing(&self) -> bool {
        self.closing
    }

    /// True while work this session queued has not been answered: the node is the one taking
    /// its time, so the client is not idle.
    pub fn awaits_work(&self) -> bool {
        self.outstanding > 0
    }

    /// True while the session owes the client answers it has not produced yet: queued work, or
    /// input held back. A client that has closed its side still gets them.
    pub fn owes_answers(&self) -> bool {
        self.outstanding > 0 || !self.held.is_empty() || self.completed.is_some()
    }

    /// Takes bytes from the client and handles every whole frame among them that can be
    /// handled now (see [`Session::resume`]).
    ///
    /// Frames that arrive whole are decoded where they lie; a frame split across calls is
    /// collected (only its own bytes). During an upload, PUT-CHUNK payloads are copied once,
    /// straight into the upload's buffer. Work per call is linear in the bytes given.
    pub fn feed(&mut self, bytes: &[u8], node: &mut dyn NodeApi) {
        if self.holding() || !self.held.is_empty() {
            self.held.extend_from_slice(bytes);
            return self.resume(node);
        }
        self.handle_bytes(bytes, node);
    }

    /// Goes on with bytes held back, once the EVAL they wait for is answered or the node is no
    /// longer busy; the node calls this on every round.
    pub fn resume(&mut self, node: &mut dyn NodeApi) {
        if !node.busy()
            && let Some(upload) = self.completed.take()
        {
            let outcome = node.put_upload(&upload.handle, upload.buffer);
            self.stored(upload.request, upload.handle, outcome);
        }
        if self.held.is_empty() || self.holding() || self.paused() {
            return;
        }
        // Held bytes whose first frame must still wait stay where they are: taking and handing
        // them back would copy them all on every round.
        if self.upload.is_none() && !self.first_held_answerable(node) {
            return;
        }
        let held = core::mem::take(&mut self.held);
        self.handle_bytes(&held, node);
    }

    fn first_held_answerable(&self, node: &dyn NodeApi) -> bool {
        if node.busy() && !answerable_when_busy(&self.held) {
            return false;
        }
        if !begins_with_get(&self.held) {
            return true;
        }
        match decode(&self.held) {
            Ok(Some((frame, _))) => Self::answerable(&frame.message, node),
            _ => true,
        }
    }

    /// Whether input must wait: for an EVAL's answer, or for an upload that arrived while the
    /// node was busy to be stored.
    fn holding(&self) -> bool {
        self.awaiting.is_some() || self.completed.is_some()
    }

    /// Whether the node can handle this request now. A busy node still takes uploads: their
    /// bytes go into the upload's own buffer, and only storing the finished object waits.
    fn answerable(message: &Message, node: &dyn NodeApi) -> bool {
        if let Message::Get { handle } = message
            && handle.size() > MAX_INLINE as u64
            && !node.may_download(handle.size())
        {
            return false; // it waits until downloads in flight have gone out
        }
        !node.busy()
            || matches!(
                message,
                Message::Hello { .. } | Message::Have { .. } | Message::Get { .. } | Message::PutBegin { .. }
            )
    }

    fn handle_bytes(&mut self, mut bytes: &[u8], node: &mut dyn NodeApi) {
        while !self.closing && !bytes.is_empty() {
            // Between frames, wait while the client leaves its answers unread or has queued as
            // much work as it may: the rest waits, bounded by `accepts_input`.
            if self.holding() || (self.chunk_left == 0 && self.input.is_empty() && self.paused()) {
                self.held.extend_from_slice(bytes);
                return;
            }
            if self.chunk_left > 0 {
                let n = self.chunk_left.min(bytes.len());
                let upload = self.upload.as_mut().expect("a chunk belongs to an upload");
                upload.buffer.write_at(upload.filled, &bytes[..n]);
                upload.filled += n;
                self.chunk_left -= n;
                bytes = &bytes[n..];
                if self.chunk_left == 0 {
                    self.finish_upload_if_complete(node);
                }
                continue;
            }
            if self.upload.is_some() {
                // Collect just the chunk's head, then stream its payload.
                let want = CHUNK_HEAD.saturating_sub(self.input.len()).min(bytes.len());
                self.input.extend_from_slice(&bytes[..want]);
                bytes = &bytes[want..];
                match peek(&self.input) {
                    Ok(Peek::NeedMore) => continue,
                    Ok(Peek::PutChunk { request, offset, len }) => {
                        self.input.clear();
                        self.begin_chunk(request, offset, len, node);
                        continue;
                    }
                    Ok(Peek::Other) => {}
                    Err(e) => return self.fail(0, ErrorCode::BadFrame, e.to_string()),
                }
            }
            if self.input.is_empty() {
                // Whole frames straight from the bytes received; only a partial one is kept.
                match decode(bytes) {
                    Ok(Some((frame, _))) if !Self::answerable(&frame.message, node) => {
                        self.held.extend_from_slice(bytes);
                        return;
                    }
                    Ok(Some((frame, len))) => {
                        bytes = &bytes[len..];
                        self.handle(frame, node);
                    }
                    Ok(None) => {
                        self.input.extend_from_slice(bytes);
                        bytes = &[];
                    }
                    Err(e) => return self.fail(0, ErrorCode::BadFrame, e.to_string()),
                }
                continue;
            }
            // A frame begun earlier: add just the bytes it still lacks.
            let want = pending_need(&self.input).min(bytes.len());
            self.input.extend_from_slice(&bytes[..want]);
            bytes = &bytes[want..];
            match decode(&self.input) {
                Ok(Some((frame, _))) if !Self::answerable(&frame.message, node) => {
                    self.held.append(&mut self.input);
                    self.held.extend_from_slice(bytes);
                    return;
                }
                Ok(Some((frame, _))) => {
                    self.input.clear();
                    self.handle(frame, node);
                }
                Ok(None) => {}
                Err(e) => return self.fail(0, ErrorCode::BadFrame, e.to_string()),
            }
        }
    }

    fn begin_chunk(&mut self, request: u32, offset: u64, len: usize, node: &mut dyn NodeApi) {
        let upload = self.upload.as_ref().expect("called during an upload");
        let total = upload.buffer_len();
        if offset != upload.filled as u64 || offset + len as u64 > total as u64 {
            return self.fail(
                request,
                ErrorCode::Unexpected,
                format!("chunk at {offset} does not continue the upload"),
            );
        }
        self.chunk_left = len;
        if len == 0 {
            self.finish_upload_if_complete(node);
        }
    }

    fn finish_upload_if_complete(&mut self, node: &mut dyn NodeApi) {
        let Some(upload) = self.upload.as_mut() else { return };
        if upload.filled < upload.buffer_len() {
            return;
        }
        let upload = self.upload.take().expect("present");
        if node.busy() {
            self.completed = Some(upload);
            return;
        }
        let outcome = node.put_upload(&upload.handle, upload.buffer);
        self.stored(upload.request, upload.handle, outcome);
    }

    /// Up to `max` bytes to send next, streaming large objects chunk by chunk.
    pub fn output(&mut self, max: usize) -> Vec<u8> {
        if self.sent == self.output.len() {
            self.output.clear();
            self.sent = 0;
        }
        while self.output.len() - self.sent < max {
            let Some(download) = self.downloads.front_mut() else { break };
            let end = (download.sent + MAX_CHUNK).min(download.bytes.len());
            let chunk = Message::ObjectChunk {
                offset: download.sent as u64,
                bytes: download.bytes[download.sent..end].to_vec(),
            };
            let request = download.request;
            download.sent = end;
            if end == download.bytes.len() {
                self.downloads.pop_front();
            }
            self.send(request, chunk);
        }
        let n = max.min(self.output.len() - self.sent);
        let out = self.output[self.sent..self.sent + n].to_vec();
        self.sent += n;
        out
    }

    /// The next queued request for the node to run, with its request id.
    pub fn take_work(&mut self) -> Option<(u32, Work)> {
        self.work.pop_front()
    }

    fn queue(&mut self, request: u32, work: Work) {
        self.outstanding += 1;
        self.work.push_back((request, work));
    }

    /// The node's answer to queued work.
    pub fn deliver(&mut self, request: u32, message: Message) {
        if self.awaiting == Some(request) {
            self.awaiting = None;
        }
        self.outstanding = self.outstanding.saturating_sub(1);
        self.send(request, message);
    }

    /// Whether a large object is being sent: the client must read it at a reasonable pace, or
    /// it holds a download place (and the object) that others wait for.
    pub fn downloading(&self) -> bool {
        !self.downloads.is_empty()
    }

    pub fn has_output(&self) -> bool {
        self.sent < self.output.len() || !self.downloads.is_empty()
    }

    fn send(&mut self, request: u32, message: Message) {
        // Drop what has been handed out before appending, so the buffer does not grow.
        if self.sent > 0 {
            self.output.drain(..self.sent);
            self.sent = 0;
        }
        encode(&Frame { request, message }, &mut self.output);
    }

    fn error(&mut self, request: u32, code: ErrorCode, message: String) {
        self.send(request, Message::Error { code, message });
    }

    /// Closes the connection without a word (a client that never authenticated is told nothing).
    pub fn abandon(&mut self) {
        self.closing = true;
    }

    /// Says why the node will not serve this connection, then closes it once that is sent.
    pub fn refuse(&mut self, code: ErrorCode, message: String) {
        self.fail(0, code, message)
    }

    fn fail(&mut self, request: u32, code: ErrorCode, message: String) {
        self.error(request, code, message);
        self.closing = true;
    }

    fn handle(&mut self, frame: Frame, node: &mut dyn NodeApi) {
        let request = frame.request;
        if let Some((refused, left)) = self.refused_upload.take()
            && let Message::PutChunk { bytes, .. } = &frame.message
            && request == refused
            && bytes.len() as u64 <= left
        {
            let left = left - bytes.len() as u64;
            self.refused_upload = (left > 0).then_some((refused, left));
            return;
        }
        if self.upload.is_some() && !matches!(frame.message, Message::PutChunk { .. }) {
            return self.fail(
                request,
                ErrorCode::Unexpected,
                "an upload is in progress: only PUT-CHUNK may follow".into(),
            );
        }
        if let Some(what) = forbidden(self.role, &frame.message) {
            return self.error(request, ErrorCode::Forbidden, format!("a peer key may not ask for {what}"));
        }
        match frame.message {
            Message::Hello { .. } => self.send(
                request,
                Message::Welcome {
                    version: VERSION,
                    node_id: node.node_id(),
                    max_frame: MAX_FRAME as u32,
                    offers: offers::HAVE
                        | offers::PUT
                        | offers::GET
                        | offers::EVAL
                        | offers::STATS
                        | offers::JOBS
                        | offers::CLUSTER,
                },
            ),
            Message::Have { handles } => {
                let missing = handles.into_iter().filter(|h| !node.contains(h)).collect();
                self.send(request, Message::Missing { handles: missing });
            }
            Message::Put { handle, bytes } => self.store(request, handle, bytes, node),
            Message::PutBegin { handle, len } => {
                if len > node.room() {
                    self.refused_upload = Some((request, len));
                    return self.error(
                        request,
                        ErrorCode::StoreFull,
                        format!("store full: {len} bytes do not fit in the store"),
                    );
                }
                // The decoder checked that `len` can be the object's (`length_fits`), so a liar
                // only gets a mismatch at the end; the buffer is bounded by the store's room.
                let Some(buffer) = usize::try_from(len).ok().and_then(|len| node.upload_buffer(len)) else {
                    self.refused_upload = Some((request, len));
                    return self.error(
                        request,
                        ErrorCode::StoreFull,
                        format!("no memory for an upload of {len} bytes now"),
                    );
                };
                self.upload = Some(Upload { request, handle, len: len as usize, buffer, filled: 0 });
                if len == 0 {
                    self.finish_upload_if_complete(node);
                }
            }
            Message::PutChunk { .. } => {
                // Chunks inside an upload never reach here (see `feed`).
                self.fail(request, ErrorCode::Unexpected, "PUT-CHUNK without PUT-BEGIN".into())
            }
            Message::Get { handle } => match node.get(&handle) {
                None => self.error(request, ErrorCode::NotFound, format!("{handle} is not on this node")),
                Some(bytes) if bytes.len() <= MAX_INLINE => {
                    self.send(request, Message::Object { handle, bytes: bytes.to_vec() })
                }
                Some(bytes) => {
                    self.send(request, Message::ObjectBegin { handle, len: bytes.len() as u64 });
                    self.downloads.push_back(Download { request, bytes, sent: 0 });
                }
            },
            Message::Eval { handle } | Message::EvalFresh { handle } => {
                let fresh = matches!(frame.message, Message::EvalFresh { .. });
                self.queue(request, Work::Eval { handle, fresh });
                self.awaiting = Some(request);
            }
            Message::Stats => {
                let text = node.stats();
                self.send(request, Message::StatsReply { text });
            }
            Message::Trace { since } => {
                let answer = node.trace(since);
                self.send(request, answer);
            }
            Message::Submit { job } => self.queue(request, Work::Submit { job }),
            Message::Replay { handle } => self.queue(request, Work::Replay { handle }),
            Message::Fetch { from, handles } => self.queue(request, Work::Fetch { from, handles }),
            Message::Relocate { to, thunk } => self.queue(request, Work::Relocate { to, thunk }),
            Message::Scrub => self.queue(request, Work::Scrub),
            Message::Pin { handle } => self.queue(request, Work::Pin { handle, pinned: true }),
            Message::Unpin { handle } => self.queue(request, Work::Pin { handle, pinned: false }),
            Message::Gc { goal } => self.queue(request, Work::Gc { goal }),
            Message::Coordinate { root, placement, verify, spread, seed } => {
                self.queue(request, Work::Coordinate { root, placement, verify, spread, seed })
            }
            Message::Recall { thunks } => {
                // At most what one RECALLED frame holds (80 bytes a pair), each thunk once: a
                // RECALL of one thunk repeated must not make an answer larger than a frame.
                let mut entries: Vec<(Handle, Handle)> = Vec::new();
                let mut seen = alloc::collections::BTreeSet::new();
                for t in &thunks {
                    if entries.len() == MAX_RECALLED {
                        break;
                    }
                    if seen.insert(*t)
                        && let Some(v) = node.recall(t)
                    {
                        entries.push((*t, v));
                    }
                }
                self.send(request, Message::Recalled { entries });
            }
            Message::Journal { journal } => match node.adopt_journal(&journal) {
                Ok(_) => self.send(request, Message::Stored { handle: journal }),
                Err(why) => self.error(request, ErrorCode::NotFound, why),
            },
            _ => self.fail(
                request,
                ErrorCode::Unexpected,
                "that message goes from a node to a client, not to a node".into(),
            ),
        }
    }

    fn store(&mut self, request: u32, handle: Handle, bytes: Vec<u8>, node: &mut dyn NodeApi) {
        let outcome = node.put_verified(&handle, Bytes::from(bytes));
        self.stored(request, handle, outcome);
    }

    fn stored(&mut self, request: u32, handle: Handle, outcome: Result<(), StoreError>) {
        match outcome {
            Ok(()) => self.send(request, Message::Stored { handle }),
            Err(e @ StoreError::Full { .. }) => self.error(request, ErrorCode::StoreFull, e.to_string()),
            Err(e @ StoreError::Disk(_)) => self.error(request, ErrorCode::Internal, e.to_string()),
            Err(e) => self.error(request, ErrorCode::WrongHash, e.to_string()),
        }
    }
}

/// Bytes a partial frame in `input` still lacks: up to its length field, then up to its end.
fn pending_need(input: &[u8]) -> usize {
    match input.get(..4) {
        None => 4 - input.len(),
        Some(len) => (4 + u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize)
            .saturating_sub(input.len())
            .max(1),
    }
}

impl Upload {
    fn buffer_len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::fake_node::{FakeNode, node};
    use alloc::vec;
    use cairn_object::Kind;
    use cairn_object::store::{MemStore, Store};

    fn frames(messages: &[(u32, Message)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (request, message) in messages {
            encode(&Frame { request: *request, message: message.clone() }, &mut out);
        }
        out
    }

    /// A client streams an upload's chunks behind its PUT-BEGIN without waiting; when the
    /// node refuses the upload (no room), it drops those chunks and answers what follows.
    #[test]
    fn the_chunks_behind_a_refused_upload_are_dropped_and_the_connection_goes_on() {
        let mut s = Session::new();
        let mut n = FakeNode { store: MemStore::new(1000), busy: false };
        let big = vec![5u8; 3000];
        let handle = Handle::blob(&big);
        let mut requests = vec![(1, Message::PutBegin { handle, len: 3000 })];
        for (i, chunk) in big.chunks(1000).enumerate() {
            requests.push((1, Message::PutChunk { offset: i as u64 * 1000, bytes: chunk.to_vec() }));
        }
        requests.push((2, Message::Stats));
        // A chunk of a request never begun is still an error.
        requests.push((3, Message::PutChunk { offset: 0, bytes: vec![1] }));
        let replies = exchange(&mut s, &mut n, &frames(&requests));
        assert_eq!(replies.len(), 3, "{replies:?}");
        assert!(
            matches!(&replies[0].message, Message::Error { code: ErrorCode::StoreFull, .. }),
            "{replies:?}"
        );
        assert_eq!(
            (replies[1].request, &replies[1].message),
            (2, &Message::StatsReply { text: "objects=0".into() })
        );
        assert!(
            matches!(&replies[2].message, Message::Error { code: ErrorCode::Unexpected, .. }),
            "{replies:?}"
        );
    }

    /// Feeds bytes (in small pieces, as TCP may deliver them) and decodes every reply.
    fn exchange(session: &mut Session, node: &mut FakeNode, bytes: &[u8]) -> Vec<Frame> {
        for piece in bytes.chunks(777) {
            session.feed(piece, node);
        }
        let mut out = Vec::new();
        while session.has_output() {
            out.extend(session.output(64 * 1024));
        }
        let mut replies = Vec::new();
        let mut at = 0;
        while let Some((frame, used)) = decode(&out[at..]).unwrap() {
            replies.push(frame);
            at += used;
        }
        assert_eq!(at, out.len());
        replies
    }

    #[test]
    fn hello_have_put_get_stats() {
        let (mut s, mut n) = (Session::new(), node());
        let small = b"a small object, but not a literal one".to_vec();
        let h = Handle::blob(&small);
        let replies = exchange(
            &mut s,
            &mut n,
            &frames(&[
                (1, Message::Hello { client: "test".into() }),
                (2, Message::Have { handles: vec![h, Handle::blob(b"lit")] }),
                (3, Message::Put { handle: h, bytes: small.clone() }),
                (4, Message::Have { handles: vec![h] }),
                (5, Message::Get { handle: h }),
                (6, Message::Stats),
            ]),
        );
        assert!(
            matches!(replies[0].message, Message::Welcome { version: 1, node_id, .. } if node_id == [7; 32])
        );
        assert_eq!(
            replies[1].message,
            Message::Missing { handles: vec![h] },
            "literal blobs are never missing"
        );
        assert_eq!(replies[2], Frame { request: 3, message: Message::Stored { handle: h } });
        assert_eq!(replies[3].message, Message::Missing { handles: vec![] });
        assert_eq!(replies[4].message, Message::Object { handle: h, bytes: small });
        assert_eq!(replies[5].message, Message::StatsReply { text: "objects=1".into() });
        assert!(!s.closing());
    }

    #[test]
    fn wrong_hash_is_refused_and_nothing_is_stored() {
        let (mut s, mut n) = (Session::new(), node());
        let claimed = Handle::blob(&[1u8; 100]);
        let replies = exchange(
            &mut s,
            &mut n,
            &frames(&[(9, Message::Put { handle: claimed, bytes: vec![2u8; 100] })]),
        );
        assert!(
            matches!(&replies[0].message, Message::Error { code: ErrorCode::WrongHash, message } if message.contains("really"))
        );
        assert!(!n.store.contains(&claimed));
        assert!(!s.closing(), "a bad object is the client's problem, not the connection's");
    }

    #[test]
    fn large_objects_go_up_and_down_in_chunks() {
        let (mut s, mut n) = (Session::new(), node());
        let big: Vec<u8> = (0..(3 << 20) + 12345).map(|i: u32| (i % 253) as u8).collect();
        let h = Handle::blob(&big);
        let mut messages = vec![(1, Message::PutBegin { handle: h, len: big.len() as u64 })];
        for (i, chunk) in big.chunks(MAX_CHUNK).enumerate() {
            messages.push((1, Message::PutChunk { offset: (i * MAX_CHUNK) as u64, bytes: chunk.to_vec() }));
        }
        messages.push((2, Message::Get { handle: h }));
        let replies = exchange(&mut s, &mut n, &frames(&messages));
        assert_eq!(replies[0].message, Message::Stored { handle: h });
        assert_eq!(replies[1].message, Message::ObjectBegin { handle: h, len: big.len() as u64 });
        let mut got = Vec::new();
        for r in &replies[2..] {
            match &r.message {
                Message::ObjectChunk { offset, bytes } => {
                    assert_eq!(*offset as usize, got.len());
                    got.extend_from_slice(bytes);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(got == big);
    }

    #[test]
    fn trees_larger_than_a_frame_go_up_and_down_in_chunks() {
        // A tree's handle carries its footprint, not its encoding's length: the upload and the
        // download announce the encoding (whole entries, within the footprint).
        let (mut s, mut n) = (Session::new(), node());
        let entries: Vec<Handle> = (0..40_000u32).map(|i| Handle::blob(&i.to_le_bytes())).collect();
        let encoding = cairn_object::tree::encode(&entries);
        let h = cairn_object::store::name(Kind::Tree, &encoding).unwrap();
        assert!(encoding.len() > crate::MAX_FRAME && h.size() > encoding.len() as u64);
        let mut messages = vec![(1, Message::PutBegin { handle: h, len: encoding.len() as u64 })];
        for (i, chunk) in encoding.chunks(MAX_CHUNK).enumerate() {
            messages.push((1, Message::PutChunk { offset: (i * MAX_CHUNK) as u64, bytes: chunk.to_vec() }));
        }
        messages.push((2, Message::Get { handle: h }));
        let replies = exchange(&mut s, &mut n, &frames(&messages));
        assert_eq!(replies[0].message, Message::Stored { handle: h });
        assert_eq!(replies[1].message, Message::ObjectBegin { handle: h, len: encoding.len() as u64 });
        let got: Vec<u8> = replies[2..]
            .iter()
            .flat_map(|r| match &r.message {
                Message::ObjectChunk { bytes, .. } => bytes.clone(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert!(got == encoding);
        // A length that cannot be the tree's is refused by the decoder.
        assert!(!crate::length_fits(&h, encoding.len() as u64 + 1));
        assert!(!crate::length_fits(&h, h.size() + 40));
    }

    #[test]
    fn a_client_that_never_reads_its_answers_is_paused_and_loses_nothing() {
        // 501 GETs of a 1 MiB object, sent at once: the answers wait within the queue ceiling,
        // the requests behind them wait too, and every one is answered once the client reads.
        let limits = SessionLimits { queue_bytes: 4 << 20, held_bytes: 16 << 20, work: 64 };
        let (mut s, mut n) = (Session::with_limits(limits), node());
        let object: Vec<u8> = (0..MAX_INLINE as u32).map(|i| (i % 251) as u8).collect();
        let h = Handle::blob(&object);
        n.store.put_verified(&h, Bytes::from(object.clone())).unwrap();
        let gets = frames(&(0..501).map(|i| (i, Message::Get { handle: h })).collect::<Vec<_>>());
        for piece in gets.chunks(64 << 10) {
            assert!(s.accepts_input(), "a few GET frames fit behind the ceiling");
            s.feed(piece, &mut n);
        }
        assert!(s.pending_output() <= limits.queue_bytes + MAX_FRAME, "{}", s.pending_output());
        assert!(!s.accepts_input(), "paused while the answers are unread");
        let mut answered = 0;
        let mut input = Vec::new();
        while s.has_output() {
            input.extend(s.output(256 << 10));
            while let Ok(Some((frame, used))) = decode(&input) {
                assert_eq!(frame.message, Message::Object { handle: h, bytes: object.clone() });
                answered += 1;
                input.drain(..used);
            }
            s.resume(&mut n);
            assert!(s.pending_output() <= limits.queue_bytes + MAX_FRAME);
        }
        assert_eq!(answered, 501);
        assert!(s.accepts_input() && !s.closing());
    }

    #[test]
    fn bytes_behind_an_unanswered_eval_stop_at_the_held_ceiling() {
        let limits = SessionLimits { queue_bytes: 4 << 20, held_bytes: 1 << 20, work: 64 };
        let (mut s, mut n) = (Session::with_limits(limits), node());
        s.feed(&frames(&[(1, Message::Eval { handle: Handle::blob(b"x") })]), &mut n);
        assert!(s.take_work().is_some());
        let puts = frames(
            &(0..100u32)
                .map(|i| {
                    let bytes = vec![i as u8; 64 << 10];
                    (i + 2, Message::Put { handle: Handle::blob(&bytes), bytes })
                })
                .collect::<Vec<_>>(),
        );
        let mut fed = 0;
        for piece in puts.chunks(32 << 10) {
            if !s.accepts_input() {
                break;
            }
            s.feed(piece, &mut n);
            fed += piece.len();
        }
        assert!((1 << 20..(1 << 20) + (64 << 10)).contains(&fed), "the node stopped reading at {fed} bytes");
        // Once the EVAL is answered, the held requests go through in order.
        s.deliver(
            1,
            Message::Evaluated { result: Handle::blob(b"x"), tasks_run: 0, memo_hits: 0, micros: 0 },
        );
        s.resume(&mut n);
        let replies = {
            let out = s.output(usize::MAX);
            let mut frames = Vec::new();
            let mut rest = &out[..];
            while let Ok(Some((frame, used))) = decode(rest) {
                frames.push(frame);
                rest = &rest[used..];
            }
            frames
        };
        assert!(matches!(replies[0].message, Message::Evaluated { .. }));
        assert!(
            replies.len() > 10 && replies[1..].iter().all(|f| matches!(f.message, Message::Stored { .. }))
        );
        assert!(s.accepts_input());
    }

    #[test]
    fn queued_work_is_bounded_per_connection() {
        let limits = SessionLimits { queue_bytes: 4 << 20, held_bytes: 16 << 20, work: 8 };
        let (mut s, mut n) = (Session::with_limits(limits), node());
        let submits = frames(
            &(0..20).map(|i| (i, Message::Submit { job: Handle::blob(&[i as u8; 40]) })).collect::<Vec<_>>(),
        );
        s.feed(&submits, &mut n);
        let mut queued = 0;
        while s.take_work().is_some() {
            queued += 1;
        }
        assert_eq!(queued, 8, "no more than the ceiling in flight");
        assert!(!s.accepts_input());
        for i in 0..8 {
            s.deliver(i, Message::Error { code: ErrorCode::NotFound, message: "no".into() });
        }
        s.resume(&mut n);
        while s.take_work().is_some() {
            queued += 1;
        }
        assert_eq!(queued, 16);
    }

    #[test]
    fn a_recall_of_one_thunk_repeated_gets_an_answer_that_fits_a_frame() {
        let (mut s, mut n) = (Session::new(), node());
        let thunk = cairn_object::store::name(
            Kind::Thunk,
            &cairn_object::thunk::encode(cairn_object::Limits::new(4096).unwrap(), Handle::blob(b"p"), &[])
                .unwrap(),
        )
        .unwrap();
        let thunks = vec![thunk; (crate::MAX_FRAME - 64) / Handle::LEN];
        let replies = exchange(&mut s, &mut n, &frames(&[(1, Message::Recall { thunks })]));
        assert_eq!(
            replies[0].message,
            Message::Recalled { entries: vec![(thunk, Handle::blob(b"remembered"))] }
        );
        // Many distinct ones: as many as one frame holds.
        let many: Vec<Handle> = (0..20_000u32).map(thunk_like).collect();
        let replies = exchange(&mut s, &mut n, &frames(&[(2, Message::Recall { thunks: many })]));
        let Message::Recalled { entries } = &replies[0].message else { panic!("{:?}", replies[0]) };
        assert_eq!(entries.len(), MAX_RECALLED);
    }

    fn thunk_like(i: u32) -> Handle {
        let bytes = cairn_object::thunk::encode(
            cairn_object::Limits::new(4096).unwrap(),
            Handle::blob(&[i.to_le_bytes(); 10].concat()),
            &[],
        )
        .unwrap();
        cairn_object::store::name(Kind::Thunk, &bytes).unwrap()
    }

    #[test]
    fn held_bytes_a_busy_node_cannot_answer_yet_are_not_copied_on_every_round() {
        let (mut s, mut n) = (Session::new(), node());
        n.busy = true;
        let mut bytes = frames(&[(1, Message::Stats)]);
        bytes.extend(frames(&[(
            2,
            Message::Put { handle: Handle::blob(&[3; 500_000]), bytes: vec![3; 500_000] },
        )]));
        s.feed(&bytes, &mut n);
        assert_eq!(s.held.len(), bytes.len());
        let before = s.held.as_ptr();
        for _ in 0..100 {
            s.resume(&mut n);
        }
        assert_eq!(s.held.as_ptr(), before, "held bytes were moved");
        n.busy = false;
        s.resume(&mut n);
        assert!(s.held.is_empty());
        let out = s.output(usize::MAX);
        let (first, used) = decode(&out).unwrap().unwrap();
        assert!(matches!(first.message, Message::StatsReply { .. }));
        assert_eq!(
            decode(&out[used..]).unwrap().unwrap().0.message,
            Message::Stored { handle: Handle::blob(&[3; 500_000]) }
        );
    }

    fn upload_frames(big: &[u8], claimed: Handle) -> Vec<u8> {
        let mut messages = vec![(1, Message::PutBegin { handle: claimed, len: big.len() as u64 })];
        for (i, chunk) in big.chunks(MAX_CHUNK / 3).enumerate() {
            messages
                .push((1, Message::PutChunk { offset: (i * (MAX_CHUNK / 3)) as u64, bytes: chunk.to_vec() }));
        }
        messages.push((2, Message::Have { handles: vec![claimed] }));
        frames(&messages)
    }

    /// Feeds `bytes` in pieces of the given sizes (cycled), then collects the replies.
    fn exchange_in_pieces(
        session: &mut Session,
        node: &mut FakeNode,
        bytes: &[u8],
        sizes: &[usize],
    ) -> Vec<Frame> {
        let mut at = 0;
        for size in sizes.iter().cycle() {
            if at == bytes.len() {
                break;
            }
            let end = (at + size).min(bytes.len());
            session.feed(&bytes[at..end], node);
            at = end;
        }
        exchange(session, node, &[])
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// However TCP splits the stream (inside a chunk's head, between frames, a byte at a
        /// time), a streamed upload stores exactly the object, and the frame after it is handled.
        #[test]
        fn uploads_survive_any_split(sizes in proptest::collection::vec(1usize..70_000, 1..12), len in 0usize..800_000) {
            let big: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let h = Handle::blob(&big);
            let (mut s, mut n) = (Session::new(), node());
            let replies = exchange_in_pieces(&mut s, &mut n, &upload_frames(&big, h), &sizes);
            proptest::prop_assert_eq!(&replies[0].message, &Message::Stored { handle: h });
            proptest::prop_assert_eq!(&replies[1].message, &Message::Missing { handles: vec![] });
            proptest::prop_assert!(n.store.get(&h).unwrap()[..] == big[..]);
        }
    }

    proptest::proptest! {
        /// Arbitrary bytes, alone or after an upload has begun, never panic a session.
        #[test]
        fn sessions_never_panic_on_arbitrary_bytes(junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096), upload_first: bool, size in 1usize..300) {
            let h = Handle::blob(&[1u8; 3000]);
            let mut stream = if upload_first { frames(&[(1, Message::PutBegin { handle: h, len: 3000 })]) } else { Vec::new() };
            stream.extend_from_slice(&junk);
            let (mut s, mut n) = (Session::new(), node());
            exchange_in_pieces(&mut s, &mut n, &stream, &[size]);
        }
    }

    /// Thousands of uploads in one call are handled in a loop: the session used to recurse once
    /// per upload (and copy the rest of the input each time), which overflowed the stack here.
    #[test]
    fn many_uploads_in_one_call() {
        let mut messages = Vec::new();
        let mut handles = Vec::new();
        for i in 0..20_000u32 {
            let bytes = [&i.to_le_bytes()[..], &[7u8; 60][..]].concat();
            let h = Handle::blob(&bytes);
            messages.push((i, Message::PutBegin { handle: h, len: bytes.len() as u64 }));
            messages.push((i, Message::PutChunk { offset: 0, bytes }));
            handles.push(h);
        }
        let (mut s, mut n) = (Session::new(), FakeNode { store: MemStore::new(64 << 20), busy: false });
        let stream = frames(&messages);
        s.feed(&stream, &mut n);
        let replies = exchange(&mut s, &mut n, &[]);
        assert_eq!(replies.len(), 20_000);
        assert!(replies.iter().zip(&handles).all(|(r, h)| r.message == Message::Stored { handle: *h }));
        assert!(handles.iter().all(|h| n.store.contains(h)));
    }

    #[test]
    fn a_streamed_upload_with_the_wrong_name_is_refused() {
        let big = vec![9u8; 300_000];
        let claimed = Handle::blob(&vec![8u8; 300_000]);
        let (mut s, mut n) = (Session::new(), node());
        let replies = exchange_in_pieces(&mut s, &mut n, &upload_frames(&big, claimed), &[1, 19, 4096, 3]);
        assert!(
            matches!(&replies[0].message, Message::Error { code: ErrorCode::WrongHash, .. }),
            "{replies:?}"
        );
        assert_eq!(replies[1].message, Message::Missing { handles: vec![claimed] });
        assert!(!s.closing());
    }

    #[test]
    fn frames_other_than_chunks_during_an_upload_close_the_session() {
        let h = Handle::blob(&[5u8; 5000]);
        let (mut s, mut n) = (Session::new(), node());
        let replies = exchange(
            &mut s,
            &mut n,
            &frames(&[
                (1, Message::PutBegin { handle: h, len: 5000 }),
                (1, Message::PutChunk { offset: 0, bytes: vec![5; 1000] }),
                (2, Message::Stats),
            ]),
        );
        assert!(
            matches!(&replies[0].message, Message::Error { code: ErrorCode::Unexpected, message } if message.contains("upload"))
        );
        assert!(s.closing());
        // A chunk that runs past the object's end, and a chunk head with an impossible length.
        let (mut s, mut n) = (Session::new(), node());
        let replies = exchange(
            &mut s,
            &mut n,
            &frames(&[
                (1, Message::PutBegin { handle: h, len: 5000 }),
                (1, Message::PutChunk { offset: 0, bytes: vec![5; 5001] }),
            ]),
        );
        assert!(matches!(&replies[0].message, Message::Error { code: ErrorCode::Unexpected, .. }));
        let (mut s, mut n) = (Session::new(), node());
        let mut stream = frames(&[(1, Message::PutBegin { handle: h, len: 5000 })]);
        stream.extend_from_slice(&((MAX_FRAME as u32) + 1).to_le_bytes());
        let replies = exchange(&mut s, &mut n, &stream);
        assert!(
            matches!(&replies[0].message, Message::Error { code: ErrorCode::BadFrame, message } if message.contains("length"))
        );
        assert!(s.closing());
    }

    #[test]
    fn jobs_are_queued_for_the_node_and_answered_later_in_order_of_delivery() {
        let (mut s, mut n) = (Session::new(), node());
        let (job, other) = (Handle::blob(&[1u8; 50]), Handle::blob(&[2u8; 50]));
        let replies = exchange(
            &mut s,
            &mut n,
            &frames(&[
                (7, Message::Submit { job }),
                (8, Message::Replay { handle: other }),
                (9, Message::Stats),
                (10, Message::Journal { journal: other }),
                (11, Message::Relocate { to: ([10, 1, 0, 2], 7070), thunk: job }),
                (12, Message::Coordinate { root: job, placement: 2, verify: true, spread: false, seed: 9 }),
            ]),
        );
        // Only STATS and JOURNAL are answered at once; the jobs wait for the node.
        assert_eq!(replies.iter().map(|r| r.request).collect::<Vec<_>>(), [9, 10]);
        assert!(matches!(&replies[1].message, Message::Error { code: ErrorCode::NotFound, .. }));
        assert_eq!(s.take_work(), Some((7, Work::Submit { job })));
        assert_eq!(s.take_work(), Some((8, Work::Replay { handle: other })));
        assert_eq!(s.take_work(), Some((11, Work::Relocate { to: ([10, 1, 0, 2], 7070), thunk: job })));
        assert_eq!(
            s.take_work(),
            Some((12, Work::Coordinate { root: job, placement: 2, verify: true, spread: false, seed: 9 }))
        );
        assert_eq!(s.take_work(), None);
        assert!(s.owes_answers());
        let done = Message::JobDone { job, journal: other, result: job };
        s.deliver(7, done.clone());
        assert_eq!(exchange(&mut s, &mut n, &[]), [Frame { request: 7, message: done }]);
        s.deliver(8, Message::Stats);
        assert!(s.owes_answers(), "the RELOCATE is still out");
        s.deliver(11, Message::Stats);
        assert!(s.owes_answers(), "the COORDINATE is still out");
        s.deliver(12, Message::Stats);
        assert!(!s.owes_answers());
    }

    #[test]
    fn garbage_gets_an_error_and_the_session_closes() {
        let (mut s, mut n) = (Session::new(), node());
        let replies = exchange(&mut s, &mut n, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(matches!(&replies[0].message, Message::Error { code: ErrorCode::BadFrame, .. }));
        assert!(s.closing());
        // Nothing more is processed after that.
        assert!(exchange(&mut s, &mut n, &frames(&[(1, Message::Stats)])).is_empty());
    }

    #[test]
    fn out_of_order_chunks_and_stray_chunks_close_the_session() {
        let (mut s, mut n) = (Session::new(), node());
        let h = Handle::blob(&[5u8; 2000]);
        let replies = exchange(
            &mut s,
            &mut n,
            &frames(&[
                (1, Message::PutBegin { handle: h, len: 2000 }),
                (1, Message::PutChunk { offset: 1000, bytes: vec![5; 1000] }),
            ]),
        );
        assert!(matches!(&replies[0].message, Message::Error { code: ErrorCode::Unexpected, .. }));
        assert!(s.closing());
        let (mut s, mut n) = (Session::new(), node());
        let replies =
            exchange(&mut s, &mut n, &frames(&[(1, Message::PutChunk { offset: 0, bytes: vec![1] })]));
        assert!(matches!(&replies[0].message, Message::Error { code: ErrorCode::Unexpected, .. }));
    }

    #[test]
    fn uploads_larger_than_the_store_are_refused_up_front() {
        let (mut s, mut n) = (Session::new(), node());
        let h = Handle::blob(&[0u8; 64]);
        let fake_big = Handle::from_bytes(&{
            let mut b = *h.as_bytes();
            b[2..8].copy_from_slice(&(1u64 << 40).to_le_bytes()[..6]);
            b
        })
        .unwrap();
        let replies =
            exchange(&mut s, &mut n, &frames(&[(1, Message::PutBegin { handle: fake_big, len: 1 << 40 })]));
        assert!(matches!(&replies[0].message, Message::Error { code: ErrorCode::StoreFull, .. }));
    }

    #[test]
    fn an_eval_is_answered_before_anything_sent_after_it() {
        let (mut s, mut n) = (Session::new(), node());
        let b = Handle::blob(&[3u8; 40]);
        let replies = exchange(
            &mut s,
            &mut n,
            &frames(&[
                (1, Message::Stats),
                (2, Message::Eval { handle: b }),
                (3, Message::Stats),
                (4, Message::EvalFresh { handle: b }),
            ]),
        );
        assert_eq!(
            replies.iter().map(|r| r.request).collect::<Vec<_>>(),
            [1],
            "everything after the EVAL waits"
        );
        assert!(s.awaits_work(), "an EVAL queued, not answered: the client is not idle");
        assert_eq!(s.take_work(), Some((2, Work::Eval { handle: b, fresh: false })));
        let mut s2 = Session::new();
        assert!(!s2.awaits_work());
        exchange(&mut s2, &mut n, &frames(&[(1, Message::Eval { handle: b })]));
        assert!(s2.awaits_work(), "an EVAL taken but not answered: the client is not idle");
        s2.take_work();
        s2.deliver(1, Message::Evaluated { result: b, tasks_run: 0, memo_hits: 0, micros: 0 });
        assert!(!s2.awaits_work());
        assert_eq!(s.take_work(), None);
        // More input while the EVAL runs waits too.
        assert!(exchange(&mut s, &mut n, &frames(&[(5, Message::Stats)])).is_empty());
        let answer = Message::Evaluated { result: b, tasks_run: 1, memo_hits: 0, micros: 9 };
        s.deliver(2, answer.clone());
        s.resume(&mut n);
        let replies = exchange(&mut s, &mut n, &[]);
        assert_eq!(
            replies.iter().map(|r| r.request).collect::<Vec<_>>(),
            [2, 3],
            "the answer, then what came after it"
        );
        assert_eq!(replies[0].message, answer);
        assert_eq!(s.take_work(), Some((4, Work::Eval { handle: b, fresh: true })));
        let failed = Message::EvalFailed { thunk: b, failure: "no tasks here".into() };
        s.deliver(4, failed.clone());
        s.resume(&mut n);
        let replies = exchange(&mut s, &mut n, &[]);
        assert_eq!(
            replies.iter().map(|r| (r.request, r.message.clone())).collect::<Vec<_>>()[0],
            (4, failed)
        );
        assert_eq!(replies[1].request, 5);
    }

    #[test]
    fn a_busy_node_answers_reads_and_keeps_the_rest_in_order() {
        let (mut s, mut n) = (Session::new(), node());
        let small = b"stored before the node got busy, not a literal".to_vec();
        let h = Handle::blob(&small);
        n.store.put_verified(&h, Bytes::from(small.clone())).unwrap();
        n.busy = true;
        let other = b"put while busy: waits until the node is free".to_vec();
        let o = Handle::blob(&other);
        let input = frames(&[
            (1, Message::Hello { client: "peer".into() }),
            (2, Message::Get { handle: h }),
            (3, Message::Put { handle: o, bytes: other.clone() }),
            (4, Message::Get { handle: h }),
        ]);
        // Split anywhere: the PUT and what follows it wait, byte for byte.
        for cut in [1, 30, input.len() - 5] {
            let (mut s2, mut n2) = (Session::new(), node());
            n2.store.put_verified(&h, Bytes::from(small.clone())).unwrap();
            n2.busy = true;
            s2.feed(&input[..cut], &mut n2);
            s2.feed(&input[cut..], &mut n2);
            let replies = exchange(&mut s2, &mut n2, &[]);
            assert_eq!(replies.iter().map(|r| r.request).collect::<Vec<_>>(), [1, 2], "cut at {cut}");
            assert!(s2.owes_answers(), "the held PUT and GET are still owed");
            n2.busy = false;
            s2.resume(&mut n2);
            let replies = exchange(&mut s2, &mut n2, &[]);
            assert_eq!(replies.iter().map(|r| r.request).collect::<Vec<_>>(), [3, 4], "cut at {cut}");
            assert!(n2.store.contains(&o));
        }
        // A busy node takes an upload's bytes; storing it, and what follows, waits.
        n.busy = false;
        let big = vec![9u8; 3 * MAX_CHUNK + 10];
        let bh = Handle::blob(&big);
        let upload = upload_frames(&big, bh);
        s.feed(&upload[..100], &mut n);
        n.busy = true;
        s.feed(&upload[100..], &mut n);
        assert!(exchange(&mut s, &mut n, &[]).is_empty());
        assert!(s.owes_answers());
        assert!(!n.store.contains(&bh));
        s.resume(&mut n);
        assert!(exchange(&mut s, &mut n, &[]).is_empty(), "still busy");
        n.busy = false;
        s.resume(&mut n);
        let replies = exchange(&mut s, &mut n, &[]);
        assert_eq!(replies[0].message, Message::Stored { handle: bh });
        assert_eq!(
            replies[1].message,
            Message::Missing { handles: vec![] },
            "the HAVE after it comes after it"
        );
        assert!(!s.owes_answers());
        // An upload begun while busy streams too.
        let (mut s, mut n) = (Session::new(), node());
        n.busy = true;
        s.feed(&upload, &mut n);
        assert!(exchange(&mut s, &mut n, &[]).is_empty());
        n.busy = false;
        s.resume(&mut n);
        assert_eq!(exchange(&mut s, &mut n, &[])[0].message, Message::Stored { handle: bh });
    }
}
