//! What clients that break the protocol get: the right 4xx, a closed connection where what
//! follows cannot be trusted, nothing reaching the upstream, and a line in the access log.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;

use support::client::{Conn, Response};
use support::upstream::{respond, Received, Upstream};
use support::Pylon;

/// Small limits, so that breaking them takes a few kilobytes.
const LIMITS: &str = "  max_request_line: 1024\n  max_header_size: 4096\n  max_headers: 20\n";

/// One route, `r1`, for `/api/*`; nothing else matches.
fn routes(up: &Upstream) -> String {
    format!(
        "routes:\n  - id: r1\n    uri: /api/*\n    upstream:\n      nodes:\n        {}\n",
        up.node()
    )
}

/// An upstream that answers with the request's target and body.
fn echo() -> Upstream {
    Upstream::with_handler(
        "echo",
        Arc::new(|req: &Received, stream: &mut TcpStream| {
            let mut body = format!("{} {}|", req.method, req.target).into_bytes();
            body.extend_from_slice(&req.body);
            respond(stream, 200, &[], &body);
            true
        }),
    )
}

fn start(up: &Upstream, proxy_extra: &str) -> Pylon {
    Pylon::start(&routes(up), &format!("{LIMITS}{proxy_extra}"))
}

/// Sends `raw` on a new connection and expects a gateway error with `status` after which the
/// gateway closes the connection.
fn rejected(pylon: &Pylon, raw: &[u8], status: u16) -> Response {
    let mut conn = Conn::connect(pylon.addr);
    conn.send(raw);
    let res = conn
        .read_response()
        .unwrap_or_else(|e| panic!("no response to {:?}: {e}", String::from_utf8_lossy(raw)));
    assert_eq!(res.status, status, "{:?}", String::from_utf8_lossy(raw));
    assert_eq!(res.header("content-type"), Some("application/json"));
    let message = res.json()["error_msg"].as_str().unwrap().to_owned();
    assert!(message.starts_with(&status.to_string()), "{message}");
    assert_eq!(res.header("connection"), Some("close"));
    assert!(conn.is_closed(), "the connection stays open after {status}");
    res
}

#[test]
fn a_request_line_over_the_limit_is_414() {
    let up = echo();
    let pylon = start(&up, "");
    let long = format!(
        "GET /api/{} HTTP/1.1\r\nHost: example.com\r\n\r\n",
        "a".repeat(2000)
    );
    rejected(&pylon, long.as_bytes(), 414);
    // Still too long when the line has not ended yet.
    rejected(
        &pylon,
        format!("GET /api/{}", "a".repeat(2000)).as_bytes(),
        414,
    );
    // Just under the limit is fine.
    let fits = format!(
        "GET /api/{} HTTP/1.1\r\nHost: example.com\r\n\r\n",
        "a".repeat(990)
    );
    let res = Conn::connect(pylon.addr).request(fits.as_bytes());
    assert_eq!(res.status, 200);
    assert_eq!(up.request_count(), 1);
}

#[test]
fn headers_over_the_size_limit_are_431() {
    let up = echo();
    let pylon = start(&up, "");
    let big = format!(
        "GET /api/x HTTP/1.1\r\nHost: example.com\r\nX-Big: {}\r\n\r\n",
        "v".repeat(5000)
    );
    rejected(&pylon, big.as_bytes(), 431);
    // The head is refused before it ends, too.
    let unfinished = format!(
        "GET /api/x HTTP/1.1\r\nHost: example.com\r\nX-Big: {}",
        "v".repeat(5000)
    );
    rejected(&pylon, unfinished.as_bytes(), 431);
    assert_eq!(up.request_count(), 0);
}

#[test]
fn too_many_headers_is_431() {
    let up = echo();
    let pylon = start(&up, "");
    let mut head = "GET /api/x HTTP/1.1\r\nHost: example.com\r\n".to_owned();
    for i in 0..30 {
        head.push_str(&format!("X-H{i}: {i}\r\n"));
    }
    head.push_str("\r\n");
    rejected(&pylon, head.as_bytes(), 431);
    assert_eq!(up.request_count(), 0);
}

