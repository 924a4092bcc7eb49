//! Restarts and upgrades: a new `pylon run` with the same listen addresses and handoff socket
//! takes the listening sockets over from the running one, which drains and exits 0, while
//! clients keep sending requests on new and kept-alive connections, over HTTP and HTTPS, and
//! none of them fails.

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::client::Conn;
use support::tls::{client_config, https_get, ssl_yaml, Issued, TestCa};
use support::upstream::Upstream;
use support::{wait_until, Pylon};

const REQUEST: &[u8] = b"GET /r HTTP/1.1\r\nHost: example.com\r\n\r\n";
/// Bounds the load threads should the test fail without stopping them.
const LOAD_LIMIT: Duration = Duration::from_secs(120);

fn routes(up: &Upstream, cert: &Issued) -> String {
    format!(
        "routes:\n  - {{id: r, uri: /*, upstream: {{nodes: {{{}}}}}}}\nssls:\n{}",
        up.node(),
        ssl_yaml("1", &["example.com"], cert, "")
    )
}

/// Which pylons may answer: bumped by the test as it starts and retires them, read by the
/// clients before each request, so each response is judged against what was running when
/// its request began.
type Phase = Arc<AtomicUsize>;

/// What one client thread saw.
#[derive(Default)]
struct Tally {
    /// (phase when the request started, body) of each 200.
    served: Vec<(usize, String)>,
    failures: Vec<String>,
}

/// Client threads sending requests back to back until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    tallies: Vec<(&'static str, Arc<Mutex<Tally>>)>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(http: SocketAddr, https: SocketAddr, ca: &TestCa, phase: &Phase) -> Load {
        let mut load = Load {
            stop: Arc::new(AtomicBool::new(false)),
            tallies: Vec::new(),
            threads: Vec::new(),
        };
        // Several at once, so that connections are waiting in the accept queues whenever a
        // pylon lets go of its sockets.
        for name in [
            "new connections 1",
            "new connections 2",
            "new connections 3",
        ] {
            load.spawn(name, phase, move |_| new_connection(http));
        }
        load.spawn("kept-alive connection", phase, move |conn| {
            keep_alive(http, conn)
        });
        let config = client_config(ca.roots(), &["http/1.1"]);
        load.spawn("https", phase, move |_| {
            let res = https_get(https, "example.com", config.clone(), "/r")?;
            Ok((res.status, res.body))
        });
        load
    }

    /// Runs `request` in a loop; it returns the status and body.
    fn spawn(
        &mut self,
        name: &'static str,
        phase: &Phase,
        mut request: impl FnMut(&mut Option<Conn>) -> Result<(u16, String), String> + Send + 'static,
    ) {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let (stop, phase, shared) = (self.stop.clone(), phase.clone(), tally.clone());
        self.threads.push(std::thread::spawn(move || {
            let deadline = Instant::now() + LOAD_LIMIT;
            let mut conn = None;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let started_in = phase.load(Ordering::SeqCst);
                let outcome = request(&mut conn);
                let mut tally = shared.lock().unwrap();
                match outcome {
                    Ok((200, body)) => tally.served.push((started_in, body)),
                    Ok((status, body)) => tally.failures.push(format!("{status} {body}")),
                    Err(e) => tally.failures.push(e),
                }
            }
        }));
        self.tallies.push((name, tally));
    }

    /// Waits until every client has had `n` responses to requests begun in `phase`.
    fn wait_for(&self, phase: usize, n: usize) {
        for (name, tally) in &self.tallies {
            wait_until(
                || {
                    let (failures, served) = {
                        let tally = tally.lock().unwrap();
                        let served = tally.served.iter().filter(|(p, _)| *p == phase).count();
                        (tally.failures.clone(), served)
                    };
                    assert!(failures.is_empty(), "{name}: {failures:?}");
                    served >= n
                },
                &format!("{name}: {n} responses in phase {phase}"),
            );
        }
    }

    fn stop(self) -> Vec<(&'static str, Tally)> {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads {
            thread.join().unwrap();
        }
        self.tallies
            .into_iter()
            .map(|(name, tally)| (name, std::mem::take(&mut *tally.lock().unwrap())))
            .collect()
    }
}

