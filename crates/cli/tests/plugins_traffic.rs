//! Plugins that shape traffic, through the gateway, over HTTP/1.1 and HTTP/2 alike:
//! fault-injection (delays and aborts) and traffic-split (weighted canary releases, blue-green
//! lanes by header, users kept on one lane by a cookie, the split's upstreams followed when
//! they change).
//!
//! Configurations are written as JSON, which is YAML: the standalone `apisix.yaml`.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::client::{get, Conn};
use support::protocols::{call, Protocol, PROTOCOLS};
use support::upstream::Upstream;
use support::{wait_until, Pylon};

/// A route on `uri` to `addr` with `plugins`.
fn route(id: &str, uri: &str, addr: SocketAddr, plugins: Value) -> Value {
    json!({"id": id, "uri": uri, "plugins": plugins, "upstream": {"nodes": {addr.to_string(): 1}}})
}

fn routes(routes: &[Value]) -> String {
    json!({ "routes": routes }).to_string()
}

// === fault-injection ===

#[tokio::test]
async fn fault_injection_aborts_with_its_rendered_answer_and_the_response_phases_run() {
    let up = Upstream::start("up");
    let pylon = Pylon::start(
        &routes(&[route(
            "abort",
            "/abort",
            up.addr,
            json!({
                "fault-injection": {"abort": {
                    "http_status": 418,
                    "body": "fault for $arg_name via ${http_x_via}",
                    "headers": {"X-Fault": "$uri", "Retry-After": 5}
                }},
                // A response phase: it sees the abort as it would the upstream's answer.
                "response-rewrite": {"headers": {"set": {"X-Rewritten": "yes"}}}
            }),
        )]),
        "",
    );
    for protocol in PROTOCOLS {
        let what = format!("{protocol:?}");
        let headers = [("x-via", "proxy-1")];
        let res = call(
            protocol,
            pylon.addr,
            "GET",
            "/abort?name=ann",
            &headers,
            b"",
        )
        .await;
        assert_eq!(res.status, 418, "{what}: {}", res.text());
        assert_eq!(res.text(), "fault for ann via proxy-1", "{what}");
        assert_eq!(res.header("x-fault"), Some("/abort"), "{what}");
        assert_eq!(res.header("retry-after"), Some("5"), "{what}");
        assert_eq!(res.header("content-type"), Some("text/plain"), "{what}");
        assert_eq!(res.header("x-rewritten"), Some("yes"), "{what}");
        if let Some(length) = res.header("content-length") {
            assert_eq!(length, res.body.len().to_string(), "{what}");
        }
    }
    assert_eq!(
        up.request_count(),
        0,
        "an aborted request reached the upstream"
    );
}

#[tokio::test]
async fn fault_injection_aborts_only_the_requests_its_vars_match() {
    let up = Upstream::start("up");
    let pylon = Pylon::start(
        &routes(&[route(
            "vars",
            "/vars",
            up.addr,
            json!({"fault-injection": {"abort": {
                "http_status": 503,
                "body": "injected",
                // Alternatives: the header, or both arguments.
                "vars": [
                    [["http_x_fault", "==", "yes"]],
                    [["arg_a", "==", "1"], ["arg_b", "==", "2"]]
                ]
            }}}),
        )]),
        "",
    );
    for protocol in PROTOCOLS {
        for (target, headers, aborted) in [
            ("/vars", &[("x-fault", "yes")][..], true),
            ("/vars", &[("x-fault", "no")][..], false),
            ("/vars", &[][..], false),
            ("/vars?a=1&b=2", &[][..], true),
            ("/vars?a=1", &[][..], false),
        ] {
            let what = format!("{protocol:?} {target} {headers:?}");
            let before = up.request_count();
            let res = call(protocol, pylon.addr, "GET", target, headers, b"").await;
            let expected = if aborted {
                (503, "injected")
            } else {
                (200, "up")
            };
            assert_eq!((res.status, res.text().as_str()), expected, "{what}");
            let reached = up.request_count() - before;
            assert_eq!(reached, usize::from(!aborted), "{what}: upstream requests");
        }
    }
}

