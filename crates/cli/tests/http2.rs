//! HTTP/2 from clients: h2c with prior knowledge (and `h2` over TLS) to HTTP/1.1 upstreams,
//! as a client and an upstream see it; flow control end to end; the gateway's errors; the
//! limits that stop one connection from costing too much; and HTTP/1.1 on the same listener.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use support::client::{get, Conn};
use support::http2::{
    connect, filler_field, frame, get_block, get_headers, read_body, read_reply, request,
    rst_stream, send, send_body, RawH2, CANCEL, CONTINUATION, DATA, END_STREAM, ENHANCE_YOUR_CALM,
    GOAWAY, HEADERS, REFUSED_STREAM, RST_STREAM,
};
use support::upstream::{respond, Gate, Received, Upstream};
use support::{closed_port, wait_until, wait_until_within, Pylon, WAIT};

fn routes_to_addr(addr: SocketAddr) -> String {
    format!(
        "routes:\n  - id: r1\n    uri: /*\n    upstream:\n      nodes:\n        \"{addr}\": 1\n"
    )
}

/// An upstream that answers with the request's method, target and body, and says how the body
/// came (`X-Chunked`, `X-Length`).
fn echo() -> Upstream {
    Upstream::with_handler(
        "echo",
        Arc::new(|req: &Received, stream: &mut TcpStream| {
            let mut body = format!("{} {}|", req.method, req.target).into_bytes();
            body.extend_from_slice(&req.body);
            let length = req.header("content-length").unwrap_or("none").to_owned();
            respond(
                stream,
                200,
                &[
                    ("X-Chunked", if req.chunked { "yes" } else { "no" }),
                    ("X-Length", &length),
                    ("Keep-Alive", "timeout=5"),
                    ("X-Upstream", "echo"),
                ],
                &body,
            );
            true
        }),
    )
}

