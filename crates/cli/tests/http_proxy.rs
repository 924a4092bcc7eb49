//! The HTTP/1.1 proxy as a client and an upstream see it: keep-alive, streaming bodies,
//! interim responses, trailers, hop-by-hop headers, forwarding headers, and what the client
//! gets when the upstream fails.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{mpsc, Arc, Condvar, Mutex};

use support::client::{get, Conn, Response};
use support::upstream::{respond, Received, Upstream};
use support::{closed_port, Pylon, WAIT};

/// Routes every path to `up`, with extra upstream fields (indented 6 spaces).
fn routes_to(up: &Upstream, upstream_extra: &str) -> String {
    routes_to_addr(up.addr, upstream_extra)
}

fn routes_to_addr(addr: SocketAddr, upstream_extra: &str) -> String {
    format!(
        "routes:\n  - id: r1\n    uri: /*\n    upstream:\n      nodes:\n        \"{addr}\": 1\n{upstream_extra}"
    )
}

/// An upstream that answers with the request's target and body, and headers saying how the
/// body came.
fn echo(name: &str) -> Upstream {
    Upstream::with_handler(
        name,
        Arc::new(|req: &Received, stream: &mut TcpStream| {
            let mut body = format!("{} {}|", req.method, req.target).into_bytes();
            body.extend_from_slice(&req.body);
            respond(
                stream,
                200,
                &[("X-Chunked", if req.chunked { "yes" } else { "no" })],
                &body,
            );
            true
        }),
    )
}

/// Asserts a gateway-made error: the status, a JSON `{"error_msg": ...}` body.
fn assert_gateway_error(res: &Response, status: u16) {
    assert_eq!(res.status, status, "{}", res.text());
    assert_eq!(res.header("content-type"), Some("application/json"));
    let json = res.json();
    let message = json["error_msg"].as_str().expect("error_msg is a string");
    assert!(message.starts_with(&status.to_string()), "{message}");
}

/// A one-shot signal between a test and an upstream thread; waits are bounded by [`WAIT`].
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    fn open(&self) {
        *self.0 .0.lock().unwrap() = true;
        self.0 .1.notify_all();
    }

    /// True once opened; false if [`WAIT`] passed first.
    fn wait(&self) -> bool {
        let (lock, cv) = &*self.0;
        let guard = lock.lock().unwrap();
        let (guard, _) = cv.wait_timeout_while(guard, WAIT, |open| !*open).unwrap();
        *guard
    }
}

