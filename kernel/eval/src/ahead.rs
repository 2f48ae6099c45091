//! Running ahead (docs/EVALUATION.md): the walk offers the executor pure applications that are
//! ready (every argument a value) before it reaches them, so that other CPUs run them meanwhile.
//! These are only offers: the walk still applies everything in its order and keeps every
//! book (memo, stats, pins, taint); what ran ahead comes back through `apply`.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::AtomicU64;

use cairn_object::io::Effect;
use cairn_object::store::Store;
use cairn_object::{Handle, Kind, Thunk};

use crate::charge::Charge;
use crate::eval::{Application, Ceilings, Executor, Stats};
use crate::memo::Memo;

/// Thunks one look ahead decodes at most: it runs whenever the walk makes or resumes a frame,
/// so a huge graph costs this much per step, not its size.
pub const LOOKAHEAD_DECODES: usize = 256;
/// Handles one look ahead considers at most (thunks found remembered or offered cost no
/// decode, but a wide frame of them must not cost its width at every step).
const LOOKS: usize = 4096;
/// How many thunks deep below a frame's arguments a look ahead goes.
const DEPTH: usize = 16;
/// A thunk encoded in more bytes (about 400 arguments) is not looked into: the walk looks at
/// its arguments once it makes it a frame.
const THUNK_BYTES: usize = 16 << 10;
/// Thunks offered in one evaluation at most; past that, the rest run in order.
const OFFERS: usize = 1 << 16;

/// What the look ahead borrows from the evaluator.
pub(crate) struct Context<'a, S, E> {
    pub store: &'a mut S,
    pub executor: &'a mut E,
    /// The memo, if the evaluation uses it (a replay does not).
    pub memo: Option<&'a Memo>,
    pub ceilings: &'a Ceilings,
    pub stats: &'a mut Stats,
    /// What the look-ahead tables of every evaluation hold (`Ceilings::lookahead_bytes`).
    pub tables_held: &'a Arc<AtomicU64>,
}

impl<S: Store, E> Context<'_, S, E> {
    /// Whether the walk will find an outcome for `thunk` instead of evaluating it (as
    /// `Evaluator::recorded`, but marking nothing as used).
    fn recorded(&self, thunk: &Handle) -> bool {
        let Some(memo) = self.memo else { return false };
        memo.contains(thunk) || self.store.recall_memo(thunk).is_some_and(|value| self.store.contains(&value))
    }
}

/// The look ahead's memory, kept between evaluations so that a steady state allocates nothing.
pub(crate) struct Ahead {
    offered: Offered,
    /// The arguments of the thunks being looked into, one level after another.
    args: Vec<Handle>,
    levels: Vec<Level>,
    /// The arguments of the application being offered.
    offer: Vec<Handle>,
}

/// A thunk being looked into: its arguments are `args[next..end]` still to look at.
struct Level {
    start: usize,
    next: usize,
    end: usize,
}

#[derive(PartialEq)]
enum Flow {
    Go,
    Stop,
}

/// What one look ahead may still do.
struct Budget {
    decodes: usize,
    looks: usize,
}

impl Ahead {
    pub(crate) fn new() -> Ahead {
        Ahead { offered: Offered::new(), args: Vec::new(), levels: Vec::new(), offer: Vec::new() }
    }

    /// An evaluation begins: nothing is offered in it yet.
    pub(crate) fn begin(&mut self) {
        self.offered.clear();
    }

    /// Kept between evaluations: its table stays allocated but is no longer charged.
    pub(crate) fn park(&mut self) {
        self.offered.charge = Charge::none();
    }

    /// Taken up again: its table is charged again, or freed if the ceiling has no room for it.
    pub(crate) fn unpark(&mut self, held: &Arc<AtomicU64>, ceiling: u64) {
        let offered = &mut self.offered;
        if offered.slots.is_empty() {
            return;
        }
        let bytes = (offered.slots.len() * core::mem::size_of::<(u32, Handle)>()) as u64;
        match Charge::take(held, bytes, ceiling) {
            Ok(charge) => offered.charge = charge,
            Err(_) => {
                offered.slots = Vec::new();
                offered.len = 0;
            }
        }
    }

    /// Offers the ready thunks among `args[from..]`, and below them at most `depth` thunks
    /// deep, in the order the walk reaches them, while the executor has room. Returns the index
    /// of the first argument not looked into completely (the next look starts there).
    pub(crate) fn look<S: Store, E: Executor<S>>(
        &mut self,
        cx: &mut Context<'_, S, E>,
        args: &[Handle],
        from: usize,
        depth: usize,
    ) -> usize {
        if depth == 0 {
            // The walk stops at the depth ceiling before it enters any of them.
            return args.len();
        }
        let mut budget = Budget { decodes: LOOKAHEAD_DECODES, looks: LOOKS };
        for (i, arg) in args.iter().enumerate().skip(from) {
            let flow = self.visit(cx, *arg, depth.min(DEPTH), &mut budget);
            self.args.clear();
            self.levels.clear();
            if flow == Flow::Stop {
                return i;
            }
        }
        args.len()
    }

