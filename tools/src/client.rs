//! A client of the node API (docs/PROTOCOL.md) over TCP: every object received is checked
//! against its handle before it is handed back.
//!
//! Every answer is untrusted input: it must answer the request that was sent and name what was
//! asked, nothing is allocated by a size the node states beyond a fixed bound, and the node's
//! own words (its errors, a task's failure) are escaped wherever they become an error's text
//! ([`crate::untrusted`]), since errors end up on the user's terminal.

use std::fmt;
use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{Context, bail};
use cairn_object::Handle;
use cairn_proto::{ErrorCode, Frame, MAX_CHUNK, MAX_INLINE, Message, decode, encode};

use crate::secure::SecureStream;
use crate::untrusted::escape;

/// At most this much is reserved up front for a chunked download; beyond it the buffer grows
/// as chunks arrive, so a node that announces a large object and then stalls costs only what it
/// actually sent.
const MAX_RESERVE: u64 = 64 << 20;

/// The node answered a request with ERROR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub code: ErrorCode,
    /// The node's words, as sent: escape before showing (Display does).
    pub message: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the node refused: {} ({:?})", escape(&self.message), self.code)
    }
}

impl std::error::Error for Refused {}

/// The node reported that an evaluation failed (EVAL-FAILED or JOB-FAILED): the failing thunk
/// and why. The reason is the node's evaluator's text and carries the task's own words, so it
/// is escaped for display.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskFailed {
    pub thunk: Handle,
    /// As sent: escape before showing (Display does).
    pub failure: String,
}

impl fmt::Display for TaskFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {}", self.thunk, escape(&self.failure))
    }
}

impl std::error::Error for TaskFailed {}

/// The node sent a well-formed object, but not the one asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrongObject {
    pub asked: Handle,
    pub received: Handle,
}

impl fmt::Display for WrongObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the node sent the wrong object: asked for {}, received {}", self.asked, self.received)
    }
}

impl std::error::Error for WrongObject {}

pub struct Client {
    stream: SecureStream,
    buffer: Vec<u8>,
    next_request: u32,
}

/// How a job (or its replay) ended: its value, or the failing thunk and why.
pub struct JobOutcome {
    pub job: Handle,
    pub journal: Handle,
    pub result: Result<Handle, TaskFailed>,
    /// For a replay: the value the journal recorded (None if the job had failed).
    pub recorded: Option<Handle>,
}

/// What a node's collection did (docs/STORE.md, "Space").
#[derive(Debug, Clone, Copy)]
pub struct Collected {
    pub objects: u64,
    pub bytes: u64,
    pub kept: u64,
    pub copied_bytes: u64,
    pub reclaimed: u64,
    pub free: u64,
}

/// What a node's scrub found (docs/STORE.md, "Scrub").
#[derive(Debug)]
pub struct Scrubbed {
    pub checked: u64,
    pub bytes: u64,
    pub damaged_total: u64,
    /// The first of the damaged objects (the node names at most 1024).
    pub damaged: Vec<Handle>,
    /// Damaged objects the node holds again (from memory, or fetched from a peer).
    pub restored: u64,
    pub unchecked: u64,
}

#[derive(Debug)]
pub struct Evaluated {
    pub result: Handle,
    pub tasks_run: u64,
    pub memo_hits: u64,
    pub micros: u64,
}

/// PUTs of small objects a client sends ahead of their answers (see `upload_missing`).
const PIPELINED_PUTS: usize = 16;
/// Objects up to this size are pipelined; larger ones stream one at a time.
const PIPELINED_PUT_BYTES: usize = 64 * 1024;

impl Client {
    pub fn connect(address: &str) -> anyhow::Result<Client> {
        Self::over(SecureStream::connect(address)?)
    }

    /// A client over a secure stream already open (tests: another key, another node key).
    pub fn over(stream: SecureStream) -> anyhow::Result<Client> {
        // Long enough for a big job or evaluation to finish; a node that dies resets the
        // connection at once rather than timing out.
        stream.set_read_timeout(Some(Duration::from_secs(600)))?;
        let mut client = Client { stream, buffer: Vec::new(), next_request: 1 };
        match client.call(Message::Hello { client: "cairn".into() })? {
            Message::Welcome { version: 1, .. } => Ok(client),
            Message::Welcome { version, .. } => bail!("the node speaks protocol version {version}, not 1"),
            other => bail!("the node answered HELLO with {}", name(&other)),
        }
    }

