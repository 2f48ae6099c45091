//! One client connection on the node's side, as a pure state machine: bytes in, bytes out.
//! The kernel moves bytes between it and a TCP socket; tests drive it directly.

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use bytes::Bytes;
use cairn_object::Handle;
use cairn_object::store::StoreError;

use crate::{ErrorCode, Frame, MAX_CHUNK, MAX_FRAME, MAX_INLINE, Message, VERSION, decode, encode, offers};

/// What a session needs from the node.
pub trait NodeApi {
    fn node_id(&self) -> [u8; 32];
    fn contains(&self, handle: &Handle) -> bool;
    fn get(&self, handle: &Handle) -> Option<Bytes>;
    /// Stores bytes only if they are the object `handle` names.
    fn put_verified(&mut self, handle: &Handle, bytes: Bytes) -> Result<(), StoreError>;
    /// Bytes the node could still store (for refusing an upload before it starts).
    fn room(&self) -> u64;
    /// Evaluates `handle`: the result and (tasks run, memo hits, microseconds), or the failing
    /// thunk and why.
    fn eval(&mut self, handle: &Handle) -> Result<(Handle, [u64; 3]), (Handle, String)>;
    fn stats(&self) -> String;
}

/// An upload in progress.
struct Upload {
    request: u32,
    handle: Handle,
    len: u64,
    bytes: Vec<u8>,
}

/// A download in progress: the object and how far it has been sent.
struct Download {
    request: u32,
    bytes: Bytes,
    sent: usize,
}

#[derive(Default)]
pub struct Session {
    input: Vec<u8>,
    /// Encoded frames not yet handed out; `output[sent..]` is what remains.
    output: Vec<u8>,
    sent: usize,
    upload: Option<Upload>,
    downloads: VecDeque<Download>,
    closing: bool,
}

impl Session {
    pub fn new() -> Session {
        Session::default()
    }

    /// True once the session has said why it gives up; the caller closes the connection after
    /// the output is sent.
    pub fn closing(&self) -> bool {
        self.closing
    }