fn chunked(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in parts {
        out.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// `len` bytes that are not all alike, so a misplaced range shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

// === keep-alive ===

#[test]
fn requests_on_one_client_connection_share_one_upstream_connection() {
    let up = echo("a");
    let pylon = Pylon::start(&routes_to(&up, ""), "");
    let mut conn = Conn::connect(pylon.addr);
    for i in 0..5 {
        let res =
            conn.request(format!("GET /k/{i} HTTP/1.1\r\nHost: example.com\r\n\r\n").as_bytes());
        assert_eq!(res.status, 200);
        assert_eq!(res.text(), format!("GET /k/{i}|"));
        assert_eq!(res.header("connection"), None, "keep-alive is the default");
    }
    assert_eq!(up.request_count(), 5);
    assert_eq!(up.connection_count(), 1);
    assert!(up.received().iter().all(|r| r.connection == 0));
}

// === bodies ===

#[test]
fn length_and_chunked_bodies_arrive_intact_in_both_directions() {
    // The upstream answers in the framing the request asks for, echoing the body.
    let up = Upstream::with_handler(
        "echo",
        Arc::new(|req: &Received, stream: &mut TcpStream| {
            if req.header("x-reply") == Some("chunked") {
                let parts: Vec<&[u8]> = req.body.chunks(100_000).collect();
                let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                out.extend(chunked(&parts));
                let _ = stream.write_all(&out);
            } else {
                respond(stream, 200, &[], &req.body);
            }
            true
        }),
    );
    let pylon = Pylon::start(&routes_to(&up, ""), "");
    let big = pattern(3 * 1024 * 1024 + 7);
    let mut conn = Conn::connect(pylon.addr);

    // Content-Length up, Content-Length down.
    let mut req = format!(
        "POST /len HTTP/1.1\r\nHost: example.com\r\nContent-Length: {}\r\n\r\n",
        big.len()
    )
    .into_bytes();
    req.extend_from_slice(&big);
    let res = conn.request(&req);
    assert_eq!(res.status, 200);
    assert_eq!(
        res.header("content-length"),
        Some(big.len().to_string().as_str())
    );
    assert!(res.body == big, "length body came back altered");

    // Chunked up, chunked down.
    let parts: Vec<&[u8]> = big.chunks(65_536 + 3).collect();
    let mut req = b"POST /chunked HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\nX-Reply: chunked\r\n\r\n".to_vec();
    req.extend(chunked(&parts));
    let res = conn.request(&req);
    assert_eq!(res.status, 200);
    assert_eq!(res.header("transfer-encoding"), Some("chunked"));
    assert_eq!(res.header("content-length"), None);
    assert!(res.body == big, "chunked body came back altered");

    let received = up.received();
    assert_eq!(received.len(), 2);
    assert!(!received[0].chunked);
    assert_eq!(
        received[0].header("content-length"),
        Some(big.len().to_string().as_str())
    );
    assert!(received[0].body == big);
    assert!(received[1].chunked);
    assert!(!received[1].has_header("content-length"));
    assert!(received[1].body == big);
    assert_eq!(up.connection_count(), 1);
}

#[test]
fn a_response_body_reaches_the_client_while_the_upstream_is_still_sending() {
    for framing in ["length", "chunked"] {
        let gate = Gate::default();
        let upstream_gate = gate.clone();
        let up = Upstream::with_handler(
            "slow",
            Arc::new(move |req: &Received, stream: &mut TcpStream| {
                let (first, rest): (&[u8], &[u8]) = if req.target == "/chunked" {
                    (
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n",
                        b"6\r\nsecond\r\n0\r\n\r\n",
                    )
                } else {
                    (
                        b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nfirst",
                        b"second",
                    )
                };
                let _ = stream.write_all(first);
                // The rest only once the client has seen the first part through the gateway;
                // a gateway that buffers the body never gets it.
                if !upstream_gate.wait() {
                    return false;
                }
                let _ = stream.write_all(rest);
                true
            }),
        );
        let pylon = Pylon::start(&routes_to(&up, ""), "");
        let mut conn = Conn::connect(pylon.addr);
        conn.send(format!("GET /{framing} HTTP/1.1\r\nHost: example.com\r\n\r\n").as_bytes());
        let seen = conn.read_until(b"first").unwrap();
        assert!(seen.starts_with(b"HTTP/1.1 200 "), "{framing}");
        gate.open();
        let rest: &[u8] = if framing == "chunked" {
            b"\r\n6\r\nsecond\r\n0\r\n\r\n"
        } else {
            b"second"
        };
        assert_eq!(conn.read_raw(rest.len()).unwrap(), rest, "{framing}");
        // Still a usable connection.
        let res = conn.request(b"GET /length HTTP/1.1\r\nHost: example.com\r\n\r\n");
        assert_eq!(res.text(), "firstsecond");
    }
}

#[test]
fn a_request_body_reaches_the_upstream_while_the_client_is_still_sending() {
    for framing in ["length", "chunked"] {
        // A raw upstream: the support one answers only after the whole request has arrived.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        std::thread::spawn(move || {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            stream.set_read_timeout(Some(WAIT)).unwrap();
            let mut seen = Vec::new();
            let read_until = |stream: &mut TcpStream, seen: &mut Vec<u8>, needle: &[u8]| {
                let mut chunk = [0u8; 4096];
                while !seen.windows(needle.len()).any(|w| w == needle) {
                    match stream.read(&mut chunk) {
                        Ok(n) if n > 0 => seen.extend_from_slice(&chunk[..n]),
                        _ => return false,
                    }
                }
                true
            };
            if !read_until(&mut stream, &mut seen, b"part-one") {
                return;
            }
            let _ = tx.send(seen.clone());
            let end: &[u8] = if framing == "chunked" {
                b"0\r\n\r\n"
            } else {
                b"part-two"
            };
            if !read_until(&mut stream, &mut seen, end) {
                return;
            }
            let _ = tx.send(seen);
            respond(&mut stream, 200, &[], b"got it");
        });
        let pylon = Pylon::start(&routes_to_addr(addr, ""), "");
        let mut conn = Conn::connect(pylon.addr);
        let (head, first, rest): (&str, &[u8], &[u8]) = if framing == "chunked" {
            (
                "Transfer-Encoding: chunked",
                b"8\r\npart-one\r\n",
                b"8\r\npart-two\r\n0\r\n\r\n",
            )
        } else {
            ("Content-Length: 16", b"part-one", b"part-two")
        };
        conn.send(format!("POST /up HTTP/1.1\r\nHost: example.com\r\n{head}\r\n\r\n").as_bytes());
        conn.send(first);
        let early = rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("{framing}: the first part did not reach the upstream"));
        let early = String::from_utf8_lossy(&early).into_owned();
        assert!(early.starts_with("POST /up HTTP/1.1\r\n"), "{early}");
        assert!(!early.contains("part-two"));
        conn.send(rest);
        let res = conn.read_response().unwrap();
        assert_eq!(res.status, 200, "{framing}");
        assert_eq!(res.text(), "got it");
        let all = String::from_utf8_lossy(&rx.recv_timeout(WAIT).unwrap()).into_owned();
        let (up_head, up_body) = all.split_once("\r\n\r\n").unwrap();
        assert!(
            up_head
                .to_ascii_lowercase()
                .contains(&head.to_ascii_lowercase()),
            "{up_head}"
        );
        let expected = [first, rest].concat();
        assert_eq!(up_body.as_bytes(), expected, "{framing}");
    }
}

