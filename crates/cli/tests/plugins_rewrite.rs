//! Plugins that change the request or the response, through the gateway, over HTTP/1.1 and
//! HTTP/2 alike: proxy-rewrite (what the upstream gets), response-rewrite (what the client
//! gets), redirect, request-id and mocking (answers without an upstream).
//!
//! Configurations are written as JSON, which is YAML: the standalone `apisix.yaml`.

mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::{json, Value};
use support::client::Response;
use support::http2::{connect, request, send};
use support::protocols::{call, PROTOCOLS};
use support::upstream::{respond, Received, Upstream};
use support::{closed_port, Pylon};

/// A route on `uri` to `addr` with `plugins`.
fn route(id: &str, uri: &str, addr: SocketAddr, plugins: Value) -> Value {
    json!({"id": id, "uri": uri, "plugins": plugins, "upstream": {"nodes": {addr.to_string(): 1}}})
}

fn routes(routes: &[Value]) -> String {
    json!({ "routes": routes }).to_string()
}

/// Every value of header `name` the upstream got, in order.
fn values(received: &Received, name: &str) -> Vec<String> {
    received
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .collect()
}

/// Asserts that a declared `Content-Length`, if any, is the body's length (HTTP/2 may leave
/// it out; HTTP/1.1 has it or chunks).
fn assert_length_right(res: &Response, what: &str) {
    if let Some(length) = res.header("content-length") {
        assert_eq!(length, res.body.len().to_string(), "{what}");
    }
}

// === proxy-rewrite ===

#[tokio::test]
async fn proxy_rewrite_changes_the_target_host_and_method_the_upstream_gets() {
    let up = Upstream::start("up");
    let pylon = Pylon::start(
        &routes(&[
            route(
                "uri",
                "/uri/*",
                up.addr,
                json!({"proxy-rewrite": {"uri": "/v2$uri"}}),
            ),
            route(
                "regex",
                "/regex/*",
                up.addr,
                json!({"proxy-rewrite": {
                    "regex_uri": ["^/regex/(\\w+)/(\\w+)$", "/swapped/$2/$1"]
                }}),
            ),
            route(
                "host",
                "/host",
                up.addr,
                json!({"proxy-rewrite": {"host": "backend.internal:8080"}}),
            ),
            route(
                "method",
                "/method",
                up.addr,
                json!({"proxy-rewrite": {"method": "PUT"}}),
            ),
        ]),
        "",
    );
    for protocol in PROTOCOLS {
        for (method, target, expected_method, expected_target) in [
            // The client's query string goes on after the new path.
            ("GET", "/uri/a?x=1", "GET", "/v2/uri/a?x=1"),
            ("GET", "/regex/one/two?q=2", "GET", "/swapped/two/one?q=2"),
            // A path the pattern does not match goes as it came.
            ("GET", "/regex/one", "GET", "/regex/one"),
            ("POST", "/method", "PUT", "/method"),
        ] {
            let res = call(protocol, pylon.addr, method, target, &[], b"").await;
            let what = format!("{protocol:?} {method} {target}");
            assert_eq!(res.status, 200, "{what}: {}", res.text());
            let seen = up.last();
            assert_eq!(
                (seen.method.as_str(), seen.target.as_str()),
                (expected_method, expected_target),
                "{what}"
            );
        }
        let res = call(protocol, pylon.addr, "GET", "/host", &[], b"").await;
        assert_eq!(res.status, 200, "{protocol:?}: {}", res.text());
        assert_eq!(
            up.last().header("host"),
            Some("backend.internal:8080"),
            "{protocol:?}"
        );
    }
}

