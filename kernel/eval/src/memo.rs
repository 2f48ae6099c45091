//! The memo table (EVAL-4, EVAL-5): thunk handle → deterministic outcome.

use alloc::collections::BTreeMap;
use alloc::sync::Arc;

use cairn_object::Handle;

use crate::error::EvalError;

pub type Outcome = Result<Handle, EvalError>;

/// A remembered outcome. An error is shared: a long chain of tail calls that ends in one error
/// records it once per thunk, and its message must not be copied each time.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    Value(Handle),
    Error(Arc<EvalError>),
}

#[derive(Default, Debug)]
pub struct Memo {
    entries: BTreeMap<Handle, Entry>,
}

impl Memo {
    pub fn new() -> Memo {
        Memo::default()
    }

    pub fn get(&self, thunk: &Handle) -> Option<Outcome> {
        self.entries.get(thunk).map(|entry| match entry {
            Entry::Value(h) => Ok(*h),
            Entry::Error(e) => Err(EvalError::clone(e)),
        })
    }

    /// Remembers `outcome` for `thunk` if it is deterministic; returns whether it did.
    pub fn record(&mut self, thunk: Handle, outcome: &Outcome) -> bool {
        self.record_all(core::slice::from_ref(&thunk), outcome)
    }

    /// Remembers `outcome` for every thunk of `thunks` (a chain of tail calls and the thunks as
    /// applied) if it is deterministic, sharing one copy of an error; returns whether it did.
    pub fn record_all(&mut self, thunks: &[Handle], outcome: &Outcome) -> bool {
        let entry = match outcome {
            Ok(h) => Entry::Value(*h),
            Err(e) if e.failure.is_deterministic() => Entry::Error(Arc::new(e.clone())),
            Err(_) => return false,
        };
        for thunk in thunks {
            self.entries.insert(*thunk, entry.clone());
        }
        true
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every remembered thunk and its outcome.
    pub fn iter(&self) -> impl Iterator<Item = (&Handle, Outcome)> {
        self.entries.iter().map(|(thunk, entry)| {
            let outcome = match entry {
                Entry::Value(h) => Ok(*h),
                Entry::Error(e) => Err(EvalError::clone(e)),
            };
            (thunk, outcome)
        })
    }
}
