//! The router through its public API: what a request matches, with APISIX's precedence.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;

use pylon_model::expr::Expr;
use pylon_router::{RequestView, RouteSpec, Router};
use serde_json::{json, Value};

struct Req {
    path: String,
    host: Option<String>,
    method: String,
    ip: IpAddr,
    vars: HashMap<String, String>,
}

impl Req {
    fn get(path: &str) -> Self {
        Self {
            path: path.into(),
            host: None,
            method: "GET".into(),
            ip: "192.0.2.1".parse().unwrap(),
            vars: HashMap::new(),
        }
    }
    fn host(mut self, host: &str) -> Self {
        self.host = Some(host.into());
        self
    }
    fn method(mut self, method: &str) -> Self {
        self.method = method.into();
        self
    }
    fn ip(mut self, ip: &str) -> Self {
        self.ip = ip.parse().unwrap();
        self
    }
    fn var(mut self, name: &str, value: &str) -> Self {
        self.vars.insert(name.into(), value.into());
        self
    }
}

impl RequestView for Req {
    fn path(&self) -> &str {
        &self.path
    }
    fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }
    fn method(&self) -> &str {
        &self.method
    }
    fn remote_addr(&self) -> IpAddr {
        self.ip
    }
    fn var(&self, name: &str) -> Option<Cow<'_, str>> {
        self.vars.get(name).map(|v| Cow::Borrowed(v.as_str()))
    }
}

