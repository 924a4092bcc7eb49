//! The framed-protocol gateway through the real binary: a client speaking HelloTalk's frames
//! (`0x09`, a 20-byte header, the body, `0x0A`) to a stream route with `protocol:
//! pylon-frames`, each frame becoming an HTTP request to a backend that records what it gets.
//! Bodies pass as bytes with the header fields as `X-Frame-*` headers, or convert to and from
//! JSON with a proto sent to the Admin API; many frames in flight are answered as their calls
//! end; a route's plugins apply to frames; failed calls, unknown commands, bad frames and
//! silent clients get the configured error frames or a close, and are counted in the metrics;
//! each frame's request is an access log line with the frame client's address.

mod support;

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use prost::Message;
use serde_json::{json, Value};
use support::client::{admin, Response};
use support::frames::{
    errors, frames, protocol, stream_addr, wait_frame_metrics, Frame, FrameClient, Gate, SendResp,
    HEADER, IM_PROTO, ON_ERROR, STREAM_LISTENER, UNKNOWN_COMMAND,
};
use support::upstream::{respond, Handler, Upstream};
use support::{wait_until, Pylon};

const ADMIN_KEY: &str = "test-admin-key";

// === the gateway ===

/// A pylon on the standalone `routes` (HTTP routes) and one frames stream route speaking
/// `protocol`, and the address of its stream listener.
fn gateway(routes: Value, protocol: Value) -> (Pylon, SocketAddr) {
    let doc = json!({
        "routes": routes,
        "stream_routes": [{"id": "im", "protocol": protocol}],
    });
    let pylon = Pylon::start(&doc.to_string(), STREAM_LISTENER);
    let addr = stream_addr(&pylon);
    (pylon, addr)
}

/// An HTTP route on `uri` to `backend`, with `plugins`.
fn http_route(id: &str, uri: &str, backend: &Upstream, plugins: Value) -> Value {
    json!({"id": id, "uri": uri, "plugins": plugins,
           "upstream": {"nodes": {backend.addr.to_string(): 1}}})
}

/// A backend answering `200` with `answer` and the request body's length in `X-Got`.
fn backend(answer: &'static [u8]) -> Upstream {
    Upstream::with_handler(
        "backend",
        Arc::new(move |request, stream| {
            let got = request.body.len().to_string();
            respond(stream, 200, &[("X-Got", &got)], answer);
            true
        }),
    )
}

// === bytes as they are ===

#[test]
fn frames_pass_as_bytes_with_their_header_fields_as_headers() {
    let backend = backend(b"\x01\x02answer");
    let commands = json!({"4099": {"uri": "/im/raw", "host": "im.internal"}});
    let (pylon, addr) = gateway(
        json!([http_route("raw", "/im/raw", &backend, json!({}))]),
        protocol(commands, json!({})),
    );
    let mut client = FrameClient::connect(addr);
    let request = Frame::new(4099, 258, b"\x00\xffabc");
    client.send(&request);
    let answer = client.answer();
    assert_eq!(
        answer,
        Frame {
            body: b"\x01\x02answer".to_vec(),
            ..request.clone()
        },
        "the answer keeps the request's command, sequence id and header fields"
    );

    let got = backend.last();
    assert_eq!(
        (got.method.as_str(), got.target.as_str()),
        ("POST", "/im/raw")
    );
    assert_eq!(got.body, b"\x00\xffabc");
    let headers = [
        ("host", "im.internal"),
        ("content-type", "application/x-protobuf"),
        ("x-frame-command", "4099"),
        ("x-frame-sequence", "258"),
        ("x-frame-version", "1"),
        ("x-frame-flags", "128"),
        ("x-frame-user_id", "123456"),
    ];
    for (name, value) in headers {
        assert_eq!(got.header(name), Some(value), "{name} in {:?}", got.headers);
    }

    // The frame's request is logged as any HTTP request, with the frame client's address;
    // the frames connection is a line of its own when it ends.
    drop(client);
    let lines = pylon.wait_access_log(2);
    let http = lines
        .iter()
        .find(|line| line["uri"] == "/im/raw")
        .unwrap_or_else(|| panic!("no line for the frame's request in {lines:?}"));
    assert_eq!(http["client_ip"], "127.0.0.2", "{http}");
    assert_eq!(
        (&http["method"], &http["status"], &http["route_id"]),
        (&json!("POST"), &json!(200), &json!("raw")),
        "{http}"
    );
    let connection = lines
        .iter()
        .find(|line| line["method"] == "TCP")
        .unwrap_or_else(|| panic!("no line for the frames connection in {lines:?}"));
    assert_eq!(
        (&connection["client_ip"], &connection["route_id"]),
        (&json!("127.0.0.2"), &json!("im")),
        "{connection}"
    );
    // Its bytes each way, whole frames; the client's close is no failure.
    let (asked, answered) = (request.encode().len(), answer.encode().len());
    assert_eq!(
        (&connection["request_length"], &connection["bytes_sent"]),
        (&json!(asked), &json!(answered)),
        "{connection}"
    );
    assert_eq!(connection.get("failure"), None, "{connection}");
    wait_frame_metrics(&pylon, &[(&frames("in"), 1.0), (&frames("out"), 1.0)]);
}

