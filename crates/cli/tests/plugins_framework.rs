//! The plugin framework through the gateway, over HTTP/1.1 and HTTP/2 alike: which place's
//! configuration of a plugin wins (consumer > consumer group > route > plugin config >
//! service), global rules, `_meta` (`filter`, `disable`, `error_response`, `gray_ratio`), and
//! bad plugin configurations refused by `pylon validate` and left unserved by `pylon run`.
//!
//! Configurations are written as JSON, which is YAML (the standalone `apisix.yaml`), but for
//! `pylon validate`, whose error paths are positions in a YAML document as a user writes it.

mod support;

use bytes::Bytes;
use serde_json::{json, Value};
use support::client::Conn;
use support::http2::{connect, read_reply, request, send};
use support::protocols::{call, Protocol, PROTOCOLS};
use support::upstream::Upstream;
use support::{validate, Pylon};

/// The upstream of `up`, for a route or service.
fn upstream(up: &Upstream) -> Value {
    json!({"nodes": {up.addr.to_string(): 1}})
}

/// A route on `uri` to `up` with `plugins`.
fn route(id: &str, uri: &str, up: &Upstream, plugins: Value) -> Value {
    json!({"id": id, "uri": uri, "plugins": plugins, "upstream": upstream(up)})
}

/// `plugin` configured to set header `name` to `value`: response-rewrite on the response,
/// proxy-rewrite on the upstream request.
fn setting(plugin: &str, name: &str, value: &str) -> Value {
    json!({ plugin: {"headers": {"set": { name: value }}} })
}

/// Every place a plugin can be configured, each setting `X-Place` to its own name with
/// `plugin`: a service, a plugin config, a route using both (with key-auth), a consumer group
/// and consumers: `plain` (no plugins of its own, no group), `grouped` (in the group) and
/// `own` (in the group, and its own configuration too).
fn every_place(plugin: &str, up: &Upstream) -> String {
    let mut on_service = setting(plugin, "X-Place", "service");
    on_service[plugin]["headers"]["set"]["X-From-Service"] = json!("yes");
    let mut on_route = setting(plugin, "X-Place", "route");
    on_route["key-auth"] = json!({});
    let mut own = setting(plugin, "X-Place", "consumer");
    own["key-auth"] = json!({"key": "own-key"});
    json!({
        "services": [{"id": "s", "plugins": on_service, "upstream": upstream(up)}],
        "plugin_configs": [{"id": "pc", "plugins": setting(plugin, "X-Place", "plugin_config")}],
        "consumer_groups": [{"id": "g", "plugins": setting(plugin, "X-Place", "consumer_group")}],
        "consumers": [
            {"username": "plain", "plugins": {"key-auth": {"key": "plain-key"}}},
            {"username": "grouped", "group_id": "g", "plugins": {"key-auth": {"key": "grouped-key"}}},
            {"username": "own", "group_id": "g", "plugins": own}
        ],
        "routes": [
            {"id": "service", "uri": "/service", "service_id": "s"},
            {"id": "plugin-config", "uri": "/plugin-config", "service_id": "s", "plugin_config_id": "pc"},
            {"id": "route", "uri": "/route", "service_id": "s", "plugin_config_id": "pc", "plugins": on_route}
        ]
    })
    .to_string()
}

/// What each request to [`every_place`] must get: the place whose configuration wins.
const WINNERS: [(&str, Option<&str>, &str); 6] = [
    ("/service", None, "service"),
    ("/plugin-config", None, "plugin_config"),
    ("/route", Some("plain-key"), "route"),
    ("/route", Some("grouped-key"), "consumer_group"),
    ("/route", Some("own-key"), "consumer"),
    // Consumers' plugins apply to their own requests only.
    ("/route", Some("plain-key"), "route"),
];

// === precedence ===

