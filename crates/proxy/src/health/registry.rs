//! The process-wide registry of health state: carries it from one configuration version to
//! the next, runs the active checkers, and answers the control API.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use pylon_model::{CheckType, Key};
use serde::Serialize;

use super::active::{self, Checker};
use super::outlier::{NodeOutlierReport, OutlierReport};
use super::{UpstreamHealth, UpstreamOutlier};
use crate::snapshot::UpstreamTarget;

/// Every upstream of the configuration in force with checks or outlier detection, by key.
/// Only the control side (publisher, control API) takes its lock; workers reach the state
/// through the snapshot.
#[derive(Default)]
pub struct HealthRegistry {
    upstreams: Mutex<BTreeMap<String, Watched>>,
}

/// What one upstream has: checks, outlier detection, or both; kept apart, so that a change to
/// one leaves the other's state alone.
#[derive(Default)]
struct Watched {
    checks: Option<Checked>,
    outlier: Option<Arc<UpstreamOutlier>>,
}

struct Checked {
    health: Arc<UpstreamHealth>,
    /// Held for its `Drop`, which stops the probes.
    _checker: Option<Checker>,
}

impl HealthRegistry {
    /// Gives an upstream, before it is published, the health state to use: carried over
    /// from the version in force where its nodes, checks and outlier detection allow it (see
    /// the module doc of [`crate::health`]). Starts or restarts its active checker to match,
    /// and stops the one of an upstream under the same key that is no longer checked. Must
    /// run on the control runtime: checkers are spawned on it.
    pub(crate) fn attach(&self, upstream: &mut UpstreamTarget) {
        let mut upstreams = self.lock();
        let old = upstreams.remove(&upstream.key).unwrap_or_default();
        let watched = Watched {
            checks: attach_checks(upstream, old.checks),
            outlier: upstream
                .outlier
                .as_ref()
                .map(|fresh| fresh.carry_from(old.outlier.as_ref())),
        };
        upstream.outlier.clone_from(&watched.outlier);
        if watched.checks.is_some() || watched.outlier.is_some() {
            upstreams.insert(upstream.key.clone(), watched);
        }
    }

    /// Stops the checks of the upstream at `key`, which no route uses any more, and forgets
    /// its state.
    pub(crate) fn detach(&self, key: &str) {
        let removed = self.lock().remove(key);
        if removed.is_some_and(|w| w.checks.is_some()) {
            tracing::info!(upstream = %key, "health checks stopped");
        }
    }

    /// The control API's `GET /v1/healthcheck`: every upstream with checks or outlier
    /// detection.
    pub(crate) fn report_all(&self) -> Vec<UpstreamReport> {
        self.lock()
            .iter()
            .map(|(key, watched)| UpstreamReport::of(key, watched))
            .collect()
    }

    /// The control API's `GET /v1/healthcheck/<kind>/<id>`, for the upstream at `key`.
    pub(crate) fn report(&self, key: &str) -> Option<UpstreamReport> {
        self.lock()
            .get(key)
            .map(|watched| UpstreamReport::of(key, watched))
    }

