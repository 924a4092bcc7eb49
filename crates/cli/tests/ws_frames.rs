//! WebSocket clients bridged to a framed-protocol stream route (`websocket-frames`) through
//! the real binary: the gateway answers the upgrade itself, and each message is a call of the
//! stream route's commands, served as its TCP clients' frames are: binary messages carry
//! HelloTalk's frames, text messages JSON calls (checked against a proto's messages); many
//! calls in flight are answered as they end; unknown commands and failed calls get error
//! messages; bad messages close the WebSocket with the code that fits and are counted; the
//! plugins of the upgrade's route and of the commands' routes apply; a plugin naming a stream
//! route that does not speak frames is refused; silent clients and the worker's shutdown
//! close with 1001. In `tcp` mode the frames go to a framed TCP backend, the stream route's
//! upstream, and its frames come back as messages.
//!
//! WebSocket over HTTP/2 (RFC 8441) is not bridged: an HTTP/2 request, as an HTTP/1.1 one
//! that is not an upgrade, gets a 426.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

use support::client::{self, admin};
use support::frames::{
    connect_ws, errors, frames, next_message, protocol, wait_frame_metrics, Frame, Gate, Ws,
    IM_PROTO, ON_ERROR, UNKNOWN_COMMAND,
};
use support::upstream::{respond, Handler, Upstream};
use support::{http2, wait_until, Pylon, WAIT};

const ADMIN_KEY: &str = "test-admin-key";

// === the gateway ===

/// An HTTP route on `uri` to `backend`, with `plugins`.
fn http_route(id: &str, uri: &str, backend: &Upstream, plugins: Value) -> Value {
    json!({"id": id, "uri": uri, "plugins": plugins,
           "upstream": {"nodes": {backend.addr.to_string(): 1}}})
}

/// The route `/ws` bridging its WebSocket clients to the stream route `im` in `mode`, with
/// `plugins` besides.
fn ws_route(mode: &str, mut plugins: Value) -> Value {
    plugins["websocket-frames"] = json!({"stream_route_id": "im", "mode": mode});
    json!({"id": "ws", "uri": "/ws", "plugins": plugins})
}

/// A pylon on the standalone `routes` and the frames stream route `im` speaking `protocol`
/// (there is no stream listener: its WebSocket clients are its only ones).
fn gateway(routes: Value, protocol: Value, consumers: Value) -> Pylon {
    let doc = json!({
        "routes": routes,
        "consumers": consumers,
        "stream_routes": [{"id": "im", "protocol": protocol}],
    });
    Pylon::start(&doc.to_string(), "")
}

async fn answer_frame(ws: &mut Ws) -> Frame {
    match next_message(ws).await {
        Message::Binary(bytes) => Frame::from_bytes(&bytes),
        other => panic!("a binary message, not {other:?}"),
    }
}

async fn answer_json(ws: &mut Ws) -> Value {
    match next_message(ws).await {
        Message::Text(text) => serde_json::from_str(&text).unwrap(),
        other => panic!("a text message, not {other:?}"),
    }
}

/// Asserts that the gateway closes the WebSocket with `code`, and ends the connection.
async fn assert_closed_with(ws: &mut Ws, code: CloseCode) {
    match next_message(ws).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, code, "{frame:?}"),
        other => panic!("a close with {code}, not {other:?}"),
    }
    let rest = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("the end");
    assert!(
        matches!(rest, None | Some(Err(tungstenite::Error::ConnectionClosed))),
        "{rest:?}"
    );
}

/// A backend answering `200` with `answer`, or `500` for a body `fail`.
fn backend(answer: &'static [u8]) -> Upstream {
    Upstream::with_handler(
        "backend",
        Arc::new(move |request, stream| {
            let status = if request.body == b"fail" { 500 } else { 200 };
            respond(stream, status, &[], answer);
            true
        }),
    )
}

