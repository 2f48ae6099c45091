//! Sealed records: after the handshake, the protocol's bytes travel in records of at most
//! [`MAX_RECORD`] bytes, each a 2-byte length and a ChaCha20-Poly1305 ciphertext under the
//! session's key with a counter nonce. A record altered, dropped, repeated or moved fails to
//! open, and the connection ends.

use alloc::vec::Vec;

use crate::{ChannelError, LEN_PREFIX, MAX_PLAIN, MAX_RECORD, TAG_LEN};

/// One direction's keys each way, and the record being received.
pub struct Transport {
    noise: snow::TransportState,
    /// The record being received: its length field, then its bytes.
    incoming: Vec<u8>,
    /// The last record opened.
    plain: Vec<u8>,
}

impl Transport {
    pub(crate) fn new(noise: snow::TransportState) -> Transport {
        Transport { noise, incoming: Vec::new(), plain: Vec::new() }
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
            let start = out.len();
            let len = chunk.len() + TAG_LEN;
            out.extend_from_slice(&(len as u16).to_be_bytes());
            out.resize(start + LEN_PREFIX + len, 0);
            // Fails only when the nonce is exhausted (2^64 records) or the buffer is short,
            // neither of which can happen here.
            let written = self
                .noise
                .write_message(chunk, &mut out[start + LEN_PREFIX..])
                .expect("a record of at most MAX_PLAIN bytes seals into its room");
            debug_assert_eq!(written, len);
        }
    }

    /// Takes bytes from the wire, at most up to the end of one record; returns how many it took
    /// and, when a record was completed, its plaintext. Bytes after a record stay with the
    /// caller, so that it can stop reading when whoever takes the plaintext is full.
    pub fn open(&mut self, bytes: &[u8]) -> Result<(usize, Option<&[u8]>), ChannelError> {
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
        self.plain.resize(len, 0);
        let opened = self
            .noise
            .read_message(&self.incoming[LEN_PREFIX..], &mut self.plain)
            .map_err(|_| ChannelError::Record)?;
        self.incoming.clear();
        Ok((taken, Some(&self.plain[..opened])))
    }

    /// Bytes of a record begun and not finished.
    pub fn partial(&self) -> usize {
        self.incoming.len()
    }
}

const _: () = assert!(MAX_RECORD <= u16::MAX as usize);