/// One request on a connection of its own.
fn new_connection(addr: SocketAddr) -> Result<(u16, String), String> {
    let mut conn = Conn::try_connect(addr).map_err(|e| format!("connect: {e}"))?;
    conn.stream
        .write_all(b"GET /r HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let res = conn.read_response().map_err(|e| format!("read: {e}"))?;
    Ok((res.status, res.text()))
}

/// One request on the kept-alive connection `conn` (opened when there is none, or when the
/// last response said `Connection: close`). Strict: a request the server cuts off, even one on
/// a connection that has been idle, is a failure, although clients may retry those (RFC 9112
/// §9.3.1): a draining pylon waits a moment for a request on its way before closing.
fn keep_alive(addr: SocketAddr, conn: &mut Option<Conn>) -> Result<(u16, String), String> {
    let reused = conn.is_some();
    let mut current = match conn.take() {
        Some(conn) => conn,
        None => Conn::try_connect(addr).map_err(|e| format!("connect: {e}"))?,
    };
    let res = current
        .stream
        .write_all(REQUEST)
        .and_then(|()| current.read_response())
        .map_err(|e| format!("kept-alive connection (reused: {reused}): {e}"))?;
    if res.header("connection") != Some("close") {
        *conn = Some(current);
    }
    Ok((res.status, res.text()))
}

fn took_over(pylon: &Pylon, sockets: usize, from: &Pylon) -> bool {
    let line = format!(
        "pylon: took over {sockets} listening socket(s) from pid {}",
        from.pid()
    );
    pylon.startup.contains(&line)
}

/// Waits for `pylon` to exit; asserts it drained and exited 0. Returns what it printed.
fn assert_drained(pylon: &mut Pylon) -> Vec<String> {
    let (code, mut stdout) = pylon.wait_exit();
    stdout.extend(pylon.rest_of_stdout());
    assert_eq!(code, Some(0), "{}", pylon.stderr());
    assert!(stdout.iter().any(|l| l == "pylon: stopped"), "{stdout:?}");
    stdout
}

#[test]
fn two_successive_takeovers_fail_no_request_and_the_newest_pylon_serves() {
    let ca = TestCa::new("restart ca");
    let cert = ca.issue(&["example.com"]);
    let (one, two, three) = (
        Upstream::start("one"),
        Upstream::start("two"),
        Upstream::start("three"),
    );
    let mut first = Pylon::start(&routes(&one, &cert), "");
    let https = first.https_addr.unwrap();
    let phase = Phase::default();
    let load = Load::start(first.addr, https, &ca, &phase);
    load.wait_for(0, 5);

    // More workers than the first one had: the second binds a third socket per address.
    phase.store(1, Ordering::SeqCst);
    let mut second = first.successor(&routes(&two, &cert), "  workers: 3\n");
    // Two per proxy listener (one per worker of the first), and the control API's.
    assert!(took_over(&second, 5, &first), "{:?}", second.startup);
    assert_eq!((second.addr, second.https_addr), (first.addr, Some(https)));
    assert_eq!(second.control, first.control);
    load.wait_for(1, 3);
    let stdout = assert_drained(&mut first);
    let handed = format!(
        "pylon: pid {} took over the listening sockets",
        second.pid()
    );
    assert!(stdout.contains(&handed), "{stdout:?}");
    phase.store(2, Ordering::SeqCst);
    load.wait_for(2, 5);

    // Fewer workers: the third's one worker accepts on all three sockets of each address. The operator also
    // sends the old pylon SIGQUIT once the new one has taken over, as scripts written for
    // nginx do: whichever comes first, the signal or the word from the new pylon, the old one
    // drains, and its sockets live on in the new process.
    phase.store(3, Ordering::SeqCst);
    let third = second.successor(&routes(&three, &cert), "  workers: 1\n");
    assert!(took_over(&third, 7, &second), "{:?}", third.startup);
    second.signal("QUIT");
    load.wait_for(3, 3);
    assert_drained(&mut second);
    phase.store(4, Ordering::SeqCst);
    load.wait_for(4, 5);

    let tallies = load.stop();
    let answers = ["one", "one|two", "two", "two|three", "three"];
    for (name, tally) in &tallies {
        assert!(tally.failures.is_empty(), "{name}: {:?}", tally.failures);
        for (phase, body) in &tally.served {
            assert!(
                answers[*phase].split('|').any(|a| a == body),
                "{name}: a request begun in phase {phase} was answered by {body:?}"
            );
        }
        eprintln!("{name}: {} requests", tally.served.len());
    }
    // The newest pylon keeps serving on its own, on every listener, the control API's too.
    let control = third.control.unwrap();
    assert_eq!(control, first.control.unwrap());
    let res = support::client::get(control, "localhost", "/v1/healthcheck");
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        support::client::get(third.addr, "example.com", "/").text(),
        "three"
    );
    let config = client_config(ca.roots(), &["http/1.1"]);
    let res = https_get(https, "example.com", config, "/").unwrap();
    assert_eq!(res.body, "three");
}

#[test]
fn a_socket_file_left_by_a_killed_pylon_does_not_stop_the_next_one() {
    let up = Upstream::start("up");
    let ca = TestCa::new("restart ca");
    let cert = ca.issue(&["example.com"]);
    let mut first = Pylon::start(&routes(&up, &cert), "");
    first.signal("KILL");
    let _ = first.wait_exit();
    assert!(first.handoff_socket.as_ref().unwrap().exists());

    let next = first.successor(&routes(&up, &cert), "");
    assert!(
        !next.startup.iter().any(|l| l.contains("took over")),
        "{:?}",
        next.startup
    );
    assert_eq!(
        support::client::get(next.addr, "example.com", "/").text(),
        "up"
    );
    // And it can be taken over in turn.
    let newer = next.successor(&routes(&up, &cert), "");
    assert!(took_over(&newer, 5, &next), "{:?}", newer.startup);
}