/// Bytes that are not all alike, so a reordering or a dropped piece shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn an_h2c_request_reaches_an_http1_upstream_and_the_answer_comes_back() {
    let up = echo();
    let pylon = Pylon::start(&routes_to_addr(up.addr), "");
    let mut h2 = connect(pylon.addr).await;

    let req = request("GET", "/hello?x=1")
        .header("x-custom", "a")
        .header("x-forwarded-for", "10.0.0.1")
        .header("te", "trailers")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(())
        .unwrap();
    let reply = send(&mut h2.sender, req, b"").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "GET /hello?x=1|");
    assert_eq!(reply.header("x-upstream"), Some("echo"));
    assert_eq!(
        reply.header("keep-alive"),
        None,
        "hop-by-hop header dropped"
    );

    let seen = &up.received()[0];
    assert_eq!(seen.version, 1, "HTTP/1.1 to the upstream");
    assert_eq!(seen.header("host"), Some("example.com"));
    assert_eq!(seen.header("x-custom"), Some("a"));
    assert_eq!(seen.header("x-forwarded-for"), Some("10.0.0.1, 127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("example.com"));
    assert!(!seen.has_header("te"), "hop-by-hop header dropped");
    // HTTP/2 sends a cookie per field; HTTP/1 gets them on one line.
    assert_eq!(seen.header("cookie"), Some("a=1; b=2"));
    assert_eq!(
        seen.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
            .count(),
        1
    );
    assert!(
        !seen.has_header("content-length") && !seen.chunked,
        "a GET without a body"
    );

    // The access log tells HTTP/2 requests like any other.
    let log = pylon.wait_access_log(1);
    assert_eq!(log[0]["status"], 200);
    assert_eq!(log[0]["uri"], "/hello?x=1");
    assert_eq!(log[0]["host"], "example.com");
    assert_eq!(log[0]["route_id"], "r1");
}

#[tokio::test]
async fn request_bodies_go_up_with_their_length_or_chunked() {
    let up = echo();
    let pylon = Pylon::start(&routes_to_addr(up.addr), "");
    let mut h2 = connect(pylon.addr).await;

    // A small body, with or without a declared length: whole, under a Content-Length or
    // chunked (which one depends on whether it had arrived when the upstream was chosen).
    let req = request("POST", "/small")
        .header("content-length", "5")
        .body(())
        .unwrap();
    let reply = send(&mut h2.sender, req, b"hello").await;
    assert_eq!(reply.text(), "POST /small|hello");
    assert_eq!(reply.header("x-length"), Some("5"));
    assert_eq!(reply.header("x-chunked"), Some("no"));
    let reply = send(
        &mut h2.sender,
        request("POST", "/undeclared").body(()).unwrap(),
        b"hi",
    )
    .await;
    assert_eq!(reply.text(), "POST /undeclared|hi");

    // The client's own Content-Length goes on as it was.
    let body = pattern(300_000);
    let req = request("PUT", "/sized")
        .header("content-length", body.len())
        .body(())
        .unwrap();
    let reply = send(&mut h2.sender, req, &body).await;
    assert_eq!(reply.header("x-length"), Some("300000"));
    assert_eq!(&reply.body["PUT /sized|".len()..], &body[..]);

    // A body streamed in pieces, of unknown length: chunked, whole and in order.
    let ready = h2.sender.clone().ready().await.unwrap();
    let mut ready = ready;
    let (response, mut stream) = ready
        .send_request(request("POST", "/streamed").body(()).unwrap(), false)
        .unwrap();
    let body = pattern(1_000_000);
    for piece in body.chunks(100_000) {
        send_body(&mut stream, Bytes::copy_from_slice(piece), false).await;
    }
    stream.send_data(Bytes::new(), true).unwrap();
    let reply = read_reply(response).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-chunked"), Some("yes"));
    assert_eq!(&reply.body["POST /streamed|".len()..], &body[..]);
}

#[tokio::test]
async fn a_post_goes_to_the_next_node_when_the_first_refuses_the_connection() {
    let up = echo();
    let closed = closed_port();
    // Round robin over a dead node and a live one: half the requests meet the dead one first.
    let routes = format!(
        "routes:\n  - id: r1\n    uri: /*\n    upstream:\n      nodes:\n        \"{}\": 1\n        \"{}\": 1\n",
        closed.addr, up.addr
    );
    let pylon = Pylon::start(&routes, "");
    let mut h2 = connect(pylon.addr).await;
    for i in 0..4 {
        // Declared and undeclared lengths: nothing of either was sent before the refusal.
        let mut req = request("POST", &format!("/p{i}"));
        if i % 2 == 0 {
            req = req.header("content-length", "4");
        }
        let reply = send(&mut h2.sender, req.body(()).unwrap(), b"data").await;
        assert_eq!(
            (reply.status, reply.text()),
            (200, format!("POST /p{i}|data"))
        );
    }
    assert_eq!(up.request_count(), 4);
}

#[tokio::test]
async fn a_chunked_response_arrives_whole_with_its_trailers() {
    let up = Upstream::with_handler(
        "chunked",
        Arc::new(|_req: &Received, stream: &mut TcpStream| {
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc\r\n\r\n",
            );
            true
        }),
    );
    let pylon = Pylon::start(&routes_to_addr(up.addr), "");
    let mut h2 = connect(pylon.addr).await;
    let reply = send(&mut h2.sender, request("GET", "/t").body(()).unwrap(), b"").await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "hello world"));
    assert_eq!(reply.header("transfer-encoding"), None);
    let trailers = reply.trailers.expect("trailers");
    assert_eq!(trailers.get("x-checksum").unwrap(), "abc");
}

/// An upstream that answers `/big` with `len` bytes, counting how many it has written.
fn big_response(len: usize, written: Arc<AtomicUsize>) -> Upstream {
    Upstream::with_handler(
        "big",
        Arc::new(move |_req: &Received, stream: &mut TcpStream| {
            let body = pattern(len);
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n");
            if stream.write_all(head.as_bytes()).is_err() {
                return false;
            }
            for piece in body.chunks(16 * 1024) {
                if stream.write_all(piece).is_err() {
                    return false;
                }
                written.fetch_add(piece.len(), Ordering::SeqCst);
            }
            true
        }),
    )
}

