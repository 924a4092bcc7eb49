//! Peak-EWMA, as APISIX's `ewma` balancer (itself from ingress-nginx, after Finagle).
//!
//! Each node keeps a moving average of its latency in which a sample's weight grows with the time
//! since the previous one (`1 - e^(-Δt / 10 s)`), so the average forgets at the same pace under
//! any request rate. A node scores `ewma * (in_flight + 1)`, the average decayed towards zero for
//! the time it has been idle: a node that was slow or failing is tried again once it has rested.
//! An untried node scores zero, so it is tried. Each pick compares two distinct usable nodes drawn
//! at random (the power of two choices): nearly as good as the best node, without every worker
//! herding onto the same one. Weights matter only in that weight 0 means never.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use crate::tier::Tiers;

/// How long the average takes to forget all but `1/e` of the past.
pub const DECAY_TIME: Duration = Duration::from_secs(10);

/// The least latency a failure counts as. A failure counts as this, as five times the node's
/// current average or as its real latency, whichever is longest: a node that refuses connections
/// fails fast, and must not look fast for it.
pub const FAILURE_PENALTY: Duration = Duration::from_secs(1);

/// How many times its current average a failure counts as, when that is more than the floor.
const FAILURE_FACTOR: f64 = 5.0;

#[derive(Debug, Clone, Copy, Default)]
struct Stats {
    /// Seconds.
    ewma: f64,
    /// `None` until the node has a sample: its first sample becomes its average outright.
    touched: Option<Instant>,
    in_flight: u32,
}

impl Stats {
    /// The average moved towards `sample` by the weight `now - touched` gives it. Time that runs
    /// backwards counts as none.
    fn decayed(&self, sample: f64, now: Instant) -> f64 {
        let Some(touched) = self.touched else {
            return sample;
        };
        let elapsed = now.saturating_duration_since(touched).as_secs_f64();
        let keep = (-elapsed / DECAY_TIME.as_secs_f64()).exp();
        self.ewma * keep + sample * (1.0 - keep)
    }

