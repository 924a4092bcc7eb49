//! Access-control plugins through the gateway, over HTTP/1.1 and HTTP/2 alike: ip-restriction
//! and real-ip, uri-blocker, cors, client-control, request-validation, and forward-auth with
//! an authorization service that accepts, refuses, hangs or is down.
//!
//! Configurations are written as JSON, which is YAML: the standalone `apisix.yaml`.

mod support;

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use serde_json::{json, Value};
use support::client::{get, Response};
use support::protocols::{assert_refused, call, Protocol, PROTOCOLS};
use support::upstream::{respond, Gate, Received, Upstream};
use support::{closed_port, Pylon};

/// A route on `uri` to `up` with `plugins`.
fn route(id: &str, uri: &str, up: &Upstream, plugins: Value) -> Value {
    json!({"id": id, "uri": uri, "plugins": plugins, "upstream": {"nodes": {up.addr.to_string(): 1}}})
}

fn routes(routes: &[Value]) -> String {
    json!({ "routes": routes }).to_string()
}

/// Asserts that the upstream answered: 200, its body.
fn assert_proxied(res: &Response, what: &str) {
    assert_eq!(res.status, 200, "{what}: {}", res.text());
    assert_eq!(res.text(), "up", "{what}");
}

// === ip-restriction and real-ip ===

#[tokio::test]
async fn ip_restriction_lets_in_the_whitelist_and_keeps_out_the_blacklist() {
    let up = Upstream::start("up");
    let pylon = Pylon::start(
        &routes(&[
            route(
                "w",
                "/whitelisted",
                &up,
                json!({"ip-restriction": {"whitelist": ["127.0.0.1"]}}),
            ),
            route(
                "w-other",
                "/whitelist-other",
                &up,
                json!({"ip-restriction": {"whitelist": ["10.0.0.0/8", "::1"]}}),
            ),
            route(
                "b",
                "/blacklisted",
                &up,
                json!({"ip-restriction": {
                    "blacklist": ["127.0.0.0/24"], "message": "go away", "response_code": 404
                }}),
            ),
            route(
                "b-other",
                "/blacklist-other",
                &up,
                json!({"ip-restriction": {"blacklist": ["192.0.2.1"]}}),
            ),
        ]),
        "",
    );
    for protocol in PROTOCOLS {
        for allowed in ["/whitelisted", "/blacklist-other"] {
            let res = call(protocol, pylon.addr, "GET", allowed, &[], b"").await;
            assert_proxied(&res, &format!("{protocol:?} {allowed}"));
        }
        let before = up.request_count();
        let res = call(protocol, pylon.addr, "GET", "/whitelist-other", &[], b"").await;
        let body = json!({"message": "Your IP address is not allowed"});
        assert_refused(
            &res,
            403,
            body,
            &up,
            before,
            &format!("{protocol:?} not whitelisted"),
        );
        let res = call(protocol, pylon.addr, "GET", "/blacklisted", &[], b"").await;
        let body = json!({"message": "go away"});
        assert_refused(
            &res,
            404,
            body,
            &up,
            before,
            &format!("{protocol:?} blacklisted"),
        );
    }
}