    /// Looks at `arg` and, depth first, at the thunks among its arguments.
    fn visit<S: Store, E: Executor<S>>(
        &mut self,
        cx: &mut Context<'_, S, E>,
        arg: Handle,
        depth: usize,
        budget: &mut Budget,
    ) -> Flow {
        if self.consider(cx, arg, depth, budget) == Flow::Stop {
            return Flow::Stop;
        }
        while let Some(level) = self.levels.last_mut() {
            if level.next == level.end {
                let start = level.start;
                self.levels.pop();
                self.args.truncate(start);
                continue;
            }
            let handle = self.args[level.next];
            level.next += 1;
            let below = depth.saturating_sub(self.levels.len());
            if self.consider(cx, handle, below, budget) == Flow::Stop {
                return Flow::Stop;
            }
        }
        Flow::Go
    }

    /// Offers `handle` if it is ready, or pushes a level to look into it if it waits on
    /// thunks and `depth` allows; `Stop` when this look ahead can do no more.
    fn consider<S: Store, E: Executor<S>>(
        &mut self,
        cx: &mut Context<'_, S, E>,
        handle: Handle,
        depth: usize,
        budget: &mut Budget,
    ) -> Flow {
        if budget.looks == 0 {
            return Flow::Stop;
        }
        budget.looks -= 1;
        // A value, a thunk already offered, or one the walk will find remembered (and so never
        // enter): nothing to start there.
        if handle.kind() != Kind::Thunk || self.offered.contains(&handle) || cx.recorded(&handle) {
            return Flow::Go;
        }
        if budget.decodes == 0 || cx.executor.room_ahead() == 0 {
            return Flow::Stop;
        }
        budget.decodes -= 1;
        let Some(bytes) = cx.store.get(&handle) else { return Flow::Go };
        if bytes.len() > THUNK_BYTES {
            return Flow::Go;
        }
        let Ok(thunk) = Thunk::decode(&bytes) else { return Flow::Go };
        // The walk fails such a thunk with `node limit` without applying it or entering it.
        if thunk.limits().memory_bytes() > cx.ceilings.task_memory_bytes
            || thunk.args().len() as u64 > cx.ceilings.tree_entries
        {
            return Flow::Go;
        }
        if thunk.args().any(|arg| arg.kind() == Kind::Thunk) {
            return self.descend(&thunk, depth);
        }
        // IO is performed by the walk, in order, and never ahead of it.
        if Effect::of(&thunk.procedure()).is_some() {
            return Flow::Go;
        }
        self.offer(cx, handle, &thunk)
    }

    /// Pushes a level for `thunk`'s arguments, if it is not already `depth` deep.
    fn descend(&mut self, thunk: &Thunk<'_>, depth: usize) -> Flow {
        if depth <= 1 {
            return Flow::Go;
        }
        if self.levels.try_reserve(1).is_err() || self.args.try_reserve(thunk.args().len()).is_err() {
            return Flow::Stop;
        }
        let start = self.args.len();
        self.args.extend(thunk.args());
        self.levels.push(Level { start, next: start, end: self.args.len() });
        Flow::Go
    }

    /// Offers a ready thunk: as its arguments are values, the thunk as applied is the thunk.
    fn offer<S: Store, E: Executor<S>>(
        &mut self,
        cx: &mut Context<'_, S, E>,
        handle: Handle,
        thunk: &Thunk<'_>,
    ) -> Flow {
        self.offer.clear();
        // Recorded as offered first: an offer that cannot be recorded is not made.
        let (held, ceiling) = (cx.tables_held, cx.ceilings.lookahead_bytes);
        if self.offer.try_reserve(thunk.args().len()).is_err() || !self.offered.insert(handle, held, ceiling)
        {
            return Flow::Stop;
        }
        self.offer.extend(thunk.args());
        let app = Application {
            thunk: handle,
            limits: thunk.limits(),
            procedure: thunk.procedure(),
            args: &self.offer,
        };
        if cx.executor.start_ahead(cx.store, &app) {
            cx.stats.started_ahead += 1;
        }
        Flow::Go
    }
}

/// The thunks offered in this evaluation: a flat table, open addressing, at most half full,
/// emptied by moving to the next generation rather than by writing every slot.
struct Offered {
    /// (generation, thunk): a slot holds a thunk of this evaluation if its generation is.
    slots: Vec<(u32, Handle)>,
    generation: u32,
    len: usize,
    /// `slots`' heap, charged against the ceiling of all walks' tables.
    charge: Charge,
}

impl Offered {
    fn new() -> Offered {
        Offered { slots: Vec::new(), generation: 1, len: 0, charge: Charge::none() }
    }