#[tokio::test]
async fn proxy_rewrite_adds_sets_and_removes_upstream_headers() {
    let up = Upstream::start("up");
    let pylon = Pylon::start(
        &routes(&[
            route(
                "ops",
                "/ops",
                up.addr,
                json!({"proxy-rewrite": {"headers": {
                    "add": {"X-Add": "added", "X-Many": ["one", "two"]},
                    "set": {"X-Set": "v=$arg_v", "X-Replace": "new"},
                    "remove": ["X-Remove"]
                }}}),
            ),
            // APISIX's older form: a plain object sets each header.
            route(
                "plain",
                "/plain",
                up.addr,
                json!({"proxy-rewrite": {"headers": {"X-Set": "plain"}}}),
            ),
        ]),
        "",
    );
    for protocol in PROTOCOLS {
        let headers = [
            ("x-add", "client"),
            ("x-replace", "old"),
            ("x-remove", "gone"),
            ("x-kept", "kept"),
        ];
        let res = call(protocol, pylon.addr, "GET", "/ops?v=7", &headers, b"").await;
        assert_eq!(res.status, 200, "{protocol:?}: {}", res.text());
        let seen = up.last();
        assert_eq!(values(&seen, "x-add"), ["client", "added"], "{protocol:?}");
        assert_eq!(values(&seen, "x-many"), ["one", "two"], "{protocol:?}");
        assert_eq!(values(&seen, "x-set"), ["v=7"], "{protocol:?}");
        assert_eq!(values(&seen, "x-replace"), ["new"], "{protocol:?}");
        assert!(values(&seen, "x-remove").is_empty(), "{protocol:?}");
        assert_eq!(values(&seen, "x-kept"), ["kept"], "{protocol:?}");

        let res = call(
            protocol,
            pylon.addr,
            "GET",
            "/plain",
            &[("x-set", "client")],
            b"",
        )
        .await;
        assert_eq!(res.status, 200, "{protocol:?}: {}", res.text());
        assert_eq!(values(&up.last(), "x-set"), ["plain"], "{protocol:?}");
    }
}

#[tokio::test]
async fn proxy_rewrite_edits_go_with_every_attempt() {
    let up = Upstream::start("up");
    // Refuses connections: an attempt there fails and the request goes to the next node.
    let closed = closed_port();
    let config = json!({"routes": [{
        "id": "r", "uri": "/r",
        "plugins": {"proxy-rewrite": {"uri": "/rewritten", "headers": {"set": {"X-Set": "yes"}}}},
        "upstream": {"nodes": {closed.addr.to_string(): 1, up.addr.to_string(): 1}, "retries": 1}
    }]});
    let pylon = Pylon::start(&config.to_string(), "");
    for protocol in PROTOCOLS {
        // Round robin starts on either node: four requests try the refusing one first too.
        for _ in 0..4 {
            let res = call(protocol, pylon.addr, "GET", "/r?q=1", &[], b"").await;
            assert_eq!(res.status, 200, "{protocol:?}: {}", res.text());
            let seen = up.last();
            assert_eq!(seen.target, "/rewritten?q=1", "{protocol:?}");
            assert_eq!(seen.header("x-set"), Some("yes"), "{protocol:?}");
        }
    }
}

// === response-rewrite ===

/// An upstream whose response says what a rewrite must replace: a body of its own (chunked
/// for `/chunked`), validators, a header to remove; `/missing` is a 404.
fn rich_upstream() -> Upstream {
    Upstream::with_handler("rich", Arc::new(rich))
}

fn rich(req: &Received, stream: &mut TcpStream) -> bool {
    let headers = [
        ("X-Upstream", "rich"),
        ("X-Remove-Me", "1"),
        ("ETag", "\"v1\""),
    ];
    if req.target.ends_with("/chunked") {
        let mut head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n".to_owned();
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n7\r\nchunked\r\n5\r\n body\r\n0\r\n\r\n");
        let _ = stream.write_all(head.as_bytes());
    } else if req.target.ends_with("/missing") {
        respond(stream, 404, &headers, b"no such thing");
    } else {
        respond(stream, 200, &headers, b"the upstream's own body");
    }
    true
}