// === HEAD, 100-continue, 1xx, trailers, HTTP/1.0 ===

#[test]
fn a_head_response_keeps_its_content_length_and_has_no_body() {
    let up = Upstream::with_handler(
        "head",
        Arc::new(|req: &Received, stream: &mut TcpStream| {
            if req.method == "HEAD" {
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: text/plain\r\n\r\n",
                );
            } else {
                respond(stream, 200, &[], b"full body");
            }
            true
        }),
    );
    let pylon = Pylon::start(&routes_to(&up, ""), "");
    let mut conn = Conn::connect(pylon.addr);
    let res = conn.request(b"HEAD /doc HTTP/1.1\r\nHost: example.com\r\n\r\n");
    assert_eq!(res.status, 200);
    assert_eq!(res.header("content-length"), Some("1234"));
    assert_eq!(res.header("content-type"), Some("text/plain"));
    // Had the gateway waited for or relayed a body, the next response would not parse or
    // would not come.
    let res = conn.request(b"GET /doc HTTP/1.1\r\nHost: example.com\r\n\r\n");
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "full body");
    let received = up.received();
    assert_eq!(received[0].method, "HEAD");
    assert_eq!(received[1].method, "GET");
    assert_eq!(up.connection_count(), 1);
}

#[test]
fn expect_100_continue_gets_100_then_the_final_response() {
    let up = echo("a");
    let pylon = Pylon::start(&routes_to(&up, ""), "");
    let mut conn = Conn::connect(pylon.addr);
    conn.send(
        b"POST /upload HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    );
    // A client that waits for the go-ahead before it sends the body.
    let interim = conn.read_until(b"\r\n\r\n").unwrap();
    assert!(
        interim.starts_with(b"HTTP/1.1 100 "),
        "{}",
        String::from_utf8_lossy(&interim)
    );
    conn.send(b"hello");
    let res = conn.read_response().unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "POST /upload|hello");
    let received = up.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].body, b"hello");
    // The connection carries on.
    let res = conn.request(b"GET /next HTTP/1.1\r\nHost: example.com\r\n\r\n");
    assert_eq!(res.text(), "GET /next|");
}

#[test]
fn interim_responses_are_forwarded_before_the_final_one() {
    let up = Upstream::with_handler(
        "hints",
        Arc::new(|_: &Received, stream: &mut TcpStream| {
            let _ = stream.write_all(
                b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            );
            true
        }),
    );
    let pylon = Pylon::start(&routes_to(&up, ""), "");
    let mut conn = Conn::connect(pylon.addr);
    conn.send(b"GET /page HTTP/1.1\r\nHost: example.com\r\n\r\n");
    let interim = conn.read_until(b"\r\n\r\n").unwrap();
    let interim = String::from_utf8_lossy(&interim).into_owned();
    assert!(interim.starts_with("HTTP/1.1 103 "), "{interim}");
    assert!(
        interim.contains("Link: </style.css>; rel=preload\r\n"),
        "{interim}"
    );
    let res = conn.read_response().unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "ok");
}

#[test]
fn chunked_trailers_reach_the_client_byte_for_byte() {
    const BODY: &[u8] =
        b"4;ext=1\r\nwiki\r\n5\r\npedia\r\n0\r\nX-Checksum: abc123\r\nX-Other: 1\r\n\r\n";
    let up = Upstream::with_handler(
        "trailers",
        Arc::new(|_: &Received, stream: &mut TcpStream| {
            let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum, X-Other\r\n\r\n".to_vec();
            out.extend_from_slice(BODY);
            let _ = stream.write_all(&out);
            true
        }),
    );
    let pylon = Pylon::start(&routes_to(&up, ""), "");
    let mut conn = Conn::connect(pylon.addr);
    conn.send(b"GET /t HTTP/1.1\r\nHost: example.com\r\nTE: trailers\r\n\r\n");
    let head = String::from_utf8(conn.read_until(b"\r\n\r\n").unwrap()).unwrap();
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(head.contains("Transfer-Encoding: chunked\r\n"), "{head}");
    assert!(head.contains("Trailer: X-Checksum, X-Other\r\n"), "{head}");
    assert_eq!(conn.read_raw(BODY.len()).unwrap(), BODY);
    let res = conn.request(b"GET /again HTTP/1.1\r\nHost: example.com\r\n\r\n");
    assert_eq!(res.text(), "wikipedia");
}

