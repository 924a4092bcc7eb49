//! The fleet against a fake gateway that speaks the protocol spec (`fake_gateway`).

mod fake_gateway;

use std::time::Duration;

use fake_gateway::{FakeGateway, GatewayOptions};
use pylon_devices::frame::{command, decode_all, encode_frame, encode_json};
use pylon_devices::{raw_session, CloseReason, DeviceSpec, Fleet, Options, Outcome};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

fn device(name: &str) -> DeviceSpec {
    DeviceSpec::new("app", name, "secret")
}

#[test]
fn a_fleet_can_be_shared_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Fleet>();
}

#[test]
fn connects_and_authenticates() {
    let gateway = FakeGateway::start(GatewayOptions::node("gw-1"));
    let fleet = Fleet::start(gateway.addr);
    let spec = device("d1").with_tags(&["a", "b"]).with_network("wifi");
    let outcome = fleet.connect_one(spec);
    assert_eq!(
        outcome,
        Outcome::Authenticated(json!({ "heartbeat": 240.0, "node": "gw-1" }))
    );
    let state = fleet.state("app", "d1").unwrap();
    assert!(state.open && state.authenticated);
    assert_eq!(state.connections, 1);
    assert_eq!(state.heartbeat, Some(Duration::from_secs(240)));
    let auth = gateway.recorded(|r| r.auths[0].0.clone());
    assert_eq!(
        auth,
        json!({ "token": "secret", "device_id": "d1", "app_id": "app", "tags": ["a", "b"], "network": "wifi" })
    );
}

#[test]
fn a_refused_auth_is_reported_with_its_error() {
    let gateway = FakeGateway::start(GatewayOptions::node("gw-1"));
    let fleet = Fleet::start(gateway.addr);
    let outcome = fleet.connect_one(DeviceSpec::new("app", "d1", "bad"));
    assert_eq!(
        outcome,
        Outcome::Failed(CloseReason::Error("bad token".to_owned()))
    );
    let state = fleet.state("app", "d1").unwrap();
    assert!(!state.open);
    assert_eq!(state.errors, vec![(1, "bad token".to_owned())]);
}

#[test]
fn a_closed_port_fails_to_connect() {
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let fleet = Fleet::start(addr);
    assert!(matches!(
        fleet.connect_one(device("d1")),
        Outcome::Failed(CloseReason::ConnectFailed(_))
    ));
}

#[test]
fn pings_at_the_interval_of_auth_ok_then_of_pong() {
    let gateway = FakeGateway::start(GatewayOptions {
        heartbeat: 0.05,
        pong_heartbeat: Some(0.15),
        ..GatewayOptions::node("gw-1")
    });
    let fleet = Fleet::start(gateway.addr);
    assert!(fleet.connect_one(device("d1")).is_authenticated());
    let authenticated_at = gateway.recorded(|r| r.auths[0].1);
    assert!(gateway.wait(WAIT, |r| r.pings.values().any(|p| p.len() >= 3)));
    let pings = gateway.pings("app", "d1");
    // Pings never come early: the first after auth_ok's 50 ms, the next after pong's 150 ms.
    assert!(pings[0] - authenticated_at >= Duration::from_millis(45));
    assert!(pings[1] - pings[0] >= Duration::from_millis(140));
    assert!(pings[2] - pings[1] >= Duration::from_millis(140));
    assert!(fleet.wait_until(WAIT, |view| { view.state("app", "d1").unwrap().pongs >= 3 }));
    let state = fleet.state("app", "d1").unwrap();
    assert_eq!(state.heartbeat, Some(Duration::from_millis(150)));
    assert!(state.pings_sent >= 3);
}

#[test]
fn ping_every_overrides_the_gateway_interval() {
    let gateway = FakeGateway::start(GatewayOptions::node("gw-1"));
    let options = Options {
        ping_every: Some(Duration::from_millis(20)),
        ..Options::default()
    };
    let fleet = Fleet::with_options(gateway.addr, options);
    assert!(fleet.connect_one(device("d1")).is_authenticated());
    assert!(gateway.wait(WAIT, |r| r.pings.values().any(|p| p.len() >= 3)));
    let pings = gateway.pings("app", "d1");
    assert!(pings[1] - pings[0] >= Duration::from_millis(15));
}

