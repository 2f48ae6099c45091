//! The node's entropy pool (docs/SECURITY.md, "Entropy"): keys and the channel's ephemeral keys
//! come from a ChaCha20 generator seeded at boot from every source the machine has (RDSEED,
//! RDRAND, virtio-rng), mixed with BLAKE3's key derivation. Tasks never see any of it.

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use crate::arch::entropy::{rdrand64, rdseed64};
use crate::drivers::rng;

static POOL: spin::Mutex<Option<ChaCha20Rng>> = spin::Mutex::new(None);

/// Bytes each source is asked for: a whole seed's worth, so that any one good source suffices.
const PER_SOURCE: usize = 32;

/// Which sources gave how many bytes.
pub struct Sources {
    pub rdseed: usize,
    pub rdrand: usize,
    pub virtio_rng: usize,
}

impl Sources {
    pub fn describe(&self) -> alloc::string::String {
        alloc::format!("rdseed={} rdrand={} virtio-rng={}", self.rdseed, self.rdrand, self.virtio_rng)
    }
}

fn words(source: fn() -> Option<u64>, out: &mut [u8; PER_SOURCE]) -> usize {
    let mut filled = 0;
    for chunk in out.as_chunks_mut::<8>().0 {
        let Some(word) = source() else { break };
        chunk.copy_from_slice(&word.to_le_bytes());
        filled += 8;
    }
    filled
}

/// Seeds the pool; an error if no source gave a whole seed.
pub fn init() -> Result<Sources, Sources> {
    let mut mix = blake3::Hasher::new_derive_key("cairn 2026-11 node entropy pool");
    let mut buffer = [0u8; PER_SOURCE];
    let rdseed = words(rdseed64, &mut buffer);
    mix.update(b"rdseed").update(&buffer[..rdseed]);
    let rdrand = words(rdrand64, &mut buffer);
    mix.update(b"rdrand").update(&buffer[..rdrand]);
    let virtio_rng = rng::read(&mut buffer).unwrap_or(0);
    mix.update(b"virtio-rng").update(&buffer[..virtio_rng]);
    let sources = Sources { rdseed, rdrand, virtio_rng };
    if rdseed.max(rdrand).max(virtio_rng) < PER_SOURCE {
        return Err(sources);
    }
    *POOL.lock() = Some(ChaCha20Rng::from_seed(*mix.finalize().as_bytes()));
    Ok(sources)
}

/// 32 fresh bytes, or None before the pool is seeded.
pub fn seed() -> Option<[u8; 32]> {
    let mut pool = POOL.lock();
    let mut out = [0u8; 32];
    pool.as_mut()?.fill_bytes(&mut out);
    Some(out)
}
