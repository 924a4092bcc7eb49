//! Pylon's load balancers: which node of an upstream serves the next request.
//!
//! The crate knows nothing of networking. It picks a node's index; the caller maps it to an
//! address. The semantics are APISIX's and nginx's:
//!
//! - A node has a `weight` (0: never picked) and a `priority`. Nodes of the highest priority are
//!   used first; a lower tier only when no node of the higher ones is usable.
//! - Within a tier the [`Algorithm`] picks: smooth weighted round robin, consistent hashing, least
//!   connections or peak-EWMA.
//! - Every pick takes a predicate that excludes nodes: those this request has already tried, or
//!   that health checks have marked down. When no node of any tier is usable there is no pick.
//!
//! What can be is computed once per config version into a [`BalancerSpec`], immutable and shared
//! by every worker thread; what changes with each pick or response lives in a [`BalancerState`],
//! one per worker, which needs no lock because the worker that owns it is single-threaded. A pick
//! does not allocate.
//!
//! ```
//! use pylon_balancer::{Algorithm, BalancerSpec, NodeSpec};
//! use std::time::Duration;
//!
//! let spec = BalancerSpec::new(
//!     Algorithm::RoundRobin,
//!     &[NodeSpec::new("10.0.0.1:80", 2), NodeSpec::new("10.0.0.2:80", 1)],
//! );
//! let mut state = spec.new_state();
//!
//! let node = state.pick(&spec, None, |_| false).unwrap();
//! state.on_request_start(node);
//! // ... the request fails; retry on another node.
//! state.on_request_end(node, Duration::from_millis(3), true);
//! let retry = state.pick(&spec, None, |i| i == node);
//! assert_eq!(retry, Some(1 - node));
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod chash;
mod ewma;
mod least_conn;
mod round_robin;
mod tier;

use std::time::{Duration, Instant};

pub use chash::{MAX_RING_POINTS, POINTS_PER_WEIGHT};
pub use ewma::{DECAY_TIME, FAILURE_PENALTY};

use chash::Ring;
use ewma::Ewma;
use least_conn::LeastConn;
use round_robin::RoundRobin;
use tier::Tiers;

/// How a node is chosen within a priority tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Smooth weighted round robin, as nginx's: weights 5:1:1 give `a a b a c a a`.
    RoundRobin,
    /// APISIX's `chash`: a ring of points hashed from the nodes' ids, so a key keeps its node
    /// while the node stays, and only its keys move when a node comes or goes.
    ConsistentHash,
    /// The lowest `(in_flight + 1) / weight`, ties taking turns.
    LeastConn,
    /// APISIX's `ewma`: the lower latency average times requests in flight, of two random nodes.
    /// Weights are ignored but for 0.
    Ewma,
}

/// One node of an upstream, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeSpec {
    /// What identifies the node across config versions, such as `"10.0.0.1:80"`. The
    /// consistent-hash ring is built from the ids, so keys stay on a node whose id stays.
    pub id: String,
    /// A node's share of the traffic relative to its tier; 0 means never picked.
    pub weight: u32,
    /// Higher is preferred: a tier of lower priority is used only when no higher one can be.
    pub priority: i32,
}

impl NodeSpec {
    /// A node of priority 0.
    pub fn new(id: impl Into<String>, weight: u32) -> Self {
        Self {
            id: id.into(),
            weight,
            priority: 0,
        }
    }

    /// The same node with `priority`.
    #[must_use]
    pub fn with_priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }
}

/// What is fixed for a config version: the tiers, the weights and, for consistent hashing, the
/// rings. Immutable, so one is built per version and shared (`Arc`) by all the worker threads.
#[derive(Debug, Clone)]
pub struct BalancerSpec {
    algorithm: Algorithm,
    weights: Box<[u32]>,
    tiers: Tiers,
    /// One per tier for [`Algorithm::ConsistentHash`]; empty for the others.
    rings: Box<[Ring]>,
}