#[tokio::test]
async fn the_most_specific_place_configures_a_response_plugin() {
    let up = Upstream::start("up");
    let pylon = Pylon::start(&every_place("response-rewrite", &up), "");
    for protocol in PROTOCOLS {
        for (target, key, place) in WINNERS {
            let headers: Vec<(&str, &str)> = key.iter().map(|k| ("apikey", *k)).collect();
            let res = call(protocol, pylon.addr, "GET", target, &headers, b"").await;
            let what = format!("{protocol:?} {target} with {key:?}");
            assert_eq!(res.status, 200, "{what}: {}", res.text());
            assert_eq!(res.header("x-place"), Some(place), "{what}");
            // A place's configuration replaces a lower one's whole, fields are not merged.
            let from_service = (place == "service").then_some("yes");
            assert_eq!(res.header("x-from-service"), from_service, "{what}");
        }
    }
}

#[tokio::test]
async fn the_most_specific_place_configures_a_request_plugin() {
    let up = Upstream::start("up");
    let pylon = Pylon::start(&every_place("proxy-rewrite", &up), "");
    for protocol in PROTOCOLS {
        for (target, key, place) in WINNERS {
            let headers: Vec<(&str, &str)> = key.iter().map(|k| ("apikey", *k)).collect();
            let res = call(protocol, pylon.addr, "GET", target, &headers, b"").await;
            let what = format!("{protocol:?} {target} with {key:?}");
            assert_eq!(res.status, 200, "{what}: {}", res.text());
            let seen = up.last();
            assert_eq!(seen.header("x-place"), Some(place), "{what}");
            let from_service = (place == "service").then_some("yes");
            assert_eq!(seen.header("x-from-service"), from_service, "{what}");
        }
    }
}

#[tokio::test]
async fn a_consumers_access_plugin_takes_the_place_of_the_routes() {
    let up = Upstream::start("up");
    let config = json!({
        "routes": [route("r", "/r", &up, json!({
            "key-auth": {},
            "ip-restriction": {"blacklist": ["127.0.0.1"], "message": "the route's"}
        }))],
        "consumers": [
            {"username": "jack", "plugins": {
                "key-auth": {"key": "jack-key"},
                "ip-restriction": {"whitelist": ["127.0.0.1"]}
            }},
            {"username": "rose", "plugins": {"key-auth": {"key": "rose-key"}}}
        ]
    });
    let pylon = Pylon::start(&config.to_string(), "");
    for protocol in PROTOCOLS {
        let res = call(
            protocol,
            pylon.addr,
            "GET",
            "/r",
            &[("apikey", "jack-key")],
            b"",
        )
        .await;
        assert_eq!(res.status, 200, "{protocol:?} jack: {}", res.text());
        let res = call(
            protocol,
            pylon.addr,
            "GET",
            "/r",
            &[("apikey", "rose-key")],
            b"",
        )
        .await;
        assert_eq!(res.status, 403, "{protocol:?} rose: {}", res.text());
        assert_eq!(
            res.json(),
            json!({"message": "the route's"}),
            "{protocol:?} rose"
        );
    }
}

// === global rules ===

#[tokio::test]
async fn global_rules_run_for_every_routed_request_before_the_routes_plugins() {
    let up = Upstream::start("up");
    let config = json!({
        "global_rules": [{"id": "g", "plugins": {
            "proxy-rewrite": {"headers": {"set": {"X-Global": "yes"}}},
            "uri-blocker": {"block_rules": ["^/blocked"], "rejected_msg": "blocked globally"}
        }}],
        "routes": [
            {"id": "bare", "uri": "/bare", "upstream": upstream(&up)},
            route("own", "/own", &up, setting("proxy-rewrite", "X-Route", "yes")),
            // mocking's priority (10900) is above uri-blocker's (2900): only running the
            // global rules first lets the block win.
            route("blocked", "/blocked", &up, json!({"mocking": {"response_example": "mocked"}})),
        ]
    });
    let pylon = Pylon::start(&config.to_string(), "");
    for protocol in PROTOCOLS {
        let res = call(protocol, pylon.addr, "GET", "/bare", &[], b"").await;
        assert_eq!(res.status, 200, "{protocol:?}: {}", res.text());
        assert_eq!(
            up.last().header("x-global"),
            Some("yes"),
            "{protocol:?} /bare"
        );

        // The route's own proxy-rewrite runs too: a global rule's plugin is not the route's.
        let res = call(protocol, pylon.addr, "GET", "/own", &[], b"").await;
        assert_eq!(res.status, 200, "{protocol:?}: {}", res.text());
        let seen = up.last();
        assert_eq!(seen.header("x-global"), Some("yes"), "{protocol:?} /own");
        assert_eq!(seen.header("x-route"), Some("yes"), "{protocol:?} /own");

        let res = call(protocol, pylon.addr, "GET", "/blocked", &[], b"").await;
        assert_eq!(res.status, 403, "{protocol:?}: {}", res.text());
        assert_eq!(
            res.json(),
            json!({"error_msg": "blocked globally"}),
            "{protocol:?}"
        );
    }
}