#[tokio::test]
async fn real_ip_from_a_trusted_proxy_is_the_address_ip_restriction_checks() {
    let up = Upstream::start("up");
    let whitelist = json!({"whitelist": ["198.51.100.7"]});
    let pylon = Pylon::start(
        &routes(&[
            route(
                "trusted",
                "/trusted",
                &up,
                json!({
                    "real-ip": {"source": "http_x_forwarded_for", "trusted_addresses": ["127.0.0.1"]},
                    "ip-restriction": whitelist,
                }),
            ),
            route(
                "untrusted",
                "/untrusted",
                &up,
                json!({
                    "real-ip": {"source": "http_x_forwarded_for", "trusted_addresses": ["10.0.0.0/8"]},
                    "ip-restriction": whitelist,
                }),
            ),
        ]),
        "",
    );
    let refused = json!({"message": "Your IP address is not allowed"});
    for protocol in PROTOCOLS {
        // The last address of the chain is the one the trusted proxy (127.0.0.1) saw.
        let xff = [("x-forwarded-for", "203.0.113.1, 198.51.100.7")];
        let res = call(protocol, pylon.addr, "GET", "/trusted", &xff, b"").await;
        assert_proxied(
            &res,
            &format!("{protocol:?} forwarded for the whitelisted address"),
        );

        let before = up.request_count();
        let res = call(protocol, pylon.addr, "GET", "/trusted", &[], b"").await;
        let what = format!("{protocol:?} without X-Forwarded-For");
        assert_refused(&res, 403, refused.clone(), &up, before, &what);
        let other = [("x-forwarded-for", "198.51.100.7, 198.51.100.8")];
        let res = call(protocol, pylon.addr, "GET", "/trusted", &other, b"").await;
        let what = format!("{protocol:?} forwarded for another address");
        assert_refused(&res, 403, refused.clone(), &up, before, &what);
        // From a peer that is not a trusted proxy, X-Forwarded-For is the client's own claim.
        let claim = [("x-forwarded-for", "198.51.100.7")];
        let res = call(protocol, pylon.addr, "GET", "/untrusted", &claim, b"").await;
        let what = format!("{protocol:?} forwarded by an untrusted peer");
        assert_refused(&res, 403, refused.clone(), &up, before, &what);
    }
}

#[tokio::test]
async fn real_ip_is_the_client_address_the_upstream_is_told() {
    let up = Upstream::start("up");
    let pylon = Pylon::start(
        &routes(&[route(
            "r",
            "/r",
            &up,
            json!({
                "real-ip": {"source": "http_x_real_ip", "trusted_addresses": ["127.0.0.1"]}
            }),
        )]),
        "",
    );
    for protocol in PROTOCOLS {
        let res = call(
            protocol,
            pylon.addr,
            "GET",
            "/r",
            &[("x-real-ip", "198.51.100.7")],
            b"",
        )
        .await;
        assert_proxied(&res, &format!("{protocol:?}"));
        // As nginx's `$remote_addr` after the realip module, which APISIX sends as X-Real-IP.
        assert_eq!(
            up.last().header("x-real-ip"),
            Some("198.51.100.7"),
            "{protocol:?}"
        );
    }
}

#[tokio::test]
async fn real_ip_is_the_client_address_the_access_log_records() {
    let up = Upstream::start("up");
    let pylon = Pylon::start(
        &routes(&[route(
            "r",
            "/r",
            &up,
            json!({
                "real-ip": {"source": "http_x_real_ip", "trusted_addresses": ["127.0.0.1"]}
            }),
        )]),
        "",
    );
    for protocol in PROTOCOLS {
        let target = format!("/r?via={protocol:?}");
        let res = call(
            protocol,
            pylon.addr,
            "GET",
            &target,
            &[("x-real-ip", "198.51.100.7")],
            b"",
        )
        .await;
        assert_proxied(&res, &format!("{protocol:?}"));
    }
    for line in pylon.wait_access_log(PROTOCOLS.len()) {
        assert_eq!(line["client_ip"], "198.51.100.7", "{line}");
    }
}

// === uri-blocker ===