    /// Every checked node and whether it is healthy, for the metrics.
    pub(crate) fn node_health(&self) -> Vec<NodeHealthReport> {
        let upstreams = self.lock();
        let checked = upstreams
            .values()
            .filter_map(|watched| watched.checks.as_ref())
            .map(|checked| &checked.health);
        checked
            .flat_map(|health| {
                let upstream = format!("{}/{}", Key::DEFAULT_PREFIX, health.config.key);
                health.nodes.iter().map(move |node| NodeHealthReport {
                    upstream: upstream.clone(),
                    ip: node
                        .addr
                        .map_or_else(|| node.host.clone(), |a| a.ip().to_string()),
                    port: node.port,
                    healthy: node.health.is_healthy(),
                })
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Watched>> {
        // The map stays consistent whatever a panicking holder was doing: each insert is whole.
        self.upstreams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The checks state `upstream` is to use, given what the version in force had (`old`).
fn attach_checks(upstream: &mut UpstreamTarget, old: Option<Checked>) -> Option<Checked> {
    let Some(fresh) = &upstream.health else {
        if old.is_some() {
            tracing::info!(upstream = %upstream.key, "health checks stopped");
        }
        return None;
    };
    let (health, restart) = fresh.carry_from(old.as_ref().map(|c| &c.health));
    let checked = match old {
        Some(old) if !restart => old,
        _ => {
            let checker = active::start(&health);
            tracing::info!(
                upstream = %upstream.key,
                nodes = health.nodes.len(),
                active = checker.is_some(),
                "health checks (re)started"
            );
            Checked {
                health: health.clone(),
                _checker: checker,
            }
        }
    };
    upstream.health = Some(health);
    Some(checked)
}

/// One checked node's health, as the metrics label it.
#[derive(Debug)]
pub(crate) struct NodeHealthReport {
    /// The store key of the resource that defines the upstream: `/pylon/upstreams/1`.
    pub upstream: String,
    pub ip: String,
    pub port: u16,
    pub healthy: bool,
}

/// One upstream's health as the control API shows it: APISIX's format, with outlier
/// detection's state beside it.
#[derive(Debug, Serialize)]
pub(crate) struct UpstreamReport {
    /// The store key of the resource that defines the upstream: `/pylon/upstreams/1`.
    name: String,
    /// The checks' type; absent without checks.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outlier_detection: Option<OutlierReport>,
    nodes: Vec<NodeReport>,
}

#[derive(Debug, Serialize)]
struct NodeReport {
    ip: String,
    port: u16,
    /// The host as configured (a name or the IP again).
    hostname: String,
    #[serde(flatten)]
    checks: Option<CheckReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outlier: Option<NodeOutlierReport>,
}

/// What the checks say of a node.
#[derive(Debug, Serialize)]
struct CheckReport {
    /// `healthy`, `mostly_healthy`, `mostly_unhealthy` or `unhealthy`.
    status: &'static str,
    counter: Counter,
    /// RFC 3339, UTC; `null` while the node has kept the status it started with.
    status_changed_at: Option<String>,
}

#[derive(Debug, Serialize)]
struct Counter {
    success: u16,
    http_failure: u16,
    tcp_failure: u16,
    timeout_failure: u16,
}

impl UpstreamReport {
    fn of(key: &str, watched: &Watched) -> Self {
        let health = watched.checks.as_ref().map(|c| &c.health);
        let (outlier_detection, mut outliers) = match &watched.outlier {
            Some(outlier) => {
                let (upstream, nodes) = outlier.report();
                (Some(upstream), Some(nodes.into_iter()))
            }
            None => (None, None),
        };
        // Both were compiled from the upstream's nodes, in the same order.
        let addresses: Vec<(&str, u16, Option<SocketAddr>)> = match (health, &watched.outlier) {
            (Some(health), _) => health
                .nodes
                .iter()
                .map(|n| (n.host.as_str(), n.port, n.addr))
                .collect(),
            (None, Some(outlier)) => outlier.nodes().collect(),
            (None, None) => Vec::new(),
        };
        let nodes = addresses
            .into_iter()
            .enumerate()
            .map(|(i, (host, port, addr))| NodeReport {
                ip: addr.map_or_else(|| host.to_owned(), |a| a.ip().to_string()),
                port,
                hostname: host.to_owned(),
                checks: health.map(|h| CheckReport::of(&h.nodes[i].health.status())),
                outlier: outliers.as_mut().and_then(Iterator::next),
            })
            .collect();
        Self {
            name: format!("{}/{key}", Key::DEFAULT_PREFIX),
            kind: health.map(|h| match h.kind() {
                CheckType::Http => "http",
                CheckType::Https => "https",
                CheckType::Tcp => "tcp",
            }),
            outlier_detection,
            nodes,
        }
    }
}

impl CheckReport {
    fn of(status: &super::status::NodeStatus) -> Self {
        Self {
            status: status.label(),
            counter: Counter {
                success: status.success,
                http_failure: status.http_failure,
                tcp_failure: status.tcp_failure,
                timeout_failure: status.timeout_failure,
            },
            status_changed_at: status.changed_at_ms.map(|ms| {
                let at = UNIX_EPOCH + Duration::from_millis(ms);
                humantime::format_rfc3339_millis(at).to_string()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::status::Outcome;
    use crate::settings::UpstreamDefaults;
    use crate::snapshot::compile_upstream;
    use crate::tls::TlsContext;

    /// Upstream `u` with `nodes` and further `fields` (YAML flow), compiled.
    fn upstream(nodes: &str, fields: &str) -> UpstreamTarget {
        let text = format!("upstreams:\n  - {{id: u, nodes: {nodes}, {fields}}}\n");
        let config = pylon_model::parse_standalone(&text).unwrap().1;
        let tls = TlsContext::new(None, None).unwrap();
        let upstream = &config.upstreams["u"];
        let nodes = upstream
            .nodes
            .as_ref()
            .unwrap()
            .resolve(upstream.scheme)
            .unwrap();
        compile_upstream(
            "upstreams/u".into(),
            0,
            upstream,
            &nodes,
            crate::snapshot::resolve,
            &UpstreamDefaults::default(),
            &tls,
        )
        .unwrap()
    }

    /// Passive checks take a node out at the first failure. (The active checks they need
    /// never run: these tests do not yield to the runtime the checkers are spawned on.)
    const PASSIVE: &str = "checks: {active: {type: tcp}, passive: {unhealthy: {http_failures: 1}}}";
    const TWO: &str = r#"{"127.0.0.1:1": 1, "127.0.0.1:2": 1}"#;

    fn health(upstream: &UpstreamTarget) -> &Arc<UpstreamHealth> {
        upstream.health.as_ref().unwrap()
    }

    fn take_down(upstream: &UpstreamTarget, node: usize) {
        let health = health(upstream);
        let limits = health.config.passive.as_ref().unwrap().thresholds;
        health.record(node, Outcome::HttpFailure, &limits, "test");
        assert!(health.is_down(node));
    }

    #[tokio::test]
    async fn state_survives_a_change_that_leaves_nodes_and_checks_alone() {
        let registry = HealthRegistry::default();
        let mut v1 = upstream(TWO, PASSIVE);
        registry.attach(&mut v1);
        take_down(&v1, 1);

        let mut v2 = upstream(TWO, PASSIVE);
        registry.attach(&mut v2);
        assert!(Arc::ptr_eq(health(&v1), health(&v2)));
        assert!(health(&v2).is_down(1));
    }

    #[tokio::test]
    async fn nodes_that_stay_keep_their_state_when_others_come_and_go() {
        let registry = HealthRegistry::default();
        let mut v1 = upstream(TWO, PASSIVE);
        registry.attach(&mut v1);
        take_down(&v1, 1);

        // Node :2 stays (now second of three), :1 goes, :3 comes.
        let mut v2 = upstream(
            r#"{"127.0.0.1:3": 1, "127.0.0.1:2": 1, "127.0.0.1:4": 1}"#,
            PASSIVE,
        );
        registry.attach(&mut v2);
        let nodes: Vec<_> = health(&v2).nodes.iter().map(|n| n.port).collect();
        assert_eq!(nodes, [2, 3, 4], "nodes in balancer order");
        assert!(health(&v2).is_down(0));
        assert!(!health(&v2).is_down(1));
    }

    #[tokio::test]
    async fn other_checks_start_afresh_and_removed_upstreams_go() {
        let registry = HealthRegistry::default();
        let mut v1 = upstream(TWO, PASSIVE);
        registry.attach(&mut v1);
        take_down(&v1, 0);

        let mut v2 = upstream(
            TWO,
            "checks: {active: {type: tcp}, passive: {unhealthy: {http_failures: 2}}}",
        );
        registry.attach(&mut v2);
        assert!(!health(&v2).is_down(0));
        assert_eq!(registry.report_all().len(), 1);

        let mut v3 = upstream(TWO, PASSIVE);
        v3.health = None;
        registry.attach(&mut v3);
        assert!(registry.report_all().is_empty());
        assert!(registry.report("upstreams/u").is_none());
    }

    #[tokio::test]
    async fn reports_have_apisix_fields() {
        let registry = HealthRegistry::default();
        let mut v1 = upstream(TWO, PASSIVE);
        registry.attach(&mut v1);
        take_down(&v1, 1);
        let report = serde_json::to_value(registry.report("upstreams/u").unwrap()).unwrap();
        assert_eq!(report["name"], "/pylon/upstreams/u");
        assert_eq!(report["type"], "tcp");
        let node = &report["nodes"][1];
        assert_eq!(
            (&node["ip"], &node["port"]),
            (&"127.0.0.1".into(), &2.into())
        );
        assert_eq!(node["status"], "unhealthy");
        assert_eq!(node["counter"]["http_failure"], 1);
        assert_eq!(node["counter"]["success"], 0);
        assert!(node["status_changed_at"].as_str().unwrap().ends_with('Z'));
        assert_eq!(report["nodes"][0]["status"], "healthy");
        assert!(report["nodes"][0]["status_changed_at"].is_null());
    }

    /// Outlier detection that ejects a node at its first 5xx, for a minute.
    const EJECT_AT_ONCE: &str = "outlier_detection: {consecutive_5xx: 1, base_ejection_time: 60}";

    fn eject(upstream: &UpstreamTarget, node: usize) {
        let outlier = upstream.outlier.as_ref().unwrap();
        outlier.report_attempt(node, crate::health::Attempt::Answered(500));
        assert!(outlier.is_ejected(node));
    }

    #[tokio::test]
    async fn checks_and_outlier_detection_keep_their_states_apart() {
        let registry = HealthRegistry::default();
        let mut v1 = upstream(TWO, &format!("{PASSIVE}, {EJECT_AT_ONCE}"));
        registry.attach(&mut v1);
        eject(&v1, 0);
        take_down(&v1, 1);

        // Other checks: their state starts afresh, the ejection stays.
        let other_checks =
            "checks: {active: {type: tcp}, passive: {unhealthy: {http_failures: 1, timeouts: 3}}}";
        let mut v2 = upstream(TWO, &format!("{other_checks}, {EJECT_AT_ONCE}"));
        registry.attach(&mut v2);
        assert!(!health(&v2).is_down(1));
        let outlier = v2.outlier.as_ref().unwrap();
        assert!(Arc::ptr_eq(outlier, v1.outlier.as_ref().unwrap()));
        assert!(outlier.is_ejected(0));

        // Other outlier detection: the ejection goes, the checks' state stays.
        take_down(&v2, 1);
        let other_outlier = "outlier_detection: {consecutive_5xx: 2}";
        let mut v3 = upstream(TWO, &format!("{other_checks}, {other_outlier}"));
        registry.attach(&mut v3);
        assert!(!v3.outlier.as_ref().unwrap().is_ejected(0));
        assert!(health(&v3).is_down(1));
    }

    #[tokio::test]
    async fn an_upstream_with_outlier_detection_alone_is_reported_without_checks() {
        let registry = HealthRegistry::default();
        let mut v1 = upstream(TWO, EJECT_AT_ONCE);
        registry.attach(&mut v1);
        eject(&v1, 1);
        let report = serde_json::to_value(registry.report("upstreams/u").unwrap()).unwrap();
        assert_eq!(report["name"], "/pylon/upstreams/u");
        assert!(report.get("type").is_none(), "{report}");
        assert_eq!(report["outlier_detection"]["ejections_active"], 1);
        let node = &report["nodes"][1];
        assert_eq!(
            (&node["ip"], &node["port"]),
            (&"127.0.0.1".into(), &2.into())
        );
        assert!(node.get("status").is_none(), "{node}");
        assert_eq!(node["outlier"]["ejected"], true);
        assert_eq!(report["nodes"][0]["outlier"]["ejected"], false);

        let mut v2 = upstream(TWO, "retries: 1");
        registry.attach(&mut v2);
        assert!(registry.report("upstreams/u").is_none());
    }
}