// === binary ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_messages_are_frames_answered_as_their_calls_end() {
    let gate = Arc::new(Gate::default());
    let held = gate.clone();
    let handler: Handler = Arc::new(move |request, stream| {
        let released = held.wait(request);
        let user = request
            .header("x-frame-user_id")
            .unwrap_or_default()
            .to_owned();
        let mut body = request.body.clone();
        body.extend_from_slice(format!(" from {user}").as_bytes());
        respond(stream, if released { 200 } else { 504 }, &[], &body);
        true
    });
    let slow = Upstream::with_handler("slow", handler);
    let commands = json!({"4099": {"uri": "/im/raw"}});
    let pylon = gateway(
        json!([
            http_route("raw", "/im/raw", &slow, json!({})),
            ws_route("binary", json!({}))
        ]),
        protocol(commands, json!({})),
        json!([]),
    );
    let mut ws = connect_ws(&pylon, "/ws").await;
    for sequence in 1..=4u32 {
        let frame = Frame::new(4099, sequence, format!("call {sequence}").as_bytes());
        ws.send(Message::binary(frame.encode())).await.unwrap();
    }
    wait_until(
        || slow.request_count() == 4,
        "the four calls at the backend at once",
    );
    // A ping meanwhile is answered.
    ws.send(Message::Ping(b"still there?".to_vec()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(pong, Message::Pong(b"still there?".to_vec()));
    for sequence in [3, 1, 4, 2] {
        gate.release(sequence);
        let answer = answer_frame(&mut ws).await;
        assert_eq!(
            answer,
            Frame {
                body: format!("call {sequence} from 123456").into_bytes(),
                ..Frame::new(4099, sequence, b"")
            },
            "answers come as calls end, with the request's header fields"
        );
    }
    // The client's close is answered.
    ws.close(None).await.unwrap();
    let rest = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("the end");
    assert!(
        matches!(rest, Some(Ok(Message::Close(_))) | None),
        "{rest:?}"
    );
    wait_frame_metrics(&pylon, &[(&frames("in"), 4.0), (&frames("out"), 4.0)]);

    // The upgrade is logged as the route's request; each call as the command route's.
    let lines = pylon.wait_access_log(5);
    let upgrade = lines.iter().find(|line| line["uri"] == "/ws").unwrap();
    assert_eq!(
        (&upgrade["status"], &upgrade["route_id"]),
        (&json!(101), &json!("ws"))
    );
    let calls = lines
        .iter()
        .filter(|line| line["route_id"] == "raw")
        .count();
    assert_eq!(calls, 4, "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_commands_and_failed_calls_get_the_error_frames() {
    let backend = backend(b"ok");
    let commands = json!({"4099": {"uri": "/im/raw"}});
    let pylon = gateway(
        json!([
            http_route("raw", "/im/raw", &backend, json!({})),
            ws_route("binary", json!({}))
        ]),
        protocol(commands, json!({})),
        json!([]),
    );
    let mut ws = connect_ws(&pylon, "/ws").await;
    ws.send(Message::binary(Frame::new(7, 1, b"x").encode()))
        .await
        .unwrap();
    assert_eq!(
        answer_frame(&mut ws).await,
        Frame::error(UNKNOWN_COMMAND, 1)
    );
    ws.send(Message::binary(Frame::new(4099, 2, b"fail").encode()))
        .await
        .unwrap();
    assert_eq!(answer_frame(&mut ws).await, Frame::error(ON_ERROR, 2));
    ws.send(Message::binary(Frame::new(4099, 3, b"x").encode()))
        .await
        .unwrap();
    assert_eq!(
        answer_frame(&mut ws).await.body,
        b"ok",
        "the WebSocket goes on"
    );
    wait_frame_metrics(
        &pylon,
        &[
            (&errors("unknown_command"), 1.0),
            (&errors("call_failed"), 1.0),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_that_are_not_one_frame_close_the_websocket_and_are_counted() {
    let backend = backend(b"ok");
    let commands = json!({"4099": {"uri": "/im/raw"}});
    let pylon = gateway(
        json!([
            http_route("raw", "/im/raw", &backend, json!({})),
            ws_route("binary", json!({}))
        ]),
        protocol(commands, json!({"max_body": 1024})),
        json!([]),
    );
    let frame = Frame::new(4099, 1, b"abc").encode();
    // A frame cut short, a frame with more after it, a bad end marker: invalid data.
    let cut = frame[..frame.len() - 2].to_vec();
    let doubled = [frame.clone(), frame.clone()].concat();
    let mut bad_end = frame.clone();
    *bad_end.last_mut().unwrap() = 0x0b;
    for message in [cut, doubled, bad_end] {
        let mut ws = connect_ws(&pylon, "/ws").await;
        ws.send(Message::binary(message)).await.unwrap();
        assert_closed_with(&mut ws, CloseCode::Invalid).await;
    }
    // Text where frames are expected: unsupported data.
    let mut ws = connect_ws(&pylon, "/ws").await;
    ws.send(Message::text("{}")).await.unwrap();
    assert_closed_with(&mut ws, CloseCode::Unsupported).await;
    // Longer than the longest frame (`max_body` 1024): too big, never read whole.
    let mut ws = connect_ws(&pylon, "/ws").await;
    ws.send(Message::binary(vec![0x09; 8 * 1024]))
        .await
        .unwrap();
    assert_closed_with(&mut ws, CloseCode::Size).await;
    wait_frame_metrics(
        &pylon,
        &[
            (&errors("truncated"), 1.0),
            (&errors("bad_end"), 1.0),
            (&errors("bad_message"), 3.0),
        ],
    );
    assert_eq!(backend.request_count(), 0, "no bad message became a call");
}

// === JSON ===

/// A backend for `/im/send`: it answers the JSON the test wants for each request's `text`,
/// and echoes the `X-Frame-*` headers it got in `headers`.
fn im_backend() -> Upstream {
    Upstream::with_handler(
        "im",
        Arc::new(|request, stream| {
            let sent: Value = serde_json::from_slice(&request.body).unwrap_or_default();
            let answer = match sent["text"].as_str() {
                Some("no json") => "<html>".to_owned(),
                Some("bad answer") => json!({"id": "not a number"}).to_string(),
                _ => json!({"id": 42, "status": format!("sent to {}", sent["to"])}).to_string(),
            };
            let status = if sent["text"] == "refuse" { 403 } else { 200 };
            respond(
                stream,
                status,
                &[("Content-Type", "application/json")],
                answer.as_bytes(),
            );
            true
        }),
    )
}

/// A node on the embedded store with an Admin API (and no stream listener).
fn admin_node() -> Pylon {
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

fn put(pylon: &Pylon, path: &str, body: &Value) -> client::Response {
    admin(pylon.admin.unwrap(), ADMIN_KEY, "PUT", path, Some(body))
}

/// PUTs `body` at `path`, which must be taken.
fn put_ok(pylon: &Pylon, path: &str, body: &Value) {
    let res = put(pylon, path, body);
    assert!(res.status < 300, "{}", res.text());
}

/// The frames protocol whose command 4097 is `/im/send` with `im`'s messages.
fn im_send_protocol() -> Value {
    let commands = json!({"4097": {"uri": "/im/send", "proto_id": "im",
                                   "request": "im.SendReq", "response": "im.SendResp"}});
    protocol(commands, json!({}))
}

/// Refused with `expected` in its message.
fn assert_refused(res: &client::Response, expected: &str) {
    assert_eq!(res.status, 400, "{}", res.text());
    let message = res.json()["error_msg"].as_str().unwrap().to_owned();
    assert!(message.contains(expected), "{message}\nwanted: {expected}");
}

#[test]
fn a_stream_route_or_proto_in_use_is_not_deleted_until_its_last_user_is() {
    let pylon = admin_node();
    let call =
        |method: &str, path: &str| admin(pylon.admin.unwrap(), ADMIN_KEY, method, path, None);
    put_ok(
        &pylon,
        "/apisix/admin/protos/im",
        &json!({"content": IM_PROTO}),
    );
    let stream_route = json!({"protocol": im_send_protocol()});
    put_ok(&pylon, "/apisix/admin/stream_routes/im", &stream_route);
    put_ok(
        &pylon,
        "/apisix/admin/routes/ws",
        &ws_route("json", json!({})),
    );

    // The route's plugin names the stream route, whose command names the proto.
    let refused = call("DELETE", "/apisix/admin/stream_routes/im");
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert_eq!(
        refused.json()["error_msg"],
        "can not delete this stream route, route [ws] is still using it now"
    );
    let refused = call("DELETE", "/apisix/admin/protos/im");
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert_eq!(
        refused.json()["error_msg"],
        "can not delete this proto, stream_route [im] is still using it now"
    );
    assert_eq!(call("GET", "/apisix/admin/stream_routes/im").status, 200);
    assert_eq!(call("GET", "/apisix/admin/protos/im").status, 200);

    assert_eq!(call("DELETE", "/apisix/admin/routes/ws").status, 200);
    assert_eq!(call("DELETE", "/apisix/admin/stream_routes/im").status, 200);
    assert_eq!(call("DELETE", "/apisix/admin/protos/im").status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_messages_are_json_calls_checked_against_the_proto_of_the_admin_api() {
    let backend = im_backend();
    let pylon = admin_node();
    put_ok(
        &pylon,
        "/apisix/admin/protos/im",
        &json!({"content": IM_PROTO}),
    );
    let route = http_route("send", "/im/send", &backend, json!({}));
    put_ok(&pylon, "/apisix/admin/routes/send", &route);

    // The plugin must name a stream route that speaks frames, and its fields be valid.
    let refused = put(
        &pylon,
        "/apisix/admin/routes/ws",
        &ws_route("json", json!({})),
    );
    assert_refused(
        &refused,
        "plugins.websocket-frames.stream_route_id: stream route `im` does not exist",
    );
    let plain = json!({"upstream": {"nodes": {backend.addr.to_string(): 1}}});
    put_ok(&pylon, "/apisix/admin/stream_routes/im", &plain);
    let refused = put(
        &pylon,
        "/apisix/admin/routes/ws",
        &ws_route("json", json!({})),
    );
    assert_refused(
        &refused,
        "plugins.websocket-frames.stream_route_id: stream route `im` does not speak frames",
    );
    let refused = put(
        &pylon,
        "/apisix/admin/routes/ws",
        &ws_route("text", json!({})),
    );
    assert_refused(&refused, "plugins.websocket-frames.mode");

    let stream_route = json!({"protocol": im_send_protocol()});
    put_ok(&pylon, "/apisix/admin/stream_routes/im", &stream_route);
    put_ok(
        &pylon,
        "/apisix/admin/routes/ws",
        &ws_route("json", json!({})),
    );

    let mut ws = served(&pylon).await;
    let call = json!({"command": 4097, "sequence": 1, "fields": {"user_id": 5},
                      "body": {"to": 7, "text": "hello", "tags": ["a"]}});
    ws.send(Message::text(call.to_string())).await.unwrap();
    assert_eq!(
        answer_json(&mut ws).await,
        json!({"command": 4097, "sequence": 1, "body": {"id": 42, "status": "sent to 7"}})
    );
    let got = backend.last();
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.header("x-frame-user_id"), Some("5"));
    assert_eq!(got.header("x-frame-sequence"), Some("1"));
    let sent: Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(
        sent,
        json!({"to": 7, "text": "hello", "tags": ["a"]}),
        "the body as it is"
    );

    // A body that is not a SendReq never leaves; a refusal, an answer that is not JSON or
    // not a SendResp are failed calls. Each gets an error message; the WebSocket goes on.
    let before = backend.request_count();
    let call = json!({"command": 4097, "sequence": 2, "body": {"to": "seven"}});
    ws.send(Message::text(call.to_string())).await.unwrap();
    let answer = answer_json(&mut ws).await;
    assert_eq!(
        (&answer["sequence"], &answer["error"]["status"]),
        (&json!(2), &json!(400)),
        "{answer}"
    );
    assert_eq!(backend.request_count(), before);
    for (sequence, text, status) in [
        (3, "refuse", 403),
        (4, "no json", 502),
        (5, "bad answer", 502),
    ] {
        let call = json!({"command": 4097, "sequence": sequence, "body": {"text": text}});
        ws.send(Message::text(call.to_string())).await.unwrap();
        let answer = answer_json(&mut ws).await;
        assert_eq!(answer["command"], 4097, "{answer}");
        assert_eq!(answer["sequence"], sequence, "{answer}");
        assert_eq!(answer["error"]["status"], status, "{answer}");
        assert!(answer["error"]["message"].is_string(), "{answer}");
    }
    // An unknown command: an error message (the protocol answers unknown commands).
    ws.send(Message::text(
        json!({"command": 9, "sequence": 6}).to_string(),
    ))
    .await
    .unwrap();
    let answer = answer_json(&mut ws).await;
    assert_eq!(
        (&answer["sequence"], &answer["error"]["status"]),
        (&json!(6), &json!(404)),
        "{answer}"
    );
    wait_frame_metrics(
        &pylon,
        &[
            (&errors("call_failed"), 4.0),
            (&errors("unknown_command"), 1.0),
        ],
    );

    // JSON that is not a call: invalid data, counted.
    ws.send(Message::text("{\"command\": \"send\"}"))
        .await
        .unwrap();
    assert_closed_with(&mut ws, CloseCode::Invalid).await;
    let mut ws = connect_ws(&pylon, "/ws").await;
    ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_closed_with(&mut ws, CloseCode::Unsupported).await;
    wait_frame_metrics(&pylon, &[(&errors("bad_message"), 2.0)]);
}

/// A WebSocket on `/ws` once the route is served: a route written through the Admin API
/// takes effect when the configuration is published.
async fn served(pylon: &Pylon) -> Ws {
    let url = format!("ws://{}/ws", pylon.addr);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Ok((ws, _)) = tokio_tungstenite::connect_async(&url).await {
            return ws;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the bridge route to be served"
        );
        tokio::task::yield_now().await;
    }
}

#[test]
fn a_standalone_file_with_json_calls_and_a_standalone_proto() {
    let backend = im_backend();
    let doc = json!({
        "protos": [{"id": "im", "content": IM_PROTO}],
        "routes": [http_route("send", "/im/send", &backend, json!({})), ws_route("json", json!({}))],
        "stream_routes": [{"id": "im", "protocol": im_send_protocol()}],
    });
    let pylon = Pylon::start(&doc.to_string(), "");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut ws = connect_ws(&pylon, "/ws").await;
        let call = json!({"command": 4097, "sequence": 8, "body": {"to": 1, "text": "hi"}});
        ws.send(Message::text(call.to_string())).await.unwrap();
        assert_eq!(
            answer_json(&mut ws).await,
            json!({"command": 4097, "sequence": 8, "body": {"id": 42, "status": "sent to 1"}})
        );
    });
}

// === plugins ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routes_plugins_apply_to_the_upgrade_and_to_each_call() {
    let backend = backend(b"ok");
    let commands = json!({"4099": {"uri": "/im/raw"}, "4100": {"uri": "/im/closed"}});
    let closed = json!({"ip-restriction": {"blacklist": ["127.0.0.1"]}});
    let pylon = gateway(
        json!([
            http_route("raw", "/im/raw", &backend, json!({})),
            http_route("closed", "/im/closed", &backend, closed),
            ws_route("binary", json!({"key-auth": {}})),
        ]),
        protocol(commands, json!({})),
        json!([{"username": "jack", "plugins": {"key-auth": {"key": "jack-key"}}}]),
    );
    // The upgrade's route: without a key, no WebSocket.
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/ws", pylon.addr)).await;
    match refused {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("a 401, not {other:?}"),
    }
    let mut request = tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{}/ws",
        pylon.addr
    ))
    .unwrap();
    request
        .headers_mut()
        .insert("apikey", "jack-key".parse().unwrap());
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.status(), 101);

    // The command's route: its ip-restriction refuses the call, which gets the error frame.
    ws.send(Message::binary(Frame::new(4100, 1, b"x").encode()))
        .await
        .unwrap();
    assert_eq!(answer_frame(&mut ws).await, Frame::error(ON_ERROR, 1));
    ws.send(Message::binary(Frame::new(4099, 2, b"x").encode()))
        .await
        .unwrap();
    assert_eq!(answer_frame(&mut ws).await.body, b"ok");
    assert_eq!(backend.request_count(), 1, "the refused call never left");
}

