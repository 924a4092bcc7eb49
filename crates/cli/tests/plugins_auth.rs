//! Authentication plugins through the gateway, over HTTP/1.1 and HTTP/2 alike: who a request
//! comes from (key-auth, basic-auth, jwt-auth, hmac-auth), APISIX's 401s when it cannot tell,
//! what of the credential the upstream still sees, and consumer-restriction on who it was.
//!
//! Configurations are written as JSON, which is YAML: the standalone `apisix.yaml` as APISIX
//! reads it, consumers by `username` with their credentials in `plugins`, or as `credentials`
//! resources (`<username>/credentials/<id>`).

mod support;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::rand::SystemRandom;
use ring::{hmac, signature};
use serde_json::{json, Value};
use support::jwt::hs256;
use support::protocols::{assert_refused, call, Protocol, PROTOCOLS};
use support::tls::RSA_KEY;
use support::upstream::Upstream;
use support::Pylon;

/// A route on `uri` to `up` with `plugins`, which also tells the client who the request came
/// from in `X-Consumer` (response-rewrite reads `$consumer_name`).
fn route(id: &str, uri: &str, up: &Upstream, mut plugins: Value) -> Value {
    plugins["response-rewrite"] = json!({"headers": {"set": {"X-Consumer": "$consumer_name"}}});
    json!({"id": id, "uri": uri, "plugins": plugins, "upstream": {"nodes": {up.addr.to_string(): 1}}})
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// === key-auth ===

#[tokio::test]
async fn key_auth_finds_the_key_in_the_header_or_the_query_and_refuses_without_a_valid_one() {
    let up = Upstream::start("up");
    let config = json!({
        "routes": [route("k", "/k", &up, json!({"key-auth": {}}))],
        "consumers": [
            {"username": "jack", "plugins": {"key-auth": {"key": "jack-key"}}},
            {"username": "rose"}
        ],
        "credentials": [{"id": "rose/credentials/1", "plugins": {"key-auth": {"key": "rose-key"}}}]
    });
    let pylon = Pylon::start(&config.to_string(), "");
    for protocol in PROTOCOLS {
        let before = up.request_count();
        let wrong_key = [("apikey", "nope")];
        let refusals = [
            ("/k", &[][..], "Missing API key in request"),
            ("/k", &wrong_key[..], "Invalid API key in request"),
            ("/k?apikey=nope", &[][..], "Invalid API key in request"),
        ];
        for (target, headers, message) in refusals {
            let res = call(protocol, pylon.addr, "GET", target, headers, b"").await;
            let what = format!("{protocol:?} {target} {headers:?}");
            assert_refused(&res, 401, json!({ "message": message }), &up, before, &what);
        }

        let res = call(
            protocol,
            pylon.addr,
            "GET",
            "/k",
            &[("apikey", "jack-key")],
            b"",
        )
        .await;
        assert_eq!(res.status, 200, "{protocol:?}: {}", res.text());
        assert_eq!(res.text(), "up", "{protocol:?}");
        assert_eq!(res.header("x-consumer"), Some("jack"), "{protocol:?}");
        // Without hide_credentials the key goes on.
        assert_eq!(up.last().header("apikey"), Some("jack-key"), "{protocol:?}");

        // A key from a `credentials` resource names its consumer.
        let res = call(protocol, pylon.addr, "GET", "/k?apikey=rose-key", &[], b"").await;
        assert_eq!(res.status, 200, "{protocol:?}: {}", res.text());
        assert_eq!(res.header("x-consumer"), Some("rose"), "{protocol:?}");
        assert_eq!(up.last().target, "/k?apikey=rose-key", "{protocol:?}");
    }
}

#[tokio::test]
async fn key_auth_with_hide_credentials_keeps_the_key_from_the_upstream() {
    let up = Upstream::start("up");
    let config = json!({
        "routes": [
            route("h", "/h", &up, json!({"key-auth": {"hide_credentials": true}})),
            route("named", "/named", &up, json!({"key-auth": {"header": "X-Key", "query": "key", "hide_credentials": true}})),
        ],
        "consumers": [{"username": "jack", "plugins": {"key-auth": {"key": "jack-key"}}}]
    });
    let pylon = Pylon::start(&config.to_string(), "");
    for protocol in PROTOCOLS {
        let headers = [("apikey", "jack-key"), ("x-other", "kept")];
        let res = call(protocol, pylon.addr, "GET", "/h?a=1", &headers, b"").await;
        assert_eq!(res.status, 200, "{protocol:?}: {}", res.text());
        let seen = up.last();
        assert!(
            !seen.has_header("apikey"),
            "{protocol:?}: {:?}",
            seen.headers
        );
        assert_eq!(seen.header("x-other"), Some("kept"), "{protocol:?}");
        assert_eq!(seen.target, "/h?a=1", "{protocol:?}");

        let res = call(
            protocol,
            pylon.addr,
            "GET",
            "/h?a=1&apikey=jack-key&b=2",
            &[],
            b"",
        )
        .await;
        assert_eq!(res.status, 200, "{protocol:?}: {}", res.text());
        assert_eq!(up.last().target, "/h?a=1&b=2", "{protocol:?}");
        let res = call(protocol, pylon.addr, "GET", "/h?apikey=jack-key", &[], b"").await;
        assert_eq!(res.status, 200, "{protocol:?}: {}", res.text());
        assert_eq!(up.last().target, "/h", "{protocol:?}");

        // Configured names: the header and argument it names, and only those, go.
        let headers = [("x-key", "jack-key"), ("apikey", "other")];
        let res = call(protocol, pylon.addr, "GET", "/named", &headers, b"").await;
        assert_eq!(res.status, 200, "{protocol:?}: {}", res.text());
        assert_eq!(res.header("x-consumer"), Some("jack"), "{protocol:?}");
        let seen = up.last();
        assert!(
            !seen.has_header("x-key"),
            "{protocol:?}: {:?}",
            seen.headers
        );
        assert_eq!(seen.header("apikey"), Some("other"), "{protocol:?}");
        let res = call(
            protocol,
            pylon.addr,
            "GET",
            "/named?key=jack-key&apikey=x",
            &[],
            b"",
        )
        .await;
        assert_eq!(res.status, 200, "{protocol:?}: {}", res.text());
        assert_eq!(up.last().target, "/named?apikey=x", "{protocol:?}");
    }
}

/// Asserts that each request, with the `Authorization` of the refusal (or none), is refused
/// 401 with its message and the `challenge`, and that the upstream got none of them.
async fn assert_challenged(
    protocol: Protocol,
    addr: SocketAddr,
    target: &str,
    refusals: &[(Option<String>, &str)],
    challenge: &str,
    up: &Upstream,
    before: usize,
) {
    for (authorization, message) in refusals {
        let headers: Vec<(&str, &str)> = authorization
            .iter()
            .map(|a| ("authorization", a.as_str()))
            .collect();
        let res = call(protocol, addr, "GET", target, &headers, b"").await;
        let what = format!("{protocol:?} with {authorization:?}");
        assert_refused(&res, 401, json!({"message": message}), up, before, &what);
        assert_eq!(res.header("www-authenticate"), Some(challenge), "{what}");
    }
}

// === basic-auth ===

fn basic(user_and_password: &str) -> String {
    format!("Basic {}", STANDARD.encode(user_and_password))
}

#[tokio::test]
async fn basic_auth_checks_the_user_and_password_and_challenges_without_them() {
    let up = Upstream::start("up");
    let config = json!({
        "routes": [
            route("b", "/b", &up, json!({"basic-auth": {}})),
            route("hidden", "/hidden", &up, json!({"basic-auth": {"hide_credentials": true, "realm": "pylon"}})),
        ],
        "consumers": [
            {"username": "jack", "plugins": {"basic-auth": {"username": "jack", "password": "open: sesame"}}},
            {"username": "rose", "plugins": {"basic-auth": {"username": "rose", "password": "rose-pw"}}}
        ]
    });
    let pylon = Pylon::start(&config.to_string(), "");
    let refusals = [
        (None, "Missing authorization in request"),
        (
            Some("Bearer abc".to_owned()),
            "Invalid authorization in request",
        ),
        (
            Some("Basic !!!".to_owned()),
            "Invalid authorization in request",
        ),
        (Some(basic("jack:wrong")), "Invalid user authorization"),
        (Some(basic("jack:rose-pw")), "Invalid user authorization"),
        (
            Some(basic("nobody:open: sesame")),
            "Invalid user authorization",
        ),
    ];
    for protocol in PROTOCOLS {
        let before = up.request_count();
        let challenge = "Basic realm=\"basic\"";
        assert_challenged(
            protocol, pylon.addr, "/b", &refusals, challenge, &up, before,
        )
        .await;

        let jack = basic("jack:open: sesame");
        let res = call(
            protocol,
            pylon.addr,
            "GET",
            "/b",
            &[("authorization", &jack)],
            b"",
        )
        .await;
        assert_eq!(res.status, 200, "{protocol:?}: {}", res.text());
        assert_eq!(res.header("x-consumer"), Some("jack"), "{protocol:?}");
        assert_eq!(res.header("www-authenticate"), None, "{protocol:?}");
        assert_eq!(
            up.last().header("authorization"),
            Some(jack.as_str()),
            "{protocol:?}"
        );

        let rose = basic("rose:rose-pw");
        let res = call(
            protocol,
            pylon.addr,
            "GET",
            "/hidden",
            &[("authorization", &rose)],
            b"",
        )
        .await;
        assert_eq!(res.status, 200, "{protocol:?}: {}", res.text());
        assert_eq!(res.header("x-consumer"), Some("rose"), "{protocol:?}");
        assert!(!up.last().has_header("authorization"), "{protocol:?}");
        let res = call(protocol, pylon.addr, "GET", "/hidden", &[], b"").await;
        assert_eq!(res.status, 401, "{protocol:?}");
        assert_eq!(
            res.header("www-authenticate"),
            Some("Basic realm=\"pylon\""),
            "{protocol:?}"
        );
    }
}

// === jwt-auth ===

#[tokio::test]
async fn jwt_auth_verifies_hs256_tokens_from_the_header_query_or_cookie() {
    let up = Upstream::start("up");
    let config = json!({
        "routes": [
            route("j", "/j", &up, json!({"jwt-auth": {}})),
            route("hidden", "/hidden", &up, json!({"jwt-auth": {"hide_credentials": true}})),
        ],
        "consumers": [
            {"username": "jack", "plugins": {"jwt-auth": {"key": "jack-key", "secret": "jack-secret"}}},
            {"username": "rose", "plugins": {"jwt-auth": {"key": "rose-key", "secret": "cm9zZS1zZWNyZXQ=", "base64_secret": true}}}
        ]
    });
    let pylon = Pylon::start(&config.to_string(), "");
    let valid = hs256(
        &json!({"key": "jack-key", "exp": now() + 3600}),
        b"jack-secret",
    );
    let rose = hs256(
        &json!({"key": "rose-key", "exp": now() + 3600}),
        b"rose-secret",
    );
    let bearer = format!("Bearer {valid}");
    let refusals = [
        (None, "Missing JWT token in request"),
        (Some("not.a-token".to_owned()), "JWT token invalid"),
        (
            Some(hs256(
                &json!({"key": "jack-key", "exp": now() + 3600}),
                b"wrong secret",
            )),
            "failed to verify jwt",
        ),
        (
            Some(hs256(
                &json!({"key": "jack-key", "exp": now() - 3600}),
                b"jack-secret",
            )),
            "failed to verify jwt",
        ),
        (
            Some(hs256(
                &json!({"key": "nobody", "exp": now() + 3600}),
                b"jack-secret",
            )),
            "Invalid user key in JWT token",
        ),
        (
            Some(hs256(&json!({"exp": now() + 3600}), b"jack-secret")),
            "missing user key in JWT token",
        ),
    ];
    for protocol in PROTOCOLS {
        let before = up.request_count();
        let challenge = "Bearer realm=\"jwt\"";
        assert_challenged(
            protocol, pylon.addr, "/j", &refusals, challenge, &up, before,
        )
        .await;

        for (target, headers) in [
            ("/j".to_owned(), vec![("authorization", bearer.as_str())]),
            ("/j".to_owned(), vec![("authorization", valid.as_str())]),
            (format!("/j?jwt={valid}"), vec![]),
            (
                "/j".to_owned(),
                vec![("cookie", &*format!("a=b; jwt={valid}"))],
            ),
        ] {
            let res = call(protocol, pylon.addr, "GET", &target, &headers, b"").await;
            let what = format!("{protocol:?} {target} {headers:?}");
            assert_eq!(res.status, 200, "{what}: {}", res.text());
            assert_eq!(res.header("x-consumer"), Some("jack"), "{what}");
        }
        // The token reaches the upstream unless hidden.
        let res = call(
            protocol,
            pylon.addr,
            "GET",
            "/j",
            &[("authorization", &bearer)],
            b"",
        )
        .await;
        assert_eq!(res.status, 200, "{protocol:?}");
        assert_eq!(
            up.last().header("authorization"),
            Some(bearer.as_str()),
            "{protocol:?}"
        );

        // A base64 secret verifies what its decoded bytes signed.
        let headers = [("authorization", rose.as_str()), ("x-other", "kept")];
        let res = call(protocol, pylon.addr, "GET", "/hidden", &headers, b"").await;
        assert_eq!(res.status, 200, "{protocol:?}: {}", res.text());
        assert_eq!(res.header("x-consumer"), Some("rose"), "{protocol:?}");
        let seen = up.last();
        assert!(!seen.has_header("authorization"), "{protocol:?}");
        assert_eq!(seen.header("x-other"), Some("kept"), "{protocol:?}");
    }
}

/// An RS256 JSON Web Token of `payload`, signed with the test RSA key.
fn rs256(payload: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(payload.to_string());
    let signing_input = format!("{header}.{payload}");
    let pkcs8 = rcgen::KeyPair::from_pem(RSA_KEY).unwrap().serialize_der();
    let key = signature::RsaKeyPair::from_pkcs8(&pkcs8).unwrap();
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(
        &signature::RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        signing_input.as_bytes(),
        &mut signature,
    )
    .unwrap();
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

#[tokio::test]
async fn jwt_auth_verifies_rs256_tokens_with_the_consumers_public_key_only() {
    let up = Upstream::start("up");
    let public_key = rcgen::KeyPair::from_pem(RSA_KEY).unwrap().public_key_pem();
    let config = json!({
        "routes": [route("j", "/j", &up, json!({"jwt-auth": {}}))],
        "consumers": [{"username": "rsa", "plugins": {"jwt-auth": {
            "key": "rsa-key", "algorithm": "RS256", "public_key": public_key
        }}}]
    });
    let pylon = Pylon::start(&config.to_string(), "");
    let payload = json!({"key": "rsa-key", "exp": now() + 3600});
    let valid = rs256(&payload);
    // The public key is no secret: a token that asks for HMAC with it must not pass.
    let confused = hs256(&payload, public_key.as_bytes());
    for protocol in PROTOCOLS {
        let res = call(
            protocol,
            pylon.addr,
            "GET",
            "/j",
            &[("authorization", &valid)],
            b"",
        )
        .await;
        assert_eq!(res.status, 200, "{protocol:?}: {}", res.text());
        assert_eq!(res.header("x-consumer"), Some("rsa"), "{protocol:?}");

        let before = up.request_count();
        let res = call(
            protocol,
            pylon.addr,
            "GET",
            "/j",
            &[("authorization", &confused)],
            b"",
        )
        .await;
        let what = format!("{protocol:?} HS256 with the public key");
        assert_refused(
            &res,
            401,
            json!({"message": "failed to verify jwt"}),
            &up,
            before,
            &what,
        );
    }
}

// === hmac-auth ===

/// `Authorization: Signature ...` for `method target` with `date`, signed by `key_id` with
/// `secret` over `@request-target` and `date`.
fn hmac_signature(
    algorithm: &str,
    key_id: &str,
    secret: &[u8],
    method: &str,
    target: &str,
    date: &str,
) -> String {
    let signing_string = format!("{key_id}\n{method} {target}\ndate: {date}\n");
    let hmac_algorithm = match algorithm {
        "hmac-sha256" => hmac::HMAC_SHA256,
        "hmac-sha512" => hmac::HMAC_SHA512,
        other => panic!("no test signer for {other}"),
    };
    let tag = hmac::sign(
        &hmac::Key::new(hmac_algorithm, secret),
        signing_string.as_bytes(),
    );
    format!(
        "Signature keyId=\"{key_id}\",algorithm=\"{algorithm}\",headers=\"@request-target date\",signature=\"{}\"",
        STANDARD.encode(tag)
    )
}

#[tokio::test]
async fn hmac_auth_accepts_a_fresh_signature_of_the_request_and_nothing_else() {
    let up = Upstream::start("up");
    let config = json!({
        "routes": [route("s", "/s/*", &up, json!({"hmac-auth": {}}))],
        "consumers": [{"username": "jack", "plugins": {"hmac-auth": {"key_id": "jack-id", "secret_key": "jack-secret"}}}]
    });
    let pylon = Pylon::start(&config.to_string(), "");
    let date = httpdate::fmt_http_date(SystemTime::now());
    let stale = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(600));
    let sign = |algorithm: &str, secret: &[u8], target: &str, date: &str| {
        hmac_signature(algorithm, "jack-id", secret, "GET", target, date)
    };
    let not_validated = "client request can't be validated";
    let refusals = [
        // Signed with another secret, for another target, or too long ago.
        (sign("hmac-sha256", b"guess", "/s/a?x=1", &date), date.clone(), not_validated),
        (sign("hmac-sha256", b"jack-secret", "/s/other", &date), date.clone(), not_validated),
        (sign("hmac-sha256", b"jack-secret", "/s/a?x=1", &stale), stale.clone(), not_validated),
        (
            hmac_signature("hmac-sha256", "nobody", b"jack-secret", "GET", "/s/a?x=1", &date),
            date.clone(),
            not_validated,
        ),
        (
            "Basic amFjazpwdw==".to_owned(),
            date.clone(),
            "client request can't be validated: Authorization header does not start with 'Signature'",
        ),
    ];
    for protocol in PROTOCOLS {
        let before = up.request_count();
        let res = call(
            protocol,
            pylon.addr,
            "GET",
            "/s/a?x=1",
            &[("date", &date)],
            b"",
        )
        .await;
        let what = format!("{protocol:?} unsigned");
        let message = "client request can't be validated: missing Authorization header";
        assert_refused(&res, 401, json!({"message": message}), &up, before, &what);
        assert_eq!(
            res.header("www-authenticate"),
            Some("hmac realm=\"hmac\""),
            "{what}"
        );
        for (authorization, date, message) in &refusals {
            let headers = [
                ("authorization", authorization.as_str()),
                ("date", date.as_str()),
            ];
            let res = call(protocol, pylon.addr, "GET", "/s/a?x=1", &headers, b"").await;
            let what = format!("{protocol:?} with {authorization}");
            assert_refused(&res, 401, json!({"message": message}), &up, before, &what);
        }

        for algorithm in ["hmac-sha256", "hmac-sha512"] {
            let authorization = sign(algorithm, b"jack-secret", "/s/a?x=1", &date);
            let headers = [
                ("authorization", authorization.as_str()),
                ("date", date.as_str()),
            ];
            let res = call(protocol, pylon.addr, "GET", "/s/a?x=1", &headers, b"").await;
            assert_eq!(res.status, 200, "{protocol:?} {algorithm}: {}", res.text());
            assert_eq!(
                res.header("x-consumer"),
                Some("jack"),
                "{protocol:?} {algorithm}"
            );
            assert_eq!(up.last().target, "/s/a?x=1", "{protocol:?} {algorithm}");
        }
    }
}

// === consumer-restriction ===

#[tokio::test]
async fn consumer_restriction_lets_through_only_the_consumers_its_lists_allow() {
    let up = Upstream::start("up");
    let config = json!({
        "routes": [
            route("white", "/white", &up, json!({
                "key-auth": {},
                "consumer-restriction": {"whitelist": ["jack"]}
            })),
            route("black", "/black", &up, json!({
                "key-auth": {},
                "consumer-restriction": {"blacklist": ["jack"], "rejected_code": 401, "rejected_msg": "not you, jack"}
            })),
            route("group", "/group", &up, json!({
                "key-auth": {},
                "consumer-restriction": {"type": "consumer_group_id", "whitelist": ["gold"]}
            })),
            route("anonymous", "/anonymous", &up, json!({
                "consumer-restriction": {"whitelist": ["jack"]}
            })),
        ],
        "consumer_groups": [{"id": "gold", "plugins": {}}, {"id": "silver", "plugins": {}}],
        "consumers": [
            {"username": "jack", "group_id": "gold", "plugins": {"key-auth": {"key": "jack-key"}}},
            {"username": "tom", "group_id": "silver", "plugins": {"key-auth": {"key": "tom-key"}}},
            {"username": "rose", "plugins": {"key-auth": {"key": "rose-key"}}}
        ]
    });
    let pylon = Pylon::start(&config.to_string(), "");
    for protocol in PROTOCOLS {
        let jack = [("apikey", "jack-key")];
        let rose = [("apikey", "rose-key")];
        let before = up.request_count();
        let res = call(protocol, pylon.addr, "GET", "/white", &rose, b"").await;
        let what = format!("{protocol:?} rose on the whitelist route");
        assert_refused(
            &res,
            403,
            json!({"message": "The consumer_name is forbidden."}),
            &up,
            before,
            &what,
        );
        let res = call(protocol, pylon.addr, "GET", "/black", &jack, b"").await;
        let what = format!("{protocol:?} jack on the blacklist route");
        assert_refused(
            &res,
            401,
            json!({"message": "not you, jack"}),
            &up,
            before,
            &what,
        );
        // As in APISIX, a consumer without a group has no value to check: 401, not 403.
        let res = call(protocol, pylon.addr, "GET", "/group", &rose, b"").await;
        let what = format!("{protocol:?} rose, in no group, on the group route");
        let message =
            "The request is rejected, please check the consumer_group_id for this request";
        assert_refused(&res, 401, json!({"message": message}), &up, before, &what);
        let res = call(
            protocol,
            pylon.addr,
            "GET",
            "/group",
            &[("apikey", "tom-key")],
            b"",
        )
        .await;
        let what = format!("{protocol:?} tom, in another group, on the group route");
        assert_refused(
            &res,
            403,
            json!({"message": "The consumer_group_id is forbidden."}),
            &up,
            before,
            &what,
        );
        let res = call(protocol, pylon.addr, "GET", "/anonymous", &jack, b"").await;
        let what = format!("{protocol:?} without an authentication plugin");
        let message = "The request is rejected, please check the consumer_name for this request";
        assert_refused(&res, 401, json!({"message": message}), &up, before, &what);

        for (target, headers, consumer) in [
            ("/white", &jack, "jack"),
            ("/black", &rose, "rose"),
            ("/group", &jack, "jack"),
        ] {
            let res = call(protocol, pylon.addr, "GET", target, headers, b"").await;
            assert_eq!(res.status, 200, "{protocol:?} {target}: {}", res.text());
            assert_eq!(
                res.header("x-consumer"),
                Some(consumer),
                "{protocol:?} {target}"
            );
            assert_eq!(up.last().target, target, "{protocol:?}");
        }
    }
}

// === balancing on the consumer ===

#[tokio::test]
async fn chash_on_the_consumer_sends_each_consumers_requests_to_one_node() {
    let nodes: Vec<Upstream> = (0..3).map(|i| Upstream::start(&format!("n{i}"))).collect();
    let weights: serde_json::Map<String, Value> = nodes
        .iter()
        .map(|n| (n.addr.to_string(), json!(1)))
        .collect();
    let consumers: Vec<Value> = (0..8)
        .map(|i| json!({"username": format!("c{i}"), "plugins": {"key-auth": {"key": format!("key-{i}")}}}))
        .collect();
    let config = json!({
        "routes": [{
            "id": "r", "uri": "/r", "plugins": {"key-auth": {}},
            "upstream": {"type": "chash", "hash_on": "consumer", "nodes": weights}
        }],
        "consumers": consumers
    });
    let pylon = Pylon::start(&config.to_string(), "");
    let mut chosen = std::collections::BTreeSet::new();
    for i in 0..8 {
        let key = format!("key-{i}");
        let mut served_by = std::collections::BTreeSet::new();
        for protocol in PROTOCOLS {
            for _ in 0..4 {
                let res = call(protocol, pylon.addr, "GET", "/r", &[("apikey", &key)], b"").await;
                assert_eq!(res.status, 200, "{protocol:?} c{i}: {}", res.text());
                served_by.insert(res.text());
            }
        }
        assert_eq!(served_by.len(), 1, "c{i} was served by {served_by:?}");
        chosen.extend(served_by);
    }
    // Eight consumers on three equal nodes all hashing to one is a 1 in 3^7 chance.
    assert!(chosen.len() > 1, "every consumer went to {chosen:?}");
}
