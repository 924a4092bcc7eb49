//! Realistic nginx configurations converted, then asked "which location answers this request?"
//! through Pylon's real router: the answers must be nginx's.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use pylon_import::nginx::{self, Conversion};
use pylon_router::{RequestView, RouteSpec, Router};
use serde_json::{json, Value};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn import(name: &str) -> Conversion {
    nginx::convert(&nginx::load(&data(name)).unwrap())
}

/// The unconverted list as `file-name:line: directive`, without the reasons.
fn unconverted(conversion: &Conversion) -> Vec<String> {
    conversion
        .unconverted
        .iter()
        .map(|u| {
            let location = Path::new(&u.location)
                .file_name()
                .unwrap()
                .to_string_lossy();
            format!("{location}: {}", u.directive)
        })
        .collect()
}

fn route<'a>(document: &'a Value, id: &str) -> &'a Value {
    document["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no route {id}"))
}

/// The document's routes in the router, each answering with its id.
fn router(document: &Value) -> Router<String> {
    let specs = document["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let mut spec = RouteSpec::new(
                r["uri"].as_str().unwrap(),
                r["id"].as_str().unwrap().to_string(),
            );
            if let Some(hosts) = r["hosts"].as_array() {
                spec.hosts = hosts
                    .iter()
                    .map(|h| h.as_str().unwrap().to_string())
                    .collect();
            }
            spec.priority = r["priority"].as_i64().unwrap_or(0);
            if let Some(vars) = r.get("vars") {
                spec.vars = Some(pylon_model::expr::Expr::parse(vars).unwrap());
            }
            spec
        })
        .collect();
    Router::new(specs).unwrap()
}

struct Request<'a> {
    scheme: &'a str,
    method: &'a str,
    host: &'a str,
    path: &'a str,
    headers: &'a [(&'a str, &'a str)],
}

impl RequestView for Request<'_> {
    fn path(&self) -> &str {
        self.path
    }
    fn host(&self) -> Option<&str> {
        Some(self.host)
    }
    fn method(&self) -> &str {
        self.method
    }
    fn remote_addr(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    }
    fn var(&self, name: &str) -> Option<Cow<'_, str>> {
        match name {
            "uri" => Some(Cow::Borrowed(self.path)),
            "scheme" => Some(Cow::Borrowed(self.scheme)),
            "request_method" => Some(Cow::Borrowed(self.method)),
            "host" => Some(Cow::Borrowed(self.host)),
            _ => {
                let header = name.strip_prefix("http_")?;
                self.headers
                    .iter()
                    .find(|(n, _)| n.replace('-', "_").eq_ignore_ascii_case(header))
                    .map(|(_, v)| Cow::Borrowed(*v))
            }
        }
    }
}

/// Each row: scheme, method, host, path, headers, and the route id nginx's choice became.
type Row<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'a [(&'a str, &'a str)],
    Option<&'a str>,
);