#[test]
fn pushes_are_recorded_in_order_and_acknowledged_duplicates_included() {
    let gateway = FakeGateway::start(GatewayOptions::node("gw-1"));
    let fleet = Fleet::start(gateway.addr);
    assert!(fleet.connect_one(device("d1")).is_authenticated());
    let first = json!({ "id": "m-1", "priority": "high", "data": { "n": 1 }, "collapse_key": "k" });
    assert!(gateway.push("app", "d1", first));
    assert!(gateway.push(
        "app",
        "d1",
        json!({ "id": "m-2", "priority": "normal", "data": [2] })
    ));
    assert!(gateway.push(
        "app",
        "d1",
        json!({ "id": "m-1", "priority": "high", "data": null })
    ));
    assert!(fleet.wait_until(WAIT, |view| view.received("app", "d1").len() == 3));
    assert_eq!(fleet.ids("app", "d1"), ["m-1", "m-2", "m-1"]);
    assert_eq!(fleet.distinct_ids("app", "d1"), ["m-1", "m-2"]);
    assert_eq!(fleet.total_received(), 3);
    let received = fleet.received("app", "d1");
    assert_eq!(received[0].data, json!({ "n": 1 }));
    assert_eq!(received[0].priority.as_deref(), Some("high"));
    assert_eq!(received[0].collapse_key.as_deref(), Some("k"));
    assert_eq!(received[1].collapse_key, None);
    assert_eq!(received[1].sequence, 2);
    assert!(received.iter().all(|push| push.connection == 1));
    assert!(received[0].at <= received[1].at && received[1].at <= received[2].at);
    assert!(gateway.wait(WAIT, |r| r.acks.values().any(|a| a.len() == 3)));
    assert_eq!(gateway.acks("app", "d1"), ["m-1", "m-2", "m-1"]);
}

#[test]
fn set_ack_false_stops_acknowledgements() {
    let gateway = FakeGateway::start(GatewayOptions::node("gw-1"));
    let fleet = Fleet::start(gateway.addr);
    assert!(fleet.connect_one(device("d1")).is_authenticated());
    assert!(fleet.set_ack("app", "d1", false));
    assert!(gateway.push("app", "d1", json!({ "id": "m-1", "data": 1 })));
    assert!(fleet.wait_until(WAIT, |view| view.has("app", "d1", "m-1")));
    assert!(fleet.set_ack("app", "d1", true));
    assert!(gateway.push("app", "d1", json!({ "id": "m-2", "data": 2 })));
    // Acks travel in order on one connection: m-1's would have come before m-2's.
    assert!(gateway.wait(WAIT, |r| !r.acks.is_empty()));
    assert_eq!(gateway.acks("app", "d1"), ["m-2"]);
    assert!(!fleet.set_ack("app", "unknown", false));
}

#[test]
fn disconnect_then_reconnect_to_another_node() {
    let gateway = FakeGateway::start(GatewayOptions::node("gw-1"));
    let other = FakeGateway::start(GatewayOptions::node("gw-2"));
    let fleet = Fleet::start(gateway.addr);
    assert!(fleet.connect_one(device("d1")).is_authenticated());
    assert!(fleet.disconnect("app", "d1"));
    let state = fleet.state("app", "d1").unwrap();
    assert!(!state.open);
    assert_eq!(state.close_reason, Some(CloseReason::Local));
    assert!(gateway.wait(WAIT, |r| r.closed == 1));
    assert!(!fleet.disconnect("app", "d1"));

    let outcome = fleet.reconnect("app", "d1", other.addr).unwrap();
    assert_eq!(
        outcome,
        Outcome::Authenticated(json!({ "heartbeat": 240.0, "node": "gw-2" }))
    );
    assert!(other.push("app", "d1", json!({ "id": "m-1", "data": 1 })));
    assert!(fleet.wait_until(WAIT, |view| view.has("app", "d1", "m-1")));
    assert_eq!(fleet.received("app", "d1")[0].connection, 2);
    let state = fleet.state("app", "d1").unwrap();
    assert!(state.open && state.authenticated);
    assert_eq!(state.close_reason, None);
    assert_eq!(state.auth_oks.len(), 2);
    assert!(fleet.reconnect("app", "unknown", other.addr).is_none());
}

#[test]
fn a_second_connection_replaces_the_first() {
    let gateway = FakeGateway::start(GatewayOptions::node("gw-1"));
    let fleet = Fleet::start(gateway.addr);
    assert!(fleet.connect_one(device("d1")).is_authenticated());
    assert!(fleet
        .reconnect("app", "d1", gateway.addr)
        .unwrap()
        .is_authenticated());
    assert!(fleet.wait_until(WAIT, |view| !view
        .state("app", "d1")
        .unwrap()
        .closes
        .is_empty()));
    let state = fleet.state("app", "d1").unwrap();
    assert_eq!(state.errors, vec![(1, "replaced".to_owned())]);
    assert_eq!(
        state.closes,
        vec![(1, CloseReason::Error("replaced".to_owned()))]
    );
    assert!(state.open && state.authenticated);
    assert_eq!(state.connections, 2);
}

