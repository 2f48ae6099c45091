//! The syscall table of cairn-abi. Every malformed call ends the task with `bad syscall` or
//! `forged handle`; nothing a task passes can make the kernel fail.

use alloc::format;
use alloc::string::String;
use alloc::vec;

use bytes::Bytes;
use cairn_abi::{MAX_FAIL_MESSAGE, SYS_CREATE, SYS_EXIT, SYS_FAIL, SYS_OOM, SYS_OPEN};
use cairn_eval::Failure;
use cairn_object::store::{Store, StoreError};
use cairn_object::{Handle, Kind, Tree};

use super::Task;
use crate::memory::objects::NodeStore;

fn bad(why: String) -> Failure {
    Failure::BadSyscall(why)
}

fn pointer(ptr: u64, len: u64) -> Failure {
    bad(format!("{len} bytes at {ptr:#x} are not the task's memory"))
}

impl Task {
    fn read_handle(&mut self, ptr: u64) -> Result<Handle, Failure> {
        let mut raw = [0u8; Handle::LEN];
        if !self.space.read(ptr, &mut raw) {
            return Err(pointer(ptr, raw.len() as u64));
        }
        let handle = Handle::from_bytes(&raw).map_err(|e| bad(format!("not a handle: {e}")))?;
        self.check_known(&handle)?;
        Ok(handle)
    }

    /// EVAL-3: only handles the task was given, created, or found in what it opened. A literal
    /// blob carries its content in the handle, so naming one reveals nothing: always allowed.
    fn check_known(&self, handle: &Handle) -> Result<(), Failure> {
        if handle.is_literal() || self.given.contains(handle) || self.known.contains(handle) {
            Ok(())
        } else {
            Err(Failure::ForgedHandle(*handle))
        }
    }
}

/// Handles the syscall in the task's context; `Some(result)` when the task is done.
pub fn handle(
    task: &mut Task,
    store: &mut NodeStore,
    simd: &mut super::Simd,
) -> Result<Option<Handle>, Failure> {
    let ctx = &task.context;
    let (number, a0, a1, a2, a3) = (ctx.rax, ctx.rdi, ctx.rsi, ctx.rdx, ctx.r10);
    match number {
        SYS_EXIT => task.read_handle(a0).map(Some),
        SYS_FAIL => {
            let len = a1.min(MAX_FAIL_MESSAGE as u64);
            let mut message = vec![0u8; len as usize];
            if !task.space.read(a0, &mut message) {
                return Err(pointer(a0, len));
            }
            Err(Failure::TaskError(String::from_utf8_lossy(&message).into()))
        }
        SYS_OOM => Err(Failure::OutOfMemory { limit: task.limit_bytes }),
        SYS_OPEN => {
            let handle = task.read_handle(a0)?;
            let (addr, len) = task.map_object(store, &handle)?;
            if handle.kind() != Kind::Blob {
                let bytes = store.get(&handle).ok_or(Failure::MissingObject(handle))?;
                let tree =
                    Tree::decode(&bytes).map_err(|e| bad(format!("stored {handle} is invalid: {e}")))?;
                task.known.extend(tree.iter());
            }
            task.context.rax = addr;
            task.context.rdx = len;
            Ok(None)
        }
        SYS_CREATE => {
            let kind = match a0 {
                1 => Kind::Blob,
                2 => Kind::Tree,
                3 => Kind::Thunk,
                k => return Err(bad(format!("unknown object kind {k}"))),
            };
            // Nothing the task makes can be larger than its whole memory.
            if a2 > task.limit_bytes {
                return Err(pointer(a1, a2));
            }
            let mut bytes = vec![0u8; a2 as usize];
            if !task.space.read(a1, &mut bytes) {
                return Err(pointer(a1, a2));
            }
            if kind != Kind::Blob {
                let tree = Tree::decode(&bytes).map_err(|e| bad(format!("invalid {kind}: {e}")))?;
                for entry in tree.iter() {
                    task.check_known(&entry)?;
                }
            }
            // Naming hashes with SIMD instructions: keep the task's registers first.
            simd.save();
            let handle = store.put(kind, Bytes::from(bytes)).map_err(|e| match e {
                StoreError::Invalid { .. } | StoreError::Mismatch { .. } => bad(format!("{e}")),
                StoreError::Full { .. } => Failure::NodeOutOfMemory,
            })?;
            if !task.space.write(a3, handle.as_bytes()) {
                return Err(pointer(a3, Handle::LEN as u64));
            }
            task.known.insert(handle);
            task.context.rax = 0;
            Ok(None)
        }
        n => Err(bad(format!("unknown syscall {n}"))),
    }
}
