//! Stopping: SIGTERM lets in-flight requests finish within `shutdown_grace`, stops accepting,
//! closes idle connections, and exits 0; a request slower than the grace period does not keep
//! the process alive.

mod support;

use std::net::{SocketAddr, TcpStream};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use support::client::{Conn, Response};
use support::upstream::{respond, Gate, Handler, Upstream};
use support::{wait_until, Pylon, WAIT};

/// Holds `/slow` until `gate` opens; answers anything else at once.
fn holding(gate: &Gate) -> Handler {
    let gate = gate.clone();
    Arc::new(move |req, stream| {
        if req.target == "/slow" {
            gate.wait();
        }
        respond(stream, 200, &[("X-Upstream", "up")], b"done");
        true
    })
}

fn routes(up: &Upstream) -> String {
    format!(
        "routes:\n  - {{id: r, uri: /*, upstream: {{nodes: {{{}}}}}}}\n",
        up.node()
    )
}

/// Sends `GET /slow` on its own thread; the outcome comes through the channel.
fn slow_request(addr: SocketAddr) -> mpsc::Receiver<std::io::Result<Response>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut conn = Conn::connect(addr);
        conn.send(b"GET /slow HTTP/1.1\r\nHost: example.com\r\n\r\n");
        let _ = tx.send(conn.read_response());
    });
    rx
}

fn refuses(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err()
}

#[test]
fn sigterm_finishes_the_request_in_flight_closes_the_rest_and_exits_0() {
    let gate = Gate::default();
    let up = Upstream::with_handler("up", holding(&gate));
    let mut pylon = Pylon::start(&routes(&up), "  shutdown_grace: 5\n");

    // An idle keep-alive connection, and a request the upstream holds.
    let mut idle = Conn::connect(pylon.addr);
    let res = idle.request(b"GET /fast HTTP/1.1\r\nHost: example.com\r\n\r\n");
    assert_eq!(res.status, 200);
    let slow = slow_request(pylon.addr);
    wait_until(
        || up.received().iter().any(|r| r.target == "/slow"),
        "the slow request to reach the upstream",
    );

    pylon.terminate();
    wait_until(|| refuses(pylon.addr), "new connections to be refused");
    assert!(idle.is_closed(), "the idle connection was not closed");
    assert!(
        slow.try_recv().is_err(),
        "the slow request ended before its upstream answered"
    );

    gate.open();
    let res = slow
        .recv_timeout(WAIT)
        .unwrap()
        .expect("the request in flight gets its response");
    assert_eq!((res.status, res.text().as_str()), (200, "done"));

    let (code, mut stdout) = pylon.wait_exit();
    stdout.extend(pylon.rest_of_stdout());
    assert_eq!(code, Some(0), "{}", pylon.stderr());
    assert!(stdout.iter().any(|l| l == "pylon: stopped"), "{stdout:?}");
}

#[test]
fn a_request_slower_than_the_grace_period_does_not_keep_pylon_alive() {
    let gate = Gate::default();
    let up = Upstream::with_handler("up", holding(&gate));
    let mut pylon = Pylon::start(&routes(&up), "  shutdown_grace: 0.5\n");

    let slow = slow_request(pylon.addr);
    wait_until(
        || up.received().iter().any(|r| r.target == "/slow"),
        "the slow request to reach the upstream",
    );
    pylon.terminate();
    let (code, mut stdout) = pylon.wait_exit();
    stdout.extend(pylon.rest_of_stdout());
    assert_eq!(code, Some(0), "{}", pylon.stderr());
    assert!(stdout.iter().any(|l| l == "pylon: stopped"), "{stdout:?}");
    // The client sees its connection end rather than a response passed off as complete.
    let outcome = slow.recv_timeout(WAIT).unwrap();
    assert!(outcome.is_err(), "{outcome:?}");
    gate.open();
}
