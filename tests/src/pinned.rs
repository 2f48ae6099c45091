//! Uploading a graph of objects and pinning its root on a node's disk so that no GC, however
//! it interleaves with the uploads, takes any of it (docs/STORE.md, "Space").
//!
//! A pin keeps what its object reaches through objects the disk holds: an object whose parent
//! the disk lacks is reached by nothing. So pinning the root and uploading what was missing
//! once is not enough: a child uploaded while its parent is still missing (the child comes
//! first, or the parent was forgotten before the pin) goes at the next GC, after the client
//! was told it was there.

use cairn_object::Handle;
use cairn_tools::client::Client;

/// What [`upload_pinned`] asks of a node.
pub trait Uploads {
    /// Those of `handles` the node's disk lacks (one HAVE: answered at one moment).
    fn missing(&mut self, handles: &[Handle]) -> Vec<Handle>;
    fn put(&mut self, handle: Handle, bytes: &[u8]);
    /// Pins `handle` on the node's disk; false if the disk lacks it.
    fn pin(&mut self, handle: Handle) -> bool;
}

impl Uploads for Client {
    fn missing(&mut self, handles: &[Handle]) -> Vec<Handle> {
        Client::missing(self, handles).unwrap()
    }
    fn put(&mut self, handle: Handle, bytes: &[u8]) {
        Client::put(self, handle, bytes, |_| {}).unwrap()
    }
    fn pin(&mut self, handle: Handle) -> bool {
        Client::pin(self, handle, true).is_ok()
    }
}

/// Uploads those of `objects` the node lacks; how many that was.
pub fn upload_missing(node: &mut impl Uploads, objects: &[(Handle, Vec<u8>)]) -> usize {
    let missing = node.missing(&objects.iter().map(|(h, _)| *h).collect::<Vec<_>>());
    for (handle, bytes) in objects.iter().filter(|(h, _)| missing.contains(h)) {
        node.put(*handle, bytes);
    }
    missing.len()
}

/// Uploads `objects`, every one reachable from `root`, and pins `root`, so that every later GC
/// keeps them all (until `root` is unpinned).
pub fn upload_pinned(node: &mut impl Uploads, objects: &[(Handle, Vec<u8>)], root: Handle) {
    // A GC between the uploads and the pin may take the root: then upload again.
    loop {
        upload_missing(node, objects);
        if node.pin(root) {
            break;
        }
    }
    // Until one HAVE finds nothing missing, a GC may take what was uploaded before its parent.
    // Once one does, everything is reached from the pinned root through objects the disk
    // holds, which every GC keeps, so nothing goes again.
    while upload_missing(node, objects) > 0 {}
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use cairn_object::{Handle, Kind, Limits};
    use cairn_store::{Device, DeviceError, DiskStore, space};

    use super::*;

    /// A disk in memory that keeps every write.
    struct MemDisk(Vec<u8>);

    impl Device for MemDisk {
        fn len(&self) -> u64 {
            self.0.len() as u64
        }
        fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
            buf.copy_from_slice(&self.0[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
        fn write(&mut self, offset: u64, bytes: &[u8]) -> Result<(), DeviceError> {
            self.0[offset as usize..offset as usize + bytes.len()].copy_from_slice(bytes);
            Ok(())
        }
        fn flush(&mut self) -> Result<(), DeviceError> {
            Ok(())
        }
    }

    /// A node's disk as a client sees it, with an operator who runs a GC (the node's: what
    /// nothing keeps is forgotten, then the log is compacted) before the requests it chooses.
    struct Node {
        disk: DiskStore<MemDisk>,
        requests: usize,
        gc_before: BTreeSet<usize>,
    }

    impl Node {
        fn new(gc_before: BTreeSet<usize>) -> Node {
            let disk = DiskStore::format(MemDisk(vec![0; 4 << 20]), [7; 16]).unwrap();
            Node { disk, requests: 0, gc_before }
        }

        fn request(&mut self) {
            if self.gc_before.contains(&self.requests) {
                self.gc();
            }
            self.requests += 1;
        }

        fn gc(&mut self) {
            self.disk.collect(&[], None).unwrap();
            self.disk.compact(u64::MAX).unwrap();
        }
    }

    impl Uploads for Node {
        fn missing(&mut self, handles: &[Handle]) -> Vec<Handle> {
            self.request();
            handles.iter().filter(|h| !self.disk.contains(h)).copied().collect()
        }
        fn put(&mut self, handle: Handle, bytes: &[u8]) {
            self.request();
            self.disk.put(&handle, bytes).unwrap();
            self.disk.commit().unwrap();
        }
        fn pin(&mut self, handle: Handle) -> bool {
            self.request();
            if self.disk.len_of(&handle).is_none() {
                return false;
            }
            self.disk.set_note(space::PINS, handle.as_bytes(), Some(handle.as_bytes())).unwrap();
            self.disk.commit().unwrap();
            true
        }
    }

    fn thunk(procedure: Handle, args: &[Handle], objects: &mut Vec<(Handle, Vec<u8>)>) -> Handle {
        let bytes = cairn_object::thunk::encode(Limits::new(1 << 20).unwrap(), procedure, args).unwrap();
        let handle = cairn_object::store::name(Kind::Thunk, &bytes).unwrap();
        objects.push((handle, bytes));
        handle
    }

    /// The disk_cpus test's graph of tiles, in the order it uploads them (children first): a
    /// root over counts of tiles, each a thunk over a tile thunk; their procedure is pinned on
    /// its own.
    fn tiles(procedure: Handle) -> (Handle, Vec<(Handle, Vec<u8>)>) {
        let mut objects = Vec::new();
        let tiles: Vec<Handle> =
            (0..3u8).map(|i| thunk(procedure, &[Handle::blob(&[i; 8])], &mut objects)).collect();
        let counted: Vec<Handle> = tiles.iter().map(|t| thunk(procedure, &[*t], &mut objects)).collect();
        let root = thunk(procedure, &counted, &mut objects);
        (root, objects)
    }

    /// Runs [`upload_pinned`] with a GC before each request `gc_before` names; whether every
    /// object is still on the disk afterwards, through one more GC.
    fn keeps_everything(gc_before: BTreeSet<usize>) -> Result<(), String> {
        let mut node = Node::new(gc_before.clone());
        let procedure = vec![0x7f; 4096];
        let procedure_handle = Handle::blob(&procedure);
        node.disk.put(&procedure_handle, &procedure).unwrap();
        let pin = procedure_handle.as_bytes();
        node.disk.set_note(space::PINS, pin, Some(pin)).unwrap();
        node.disk.commit().unwrap();
        let (root, objects) = tiles(procedure_handle);
        upload_pinned(&mut node, &objects, root);
        node.gc();
        match objects.iter().find(|(h, _)| !node.disk.contains(h)) {
            Some((lost, _)) => Err(format!("GCs before requests {gc_before:?}: {lost} was forgotten")),
            None => Ok(()),
        }
    }

    #[test]
    fn no_two_gcs_anywhere_take_what_the_pinned_root_reaches() {
        for i in 0..24 {
            for j in i + 1..24 {
                keeps_everything([i, j].into()).unwrap();
            }
        }
    }

    #[test]
    fn no_three_gcs_anywhere_take_what_the_pinned_root_reaches() {
        for i in 0..16 {
            for j in i + 1..16 {
                for k in j + 1..16 {
                    keeps_everything([i, j, k].into()).unwrap();
                }
            }
        }
    }
}