/// Waits until `counter` has stopped moving (the same value over several polls), bounded.
fn settled(counter: &AtomicUsize) -> usize {
    let mut last = usize::MAX;
    let mut same = 0;
    for _ in 0..(WAIT.as_millis() / 50) {
        let now = counter.load(Ordering::SeqCst);
        if now == last {
            same += 1;
            if same == 10 {
                return now;
            }
        } else {
            same = 0;
            last = now;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the counter never settled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_stops_the_upstream_and_then_gets_every_byte() {
    const LEN: usize = 48 * 1024 * 1024;
    let written = Arc::new(AtomicUsize::new(0));
    let up = big_response(LEN, written.clone());
    let pylon = Pylon::start(&routes_to_addr(up.addr), "");
    let h2 = connect(pylon.addr).await;

    let mut ready = h2.sender.clone().ready().await.unwrap();
    let (response, _) = ready
        .send_request(request("GET", "/big").body(()).unwrap(), true)
        .unwrap();
    let response = tokio::time::timeout(WAIT, response).await.unwrap().unwrap();
    // The client gives no window back: the gateway must stop reading the upstream instead of
    // buffering the body. What the upstream got out is bounded by the windows and socket
    // buffers on the way, far below the body's size.
    let stalled = tokio::task::spawn_blocking({
        let written = written.clone();
        move || settled(&written)
    })
    .await
    .unwrap();
    assert!(
        stalled < LEN / 2,
        "the upstream wrote {stalled} of {LEN} bytes"
    );

    let (_, mut recv) = response.into_parts();
    let body = read_body(&mut recv).await;
    assert_eq!(body.len(), LEN);
    assert!(body == pattern(LEN), "the body arrived altered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stops_reading_stops_the_client_and_then_gets_every_byte() {
    const LEN: usize = 32 * 1024 * 1024;
    // An upstream that takes its time: it reads nothing until told to.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let gate = Gate::default();
    let upstream = std::thread::spawn({
        let gate = gate.clone();
        move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream.set_read_timeout(Some(WAIT)).unwrap();
            gate.wait();
            let mut received = Vec::new();
            let mut buf = vec![0; 64 * 1024];
            // Head and body: the body is the last LEN bytes once they are all in.
            loop {
                let n = stream.read(&mut buf).unwrap();
                assert!(n > 0, "the gateway closed mid-body");
                received.extend_from_slice(&buf[..n]);
                if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                    if received.len() >= end + 4 + LEN {
                        let body_ok = received[end + 4..] == pattern(LEN)[..];
                        let reply = if body_ok { "intact" } else { "altered" };
                        respond(&mut stream, 200, &[], reply.as_bytes());
                        return;
                    }
                }
            }
        }
    });
    let pylon = Pylon::start(&routes_to_addr(addr), "");
    let h2 = connect(pylon.addr).await;
    let mut ready = h2.sender.clone().ready().await.unwrap();
    let req = request("POST", "/upload")
        .header("content-length", LEN)
        .body(())
        .unwrap();
    let (response, mut stream) = ready.send_request(req, false).unwrap();

    let sent = Arc::new(AtomicUsize::new(0));
    let sender = tokio::spawn({
        let sent = sent.clone();
        async move {
            for piece in pattern(LEN).chunks(64 * 1024) {
                send_body(&mut stream, Bytes::copy_from_slice(piece), false).await;
                sent.fetch_add(piece.len(), Ordering::SeqCst);
            }
            stream.send_data(Bytes::new(), true).unwrap();
        }
    });
    let stalled = tokio::task::spawn_blocking({
        let sent = sent.clone();
        move || settled(&sent)
    })
    .await
    .unwrap();
    assert!(
        stalled < LEN / 2,
        "the client got {stalled} of {LEN} bytes out"
    );

    gate.open();
    sender.await.unwrap();
    let reply = read_reply(response).await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "intact"));
    upstream.join().unwrap();
}