#[tokio::test]
async fn global_rules_run_for_a_request_no_route_matches() {
    let up = Upstream::start("up");
    let config = json!({
        "global_rules": [{"id": "g", "plugins": {
            "response-rewrite": {"headers": {"set": {"X-Global": "yes", "X-Route": "[$route_id]"}}},
            "uri-blocker": {"block_rules": ["\\.php$"]}
        }}],
        "routes": [{"id": "bare", "uri": "/bare", "upstream": upstream(&up)}]
    });
    let pylon = Pylon::start(&config.to_string(), "");
    for protocol in PROTOCOLS {
        let res = call(protocol, pylon.addr, "GET", "/nowhere", &[], b"").await;
        assert_eq!(res.status, 404, "{protocol:?}: {}", res.text());
        assert_eq!(res.header("x-global"), Some("yes"), "{protocol:?}");
        assert_eq!(res.header("x-route"), Some("[]"), "{protocol:?}");

        // A global refusal comes before the router's 404.
        let res = call(protocol, pylon.addr, "GET", "/admin.php", &[], b"").await;
        assert_eq!(res.status, 403, "{protocol:?}: {}", res.text());
        assert_eq!(res.header("x-global"), Some("yes"), "{protocol:?}");
    }
    assert_eq!(up.request_count(), 0);
}

// === _meta ===

#[tokio::test]
async fn meta_filter_runs_a_plugin_only_for_the_requests_that_match() {
    let up = Upstream::start("up");
    let config = json!({
        "routes": [route("f", "/f", &up, json!({
            "key-auth": {"_meta": {"filter": [["arg_secure", "==", "1"]]}},
            "response-rewrite": {
                "headers": {"set": {"X-Filtered": "yes"}},
                "_meta": {"filter": [["arg_x", "==", "1"]]}
            }
        }))],
        "consumers": [{"username": "jack", "plugins": {"key-auth": {"key": "jack-key"}}}]
    });
    let pylon = Pylon::start(&config.to_string(), "");
    for protocol in PROTOCOLS {
        for (target, status, filtered) in [
            ("/f", 200, None),
            ("/f?x=1", 200, Some("yes")),
            ("/f?x=2", 200, None),
            ("/f?secure=1", 401, None),
            ("/f?secure=1&x=1", 401, Some("yes")),
        ] {
            let res = call(protocol, pylon.addr, "GET", target, &[], b"").await;
            let what = format!("{protocol:?} {target}");
            assert_eq!(res.status, status, "{what}: {}", res.text());
            assert_eq!(res.header("x-filtered"), filtered, "{what}");
        }
        let res = call(
            protocol,
            pylon.addr,
            "GET",
            "/f?secure=1",
            &[("apikey", "jack-key")],
            b"",
        )
        .await;
        assert_eq!(res.status, 200, "{protocol:?}: {}", res.text());
    }
}