#[tokio::test]
async fn fault_injection_delays_before_the_upstream_and_before_an_abort() {
    let up = Upstream::start("up");
    let delay = Duration::from_millis(500);
    let pylon = Pylon::start(
        &routes(&[
            route(
                "delay",
                "/delay",
                up.addr,
                json!({"fault-injection": {"delay": {"duration": 0.5}}}),
            ),
            route(
                "both",
                "/both",
                up.addr,
                json!({"fault-injection": {
                    "delay": {"duration": 0.5},
                    "abort": {"http_status": 500, "body": "late and broken"}
                }}),
            ),
        ]),
        "",
    );
    for protocol in PROTOCOLS {
        let what = format!("{protocol:?} /delay");
        let before = up.request_count();
        let started = Instant::now();
        let res = call(protocol, pylon.addr, "GET", "/delay", &[], b"").await;
        // Only a lower bound: the gateway must not have answered before the delay was over.
        assert!(started.elapsed() >= delay, "{what}: answered early");
        assert_eq!((res.status, res.text().as_str()), (200, "up"), "{what}");
        assert_eq!(up.request_count(), before + 1, "{what}: upstream requests");

        let what = format!("{protocol:?} /both");
        let before = up.request_count();
        let started = Instant::now();
        let res = call(protocol, pylon.addr, "GET", "/both", &[], b"").await;
        assert!(started.elapsed() >= delay, "{what}: answered early");
        assert_eq!(
            (res.status, res.text().as_str()),
            (500, "late and broken"),
            "{what}"
        );
        assert_eq!(up.request_count(), before, "{what}: upstream requests");
    }
}

