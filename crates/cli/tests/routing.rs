//! Route matching through the real gateway: every request goes over a socket to `pylon run`,
//! and which route matched is told by which upstream answered (each answers with its name).

mod support;

use support::client::{get, Conn};
use support::upstream::Upstream;
use support::Pylon;

/// One route in APISIX's standalone format, flow style: `fields` are extra `key: value`
/// pairs (`uri`, `hosts`, `vars`, ...), and the route's inline upstream is `up`.
fn route(id: &str, fields: &str, up: &Upstream) -> String {
    format!(
        "  - {{id: {id}, {fields}, upstream: {{nodes: {{{}}}}}}}\n",
        up.node()
    )
}

/// Which upstream answered `target` (its name), or the status when the gateway answered itself.
fn who(pylon: &Pylon, host: &str, target: &str) -> String {
    let res = get(pylon.addr, host, target);
    match res.header("x-upstream") {
        Some(name) => {
            assert_eq!(res.status, 200, "{target}");
            name.to_owned()
        }
        None => res.status.to_string(),
    }
}

/// Sends `method target` with extra header lines (each ending in `\r\n`) and says who answered.
fn who_with(pylon: &Pylon, method: &str, target: &str, headers: &str) -> String {
    let res = Conn::connect(pylon.addr).request(
        format!("{method} {target} HTTP/1.1\r\nHost: example.com\r\n{headers}\r\n").as_bytes(),
    );
    res.header("x-upstream")
        .map_or_else(|| res.status.to_string(), str::to_owned)
}

#[test]
fn exact_uri_wins_over_param_which_wins_over_prefix() {
    let exact = Upstream::start("exact");
    let prefix = Upstream::start("prefix");
    let param = Upstream::start("param");
    let me = Upstream::start("me");
    let routes = [
        route("prefix", "uri: /a/*", &prefix),
        route("exact", "uri: /a", &exact),
        route("param", "uri: /user/:id", &param),
        route("me", "uri: /user/me", &me),
        route("many", "uris: [/one, /two/*]", &me),
    ]
    .concat();
    let pylon = Pylon::start(&format!("routes:\n{routes}"), "");

    assert_eq!(who(&pylon, "example.com", "/a"), "exact");
    assert_eq!(who(&pylon, "example.com", "/a?x=1"), "exact");
    assert_eq!(who(&pylon, "example.com", "/a/"), "prefix");
    assert_eq!(who(&pylon, "example.com", "/a/b/c"), "prefix");
    assert_eq!(who(&pylon, "example.com", "/ab"), "404");
    assert_eq!(who(&pylon, "example.com", "/user/42"), "param");
    assert_eq!(who(&pylon, "example.com", "/user/me"), "me");
    // A parameter is exactly one non-empty segment.
    assert_eq!(who(&pylon, "example.com", "/user/42/x"), "404");
    assert_eq!(who(&pylon, "example.com", "/user/"), "404");
    // `uris` lists several patterns of one route.
    assert_eq!(who(&pylon, "example.com", "/one"), "me");
    assert_eq!(who(&pylon, "example.com", "/two/x"), "me");
    assert_eq!(who(&pylon, "example.com", "/one/x"), "404");
    // The upstream gets the request's own target, query included.
    assert!(param
        .received()
        .iter()
        .any(|r| r.target == "/user/42" && r.method == "GET"));
    assert_eq!(exact.received()[1].target, "/a?x=1");
}

#[test]
fn exact_host_then_wildcard_then_routes_without_host() {
    let api = Upstream::start("api");
    let wild = Upstream::start("wild");
    let any = Upstream::start("any");
    let admin = Upstream::start("admin");
    let routes = [
        route("any", "uri: /h", &any),
        route("wild", "uri: /h, hosts: [\"*.example.com\"]", &wild),
        route("api", "uri: /h, host: api.example.com", &api),
        // Only on its host: other hosts find no route for /admin at all.
        route("admin", "uri: /admin, host: admin.example.com", &admin),
    ]
    .concat();
    let pylon = Pylon::start(&format!("routes:\n{routes}"), "");

    assert_eq!(who(&pylon, "api.example.com", "/h"), "api");
    // Host matching ignores case and the port.
    assert_eq!(who(&pylon, "API.Example.COM:8080", "/h"), "api");
    assert_eq!(who(&pylon, "x.example.com", "/h"), "wild");
    assert_eq!(who(&pylon, "deep.x.example.com", "/h"), "wild");
    assert_eq!(who(&pylon, "X.Example.com:9080", "/h"), "wild");
    // `*.example.com` does not cover the bare domain: it falls back to the host-less route.
    assert_eq!(who(&pylon, "example.com", "/h"), "any");
    assert_eq!(who(&pylon, "other.org", "/h"), "any");
    assert_eq!(who(&pylon, "admin.example.com", "/admin"), "admin");
    assert_eq!(who(&pylon, "api.example.com", "/admin"), "404");
    // A host with routes, none for this path: the host-less routes are still tried.
    assert_eq!(who(&pylon, "admin.example.com", "/h"), "wild");
}