#[tokio::test]
async fn meta_disable_turns_off_a_plugin_a_lower_place_configured() {
    let up = Upstream::start("up");
    let config = json!({
        "services": [{"id": "s", "plugins": {"key-auth": {}}, "upstream": upstream(&up)}],
        "routes": [
            {"id": "guarded", "uri": "/guarded", "service_id": "s"},
            {"id": "open", "uri": "/open", "service_id": "s", "plugins": {"key-auth": {"_meta": {"disable": true}}}},
            route("off", "/off", &up, json!({"response-rewrite": {
                "headers": {"set": {"X-Off": "no"}}, "_meta": {"disable": true}
            }})),
        ],
        "consumers": [{"username": "jack", "plugins": {"key-auth": {"key": "jack-key"}}}]
    });
    let pylon = Pylon::start(&config.to_string(), "");
    for protocol in PROTOCOLS {
        let res = call(protocol, pylon.addr, "GET", "/guarded", &[], b"").await;
        assert_eq!(res.status, 401, "{protocol:?}: {}", res.text());
        let res = call(protocol, pylon.addr, "GET", "/open", &[], b"").await;
        assert_eq!(res.status, 200, "{protocol:?}: {}", res.text());
        assert_eq!(up.last().target, "/open", "{protocol:?}");
        let res = call(protocol, pylon.addr, "GET", "/off", &[], b"").await;
        assert_eq!(res.status, 200, "{protocol:?}: {}", res.text());
        assert_eq!(res.header("x-off"), None, "{protocol:?}");
    }
}

#[tokio::test]
async fn meta_error_response_replaces_the_body_of_a_plugins_refusal() {
    let up = Upstream::start("up");
    let config = json!({
        "routes": [
            route("object", "/object", &up, json!({
                "key-auth": {"_meta": {"error_response": {"message": "who are you?"}}}
            })),
            route("text", "/text", &up, json!({
                "ip-restriction": {"blacklist": ["127.0.0.1"], "_meta": {"error_response": "no entry"}}
            })),
        ],
        "consumers": [{"username": "jack", "plugins": {"key-auth": {"key": "jack-key"}}}]
    });
    let pylon = Pylon::start(&config.to_string(), "");
    for protocol in PROTOCOLS {
        let before = up.request_count();
        let res = call(protocol, pylon.addr, "GET", "/object", &[], b"").await;
        assert_eq!(res.status, 401, "{protocol:?}: {}", res.text());
        assert_eq!(
            res.json(),
            json!({"message": "who are you?"}),
            "{protocol:?}"
        );
        let res = call(protocol, pylon.addr, "GET", "/text", &[], b"").await;
        assert_eq!(res.status, 403, "{protocol:?}: {}", res.text());
        assert_eq!(res.text(), "no entry", "{protocol:?}");
        assert_eq!(up.request_count(), before, "{protocol:?}");
        // A request the plugin lets through is not touched.
        let res = call(
            protocol,
            pylon.addr,
            "GET",
            "/object",
            &[("apikey", "jack-key")],
            b"",
        )
        .await;
        assert_eq!(
            (res.status, res.text().as_str()),
            (200, "up"),
            "{protocol:?}"
        );
    }
}

#[tokio::test]
async fn meta_gray_ratio_runs_a_plugin_for_its_share_of_requests() {
    let up = Upstream::start("up");
    let gray = |ratio: u8| json!({"response-rewrite": {"headers": {"set": {"X-Gray": "yes"}}, "_meta": {"gray_ratio": ratio}}});
    let pylon = Pylon::start(
        &json!({"routes": [
            route("thirty", "/thirty", &up, gray(30)),
            route("none", "/none", &up, gray(0)),
            route("all", "/all", &up, gray(100)),
        ]})
        .to_string(),
        "",
    );
    // 400 draws at 30%: mean 120, standard deviation sqrt(400 * 0.3 * 0.7) ≈ 9.2. Five
    // deviations either side is a false alarm once in millions of runs.
    const N: usize = 400;
    let (mean, sigma) = (N as f64 * 0.3, (N as f64 * 0.3 * 0.7).sqrt());
    let bounds = (mean - 5.0 * sigma).ceil() as usize..=(mean + 5.0 * sigma).floor() as usize;
    for protocol in PROTOCOLS {
        let mut rewritten = 0;
        for _ in 0..N {
            let res = call(protocol, pylon.addr, "GET", "/thirty", &[], b"").await;
            assert_eq!(res.status, 200, "{protocol:?}");
            rewritten += usize::from(res.header("x-gray").is_some());
        }
        assert!(
            bounds.contains(&rewritten),
            "{protocol:?}: {rewritten} of {N} rewritten, expected {bounds:?}"
        );

        for (target, expected) in [("/none", None), ("/all", Some("yes"))] {
            for _ in 0..20 {
                let res = call(protocol, pylon.addr, "GET", target, &[], b"").await;
                assert_eq!(res.header("x-gray"), expected, "{protocol:?} {target}");
            }
        }
    }
}