fn check_table(document: &Value, table: &[Row<'_>]) {
    let router = router(document);
    for &(scheme, method, host, path, headers, expected) in table {
        let request = Request {
            scheme,
            method,
            host,
            path,
            headers,
        };
        let found = router.find(&request).map(String::as_str);
        assert_eq!(
            found, expected,
            "{method} {scheme}://{host}{path} {headers:?}"
        );
    }
}

#[test]
fn shop_precedence_is_nginx_s() {
    let conversion = import("shop/nginx.conf");
    let doc = &conversion.document;
    let shop = "shop.example.com";
    let none: &[(&str, &str)] = &[];
    #[rustfmt::skip]
    let table: &[Row<'_>] = &[
        // Plain HTTP: the whole server redirects.
        ("http", "GET", shop, "/api/users", none, Some("server1")),
        ("http", "GET", "www.shop.example.com", "/healthz", none, Some("server1")),
        // Exact beats everything.
        ("https", "GET", shop, "/healthz", none, Some("server2-location1")),
        ("https", "GET", shop, "/healthz/more", none, Some("server2-location2")),
        ("https", "GET", shop, "/", none, Some("server2-location2")),
        // The longest prefix, when no regex matches.
        ("https", "GET", shop, "/api/users", none, Some("server2-location3")),
        ("https", "OPTIONS", shop, "/api/users", none, Some("server2-location3-if1")),
        // A regex beats a plain prefix, the first regex in order of appearance wins...
        ("https", "GET", shop, "/api/logo.png", none, Some("server2-location5-2")),
        ("https", "GET", shop, "/api/v2/admin/users", none, Some("server2-location6-2")),
        ("https", "GET", shop, "/api/v2/admin/x.css", none, Some("server2-location5-2")),
        ("https", "GET", shop, "/LOGO.PNG", none, Some("server2-location5-1")),
        ("https", "GET", shop, "/old/x.js", none, Some("server2-location5-3")),
        // ... but not a ^~ prefix.
        ("https", "GET", shop, "/static/logo.png", none, Some("server2-location4")),
        ("https", "GET", shop, "/old/page", none, Some("server2-location7")),
        // The static location serves files: not converted, so `/` answers.
        ("https", "GET", shop, "/downloads/a.zip", none, Some("server2-location2")),
        ("https", "GET", "other.example.com", "/", none, None),
    ];
    check_table(doc, table);

    assert_eq!(
        unconverted(&conversion),
        [
            "20-shop.conf:10: ssl_certificate",
            "20-shop.conf:11: ssl_certificate_key",
            "20-shop.conf:51: location",
        ]
    );
    assert!(conversion.unconverted[2].reason.contains("serves files"));
}

#[test]
fn shop_mapping() {
    let doc = import("shop/nginx.conf").document;
    assert_eq!(
        doc["upstreams"],
        json!([
            {"id": "api_backend", "name": "api_backend", "type": "least_conn", "nodes": [
                {"host": "10.0.0.1", "port": 8080, "weight": 3},
                {"host": "10.0.0.2", "port": 8080, "weight": 1},
                {"host": "10.0.0.3", "port": 8080, "weight": 1, "priority": -1},
            ]},
            {"id": "static_backend", "name": "static_backend", "type": "roundrobin", "nodes": [
                {"host": "10.0.1.1", "port": 80, "weight": 1},
            ]},
        ])
    );
    let redirect = route(&doc, "server1");
    assert_eq!(redirect["uri"], "/*");
    assert_eq!(
        redirect["hosts"],
        json!(["shop.example.com", "www.shop.example.com"])
    );
    assert_eq!(redirect["vars"], json!([["scheme", "==", "http"]]));
    assert_eq!(
        redirect["plugins"],
        json!({"redirect": {"uri": "https://$host$request_uri", "ret_code": 301}})
    );
    let health = route(&doc, "server2-location1");
    assert_eq!(health["uri"], "/healthz");
    assert_eq!(
        health["plugins"],
        json!({
            "mocking": {"response_status": 200, "content_type": "text/plain", "with_mock_header": false, "response_example": "ok\n"},
            "response-rewrite": {"headers": {"set": {"X-Frame-Options": "SAMEORIGIN"}}},
        })
    );
    // The API location's own headers replace the server's (add_header is inherited, as in nginx).
    let api = route(&doc, "server2-location3");
    assert_eq!(api["uri"], "/api/*");
    assert_eq!(api["upstream_id"], "api_backend");
    assert_eq!(
        api["plugins"]["proxy-rewrite"],
        json!({"regex_uri": ["^/api/(.*)", "/v1/$1"]})
    );
    assert_eq!(
        route(&doc, "server2-location3-if1")["vars"],
        json!([
            ["scheme", "==", "https"],
            ["request_method", "==", "OPTIONS"]
        ])
    );
    let png = route(&doc, "server2-location5-1");
    assert_eq!(png["vars"][1], json!(["uri", "~*", "\\.(png|jpg|css|js)$"]));
    assert_eq!(
        png["plugins"]["response-rewrite"]["headers"]["set"]["Cache-Control"],
        "max-age=86400"
    );
    assert_eq!(
        route(&doc, "server2-location7")["plugins"],
        json!({
            "redirect": {"regex_uri": ["^/old/(.*)$", "/new/$1"], "ret_code": 301},
            "response-rewrite": {"headers": {"set": {"X-Frame-Options": "SAMEORIGIN"}}},
        })
    );
}

#[test]
fn api_precedence_is_nginx_s() {
    let conversion = import("api.conf");
    let doc = &conversion.document;
    let api = "api.example.com";
    let none: &[(&str, &str)] = &[];
    let canary: &[(&str, &str)] = &[("X-Canary", "1")];
    let canary_off: &[(&str, &str)] = &[("X-Canary", "0")];
    #[rustfmt::skip]
    let table: &[Row<'_>] = &[
        ("http", "GET", "unknown.example.com", "/x", none, Some("server1-location1")),
        ("http", "GET", api, "/", none, Some("server2-location1")),
        ("http", "GET", api, "/orders", none, Some("server2-location2")),
        ("http", "GET", "api.example.org", "/orders", none, Some("server2-location2")),
        ("http", "GET", "eu.api.example.org", "/orders", none, Some("server2-location2")),
        ("http", "GET", api, "/v1/orders", none, Some("server2-location3")),
        ("http", "GET", api, "/v1/orders", canary, Some("server2-location3-if1")),
        ("http", "GET", api, "/v1/orders", canary_off, Some("server2-location3")),
        // The regex beats the /v1/ prefix and its if...
        ("http", "GET", api, "/v1/users/42", canary, Some("server2-location4-2")),
        // ... but not the longer ^~ prefix.
        ("http", "GET", api, "/v1/users/me", none, Some("server2-location5")),
        ("http", "GET", api, "/ws/chat", none, Some("server2-location6")),
        ("http", "GET", api, "/legacy/a", none, Some("server2-location7")),
    ];
    check_table(doc, table);

    assert_eq!(
        unconverted(&conversion),
        [
            "api.conf:4: server",
            "api.conf:26: proxy_set_header",
            "api.conf:56: proxy_cache",
        ]
    );
    assert!(conversion.unconverted[0]
        .reason
        .starts_with("max_fails=3 fail_timeout=10s not converted"));
    assert!(conversion.unconverted[1].reason.contains("$msec"));
    assert_eq!(
        conversion.unconverted[2].to_string(),
        format!(
            "{}:56: proxy_cache: no Pylon equivalent is known to the importer",
            data("api.conf").display()
        )
    );
}

#[test]
fn api_mapping() {
    let doc = import("api.conf").document;
    let root = route(&doc, "server2-location1");
    assert_eq!(
        root["hosts"],
        json!(["api.example.com", "api.example.org", "*.api.example.org"])
    );
    assert_eq!(root["plugins"]["mocking"]["response_example"], "api root");
    assert_eq!(route(&doc, "server1-location1").get("hosts"), None);
    assert_eq!(
        route(&doc, "server2-location3-if1")["upstream"],
        json!({"type": "roundrobin", "scheme": "http", "pass_host": "node",
               "nodes": [{"host": "127.0.0.1", "port": 3002, "weight": 1}]})
    );
    assert_eq!(
        route(&doc, "server2-location3-if1")["vars"],
        json!([
            ["http_x_canary", "~~", "."],
            ["http_x_canary", "!", "==", "0"]
        ])
    );
    assert_eq!(route(&doc, "server2-location6")["enable_websocket"], true);
    let legacy = route(&doc, "server2-location7");
    assert_eq!(legacy["upstream"]["nodes"][0]["port"], 4000);
    assert_eq!(
        legacy["plugins"]["proxy-rewrite"],
        json!({"regex_uri": ["^/legacy/(.*)", "/$1"]})
    );
}