#[test]
fn bad_syntax_is_400() {
    let up = echo();
    let pylon = start(&up, "");
    let bad: [&[u8]; 9] = [
        b"GET /api/x HTTP/1.1\r\nHost: example.com\r\nBad Header: 1\r\n\r\n",
        // Whitespace before the colon (RFC 9112 §5.1), line folding, a bare CR.
        b"GET /api/x HTTP/1.1\r\nHost : example.com\r\n\r\n",
        b"GET /api/x HTTP/1.1\r\nHost: example.com\r\nX-A: 1\r\n folded\r\n\r\n",
        b"GET /api/x HTTP/1.1\r\nHost: example.com\r\nX-A: 1\rX-B: 2\r\n\r\n",
        b"GET /api/x HTTP/1.1\r\nHost: example.com\r\nNo-Colon\r\n\r\n",
        b"GET /api/x HTTP/9.9\r\nHost: example.com\r\n\r\n",
        b"GET /api/x\r\nHost: example.com\r\n\r\n",
        b"G\x01T /api/x HTTP/1.1\r\nHost: example.com\r\n\r\n",
        b"GET /api/x HTTP/1.1\r\nHost: bad host\r\n\r\n",
    ];
    for raw in bad {
        rejected(&pylon, raw, 400);
    }
    assert_eq!(up.request_count(), 0);
}

#[test]
fn content_length_with_transfer_encoding_is_400_and_nothing_is_smuggled() {
    let up = echo();
    let pylon = start(&up, "");
    // Whichever framing a server believed, the bytes after the head would be another request.
    rejected(
        &pylon,
        b"POST /api/x HTTP/1.1\r\nHost: example.com\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /api/smuggled HTTP/1.1\r\nHost: example.com\r\n\r\n",
        400,
    );
    rejected(
        &pylon,
        b"POST /api/x HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        400,
    );
    // A transfer coding that does not end in chunked cannot be framed either.
    rejected(
        &pylon,
        b"POST /api/x HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: gzip\r\n\r\nxx",
        400,
    );
    support::client::settle();
    assert_eq!(up.request_count(), 0);
}

#[test]
fn an_http10_request_with_transfer_encoding_is_400_and_closes() {
    let up = echo();
    let pylon = start(&up, "");
    // RFC 9112 §6.1: HTTP/1.0 has no Transfer-Encoding, so its framing is faulty, Content-Length
    // or not; a server that took it as HTTP/1.0 would read the chunks as the next request.
    let requests: [&[u8]; 3] = [
        b"POST /api/x HTTP/1.0\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"POST /api/x HTTP/1.0\r\nHost: example.com\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc",
        b"GET /api/x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /api/smuggled HTTP/1.0\r\n\r\n",
    ];
    for raw in requests {
        rejected(&pylon, raw, 400);
    }
    support::client::settle();
    assert_eq!(up.request_count(), 0);
}

