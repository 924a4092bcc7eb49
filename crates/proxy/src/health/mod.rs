//! Health checks: which nodes of an upstream may take traffic.
//!
//! Every upstream with `checks` gets an [`UpstreamHealth`] when its snapshot is compiled: its
//! settings, compiled once, and one [`NodeHealth`](status::NodeHealth) per node, an atomic word
//! that all workers and the checker share. A request reads a node's status with one load; a
//! worker reports what a proxied attempt saw (passive checks) with at most one
//! compare-and-swap. Active checks run once per process, on the control runtime, never on a
//! worker (see [`active`]).
//!
//! The [`HealthRegistry`] keeps this state across configuration versions, keyed by upstream
//! key (`upstreams/1`, `routes/7` for an inline upstream) and node: a version that changes
//! neither an upstream's nodes nor its checks keeps its state and its running checker; one
//! that changes the nodes keeps the state of the nodes that stayed; one that changes the
//! checks starts afresh; a removed upstream's state and checker go.
//!
//! Outlier detection ([`outlier`], an upstream's `outlier_detection`) is the other judge of
//! a node: it ejects one that keeps failing real traffic for a while. Its state is its own,
//! compiled and carried the same way (by its nodes and its configuration), so that a change to
//! the checks leaves ejections alone and the other way round; a node is used when neither
//! took it out.

pub(crate) mod active;
mod outlier;
mod passive;
mod registry;
mod status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pylon_model::{CheckType, HealthChecks, Node, Upstream};

use crate::tls::{TlsContext, TlsError};
use active::ActivePlan;
pub(crate) use outlier::UpstreamOutlier;
use passive::PassivePolicy;
pub use registry::HealthRegistry;
pub(crate) use registry::NodeHealthReport;
pub(crate) use status::Outcome;
use status::{NodeHealth, Thresholds};

/// How one proxied attempt ended, as far as the node is concerned: what passive checks and
/// outlier detection judge a node by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// The node answered with this status.
    Answered(u16),
    /// Connecting, sending or reading failed, or the answer was not HTTP.
    Failed,
    /// The node did not connect or answer in time.
    TimedOut,
}

/// One upstream's health checks and the health of its nodes, in node order (the balancer's
/// indices).
pub(crate) struct UpstreamHealth {
    config: Arc<CheckConfig>,
    nodes: Box<[Arc<CheckedNode>]>,
}

/// What the configuration says, compiled once per version.
struct CheckConfig {
    key: String,
    /// As configured: a new version with other checks starts afresh.
    checks: HealthChecks,
    /// Of the TLS settings https probes use (0 for none), which come partly from the
    /// upstream's `tls`: new settings restart the checker.
    tls_fingerprint: u64,
    active: Option<ActivePlan>,
    passive: Option<PassivePolicy>,
}

/// A node as checked: what identifies it across versions, and its health.
pub(crate) struct CheckedNode {
    host: String,
    port: u16,
    /// `None` when the host name did not resolve: every probe then fails.
    addr: Option<SocketAddr>,
    /// The `Host` a probe sends unless the checks name one.
    host_header: String,
    health: NodeHealth,
}

impl CheckedNode {
    fn same_node(&self, other: &CheckedNode) -> bool {
        (&self.host, self.port, self.addr, &self.host_header)
            == (&other.host, other.port, other.addr, &other.host_header)
    }
}

impl UpstreamHealth {
    /// Fresh state for the upstream at `key`, if it has `checks`: every node healthy. `nodes`
    /// are its nodes as configured, and `addresses` where each resolved to with the `Host` a
    /// request to it carries, in the same order. Fails
    /// only when the TLS settings of https checks cannot be built.
    pub fn compile(
        key: &str,
        upstream: &Upstream,
        nodes: &[Node],
        addresses: &[(Option<SocketAddr>, &str)],
        tls: &TlsContext,
    ) -> Result<Option<Self>, TlsError> {
        let Some(checks) = &upstream.checks else {
            return Ok(None);
        };
        let active = checks
            .active
            .as_ref()
            .map(|check| ActivePlan::new(check, upstream.tls.as_ref(), tls))
            .transpose()?;
        Ok(Some(Self::new(key, checks, active, nodes, addresses)))
    }

    fn new(
        key: &str,
        checks: &HealthChecks,
        active: Option<ActivePlan>,
        nodes: &[Node],
        addresses: &[(Option<SocketAddr>, &str)],
    ) -> Self {
        let config = CheckConfig {
            key: key.to_owned(),
            checks: checks.clone(),
            tls_fingerprint: active.as_ref().map_or(0, ActivePlan::tls_fingerprint),
            active,
            passive: checks.passive.as_ref().map(PassivePolicy::new),
        };
        let nodes = nodes
            .iter()
            .zip(addresses)
            .map(|(node, &(addr, host_header))| {
                Arc::new(CheckedNode {
                    host: node.host.clone(),
                    port: node.port,
                    addr,
                    host_header: host_header.to_owned(),
                    health: NodeHealth::default(),
                })
            })
            .collect();
        Self {
            config: Arc::new(config),
            nodes,
        }
    }

    /// Whether node `index` is marked unhealthy. Out of range: not down.
    #[inline]
    pub fn is_down(&self, index: usize) -> bool {
        self.nodes
            .get(index)
            .is_some_and(|n| !n.health.is_healthy())
    }

