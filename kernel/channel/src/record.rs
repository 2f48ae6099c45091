//! Sealed records: after the handshake, the protocol's bytes travel in records of at most
//! [`MAX_RECORD`] bytes, each a 2-byte length and a ChaCha20-Poly1305 ciphertext under the
//! session's key with a counter nonce (Noise's transport messages). A record altered, dropped,
//! repeated or moved fails to open, and the connection ends.
//!
//! A record's keystream may be computed ahead, elsewhere (another CPU): a side streaming full
//! records [`order`](Transport::order)s the keystreams of its next records and hands back a
//! [`Prepared`] for each, which the record takes when its turn comes.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::aead::{self, CipherKey, KEYSTREAM_LEN, Keystream, Pad};
use crate::{ChannelError, KEY_LEN, LEN_PREFIX, MAX_PLAIN, MAX_RECORD, TAG_LEN};

/// Which way records go, seen from this side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Send,
    Receive,
}

/// Records of one direction whose keystreams may be ordered ahead, at most.
pub const AHEAD: u64 = 6;

/// A keystream to compute for a coming record: the work another CPU can take on. It holds the
/// memory the keystream will fill, so computing it allocates nothing.
pub struct KeystreamOrder {
    key: CipherKey,
    counter: u64,
    buffer: Vec<u8>,
}

impl KeystreamOrder {
    /// The record it is for.
    pub fn counter(&self) -> u64 {
        self.counter
    }

    pub fn compute(self) -> Keystream {
        Keystream::compute_into(&self.key, self.counter, self.buffer)
    }
}

/// A keystream ordered for a record, wherever it is being computed. `take` is called when the
/// record is sealed or opened: it gives the keystream (computing it there and then if nobody has
/// begun, waiting if someone is computing it), or None to have the record compute its own.
pub trait Prepared: Send {
    fn counter(&self) -> u64;
    fn take(&mut self) -> Option<Keystream>;
}

/// One direction: its key, the next record's counter, and the keystreams ordered for the next
/// records.
pub(crate) struct Way {
    key: CipherKey,
    counter: u64,
    /// Counter of the next keystream to order.
    ordered: u64,
    /// Whether the last record this way was a large one: only a stream of them is worth
    /// ordering keystreams for.
    streaming: bool,
    prepared: VecDeque<Box<dyn Prepared>>,
}

impl Way {
    #[cfg(test)]
    pub(crate) fn key_for_tests(&self) -> [u8; KEY_LEN] {
        self.key.bytes_for_tests()
    }

    /// Moves this direction on to record `counter`, as if all before it had been sent.
    #[cfg(test)]
    pub(crate) fn skip_to_for_tests(&mut self, counter: u64) {
        self.counter = counter;
        self.ordered = counter;
    }

    fn new(key: [u8; KEY_LEN]) -> Way {
        Way { key: CipherKey::new(key), counter: 0, ordered: 0, streaming: false, prepared: VecDeque::new() }
    }

    /// The keystream for the next record, if one was prepared and is to be had; and moves on to
    /// the record after it.
    fn next(&mut self, len: usize) -> (u64, Option<Keystream>) {
        let counter = self.counter;
        // Noise reserves the nonce 2^64 - 1; that many records cannot be sent in practice.
        assert!(counter < u64::MAX, "a session's nonces are exhausted");
        self.counter = counter + 1;
        // Half a record or more: the last record of a long message, or of what a socket had room
        // for, is seldom full.
        self.streaming = len * 2 >= MAX_PLAIN;
        while self.prepared.front().is_some_and(|p| p.counter() < counter) {
            self.prepared.pop_front();
        }
        let ready = match self.prepared.front() {
            Some(p) if p.counter() == counter => self.prepared.pop_front().and_then(|mut p| p.take()),
            _ => None,
        };
        (counter, ready.filter(|stream| stream.is_for(&self.key, counter)))
    }
}

/// Both directions' keys and counters, and the record being received.
pub struct Transport {
    pub(crate) send: Way,
    pub(crate) receive: Way,
    /// The record being received: its length field, then its bytes (opened in place).
    incoming: Vec<u8>,
    /// `incoming` holds a record opened and handed out: the next call starts a new one.
    finished: bool,
}

impl Transport {
    pub(crate) fn new(send: [u8; KEY_LEN], receive: [u8; KEY_LEN]) -> Transport {
        Transport { send: Way::new(send), receive: Way::new(receive), incoming: Vec::new(), finished: false }
    }

    /// Bytes on the wire for `plain` bytes sealed.
    pub fn sealed_len(plain: usize) -> usize {
        let records = plain.div_ceil(MAX_PLAIN).max(1);
        plain + records * (LEN_PREFIX + TAG_LEN)
    }

