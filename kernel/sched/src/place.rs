//! Where a ready task runs (docs/SCHEDULER.md, "Placement"). Costs are computed only for the
//! nodes that hold some input and for the least loaded of the others, so placing a task costs
//! its inputs' holders, not the cluster's size.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use cairn_object::Handle;

use crate::NodeId;
use crate::holders::Holders;

/// How ready tasks are placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Where the fewest input bytes are missing, every node within [`SMALL_INPUTS`] of that
    /// counting as equal; among equals the least loaded.
    Locality,
    /// Where the fewest input bytes are missing, strictly (Fix's rule); ties by load.
    MinAbsent,
    /// Anywhere allowed, by a seeded random choice (the baseline).
    Random,
}

/// Input bytes that are not worth waiting for: within this of the cheapest node, load decides.
pub const SMALL_INPUTS: u64 = 64 * 1024;

/// The nodes a task may go to, as placement sees them.
pub struct Candidates<'a> {
    /// Every node that takes work, by (load, id).
    pub by_load: &'a BTreeSet<(usize, NodeId)>,
    /// Each node's load (tasks sent and not answered), by id.
    pub load: &'a [usize],
    /// Nodes this task must not go to (it ran there already, or verification's other copy).
    pub excluded: &'a [NodeId],
    /// Nodes alive (suspect or not): an input with this many holders is held by every
    /// candidate (holders are only ever live nodes), and costs nothing anywhere.
    pub live: usize,
}

impl Candidates<'_> {
    fn allowed(&self, node: NodeId) -> bool {
        !self.excluded.contains(&node)
            && self.load.get(node).is_some_and(|l| self.by_load.contains(&(*l, node)))
    }
}

/// xorshift64: the same seed gives the same choices.
fn next(rng: &mut u64) -> u64 {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    *rng
}

/// Chooses a node for a task with `inputs` (literals are held everywhere), or None if no
/// candidate is allowed.
pub fn place(
    inputs: &[Handle],
    candidates: &Candidates<'_>,
    holders: &Holders,
    policy: Placement,
    rng: &mut u64,
) -> Option<NodeId> {
    if policy == Placement::Random {
        return random(candidates, rng);
    }
    let mut unique: Vec<Handle> = inputs.iter().filter(|h| !h.is_literal()).copied().collect();
    unique.sort_unstable();
    unique.dedup();
    let mut total = 0u64;
    // Bytes of the inputs each holder holds.
    let mut held: BTreeMap<NodeId, u64> = BTreeMap::new();
    for input in &unique {
        if holders.count(input) >= candidates.live {
            continue; // everywhere (a procedure, say): looking at each holder would cost N
        }
        total = total.saturating_add(input.size());
        for node in holders.holders(input).filter(|n| candidates.allowed(*n)) {
            let bytes = held.entry(node).or_default();
            *bytes = bytes.saturating_add(input.size());
        }
    }
    // (cost, load, id) of every holder, and of the least loaded node holding nothing.
    let mut options: Vec<(u64, usize, NodeId)> =
        held.iter().map(|(&node, &bytes)| (total - bytes, candidates.load[node], node)).collect();
    if let Some(&(load, node)) =
        candidates.by_load.iter().find(|(_, n)| !held.contains_key(n) && !candidates.excluded.contains(n))
    {
        options.push((total, load, node));
    }
    let least = options.iter().map(|o| o.0).min()?;
    let band = match policy {
        Placement::Locality => SMALL_INPUTS,
        _ => 0,
    };
    options
        .into_iter()
        .filter(|o| o.0 <= least.saturating_add(band))
        .min_by_key(|&(cost, load, node)| (load, cost, node))
        .map(|o| o.2)
}