#[test]
fn an_http10_client_gets_a_dechunked_body_and_the_connection_closes() {
    let up = Upstream::with_handler(
        "chunky",
        Arc::new(|_: &Received, stream: &mut TcpStream| {
            let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            out.extend(chunked(&[b"hello, ", b"old ", b"client"]));
            let _ = stream.write_all(&out);
            true
        }),
    );
    let pylon = Pylon::start(&routes_to(&up, ""), "");
    let mut conn = Conn::connect(pylon.addr);
    // No Content-Length and no chunked: the client reads to the end of the connection.
    let res = conn.request(b"GET /old HTTP/1.0\r\nHost: example.com\r\n\r\n");
    assert_eq!(res.status, 200);
    assert_eq!(res.header("transfer-encoding"), None);
    assert_eq!(res.header("connection"), Some("close"));
    assert_eq!(res.text(), "hello, old client");
    assert!(conn.is_closed());
    let received = up.received();
    assert_eq!(
        received[0].version, 1,
        "the upstream is spoken to in HTTP/1.1"
    );
}

#[test]
fn interim_and_bodiless_responses_go_on_without_framing_fields() {
    let up = Upstream::with_handler(
        "bodiless",
        Arc::new(|req: &Received, stream: &mut TcpStream| {
            let _ = stream.write_all(if req.method == "HEAD" {
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5, 5\r\n\r\n"
            } else {
                // RFC 9112 §6.1, §6.2: no Transfer-Encoding nor Content-Length in a 1xx or a
                // 204; nor, as anywhere, the hop-by-hop fields.
                b"HTTP/1.1 100 Continue\r\nContent-Length: 0\r\nConnection: X-Hop\r\nX-Hop: 1\r\n\r\n\
                  HTTP/1.1 103 Early Hints\r\nTransfer-Encoding: chunked\r\nLink: </a.css>\r\n\r\n\
                  HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\nX-End: 1\r\n\r\n"
            });
            true
        }),
    );
    let pylon = Pylon::start(&routes_to(&up, ""), "");
    let mut conn = Conn::connect(pylon.addr);
    conn.send(b"DELETE /d HTTP/1.1\r\nHost: example.com\r\n\r\n");
    let mut heads = Vec::new();
    for _ in 0..3 {
        heads.push(String::from_utf8(conn.read_until(b"\r\n\r\n").unwrap()).unwrap());
    }
    assert_eq!(
        heads,
        [
            "HTTP/1.1 100 Continue\r\n\r\n",
            "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n",
            "HTTP/1.1 204 No Content\r\nX-End: 1\r\n\r\n",
        ]
    );
    // A HEAD response keeps the length a GET would have had, once; its body framing goes.
    conn.send(b"HEAD /h HTTP/1.1\r\nHost: example.com\r\n\r\n");
    let head = String::from_utf8(conn.read_until(b"\r\n\r\n").unwrap()).unwrap();
    assert_eq!(head, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
    let res = conn.request(b"DELETE /again HTTP/1.1\r\nHost: example.com\r\n\r\n");
    assert_eq!(res.status, 204);
    assert_eq!(up.connection_count(), 1);
}

#[test]
fn a_response_content_length_list_goes_on_as_one_value() {
    let up = Upstream::with_handler(
        "list",
        Arc::new(|_: &Received, stream: &mut TcpStream| {
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nX-A: 1\r\nContent-Length: 02\r\n\r\nok",
            );
            true
        }),
    );
    let pylon = Pylon::start(&routes_to(&up, ""), "");
    let mut conn = Conn::connect(pylon.addr);
    conn.send(b"GET /l HTTP/1.1\r\nHost: example.com\r\n\r\n");
    let head = String::from_utf8(conn.read_until(b"\r\n\r\n").unwrap()).unwrap();
    assert_eq!(
        head,
        "HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 2\r\n\r\n"
    );
    assert_eq!(conn.read_raw(2).unwrap(), b"ok");
    let res = conn.request(b"GET /l HTTP/1.1\r\nHost: example.com\r\n\r\n");
    assert_eq!(res.text(), "ok");
}

