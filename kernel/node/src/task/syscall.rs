//! The syscall table of cairn-abi. Every malformed call ends the task with `bad syscall` or
//! `forged handle`; nothing a task passes can make the kernel fail. Lengths and pointers are
//! checked against the task's memory, its limit and the node's ceilings before anything is
//! allocated or copied, and every allocation made for the task is fallible.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use cairn_abi::{MAX_FAIL_MESSAGE, SYS_CREATE, SYS_EXIT, SYS_FAIL, SYS_OOM, SYS_OPEN};
use cairn_eval::Failure;
use cairn_object::hash::{self, SPAN_LEN};
use cairn_object::store::{Store, StoreError};
use cairn_object::{Handle, Kind, Tree};

use super::image::Image;
use super::run::Task;
use super::simd::Simd;
use crate::memory::objects::NodeStore;

/// Large blobs are hashed span by span, with the task's budget checked (and the node serving
/// others) every this many spans: about a millisecond of hashing.
const SPANS_PER_CHECK: usize = 16;

fn bad(why: String) -> Failure {
    Failure::BadSyscall(why)
}

fn pointer(ptr: u64, len: u64) -> Failure {
    bad(format!("{len} bytes at {ptr:#x} are not the task's memory"))
}

impl Task {
    /// Copies task memory at `ptr` into `out`, paging in what the task could have touched.
    fn read_user(&mut self, image: &Image, ptr: u64, out: &mut [u8]) -> Result<(), Failure> {
        if !self.touch(image, ptr, out.len() as u64, false)? || !self.space.read(ptr, out) {
            return Err(pointer(ptr, out.len() as u64));
        }
        Ok(())
    }

    fn read_handle(&mut self, image: &Image, ptr: u64) -> Result<Handle, Failure> {
        let mut raw = [0u8; Handle::LEN];
        self.read_user(image, ptr, &mut raw)?;
        let handle = Handle::from_bytes(&raw).map_err(|e| bad(format!("not a handle: {e}")))?;
        self.check_known(&handle)?;
        Ok(handle)
    }
}

/// Handles the syscall in the task's context; `Some(result)` when the task is done.
pub fn handle(
    task: &mut Task,
    store: &mut NodeStore,
    image: &Image,
    simd: &mut Simd,
) -> Result<Option<Handle>, Failure> {
    let ctx = &task.context;
    let (number, a0, a1, a2, a3) = (ctx.rax, ctx.rdi, ctx.rsi, ctx.rdx, ctx.r10);
    match number {
        SYS_EXIT => task.read_handle(image, a0).map(Some),
        SYS_FAIL => {
            let len = a1.min(MAX_FAIL_MESSAGE as u64) as usize;
            let mut message = Vec::new();
            message.try_reserve_exact(len).map_err(|_| Failure::NodeOutOfMemory)?;
            message.resize(len, 0);
            task.read_user(image, a0, &mut message)?;
            Err(Failure::TaskError(cairn_eval::printable(&String::from_utf8_lossy(&message))))
        }
        SYS_OOM => Err(Failure::OutOfMemory { limit: task.limit_bytes }),
        SYS_OPEN => {
            let handle = task.read_handle(image, a0)?;
            let (addr, len, first) = task.map_object(store, &handle)?;
            if first && handle.kind() != Kind::Blob {
                let bytes = store.get(&handle).ok_or(Failure::MissingObject(handle))?;
                let tree =
                    Tree::decode(&bytes).map_err(|e| bad(format!("stored {handle} is invalid: {e}")))?;
                task.learn(tree.iter())?;
            }
            task.context.rax = addr;
            task.context.rdx = len;
            Ok(None)
        }
        SYS_CREATE => create(task, store, image, simd, a0, (a1, a2), a3).map(|()| None),
        n => Err(bad(format!("unknown syscall {n}"))),
    }
}

