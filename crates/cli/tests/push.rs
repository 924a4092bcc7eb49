//! The push gateway through the real binary, with real Redis and the project's device
//! simulator (`pylon-devices`): devices connect to a `pylon-push` stream route and
//! authenticate in their first frame with a consumer's key; messages posted to a
//! `device-push` route reach one device, a list, a tag expression or every device of an
//! app; acknowledged messages count as delivered and are not sent again, unacknowledged ones
//! are sent again on the next connection, messages to offline devices wait until their TTL
//! and then count as expired; broadcasts and messages go out at their app's rates, and
//! high-priority messages overtake them; a second connection of a device replaces the first;
//! bad devices are closed and bad pushes refused with the field named; and two nodes share one
//! Redis, so that a node killed mid-broadcast loses nothing: its devices reconnect to the
//! other and get every message they had not acknowledged. The push API behaves the same over
//! HTTP/1.1 and HTTP/2.

mod support;

#[path = "../../redis/tests/support/redis_server.rs"]
mod redis_server;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use pylon_devices::frame::encode_json;
use pylon_devices::{raw_session, CloseReason, DeviceSpec, Fleet, Options, Outcome, View};
use redis_server::{RedisCluster, RedisServer};
use serde_json::{json, Value};
use support::client::{get, Response};
use support::frames::STREAM_LISTENER;
use support::protocols::{call, Protocol, PROTOCOLS};
use support::Pylon;

const APP: &str = "app";
/// The key devices authenticate with (consumer `phone`).
const DEVICE_KEY: &str = "device-key";
/// The key the push API takes (consumer `backend`).
const PUSH_KEY: &str = "push-key";
/// Bounded wait for deliveries and counts.
const WAIT: Duration = Duration::from_secs(15);

/// The standalone configuration of a push gateway on `redis`: stream route `devices`
/// (`conf` merged into its `protocol.conf`) whose devices authenticate with `key-auth`, and
/// the push API on `/push` behind `key-auth`.
fn gateway_doc(redis: &RedisServer, conf: Value) -> String {
    let redis = json!({"policy": "redis", "redis_host": "127.0.0.1", "redis_port": redis.port});
    gateway_doc_on(redis, conf)
}

/// As [`gateway_doc`], on the Redis `redis` (`limit-count`'s Redis fields) names.
fn gateway_doc_on(redis: Value, conf: Value) -> String {
    let mut protocol_conf = json!({
        "redis": redis,
        "first_frame_timeout": 2,
        "heartbeat": {"interval": 30, "networks": {"4g": 20}},
    });
    if let (Some(base), Value::Object(extra)) = (protocol_conf.as_object_mut(), conf) {
        base.extend(extra);
    }
    json!({
        "routes": [{"id": "push", "uri": "/push",
                    "plugins": {"key-auth": {}, "device-push": {"stream_route_id": "devices"}}}],
        "consumers": [
            {"username": "backend", "plugins": {"key-auth": {"key": PUSH_KEY}}},
            {"username": "phone", "plugins": {"key-auth": {"key": DEVICE_KEY}}},
        ],
        "stream_routes": [{"id": "devices", "plugins": {"key-auth": {}},
                           "protocol": {"name": "pylon-push", "conf": protocol_conf}}],
    })
    .to_string()
}

/// A gateway node and the address its devices connect to.
fn node(redis: &RedisServer, conf: Value) -> (Pylon, SocketAddr) {
    let pylon = Pylon::start(&gateway_doc(redis, conf), STREAM_LISTENER);
    let devices = support::frames::stream_addr(&pylon);
    (pylon, devices)
}

fn device(id: &str) -> DeviceSpec {
    DeviceSpec::new(APP, id, DEVICE_KEY)
}

fn connected(fleet: &Fleet, specs: Vec<DeviceSpec>) {
    for outcome in fleet.connect(specs) {
        assert!(outcome.is_authenticated(), "{outcome:?}");
    }
}

/// Calls the push API over `protocol` and answers the response.
fn api(protocol: Protocol, pylon: &Pylon, method: &str, target: &str, body: &Value) -> Response {
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    let headers = [("apikey", PUSH_KEY), ("content-type", "application/json")];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(call(protocol, pylon.addr, method, target, &headers, &body))
}

/// Pushes `message` and answers its id (the push is accepted).
fn push(protocol: Protocol, pylon: &Pylon, message: Value) -> String {
    let res = api(protocol, pylon, "POST", "/push", &message);
    assert_eq!(res.status, 202, "{}", String::from_utf8_lossy(&res.body));
    res.json()["id"].as_str().unwrap().to_owned()
}

