//! TLS termination on the https listener: certificates per SNI from `ssls`, changed at
//! runtime, ALPN, resumption, mTLS; and TLS to upstreams.

mod support;

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use support::tls::{client_config, https_get, ssl_yaml, OnlySchemes, TestCa, TlsConn, TlsUpstream};
use support::upstream::Upstream;
use support::{wait_until, Pylon};

fn routes(up: &Upstream, ssls: &str) -> String {
    format!(
        "routes:\n  - id: r1\n    uri: /*\n    upstream:\n      nodes:\n        {}\nssls:\n{ssls}",
        up.node()
    )
}

fn leaf(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

#[test]
fn serves_the_certificate_of_the_sni_and_proxies_over_https() {
    let ca = TestCa::new("test ca");
    let a = ca.issue(&["a.test"]);
    let wild = ca.issue(&["*.wild.test"]);
    let up = Upstream::start("backend");
    let ssls = ssl_yaml("1", &["a.test"], &a, "") + &ssl_yaml("2", &["*.wild.test"], &wild, "");
    let pylon = Pylon::start(&routes(&up, &ssls), "");
    let https = pylon.https_addr.unwrap();
    let config = client_config(ca.roots(), &["http/1.1"]);

    let res = https_get(https, "a.test", config.clone(), "/x").unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(res.body, "backend");
    assert_eq!(res.peer_cert.unwrap(), leaf(&a.cert));
    assert_eq!(res.alpn.as_deref(), Some("http/1.1"));
    let seen = up.received();
    assert_eq!(seen[0].header("x-forwarded-proto"), Some("https"));

    let res = https_get(https, "x.wild.test", config.clone(), "/y").unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(res.peer_cert.unwrap(), leaf(&wild.cert));

    // A name no ssl covers: the handshake fails with an alert, and nothing is proxied.
    let err = https_get(https, "other.test", config, "/").unwrap_err();
    assert!(err.contains("UnrecognisedName"), "{err}");
    assert_eq!(up.request_count(), 2);
}

#[test]
fn a_fallback_sni_answers_clients_without_a_matching_name() {
    let ca = TestCa::new("test ca");
    let a = ca.issue(&["a.test", "other.test"]);
    let up = Upstream::start("backend");
    let pylon = Pylon::start(
        &routes(&up, &ssl_yaml("1", &["a.test"], &a, "")),
        "  https:\n    listen: [\"127.0.0.1:0\"]\n    fallback_sni: a.test\n",
    );
    let res = https_get(
        pylon.https_addr.unwrap(),
        "other.test",
        client_config(ca.roots(), &[]),
        "/",
    )
    .unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(res.peer_cert.unwrap(), leaf(&a.cert));
}

#[test]
fn certificates_are_added_replaced_and_removed_at_runtime() {
    let ca = TestCa::new("test ca");
    let first = ca.issue(&["a.test"]);
    let second = ca.issue(&["a.test"]);
    let b = ca.issue(&["b.test"]);
    let up = Upstream::start("backend");
    let pylon = Pylon::start(&routes(&up, &ssl_yaml("1", &["a.test"], &first, "")), "");
    let https = pylon.https_addr.unwrap();
    let config = client_config(ca.roots(), &[]);

    let mut established = TlsConn::connect(https, "a.test", config.clone()).unwrap();
    assert_eq!(established.get("a.test", "/").unwrap().status, 200);

    // Replace a.test's certificate and add b.test.
    pylon.write_routes(&routes(
        &up,
        &(ssl_yaml("1", &["a.test"], &second, "") + &ssl_yaml("2", &["b.test"], &b, "")),
    ));
    wait_until(
        || https_get(https, "b.test", config.clone(), "/").is_ok(),
        "b.test served",
    );
    // (A new client: a resumed session would not show the certificate again.)
    let res = https_get(https, "a.test", client_config(ca.roots(), &[]), "/").unwrap();
    assert_eq!(res.peer_cert.unwrap(), leaf(&second.cert));
    // The connection made before the change still works, on its old certificate.
    let res = established.get("a.test", "/again").unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(res.peer_cert.unwrap(), leaf(&first.cert));

    // Remove b.test.
    pylon.write_routes(&routes(&up, &ssl_yaml("1", &["a.test"], &second, "")));
    wait_until(
        || https_get(https, "b.test", config.clone(), "/").is_err(),
        "b.test gone",
    );
}

#[test]
fn sessions_resume_with_tickets_and_with_session_ids() {
    let ca = TestCa::new("test ca");
    let a = ca.issue(&["a.test"]);
    let up = Upstream::start("backend");
    let pylon = Pylon::start(&routes(&up, &ssl_yaml("1", &["a.test"], &a, "")), "");
    let https = pylon.https_addr.unwrap();

    // TLS 1.3 (tickets); the client config keeps its session cache between connections.
    let tls13 = client_config(ca.roots(), &[]);
    let first = https_get(https, "a.test", tls13.clone(), "/").unwrap();
    assert_eq!(first.version, Some(rustls::ProtocolVersion::TLSv1_3));
    assert!(!first.resumed);
    let second = https_get(https, "a.test", tls13, "/").unwrap();
    assert!(second.resumed, "TLS 1.3 session not resumed");

    // TLS 1.2 (session ids, and tickets).
    let mut config = rustls::ClientConfig::builder_with_provider(support::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    config.enable_sni = true;
    let tls12 = Arc::new(config);
    let first = https_get(https, "a.test", tls12.clone(), "/").unwrap();
    assert_eq!(first.version, Some(rustls::ProtocolVersion::TLSv1_2));
    let second = https_get(https, "a.test", tls12, "/").unwrap();
    assert!(second.resumed, "TLS 1.2 session not resumed");
}

#[test]
fn an_ssl_with_rsa_and_ecdsa_certificates_serves_what_the_client_accepts() {
    let ca = TestCa::new("test ca");
    let ecdsa = ca.issue(&["a.test"]);
    let rsa = ca.issue_rsa(&["a.test"]);
    let up = Upstream::start("backend");
    let extra = format!(
        "    certs:\n      - |\n        {}\n    keys:\n      - |\n        {}\n",
        rsa.cert.trim_end().replace('\n', "\n        "),
        rsa.key.trim_end().replace('\n', "\n        "),
    );
    let pylon = Pylon::start(
        &routes(&up, &ssl_yaml("1", &["a.test"], &ecdsa, &extra)),
        "",
    );
    let https = pylon.https_addr.unwrap();
    let only = |schemes: Vec<rustls::SignatureScheme>| {
        let config = rustls::ClientConfig::builder_with_provider(support::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(OnlySchemes(schemes)))
            .with_no_client_auth();
        Arc::new(config)
    };
    let res = https_get(
        https,
        "a.test",
        only(vec![rustls::SignatureScheme::RSA_PSS_SHA256]),
        "/",
    )
    .unwrap();
    assert_eq!(res.peer_cert.unwrap(), leaf(&rsa.cert));
    let res = https_get(
        https,
        "a.test",
        only(vec![rustls::SignatureScheme::ECDSA_NISTP256_SHA256]),
        "/",
    )
    .unwrap();
    assert_eq!(res.peer_cert.unwrap(), leaf(&ecdsa.cert));
}

#[test]
fn mutual_tls_requires_a_client_certificate_from_the_configured_ca() {
    let ca = TestCa::new("test ca");
    let clients = TestCa::new("client ca");
    let strangers = TestCa::new("other ca");
    let a = ca.issue(&["a.test"]);
    let up = Upstream::start("backend");
    let client_block = format!(
        "    client:\n      ca: |\n        {}\n      depth: 1\n",
        clients.pem().trim_end().replace('\n', "\n        ")
    );
    let pylon = Pylon::start(
        &routes(&up, &ssl_yaml("1", &["a.test"], &a, &client_block)),
        "",
    );
    let https = pylon.https_addr.unwrap();
    let with_cert = |issuer: &TestCa| {
        let issued = issuer.issue(&["client.test"]);
        let chain = vec![leaf(&issued.cert)];
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(issued.key.as_bytes()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(support::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(ca.roots())
            .with_client_auth_cert(chain, key)
            .unwrap();
        Arc::new(config)
    };

    let res = https_get(https, "a.test", with_cert(&clients), "/").unwrap();
    assert_eq!(res.status, 200);
    // Without a certificate, or with one from another CA, no request gets through. With
    // TLS 1.3 the server's refusal arrives after the client's handshake has finished, so
    // it shows on the request.
    assert!(https_get(https, "a.test", client_config(ca.roots(), &[]), "/").is_err());
    assert!(https_get(https, "a.test", with_cert(&strangers), "/").is_err());
    assert_eq!(up.request_count(), 1);
}

#[test]
fn https_upstreams_are_verified_and_can_be_sent_a_client_certificate() {
    let ca = TestCa::new("upstream ca");
    let upstream_cert = ca.issue(&["backend.test", "127.0.0.1"]);
    let plain = TlsUpstream::start("tls-backend", &upstream_cert, None);
    let clients = TestCa::new("gateway clients");
    let mutual = TlsUpstream::start("mtls-backend", &upstream_cert, Some(&clients));
    let gateway_cert = clients.issue(&["gateway.test"]);
    let indent = |pem: &str| pem.trim_end().replace('\n', "\n          ");
    let routes = format!(
        "routes:\n  - id: verified\n    uri: /verified\n    upstream_id: verified\n  - id: unverified\n    uri: /unverified\n    upstream_id: unverified\n  - id: mutual\n    uri: /mutual\n    upstream_id: mutual\nupstreams:\n  - id: verified\n    scheme: https\n    pass_host: rewrite\n    upstream_host: backend.test\n    nodes:\n      \"{plain}\": 1\n  - id: unverified\n    scheme: https\n    tls:\n      verify: false\n    nodes:\n      \"{plain}\": 1\n  - id: mutual\n    scheme: https\n    pass_host: rewrite\n    upstream_host: backend.test\n    tls:\n      client_cert: |\n          {}\n      client_key: |\n          {}\n    nodes:\n      \"{mutual}\": 1\n",
        indent(&gateway_cert.cert),
        indent(&gateway_cert.key),
        plain = plain.addr,
        mutual = mutual.addr,
    );

    // Without the upstream's CA among the trusted ones, verification fails: 502.
    let untrusting = Pylon::start(&routes, "");
    let res = support::client::get(untrusting.addr, "x", "/verified");
    assert_eq!(res.status, 502);
    // With verification off the connection is made.
    let res = support::client::get(untrusting.addr, "x", "/unverified");
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "tls-backend sni=- client_cert=no");
    drop(untrusting);

    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let pylon = Pylon::start(
        &routes,
        &format!("  upstream:\n    trusted_ca: {}\n", ca_file.display()),
    );
    let res = support::client::get(pylon.addr, "x", "/verified");
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "tls-backend sni=backend.test client_cert=no");
    let res = support::client::get(pylon.addr, "x", "/mutual");
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "mtls-backend sni=backend.test client_cert=yes");
}

#[test]
fn a_bad_certificate_is_refused_with_the_reason() {
    let ca = TestCa::new("test ca");
    let a = ca.issue(&["a.test"]);
    let other = ca.issue(&["a.test"]);
    let mismatched = support::tls::Issued {
        cert: a.cert.clone(),
        key: other.key.clone(),
    };
    let up = Upstream::start("backend");
    let err = Pylon::try_start(
        &routes(&up, &ssl_yaml("1", &["a.test"], &mismatched, "")),
        "",
    )
    .err()
    .expect("a key that does not match its certificate must be refused");
    assert!(err.contains("ssls[0].key"), "{err}");
    assert!(err.contains("does not match"), "{err}");
}

#[test]
fn a_certificate_given_by_environment_references_is_read_when_compiled() {
    let ca = TestCa::new("test ca");
    let a = ca.issue(&["a.test"]);
    // Names of this test alone: the variables reach every pylon this test binary starts.
    std::env::set_var("PYLON_TLS_TEST_CERT", &a.cert);
    std::env::set_var("PYLON_TLS_TEST_KEY", &a.key);
    let up = Upstream::start("backend");
    let ssls = "  - id: 1\n    snis: [\"a.test\"]\n    cert: \"$env://PYLON_TLS_TEST_CERT\"\n    key: \"$ENV://PYLON_TLS_TEST_KEY\"\n";
    let pylon = Pylon::start(&routes(&up, ssls), "");

    let config = client_config(ca.roots(), &["http/1.1"]);
    let res = https_get(pylon.https_addr.unwrap(), "a.test", config, "/x").unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(res.body, "backend");
    assert_eq!(res.peer_cert.unwrap(), leaf(&a.cert));
}