#[tokio::test]
async fn response_rewrite_replaces_the_status_headers_and_body_the_client_gets() {
    let up = rich_upstream();
    let pylon = Pylon::start(
        &routes(&[
            route(
                "all",
                "/all/*",
                up.addr,
                json!({"response-rewrite": {
                    "status_code": 202,
                    "body": "rewritten",
                    "headers": {
                        "set": {"X-Upstream": "rewritten", "X-Route": "$route_id"},
                        "add": ["X-Added: 1"],
                        "remove": ["X-Remove-Me"]
                    }
                }}),
            ),
            route(
                "headers",
                "/headers",
                up.addr,
                json!({"response-rewrite": {"headers": {"X-Upstream": "plain"}}}),
            ),
            route(
                "binary",
                "/binary",
                up.addr,
                json!({"response-rewrite": {"body": "AAEC/w==", "body_base64": true}}),
            ),
        ]),
        "",
    );
    for protocol in PROTOCOLS {
        for target in ["/all/length", "/all/chunked"] {
            let res = call(protocol, pylon.addr, "GET", target, &[], b"").await;
            let what = format!("{protocol:?} {target}");
            assert_eq!(res.status, 202, "{what}: {}", res.text());
            assert_eq!(res.text(), "rewritten", "{what}");
            assert_length_right(&res, &what);
            assert_eq!(res.header_count("x-upstream"), 1, "{what}");
            assert_eq!(res.header("x-upstream"), Some("rewritten"), "{what}");
            assert_eq!(res.header("x-route"), Some("all"), "{what}");
            assert_eq!(res.header("x-added"), Some("1"), "{what}");
            assert_eq!(res.header("x-remove-me"), None, "{what}");
            // The validator described the upstream's body, not this one.
            assert_eq!(res.header("etag"), None, "{what}");
        }

        // Headers only: the upstream's body and status pass as they came.
        let res = call(protocol, pylon.addr, "GET", "/headers", &[], b"").await;
        assert_eq!(res.status, 200, "{protocol:?}");
        assert_eq!(res.text(), "the upstream's own body", "{protocol:?}");
        assert_length_right(&res, &format!("{protocol:?} /headers"));
        assert_eq!(res.header("x-upstream"), Some("plain"), "{protocol:?}");
        assert_eq!(res.header("x-remove-me"), Some("1"), "{protocol:?}");

        let res = call(protocol, pylon.addr, "GET", "/binary", &[], b"").await;
        assert_eq!(res.status, 200, "{protocol:?}");
        assert_eq!(res.body, [0, 1, 2, 255], "{protocol:?}");
        assert_length_right(&res, &format!("{protocol:?} /binary"));
    }
}

#[tokio::test]
async fn response_rewrite_with_vars_rewrites_only_the_responses_that_match() {
    let up = rich_upstream();
    let pylon = Pylon::start(
        &routes(&[route(
            "v",
            "/v/*",
            up.addr,
            json!({"response-rewrite": {
                "vars": [["status", "==", 404]],
                "status_code": 410,
                "body": "{\"error\": \"gone\"}",
                "headers": {"set": {"Content-Type": "application/json"}}
            }}),
        )]),
        "",
    );
    for protocol in PROTOCOLS {
        let res = call(protocol, pylon.addr, "GET", "/v/missing", &[], b"").await;
        assert_eq!(res.status, 410, "{protocol:?}: {}", res.text());
        assert_eq!(res.json(), json!({"error": "gone"}), "{protocol:?}");
        assert_eq!(
            res.header("content-type"),
            Some("application/json"),
            "{protocol:?}"
        );
        assert_length_right(&res, &format!("{protocol:?} /v/missing"));

        let res = call(protocol, pylon.addr, "GET", "/v/found", &[], b"").await;
        assert_eq!(res.status, 200, "{protocol:?}");
        assert_eq!(res.text(), "the upstream's own body", "{protocol:?}");
    }
}

/// `filters` that edit every body below: the upstream's (of a length, chunked, or of many
/// reads), the gateway's own error.
fn body_filters() -> Value {
    json!({"response-rewrite": {"filters": [
        {"regex": "body", "replace": "BODY", "scope": "global"},
        {"regex": "(\\w+)'s", "replace": "$1s'"},
        {"regex": "5", "replace": "five", "scope": "global"},
        {"regex": "upstream_error|Bad Gateway", "replace": "no upstream", "options": "i"}
    ]}})
}

