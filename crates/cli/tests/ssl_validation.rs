//! `pylon validate` on `ssls`, upstream TLS and health checks: a good file passes, and every
//! mistake is named by its document path before anything runs.

mod support;

use rcgen::{date_time_ymd, CertificateParams, KeyPair};
use support::validate;

/// A self-signed ECDSA certificate for `name` valid between two years, and its key (PEM).
fn certificate(name: &str, from_year: i32, to_year: i32) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
    params.not_before = date_time_ymd(from_year, 1, 1);
    params.not_after = date_time_ymd(to_year, 1, 1);
    (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

/// One YAML list item; JSON is YAML, and spares indenting PEM blocks.
fn item(value: serde_json::Value) -> String {
    format!("  - {value}\n")
}

#[test]
fn good_ssls_tls_upstreams_and_checks_are_accepted() {
    let (cert, key) = certificate("a.test", 2020, 2999);
    let (client_cert, client_key) = certificate("gateway.test", 2020, 2999);
    let text = format!(
        "ssls:\n{}upstreams:\n{}routes:\n{}",
        item(
            serde_json::json!({"id": "s", "cert": cert, "key": key, "snis": ["a.test", "*.a.test"]})
        ),
        item(serde_json::json!({
            "id": "u", "scheme": "https", "nodes": {"127.0.0.1:8443": 1},
            "tls": {"client_cert": client_cert, "client_key": client_key},
            "checks": {"active": {"type": "https", "http_path": "/health"}, "passive": {}},
        })),
        item(
            serde_json::json!({"id": "r", "uri": "/ws", "enable_websocket": true, "upstream_id": "u"})
        ),
    );
    let (code, stdout, stderr) = validate(&text);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("valid (1 routes, 0 services, 1 upstreams, 1 ssls)"),
        "{stdout}"
    );
}

#[test]
fn every_tls_and_health_check_mistake_is_reported_with_its_path() {
    let (cert, key) = certificate("a.test", 2020, 2999);
    let (_, other_key) = certificate("a.test", 2020, 2999);
    let (expired_cert, expired_key) = certificate("a.test", 2000, 2001);
    let text = format!(
        "ssls:\n{}{}{}routes:\n{}{}",
        item(serde_json::json!({"cert": cert, "key": other_key, "snis": ["a.test"]})),
        item(serde_json::json!({"cert": expired_cert, "key": expired_key, "snis": ["a.*.test"]})),
        item(serde_json::json!({"cert": cert, "key": key})),
        item(serde_json::json!({
            "uri": "/a",
            "upstream": {"nodes": {"127.0.0.1:80": 1}, "tls": {"verify": false},
                         "checks": {"passive": {}}},
        })),
        item(serde_json::json!({
            "uri": "/b",
            "upstream": {"scheme": "https", "nodes": {"127.0.0.1:443": 1},
                         "tls": {"client_cert": cert},
                         "checks": {"active": {"healthy": {"http_statuses": [700]}}}},
        })),
    );
    let (code, _, stderr) = validate(&text);
    assert_ne!(code, Some(0));
    for expected in [
        "ssls[0].key: does not match the certificate",
        "ssls[1].cert: certificate expired at 2001-01-01T00:00:00Z",
        "ssls[1].snis[0]: `a.*.test` is not a host name",
        "ssls[2].snis: a server certificate needs at least one name",
        "routes[0].upstream.tls: applies only to `https`, `grpcs` and `tls` upstreams",
        "routes[0].upstream.checks.active: required when checks.passive is set",
        "routes[1].upstream.tls.client_key: required when tls.client_cert is set",
        "routes[1].upstream.checks.active.healthy.http_statuses[0]: must be 200..599",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(
        !stderr.contains("PRIVATE KEY"),
        "a key was printed:\n{stderr}"
    );
}
