//! Consistent hashing on a ring of virtual points, one ring per priority tier.
//!
//! A node owns [`POINTS_PER_WEIGHT`] points per unit of weight, each hashed from the node's id and
//! the point's number. The ring therefore depends only on the set of nodes, not on their order in
//! the list, and adding or removing a node moves only the keys that land on its points. A key is
//! served by the first point at or clockwise after the key's hash; an excluded node is passed over
//! by walking on clockwise, which sends its keys exactly where removing the node would.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::NodeSpec;

/// As nginx's `hash ... consistent` and APISIX's resty.chash.
pub const POINTS_PER_WEIGHT: u32 = 160;

/// Above this many points in a tier, every node's share is scaled down in proportion to its
/// weight. It keeps the ring to about 2 MiB when weights are large (`100` on each of 100 nodes
/// would otherwise make 1.6 million points); below it, no node's point count depends on the others.
pub const MAX_RING_POINTS: u32 = 160 * 1024;

/// The points of one tier, sorted by hash.
#[derive(Debug, Clone)]
pub(crate) struct Ring {
    /// Split from `owners` so the binary search walks a dense array of hashes.
    hashes: Box<[u64]>,
    owners: Box<[u32]>,
}

impl Ring {
    /// The ring of the nodes `tier` indexes into `specs`; every one of them must have a weight.
    pub(crate) fn new(specs: &[NodeSpec], tier: &[usize]) -> Self {
        let total: u64 = tier.iter().map(|&i| u64::from(specs[i].weight)).sum();
        let wanted = total * u64::from(POINTS_PER_WEIGHT);
        let points_of = |weight: u32| -> u64 {
            if wanted <= u64::from(MAX_RING_POINTS) {
                u64::from(weight) * u64::from(POINTS_PER_WEIGHT)
            } else {
                (u64::from(weight) * u64::from(MAX_RING_POINTS) / total).max(1)
            }
        };

        let mut points: Vec<(u64, u32)> = Vec::new();
        for &node in tier {
            let owner = u32::try_from(node).expect("more than u32::MAX nodes");
            let id = specs[node].id.as_bytes();
            points.extend(
                (0..points_of(specs[node].weight)).map(|n| (xxh3_64_with_seed(id, n), owner)),
            );
        }
        // Ties (equal hashes, or two nodes with one id) are broken by id, then by index, so the
        // ring still does not depend on the list order unless the ids themselves repeat.
        points.sort_unstable_by(|&(ha, a), &(hb, b)| {
            let id = |n: u32| specs[n as usize].id.as_str();
            ha.cmp(&hb).then_with(|| id(a).cmp(id(b))).then(a.cmp(&b))
        });
        Self {
            hashes: points.iter().map(|&(hash, _)| hash).collect(),
            owners: points.iter().map(|&(_, owner)| owner).collect(),
        }
    }

    /// The node serving `key`, or `None` when every node of the tier (`tier`) is excluded.
    pub(crate) fn pick(
        &self,
        tier: &[usize],
        key: &[u8],
        excluded: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let len = self.hashes.len();
        let hash = xxh3_64(key);
        let start = match self.hashes.partition_point(|&h| h < hash) {
            end if end == len => 0,
            at => at,
        };
        let owner = |pos: usize| self.owners[pos % len] as usize;

        let first = owner(start);
        if !excluded(first) {
            return Some(first);
        }
        // Without this check, a tier whose nodes are all excluded would cost a walk round the
        // whole ring; with it, the walk below is sure to stop, and after a few points at most.
        if tier.iter().all(|&node| excluded(node)) {
            return None;
        }
        (start + 1..start + len)
            .map(owner)
            .find(|&node| !excluded(node))
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.hashes.len()
    }
}

#[cfg(test)]
mod tests {
    use crate::{Algorithm, BalancerSpec, NodeSpec};

    const KEYS: usize = 10_000;

    fn key(k: usize) -> Vec<u8> {
        format!("user-{k}").into_bytes()
    }

    fn ids(range: impl Iterator<Item = usize>) -> Vec<NodeSpec> {
        range
            .map(|i| NodeSpec::new(format!("10.0.0.{i}:80"), 1))
            .collect()
    }

    /// Which node id each of `KEYS` keys goes to, with `excluded` nodes passed over.
    fn assign(nodes: &[NodeSpec], excluded: impl Fn(usize) -> bool + Copy) -> Vec<String> {
        let spec = BalancerSpec::new(Algorithm::ConsistentHash, nodes);
        let mut state = spec.new_state();
        (0..KEYS)
            .map(|k| {
                let node = state.pick(&spec, Some(&key(k)), excluded).unwrap();
                nodes[node].id.clone()
            })
            .collect()
    }

    fn moved(before: &[String], after: &[String]) -> Vec<usize> {
        (0..KEYS).filter(|&k| before[k] != after[k]).collect()
    }