#[tokio::test]
async fn uri_blocker_refuses_targets_that_match_a_rule() {
    let up = Upstream::start("up");
    let pylon = Pylon::start(
        &routes(&[
            route(
                "msg",
                "/m/*",
                &up,
                json!({"uri-blocker": {
                    "block_rules": ["\\.php$", "^/m/admin"], "rejected_msg": "blocked", "rejected_code": 410
                }}),
            ),
            route(
                "plain",
                "/p/*",
                &up,
                json!({"uri-blocker": {"block_rules": ["\\.php$"], "case_insensitive": true}}),
            ),
        ]),
        "",
    );
    for protocol in PROTOCOLS {
        let before = up.request_count();
        // The rules see the whole target, query included.
        for blocked in ["/m/index.php", "/m/admin/users", "/m/ok?file=a.php"] {
            let res = call(protocol, pylon.addr, "GET", blocked, &[], b"").await;
            let what = format!("{protocol:?} {blocked}");
            assert_refused(
                &res,
                410,
                json!({"error_msg": "blocked"}),
                &up,
                before,
                &what,
            );
        }
        let res = call(protocol, pylon.addr, "GET", "/p/INDEX.PHP", &[], b"").await;
        assert_eq!(res.status, 403, "{protocol:?}: {}", res.text());
        assert_eq!(res.body, b"", "{protocol:?}: no rejected_msg, no body");
        assert_eq!(up.request_count(), before, "{protocol:?}");

        for allowed in ["/m/index.html", "/m/users/admin", "/p/index.phpx"] {
            let res = call(protocol, pylon.addr, "GET", allowed, &[], b"").await;
            assert_proxied(&res, &format!("{protocol:?} {allowed}"));
            assert_eq!(up.last().target, allowed, "{protocol:?}");
        }
    }
}

// === cors ===

#[tokio::test]
async fn cors_answers_preflights_and_marks_responses_of_allowed_origins() {
    let up = Upstream::start("up");
    let pylon = Pylon::start(
        &routes(&[route(
            "c",
            "/c",
            &up,
            json!({"cors": {
                "allow_origins": "https://a.example,https://b.example",
                "allow_methods": "GET,POST",
                "allow_headers": "X-Custom",
                "expose_headers": "X-Upstream",
                "max_age": 100,
                "allow_credential": true
            }}),
        )]),
        "",
    );
    for protocol in PROTOCOLS {
        let before = up.request_count();
        let preflight = [
            ("origin", "https://a.example"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "X-Custom"),
        ];
        let res = call(protocol, pylon.addr, "OPTIONS", "/c", &preflight, b"").await;
        assert_eq!(res.status, 200, "{protocol:?} preflight: {}", res.text());
        for (name, value) in [
            ("access-control-allow-origin", "https://a.example"),
            ("access-control-allow-methods", "GET,POST"),
            ("access-control-allow-headers", "X-Custom"),
            ("access-control-max-age", "100"),
            ("access-control-allow-credentials", "true"),
            ("vary", "Origin"),
        ] {
            assert_eq!(
                res.header(name),
                Some(value),
                "{protocol:?} preflight {name}"
            );
        }
        assert_eq!(res.body, b"", "{protocol:?} preflight");
        assert_eq!(
            up.request_count(),
            before,
            "{protocol:?}: a preflight is the gateway's"
        );

        let res = call(
            protocol,
            pylon.addr,
            "GET",
            "/c",
            &[("origin", "https://b.example")],
            b"",
        )
        .await;
        assert_proxied(&res, &format!("{protocol:?} simple request"));
        assert_eq!(
            res.header("access-control-allow-origin"),
            Some("https://b.example"),
            "{protocol:?}"
        );
        assert_eq!(
            res.header("access-control-expose-headers"),
            Some("X-Upstream"),
            "{protocol:?}"
        );
        assert_eq!(
            res.header("access-control-allow-credentials"),
            Some("true"),
            "{protocol:?}"
        );
        assert_eq!(res.header("x-upstream"), Some("up"), "{protocol:?}");

        let res = call(
            protocol,
            pylon.addr,
            "GET",
            "/c",
            &[("origin", "https://evil.example")],
            b"",
        )
        .await;
        assert_proxied(&res, &format!("{protocol:?} from another origin"));
        assert_eq!(
            res.header("access-control-allow-origin"),
            None,
            "{protocol:?}"
        );
        assert_eq!(
            res.header("access-control-allow-credentials"),
            None,
            "{protocol:?}"
        );
    }
}