#[test]
fn methods_restrict_a_route() {
    let read = Upstream::start("read");
    let delete = Upstream::start("delete");
    let routes = [
        route("read", "uri: /m, methods: [GET, POST]", &read),
        route("delete", "uri: /m, methods: [DELETE]", &delete),
    ]
    .concat();
    let pylon = Pylon::start(&format!("routes:\n{routes}"), "");

    assert_eq!(who_with(&pylon, "GET", "/m", ""), "read");
    assert_eq!(
        who_with(&pylon, "POST", "/m", "Content-Length: 0\r\n"),
        "read"
    );
    assert_eq!(who_with(&pylon, "DELETE", "/m", ""), "delete");
    assert_eq!(
        who_with(&pylon, "PUT", "/m", "Content-Length: 0\r\n"),
        "404"
    );
    // Methods are case-sensitive on the wire, as HTTP says.
    assert_eq!(who_with(&pylon, "get", "/m", ""), "404");
}

#[test]
fn remote_addrs_match_the_client_network() {
    let local = Upstream::start("local");
    let ten = Upstream::start("ten");
    let fallback = Upstream::start("fallback");
    let routes = [
        route(
            "local",
            "uri: /ra, remote_addrs: [\"127.0.0.1/32\"]",
            &local,
        ),
        route("ten", "uri: /rb, remote_addrs: [\"10.0.0.0/8\"]", &ten),
        // Same path: the higher priority route is for 10/8 only, so loopback clients skip it.
        route(
            "ten-first",
            "uri: /rc, priority: 10, remote_addr: 10.0.0.0/8",
            &ten,
        ),
        route("fallback", "uri: /rc", &fallback),
    ]
    .concat();
    let pylon = Pylon::start(&format!("routes:\n{routes}"), "");

    assert_eq!(who(&pylon, "example.com", "/ra"), "local");
    assert_eq!(who(&pylon, "example.com", "/rb"), "404");
    assert_eq!(who(&pylon, "example.com", "/rc"), "fallback");
    assert_eq!(ten.request_count(), 0);
}

#[test]
fn vars_on_query_header_and_cookie_and_nested_or() {
    let arg = Upstream::start("arg");
    let canary = Upstream::start("canary");
    let cookie = Upstream::start("cookie");
    let default = Upstream::start("default");
    let either = Upstream::start("either");
    let routes = [
        route("default", "uri: /v", &default),
        route(
            "arg",
            r#"uri: /v, priority: 3, vars: [["arg_v", "==", "2"]]"#,
            &arg,
        ),
        route(
            "canary",
            r#"uri: /v, priority: 2, vars: [["http_x_canary", "==", "1"]]"#,
            &canary,
        ),
        route(
            "cookie",
            r#"uri: /v, priority: 1, vars: [["cookie_beta", "==", "yes"]]"#,
            &cookie,
        ),
        // a=1 OR (X-B: 1 AND cookie c=1)
        route(
            "either",
            r#"uri: /or, vars: [["OR", ["arg_a", "==", "1"], ["AND", ["http_x_b", "==", "1"], ["cookie_c", "==", "1"]]]]"#,
            &either,
        ),
    ]
    .concat();
    let pylon = Pylon::start(&format!("routes:\n{routes}"), "");

    assert_eq!(who_with(&pylon, "GET", "/v?v=2", ""), "arg");
    assert_eq!(who_with(&pylon, "GET", "/v?x=0&v=2", ""), "arg");
    assert_eq!(who_with(&pylon, "GET", "/v?v=3", ""), "default");
    assert_eq!(who_with(&pylon, "GET", "/v", "X-Canary: 1\r\n"), "canary");
    assert_eq!(who_with(&pylon, "GET", "/v", "X-Canary: 0\r\n"), "default");
    assert_eq!(
        who_with(&pylon, "GET", "/v", "Cookie: theme=dark; beta=yes\r\n"),
        "cookie"
    );
    assert_eq!(
        who_with(&pylon, "GET", "/v", "Cookie: beta=no\r\n"),
        "default"
    );
    // Several match: the highest priority wins.
    assert_eq!(
        who_with(
            &pylon,
            "GET",
            "/v?v=2",
            "X-Canary: 1\r\nCookie: beta=yes\r\n"
        ),
        "arg"
    );
    assert_eq!(
        who_with(&pylon, "GET", "/v", "X-Canary: 1\r\nCookie: beta=yes\r\n"),
        "canary"
    );

    assert_eq!(who_with(&pylon, "GET", "/or?a=1", ""), "either");
    assert_eq!(
        who_with(&pylon, "GET", "/or", "X-B: 1\r\nCookie: c=1\r\n"),
        "either"
    );
    assert_eq!(who_with(&pylon, "GET", "/or", "X-B: 1\r\n"), "404");
    assert_eq!(who_with(&pylon, "GET", "/or?a=2", "Cookie: c=1\r\n"), "404");
}