fn random(candidates: &Candidates<'_>, rng: &mut u64) -> Option<NodeId> {
    let n = candidates.load.len();
    if n == 0 {
        return None;
    }
    // Uniform over the allowed nodes: draws until one is allowed, then (a cluster mostly
    // excluded) from the list of them.
    for _ in 0..32 {
        let node = (next(rng) % n as u64) as usize;
        if candidates.allowed(node) {
            return Some(node);
        }
    }
    let allowed: Vec<NodeId> = (0..n).filter(|node| candidates.allowed(*node)).collect();
    if allowed.is_empty() {
        return None;
    }
    Some(allowed[(next(rng) % allowed.len() as u64) as usize])
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use proptest::prelude::*;

    fn blob(n: usize, seed: u8) -> Handle {
        Handle::blob(&vec![seed; n])
    }

    fn by_load(load: &[usize]) -> BTreeSet<(usize, NodeId)> {
        load.iter().enumerate().map(|(n, l)| (*l, n)).collect()
    }

    fn choose(inputs: &[Handle], load: &[usize], holders: &Holders, policy: Placement) -> Option<NodeId> {
        let set = by_load(load);
        place(
            inputs,
            &Candidates { by_load: &set, load, excluded: &[], live: load.len() },
            holders,
            policy,
            &mut 1,
        )
    }

    #[test]
    fn big_inputs_go_where_they_are_and_small_ones_balance_load() {
        let (a, b) = (blob(1 << 20, 1), blob(1 << 20, 2));
        let mut holders = Holders::default();
        holders.add(a, 0);
        holders.add(b, 2);
        assert_eq!(choose(&[a], &[0, 0, 0], &holders, Placement::Locality), Some(0));
        assert_eq!(choose(&[b], &[0, 0, 0], &holders, Placement::Locality), Some(2));
        // Even when busy, a node holding 1 MiB of input beats an idle one that would fetch it.
        assert_eq!(choose(&[a], &[3, 0], &holders, Placement::Locality), Some(0));
        // Small inputs: the least loaded node wins.
        let small = blob(1000, 3);
        holders.add(small, 0);
        assert_eq!(choose(&[small], &[2, 1, 0], &holders, Placement::Locality), Some(2));
        // Strictly the fewest bytes missing, whatever the load.
        assert_eq!(choose(&[small], &[2, 1, 0], &holders, Placement::MinAbsent), Some(0));
        assert_eq!(choose(&[a], &[], &holders, Placement::Locality), None);
    }

    #[test]
    fn excluded_and_absent_nodes_are_never_chosen() {
        let a = blob(1 << 20, 1);
        let mut holders = Holders::default();
        holders.add(a, 0);
        let load = [0, 5, 0];
        // Node 2 takes no work (it is lost, or suspect): it is not in `by_load`.
        let set: BTreeSet<(usize, NodeId)> = [(0, 0), (5, 1)].into_iter().collect();
        for policy in [Placement::Locality, Placement::MinAbsent, Placement::Random] {
            let c = Candidates { by_load: &set, load: &load, excluded: &[0], live: 3 };
            for seed in 1..50 {
                assert_eq!(place(&[a], &c, &holders, policy, &mut { seed }), Some(1), "{policy:?}");
            }
            let c = Candidates { by_load: &set, load: &load, excluded: &[0, 1], live: 3 };
            assert_eq!(place(&[a], &c, &holders, policy, &mut 3), None);
        }
    }

    proptest! {
        /// Placement agrees with the rule written out over every node.
        #[test]
        fn the_chosen_node_is_the_one_the_rule_names(
            sizes in proptest::collection::vec(1usize..200_000, 1..6),
            held in proptest::collection::vec(proptest::collection::vec(any::<bool>(), 5), 6),
            load in proptest::collection::vec(0usize..4, 5),
            excluded in proptest::collection::vec(0usize..5, 0..3),
        ) {
            let inputs: Vec<Handle> = sizes.iter().enumerate().map(|(i, n)| blob(*n, i as u8)).collect();
            let mut holders = Holders::default();
            for (h, held_by) in inputs.iter().zip(&held) {
                for (node, _) in held_by.iter().enumerate().filter(|(_, held)| **held) {
                    holders.add(*h, node);
                }
            }
            let set = by_load(&load);
            let c = Candidates { by_load: &set, load: &load, excluded: &excluded, live: 5 };
            let allowed: Vec<NodeId> = (0..5).filter(|n| !excluded.contains(n)).collect();
            for (policy, band) in [(Placement::Locality, SMALL_INPUTS), (Placement::MinAbsent, 0)] {
                let chosen = place(&inputs, &c, &holders, policy, &mut 7);
                let least = allowed.iter().map(|n| holders.missing_bytes(&inputs, *n)).min();
                let expected = allowed
                    .iter()
                    .map(|&n| (holders.missing_bytes(&inputs, n), load[n], n))
                    .filter(|o| Some(o.0) <= least.map(|l| l + band))
                    .min_by_key(|&(cost, load, n)| (load, cost, n))
                    .map(|o| o.2);
                prop_assert_eq!(chosen, expected);
            }
            let random = place(&inputs, &c, &holders, Placement::Random, &mut 7);
            prop_assert_eq!(random.is_some(), !allowed.is_empty());
            prop_assert!(random.is_none_or(|n| allowed.contains(&n)));
        }
    }
}