#[test]
fn reconnect_all_reopens_every_closed_device() {
    let gateway = FakeGateway::start(GatewayOptions::node("gw-1"));
    let other = FakeGateway::start(GatewayOptions::node("gw-2"));
    let fleet = Fleet::start(gateway.addr);
    let outcomes = fleet.connect((0..5).map(|i| device(&format!("d{i}"))).collect());
    assert!(outcomes.iter().all(Outcome::is_authenticated));
    drop(gateway);
    assert!(fleet.wait_until(WAIT, |view| view.authenticated() == 0));
    let outcomes = fleet.reconnect_all(other.addr);
    assert_eq!(outcomes.len(), 5);
    assert!(outcomes
        .iter()
        .all(|(_, _, outcome)| outcome.is_authenticated()));
    assert_eq!(fleet.view(|view| view.authenticated()), 5);
}

#[test]
fn follow_reconnect_goes_to_the_fallback_after_the_delay() {
    let gateway = FakeGateway::start(GatewayOptions::node("gw-1"));
    let other = FakeGateway::start(GatewayOptions::node("gw-2"));
    let options = Options {
        follow_reconnect: true,
        fallback: vec![other.addr],
        ..Options::default()
    };
    let fleet = Fleet::with_options(gateway.addr, options);
    assert!(fleet.connect_one(device("d1")).is_authenticated());
    let sent = std::time::Instant::now();
    assert!(gateway.reconnect("app", "d1", 50));
    assert!(other.wait(WAIT, |r| r.auths.len() == 1));
    assert!(other.recorded(|r| r.auths[0].1) - sent >= Duration::from_millis(50));
    assert!(fleet.wait_until(WAIT, |view| view.state("app", "d1").unwrap().authenticated));
    let state = fleet.state("app", "d1").unwrap();
    assert_eq!(state.reconnects, vec![(1, 50)]);
    assert_eq!(
        state.closes,
        vec![(1, CloseReason::Reconnect { after_ms: 50 })]
    );
    assert_eq!(state.connections, 2);
    assert_eq!(state.auth_oks[1]["node"], "gw-2");
}

#[test]
fn without_follow_reconnect_a_reconnect_just_closes() {
    let gateway = FakeGateway::start(GatewayOptions::node("gw-1"));
    let fleet = Fleet::start(gateway.addr);
    assert!(fleet.connect_one(device("d1")).is_authenticated());
    assert!(gateway.reconnect("app", "d1", 0));
    assert!(fleet.wait_until(WAIT, |view| !view.state("app", "d1").unwrap().open));
    let state = fleet.state("app", "d1").unwrap();
    assert_eq!(
        state.close_reason,
        Some(CloseReason::Reconnect { after_ms: 0 })
    );
    assert_eq!(state.connections, 1);
}

#[test]
fn thousands_of_devices_connect_at_bounded_concurrency() {
    let gateway = FakeGateway::start(GatewayOptions::node("gw-1"));
    let options = Options {
        concurrency: 64,
        ..Options::default()
    };
    let fleet = Fleet::with_options(gateway.addr, options);
    let outcomes = fleet.connect((0..2000).map(|i| device(&format!("dev-{i}"))).collect());
    assert_eq!(outcomes.len(), 2000);
    assert!(outcomes.iter().all(Outcome::is_authenticated));
    assert_eq!(fleet.view(|view| view.authenticated()), 2000);
    let max_pending = gateway.recorded(|r| r.max_pending);
    assert!(
        max_pending <= 64,
        "{max_pending} connections awaited auth_ok at once"
    );
    for i in (0..2000).step_by(100) {
        assert!(gateway.push(
            "app",
            &format!("dev-{i}"),
            json!({ "id": "all", "data": i })
        ));
    }
    assert!(fleet.wait_until(WAIT, |view| view.total_received() == 20));
}

