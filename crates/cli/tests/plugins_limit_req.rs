//! The request limits, through the gateway, over HTTP/1.1 and HTTP/2 alike: `limit-req`
//! (nginx's leaky bucket: a burst let through or held at the rate, then refusals) and
//! `limit-conn` (requests in flight, each giving its place back however it ends).
//!
//! Nothing here asserts how long anything took: a request held by `limit-req` is shown held
//! by what happened meanwhile (a refusal answered, the upstream not reached yet).

mod support;

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::client::Response;
use support::protocols::{assert_refused, call, LeavingClient, Protocol, LEAVINGS, PROTOCOLS};
use support::upstream::{respond, Gate, Received, Upstream};
use support::{wait_until, Pylon, WAIT};

/// A route on `uri` to `addr` with `plugins`.
fn route(id: &str, uri: &str, addr: SocketAddr, plugins: Value) -> Value {
    json!({"id": id, "uri": uri, "plugins": plugins, "upstream": {"nodes": {addr.to_string(): 1}}})
}

fn routes(routes: &[Value]) -> String {
    json!({ "routes": routes }).to_string()
}

/// Sends a GET on a thread (and runtime) of its own; the response comes through `done`,
/// with `label`.
fn in_background(
    protocol: Protocol,
    addr: SocketAddr,
    target: &str,
    label: &'static str,
    done: &mpsc::Sender<(&'static str, Response)>,
) {
    let (target, done) = (target.to_owned(), done.clone());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let res = runtime.block_on(call(protocol, addr, "GET", &target, &[], b""));
        let _ = done.send((label, res));
    });
}

/// An upstream that holds requests for `.../hold` until `gate` opens and answers the others
/// at once, `200` with body `up`. `released` counts the held requests it answered.
fn holding(gate: &Gate, released: &Arc<AtomicUsize>) -> Upstream {
    let (gate, released) = (gate.clone(), released.clone());
    Upstream::with_handler(
        "holding",
        Arc::new(move |req: &Received, stream: &mut TcpStream| {
            if req.target.ends_with("/hold") {
                gate.wait();
                released.fetch_add(1, Ordering::SeqCst);
            }
            respond(stream, 200, &[], b"up");
            true
        }),
    )
}

// === limit-req ===

#[tokio::test]
async fn limit_req_with_nodelay_lets_the_burst_through_at_once_then_refuses() {
    let up = Upstream::start("up");
    let pylon = Pylon::start(
        &routes(&[route(
            "req",
            "/req",
            up.addr,
            // One request in 1000 seconds: nothing drains during the test.
            json!({"limit-req": {"rate": 0.001, "burst": 2, "nodelay": true,
                "key": "arg_who", "rejected_code": 429, "rejected_msg": "slow down"}}),
        )]),
        "",
    );
    for protocol in PROTOCOLS {
        // A key per protocol: each starts with an empty bucket.
        let target = format!("/req?who={protocol:?}");
        for n in 1..=3 {
            let what = format!("{protocol:?} request {n}");
            let res = call(protocol, pylon.addr, "GET", &target, &[], b"").await;
            assert_eq!((res.status, res.text().as_str()), (200, "up"), "{what}");
        }
        let before = up.request_count();
        let res = call(protocol, pylon.addr, "GET", &target, &[], b"").await;
        let what = format!("{protocol:?} request 4");
        let body = json!({"error_msg": "slow down"});
        assert_refused(&res, 429, body, &up, before, &what);
    }
    assert_eq!(up.request_count(), 6);
}

#[tokio::test]
async fn limit_req_holds_a_request_within_the_burst_rather_than_refusing_it() {
    let up = Upstream::start("up");
    let pylon = Pylon::start(
        &routes(&[route(
            "req",
            "/req",
            up.addr,
            // A turn every two seconds: the second request waits for it; a third finds two
            // ahead of it, more than the burst.
            json!({"limit-req": {"rate": 0.5, "burst": 1, "key": "arg_who"}}),
        )]),
        "",
    );
    for protocol in PROTOCOLS {
        let target = format!("/req?who={protocol:?}");
        let before = up.request_count();
        let first = call(protocol, pylon.addr, "GET", &target, &[], b"").await;
        assert_eq!(
            first.status, 200,
            "{protocol:?}: the first finds the bucket empty"
        );

        let (done, answers) = mpsc::channel();
        in_background(protocol, pylon.addr, &target, "b", &done);
        in_background(protocol, pylon.addr, &target, "c", &done);
        // Whichever of the two comes second is refused at once, while the other is held
        // before the upstream.
        let (refused, res) = answers.recv_timeout(WAIT).expect("an answer");
        assert_eq!(
            (res.status, res.body.len()),
            (503, 0),
            "{protocol:?} {refused}"
        );
        assert_eq!(
            up.request_count(),
            before + 1,
            "{protocol:?}: the held request reached the upstream before the refusal came"
        );
        let (held, res) = answers.recv_timeout(WAIT).expect("an answer");
        assert_ne!(held, refused);
        let what = format!("{protocol:?} {held}");
        assert_eq!((res.status, res.text().as_str()), (200, "up"), "{what}");
        assert_eq!(up.request_count(), before + 2, "{what}");
    }
}

