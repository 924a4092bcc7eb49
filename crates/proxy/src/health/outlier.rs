//! Outlier detection: a node that keeps failing real traffic is ejected for a while, as Envoy
//! ejects hosts (`outlier_detection` on an upstream).
//!
//! A node is ejected when `consecutive_5xx` answers in a row were 5xx (a failed attempt counts
//! as one), or `consecutive_gateway_failure` in a row were gateway failures (502, 503, 504, a
//! failed connection, a timeout), with the chance its `enforcing_*` percentage gives. Its
//! ejection lasts `base_ejection_time` times the number of times it was ejected, at most
//! `max_ejection_time`; that number goes down by one for every `interval` the node then stays
//! in service. No node is ejected while `max_ejection_percent` of the upstream's nodes (rounded
//! down, but at least one unless it is 0) are out already. Envoy rounds up instead: it ejects
//! while fewer than that percentage are out, so 2 of 3 nodes at 50%; here that is 1.
//!
//! The workers share one state per node, as they share health checks': the two streaks are one
//! atomic word that every worker's reports move, so "consecutive" means across workers, and a
//! success on a node with no streak writes nothing. An ejection is an atomic deadline: a
//! request reads it with one load, and reads the clock only while a node is (or was just) out.
//! Only a streak that reaches its threshold takes the upstream's lock, to weigh the ejection
//! against the nodes out already without two workers both taking the last place.
//!
//! Nothing runs on a timer, where Envoy sweeps every `interval`: an ejected node is back as
//! soon as its time is over, and the decay of its ejection count is worked out when it is next
//! ejected. Envoy's success-rate and failure-percentage ejection, local-origin errors counted
//! apart, jitter, and active checks bringing a node back early are not implemented.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use pylon_model::{Node, OutlierDetection};
use serde::Serialize;

use super::{carry_nodes, node_display, Attempt};

/// One upstream's outlier detection and the state of its nodes, in node order (the balancer's
/// indices).
pub(crate) struct UpstreamOutlier {
    policy: Arc<Policy>,
    nodes: Box<[Arc<OutlierNode>]>,
    /// How many nodes may be out at once.
    max_ejected: usize,
}

/// The configuration, compiled once, with the lock and the counts of ejections that every
/// version sharing it shares. Nodes carry their state from one version to the next only under
/// the same policy, so its `epoch` is the origin of all their times.
struct Policy {
    key: String,
    /// As configured: a version with another one starts afresh.
    config: OutlierDetection,
    /// Streak lengths that eject, by [`Detector`].
    thresholds: [u16; 2],
    /// Percent chances that a detection ejects, by [`Detector`].
    enforcing: [u32; 2],
    interval_ms: u64,
    base_ms: u64,
    max_ms: u64,
    epoch: Instant,
    /// Taken to decide an ejection, never to read one.
    ejections: Mutex<Counts>,
}

/// Which streak asked for an ejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Detector {
    Consecutive5xx = 0,
    ConsecutiveGatewayFailure = 1,
}

/// What the ejection decisions came to, as Envoy's statistics count them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    /// Streaks that reached their threshold on a node in service, by [`Detector`].
    detected: [u64; 2],
    /// Ejections made, by [`Detector`].
    enforced: [u64; 2],
    /// Ejections refused because `max_ejection_percent` of the nodes were out.
    overflow: u64,
}

/// A node as outlier detection sees it: what identifies it across versions, and its state.
struct OutlierNode {
    host: String,
    port: u16,
    addr: Option<SocketAddr>,
    /// The streak of 5xx answers in the low half, of gateway failures in the high half.
    streaks: AtomicU32,
    /// When the ejection in force ends, in milliseconds from the policy's epoch; 0 once it is
    /// over and a reader has seen so.
    ejected_until: AtomicU64,
    /// Changed only under the policy's lock.
    history: Mutex<History>,
}

