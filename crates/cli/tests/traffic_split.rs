//! `traffic-split` through the gateway, over HTTP/1.1 and HTTP/2 alike: weighted canary
//! releases, blue-green lanes by header, users kept on one lane by a cookie, and the split's
//! upstreams followed when they change.

mod support;

use std::net::SocketAddr;

use serde_json::{json, Value};
use support::client::get;
use support::protocols::{call, Protocol, PROTOCOLS};
use support::upstream::Upstream;
use support::{wait_until, Pylon};

/// The routes file: `routes`, and the upstream `canary` on `canary`.
fn config(routes: &[Value], canary: SocketAddr) -> String {
    json!({
        "routes": routes,
        "upstreams": [{"id": "canary", "nodes": {canary.to_string(): 1}}]
    })
    .to_string()
}

/// A route on `uri` to `stable`, with `traffic-split` configured as `split`.
fn split_route(uri: &str, stable: SocketAddr, split: Value) -> Value {
    json!({
        "id": uri.trim_start_matches('/'),
        "uri": uri,
        "upstream": {"nodes": {stable.to_string(): 1}},
        "plugins": {"traffic-split": split}
    })
}

/// Which upstream answered a GET of `target` with `headers`.
async fn served_by(
    protocol: Protocol,
    pylon: &Pylon,
    target: &str,
    headers: &[(&str, &str)],
) -> String {
    let res = call(protocol, pylon.addr, "GET", target, headers, b"").await;
    assert_eq!(res.status, 200, "{protocol:?} {target}: {}", res.text());
    res.header("x-upstream").unwrap_or_default().to_owned()
}

#[tokio::test]
async fn weights_send_their_share_in_turn_to_the_canary() {
    let (stable, canary) = (Upstream::start("stable"), Upstream::start("canary"));
    let split = json!({"rules": [{"weighted_upstreams": [
        {"upstream_id": "canary", "weight": 1},
        {"weight": 3}
    ]}]});
    let pylon = Pylon::start(
        &config(&[split_route("/app", stable.addr, split)], canary.addr),
        "",
    );
    for protocol in PROTOCOLS {
        // A whole period of the weights, in order: one canary in every four.
        let mut got = Vec::new();
        for _ in 0..8 {
            got.push(served_by(protocol, &pylon, "/app", &[]).await);
        }
        let to_canary = got.iter().filter(|u| *u == "canary").count();
        assert_eq!(to_canary, 2, "{protocol:?}: {got:?}");
        assert_eq!(got.len() - to_canary, 6, "{protocol:?}: {got:?}");
    }
}

#[tokio::test]
async fn a_header_or_an_argument_picks_the_green_lane_and_others_stay_blue() {
    let (blue, green) = (Upstream::start("blue"), Upstream::start("green"));
    let split = json!({"rules": [{
        "match": [
            {"vars": [["http_x_release", "==", "green"]]},
            {"vars": [["arg_release", "==", "green"]]}
        ],
        "weighted_upstreams": [{"upstream": {"nodes": {green.addr.to_string(): 1}}}]
    }]});
    let pylon = Pylon::start(
        &config(&[split_route("/app", blue.addr, split)], blue.addr),
        "",
    );
    for protocol in PROTOCOLS {
        let header = [("x-release", "green")];
        assert_eq!(served_by(protocol, &pylon, "/app", &header).await, "green");
        assert_eq!(
            served_by(protocol, &pylon, "/app?release=green", &[]).await,
            "green"
        );
        let other = [("x-release", "blue")];
        assert_eq!(served_by(protocol, &pylon, "/app", &other).await, "blue");
        assert_eq!(served_by(protocol, &pylon, "/app", &[]).await, "blue");
    }
}

#[tokio::test]
async fn a_user_stays_on_one_lane_and_users_split_by_the_weights() {
    let (stable, canary) = (Upstream::start("stable"), Upstream::start("canary"));
    let split = json!({"rules": [{
        "sticky_key": "cookie_user",
        "weighted_upstreams": [{"upstream_id": "canary", "weight": 1}, {"weight": 3}]
    }]});
    let pylon = Pylon::start(
        &config(&[split_route("/app", stable.addr, split)], canary.addr),
        "",
    );
    const USERS: usize = 200;
    let mut on_canary = 0;
    for user in 0..USERS {
        let cookie = format!("user=u{user}");
        let headers = [("cookie", cookie.as_str())];
        let mut lanes = Vec::new();
        for protocol in PROTOCOLS {
            for _ in 0..2 {
                lanes.push(served_by(protocol, &pylon, "/app", &headers).await);
            }
        }
        assert!(lanes.iter().all(|l| *l == lanes[0]), "u{user}: {lanes:?}");
        on_canary += usize::from(lanes[0] == "canary");
    }
    // 200 users at p = 0.25: a standard deviation of 6.1; these bounds are 4.5 of it.
    assert!(
        (23..=77).contains(&on_canary),
        "{on_canary} of {USERS} on the canary"
    );
}

#[tokio::test]
async fn the_split_follows_its_upstream_when_it_changes() {
    let (stable, canary) = (Upstream::start("stable"), Upstream::start("canary"));
    let moved = Upstream::start("moved");
    let split = json!({"rules": [{"weighted_upstreams": [{"upstream_id": "canary"}]}]});
    let route = split_route("/app", stable.addr, split);
    let pylon = Pylon::start(&config(std::slice::from_ref(&route), canary.addr), "");
    for protocol in PROTOCOLS {
        assert_eq!(served_by(protocol, &pylon, "/app", &[]).await, "canary");
    }
    // The upstream `canary` moves: the route, which references it only through its
    // plugin, follows.
    pylon.write_routes(&config(&[route], moved.addr));
    wait_until(
        || get(pylon.addr, "example.com", "/app").header("x-upstream") == Some("moved"),
        "the split sending to the moved upstream",
    );
    for protocol in PROTOCOLS {
        assert_eq!(served_by(protocol, &pylon, "/app", &[]).await, "moved");
    }
}

#[tokio::test]
async fn a_lane_whose_upstream_is_missing_answers_503_and_the_others_serve() {
    let (stable, canary) = (Upstream::start("stable"), Upstream::start("canary"));
    let missing = json!({"rules": [
        {"match": [{"vars": [["http_x_lane", "==", "gone"]]}],
         "weighted_upstreams": [{"upstream_id": "gone"}]},
        {"weighted_upstreams": [{"upstream_id": "canary"}]}
    ]});
    // A route of plugins only: its requests go where the split sends them.
    let mut route = split_route("/app", stable.addr, missing);
    route.as_object_mut().unwrap().remove("upstream");
    let pylon = Pylon::start(&config(&[route], canary.addr), "");
    for protocol in PROTOCOLS {
        assert_eq!(served_by(protocol, &pylon, "/app", &[]).await, "canary");
        let gone = [("x-lane", "gone")];
        let res = call(protocol, pylon.addr, "GET", "/app", &gone, b"").await;
        assert_eq!(res.status, 503, "{protocol:?}: {}", res.text());
    }
    assert_eq!(stable.request_count(), 0);
}