/// SYS_CREATE: `(ptr, len)` holds the object's bytes, `out` receives its handle.
fn create(
    task: &mut Task,
    store: &mut NodeStore,
    image: &Image,
    simd: &mut Simd,
    kind: u64,
    (ptr, len): (u64, u64),
    out: u64,
) -> Result<(), Failure> {
    let kind = match kind {
        1 => Kind::Blob,
        2 => Kind::Tree,
        3 => Kind::Thunk,
        k => return Err(bad(format!("unknown object kind {k}"))),
    };
    // Nothing the task makes can be larger than its whole memory.
    if len > task.limit_bytes {
        return Err(pointer(ptr, len));
    }
    let ceilings = task.ceilings;
    if task.created_objects >= ceilings.objects {
        return Err(Failure::NodeLimit(format!(
            "the task created more than the {} objects this node allows one task",
            ceilings.objects
        )));
    }
    if task.created_bytes.saturating_add(len) > ceilings.create_bytes {
        return Err(Failure::NodeLimit(format!(
            "the task created more than the {} bytes of objects this node allows one task",
            ceilings.create_bytes
        )));
    }
    if kind != Kind::Blob && len / Handle::LEN as u64 > ceilings.tree_entries {
        return Err(Failure::NodeLimit(format!(
            "a {kind} of {} entries is more than the {} this node allows",
            len / Handle::LEN as u64,
            ceilings.tree_entries
        )));
    }
    // Charged whatever the store already holds: what a task is charged never depends on what
    // ran before it.
    task.charge(len)?;
    if !task.touch(image, out, Handle::LEN as u64, true)? {
        return Err(pointer(out, Handle::LEN as u64));
    }
    let mut object = store.new_object(len as usize).ok_or(Failure::NodeOutOfMemory)?;
    task.read_user(image, ptr, object.bytes_mut())?;
    task.created_objects += 1;
    task.created_bytes += len;
    // Naming hashes with SIMD instructions: keep the task's registers first.
    simd.save();
    let digest = if kind == Kind::Blob && len as usize >= 2 * SPAN_LEN {
        Some(hash_in_spans(task, store, object.bytes_mut())?)
    } else {
        None
    };
    if kind != Kind::Blob {
        let tree = Tree::decode(object.bytes_mut()).map_err(|e| bad(format!("invalid {kind}: {e}")))?;
        for entry in tree.iter() {
            task.check_known(&entry)?;
        }
    }
    task.created.try_reserve(1).map_err(|_| Failure::NodeOutOfMemory)?;
    let (handle, pinned) = store.put_new_pinned(kind, object, digest).map_err(|e| match e {
        StoreError::Invalid { .. } | StoreError::Mismatch { .. } => bad(format!("{e}")),
        StoreError::Full { .. } => Failure::NodeOutOfMemory,
        StoreError::Disk(why) => Failure::NodeFault(format!("the store's disk: {why}")),
    })?;
    if pinned {
        task.created.push(handle);
    }
    if !task.space.write(out, handle.as_bytes()) {
        return Err(pointer(out, Handle::LEN as u64));
    }
    task.learn(core::iter::once(handle))?;
    task.context.rax = 0;
    Ok(())
}

/// A large blob's BLAKE3 digest, span by span, checking the task's budget as it goes (and
/// letting the node serve others), so that one large CREATE cannot outlast the budget.
fn hash_in_spans(task: &mut Task, store: &NodeStore, bytes: &[u8]) -> Result<[u8; 32], Failure> {
    let spans = hash::full_spans(bytes.len());
    let mut cvs = Vec::new();
    cvs.try_reserve_exact(spans).map_err(|_| Failure::NodeOutOfMemory)?;
    for (i, span) in bytes.as_chunks::<SPAN_LEN>().0.iter().take(spans).enumerate() {
        cvs.push(hash::span_cv(span, i));
        if i % SPANS_PER_CHECK == SPANS_PER_CHECK - 1 {
            task.check_budget(store)?;
        }
    }
    Ok(hash::blob_digest_with_spans(bytes, &cvs))
}