#[test]
fn send_raw_writes_bytes_as_they_are() {
    let gateway = FakeGateway::start(GatewayOptions::node("gw-1"));
    let fleet = Fleet::start(gateway.addr);
    assert!(fleet.connect_one(device("d1")).is_authenticated());
    let ack = encode_json(command::ACK, 99, &json!({ "id": "raw-1" }));
    assert!(fleet.send_raw("app", "d1", ack));
    assert!(gateway.wait(WAIT, |r| !r.acks.is_empty()));
    assert_eq!(gateway.acks("app", "d1"), ["raw-1"]);
    assert!(!fleet.send_raw("app", "unknown", Vec::new()));
}

#[test]
fn raw_session_reports_the_answer_and_the_close() {
    let gateway = FakeGateway::start(GatewayOptions::node("gw-1"));
    let ping = encode_frame(command::PING, 1, b"");
    let (received, closed) = raw_session(gateway.addr, &ping, WAIT).unwrap();
    assert!(closed);
    let (frames, rest) = decode_all(&received, 1024).unwrap();
    assert_eq!(rest, 0);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].command, command::ERROR);
    assert_eq!(frames[0].json().unwrap(), json!({ "error": "auth first" }));

    // Half a header: the gateway keeps waiting, and the session ends at its deadline.
    let (received, closed) = raw_session(gateway.addr, &[0, 0], Duration::from_millis(50)).unwrap();
    assert!(received.is_empty() && !closed);
}

#[test]
fn a_frame_the_device_cannot_read_ends_its_connection() {
    let gateway = FakeGateway::start(GatewayOptions::node("gw-1"));
    let fleet = Fleet::start(gateway.addr);
    assert!(fleet.connect_one(device("d1")).is_authenticated());
    assert!(gateway.send(
        "app",
        "d1",
        encode_frame(command::PUSH, 1, b"{not json"),
        false
    ));
    assert!(fleet.wait_until(WAIT, |view| !view.state("app", "d1").unwrap().open));
    assert!(matches!(
        fleet.state("app", "d1").unwrap().close_reason,
        Some(CloseReason::Protocol(_))
    ));
}

fn websocket_gateway(binary: bool) -> FakeGateway {
    FakeGateway::start(GatewayOptions {
        websocket: true,
        binary,
        heartbeat: 0.02,
        ..GatewayOptions::node("gw-ws")
    })
}

#[test]
fn websocket_devices_authenticate_ping_and_acknowledge() {
    for binary in [false, true] {
        let gateway = websocket_gateway(binary);
        let options = Options {
            websocket: Some("/push".to_owned()),
            ..Options::default()
        };
        let fleet = Fleet::with_options(gateway.addr, options);
        let spec = device("d1").with_tags(&["a"]);
        assert_eq!(
            fleet.connect_one(spec),
            Outcome::Authenticated(json!({ "heartbeat": 0.02, "node": "gw-ws" }))
        );
        assert_eq!(
            gateway.recorded(|r| r.auths[0].0["tags"].clone()),
            json!(["a"])
        );
        assert!(gateway.wait(WAIT, |r| r.pings.values().any(|p| p.len() >= 2)));
        let push =
            json!({ "id": "m-1", "priority": "high", "data": { "n": 1 }, "collapse_key": "k" });
        assert!(gateway.push("app", "d1", push));
        assert!(fleet.wait_until(WAIT, |view| view.has("app", "d1", "m-1")));
        let received = &fleet.received("app", "d1")[0];
        assert_eq!(received.data, json!({ "n": 1 }));
        assert_eq!(received.collapse_key.as_deref(), Some("k"));
        assert!(gateway.wait(WAIT, |r| !r.acks.is_empty()));
        assert_eq!(gateway.acks("app", "d1"), ["m-1"]);
        assert!(fleet.wait_until(WAIT, |view| view.state("app", "d1").unwrap().pongs >= 1));

        assert!(gateway.reconnect("app", "d1", 0));
        assert!(fleet.wait_until(WAIT, |view| !view.state("app", "d1").unwrap().open));
        let state = fleet.state("app", "d1").unwrap();
        assert_eq!(
            state.close_reason,
            Some(CloseReason::Reconnect { after_ms: 0 })
        );
    }
}

#[test]
fn websocket_to_a_plain_tcp_listener_fails_the_handshake() {
    let gateway = FakeGateway::start(GatewayOptions::node("gw-1"));
    let options = Options {
        websocket: Some("/".to_owned()),
        auth_timeout: Duration::from_secs(2),
        ..Options::default()
    };
    let fleet = Fleet::with_options(gateway.addr, options);
    assert!(matches!(
        fleet.connect_one(device("d1")),
        Outcome::Failed(CloseReason::ConnectFailed(_))
    ));
}