#[test]
fn transfer_codings_other_than_chunked_reach_http11_clients_and_no_http10_one() {
    const GZIP: &[u8] = b"\x1f\x8b\x08\x00not really gzip";
    let up = Upstream::with_handler(
        "codings",
        Arc::new(|req: &Received, stream: &mut TcpStream| {
            if req.target == "/gzip" {
                let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec();
                out.extend_from_slice(GZIP);
                let _ = stream.write_all(&out);
                return false;
            }
            let mut out =
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
                    .to_vec();
            out.extend(chunked(&[GZIP]));
            let _ = stream.write_all(&out);
            true
        }),
    );
    let pylon = Pylon::start(&routes_to(&up, ""), "");
    // Chunked not last: the body runs to the upstream's close (RFC 9112 §6.3), and so does the
    // client's copy, with the coding named so that the bytes are not taken for the content.
    let mut conn = Conn::connect(pylon.addr);
    conn.send(b"GET /gzip HTTP/1.1\r\nHost: example.com\r\n\r\n");
    let head = String::from_utf8(conn.read_until(b"\r\n\r\n").unwrap()).unwrap();
    assert_eq!(
        head,
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(conn.read_raw(GZIP.len()).unwrap(), GZIP);
    assert!(conn.is_closed());
    // Chunked last: forwarded as it came, codings and all.
    let mut conn = Conn::connect(pylon.addr);
    conn.send(b"GET /gzip-chunked HTTP/1.1\r\nHost: example.com\r\n\r\n");
    let head = String::from_utf8(conn.read_until(b"\r\n\r\n").unwrap()).unwrap();
    assert_eq!(
        head,
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    );
    let body = chunked(&[GZIP]);
    assert_eq!(conn.read_raw(body.len()).unwrap(), body);
    // HTTP/1.0 has no transfer codings (RFC 9112 §6.1): the gateway decodes chunked for such a
    // client, but not gzip.
    for target in ["/gzip", "/gzip-chunked"] {
        let res = support::client::raw(
            pylon.addr,
            format!("GET {target} HTTP/1.0\r\nHost: example.com\r\n\r\n").as_bytes(),
        );
        assert_gateway_error(&res, 502);
    }
}

#[test]
fn a_response_without_length_is_relayed_until_the_upstream_closes() {
    let up = Upstream::with_handler(
        "legacy",
        Arc::new(|_: &Received, stream: &mut TcpStream| {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil ");
            let _ = stream.write_all(b"the end");
            false
        }),
    );
    let pylon = Pylon::start(&routes_to(&up, ""), "");
    let mut conn = Conn::connect(pylon.addr);
    let res = conn.request(b"GET /legacy HTTP/1.1\r\nHost: example.com\r\n\r\n");
    assert_eq!(res.status, 200);
    assert_eq!(res.header("connection"), Some("close"));
    assert_eq!(res.header("content-length"), None);
    assert_eq!(res.header("transfer-encoding"), None);
    assert_eq!(res.text(), "until the end");
    assert!(conn.is_closed());
}

// === Connection: close ===

#[test]
fn connection_close_from_the_client_closes_after_the_response() {
    let up = echo("a");
    let pylon = Pylon::start(&routes_to(&up, ""), "");
    let mut conn = Conn::connect(pylon.addr);
    let res = conn.request(b"GET /bye HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n");
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "GET /bye|");
    assert_eq!(res.header("connection"), Some("close"));
    assert!(conn.is_closed());
    assert!(!up.received()[0].has_header("connection"));
}

#[test]
fn connection_close_from_the_upstream_keeps_the_client_connection() {
    let up = Upstream::with_handler(
        "closer",
        Arc::new(|req: &Received, stream: &mut TcpStream| {
            respond(
                stream,
                200,
                &[("Connection", "close")],
                req.target.as_bytes(),
            );
            false
        }),
    );
    let pylon = Pylon::start(&routes_to(&up, ""), "");
    let mut conn = Conn::connect(pylon.addr);
    for i in 0..3 {
        let res =
            conn.request(format!("GET /c/{i} HTTP/1.1\r\nHost: example.com\r\n\r\n").as_bytes());
        assert_eq!(res.status, 200);
        assert_eq!(res.text(), format!("/c/{i}"));
        assert_eq!(res.header("connection"), None);
    }
    assert_eq!(
        up.connection_count(),
        3,
        "a closed upstream connection is never reused"
    );
}

#[test]
fn an_upstream_that_closes_idle_connections_quietly_costs_the_client_nothing() {
    // Keep-alive without saying otherwise, then close: the gateway's pooled connection goes
    // stale between requests. Whether it notices before or after reusing it, the client must
    // not see an error.
    let up = Upstream::with_handler(
        "quitter",
        Arc::new(|req: &Received, stream: &mut TcpStream| {
            let mut body = req.target.clone().into_bytes();
            body.extend_from_slice(&req.body);
            respond(stream, 200, &[], &body);
            false
        }),
    );
    let pylon = Pylon::start(&routes_to(&up, ""), "");
    let mut conn = Conn::connect(pylon.addr);
    for i in 0..4 {
        let res = conn.request(
            format!("PUT /q/{i} HTTP/1.1\r\nHost: example.com\r\nContent-Length: 2\r\n\r\n#{i}")
                .as_bytes(),
        );
        assert_eq!(res.status, 200);
        assert_eq!(res.text(), format!("/q/{i}#{i}"));
    }
    assert_eq!(up.request_count(), 4);
}