impl BalancerSpec {
    /// The balancer of `nodes`; [`BalancerState::pick`] returns indices into `nodes`.
    #[must_use]
    pub fn new(algorithm: Algorithm, nodes: &[NodeSpec]) -> Self {
        let tiers = Tiers::new(nodes);
        let rings = match algorithm {
            Algorithm::ConsistentHash => tiers.iter().map(|tier| Ring::new(nodes, tier)).collect(),
            _ => Box::default(),
        };
        Self {
            algorithm,
            weights: nodes.iter().map(|n| n.weight).collect(),
            tiers,
            rings,
        }
    }

    /// The algorithm it was built for.
    #[must_use]
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// How many nodes it was built from, counting those of weight 0.
    #[must_use]
    pub fn len(&self) -> usize {
        self.weights.len()
    }

    /// Whether it was built from no nodes at all.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// A fresh state for one worker.
    #[must_use]
    pub fn new_state(&self) -> BalancerState {
        let len = self.len();
        let algorithm = match self.algorithm {
            Algorithm::RoundRobin => AlgorithmState::RoundRobin(RoundRobin::new(len)),
            Algorithm::ConsistentHash => AlgorithmState::ConsistentHash,
            Algorithm::LeastConn => {
                AlgorithmState::LeastConn(LeastConn::new(len, self.tiers.len()))
            }
            Algorithm::Ewma => AlgorithmState::Ewma(Ewma::new(len)),
        };
        BalancerState { algorithm, len }
    }
}

/// One worker's mutable side of a [`BalancerSpec`]: round-robin weights, requests in flight,
/// latency averages. Not shared between threads, so the counts are the worker's own.
///
/// A state belongs to the spec that made it, and every call must pass that spec. Node indices out
/// of its range are ignored by [`on_request_start`](Self::on_request_start) and
/// [`on_request_end`](Self::on_request_end), so a request that outlives a config reload cannot
/// bring its worker down.
#[derive(Debug, Clone)]
pub struct BalancerState {
    algorithm: AlgorithmState,
    /// The spec's, to catch a state used with another spec in debug builds.
    len: usize,
}

#[derive(Debug, Clone)]
enum AlgorithmState {
    RoundRobin(RoundRobin),
    /// The ring is all there is, and it is in the spec.
    ConsistentHash,
    LeastConn(LeastConn),
    Ewma(Ewma),
}

impl BalancerState {
    /// The node to send the request to, or `None` when no node of any tier is usable. A node
    /// is usable when its weight is not 0 and `excluded` returns false for its index.
    ///
    /// `hash_key` is for [`Algorithm::ConsistentHash`], and the others ignore it. The caller
    /// always supplies a key for it (APISIX's `hash_on`); `None` is hashed as the empty key, which
    /// sends every such request to the same node rather than spreading them.
    pub fn pick(
        &mut self,
        spec: &BalancerSpec,
        hash_key: Option<&[u8]>,
        excluded: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        self.pick_with(spec, hash_key, excluded, Instant::now)
    }

    /// [`pick`](Self::pick) at the time `now`, for a caller with a clock of its own.
    pub fn pick_at(
        &mut self,
        spec: &BalancerSpec,
        hash_key: Option<&[u8]>,
        excluded: impl Fn(usize) -> bool,
        now: Instant,
    ) -> Option<usize> {
        self.pick_with(spec, hash_key, excluded, || now)
    }

    /// The clock is read only by the algorithm that needs it.
    fn pick_with(
        &mut self,
        spec: &BalancerSpec,
        hash_key: Option<&[u8]>,
        excluded: impl Fn(usize) -> bool,
        now: impl FnOnce() -> Instant,
    ) -> Option<usize> {
        debug_assert_eq!(spec.len(), self.len, "a state used with another spec");
        match &mut self.algorithm {
            AlgorithmState::RoundRobin(rr) => rr.pick(&spec.tiers, &spec.weights, excluded),
            AlgorithmState::ConsistentHash => {
                let key = hash_key.unwrap_or_default();
                spec.tiers
                    .first(|tier, nodes| spec.rings.get(tier)?.pick(nodes, key, &excluded))
            }
            AlgorithmState::LeastConn(lc) => lc.pick(&spec.tiers, &spec.weights, excluded),
            AlgorithmState::Ewma(ewma) => ewma.pick(&spec.tiers, excluded, now()),
        }
    }