/// An upstream of [`rich_upstream`]'s bodies and, for `/big`, 300 kB that reach the gateway
/// in many reads.
fn filtered_upstream() -> Upstream {
    Upstream::with_handler(
        "filtered",
        Arc::new(|req: &Received, stream: &mut TcpStream| {
            if !req.target.ends_with("/big") {
                return rich(req, stream);
            }
            respond(stream, 200, &[], "0123456789".repeat(30_000).as_bytes());
            true
        }),
    )
}

#[tokio::test]
async fn response_rewrite_filters_edit_the_body_whoever_made_it() {
    let up = filtered_upstream();
    let dead = closed_port();
    let pylon = Pylon::start(
        &routes(&[
            route("f", "/f/*", up.addr, body_filters()),
            route("dead", "/dead", dead.addr, body_filters()),
        ]),
        "",
    );
    let big = "01234five6789".repeat(30_000);
    for protocol in PROTOCOLS {
        for (target, status, body) in [
            ("/f/length", 200, "the upstreams' own BODY"),
            ("/f/chunked", 200, "chunked BODY"),
            ("/f/missing", 404, "no such thing"),
            ("/f/big", 200, big.as_str()),
            ("/dead", 502, "{\"error_msg\":\"five02 no upstream\"}\n"),
        ] {
            let what = format!("{protocol:?} {target}");
            let res = call(protocol, pylon.addr, "GET", target, &[], b"").await;
            assert_eq!(res.status, status, "{what}");
            assert!(res.text() == body, "{what}: {:.80}", res.text());
            assert_length_right(&res, &what);
            if target.starts_with("/f/") {
                // The validator described the upstream's body.
                assert_eq!(res.header("etag"), None, "{what}");
            }
        }
    }
}

/// 1 MB of `0123456789`, sent in chunks of 64 kB and a byte, so that the text straddles
/// every chunk's end.
fn huge_upstream() -> Upstream {
    Upstream::with_handler(
        "huge",
        Arc::new(|_: &Received, stream: &mut TcpStream| {
            let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            for chunk in "0123456789".repeat(100_000).as_bytes().chunks(65_537) {
                out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                out.extend_from_slice(chunk);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
            let _ = stream.write_all(&out);
            true
        }),
    )
}

#[tokio::test]
async fn a_body_over_max_resp_body_size_is_edited_as_it_flows_by_filters_that_can_stream() {
    let up = huge_upstream();
    let filtered = |filter: Value| json!({"response-rewrite": {"filters": [filter], "max_resp_body_size": 65_536}});
    let pylon = Pylon::start(
        &routes(&[
            route(
                "literal",
                "/literal",
                up.addr,
                filtered(json!({"regex": "3456", "replace": "<$0>", "scope": "global"})),
            ),
            route(
                "unbounded",
                "/unbounded",
                up.addr,
                filtered(json!({"regex": "3.*", "replace": "-"})),
            ),
        ]),
        "",
    );
    let edited = "012<3456>789".repeat(100_000);
    let unedited = "0123456789".repeat(100_000);
    for protocol in PROTOCOLS {
        for (target, body) in [("/literal", &edited), ("/unbounded", &unedited)] {
            let what = format!("{protocol:?} {target}");
            let res = call(protocol, pylon.addr, "GET", target, &[], b"").await;
            assert_eq!(res.status, 200, "{what}");
            assert!(res.text() == *body, "{what}: {:.80}", res.text());
            assert_length_right(&res, &what);
        }
    }
}

#[test]
fn a_filtered_body_goes_out_chunked_on_a_kept_alive_connection_or_to_the_close_for_http10() {
    let up = filtered_upstream();
    let pylon = Pylon::start(&routes(&[route("f", "/f/*", up.addr, body_filters())]), "");
    let mut conn = support::client::Conn::connect(pylon.addr);
    for _ in 0..2 {
        let res = conn.request(b"GET /f/length HTTP/1.1\r\nHost: example.com\r\n\r\n");
        assert_eq!(res.text(), "the upstreams' own BODY");
        assert_eq!(res.header("transfer-encoding"), Some("chunked"));
        assert_eq!(res.header("content-length"), None);
    }

    let mut conn = support::client::Conn::connect(pylon.addr);
    let res = conn
        .request(b"GET /f/chunked HTTP/1.0\r\nHost: example.com\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(res.text(), "chunked BODY");
    assert_eq!(res.header("transfer-encoding"), None);
    assert_eq!(res.header("connection"), Some("close"));
    assert!(conn.is_closed());
}

// === an HTTP/2 upstream ===

/// An h2c upstream (what `scheme: grpc` reaches), recording each request head and answering
/// 200 with `x-upstream: h2`, `x-remove-me` and the body `h2 body`.
async fn h2_upstream() -> (SocketAddr, Arc<Mutex<Vec<http::request::Parts>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let record = received.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    record.lock().unwrap().push(req.into_parts().0);
                    let head = http::Response::builder()
                        .header("x-upstream", "h2")
                        .header("x-remove-me", "1")
                        .body(())
                        .unwrap();
                    if let Ok(mut body) = respond.send_response(head, false) {
                        let _ = body.send_data(Bytes::from_static(b"h2 body"), true);
                    }
                }
            });
        }
    });
    (addr, received)
}

