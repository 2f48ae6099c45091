//! The wire fuzzer's cases: valid frames of every message type (docs/PROTOCOL.md), then
//! mutated: bits flipped, lengths, versions, types and flags changed, frames truncated,
//! spliced, repeated, reordered, junk between them. A case is the byte stream of one
//! connection; [`Mutator::case`] makes case `index` of a seed, independently of the others.
//!
//! The objects a case may upload come from a small pool per seed, so that a node fed millions
//! of cases stores at most the pool: a full store is not what this fuzzer looks for.

use alloc::string::String;
use alloc::vec::Vec;

use cairn_object::{Handle, Kind, Limits};
use cairn_proto::{ErrorCode, Frame, HEADER, MAX_FRAME, Message, encode};

use crate::Rng;

/// The byte stream of one connection, and how many frames went into it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Case {
    pub bytes: Vec<u8>,
    /// Frames (and pieces of junk) in it, whole or not.
    pub frames: usize,
    /// Whether any mutation was applied (unmutated cases are valid requests).
    pub mutated: bool,
}

pub struct Mutator {
    seed: u64,
    /// Objects a case may upload, with their bytes: blobs, trees and thunks of them.
    pool: Vec<(Handle, Vec<u8>)>,
    /// Handles of objects no case uploads (the node lacks them).
    strangers: Vec<Handle>,
}

impl Mutator {
    pub fn new(seed: u64) -> Mutator {
        let mut rng = Rng::for_case(seed, u64::MAX);
        let mut pool = Vec::new();
        for _ in 0..12 {
            let len = rng.pick(&[33, 40, 100, 1000, 2048, 3000]) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            pool.push((Handle::blob(&bytes), bytes));
        }
        let blobs: Vec<Handle> = pool.iter().map(|(h, _)| *h).collect();
        for i in 0..4 {
            let entries = &blobs[i..i + 3];
            let tree = cairn_object::tree::encode(entries);
            let limits = Limits::new(1 << 20).expect("a whole number of pages");
            let thunk = cairn_object::thunk::encode(limits, blobs[i], &blobs[i + 4..i + 6])
                .expect("the procedure is a blob");
            for (kind, bytes) in [(Kind::Tree, tree), (Kind::Thunk, thunk)] {
                let handle = cairn_object::store::name(kind, &bytes).expect("a valid encoding");
                pool.push((handle, bytes));
            }
        }
        let strangers = (0..8u64)
            .map(|i| {
                let bytes: Vec<u8> = (0..40 + i).map(|_| rng.next_u64() as u8).collect();
                Handle::blob(&bytes)
            })
            .collect();
        Mutator { seed, pool, strangers }
    }

    pub fn pool(&self) -> &[(Handle, Vec<u8>)] {
        &self.pool
    }

    pub fn case(&self, index: u64) -> Case {
        let mut rng = Rng::for_case(self.seed, index);
        let mut frames: Vec<Vec<u8>> = Vec::new();
        let want = rng.range(1, 8) as usize;
        while frames.len() < want {
            self.valid(&mut rng, &mut frames);
        }
        let mutated = !rng.chance(15);
        if mutated {
            for _ in 0..rng.range(1, 3) {
                mutate(&mut rng, &mut frames);
            }
        }
        Case { bytes: frames.concat(), frames: frames.len(), mutated }
    }

    fn handle(&self, rng: &mut Rng) -> Handle {
        match rng.below(10) {
            0..=5 => self.pool[rng.below(self.pool.len() as u64) as usize].0,
            6 | 7 => rng.pick(&self.strangers),
            8 => Handle::blob(&rng.next_u64().to_le_bytes()),
            _ => Limits::new(4096 * rng.range(1, 1024)).expect("whole pages").handle(),
        }
    }

    fn handles(&self, rng: &mut Rng) -> Vec<Handle> {
        (0..rng.below(20)).map(|_| self.handle(rng)).collect()
    }