// === JSON ===

#[derive(Clone, PartialEq, prost::Message)]
struct SendReq {
    #[prost(uint32, tag = "1")]
    to: u32,
    #[prost(string, tag = "2")]
    text: String,
    #[prost(string, repeated, tag = "3")]
    tags: Vec<String>,
}

/// A node on the embedded store with an Admin API and a stream listener.
fn admin_node() -> (Pylon, SocketAddr) {
    let node = format!(
        "proxy:\n  listen: [\"127.0.0.1:0\"]\n  workers: 1\n{STREAM_LISTENER}\
         control:\n  listen: \"127.0.0.1:0\"\n\
         metrics:\n  listen: \"127.0.0.1:0\"\n\
         admin:\n  listen: \"127.0.0.1:0\"\n  admin_key:\n    - {{name: admin, key: {ADMIN_KEY}, role: admin}}\n\
         config:\n  source: embedded\n  data_dir: data\n"
    );
    let pylon = Pylon::run_node(tempfile::tempdir().unwrap(), &node)
        .unwrap_or_else(|e| panic!("pylon did not start: {e}"));
    let addr = stream_addr(&pylon);
    (pylon, addr)
}

fn put(pylon: &Pylon, path: &str, body: &Value) -> Response {
    admin(pylon.admin.unwrap(), ADMIN_KEY, "PUT", path, Some(body))
}

/// A backend for `/im/send`: it answers the JSON the test wants for each request's `text`.
fn im_backend() -> Upstream {
    Upstream::with_handler(
        "im",
        Arc::new(|request, stream| {
            let sent: Value = serde_json::from_slice(&request.body).unwrap_or_default();
            let answer = match sent["text"].as_str() {
                Some("no json") => "<html>".to_owned(),
                Some("bad answer") => json!({"id": "not a number"}).to_string(),
                _ => json!({"id": 9_007_199_254_740_993u64, "status": "sent", "unknown": 1})
                    .to_string(),
            };
            respond(
                stream,
                200,
                &[("Content-Type", "application/json")],
                answer.as_bytes(),
            );
            true
        }),
    )
}

