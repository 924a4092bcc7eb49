//! `gzip` and `brotli` through the gateway, over HTTP/1.1 and HTTP/2 alike: a large response
//! compressed as it streams and decoded byte for byte; left alone when the client did not ask,
//! the upstream already encoded it, its type is not listed or it is short; `Vary` and a weak
//! `ETag` on what is encoded.

mod support;

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::{json, Value};
use support::protocols::{call, PROTOCOLS};
use support::upstream::{respond, Upstream};
use support::Pylon;

/// 100 KB or so of JSON, as an API would send.
fn document() -> Vec<u8> {
    let items: Vec<Value> = (0..1200)
        .map(|i| json!({"id": i, "name": format!("item {i}"), "tags": ["a", "b"], "price": i * 3}))
        .collect();
    serde_json::to_vec(&json!({ "items": items })).unwrap()
}

/// Answers `/json` with the document, `/short` with a few bytes, `/encoded` with a body the
/// upstream gzipped itself, `/html` with HTML; each with a strong `ETag`.
fn upstream() -> Upstream {
    Upstream::with_handler(
        "up",
        Arc::new(|request, stream| {
            let (content_type, body, extra): (&str, Vec<u8>, Option<(&str, &str)>) =
                match request.target.as_str() {
                    "/short" => ("application/json", b"{}".to_vec(), None),
                    "/encoded" => (
                        "application/json",
                        b"not really gzip".to_vec(),
                        Some(("Content-Encoding", "gzip")),
                    ),
                    "/html" => (
                        "text/html; charset=utf-8",
                        b"<html>hello</html>".repeat(50),
                        None,
                    ),
                    _ => ("application/json", document(), None),
                };
            let mut headers = vec![("Content-Type", content_type), ("ETag", "\"v1\"")];
            headers.extend(extra);
            respond(stream, 200, &headers, &body);
            true
        }),
    )
}

fn config(up: SocketAddr, plugins: Value) -> String {
    json!({"routes": [{"id": "r", "uri": "/*", "upstream": {"nodes": {up.to_string(): 1}}, "plugins": plugins}]})
        .to_string()
}

fn gunzip(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .read_to_end(&mut out)
        .expect("a gzip body");
    out
}

fn unbrotli(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    brotli::Decompressor::new(body, 4096)
        .read_to_end(&mut out)
        .expect("a brotli body");
    out
}

#[tokio::test]
async fn gzip_compresses_what_the_client_asked_for_and_nothing_else() {
    let up = upstream();
    let plugins =
        json!({"gzip": {"types": ["application/json"], "min_length": 100, "comp_level": 6}});
    let pylon = Pylon::start(&config(up.addr, plugins), "");
    let gzip = [("accept-encoding", "gzip, deflate")];
    for protocol in PROTOCOLS {
        let res = call(protocol, pylon.addr, "GET", "/json", &gzip, b"").await;
        assert_eq!(res.status, 200, "{protocol:?}");
        assert_eq!(res.header("content-encoding"), Some("gzip"), "{protocol:?}");
        assert_eq!(res.header("vary"), Some("Accept-Encoding"), "{protocol:?}");
        assert_eq!(res.header("etag"), Some("W/\"v1\""), "{protocol:?}");
        assert!(
            res.body.len() < document().len() / 4,
            "{protocol:?}: {} bytes",
            res.body.len()
        );
        assert!(
            gunzip(&res.body) == document(),
            "{protocol:?}: decodes to the document"
        );

        // Not asked, asked with a weight of 0, short, already encoded, of another type.
        for (target, headers) in [
            ("/json", &[][..]),
            ("/json", &[("accept-encoding", "gzip;q=0, br")][..]),
            ("/short", &gzip[..]),
            ("/encoded", &gzip[..]),
            ("/html", &gzip[..]),
        ] {
            let res = call(protocol, pylon.addr, "GET", target, headers, b"").await;
            assert_eq!(res.status, 200, "{protocol:?} {target}");
            let coding = res.header("content-encoding");
            let expected = (target == "/encoded").then_some("gzip");
            assert_eq!(coding, expected, "{protocol:?} {target} {headers:?}");
            assert_eq!(res.header("etag"), Some("\"v1\""), "{protocol:?} {target}");
        }
        let res = call(protocol, pylon.addr, "HEAD", "/json", &gzip, b"").await;
        assert_eq!(res.header("content-encoding"), None, "{protocol:?}: HEAD");
    }
}

#[tokio::test]
async fn brotli_goes_first_when_both_are_on_and_the_client_takes_it() {
    let up = upstream();
    let plugins = json!({
        "brotli": {"types": "*", "comp_level": 5},
        "gzip": {"types": "*"}
    });
    let pylon = Pylon::start(&config(up.addr, plugins), "");
    for protocol in PROTOCOLS {
        let both = [("accept-encoding", "gzip, br")];
        let res = call(protocol, pylon.addr, "GET", "/json", &both, b"").await;
        assert_eq!(res.header("content-encoding"), Some("br"), "{protocol:?}");
        assert!(
            unbrotli(&res.body) == document(),
            "{protocol:?}: decodes to the document"
        );

        let gzip_only = [("accept-encoding", "gzip")];
        let res = call(protocol, pylon.addr, "GET", "/html", &gzip_only, b"").await;
        assert_eq!(res.header("content-encoding"), Some("gzip"), "{protocol:?}");
        assert_eq!(
            gunzip(&res.body),
            b"<html>hello</html>".repeat(50),
            "{protocol:?}"
        );
    }
}

#[tokio::test]
async fn a_body_rewritten_by_another_plugin_is_compressed_after_the_rewrite() {
    let up = upstream();
    let plugins = json!({
        "gzip": {"types": ["application/json"]},
        "response-rewrite": {"filters": [{"regex": "item", "replace": "thing", "scope": "global"}]}
    });
    let pylon = Pylon::start(&config(up.addr, plugins), "");
    let expected = String::from_utf8(document())
        .unwrap()
        .replace("item", "thing");
    for protocol in PROTOCOLS {
        let res = call(
            protocol,
            pylon.addr,
            "GET",
            "/json",
            &[("accept-encoding", "gzip")],
            b"",
        )
        .await;
        assert_eq!(res.header("content-encoding"), Some("gzip"), "{protocol:?}");
        let decoded = gunzip(&res.body);
        assert!(
            decoded == expected.as_bytes(),
            "{protocol:?}: the body rewritten, then encoded"
        );
    }
}
