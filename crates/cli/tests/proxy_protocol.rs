//! The PROXY protocol on the HTTP listeners: the client a trusted load balancer names is the
//! client for routing, the upstream's forwarding headers and the access log, over HTTP/1 and
//! HTTP/2, plain and TLS, v1 and v2; anything else is closed unanswered.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use support::protocols::{Protocol, PROTOCOLS};
use support::proxy_header::{v1, v2, v2_local};
use support::tls::{client_config, ssl_yaml, TestCa};
use support::upstream::Upstream;
use support::{Pylon, WAIT};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const CLIENT: &str = "203.0.113.7:40123";
const GATEWAY: &str = "192.0.2.1:443";

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Listener {
    addr: SocketAddr,
    /// For a TLS listener: the client's TLS settings.
    tls: Option<Arc<TestCa>>,
}

/// A connection to `listener` that starts with `header`, then (for TLS) the handshake, offering
/// only the ALPN protocol of `protocol`.
async fn open(listener: &Listener, header: &[u8], protocol: Protocol) -> Box<dyn Io> {
    let mut tcp = TcpStream::connect(listener.addr).await.unwrap();
    tcp.write_all(header).await.unwrap();
    let Some(ca) = &listener.tls else {
        return Box::new(tcp);
    };
    let alpn = match protocol {
        Protocol::Http1 => "http/1.1",
        Protocol::Http2 => "h2",
    };
    let connector = tokio_rustls::TlsConnector::from(client_config(ca.roots(), &[alpn]));
    let name = rustls::pki_types::ServerName::try_from("example.com").unwrap();
    Box::new(connector.connect(name, tcp).await.unwrap())
}

/// `GET path` over `io` in `protocol`: the status and body.
async fn get(protocol: Protocol, mut io: Box<dyn Io>, path: &str) -> (u16, String) {
    match protocol {
        Protocol::Http1 => {
            let request =
                format!("GET {path} HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n");
            io.write_all(request.as_bytes()).await.unwrap();
            tokio::time::timeout(WAIT, read_response(&mut io))
                .await
                .expect("the response in time")
        }
        Protocol::Http2 => {
            let mut h2 = support::http2::handshake(io).await;
            let request = support::http2::request("GET", path).body(()).unwrap();
            let reply = support::http2::send(&mut h2.sender, request, b"").await;
            (reply.status, reply.text())
        }
    }
}

/// An HTTP/1.1 response with a `Content-Length`: its status and body.
async fn read_response(io: &mut Box<dyn Io>) -> (u16, String) {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = io.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "closed mid-response: {}",
            String::from_utf8_lossy(&raw)
        );
        raw.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head) = response.parse(&raw).unwrap() {
            let length: usize = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                .expect("a Content-Length");
            if raw.len() >= head + length {
                let body = String::from_utf8_lossy(&raw[head..head + length]).into_owned();
                return (response.code.unwrap(), body);
            }
        }
    }
}

/// Whether the gateway closes `io` without a byte of answer.
async fn closed_unanswered(mut io: TcpStream) -> bool {
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(WAIT, io.read(&mut buf)).await;
    matches!(read, Ok(Ok(0)) | Ok(Err(_)))
}

fn routes(up: &Upstream, ssls: &str) -> String {
    let upstream = format!("    upstream:\n      nodes:\n        \"{}\": 1\n", up.addr);
    format!(
        "routes:\n  - id: who\n    uri: /who\n{upstream}  - id: clients\n    uri: /clients\n    remote_addrs: [\"203.0.113.0/24\"]\n{upstream}ssls:\n{ssls}"
    )
}

