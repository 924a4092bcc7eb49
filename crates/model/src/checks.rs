//! An upstream's health checks (`checks`), with APISIX's field names, defaults and ranges.
//!
//! Active checks probe every node on a timer; passive checks watch the responses of real
//! traffic. As in APISIX, passive checks need active ones: a node that passive checks took out
//! gets back only through an active probe.
//!
//! Two differences from APISIX, both relaxations: intervals may be fractions of a second (down
//! to 0.1 s, where APISIX wants whole seconds), so a node can be probed more often than once a
//! second; and `req_headers` may be empty.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::FieldError;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Health checks: active ones are required, passive ones optional.
pub struct HealthChecks {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<ActiveCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive: Option<PassiveCheck>,
}

/// How a check talks to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CheckType {
    #[default]
    Http,
    Https,
    /// A TCP connect only; statuses are not looked at.
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ActiveCheck {
    #[serde(rename = "type")]
    pub kind: CheckType,
    /// Seconds a probe may take before it counts as a timeout.
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub timeout: f64,
    /// Probes in flight at once, per upstream.
    #[schemars(range(min = 1))]
    pub concurrency: u32,
    /// `Host` of the probe (and SNI of an https probe); the node's address when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Port probed instead of the node's.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub port: Option<u16>,
    /// Path of an http or https probe.
    #[schemars(regex(pattern = "^/"))]
    pub http_path: String,
    /// Whether an https probe verifies the node's certificate.
    pub https_verify_certificate: bool,
    /// Extra request header lines, `Name: value`.
    pub req_headers: Vec<String>,
    pub healthy: ActiveHealthy,
    pub unhealthy: ActiveUnhealthy,
}

impl Default for ActiveCheck {
    fn default() -> Self {
        Self {
            kind: CheckType::Http,
            timeout: 1.0,
            concurrency: 10,
            host: None,
            port: None,
            http_path: "/".to_owned(),
            https_verify_certificate: true,
            req_headers: Vec::new(),
            healthy: ActiveHealthy::default(),
            unhealthy: ActiveUnhealthy::default(),
        }
    }
}

/// When an unhealthy node is healthy again, and how often healthy nodes are probed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ActiveHealthy {
    /// Seconds between probes of a healthy node.
    #[schemars(range(min = 0.1))]
    pub interval: f64,
    /// Statuses that count as a success.
    #[schemars(length(min = 1), inner(range(min = 200, max = 599)))]
    pub http_statuses: Vec<u16>,
    /// Consecutive successful probes that make a node healthy.
    #[schemars(range(min = 1, max = 254))]
    pub successes: u32,
}

impl Default for ActiveHealthy {
    fn default() -> Self {
        Self {
            interval: 1.0,
            http_statuses: vec![200, 302],
            successes: 2,
        }
    }
}

/// When a healthy node is unhealthy, and how often unhealthy nodes are probed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ActiveUnhealthy {
    /// Seconds between probes of an unhealthy node.
    #[schemars(range(min = 0.1))]
    pub interval: f64,
    /// Statuses that count as a failure.
    #[schemars(length(min = 1), inner(range(min = 200, max = 599)))]
    pub http_statuses: Vec<u16>,
    /// Consecutive failed statuses that make a node unhealthy.
    #[schemars(range(min = 1, max = 254))]
    pub http_failures: u32,
    /// Consecutive failed connections that make a node unhealthy.
    #[schemars(range(min = 1, max = 254))]
    pub tcp_failures: u32,
    /// Consecutive timeouts that make a node unhealthy.
    #[schemars(range(min = 1, max = 254))]
    pub timeouts: u32,
}