/// A node's past ejections.
#[derive(Debug, Default, Clone, Copy)]
struct History {
    /// How many times the node was ejected.
    ejections: u64,
    /// The multiplier of `base_ejection_time` of the last ejection, as it stood then.
    multiplier: u32,
    /// When the last ejection ended (or ends), in milliseconds from the epoch; 0 for none.
    ends_ms: u64,
    /// How long the last ejection lasted, in milliseconds.
    lasted_ms: u64,
}

/// How an attempt counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Success,
    /// A 5xx that is not a gateway failure: it breaks a streak of gateway failures.
    ServerError,
    GatewayFailure,
}

impl Verdict {
    fn of(attempt: Attempt) -> Self {
        match attempt {
            Attempt::Answered(502..=504) | Attempt::Failed | Attempt::TimedOut => {
                Verdict::GatewayFailure
            }
            Attempt::Answered(500..=599) => Verdict::ServerError,
            Attempt::Answered(_) => Verdict::Success,
        }
    }
}

const HALF: u32 = 16;
const LOW: u32 = (1 << HALF) - 1;

/// The streaks after `verdict`, and which detectors it fired. A streak that reaches its
/// threshold starts again from 0, so that a node an ejection was refused to is weighed again
/// after as many failures more, not at every one.
fn step(word: u32, verdict: Verdict, thresholds: [u16; 2]) -> (u32, [bool; 2]) {
    let (five, gateway) = (word & LOW, word >> HALF);
    let (five, gateway) = match verdict {
        Verdict::Success => return (0, [false; 2]),
        Verdict::ServerError => (five + 1, 0),
        Verdict::GatewayFailure => (five + 1, gateway + 1),
    };
    let fired = [
        five >= u32::from(thresholds[Detector::Consecutive5xx as usize]),
        gateway >= u32::from(thresholds[Detector::ConsecutiveGatewayFailure as usize]),
    ];
    // Thresholds are at least 1, so a streak that did not fire is below `u16::MAX`.
    let five = if fired[0] { 0 } else { five };
    let gateway = if fired[1] { 0 } else { gateway };
    (five | (gateway << HALF), fired)
}

impl UpstreamOutlier {
    /// Fresh state for the upstream at `key`, if it has `outlier_detection`: no node out.
    /// `nodes` are its nodes, and `addresses` where each resolved to, in the same order.
    pub fn compile(
        key: &str,
        config: Option<&OutlierDetection>,
        nodes: &[Node],
        addresses: &[Option<SocketAddr>],
    ) -> Option<Self> {
        let config = config?;
        let millis = |seconds: f64| (seconds * 1000.0) as u64;
        let policy = Policy {
            key: key.to_owned(),
            config: config.clone(),
            thresholds: [
                config.consecutive_5xx.clamp(1, u32::from(u16::MAX)) as u16,
                config
                    .consecutive_gateway_failure
                    .clamp(1, u32::from(u16::MAX)) as u16,
            ],
            enforcing: [
                config.enforcing_consecutive_5xx,
                config.enforcing_consecutive_gateway_failure,
            ],
            // Validation keeps these at a millisecond or more; 1 ms also keeps a deadline
            // from ever being the epoch itself, which means "in service".
            interval_ms: millis(config.interval).max(1),
            base_ms: millis(config.base_ejection_time).max(1),
            max_ms: millis(config.max_ejection_time()).max(1),
            epoch: Instant::now(),
            ejections: Mutex::default(),
        };
        let nodes: Box<[_]> = nodes
            .iter()
            .zip(addresses)
            .map(|(node, &addr)| {
                Arc::new(OutlierNode {
                    host: node.host.clone(),
                    port: node.port,
                    addr,
                    streaks: AtomicU32::new(0),
                    ejected_until: AtomicU64::new(0),
                    history: Mutex::default(),
                })
            })
            .collect();
        Some(Self {
            max_ejected: max_ejected(nodes.len(), config.max_ejection_percent),
            policy: Arc::new(policy),
            nodes,
        })
    }

