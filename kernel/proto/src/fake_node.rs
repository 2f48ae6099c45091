//! A node for the session's tests: a memory store, and a switch for "busy".

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec;

use bytes::Bytes;
use cairn_object::store::{MemStore, Store, StoreError};
use cairn_object::{Handle, Kind};

use crate::session::{NodeApi, UploadBuffer};

pub(crate) struct FakeNode {
    pub(crate) store: MemStore,
    pub(crate) busy: bool,
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
    fn upload_buffer(&mut self, len: usize) -> Option<Box<dyn UploadBuffer>> {
        Some(Box::new(vec![0u8; len]))
    }
    fn put_upload(&mut self, h: &Handle, buffer: Box<dyn UploadBuffer>) -> Result<(), StoreError> {
        self.store.put_verified(h, buffer.into_bytes())
    }
    fn stats(&self) -> String {
        format!("objects={}", self.store.stats().objects)
    }
    fn recall(&self, thunk: &Handle) -> Option<Handle> {
        (thunk.kind() == Kind::Thunk).then(|| Handle::blob(b"remembered"))
    }
    fn adopt_journal(&mut self, journal: &Handle) -> Result<Handle, String> {
        if self.store.contains(journal) {
            Ok(*journal)
        } else {
            Err(format!("{journal} is not on this node"))
        }
    }
    fn busy(&self) -> bool {
        self.busy
    }
}

pub(crate) fn node() -> FakeNode {
    FakeNode { store: MemStore::new(16 << 20), busy: false }
}

impl FakeNode {
    pub(crate) fn store_contains(&self, handle: &Handle) -> bool {
        self.store.contains(handle)
    }
}