    /// How long to wait for an answer before giving up on the node (600 s unless set).
    pub fn set_patience(&mut self, patience: Duration) -> anyhow::Result<()> {
        Ok(self.stream.set_read_timeout(Some(patience))?)
    }

    fn send(&mut self, request: u32, message: Message) -> anyhow::Result<()> {
        let mut bytes = Vec::new();
        encode(&Frame { request, message }, &mut bytes);
        self.stream.write_all(&bytes).context("the node closed the connection")
    }

    /// The next frame, which must answer `request` (or be about the whole connection: id 0).
    /// The buffer holds at most one frame and one read: `decode` refuses a length field over
    /// `MAX_FRAME` as soon as it arrives.
    fn receive(&mut self, request: u32) -> anyhow::Result<Frame> {
        loop {
            if let Some((frame, used)) = decode(&self.buffer).context("the node sent a malformed frame")? {
                self.buffer.drain(..used);
                if frame.request != request && frame.request != 0 {
                    bail!(
                        "the node answered request {} while request {request} was waiting ({})",
                        frame.request,
                        name(&frame.message)
                    );
                }
                if let Message::Error { code, message } = frame.message {
                    return Err(Refused { code, message }.into());
                }
                return Ok(frame);
            }
            let mut chunk = vec![0u8; 256 * 1024];
            let n = self.stream.read(&mut chunk).context("reading from the node")?;
            if n == 0 {
                bail!("the node closed the connection");
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    /// A fresh request id. Never 0, which answers are about the whole connection.
    fn next_id(&mut self) -> u32 {
        let request = self.next_request;
        self.next_request = self.next_request.checked_add(1).unwrap_or(1);
        request
    }

    fn call(&mut self, message: Message) -> anyhow::Result<Message> {
        let request = self.next_id();
        self.send(request, message)?;
        Ok(self.receive(request)?.message)
    }

    pub fn missing(&mut self, handles: &[Handle]) -> anyhow::Result<Vec<Handle>> {
        match self.call(Message::Have { handles: handles.to_vec() })? {
            // The protocol answers with those asked about that it lacks, in the order asked.
            Message::Missing { handles: missing } if in_order_among(&missing, handles) => Ok(missing),
            Message::Missing { .. } => bail!("the node answered HAVE with handles it was not asked about"),
            other => bail!("the node answered HAVE with {}", name(&other)),
        }
    }

    /// Stores `bytes` on the node as the object `handle`, in chunks if large; `progress` hears
    /// how many bytes have gone.
    pub fn put(&mut self, handle: Handle, bytes: &[u8], mut progress: impl FnMut(u64)) -> anyhow::Result<()> {
        let request = self.next_id();
        if bytes.len() <= MAX_INLINE {
            self.send(request, Message::Put { handle, bytes: bytes.to_vec() })?;
        } else {
            let mut stream = || {
                self.send(request, Message::PutBegin { handle, len: bytes.len() as u64 })?;
                for (i, chunk) in bytes.chunks(MAX_CHUNK).enumerate() {
                    self.send(
                        request,
                        Message::PutChunk { offset: (i * MAX_CHUNK) as u64, bytes: chunk.to_vec() },
                    )?;
                    progress(((i * MAX_CHUNK) + chunk.len()) as u64);
                }
                anyhow::Ok(())
            };
            if let Err(sending) = stream() {
                // A node that refuses an upload (a full store) says why, then closes: its
                // answer is the error worth showing, not the broken pipe.
                return Err(match self.receive(request) {
                    Err(answer) if answer.is::<Refused>() => answer,
                    _ => sending,
                });
            }
        }
        match self.receive(request)?.message {
            Message::Stored { handle: stored } if stored == handle => Ok(()),
            Message::Stored { handle: stored } => bail!("the node stored {stored} when sent {handle}"),
            other => bail!("the node answered PUT with {}", name(&other)),
        }
    }

    /// Fetches an object and checks it is the one `handle` names.
    pub fn get(&mut self, handle: Handle, mut progress: impl FnMut(u64, u64)) -> anyhow::Result<Vec<u8>> {
        let request = self.next_id();
        self.send(request, Message::Get { handle })?;
        let bytes = match self.receive(request)?.message {
            Message::Object { handle: sent, .. } if sent != handle => {
                return Err(WrongObject { asked: handle, received: sent }.into());
            }
            Message::Object { bytes, .. } => bytes,
            Message::ObjectBegin { handle: sent, .. } if sent != handle => {
                return Err(WrongObject { asked: handle, received: sent }.into());
            }
            Message::ObjectBegin { len, .. } => {
                // The length fits the handle (the decoder checks it: a blob's size, or a tree's
                // encoding within its footprint), and the handle is ours; still, reserve no more
                // than a bound and let the rest grow with the data.
                if !cairn_proto::length_fits(&handle, len) {
                    bail!("the node announced {len} bytes for {handle}");
                }
                let mut bytes = Vec::with_capacity(len.min(MAX_RESERVE) as usize);
                while (bytes.len() as u64) < len {
                    match self.receive(request)?.message {
                        Message::ObjectChunk { offset, bytes: chunk } if offset == bytes.len() as u64 => {
                            if chunk.is_empty() || (chunk.len() as u64) > len - offset {
                                bail!(
                                    "the node sent a chunk of {} bytes at {offset} of the {len} of {handle}",
                                    chunk.len()
                                );
                            }
                            bytes.extend_from_slice(&chunk);
                            progress(bytes.len() as u64, len);
                        }
                        Message::ObjectChunk { offset, .. } => bail!(
                            "the node sent a chunk of {handle} at {offset}, expected one at {}",
                            bytes.len()
                        ),
                        other => bail!("the node interrupted the download with {}", name(&other)),
                    }
                }
                bytes
            }
            other => bail!("the node answered GET with {}", name(&other)),
        };
        let actual =
            cairn_object::store::name(handle.kind(), &bytes).context("the node sent an invalid object")?;
        if actual != handle {
            return Err(WrongObject { asked: handle, received: actual }.into());
        }
        Ok(bytes)
    }

    pub fn eval(&mut self, handle: Handle) -> anyhow::Result<Evaluated> {
        self.eval_with(Message::Eval { handle })
    }

    /// Evaluates with the node's memo ignored: every task runs again (for verification).
    pub fn eval_fresh(&mut self, handle: Handle) -> anyhow::Result<Evaluated> {
        self.eval_with(Message::EvalFresh { handle })
    }

    /// Sends an EVAL and returns at once, with the request's id for [`Client::evaluated`]: a
    /// client may leave before the answer (the node then lets the evaluation go).
    pub fn send_eval(&mut self, handle: Handle) -> anyhow::Result<u32> {
        let request = self.next_id();
        self.send(request, Message::Eval { handle })?;
        Ok(request)
    }

    /// The answer to the EVAL sent as `request`.
    pub fn evaluated(&mut self, request: u32) -> anyhow::Result<Evaluated> {
        let frame = self.receive(request)?;
        evaluated(frame.message)
    }

    fn eval_with(&mut self, message: Message) -> anyhow::Result<Evaluated> {
        evaluated(self.call(message)?)
    }

    /// Uploads those of `objects` the node lacks; returns how many that was. Small objects go
    /// [`PIPELINED_PUTS`] at a time, each sent before the last is answered: a job's thunks
    /// are many and small, and one round trip each (a few milliseconds under TCG) was most of
    /// the time a job took to reach a node. The node answers in order, and stops reading
    /// while it holds 8 requests unanswered (docs/PROTOCOL.md): TCP paces the rest.
    pub fn upload_missing(&mut self, objects: &[(Handle, Vec<u8>)]) -> anyhow::Result<usize> {
        let missing: std::collections::HashSet<Handle> =
            self.missing(&objects.iter().map(|(h, _)| *h).collect::<Vec<_>>())?.into_iter().collect();
        let mut unanswered = std::collections::VecDeque::new();
        let mut upload = || {
            for (handle, bytes) in objects.iter().filter(|(h, _)| missing.contains(h)) {
                if bytes.len() > PIPELINED_PUT_BYTES {
                    self.stored(&mut unanswered, 0)?;
                    self.put(*handle, bytes, |_| {})?;
                    continue;
                }
                let request = self.next_id();
                self.send(request, Message::Put { handle: *handle, bytes: bytes.clone() })?;
                unanswered.push_back((request, *handle));
                self.stored(&mut unanswered, PIPELINED_PUTS - 1)?;
            }
            self.stored(&mut unanswered, 0)
        };
        if let Err(e) = upload() {
            // One PUT refused (a full store, say): the answers to those sent after it are read
            // and let go, so that the connection's next request gets its own answer.
            while let Some((request, _)) = unanswered.pop_front() {
                if let Err(broken) = self.receive(request)
                    && !broken.is::<Refused>()
                {
                    break; // the connection itself failed: nothing more will come
                }
            }
            return Err(e);
        }
        Ok(missing.len())
    }

    /// Takes the answers to pipelined PUTs, oldest first, until `keep` are left unanswered.
    fn stored(
        &mut self,
        unanswered: &mut std::collections::VecDeque<(u32, Handle)>,
        keep: usize,
    ) -> anyhow::Result<()> {
        while unanswered.len() > keep {
            let (request, handle) = unanswered.pop_front().expect("longer than keep");
            match self.receive(request)?.message {
                Message::Stored { handle: stored } if stored == handle => {}
                Message::Stored { handle: stored } => bail!("the node stored {stored} when sent {handle}"),
                other => bail!("the node answered PUT with {}", name(&other)),
            }
        }
        Ok(())
    }

    /// Runs a job (docs/IO.md) and waits for it.
    pub fn submit(&mut self, job: Handle) -> anyhow::Result<JobOutcome> {
        let outcome = match self.call(Message::Submit { job })? {
            Message::JobDone { job, journal, result } => {
                JobOutcome { job, journal, result: Ok(result), recorded: None }
            }
            Message::JobFailed { job, journal, thunk, failure } => {
                JobOutcome { job, journal, result: Err(TaskFailed { thunk, failure }), recorded: None }
            }
            other => bail!("the node answered SUBMIT with {}", name(&other)),
        };
        if outcome.job != job {
            bail!("the node answered SUBMIT {job} about another job, {}", outcome.job);
        }
        Ok(outcome)
    }

    /// Replays a job (or a journal) from its journal alone.
    pub fn replay(&mut self, handle: Handle) -> anyhow::Result<JobOutcome> {
        let outcome = match self.call(Message::Replay { handle })? {
            Message::Replayed { job, journal, result, recorded } => {
                JobOutcome { job, journal, result: Ok(result), recorded }
            }
            Message::JobFailed { job, journal, thunk, failure } => {
                JobOutcome { job, journal, result: Err(TaskFailed { thunk, failure }), recorded: None }
            }
            other => bail!("the node answered REPLAY with {}", name(&other)),
        };
        // Asked by a job's handle or a journal's: the answer must be about that one.
        if outcome.job != handle && outcome.journal != handle {
            bail!(
                "the node answered REPLAY {handle} about job {} and journal {}",
                outcome.job,
                outcome.journal
            );
        }
        Ok(outcome)
    }

    /// Makes a stored journal the latest of its job on the node (after an import).
    pub fn adopt_journal(&mut self, journal: Handle) -> anyhow::Result<()> {
        match self.call(Message::Journal { journal })? {
            Message::Stored { handle } if handle == journal => Ok(()),
            Message::Stored { handle } => bail!("the node answered JOURNAL {journal} about {handle}"),
            other => bail!("the node answered JOURNAL with {}", name(&other)),
        }
    }

    /// Has the node get `handles` from the peer at `from` (cluster address, API port); returns
    /// (objects, bytes) fetched. A peer's wrong bytes are an error naming the object.
    pub fn fetch(&mut self, from: ([u8; 4], u16), handles: &[Handle]) -> anyhow::Result<(u64, u64)> {
        match self.call(Message::Fetch { from, handles: handles.to_vec() })? {
            Message::Fetched { objects, bytes } => Ok((objects, bytes)),
            other => bail!("the node answered FETCH with {}", name(&other)),
        }
    }

    /// Has the node run `thunk` on its peer at `to` (cluster address, API port): the node ships
    /// the thunk and what the peer lacks; the peer evaluates.
    pub fn relocate(&mut self, to: ([u8; 4], u16), thunk: Handle) -> anyhow::Result<Evaluated> {
        self.eval_with(Message::Relocate { to, thunk })
    }

    /// Has the node evaluate `root` across its cluster, coordinating the job itself
    /// (docs/SCHEDULER.md, "Nodes coordinate"); the job's objects must be on it. Returns the
    /// result handle and the node's report (`key=value` lines, the node's own words).
    pub fn coordinate(
        &mut self,
        root: Handle,
        options: &cairn_sched::Options,
    ) -> anyhow::Result<(Handle, String)> {
        let placement = match options.placement {
            cairn_sched::Placement::Locality => 0,
            cairn_sched::Placement::MinAbsent => 1,
            cairn_sched::Placement::Random => 2,
        };
        let message = Message::Coordinate {
            root,
            placement,
            verify: options.verify,
            spread: options.spread,
            seed: options.seed,
        };
        match self.call(message)? {
            Message::Coordinated { result, report } => Ok((result, report)),
            other => bail!("the node answered COORDINATE with {}", name(&other)),
        }
    }

    /// TRACE (docs/TRACES.md): the node's clock now, the next sequence number, how many spans
    /// from `since` on were lost, and the spans (at most a frame of them).
    pub fn trace(&mut self, since: u64) -> anyhow::Result<(u64, u64, u64, Vec<cairn_proto::trace::Span>)> {
        match self.call(Message::Trace { since })? {
            Message::Traced { now_us, next, lost, spans } => Ok((now_us, next, lost, spans)),
            other => bail!("the node answered TRACE with {}", name(&other)),
        }
    }

    /// The values the node's memo holds for these thunks.
    pub fn recall(&mut self, thunks: &[Handle]) -> anyhow::Result<Vec<(Handle, Handle)>> {
        match self.call(Message::Recall { thunks: thunks.to_vec() })? {
            // Those asked about that the memo holds, in the order asked.
            Message::Recalled { entries }
                if in_order_among(&entries.iter().map(|(t, _)| *t).collect::<Vec<_>>(), thunks) =>
            {
                Ok(entries)
            }
            Message::Recalled { .. } => bail!("the node answered RECALL about thunks it was not asked about"),
            other => bail!("the node answered RECALL with {}", name(&other)),
        }
    }

    /// Has the node read every object on its disk and check it against its handle.
    pub fn scrub(&mut self) -> anyhow::Result<Scrubbed> {
        match self.call(Message::Scrub)? {
            Message::Scrubbed { checked, bytes, damaged_total, damaged, restored, unchecked } => {
                Ok(Scrubbed { checked, bytes, damaged_total, damaged, restored, unchecked })
            }
            other => bail!("the node answered SCRUB with {}", name(&other)),
        }
    }

    /// Pins (or unpins) an object on the node's disk, durably.
    pub fn pin(&mut self, handle: Handle, pinned: bool) -> anyhow::Result<()> {
        let request = if pinned { Message::Pin { handle } } else { Message::Unpin { handle } };
        match self.call(request)? {
            Message::Pinned { handle: h, pinned: p } if h == handle && p == pinned => Ok(()),
            other => {
                bail!("the node answered {} with {}", if pinned { "PIN" } else { "UNPIN" }, name(&other))
            }
        }
    }

    /// Has the node forget what nothing keeps on its disk (with a goal in bytes, the least
    /// recently used first; 0: everything unkept) and compact its log.
    pub fn gc(&mut self, goal: u64) -> anyhow::Result<Collected> {
        match self.call(Message::Gc { goal })? {
            Message::Collected { objects, bytes, kept, copied_bytes, reclaimed, free } => {
                Ok(Collected { objects, bytes, kept, copied_bytes, reclaimed, free })
            }
            other => bail!("the node answered GC with {}", name(&other)),
        }
    }

    pub fn stats(&mut self) -> anyhow::Result<String> {
        match self.call(Message::Stats)? {
            Message::StatsReply { text } => Ok(text),
            other => bail!("the node answered STATS with {}", name(&other)),
        }
    }
}

/// Whether `part` is `of` with some handles left out: what HAVE and RECALL answers must be.
fn in_order_among(part: &[Handle], of: &[Handle]) -> bool {
    let mut rest = of.iter();
    part.iter().all(|h| rest.any(|x| x == h))
}

fn name(message: &Message) -> &'static str {
    match message {
        Message::Hello { .. } => "HELLO",
        Message::Welcome { .. } => "WELCOME",
        Message::Have { .. } => "HAVE",
        Message::Missing { .. } => "MISSING",
        Message::Put { .. } => "PUT",
        Message::PutBegin { .. } => "PUT-BEGIN",
        Message::PutChunk { .. } => "PUT-CHUNK",
        Message::Stored { .. } => "STORED",
        Message::Get { .. } => "GET",
        Message::Object { .. } => "OBJECT",
        Message::ObjectBegin { .. } => "OBJECT-BEGIN",
        Message::ObjectChunk { .. } => "OBJECT-CHUNK",
        Message::Eval { .. } => "EVAL",
        Message::EvalFresh { .. } => "EVAL-FRESH",
        Message::Evaluated { .. } => "EVALUATED",
        Message::EvalFailed { .. } => "EVAL-FAILED",
        Message::Stats => "STATS",
        Message::StatsReply { .. } => "STATS-REPLY",
        Message::Error { .. } => "ERROR",
        Message::Submit { .. } => "SUBMIT",
        Message::JobDone { .. } => "JOB-DONE",
        Message::JobFailed { .. } => "JOB-FAILED",
        Message::Replay { .. } => "REPLAY",
        Message::Replayed { .. } => "REPLAYED",
        Message::Journal { .. } => "JOURNAL",
        Message::Fetch { .. } => "FETCH",
        Message::Relocate { .. } => "RELOCATE",
        Message::Fetched { .. } => "FETCHED",
        Message::Recall { .. } => "RECALL",
        Message::Recalled { .. } => "RECALLED",
        Message::Scrub => "SCRUB",
        Message::Scrubbed { .. } => "SCRUBBED",
        Message::Pin { .. } => "PIN",
        Message::Unpin { .. } => "UNPIN",
        Message::Pinned { .. } => "PINNED",
        Message::Gc { .. } => "GC",
        Message::Collected { .. } => "COLLECTED",
        Message::Coordinate { .. } => "COORDINATE",
        Message::Coordinated { .. } => "COORDINATED",
        Message::Trace { .. } => "TRACE",
        Message::Traced { .. } => "TRACED",
    }
}

/// What an answer to EVAL says.
fn evaluated(answer: Message) -> anyhow::Result<Evaluated> {
    match answer {
        Message::Evaluated { result, tasks_run, memo_hits, micros } => {
            Ok(Evaluated { result, tasks_run, memo_hits, micros })
        }
        Message::EvalFailed { thunk, failure } => Err(TaskFailed { thunk, failure }.into()),
        other => bail!("the node answered EVAL with {}", name(&other)),
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use cairn_proto::MAX_FRAME;

    use super::*;

    /// A fake node on a local port: answers HELLO, then every other request with the frames
    /// `answer` makes of it. Ends when the client goes away.
    fn fake_node(mut answer: impl FnMut(Frame) -> Vec<Frame> + Send + 'static) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        // It holds a key, recorded for its address as `cairn node` records a node's.
        let key = crate::keys::fresh_secret().unwrap();
        crate::keys::remember_node(&address, &key.public()).unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let (mut stream, _) = SecureStream::accept(stream, &key).unwrap();
            let mut buffer = Vec::new();
            loop {
                let frame = loop {
                    if let Some((frame, used)) = decode(&buffer).unwrap() {
                        buffer.drain(..used);
                        break frame;
                    }
                    let mut chunk = [0u8; 65536];
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                    }
                };
                let replies = match frame.message {
                    Message::Hello { .. } => vec![Frame {
                        request: frame.request,
                        message: Message::Welcome {
                            version: 1,
                            node_id: [0; 32],
                            max_frame: MAX_FRAME as u32,
                            offers: 0,
                        },
                    }],
                    _ => answer(frame),
                };
                let mut out = Vec::new();
                for reply in &replies {
                    encode(reply, &mut out);
                }
                if stream.write_all(&out).is_err() {
                    return;
                }
            }
        });
        address
    }

