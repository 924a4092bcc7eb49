//! `grpc-web`: browser-style gRPC-Web calls (HTTP/1.1 and HTTP/2 clients, the same
//! assertions) to a real gRPC server (tonic, messages and service written by hand, no
//! protoc): unary calls in binary and base64 text decoded frame by frame and byte for byte,
//! an error status in the trailer frame, a server stream in order and sent as it comes,
//! metadata passed on, CORS preflights and headers, the refusals of what is not a gRPC-Web
//! call, and bad configurations refused by the Admin API with the field.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use prost::Message;
use serde_json::{json, Value};
use support::client::{admin, Conn, Response};
use support::grpc_server::{self, Method};
use support::protocols::{call, Protocol, PROTOCOLS};
use support::{wait_until, Pylon, WAIT};
use tokio::sync::{mpsc, Notify};
use tonic::body::BoxBody;
use tonic::codec::ProstCodec;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::tokio_stream::Stream;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::NamedService;
use tonic::{Request, Status};

const ADMIN_KEY: &str = "test-admin-key";

// === the upstream: demo.Echo, by hand ===

#[derive(Clone, PartialEq, prost::Message)]
struct Note {
    #[prost(string, tag = "1")]
    text: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct CountRequest {
    #[prost(uint32, tag = "1")]
    count: u32,
    /// Hold the stream after its first note until the test releases it.
    #[prost(bool, tag = "2")]
    hold: bool,
}

fn note(text: &str) -> Note {
    Note {
        text: text.to_owned(),
    }
}

/// `Say` answers `hello <text>, <x-user metadata>`, or NOT_FOUND for `missing`; `Count`
/// streams `count` notes, holding after the first one when asked to until `release`.
#[derive(Clone)]
struct Echo {
    release: Arc<Notify>,
}

impl NamedService for Echo {
    const NAME: &'static str = "demo.Echo";
}

impl Service<http::Request<BoxBody>> for Echo {
    type Response = http::Response<BoxBody>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<BoxBody>) -> Self::Future {
        let release = self.release.clone();
        Box::pin(async move {
            Ok(match request.uri().path() {
                "/demo.Echo/Say" => {
                    let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
                    grpc.unary(Method(say), request).await
                }
                "/demo.Echo/Count" => {
                    let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
                    let method = move |r| count(r, release.clone());
                    grpc.server_streaming(Method(method), request).await
                }
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

async fn say(request: Request<Note>) -> Result<tonic::Response<Note>, Status> {
    let user = request.metadata().get("x-user").cloned();
    let text = request.into_inner().text;
    if text == "missing" {
        return Err(Status::not_found(format!("no note {text}")));
    }
    let user = user
        .as_ref()
        .and_then(|u| u.to_str().ok())
        .unwrap_or("nobody");
    Ok(tonic::Response::new(note(&format!("hello {text}, {user}"))))
}

type Notes = Pin<Box<dyn Stream<Item = Result<Note, Status>> + Send>>;

async fn count(
    request: Request<CountRequest>,
    release: Arc<Notify>,
) -> Result<tonic::Response<Notes>, Status> {
    let CountRequest { count, hold } = request.into_inner();
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        for i in 0..count {
            if tx.send(Ok(note(&i.to_string()))).await.is_err() {
                return;
            }
            if hold
                && i == 0
                && tokio::time::timeout(WAIT, release.notified())
                    .await
                    .is_err()
            {
                let _ = tx.send(Err(Status::aborted("never released"))).await;
                return;
            }
        }
    });
    Ok(tonic::Response::new(
        Box::pin(ReceiverStream::new(rx)) as Notes
    ))
}

async fn start_echo(release: Arc<Notify>) -> SocketAddr {
    grpc_server::serve(Echo { release }).await
}

// === the gateway ===

fn start_pylon() -> Pylon {
    let node = format!(
        "proxy:\n  listen: [\"127.0.0.1:0\"]\n  workers: 1\n\
         control:\n  listen: \"127.0.0.1:0\"\n\
         metrics:\n  listen: \"127.0.0.1:0\"\n\
         admin:\n  listen: \"127.0.0.1:0\"\n  admin_key:\n    - {{name: admin, key: {ADMIN_KEY}, role: admin}}\n\
         config:\n  source: embedded\n  data_dir: data\n"
    );
    Pylon::run_node(tempfile::tempdir().unwrap(), &node)
        .unwrap_or_else(|e| panic!("pylon did not start: {e}"))
}

fn put(pylon: &Pylon, path: &str, body: Value) -> Response {
    admin(
        pylon.admin.expect("an Admin API"),
        ADMIN_KEY,
        "PUT",
        path,
        Some(&body),
    )
}

/// The gateway with `/demo.Echo/*` through `grpc-web` to the echo server, and `/web/*` too,
/// its prefix stripped by `proxy-rewrite`.
fn gateway(echo: SocketAddr) -> Pylon {
    let pylon = start_pylon();
    let upstream = json!({"scheme": "grpc", "nodes": {echo.to_string(): 1}});
    let res = put(&pylon, "/apisix/admin/upstreams/echo", upstream);
    assert!(res.status < 300, "{}", res.text());
    let route = json!({"uri": "/demo.Echo/*", "plugins": {"grpc-web": {}}, "upstream_id": "echo"});
    let res = put(&pylon, "/apisix/admin/routes/echo", route);
    assert!(res.status < 300, "{}", res.text());
    let prefixed = json!({
        "uri": "/web/*",
        "plugins": {"grpc-web": {}, "proxy-rewrite": {"regex_uri": ["^/web(/.*)", "$1"]}},
        "upstream_id": "echo",
    });
    let res = put(&pylon, "/apisix/admin/routes/prefixed", prefixed);
    assert!(res.status < 300, "{}", res.text());
    wait_until(
        || support::client::get(pylon.addr, "example.com", "/web/demo.Echo/Say").status == 405,
        "the routes to be served",
    );
    pylon
}

const BINARY: &str = "application/grpc-web+proto";
const TEXT: &str = "application/grpc-web-text";

/// A gRPC-Web request body: `message` in its frame, base64 for the text type.
fn request_body(content_type: &str, message: &impl Message) -> Vec<u8> {
    let framed = frame(0, &message.encode_to_vec());
    match content_type {
        TEXT => STANDARD.encode(framed).into_bytes(),
        _ => framed,
    }
}

/// One gRPC-Web frame: its flag, its length (4 bytes, big-endian), its payload.
fn frame(flag: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![flag];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The trailer frame a status is written as.
fn trailer(code: u32, message: &str) -> Vec<u8> {
    frame(
        0x80,
        format!("grpc-status:{code}\r\ngrpc-message:{message}\r\n").as_bytes(),
    )
}

/// A response body's bytes: base64-decoded for the text type, where the gateway may send
/// several padded segments, so it is decoded by groups of four.
fn answer_bytes(content_type: &str, body: &[u8]) -> Vec<u8> {
    if content_type != TEXT {
        return body.to_vec();
    }
    assert!(
        body.len().is_multiple_of(4),
        "{}",
        String::from_utf8_lossy(body)
    );
    body.chunks(4)
        .flat_map(|group| {
            STANDARD
                .decode(group)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
        })
        .collect()
}

/// A gRPC-Web call of `path` over `protocol` with `headers` besides its content type.
async fn web_call(
    protocol: Protocol,
    pylon: &Pylon,
    path: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    message: &impl Message,
) -> Response {
    let mut all = vec![("content-type", content_type), ("x-grpc-web", "1")];
    all.extend_from_slice(headers);
    let body = request_body(content_type, message);
    call(protocol, pylon.addr, "POST", path, &all, &body).await
}

/// What every answer to a gRPC-Web call has: 200, the request's content type, and the CORS
/// headers that let a page read it.
fn assert_web_answer(res: &Response, content_type: &str, what: &str) {
    assert_eq!(res.status, 200, "{what}: {}", res.text());
    assert_eq!(res.header("content-type"), Some(content_type), "{what}");
    assert_eq!(
        res.header("access-control-allow-origin"),
        Some("*"),
        "{what}"
    );
    assert_eq!(
        res.header("access-control-expose-headers"),
        Some("grpc-status,grpc-message"),
        "{what}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_in_binary_and_text_round_trip_frame_by_frame() {
    let pylon = gateway(start_echo(Arc::default()).await);
    for protocol in PROTOCOLS {
        for content_type in [BINARY, TEXT] {
            let what = format!("{protocol:?} {content_type}");
            let res = web_call(
                protocol,
                &pylon,
                "/demo.Echo/Say",
                content_type,
                &[("x-user", "ada")],
                &note("web"),
            )
            .await;
            assert_web_answer(&res, content_type, &what);
            let expected = [
                frame(0, &note("hello web, ada").encode_to_vec()),
                trailer(0, ""),
            ]
            .concat();
            assert_eq!(
                answer_bytes(content_type, &res.body),
                expected,
                "{what}: {}",
                res.text()
            );
        }
        // The method's path as a rewrite plugin made it.
        let path = "/web/demo.Echo/Say";
        let res = web_call(protocol, &pylon, path, BINARY, &[], &note("again")).await;
        assert_web_answer(&res, BINARY, "prefixed");
        let expected = [
            frame(0, &note("hello again, nobody").encode_to_vec()),
            trailer(0, ""),
        ];
        assert_eq!(res.body, expected.concat(), "{protocol:?}: {}", res.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_status_comes_in_the_trailer_frame() {
    let pylon = gateway(start_echo(Arc::default()).await);
    for protocol in PROTOCOLS {
        for content_type in [BINARY, TEXT] {
            let what = format!("{protocol:?} {content_type}");
            let res = web_call(
                protocol,
                &pylon,
                "/demo.Echo/Say",
                content_type,
                &[],
                &note("missing"),
            )
            .await;
            assert_web_answer(&res, content_type, &what);
            // gRPC percent-encodes the message; gRPC-Web passes it on so.
            assert_eq!(
                answer_bytes(content_type, &res.body),
                trailer(5, "no%20note%20missing"),
                "{what}: {}",
                res.text()
            );
        }
        // A method the server does not have.
        let res = web_call(protocol, &pylon, "/demo.Echo/Nope", BINARY, &[], &note("x")).await;
        assert_web_answer(&res, BINARY, "unimplemented");
        assert_eq!(res.body, trailer(12, "no%20such%20method"), "{protocol:?}");
    }
}

/// The frames of a binary gRPC-Web body, in order: each flag and payload.
fn frames(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while !body.is_empty() {
        assert!(body.len() >= 5, "a cut frame header: {body:?}");
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        assert!(body.len() >= 5 + len, "a cut frame: {body:?}");
        frames.push((body[0], body[5..5 + len].to_vec()));
        body = &body[5 + len..];
    }
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stream_comes_in_order_then_its_trailers() {
    let pylon = gateway(start_echo(Arc::default()).await);
    let three = CountRequest {
        count: 3,
        hold: false,
    };
    for protocol in PROTOCOLS {
        for content_type in [BINARY, TEXT] {
            let what = format!("{protocol:?} {content_type}");
            let res = web_call(
                protocol,
                &pylon,
                "/demo.Echo/Count",
                content_type,
                &[],
                &three,
            )
            .await;
            assert_web_answer(&res, content_type, &what);
            let frames = frames(&answer_bytes(content_type, &res.body));
            let notes: Vec<(u8, Note)> = frames[..3]
                .iter()
                .map(|(flag, payload)| (*flag, Note::decode(payload.as_slice()).unwrap()))
                .collect();
            assert_eq!(
                notes,
                [(0, note("0")), (0, note("1")), (0, note("2"))],
                "{what}"
            );
            assert_eq!(frames.len(), 4, "{what}: {frames:?}");
            assert_eq!(frame(frames[3].0, &frames[3].1), trailer(0, ""), "{what}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stream_is_sent_as_it_comes() {
    let release = Arc::new(Notify::new());
    let pylon = gateway(start_echo(release.clone()).await);
    let held = CountRequest {
        count: 2,
        hold: true,
    };
    let body = request_body(BINARY, &held);
    let first = frame(0, &note("0").encode_to_vec());
    let rest = [frame(0, &note("1").encode_to_vec()), trailer(0, "")].concat();

    // HTTP/1.1: the first note arrives as a chunk while the server holds the stream.
    let mut conn = Conn::connect(pylon.addr);
    let head = format!(
        "POST /demo.Echo/Count HTTP/1.1\r\nHost: example.com\r\nContent-Type: {BINARY}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.send(&[head.as_bytes(), &body].concat());
    let head = conn.read_until(b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let mut received = Vec::new();
    while received.len() < first.len() {
        let size = conn.read_until(b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&size).unwrap().trim(), 16).unwrap();
        received.extend(conn.read_raw(size + 2).unwrap().drain(..size));
    }
    assert_eq!(received, first, "HTTP/1.1");
    release.notify_one();
    let tail = conn.read_until(b"0\r\n\r\n").unwrap();
    let mut tail = &tail[..];
    while !tail.starts_with(b"0\r\n") {
        let line_end = tail.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&tail[..line_end]).unwrap(), 16);
        let size = size.unwrap();
        received.extend_from_slice(&tail[line_end + 2..line_end + 2 + size]);
        tail = &tail[line_end + 4 + size..];
    }
    assert_eq!(received, [first.clone(), rest.clone()].concat(), "HTTP/1.1");

    // HTTP/2: likewise, as DATA frames.
    let h2 = support::http2::connect(pylon.addr).await;
    let request = support::http2::request("POST", "/demo.Echo/Count")
        .header("content-type", BINARY)
        .body(())
        .unwrap();
    let mut ready = h2.sender.clone().ready().await.unwrap();
    let (response, mut stream) = ready.send_request(request, false).unwrap();
    support::http2::send_body(&mut stream, Bytes::from(body), true).await;
    let response = tokio::time::timeout(WAIT, response).await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let mut recv = response.into_body();
    let mut received = Vec::new();
    while received.len() < first.len() {
        let data = tokio::time::timeout(WAIT, recv.data()).await.unwrap();
        let data = data.expect("more of the stream").unwrap();
        recv.flow_control().release_capacity(data.len()).unwrap();
        received.extend_from_slice(&data);
    }
    assert_eq!(received, first, "HTTP/2");
    release.notify_one();
    received.extend(support::http2::read_body(&mut recv).await);
    assert_eq!(received, [first, rest].concat(), "HTTP/2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflights_are_answered_and_what_is_not_a_grpc_web_call_refused() {
    let pylon = gateway(start_echo(Arc::default()).await);
    let preflight = [
        ("origin", "https://app.example"),
        ("access-control-request-method", "POST"),
        ("access-control-request-headers", "content-type,x-grpc-web"),
    ];
    for protocol in PROTOCOLS {
        let res = call(
            protocol,
            pylon.addr,
            "OPTIONS",
            "/demo.Echo/Say",
            &preflight,
            b"",
        )
        .await;
        assert_eq!(res.status, 204, "{protocol:?}: {}", res.text());
        assert_eq!(res.header("access-control-allow-origin"), Some("*"));
        assert_eq!(res.header("access-control-allow-methods"), Some("POST"));
        assert_eq!(
            res.header("access-control-allow-headers"),
            Some("content-type,x-grpc-web,x-user-agent")
        );
        assert_eq!(
            res.header("access-control-expose-headers"),
            Some("grpc-status,grpc-message")
        );
        assert!(res.body.is_empty(), "{protocol:?}");

        let res = call(protocol, pylon.addr, "GET", "/demo.Echo/Say", &[], b"").await;
        assert_eq!(res.status, 405, "{protocol:?}: {}", res.text());
        assert_eq!(res.header("allow"), Some("POST, OPTIONS"));
        assert_eq!(
            res.json(),
            json!({"message": "a gRPC-Web call is a POST, not a GET"})
        );
        assert_eq!(res.header("access-control-allow-origin"), Some("*"));

        // Without a body: the refusal comes before any is read, and an HTTP/2 client could
        // find its stream already answered and closed when it sends one.
        for content_type in ["application/grpc", "application/json"] {
            let headers = [("content-type", content_type)];
            let res = call(
                protocol,
                pylon.addr,
                "POST",
                "/demo.Echo/Say",
                &headers,
                b"",
            )
            .await;
            assert_eq!(
                res.status,
                400,
                "{protocol:?} {content_type}: {}",
                res.text()
            );
            let message = res.json()["message"].as_str().unwrap().to_owned();
            let expected = format!("content type `{content_type}` is not gRPC-Web's");
            assert!(message.starts_with(&expected), "{message}");
            assert_eq!(res.header("access-control-allow-origin"), Some("*"));
        }

        // A text body that is not base64.
        let headers = [("content-type", TEXT)];
        let res = call(
            protocol,
            pylon.addr,
            "POST",
            "/demo.Echo/Say",
            &headers,
            b"not base64!",
        )
        .await;
        assert_eq!(res.status, 400, "{protocol:?}: {}", res.text());
        assert_eq!(res.json(), json!({"message": "the body is not base64"}));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_preflight_and_body_limit_apply() {
    let pylon = gateway(start_echo(Arc::default()).await);
    let route = json!({
        "uri": "/demo.Echo/*",
        "plugins": {"grpc-web": {"cors_allow_headers": "content-type,authorization", "max_req_body_size": 16}},
        "upstream": {"scheme": "grpc", "nodes": {"127.0.0.1:1": 1}},
    });
    let res = put(&pylon, "/apisix/admin/routes/echo", route);
    assert!(res.status < 300, "{}", res.text());
    wait_until(
        || {
            let conn = &mut Conn::connect(pylon.addr);
            let res = conn.request(
                b"OPTIONS /demo.Echo/Say HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
            );
            res.header("access-control-allow-headers") == Some("content-type,authorization")
        },
        "the new configuration to be served",
    );
    for protocol in PROTOCOLS {
        let res = call(protocol, pylon.addr, "OPTIONS", "/demo.Echo/Say", &[], b"").await;
        assert_eq!(res.status, 204, "{protocol:?}");
        assert_eq!(
            res.header("access-control-allow-headers"),
            Some("content-type,authorization")
        );
        let long = note("a note longer than sixteen bytes");
        let res = web_call(protocol, &pylon, "/demo.Echo/Say", BINARY, &[], &long).await;
        assert_eq!(res.status, 413, "{protocol:?}: {}", res.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configs_are_refused_with_the_field() {
    let pylon = start_pylon();
    let refused = |plugin: Value, field: &str, reason: &str| {
        let res = put(
            &pylon,
            "/apisix/admin/routes/r",
            json!({"uri": "/r/*", "plugins": {"grpc-web": plugin},
                "upstream": {"scheme": "grpc", "nodes": {"127.0.0.1:1": 1}}}),
        );
        assert_eq!(res.status, 400, "{}", res.text());
        let message = res.json()["error_msg"].as_str().unwrap().to_owned();
        let expected = format!("plugins.grpc-web.{field}: {reason}");
        assert!(message.contains(&expected), "{message}\nwanted: {expected}");
    };
    refused(
        json!({"cors_allow_headers": "content-type;x-token"}),
        "cors_allow_headers",
        "must be header names separated by commas: `content-type;x-token` is not one",
    );
    refused(
        json!({"cors_allow_headers": 5}),
        "cors_allow_headers",
        "invalid type",
    );
    refused(
        json!({"max_req_body_size": 0}),
        "max_req_body_size",
        "must be at least 1",
    );
}
