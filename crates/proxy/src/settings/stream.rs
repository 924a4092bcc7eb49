//! `proxy.stream`: the listeners whose connections and datagrams the stream routes take.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamSettings {
    /// TCP listeners (APISIX's `stream_proxy.tcp`); none by default.
    pub tcp: Vec<StreamListen>,
    /// Seconds a connection may pass no byte either way before both sides are closed.
    pub idle_timeout: f64,
    /// Each side's end is passed on as a half-close, and a connection lasts until both sides
    /// end; `false`: the first side to end ends both (nginx's `proxy_half_close off`).
    pub half_close: bool,
    /// UDP listeners (APISIX's `stream_proxy.udp`); none by default.
    pub udp: Vec<UdpListen>,
    /// Seconds a UDP session may pass no datagram either way before it ends.
    pub udp_idle_timeout: f64,
}

/// One UDP listener of the L4 proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UdpListen {
    pub addr: SocketAddr,
}

/// One TCP listener of the L4 proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamListen {
    pub addr: SocketAddr,
    /// Terminate TLS with the `ssls` (the routes can then match the server name).
    #[serde(default)]
    pub tls: bool,
    /// Connections start with a PROXY protocol header, from the peers
    /// `proxy.proxy_protocol.trusted` allows.
    #[serde(default)]
    pub proxy_protocol: bool,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            tcp: Vec::new(),
            // nginx's `proxy_timeout`.
            idle_timeout: 600.0,
            // A request-then-answer protocol whose client ends its side after the request
            // still gets the answer.
            half_close: true,
            udp: Vec::new(),
            // A session has no close to end it: silence is its only end, so it comes sooner
            // than a connection's.
            udp_idle_timeout: 60.0,
        }
    }
}
