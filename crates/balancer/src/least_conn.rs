//! Least connections, weighted: the node with the lowest `(in_flight + 1) / weight` wins.
//!
//! The `+ 1` scores a node by the load it would have with this request, so that between two idle
//! nodes the heavier one wins. Ties go round robin: each pick scans the tier starting just after
//! the node the tier picked last, so idle equal nodes take turns instead of the first one in the
//! list taking every request that finishes before the next arrives.

use crate::tier::Tiers;

#[derive(Debug, Clone)]
pub(crate) struct LeastConn {
    /// Requests started and not yet ended, by node. Only this worker's: workers share nothing.
    in_flight: Box<[u32]>,
    /// By tier: the position in the tier at which the next scan starts.
    cursor: Box<[usize]>,
}

impl LeastConn {
    pub(crate) fn new(len: usize, tiers: usize) -> Self {
        Self {
            in_flight: vec![0; len].into(),
            cursor: vec![0; tiers].into(),
        }
    }

    pub(crate) fn pick(
        &mut self,
        tiers: &Tiers,
        weights: &[u32],
        excluded: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let in_flight = &self.in_flight;
        // `a / wa < b / wb` without division; `u64` holds any `(u32 + 1) * u32`.
        let lighter = |a: usize, b: usize| {
            (u64::from(in_flight[a]) + 1) * u64::from(weights[b])
                < (u64::from(in_flight[b]) + 1) * u64::from(weights[a])
        };
        let cursor = &mut self.cursor;
        tiers.first(|tier, nodes| {
            let start = cursor[tier] % nodes.len();
            let mut best: Option<(usize, usize)> = None;
            for pos in (start..nodes.len()).chain(0..start) {
                let node = nodes[pos];
                if excluded(node) {
                    continue;
                }
                if best.is_none_or(|(_, b)| lighter(node, b)) {
                    best = Some((pos, node));
                }
            }
            let (pos, node) = best?;
            cursor[tier] = pos + 1;
            Some(node)
        })
    }

    pub(crate) fn on_request_start(&mut self, node: usize) {
        if let Some(n) = self.in_flight.get_mut(node) {
            *n = n.saturating_add(1);
        }
    }

    pub(crate) fn on_request_end(&mut self, node: usize) {
        if let Some(n) = self.in_flight.get_mut(node) {
            *n = n.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{Algorithm, BalancerSpec, BalancerState, NodeSpec};

    fn spec(weights: &[u32]) -> BalancerSpec {
        let nodes: Vec<NodeSpec> = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| NodeSpec::new(format!("10.0.0.{i}:80"), w))
            .collect();
        BalancerSpec::new(Algorithm::LeastConn, &nodes)
    }

    /// Picks and starts a request on the picked node, which is what the proxy does.
    fn start(state: &mut BalancerState, spec: &BalancerSpec) -> usize {
        let node = state.pick(spec, None, |_| false).unwrap();
        state.on_request_start(node);
        node
    }

    fn end(state: &mut BalancerState, node: usize) {
        state.on_request_end(node, Duration::from_millis(5), false);
    }

    #[test]
    fn idle_equal_nodes_take_turns() {
        let s = spec(&[1, 1, 1]);
        let mut state = s.new_state();
        let picks: Vec<_> = (0..7)
            .map(|_| {
                let node = start(&mut state, &s);
                end(&mut state, node);
                node
            })
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn picks_the_node_with_fewest_requests_in_flight() {
        let s = spec(&[1, 1, 1]);
        let mut state = s.new_state();
        let picks: Vec<_> = (0..6).map(|_| start(&mut state, &s)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        // Node 1 finishes both its requests: it alone has room now.
        end(&mut state, 1);
        end(&mut state, 1);
        assert_eq!(start(&mut state, &s), 1);
        assert_eq!(start(&mut state, &s), 1);
        assert_eq!(start(&mut state, &s), 2);
    }

    #[test]
    fn in_flight_settles_in_proportion_to_weight() {
        let s = spec(&[1, 3, 0]);
        let mut state = s.new_state();
        let mut counts = [0; 3];
        for _ in 0..40 {
            counts[start(&mut state, &s)] += 1;
        }
        assert_eq!(counts, [10, 30, 0]);
    }

    #[test]
    fn heavier_idle_node_wins() {
        let s = spec(&[1, 2]);
        let mut state = s.new_state();
        assert_eq!(start(&mut state, &s), 1);
    }

    #[test]
    fn excluded_nodes_and_tiers() {
        let nodes = [
            NodeSpec::new("a:80", 1).with_priority(1),
            NodeSpec::new("b:80", 1).with_priority(1),
            NodeSpec::new("c:80", 1),
        ];
        let s = BalancerSpec::new(Algorithm::LeastConn, &nodes);
        let mut state = s.new_state();
        // Loaded as it may be, the higher tier is used while it has a usable node.
        for _ in 0..5 {
            state.on_request_start(0);
        }
        assert_eq!(state.pick(&s, None, |i| i == 1), Some(0));
        assert_eq!(state.pick(&s, None, |i| i < 2), Some(2));
        assert_eq!(state.pick(&s, None, |_| true), None);
    }

    #[test]
    fn unmatched_ends_and_unknown_nodes_are_harmless() {
        let s = spec(&[1, 1]);
        let mut state = s.new_state();
        end(&mut state, 0);
        state.on_request_start(7);
        end(&mut state, 7);
        assert_eq!(start(&mut state, &s), 0);
        assert_eq!(start(&mut state, &s), 1);
    }
}