#[tokio::test]
async fn many_streams_share_one_connection() {
    let up = echo();
    let pylon = Pylon::start(&routes_to_addr(up.addr), "");
    let h2 = connect(pylon.addr).await;
    let mut calls = Vec::new();
    for i in 0..100 {
        let mut sender = h2.sender.clone();
        calls.push(tokio::spawn(async move {
            let body = format!("body-{i}");
            let req = request("POST", &format!("/s/{i}")).body(()).unwrap();
            let reply = send(&mut sender, req, body.as_bytes()).await;
            (reply.status, reply.text(), i)
        }));
    }
    for call in calls {
        let (status, text, i) = call.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(text, format!("POST /s/{i}|body-{i}"));
    }
    assert_eq!(up.request_count(), 100);
}

#[tokio::test]
async fn gateway_errors_are_the_same_statuses_and_json() {
    let closed = closed_port();
    let routes = format!(
        "routes:\n  - id: down\n    uri: /down\n    upstream:\n      nodes:\n        \"{}\": 1\n",
        closed.addr
    );
    let pylon = Pylon::start(&routes, "");
    let mut h2 = connect(pylon.addr).await;

    let reply = send(
        &mut h2.sender,
        request("GET", "/nowhere").body(()).unwrap(),
        b"",
    )
    .await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.json()["error_msg"], "404 Route Not Found");

    let reply = send(
        &mut h2.sender,
        request("GET", "/down").body(()).unwrap(),
        b"",
    )
    .await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.json()["error_msg"], "502 Bad Gateway");

    // A header block over `max_header_list_size` (16 KiB by default).
    let req = request("GET", "/down")
        .header("x-big", "v".repeat(20_000))
        .body(())
        .unwrap();
    let reply = send(&mut h2.sender, req, b"").await;
    assert_eq!(reply.status, 431);

    // The connection survived all of that.
    let reply = send(
        &mut h2.sender,
        request("GET", "/nowhere").body(()).unwrap(),
        b"",
    )
    .await;
    assert_eq!(reply.status, 404);
}

#[tokio::test]
async fn an_upstream_response_whose_framing_is_faulty_is_a_502() {
    const FAULTY: [&[u8]; 4] = [
        // Transfer-Encoding from HTTP/1.0 (RFC 9112 §6.1), chunked twice (§6.1) or with a
        // parameter (§7.1), lengths that disagree (§6.3).
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked;x=1\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    ];
    let up = Upstream::with_handler(
        "faulty",
        Arc::new(|req: &Received, stream: &mut TcpStream| {
            let i: usize = req.target[1..].parse().unwrap();
            let _ = stream.write_all(FAULTY[i]);
            true // keeps the connection open: the gateway must not reuse it
        }),
    );
    let pylon = Pylon::start(&routes_to_addr(up.addr), "");
    let mut h2 = connect(pylon.addr).await;
    for i in 0..FAULTY.len() {
        let req = request("GET", &format!("/{i}")).body(()).unwrap();
        let reply = send(&mut h2.sender, req, b"").await;
        assert_eq!(reply.status, 502, "{i}: {}", reply.text());
        assert_eq!(reply.json()["error_msg"], "502 Bad Gateway");
    }
    assert_eq!(up.connection_count(), FAULTY.len());
}

#[test]
fn http1_and_h2c_share_the_listener() {
    let up = echo();
    let pylon = Pylon::start(&routes_to_addr(up.addr), "");
    let res = get(pylon.addr, "example.com", "/one");
    assert_eq!((res.status, res.text().as_str()), (200, "GET /one|"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut h2 = connect(pylon.addr).await;
        let reply = send(
            &mut h2.sender,
            request("GET", "/two").body(()).unwrap(),
            b"",
        )
        .await;
        assert_eq!((reply.status, reply.text().as_str()), (200, "GET /two|"));
    });
    // HTTP/1 requests that start like the preface are still HTTP/1.
    let res = support::client::raw(
        pylon.addr,
        b"PRI /three HTTP/1.1\r\nHost: example.com\r\n\r\n",
    );
    assert_eq!((res.status, res.text().as_str()), (200, "PRI /three|"));
}