/// HTTP/2 clients only: an HTTP/1.1 request does not go to an HTTP/2 upstream.
#[tokio::test]
async fn response_rewrite_filters_edit_an_http2_upstreams_body() {
    let (addr, _) = h2_upstream().await;
    let mut h2_route = route(
        "h2",
        "/h2/*",
        addr,
        json!({"response-rewrite": {"filters": [{"regex": "h2 (\\w+)", "replace": "edited $1"}]}}),
    );
    h2_route["upstream"]["scheme"] = json!("grpc");
    let pylon = Pylon::start(&routes(&[h2_route]), "");
    let mut h2 = connect(pylon.addr).await;
    let reply = send(
        &mut h2.sender,
        request("GET", "/h2/a").body(()).unwrap(),
        b"",
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "edited body");
    assert_eq!(reply.header("content-length"), None);
    assert_eq!(reply.header("x-upstream"), Some("h2"));
}

/// HTTP/2 clients only: an HTTP/1.1 request does not go to an HTTP/2 upstream.
#[tokio::test]
async fn request_and_response_edits_reach_an_http2_upstream_and_come_back_from_it() {
    let (addr, received) = h2_upstream().await;
    let mut h2_route = route(
        "h2",
        "/h2/*",
        addr,
        json!({
            "proxy-rewrite": {
                "uri": "/v2$uri",
                "method": "PUT",
                "host": "backend.internal",
                "headers": {"set": {"X-Set": "yes"}, "remove": ["X-Remove"]}
            },
            "response-rewrite": {
                "status_code": 202,
                "body": "rewritten",
                "headers": {"set": {"X-Upstream": "rewritten"}, "remove": ["X-Remove-Me"]}
            },
            "request-id": {}
        }),
    );
    h2_route["upstream"]["scheme"] = json!("grpc");
    let pylon = Pylon::start(&routes(&[h2_route]), "");
    let mut h2 = connect(pylon.addr).await;
    let req = request("GET", "/h2/a?x=1")
        .header("x-remove", "gone")
        .header("x-kept", "kept")
        .body(())
        .unwrap();
    let reply = send(&mut h2.sender, req, b"").await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    assert_eq!(reply.text(), "rewritten");
    if let Some(length) = reply.header("content-length") {
        assert_eq!(length, "9");
    }
    assert_eq!(reply.header("x-upstream"), Some("rewritten"));
    assert_eq!(reply.header("x-remove-me"), None);
    let id = reply.header("x-request-id").expect("a request id");

    let seen = received
        .lock()
        .unwrap()
        .pop()
        .expect("the upstream got the request");
    assert_eq!(seen.method, "PUT");
    assert_eq!(
        seen.uri.path_and_query().map(|p| p.as_str()),
        Some("/v2/h2/a?x=1")
    );
    assert_eq!(
        seen.uri.authority().map(|a| a.as_str()),
        Some("backend.internal")
    );
    let header = |name: &str| seen.headers.get(name).and_then(|v| v.to_str().ok());
    assert_eq!(header("x-set"), Some("yes"));
    assert_eq!(header("x-remove"), None);
    assert_eq!(header("x-kept"), Some("kept"));
    assert_eq!(header("x-request-id"), Some(id));
}

