//! Each directive's mapping, on small configurations.

use std::path::Path;

use pylon_import::nginx::{self, Conversion};
use serde_json::{json, Value};

fn convert(text: &str) -> Conversion {
    nginx::convert(&nginx::parse_text(Path::new("t.conf"), text).unwrap())
}

/// The single route of `server { location <location> { <body> } }`, converted with nothing
/// listed.
fn one_route(location: &str, body: &str) -> Value {
    let conversion = convert(&format!(
        "upstream b {{ server 10.0.0.1:81; }}\nserver {{\n location {location} {{\n{body}\n}}\n}}\n"
    ));
    let listed: Vec<String> = conversion
        .unconverted
        .iter()
        .map(|u| u.to_string())
        .collect();
    assert!(listed.is_empty(), "{listed:?}");
    let routes = conversion.document["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 1, "{routes:?}");
    routes[0].clone()
}

/// What `server { location / { <body> } }` lists, as `line: directive: reason`.
fn listed(body: &str) -> Vec<String> {
    convert(&format!("server {{\n location / {{\n{body}\n}}\n}}\n"))
        .unconverted
        .iter()
        .map(|u| u.to_string().trim_start_matches("t.conf:").to_string())
        .collect()
}

#[test]
fn locations_become_paths() {
    assert_eq!(one_route("= /x", "proxy_pass http://b;")["uri"], "/x");
    assert_eq!(one_route("=/x", "proxy_pass http://b;")["uri"], "/x");
    assert_eq!(one_route("/x", "proxy_pass http://b;")["uri"], "/x*");
    assert_eq!(one_route("^~ /x/", "proxy_pass http://b;")["uri"], "/x/*");
    let regex = one_route("~ ^/a$", "proxy_pass http://b;");
    assert_eq!(regex["uri"], "/*");
    assert_eq!(regex["vars"], json!([["uri", "~~", "^/a$"]]));
    assert_eq!(regex["priority"], 1);
}

#[test]
fn proxy_pass_targets() {
    let named = one_route("/", "proxy_pass http://b;");
    assert_eq!(named["upstream_id"], "b");
    assert_eq!(named.get("plugins"), None);
    let inline = one_route("/", "proxy_pass https://api.internal;");
    assert_eq!(
        inline["upstream"],
        json!({"type": "roundrobin", "scheme": "https", "pass_host": "node",
               "nodes": [{"host": "api.internal", "port": 443, "weight": 1}]})
    );
    let exact = one_route("= /old", "proxy_pass http://b/new;");
    assert_eq!(exact["plugins"]["proxy-rewrite"], json!({"uri": "/new"}));
    // The same URI as the location: nothing to rewrite.
    let same = one_route("/a/", "proxy_pass http://b/a/;");
    assert_eq!(same.get("plugins"), None);
    let host = one_route(
        "/",
        "proxy_set_header Host $http_host; proxy_pass http://10.0.0.9:8080;",
    );
    assert_eq!(host["upstream"]["pass_host"], "pass");
}

#[test]
fn headers() {
    let route = one_route(
        "/",
        "proxy_pass http://b;\nproxy_set_header Host api.internal;\nproxy_set_header X-User $http_x_user;\n\
         proxy_set_header Accept-Encoding \"\";\nproxy_set_header X-Real-IP $remote_addr;\n\
         add_header X-Served-By \"$host:$server_port\" always;",
    );
    assert_eq!(
        route["plugins"],
        json!({
            "proxy-rewrite": {"host": "api.internal", "headers": {"set": {"X-User": "$http_x_user", "Accept-Encoding": ""}}},
            "response-rewrite": {"headers": {"set": {"X-Served-By": "$host:$server_port"}}},
        })
    );
    let braces = one_route("/", "proxy_pass http://b; add_header X-A ${host}x;");
    assert_eq!(
        braces["plugins"]["response-rewrite"]["headers"]["set"]["X-A"],
        "${host}x"
    );
}

#[test]
fn server_level_headers_are_inherited_unless_the_location_has_its_own() {
    let conversion = convert(
        "server {\n add_header X-A a;\n location /one { proxy_pass http://h; }\n \
         location /two { add_header X-B b; proxy_pass http://h; }\n}\n",
    );
    let routes = conversion.document["routes"].as_array().unwrap();
    assert_eq!(
        routes[0]["plugins"]["response-rewrite"],
        json!({"headers": {"set": {"X-A": "a"}}})
    );
    assert_eq!(
        routes[1]["plugins"]["response-rewrite"],
        json!({"headers": {"set": {"X-B": "b"}}})
    );
}

#[test]
fn returns() {
    let plugins = |body: &str| one_route("/", body)["plugins"].clone();
    assert_eq!(
        plugins("return 418 teapot;"),
        json!({"mocking": {"response_status": 418, "content_type": "text/plain",
                           "with_mock_header": false, "response_example": "teapot"}})
    );
    assert_eq!(
        plugins("return 308 https://example.com$request_uri;"),
        json!({"redirect": {"uri": "https://example.com$request_uri", "ret_code": 308}})
    );
    assert_eq!(
        plugins("return https://example.com/;"),
        json!({"redirect": {"uri": "https://example.com/", "ret_code": 302}})
    );
    // The first return answers; what follows is never reached.
    assert_eq!(
        plugins("return 204; return 500;")["mocking"]["response_status"],
        204
    );
}

#[test]
fn rewrites() {
    let plugins = |body: &str| one_route("/", body)["plugins"].clone();
    assert_eq!(
        plugins("rewrite ^/a/(.*)$ /b/$1 break; proxy_pass http://b;"),
        json!({"proxy-rewrite": {"regex_uri": ["^/a/(.*)$", "/b/$1"]}})
    );
    assert_eq!(
        plugins("rewrite ^/a/(.*)$ /b/$1 redirect;"),
        json!({"redirect": {"regex_uri": ["^/a/(.*)$", "/b/$1"], "ret_code": 302}})
    );
    assert_eq!(
        plugins("rewrite ^ https://example.com$request_uri;"),
        json!({"redirect": {"regex_uri": ["^", "https://example.com$request_uri"], "ret_code": 302}})
    );
}

#[test]
fn conditions() {
    let vars = |condition: &str| {
        let conversion = convert(&format!(
            "server {{ location / {{ proxy_pass http://h;\n if {condition} {{ return 403; }} }} }}"
        ));
        assert!(
            conversion.unconverted.is_empty(),
            "{:?}",
            conversion.unconverted
        );
        conversion.document["routes"][0]["vars"].clone()
    };
    assert_eq!(
        vars("($request_method = POST)"),
        json!([["request_method", "==", "POST"]])
    );
    assert_eq!(
        vars("($http_x_v != \"a b\")"),
        json!([["http_x_v", "!", "==", "a b"]])
    );
    assert_eq!(
        vars("($arg_debug)"),
        json!([["arg_debug", "~~", "."], ["arg_debug", "!", "==", "0"]])
    );
    assert_eq!(
        vars("($http_user_agent ~* bot )"),
        json!([["http_user_agent", "~*", "bot"]])
    );
    assert_eq!(
        vars("($cookie_beta !~ ^no)"),
        json!([["cookie_beta", "!", "~~", "^no"]])
    );
}

#[test]
fn server_names() {
    let hosts = |names: &str| {
        let conversion = convert(&format!(
            "server {{ server_name {names}; location / {{ return 204; }} }}"
        ));
        (
            conversion.document["routes"][0].get("hosts").cloned(),
            conversion.unconverted.len(),
        )
    };
    assert_eq!(
        hosts("A.example.com *.b.example.com"),
        (Some(json!(["a.example.com", "*.b.example.com"])), 0)
    );
    assert_eq!(
        hosts(".c.example.com"),
        (Some(json!(["c.example.com", "*.c.example.com"])), 0)
    );
    assert_eq!(hosts("_"), (None, 0));
    assert_eq!(hosts("~^(?<sub>.+)\\.example\\.com$"), (None, 1));
    assert_eq!(hosts("www.example.*"), (None, 1));
}

#[test]
fn what_is_not_converted_is_listed_with_its_line() {
    assert_eq!(
        listed("proxy_pass http://b;\nrewrite ^/a /b last;\nauth_basic \"x\";\nif (-f $request_filename) { return 404; }"),
        [
            "4: rewrite: a rewrite that searches the locations again (last, or no flag) is not converted; `break` is",
            "5: auth_basic: no Pylon equivalent is known to the importer",
            "6: if: the condition (-f $request_filename) has no Pylon form",
        ]
    );
    assert_eq!(
        listed("proxy_pass http://$backend;"),
        [
            "3: proxy_pass: a URL with variables is chosen per request; Pylon's upstreams are fixed",
            "2: location: serves files or nothing (no proxy_pass or return); Pylon only proxies",
        ]
    );
    assert_eq!(
        listed(
            "proxy_pass http://h;\nlocation /inner { return 204; }\nadd_header X $request_time;"
        ),
        [
            "5: add_header: the nginx variable $request_time has no Pylon equivalent",
            "4: location: nested locations are not converted",
        ]
    );
    let conversion = convert(
        "upstream u { server unix:/run/app.sock; }\nserver {\n location @fallback { proxy_pass http://h; }\n \
         location ~ (?<=a)b { proxy_pass http://h; }\n}\n",
    );
    let listed: Vec<String> = conversion
        .unconverted
        .iter()
        .map(|u| u.to_string())
        .collect();
    assert_eq!(listed.len(), 4, "{listed:?}");
    assert!(listed[0].starts_with("t.conf:1: server: Pylon does not proxy to unix sockets"));
    assert!(listed[1].starts_with("t.conf:1: upstream: no server"));
    assert!(listed[2].starts_with("t.conf:3: location: named locations"));
    assert!(listed[3]
        .starts_with("t.conf:4: location: the regex is not one Pylon's regex engine accepts"));
}

#[test]
fn a_server_level_return_answers_for_the_whole_server() {
    let conversion = convert(
        "server { listen 80; return 301 https://$host$request_uri; location / { proxy_pass http://h; } }\n\
         server { listen 443 ssl; location / { proxy_pass http://h; } }",
    );
    let routes = conversion.document["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 2);
    assert_eq!(routes[0]["uri"], "/*");
    assert_eq!(routes[0]["vars"], json!([["scheme", "==", "http"]]));
    assert_eq!(routes[1]["vars"], json!([["scheme", "==", "https"]]));
    assert_eq!(conversion.unconverted.len(), 1);
    assert!(conversion.unconverted[0]
        .reason
        .starts_with("never reached"));
}