/// Waits for the message's counts to be `expected` (they are written in batches); fails
/// with the last ones read when they do not get there in time.
fn assert_counts(protocol: Protocol, pylon: &Pylon, id: &str, expected: &Value) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let res = api(
            protocol,
            pylon,
            "GET",
            &format!("/push?id={id}"),
            &Value::Null,
        );
        let counts = res.json()["counts"].clone();
        if counts == *expected {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "counts of {id}: {counts}, expected {expected}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The push gateway's series a scrape of the metrics listener shows, with their values
/// (`pylon_push_device_closes_total{route="devices",reason="unauthorized"}`).
fn push_metrics(pylon: &Pylon) -> BTreeMap<String, f64> {
    let res = get(pylon.metrics.unwrap(), "localhost", "/metrics");
    assert_eq!(res.status, 200);
    (res.text().lines())
        .filter(|line| line.starts_with("pylon_push"))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

fn waits(fleet: &Fleet, what: &str, condition: impl FnMut(&View<'_>) -> bool) {
    assert!(
        fleet.wait_until(WAIT, condition),
        "timed out waiting for {what}"
    );
}

#[test]
fn a_push_to_a_device_reaches_it_once_and_counts_as_delivered() {
    let redis = RedisServer::start();
    let (pylon, devices) = node(&redis, json!({}));
    let fleet = Fleet::start(devices);
    connected(&fleet, vec![device("d1"), device("d2").with_network("4g")]);
    // The heartbeat the device is to keep: the network's when it names one.
    let state = fleet.state(APP, "d2").unwrap();
    assert_eq!(state.auth_oks[0]["heartbeat"], 20);
    assert_eq!(fleet.state(APP, "d1").unwrap().auth_oks[0]["heartbeat"], 30);
    for protocol in PROTOCOLS {
        let id = push(
            protocol,
            &pylon,
            json!({"app_id": APP, "device_id": "d1",
            "data": {"title": "hello"}, "priority": "high"}),
        );
        waits(&fleet, "the push", |view| view.has(APP, "d1", &id));
        let counts = json!({"targets": 1, "sent": 1, "delivered": 1, "expired": 0});
        assert_counts(protocol, &pylon, &id, &counts);
        let got = fleet.received(APP, "d1");
        let pushed = got.iter().find(|r| r.id == id).unwrap();
        assert_eq!(pushed.data, json!({"title": "hello"}));
        assert_eq!(pushed.priority.as_deref(), Some("high"));
        assert!(!fleet.view(|view| view.has(APP, "d2", &id)));
    }
    // A list reaches each device listed.
    let id = push(
        Protocol::Http1,
        &pylon,
        json!({"app_id": APP,
        "device_ids": ["d1", "d2"], "data": 1}),
    );
    waits(&fleet, "the list push", |v| {
        v.has(APP, "d1", &id) && v.has(APP, "d2", &id)
    });
    assert_eq!(fleet.ids(APP, "d1").len(), 3, "each message once");
    let metrics = push_metrics(&pylon);
    assert_eq!(metrics[r#"pylon_push_devices{route="devices"}"#], 2.0);
    assert_eq!(
        metrics[r#"pylon_push_messages_total{route="devices",event="sent"}"#],
        4.0
    );
}

#[test]
fn tags_and_expressions_and_all_reach_the_devices_they_name() {
    let redis = RedisServer::start();
    let (pylon, devices) = node(&redis, json!({}));
    let fleet = Fleet::start(devices);
    connected(
        &fleet,
        vec![
            device("vip").with_tags(&["vip"]),
            device("vip-muted").with_tags(&["vip", "muted"]),
            device("plain"),
            DeviceSpec::new("other-app", "vip", DEVICE_KEY).with_tags(&["vip"]),
        ],
    );
    for protocol in PROTOCOLS {
        let vip = push(
            protocol,
            &pylon,
            json!({"app_id": APP, "tag": "vip", "data": 1}),
        );
        let loud = push(
            protocol,
            &pylon,
            json!({"app_id": APP, "tag": "vip AND NOT muted", "data": 2}),
        );
        let all = push(
            protocol,
            &pylon,
            json!({"app_id": APP, "all": true, "data": 3}),
        );
        waits(&fleet, "every delivery the broadcasts owe", |v| {
            [&vip, &loud, &all].iter().all(|id| v.has(APP, "vip", id))
                && [&vip, &all].iter().all(|id| v.has(APP, "vip-muted", id))
                && v.has(APP, "plain", &all)
        });
        assert_eq!(
            fleet
                .distinct_ids(APP, "vip")
                .iter()
                .filter(|i| [&vip, &loud, &all].contains(i))
                .count(),
            3
        );
        let muted = fleet.distinct_ids(APP, "vip-muted");
        assert!(muted.contains(&vip) && !muted.contains(&loud));
        let plain = fleet.distinct_ids(APP, "plain");
        assert!(!plain.contains(&vip) && !plain.contains(&loud));
        assert!(
            fleet.ids("other-app", "vip").is_empty(),
            "another app's device"
        );
        let counts = json!({"targets": 2, "sent": 2, "delivered": 2, "expired": 0});
        assert_counts(protocol, &pylon, &vip, &counts);
    }
}

#[test]
fn unacknowledged_messages_are_sent_again_on_the_next_connection_and_acknowledged_ones_not() {
    let redis = RedisServer::start();
    let (pylon, devices) = node(&redis, json!({}));
    let fleet = Fleet::start(devices);
    connected(&fleet, vec![device("d1")]);
    fleet.set_ack(APP, "d1", false);
    let id = push(
        Protocol::Http1,
        &pylon,
        json!({"app_id": APP, "device_id": "d1", "data": "x"}),
    );
    waits(&fleet, "the push", |v| v.has(APP, "d1", &id));
    assert!(fleet.disconnect(APP, "d1"));
    fleet.set_ack(APP, "d1", true);
    assert!(fleet
        .reconnect(APP, "d1", devices)
        .unwrap()
        .is_authenticated());
    waits(&fleet, "the push sent again", |v| {
        v.ids(APP, "d1").len() == 2
    });
    let got = fleet.received(APP, "d1");
    assert_eq!(
        (got[0].id.as_str(), got[1].id.as_str()),
        (id.as_str(), id.as_str()),
        "the same id"
    );
    assert_eq!((got[0].connection, got[1].connection), (1, 2));
    let counts = json!({"targets": 1, "sent": 2, "delivered": 1, "expired": 0});
    assert_counts(Protocol::Http2, &pylon, &id, &counts);
    // Acknowledged now: a third connection is not sent it.
    assert!(fleet.disconnect(APP, "d1"));
    let marker = push(
        Protocol::Http1,
        &pylon,
        json!({"app_id": APP, "device_id": "d1", "data": "y"}),
    );
    assert!(fleet
        .reconnect(APP, "d1", devices)
        .unwrap()
        .is_authenticated());
    waits(&fleet, "the next message", |v| v.has(APP, "d1", &marker));
    let third: Vec<String> = (fleet.received(APP, "d1").into_iter())
        .filter(|r| r.connection == 3)
        .map(|r| r.id)
        .collect();
    assert_eq!(third, [marker]);
}

#[test]
fn messages_to_offline_devices_wait_until_their_ttl_then_count_as_expired() {
    let redis = RedisServer::start();
    let (pylon, devices) = node(&redis, json!({}));
    let kept = push(
        Protocol::Http1,
        &pylon,
        json!({"app_id": APP, "device_id": "later", "data": 1}),
    );
    let short = push(
        Protocol::Http2,
        &pylon,
        json!({"app_id": APP, "device_id": "late", "data": 2, "ttl": 1}),
    );
    // The short one's TTL passes while its device is offline; the sweep counts it.
    let expired = json!({"targets": 1, "sent": 0, "delivered": 0, "expired": 1});
    assert_counts(Protocol::Http1, &pylon, &short, &expired);
    let fleet = Fleet::start(devices);
    connected(&fleet, vec![device("later"), device("late")]);
    waits(&fleet, "the kept message", |v| v.has(APP, "later", &kept));
    let marker = push(
        Protocol::Http1,
        &pylon,
        json!({"app_id": APP, "device_id": "late", "data": 3}),
    );
    waits(&fleet, "a later message", |v| v.has(APP, "late", &marker));
    assert_eq!(
        fleet.ids(APP, "late"),
        [marker],
        "the expired message is not sent"
    );
}

/// Where `first` came before `then` among the ids a device received (`then` not yet come
/// counts as after).
fn came_before(ids: &[String], first: &str, then: &str) -> bool {
    let at = |id: &str| ids.iter().position(|i| i == id);
    match (at(first), at(then)) {
        (Some(first), Some(then)) => first < then,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

#[test]
fn broadcasts_and_messages_go_out_at_their_app_rates_and_high_priority_ones_overtake_them() {
    let redis = RedisServer::start();
    // The app's broadcasts reach a device a second, its messages to devices two a second.
    let rates = json!({"apps": {APP: {"rate": 2, "broadcast_rate": 1}}});
    let (pylon, devices) = node(&redis, rates);
    let fleet = Fleet::start(devices);
    let names: Vec<String> = (0..10).map(|i| format!("d{i}")).collect();
    connected(&fleet, names.iter().map(|n| device(n)).collect());
    for protocol in PROTOCOLS {
        let broadcast = push(
            protocol,
            &pylon,
            json!({"app_id": APP, "all": true, "data": "all"}),
        );
        waits(&fleet, "the broadcast's first device", |v| {
            names.iter().any(|n| v.has(APP, n, &broadcast))
        });
        let urgent = push(
            protocol,
            &pylon,
            json!({"app_id": APP, "device_ids": names, "priority": "high", "data": "now"}),
        );
        waits(&fleet, "the urgent message on every device", |v| {
            names.iter().all(|n| v.has(APP, n, &urgent))
        });
        // The broadcast takes ten seconds to reach the ten devices: the urgent message
        // overtook it on those it had not reached yet.
        let overtaken = (names.iter())
            .filter(|n| came_before(&fleet.ids(APP, n), &urgent, &broadcast))
            .count();
        assert!(
            overtaken >= 3,
            "{overtaken} devices had the urgent message first"
        );
        waits(&fleet, "the broadcast on every device", |v| {
            names.iter().all(|n| v.has(APP, n, &broadcast))
        });

        // Six messages to one device go out at two a second; an urgent one overtakes them.
        let queued: Vec<String> = (0..6)
            .map(|i| {
                push(
                    protocol,
                    &pylon,
                    json!({"app_id": APP, "device_id": "d0", "data": i}),
                )
            })
            .collect();
        let urgent = push(
            protocol,
            &pylon,
            json!({"app_id": APP, "device_id": "d0", "priority": "high", "data": "now"}),
        );
        waits(&fleet, "every message to d0", |v| {
            queued
                .iter()
                .chain([&urgent])
                .all(|id| v.has(APP, "d0", id))
        });
        let ids = fleet.ids(APP, "d0");
        assert!(came_before(&ids, &urgent, &queued[5]), "{ids:?}");
        assert!(
            (queued.windows(2)).all(|pair| came_before(&ids, &pair[0], &pair[1])),
            "the queued messages keep their order: {ids:?}"
        );
    }
}

#[test]
fn a_collapse_key_keeps_only_the_latest_message_for_an_offline_device() {
    let redis = RedisServer::start();
    let (pylon, devices) = node(&redis, json!({}));
    let message =
        |n: u32| json!({"app_id": APP, "device_id": "d", "data": n, "collapse_key": "score"});
    push(Protocol::Http1, &pylon, message(1));
    let latest = push(Protocol::Http1, &pylon, message(2));
    let fleet = Fleet::start(devices);
    connected(&fleet, vec![device("d")]);
    waits(&fleet, "the latest message", |v| v.has(APP, "d", &latest));
    assert_eq!(fleet.ids(APP, "d"), [latest]);
    assert_eq!(
        fleet.received(APP, "d")[0].collapse_key.as_deref(),
        Some("score")
    );
}

#[test]
fn a_second_connection_of_a_device_replaces_the_first() {
    let redis = RedisServer::start();
    let (pylon, devices) = node(&redis, json!({}));
    let fleet = Fleet::start(devices);
    connected(&fleet, vec![device("d")]);
    let second = Fleet::start(devices);
    connected(&second, vec![device("d")]);
    waits(&fleet, "the first connection closed", |v| {
        v.state(APP, "d")
            .is_some_and(|s| s.errors.iter().any(|(_, e)| e == "replaced") && !s.open)
    });
    let id = push(
        Protocol::Http1,
        &pylon,
        json!({"app_id": APP, "device_id": "d", "data": 1}),
    );
    waits(&second, "the push on the second connection", |v| {
        v.has(APP, "d", &id)
    });
    assert!(fleet.ids(APP, "d").is_empty());
}

#[test]
fn bad_devices_are_closed_with_an_error_and_counted_in_the_log() {
    let redis = RedisServer::start();
    let (pylon, devices) = node(&redis, json!({"max_body": 512}));
    let fleet = Fleet::start(devices);
    let refused = fleet.connect_one(DeviceSpec::new(APP, "d", "wrong-key"));
    assert_eq!(
        refused,
        Outcome::Failed(CloseReason::Error("unauthorized".into()))
    );
    let bad_id = fleet.connect_one(device("not an id"));
    assert!(
        matches!(&bad_id, Outcome::Failed(CloseReason::Error(e)) if e.starts_with("device_id")),
        "{bad_id:?}"
    );
    // Garbage, a ping before auth, an oversized body: an error frame, then the close.
    let read = Duration::from_secs(5);
    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "garbage",
            b"\x00\x00\x00\x02\x01\x00\x00\x00\x01{x".to_vec(),
            "bad auth frame",
        ),
        (
            "ping first",
            encode_json(3, 1, &json!({})),
            "the first frame must be auth",
        ),
        (
            "oversized",
            encode_json(1, 1, &json!({"token": "x".repeat(600)})),
            "too_long",
        ),
    ];
    for (case, bytes, error) in cases {
        let (answer, closed) = raw_session(devices, &bytes, read).unwrap();
        assert!(closed, "{case}: closed");
        let text = String::from_utf8_lossy(&answer);
        assert!(text.contains(error), "{case}: {text}");
    }
    // Silent: closed at the first-frame timeout, with nothing sent.
    let (answer, closed) = raw_session(devices, b"", read).unwrap();
    assert!(closed && String::from_utf8_lossy(&answer).contains("no auth frame in time"));
    let lines = pylon.wait_access_log(6);
    let failures: Vec<&str> = lines.iter().filter_map(|l| l["failure"].as_str()).collect();
    let metrics = push_metrics(&pylon);
    for failure in ["unauthorized", "bad_frame", "client_timeout"] {
        assert!(failures.contains(&failure), "{failure} in {failures:?}");
        let series =
            format!(r#"pylon_push_device_closes_total{{route="devices",reason="{failure}"}}"#);
        assert!(metrics[&series] >= 1.0, "{series} in {metrics:?}");
    }
    // A good device beside them is not disturbed.
    connected(&fleet, vec![device("good")]);
    let id = push(
        Protocol::Http1,
        &pylon,
        json!({"app_id": APP, "device_id": "good", "data": 1}),
    );
    waits(&fleet, "the good device's push", |v| {
        v.has(APP, "good", &id)
    });
}

#[test]
fn the_push_api_refuses_a_bad_message_with_the_field_named() {
    let redis = RedisServer::start();
    let (pylon, _) = node(&redis, json!({}));
    for protocol in PROTOCOLS {
        let cases = [
            (
                json!({"device_id": "d", "data": 1}),
                400,
                "missing field `app_id`",
            ),
            (
                json!({"app_id": APP, "data": 1}),
                400,
                "give exactly one of",
            ),
            (
                json!({"app_id": APP, "tag": "a AND", "data": 1}),
                400,
                "tag: ends where a tag was expected",
            ),
            (
                json!({"app_id": APP, "device_id": "d", "data": 1, "ttl": 0}),
                400,
                "ttl: must be 1 to",
            ),
            (
                json!({"app_id": APP, "device_ids": ["d", "x y"], "data": 1}),
                400,
                "device_ids[1]: may hold",
            ),
        ];
        for (body, status, message) in cases {
            let res = api(protocol, &pylon, "POST", "/push", &body);
            let text = String::from_utf8_lossy(&res.body).into_owned();
            assert_eq!(res.status, status, "{protocol:?} {body}: {text}");
            assert!(
                res.json()["error_msg"].as_str().unwrap().contains(message),
                "{protocol:?} {body}: {text}"
            );
        }
        let id = format!("fixed-{protocol:?}");
        let message = json!({"id": id, "app_id": APP, "device_id": "d", "data": 1});
        assert_eq!(api(protocol, &pylon, "POST", "/push", &message).status, 202);
        let again = api(protocol, &pylon, "POST", "/push", &message);
        assert_eq!(
            again.status,
            409,
            "{}",
            String::from_utf8_lossy(&again.body)
        );
        let unknown = api(protocol, &pylon, "GET", "/push?id=nothing", &Value::Null);
        assert_eq!(unknown.status, 404);
        assert_eq!(
            api(protocol, &pylon, "DELETE", "/push", &Value::Null).status,
            405
        );
        // The route's key-auth guards the API.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let anonymous = runtime.block_on(call(protocol, pylon.addr, "POST", "/push", &[], b"{}"));
        assert_eq!(anonymous.status, 401);
    }
}

#[test]
fn a_node_killed_mid_broadcast_loses_nothing_its_devices_reconnect_to_another() {
    let redis = RedisServer::start();
    // Broadcasts go out at 20 devices a second across the nodes: the first node dies with
    // most of its devices not yet sent the message.
    let conf = json!({"delivery": {"broadcast_rate": 20}});
    let (mut first, first_devices) = node(&redis, conf.clone());
    let (second, second_devices) = node(&redis, conf);
    let fleet = Fleet::start(first_devices);
    let names: Vec<String> = (0..40).map(|i| format!("d{i}")).collect();
    connected(&fleet, names.iter().map(|n| device(n)).collect());
    // Devices that do not acknowledge a message sent to them alone get it again.
    for name in &names[..5] {
        fleet.set_ack(APP, name, false);
    }
    let direct = push(
        Protocol::Http1,
        &second,
        json!({"app_id": APP, "device_ids": names[..5], "data": "direct"}),
    );
    waits(
        &fleet,
        "the direct pushes, accepted by the other node",
        |v| names[..5].iter().all(|n| v.has(APP, n, &direct)),
    );
    for name in &names[..5] {
        fleet.set_ack(APP, name, true);
    }
    let broadcast = push(
        Protocol::Http2,
        &second,
        json!({"app_id": APP, "all": true, "data": "all"}),
    );
    waits(&fleet, "the broadcast under way", |v| {
        names.iter().filter(|n| v.has(APP, n, &broadcast)).count() >= 3
    });
    first.kill();
    waits(&fleet, "every connection closed", |v| {
        names.iter().all(|n| !v.state(APP, n).unwrap().open)
    });
    for (_, name, outcome) in fleet.reconnect_all(second_devices) {
        assert!(outcome.is_authenticated(), "{name}: {outcome:?}");
    }
    waits(&fleet, "every message on every device", |v| {
        names.iter().all(|n| v.has(APP, n, &broadcast))
            && names[..5]
                .iter()
                .all(|n| v.ids(APP, n).iter().filter(|i| **i == direct).count() == 2)
    });
    for name in &names {
        let distinct = fleet.distinct_ids(APP, name);
        let expected = if names[..5].contains(name) { 2 } else { 1 };
        assert_eq!(distinct.len(), expected, "{name}: {distinct:?}");
    }
}

#[test]
fn a_stopping_node_tells_its_devices_to_reconnect_over_a_spread() {
    let redis = RedisServer::start();
    let (mut pylon, devices) = node(&redis, json!({"drain_spread": 5}));
    let fleet = Fleet::with_options(devices, Options::default());
    let names: Vec<String> = (0..20).map(|i| format!("d{i}")).collect();
    connected(&fleet, names.iter().map(|n| device(n)).collect());
    pylon.terminate();
    waits(&fleet, "every device told to reconnect", |v| {
        names
            .iter()
            .all(|n| !v.state(APP, n).unwrap().reconnects.is_empty())
    });
    let delays: Vec<u64> = (names.iter())
        .map(|n| fleet.state(APP, n).unwrap().reconnects[0].1)
        .collect();
    assert!(delays.iter().all(|d| *d <= 5000), "{delays:?}");
    assert!(
        delays.iter().any(|d| *d != delays[0]),
        "spread, not all at once: {delays:?}"
    );
    let (code, _) = pylon.wait_exit();
    assert_eq!(code, Some(0));
}

#[test]
fn a_bad_push_gateway_configuration_is_refused_with_the_field_named() {
    let redis = RedisServer::start();
    let cases = [
        (
            json!({"heartbeat": {"interval": 0}}),
            "protocol.conf.heartbeat.interval: must be 1 to 86400",
        ),
        (
            json!({"redis": {"policy": "local"}}),
            "protocol.conf.redis.policy: must be `redis` or `redis-cluster`",
        ),
        (
            json!({"commands": {"ping": 1}}),
            "protocol.conf.commands.ping: is 1, as `auth` is",
        ),
    ];
    for (conf, error) in cases {
        let doc = gateway_doc(&redis, conf);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("apisix.yaml");
        std::fs::write(&file, doc).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pylon"))
            .arg("validate")
            .arg(&file)
            .output()
            .unwrap();
        let printed = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{printed}");
        assert!(printed.contains(error), "{error} in {printed}");
    }
}

#[test]
fn devices_speak_websocket_on_the_same_listener() {
    let redis = RedisServer::start();
    let (pylon, devices) = node(&redis, json!({}));
    let options = Options {
        websocket: Some("/devices".into()),
        ping_every: Some(Duration::from_millis(100)),
        ..Options::default()
    };
    let fleet = Fleet::with_options(devices, options);
    connected(
        &fleet,
        vec![device("ws").with_tags(&["web"]).with_network("4g")],
    );
    assert_eq!(fleet.state(APP, "ws").unwrap().auth_oks[0]["heartbeat"], 20);
    for protocol in PROTOCOLS {
        let direct = push(
            protocol,
            &pylon,
            json!({"app_id": APP, "device_id": "ws", "data": {"n": 1}}),
        );
        let tagged = push(
            protocol,
            &pylon,
            json!({"app_id": APP, "tag": "web", "data": {"n": 2}}),
        );
        waits(&fleet, "both pushes", |v| {
            v.has(APP, "ws", &direct) && v.has(APP, "ws", &tagged)
        });
        let counts = json!({"targets": 1, "sent": 1, "delivered": 1, "expired": 0});
        assert_counts(protocol, &pylon, &direct, &counts);
    }
    // Pings are answered as text too.
    waits(&fleet, "pongs", |v| v.state(APP, "ws").unwrap().pongs >= 2);
    let refused = Fleet::with_options(
        devices,
        Options {
            websocket: Some("/devices".into()),
            ..Options::default()
        },
    )
    .connect_one(DeviceSpec::new(APP, "bad", "wrong-key"));
    assert_eq!(
        refused,
        Outcome::Failed(CloseReason::Error("unauthorized".into()))
    );
}

/// Reads frames off a device's TLS connection until one with `command` comes.
fn next_frame(stream: &mut impl std::io::Read, buf: &mut bytes::BytesMut, command: u8) -> Value {
    loop {
        if let Some(frame) = pylon_devices::decode_frame(buf, 1 << 20).unwrap() {
            if frame.command == command {
                return frame.json().unwrap();
            }
            continue;
        }
        let mut chunk = [0; 4096];
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "the gateway closed the device's connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn devices_connect_over_tls() {
    use std::io::Write;
    use support::tls::{client_config, TestCa, TlsConn};

    let redis = RedisServer::start();
    let ca = TestCa::new("push ca");
    let issued = ca.issue(&["push.test"]);
    let mut doc: Value = serde_json::from_str(&gateway_doc(&redis, json!({}))).unwrap();
    doc["ssls"] =
        json!([{"id": "push", "snis": ["push.test"], "cert": issued.cert, "key": issued.key}]);
    let listener = "  stream:\n    tcp:\n      - addr: \"127.0.0.1:0\"\n        tls: true\n";
    let pylon = Pylon::start(&doc.to_string(), listener);
    let (_, addr) = pylon
        .stream_addrs
        .iter()
        .find(|(kind, _)| kind == "tcp+tls")
        .unwrap();
    let mut device = TlsConn::connect(*addr, "push.test", client_config(ca.roots(), &[])).unwrap();
    let auth = json!({"token": DEVICE_KEY, "device_id": "secure", "app_id": APP});
    device.stream.write_all(&encode_json(1, 7, &auth)).unwrap();
    let mut buf = bytes::BytesMut::new();
    assert_eq!(next_frame(&mut device.stream, &mut buf, 2)["heartbeat"], 30);
    let id = push(
        Protocol::Http2,
        &pylon,
        json!({"app_id": APP, "device_id": "secure", "data": "s"}),
    );
    let pushed = next_frame(&mut device.stream, &mut buf, 5);
    assert_eq!(
        (pushed["id"].as_str(), &pushed["data"]),
        (Some(id.as_str()), &json!("s"))
    );
    device
        .stream
        .write_all(&encode_json(6, 0, &json!({"id": id})))
        .unwrap();
    let counts = json!({"targets": 1, "sent": 1, "delivered": 1, "expired": 0});
    assert_counts(Protocol::Http1, &pylon, &id, &counts);
}

#[test]
fn a_device_that_misses_its_heartbeats_is_closed_and_one_that_pings_stays() {
    let redis = RedisServer::start();
    let (pylon, devices) = node(&redis, json!({"heartbeat": {"interval": 1, "missed": 1}}));
    let silent = Fleet::with_options(
        devices,
        Options {
            ping_every: Some(Duration::from_secs(3600)),
            ..Options::default()
        },
    );
    let pinging = Fleet::with_options(
        devices,
        Options {
            ping_every: Some(Duration::from_millis(200)),
            ..Options::default()
        },
    );
    connected(&silent, vec![device("silent")]);
    connected(&pinging, vec![device("pinging")]);
    waits(&silent, "the silent device closed", |v| {
        v.state(APP, "silent")
            .is_some_and(|s| !s.open && s.errors.iter().any(|(_, e)| e == "heartbeat missed"))
    });
    assert!(pinging.state(APP, "pinging").unwrap().open);
    let id = push(
        Protocol::Http1,
        &pylon,
        json!({"app_id": APP, "device_id": "pinging", "data": 1}),
    );
    waits(&pinging, "the push to the device that pings", |v| {
        v.has(APP, "pinging", &id)
    });
    let metrics = push_metrics(&pylon);
    assert_eq!(
        metrics[r#"pylon_push_device_closes_total{route="devices",reason="idle_timeout"}"#],
        1.0
    );
}

#[test]
fn a_redis_cluster_holds_the_devices_and_messages_of_two_nodes() {
    let cluster = RedisCluster::start();
    let redis = json!({"policy": "redis-cluster", "redis_cluster_name": "push",
        "redis_cluster_nodes": cluster.addresses()});
    let doc = gateway_doc_on(redis, json!({}));
    let first = Pylon::start(&doc, STREAM_LISTENER);
    let second = Pylon::start(&doc, STREAM_LISTENER);
    let first_devices = support::frames::stream_addr(&first);
    let second_devices = support::frames::stream_addr(&second);
    let fleet = Fleet::start(first_devices);
    let names: Vec<String> = (0..10).map(|i| format!("d{i}")).collect();
    connected(
        &fleet,
        names.iter().map(|n| device(n).with_tags(&["c"])).collect(),
    );
    // Accepted by the other node: the devices' keys spread over the cluster's slots.
    let direct = push(
        Protocol::Http1,
        &second,
        json!({"app_id": APP, "device_ids": names, "data": 1}),
    );
    let tagged = push(
        Protocol::Http2,
        &second,
        json!({"app_id": APP, "tag": "c", "data": 2}),
    );
    waits(&fleet, "both messages on every device", |v| {
        names
            .iter()
            .all(|n| v.has(APP, n, &direct) && v.has(APP, n, &tagged))
    });
    let counts = json!({"targets": 10, "sent": 10, "delivered": 10, "expired": 0});
    assert_counts(Protocol::Http1, &first, &direct, &counts);
    assert_counts(Protocol::Http2, &second, &tagged, &counts);
    // Offline, then back on the other node: what waited comes.
    assert!(fleet.disconnect(APP, "d0"));
    let later = push(
        Protocol::Http1,
        &first,
        json!({"app_id": APP, "device_id": "d0", "data": 3}),
    );
    assert!(fleet
        .reconnect(APP, "d0", second_devices)
        .unwrap()
        .is_authenticated());
    waits(&fleet, "the message that waited", |v| {
        v.has(APP, "d0", &later)
    });
}

#[test]
fn a_device_may_authenticate_with_a_jwt_of_a_consumer() {
    let redis = RedisServer::start();
    let mut doc: Value = serde_json::from_str(&gateway_doc(&redis, json!({}))).unwrap();
    doc["stream_routes"][0]["plugins"] = json!({"jwt-auth": {}});
    doc["consumers"][1]["plugins"] =
        json!({"jwt-auth": {"key": "phone-key", "secret": "phone-secret"}});
    let pylon = Pylon::start(&doc.to_string(), STREAM_LISTENER);
    let devices = support::frames::stream_addr(&pylon);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let token = support::jwt::hs256(&json!({"key": "phone-key", "exp": exp}), b"phone-secret");
    let forged = support::jwt::hs256(&json!({"key": "phone-key", "exp": exp}), b"guess");
    let fleet = Fleet::start(devices);
    connected(&fleet, vec![DeviceSpec::new(APP, "jwt", &token)]);
    let refused = fleet.connect_one(DeviceSpec::new(APP, "forged", &forged));
    assert_eq!(
        refused,
        Outcome::Failed(CloseReason::Error("unauthorized".into()))
    );
    let id = push(
        Protocol::Http1,
        &pylon,
        json!({"app_id": APP, "device_id": "jwt", "data": 1}),
    );
    waits(&fleet, "the push", |v| v.has(APP, "jwt", &id));
}

#[test]
fn a_broadcast_reaches_the_devices_that_connected_while_redis_was_away() {
    let mut redis = RedisServer::start();
    redis.stop();
    let (pylon, devices) = node(&redis, json!({}));
    let fleet = Fleet::start(devices);
    let names: Vec<String> = (0..20).map(|i| format!("d{i}")).collect();
    // Their tokens are the consumers': they connect while the hub cannot reach Redis.
    connected(&fleet, names.iter().map(|n| device(n)).collect());
    redis.restart();
    // The push API answers 503 until its own connection is back; the broadcast then goes
    // out before the hub, which retries once a second, has read the stream's end.
    let message = json!({"app_id": APP, "all": true, "data": "back"});
    let mut accepted = None;
    for _ in 0..100 {
        let res = api(Protocol::Http1, &pylon, "POST", "/push", &message);
        if res.status == 202 {
            accepted = Some(res.json()["id"].as_str().unwrap().to_owned());
            break;
        }
        assert_eq!(res.status, 503, "{}", String::from_utf8_lossy(&res.body));
        std::thread::sleep(Duration::from_millis(20));
    }
    let id = accepted.expect("the push API takes the message once Redis is back");
    waits(&fleet, "the broadcast on every device", |v| {
        names.iter().all(|n| v.has(APP, n, &id))
    });
}
