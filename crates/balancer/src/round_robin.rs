//! Smooth weighted round robin, as nginx's `ngx_http_upstream_get_peer`.
//!
//! Each pick adds every usable node's weight to its current weight, takes the node with the
//! largest current weight and takes the total back off it. Heavy nodes are spread through the
//! cycle instead of being picked in bursts: weights 5:1:1 give `a a b a c a a`.

use crate::tier::Tiers;

#[derive(Debug, Clone)]
pub(crate) struct RoundRobin {
    /// Indexed by node. `i64` because a sum of `u32` weights does not fit an `i32`.
    current: Box<[i64]>,
}

impl RoundRobin {
    pub(crate) fn new(len: usize) -> Self {
        Self {
            current: vec![0; len].into(),
        }
    }

    pub(crate) fn pick(
        &mut self,
        tiers: &Tiers,
        weights: &[u32],
        excluded: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        tiers.first(|_, nodes| {
            let mut best: Option<usize> = None;
            let mut total = 0i64;
            for &node in nodes {
                // As nginx: an excluded node gains no weight, so it does not come back with a
                // burst of picks when the exclusion ends.
                if excluded(node) {
                    continue;
                }
                let weight = i64::from(weights[node]);
                self.current[node] += weight;
                total += weight;
                if best.is_none_or(|b| self.current[node] > self.current[b]) {
                    best = Some(node);
                }
            }
            let best = best?;
            self.current[best] -= total;
            Some(best)
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::{Algorithm, BalancerSpec, NodeSpec};

    fn spec(nodes: &[(&str, u32, i32)]) -> BalancerSpec {
        let nodes: Vec<NodeSpec> = nodes
            .iter()
            .map(|&(id, weight, priority)| NodeSpec::new(id, weight).with_priority(priority))
            .collect();
        BalancerSpec::new(Algorithm::RoundRobin, &nodes)
    }

    fn sequence(
        spec: &BalancerSpec,
        picks: usize,
        excluded: impl Fn(usize) -> bool + Copy,
    ) -> String {
        let mut state = spec.new_state();
        (0..picks)
            .map(|_| match state.pick(spec, None, excluded) {
                Some(i) => char::from(b'a' + i as u8),
                None => '-',
            })
            .collect()
    }

    #[test]
    fn interleaves_like_nginx() {
        let s = spec(&[("a", 5, 0), ("b", 1, 0), ("c", 1, 0)]);
        assert_eq!(sequence(&s, 14, |_| false), "aabacaa".repeat(2));
    }

    #[test]
    fn equal_weights_rotate_in_list_order() {
        let s = spec(&[("a", 3, 0), ("b", 3, 0), ("c", 3, 0)]);
        assert_eq!(sequence(&s, 6, |_| false), "abcabc");
    }

    #[test]
    fn picks_follow_weights_exactly_over_a_cycle() {
        let s = spec(&[("a", 7, 0), ("b", 2, 0), ("c", 0, 0), ("d", 1, 0)]);
        let seq = sequence(&s, 1000, |_| false);
        let count = |c| seq.chars().filter(|&x| x == c).count();
        assert_eq!(
            [count('a'), count('b'), count('c'), count('d')],
            [700, 200, 0, 100]
        );
    }

    #[test]
    fn excluded_nodes_are_skipped_and_gain_no_weight() {
        let s = spec(&[("a", 1, 0), ("b", 1, 0), ("c", 1, 0)]);
        let mut state = s.new_state();
        let picks: Vec<_> = (0..4)
            .map(|_| state.pick(&s, None, |i| i == 1).unwrap())
            .collect();
        assert_eq!(picks, [0, 2, 0, 2]);
        // b was not credited while excluded: it takes its turn, not a burst of catch-up picks.
        let picks: Vec<_> = (0..6)
            .map(|_| state.pick(&s, None, |_| false).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn lower_tier_only_when_the_higher_one_is_unusable() {
        let s = spec(&[("a", 1, 10), ("b", 1, 0), ("c", 1, 10), ("d", 0, 20)]);
        assert_eq!(sequence(&s, 4, |_| false), "acac");
        assert_eq!(sequence(&s, 3, |i| i == 0), "ccc");
        assert_eq!(sequence(&s, 3, |i| i == 0 || i == 2), "bbb");
        assert_eq!(sequence(&s, 2, |_| true), "--");
    }
}