#[tokio::test]
async fn h2_over_tls_is_chosen_by_alpn() {
    use support::tls::{client_config, ssl_yaml, TestCa};
    let ca = TestCa::new("test ca");
    let cert = ca.issue(&["example.com"]);
    let up = echo();
    let routes = routes_to_addr(up.addr) + "ssls:\n" + &ssl_yaml("1", &["example.com"], &cert, "");
    let pylon = Pylon::start(&routes, "");
    let tcp = tokio::net::TcpStream::connect(pylon.https_addr.unwrap())
        .await
        .unwrap();
    let connector =
        tokio_rustls::TlsConnector::from(client_config(ca.roots(), &["h2", "http/1.1"]));
    let name = rustls::pki_types::ServerName::try_from("example.com").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut h2 = support::http2::handshake(tls).await;
    let req = http::Request::get("https://example.com/secure")
        .body(())
        .unwrap();
    let reply = send(&mut h2.sender, req, b"").await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "GET /secure|"));
    assert_eq!(up.received()[0].header("x-forwarded-proto"), Some("https"));
}

/// Routes `/hold` to an upstream that holds each request until `gate` opens.
fn holding(gate: &Gate) -> Upstream {
    let gate = gate.clone();
    Upstream::with_handler(
        "holding",
        Arc::new(move |_req: &Received, stream: &mut TcpStream| {
            gate.wait();
            respond(stream, 200, &[], b"released");
            true
        }),
    )
}

#[test]
fn streams_beyond_max_concurrent_streams_are_refused() {
    let gate = Gate::default();
    let up = holding(&gate);
    let pylon = Pylon::start(
        &routes_to_addr(up.addr),
        "  http2:\n    max_concurrent_streams: 2\n",
    );
    let mut raw = RawH2::connect(pylon.addr);
    for id in [1, 3, 5] {
        raw.write(&get_headers(id, "/hold"));
    }
    // The third is refused at once, with the code that tells the client it may retry it.
    let refused = raw
        .until(|f| f.kind == RST_STREAM)
        .expect("a RST_STREAM before the connection ended");
    assert_eq!((refused.stream, refused.error_code()), (5, REFUSED_STREAM));
    // The two within the limit are served.
    wait_until(|| up.request_count() == 2, "two requests at the upstream");
    gate.open();
    let mut answered = Vec::new();
    while answered.len() < 2 {
        let frame = raw.until(|f| f.kind == HEADERS).expect("a response");
        answered.push(frame.stream);
    }
    answered.sort();
    assert_eq!(answered, [1, 3]);
}

#[test]
fn a_rapid_reset_burst_gets_goaway() {
    let gate = Gate::default();
    let up = holding(&gate);
    // Only `h2`'s own count of streams reset before they were accepted is in play here.
    let pylon = Pylon::start(
        &routes_to_addr(up.addr),
        "  http2:\n    max_client_resets: 1000000\n",
    );
    let mut raw = RawH2::connect(pylon.addr);
    let mut burst = Vec::new();
    for i in 0..500 {
        let id = 2 * i + 1;
        burst.extend(get_headers(id, "/hold"));
        burst.extend(rst_stream(id, CANCEL));
    }
    raw.write(&burst);
    let goaway = raw
        .until(|f| f.kind == GOAWAY)
        .expect("GOAWAY before the connection ended");
    assert_eq!(goaway.error_code(), ENHANCE_YOUR_CALM);
    assert!(raw.until(|_| false).is_none(), "the connection is closed");
    assert!(
        up.request_count() < 500,
        "the cancelled streams were not all proxied"
    );
    gate.open();
}

