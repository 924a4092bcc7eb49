//! What the upstream is told about a request, whichever protocol the client and the upstream
//! speak: the `Host` per `pass_host`, which of the client's headers go on, and the forwarding
//! headers (`X-Forwarded-*`, `X-Real-IP`) the gateway sets in place of the client's own.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use pylon_model::PassHost;
use pylon_plugin::RequestEdits;

use crate::http1::{has_token, is_hop_by_hop};
use crate::snapshot::{NodeTarget, UpstreamTarget};
use crate::vars::RequestFields;

/// The `Host` (or `:authority`) the upstream gets, per `pass_host`.
pub(crate) fn upstream_host<'a>(
    client_host: Option<&'a [u8]>,
    upstream: &'a UpstreamTarget,
    node: &'a NodeTarget,
) -> &'a [u8] {
    match (upstream.pass_host, client_host) {
        (PassHost::Pass, Some(host)) => host,
        (PassHost::Rewrite, _) => upstream.upstream_host.as_deref().unwrap_or("").as_bytes(),
        _ => node.host_header.as_bytes(),
    }
}

/// Whether a client header goes on to the upstream. Not: hop-by-hop headers and those the
/// client's `Connection` names, `Host` (set per `pass_host`), the forwarding headers (the
/// gateway sets its own), and `Expect: 100-continue` (the gateway answers it itself).
pub(crate) fn forwards_header(name: &str, value: &[u8], connection: Option<&[u8]>) -> bool {
    !(is_hop_by_hop(name)
        || name.eq_ignore_ascii_case("host")
        || is_forwarding_header(name)
        || connection.is_some_and(|c| has_token(c, name))
        || name.eq_ignore_ascii_case("expect") && has_token(value, "100-continue"))
}

/// Whether a plugin may set a request header of this name. Not the headers that frame the
/// message or describe the hop (the codec writes those), nor `Host` (a plugin sets the host
/// through its own edit, which `pass_host` then yields to).
pub(crate) fn plugin_may_set(name: &str) -> bool {
    !(is_hop_by_hop(name)
        || name.eq_ignore_ascii_case("host")
        || name.eq_ignore_ascii_case("content-length"))
}

/// Where a request came from, as the forwarding headers tell it.
pub(crate) struct RequestContext<'a> {
    /// The host the client asked for, as it sent it.
    pub client_host: Option<&'a [u8]>,
    /// The client's address: the peer's, or the one `real-ip` found behind trusted proxies.
    pub client: IpAddr,
    pub local: SocketAddr,
    /// `http` or `https`: how the client reached the gateway.
    pub scheme: &'a str,
    /// What plugins changed in the request.
    pub edits: &'a RequestEdits,
}

/// Writes the forwarding headers as HTTP/1 header lines: `X-Forwarded-For` (every hop the
/// client's own headers list, then the client), `X-Real-IP`, `X-Forwarded-Proto`,
/// `X-Forwarded-Host` (when the client named a host) and `X-Forwarded-Port`.
pub(crate) fn write_forwarding_headers(
    out: &mut Vec<u8>,
    head: &impl RequestFields,
    context: &RequestContext<'_>,
) {
    let client_ip = context.client;
    out.extend_from_slice(b"X-Forwarded-For: ");
    // Every incoming X-Forwarded-For, in order: a list split over several header lines is
    // still one list (RFC 9110 §5.3), and keeping only one would lose hops.
    for (name, value) in head.headers() {
        let value = value.trim_ascii();
        if name.eq_ignore_ascii_case("x-forwarded-for") && !value.is_empty() {
            out.extend_from_slice(value);
            out.extend_from_slice(b", ");
        }
    }
    let ip_at = out.len();
    push_ip(out, client_ip);
    let ip = ip_at..out.len();
    out.extend_from_slice(b"\r\nX-Real-IP: ");
    out.extend_from_within(ip);
    out.extend_from_slice(b"\r\nX-Forwarded-Proto: ");
    out.extend_from_slice(context.scheme.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(host) = context.client_host {
        push_header(out, b"X-Forwarded-Host", host);
    }
    let port = context.local.port();
    push_header(
        out,
        b"X-Forwarded-Port",
        itoa::Buffer::new().format(port).as_bytes(),
    );
}

/// An address as text; an IPv4 one (the common case, on every request) without `fmt`.
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(itoa::Buffer::new().format(octet).as_bytes());
            }
        }
        // Writing into a Vec cannot fail.
        IpAddr::V6(v6) => drop(write!(out, "{v6}")),
    }
}

fn is_forwarding_header(name: &str) -> bool {
    [
        "x-forwarded-for",
        "x-real-ip",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

pub(crate) fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Adds an HTTP/1 header to an HTTP/2 header map; one HTTP/2 cannot carry (a name or value it
/// does not allow) is left out.
pub(crate) fn append_header(headers: &mut HeaderMap, name: &[u8], value: &[u8]) {
    if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
        headers.append(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_their_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "203.0.113.255",
            "2001:db8::7",
            "::ffff:1.2.3.4",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = Vec::new();
            push_ip(&mut out, ip);
            assert_eq!(out, ip.to_string().as_bytes());
        }
    }
}