fn route(uri: &str, name: &'static str) -> RouteSpec<&'static str> {
    RouteSpec::new(uri, name)
}

fn with_hosts(mut r: RouteSpec<&'static str>, hosts: &[&str]) -> RouteSpec<&'static str> {
    r.hosts = hosts.iter().map(|h| h.to_string()).collect();
    r
}

fn with_vars(mut r: RouteSpec<&'static str>, vars: Value) -> RouteSpec<&'static str> {
    r.vars = Some(Expr::parse(&vars).unwrap());
    r
}

fn router(routes: Vec<RouteSpec<&'static str>>) -> Router<&'static str> {
    Router::new(routes).unwrap()
}

#[test]
fn exact_param_and_prefix_precedence() {
    let r = router(vec![
        route("/*", "catch-all"),
        route("/api/*", "api-prefix"),
        route("/api/users/*", "users-prefix"),
        route("/api/users/:id", "user-by-id"),
        route("/api/users/me", "me"),
        route("/api/users/:id/profile", "profile"),
    ]);
    assert_eq!(r.find(&Req::get("/api/users/me")), Some(&"me"));
    assert_eq!(r.find(&Req::get("/api/users/42")), Some(&"user-by-id"));
    assert_eq!(r.find(&Req::get("/api/users/42/profile")), Some(&"profile"));
    assert_eq!(
        r.find(&Req::get("/api/users/42/orders")),
        Some(&"users-prefix")
    );
    assert_eq!(r.find(&Req::get("/api/users/")), Some(&"users-prefix"));
    assert_eq!(r.find(&Req::get("/api/users")), Some(&"api-prefix"));
    assert_eq!(r.find(&Req::get("/api")), Some(&"catch-all"));
    assert_eq!(r.find(&Req::get("/other")), Some(&"catch-all"));
    assert_eq!(r.len(), 6);
}

#[test]
fn no_route_no_match() {
    let r = router(vec![route("/a", "a")]);
    assert_eq!(r.find(&Req::get("/b")), None);
    assert_eq!(r.find(&Req::get("/a/")), None);
    let empty = router(vec![]);
    assert!(empty.is_empty());
    assert_eq!(empty.find(&Req::get("/")), None);
}

#[test]
fn priority_then_list_order_within_one_pattern() {
    let mut low = route("/p", "low");
    low.priority = -1;
    let mut high = route("/p", "high");
    high.priority = 10;
    let r = router(vec![
        low,
        route("/p", "first-zero"),
        route("/p", "second-zero"),
        high,
    ]);
    assert_eq!(r.find(&Req::get("/p")), Some(&"high"));

    let r = router(vec![route("/p", "first-zero"), route("/p", "second-zero")]);
    assert_eq!(r.find(&Req::get("/p")), Some(&"first-zero"));
}

#[test]
fn path_specificity_beats_priority() {
    let mut prefix = route("/a/*", "prefix");
    prefix.priority = 100;
    let r = router(vec![prefix, route("/a/b", "exact")]);
    assert_eq!(r.find(&Req::get("/a/b")), Some(&"exact"));
}

#[test]
fn host_exact_before_wildcard_before_hostless() {
    let r = router(vec![
        route("/*", "no-host"),
        with_hosts(route("/*", "wild-short"), &["*.example.com"]),
        with_hosts(route("/*", "wild-long"), &["*.api.example.com"]),
        with_hosts(route("/*", "exact"), &["v1.api.example.com"]),
    ]);
    assert_eq!(
        r.find(&Req::get("/x").host("v1.api.example.com")),
        Some(&"exact")
    );
    assert_eq!(
        r.find(&Req::get("/x").host("v2.api.example.com")),
        Some(&"wild-long")
    );
    assert_eq!(
        r.find(&Req::get("/x").host("www.example.com")),
        Some(&"wild-short")
    );
    assert_eq!(
        r.find(&Req::get("/x").host("example.com")),
        Some(&"no-host")
    );
    assert_eq!(r.find(&Req::get("/x").host("other.org")), Some(&"no-host"));
    assert_eq!(r.find(&Req::get("/x")), Some(&"no-host"));
}

#[test]
fn a_host_route_wins_even_with_a_less_specific_path() {
    let r = router(vec![
        route("/a/b", "no-host-exact"),
        with_hosts(route("/*", "host-prefix"), &["example.com"]),
    ]);
    assert_eq!(
        r.find(&Req::get("/a/b").host("example.com")),
        Some(&"host-prefix")
    );
    assert_eq!(
        r.find(&Req::get("/a/b").host("other.com")),
        Some(&"no-host-exact")
    );
}

#[test]
fn falls_back_to_hostless_routes_when_the_host_group_rejects() {
    let mut post_only = with_hosts(route("/a", "host-post"), &["Example.COM"]);
    post_only.methods = vec!["POST".into()];
    let r = router(vec![post_only, route("/a", "no-host")]);
    assert_eq!(
        r.find(&Req::get("/a").host("example.com").method("POST")),
        Some(&"host-post")
    );
    assert_eq!(
        r.find(&Req::get("/a").host("example.com")),
        Some(&"no-host")
    );
    // A request without a Host only sees routes without hosts.
    assert_eq!(r.find(&Req::get("/a").method("POST")), Some(&"no-host"));
    let host_only = router(vec![with_hosts(route("/a", "host"), &["example.com"])]);
    assert_eq!(host_only.find(&Req::get("/a")), None);
}

#[test]
fn wildcard_group_falls_through_to_shorter_wildcard() {
    let r = router(vec![
        with_hosts(route("/only-long", "long"), &["*.b.example.com"]),
        with_hosts(route("/*", "short"), &["*.example.com"]),
    ]);
    assert_eq!(
        r.find(&Req::get("/only-long").host("a.b.example.com")),
        Some(&"long")
    );
    assert_eq!(
        r.find(&Req::get("/else").host("a.b.example.com")),
        Some(&"short")
    );
}

#[test]
fn methods_filter_and_fall_through_to_the_next_candidate() {
    let mut get = route("/m", "get");
    get.methods = vec!["GET".into(), "HEAD".into()];
    let mut delete = route("/m", "delete");
    delete.methods = vec!["DELETE".into()];
    let r = router(vec![get, delete, route("/*", "any")]);
    assert_eq!(r.find(&Req::get("/m")), Some(&"get"));
    assert_eq!(r.find(&Req::get("/m").method("HEAD")), Some(&"get"));
    assert_eq!(r.find(&Req::get("/m").method("DELETE")), Some(&"delete"));
    assert_eq!(r.find(&Req::get("/m").method("POST")), Some(&"any"));
    assert_eq!(r.find(&Req::get("/m").method("BREW")), Some(&"any"));
}

#[test]
fn remote_addrs_v4_and_v6() {
    let mut internal = route("/admin", "internal");
    internal.remote_addrs = vec![
        "10.0.0.0/8".into(),
        "2001:db8::/32".into(),
        "127.0.0.1".into(),
    ];
    let r = router(vec![internal, route("/admin", "public")]);
    assert_eq!(
        r.find(&Req::get("/admin").ip("10.9.8.7")),
        Some(&"internal")
    );
    assert_eq!(
        r.find(&Req::get("/admin").ip("127.0.0.1")),
        Some(&"internal")
    );
    assert_eq!(
        r.find(&Req::get("/admin").ip("2001:db8:1::5")),
        Some(&"internal")
    );
    assert_eq!(
        r.find(&Req::get("/admin").ip("::ffff:10.0.0.1")),
        Some(&"internal")
    );
    assert_eq!(r.find(&Req::get("/admin").ip("11.0.0.1")), Some(&"public"));
    assert_eq!(
        r.find(&Req::get("/admin").ip("2001:db9::1")),
        Some(&"public")
    );
}

#[test]
fn vars_choose_between_routes_of_one_path() {
    let r = router(vec![
        with_vars(
            route("/v", "json"),
            json!([["arg_format", "==", "json"], ["http_x_v", "~=", "1"]]),
        ),
        with_vars(
            route("/v", "beta"),
            json!([[
                "OR",
                ["cookie_beta", "==", "1"],
                ["AND", ["arg_n", ">=", 10], ["arg_n", "!", ">", 20]]
            ]]),
        ),
        route("/v", "default"),
    ]);
    assert_eq!(
        r.find(&Req::get("/v").var("arg_format", "json")),
        Some(&"json")
    );
    assert_eq!(
        r.find(
            &Req::get("/v")
                .var("arg_format", "json")
                .var("http_x_v", "1")
        ),
        Some(&"default")
    );
    assert_eq!(
        r.find(&Req::get("/v").var("cookie_beta", "1")),
        Some(&"beta")
    );
    assert_eq!(r.find(&Req::get("/v").var("arg_n", "15")), Some(&"beta"));
    assert_eq!(r.find(&Req::get("/v").var("arg_n", "25")), Some(&"default"));
    assert_eq!(r.find(&Req::get("/v")), Some(&"default"));
}

#[test]
fn vars_ipmatch_on_remote_addr() {
    let r = router(vec![
        with_vars(
            route("/ip", "lan"),
            json!([["remote_addr", "ipmatch", ["192.168.0.0/16", "fd00::/8"]]]),
        ),
        route("/ip", "wan"),
    ]);
    assert_eq!(r.find(&Req::get("/ip").ip("192.168.3.4")), Some(&"lan"));
    assert_eq!(r.find(&Req::get("/ip").ip("fd12::1")), Some(&"lan"));
    assert_eq!(r.find(&Req::get("/ip").ip("8.8.8.8")), Some(&"wan"));
}

#[test]
fn multiple_uris_and_hosts_per_route() {
    let mut r = route("/a", "multi");
    r.uris.push("/b/*".into());
    let r = router(vec![with_hosts(r, &["one.com", "*.two.com"])]);
    assert_eq!(r.find(&Req::get("/a").host("one.com")), Some(&"multi"));
    assert_eq!(r.find(&Req::get("/b/c").host("x.two.com")), Some(&"multi"));
    assert_eq!(r.find(&Req::get("/b/c").host("two.com")), None);
    assert_eq!(r.find(&Req::get("/c").host("one.com")), None);
}

#[test]
fn errors_name_the_route_and_field() {
    let mut bad_cidr = route("/ok", "x");
    bad_cidr.remote_addrs = vec!["10.0.0.0/8".into(), "10.0.0.0/40".into()];
    let err = Router::new(vec![route("/fine", "x"), bad_cidr]).unwrap_err();
    assert_eq!(err.route_index(), 1);
    assert_eq!(err.field(), "remote_addrs[1]");
    assert_eq!(
        err.to_string(),
        "route 1: remote_addrs[1]: `10.0.0.0/40` is not an IP address or CIDR"
    );

    let mut bad_uri = route("/ok", "x");
    bad_uri.uris.push("no-slash".into());
    assert_eq!(
        Router::new(vec![bad_uri]).unwrap_err().to_string(),
        "route 0: uris[1]: `no-slash` must start with `/`"
    );
    let bad_host = with_hosts(route("/ok", "x"), &["*example.com"]);
    assert_eq!(Router::new(vec![bad_host]).unwrap_err().field(), "hosts[0]");
    let mut bad_method = route("/ok", "x");
    bad_method.methods = vec!["FETCH".into()];
    assert_eq!(
        Router::new(vec![bad_method]).unwrap_err().field(),
        "methods[0]"
    );
    let mut no_uri = route("/ok", "x");
    no_uri.uris.clear();
    assert_eq!(Router::new(vec![no_uri]).unwrap_err().field(), "uris");
}

#[test]
fn ten_thousand_routes_match_correctly() {
    const N: usize = 10_000;
    let mut routes = Vec::with_capacity(3 * N);
    for i in 0..N {
        routes.push(RouteSpec::new(format!("/svc{i}/items/:id"), i));
        let mut host_route = RouteSpec::new(format!("/svc{i}/*"), N + i);
        host_route.hosts = vec![format!("h{i}.example.com")];
        routes.push(host_route);
        let mut wild = RouteSpec::new(format!("/w{i}"), 2 * N + i);
        wild.hosts = vec![format!("*.t{i}.example.net")];
        routes.push(wild);
    }
    let r = Router::new(routes).unwrap();
    assert_eq!(r.len(), 3 * N);
    for i in (0..N).step_by(97).chain([0, N - 1]) {
        assert_eq!(r.find(&Req::get(&format!("/svc{i}/items/7"))), Some(&i));
        assert_eq!(r.find(&Req::get(&format!("/svc{i}/items/7/x"))), None);
        assert_eq!(
            r.find(&Req::get(&format!("/svc{i}/items/7")).host(&format!("h{i}.example.com"))),
            Some(&(N + i))
        );
        // Another host's group does not match; the host-less route does.
        let other = (i + 1) % N;
        assert_eq!(
            r.find(&Req::get(&format!("/svc{i}/items/7")).host(&format!("h{other}.example.com"))),
            Some(&i)
        );
        assert_eq!(
            r.find(&Req::get(&format!("/w{i}")).host(&format!("a.b.t{i}.example.net"))),
            Some(&(2 * N + i))
        );
        assert_eq!(
            r.find(&Req::get(&format!("/w{i}")).host(&format!("t{i}.example.net"))),
            None
        );
    }
}

#[test]
fn router_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Router<String>>();
}

/// A router changed route by route routes every request as one built afresh from the routes it
/// ends with: random sequences of inserts, replacements and removals over a small vocabulary
/// (so patterns, hosts and priorities collide often), checked against every request of a
/// generated set after each step.
#[test]
fn a_router_changed_route_by_route_matches_one_built_afresh() {
    use pylon_router::RouterBuilder;
    use std::collections::BTreeMap;

    const URIS: [&str; 9] = [
        "/", "/a", "/a/", "/a/:id", "/a/*", "/a/b", "/a/b/c", "/b*", "/:x/b",
    ];
    const HOSTS: [&str; 3] = ["x.com", "*.x.com", "y.x.com"];
    const METHODS: [&str; 2] = ["GET", "POST"];
    let paths = [
        "/", "/a", "/a/", "/a/1", "/a/b", "/a/b/c", "/b", "/bb/x", "/z/b",
    ];
    let hosts = [
        None,
        Some("x.com"),
        Some("y.x.com"),
        Some("z.x.com"),
        Some("o.org"),
    ];

    let spec = |rng: &mut fastrand::Rng, name: &'static str| {
        let mut r = RouteSpec::new(URIS[rng.usize(..URIS.len())], name);
        if rng.bool() {
            r.uris.push(URIS[rng.usize(..URIS.len())].to_owned());
        }
        match rng.usize(..3) {
            0 => {}
            1 => r.hosts = vec![HOSTS[rng.usize(..HOSTS.len())].to_owned()],
            _ => r.hosts = HOSTS.iter().map(|h| h.to_string()).collect(),
        }
        if rng.bool() {
            r.methods = vec![METHODS[rng.usize(..METHODS.len())].to_owned()];
        }
        r.priority = rng.i64(0..3);
        r
    };
    let names: Vec<&'static str> = (0..24)
        .map(|i| &*Box::leak(format!("r{i:02}").into_boxed_str()))
        .collect();

    for seed in 0..40 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut builder = RouterBuilder::<&'static str, &'static str>::new();
        let mut current: BTreeMap<&'static str, RouteSpec<&'static str>> = BTreeMap::new();
        for step in 0..60 {
            let name = names[rng.usize(..names.len())];
            if rng.usize(..4) == 0 {
                assert_eq!(builder.remove(&name), current.remove(name).is_some());
            } else {
                let r = spec(&mut rng, name);
                builder.insert(name, r.clone()).unwrap();
                current.insert(name, r);
            }
            // Keys in order are list order: the fresh router's tie-break is the same.
            let fresh = Router::new(current.values().cloned().collect()).unwrap();
            let changed = builder.router();
            assert_eq!(changed.len(), fresh.len());
            for path in paths {
                for host in hosts {
                    for method in METHODS {
                        let mut req = Req::get(path).method(method);
                        req.host = host.map(str::to_owned);
                        assert_eq!(
                            changed.find(&req),
                            fresh.find(&req),
                            "seed {seed} step {step}: {method} {host:?} {path}"
                        );
                    }
                }
            }
        }
    }
}

/// A version taken from the builder is a snapshot: later changes do not reach it.
#[test]
fn a_router_version_is_not_changed_by_later_changes() {
    use pylon_router::RouterBuilder;

    let mut builder = RouterBuilder::<&'static str, &'static str>::new();
    builder.insert("a", route("/a", "a")).unwrap();
    builder
        .insert("h", with_hosts(route("/h", "h"), &["x.com"]))
        .unwrap();
    let v1 = builder.router();
    builder.remove(&"a");
    builder.insert("h", route("/other", "h2")).unwrap();
    builder.insert("b", route("/a", "b")).unwrap();
    let v2 = builder.router();

    assert_eq!(v1.find(&Req::get("/a")), Some(&"a"));
    assert_eq!(v1.find(&Req::get("/h").host("x.com")), Some(&"h"));
    assert_eq!(v1.len(), 2);
    assert_eq!(v2.find(&Req::get("/a")), Some(&"b"));
    assert_eq!(v2.find(&Req::get("/h").host("x.com")), None);
    assert_eq!(v2.find(&Req::get("/other")), Some(&"h2"));
}

/// A route with a bad field is refused and the router keeps the version of that key it had.
#[test]
fn a_refused_route_leaves_the_router_as_it_was() {
    use pylon_router::RouterBuilder;

    let mut builder = RouterBuilder::<&'static str, &'static str>::new();
    builder.insert("a", route("/a", "a")).unwrap();
    let mut bad = route("/a", "bad");
    bad.remote_addrs = vec!["10.0.0.300".into()];
    let err = builder.insert("a", bad).unwrap_err();
    assert_eq!(err.field(), "remote_addrs[0]");
    assert_eq!(builder.router().find(&Req::get("/a")), Some(&"a"));
}