#[test]
fn a_continuation_flood_gets_goaway() {
    let up = echo();
    let pylon = Pylon::start(&routes_to_addr(up.addr), "");
    let mut raw = RawH2::connect(pylon.addr);
    // A header block that never ends: HEADERS without END_HEADERS, then CONTINUATION frames
    // far beyond what `max_header_list_size` could need.
    let mut flood = frame(HEADERS, 0x1, 1, &get_block("/"));
    for _ in 0..200 {
        flood.extend(frame(CONTINUATION, 0, 1, &filler_field()));
    }
    raw.write(&flood);
    let goaway = raw
        .until(|f| f.kind == GOAWAY)
        .expect("GOAWAY before the connection ended");
    assert_eq!(goaway.error_code(), ENHANCE_YOUR_CALM);
    assert!(raw.until(|_| false).is_none(), "the connection is closed");
    assert_eq!(up.request_count(), 0);
}

// === closing ===

/// Idle connections are closed after 1 s, and a client has 1 s to finish its part of the close.
const QUICK_CLOSE: &str = "  keepalive_timeout: 1\n  http2:\n    close_timeout: 1\n";
/// Far beyond `keepalive_timeout` and `close_timeout`, however slow the machine.
const CLOSED_WITHIN: Duration = Duration::from_secs(20);

#[tokio::test]
async fn an_idle_client_gets_goaway_and_a_clean_close() {
    let up = echo();
    // A close timeout far beyond the wait below: the connection must end by the GOAWAY
    // handshake (GOAWAY, PING, its acknowledgement, the final GOAWAY), not by being dropped.
    let pylon = Pylon::start(
        &routes_to_addr(up.addr),
        "  keepalive_timeout: 1\n  http2:\n    close_timeout: 600\n",
    );
    let mut h2 = connect(pylon.addr).await;
    let reply = send(&mut h2.sender, request("GET", "/").body(()).unwrap(), b"").await;
    assert_eq!(reply.status, 200);
    let ended = tokio::time::timeout(CLOSED_WITHIN, h2.driver)
        .await
        .expect("the idle connection is closed")
        .unwrap();
    assert!(ended.is_ok(), "closed without an error: {ended:?}");
    assert!(
        h2.sender.ready().await.is_err(),
        "the connection takes no new stream"
    );
}

#[test]
fn an_idle_client_that_never_answers_the_goaway_ping_is_closed_all_the_same() {
    let up = echo();
    let pylon = Pylon::start(&routes_to_addr(up.addr), QUICK_CLOSE);
    // A raw client answers no PING: the GOAWAY handshake never completes.
    let mut raw = RawH2::connect(pylon.addr);
    raw.until(|f| f.kind == GOAWAY)
        .expect("GOAWAY once the connection is idle");
    assert!(
        raw.closed_within(CLOSED_WITHIN),
        "the connection is held open"
    );
}

#[test]
fn a_client_that_stalls_half_way_through_a_frame_is_closed() {
    let up = echo();
    let pylon = Pylon::start(&routes_to_addr(up.addr), QUICK_CLOSE);
    let mut raw = RawH2::connect(pylon.addr);
    // A frame header announcing 16 KiB, and only the first 100 bytes of them.
    let whole = frame(HEADERS, 0x4 | 0x1, 1, &[0; 16 * 1024]);
    raw.write(&whole[..9 + 100]);
    assert!(
        raw.closed_within(CLOSED_WITHIN),
        "the connection is held open"
    );
    assert_eq!(up.request_count(), 0);
}

#[test]
fn a_client_that_stalls_in_the_middle_of_a_header_block_is_closed() {
    let up = echo();
    let pylon = Pylon::start(&routes_to_addr(up.addr), QUICK_CLOSE);
    let mut raw = RawH2::connect(pylon.addr);
    // HEADERS without END_HEADERS, and no CONTINUATION after it.
    raw.write(&frame(HEADERS, 0x1, 1, &get_block("/")));
    assert!(
        raw.closed_within(CLOSED_WITHIN),
        "the connection is held open"
    );
    assert_eq!(up.request_count(), 0);
}