#[test]
fn bodies_convert_to_and_from_json_with_a_proto_from_the_admin_api() {
    let backend = im_backend();
    let (pylon, addr) = admin_node();
    let res = put(
        &pylon,
        "/apisix/admin/protos/im",
        &json!({"content": IM_PROTO}),
    );
    assert!(res.status < 300, "{}", res.text());
    let route = http_route("send", "/im/send", &backend, json!({}));
    let res = put(&pylon, "/apisix/admin/routes/send", &route);
    assert!(res.status < 300, "{}", res.text());

    // The message types must exist in the proto, which must exist.
    let send = |proto: &str, request: &str, response: &str| {
        json!({"4097": {"uri": "/im/send", "proto_id": proto,
                        "request": request, "response": response}})
    };
    let refused = |commands: Value, expected: &str| {
        let route = json!({"protocol": protocol(commands, json!({}))});
        let res = put(&pylon, "/apisix/admin/stream_routes/im", &route);
        assert_eq!(res.status, 400, "{}", res.text());
        let message = res.json()["error_msg"].as_str().unwrap().to_owned();
        assert!(message.contains(expected), "{message}\nwanted: {expected}");
    };
    refused(
        send("im", "im.SendReq", "im.Nope"),
        "protocol.conf.commands.4097.response: message `im.Nope` is not defined in proto `im`",
    );
    refused(
        send("chat", "im.SendReq", "im.SendResp"),
        "protocol.conf.commands.4097.proto_id: proto `chat` does not exist",
    );
    let route = json!({"protocol": protocol(send("im", "im.SendReq", "im.SendResp"), json!({}))});
    let res = put(&pylon, "/apisix/admin/stream_routes/im", &route);
    assert!(res.status < 300, "{}", res.text());

    let mut client = served(addr);
    let message = SendReq {
        to: 7,
        text: "hello".to_owned(),
        tags: vec!["a".to_owned(), "b".to_owned()],
    };
    client.send(&Frame::new(4097, 1, &message.encode_to_vec()));
    let answer = client.answer();
    assert_eq!((answer.command, answer.sequence), (4097, 1));
    assert_eq!(
        SendResp::decode(answer.body.as_slice()).unwrap(),
        SendResp {
            id: 9_007_199_254_740_993,
            status: "sent".to_owned()
        },
        "the JSON answer as a SendResp; fields it does not define are left out"
    );
    let got = backend.last();
    assert_eq!(got.header("content-type"), Some("application/json"));
    let sent: Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(sent, json!({"to": 7, "text": "hello", "tags": ["a", "b"]}));

    // A body that is not a SendReq never reaches the backend; answers that are not JSON, or
    // not a SendResp, are failed calls too. Each gets the error frame and the connection
    // goes on.
    let before = backend.request_count();
    client.send(&Frame::new(4097, 2, b"\xff\xff\xff"));
    assert_eq!(client.answer(), Frame::error(ON_ERROR, 2));
    assert_eq!(backend.request_count(), before);
    for (sequence, text) in [(3, "no json"), (4, "bad answer")] {
        let message = SendReq {
            text: text.to_owned(),
            ..SendReq::default()
        };
        client.send(&Frame::new(4097, sequence, &message.encode_to_vec()));
        assert_eq!(client.answer(), Frame::error(ON_ERROR, sequence), "{text}");
    }
    client.send(&Frame::new(4097, 5, &message.encode_to_vec()));
    assert_eq!(client.answer().sequence, 5);
    wait_frame_metrics(&pylon, &[(&errors("call_failed"), 3.0)]);
}

#[test]
fn a_standalone_file_naming_a_message_its_proto_lacks_is_refused() {
    let commands = json!({"4097": {"uri": "/im/send", "proto_id": "im",
                                   "request": "im.SendReq", "response": "im.Sent"}});
    let doc = json!({
        "protos": [{"id": "im", "content": IM_PROTO}],
        "stream_routes": [{"id": "im", "protocol": protocol(commands, json!({}))}],
    });
    let (code, _, stderr) = support::validate(&doc.to_string());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("stream_routes[0].protocol.conf.commands.4097.response: message `im.Sent` is not defined in proto `im`"),
        "{stderr}"
    );
}

/// A client on a frames route once it is served: a new stream route takes effect when the
/// configuration is published, which a client sees as answers instead of a closed connection.
fn served(addr: SocketAddr) -> FrameClient {
    let probe = Frame::new(1, 0, b"");
    let mut client = None;
    wait_until(
        || {
            let mut candidate = FrameClient::connect(addr);
            // Until then the connection is closed at once: the probe may not even be sent.
            // An unknown command's error frame: the route serves frames.
            let served = candidate.stream.write_all(&probe.encode()).is_ok()
                && candidate.read() == Some(Frame::error(UNKNOWN_COMMAND, 0));
            client = served.then_some(candidate);
            served
        },
        "the frames route to be served",
    );
    client.unwrap()
}