#[test]
fn a_request_retried_on_another_node_carries_its_body_again() {
    // One node takes the request and closes without a word; the other answers. Whichever
    // the balancer tries first, the answer must be for this request, body and all. (PUT:
    // idempotent, so it may go again once the first node may have seen it.)
    let mute = Upstream::with_handler("mute", Arc::new(|_: &Received, _: &mut TcpStream| false));
    let good = echo("good");
    let routes = format!(
        "routes:\n  - id: r1\n    uri: /*\n    upstream:\n      nodes:\n        {}\n        {}\n      retries: 1\n",
        mute.node(),
        good.node()
    );
    let pylon = Pylon::start(&routes, "");
    let mut conn = Conn::connect(pylon.addr);
    // Pipelined, so that the bytes after each body are the next request.
    conn.send(
        b"PUT /r/0 HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nbody0\
          PUT /r/1 HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nbody1",
    );
    for i in 0..2 {
        let res = conn.read_response().unwrap();
        assert_eq!(res.status, 200);
        assert_eq!(res.text(), format!("PUT /r/{i}|body{i}"));
    }
    for i in 2..4 {
        let res = conn.request(
            format!("PUT /r/{i} HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nbody{i}")
                .as_bytes(),
        );
        assert_eq!(res.status, 200);
        assert_eq!(res.text(), format!("PUT /r/{i}|body{i}"));
    }
    assert!(mute.request_count() >= 1, "the mute node was never tried");
    let bodies: Vec<Vec<u8>> = mute
        .received()
        .into_iter()
        .chain(good.received())
        .map(|r| r.body)
        .collect();
    assert!(bodies.iter().all(|b| b.starts_with(b"body")), "{bodies:?}");
}

#[test]
fn an_upstream_connection_with_bytes_after_the_response_is_not_reused() {
    let up = Upstream::with_handler(
        "chatty",
        Arc::new(|req: &Received, stream: &mut TcpStream| {
            let mut out = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec();
            if req.target == "/chatty" {
                out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale");
            }
            let _ = stream.write_all(&out);
            true
        }),
    );
    let pylon = Pylon::start(&routes_to(&up, ""), "");
    let mut conn = Conn::connect(pylon.addr);
    let res = conn.request(b"GET /chatty HTTP/1.1\r\nHost: example.com\r\n\r\n");
    assert_eq!(res.text(), "ok");
    let res = conn.request(b"GET /next HTTP/1.1\r\nHost: example.com\r\n\r\n");
    assert_eq!(
        res.text(),
        "ok",
        "an unsolicited response was passed off as this one's"
    );
    assert_eq!(up.connection_count(), 2);
}

// === headers ===

#[test]
fn hop_by_hop_headers_are_dropped_both_ways() {
    let up = Upstream::with_handler(
        "hop",
        Arc::new(|_: &Received, stream: &mut TcpStream| {
            respond(
                stream,
                200,
                &[
                    ("Connection", "X-Resp-Hop"),
                    ("Keep-Alive", "timeout=5"),
                    ("Proxy-Connection", "keep-alive"),
                    ("Upgrade", "h2c"),
                    ("X-Resp-Hop", "1"),
                    ("X-Resp-End", "kept"),
                ],
                b"ok",
            );
            true
        }),
    );
    let pylon = Pylon::start(&routes_to(&up, ""), "");
    let mut conn = Conn::connect(pylon.addr);
    let res = conn.request(
        b"GET /h HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive, X-Req-Hop\r\nKeep-Alive: 300\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nUpgrade: websocket\r\nX-Req-Hop: 1\r\nX-Req-End: kept\r\n\r\n",
    );
    assert_eq!(res.status, 200);
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "x-resp-hop",
    ] {
        assert_eq!(res.header(name), None, "{name} reached the client");
    }
    assert_eq!(res.header("x-resp-end"), Some("kept"));
    let req = &up.received()[0];
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
        "x-req-hop",
    ] {
        assert!(!req.has_header(name), "{name} reached the upstream");
    }
    assert_eq!(req.header("x-req-end"), Some("kept"));
    // The client connection is still keep-alive: the upstream's Connection header was its own.
    let res = conn.request(b"GET /h2 HTTP/1.1\r\nHost: example.com\r\n\r\n");
    assert_eq!(res.status, 200);
}