// === not an upgrade ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_are_not_an_http1_upgrade_get_426() {
    let pylon = gateway(
        json!([ws_route("binary", json!({}))]),
        protocol(json!({"1": {"uri": "/one"}}), json!({})),
        json!([]),
    );
    let addr: SocketAddr = pylon.addr;
    let plain = tokio::task::spawn_blocking(move || client::get(addr, "localhost", "/ws"))
        .await
        .unwrap();
    assert_eq!(plain.status, 426, "{}", plain.text());
    assert!(plain.text().contains("WebSocket"), "{}", plain.text());

    let mut h2 = http2::connect(pylon.addr).await;
    let reply = http2::send(
        &mut h2.sender,
        http2::request("GET", "/ws").body(()).unwrap(),
        b"",
    )
    .await;
    assert_eq!(reply.status, 426, "{}", reply.text());
    assert_eq!(reply.text(), plain.text(), "the same answer");
}

// === shutdown ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_gateway_closes_with_1001() {
    let backend = backend(b"ok");
    let commands = json!({"4099": {"uri": "/im/raw"}});
    let pylon = gateway(
        json!([
            http_route("raw", "/im/raw", &backend, json!({})),
            ws_route("binary", json!({}))
        ]),
        protocol(commands, json!({})),
        json!([]),
    );
    let mut ws = connect_ws(&pylon, "/ws").await;
    ws.send(Message::binary(Frame::new(4099, 1, b"x").encode()))
        .await
        .unwrap();
    assert_eq!(answer_frame(&mut ws).await.body, b"ok");
    pylon.terminate();
    assert_closed_with(&mut ws, CloseCode::Away).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_after_the_read_timeout() {
    let pylon = gateway(
        json!([ws_route("binary", json!({}))]),
        protocol(json!({"1": {"uri": "/one"}}), json!({"read_timeout": 1})),
        json!([]),
    );
    let mut ws = connect_ws(&pylon, "/ws").await;
    assert_closed_with(&mut ws, CloseCode::Away).await;
    wait_frame_metrics(&pylon, &[(&errors("timeout"), 1.0)]);
}

