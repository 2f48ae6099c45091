//! Work the node does on its own: the default job, and the task checks the QEMU tests run.

pub mod bench;
mod containment_checks;
pub mod demo;
pub mod fuzz;
pub mod task_checks;

use alloc::vec::Vec;

use bytes::Bytes;
use cairn_eval::Evaluator;
use cairn_object::store::Store;
use cairn_object::{Handle, Kind, Limits, thunk};

use crate::memory::objects::NodeStore;
use crate::task::{TaskCeilings, TaskExecutor, builtin};

pub type NodeEvaluator = Evaluator<NodeStore, TaskExecutor>;

/// The built-in tasks, stored as objects.
pub struct Procedures {
    pub identity: Handle,
    pub add: Handle,
    pub fib: Handle,
    pub wordcount: Handle,
    pub mandelbrot: Handle,
    pub hostile: Handle,
    pub containment: Handle,
    pub fuzz: Handle,
}

/// An evaluator over a fresh store holding the built-in tasks, under the node's ceilings.
pub fn node_evaluator(store_limit: u64, ceilings: &cairn_bootcfg::Ceilings) -> (NodeEvaluator, Procedures) {
    let mut store = NodeStore::new(store_limit);
    // Built-in tasks are pinned: the store never evicts them.
    let mut put = |elf: &'static [u8]| {
        let handle = store.put(Kind::Blob, Bytes::from_static(elf)).expect("built-in tasks fit");
        store.pin(&handle);
        handle
    };
    let procedures = Procedures {
        identity: put(builtin::IDENTITY),
        add: put(builtin::ADD),
        fib: put(builtin::FIB),
        wordcount: put(builtin::WORDCOUNT),
        mandelbrot: put(builtin::MANDELBROT),
        hostile: put(builtin::HOSTILE),
        containment: put(builtin::CONTAINMENT),
        fuzz: put(builtin::FUZZ),
    };
    let eval_ceilings = cairn_eval::Ceilings {
        task_memory_bytes: ceilings.task_memory_bytes(),
        applications: ceilings.eval_applications,
        depth: ceilings.eval_depth,
        memo_entries: ceilings.memo_entries,
        memo_error_bytes: ceilings.memo_error_bytes(),
        tree_entries: ceilings.tree_entries,
        // A quarter of what the store may take: an eighth of the heap.
        frame_bytes: store_limit / 4,
        // Each walk's table of what it offered (up to 5.8 MB at its bound): a sixteenth.
        lookahead_bytes: store_limit / 8,
    };
    let executor = TaskExecutor::new(TaskCeilings::from_config(ceilings));
    (Evaluator::new(store, executor).with_ceilings(eval_ceilings), procedures)
}

pub fn blob(ev: &mut NodeEvaluator, bytes: &[u8]) -> Handle {
    ev.store.put(Kind::Blob, Bytes::copy_from_slice(bytes)).expect("store has room")
}

pub fn apply(ev: &mut NodeEvaluator, procedure: Handle, args: &[Handle], memory: u64) -> Handle {
    let limits = Limits::new(memory).expect("memory limits are whole pages");
    let encoding = thunk::encode(limits, procedure, args).expect("procedures are blobs");
    ev.store.put(Kind::Thunk, Bytes::from(encoding)).expect("store has room")
}

pub fn u32s(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}
