//! A set of handles in one flat table that grows fallibly: for a kernel that must never abort
//! on what a task or a client makes it remember (the handles a task may name, EVAL-3).
//! Open addressing with linear probing, at most half full. Handles are BLAKE3 digests or
//! literal bytes, so a few of their bytes, mixed, make a good enough hash.

use alloc::collections::TryReserveError;
use alloc::vec::Vec;

use crate::handle::Handle;

/// No valid handle is all zeros (kind 0 does not exist): it marks an empty slot.
const EMPTY: [u8; Handle::LEN] = [0; Handle::LEN];

#[derive(Clone, Debug, Default)]
pub struct HandleSet {
    slots: Vec<[u8; Handle::LEN]>,
    len: usize,
}

fn hash(bytes: &[u8; Handle::LEN]) -> u64 {
    let word = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    let mixed =
        word(0) ^ word(8).rotate_left(17) ^ word(16).rotate_left(31) ^ word(24) ^ word(32).rotate_left(47);
    // A final multiply spreads literal handles, whose bytes are mostly zero, over the table.
    (mixed ^ (mixed >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

impl HandleSet {
    pub fn new() -> HandleSet {
        HandleSet::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the table takes.
    pub fn table_bytes(&self) -> usize {
        self.slots.len() * Handle::LEN
    }

    fn slot_of(slots: &[[u8; Handle::LEN]], bytes: &[u8; Handle::LEN]) -> (usize, bool) {
        let mask = slots.len() - 1;
        let mut i = hash(bytes) as usize & mask;
        loop {
            if slots[i] == *bytes {
                return (i, true);
            }
            if slots[i] == EMPTY {
                return (i, false);
            }
            i = (i + 1) & mask;
        }
    }

    pub fn contains(&self, handle: &Handle) -> bool {
        !self.slots.is_empty() && Self::slot_of(&self.slots, handle.as_bytes()).1
    }

    /// Makes room for `additional` more handles; nothing changes if the memory is not there.
    pub fn try_reserve(&mut self, additional: usize) -> Result<(), TryReserveError> {
        let needed = self.len.saturating_add(additional).saturating_mul(2).max(8);
        if needed <= self.slots.len() {
            return Ok(());
        }
        let capacity = needed.checked_next_power_of_two().unwrap_or(usize::MAX / 2 + 1);
        let mut slots: Vec<[u8; Handle::LEN]> = Vec::new();
        slots.try_reserve_exact(capacity)?;
        slots.resize(capacity, EMPTY);
        for old in self.slots.iter().filter(|s| **s != EMPTY) {
            let (i, _) = Self::slot_of(&slots, old);
            slots[i] = *old;
        }
        self.slots = slots;
        Ok(())
    }

    /// Adds `handle`; `Ok(true)` if it was not there yet.
    pub fn try_insert(&mut self, handle: Handle) -> Result<bool, TryReserveError> {
        self.try_reserve(1)?;
        let (i, present) = Self::slot_of(&self.slots, handle.as_bytes());
        if !present {
            self.slots[i] = *handle.as_bytes();
            self.len += 1;
        }
        Ok(!present)
    }

    /// Adds every handle of `handles`, reserving room for all of them first.
    pub fn try_extend(
        &mut self,
        handles: impl ExactSizeIterator<Item = Handle>,
    ) -> Result<(), TryReserveError> {
        self.try_reserve(handles.len())?;
        for handle in handles {
            self.try_insert(handle)?;
        }
        Ok(())
    }

    pub fn clear(&mut self) {
        self.slots.clear();
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::Kind;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn handle(n: u64) -> Handle {
        match n % 3 {
            0 => Handle::blob(&n.to_le_bytes()),
            1 => Handle::blob(&[n.to_le_bytes(), [7; 8], [9; 8], [1; 8], [2; 8]].concat()),
            _ => crate::tree::Tree::decode(&crate::tree::encode(&[Handle::blob(
                &[n.to_le_bytes(); 5].concat(),
            )]))
            .unwrap()
            .handle(),
        }
    }

    #[test]
    fn inserts_finds_and_grows() {
        let mut set = HandleSet::new();
        assert!(!set.contains(&handle(1)));
        for n in 0..10_000 {
            assert!(set.try_insert(handle(n)).unwrap());
        }
        assert!(!set.try_insert(handle(5)).unwrap(), "already there");
        assert_eq!(set.len(), 10_000);
        assert!((0..10_000).all(|n| set.contains(&handle(n))));
        assert!(!(10_000..20_000).any(|n| set.contains(&handle(n))));
        assert!(set.table_bytes() <= 4 * 10_000 * Handle::LEN);
        assert_eq!(handle(2).kind(), Kind::Tree);
    }

    #[test]
    fn an_impossible_reservation_fails_cleanly() {
        let mut set = HandleSet::new();
        set.try_insert(handle(1)).unwrap();
        assert!(set.try_reserve(usize::MAX / 4).is_err());
        assert!(set.contains(&handle(1)) && set.len() == 1, "unchanged");
    }

    proptest! {
        #[test]
        fn behaves_like_a_set(ops in proptest::collection::vec((any::<bool>(), 0u64..200), 0..400)) {
            let (mut set, mut model) = (HandleSet::new(), BTreeSet::new());
            for (insert, n) in ops {
                if insert {
                    prop_assert_eq!(set.try_insert(handle(n)).unwrap(), model.insert(n));
                } else {
                    prop_assert_eq!(set.contains(&handle(n)), model.contains(&n));
                }
            }
            prop_assert_eq!(set.len(), model.len());
        }
    }
}