// === HEAD ===

/// The response to HEAD has no content (RFC 9110 §9.3.2), whoever made it: the upstream with
/// a body a plugin replaced, a plugin's own reply, a plugin's refusal.
#[tokio::test]
async fn a_head_request_gets_the_head_of_the_get_and_no_body() {
    let up = rich_upstream();
    let config = json!({
        "routes": [
            route("rewritten", "/rewritten", up.addr, json!({"response-rewrite": {"status_code": 202, "body": "rewritten"}})),
            route("mocked", "/mocked", up.addr, json!({"mocking": {"response_example": "mocked"}})),
            route("refused", "/refused", up.addr, json!({"key-auth": {}})),
        ],
        "consumers": [{"username": "jack", "plugins": {"key-auth": {"key": "jack-key"}}}]
    });
    let pylon = Pylon::start(&config.to_string(), "");
    for protocol in PROTOCOLS {
        for (target, status) in [("/rewritten", 202), ("/mocked", 200), ("/refused", 401)] {
            let what = format!("{protocol:?} HEAD {target}");
            let get = call(protocol, pylon.addr, "GET", target, &[], b"").await;
            let res = call(protocol, pylon.addr, "HEAD", target, &[], b"").await;
            assert_eq!(res.status, status, "{what}");
            assert_eq!(res.body, b"", "{what}");
            if let Some(length) = res.header("content-length") {
                assert_eq!(length, get.body.len().to_string(), "{what}");
            }
        }
    }
}

// === redirect ===

#[tokio::test]
async fn redirect_answers_with_the_location_and_status_it_is_configured_with() {
    let up = Upstream::start("up");
    let pylon = Pylon::start(
        &routes(&[
            route(
                "uri",
                "/old/*",
                up.addr,
                json!({"redirect": {"uri": "/new$uri", "ret_code": 301}}),
            ),
            route(
                "regex",
                "/rx/*",
                up.addr,
                json!({"redirect": {
                    "regex_uri": ["^/rx/(\\w+)$", "https://example.org/$1"], "append_query_string": true
                }}),
            ),
            route(
                "https",
                "/secure",
                up.addr,
                json!({"redirect": {"http_to_https": true}}),
            ),
        ]),
        "",
    );
    for protocol in PROTOCOLS {
        let before = up.request_count();
        for (method, target, status, location) in [
            ("GET", "/old/page", 301, "/new/old/page"),
            ("GET", "/rx/page?q=1", 302, "https://example.org/page?q=1"),
            ("GET", "/secure?x=1", 301, "https://example.com/secure?x=1"),
            // 308 keeps the method and body of a non-idempotent request.
            ("POST", "/secure", 308, "https://example.com/secure"),
        ] {
            let res = call(protocol, pylon.addr, method, target, &[], b"").await;
            let what = format!("{protocol:?} {method} {target}");
            assert_eq!(res.status, status, "{what}: {}", res.text());
            assert_eq!(res.header("location"), Some(location), "{what}");
            assert_length_right(&res, &what);
        }
        assert_eq!(
            up.request_count(),
            before,
            "{protocol:?}: a redirect is the gateway's"
        );

        // A path regex_uri does not match is proxied as usual.
        let res = call(protocol, pylon.addr, "GET", "/rx/a/b", &[], b"").await;
        assert_eq!(res.status, 200, "{protocol:?}: {}", res.text());
        assert_eq!(res.header("location"), None, "{protocol:?}");
        assert_eq!(up.last().target, "/rx/a/b", "{protocol:?}");
    }
}