#[tokio::test]
async fn cors_runs_before_authentication_so_its_headers_reach_a_401() {
    let up = Upstream::start("up");
    let config = json!({
        "routes": [route("c", "/c", &up, json!({"cors": {}, "key-auth": {}}))],
        "consumers": [{"username": "jack", "plugins": {"key-auth": {"key": "jack-key"}}}]
    });
    let pylon = Pylon::start(&config.to_string(), "");
    for protocol in PROTOCOLS {
        let origin = ("origin", "https://a.example");
        let res = call(protocol, pylon.addr, "GET", "/c", &[origin], b"").await;
        assert_eq!(res.status, 401, "{protocol:?}: {}", res.text());
        assert_eq!(
            res.json(),
            json!({"message": "Missing API key in request"}),
            "{protocol:?}"
        );
        assert_eq!(
            res.header("access-control-allow-origin"),
            Some("*"),
            "{protocol:?}"
        );
        assert_eq!(
            res.header("access-control-allow-methods"),
            Some("*"),
            "{protocol:?}"
        );

        // A preflight carries no key: cors (priority 4000) answers it before key-auth (2500).
        let preflight = [origin, ("access-control-request-method", "GET")];
        let res = call(protocol, pylon.addr, "OPTIONS", "/c", &preflight, b"").await;
        assert_eq!(res.status, 200, "{protocol:?} preflight: {}", res.text());
        assert_eq!(
            res.header("access-control-allow-origin"),
            Some("*"),
            "{protocol:?}"
        );

        let res = call(
            protocol,
            pylon.addr,
            "GET",
            "/c",
            &[origin, ("apikey", "jack-key")],
            b"",
        )
        .await;
        assert_proxied(&res, &format!("{protocol:?} with a key"));
        assert_eq!(
            res.header("access-control-allow-origin"),
            Some("*"),
            "{protocol:?}"
        );
    }
}

#[tokio::test]
async fn cors_headers_reach_the_gateways_own_errors() {
    let down = closed_port();
    let config = json!({"routes": [{
        "id": "c", "uri": "/c", "plugins": {"cors": {"allow_origins": "**"}},
        "upstream": {"nodes": {down.addr.to_string(): 1}}
    }]});
    let pylon = Pylon::start(&config.to_string(), "");
    for protocol in PROTOCOLS {
        let origin = ("origin", "https://a.example");
        let res = call(protocol, pylon.addr, "GET", "/c", &[origin], b"").await;
        assert_eq!(res.status, 502, "{protocol:?}: {}", res.text());
        assert_eq!(
            res.json(),
            json!({"error_msg": "502 Bad Gateway"}),
            "{protocol:?}"
        );
        assert_eq!(
            res.header("access-control-allow-origin"),
            Some("https://a.example"),
            "{protocol:?}"
        );
        assert_eq!(res.header("vary"), Some("Origin"), "{protocol:?}");
    }
}

// === client-control ===

/// `body`'s length as a header, for HTTP/2, where the client says it only if it wants to (the
/// HTTP/1.1 client always sends it).
fn declared_length(protocol: Protocol, body: &[u8]) -> Vec<(&'static str, String)> {
    match protocol {
        Protocol::Http1 => Vec::new(),
        Protocol::Http2 => vec![("content-length", body.len().to_string())],
    }
}

#[tokio::test]
async fn client_control_refuses_a_declared_body_over_max_body_size() {
    let up = Upstream::start("up");
    let pylon = Pylon::start(
        &routes(&[route(
            "c",
            "/c",
            &up,
            json!({"client-control": {"max_body_size": 10}}),
        )]),
        "",
    );
    for protocol in PROTOCOLS {
        for (body, status) in [(&b"0123456789"[..], 200), (&b"0123456789a"[..], 413)] {
            let length = declared_length(protocol, body);
            let headers: Vec<(&str, &str)> = length.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let before = up.request_count();
            let res = call(protocol, pylon.addr, "POST", "/c", &headers, body).await;
            let what = format!("{protocol:?} with {} bytes", body.len());
            assert_eq!(res.status, status, "{what}: {}", res.text());
            if status == 200 {
                assert_eq!(up.last().body, body, "{what}");
            } else {
                assert_eq!(
                    up.request_count(),
                    before,
                    "{what}: the upstream got the request"
                );
            }
        }
    }
}

// === request-validation ===