    /// Whether node `index` is ejected. Out of range: not ejected.
    #[inline]
    pub fn is_ejected(&self, index: usize) -> bool {
        self.nodes.get(index).is_some_and(|node| {
            node.ejected_until.load(Ordering::Relaxed) != 0
                && self.ejected_at(node, self.policy.millis(Instant::now()))
        })
    }

    /// Counts what a proxied attempt to node `index` saw, and ejects the node if that makes
    /// a streak long enough.
    pub fn report_attempt(&self, index: usize, attempt: Attempt) {
        self.record(index, attempt, Instant::now, || fastrand::u32(0..100));
    }

    /// [`Self::report_attempt`] with the clock and the dice given: `roll` (0..100) is drawn
    /// for each detection, which ejects when it is below the detector's enforcing percentage.
    fn record(
        &self,
        index: usize,
        attempt: Attempt,
        now: impl Fn() -> Instant,
        mut roll: impl FnMut() -> u32,
    ) {
        let Some(node) = self.nodes.get(index) else {
            return;
        };
        let fired = node.count(Verdict::of(attempt), self.policy.thresholds);
        // Gateway failures first, as Envoy weighs them: the more specific detector.
        for detector in [
            Detector::ConsecutiveGatewayFailure,
            Detector::Consecutive5xx,
        ] {
            if fired[detector as usize] {
                self.consider(node, detector, now(), roll());
            }
        }
    }

    /// Ejects `node`, which `detector` found failing, unless it is out already, the dice
    /// say no, or too many nodes are out.
    fn consider(&self, node: &OutlierNode, detector: Detector, now: Instant, roll: u32) {
        let now_ms = self.policy.millis(now);
        let mut counts = self.policy.lock();
        if self.ejected_at(node, now_ms) {
            // Traffic that was under way when it went out, or that every node being out sent
            // to it anyway: nothing new.
            return;
        }
        counts.detected[detector as usize] += 1;
        if roll >= self.policy.enforcing[detector as usize] {
            return;
        }
        let out = self
            .nodes
            .iter()
            .filter(|n| self.ejected_at(n, now_ms))
            .count();
        if out >= self.max_ejected {
            counts.overflow += 1;
            tracing::debug!(
                upstream = %self.policy.key,
                node = %node.display(),
                ?detector,
                out,
                "node not ejected: max_ejection_percent of the nodes are out"
            );
            return;
        }
        let lasts = node.eject(now_ms, &self.policy);
        counts.enforced[detector as usize] += 1;
        tracing::warn!(
            upstream = %self.policy.key,
            node = %node.display(),
            ?detector,
            seconds = lasts.as_secs_f64(),
            "node ejected: no traffic until its time is over (outlier detection)"
        );
    }

    /// Whether `node` is out at `now_ms`; clears an ejection that is over.
    fn ejected_at(&self, node: &OutlierNode, now_ms: u64) -> bool {
        let until = node.ejected_until.load(Ordering::Relaxed);
        if until == 0 {
            return false;
        }
        if now_ms < until {
            return true;
        }
        // Fails harmlessly if the node was ejected again meanwhile: that ejection stands.
        let cleared = node
            .ejected_until
            .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
        if cleared {
            tracing::info!(
                upstream = %self.policy.key,
                node = %node.display(),
                "node back in service after its ejection (outlier detection)"
            );
        }
        false
    }

    /// The state to use from now on, given the one in force (`previous`): the same object
    /// when neither the nodes nor the configuration changed; else this one, keeping the state
    /// of the nodes that stayed when only the nodes changed.
    pub fn carry_from(self: &Arc<Self>, previous: Option<&Arc<Self>>) -> Arc<Self> {
        let Some(previous) = previous.filter(|p| p.policy.config == self.policy.config) else {
            return self.clone();
        };
        let Some(nodes) = carry_nodes(&previous.nodes, &self.nodes, |a, b| a.same_node(b)) else {
            return previous.clone();
        };
        Arc::new(Self {
            policy: previous.policy.clone(),
            nodes,
            max_ejected: self.max_ejected,
        })
    }