#[tokio::test]
async fn meta_priority_changes_the_order_plugins_run_in() {
    let up = Upstream::start("up");
    let config = json!({
        "routes": [
            route("default", "/default", &up, json!({"cors": {}, "key-auth": {}})),
            // Before cors (4000) now: its 401 goes out before cors has added anything.
            route("first", "/first", &up, json!({"cors": {}, "key-auth": {"_meta": {"priority": 5000}}})),
        ],
        "consumers": [{"username": "jack", "plugins": {"key-auth": {"key": "jack-key"}}}]
    });
    let pylon = Pylon::start(&config.to_string(), "");
    let preflight = [
        ("origin", "https://a.example"),
        ("access-control-request-method", "GET"),
    ];
    for protocol in PROTOCOLS {
        let res = call(protocol, pylon.addr, "OPTIONS", "/default", &preflight, b"").await;
        assert_eq!(res.status, 200, "{protocol:?} /default: {}", res.text());
        assert_eq!(
            res.header("access-control-allow-origin"),
            Some("*"),
            "{protocol:?}"
        );
        let res = call(protocol, pylon.addr, "OPTIONS", "/first", &preflight, b"").await;
        assert_eq!(res.status, 401, "{protocol:?} /first: {}", res.text());
        assert_eq!(
            res.header("access-control-allow-origin"),
            None,
            "{protocol:?}"
        );
    }
}

#[tokio::test]
async fn meta_gray_ratio_decides_once_for_every_phase_of_a_request() {
    let up = Upstream::start("up");
    // request-id works in two phases: the id goes upstream in `rewrite` and to the client in
    // `header_filter`. Run in one and not the other, a request would get half of it.
    let config = json!({"routes": [route("r", "/r", &up, json!({"request-id": {"_meta": {"gray_ratio": 50}}}))]});
    let pylon = Pylon::start(&config.to_string(), "");
    for protocol in PROTOCOLS {
        let (mut with, mut without) = (0, 0);
        for _ in 0..100 {
            let res = call(protocol, pylon.addr, "GET", "/r", &[], b"").await;
            assert_eq!(res.status, 200, "{protocol:?}");
            let upstream_id = up.last().header("x-request-id").map(str::to_owned);
            assert_eq!(
                res.header("x-request-id"),
                upstream_id.as_deref(),
                "{protocol:?}"
            );
            match upstream_id {
                Some(_) => with += 1,
                None => without += 1,
            }
        }
        // Both happen: all 100 alike at 50% is a 2^-99 chance.
        assert!(
            with > 0 && without > 0,
            "{protocol:?}: {with} with an id, {without} without"
        );
    }
}

// === plugin replies ===