    /// Records that a request was sent to `node`, as picked. Every start is to be followed by
    /// one [`on_request_end`](Self::on_request_end).
    pub fn on_request_start(&mut self, node: usize) {
        match &mut self.algorithm {
            AlgorithmState::LeastConn(lc) => lc.on_request_start(node),
            AlgorithmState::Ewma(ewma) => ewma.on_request_start(node),
            AlgorithmState::RoundRobin(_) | AlgorithmState::ConsistentHash => {}
        }
    }

    /// Records that the request to `node` ended after `latency`, `failed` or not. A failure
    /// (connection refused, timeout, 5xx as the caller sees fit) makes the EWMA balancer avoid
    /// the node for a while; see [`FAILURE_PENALTY`].
    pub fn on_request_end(&mut self, node: usize, latency: Duration, failed: bool) {
        self.on_request_end_with(node, latency, failed, Instant::now);
    }

    /// [`on_request_end`](Self::on_request_end) at the time `now`.
    pub fn on_request_end_at(
        &mut self,
        node: usize,
        latency: Duration,
        failed: bool,
        now: Instant,
    ) {
        self.on_request_end_with(node, latency, failed, || now);
    }

    fn on_request_end_with(
        &mut self,
        node: usize,
        latency: Duration,
        failed: bool,
        now: impl FnOnce() -> Instant,
    ) {
        match &mut self.algorithm {
            AlgorithmState::LeastConn(lc) => lc.on_request_end(node),
            AlgorithmState::Ewma(ewma) => ewma.on_request_end(node, latency, failed, now()),
            AlgorithmState::RoundRobin(_) | AlgorithmState::ConsistentHash => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Algorithm; 4] = [
        Algorithm::RoundRobin,
        Algorithm::ConsistentHash,
        Algorithm::LeastConn,
        Algorithm::Ewma,
    ];

    #[test]
    fn a_spec_can_be_shared_between_threads_and_a_state_moved_to_one() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<BalancerSpec>();
        send::<BalancerState>();
    }

    #[test]
    fn every_algorithm_never_picks_weight_zero_and_none_without_usable_nodes() {
        let nodes = [
            NodeSpec::new("a:80", 0).with_priority(9),
            NodeSpec::new("b:80", 1),
            NodeSpec::new("c:80", 0),
        ];
        for algorithm in ALL {
            let spec = BalancerSpec::new(algorithm, &nodes);
            assert_eq!((spec.algorithm(), spec.len()), (algorithm, 3));
            let mut state = spec.new_state();
            for _ in 0..20 {
                assert_eq!(
                    state.pick(&spec, Some(b"k"), |_| false),
                    Some(1),
                    "{algorithm:?}"
                );
            }
            assert_eq!(
                state.pick(&spec, Some(b"k"), |i| i == 1),
                None,
                "{algorithm:?}"
            );

            let empty = BalancerSpec::new(algorithm, &[]);
            assert!(empty.is_empty());
            assert_eq!(empty.new_state().pick(&empty, Some(b"k"), |_| false), None);
        }
    }

    #[test]
    fn the_clock_can_be_the_callers() {
        let nodes = [NodeSpec::new("a:80", 1), NodeSpec::new("b:80", 1)];
        let spec = BalancerSpec::new(Algorithm::Ewma, &nodes);
        let mut state = spec.new_state();
        let t0 = Instant::now();
        state.on_request_start(0);
        state.on_request_end_at(0, Duration::from_millis(400), false, t0);
        state.on_request_start(1);
        state.on_request_end_at(1, Duration::from_millis(40), false, t0);
        assert_eq!(state.pick_at(&spec, None, |_| false, t0), Some(1));
        // Forty decay times on, node 0's old average is forgotten and node 1's fresh one is not.
        let later = t0 + DECAY_TIME * 40;
        state.on_request_end_at(1, Duration::from_millis(40), false, later);
        assert_eq!(state.pick_at(&spec, None, |_| false, later), Some(0));
    }
}