    /// The control API's view: the counts, and each node's state, in node order.
    pub fn report(&self) -> (OutlierReport, Vec<NodeOutlierReport>) {
        let now = Instant::now();
        let now_ms = self.policy.millis(now);
        let counts = *self.policy.lock();
        let nodes: Vec<_> = self
            .nodes
            .iter()
            .map(|node| node.report(self.ejected_at(node, now_ms), now, &self.policy))
            .collect();
        let upstream = OutlierReport {
            ejections_active: nodes.iter().filter(|n| n.ejected).count(),
            ejections_enforced_total: counts.enforced.iter().sum(),
            ejections_overflow: counts.overflow,
            ejections_detected_consecutive_5xx: counts.detected[0],
            ejections_enforced_consecutive_5xx: counts.enforced[0],
            ejections_detected_consecutive_gateway_failure: counts.detected[1],
            ejections_enforced_consecutive_gateway_failure: counts.enforced[1],
        };
        (upstream, nodes)
    }

    /// Each node's host, port and address, in node order.
    pub fn nodes(&self) -> impl Iterator<Item = (&str, u16, Option<SocketAddr>)> {
        self.nodes.iter().map(|n| (n.host.as_str(), n.port, n.addr))
    }
}

/// How many of `nodes` may be out at once: `percent` of them rounded down, but at least one
/// unless `percent` is 0.
fn max_ejected(nodes: usize, percent: u32) -> usize {
    match percent {
        0 => 0,
        _ => (nodes * percent.min(100) as usize / 100).max(1),
    }
}

impl Policy {
    fn millis(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        // Plain counters: whatever a panicking holder left is still a count.
        self.ejections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl OutlierNode {
    fn same_node(&self, other: &OutlierNode) -> bool {
        (&self.host, self.port, self.addr) == (&other.host, other.port, other.addr)
    }

    fn display(&self) -> String {
        node_display(&self.host, self.port, self.addr)
    }

    /// Counts `verdict`; returns which detectors fired. A success on a node without a streak,
    /// what nearly every report is, only reads.
    fn count(&self, verdict: Verdict, thresholds: [u16; 2]) -> [bool; 2] {
        let mut current = self.streaks.load(Ordering::Relaxed);
        loop {
            let (next, fired) = step(current, verdict, thresholds);
            if next == current {
                return fired;
            }
            match self.streaks.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return fired,
                Err(actual) => current = actual,
            }
        }
    }

    /// Ejects the node from `now_ms`, under the policy's lock; returns for how long.
    fn eject(&self, now_ms: u64, policy: &Policy) -> Duration {
        let mut history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        let mut multiplier = history.multiplier_at(now_ms, policy.interval_ms);
        // Grows while it lengthens the ejection: at the cap it stays, so that the decay
        // starts from there.
        if policy.base_ms.saturating_mul(u64::from(multiplier)) < policy.max_ms {
            multiplier += 1;
        }
        let lasts = policy
            .base_ms
            .saturating_mul(u64::from(multiplier))
            .min(policy.max_ms);
        *history = History {
            ejections: history.ejections + 1,
            multiplier,
            ends_ms: now_ms + lasts,
            lasted_ms: lasts,
        };
        self.streaks.store(0, Ordering::Relaxed);
        self.ejected_until.store(now_ms + lasts, Ordering::Relaxed);
        Duration::from_millis(lasts)
    }

    fn report(&self, ejected: bool, now: Instant, policy: &Policy) -> NodeOutlierReport {
        let history = *self.history.lock().unwrap_or_else(PoisonError::into_inner);
        let now_ms = policy.millis(now);
        let streaks = self.streaks.load(Ordering::Relaxed);
        NodeOutlierReport {
            ejected,
            ejected_until: ejected.then(|| {
                let left = Duration::from_millis(history.ends_ms.saturating_sub(now_ms));
                humantime::format_rfc3339_millis(SystemTime::now() + left).to_string()
            }),
            ejection_time: (history.ejections > 0)
                .then(|| Duration::from_millis(history.lasted_ms).as_secs_f64()),
            ejections: history.ejections,
            ejection_multiplier: history.multiplier_at(now_ms, policy.interval_ms),
            consecutive_5xx: (streaks & LOW) as u16,
            consecutive_gateway_failure: (streaks >> HALF) as u16,
        }
    }
}

impl History {
    /// The multiplier at `now_ms`: the last one, less one for each whole `interval_ms` the
    /// node has been in service since.
    fn multiplier_at(&self, now_ms: u64, interval_ms: u64) -> u32 {
        let in_service = now_ms.saturating_sub(self.ends_ms);
        let decay = u32::try_from(in_service / interval_ms).unwrap_or(u32::MAX);
        self.multiplier.saturating_sub(decay)
    }
}

/// An upstream's ejection counts, as the control API shows them (Envoy's statistics' names).
#[derive(Debug, Serialize)]
pub(crate) struct OutlierReport {
    ejections_active: usize,
    ejections_enforced_total: u64,
    ejections_overflow: u64,
    ejections_detected_consecutive_5xx: u64,
    ejections_enforced_consecutive_5xx: u64,
    ejections_detected_consecutive_gateway_failure: u64,
    ejections_enforced_consecutive_gateway_failure: u64,
}

/// A node's outlier state, as the control API shows it.
#[derive(Debug, Serialize)]
pub(crate) struct NodeOutlierReport {
    ejected: bool,
    /// RFC 3339, UTC, while ejected.
    ejected_until: Option<String>,
    /// Seconds the current or last ejection lasts; `null` if never ejected.
    ejection_time: Option<f64>,
    /// Times ejected.
    ejections: u64,
    /// The multiple of `base_ejection_time` the last ejection lasted, less its decay since.
    ejection_multiplier: u32,
    /// The current streaks.
    consecutive_5xx: u16,
    consecutive_gateway_failure: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER_ERROR: Attempt = Attempt::Answered(500);
    const BAD_GATEWAY: Attempt = Attempt::Answered(502);
    const OK: Attempt = Attempt::Answered(200);

