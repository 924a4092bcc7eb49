//! `proxy.proxy_protocol`: listeners whose connections start with a PROXY protocol header.

use std::net::SocketAddr;

use pylon_plugins::IpSet;
use serde::{Deserialize, Serialize};

/// Listeners behind an L4 load balancer or accelerator that says, in a PROXY protocol header
/// (v1 or v2) before the connection's first byte, whom each connection carries. The client it
/// names is the client: for routing (`remote_addrs`), `real-ip`, limits and logs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyProtocolSettings {
    /// HTTP (and h2c) addresses whose connections carry the header.
    pub listen: Vec<SocketAddr>,
    /// HTTPS addresses whose connections carry the header, before the TLS handshake.
    pub https_listen: Vec<SocketAddr>,
    /// Addresses and CIDRs allowed to send the header: a connection from any other peer is
    /// closed unread, so that nobody else can claim to be any client. Empty: every peer.
    pub trusted: Vec<String>,
}

impl ProxyProtocolSettings {
    /// The peers trusted to send the header; `None`: every peer.
    pub(crate) fn trusted_peers(&self) -> Result<Option<IpSet>, String> {
        if self.trusted.is_empty() {
            return Ok(None);
        }
        IpSet::parse("proxy.proxy_protocol.trusted", &self.trusted)
            .map(Some)
            .map_err(|e| e.to_string())
    }
}