    /// The most plaintext whose sealed records fit in `room` bytes.
    pub fn plain_room(room: usize) -> usize {
        let whole = room / (LEN_PREFIX + MAX_RECORD);
        let rest = room % (LEN_PREFIX + MAX_RECORD);
        whole * MAX_PLAIN + rest.saturating_sub(LEN_PREFIX + TAG_LEN)
    }

    /// Seals `plain` into records appended to `out`.
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) {
        out.reserve(Self::sealed_len(plain.len()));
        for chunk in plain.chunks(MAX_PLAIN) {
            out.extend_from_slice(&((chunk.len() + TAG_LEN) as u16).to_be_bytes());
            let start = out.len();
            out.extend_from_slice(chunk);
            let (counter, ready) = self.send.next(chunk.len());
            let pad = match &ready {
                Some(stream) => Pad::Ready(stream),
                None => Pad::Now(&self.send.key, counter),
            };
            let tag = aead::seal(pad, &mut out[start..]);
            out.extend_from_slice(&tag);
        }
        if plain.len() >= MAX_PLAIN {
            self.send.streaming = true;
        }
    }

    /// Takes bytes from the wire, at most up to the end of one record; returns how many it took
    /// and, when a record was completed, its plaintext. Bytes after a record stay with the
    /// caller, so that it can stop reading when whoever takes the plaintext is full.
    pub fn open(&mut self, bytes: &[u8]) -> Result<(usize, Option<&[u8]>), ChannelError> {
        if self.finished {
            self.incoming.clear();
            self.finished = false;
        }
        let mut taken = 0;
        if self.incoming.len() < LEN_PREFIX {
            let n = (LEN_PREFIX - self.incoming.len()).min(bytes.len());
            self.incoming.extend_from_slice(&bytes[..n]);
            taken += n;
            if self.incoming.len() < LEN_PREFIX {
                return Ok((taken, None));
            }
        }
        let len = usize::from(u16::from_be_bytes([self.incoming[0], self.incoming[1]]));
        if len < TAG_LEN {
            return Err(ChannelError::BadRecordLength { len });
        }
        let want = LEN_PREFIX + len - self.incoming.len();
        let n = want.min(bytes.len() - taken);
        self.incoming.extend_from_slice(&bytes[taken..taken + n]);
        taken += n;
        if self.incoming.len() < LEN_PREFIX + len {
            return Ok((taken, None));
        }
        let (body, tag) = self.incoming[LEN_PREFIX..].split_at_mut(len - TAG_LEN);
        let tag: &[u8; TAG_LEN] = (&*tag).try_into().expect("the tag's length");
        let (counter, ready) = self.receive.next(body.len());
        let pad = match &ready {
            Some(stream) => Pad::Ready(stream),
            None => Pad::Now(&self.receive.key, counter),
        };
        aead::open(pad, body, tag).map_err(|()| ChannelError::Record)?;
        // The plaintext stays in `incoming` until the next call, which starts a new record.
        self.finished = true;
        Ok((taken, Some(&self.incoming[LEN_PREFIX..len - TAG_LEN + LEN_PREFIX])))
    }

    /// Bytes of a record begun and not finished.
    pub fn partial(&self) -> usize {
        if self.finished { 0 } else { self.incoming.len() }
    }

    /// If this direction streams full records and fewer than [`AHEAD`] of its next keystreams
    /// are ordered, an order for the next one: compute it (anywhere) and give this transport a
    /// [`Prepared`] for it with [`expect`](Transport::expect). None also when the memory for it
    /// cannot be had.
    pub fn order(&mut self, direction: Direction) -> Option<KeystreamOrder> {
        let way = self.way(direction);
        way.ordered = way.ordered.max(way.counter);
        if !way.streaming || way.ordered >= way.counter + AHEAD {
            return None;
        }
        let mut buffer = Vec::new();
        buffer.try_reserve_exact(KEYSTREAM_LEN).ok()?;
        let order = KeystreamOrder { key: way.key.clone(), counter: way.ordered, buffer };
        way.ordered += 1;
        Some(order)
    }

    /// The keystream ordered for one of this direction's next records.
    pub fn expect(&mut self, direction: Direction, prepared: Box<dyn Prepared>) {
        let way = self.way(direction);
        let at =
            way.prepared.iter().position(|p| p.counter() > prepared.counter()).unwrap_or(way.prepared.len());
        way.prepared.insert(at, prepared);
    }

    fn way(&mut self, direction: Direction) -> &mut Way {
        match direction {
            Direction::Send => &mut self.send,
            Direction::Receive => &mut self.receive,
        }
    }
}

const _: () = assert!(MAX_RECORD <= u16::MAX as usize);