    fn reply(to: &Frame, message: Message) -> Vec<Frame> {
        vec![Frame { request: to.request, message }]
    }

    /// A handle of `size` bytes that is not a literal (its digest is made up).
    fn big_handle(size: u64) -> Handle {
        format!("blob:{}:{size}", "ab".repeat(32)).parse().unwrap()
    }

    const HOSTILE: &str = "task error: \x1b[2J\x1b]0;owned\x07\u{9b}31m\ncairn: ready boot_ms=1 mem_mib=1\r";

    #[test]
    fn a_tasks_failure_is_shown_escaped_on_one_line() {
        let thunk = Handle::blob(b"the thunk");
        let address = fake_node(move |frame| {
            reply(&frame, Message::EvalFailed { thunk, failure: HOSTILE.to_string() })
        });
        let err = Client::connect(&address).unwrap().eval(thunk).unwrap_err();
        // What `cairn eval` prints after `cairn: error: `.
        let shown = format!("{err:#}");
        assert_eq!(shown.lines().count(), 1, "{shown}");
        assert!(!shown.chars().any(crate::untrusted::needs_escape), "{shown}");
        assert_eq!(
            shown,
            format!(
                "{thunk} failed: task error: \\x1b[2J\\x1b]0;owned\\x07\\u{{9b}}31m\\ncairn: ready boot_ms=1 mem_mib=1\\r"
            )
        );
        // The words as sent stay available to code that needs them.
        assert_eq!(err.downcast_ref::<TaskFailed>().unwrap().failure, HOSTILE);
    }