#[test]
fn a_client_that_stops_reading_does_not_keep_its_connection_slot() {
    const LEN: usize = 32 * 1024 * 1024;
    // `/big`: far more than the socket buffers between the gateway and a client that reads
    // nothing can hold. Anything else: a small answer.
    let up = Upstream::with_handler(
        "big",
        Arc::new(|req: &Received, stream: &mut TcpStream| {
            if req.target != "/big" {
                respond(stream, 200, &[], b"small");
                return true;
            }
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {LEN}\r\n\r\n");
            stream.write_all(head.as_bytes()).is_ok()
                && pattern(LEN)
                    .chunks(16 * 1024)
                    .all(|piece| stream.write_all(piece).is_ok())
        }),
    );
    // One worker with one connection slot, held by the client below.
    let pylon = Pylon::start(
        &routes_to_addr(up.addr),
        &format!(
            "  workers: 1\n  max_connections_per_worker: 1\n  client_send_timeout: 1\n{QUICK_CLOSE}"
        ),
    );
    let mut raw = RawH2::connect(pylon.addr);
    raw.open_windows();
    raw.write(&get_headers(1, "/big"));
    // The client reads nothing from here on: the response stalls on the socket until the
    // stream gives up (`client_send_timeout`), and then even the GOAWAY of the idle connection
    // cannot be written.
    wait_until_within(
        CLOSED_WITHIN,
        || served_on_new_connection(pylon.addr),
        "the connection slot of a client that stopped reading to come back",
    );
    // Open, unread, until here.
    drop(raw);
}

#[test]
fn past_close_timeout_a_client_that_ignores_goaway_gets_no_new_stream_but_its_own_finish() {
    let gate = Gate::default();
    let up = holding(&gate);
    let pylon = Pylon::start(
        &routes_to_addr(up.addr),
        "  shutdown_grace: 30\n  http2:\n    close_timeout: 1\n",
    );
    let mut raw = RawH2::connect(pylon.addr);
    raw.write(&get_headers(1, "/hold"));
    wait_until(|| up.request_count() == 1, "the request at the upstream");

    pylon.terminate();
    raw.until(|f| f.kind == GOAWAY)
        .expect("GOAWAY once the gateway stops");
    // The client answers no PING and, past the close timeout, opens one more stream: refused
    // (it may be retried elsewhere), or such a client could keep the connection for ever.
    std::thread::sleep(Duration::from_secs(2));
    raw.write(&get_headers(3, "/hold"));
    let refused = raw
        .until(|f| f.kind == RST_STREAM)
        .expect("a RST_STREAM before the connection ended");
    assert_eq!((refused.stream, refused.error_code()), (3, REFUSED_STREAM));

    // The stream in flight is not cut short: its whole response arrives, then the connection
    // ends.
    gate.open();
    let mut body = Vec::new();
    let last = raw
        .until(|f| {
            if f.kind == DATA && f.stream == 1 {
                body.extend_from_slice(&f.payload);
            }
            f.stream == 1 && f.flags & END_STREAM != 0
        })
        .expect("the response to the stream in flight");
    assert_eq!(last.kind, DATA);
    assert_eq!(body, b"released");
    assert!(
        raw.closed_within(CLOSED_WITHIN),
        "the connection is held open"
    );
    assert_eq!(up.request_count(), 1);
}

