//! Benchmarks for cairn-object: naming blobs (against bare BLAKE3), naming trees, and the
//! in-memory store. Run with `cargo bench -p cairn-object-bench`.
//!
//! Sample sizes and times are kept small so the whole suite finishes in about a minute and a
//! half on two cores; pass `--measurement-time`, `--sample-size` etc. for steadier numbers.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_object::store::{MemStore, Store};
use cairn_object::tree::{self, Tree};
use cairn_object::{Handle, Kind};
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// Deterministic, incompressible-looking bytes (xorshift64*), so no run depends on a RNG crate.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn size_label(bytes: usize) -> String {
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{}MiB", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{}KiB", bytes / KIB)
    } else {
        format!("{bytes}B")
    }
}

/// `name_blob/cairn/<size>` vs `name_blob/blake3/<size>`: the cost of `Handle::blob` over the
/// BLAKE3 it is built on.
fn name_blob(c: &mut Criterion) {
    let sizes = [KIB, 64 * KIB, MIB, 16 * MIB, 64 * MIB];
    let mut group = c.benchmark_group("name_blob");
    group.warm_up_time(Duration::from_millis(300));
    for size in sizes {
        let data = pseudo_random(size, size as u64);
        let label = size_label(size);
        group.throughput(Throughput::Bytes(size as u64));
        if size >= MIB {
            // Milliseconds per iteration: take few, equal-sized samples.
            group.sampling_mode(SamplingMode::Flat);
            group.sample_size(10);
            group.measurement_time(Duration::from_secs(2));
        } else {
            group.sampling_mode(SamplingMode::Auto);
            group.sample_size(50);
            group.measurement_time(Duration::from_secs(1));
        }
        group.bench_with_input(BenchmarkId::new("cairn", &label), &data[..], |b, data| {
            b.iter(|| Handle::blob(black_box(data)))
        });
        group.bench_with_input(BenchmarkId::new("blake3", &label), &data[..], |b, data| {
            b.iter(|| blake3::hash(black_box(data)))
        });
    }
    group.finish();
}

/// `count` distinct blob handles, none literal (each blob is 64 bytes), made up front.
fn blob_handles(count: usize) -> Vec<Handle> {
    (0..count as u64)
        .map(|i| {
            let mut blob = [0u8; 64];
            blob[..8].copy_from_slice(&i.to_le_bytes());
            blob[8..16].copy_from_slice(&(!i).to_le_bytes());
            let h = Handle::blob(&blob);
            debug_assert!(!h.is_literal());
            h
        })
        .collect()
}

/// Tree naming at 1 to 100,000 entries; throughput is in entries.
///
/// - `encode_decode_name`: `Tree::decode(&tree::encode(&entries))?.handle()`, the whole path
///   from handles in memory to the tree's name.
/// - `decode_name`: naming an already-encoded tree (`Tree::decode(&encoding)?.handle()`, what
///   `store::name` does for a tree): validation plus hashing, no allocation.
/// - `name`: `.handle()` on an already-validated `Tree`.
fn name_tree(c: &mut Criterion) {
    let counts = [1usize, 10, 100, 1_000, 10_000, 100_000];
    let all = blob_handles(*counts.iter().max().unwrap());
    let mut group = c.benchmark_group("name_tree");
    group.warm_up_time(Duration::from_millis(200));
    for count in counts {
        let entries = &all[..count];
        let encoding = tree::encode(entries);
        let decoded = Tree::decode(&encoding).unwrap();
        assert_eq!(decoded.len(), count);
        group.throughput(Throughput::Elements(count as u64));
        if count >= 10_000 {
            group.sampling_mode(SamplingMode::Flat);
            group.sample_size(10);
            group.measurement_time(Duration::from_millis(1500));
        } else {
            group.sampling_mode(SamplingMode::Auto);
            group.sample_size(30);
            group.measurement_time(Duration::from_millis(700));
        }
        group.bench_with_input(BenchmarkId::new("encode_decode_name", count), entries, |b, e| {
            b.iter(|| Tree::decode(&tree::encode(black_box(e))).unwrap().handle())
        });
        group.bench_with_input(BenchmarkId::new("decode_name", count), &encoding[..], |b, enc| {
            b.iter(|| Tree::decode(black_box(enc)).unwrap().handle())
        });
        group.bench_with_input(BenchmarkId::new("name", count), &decoded, |b, t| {
            b.iter(|| black_box(t).handle())
        });
    }
    group.finish();
}

/// Store operations, one per iteration (`Throughput::Elements(1)`, so criterion reports
/// operations per second). Objects are 4 KiB blobs.
fn store(c: &mut Criterion) {
    const BLOB: usize = 4 * KIB;
    /// Distinct blobs cycled through: 4096 x 4 KiB = 16 MiB.
    const POOL: usize = 4096;
    let pool: Vec<Bytes> = (0..POOL as u64).map(|i| Bytes::from(pseudo_random(BLOB, 1 + i))).collect();
    let handles: Vec<Handle> = pool.iter().map(|b| Handle::blob(b)).collect();
    let mut full = MemStore::new(u64::MAX);
    for blob in &pool {
        full.put(Kind::Blob, blob.clone()).unwrap();
    }
    let absent: Vec<Handle> =
        (0..POOL as u64).map(|i| Handle::blob(&pseudo_random(64, u64::MAX - i))).collect();

    let mut group = c.benchmark_group("store");
    group.warm_up_time(Duration::from_millis(300));
    group.measurement_time(Duration::from_secs(1));
    group.sample_size(30);
    group.throughput(Throughput::Elements(1));

    // The same 4 KiB blob again and again: hash, find it already stored, keep nothing new.
    group.bench_function("put_4KiB_same", |b| {
        let mut store = MemStore::new(u64::MAX);
        let blob = pool[0].clone();
        b.iter(|| store.put(Kind::Blob, black_box(blob.clone())).unwrap())
    });

    // A different 4 KiB blob each time: hash and insert. The store is replaced every POOL puts
    // (outside the timed region) so memory stays bounded; it holds 0..POOL objects meanwhile.
    group.bench_function("put_4KiB_distinct", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                let n = left.min(POOL);
                let mut store = MemStore::new(u64::MAX);
                let start = Instant::now();
                for blob in &pool[..n] {
                    black_box(store.put(Kind::Blob, black_box(blob.clone())).unwrap());
                }
                timed += start.elapsed();
                drop(store);
                left -= n;
            }
            timed
        })
    });

    // Lookups in a store of POOL objects, cycling through keys.
    group.bench_function("get_present", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) % POOL;
            full.get(black_box(&handles[i])).unwrap()
        })
    });
    group.bench_function("contains_present", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) % POOL;
            assert!(full.contains(black_box(&handles[i])));
        })
    });
    group.bench_function("contains_absent", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) % POOL;
            assert!(!full.contains(black_box(&absent[i])));
        })
    });
    group.finish();
}

criterion_group!(benches, name_blob, name_tree, store);
criterion_main!(benches);
