//! Adds two u64 blobs (little-endian) into a new one; overflow is an error.
#![no_std]
#![no_main]

use cairn_tasks::read_u64;
use cairn_userlib::{Handle, TaskResult, create_blob};

fn run(args: &[Handle]) -> TaskResult {
    let [a, b] = args else { return Err("add needs two arguments".into()) };
    let sum = read_u64(a)?.checked_add(read_u64(b)?).ok_or("add overflowed")?;
    Ok(create_blob(&sum.to_le_bytes()))
}

cairn_userlib::task!(run);