// === many in flight ===

#[test]
fn frames_in_flight_are_answered_as_their_calls_end() {
    let gate = Arc::new(Gate::default());
    let held = gate.clone();
    let handler: Handler = Arc::new(move |request, stream| {
        let released = held.wait(request);
        let status = if released { 200 } else { 504 };
        respond(stream, status, &[], &request.body);
        true
    });
    let backend = Upstream::with_handler("slow", handler);
    let commands = json!({"4099": {"uri": "/im/raw"}});
    let (_pylon, addr) = gateway(
        json!([http_route("raw", "/im/raw", &backend, json!({}))]),
        protocol(commands, json!({})),
    );
    let mut client = FrameClient::connect(addr);
    for sequence in 1..=4u32 {
        client.send(&Frame::new(
            4099,
            sequence,
            format!("call {sequence}").as_bytes(),
        ));
    }
    wait_until(
        || backend.request_count() == 4,
        "the four calls at the backend at once",
    );
    for sequence in [3, 1, 4, 2] {
        gate.release(sequence);
        let answer = client.answer();
        assert_eq!(answer.sequence, sequence, "answers come as calls end");
        assert_eq!(answer.body, format!("call {sequence}").as_bytes());
    }
}

// === plugins ===

#[test]
fn the_http_routes_plugins_apply_to_frames() {
    let backend = backend(b"ok");
    let restricted = json!({"ip-restriction": {"blacklist": ["127.0.0.3"]}});
    let commands = json!({"4099": {"uri": "/im/raw"}});
    let (pylon, addr) = gateway(
        json!([http_route("raw", "/im/raw", &backend, restricted)]),
        protocol(commands, json!({})),
    );
    let mut allowed = FrameClient::connect(addr);
    allowed.send(&Frame::new(4099, 10, b"x"));
    assert_eq!(allowed.answer().body, b"ok");

    let mut denied = FrameClient::connect_from(addr, IpAddr::from([127, 0, 0, 3]));
    denied.send(&Frame::new(4099, 11, b"x"));
    assert_eq!(denied.answer(), Frame::error(ON_ERROR, 11));
    assert_eq!(backend.request_count(), 1, "the refused call never left");
    let lines = pylon.wait_access_log(2);
    let refused = lines
        .iter()
        .find(|line| line["client_ip"] == "127.0.0.3")
        .unwrap_or_else(|| panic!("no line for the refused frame in {lines:?}"));
    assert_eq!(
        (&refused["uri"], &refused["status"]),
        (&json!("/im/raw"), &json!(403))
    );
}

// === errors ===

#[test]
fn failed_calls_and_unknown_commands_get_their_error_frames() {
    let backend = Upstream::with_handler(
        "failing",
        Arc::new(|request, stream| {
            let status = if request.body == b"fail" { 500 } else { 200 };
            respond(stream, status, &[], b"done");
            true
        }),
    );
    let commands = json!({"4099": {"uri": "/im/raw"}, "4100": {"uri": "/nowhere"}});
    let (pylon, addr) = gateway(
        json!([http_route("raw", "/im/raw", &backend, json!({}))]),
        protocol(commands, json!({})),
    );
    let mut client = FrameClient::connect(addr);
    client.send(&Frame::new(4099, 1, b"fail"));
    assert_eq!(client.answer(), Frame::error(ON_ERROR, 1), "a 500");
    client.send(&Frame::new(4100, 2, b""));
    assert_eq!(
        client.answer(),
        Frame::error(ON_ERROR, 2),
        "no HTTP route: 404"
    );
    client.send(&Frame::new(777, 3, b""));
    assert_eq!(client.answer(), Frame::error(UNKNOWN_COMMAND, 3));
    client.send(&Frame::new(4099, 4, b"fine"));
    assert_eq!(client.answer().body, b"done", "the connection goes on");
    wait_frame_metrics(
        &pylon,
        &[
            (&frames("in"), 4.0),
            (&frames("out"), 4.0),
            (&errors("call_failed"), 2.0),
            (&errors("unknown_command"), 1.0),
        ],
    );
}

