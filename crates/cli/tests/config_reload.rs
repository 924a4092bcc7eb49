//! The routes file is the configuration: changes are served without a restart and without a
//! failed request; a bad version is refused with every error named, and the last good one
//! stays in force. `pylon validate` says the same before anything runs.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use support::client::{get, Conn};
use support::upstream::Upstream;
use support::{validate, wait_until, Pylon};

/// `/r` to `up`, and one route that does not change.
fn routes_to(up: &Upstream, other: &Upstream) -> String {
    format!(
        "routes:\n  - {{id: r, uri: /r, upstream: {{nodes: {{{}}}}}}}\n  - {{id: other, uri: /other, upstream: {{nodes: {{{}}}}}}}\n",
        up.node(),
        other.node()
    )
}

fn answer(pylon: &Pylon, target: &str) -> String {
    let res = get(pylon.addr, "example.com", target);
    res.header("x-upstream")
        .map_or_else(|| format!("status {}", res.status), str::to_owned)
}

/// Waits until `/r` is answered by `name`.
fn wait_served_by(pylon: &Pylon, name: &str) {
    let started = Instant::now();
    wait_until(
        || answer(pylon, "/r") == name,
        &format!("{name} to answer /r"),
    );
    eprintln!(
        "{name} answered {:?} after the file changed",
        started.elapsed()
    );
}

#[test]
fn a_changed_file_is_served_and_no_request_fails_across_reloads() {
    let versions: Vec<Upstream> = (0..5).map(|i| Upstream::start(&format!("v{i}"))).collect();
    let other = Upstream::start("other");
    let pylon = Pylon::start(&routes_to(&versions[0], &other), "");

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = [true, false]
        .into_iter()
        .map(|keep_alive| {
            let (stop, sent, failures, addr) =
                (stop.clone(), sent.clone(), failures.clone(), pylon.addr);
            std::thread::spawn(move || {
                let mut conn: Option<Conn> = None;
                while !stop.load(Ordering::SeqCst) {
                    let c = conn.get_or_insert_with(|| Conn::connect(addr));
                    c.send(b"GET /r HTTP/1.1\r\nHost: example.com\r\n\r\n");
                    let result = c.read_response();
                    sent.fetch_add(1, Ordering::SeqCst);
                    match result {
                        Ok(res) if res.status == 200 && res.text().starts_with('v') => {
                            let closing = res
                                .header("connection")
                                .is_some_and(|v| v.contains("close"));
                            if closing || !keep_alive {
                                conn = None;
                            }
                        }
                        Ok(res) => {
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("{} {}", res.status, res.text()));
                            conn = None;
                        }
                        Err(e) => {
                            failures.lock().unwrap().push(e.to_string());
                            conn = None;
                        }
                    }
                }
            })
        })
        .collect();

    for up in &versions[1..] {
        let before = sent.load(Ordering::SeqCst);
        pylon.write_routes(&routes_to(up, &other));
        wait_served_by(&pylon, &up.name);
        // Traffic keeps flowing on the new version before the next change.
        wait_until(
            || sent.load(Ordering::SeqCst) >= before + 20,
            "requests after the reload",
        );
    }
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().unwrap();
    }

    let failures = failures.lock().unwrap();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(sent.load(Ordering::SeqCst) >= 80);
    assert_eq!(answer(&pylon, "/other"), "other");
    assert!(versions[4].request_count() > 0);
}

#[test]
fn an_invalid_file_is_refused_with_its_errors_and_the_last_good_one_stays() {
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    let other = Upstream::start("other");
    let pylon = Pylon::start(&routes_to(&a, &other), "");
    assert_eq!(answer(&pylon, "/r"), "a");

    // A port out of range.
    pylon.write_routes(&format!(
        "routes:\n  - id: r\n    uri: /r\n    upstream:\n      nodes:\n        - {{host: 127.0.0.1, port: 70000, weight: 1}}\n  - {{id: other, uri: /other, upstream: {{nodes: {{{}}}}}}}\n",
        other.node()
    ));
    pylon.wait_for_log("routes[0].upstream.nodes[0].port: must be 1..65535");
    assert!(
        pylon.stderr().contains("previous version stays in force"),
        "{}",
        pylon.stderr()
    );
    assert_eq!(answer(&pylon, "/r"), "a");
    assert_eq!(answer(&pylon, "/other"), "other");

    // An upstream_id that names nothing, and a pattern the router could not compile.
    pylon.write_routes(&format!(
        "routes:\n  - {{id: r, uri: /r, upstream_id: nope}}\n  - {{id: other, uri: \"/other/:id*\", upstream: {{nodes: {{{}}}}}}}\n",
        other.node()
    ));
    pylon.wait_for_log("routes[0].upstream_id: upstream `nope` does not exist");
    pylon.wait_for_log("routes[1].uri: a `:` parameter cannot end in `*`");
    assert_eq!(answer(&pylon, "/r"), "a");
    assert_eq!(answer(&pylon, "/other"), "other");

    // The next good version is picked up.
    pylon.write_routes(&routes_to(&b, &other));
    wait_served_by(&pylon, "b");
    assert_eq!(answer(&pylon, "/other"), "other");
}