    /// Counts what a proxied attempt to node `index` saw, for passive checks.
    pub fn report_attempt(&self, index: usize, attempt: Attempt) {
        let Some(passive) = &self.config.passive else {
            return;
        };
        if let Some(outcome) = passive.outcome(attempt) {
            self.record(index, outcome, &passive.thresholds, "passive");
        }
    }

    fn record(&self, index: usize, outcome: Outcome, limits: &Thresholds, source: &str) {
        let Some(node) = self.nodes.get(index) else {
            return;
        };
        match node.health.record(outcome, limits) {
            Some(true) => tracing::info!(
                upstream = %self.config.key,
                node = %node.display(),
                "node is healthy again ({source} checks)"
            ),
            Some(false) => tracing::warn!(
                upstream = %self.config.key,
                node = %node.display(),
                ?outcome,
                "node is unhealthy: no traffic until it recovers ({source} checks)"
            ),
            None => {}
        }
    }

    /// The type shown by the control API: the active checks' (which validation requires).
    fn kind(&self) -> CheckType {
        self.config
            .checks
            .active
            .as_ref()
            .map_or_else(CheckType::default, |a| a.kind)
    }

    /// The state to use from now on, given the one in force (`previous`): the same object
    /// when nothing it depends on changed, else this one, keeping the state of the nodes that
    /// stayed when only the nodes changed. The flag says whether checkers must (re)start.
    fn carry_from(self: &Arc<Self>, previous: Option<&Arc<UpstreamHealth>>) -> (Arc<Self>, bool) {
        let Some(previous) = previous else {
            return (self.clone(), true);
        };
        let (old, new) = (&previous.config, &self.config);
        if (&old.checks, old.tls_fingerprint) != (&new.checks, new.tls_fingerprint) {
            return (self.clone(), true);
        }
        let Some(nodes) = carry_nodes(&previous.nodes, &self.nodes, |a, b| a.same_node(b)) else {
            return (previous.clone(), false);
        };
        let carried = UpstreamHealth {
            config: self.config.clone(),
            nodes,
        };
        (Arc::new(carried), true)
    }
}

/// The nodes of a new version, given those of the version in force (`old`): `None` when they
/// are the same nodes in the same order, so that the state in force is kept whole; else the
/// new list, each node that stayed keeping its old state. Health checks and outlier detection
/// carry their per-node state alike.
fn carry_nodes<N: Clone>(old: &[N], new: &[N], same: impl Fn(&N, &N) -> bool) -> Option<Box<[N]>> {
    if old.len() == new.len() && old.iter().zip(new).all(|(a, b)| same(a, b)) {
        return None;
    }
    let carried = new
        .iter()
        .map(|node| old.iter().find(|o| same(o, node)).unwrap_or(node).clone())
        .collect();
    Some(carried)
}

impl CheckedNode {
    fn display(&self) -> String {
        node_display(&self.host, self.port, self.addr)
    }
}

/// A node for the logs: its address, with the host name it was configured by, if any.
fn node_display(host: &str, port: u16, addr: Option<SocketAddr>) -> String {
    match addr {
        Some(addr) if addr.ip().to_string() == host => addr.to_string(),
        Some(addr) => format!("{host}:{port} ({addr})"),
        None => format!("{host}:{port}"),
    }
}

/// HTTP statuses as a bit set: a lookup on the request path is a shift and a mask.
#[derive(Debug, Clone, Default)]
struct StatusSet([u64; 10]);

impl StatusSet {
    fn new(statuses: &[u16]) -> Self {
        let mut set = Self::default();
        for &status in statuses {
            if let Some(word) = set.0.get_mut(usize::from(status / 64)) {
                *word |= 1 << (status % 64);
            }
        }
        set
    }

    fn contains(&self, status: u16) -> bool {
        self.0
            .get(usize::from(status / 64))
            .is_some_and(|word| word & (1 << (status % 64)) != 0)
    }
}

/// Which statuses count as a success and which as a failure; others count as neither.
#[derive(Debug, Clone)]
struct StatusClasses {
    healthy: StatusSet,
    unhealthy: StatusSet,
}

impl StatusClasses {
    fn new(healthy: &[u16], unhealthy: &[u16]) -> Self {
        Self {
            healthy: StatusSet::new(healthy),
            unhealthy: StatusSet::new(unhealthy),
        }
    }

    fn classify(&self, status: u16) -> Option<Outcome> {
        if self.healthy.contains(status) {
            Some(Outcome::Success)
        } else if self.unhealthy.contains(status) {
            Some(Outcome::HttpFailure)
        } else {
            None
        }
    }
}

/// Seconds from the configuration as a duration. Validation keeps them positive; anything
/// else that got through falls back to `default` rather than panic in `Duration`.
fn seconds(value: f64, default: Duration) -> Duration {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_by_their_lists() {
        let classes = StatusClasses::new(&[200, 302], &[500, 503]);
        assert_eq!(classes.classify(200), Some(Outcome::Success));
        assert_eq!(classes.classify(503), Some(Outcome::HttpFailure));
        assert_eq!(classes.classify(404), None);
        assert_eq!(classes.classify(0), None);
        assert!(!StatusSet::new(&[700]).contains(700));
    }

    #[test]
    fn bad_seconds_fall_back_instead_of_panicking() {
        let default = Duration::from_secs(1);
        assert_eq!(seconds(0.5, default), Duration::from_millis(500));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(seconds(bad, default), default);
        }
    }
}