#[tokio::test]
async fn request_validation_refuses_headers_that_fail_the_schema() {
    let up = Upstream::start("up");
    let schema = json!({
        "type": "object",
        "required": ["X-Token"],
        "properties": {"X-Token": {"type": "string", "minLength": 5}}
    });
    let pylon = Pylon::start(
        &routes(&[
            route(
                "v",
                "/v",
                &up,
                json!({"request-validation": {"header_schema": schema}}),
            ),
            route(
                "msg",
                "/msg",
                &up,
                json!({"request-validation": {
                    "header_schema": schema, "rejected_code": 422, "rejected_msg": "bad headers"
                }}),
            ),
        ]),
        "",
    );
    for protocol in PROTOCOLS {
        let before = up.request_count();
        let res = call(protocol, pylon.addr, "GET", "/v", &[], b"").await;
        assert_eq!(res.status, 400, "{protocol:?}: {}", res.text());
        assert_eq!(
            res.header("content-type"),
            Some("text/plain; charset=utf-8"),
            "{protocol:?}"
        );
        assert!(
            res.text().contains("X-Token"),
            "{protocol:?}: {}",
            res.text()
        );
        let res = call(
            protocol,
            pylon.addr,
            "GET",
            "/v",
            &[("x-token", "abc")],
            b"",
        )
        .await;
        assert_eq!(res.status, 400, "{protocol:?}: {}", res.text());
        assert!(
            res.text().starts_with("header X-Token: "),
            "{protocol:?}: {}",
            res.text()
        );
        let res = call(
            protocol,
            pylon.addr,
            "GET",
            "/msg",
            &[("x-token", "abc")],
            b"",
        )
        .await;
        assert_eq!(res.status, 422, "{protocol:?}: {}", res.text());
        assert_eq!(res.text(), "bad headers", "{protocol:?}");
        assert_eq!(
            up.request_count(),
            before,
            "{protocol:?}: the upstream got a refused request"
        );

        for target in ["/v", "/msg"] {
            let res = call(
                protocol,
                pylon.addr,
                "GET",
                target,
                &[("x-token", "abcde")],
                b"",
            )
            .await;
            assert_proxied(&res, &format!("{protocol:?} {target}"));
            assert_eq!(up.last().header("x-token"), Some("abcde"), "{protocol:?}");
        }
    }
}

// === forward-auth ===

/// An authorization service: 200 with `X-User: alice` for `Authorization: Bearer good`, 403
/// with `X-Reason` and a body for anything else.
fn auth_service() -> Upstream {
    Upstream::with_handler(
        "auth",
        Arc::new(|req: &Received, stream: &mut TcpStream| {
            if req.header("authorization") == Some("Bearer good") {
                respond(stream, 200, &[("X-User", "alice")], b"");
            } else {
                respond(
                    stream,
                    403,
                    &[("X-Reason", "bad token"), ("X-Secret", "s")],
                    b"go away",
                );
            }
            true
        }),
    )
}

/// forward-auth asking the service at `addr`, with `extra` fields.
fn forward_auth(addr: SocketAddr, extra: Value) -> Value {
    let mut config = json!({
        "uri": format!("http://{addr}/auth"),
        "request_headers": ["Authorization"],
        "upstream_headers": ["X-User"],
        "client_headers": ["X-Reason"],
    });
    config
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    json!({ "forward-auth": config })
}

