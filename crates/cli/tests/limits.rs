//! Resource limits: connections per worker, and a client that goes away does not keep its
//! upstream request running.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Mutex};

use support::client::Conn;
use support::upstream::Upstream;
use support::{wait_until, Pylon, WAIT};

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";

fn routes(up: &Upstream) -> String {
    format!(
        "routes:\n  - {{id: r, uri: /*, upstream: {{nodes: {{{}}}}}}}\n",
        up.node()
    )
}

/// A request on a new connection, answered 200.
fn served_on_new_connection(addr: SocketAddr) -> bool {
    let Ok(mut conn) = Conn::try_connect(addr) else {
        return false;
    };
    conn.stream.write_all(GET).is_ok() && conn.read_response().is_ok_and(|r| r.status == 200)
}

#[test]
fn a_connection_over_the_limit_is_closed_at_once_and_a_slot_frees_when_one_closes() {
    let up = Upstream::start("up");
    let pylon = Pylon::start(
        &routes(&up),
        "  workers: 1\n  max_connections_per_worker: 2\n",
    );
    let mut a = Conn::connect(pylon.addr);
    let mut b = Conn::connect(pylon.addr);
    assert_eq!(a.request(GET).status, 200);
    assert_eq!(b.request(GET).status, 200);

    // Closed without waiting for a request (client_header_timeout, 30 s, is longer than
    // is_closed waits): the limit, not a timeout.
    let mut over = Conn::connect(pylon.addr);
    assert!(over.is_closed(), "a third connection was kept open");
    assert_eq!(a.request(GET).status, 200);
    assert_eq!(b.request(GET).status, 200);

    drop(a);
    wait_until(
        || served_on_new_connection(pylon.addr),
        "a new connection to be served once one closed",
    );
    assert_eq!(b.request(GET).status, 200);
}

#[test]
fn a_client_that_goes_away_closes_its_request_to_the_upstream() {
    // The upstream never answers: it waits (bounded) for the gateway to close the
    // connection, and reports whether it did.
    let (tx, closed) = mpsc::channel();
    let tx = Mutex::new(tx);
    let up = Upstream::with_handler(
        "up",
        Arc::new(move |req, stream| {
            stream.set_read_timeout(Some(WAIT)).unwrap();
            let mut byte = [0u8; 1];
            let gone = match stream.read(&mut byte) {
                Ok(n) => n == 0,
                Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            };
            let _ = tx.lock().unwrap().send((req.target.clone(), gone));
            false
        }),
    );
    let pylon = Pylon::start(&routes(&up), "");

    let requests: [(&str, &[u8]); 2] = [
        ("/get", b"GET /get HTTP/1.1\r\nHost: example.com\r\n\r\n"),
        // A body streamed through: the client leaves after sending all of it.
        (
            "/post",
            b"POST /post HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
    ];
    for (i, (target, request)) in requests.into_iter().enumerate() {
        let mut client = Conn::connect(pylon.addr);
        client.send(request);
        wait_until(
            || up.received().iter().any(|r| r.target == target),
            "the request to reach the upstream",
        );
        drop(client);
        let (seen, gone) = closed.recv_timeout(WAIT * 2).unwrap();
        assert_eq!(seen, target);
        assert!(
            gone,
            "{target}: the upstream connection outlived the client"
        );
        let log = pylon.wait_access_log(i + 1);
        assert_eq!(log[i]["status"], 499, "{:?}", log[i]);
    }
}