    #[test]
    fn a_nodes_error_is_shown_escaped() {
        let address = fake_node(|frame| {
            reply(&frame, Message::Error { code: ErrorCode::Internal, message: HOSTILE.to_string() })
        });
        let err = Client::connect(&address).unwrap().stats().unwrap_err();
        let shown = format!("{err:#}");
        assert!(shown.starts_with("the node refused: task error: \\x1b[2J"), "{shown}");
        assert!(shown.ends_with("\\r (Internal)") && shown.lines().count() == 1, "{shown}");
        assert_eq!(err.downcast_ref::<Refused>().unwrap().code, ErrorCode::Internal);
    }

    #[test]
    fn a_download_must_be_the_object_asked_for_and_no_larger() {
        let asked = big_handle(100);
        // Another object announced: refused before anything is reserved for it.
        let other = big_handle(1 << 40);
        let address =
            fake_node(move |frame| reply(&frame, Message::ObjectBegin { handle: other, len: 1 << 40 }));
        let err = Client::connect(&address).unwrap().get(asked, |_, _| {}).unwrap_err();
        assert!(err.downcast_ref::<WrongObject>().is_some(), "{err:#}");

        // The right object, then a chunk that runs past its end.
        let address = fake_node(move |frame| {
            let mut frames = reply(&frame, Message::ObjectBegin { handle: asked, len: 100 });
            frames.extend(reply(&frame, Message::ObjectChunk { offset: 0, bytes: vec![0; 150] }));
            frames
        });
        let err = Client::connect(&address).unwrap().get(asked, |_, _| {}).unwrap_err();
        assert!(format!("{err:#}").contains("a chunk of 150 bytes at 0 of the 100"), "{err:#}");

        // A huge object that is asked for: announced, then the node stops. Only what came is held.
        let huge = big_handle(1 << 40);
        let address = fake_node(move |frame| {
            let mut frames = reply(&frame, Message::ObjectBegin { handle: huge, len: 1 << 40 });
            frames.extend(reply(&frame, Message::ObjectChunk { offset: 0, bytes: vec![1; 10] }));
            frames.extend(reply(&frame, Message::ObjectChunk { offset: 5, bytes: vec![1; 10] }));
            frames
        });
        let err = Client::connect(&address).unwrap().get(huge, |_, _| {}).unwrap_err();
        assert!(format!("{err:#}").contains("at 5, expected one at 10"), "{err:#}");
    }

