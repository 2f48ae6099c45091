//! Which nodes hold which objects, as the scheduler knows it.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use cairn_object::Handle;

use crate::NodeId;

#[derive(Debug, Default, Clone)]
pub struct Holders {
    /// Each object's holders, sorted.
    map: BTreeMap<Handle, Vec<NodeId>>,
}

impl Holders {
    pub fn add(&mut self, handle: Handle, node: NodeId) {
        if handle.is_literal() {
            return;
        }
        let set = self.map.entry(handle).or_default();
        if let Err(at) = set.binary_search(&node) {
            set.insert(at, node);
        }
    }

    pub fn holds(&self, handle: &Handle, node: NodeId) -> bool {
        handle.is_literal() || self.map.get(handle).is_some_and(|s| s.binary_search(&node).is_ok())
    }

    pub fn holders(&self, handle: &Handle) -> impl Iterator<Item = NodeId> + '_ {
        self.map.get(handle).into_iter().flatten().copied()
    }

    /// How many nodes hold `handle`.
    pub fn count(&self, handle: &Handle) -> usize {
        self.map.get(handle).map_or(0, Vec::len)
    }

    /// Forgets a node (it died, or lies): what only it held is held by nobody now.
    pub fn drop_node(&mut self, node: NodeId) {
        self.map.retain(|_, set| {
            if let Ok(at) = set.binary_search(&node) {
                set.remove(at);
            }
            !set.is_empty()
        });
    }

    /// Bytes of `inputs` that `node` lacks.
    pub fn missing_bytes(&self, inputs: &[Handle], node: NodeId) -> u64 {
        inputs.iter().filter(|h| !self.holds(h, node)).map(|h| h.size()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losing_a_node_forgets_what_it_held() {
        let a = Handle::blob(&[1u8; 100]);
        let mut holders = Holders::default();
        holders.add(a, 2);
        holders.add(a, 1);
        holders.add(a, 2);
        assert_eq!(holders.holders(&a).collect::<Vec<_>>(), [1, 2], "sorted, each once");
        holders.drop_node(1);
        assert_eq!(holders.holders(&a).collect::<Vec<_>>(), [2]);
        assert_eq!(holders.missing_bytes(&[a, Handle::blob(b"literal")], 1), 100);
        holders.drop_node(2);
        assert!(holders.map.is_empty(), "nothing kept for objects nobody holds");
    }
}
