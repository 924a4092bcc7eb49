//! Server-initiated frames through the real binary: a frames client (TCP, or a WebSocket
//! bridged in binary or JSON mode) whose login call is answered with
//! `X-Frame-Connection-Key` is bound to that key, and a backend's `POST` to a `frames-push`
//! route reaches it as a frame with its own sequence id, between the client's answers. The
//! newest connection bound to a key takes it; a closed one leaves it; a client that does not
//! read fills its queue and further pushes are refused with 503, never waited for; bad push
//! requests get a 400 naming the header; the push route's `key-auth` applies. Every push
//! request behaviour holds over HTTP/1.1 and HTTP/2 alike.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use support::client::{admin, Response};
use support::frames::{
    connect_ws, frame_metrics, next_message, protocol, stream_addr, wait_frame_metrics, Frame,
    FrameClient, SendResp, IM_PROTO, STREAM_LISTENER,
};
use support::protocols::{call, Protocol, PROTOCOLS};
use support::upstream::{respond, Upstream};
use support::{wait_until, Pylon};

/// The login command: its answer binds the connection to `user-<user_id>`.
const LOGIN: u16 = 4097;
/// A plain call, answered with its body.
const ECHO: u16 = 4099;
/// The command of the frames pushed.
const NOTICE: u16 = 8193;
/// A command whose bodies are `im` messages: its answers (and frames pushed) are `SendResp`s.
const SEND: u16 = 4101;