    /// Appends one request, or a few that belong together (an upload in chunks), valid.
    fn valid(&self, rng: &mut Rng, frames: &mut Vec<Vec<u8>>) {
        let request = if rng.chance(90) { rng.range(1, 1000) as u32 } else { rng.next_u64() as u32 };
        let mut push = |message: Message| {
            let mut out = Vec::new();
            encode(&Frame { request, message }, &mut out);
            frames.push(out);
        };
        let (handle, bytes) = self.pool[rng.below(self.pool.len() as u64) as usize].clone();
        let h = self.handle(rng);
        let address = ([10, 0, 2, rng.below(256) as u8], rng.pick(&[7070, 0, 65535]));
        match rng.below(30) {
            0 | 1 => push(Message::Hello { client: text(rng, 300) }),
            2 | 3 => push(Message::Have { handles: self.handles(rng) }),
            4..=6 => push(Message::Put { handle, bytes }),
            7 => {
                // Valid frame, wrong bytes for the handle.
                let mut bytes = bytes;
                bytes[0] ^= 1;
                push(Message::Put { handle, bytes })
            }
            8..=10 => {
                push(Message::PutBegin { handle, len: bytes.len() as u64 });
                let piece = rng.range(1, bytes.len() as u64) as usize;
                for (i, chunk) in bytes.chunks(piece).enumerate() {
                    push(Message::PutChunk { offset: (i * piece) as u64, bytes: chunk.to_vec() });
                }
            }
            11..=13 => push(Message::Get { handle: h }),
            14 => push(Message::Eval { handle: h }),
            15 => push(Message::EvalFresh { handle: h }),
            16 | 17 => push(Message::Stats),
            18 => push(Message::Submit { job: h }),
            19 => push(Message::Replay { handle: h }),
            20 => push(Message::Journal { journal: h }),
            21 => push(Message::Fetch { from: address, handles: self.handles(rng) }),
            22 => push(Message::Relocate { to: address, thunk: h }),
            23 => push(Message::Recall { thunks: self.handles(rng) }),
            // Messages that only go from a node to a client.
            24 => push(Message::Welcome { version: 1, node_id: [7; 32], max_frame: 1 << 20, offers: 127 }),
            25 => push(Message::Stored { handle: h }),
            26 => push(Message::Object { handle, bytes }),
            27 => push(Message::Evaluated { result: h, tasks_run: 1, memo_hits: 2, micros: 3 }),
            28 => push(Message::JobFailed { job: h, journal: h, thunk: h, failure: text(rng, 5000) }),
            _ => push(Message::Error { code: ErrorCode::Internal, message: text(rng, 100) }),
        }
    }
}

/// Up to `max` characters, some of them not ASCII.
fn text(rng: &mut Rng, max: u64) -> String {
    (0..rng.below(max)).map(|_| rng.pick(&['a', 'Z', ' ', '\n', 'é', '日', '\u{202e}', '\0'])).collect()
}

/// One mutation of the frames: of one frame's bytes, or of the stream. Earlier mutations may
/// have left a frame shorter than a header; those only grow or move.
fn mutate(rng: &mut Rng, frames: &mut Vec<Vec<u8>>) {
    let i = rng.below(frames.len() as u64) as usize;
    let random = rng.next_u64();
    let f = &mut frames[i];
    let whole = f.len() >= HEADER;
    match rng.below(14) {
        0 | 1 if !f.is_empty() => {
            for _ in 0..rng.range(1, 4) {
                let bit = rng.below(f.len() as u64 * 8);
                f[(bit / 8) as usize] ^= 1 << (bit % 8);
            }
        }
        2 if whole => {
            let real = (f.len() - 4) as u32;
            let lens = [0, 7, 8, MAX_FRAME as u32 + 1, u32::MAX, real + 1, real - 1, random as u32];
            f[..4].copy_from_slice(&rng.pick(&lens).to_le_bytes());
        }
        3 if whole => f[4] = rng.pick(&[0, 2, 0xff, random as u8]),
        4 if whole => {
            let types = [0x00, 0x10, 0x7f, 0x80, 0x84, 0x85, 0x91, 0xfe, 0x05, 0x87, 0x88, random as u8];
            f[5] = rng.pick(&types);
        }
        5 if whole => f[6..8].copy_from_slice(&(rng.range(1, 0xffff) as u16).to_le_bytes()),
        6 => f.truncate(rng.below(f.len() as u64) as usize),
        7 if f.len() > HEADER => {
            // Garbage over part of the payload.
            let at = rng.range(HEADER as u64, f.len() as u64 - 1) as usize;
            let n = rng.range(1, (f.len() - at) as u64) as usize;
            f[at..at + n].iter_mut().for_each(|b| *b = rng.next_u64() as u8);
        }
        8 if whole => {
            // More or less payload, with a length to match.
            if rng.chance(50) {
                f.extend((0..rng.range(1, 100)).map(|_| rng.next_u64() as u8));
            } else {
                f.truncate(f.len() - rng.below((f.len() - HEADER) as u64 + 1) as usize);
            }
            let len = (f.len() - 4) as u32;
            f[..4].copy_from_slice(&len.to_le_bytes());
        }
        9 => {
            let copies = rng.pick(&[2, 5, 70, 300]);
            let f = f.clone();
            frames.splice(i..i, core::iter::repeat_n(f, copies));
        }
        10 => {
            // Part of another frame spliced into this one.
            let other = frames[rng.below(frames.len() as u64) as usize].clone();
            let from = rng.below(other.len() as u64 + 1) as usize;
            let to = from + rng.below((other.len() - from) as u64 + 1) as usize;
            let f = &mut frames[i];
            let at = rng.below(f.len() as u64 + 1) as usize;
            f.splice(at..at, other[from..to].iter().copied());
        }
        12 => {
            let j = rng.below(frames.len() as u64) as usize;
            frames.swap(i, j);
        }
        13 if whole => f[8..12].copy_from_slice(&rng.pick(&[0u32, u32::MAX, random as u32]).to_le_bytes()),
        _ => {
            let junk: Vec<u8> = (0..rng.range(1, 64)).map(|_| rng.next_u64() as u8).collect();
            frames.insert(i, junk);
        }
    }
}
