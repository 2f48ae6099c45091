//! A client of the node API (docs/PROTOCOL.md) over TCP: every object received is checked
//! against its handle before it is handed back.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, bail};
use cairn_object::Handle;
use cairn_proto::{Frame, MAX_CHUNK, MAX_INLINE, Message, decode, encode};

pub struct Client {
    stream: TcpStream,
    buffer: Vec<u8>,
    next_request: u32,
}

/// How a job (or its replay) ended: its value, or the failing thunk and why.
pub struct JobOutcome {
    pub job: Handle,
    pub journal: Handle,
    pub result: Result<Handle, (Handle, String)>,
    /// For a replay: the value the journal recorded (None if the job had failed).
    pub recorded: Option<Handle>,
}

#[derive(Debug)]
pub struct Evaluated {
    pub result: Handle,
    pub tasks_run: u64,
    pub memo_hits: u64,
    pub micros: u64,
}

impl Client {
    pub fn connect(address: &str) -> anyhow::Result<Client> {
        let stream = TcpStream::connect(address)
            .with_context(|| format!("cannot connect to the node at {address}"))?;
        // Long enough for a big job or evaluation to finish; a node that dies resets the
        // connection at once rather than timing out.
        stream.set_read_timeout(Some(Duration::from_secs(600)))?;
        let _ = stream.set_nodelay(true);
        let mut client = Client { stream, buffer: Vec::new(), next_request: 1 };
        match client.call(Message::Hello { client: "cairn".into() })? {
            Message::Welcome { version: 1, .. } => Ok(client),
            Message::Welcome { version, .. } => bail!("the node speaks protocol version {version}, not 1"),
            other => bail!("the node answered HELLO with {}", name(&other)),
        }
    }

    fn send(&mut self, request: u32, message: Message) -> anyhow::Result<()> {
        let mut bytes = Vec::new();
        encode(&Frame { request, message }, &mut bytes);
        self.stream.write_all(&bytes).context("the node closed the connection")
    }

    fn receive(&mut self) -> anyhow::Result<Frame> {
        loop {
            if let Some((frame, used)) = decode(&self.buffer).context("the node sent a malformed frame")? {
                self.buffer.drain(..used);
                if let Message::Error { code, message } = &frame.message {
                    bail!("the node refused: {message} ({code:?})");
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

    fn call(&mut self, message: Message) -> anyhow::Result<Message> {
        let request = self.next_request;
        self.next_request += 1;
        self.send(request, message)?;
        Ok(self.receive()?.message)
    }

    pub fn missing(&mut self, handles: &[Handle]) -> anyhow::Result<Vec<Handle>> {
        match self.call(Message::Have { handles: handles.to_vec() })? {
            Message::Missing { handles } => Ok(handles),
            other => bail!("the node answered HAVE with {}", name(&other)),
        }
    }

    /// Stores `bytes` on the node as the object `handle`, in chunks if large; `progress` hears
    /// how many bytes have gone.
    pub fn put(&mut self, handle: Handle, bytes: &[u8], mut progress: impl FnMut(u64)) -> anyhow::Result<()> {
        let request = self.next_request;
        self.next_request += 1;
        if bytes.len() <= MAX_INLINE {
            self.send(request, Message::Put { handle, bytes: bytes.to_vec() })?;
        } else {
            self.send(request, Message::PutBegin { handle, len: bytes.len() as u64 })?;
            for (i, chunk) in bytes.chunks(MAX_CHUNK).enumerate() {
                self.send(
                    request,
                    Message::PutChunk { offset: (i * MAX_CHUNK) as u64, bytes: chunk.to_vec() },
                )?;
                progress(((i * MAX_CHUNK) + chunk.len()) as u64);
            }
        }
        match self.receive()?.message {
            Message::Stored { handle: stored } if stored == handle => Ok(()),
            other => bail!("the node answered PUT with {}", name(&other)),
        }
    }

    /// Fetches an object and checks it is the one `handle` names.
    pub fn get(&mut self, handle: Handle, mut progress: impl FnMut(u64, u64)) -> anyhow::Result<Vec<u8>> {
        let bytes = match self.call(Message::Get { handle })? {
            Message::Object { bytes, .. } => bytes,
            Message::ObjectBegin { len, .. } => {
                let mut bytes = Vec::with_capacity(len as usize);
                while (bytes.len() as u64) < len {
                    match self.receive()?.message {
                        Message::ObjectChunk { offset, bytes: chunk } if offset == bytes.len() as u64 => {
                            bytes.extend_from_slice(&chunk);
                            progress(bytes.len() as u64, len);
                        }
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
            bail!("the node sent the wrong object: asked for {handle}, received {actual}");
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

    fn eval_with(&mut self, message: Message) -> anyhow::Result<Evaluated> {
        match self.call(message)? {
            Message::Evaluated { result, tasks_run, memo_hits, micros } => {
                Ok(Evaluated { result, tasks_run, memo_hits, micros })
            }
            Message::EvalFailed { thunk, failure } => bail!("{thunk} failed: {failure}"),
            other => bail!("the node answered EVAL with {}", name(&other)),
        }
    }

    /// Uploads those of `objects` the node lacks; returns how many that was.
    pub fn upload_missing(&mut self, objects: &[(Handle, Vec<u8>)]) -> anyhow::Result<usize> {
        let missing = self.missing(&objects.iter().map(|(h, _)| *h).collect::<Vec<_>>())?;
        for (handle, bytes) in objects.iter().filter(|(h, _)| missing.contains(h)) {
            self.put(*handle, bytes, |_| {})?;
        }
        Ok(missing.len())
    }

    /// Runs a job (docs/IO.md) and waits for it.
    pub fn submit(&mut self, job: Handle) -> anyhow::Result<JobOutcome> {
        match self.call(Message::Submit { job })? {
            Message::JobDone { job, journal, result } => {
                Ok(JobOutcome { job, journal, result: Ok(result), recorded: None })
            }
            Message::JobFailed { job, journal, thunk, failure } => {
                Ok(JobOutcome { job, journal, result: Err((thunk, failure)), recorded: None })
            }
            other => bail!("the node answered SUBMIT with {}", name(&other)),
        }
    }

    /// Replays a job (or a journal) from its journal alone.
    pub fn replay(&mut self, handle: Handle) -> anyhow::Result<JobOutcome> {
        match self.call(Message::Replay { handle })? {
            Message::Replayed { job, journal, result, recorded } => {
                Ok(JobOutcome { job, journal, result: Ok(result), recorded })
            }
            Message::JobFailed { job, journal, thunk, failure } => {
                Ok(JobOutcome { job, journal, result: Err((thunk, failure)), recorded: None })
            }
            other => bail!("the node answered REPLAY with {}", name(&other)),
        }
    }

    /// Makes a stored journal the latest of its job on the node (after an import).
    pub fn adopt_journal(&mut self, journal: Handle) -> anyhow::Result<()> {
        match self.call(Message::Journal { journal })? {
            Message::Stored { .. } => Ok(()),
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

    /// The values the node's memo holds for these thunks.
    pub fn recall(&mut self, thunks: &[Handle]) -> anyhow::Result<Vec<(Handle, Handle)>> {
        match self.call(Message::Recall { thunks: thunks.to_vec() })? {
            Message::Recalled { entries } => Ok(entries),
            other => bail!("the node answered RECALL with {}", name(&other)),
        }
    }

    pub fn stats(&mut self) -> anyhow::Result<String> {
        match self.call(Message::Stats)? {
            Message::StatsReply { text } => Ok(text),
            other => bail!("the node answered STATS with {}", name(&other)),
        }
    }
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
    }
}