// === limit-conn ===

/// `limit-conn` with one request in flight and no burst, counting every request together.
fn one_at_a_time() -> Value {
    json!({"limit-conn": {"conn": 1, "burst": 0, "default_conn_delay": 0.1,
        "key_type": "constant", "key": "all", "rejected_code": 429, "rejected_msg": "busy"}})
}

#[tokio::test]
async fn limit_conn_refuses_past_conn_and_admits_again_once_the_request_ends() {
    // A route (so a count) and a held upstream per protocol: a gate opens only once.
    let gates = PROTOCOLS.map(|_| Gate::default());
    let released = Arc::default();
    let ups = gates.each_ref().map(|gate| holding(gate, &released));
    let pylon = Pylon::start(
        &routes(&[
            route("h1", "/h1/*", ups[0].addr, one_at_a_time()),
            route("h2", "/h2/*", ups[1].addr, one_at_a_time()),
        ]),
        "",
    );
    for ((protocol, gate), up) in PROTOCOLS.into_iter().zip(&gates).zip(&ups) {
        let prefix = if protocol == Protocol::Http1 {
            "/h1"
        } else {
            "/h2"
        };
        let quick = format!("{prefix}/quick");
        let (done, answers) = mpsc::channel();
        in_background(
            protocol,
            pylon.addr,
            &format!("{prefix}/hold"),
            "held",
            &done,
        );
        wait_until(
            || up.request_count() == 1,
            "the first request at the upstream",
        );

        let res = call(protocol, pylon.addr, "GET", &quick, &[], b"").await;
        let what = format!("{protocol:?}, one in flight");
        assert_refused(&res, 429, json!({"error_msg": "busy"}), up, 1, &what);

        gate.open();
        let (_, res) = answers
            .recv_timeout(WAIT)
            .expect("the held request's answer");
        assert_eq!(
            (res.status, res.text().as_str()),
            (200, "up"),
            "{protocol:?} held"
        );
        let res = once_admitted(protocol, pylon.addr, &quick).await;
        let what = format!("{protocol:?}, after the held one ended");
        assert_eq!((res.status, res.text().as_str()), (200, "up"), "{what}");
    }
}

#[tokio::test]
async fn limit_conn_gives_the_place_back_when_the_client_leaves_mid_request() {
    let cases = LEAVINGS;
    let gates = cases.map(|_| Gate::default());
    let released = cases.map(|_| Arc::new(AtomicUsize::new(0)));
    let ups: Vec<_> = (0..cases.len())
        .map(|i| holding(&gates[i], &released[i]))
        .collect();
    let pylon = Pylon::start(
        &routes(
            &(0..cases.len())
                .map(|i| {
                    route(
                        &format!("r{i}"),
                        &format!("/{i}/*"),
                        ups[i].addr,
                        one_at_a_time(),
                    )
                })
                .collect::<Vec<_>>(),
        ),
        "",
    );
    for (i, leaving) in cases.into_iter().enumerate() {
        let (hold, quick) = (format!("/{i}/hold"), format!("/{i}/quick"));
        let up = &ups[i];
        // The client that leaves, its request held at the upstream.
        let mut client = LeavingClient::send(leaving, pylon.addr, &hold);
        wait_until(|| up.request_count() == 1, "the request at the upstream");
        for protocol in PROTOCOLS {
            let res = call(protocol, pylon.addr, "GET", &quick, &[], b"").await;
            let what = format!("{leaving:?}, {protocol:?} while one is in flight");
            assert_refused(&res, 429, json!({"error_msg": "busy"}), up, 1, &what);
        }
        client.leave();
        for protocol in PROTOCOLS {
            let res = once_admitted(protocol, pylon.addr, &quick).await;
            let what = format!("{leaving:?}, {protocol:?} once the client left");
            assert_eq!((res.status, res.text().as_str()), (200, "up"), "{what}");
        }
        // Given back when the client left, not when the upstream answered: it still holds
        // the request.
        assert_eq!(released[i].load(Ordering::SeqCst), 0, "{leaving:?}");
        gates[i].open();
    }
}

/// The first answer to a GET of `target` that `limit-conn` does not refuse, asking for at most
/// [`WAIT`]. A request's place is given back as it ends, once its response is sent: a moment
/// after its client may have read the response.
async fn once_admitted(protocol: Protocol, addr: SocketAddr, target: &str) -> Response {
    let deadline = Instant::now() + WAIT;
    loop {
        let res = call(protocol, addr, "GET", target, &[], b"").await;
        if res.status != 429 || Instant::now() > deadline {
            return res;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
