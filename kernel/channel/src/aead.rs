//! ChaCha20-Poly1305 (RFC 8439) as Noise's `ChaChaPoly` cipher uses it after the handshake: a
//! 96-bit nonce of four zero bytes and the record counter in little-endian, and no associated
//! data. Built from the `chacha20` and `poly1305` crates, in the same steps as the
//! `chacha20poly1305` crate, so that the ChaCha20 keystream can be computed apart from the record
//! it will seal or open: its bytes depend only on the key and the counter, so a second CPU can
//! compute them before the record arrives (docs/PROTOCOL.md, "The secure channel"). Tests check
//! every record against `snow`'s own transport and against the `chacha20poly1305` crate.

use alloc::boxed::Box;
use alloc::vec::Vec;

use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use poly1305::Poly1305;
use poly1305::universal_hash::{KeyInit, UniversalHash};
use zeroize::Zeroizing;

use crate::{KEY_LEN, MAX_PLAIN, TAG_LEN};

const BLOCK: usize = 64;
/// A record's keystream: block 0 (whose first 32 bytes are the Poly1305 key), then the blocks
/// that encrypt up to [`MAX_PLAIN`] bytes.
pub const KEYSTREAM_LEN: usize = BLOCK + MAX_PLAIN.next_multiple_of(BLOCK);

/// The key of one direction of a session.
#[derive(Clone, PartialEq, Eq)]
pub struct CipherKey(Zeroizing<[u8; KEY_LEN]>);

impl CipherKey {
    pub(crate) fn new(bytes: [u8; KEY_LEN]) -> CipherKey {
        CipherKey(Zeroizing::new(bytes))
    }

    #[cfg(test)]
    pub(crate) fn bytes_for_tests(&self) -> [u8; KEY_LEN] {
        *self.0
    }

    fn cipher(&self, counter: u64) -> ChaCha20 {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&counter.to_le_bytes());
        ChaCha20::new(self.0.as_ref().into(), &nonce.into())
    }
}

/// The keystream of record `counter` under one key, computed ahead of the record. Wiped when
/// dropped: until its record is sealed or opened it is as good as the key for that record.
pub struct Keystream {
    key: CipherKey,
    counter: u64,
    bytes: Box<[u8]>,
}

impl Keystream {
    /// Computes the keystream of record `counter` into `buffer`, which has room for
    /// [`KEYSTREAM_LEN`] bytes (so that nothing is allocated here).
    pub(crate) fn compute_into(key: &CipherKey, counter: u64, mut buffer: Vec<u8>) -> Keystream {
        buffer.clear();
        buffer.resize(KEYSTREAM_LEN, 0);
        key.cipher(counter).apply_keystream(&mut buffer);
        Keystream { key: key.clone(), counter, bytes: buffer.into_boxed_slice() }
    }

    pub fn counter(&self) -> u64 {
        self.counter
    }

    pub(crate) fn is_for(&self, key: &CipherKey, counter: u64) -> bool {
        self.counter == counter && self.key == *key
    }
}

impl Drop for Keystream {
    fn drop(&mut self) {
        // Word by word (byte-wise volatile writes cost a millisecond per record under TCG);
        // black_box keeps the writes from being dropped as dead stores.
        self.bytes.fill(0);
        core::hint::black_box(&mut self.bytes);
    }
}

/// Where a record's keystream comes from: computed now, or computed ahead.
pub(crate) enum Pad<'a> {
    Now(&'a CipherKey, u64),
    Ready(&'a Keystream),
}

impl Pad<'_> {
    /// The Poly1305 key, and a cipher positioned at block 1 when the keystream is computed now.
    fn start(&self) -> (Poly1305, Option<ChaCha20>) {
        match self {
            Pad::Now(key, counter) => {
                let mut cipher = key.cipher(*counter);
                let mut mac_key = Zeroizing::new([0u8; 32]);
                cipher.apply_keystream(mac_key.as_mut());
                cipher.seek(BLOCK as u64);
                (Poly1305::new(mac_key.as_ref().into()), Some(cipher))
            }
            Pad::Ready(stream) => (Poly1305::new(stream.bytes[..32].into()), None),
        }
    }

    fn apply(&self, cipher: Option<ChaCha20>, data: &mut [u8]) {
        match (cipher, self) {
            (Some(mut cipher), _) => cipher.apply_keystream(data),
            (None, Pad::Ready(stream)) => xor(data, &stream.bytes[BLOCK..BLOCK + data.len()]),
            (None, Pad::Now(..)) => unreachable!("a keystream computed now always has its cipher"),
        }
    }
}

/// Encrypts `data` (at most [`MAX_PLAIN`] bytes) in place and returns its tag.
pub(crate) fn seal(pad: Pad<'_>, data: &mut [u8]) -> [u8; TAG_LEN] {
    debug_assert!(data.len() <= MAX_PLAIN);
    let (mut mac, cipher) = pad.start();
    pad.apply(cipher, data);
    mac.update_padded(data);
    mac.update(&[lengths(data.len()).into()]);
    mac.finalize().into()
}

/// Checks `tag` over the ciphertext `data` and, if it holds, decrypts `data` in place.
pub(crate) fn open(pad: Pad<'_>, data: &mut [u8], tag: &[u8; TAG_LEN]) -> Result<(), ()> {
    if data.len() > MAX_PLAIN {
        return Err(());
    }
    let (mut mac, cipher) = pad.start();
    mac.update_padded(data);
    mac.update(&[lengths(data.len()).into()]);
    // Constant time (the `subtle` crate, inside poly1305).
    mac.verify(tag.into()).map_err(|_| ())?;
    pad.apply(cipher, data);
    Ok(())
}

/// The last Poly1305 block: the associated data's length (none) and the ciphertext's.
fn lengths(len: usize) -> [u8; 16] {
    let mut block = [0u8; 16];
    block[8..].copy_from_slice(&(len as u64).to_le_bytes());
    block
}

fn xor(data: &mut [u8], stream: &[u8]) {
    let (words, rest) = data.as_chunks_mut::<8>();
    let (stream_words, stream_rest) = stream.as_chunks::<8>();
    for (d, s) in words.iter_mut().zip(stream_words) {
        *d = (u64::from_ne_bytes(*d) ^ u64::from_ne_bytes(*s)).to_ne_bytes();
    }
    for (d, s) in rest.iter_mut().zip(stream_rest) {
        *d ^= s;
    }
}