    #[test]
    fn removing_a_node_moves_only_its_own_keys() {
        let all = ids(0..10);
        let before = assign(&all, |_| false);
        let gone = "10.0.0.3:80";
        let without: Vec<NodeSpec> = all.iter().filter(|n| n.id != gone).cloned().collect();
        let after = assign(&without, |_| false);

        let moved = moved(&before, &after);
        assert!(moved.iter().all(|&k| before[k] == gone));
        assert_eq!(moved.len(), before.iter().filter(|id| *id == gone).count());
        // About 1/n of the keys: 1,000 expected.
        assert!(
            (700..=1300).contains(&moved.len()),
            "{} keys moved",
            moved.len()
        );
        // The orphans are spread over the survivors rather than dumped on one neighbour.
        let heirs = |id: &String| moved.iter().filter(|&&k| &after[k] == id).count();
        assert!(without.iter().all(|n| heirs(&n.id) < moved.len() / 3));
    }

    #[test]
    fn adding_the_node_back_restores_every_key() {
        let all = ids(0..10);
        let before = assign(&all, |_| false);
        let nine: Vec<NodeSpec> = all[..9].to_vec();
        assert_ne!(assign(&nine, |_| false), before);
        // Back in at the front of the list rather than the end: order must not matter.
        let mut again = vec![all[9].clone()];
        again.extend(nine);
        assert_eq!(assign(&again, |_| false), before);
    }

    #[test]
    fn adding_a_node_takes_about_its_share_only_from_others() {
        let before = assign(&ids(0..10), |_| false);
        let after = assign(&ids(0..11), |_| false);
        let moved = moved(&before, &after);
        assert!(moved.iter().all(|&k| after[k] == "10.0.0.10:80"));
        // 10,000 / 11 = 909 expected.
        assert!(
            (600..=1200).contains(&moved.len()),
            "{} keys moved",
            moved.len()
        );
    }

    #[test]
    fn excluding_a_node_is_the_same_as_removing_it() {
        let all = ids(0..10);
        let without: Vec<NodeSpec> = all
            .iter()
            .filter(|n| n.id != "10.0.0.3:80")
            .cloned()
            .collect();
        assert_eq!(assign(&all, |i| i == 3), assign(&without, |_| false));
        let without_two: Vec<NodeSpec> = without
            .iter()
            .filter(|n| n.id != "10.0.0.7:80")
            .cloned()
            .collect();
        assert_eq!(
            assign(&all, |i| i == 3 || i == 7),
            assign(&without_two, |_| false)
        );
    }

    #[test]
    fn the_ring_does_not_depend_on_list_order() {
        let all = ids(0..10);
        let mut shuffled = all.clone();
        shuffled.reverse();
        shuffled.swap(2, 7);
        assert_eq!(assign(&all, |_| false), assign(&shuffled, |_| false));
    }

    #[test]
    fn keys_spread_in_proportion_to_weight() {
        let nodes: Vec<NodeSpec> = (1..=4u32)
            .map(|w| NodeSpec::new(format!("10.0.1.{w}:8080"), w))
            .collect();
        let spec = BalancerSpec::new(Algorithm::ConsistentHash, &nodes);
        let mut state = spec.new_state();
        let mut counts = [0usize; 4];
        let keys = 100_000;
        for k in 0..keys {
            counts[state.pick(&spec, Some(&key(k)), |_| false).unwrap()] += 1;
        }
        for (node, &count) in counts.iter().enumerate() {
            let expected = keys * (node + 1) / 10;
            let error = count.abs_diff(expected) as f64 / expected as f64;
            assert!(
                error < 0.15,
                "node {node}: {count} keys, {expected} expected"
            );
        }
    }

    #[test]
    fn large_weights_are_scaled_down_keeping_proportions() {
        let nodes = [
            NodeSpec::new("10.0.2.1:80", 10_000),
            NodeSpec::new("10.0.2.2:80", 30_000),
        ];
        let spec = BalancerSpec::new(Algorithm::ConsistentHash, &nodes);
        let ring = &spec.rings[0];
        assert!(ring.len() <= super::MAX_RING_POINTS as usize);
        let owned = |node| ring.owners.iter().filter(|&&o| o == node).count();
        assert_eq!(owned(1), 3 * owned(0));
    }

    #[test]
    fn same_key_same_node_and_no_key_is_the_empty_key() {
        let nodes = ids(0..5);
        let spec = BalancerSpec::new(Algorithm::ConsistentHash, &nodes);
        let mut state = spec.new_state();
        let pick = |state: &mut crate::BalancerState, key: Option<&[u8]>| {
            state.pick(&spec, key, |_| false)
        };
        let first = pick(&mut state, Some(b"session-42"));
        assert!((0..10).all(|_| pick(&mut state, Some(b"session-42")) == first));
        assert_eq!(pick(&mut state, None), pick(&mut state, Some(b"")));
    }

    #[test]
    fn higher_tier_first_then_failover_and_none_when_all_excluded() {
        let nodes = [
            NodeSpec::new("10.0.3.1:80", 1).with_priority(1),
            NodeSpec::new("10.0.3.2:80", 1),
            NodeSpec::new("10.0.3.3:80", 1),
            NodeSpec::new("10.0.3.4:80", 0).with_priority(2),
        ];
        let spec = BalancerSpec::new(Algorithm::ConsistentHash, &nodes);
        let mut state = spec.new_state();
        for k in 0..100 {
            let key = key(k);
            assert_eq!(state.pick(&spec, Some(&key), |_| false), Some(0));
            let failover = state.pick(&spec, Some(&key), |i| i == 0);
            assert!(matches!(failover, Some(1 | 2)));
            assert_eq!(state.pick(&spec, Some(&key), |i| i != 3), None);
        }
    }
}
