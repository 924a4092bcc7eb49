//! How a request ended, as the connection loop, the access log and (later) metrics and traces
//! read it.

use std::net::SocketAddr;
use std::time::Duration;

/// How a request ended, for the connection loop and the access log.
pub(crate) struct Outcome {
    pub keep_alive: bool,
    pub status: u16,
    pub bytes_sent: u64,
    pub upstream: Option<SocketAddr>,
    pub upstream_latency: Option<Duration>,
}