    #[test]
    fn answers_must_be_about_what_was_asked() {
        let (a, b, stranger) = (big_handle(40), big_handle(41), big_handle(42));
        let job = big_handle(43);
        let address = fake_node(move |frame| match &frame.message {
            Message::Have { .. } => reply(&frame, Message::Missing { handles: vec![b, stranger] }),
            Message::Recall { .. } => reply(&frame, Message::Recalled { entries: vec![(stranger, a)] }),
            Message::Submit { .. } => {
                reply(&frame, Message::JobDone { job: stranger, journal: stranger, result: a })
            }
            Message::Journal { .. } => reply(&frame, Message::Stored { handle: stranger }),
            // An answer to some other request.
            _ => vec![Frame {
                request: frame.request + 7,
                message: Message::StatsReply { text: "x=1".into() },
            }],
        });
        let mut client = Client::connect(&address).unwrap();
        let err = client.missing(&[a, b]).unwrap_err();
        assert!(format!("{err:#}").contains("not asked about"), "{err:#}");
        let err = client.recall(&[a, b]).unwrap_err();
        assert!(format!("{err:#}").contains("not asked about"), "{err:#}");
        let err = client.submit(job).err().unwrap();
        assert!(format!("{err:#}").contains("about another job"), "{err:#}");
        let err = client.adopt_journal(job).unwrap_err();
        assert!(format!("{err:#}").contains(&format!("JOURNAL {job} about {stranger}")), "{err:#}");
        let err = client.stats().unwrap_err();
        assert!(format!("{err:#}").contains("answered request"), "{err:#}");
    }