    fn score(&self, now: Instant) -> f64 {
        self.decayed(0.0, now) * f64::from(self.in_flight.saturating_add(1))
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Ewma {
    stats: Box<[Stats]>,
    rng: XorShift,
}

impl Ewma {
    pub(crate) fn new(len: usize) -> Self {
        Self::with_seed(len, XorShift::entropy())
    }

    pub(crate) fn with_seed(len: usize, seed: u64) -> Self {
        Self {
            stats: vec![Stats::default(); len].into(),
            rng: XorShift::new(seed),
        }
    }

    pub(crate) fn pick(
        &mut self,
        tiers: &Tiers,
        excluded: impl Fn(usize) -> bool,
        now: Instant,
    ) -> Option<usize> {
        let Self { stats, rng } = self;
        tiers.first(|_, nodes| {
            // Two passes over the tier instead of collecting the usable nodes: no allocation.
            let usable = nodes.iter().filter(|&&n| !excluded(n)).count();
            let mut usable_nodes = nodes.iter().copied().filter(|&n| !excluded(n));
            if usable < 2 {
                return usable_nodes.next();
            }
            // Ranks among the usable nodes: `b` is uniform over all but `a`.
            let a = rng.below(usable);
            let b = (a + 1 + rng.below(usable - 1)) % usable;
            let low = usable_nodes.nth(a.min(b))?;
            let high = usable_nodes.nth(a.abs_diff(b) - 1)?;
            let (first, second) = if a < b { (low, high) } else { (high, low) };
            // Untried nodes all score zero; fewer requests in flight then breaks the tie.
            let key = |n: usize| (stats[n].score(now), stats[n].in_flight);
            Some(if key(second) < key(first) {
                second
            } else {
                first
            })
        })
    }

    pub(crate) fn on_request_start(&mut self, node: usize) {
        if let Some(s) = self.stats.get_mut(node) {
            s.in_flight = s.in_flight.saturating_add(1);
        }
    }

    /// A failure is a sample of at least [`FAILURE_PENALTY`].
    pub(crate) fn on_request_end(
        &mut self,
        node: usize,
        latency: Duration,
        failed: bool,
        now: Instant,
    ) {
        let Some(s) = self.stats.get_mut(node) else {
            return;
        };
        s.in_flight = s.in_flight.saturating_sub(1);
        let mut sample = latency.as_secs_f64();
        if failed {
            let penalty = (s.decayed(0.0, now) * FAILURE_FACTOR).max(FAILURE_PENALTY.as_secs_f64());
            sample = sample.max(penalty);
        }
        s.ewma = s.decayed(sample, now);
        s.touched = Some(now);
    }
}

/// xorshift64*: plenty for choosing between nodes, and one `u64` of state.
#[derive(Debug, Clone)]
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        // Zero is xorshift's one fixed point.
        Self(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// A seed that differs between workers and runs: std's `RandomState` keys are drawn from the
    /// OS once per thread and bumped on every call.
    fn entropy() -> u64 {
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (the bias of multiply-shift is below `n / 2^64`).
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeSpec;

    const MS: Duration = Duration::from_millis(1);

    fn tiers(weights: &[u32]) -> Tiers {
        let nodes: Vec<NodeSpec> = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| NodeSpec::new(format!("10.0.0.{i}:80"), w))
            .collect();
        Tiers::new(&nodes)
    }

    fn assert_close(actual: f64, expected: f64) {
        assert!((actual - expected).abs() < 1e-9, "{actual} != {expected}");
    }

    #[test]
    fn first_sample_is_the_average_then_samples_weigh_by_elapsed_time() {
        let t0 = Instant::now();
        let mut e = Ewma::with_seed(1, 1);
        e.on_request_end(0, 100 * MS, false, t0);
        assert_close(e.stats[0].ewma, 0.100);
        // Half the decay time on: the old average keeps e^-0.5 of its weight.
        e.on_request_end(0, 10 * MS, false, t0 + DECAY_TIME / 2);
        let keep = (-0.5f64).exp();
        assert_close(e.stats[0].ewma, 0.100 * keep + 0.010 * (1.0 - keep));
        // A sample at the same instant has no weight at all.
        let before = e.stats[0].ewma;
        e.on_request_end(0, 900 * MS, false, t0 + DECAY_TIME / 2);
        assert_close(e.stats[0].ewma, before);
    }

    #[test]
    fn score_decays_while_idle_and_grows_with_in_flight() {
        let t0 = Instant::now();
        let mut e = Ewma::with_seed(1, 1);
        e.on_request_end(0, 100 * MS, false, t0);
        assert_close(e.stats[0].score(t0), 0.100);
        assert_close(
            e.stats[0].score(t0 + DECAY_TIME),
            0.100 / std::f64::consts::E,
        );
        e.on_request_start(0);
        e.on_request_start(0);
        assert_close(e.stats[0].score(t0), 0.300);
    }

    #[test]
    fn of_two_nodes_the_faster_is_picked() {
        let t = tiers(&[1, 1]);
        let t0 = Instant::now();
        let mut e = Ewma::with_seed(2, 7);
        e.on_request_end(0, 80 * MS, false, t0);
        e.on_request_end(1, 20 * MS, false, t0);
        assert!((0..100).all(|_| e.pick(&t, |_| false, t0) == Some(1)));
    }

    #[test]
    fn untried_nodes_are_tried() {
        let t = tiers(&[1, 1]);
        let t0 = Instant::now();
        let mut e = Ewma::with_seed(2, 7);
        e.on_request_end(0, MS, false, t0);
        assert_eq!(e.pick(&t, |_| false, t0), Some(1));
    }

    #[test]
    fn requests_in_flight_outweigh_a_better_average() {
        let t = tiers(&[1, 1]);
        let t0 = Instant::now();
        let mut e = Ewma::with_seed(2, 7);
        e.on_request_end(0, 10 * MS, false, t0);
        e.on_request_end(1, 30 * MS, false, t0);
        assert_eq!(e.pick(&t, |_| false, t0), Some(0));
        for _ in 0..3 {
            e.on_request_start(0);
        }
        // 10 ms * 4 against 30 ms * 1.
        assert_eq!(e.pick(&t, |_| false, t0), Some(1));
    }

    #[test]
    fn a_fast_failing_node_is_avoided_then_retried_after_resting() {
        let t = tiers(&[1, 1]);
        let t0 = Instant::now();
        let mut e = Ewma::with_seed(2, 7);
        e.on_request_end(0, 50 * MS, false, t0);
        e.on_request_end(1, MS, true, t0);
        assert_close(e.stats[1].ewma, FAILURE_PENALTY.as_secs_f64());
        assert_eq!(e.pick(&t, |_| false, t0), Some(0));
        // Idle, 1 s decays below 50 ms after ln(20) decay times, about 30 s; meanwhile node 0
        // keeps serving in 50 ms.
        let later = t0 + DECAY_TIME * 4;
        e.on_request_end(0, 50 * MS, false, later);
        assert_eq!(e.pick(&t, |_| false, later), Some(1));
    }

    #[test]
    fn failure_penalty_scales_with_a_slow_average() {
        let t0 = Instant::now();
        let mut e = Ewma::with_seed(1, 1);
        e.on_request_end(0, 2 * FAILURE_PENALTY, false, t0);
        e.on_request_end(0, MS, true, t0 + DECAY_TIME);
        let before = 2.0 * FAILURE_PENALTY.as_secs_f64() / std::f64::consts::E;
        let keep = (-1.0f64).exp();
        assert_close(
            e.stats[0].ewma,
            2.0 * keep + before * FAILURE_FACTOR * (1.0 - keep),
        );
    }

    #[test]
    fn two_choices_spread_load_over_all_equal_nodes() {
        let t = tiers(&[1, 1, 1, 1, 1]);
        let t0 = Instant::now();
        let mut e = Ewma::with_seed(5, 42);
        for n in 0..5 {
            e.on_request_end(n, 20 * MS, false, t0);
        }
        let mut counts = [0; 5];
        for _ in 0..10_000 {
            let n = e.pick(&t, |_| false, t0).unwrap();
            counts[n] += 1;
        }
        // Equal scores: the first of two uniform candidates, so each node is uniform too.
        assert!(
            counts.iter().all(|&c| (1700..=2300).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn candidates_are_distinct_and_usable() {
        let t = tiers(&[1, 0, 1, 1, 1]);
        let t0 = Instant::now();
        let mut e = Ewma::with_seed(5, 3);
        // Node 3 is the slowest: it can only win when drawn against itself, which must not happen.
        for (n, ms) in [(0, 10), (2, 10), (3, 500), (4, 10)] {
            e.on_request_end(n, ms * MS, false, t0);
        }
        for _ in 0..1000 {
            let n = e.pick(&t, |n| n == 4, t0).unwrap();
            assert!(n == 0 || n == 2, "picked {n}");
        }
        assert_eq!(e.pick(&t, |n| n != 3, t0), Some(3));
        assert_eq!(e.pick(&t, |_| true, t0), None);
    }

    #[test]
    fn lower_tier_when_the_higher_is_excluded() {
        let nodes = [
            NodeSpec::new("a:80", 1).with_priority(1),
            NodeSpec::new("b:80", 1),
        ];
        let t = Tiers::new(&nodes);
        let t0 = Instant::now();
        let mut e = Ewma::with_seed(2, 9);
        e.on_request_end(0, 900 * MS, false, t0);
        assert_eq!(e.pick(&t, |_| false, t0), Some(0));
        assert_eq!(e.pick(&t, |n| n == 0, t0), Some(1));
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut rng = XorShift::new(0);
        let mut seen = [false; 7];
        for _ in 0..1000 {
            seen[rng.below(7)] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