#[test]
fn bad_frames_get_the_error_frame_and_close_and_are_counted() {
    let backend = backend(b"ok");
    let commands = json!({"4099": {"uri": "/im/raw"}});
    let (pylon, addr) = gateway(
        json!([http_route("raw", "/im/raw", &backend, json!({}))]),
        protocol(commands, json!({"max_body": 1024})),
    );

    // No start marker: nothing of the frame can be trusted, its sequence id included.
    let mut client = FrameClient::connect(addr);
    let mut bytes = Frame::new(4099, 5, b"abc").encode();
    bytes[0] = 0x07;
    client.send_raw(&bytes);
    assert_eq!(client.read(), Some(Frame::error(ON_ERROR, 0)));
    client.assert_closed();

    // A wrong end marker, after a good frame: that one is answered.
    let mut client = FrameClient::connect(addr);
    client.send(&Frame::new(4099, 6, b"abc"));
    assert_eq!(client.answer().body, b"ok");
    let mut bytes = Frame::new(4099, 7, b"abc").encode();
    *bytes.last_mut().unwrap() = 0x0b;
    client.send_raw(&bytes);
    assert_eq!(client.read(), Some(Frame::error(ON_ERROR, 7)));
    client.assert_closed();

    // A length over max_body, refused before the body is read.
    let mut client = FrameClient::connect(addr);
    let bytes = Frame::new(4099, 8, &[0; 1025]).encode();
    client.send_raw(&bytes[..1 + HEADER]);
    assert_eq!(client.read(), Some(Frame::error(ON_ERROR, 8)));
    client.assert_closed();

    assert_eq!(backend.request_count(), 1);
    wait_frame_metrics(
        &pylon,
        &[
            (&errors("missing_start"), 1.0),
            (&errors("bad_end"), 1.0),
            (&errors("too_long"), 1.0),
            (&frames("in"), 1.0),
            (&frames("out"), 4.0),
        ],
    );
    assert_eq!(connections_failed(&pylon, 3, "bad_frame"), 3);
}

/// Waits for `n` frames connections' log lines: how many of them failed with `failure`.
fn connections_failed(pylon: &Pylon, n: usize, failure: &str) -> usize {
    let ended = || -> Vec<Value> {
        let lines = pylon.access_log().into_iter();
        lines.filter(|line| line["method"] == "TCP").collect()
    };
    wait_until(
        || ended().len() >= n,
        &format!("{n} frames connections' log lines"),
    );
    let ended = ended();
    ended.iter().filter(|l| l["failure"] == failure).count()
}

#[test]
fn silent_clients_are_timed_out() {
    let backend = backend(b"ok");
    let commands = json!({"4099": {"uri": "/im/raw"}});
    let (pylon, addr) = gateway(
        json!([http_route("raw", "/im/raw", &backend, json!({}))]),
        protocol(commands, json!({"read_timeout": 1})),
    );
    // Silent mid-frame: the frame is given up with the error frame.
    let mut mid_frame = FrameClient::connect(addr);
    mid_frame.send_raw(&Frame::new(4099, 9, b"abc").encode()[..1 + HEADER + 1]);
    // Idle between frames: closed without a frame.
    let mut idle = FrameClient::connect(addr);
    idle.send(&Frame::new(4099, 10, b"abc"));
    assert_eq!(idle.answer().body, b"ok");

    assert_eq!(mid_frame.read(), Some(Frame::error(ON_ERROR, 9)));
    mid_frame.assert_closed();
    idle.assert_closed();
    wait_frame_metrics(&pylon, &[(&errors("timeout"), 2.0)]);
    assert_eq!(connections_failed(&pylon, 2, "client_timeout"), 1);
    assert_eq!(connections_failed(&pylon, 2, "idle_timeout"), 1);
}