/// A backend that logs users in (`/im/login`: `200 {"ok":true}` binding the connection to
/// `user-<X-Frame-user_id>`) and echoes (`/im/echo`).
fn backend() -> Upstream {
    Upstream::with_handler(
        "im",
        Arc::new(|request, stream| {
            if request.target.starts_with("/im/login") {
                let user = request.header("x-frame-user_id").unwrap_or_default();
                let key = format!("user-{user}");
                let headers = [("X-Frame-Connection-Key", key.as_str())];
                respond(stream, 200, &headers, br#"{"ok":true}"#);
            } else {
                respond(stream, 200, &[], &request.body);
            }
            true
        }),
    )
}

/// A pylon with the frames stream route `im` (`extra` in its `protocol.conf`), the HTTP routes
/// its commands call, WebSocket routes bridging to it (`/ws/binary`, `/ws/json`), and push
/// routes to it: `/push`, and `/push/auth` behind `key-auth` (consumer `jack`, `jack-key`).
fn gateway(backend: &Upstream, extra: Value) -> (Pylon, SocketAddr) {
    let node = json!({backend.addr.to_string(): 1});
    let commands = json!({
        LOGIN.to_string(): {"uri": "/im/login"},
        ECHO.to_string(): {"uri": "/im/echo"},
        SEND.to_string(): {"uri": "/im/send", "proto_id": "im",
                           "request": "im.SendReq", "response": "im.SendResp"},
    });
    let bridge = |id: &str, mode: &str| {
        json!({"id": id, "uri": format!("/ws/{mode}"),
               "plugins": {"websocket-frames": {"stream_route_id": "im", "mode": mode}}})
    };
    let doc = json!({
        "routes": [
            {"id": "im", "uri": "/im/*", "upstream": {"nodes": node}},
            bridge("ws-binary", "binary"),
            bridge("ws-json", "json"),
            {"id": "push", "uri": "/push", "plugins": {"frames-push": {"stream_route_id": "im"}}},
            {"id": "push-auth", "uri": "/push/auth",
             "plugins": {"key-auth": {}, "frames-push": {"stream_route_id": "im"}}},
        ],
        "consumers": [{"username": "jack", "plugins": {"key-auth": {"key": "jack-key"}}}],
        "protos": [{"id": "im", "content": IM_PROTO}],
        "stream_routes": [{"id": "im", "protocol": protocol(commands, extra)}],
    });
    let pylon = Pylon::start(&doc.to_string(), STREAM_LISTENER);
    let addr = stream_addr(&pylon);
    (pylon, addr)
}

/// A frame client logged in as `user-<user>`.
fn logged_in(addr: SocketAddr, user: u32) -> FrameClient {
    let mut client = FrameClient::connect(addr);
    client.send(&Frame {
        user_id: user,
        ..Frame::new(LOGIN, 1, b"")
    });
    let answer = client.answer();
    assert_eq!((answer.command, answer.sequence), (LOGIN, 1));
    assert_eq!(answer.body, br#"{"ok":true}"#);
    client
}

/// Pushes `body` as a `NOTICE` to `key` through `path`, with `headers` besides.
async fn push(
    protocol: Protocol,
    pylon: &Pylon,
    path: &str,
    key: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let command = NOTICE.to_string();
    let mut all = vec![
        ("X-Frame-Connection-Key", key),
        ("X-Frame-Command", command.as_str()),
    ];
    all.extend_from_slice(headers);
    call(protocol, pylon.addr, "POST", path, &all, body).await
}

/// A pushed frame: its command and body, its own sequence id, no header field set.
fn pushed(sequence: u32, body: &[u8]) -> Frame {
    Frame {
        version: 0,
        flags: 0,
        user_id: 0,
        ..Frame::new(NOTICE, sequence, body)
    }
}

fn assert_error(res: &Response, status: u16, message: &str, what: &str) {
    assert_eq!(res.status, status, "{what}: {}", res.text());
    assert_eq!(res.json(), json!({"error_msg": message}), "{what}");
}

fn bound(pylon: &Pylon) -> f64 {
    frame_metrics(pylon)["pylon_frames_connections_bound"]
}

// === TCP clients ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logged_in_client_gets_pushed_frames_between_its_answers() {
    let backend = backend();
    let (pylon, addr) = gateway(&backend, json!({}));
    assert_eq!(bound(&pylon), 0.0);
    let mut client = logged_in(addr, 7);
    wait_frame_metrics(&pylon, &[("pylon_frames_connections_bound", 1.0)]);

    let mut sequence = 0;
    for protocol in PROTOCOLS {
        // A call in flight, and a push: both arrive, whole.
        sequence += 1;
        let body = format!("news {sequence} over {protocol:?}");
        client.send(&Frame::new(ECHO, 100 + sequence, b"echo"));
        let res = push(protocol, &pylon, "/push", "user-7", &[], body.as_bytes()).await;
        assert_eq!(res.status, 202, "{protocol:?}: {}", res.text());
        assert_eq!(res.json(), json!({"sequence": sequence}), "{protocol:?}");
        let mut got = [client.answer(), client.answer()];
        got.sort_by_key(|frame| frame.command);
        assert_eq!(
            got,
            [
                Frame::new(ECHO, 100 + sequence, b"echo"),
                pushed(sequence, body.as_bytes())
            ],
            "{protocol:?}"
        );

        // The key as a query argument.
        sequence += 1;
        let target = "/push?key=user-7";
        let headers = [("X-Frame-Command", "8193")];
        let res = call(protocol, pylon.addr, "POST", target, &headers, b"by arg").await;
        assert_eq!(res.status, 202, "{protocol:?}: {}", res.text());
        assert_eq!(client.answer(), pushed(sequence, b"by arg"), "{protocol:?}");

        let res = push(protocol, &pylon, "/push", "nobody", &[], b"lost").await;
        assert_error(
            &res,
            404,
            "no connection for key `nobody`",
            "an unknown key",
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_connection_of_a_key_takes_it_and_a_closed_one_leaves_it() {
    let backend = backend();
    let (pylon, addr) = gateway(&backend, json!({}));
    let mut first = logged_in(addr, 7);
    let mut second = logged_in(addr, 7);
    for protocol in PROTOCOLS {
        let res = push(protocol, &pylon, "/push", "user-7", &[], b"to the newest").await;
        assert_eq!(res.status, 202, "{protocol:?}: {}", res.text());
        assert_eq!(second.answer().body, b"to the newest", "{protocol:?}");
    }
    // The first connection is open, and unreachable by the key: its next frame is an answer.
    first.send(&Frame::new(ECHO, 2, b"still here"));
    assert_eq!(first.answer(), Frame::new(ECHO, 2, b"still here"));
    wait_frame_metrics(&pylon, &[("pylon_frames_connections_bound", 1.0)]);

    drop(second);
    wait_frame_metrics(&pylon, &[("pylon_frames_connections_bound", 0.0)]);
    for protocol in PROTOCOLS {
        let res = push(protocol, &pylon, "/push", "user-7", &[], b"gone").await;
        assert_error(
            &res,
            404,
            "no connection for key `user-7`",
            "after the close",
        );
    }
    // Logging in again binds again.
    let mut again = logged_in(addr, 7);
    let res = push(Protocol::Http1, &pylon, "/push", "user-7", &[], b"back").await;
    assert_eq!(res.status, 202, "{}", res.text());
    assert_eq!(again.answer(), pushed(1, b"back"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_fills_its_queue_and_pushes_are_refused() {
    let backend = backend();
    let (pylon, addr) = gateway(&backend, json!({}));
    let mut client = logged_in(addr, 7);
    let body = vec![b'x'; 60 * 1024];
    for protocol in PROTOCOLS {
        // The socket buffers fill, then the queue: the push API never waits for the client.
        let mut accepted = 0;
        let refused = loop {
            assert!(accepted < 2000, "{protocol:?}: no push refused");
            let res = push(protocol, &pylon, "/push", "user-7", &[], &body).await;
            if res.status != 202 {
                break res;
            }
            accepted += 1;
        };
        let full = "the push queue of key `user-7` is full";
        assert_error(&refused, 503, full, "a full queue");
        // The client reads, and gets every frame accepted, in order.
        let first = client.answer();
        assert_eq!((first.command, first.body.len()), (NOTICE, body.len()));
        let mut last = first.sequence;
        for _ in 1..accepted {
            let next = client.answer();
            assert_eq!(next.sequence, last + 1, "{protocol:?}");
            last = next.sequence;
        }
        let res = push(protocol, &pylon, "/push", "user-7", &[], b"room again").await;
        assert_eq!(res.status, 202, "{protocol:?}: {}", res.text());
        assert_eq!(client.answer().body, b"room again", "{protocol:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_push_requests_are_refused_naming_the_header() {
    let backend = backend();
    let (pylon, addr) = gateway(&backend, json!({"max_body": 16}));
    let mut client = logged_in(addr, 7);
    // Requests refused before their body is read have none: an HTTP/2 stream answered early
    // is reset, which would cut a body still on its way.
    for protocol in PROTOCOLS {
        let addr = pylon.addr;
        let no_key = call(
            protocol,
            addr,
            "POST",
            "/push",
            &[("X-Frame-Command", "1")],
            b"x",
        );
        let required = "X-Frame-Connection-Key: required (or the `key` query argument)";
        assert_error(&no_key.await, 400, required, "no key");
        let key = ("X-Frame-Connection-Key", "user-7");
        let no_command = call(protocol, addr, "POST", "/push", &[key], b"").await;
        assert_error(&no_command, 400, "X-Frame-Command: required", "no command");
        let headers = [key, ("X-Frame-Command", "notice")];
        let words = call(protocol, addr, "POST", "/push", &headers, b"").await;
        let not_id = "X-Frame-Command: `notice` is not a command id (a decimal integer)";
        assert_error(&words, 400, not_id, "a command that is not a number");
        let headers = [key, ("X-Frame-Command", "70000")];
        let wide = call(protocol, addr, "POST", "/push", &headers, b"x").await;
        let too_wide = "X-Frame-Command: command 70000 does not fit in 2 bytes";
        assert_error(&wide, 400, too_wide, "a command wider than its field");
        let long = push(protocol, &pylon, "/push", "user-7", &[], &[b'x'; 17]).await;
        let over = "body: longer than 16 bytes, the most a push takes";
        assert_error(&long, 413, over, "a body over max_body");
        let get = call(protocol, addr, "GET", "/push", &headers, b"").await;
        assert_error(&get, 405, "frames-push takes POST", "a GET");
        assert_eq!(get.header("allow"), Some("POST"), "{protocol:?}");
    }
    // None of them reached the client: the next push is its first frame.
    let res = push(Protocol::Http1, &pylon, "/push", "user-7", &[], b"fine").await;
    assert_eq!(res.status, 202, "{}", res.text());
    assert_eq!(client.answer(), pushed(1, b"fine"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_push_routes_plugins_apply() {
    let backend = backend();
    let (pylon, addr) = gateway(&backend, json!({}));
    let mut client = logged_in(addr, 7);
    let mut sequence = 0;
    for protocol in PROTOCOLS {
        let res = push(protocol, &pylon, "/push/auth", "user-7", &[], b"").await;
        assert_eq!(res.status, 401, "{protocol:?}: {}", res.text());
        let apikey = [("apikey", "jack-key")];
        let res = push(protocol, &pylon, "/push/auth", "user-7", &apikey, b"jack's").await;
        assert_eq!(res.status, 202, "{protocol:?}: {}", res.text());
        sequence += 1;
        assert_eq!(client.answer(), pushed(sequence, b"jack's"), "{protocol:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_push_of_a_command_with_messages_is_encoded_as_its_response() {
    let backend = backend();
    let (pylon, addr) = gateway(&backend, json!({}));
    let mut client = logged_in(addr, 7);
    let json_body = ("Content-Type", "application/json");
    let key = ("X-Frame-Connection-Key", "user-7");
    let send = SEND.to_string();
    let headers = [json_body, key, ("X-Frame-Command", send.as_str())];
    let mut sequence = 0;
    for protocol in PROTOCOLS {
        let note = json!({"id": 42, "status": format!("over {protocol:?}")}).to_string();
        let res = call(
            protocol,
            pylon.addr,
            "POST",
            "/push",
            &headers,
            note.as_bytes(),
        )
        .await;
        assert_eq!(res.status, 202, "{protocol:?}: {}", res.text());
        sequence += 1;
        let frame = client.answer();
        assert_eq!((frame.command, frame.sequence), (SEND, sequence));
        let message = <SendResp as prost::Message>::decode(&frame.body[..]).unwrap();
        let status = format!("over {protocol:?}");
        assert_eq!(message, SendResp { id: 42, status }, "{protocol:?}");

        let wrong = call(
            protocol,
            pylon.addr,
            "POST",
            "/push",
            &headers,
            br#"{"id": "x"}"#,
        );
        let wrong = wrong.await;
        assert_eq!(wrong.status, 400, "{protocol:?}: {}", wrong.text());
        let message = wrong.json()["error_msg"].as_str().unwrap().to_owned();
        assert!(
            message.starts_with("body: not a `im.SendResp`: "),
            "{message}"
        );
        let not_json = call(protocol, pylon.addr, "POST", "/push", &headers, b"<xml/>").await;
        assert_eq!(not_json.status, 400, "{protocol:?}: {}", not_json.text());
    }
    // Without the JSON content type, the body goes as it is.
    let raw = SendResp {
        id: 7,
        status: "raw".into(),
    };
    let raw = prost::Message::encode_to_vec(&raw);
    let headers = [key, ("X-Frame-Command", send.as_str())];
    let res = call(Protocol::Http1, pylon.addr, "POST", "/push", &headers, &raw).await;
    assert_eq!(res.status, 202, "{}", res.text());
    assert_eq!(client.answer().body, raw);

    // A bridged JSON client gets the message decoded back to JSON.
    let mut text = connect_ws(&pylon, "/ws/json").await;
    let login = json!({"command": LOGIN, "sequence": 1, "fields": {"user_id": 9}});
    text.send(Message::text(login.to_string())).await.unwrap();
    assert!(matches!(next_message(&mut text).await, Message::Text(_)));
    let headers = [
        json_body,
        ("X-Frame-Connection-Key", "user-9"),
        ("X-Frame-Command", send.as_str()),
    ];
    let note = br#"{"id": 5, "status": "to the browser"}"#;
    let res = call(Protocol::Http2, pylon.addr, "POST", "/push", &headers, note).await;
    assert_eq!(res.status, 202, "{}", res.text());
    let Message::Text(message) = next_message(&mut text).await else {
        panic!("a text push");
    };
    let message: Value = serde_json::from_str(&message).unwrap();
    assert_eq!(
        (&message["command"], &message["sequence"]),
        (&json!(SEND), &json!(1))
    );
    assert_eq!(message["body"]["status"], "to the browser", "{message}");
}

// === the Admin API ===

const ADMIN_KEY: &str = "test-admin-key";

#[test]
fn a_push_route_must_name_a_stream_route_that_speaks_frames() {
    let node = format!(
        "proxy:\n  listen: [\"127.0.0.1:0\"]\n  workers: 1\n\
         admin:\n  listen: \"127.0.0.1:0\"\n  admin_key:\n    - {{name: admin, key: {ADMIN_KEY}, role: admin}}\n\
         config:\n  source: embedded\n  data_dir: data\n"
    );
    let pylon = Pylon::run_node(tempfile::tempdir().unwrap(), &node)
        .unwrap_or_else(|e| panic!("pylon did not start: {e}"));
    let put =
        |path: &str, body: &Value| admin(pylon.admin.unwrap(), ADMIN_KEY, "PUT", path, Some(body));
    let assert_refused = |res: Response, expected: &str| {
        assert_eq!(res.status, 400, "{}", res.text());
        assert!(
            res.text().contains(expected),
            "{} lacks {expected}",
            res.text()
        );
    };
    let route = json!({"uri": "/push", "plugins": {"frames-push": {"stream_route_id": "im"}}});
    let path = "/apisix/admin/routes/push";
    assert_refused(
        put(path, &route),
        "plugins.frames-push.stream_route_id: stream route `im` does not exist",
    );
    let plain = json!({"upstream": {"nodes": {"127.0.0.1:9": 1}}});
    let res = put("/apisix/admin/stream_routes/im", &plain);
    assert!(res.status < 300, "{}", res.text());
    assert_refused(
        put(path, &route),
        "plugins.frames-push.stream_route_id: stream route `im` does not speak frames",
    );
    let commands = json!({LOGIN.to_string(): {"uri": "/im/login"}});
    let frames = json!({"protocol": protocol(commands, json!({}))});
    let res = put("/apisix/admin/stream_routes/im", &frames);
    assert!(res.status < 300, "{}", res.text());
    let res = put(path, &route);
    assert!(res.status < 300, "{}", res.text());
    let no_id = json!({"uri": "/push", "plugins": {"frames-push": {}}});
    assert_refused(put(path, &no_id), "stream_route_id");
}

// === WebSocket clients ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridged_websockets_get_pushed_frames_as_messages() {
    let backend = backend();
    let (pylon, _) = gateway(&backend, json!({}));

    // Binary: the login is a frame; the push, one frame in one binary message.
    let mut binary = connect_ws(&pylon, "/ws/binary").await;
    let login = Frame {
        user_id: 8,
        ..Frame::new(LOGIN, 1, b"")
    };
    binary.send(Message::binary(login.encode())).await.unwrap();
    let Message::Binary(answer) = next_message(&mut binary).await else {
        panic!("a binary answer");
    };
    assert_eq!(Frame::from_bytes(&answer).body, br#"{"ok":true}"#);

    // JSON: the login is a JSON call; the push, `{"command", "sequence", "body"}`.
    let mut text = connect_ws(&pylon, "/ws/json").await;
    let login = json!({"command": LOGIN, "sequence": 1, "fields": {"user_id": 9}});
    text.send(Message::text(login.to_string())).await.unwrap();
    let Message::Text(answer) = next_message(&mut text).await else {
        panic!("a text answer");
    };
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["body"], json!({"ok": true}));
    wait_frame_metrics(&pylon, &[("pylon_frames_connections_bound", 2.0)]);

    let mut sequence = 0;
    for protocol in PROTOCOLS {
        sequence += 1;
        let res = push(protocol, &pylon, "/push", "user-8", &[], b"\x00\x01bytes").await;
        assert_eq!(res.status, 202, "{protocol:?}: {}", res.text());
        let Message::Binary(message) = next_message(&mut binary).await else {
            panic!("{protocol:?}: a binary push");
        };
        assert_eq!(
            Frame::from_bytes(&message),
            pushed(sequence, b"\x00\x01bytes"),
            "{protocol:?}"
        );

        let json_body = [("Content-Type", "application/json")];
        let note = br#"{"text":"hi"}"#;
        let res = push(protocol, &pylon, "/push", "user-9", &json_body, note).await;
        assert_eq!(res.status, 202, "{protocol:?}: {}", res.text());
        let Message::Text(message) = next_message(&mut text).await else {
            panic!("{protocol:?}: a text push");
        };
        let message: Value = serde_json::from_str(&message).unwrap();
        assert_eq!(
            message,
            json!({"command": NOTICE, "sequence": sequence, "body": {"text": "hi"}}),
            "{protocol:?}"
        );
    }

    // A closed WebSocket leaves its key.
    binary.close(None).await.unwrap();
    wait_until(
        || bound(&pylon) == 1.0,
        "the closed WebSocket's binding gone",
    );
    for protocol in PROTOCOLS {
        let res = push(protocol, &pylon, "/push", "user-8", &[], b"gone").await;
        assert_error(
            &res,
            404,
            "no connection for key `user-8`",
            "a closed WebSocket",
        );
    }
}
