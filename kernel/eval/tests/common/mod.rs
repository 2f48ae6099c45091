//! What the evaluator's test files share: fake procedures named `op:NAME`, and numbers as
//! literal blobs. Each test file uses what it needs of them.
#![allow(dead_code)]

use bytes::Bytes;
use cairn_object::store::Store;
use cairn_object::{Handle, Kind, Limits, thunk};

/// The fake procedure NAME (each test file's executor says what it does).
pub fn op(name: &str) -> Handle {
    Handle::blob(format!("op:{name}").as_bytes())
}

pub fn number(n: u64) -> Handle {
    Handle::blob(&n.to_le_bytes())
}

pub fn read(h: &Handle) -> u64 {
    let bytes = h.literal().expect("numbers are literal blobs");
    u64::from_le_bytes(bytes[..8].try_into().unwrap())
}

pub fn put_thunk(store: &mut dyn Store, limits: Limits, procedure: Handle, args: &[Handle]) -> Handle {
    store.put(Kind::Thunk, Bytes::from(thunk::encode(limits, procedure, args).unwrap())).unwrap()
}

/// A thunk applying `op:NAME` to `args`, with 1 MiB.
pub fn task(store: &mut dyn Store, name: &str, args: &[Handle]) -> Handle {
    put_thunk(store, Limits::new(1 << 20).unwrap(), op(name), args)
}