    fn clear(&mut self) {
        self.len = 0;
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            // Once in 2^32 evaluations: slots of old generations must not look current.
            self.slots.iter_mut().for_each(|slot| slot.0 = 0);
            self.generation = 1;
        }
    }

    /// Thunk handles are digests: eight of their bytes, mixed, spread well.
    fn home(&self, handle: &Handle) -> usize {
        let word = u64::from_le_bytes(handle.as_bytes()[8..16].try_into().expect("8 bytes"));
        (word.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize & (self.slots.len() - 1)
    }

    /// The slot holding `handle`, or the empty one where it would go.
    fn find(&self, handle: &Handle) -> (usize, bool) {
        let mask = self.slots.len() - 1;
        let mut i = self.home(handle);
        loop {
            let (generation, held) = &self.slots[i];
            if *generation != self.generation {
                return (i, false);
            }
            if held == handle {
                return (i, true);
            }
            i = (i + 1) & mask;
        }
    }

    fn contains(&self, handle: &Handle) -> bool {
        !self.slots.is_empty() && self.find(handle).1
    }

    /// Adds `handle`; false if there is no room for it (at the bound, past the tables'
    /// `ceiling` counted in `held`, or no memory).
    fn insert(&mut self, handle: Handle, held: &Arc<AtomicU64>, ceiling: u64) -> bool {
        if self.contains(&handle) {
            return true;
        }
        if (self.len + 1) * 2 > self.slots.len() && !self.grow(held, ceiling) {
            return false;
        }
        let (i, _) = self.find(&handle);
        self.slots[i] = (self.generation, handle);
        self.len += 1;
        true
    }

    fn grow(&mut self, held: &Arc<AtomicU64>, ceiling: u64) -> bool {
        let size = (self.slots.len() * 2).max(64);
        if size > 2 * OFFERS {
            return false;
        }
        // The old table is still held while the new one is filled: both are charged.
        let bytes = (size * core::mem::size_of::<(u32, Handle)>()) as u64;
        let Ok(charge) = Charge::take(held, bytes, ceiling) else { return false };
        let mut slots = Vec::new();
        if slots.try_reserve_exact(size).is_err() {
            return false;
        }
        // Any handle will do in a slot of generation 0, which is never current.
        slots.resize(size, (0, Handle::blob(&[])));
        let old = core::mem::replace(&mut self.slots, slots);
        for (generation, handle) in old {
            if generation == self.generation {
                let (i, _) = self.find(&handle);
                self.slots[i] = (generation, handle);
            }
        }
        self.charge = charge;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thunk(n: u32) -> Handle {
        let encoding = cairn_object::thunk::encode(
            cairn_object::Limits::new(4096).unwrap(),
            Handle::blob(b"op"),
            &[Handle::blob(&n.to_le_bytes())],
        )
        .unwrap();
        Thunk::decode(&encoding).unwrap().handle()
    }

    fn unbounded() -> Arc<AtomicU64> {
        Arc::new(AtomicU64::new(0))
    }

    #[test]
    fn the_offered_set_grows_to_its_bound_and_empties_in_one_step() {
        let mut set = Offered::new();
        let held = unbounded();
        for n in 0..OFFERS as u32 {
            assert!(set.insert(thunk(n), &held, u64::MAX), "{n}");
        }
        assert!(set.insert(thunk(5), &held, u64::MAX), "already there");
        assert!(!set.insert(thunk(OFFERS as u32), &held, u64::MAX), "full");
        assert!((0..OFFERS as u32).step_by(97).all(|n| set.contains(&thunk(n))));
        let table = set.slots.capacity();
        set.clear();
        assert!(!set.contains(&thunk(0)) && set.len == 0);
        assert!(set.insert(thunk(1), &held, u64::MAX) && set.contains(&thunk(1)) && !set.contains(&thunk(2)));
        assert_eq!(set.slots.capacity(), table, "reused, not reallocated");
    }

    #[test]
    fn tables_are_charged_to_their_shared_ceiling_and_give_it_back() {
        use core::sync::atomic::Ordering;
        let slot = core::mem::size_of::<(u32, Handle)>() as u64;
        let held = unbounded();
        // Room for the first table (64 slots, half of them usable), not for growing it (the
        // old and the new table are held at once) nor for a second walk's.
        let ceiling = 100 * slot;
        let mut set = Offered::new();
        for n in 0..32u32 {
            assert!(set.insert(thunk(n), &held, ceiling), "{n}");
        }
        assert_eq!(held.load(Ordering::Relaxed), 64 * slot);
        assert!(!set.insert(thunk(32), &held, ceiling), "no room to grow");
        assert_eq!(held.load(Ordering::Relaxed), 64 * slot, "nothing kept of the refused growth");
        assert!((0..32).all(|n| set.contains(&thunk(n))));
        let mut other = Offered::new();
        assert!(!other.insert(thunk(1000), &held, ceiling), "no room for a second walk's table");
        assert!(!other.contains(&thunk(1000)));
        drop(set);
        assert_eq!(held.load(Ordering::Relaxed), 0);
        assert!(other.insert(thunk(1000), &held, ceiling));
    }

    #[test]
    fn a_wrapped_generation_forgets_the_old_ones() {
        let mut set = Offered::new();
        set.generation = u32::MAX;
        assert!(set.insert(thunk(1), &unbounded(), u64::MAX));
        set.clear();
        assert_eq!(set.generation, 1);
        assert!(!set.contains(&thunk(1)));
    }
}
