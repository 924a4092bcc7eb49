//! One node's health: its status and the counters that move it, packed into one atomic word.
//!
//! Workers report what proxied requests saw (passive checks) and the checker reports its
//! probes (active checks), all to the same word, with a compare-and-swap; a request reads
//! the status with one load. As in APISIX (lua-resty-healthcheck), counters count a streak:
//! a success clears the failure counters and a failure clears the success counter, and a
//! node flips when one counter reaches its threshold. Once a node is fully in a state (healthy
//! with no failure counted, or unhealthy with no success counted), more of the same changes
//! nothing, so the common report (a success on a healthy node) does not write at all.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// What one probe or one proxied attempt says about a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Success,
    /// A status listed as unhealthy.
    HttpFailure,
    /// The connection failed: refused, reset, or closed before a response.
    TcpFailure,
    Timeout,
}

/// Consecutive outcomes of a kind that flip a node; 0: that kind never flips it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Thresholds {
    pub successes: u16,
    pub http_failures: u16,
    pub tcp_failures: u16,
    pub timeouts: u16,
}

impl Thresholds {
    /// From the configuration's counts; counters stop at [`COUNTER_MAX`], and so do these.
    pub fn new(successes: u32, http_failures: u32, tcp_failures: u32, timeouts: u32) -> Self {
        let clamp = |n: u32| n.min(u32::from(COUNTER_MAX)) as u16;
        Self {
            successes: clamp(successes),
            http_failures: clamp(http_failures),
            tcp_failures: clamp(tcp_failures),
            timeouts: clamp(timeouts),
        }
    }
}

/// What the control API shows of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NodeStatus {
    pub healthy: bool,
    pub success: u16,
    pub http_failure: u16,
    pub tcp_failure: u16,
    pub timeout_failure: u16,
    /// Unix milliseconds of the last flip; `None` if it never flipped.
    pub changed_at_ms: Option<u64>,
}

impl NodeStatus {
    /// APISIX's four names: a node that counts outcomes against its state is "mostly" so.
    pub fn label(&self) -> &'static str {
        let failures = self.http_failure > 0 || self.tcp_failure > 0 || self.timeout_failure > 0;
        match (self.healthy, failures, self.success > 0) {
            (true, false, _) => "healthy",
            (true, true, _) => "mostly_healthy",
            (false, _, false) => "unhealthy",
            (false, _, true) => "mostly_unhealthy",
        }
    }
}

/// Counters are 15 bits wide: four of them and the status bit fit one word.
const WIDTH: u32 = 15;
pub(crate) const COUNTER_MAX: u16 = (1 << WIDTH) - 1;
const SUCCESS: u32 = 0;
const HTTP: u32 = 1;
const TCP: u32 = 2;
const TIMEOUT: u32 = 3;
const UNHEALTHY: u64 = 1 << 63;

fn counter(word: u64, slot: u32) -> u16 {
    ((word >> (slot * WIDTH)) & u64::from(COUNTER_MAX)) as u16
}

fn with_counter(word: u64, slot: u32, value: u16) -> u64 {
    let shift = slot * WIDTH;
    (word & !(u64::from(COUNTER_MAX) << shift)) | (u64::from(value) << shift)
}

fn failures(word: u64) -> bool {
    [HTTP, TCP, TIMEOUT].iter().any(|&s| counter(word, s) > 0)
}

/// The word after `outcome`, and whether the node flipped.
fn step(word: u64, outcome: Outcome, limits: &Thresholds) -> (u64, bool) {
    let healthy = word & UNHEALTHY == 0;
    let (slot, limit) = match outcome {
        Outcome::Success => {
            if healthy && !failures(word) {
                return (word, false);
            }
            let successes = counter(word, SUCCESS).saturating_add(1).min(COUNTER_MAX);
            // The failure counters go: only the status bit and the new streak remain.
            let next = (word & UNHEALTHY) | u64::from(successes);
            let flips = !healthy && limits.successes > 0 && successes >= limits.successes;
            return if flips {
                (next & !UNHEALTHY, true)
            } else {
                (next, false)
            };
        }
        Outcome::HttpFailure => (HTTP, limits.http_failures),
        Outcome::TcpFailure => (TCP, limits.tcp_failures),
        Outcome::Timeout => (TIMEOUT, limits.timeouts),
    };
    if !healthy && counter(word, SUCCESS) == 0 {
        return (word, false);
    }
    let count = counter(word, slot).saturating_add(1).min(COUNTER_MAX);
    let next = with_counter(with_counter(word, SUCCESS, 0), slot, count);
    if healthy && limit > 0 && count >= limit {
        (next | UNHEALTHY, true)
    } else {
        (next, false)
    }
}

/// One node's status and counters, shared by the workers and the checker.
#[derive(Debug, Default)]
pub(crate) struct NodeHealth {
    /// Status bit and counters; 0 is healthy with nothing counted, as every node starts.
    word: AtomicU64,
    /// Unix milliseconds of the last flip; 0 for never.
    changed_at: AtomicU64,
}

impl NodeHealth {
    /// One load: what the request path asks.
    #[inline]
    pub fn is_healthy(&self) -> bool {
        self.word.load(Ordering::Relaxed) & UNHEALTHY == 0
    }