// === request-id ===

/// Whether `id` is a version 4 UUID: `xxxxxxxx-xxxx-4xxx-[89ab]xxx-xxxxxxxxxxxx`.
fn is_uuid_v4(id: &str) -> bool {
    let groups: Vec<&str> = id.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && id.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit())
        && groups[2].starts_with('4')
        && groups[3].starts_with(['8', '9', 'a', 'b'])
}

#[tokio::test]
async fn request_id_gives_the_upstream_and_the_client_one_id_keeping_the_clients() {
    let up = Upstream::start("up");
    // Answers with an id of its own, which the client then gets.
    let own_id = Upstream::with_handler(
        "own-id",
        Arc::new(|_: &Received, stream: &mut TcpStream| {
            respond(stream, 200, &[("X-Request-Id", "upstream-id")], b"up");
            true
        }),
    );
    let pylon = Pylon::start(
        &routes(&[
            route("default", "/id", up.addr, json!({"request-id": {}})),
            route(
                "quiet",
                "/quiet",
                up.addr,
                json!({"request-id": {"include_in_response": false}}),
            ),
            route(
                "range",
                "/range",
                up.addr,
                json!({"request-id": {
                    "header_name": "X-Trace-Id", "algorithm": "range_id", "range_id": {"length": 12, "char_set": "abcdef"}
                }}),
            ),
            route("own", "/own", own_id.addr, json!({"request-id": {}})),
        ]),
        "",
    );
    let mut seen_ids = Vec::new();
    for protocol in PROTOCOLS {
        for _ in 0..2 {
            let res = call(protocol, pylon.addr, "GET", "/id", &[], b"").await;
            assert_eq!(res.status, 200, "{protocol:?}");
            let id = res
                .header("x-request-id")
                .expect("an id for the client")
                .to_owned();
            assert!(is_uuid_v4(&id), "{protocol:?}: {id}");
            assert_eq!(
                up.last().header("x-request-id"),
                Some(id.as_str()),
                "{protocol:?}"
            );
            seen_ids.push(id);
        }

        let res = call(
            protocol,
            pylon.addr,
            "GET",
            "/id",
            &[("x-request-id", "mine")],
            b"",
        )
        .await;
        assert_eq!(res.header("x-request-id"), Some("mine"), "{protocol:?}");
        assert_eq!(values(&up.last(), "x-request-id"), ["mine"], "{protocol:?}");

        let res = call(protocol, pylon.addr, "GET", "/quiet", &[], b"").await;
        assert_eq!(res.header("x-request-id"), None, "{protocol:?}");
        assert!(
            up.last().header("x-request-id").is_some_and(is_uuid_v4),
            "{protocol:?}"
        );

        let res = call(protocol, pylon.addr, "GET", "/range", &[], b"").await;
        let id = res
            .header("x-trace-id")
            .expect("an id for the client")
            .to_owned();
        assert!(
            id.len() == 12 && id.bytes().all(|b| (b'a'..=b'f').contains(&b)),
            "{protocol:?}: {id}"
        );
        assert_eq!(
            up.last().header("x-trace-id"),
            Some(id.as_str()),
            "{protocol:?}"
        );

        let res = call(protocol, pylon.addr, "GET", "/own", &[], b"").await;
        assert_eq!(res.header_count("x-request-id"), 1, "{protocol:?}");
        assert_eq!(
            res.header("x-request-id"),
            Some("upstream-id"),
            "{protocol:?}"
        );
    }
    seen_ids.sort();
    seen_ids.dedup();
    assert_eq!(
        seen_ids.len(),
        2 * PROTOCOLS.len(),
        "every request got an id of its own"
    );
}