// === a framed TCP backend ===

/// A backend speaking HelloTalk's frames over TCP: it greets each connection with a frame of
/// its own (command 9, sequence 0), then answers each frame with its body after `echo: `,
/// and closes after a frame whose body is `bye`.
fn framed_backend() -> SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let hello = Frame::new(9, 0, b"hello");
                if stream.write_all(&hello.encode()).is_err() {
                    return;
                }
                loop {
                    let mut header = [0u8; 21];
                    if stream.read_exact(&mut header).is_err() {
                        return;
                    }
                    let length = u32::from_be_bytes(header[1..5].try_into().unwrap()) as usize;
                    let mut rest = vec![0; length + 1];
                    if stream.read_exact(&mut rest).is_err() {
                        return;
                    }
                    let frame = Frame::from_bytes(&[&header[..], &rest].concat());
                    if frame.body == b"bye" {
                        return;
                    }
                    let body = [&b"echo: "[..], &frame.body].concat();
                    let answer = Frame { body, ..frame };
                    if stream.write_all(&answer.encode()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_tcp_mode_frames_are_relayed_to_the_stream_routes_framed_backend() {
    let backend = framed_backend();
    let doc = json!({
        "routes": [ws_route("tcp", json!({}))],
        "stream_routes": [{"id": "im", "protocol": protocol(json!({"1": {"uri": "/one"}}), json!({})),
                           "upstream": {"nodes": {backend.to_string(): 1}}}],
    });
    let pylon = Pylon::start(&doc.to_string(), "");
    let mut ws = connect_ws(&pylon, "/ws").await;
    // The backend's own frames come as they are sent, each in a message of its own.
    assert_eq!(answer_frame(&mut ws).await, Frame::new(9, 0, b"hello"));
    for sequence in [1, 2] {
        let frame = Frame::new(4099, sequence, format!("call {sequence}").as_bytes());
        ws.send(Message::binary(frame.encode())).await.unwrap();
    }
    for sequence in [1, 2] {
        let answer = answer_frame(&mut ws).await;
        assert_eq!(
            answer,
            Frame::new(4099, sequence, format!("echo: call {sequence}").as_bytes())
        );
    }
    // The backend closing closes the WebSocket.
    ws.send(Message::binary(Frame::new(4099, 3, b"bye").encode()))
        .await
        .unwrap();
    assert_closed_with(&mut ws, CloseCode::Normal).await;

    // A message that is not one frame never reaches the backend.
    let mut ws = connect_ws(&pylon, "/ws").await;
    assert_eq!(answer_frame(&mut ws).await.command, 9);
    let frame = Frame::new(4099, 4, b"x").encode();
    ws.send(Message::binary(frame[..frame.len() - 1].to_vec()))
        .await
        .unwrap();
    assert_closed_with(&mut ws, CloseCode::Invalid).await;
    wait_frame_metrics(
        &pylon,
        &[
            (&frames("in"), 3.0),
            (&frames("out"), 4.0),
            (&errors("truncated"), 1.0),
        ],
    );
}

#[test]
fn tcp_mode_needs_a_stream_route_with_an_upstream() {
    let pylon = admin_node();
    let stream_route = json!({"protocol": protocol(json!({"1": {"uri": "/one"}}), json!({}))});
    put_ok(&pylon, "/apisix/admin/stream_routes/im", &stream_route);
    let refused = put(
        &pylon,
        "/apisix/admin/routes/ws",
        &ws_route("tcp", json!({})),
    );
    assert_refused(
        &refused,
        "plugins.websocket-frames.stream_route_id: stream route `im` has no upstream for `mode: tcp` to relay frames to",
    );
}