fn gateway(up: &Upstream, ca: &TestCa, trusted: &str) -> Pylon {
    let ssls = ssl_yaml("1", &["example.com"], &ca.issue(&["example.com"]), "");
    Pylon::start(
        &routes(up, &ssls),
        &format!(
            "  proxy_protocol:\n    listen: [\"127.0.0.1:0\"]\n    https_listen: [\"127.0.0.1:0\"]\n    trusted: {trusted}\n"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_a_proxy_header_names_is_the_client() {
    let ca = Arc::new(TestCa::new("test ca"));
    let up = Upstream::start("backend");
    let pylon = gateway(&up, &ca, "[\"127.0.0.1/32\", \"::1\"]");
    let listeners = [
        Listener {
            addr: pylon.proxied_addrs[0],
            tls: None,
        },
        Listener {
            addr: pylon.proxied_https_addrs[0],
            tls: Some(ca.clone()),
        },
    ];
    let headers = [("v1", v1(CLIENT, GATEWAY)), ("v2", v2(CLIENT, GATEWAY))];
    let mut served = 0;
    for listener in &listeners {
        for (version, header) in &headers {
            for protocol in PROTOCOLS {
                let what = format!("{protocol:?}, {version}, tls: {}", listener.tls.is_some());
                let (status, body) =
                    get(protocol, open(listener, header, protocol).await, "/who").await;
                assert_eq!((status, body.as_str()), (200, "backend"), "{what}");
                served += 1;
                let seen = up.last();
                assert_eq!(seen.header("x-real-ip"), Some("203.0.113.7"), "{what}");
                assert_eq!(
                    seen.header("x-forwarded-for"),
                    Some("203.0.113.7"),
                    "{what}"
                );

                // Routes match on the named client: `remote_addrs` takes it.
                let (status, _) =
                    get(protocol, open(listener, header, protocol).await, "/clients").await;
                assert_eq!(status, 200, "{what}");
                served += 1;
                let elsewhere = v2("198.51.100.9:5000", GATEWAY);
                let (status, _) = get(
                    protocol,
                    open(listener, &elsewhere, protocol).await,
                    "/clients",
                )
                .await;
                assert_eq!(status, 404, "{what}");

                // A LOCAL header speaks for the load balancer itself: the peer is the client.
                let (status, _) = get(
                    protocol,
                    open(listener, &v2_local(), protocol).await,
                    "/who",
                )
                .await;
                assert_eq!(status, 200, "{what}");
                served += 1;
                assert_eq!(up.last().header("x-real-ip"), Some("127.0.0.1"), "{what}");
            }
        }
    }

    // The access log names the client too.
    let lines = pylon.wait_access_log(served + 8);
    let from_client = lines
        .iter()
        .filter(|line| line["client_ip"] == "203.0.113.7")
        .count();
    assert_eq!(from_client, 16, "{lines:?}");

    // A header that arrives a byte at a time is read whole, and not a byte of the request
    // after it is lost.
    let mut tcp = TcpStream::connect(listeners[0].addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    for byte in v2(CLIENT, GATEWAY) {
        tcp.write_all(&[byte]).await.unwrap();
        tcp.flush().await.unwrap();
    }
    let (status, _) = get(Protocol::Http1, Box::new(tcp), "/who").await;
    assert_eq!(status, 200);
    assert_eq!(up.last().header("x-real-ip"), Some("203.0.113.7"));

    // The listeners without the protocol are as they were: no header expected, none read.
    for protocol in PROTOCOLS {
        let res = support::protocols::call(protocol, pylon.addr, "GET", "/who", &[], b"").await;
        assert_eq!(res.status, 200, "{protocol:?}");
        assert_eq!(
            up.last().header("x-real-ip"),
            Some("127.0.0.1"),
            "{protocol:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_a_good_header_or_from_an_untrusted_peer_is_closed_unanswered() {
    let ca = TestCa::new("test ca");
    let up = Upstream::start("backend");
    let pylon = gateway(&up, &ca, "[\"127.0.0.1\"]\n  client_header_timeout: 1");
    let addr = pylon.proxied_addrs[0];
    let bad_headers: [&[u8]; 5] = [
        b"GET /who HTTP/1.1\r\nHost: example.com\r\n\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 040123 443\r\n",
        b"PROXY TCP4 not-an-address 192.0.2.1 40123 443\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x31\x11\0\x0c",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 40123 443 and some more text to run the line past its 107 bytes without an end\r\n",
    ];
    for header in bad_headers {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(header).await.unwrap();
        assert!(
            closed_unanswered(tcp).await,
            "{}",
            String::from_utf8_lossy(header)
        );
    }
    // A header that never ends is given up on after the client header timeout (the
    // connection is closed, not held).
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"PROXY TCP4 203.0.113.7").await.unwrap();
    assert!(closed_unanswered(tcp).await);
    assert!(up.received().is_empty(), "nothing reached the upstream");
    drop(pylon);

    // From a peer the trusted list leaves out, even a good header is not read.
    let pylon = gateway(&up, &ca, "[\"10.0.0.0/8\"]");
    let mut tcp = TcpStream::connect(pylon.proxied_addrs[0]).await.unwrap();
    let mut request = v1(CLIENT, GATEWAY);
    request.extend_from_slice(b"GET /who HTTP/1.1\r\nHost: example.com\r\n\r\n");
    // The gateway may close before it reads a byte: a failed write is a closed connection too.
    let _ = tcp.write_all(&request).await;
    assert!(closed_unanswered(tcp).await);
    assert!(up.received().is_empty(), "nothing reached the upstream");
    // The other listeners serve as ever.
    let res = support::client::get(pylon.addr, "example.com", "/who");
    assert_eq!(res.status, 200);
}

#[test]
fn a_restart_hands_the_proxy_protocol_listeners_over() {
    let ca = TestCa::new("test ca");
    let up = Upstream::start("backend");
    let mut pylon = gateway(&up, &ca, "[]");
    let (plain, tls) = (pylon.proxied_addrs[0], pylon.proxied_https_addrs[0]);
    let ssls = ssl_yaml("1", &["example.com"], &ca.issue(&["example.com"]), "");
    let next = pylon.successor(
        &routes(&up, &ssls),
        &format!("  proxy_protocol:\n    listen: [\"{plain}\"]\n    https_listen: [\"{tls}\"]\n"),
    );
    assert!(
        next.startup.iter().any(|line| line.contains("took over")),
        "{:?}",
        next.startup
    );
    assert_eq!(
        (next.proxied_addrs[0], next.proxied_https_addrs[0]),
        (plain, tls)
    );
    // The old one drains and exits: whatever answers now is the successor, on the very
    // sockets (nothing else could have bound them).
    let (code, _) = pylon.wait_exit();
    assert_eq!(code, Some(0));
    let mut conn = support::client::Conn::connect(plain);
    let mut request = v1(CLIENT, GATEWAY);
    request.extend_from_slice(b"GET /who HTTP/1.1\r\nHost: example.com\r\n\r\n");
    conn.send(&request);
    assert_eq!(conn.read_response().unwrap().status, 200);
    assert_eq!(up.last().header("x-real-ip"), Some("203.0.113.7"));
}