#[test]
fn a_file_naming_a_missing_proto_or_stream_route_inside_plugins_is_refused() {
    let a = Upstream::start("a");
    let other = Upstream::start("other");
    let pylon = Pylon::start(&routes_to(&a, &other), "");
    assert_eq!(answer(&pylon, "/r"), "a");

    let dangling = format!(
        "routes:\n\
         \x20 - id: r\n    uri: /r\n    upstream: {{nodes: {{{}}}}}\n    plugins:\n      grpc-transcode: {{proto_id: p9, service: s.S, method: M}}\n\
         \x20 - {{id: other, uri: /other, upstream: {{nodes: {{{}}}}}}}\n\
         \x20 - {{id: ws, uri: /ws, plugins: {{websocket-frames: {{stream_route_id: im}}}}}}\n",
        a.node(),
        other.node()
    );
    pylon.write_routes(&dangling);
    pylon.wait_for_log("routes[0].plugins.grpc-transcode.proto_id: proto `p9` does not exist");
    pylon.wait_for_log(
        "routes[2].plugins.websocket-frames.stream_route_id: stream route `im` does not exist",
    );
    assert!(
        pylon.stderr().contains("previous version stays in force"),
        "{}",
        pylon.stderr()
    );
    assert_eq!(answer(&pylon, "/r"), "a");
    assert_eq!(answer(&pylon, "/other"), "other");

    // `pylon validate` says the same before anything runs.
    let (code, _, stderr) = validate(&dangling);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("routes[0].plugins.grpc-transcode.proto_id: proto `p9` does not exist"),
        "{stderr}"
    );
}

#[test]
fn validate_accepts_a_good_file_and_lists_every_error_of_a_bad_one() {
    let (code, stdout, _) = validate(
        "upstreams:\n  - {id: u, nodes: {\"127.0.0.1:8080\": 1}}\nroutes:\n  - {id: r, uri: /r, upstream_id: u}\n  - {id: s, uri: \"/s/:id\", upstream: {nodes: {\"127.0.0.1:8081\": 1}}}\n",
    );
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains("valid (2 routes, 0 services, 1 upstreams, 0 ssls)"),
        "{stdout}"
    );

    let (code, _, stderr) = validate(
        "upstreams:\n  - {id: u, retries: -1, nodes: {\"127.0.0.1:8080\": 1}}\n\
         routes:\n\
         \x20 - id: r0\n    uri: /a\n    upstream:\n      nodes:\n        - {host: 127.0.0.1, port: 0, weight: 1}\n\
         \x20 - {id: r1, uri: /b, upstream_id: missing}\n\
         \x20 - {id: r2, uri: b, methods: [FETCH], upstream_id: u}\n\
         \x20 - {id: r3, uri: \"/d/:id*\", hosts: [\".example.com\"], upstream_id: u}\n",
    );
    assert_ne!(code, Some(0));
    for expected in [
        "upstreams[0].retries: must be 0..100",
        "routes[0].upstream.nodes[0].port: must be 1..65535",
        "routes[1].upstream_id: upstream `missing` does not exist",
        "routes[2].uri: must start with `/`",
        "routes[2].methods[0]: `FETCH` is not one of",
        "routes[3].uri: a `:` parameter cannot end in `*`",
        "routes[3].hosts[0]: `.example.com` is not a host name",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn startup_with_an_invalid_file_fails_naming_the_field() {
    let err = Pylon::try_start(
        "routes:\n  - id: r\n    uri: /r\n    upstream:\n      nodes:\n        - {host: 127.0.0.1, port: 99999, weight: 1}\n",
        "",
    )
    .err()
    .expect("pylon must not start on an invalid routes file");
    assert!(
        err.contains("apisix.yaml is not valid")
            && err.contains("routes[0].upstream.nodes[0].port: must be 1..65535"),
        "{err}"
    );
}

#[test]
fn a_changed_service_or_upstream_reaches_the_routes_that_use_it() {
    let ups: Vec<Upstream> = ["s-old", "s-new", "u-old", "u-new"]
        .iter()
        .map(|n| Upstream::start(n))
        .collect();
    let config = |service: &Upstream, upstream: &Upstream| {
        format!(
            "services:\n  - {{id: s, upstream: {{nodes: {{{}}}}}}}\n\
             upstreams:\n  - {{id: u, nodes: {{{}}}}}\n\
             routes:\n  - {{id: a, uri: /svc, service_id: s}}\n  - {{id: b, uri: /ups, upstream_id: u}}\n",
            service.node(),
            upstream.node()
        )
    };
    let pylon = Pylon::start(&config(&ups[0], &ups[2]), "");
    assert_eq!(answer(&pylon, "/svc"), "s-old");
    assert_eq!(answer(&pylon, "/ups"), "u-old");

    // Only the service changes: its route follows, the other stays.
    pylon.reload(&config(&ups[1], &ups[2]));
    assert_eq!(answer(&pylon, "/svc"), "s-new");
    assert_eq!(answer(&pylon, "/ups"), "u-old");

    // Only the upstream changes.
    pylon.reload(&config(&ups[1], &ups[3]));
    assert_eq!(answer(&pylon, "/svc"), "s-new");
    assert_eq!(answer(&pylon, "/ups"), "u-new");

    // A route removed from the file is gone.
    pylon.reload(&format!(
        "upstreams:\n  - {{id: u, nodes: {{{}}}}}\nroutes:\n  - {{id: b, uri: /ups, upstream_id: u}}\n",
        ups[3].node()
    ));
    assert_eq!(answer(&pylon, "/svc"), "status 404");
    assert_eq!(answer(&pylon, "/ups"), "u-new");
}