    /// Counts `outcome` against `limits`; returns the new status when the node flipped. Of
    /// reports racing to flip a node, exactly one sees it flip.
    pub fn record(&self, outcome: Outcome, limits: &Thresholds) -> Option<bool> {
        let mut current = self.word.load(Ordering::Relaxed);
        loop {
            let (next, flipped) = step(current, outcome, limits);
            if next == current {
                return None;
            }
            match self.word.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) if flipped => {
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    self.changed_at.store(now, Ordering::Relaxed);
                    return Some(next & UNHEALTHY == 0);
                }
                Ok(_) => return None,
                Err(actual) => current = actual,
            }
        }
    }

    pub fn status(&self) -> NodeStatus {
        let word = self.word.load(Ordering::Relaxed);
        let changed = self.changed_at.load(Ordering::Relaxed);
        NodeStatus {
            healthy: word & UNHEALTHY == 0,
            success: counter(word, SUCCESS),
            http_failure: counter(word, HTTP),
            tcp_failure: counter(word, TCP),
            timeout_failure: counter(word, TIMEOUT),
            changed_at_ms: (changed > 0).then_some(changed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Outcome::*;

    const LIMITS: Thresholds = Thresholds {
        successes: 2,
        http_failures: 3,
        tcp_failures: 2,
        timeouts: 1,
    };

    fn run(node: &NodeHealth, outcomes: &[Outcome]) -> Vec<Option<bool>> {
        outcomes.iter().map(|&o| node.record(o, &LIMITS)).collect()
    }

    #[test]
    fn a_node_flips_after_its_threshold_of_consecutive_outcomes() {
        let node = NodeHealth::default();
        assert!(node.is_healthy());
        assert_eq!(
            run(&node, &[HttpFailure, HttpFailure, HttpFailure]),
            [None, None, Some(false)]
        );
        assert!(!node.is_healthy());
        assert!(node.status().changed_at_ms.is_some());
        assert_eq!(run(&node, &[Success, Success]), [None, Some(true)]);
        assert!(node.is_healthy());
    }

    #[test]
    fn a_success_breaks_a_failure_streak_and_a_failure_a_success_streak() {
        let node = NodeHealth::default();
        run(
            &node,
            &[HttpFailure, HttpFailure, Success, HttpFailure, HttpFailure],
        );
        assert!(node.is_healthy(), "no three failures in a row");
        assert_eq!(node.status().label(), "mostly_healthy");
        run(&node, &[HttpFailure]);
        assert!(!node.is_healthy());
        run(&node, &[Success, HttpFailure, Success]);
        assert!(!node.is_healthy(), "no two successes in a row");
        assert_eq!(node.status().label(), "mostly_unhealthy");
    }

    #[test]
    fn each_failure_kind_has_its_own_threshold() {
        let node = NodeHealth::default();
        assert_eq!(run(&node, &[Timeout]), [Some(false)]);
        let node = NodeHealth::default();
        assert_eq!(run(&node, &[TcpFailure, TcpFailure]), [None, Some(false)]);
        let status = node.status();
        assert_eq!((status.tcp_failure, status.http_failure), (2, 0));
        assert_eq!(status.label(), "unhealthy");
    }

    #[test]
    fn more_of_the_same_changes_nothing_once_a_node_is_fully_in_a_state() {
        let node = NodeHealth::default();
        run(&node, &[Success, Success]);
        assert_eq!(
            node.status().success,
            0,
            "a healthy node counts no successes"
        );
        run(&node, &[HttpFailure; 10]);
        // The streak that made it unhealthy stays on show.
        assert_eq!(node.status().http_failure, 3);
        assert_eq!(node.status().label(), "unhealthy");
    }

    #[test]
    fn a_zero_threshold_never_flips() {
        let never = Thresholds {
            successes: 0,
            ..LIMITS
        };
        let node = NodeHealth::default();
        node.record(Timeout, &never);
        for _ in 0..10 {
            assert_eq!(node.record(Success, &never), None);
        }
        assert!(!node.is_healthy());
    }

    #[test]
    fn counters_saturate() {
        let word = with_counter(0, HTTP, COUNTER_MAX);
        let never = Thresholds::new(0, 0, 0, 0);
        let (next, _) = step(word, HttpFailure, &never);
        assert_eq!(counter(next, HTTP), COUNTER_MAX);
        assert_eq!(next & UNHEALTHY, 0);
        assert_eq!(Thresholds::new(1 << 20, 1, 1, 1).successes, COUNTER_MAX);
    }

    #[test]
    fn racing_reports_flip_a_node_exactly_once() {
        let node = std::sync::Arc::new(NodeHealth::default());
        let limits = Thresholds::new(1, 1000, 1000, 1000);
        let flips: usize = (0..4)
            .map(|_| {
                let node = node.clone();
                std::thread::spawn(move || {
                    (0..500)
                        .filter(|_| node.record(HttpFailure, &limits) == Some(false))
                        .count()
                })
            })
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(flips, 1);
        assert!(!node.is_healthy());
    }
}