#[test]
fn a_response_that_ends_past_close_timeout_is_not_cut_short() {
    const LEN: usize = 16 * 1024 * 1024;
    let gate = Gate::default();
    let written = Arc::new(AtomicUsize::new(0));
    let up = Upstream::with_handler(
        "held big",
        Arc::new({
            let (gate, written) = (gate.clone(), written.clone());
            move |_req: &Received, stream: &mut TcpStream| {
                gate.wait();
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {LEN}\r\n\r\n");
                stream.write_all(head.as_bytes()).is_ok()
                    && pattern(LEN).chunks(16 * 1024).all(|piece| {
                        let sent = stream.write_all(piece).is_ok();
                        written.fetch_add(piece.len(), Ordering::SeqCst);
                        sent
                    })
            }
        }),
    );
    // A send buffer that takes the whole body: the stream ends with most of it still in the
    // gateway, waiting for the client to read.
    let pylon = Pylon::start(
        &routes_to_addr(up.addr),
        "  shutdown_grace: 30\n  http2:\n    max_send_buffer_size: 33554432\n    close_timeout: 3\n",
    );
    let mut raw = RawH2::connect(pylon.addr);
    raw.open_windows();
    raw.write(&get_headers(1, "/big"));
    wait_until(|| up.request_count() == 1, "the request at the upstream");
    pylon.terminate();
    raw.until(|f| f.kind == GOAWAY)
        .expect("GOAWAY once the gateway stops");
    // Past the close timeout (the client answers no PING), the stream ends: far more than the
    // socket buffers hold at once, while the client reads nothing.
    std::thread::sleep(Duration::from_secs(4));
    gate.open();
    wait_until(
        || written.load(Ordering::SeqCst) == LEN,
        "the whole body out of the upstream",
    );
    // The client then reads at once: it gets the whole body, not what the socket held.
    let mut received = 0;
    raw.until(|f| {
        if f.kind == DATA && f.stream == 1 {
            received += f.payload.len();
        }
        f.stream == 1 && f.flags & END_STREAM != 0
    })
    .expect("the end of the response");
    assert_eq!(received, LEN);
    assert!(
        raw.closed_within(CLOSED_WITHIN),
        "the connection is held open"
    );
}

/// Whether a new HTTP/1.1 connection gets an answer (not closed at accept for want of a slot).
fn served_on_new_connection(addr: SocketAddr) -> bool {
    let Ok(mut conn) = Conn::try_connect(addr) else {
        return false;
    };
    conn.stream
        .write_all(b"GET /small HTTP/1.1\r\nHost: example.com\r\n\r\n")
        .is_ok()
        && conn.read_response().is_ok_and(|r| r.status == 200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_cancels_most_of_its_streams_gets_goaway() {
    let gate = Gate::default();
    let up = holding(&gate);
    let pylon = Pylon::start(
        &routes_to_addr(up.addr),
        "  http2:\n    max_client_resets: 3\n",
    );
    let h2 = connect(pylon.addr).await;
    // Each stream is cancelled once the gateway has started on it (the upstream has it).
    for i in 1..=4 {
        let Ok(mut ready) = h2.sender.clone().ready().await else {
            break;
        };
        let Ok((_response, mut stream)) =
            ready.send_request(request("GET", "/hold").body(()).unwrap(), true)
        else {
            break;
        };
        let upstream = &up;
        tokio::task::block_in_place(|| {
            wait_until(
                || upstream.request_count() >= i,
                "the request at the upstream",
            )
        });
        stream.send_reset(h2::Reason::CANCEL);
    }
    let ended = tokio::time::timeout(WAIT, h2.driver)
        .await
        .expect("the connection ends")
        .unwrap();
    let error = ended.expect_err("ended by GOAWAY");
    assert!(error.is_go_away(), "{error:?}");
    assert_eq!(error.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM));
    gate.open();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_shutdown_a_stream_in_flight_finishes_and_new_ones_are_turned_away() {
    let gate = Gate::default();
    let up = holding(&gate);
    let mut pylon = Pylon::start(&routes_to_addr(up.addr), "  shutdown_grace: 5\n");
    let h2 = connect(pylon.addr).await;
    let mut ready = h2.sender.clone().ready().await.unwrap();
    let (response, _) = ready
        .send_request(request("GET", "/hold").body(()).unwrap(), true)
        .unwrap();
    let upstream = &up;
    tokio::task::block_in_place(|| {
        wait_until(
            || upstream.request_count() == 1,
            "the request at the upstream",
        )
    });

    pylon.terminate();
    // The GOAWAY arrives: the connection takes no new stream.
    let mut refused = false;
    for _ in 0..(WAIT.as_millis() / 20) {
        if h2.sender.clone().ready().await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the connection still takes new streams");

    gate.open();
    let reply = read_reply(response).await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "released"));
    let (code, _) = tokio::task::block_in_place(|| pylon.wait_exit());
    assert_eq!(code, Some(0));
}
