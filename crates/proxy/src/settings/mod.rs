//! The data plane's settings: the `proxy` and `access_log` sections of the node's config file.
//! Durations are in seconds, as in APISIX's config.

mod http2;
mod proxy_protocol;
mod stream;

use std::net::SocketAddr;
use std::time::Duration;

use pylon_model::MAX_SECONDS;
use serde::{Deserialize, Serialize};

use crate::http1::HeadLimits;
pub use http2::Http2Settings;
pub use proxy_protocol::ProxyProtocolSettings;
pub use stream::{StreamListen, StreamSettings, UdpListen};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxySettings {
    /// Addresses the HTTP proxy listens on. Port 0 picks a free port (shared by all workers).
    pub listen: Vec<SocketAddr>,
    /// Worker threads, each with its own listener socket and upstream pools; 0 = one per core.
    pub workers: usize,
    /// Connections a worker holds at once; beyond that, new ones are closed at accept.
    pub max_connections_per_worker: usize,
    /// Seconds a client has to send a complete request head.
    pub client_header_timeout: f64,
    /// Seconds between two reads of a request body.
    pub client_body_timeout: f64,
    /// Seconds a write to the client may take.
    pub client_send_timeout: f64,
    /// Seconds an idle keep-alive connection is kept open.
    pub keepalive_timeout: f64,
    /// Longest request line, in bytes (longer: 414).
    pub max_request_line: usize,
    /// Largest request head, request line and headers together (larger: 431).
    pub max_header_size: usize,
    /// Most headers in a request (more: 431).
    pub max_headers: usize,
    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT, or after a new process
    /// took the listening sockets over.
    pub shutdown_grace: f64,
    /// The unix socket through which a new `pylon run` takes the listening sockets over from
    /// this one (a restart without a refused or reset connection). Unset: `<node config file
    /// name without extension>.sock` beside the node config (`pylon.sock` without one); `""`:
    /// no handoff.
    pub handoff_socket: Option<std::path::PathBuf>,
    /// Used where an upstream or route sets no value of its own.
    pub upstream: UpstreamDefaults,
    pub https: HttpsSettings,
    /// HTTP/2 from clients (h2c on `listen`, `h2` on `https.listen`) and its abuse limits.
    pub http2: Http2Settings,
    pub proxy_protocol: ProxyProtocolSettings,
    /// The L4 proxy's listeners, for the stream routes.
    pub stream: StreamSettings,
    /// How far below the workers' CPU priority the control side runs (a nice increment, 0–19):
    /// compiling a change, the Admin API, health checks and the local config copy then take a
    /// core from a busy worker only when the worker has nothing to do. 0: the same priority.
    pub control_nice: i32,
}

/// The TLS listener. Certificates come from the `ssls` resources.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpsSettings {
    /// Addresses the HTTPS (and HTTP/2 over TLS) proxy listens on; empty: none.
    pub listen: Vec<SocketAddr>,
    /// The SNI whose certificate answers clients that send none, or a name no ssl covers.
    /// Unset: such handshakes fail with an `unrecognized_name` alert.
    pub fallback_sni: Option<String>,
    /// Seconds a client has to complete the TLS handshake.
    pub handshake_timeout: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamDefaults {
    pub connect_timeout: f64,
    pub send_timeout: f64,
    pub read_timeout: f64,
    /// Idle connections kept per node and worker.
    pub keepalive_size: usize,
    pub keepalive_idle_timeout: f64,
    /// Requests served on one upstream connection before it is closed.
    pub keepalive_requests: u64,
    /// Largest response head accepted from an upstream (larger: 502).
    pub max_response_header_size: usize,
    /// A PEM file of CA certificates trusted for TLS upstreams besides the system's roots.
    pub trusted_ca: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogSettings {
    pub enabled: bool,
    /// `stdout`, or a file path (appended to).
    pub path: String,
    /// Lines buffered between the workers and the log writer; beyond it lines are dropped and
    /// counted rather than slowing requests down.
    pub buffer: usize,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 9080))],
            workers: 0,
            max_connections_per_worker: 8192,
            client_header_timeout: 30.0,
            client_body_timeout: 60.0,
            client_send_timeout: 60.0,
            keepalive_timeout: 60.0,
            max_request_line: 8 * 1024,
            max_header_size: 32 * 1024,
            max_headers: 100,
            shutdown_grace: 10.0,
            handoff_socket: None,
            upstream: UpstreamDefaults::default(),
            https: HttpsSettings::default(),
            http2: Http2Settings::default(),
            proxy_protocol: ProxyProtocolSettings::default(),
            stream: StreamSettings::default(),
            control_nice: 10,
        }
    }
}

impl Default for HttpsSettings {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 9443))],
            fallback_sni: None,
            handshake_timeout: 10.0,
        }
    }
}

impl Default for UpstreamDefaults {
    fn default() -> Self {
        Self {
            connect_timeout: 60.0,
            send_timeout: 60.0,
            read_timeout: 60.0,
            keepalive_size: 320,
            keepalive_idle_timeout: 60.0,
            keepalive_requests: 1000,
            max_response_header_size: 64 * 1024,
            trusted_ca: None,
        }
    }
}

