//! The memo table (EVAL-4, EVAL-5): thunk handle → deterministic outcome.
//!
//! It holds at most a set number of entries; past that, and when the store needs the room its
//! values hold, entries go least recently used first (the CLOCK way, as the store evicts: a
//! hit sets an entry's bit, a sweep clears it or evicts the entry). A value the memo refers to
//! is pinned in the store while it does: the caller is told of every value the memo starts or
//! stops referring to.

use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::Cell;
use core::ops::Bound;

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

#[derive(Debug)]
struct Slot {
    entry: Entry,
    referenced: Cell<bool>,
}

/// Told `(value, true)` when the memo starts referring to a value, `(value, false)` when it stops.
pub type Pins<'a> = &'a mut dyn FnMut(Handle, bool);

#[derive(Debug)]
pub struct Memo {
    entries: BTreeMap<Handle, Slot>,
    capacity: usize,
    /// Where the last eviction sweep stopped.
    hand: Option<Handle>,
    evictions: u64,
    /// The error recorded last: an error that fails every thunk waiting on it (EVAL-7) is
    /// recorded once per thunk, nested thousands deep, and must be one copy, not thousands.
    last_error: Option<Arc<EvalError>>,
}

impl Default for Memo {
    fn default() -> Memo {
        Memo::with_capacity(usize::MAX)
    }
}

fn outcome_of(entry: &Entry) -> Outcome {
    match entry {
        Entry::Value(h) => Ok(*h),
        Entry::Error(e) => Err(EvalError::clone(e)),
    }
}

impl Memo {
    pub fn new() -> Memo {
        Memo::default()
    }

    /// A memo that keeps at most `capacity` entries.
    pub fn with_capacity(capacity: usize) -> Memo {
        Memo {
            entries: BTreeMap::new(),
            capacity: capacity.max(1),
            hand: None,
            evictions: 0,
            last_error: None,
        }
    }

    /// Keeps at most `capacity` entries from the next one recorded on.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
    }

    pub fn get(&self, thunk: &Handle) -> Option<Outcome> {
        self.entries.get(thunk).map(|slot| {
            slot.referenced.set(true);
            outcome_of(&slot.entry)
        })
    }

    /// Remembers `outcome` for `thunk` if it is deterministic; returns whether it did.
    pub fn record(&mut self, thunk: Handle, outcome: &Outcome, pins: Pins<'_>) -> bool {
        self.record_all(core::slice::from_ref(&thunk), outcome, pins)
    }

    /// Remembers `outcome` for every thunk of `thunks` (a chain of tail calls and the thunks as
    /// applied) if it is deterministic, sharing one copy of an error; returns whether it did.
    pub fn record_all(&mut self, thunks: &[Handle], outcome: &Outcome, pins: Pins<'_>) -> bool {
        let entry = match outcome {
            Ok(h) => Entry::Value(*h),
            Err(e) if e.failure.is_deterministic() => {
                let shared = match &self.last_error {
                    Some(last) if **last == *e => last.clone(),
                    _ => Arc::new(e.clone()),
                };
                self.last_error = Some(shared.clone());
                Entry::Error(shared)
            }
            Err(_) => return false,
        };
        for thunk in thunks {
            if let Entry::Value(v) = &entry {
                pins(*v, true);
            }
            let slot = Slot { entry: entry.clone(), referenced: Cell::new(true) };
            if let Some(Slot { entry: Entry::Value(old), .. }) = self.entries.insert(*thunk, slot) {
                pins(old, false);
            }
        }
        if self.entries.len() > self.capacity {
            self.evict(self.entries.len() - self.capacity, pins);
        }
        true
    }

    /// Forgets up to `count` entries, least recently used first; returns how many it forgot.
    pub fn evict(&mut self, count: usize, pins: Pins<'_>) -> usize {
        let mut forgotten = 0;
        // Two whole passes: the first may only clear reference bits.
        let mut budget = self.entries.len().saturating_mul(2);
        while forgotten < count && budget > 0 && !self.entries.is_empty() {
            let mut victims: Vec<Handle> = Vec::new();
            if victims.try_reserve_exact(64.min(count - forgotten)).is_err() {
                break;
            }
            let after = self.hand.map_or(Bound::Unbounded, Bound::Excluded);
            let before = self.hand.map_or(Bound::Unbounded, Bound::Included);
            let sweep = self
                .entries
                .range((after, Bound::Unbounded))
                .chain(self.entries.range((Bound::Unbounded, before)));
            for (thunk, slot) in sweep {
                budget = budget.saturating_sub(1);
                self.hand = Some(*thunk);
                if !slot.referenced.replace(false) {
                    victims.push(*thunk);
                }
                if victims.len() == victims.capacity() || budget == 0 {
                    break;
                }
            }
            for thunk in victims {
                if let Some(slot) = self.entries.remove(&thunk) {
                    if let Entry::Value(v) = slot.entry {
                        pins(v, false);
                    }
                    forgotten += 1;
                    self.evictions += 1;
                }
            }
        }
        forgotten
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries forgotten to keep within the capacity or to make room in the store.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Every remembered thunk and its outcome.
    pub fn iter(&self) -> impl Iterator<Item = (&Handle, Outcome)> {
        self.entries.iter().map(|(thunk, slot)| (thunk, outcome_of(&slot.entry)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Failure;

    #[test]
    fn one_error_failing_a_nest_of_thunks_is_kept_once() {
        let mut memo = Memo::new();
        let error =
            EvalError { thunk: Handle::blob(b"inner"), failure: Failure::TaskError("x".repeat(4096)) };
        // As the evaluator records it: once for each thunk the error fails on its way out.
        for i in 0..1000u32 {
            memo.record(Handle::blob(&[i.to_le_bytes(); 10].concat()), &Err(error.clone()), &mut |_, _| {});
        }
        let shared: alloc::vec::Vec<&Arc<EvalError>> = memo
            .entries
            .values()
            .map(|slot| match &slot.entry {
                Entry::Error(e) => e,
                Entry::Value(_) => panic!("an error was recorded"),
            })
            .collect();
        assert_eq!(shared.len(), 1000);
        assert!(shared.iter().all(|e| Arc::ptr_eq(e, shared[0])), "copies of one error");
    }
}