#[tokio::test]
async fn forward_auth_lets_through_what_the_service_accepts_and_relays_its_refusals() {
    let up = Upstream::start("up");
    let auth = auth_service();
    let pylon = Pylon::start(
        &routes(&[route("f", "/f", &up, forward_auth(auth.addr, json!({})))]),
        "",
    );
    for protocol in PROTOCOLS {
        // A client cannot forge what the service tells the upstream.
        let headers = [("authorization", "Bearer good"), ("x-user", "mallory")];
        let res = call(protocol, pylon.addr, "POST", "/f?x=1", &headers, b"").await;
        assert_proxied(&res, &format!("{protocol:?} accepted"));
        let seen = up.last();
        assert_eq!(seen.header("x-user"), Some("alice"), "{protocol:?}");
        assert_eq!(seen.target, "/f?x=1", "{protocol:?}");
        let asked = auth.last();
        assert_eq!(asked.method, "GET", "{protocol:?}");
        assert_eq!(asked.target, "/auth", "{protocol:?}");
        for (name, value) in [
            ("x-forwarded-method", "POST"),
            ("x-forwarded-uri", "/f?x=1"),
            ("x-forwarded-host", "example.com"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-for", "127.0.0.1"),
            ("authorization", "Bearer good"),
        ] {
            assert_eq!(
                asked.header(name),
                Some(value),
                "{protocol:?}: the service's {name}"
            );
        }

        let before = up.request_count();
        let res = call(
            protocol,
            pylon.addr,
            "GET",
            "/f",
            &[("authorization", "Bearer bad")],
            b"",
        )
        .await;
        assert_eq!(res.status, 403, "{protocol:?}: {}", res.text());
        assert_eq!(res.text(), "go away", "{protocol:?}");
        assert_eq!(res.header("x-reason"), Some("bad token"), "{protocol:?}");
        assert_eq!(
            res.header("x-secret"),
            None,
            "{protocol:?}: not a client header"
        );
        assert_eq!(
            up.request_count(),
            before,
            "{protocol:?}: the upstream got a refused request"
        );
    }
}

#[tokio::test]
async fn forward_auth_applies_its_failure_policy_when_the_service_hangs_or_is_down() {
    let up = Upstream::start("up");
    let release = Gate::default();
    let held = release.clone();
    // Takes the request and answers only when the test is over: every call times out.
    let hanging = Upstream::with_handler(
        "hanging",
        Arc::new(move |_: &Received, stream: &mut TcpStream| {
            held.wait();
            respond(stream, 200, &[], b"");
            false
        }),
    );
    let down = closed_port();
    let timeout = json!({"timeout": 500});
    let pylon = Pylon::start(
        &routes(&[
            route(
                "hang-closed",
                "/hang/closed",
                &up,
                forward_auth(
                    hanging.addr,
                    json!({"timeout": 500, "status_on_error": 503}),
                ),
            ),
            route(
                "hang-open",
                "/hang/open",
                &up,
                forward_auth(
                    hanging.addr,
                    json!({"timeout": 500, "allow_degradation": true}),
                ),
            ),
            route(
                "down-closed",
                "/down/closed",
                &up,
                forward_auth(down.addr, timeout.clone()),
            ),
            route(
                "down-open",
                "/down/open",
                &up,
                forward_auth(down.addr, json!({"allow_degradation": true})),
            ),
        ]),
        "",
    );
    for protocol in PROTOCOLS {
        let headers = [("authorization", "Bearer good")];
        for (target, status) in [("/hang/closed", 503), ("/down/closed", 403)] {
            let before = up.request_count();
            let res = call(protocol, pylon.addr, "GET", target, &headers, b"").await;
            assert_eq!(res.status, status, "{protocol:?} {target}: {}", res.text());
            assert_eq!(
                up.request_count(),
                before,
                "{protocol:?} {target}: fail closed let it through"
            );
        }
        for target in ["/hang/open", "/down/open"] {
            let res = call(protocol, pylon.addr, "GET", target, &headers, b"").await;
            assert_proxied(&res, &format!("{protocol:?} {target}"));
            let seen = up.last();
            assert_eq!(seen.target, target, "{protocol:?}");
            // Nothing from a service that did not answer.
            assert!(!seen.has_header("x-user"), "{protocol:?} {target}");
        }
    }
    assert!(
        hanging.request_count() >= 2,
        "the hanging service was asked"
    );
    // Each failure is counted by what was done about it: per protocol, two of each.
    let status = get(pylon.control.unwrap(), "localhost", "/v1/status").json();
    assert_eq!(
        status["plugin_call_failures"],
        json!({"let_through": 4, "refused": 4}),
        "{status}"
    );
    release.open();
}
