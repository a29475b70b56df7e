//! The processes `attach --follow` traces: the target and every process whose parent chain
//! reaches it. Pure.
use std::collections::{HashMap, HashSet};

/// The tgids among `parents` (tgid → its parent's tgid) that descend from `root`, `root`
/// included.
pub fn members(root: u32, parents: &HashMap<u32, u32>) -> HashSet<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&child, &parent) in parents {
        children.entry(parent).or_default().push(child);
    }
    let mut members = HashSet::from([root]);
    let mut pending = vec![root];
    while let Some(parent) = pending.pop() {
        for &child in children.get(&parent).into_iter().flatten() {
            if members.insert(child) {
                pending.push(child);
            }
        }
    }
    members
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descendants_of_every_depth_are_members_and_nothing_else_is() {
        // 1 ─ 10 (root) ─ 11 ─ 12;  10 ─ 13;  1 ─ 20 ─ 21
        let parents = HashMap::from([(10, 1), (11, 10), (12, 11), (13, 10), (20, 1), (21, 20)]);
        assert_eq!(members(10, &parents), HashSet::from([10, 11, 12, 13]));
        assert_eq!(members(12, &parents), HashSet::from([12]));
        assert_eq!(members(99, &parents), HashSet::from([99]));
    }

    #[test]
    fn a_loop_in_stale_parents_ends() {
        // A recycled pid can make the recorded parents circular.
        let parents = HashMap::from([(10, 11), (11, 10)]);
        assert_eq!(members(10, &parents), HashSet::from([10, 11]));
    }
}