#[test]
fn transfer_encoding_must_be_chunked_once_and_last() {
    let up = echo();
    let pylon = start(&up, "");
    for codings in [
        // Applied twice (RFC 9112 §6.1), in one field or in two.
        "chunked, chunked",
        "chunked\r\nTransfer-Encoding: chunked",
        // Not last (§6.3), with a parameter chunked does not have (§7.1), or no coding at all.
        "chunked, gzip",
        "chunked;x=1",
        "",
    ] {
        let raw = format!(
            "POST /api/x HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: {codings}\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        );
        rejected(&pylon, raw.as_bytes(), 400);
    }
    // A coding the gateway does not implement (§6.1): its upstream might frame it otherwise.
    rejected(
        &pylon,
        b"POST /api/x HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        501,
    );
    support::client::settle();
    assert_eq!(up.request_count(), 0);
    // Chunked alone, in any case and with empty list items (RFC 9110 §5.6.1), is fine.
    let res = Conn::connect(pylon.addr).request(
        b"POST /api/x HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: , Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    );
    assert_eq!((res.status, res.text().as_str()), (200, "POST /api/x|abc"));
}

#[test]
fn a_content_length_list_reaches_the_upstream_as_one_value() {
    let up = echo();
    let pylon = start(&up, "");
    // RFC 9112 §6.3: equal values are one length; the upstream gets that one.
    let res = Conn::connect(pylon.addr).request(
        b"POST /api/x HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5, 5\r\nContent-Length: 005\r\n\r\nhello",
    );
    assert_eq!(
        (res.status, res.text().as_str()),
        (200, "POST /api/x|hello")
    );
    let received = &up.received()[0];
    let lengths: Vec<&str> = received
        .headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .map(|(_, value)| value.as_str())
        .collect();
    assert_eq!(lengths, ["5"]);
}

#[test]
fn connect_is_400_as_over_http2() {
    let up = echo();
    let pylon = start(&up, "");
    // A 2xx would make the connection a tunnel (RFC 9112 §6.3), which the gateway does not
    // proxy: the tunnel's bytes would be read as requests.
    rejected(
        &pylon,
        b"CONNECT /api/x HTTP/1.1\r\nHost: example.com\r\n\r\n",
        400,
    );
    rejected(
        &pylon,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        400,
    );
    assert_eq!(up.request_count(), 0);
}

#[test]
fn a_malformed_content_length_is_400_and_closes() {
    let up = echo();
    let pylon = start(&up, "");
    for length in [
        "abc",
        "-1",
        "+5",
        "1, 2",
        "",
        "5 5",
        "0x10",
        "99999999999999999999",
    ] {
        let raw = format!(
            "POST /api/x HTTP/1.1\r\nHost: example.com\r\nContent-Length: {length}\r\n\r\nhello"
        );
        rejected(&pylon, raw.as_bytes(), 400);
    }
    // Two headers that disagree.
    rejected(
        &pylon,
        b"POST /api/x HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
    );
    assert_eq!(up.request_count(), 0);
}

#[test]
fn a_malformed_chunked_body_is_400() {
    let up = echo();
    let pylon = start(&up, "");
    let mut conn = Conn::connect(pylon.addr);
    conn.send(b"POST /api/x HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n");
    conn.send(b"3\r\nabc\r\nnot-hex\r\n");
    let res = conn.read_response().unwrap();
    assert_eq!(res.status, 400);
    assert_eq!(res.json()["error_msg"], "400 Bad Request");
    assert_eq!(res.header("connection"), Some("close"));
    assert!(conn.is_closed());
    let log = pylon.wait_access_log(1);
    assert_eq!(log[0]["status"], 400);
    assert_eq!(log[0]["route_id"], "r1");
    support::client::settle();
    assert_eq!(
        up.request_count(),
        0,
        "the upstream never got a whole request"
    );
}

#[test]
fn a_chunked_body_whose_lines_do_not_end_in_crlf_is_400() {
    let up = echo();
    let pylon = start(&up, "");
    // The body is forwarded as it came: a line end the gateway took and the upstream did not
    // (or the other way round) would have them disagree on where the request ends.
    let bodies: [&[u8]; 7] = [
        b"3\nabc\r\n0\r\n\r\n",
        b"3;ext\nabc\r\n0\r\n\r\n",
        b"3;ext\rabc\r\n0\r\n\r\n",
        b"3\r\nabc\n0\r\n\r\n",
        b"3\r\nabc\r\n0\r\nX-T: 1\n\r\n",
        b"3 junk\r\nabc\r\n0\r\n\r\n",
        // A trailer section holds fields, not a request (RFC 9112 §7.1.2).
        b"3\r\nabc\r\n0\r\nGET /api/smuggled HTTP/1.1\r\n\r\n",
    ];
    for body in bodies {
        let mut raw =
            b"POST /api/x HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec();
        raw.extend_from_slice(body);
        rejected(&pylon, &raw, 400);
    }
    support::client::settle();
    assert_eq!(
        up.request_count(),
        0,
        "the upstream never got a whole request"
    );
}

#[test]
fn a_client_that_stalls_mid_body_gets_408() {
    let up = echo();
    let pylon = start(&up, "  client_body_timeout: 0.5\n");
    let mut conn = Conn::connect(pylon.addr);
    conn.send(b"POST /api/x HTTP/1.1\r\nHost: example.com\r\nContent-Length: 10\r\n\r\nhalf");
    let res = conn.read_response().unwrap();
    assert_eq!(res.status, 408);
    assert_eq!(res.json()["error_msg"], "408 Request Timeout");
    assert!(conn.is_closed());
    support::client::settle();
    assert_eq!(up.request_count(), 0);
}

#[test]
fn a_client_that_never_finishes_its_head_gets_408() {
    let up = echo();
    let pylon = start(&up, "  client_header_timeout: 0.5\n");
    let mut conn = Conn::connect(pylon.addr);
    conn.send(b"GET /api/x HTTP/1.1\r\nHost: example.com\r\n");
    let res = conn.read_response().unwrap();
    assert_eq!(res.status, 408);
    assert_eq!(res.json()["error_msg"], "408 Request Timeout");
    assert!(conn.is_closed());
    assert_eq!(up.request_count(), 0);
}

#[test]
fn a_client_dribbling_its_head_gets_408_all_the_same() {
    let up = echo();
    // Default limits: the dribble must run into the timeout, not into `max_headers`.
    let pylon = Pylon::start(&routes(&up), "  client_header_timeout: 0.5\n");
    let mut conn = Conn::connect(pylon.addr);
    conn.send(b"GET /api/x HTTP/1.1\r\nHost: example.com\r\n");
    // A header line every 50 ms: each byte arrives well within the timeout, the head never
    // does. The deadline is for the whole head, so the answer comes long before 80 lines.
    let mut answered = false;
    for _ in 0..80 {
        if conn.stream.write_all(b"X-A: 1\r\n").is_err() {
            answered = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        conn.stream.set_nonblocking(true).unwrap();
        let mut probe = [0u8; 1];
        answered = conn.stream.peek(&mut probe).is_ok();
        conn.stream.set_nonblocking(false).unwrap();
        if answered {
            break;
        }
    }
    assert!(answered, "the gateway kept waiting for a dribbled head");
    let res = conn.read_response().unwrap();
    assert_eq!(res.status, 408);
    assert_eq!(up.request_count(), 0);
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_keepalive_timeout() {
    let up = echo();
    let pylon = start(&up, "  keepalive_timeout: 0.5\n");
    let mut conn = Conn::connect(pylon.addr);
    let res = conn.request(b"GET /api/x HTTP/1.1\r\nHost: example.com\r\n\r\n");
    assert_eq!(res.status, 200);
    assert_eq!(res.header("connection"), None);
    // Closed quietly: no response is owed on an idle connection.
    let mut rest = Vec::new();
    use std::io::Read;
    let n = conn.stream.read_to_end(&mut rest).unwrap();
    assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&rest));
}

#[test]
fn an_http11_request_without_host_is_400() {
    let up = echo();
    let pylon = start(&up, "");
    rejected(&pylon, b"GET /api/x HTTP/1.1\r\n\r\n", 400);
    // Two Host headers are as bad as none.
    rejected(
        &pylon,
        b"GET /api/x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
        400,
    );
    // HTTP/1.0 did not require it.
    let res = Conn::connect(pylon.addr).request(b"GET /api/old HTTP/1.0\r\n\r\n");
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "GET /api/old|");
    let received = up.received();
    assert_eq!(received.len(), 1);
    // With no Host to pass on, the upstream gets the node's.
    assert_eq!(
        received[0].header("host"),
        Some(up.addr.to_string().as_str())
    );
    assert!(!received[0].has_header("x-forwarded-host"));
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let up = echo();
    let pylon = start(&up, "");
    let mut conn = Conn::connect(pylon.addr);
    conn.send(
        b"GET /api/1 HTTP/1.1\r\nHost: example.com\r\n\r\n\
          POST /api/2 HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello\
          GET /nowhere HTTP/1.1\r\nHost: example.com\r\n\r\n\
          POST /api/3 HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
          GET /api/4 HTTP/1.1\r\nHost: example.com\r\n\r\n",
    );
    let expected = [
        (200, "GET /api/1|"),
        (200, "POST /api/2|hello"),
        (404, "{\"error_msg\":\"404 Route Not Found\"}\n"),
        (200, "POST /api/3|abc"),
        (200, "GET /api/4|"),
    ];
    for (status, body) in expected {
        let res = conn.read_response().unwrap();
        assert_eq!((res.status, res.text().as_str()), (status, body));
    }
    let targets: Vec<String> = up.received().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/api/1", "/api/2", "/api/3", "/api/4"]);
}

#[test]
fn rejected_requests_are_access_logged_with_the_route_they_would_have_matched() {
    let up = echo();
    let pylon = start(&up, "");
    let big = format!(
        "GET /api/big HTTP/1.1\r\nHost: example.com\r\nX-Big: {}\r\n\r\n",
        "v".repeat(5000)
    );
    rejected(&pylon, big.as_bytes(), 431);
    // Each waits for its line, so the lines are in this order whichever worker wrote them.
    pylon.wait_access_log(1);
    rejected(
        &pylon,
        b"POST /api/cl HTTP/1.1\r\nHost: example.com\r\nContent-Length: x\r\n\r\n",
        400,
    );
    pylon.wait_access_log(2);
    rejected(
        &pylon,
        b"GET /other HTTP/1.1\r\nHost: example.com\r\nBad Header: 1\r\n\r\n",
        400,
    );
    pylon.wait_access_log(3);
    rejected(
        &pylon,
        format!("GET /api/{} HTTP/1.1\r\n\r\n", "a".repeat(2000)).as_bytes(),
        414,
    );
    let log = pylon.wait_access_log(4);

    assert_eq!(log[0]["status"], 431);
    assert_eq!(log[0]["method"], "GET");
    assert_eq!(log[0]["uri"], "/api/big");
    assert_eq!(log[0]["route_id"], "r1");

    assert_eq!(log[1]["status"], 400);
    assert_eq!(log[1]["method"], "POST");
    assert_eq!(log[1]["uri"], "/api/cl");
    assert_eq!(log[1]["host"], "example.com");
    assert_eq!(log[1]["route_id"], "r1");

    assert_eq!(log[2]["status"], 400);
    assert_eq!(log[2]["uri"], "/other");
    assert!(log[2]["route_id"].is_null());

    assert_eq!(log[3]["status"], 414);
    for line in &log {
        assert!(line["upstream_addr"].is_null());
    }
    assert_eq!(up.request_count(), 0);
}