#[tokio::test]
async fn a_connection_goes_on_cleanly_after_a_plugin_refused_a_request_with_a_body() {
    let up = Upstream::start("up");
    let config = json!({
        "routes": [route("k", "/k", &up, json!({"key-auth": {}}))],
        "consumers": [{"username": "jack", "plugins": {"key-auth": {"key": "jack-key"}}}]
    });
    let pylon = Pylon::start(&config.to_string(), "");
    // A body that reads as a request: were it left unread, the next one parsed would be it.
    let smuggled =
        b"GET /smuggled HTTP/1.1\r\nHost: example.com\r\napikey: jack-key\r\n\r\n".to_vec();
    let large = [smuggled.clone(), vec![b'x'; 256 * 1024]].concat();
    for protocol in PROTOCOLS {
        for body in [&smuggled, &large] {
            let what = format!("{protocol:?} after a {}-byte body", body.len());
            match protocol {
                Protocol::Http1 => {
                    let mut conn = Conn::connect(pylon.addr);
                    let mut refused = format!(
                        "POST /k HTTP/1.1\r\nHost: example.com\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    refused.extend_from_slice(body);
                    conn.send(&refused);
                    let res = conn.read_response().expect("the refusal");
                    assert_eq!(res.status, 401, "{what}: {}", res.text());
                    // Closing is fine; going on must mean the body was skipped whole.
                    if res.header("connection") != Some("close") {
                        let next =
                            b"GET /k HTTP/1.1\r\nHost: example.com\r\napikey: jack-key\r\n\r\n";
                        let res = conn.request(next);
                        assert_eq!((res.status, res.text().as_str()), (200, "up"), "{what}");
                        assert_eq!(up.last().target, "/k", "{what}");
                    }
                }
                Protocol::Http2 => {
                    let mut h2 = connect(pylon.addr).await;
                    let req = request("POST", "/k").body(()).unwrap();
                    let (response, mut stream) = h2.sender.send_request(req, false).unwrap();
                    // Queued whole: the gateway may answer, and reset the stream with
                    // NO_ERROR, before the body is all sent (RFC 9113 §8.1).
                    let _ = stream.send_data(Bytes::from(body.clone()), true);
                    let reply = read_reply(response).await;
                    assert_eq!(reply.status, 401, "{what}: {}", reply.text());
                    let req = request("GET", "/k")
                        .header("apikey", "jack-key")
                        .body(())
                        .unwrap();
                    let reply = send(&mut h2.sender, req, b"").await;
                    assert_eq!((reply.status, reply.text().as_str()), (200, "up"), "{what}");
                }
            }
        }
    }
    assert!(
        up.received().iter().all(|r| r.target == "/k"),
        "{:?}",
        up.received()
    );
}

#[tokio::test]
async fn a_consumer_is_identified_per_request_not_per_connection() {
    let up = Upstream::start("up");
    let config = json!({
        "routes": [route("k", "/k", &up, json!({"key-auth": {}}))],
        "consumers": [{"username": "jack", "plugins": {"key-auth": {"key": "jack-key"}}}]
    });
    let pylon = Pylon::start(&config.to_string(), "");
    // HTTP/1.1: one kept-alive connection.
    let mut conn = Conn::connect(pylon.addr);
    let with_key = b"GET /k HTTP/1.1\r\nHost: example.com\r\napikey: jack-key\r\n\r\n";
    let without = b"GET /k HTTP/1.1\r\nHost: example.com\r\n\r\n";
    assert_eq!(conn.request(with_key).status, 200, "Http1");
    assert_eq!(conn.request(without).status, 401, "Http1");
    assert_eq!(conn.request(with_key).status, 200, "Http1");
    // HTTP/2: streams of one connection.
    let mut h2 = connect(pylon.addr).await;
    for (key, status) in [
        (Some("jack-key"), 200),
        (None, 401),
        (Some("jack-key"), 200),
    ] {
        let mut req = request("GET", "/k");
        if let Some(key) = key {
            req = req.header("apikey", key);
        }
        let reply = send(&mut h2.sender, req.body(()).unwrap(), b"").await;
        assert_eq!(reply.status, status, "Http2 with {key:?}");
    }
}

// === bad configurations ===

#[test]
fn validate_refuses_bad_plugin_configurations_with_their_paths() {
    let (code, stdout, stderr) = validate(
        r#"
routes:
  - id: r0
    uri: /a
    plugins:
      key-auth: {header: 5}
    upstream: {nodes: {"127.0.0.1:8080": 1}}
  - id: r1
    uri: /b
    plugins:
      nope: {}
      cors: {allow_credential: true}
    upstream: {nodes: {"127.0.0.1:8080": 1}}
  - id: r2
    uri: /c
    plugins:
      forward-auth: {uri: "https://auth.example/check"}
    upstream: {nodes: {"127.0.0.1:8080": 1}}
services:
  - id: s
    plugins:
      ip-restriction: {whitelist: [127.0.0.1], blacklist: [10.0.0.1]}
plugin_configs:
  - id: pc
    plugins:
      proxy-rewrite: {regex_uri: ["^/a", "/b", "^/c"]}
global_rules:
  - id: g
    plugins:
      response-rewrite: {headers: {set: {X-A: b}}, _meta: {gray_ratio: 101}}
consumers:
  - username: jack
    plugins:
      key-auth: {key: ""}
"#,
    );
    assert_ne!(code, Some(0), "stdout: {stdout}");
    for expected in [
        "routes[0].plugins.key-auth.header: ",
        "routes[1].plugins.nope: unknown plugin `nope`",
        "routes[1].plugins.cors.allow_origins: can not be `*` when `allow_credential` is true",
        "routes[2].plugins.forward-auth.uri: https is not supported yet",
        "services[0].plugins.ip-restriction: only one of `whitelist` and `blacklist` may be set",
        "plugin_configs[0].plugins.proxy-rewrite.regex_uri: The length of regex_uri should be an even number",
        "global_rules[0].plugins.response-rewrite._meta.gray_ratio: must be an integer percentage from 0 to 100",
        "consumers[0].plugins.key-auth.key: must not be empty",
    ] {
        assert!(stderr.contains(expected), "{expected:?} not in:\n{stderr}");
    }

    let (code, stdout, stderr) = validate(
        r#"
routes:
  - id: r0
    uri: /a
    plugins:
      key-auth: {hide_credentials: true}
      response-rewrite: {headers: {set: {X-A: b}}, _meta: {gray_ratio: 30, filter: [[arg_x, "==", "1"]]}}
    upstream: {nodes: {"127.0.0.1:8080": 1}}
consumers:
  - username: jack
    plugins:
      key-auth: {key: jack-key}
"#,
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("valid (1 routes"), "{stdout}");
}

#[tokio::test]
async fn a_route_whose_plugins_do_not_build_is_not_served() {
    let up = Upstream::start("up");
    let config = json!({"routes": [
        route("good", "/good", &up, json!({"request-id": {}})),
        // Served without its authentication, it would be open to anyone.
        route("bad", "/bad", &up, json!({"key-auth": {"header": 5}})),
    ]});
    let pylon = Pylon::start(&config.to_string(), "");
    pylon.wait_for_log("route not served: routes/bad.plugins.key-auth.header: ");
    for protocol in PROTOCOLS {
        let res = call(protocol, pylon.addr, "GET", "/good", &[], b"").await;
        assert_eq!(res.status, 200, "{protocol:?}: {}", res.text());
        let res = call(protocol, pylon.addr, "GET", "/bad", &[], b"").await;
        assert_eq!(res.status, 404, "{protocol:?}: {}", res.text());
        assert_eq!(
            res.json(),
            json!({"error_msg": "404 Route Not Found"}),
            "{protocol:?}"
        );
    }
    assert_eq!(
        up.received().iter().filter(|r| r.target == "/bad").count(),
        0
    );
}

/// A route with plugins needs no upstream, as in APISIX: its plugins answer it, and when none
/// does, the gateway answers 503, saying the route has no upstream.
#[tokio::test(flavor = "multi_thread")]
async fn a_route_without_upstream_is_answered_by_its_plugins_or_503() {
    let config = json!({"routes": [
        {"id": "mocked", "uri": "/mocked",
         "plugins": {"mocking": {"response_example": "mocked"}}},
        {"id": "bare", "uri": "/bare", "plugins": {"request-id": {}}},
    ]});
    let pylon = Pylon::start(&config.to_string(), "");
    for protocol in PROTOCOLS {
        let res = call(protocol, pylon.addr, "GET", "/mocked", &[], b"").await;
        assert_eq!(
            (res.status, res.text()),
            (200, "mocked".into()),
            "{protocol:?}"
        );
        let res = call(protocol, pylon.addr, "GET", "/bare", &[], b"").await;
        assert_eq!(res.status, 503, "{protocol:?}: {}", res.text());
        assert_eq!(
            res.json(),
            json!({"error_msg": "503 Missing Upstream Configuration In Route Or Service"}),
            "{protocol:?}"
        );
        assert!(
            res.header("x-request-id").is_some(),
            "{protocol:?}: plugins ran"
        );
    }
}