    /// Takes bytes from the client and handles every whole frame among them.
    pub fn feed(&mut self, bytes: &[u8], node: &mut dyn NodeApi) {
        if self.closing {
            return;
        }
        self.input.extend_from_slice(bytes);
        let mut used = 0;
        loop {
            match decode(&self.input[used..]) {
                Ok(Some((frame, len))) => {
                    used += len;
                    self.handle(frame, node);
                    if self.closing {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    self.fail(0, ErrorCode::BadFrame, e.to_string());
                    break;
                }
            }
        }
        self.input.drain(..used);
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
            let chunk = Message::ObjectChunk { offset: download.sent as u64, bytes: download.bytes[download.sent..end].to_vec() };
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

    fn fail(&mut self, request: u32, code: ErrorCode, message: String) {
        self.error(request, code, message);
        self.closing = true;
    }

    fn handle(&mut self, frame: Frame, node: &mut dyn NodeApi) {
        let request = frame.request;
        if self.upload.is_some() && !matches!(frame.message, Message::PutChunk { .. }) {
            return self.fail(request, ErrorCode::Unexpected, "an upload is in progress: only PUT-CHUNK may follow".into());
        }
        match frame.message {
            Message::Hello { .. } => self.send(
                request,
                Message::Welcome {
                    version: VERSION,
                    node_id: node.node_id(),
                    max_frame: MAX_FRAME as u32,
                    offers: offers::HAVE | offers::PUT | offers::GET | offers::EVAL | offers::STATS,
                },
            ),
            Message::Have { handles } => {
                let missing = handles.into_iter().filter(|h| !node.contains(h)).collect();
                self.send(request, Message::Missing { handles: missing });
            }
            Message::Put { handle, bytes } => self.store(request, handle, bytes, node),
            Message::PutBegin { handle, len } => {
                if len > node.room() {
                    return self.error(request, ErrorCode::StoreFull, format!("{len} bytes do not fit in the store"));
                }
                // Reserve as the bytes arrive, not up front: the length is the client's word.
                self.upload = Some(Upload { request, handle, len, bytes: Vec::new() });
            }
            Message::PutChunk { offset, bytes } => {
                let Some(upload) = self.upload.as_mut() else {
                    return self.fail(request, ErrorCode::Unexpected, "PUT-CHUNK without PUT-BEGIN".into());
                };
                if offset != upload.bytes.len() as u64 || offset + bytes.len() as u64 > upload.len {
                    return self.fail(request, ErrorCode::Unexpected, format!("chunk at {offset} does not continue the upload"));
                }
                upload.bytes.extend_from_slice(&bytes);
                if upload.bytes.len() as u64 == upload.len {
                    let upload = self.upload.take().expect("present");
                    self.store(upload.request, upload.handle, upload.bytes, node);
                }
            }
            Message::Get { handle } => match node.get(&handle) {
                None => self.error(request, ErrorCode::NotFound, format!("{handle} is not on this node")),
                Some(bytes) if bytes.len() <= MAX_INLINE => self.send(request, Message::Object { handle, bytes: bytes.to_vec() }),
                Some(bytes) => {
                    self.send(request, Message::ObjectBegin { handle, len: bytes.len() as u64 });
                    self.downloads.push_back(Download { request, bytes, sent: 0 });
                }
            },
            Message::Eval { handle } => match node.eval(&handle) {
                Ok((result, [tasks_run, memo_hits, micros])) => {
                    self.send(request, Message::Evaluated { result, tasks_run, memo_hits, micros })
                }
                Err((thunk, failure)) => self.send(request, Message::EvalFailed { thunk, failure }),
            },
            Message::Stats => {
                let text = node.stats();
                self.send(request, Message::StatsReply { text });
            }
            _ => self.fail(request, ErrorCode::Unexpected, "that message goes from a node to a client, not to a node".into()),
        }
    }

    fn store(&mut self, request: u32, handle: Handle, bytes: Vec<u8>, node: &mut dyn NodeApi) {
        match node.put_verified(&handle, Bytes::from(bytes)) {
            Ok(()) => self.send(request, Message::Stored { handle }),
            Err(e @ StoreError::Full { .. }) => self.error(request, ErrorCode::StoreFull, e.to_string()),
            Err(e) => self.error(request, ErrorCode::WrongHash, e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use alloc::vec;
    use cairn_object::Kind;
    use cairn_object::store::{MemStore, Store};

    struct FakeNode {
        store: MemStore,
    }

    impl NodeApi for FakeNode {
        fn node_id(&self) -> [u8; 32] {
            [7; 32]
        }
        fn contains(&self, h: &Handle) -> bool {
            self.store.contains(h)
        }
        fn get(&self, h: &Handle) -> Option<Bytes> {
            self.store.get(h)
        }
        fn put_verified(&mut self, h: &Handle, bytes: Bytes) -> Result<(), StoreError> {
            self.store.put_verified(h, bytes)
        }
        fn room(&self) -> u64 {
            let s = self.store.stats();
            s.limit - s.bytes
        }
        fn eval(&mut self, h: &Handle) -> Result<(Handle, [u64; 3]), (Handle, String)> {
            if h.kind() == Kind::Blob { Ok((*h, [0, 0, 1])) } else { Err((*h, "no tasks here".into())) }
        }
        fn stats(&self) -> String {
            format!("objects={}", self.store.stats().objects)
        }
    }

    fn node() -> FakeNode {
        FakeNode { store: MemStore::new(16 << 20) }
    }

    fn frames(messages: &[(u32, Message)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (request, message) in messages {
            encode(&Frame { request: *request, message: message.clone() }, &mut out);
        }
        out
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
        let replies = exchange(&mut s, &mut n, &frames(&[
            (1, Message::Hello { client: "test".into() }),
            (2, Message::Have { handles: vec![h, Handle::blob(b"lit")] }),
            (3, Message::Put { handle: h, bytes: small.clone() }),
            (4, Message::Have { handles: vec![h] }),
            (5, Message::Get { handle: h }),
            (6, Message::Stats),
        ]));
        assert!(matches!(replies[0].message, Message::Welcome { version: 1, node_id, .. } if node_id == [7; 32]));
        assert_eq!(replies[1].message, Message::Missing { handles: vec![h] }, "literal blobs are never missing");
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
        let replies = exchange(&mut s, &mut n, &frames(&[(9, Message::Put { handle: claimed, bytes: vec![2u8; 100] })]));
        assert!(matches!(&replies[0].message, Message::Error { code: ErrorCode::WrongHash, message } if message.contains("really")));
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
        let replies = exchange(&mut s, &mut n, &frames(&[
            (1, Message::PutBegin { handle: h, len: 2000 }),
            (1, Message::PutChunk { offset: 1000, bytes: vec![5; 1000] }),
        ]));
        assert!(matches!(&replies[0].message, Message::Error { code: ErrorCode::Unexpected, .. }));
        assert!(s.closing());
        let (mut s, mut n) = (Session::new(), node());
        let replies = exchange(&mut s, &mut n, &frames(&[(1, Message::PutChunk { offset: 0, bytes: vec![1] })]));
        assert!(matches!(&replies[0].message, Message::Error { code: ErrorCode::Unexpected, .. }));
    }

    #[test]
    fn uploads_larger_than_the_store_are_refused_up_front() {
        let (mut s, mut n) = (Session::new(), node());
        let h = Handle::blob(&vec![0u8; 64]);
        let fake_big = Handle::from_bytes(&{ let mut b = *h.as_bytes(); b[2..8].copy_from_slice(&(1u64 << 40).to_le_bytes()[..6]); b }).unwrap();
        let replies = exchange(&mut s, &mut n, &frames(&[(1, Message::PutBegin { handle: fake_big, len: 1 << 40 })]));
        assert!(matches!(&replies[0].message, Message::Error { code: ErrorCode::StoreFull, .. }));
    }

    #[test]
    fn eval_replies_with_the_result_or_the_failure() {
        let (mut s, mut n) = (Session::new(), node());
        let b = Handle::blob(b"v");
        let t = Handle::from_bytes(&{ let mut x = *Handle::blob(&[3u8; 40]).as_bytes(); x[0] = 3; x }).unwrap();
        let replies = exchange(&mut s, &mut n, &frames(&[(1, Message::Eval { handle: b }), (2, Message::Eval { handle: t })]));
        assert_eq!(replies[0].message, Message::Evaluated { result: b, tasks_run: 0, memo_hits: 0, micros: 1 });
        assert_eq!(replies[1].message, Message::EvalFailed { thunk: t, failure: "no tasks here".into() });
    }
}