    #[test]
    fn answers_in_the_order_asked_with_some_left_out_are_fine() {
        let [a, b, c] = [big_handle(40), big_handle(41), big_handle(42)];
        assert!(in_order_among(&[a, c], &[a, b, c]));
        assert!(in_order_among(&[], &[a]));
        assert!(in_order_among(&[a, a], &[a, b, a]));
        assert!(!in_order_among(&[c, a], &[a, b, c]));
        assert!(!in_order_among(&[a, a], &[a, b]));
    }

    /// A node that refuses the third of 20 pipelined PUTs (a full store) and stores the rest:
    /// `upload_missing` says why, and the connection's next request gets its own answer, not
    /// one of the PUTs' sent after the refused one.
    #[test]
    fn a_put_refused_mid_pipeline_is_named_and_leaves_the_client_in_step() {
        let address = fake_node(|frame| match frame.message.clone() {
            Message::Have { handles } => reply(&frame, Message::Missing { handles }),
            Message::Put { handle, bytes } if bytes[0] == 2 => reply(
                &frame,
                Message::Error { code: ErrorCode::StoreFull, message: format!("store full for {handle}") },
            ),
            Message::Put { handle, .. } => reply(&frame, Message::Stored { handle }),
            _ => reply(&frame, Message::Error { code: ErrorCode::Unexpected, message: "?".into() }),
        });
        let mut client = Client::connect(&address).unwrap();
        let objects: Vec<(Handle, Vec<u8>)> = (0..20u8)
            .map(|i| {
                let bytes = vec![i; 100];
                (Handle::blob(&bytes), bytes)
            })
            .collect();
        let e = client.upload_missing(&objects).unwrap_err();
        assert!(format!("{e:#}").contains("store full"), "{e:#}");
        // The same client, asked anything more, reads the answers to the PUTs sent after it.
        let next = client.missing(&[objects[0].0]);
        assert_eq!(next.unwrap(), [objects[0].0], "the client is in step");
    }
}
