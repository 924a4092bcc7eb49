//! How a request ended. Codecs say it where it happens; the connection loop, the access log
//! and the metrics (and, later, traces) read it, and nothing derives it again from a status code.

use std::net::SocketAddr;
use std::time::Duration;

use crate::error::GatewayError;

/// How one request ended.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outcome {
    /// The status the client got (499 when it went away first, as nginx logs it).
    pub status: u16,
    /// Response bytes sent to the client.
    pub bytes_sent: u64,
    /// The client's connection can carry another request (HTTP/1).
    pub keep_alive: bool,
    /// The last node tried, and how long its attempt took.
    pub upstream: Option<SocketAddr>,
    pub upstream_latency: Option<Duration>,
    pub end: End,
}

impl Outcome {
    /// The client got a whole response with `status`.
    pub fn complete(status: u16, bytes_sent: u64, keep_alive: bool) -> Self {
        Outcome::new(status, bytes_sent, keep_alive, End::Complete)
    }

    /// The client got the gateway's own answer to `error`.
    pub fn answered(error: GatewayError, bytes_sent: u64, keep_alive: bool) -> Self {
        Outcome::new(error.status(), bytes_sent, keep_alive, End::of(error))
    }

    /// The exchange broke off: the client got `status` and `bytes_sent` of its response, no
    /// more, and its connection ends.
    pub fn failed(status: u16, bytes_sent: u64, side: Side, cause: Cause) -> Self {
        Outcome::new(status, bytes_sent, false, End::Failed(side, cause))
    }

    fn new(status: u16, bytes_sent: u64, keep_alive: bool, end: End) -> Self {
        Outcome {
            status,
            bytes_sent,
            keep_alive,
            upstream: None,
            upstream_latency: None,
            end,
        }
    }
}

/// Whether a request ended as HTTP meant it to, or which side failed it and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// A whole response went to the client: the upstream's, a plugin's, or the gateway's
    /// own answer to a well-formed request (a 404 for no route, say).
    Complete,
    Failed(Side, Cause),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Client,
    Upstream,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// Refused as malformed or not allowed: a bad request, a bad response, a refused
    /// connection.
    Refused,
    /// The connection closed or was reset before the exchange was through.
    Reset,
    Timeout,
    /// Past a size limit (a head too large).
    Limit,
    /// No node could take the request.
    Unavailable,
}

impl End {
    /// How a request ends that the gateway answers with `error`.
    pub fn of(error: GatewayError) -> End {
        use Cause::*;
        use Side::*;
        match error {
            GatewayError::RouteNotFound => End::Complete,
            GatewayError::BadRequest
            | GatewayError::NotImplemented
            | GatewayError::HttpVersionNotSupported => End::Failed(Client, Refused),
            GatewayError::RequestTimeout => End::Failed(Client, Timeout),
            GatewayError::UriTooLong | GatewayError::HeadersTooLarge => End::Failed(Client, Limit),
            GatewayError::BadGateway => End::Failed(Upstream, Refused),
            GatewayError::NoUpstreamNode | GatewayError::MissingUpstream => {
                End::Failed(Upstream, Unavailable)
            }
            GatewayError::GatewayTimeout => End::Failed(Upstream, Timeout),
        }
    }

    /// The log's name for a failure, e.g. `upstream_timeout`; none for a complete exchange.
    pub fn failure(self) -> Option<&'static str> {
        use Cause::*;
        use Side::*;
        let End::Failed(side, cause) = self else {
            return None;
        };
        Some(match (side, cause) {
            (Client, Refused) => "client_refused",
            (Client, Reset) => "client_reset",
            (Client, Timeout) => "client_timeout",
            (Client, Limit) => "client_limit",
            (Client, Unavailable) => "client_unavailable",
            (Upstream, Refused) => "upstream_refused",
            (Upstream, Reset) => "upstream_reset",
            (Upstream, Timeout) => "upstream_timeout",
            (Upstream, Limit) => "upstream_limit",
            (Upstream, Unavailable) => "upstream_unavailable",
        })
    }
}