#[test]
fn forwarding_headers_describe_the_client() {
    let up = echo("a");
    let pylon = Pylon::start(&routes_to(&up, ""), "");
    let mut conn = Conn::connect(pylon.addr);
    conn.request(
        b"GET /f HTTP/1.1\r\nHost: example.com\r\nX-Forwarded-For: 203.0.113.7\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Port: 1\r\nX-Forwarded-Host: evil.example\r\n\r\n",
    );
    conn.request(b"GET /f HTTP/1.1\r\nHost: example.com\r\n\r\n");
    // A list split over two headers is one list (RFC 9110 §5.3).
    conn.request(
        b"GET /f HTTP/1.1\r\nHost: example.com\r\nX-Forwarded-For: 203.0.113.7\r\nX-Forwarded-For: 198.51.100.9, 192.0.2.1\r\n\r\n",
    );
    let port = pylon.addr.port().to_string();
    let received = up.received();
    let count = |r: &Received, name: &str| {
        r.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    };
    let expected_for = [
        "203.0.113.7, 127.0.0.1",
        "127.0.0.1",
        "203.0.113.7, 198.51.100.9, 192.0.2.1, 127.0.0.1",
    ];
    for (req, xff) in received.iter().zip(expected_for) {
        assert_eq!(req.header("x-forwarded-for"), Some(xff));
        assert_eq!(req.header("x-real-ip"), Some("127.0.0.1"));
        assert_eq!(req.header("x-forwarded-proto"), Some("http"));
        assert_eq!(req.header("x-forwarded-host"), Some("example.com"));
        assert_eq!(req.header("x-forwarded-port"), Some(port.as_str()));
        for name in [
            "x-forwarded-for",
            "x-real-ip",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-forwarded-port",
            "host",
        ] {
            assert_eq!(count(req, name), 1, "{name} appears once");
        }
    }
}

#[test]
fn the_upstream_host_header_follows_pass_host() {
    let up = echo("a");
    let node = up.node();
    let routes = format!(
        "routes:\n\
         \x20 - id: pass\n    uri: /pass\n    upstream:\n      nodes:\n        {node}\n      pass_host: pass\n\
         \x20 - id: node\n    uri: /node\n    upstream:\n      nodes:\n        {node}\n      pass_host: node\n\
         \x20 - id: rewrite\n    uri: /rewrite\n    upstream:\n      nodes:\n        {node}\n      pass_host: rewrite\n      upstream_host: backend.internal\n"
    );
    let pylon = Pylon::start(&routes, "");
    for path in ["/pass", "/node", "/rewrite"] {
        let res = get(pylon.addr, "Client.Example:8080", path);
        assert_eq!(res.status, 200, "{path}");
    }
    let hosts: Vec<String> = up
        .received()
        .iter()
        .map(|r| {
            assert_eq!(
                r.headers
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case("host"))
                    .count(),
                1
            );
            r.header("host").unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        hosts,
        [
            "Client.Example:8080".to_owned(),
            up.addr.to_string(),
            "backend.internal".to_owned()
        ]
    );
}

#[test]
fn the_request_target_is_forwarded_exactly_as_received() {
    let up = echo("a");
    let pylon = Pylon::start(&routes_to(&up, ""), "");
    let targets = [
        "/a/../b%2F?x=%20&y",
        "//double",
        "/./dot/%7Euser/?q=a+b&&=&q=%zz",
        "/caf%C3%A9;param?#",
    ];
    let mut conn = Conn::connect(pylon.addr);
    for target in targets {
        let res =
            conn.request(format!("GET {target} HTTP/1.1\r\nHost: example.com\r\n\r\n").as_bytes());
        assert_eq!(res.status, 200, "{target}");
    }
    let seen: Vec<String> = up.received().into_iter().map(|r| r.target).collect();
    assert_eq!(seen, targets);
}

#[test]
fn an_absolute_form_target_is_routed_by_its_authority() {
    let up = echo("a");
    let routes = format!(
        "routes:\n  - id: api\n    uri: /v1/*\n    hosts: [api.example.com]\n    upstream:\n      nodes:\n        {}\n",
        up.node()
    );
    let pylon = Pylon::start(&routes, "");
    // RFC 9112 §3.2.2: the target's authority wins over a Host header.
    let res = support::client::raw(
        pylon.addr,
        b"GET http://API.example.com/v1/items?x=1 HTTP/1.1\r\nHost: other.example\r\n\r\n",
    );
    assert_eq!(res.status, 200);
    let seen = &up.received()[0];
    assert_eq!(seen.target, "http://API.example.com/v1/items?x=1");
    assert_eq!(seen.header("host"), Some("API.example.com"));
}

// === upstream failures ===

