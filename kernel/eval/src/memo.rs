//! The memo table (EVAL-4, EVAL-5): thunk handle → deterministic outcome.

use alloc::collections::BTreeMap;

use cairn_object::Handle;

use crate::error::EvalError;

pub type Outcome = Result<Handle, EvalError>;

#[derive(Default, Debug)]
pub struct Memo {
    entries: BTreeMap<Handle, Outcome>,
}

impl Memo {
    pub fn new() -> Memo {
        Memo::default()
    }

    pub fn get(&self, thunk: &Handle) -> Option<&Outcome> {
        self.entries.get(thunk)
    }

    /// Remembers `outcome` for `thunk` if it is deterministic; returns whether it did.
    pub fn record(&mut self, thunk: Handle, outcome: &Outcome) -> bool {
        let deterministic = match outcome {
            Ok(_) => true,
            Err(e) => e.failure.is_deterministic(),
        };
        if deterministic {
            self.entries.insert(thunk, outcome.clone());
        }
        deterministic
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Handle, &Outcome)> {
        self.entries.iter()
    }
}