// === traffic-split ===

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
async fn traffic_split_weights_send_their_share_in_turn_to_the_canary() {
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
async fn traffic_split_a_header_or_an_argument_picks_the_green_lane_and_others_stay_blue() {
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
async fn traffic_split_a_user_stays_on_one_lane_and_users_split_by_the_weights() {
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
async fn traffic_split_follows_its_upstream_when_it_changes() {
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
async fn traffic_split_a_lane_whose_upstream_is_missing_answers_503_and_the_others_serve() {
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

// === proxy-mirror ===

/// `proxy-mirror`'s counts, from the node's status.
fn mirror_counts(pylon: &Pylon) -> Value {
    get(pylon.control.unwrap(), "localhost", "/v1/status").json()["proxy_mirror"].clone()
}

/// Waits until no copy is under way.
fn mirrors_settled(pylon: &Pylon) -> Value {
    wait_until(
        || mirror_counts(pylon)["in_flight"] == 0,
        "the copies to end",
    );
    mirror_counts(pylon)
}

#[tokio::test]
async fn proxy_mirror_copies_each_request_with_its_body_as_the_upstream_gets_it() {
    let (up, mirror) = (Upstream::start("up"), Upstream::start("mirror"));
    let host = format!("http://{}", mirror.addr);
    let pylon = Pylon::start(
        &routes(&[
            route(
                "copied",
                "/api/*",
                up.addr,
                json!({
                    "proxy-mirror": {"host": host},
                    "proxy-rewrite": {"headers": {"set": {"X-Edited": "yes"}}}
                }),
            ),
            route(
                "replaced",
                "/replaced/*",
                up.addr,
                json!({"proxy-mirror": {"host": host, "path": "/shadow"}}),
            ),
            route(
                "prefixed",
                "/prefixed/*",
                up.addr,
                json!({"proxy-mirror": {"host": host, "path": "/rec", "path_concat_mode": "prefix"}}),
            ),
        ]),
        "",
    );
    // Larger than the read buffer and the HTTP/2 windows: it streams in many pieces.
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    for protocol in PROTOCOLS {
        let what = format!("{protocol:?}");
        let before = mirror.request_count();
        let headers = [("x-trace", "t-1")];
        let res = call(protocol, pylon.addr, "GET", "/api/get?x=1", &headers, b"").await;
        assert_eq!((res.status, res.text().as_str()), (200, "up"), "{what}");
        let res = call(protocol, pylon.addr, "POST", "/api/post", &headers, &body).await;
        assert_eq!((res.status, res.text().as_str()), (200, "up"), "{what}");
        assert_eq!(up.last().body, body, "{what}: the upstream's body");
        let res = call(protocol, pylon.addr, "PUT", "/replaced/a?q=2", &[], b"put").await;
        assert_eq!(res.status, 200, "{what}");
        let res = call(protocol, pylon.addr, "GET", "/prefixed/b?q=3", &[], b"").await;
        assert_eq!(res.status, 200, "{what}");

        wait_until(|| mirror.request_count() == before + 4, "the copies");
        let mut copies = mirror.received()[before..].to_vec();
        copies.sort_by(|a, b| a.target.cmp(&b.target));
        let seen: Vec<(&str, &str)> = copies
            .iter()
            .map(|c| (c.method.as_str(), c.target.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                ("GET", "/api/get?x=1"),
                ("POST", "/api/post"),
                ("GET", "/rec/prefixed/b?q=3"),
                ("PUT", "/shadow?q=2"),
            ],
            "{what}"
        );
        let (get, post) = (&copies[0], &copies[1]);
        assert_eq!(get.header("x-trace"), Some("t-1"), "{what}");
        assert_eq!(
            get.header("x-edited"),
            Some("yes"),
            "{what}: the plugins' edits"
        );
        assert_eq!(get.header("host"), Some("example.com"), "{what}");
        assert!(get.body.is_empty(), "{what}");
        assert_eq!(post.body, body, "{what}: the copied body");
        assert_eq!(copies[3].body, b"put", "{what}");
    }
    // A chunked HTTP/1.1 body is copied decoded, and framed afresh.
    let before = mirror.request_count();
    let mut conn = Conn::connect(pylon.addr);
    conn.send(
        b"POST /api/chunked HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n",
    );
    assert_eq!(conn.read_response().unwrap().status, 200);
    wait_until(|| mirror.request_count() == before + 1, "the chunked copy");
    let copy = mirror.last();
    assert_eq!(
        (copy.body.as_slice(), copy.chunked),
        (&b"hello, world"[..], true)
    );

    let counts = mirrors_settled(&pylon);
    assert_eq!(counts["mirrored"], 9);
    assert_eq!(
        (counts["failed"].clone(), counts["dropped"].clone()),
        (json!(0), json!(0))
    );
}

#[tokio::test]
async fn proxy_mirror_copies_a_sample_of_requests_within_binomial_bounds() {
    let (up, mirror) = (Upstream::start("up"), Upstream::start("mirror"));
    let pylon = Pylon::start(
        &routes(&[route(
            "sampled",
            "/s",
            up.addr,
            json!({"proxy-mirror": {"host": format!("http://{}", mirror.addr), "sample_ratio": 0.3}}),
        )]),
        "",
    );
    const N: usize = 300;
    for protocol in PROTOCOLS {
        let before = mirror.request_count();
        for _ in 0..N {
            let res = call(protocol, pylon.addr, "GET", "/s", &[], b"").await;
            assert_eq!(res.status, 200);
        }
        mirrors_settled(&pylon);
        let copied = mirror.request_count() - before;
        // Binomial(300, 0.3): mean 90, standard deviation 7.9; five of them either side.
        assert!(
            (51..=129).contains(&copied),
            "{protocol:?}: {copied} of {N} copied at a ratio of 0.3"
        );
    }
}

/// A mirror that accepts connections and never reads or answers, keeping them open.
fn hanging_mirror() -> (SocketAddr, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let held = std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().take(64) {
            held.push(stream);
        }
    });
    (addr, held)
}

#[tokio::test]
async fn proxy_mirror_that_hangs_leaves_the_main_responses_alone_and_drops_what_it_cannot_take() {
    let up = Upstream::start("up");
    let (hung, _held) = hanging_mirror();
    let mirror = |max_in_flight: u32| {
        json!({"proxy-mirror": {
            "host": format!("http://{hung}"),
            "timeout": 600_000,
            "max_in_flight": max_in_flight
        }})
    };
    let pylon = Pylon::start(
        &routes(&[
            route("few", "/few", up.addr, mirror(2)),
            route("many", "/many", up.addr, mirror(64)),
        ]),
        "",
    );
    let mut sent = 0;
    for protocol in PROTOCOLS {
        for _ in 0..5 {
            let res = call(protocol, pylon.addr, "GET", "/few", &[], b"").await;
            assert_eq!(
                (res.status, res.text().as_str()),
                (200, "up"),
                "{protocol:?}"
            );
            sent += 1;
        }
    }
    // Two copies wait on the mirror; every later one was dropped at once.
    let counts = mirror_counts(&pylon);
    assert_eq!(counts["in_flight"], 2);
    assert_eq!(counts["dropped"], sent - 2);

    // A body larger than what the mirror's socket and the copy's queue can take: the copy
    // falls behind, is dropped, and the upstream gets the whole body all the same.
    let body: Vec<u8> = (0..16 << 20).map(|i: u32| (i % 253) as u8).collect();
    for protocol in PROTOCOLS {
        let res = call(protocol, pylon.addr, "POST", "/many", &[], &body).await;
        assert_eq!(
            (res.status, res.text().as_str()),
            (200, "up"),
            "{protocol:?}"
        );
        assert!(up.last().body == body, "{protocol:?}: the upstream's body");
    }
    let counts = mirror_counts(&pylon);
    assert_eq!(counts["dropped"], sent, "two bodies fell behind");
    assert_eq!(counts["mirrored"], 0);
}
