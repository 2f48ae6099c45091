//! The memo table (EVAL-4, EVAL-5): thunk handle → deterministic outcome.
//!
//! It holds at most a set number of entries; past that, and when the store needs the room its
//! values hold, entries go least recently used first (the CLOCK way, as the store evicts: a
//! hit sets an entry's bit, a sweep clears it or evicts the entry). A value the memo refers to
//! is pinned in the store while it does: the caller is told of every value the memo starts or
//! stops referring to. The errors it keeps are bounded in bytes as well as in number: a
//! client can make every one differ (a 4 KiB message each), and their text lives on the heap,
//! not in the store.

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
    /// Bytes of the distinct errors held (entries and `last_error`), and their ceiling.
    error_bytes: usize,
    error_limit: usize,
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

/// What one kept error costs: itself, its shared header, and its text.
fn error_cost(e: &EvalError) -> usize {
    core::mem::size_of::<EvalError>() + 2 * core::mem::size_of::<usize>() + e.text_bytes()
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
            error_bytes: 0,
            error_limit: usize::MAX,
            hand: None,
            evictions: 0,
            last_error: None,
        }
    }

    /// A memo within the evaluator's ceilings.
    pub fn bounded(ceilings: &crate::Ceilings) -> Memo {
        let mut memo = Memo::with_capacity(usize::try_from(ceilings.memo_entries).unwrap_or(usize::MAX));
        memo.set_error_limit(usize::try_from(ceilings.memo_error_bytes).unwrap_or(usize::MAX));
        memo
    }

    /// Keeps at most `capacity` entries from the next one recorded on.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
    }

    /// Keeps at most `bytes` of distinct errors from the next one recorded on.
    pub fn set_error_limit(&mut self, bytes: usize) {
        self.error_limit = bytes;
    }

    /// Bytes the distinct errors kept take.
    pub fn error_bytes(&self) -> usize {
        self.error_bytes
    }

    /// Lets go of one reference to a kept error; its bytes are free once nothing in the memo
    /// (an entry, or `last_error`) refers to it.
    fn release(&mut self, error: Arc<EvalError>) {
        let last = self.last_error.as_ref().is_some_and(|l| Arc::ptr_eq(l, &error));
        match Arc::strong_count(&error) {
            1 => {}
            2 if last => self.last_error = None,
            _ => return,
        }
        self.error_bytes = self.error_bytes.saturating_sub(error_cost(&error));
    }

    pub fn get(&self, thunk: &Handle) -> Option<Outcome> {
        self.entries.get(thunk).map(|slot| {
            slot.referenced.set(true);
            outcome_of(&slot.entry)
        })
    }

    /// Whether an outcome is remembered for `thunk`, without counting as a use: looking
    /// ahead must not change which entries go first.
    pub fn contains(&self, thunk: &Handle) -> bool {
        self.entries.contains_key(thunk)
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
                    _ => {
                        // The cost of the copy kept, which is what `release` will give back (the
                        // caller's may have spare capacity the copy lacks).
                        let fresh = Arc::new(e.clone());
                        let cost = error_cost(&fresh);
                        if cost > self.error_limit {
                            return false;
                        }
                        // Room for it among the errors kept: the least recently used go.
                        while self.error_bytes.saturating_add(cost) > self.error_limit {
                            if self.evict_matching(64, true, pins) == 0 {
                                return false;
                            }
                        }
                        self.error_bytes += cost;
                        if let Some(old) = self.last_error.replace(fresh.clone()) {
                            self.release(old);
                        }
                        fresh
                    }
                };
                Entry::Error(shared)
            }
            Err(_) => return false,
        };
        for thunk in thunks {
            if let Entry::Value(v) = &entry {
                pins(*v, true);
            }
            let slot = Slot { entry: entry.clone(), referenced: Cell::new(true) };
            match self.entries.insert(*thunk, slot) {
                Some(Slot { entry: Entry::Value(old), .. }) => pins(old, false),
                Some(Slot { entry: Entry::Error(old), .. }) => self.release(old),
                None => {}
            }
        }
        if self.entries.len() > self.capacity {
            self.evict(self.entries.len() - self.capacity, pins);
        }
        true
    }

    /// Forgets up to `count` entries, least recently used first; returns how many it forgot.
    pub fn evict(&mut self, count: usize, pins: Pins<'_>) -> usize {
        self.evict_matching(count, false, pins)
    }

    /// As [`Memo::evict`], only errors if `errors_only`.
    fn evict_matching(&mut self, count: usize, errors_only: bool, pins: Pins<'_>) -> usize {
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
                let candidate = !errors_only || matches!(slot.entry, Entry::Error(_));
                if candidate && !slot.referenced.replace(false) {
                    victims.push(*thunk);
                }
                if victims.len() == victims.capacity() || budget == 0 {
                    break;
                }
            }
            for thunk in victims {
                if let Some(slot) = self.entries.remove(&thunk) {
                    match slot.entry {
                        Entry::Value(v) => pins(v, false),
                        Entry::Error(e) => self.release(e),
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

    fn error(i: u32, len: usize) -> EvalError {
        EvalError { thunk: Handle::blob(&i.to_le_bytes()), failure: Failure::TaskError("e".repeat(len)) }
    }

    fn thunk(i: u32) -> Handle {
        Handle::blob(&[i.to_le_bytes(); 3].concat())
    }

    #[test]
    fn distinct_errors_stay_within_their_bytes_least_recently_used_going_first() {
        let mut memo = Memo::new();
        memo.set_error_limit(64 << 10);
        for i in 0..1000u32 {
            assert!(memo.record(thunk(i), &Err(error(i, 4000)), &mut |_, _| {}));
            assert!(memo.error_bytes() <= 64 << 10, "{} bytes after {i}", memo.error_bytes());
        }
        // About 15 fit; the newest are among them, the oldest are gone.
        assert!(memo.len() >= 10 && memo.len() <= 16, "{}", memo.len());
        assert_eq!(memo.get(&thunk(999)), Some(Err(error(999, 4000))));
        assert_eq!(memo.get(&thunk(0)), None);
        // Values are not what made the room, and they are not counted.
        memo.record(thunk(5000), &Ok(Handle::blob(b"v")), &mut |_, _| {});
        memo.record(thunk(5001), &Err(error(5001, 4000)), &mut |_, _| {});
        assert_eq!(memo.get(&thunk(5000)), Some(Ok(Handle::blob(b"v"))));
    }

    #[test]
    fn a_shared_error_is_counted_once_and_freed_with_its_last_entry() {
        let mut memo = Memo::new();
        memo.set_error_limit(1 << 20);
        let shared = error(1, 4000);
        let chain: alloc::vec::Vec<Handle> = (0..10_000).map(thunk).collect();
        memo.record_all(&chain, &Err(shared.clone()), &mut |_, _| {});
        let one = memo.error_bytes();
        assert!((4000..5000).contains(&one), "{one}");
        // Recorded again as the last error, it is still one copy.
        memo.record(thunk(20_000), &Err(shared), &mut |_, _| {});
        assert_eq!(memo.error_bytes(), one);
        // Another error replaces it as the last; forgetting every entry frees both.
        memo.record(thunk(20_001), &Err(error(2, 100)), &mut |_, _| {});
        assert!(memo.error_bytes() > one);
        memo.evict(usize::MAX, &mut |_, _| {});
        assert!(memo.is_empty());
        assert_eq!(memo.error_bytes(), 0);
        // Overwriting an entry lets go of the error it held.
        memo.record(thunk(1), &Err(error(3, 4000)), &mut |_, _| {});
        memo.record(thunk(1), &Ok(Handle::blob(b"v")), &mut |_, _| {});
        memo.record(thunk(2), &Err(error(4, 10)), &mut |_, _| {});
        assert!(memo.error_bytes() < 1000, "{}", memo.error_bytes());
    }

    #[test]
    fn errors_with_spare_capacity_are_counted_as_kept_and_the_count_returns_to_zero() {
        // Errors built by pushing have spare capacity; the memo's copy has none. Counting the
        // original and releasing the copy left bytes counted for nothing, until the count sat at
        // the ceiling with no error kept and none was remembered again.
        let mut memo = Memo::new();
        memo.set_error_limit(64 << 10);
        for i in 0..5000u32 {
            let mut text = alloc::string::String::with_capacity(8000);
            text.push_str(&"e".repeat(2049));
            let spare =
                EvalError { thunk: Handle::blob(&i.to_le_bytes()), failure: Failure::TaskError(text) };
            assert!(memo.record(thunk(i), &Err(spare), &mut |_, _| {}), "error {i} not remembered");
        }
        memo.evict(usize::MAX, &mut |_, _| {});
        memo.record(thunk(9999), &Ok(Handle::blob(b"v")), &mut |_, _| {});
        assert_eq!(memo.error_bytes(), 0, "bytes counted with no error kept");
        assert!(memo.record(thunk(10_000), &Err(error(7, 4000)), &mut |_, _| {}));
    }

    #[test]
    fn an_error_larger_than_the_whole_limit_is_not_remembered() {
        let mut memo = Memo::new();
        memo.set_error_limit(1000);
        assert!(!memo.record(thunk(1), &Err(error(1, 4000)), &mut |_, _| {}));
        assert_eq!((memo.len(), memo.error_bytes()), (0, 0));
    }
}