    /// Every streak of `consecutive_5xx` ejects, for `base` seconds, growing to `max`.
    fn config(consecutive_5xx: u32, base: f64, max: f64) -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx,
            base_ejection_time: base,
            max_ejection_time: Some(max),
            max_ejection_percent: 100,
            ..OutlierDetection::default()
        }
    }

    /// An upstream of `count` nodes, 127.0.0.1:1 and up.
    fn upstream(count: u16, config: &OutlierDetection) -> UpstreamOutlier {
        let nodes: Vec<Node> = (1..=count)
            .map(|port| Node {
                host: "127.0.0.1".into(),
                port,
                weight: 1,
                priority: 0,
            })
            .collect();
        let addresses: Vec<_> = nodes
            .iter()
            .map(|n| Some(SocketAddr::from(([127, 0, 0, 1], n.port))))
            .collect();
        UpstreamOutlier::compile("upstreams/u", Some(config), &nodes, &addresses).unwrap()
    }

    /// The upstream's clock as the tests set it: `t(1.5)` is 1.5 s after the start.
    struct Clock(Instant);

    impl Clock {
        fn new() -> Self {
            Self(Instant::now())
        }

        fn t(&self, seconds: f64) -> Instant {
            self.0 + Duration::from_secs_f64(seconds)
        }
    }

    /// Reports `attempts` to node `index` at `at`, every detection enforced.
    fn report(upstream: &UpstreamOutlier, index: usize, attempts: &[Attempt], at: Instant) {
        for &attempt in attempts {
            upstream.record(index, attempt, || at, || 0);
        }
    }

    fn ejected(upstream: &UpstreamOutlier, index: usize, at: Instant) -> bool {
        upstream.ejected_at(&upstream.nodes[index], upstream.policy.millis(at))
    }

    fn counts(upstream: &UpstreamOutlier) -> Counts {
        *upstream.policy.lock()
    }

    #[test]
    fn attempts_count_as_envoy_counts_them() {
        assert_eq!(Verdict::of(OK), Verdict::Success);
        assert_eq!(Verdict::of(Attempt::Answered(404)), Verdict::Success);
        assert_eq!(Verdict::of(SERVER_ERROR), Verdict::ServerError);
        for gateway in [
            BAD_GATEWAY,
            Attempt::Answered(503),
            Attempt::Answered(504),
            Attempt::Failed,
            Attempt::TimedOut,
        ] {
            assert_eq!(Verdict::of(gateway), Verdict::GatewayFailure, "{gateway:?}");
        }
    }

    #[test]
    fn consecutive_5xx_eject_and_a_success_starts_the_count_again() {
        let clock = Clock::new();
        let u = upstream(3, &config(3, 1.0, 10.0));
        report(
            &u,
            0,
            &[SERVER_ERROR, SERVER_ERROR, OK, SERVER_ERROR],
            clock.t(0.0),
        );
        assert!(!ejected(&u, 0, clock.t(0.0)), "no three in a row");
        assert_eq!(u.nodes[0].streaks.load(Ordering::Relaxed), 1);
        report(&u, 0, &[SERVER_ERROR], clock.t(0.0));
        assert!(!ejected(&u, 0, clock.t(0.0)));
        report(&u, 0, &[SERVER_ERROR], clock.t(0.0));
        assert!(ejected(&u, 0, clock.t(0.0)));
        assert!(!ejected(&u, 1, clock.t(0.0)), "the other nodes stay");
        assert_eq!(u.nodes[0].streaks.load(Ordering::Relaxed), 0);
        assert_eq!(counts(&u).enforced, [1, 0]);
    }

    #[test]
    fn gateway_failures_have_their_own_streak_which_other_5xx_break() {
        let clock = Clock::new();
        let config = OutlierDetection {
            consecutive_gateway_failure: 2,
            ..config(5, 1.0, 10.0)
        };
        let u = upstream(3, &config);
        report(
            &u,
            0,
            &[BAD_GATEWAY, SERVER_ERROR, BAD_GATEWAY],
            clock.t(0.0),
        );
        assert!(!ejected(&u, 0, clock.t(0.0)), "a 500 breaks the streak");
        report(&u, 0, &[Attempt::TimedOut], clock.t(0.0));
        assert!(ejected(&u, 0, clock.t(0.0)));
        assert_eq!(counts(&u).enforced, [0, 1]);

        // A refused connection and a 503 are gateway failures too.
        report(
            &u,
            1,
            &[Attempt::Failed, Attempt::Answered(503)],
            clock.t(0.0),
        );
        assert!(ejected(&u, 1, clock.t(0.0)));
    }

    #[test]
    fn each_ejection_lasts_longer_up_to_the_maximum() {
        let clock = Clock::new();
        let u = upstream(3, &config(1, 1.0, 2.5));
        let mut at = 0.0;
        for lasts in [1.0, 2.0, 2.5, 2.5] {
            report(&u, 0, &[SERVER_ERROR], clock.t(at));
            assert!(ejected(&u, 0, clock.t(at + lasts - 0.1)), "{lasts}");
            assert!(!ejected(&u, 0, clock.t(at + lasts + 0.1)), "{lasts}");
            // Back, and failing again at once: well within `interval` (10 s).
            at += lasts + 0.1;
        }
        assert_eq!(u.nodes[0].history.lock().unwrap().ejections, 4);
    }

    #[test]
    fn the_ejection_count_decays_while_the_node_stays_in_service() {
        let clock = Clock::new();
        let config = OutlierDetection {
            interval: 1.0,
            ..config(1, 1.0, 10.0)
        };
        let u = upstream(3, &config);
        report(&u, 0, &[SERVER_ERROR], clock.t(0.0));
        report(&u, 0, &[SERVER_ERROR], clock.t(1.1));
        report(&u, 0, &[SERVER_ERROR], clock.t(3.2));
        // The third ejection (3 s) ends at 6.2; a second in service takes one off.
        assert!(ejected(&u, 0, clock.t(6.1)));
        assert_eq!(u.nodes[0].history.lock().unwrap().multiplier, 3);
        report(&u, 0, &[SERVER_ERROR], clock.t(7.5));
        assert!(ejected(&u, 0, clock.t(10.4)), "3 s: (3 - 1 + 1) x 1 s");
        assert!(!ejected(&u, 0, clock.t(10.6)));
        // Long in service: back to the first ejection's length.
        report(&u, 0, &[SERVER_ERROR], clock.t(30.0));
        assert!(ejected(&u, 0, clock.t(30.9)));
        assert!(!ejected(&u, 0, clock.t(31.1)));
    }

    #[test]
    fn no_more_than_max_ejection_percent_of_the_nodes_are_out() {
        let clock = Clock::new();
        let config = OutlierDetection {
            max_ejection_percent: 50,
            ..config(2, 1.0, 10.0)
        };
        let u = upstream(3, &config);
        report(&u, 0, &[SERVER_ERROR; 2], clock.t(0.0));
        assert!(ejected(&u, 0, clock.t(0.0)));
        report(&u, 1, &[SERVER_ERROR; 2], clock.t(0.1));
        assert!(!ejected(&u, 1, clock.t(0.1)), "50% of 3 is one node");
        assert_eq!(counts(&u).overflow, 1);
        assert_eq!(counts(&u).detected, [2, 0]);

        // Node 0 is back: node 1 goes at its next full streak, not at its next failure.
        report(&u, 1, &[SERVER_ERROR], clock.t(1.5));
        assert!(!ejected(&u, 1, clock.t(1.5)));
        report(&u, 1, &[SERVER_ERROR], clock.t(1.5));
        assert!(ejected(&u, 1, clock.t(1.5)));
    }

    #[test]
    fn the_cap_rounds_down_but_allows_one_unless_it_is_zero() {
        assert_eq!(max_ejected(3, 50), 1);
        assert_eq!(max_ejected(3, 67), 2);
        assert_eq!(max_ejected(3, 10), 1);
        assert_eq!(max_ejected(10, 10), 1);
        assert_eq!(max_ejected(10, 25), 2);
        assert_eq!(max_ejected(3, 100), 3);
        assert_eq!(max_ejected(3, 0), 0);

        let clock = Clock::new();
        let never = OutlierDetection {
            max_ejection_percent: 0,
            ..config(1, 1.0, 10.0)
        };
        let u = upstream(3, &never);
        report(&u, 0, &[SERVER_ERROR], clock.t(0.0));
        assert!(!ejected(&u, 0, clock.t(0.0)));
        assert_eq!(counts(&u).overflow, 1);
    }

    #[test]
    fn enforcing_percentages_are_the_chance_a_detection_ejects() {
        let clock = Clock::new();
        let config = OutlierDetection {
            enforcing_consecutive_5xx: 30,
            ..config(1, 1.0, 10.0)
        };
        let u = upstream(3, &config);
        u.record(0, SERVER_ERROR, || clock.t(0.0), || 30);
        assert!(
            !ejected(&u, 0, clock.t(0.0)),
            "a roll of 30 is not below 30"
        );
        u.record(0, SERVER_ERROR, || clock.t(0.0), || 29);
        assert!(ejected(&u, 0, clock.t(0.0)));
        assert_eq!((counts(&u).detected, counts(&u).enforced), ([2, 0], [1, 0]));
    }

    #[test]
    fn an_ejected_node_is_not_ejected_again_by_traffic_already_under_way() {
        let clock = Clock::new();
        let u = upstream(3, &config(1, 1.0, 10.0));
        report(&u, 0, &[SERVER_ERROR], clock.t(0.0));
        report(&u, 0, &[SERVER_ERROR; 3], clock.t(0.5));
        assert!(
            !ejected(&u, 0, clock.t(1.1)),
            "the first ejection's time stands"
        );
        assert_eq!(counts(&u).detected, [1, 0]);
    }

    #[test]
    fn streaks_are_consecutive_across_workers() {
        // Four workers fail 250 requests each on one node: 1000 in a row, so with a threshold
        // of 10 and no ejection (enforcing 0) exactly 100 detections, however they interleave.
        let config = OutlierDetection {
            consecutive_5xx: 10,
            enforcing_consecutive_5xx: 0,
            enforcing_consecutive_gateway_failure: 0,
            ..OutlierDetection::default()
        };
        let u = Arc::new(upstream(3, &config));
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let u = u.clone();
                std::thread::spawn(move || {
                    for _ in 0..250 {
                        u.report_attempt(0, SERVER_ERROR);
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
        }
        assert_eq!(counts(&u).detected, [100, 0]);
        assert!(!u.is_ejected(0));
    }

    #[test]
    fn state_is_carried_while_the_configuration_stays_and_for_the_nodes_that_stay() {
        let clock = Clock::new();
        let config = config(1, 60.0, 600.0);
        let v1 = Arc::new(upstream(2, &config));
        report(&v1, 1, &[SERVER_ERROR], clock.t(0.0));

        let v2 = Arc::new(upstream(2, &config)).carry_from(Some(&v1));
        assert!(Arc::ptr_eq(&v1, &v2), "nothing changed: the same state");

        // Node :2 stays (now first of two), :1 goes, :3 comes.
        let moved = UpstreamOutlier::compile(
            "upstreams/u",
            Some(&config),
            &[2, 3].map(|port| Node {
                host: "127.0.0.1".into(),
                port,
                weight: 1,
                priority: 0,
            }),
            &[2, 3].map(|port| Some(SocketAddr::from(([127, 0, 0, 1], port)))),
        )
        .unwrap();
        let v3 = Arc::new(moved).carry_from(Some(&v2));
        assert!(Arc::ptr_eq(&v3.nodes[0], &v1.nodes[1]));
        assert!(v3.is_ejected(0));
        assert!(!v3.is_ejected(1));
        assert_eq!(counts(&v3).enforced, [1, 0], "the counts go on");

        let other = OutlierDetection {
            consecutive_5xx: 2,
            ..config
        };
        let v4 = Arc::new(upstream(2, &other)).carry_from(Some(&v1));
        assert!(!v4.is_ejected(1), "another configuration starts afresh");
        assert_eq!(counts(&v4), Counts::default());
    }

    #[test]
    fn reports_show_ejections_and_streaks() {
        let clock = Clock::new();
        let u = upstream(2, &config(2, 60.0, 600.0));
        report(&u, 0, &[SERVER_ERROR; 2], clock.t(0.0));
        report(&u, 1, &[BAD_GATEWAY], clock.t(0.0));
        let (upstream, nodes) = u.report();
        let upstream = serde_json::to_value(upstream).unwrap();
        assert_eq!(upstream["ejections_active"], 1);
        assert_eq!(upstream["ejections_enforced_total"], 1);
        assert_eq!(upstream["ejections_enforced_consecutive_5xx"], 1);
        let nodes = serde_json::to_value(nodes).unwrap();
        assert_eq!(nodes[0]["ejected"], true);
        assert_eq!(nodes[0]["ejections"], 1);
        assert_eq!(nodes[0]["ejection_time"], 60.0);
        assert_eq!(nodes[0]["ejection_multiplier"], 1);
        assert!(nodes[0]["ejected_until"].as_str().unwrap().ends_with('Z'));
        assert_eq!(nodes[1]["ejected"], false);
        assert!(nodes[1]["ejected_until"].is_null());
        assert!(nodes[1]["ejection_time"].is_null());
        assert_eq!(
            (
                &nodes[1]["consecutive_5xx"],
                &nodes[1]["consecutive_gateway_failure"]
            ),
            (&1.into(), &1.into())
        );
    }
}