impl Default for ActiveUnhealthy {
    fn default() -> Self {
        Self {
            interval: 1.0,
            http_statuses: vec![429, 404, 500, 501, 502, 503, 504, 505],
            http_failures: 5,
            tcp_failures: 2,
            timeouts: 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveCheck {
    #[serde(rename = "type")]
    pub kind: CheckType,
    pub healthy: PassiveHealthy,
    pub unhealthy: PassiveUnhealthy,
}

/// Counters of passive checks: 0 turns that counter off, as in APISIX.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveHealthy {
    /// Statuses that count as a success.
    #[schemars(length(min = 1), inner(range(min = 200, max = 599)))]
    pub http_statuses: Vec<u16>,
    /// Consecutive successful responses that make a node healthy.
    #[schemars(range(max = 254))]
    pub successes: u32,
}

impl Default for PassiveHealthy {
    fn default() -> Self {
        Self {
            http_statuses: vec![
                200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304, 305,
                306, 307, 308,
            ],
            successes: 5,
        }
    }
}

/// Counters of passive checks: 0 turns that counter off, as in APISIX.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveUnhealthy {
    /// Statuses that count as a failure.
    #[schemars(length(min = 1), inner(range(min = 200, max = 599)))]
    pub http_statuses: Vec<u16>,
    /// Consecutive failed statuses that make a node unhealthy.
    #[schemars(range(max = 254))]
    pub http_failures: u32,
    /// Consecutive failed connections that make a node unhealthy.
    #[schemars(range(max = 254))]
    pub tcp_failures: u32,
    /// Consecutive timeouts that make a node unhealthy.
    #[schemars(range(max = 254))]
    pub timeouts: u32,
}

impl Default for PassiveUnhealthy {
    fn default() -> Self {
        Self {
            http_statuses: vec![429, 500, 503],
            http_failures: 5,
            tcp_failures: 2,
            timeouts: 7,
        }
    }
}

/// The shortest interval between probes, in seconds.
const MIN_INTERVAL: f64 = 0.1;

impl HealthChecks {
    /// Range checks; paths are relative to `checks`.
    pub(crate) fn validate(&self, errors: &mut Vec<FieldError>) {
        match (&self.active, &self.passive) {
            (None, Some(_)) => errors.push(FieldError::new(
                "active",
                "required when checks.passive is set",
            )),
            (None, None) => errors.push(FieldError::new(
                "active",
                "required (or leave `checks` out)",
            )),
            _ => {}
        }
        if let Some(active) = &self.active {
            active.validate(errors);
        }
        if let Some(passive) = &self.passive {
            passive.validate(errors);
        }
    }
}

impl ActiveCheck {
    fn validate(&self, errors: &mut Vec<FieldError>) {
        let mut err = |path: &str, message: &str| {
            errors.push(FieldError::new(format!("active.{path}"), message));
        };
        if !(self.timeout > 0.0 && self.timeout.is_finite()) {
            err("timeout", "must be a number of seconds > 0");
        }
        if self.concurrency == 0 {
            err("concurrency", "must be >= 1");
        }
        if let Some(host) = &self.host {
            let valid = !host.is_empty()
                && host.bytes().all(|b| {
                    b.is_ascii_alphanumeric()
                        || matches!(b, b'-' | b'.' | b'_' | b':' | b'[' | b']')
                });
            if !valid {
                err("host", "must be a host name or an IP address");
            }
        }
        if self.port == Some(0) {
            err("port", "must be 1..65535");
        }
        if !self.http_path.starts_with('/') {
            err("http_path", "must start with `/`");
        } else if self
            .http_path
            .contains(|c: char| c.is_whitespace() || c.is_control())
        {
            err("http_path", "must not contain spaces or control characters");
        }
        for (i, line) in self.req_headers.iter().enumerate() {
            if !is_header_line(line) {
                err(
                    &format!("req_headers[{i}]"),
                    "must be a header line `Name: value`",
                );
            }
        }
        interval("active.healthy.interval", self.healthy.interval, errors);
        statuses(
            "active.healthy.http_statuses",
            &self.healthy.http_statuses,
            errors,
        );
        counter(
            "active.healthy.successes",
            self.healthy.successes,
            1,
            errors,
        );
        let unhealthy = &self.unhealthy;
        interval("active.unhealthy.interval", unhealthy.interval, errors);
        statuses(
            "active.unhealthy.http_statuses",
            &unhealthy.http_statuses,
            errors,
        );
        counter(
            "active.unhealthy.http_failures",
            unhealthy.http_failures,
            1,
            errors,
        );
        counter(
            "active.unhealthy.tcp_failures",
            unhealthy.tcp_failures,
            1,
            errors,
        );
        counter("active.unhealthy.timeouts", unhealthy.timeouts, 1, errors);
    }
}

impl PassiveCheck {
    fn validate(&self, errors: &mut Vec<FieldError>) {
        statuses(
            "passive.healthy.http_statuses",
            &self.healthy.http_statuses,
            errors,
        );
        counter(
            "passive.healthy.successes",
            self.healthy.successes,
            0,
            errors,
        );
        let unhealthy = &self.unhealthy;
        statuses(
            "passive.unhealthy.http_statuses",
            &unhealthy.http_statuses,
            errors,
        );
        counter(
            "passive.unhealthy.http_failures",
            unhealthy.http_failures,
            0,
            errors,
        );
        counter(
            "passive.unhealthy.tcp_failures",
            unhealthy.tcp_failures,
            0,
            errors,
        );
        counter("passive.unhealthy.timeouts", unhealthy.timeouts, 0, errors);
    }
}

fn interval(path: &str, seconds: f64, errors: &mut Vec<FieldError>) {
    if !(seconds >= MIN_INTERVAL && seconds.is_finite()) {
        errors.push(FieldError::new(
            path,
            format!("must be a number of seconds >= {MIN_INTERVAL}"),
        ));
    }
}

fn statuses(path: &str, statuses: &[u16], errors: &mut Vec<FieldError>) {
    if statuses.is_empty() {
        errors.push(FieldError::new(path, "must list at least one status"));
    }
    for (i, &status) in statuses.iter().enumerate() {
        if !(200..=599).contains(&status) {
            errors.push(FieldError::new(format!("{path}[{i}]"), "must be 200..599"));
        } else if statuses[..i].contains(&status) {
            errors.push(FieldError::new(
                format!("{path}[{i}]"),
                format!("{status} is listed twice"),
            ));
        }
    }
}

fn counter(path: &str, value: u32, min: u32, errors: &mut Vec<FieldError>) {
    if !(min..=254).contains(&value) {
        let message = if min == 0 {
            "must be 0..254 (0 turns it off)"
        } else {
            "must be 1..254"
        };
        errors.push(FieldError::new(path, message));
    }
}

/// `Name: value`: a header name of token characters, a colon, and a value without line breaks.
fn is_header_line(line: &str) -> bool {
    let Some((name, value)) = line.split_once(':') else {
        return false;
    };
    let is_token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    !name.is_empty()
        && name.bytes().all(is_token)
        && !value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(json: &str) -> Vec<String> {
        let checks: HealthChecks = serde_json::from_str(json).unwrap();
        let mut errors = Vec::new();
        checks.validate(&mut errors);
        errors.into_iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn defaults_are_apisix_defaults() {
        let checks: HealthChecks =
            serde_json::from_str(r#"{"active": {}, "passive": {}}"#).unwrap();
        let active = checks.active.unwrap();
        assert_eq!(active.kind, CheckType::Http);
        assert_eq!(active.timeout, 1.0);
        assert_eq!(active.concurrency, 10);
        assert_eq!(active.http_path, "/");
        assert!(active.https_verify_certificate);
        assert_eq!(active.healthy.interval, 1.0);
        assert_eq!(active.healthy.http_statuses, [200, 302]);
        assert_eq!(active.healthy.successes, 2);
        assert_eq!(
            active.unhealthy.http_statuses,
            [429, 404, 500, 501, 502, 503, 504, 505]
        );
        assert_eq!(
            (
                active.unhealthy.http_failures,
                active.unhealthy.tcp_failures,
                active.unhealthy.timeouts
            ),
            (5, 2, 3)
        );
        let passive = checks.passive.unwrap();
        assert_eq!(passive.healthy.http_statuses.len(), 19);
        assert_eq!(passive.healthy.successes, 5);
        assert_eq!(passive.unhealthy.http_statuses, [429, 500, 503]);
        assert_eq!(
            (
                passive.unhealthy.http_failures,
                passive.unhealthy.tcp_failures,
                passive.unhealthy.timeouts
            ),
            (5, 2, 7)
        );
        assert!(errors(r#"{"active": {}, "passive": {}}"#).is_empty());
    }

    #[test]
    fn partial_objects_keep_the_other_defaults() {
        let checks: HealthChecks =
            serde_json::from_str(r#"{"active": {"type": "tcp", "healthy": {"interval": 0.5}}}"#)
                .unwrap();
        let active = checks.active.unwrap();
        assert_eq!(active.kind, CheckType::Tcp);
        assert_eq!(active.healthy.interval, 0.5);
        assert_eq!(active.healthy.successes, 2);
        assert_eq!(active.unhealthy.interval, 1.0);
    }

    #[test]
    fn passive_needs_active() {
        assert_eq!(
            errors(r#"{"passive": {}}"#),
            ["active: required when checks.passive is set"]
        );
        assert_eq!(errors("{}"), ["active: required (or leave `checks` out)"]);
    }

    #[test]
    fn unknown_fields_and_types_are_refused() {
        assert!(serde_json::from_str::<HealthChecks>(r#"{"active": {"intervall": 1}}"#).is_err());
        assert!(serde_json::from_str::<HealthChecks>(r#"{"active": {"type": "udp"}}"#).is_err());
        assert!(serde_json::from_str::<HealthChecks>(
            r#"{"active": {"healthy": {"successes": -1}}}"#
        )
        .is_err());
    }

    #[test]
    fn active_fields_are_range_checked() {
        assert_eq!(
            errors(
                r#"{"active": {"timeout": 0, "concurrency": 0, "host": "a b", "port": 0,
                    "http_path": "status", "req_headers": ["X-A: 1", "no colon", ": empty", "X-B:"],
                    "healthy": {"interval": 0.05, "http_statuses": [], "successes": 0},
                    "unhealthy": {"interval": 0, "http_statuses": [500, 199, 600, 500],
                                  "http_failures": 255, "tcp_failures": 0, "timeouts": 300}}}"#
            ),
            [
                "active.timeout: must be a number of seconds > 0",
                "active.concurrency: must be >= 1",
                "active.host: must be a host name or an IP address",
                "active.port: must be 1..65535",
                "active.http_path: must start with `/`",
                "active.req_headers[1]: must be a header line `Name: value`",
                "active.req_headers[2]: must be a header line `Name: value`",
                "active.healthy.interval: must be a number of seconds >= 0.1",
                "active.healthy.http_statuses: must list at least one status",
                "active.healthy.successes: must be 1..254",
                "active.unhealthy.interval: must be a number of seconds >= 0.1",
                "active.unhealthy.http_statuses[1]: must be 200..599",
                "active.unhealthy.http_statuses[2]: must be 200..599",
                "active.unhealthy.http_statuses[3]: 500 is listed twice",
                "active.unhealthy.http_failures: must be 1..254",
                "active.unhealthy.tcp_failures: must be 1..254",
                "active.unhealthy.timeouts: must be 1..254",
            ]
        );
        assert_eq!(
            errors(r#"{"active": {"http_path": "/a b"}}"#),
            ["active.http_path: must not contain spaces or control characters"]
        );
    }

    #[test]
    fn passive_counters_may_be_zero_but_not_over_254() {
        assert!(errors(
            r#"{"active": {}, "passive": {"healthy": {"successes": 0},
                "unhealthy": {"http_failures": 0, "tcp_failures": 0, "timeouts": 0}}}"#
        )
        .is_empty());
        assert_eq!(
            errors(
                r#"{"active": {}, "passive": {"type": "tcp", "healthy": {"successes": 255,
                    "http_statuses": [302, 302]}, "unhealthy": {"http_statuses": [100]}}}"#
            ),
            [
                "passive.healthy.http_statuses[1]: 302 is listed twice",
                "passive.healthy.successes: must be 0..254 (0 turns it off)",
                "passive.unhealthy.http_statuses[0]: must be 200..599",
            ]
        );
    }
}