impl Default for AccessLogSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            path: "stdout".to_owned(),
            buffer: 65536,
        }
    }
}

impl ProxySettings {
    /// Every problem with these settings, with the field's path under `proxy`.
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let pp = &self.proxy_protocol;
        if [
            &self.listen,
            &self.https.listen,
            &pp.listen,
            &pp.https_listen,
        ]
        .iter()
        .all(|addrs| addrs.is_empty())
        {
            errors.push(
                "proxy.listen: needs at least one address (or proxy.https.listen, \
                 proxy.proxy_protocol.listen or .https_listen)"
                    .to_owned(),
            );
        }
        if let Err(e) = pp.trusted_peers() {
            errors.push(e);
        }
        let seconds = [
            ("proxy.client_header_timeout", self.client_header_timeout),
            ("proxy.client_body_timeout", self.client_body_timeout),
            ("proxy.client_send_timeout", self.client_send_timeout),
            ("proxy.keepalive_timeout", self.keepalive_timeout),
            ("proxy.stream.idle_timeout", self.stream.idle_timeout),
            (
                "proxy.stream.udp_idle_timeout",
                self.stream.udp_idle_timeout,
            ),
            (
                "proxy.https.handshake_timeout",
                self.https.handshake_timeout,
            ),
            (
                "proxy.upstream.connect_timeout",
                self.upstream.connect_timeout,
            ),
            ("proxy.upstream.send_timeout", self.upstream.send_timeout),
            ("proxy.upstream.read_timeout", self.upstream.read_timeout),
            (
                "proxy.upstream.keepalive_idle_timeout",
                self.upstream.keepalive_idle_timeout,
            ),
        ];
        for (field, value) in seconds {
            if !(value > 0.0 && value.is_finite()) {
                errors.push(format!("{field}: must be a number of seconds > 0"));
            } else if value > MAX_SECONDS {
                errors.push(too_long(field));
            }
        }
        if !(self.shutdown_grace >= 0.0 && self.shutdown_grace.is_finite()) {
            errors.push("proxy.shutdown_grace: must be a number of seconds >= 0".to_owned());
        } else if self.shutdown_grace > MAX_SECONDS {
            errors.push(too_long("proxy.shutdown_grace"));
        }
        if self.max_request_line < 64 {
            errors.push("proxy.max_request_line: must be at least 64".to_owned());
        }
        if self.max_header_size < self.max_request_line {
            errors.push("proxy.max_header_size: must be at least max_request_line".to_owned());
        }
        if !(1..=128).contains(&self.max_headers) {
            errors.push("proxy.max_headers: must be 1..128".to_owned());
        }
        if self.max_connections_per_worker == 0 {
            errors.push("proxy.max_connections_per_worker: must be at least 1".to_owned());
        }
        if self.upstream.keepalive_requests == 0 {
            errors.push("proxy.upstream.keepalive_requests: must be at least 1".to_owned());
        }
        if !(0..=19).contains(&self.control_nice) {
            errors.push("proxy.control_nice: must be 0..19".to_owned());
        }
        errors.extend(self.http2.validate());
        errors
    }

    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, usize::from)
        }
    }

    pub(crate) fn head_limits(&self) -> HeadLimits {
        HeadLimits {
            max_request_line: self.max_request_line,
            max_head: self.max_header_size,
            max_headers: self.max_headers,
        }
    }
}

fn too_long(field: &str) -> String {
    format!("{field}: must be at most {MAX_SECONDS} seconds (a year)")
}

/// Seconds from a validated configuration as a duration. Validation keeps them within
/// `0..=MAX_SECONDS`; anything else that got here is brought into that range (NaN: zero)
/// rather than panic in `Duration` or in the deadline arithmetic after it.
pub(crate) fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.clamp(0.0, MAX_SECONDS)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_out_of_range_never_panic() {
        for value in [
            f64::MAX,
            1e300,
            f64::INFINITY,
            f64::NAN,
            -1.0,
            f64::NEG_INFINITY,
        ] {
            let duration = secs(value);
            assert!(
                duration.as_secs_f64() <= MAX_SECONDS,
                "{value}: {duration:?}"
            );
        }
        assert_eq!(secs(1.5), Duration::from_millis(1500));
    }

    #[test]
    fn durations_beyond_a_year_are_refused_with_their_field() {
        let mut settings = ProxySettings {
            client_header_timeout: 1e300,
            shutdown_grace: f64::MAX,
            ..ProxySettings::default()
        };
        settings.upstream.read_timeout = 31_536_001.0;
        settings.http2.close_timeout = f64::NAN;
        assert_eq!(
            settings.validate(),
            [
                "proxy.client_header_timeout: must be at most 31536000 seconds (a year)",
                "proxy.upstream.read_timeout: must be at most 31536000 seconds (a year)",
                "proxy.shutdown_grace: must be at most 31536000 seconds (a year)",
                "proxy.http2.close_timeout: must be a number of seconds > 0 and at most 3600",
            ]
        );
    }
}