#[tokio::test]
async fn request_id_reaches_plugin_refusals_and_gateway_errors() {
    let up = Upstream::start("up");
    let down = closed_port();
    let config = json!({
        "routes": [
            route("auth", "/auth", up.addr, json!({"request-id": {}, "key-auth": {}})),
            route("down", "/down", down.addr, json!({"request-id": {}})),
        ],
        "consumers": [{"username": "jack", "plugins": {"key-auth": {"key": "jack-key"}}}]
    });
    let pylon = Pylon::start(&config.to_string(), "");
    for protocol in PROTOCOLS {
        for (target, status) in [("/auth", 401), ("/down", 502)] {
            let res = call(protocol, pylon.addr, "GET", target, &[], b"").await;
            assert_eq!(res.status, status, "{protocol:?} {target}: {}", res.text());
            let id = res.header("x-request-id").unwrap_or_default();
            assert!(is_uuid_v4(id), "{protocol:?} {target}: {id:?}");
            let res = call(
                protocol,
                pylon.addr,
                "GET",
                target,
                &[("x-request-id", "mine")],
                b"",
            )
            .await;
            assert_eq!(
                res.header("x-request-id"),
                Some("mine"),
                "{protocol:?} {target}"
            );
        }
    }
}

// === mocking ===

#[tokio::test]
async fn mocking_answers_without_the_upstream() {
    // Nothing listens there: any attempt to proxy would be a 502.
    let nowhere = closed_port();
    let pylon = Pylon::start(
        &routes(&[
            route(
                "example",
                "/example",
                nowhere.addr,
                json!({"mocking": {
                    "response_status": 201,
                    "response_example": "{\"a\": \"$arg_a\"}",
                    "response_headers": {"X-Mock": "yes"}
                }}),
            ),
            route(
                "schema",
                "/schema",
                nowhere.addr,
                json!({"mocking": {
                    "response_schema": {"type": "object", "properties": {
                        "name": {"type": "string", "example": "pylon"},
                        "port": {"type": "integer", "example": 9080}
                    }},
                    "with_mock_header": false
                }}),
            ),
            route(
                "delayed",
                "/delayed",
                nowhere.addr,
                json!({"mocking": {"delay": 1, "response_example": "late"}}),
            ),
            route(
                "xml",
                "/xml",
                nowhere.addr,
                json!({"mocking": {
                    "content_type": "text/xml", "response_example": "<a>1</a>"
                }}),
            ),
        ]),
        "",
    );
    for protocol in PROTOCOLS {
        let res = call(protocol, pylon.addr, "GET", "/example?a=1", &[], b"").await;
        assert_eq!(res.status, 201, "{protocol:?}: {}", res.text());
        assert_eq!(res.json(), json!({"a": "1"}), "{protocol:?}");
        assert_eq!(
            res.header("content-type"),
            Some("application/json;charset=utf8"),
            "{protocol:?}"
        );
        assert_eq!(res.header("x-mock-by"), Some("APISIX"), "{protocol:?}");
        assert_eq!(res.header("x-mock"), Some("yes"), "{protocol:?}");
        assert_length_right(&res, &format!("{protocol:?} /example"));

        let res = call(protocol, pylon.addr, "GET", "/schema", &[], b"").await;
        assert_eq!(res.status, 200, "{protocol:?}: {}", res.text());
        assert_eq!(
            res.json(),
            json!({"name": "pylon", "port": 9080}),
            "{protocol:?}"
        );
        assert_eq!(res.header("x-mock-by"), None, "{protocol:?}");

        let res = call(protocol, pylon.addr, "GET", "/delayed", &[], b"").await;
        assert_eq!(
            (res.status, res.text().as_str()),
            (200, "late"),
            "{protocol:?}"
        );

        let res = call(protocol, pylon.addr, "GET", "/xml", &[], b"").await;
        assert_eq!(res.status, 200, "{protocol:?}: {}", res.text());
        assert_eq!(res.text(), "<a>1</a>", "{protocol:?}");
        assert_eq!(res.header("content-type"), Some("text/xml"), "{protocol:?}");
    }
}