#[test]
fn priority_decides_between_routes_of_the_same_path() {
    let low = Upstream::start("low");
    let high = Upstream::start("high");
    let first = Upstream::start("first");
    let second = Upstream::start("second");
    let routes = [
        route("low", "uri: /p, priority: 0", &low),
        route("high", "uri: /p, priority: 10", &high),
        // Equal priorities: the earlier route in the file.
        route("first", "uri: /q", &first),
        route("second", "uri: /q", &second),
    ]
    .concat();
    let pylon = Pylon::start(&format!("routes:\n{routes}"), "");

    assert_eq!(who(&pylon, "example.com", "/p"), "high");
    assert_eq!(who(&pylon, "example.com", "/q"), "first");
    assert_eq!(low.request_count() + second.request_count(), 0);
}

#[test]
fn a_disabled_route_is_not_matched() {
    let on = Upstream::start("on");
    let off = Upstream::start("off");
    let fallback = Upstream::start("fallback");
    let routes = [
        route("on", "uri: /on", &on),
        route("off", "uri: /off, status: 0", &off),
        // A disabled route does not hide the routes behind it.
        route("off-high", "uri: /x, priority: 5, status: 0", &off),
        route("x", "uri: /x", &fallback),
    ]
    .concat();
    let pylon = Pylon::start(&format!("routes:\n{routes}"), "");

    assert_eq!(who(&pylon, "example.com", "/on"), "on");
    assert_eq!(who(&pylon, "example.com", "/off"), "404");
    assert_eq!(who(&pylon, "example.com", "/x"), "fallback");
    assert_eq!(off.request_count(), 0);
}

#[test]
fn a_route_inherits_its_services_upstream_and_hosts() {
    let svc = Upstream::start("svc");
    let own = Upstream::start("own");
    let shared = Upstream::start("shared");
    let yaml = format!(
        "services:\n  - id: s1\n    hosts: [svc.example.com]\n    upstream: {{nodes: {{{}}}}}\n  - id: s2\n    upstream_id: u1\n\
         upstreams:\n  - id: u1\n    nodes: {{{}}}\n\
         routes:\n  - {{id: r1, uri: /svc, service_id: s1}}\n\
         \x20 - {{id: r2, uri: /own, service_id: s1, upstream: {{nodes: {{{}}}}}}}\n\
         \x20 - {{id: r3, uri: /shared, service_id: s2}}\n\
         \x20 - {{id: r4, uri: /svc-any, service_id: s1, hosts: [other.org]}}\n",
        svc.node(),
        shared.node(),
        own.node(),
    );
    let pylon = Pylon::start(&yaml, "");

    assert_eq!(who(&pylon, "svc.example.com", "/svc"), "svc");
    // The service's hosts apply to its routes that name none.
    assert_eq!(who(&pylon, "other.org", "/svc"), "404");
    // The route's own upstream wins over its service's; the hosts still come from the service.
    assert_eq!(who(&pylon, "svc.example.com", "/own"), "own");
    assert_eq!(who(&pylon, "other.org", "/own"), "404");
    // A service may itself point at an upstream by id.
    assert_eq!(who(&pylon, "any.host", "/shared"), "shared");
    // The route's own hosts replace the service's.
    assert_eq!(who(&pylon, "other.org", "/svc-any"), "svc");
    assert_eq!(who(&pylon, "svc.example.com", "/svc-any"), "404");
}

#[test]
fn a_route_uses_the_upstream_its_upstream_id_names() {
    let one = Upstream::start("one");
    let two = Upstream::start("two");
    let yaml = format!(
        "upstreams:\n  - id: 1\n    nodes: {{{}}}\n  - id: backend\n    nodes: {{{}}}\n\
         routes:\n  - {{id: r1, uri: /one, upstream_id: 1}}\n\
         \x20 - {{id: r2, uri: /two, upstream_id: backend}}\n\
         \x20 - {{id: r3, uri: /two-again, upstream_id: \"backend\"}}\n",
        one.node(),
        two.node()
    );
    let pylon = Pylon::start(&yaml, "");

    assert_eq!(who(&pylon, "example.com", "/one"), "one");
    assert_eq!(who(&pylon, "example.com", "/two"), "two");
    assert_eq!(who(&pylon, "example.com", "/two-again"), "two");
}

#[test]
fn no_matching_route_is_a_json_404_on_a_connection_that_stays_open() {
    let up = Upstream::start("a");
    let pylon = Pylon::start(&format!("routes:\n{}", route("a", "uri: /a", &up)), "");

    let mut conn = Conn::connect(pylon.addr);
    let res = conn.request(b"GET /nothing/here HTTP/1.1\r\nHost: example.com\r\n\r\n");
    assert_eq!(res.status, 404);
    assert_eq!(res.header("content-type"), Some("application/json"));
    assert_eq!(
        res.json(),
        serde_json::json!({"error_msg": "404 Route Not Found"})
    );
    // The same connection carries the next request.
    let res = conn.request(b"GET /a HTTP/1.1\r\nHost: example.com\r\n\r\n");
    assert_eq!((res.status, res.text().as_str()), (200, "a"));

    // An empty configuration answers the same way.
    let empty = Pylon::start("", "");
    let res = get(empty.addr, "example.com", "/a");
    assert_eq!(res.status, 404);
    assert_eq!(
        res.json(),
        serde_json::json!({"error_msg": "404 Route Not Found"})
    );
}
