//! One request over HTTP/1.1 or over HTTP/2 (h2c), answered as one response type, for tests
//! that hold both protocols to the same assertions: the request pipeline is shared, and these
//! tests are how that is shown.

use std::net::SocketAddr;

use super::client::{Conn, Response};
use super::http2::{connect, get_headers, request, rst_stream, send, RawH2, CANCEL};
use super::upstream::Upstream;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

pub const PROTOCOLS: [Protocol; 2] = [Protocol::Http1, Protocol::Http2];

/// Sends one request to `addr` for host `example.com` on a new connection and reads the whole
/// response. `headers` are sent as given, after the host.
pub async fn call(
    protocol: Protocol,
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    match protocol {
        Protocol::Http1 => {
            let mut raw = format!("{method} {target} HTTP/1.1\r\nHost: example.com\r\n");
            for (name, value) in headers {
                raw.push_str(&format!("{name}: {value}\r\n"));
            }
            if !body.is_empty() {
                raw.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
            raw.push_str("Connection: close\r\n\r\n");
            let mut raw = raw.into_bytes();
            raw.extend_from_slice(body);
            let mut conn = Conn::connect(addr);
            conn.send(&raw);
            conn.read_response_to(method).expect("a response")
        }
        Protocol::Http2 => {
            let mut h2 = connect(addr).await;
            let mut builder = request(method, target);
            for (name, value) in headers {
                builder = builder.header(*name, *value);
            }
            let reply = send(&mut h2.sender, builder.body(()).unwrap(), body).await;
            Response {
                status: reply.status,
                headers: reply
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                    .collect(),
                body: reply.body,
                interim: Vec::new(),
            }
        }
    }
}

/// Asserts a refusal by the gateway: `status`, the JSON `body`, and that `up` got no request
/// beyond the `before` it had.
pub fn assert_refused(
    res: &Response,
    status: u16,
    body: serde_json::Value,
    up: &Upstream,
    before: usize,
    what: &str,
) {
    assert_eq!(res.status, status, "{what}: {}", res.text());
    assert_eq!(
        res.header("content-type"),
        Some("application/json"),
        "{what}"
    );
    assert_eq!(res.json(), body, "{what}");
    assert_eq!(
        up.request_count(),
        before,
        "{what}: the upstream got the request"
    );
}

/// How a client leaves a request it sent before the answer.
#[derive(Debug, Clone, Copy)]
pub enum Leaving {
    /// Closes its HTTP/1.1 connection.
    Http1Close,
    /// Resets its HTTP/2 stream, keeping the connection.
    Http2Reset,
    /// Closes its HTTP/2 connection.
    Http2Close,
}

pub const LEAVINGS: [Leaving; 3] = [
    Leaving::Http1Close,
    Leaving::Http2Reset,
    Leaving::Http2Close,
];

/// A client that sent one GET and will leave it as [`Leaving`] says. After a reset, its
/// HTTP/2 connection stays open as long as this lives.
pub struct LeavingClient {
    leaving: Leaving,
    http1: Option<Conn>,
    http2: Option<RawH2>,
}

impl LeavingClient {
    /// Sends a GET of `target` to `addr` for host `example.com`, on a new connection.
    pub fn send(leaving: Leaving, addr: SocketAddr, target: &str) -> Self {
        let (mut http1, mut http2) = (None, None);
        match leaving {
            Leaving::Http1Close => {
                let mut conn = Conn::connect(addr);
                conn.send(format!("GET {target} HTTP/1.1\r\nHost: example.com\r\n\r\n").as_bytes());
                http1 = Some(conn);
            }
            Leaving::Http2Reset | Leaving::Http2Close => {
                let mut raw = RawH2::connect(addr);
                raw.write(&get_headers(1, target));
                http2 = Some(raw);
            }
        }
        LeavingClient {
            leaving,
            http1,
            http2,
        }
    }

    /// Leaves the request.
    pub fn leave(&mut self) {
        match self.leaving {
            Leaving::Http1Close => drop(self.http1.take()),
            Leaving::Http2Reset => self.http2.as_mut().unwrap().write(&rst_stream(1, CANCEL)),
            Leaving::Http2Close => drop(self.http2.take()),
        }
    }
}