#[test]
fn an_upstream_that_sends_garbage_gets_a_502_and_its_connection_is_dropped() {
    const GARBAGE: [&[u8]; 11] = [
        b"this is not http\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
        // Framing the gateway cannot trust: the response could smuggle another.
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2x\r\n\r\nok",
        // Nobody asked to switch protocols.
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: evil\r\n\r\n",
        // Lengths that disagree (RFC 9112 §6.3).
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        // Transfer-Encoding from HTTP/1.0 (§6.1), chunked twice (§6.1) or with a parameter (§7.1).
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked;x=1\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        // A chunked body with a bare LF, found before any of it went to the client.
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\nok\r\n0\r\n\r\n",
        // A head past `max_response_header_size` (256 bytes here).
        b"HTTP/1.1 200 OK\r\nX-Huge: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    ];
    let up = Upstream::with_handler(
        "garbage",
        Arc::new(|req: &Received, stream: &mut TcpStream| {
            let i: usize = req.target[1..].parse().unwrap();
            let _ = stream.write_all(GARBAGE[i]);
            true // keeps the connection open: the gateway must not reuse it
        }),
    );
    let pylon = Pylon::start(
        &routes_to(&up, ""),
        "  upstream:\n    max_response_header_size: 256\n",
    );
    for i in 0..GARBAGE.len() {
        let res = get(pylon.addr, "example.com", &format!("/{i}"));
        assert_gateway_error(&res, 502);
    }
    assert_eq!(up.request_count(), GARBAGE.len());
    assert_eq!(up.connection_count(), GARBAGE.len());
}

#[test]
fn a_chunked_response_that_breaks_its_framing_midway_ends_the_client_connection() {
    let gate = Gate::default();
    let upstream_gate = gate.clone();
    let up = Upstream::with_handler(
        "bare-lf",
        Arc::new(move |req: &Received, stream: &mut TcpStream| {
            if req.target == "/again" {
                respond(stream, 200, &[], b"fine");
                return true;
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n");
            upstream_gate.wait();
            let _ = stream.write_all(b"3\nabc\r\n0\r\n\r\n");
            true
        }),
    );
    let pylon = Pylon::start(&routes_to(&up, ""), "");
    let mut conn = Conn::connect(pylon.addr);
    conn.send(b"GET /c HTTP/1.1\r\nHost: example.com\r\n\r\n");
    let head = String::from_utf8(conn.read_until(b"\r\n\r\n").unwrap()).unwrap();
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    conn.read_until(b"3\r\nabc\r\n").unwrap();
    gate.open();
    // Nothing of the broken chunk reaches the client, and its connection ends.
    assert!(conn.is_closed());
    let res = get(pylon.addr, "example.com", "/again");
    assert_eq!(res.text(), "fine");
    assert_eq!(up.connection_count(), 2, "the broken connection was reused");
}

#[test]
fn an_upstream_dying_mid_body_aborts_the_client_connection() {
    for framing in ["length", "chunked"] {
        let up = Upstream::with_handler(
            "dies",
            Arc::new(|req: &Received, stream: &mut TcpStream| {
                let _ = stream.write_all(if req.target == "/chunked" {
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n64\r\nonly ten b"
                } else {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b"
                });
                false
            }),
        );
        let pylon = Pylon::start(&routes_to(&up, ""), "");
        let mut conn = Conn::connect(pylon.addr);
        conn.send(format!("GET /{framing} HTTP/1.1\r\nHost: example.com\r\n\r\n").as_bytes());
        // The head and the ten bytes come through; then the connection ends, so the client
        // can tell the body is short. A kept-alive connection would leave it waiting forever.
        let head = String::from_utf8(conn.read_until(b"\r\n\r\n").unwrap()).unwrap();
        assert!(head.starts_with("HTTP/1.1 200 "), "{framing}: {head}");
        conn.read_until(b"only ten b").unwrap();
        assert!(conn.is_closed(), "{framing}");
        let log = pylon.wait_access_log(1);
        assert_eq!(log[0]["status"], 200, "{framing}");
    }
}

#[test]
fn an_upstream_closing_without_a_response_is_a_502() {
    let up = Upstream::with_handler("mute", Arc::new(|_: &Received, _: &mut TcpStream| false));
    let pylon = Pylon::start(&routes_to(&up, ""), "");
    let res = get(pylon.addr, "example.com", "/m");
    assert_gateway_error(&res, 502);
    assert_eq!(up.request_count(), 1);
}

#[test]
fn an_upstream_slower_than_the_read_timeout_is_a_504() {
    let gate = Gate::default();
    let upstream_gate = gate.clone();
    let up = Upstream::with_handler(
        "slow",
        Arc::new(move |_: &Received, stream: &mut TcpStream| {
            upstream_gate.wait();
            respond(stream, 200, &[], b"too late");
            false
        }),
    );
    let pylon = Pylon::start(
        &routes_to(&up, "      timeout: {connect: 1, send: 1, read: 0.3}\n"),
        "",
    );
    let res = get(pylon.addr, "example.com", "/slow");
    gate.open();
    assert_gateway_error(&res, 504);
    let log = pylon.wait_access_log(1);
    assert_eq!(log[0]["status"], 504);
    assert_eq!(log[0]["upstream_addr"], up.addr.to_string());
}

#[test]
fn a_refused_connection_is_a_502() {
    let closed = closed_port();
    let pylon = Pylon::start(&routes_to_addr(closed.addr, ""), "");
    let res = get(pylon.addr, "example.com", "/x");
    assert_gateway_error(&res, 502);
    let log = pylon.wait_access_log(1);
    assert_eq!(log[0]["status"], 502);
    assert_eq!(log[0]["route_id"], "r1");
}
