//! Benchmarks only: see benches/objects.rs. Run with `cargo bench -p cairn-object-bench`.
