//! Restarts and upgrades: a new `pylon run` with the node's config takes the listening sockets
//! over from the running one, which drains and exits 0, while clients keep sending requests on
//! new and kept-alive connections, over HTTP and HTTPS, and none of them fails. On every config
//! source: a YAML file, the embedded store (whose data directory only one process may hold: the
//! running pylon hands it over) and etcd. Where the Admin API writes the store, admins keep
//! writing through every restart: no admin request is refused, and no write is lost.

mod support;

#[path = "../../store/tests/support/etcd.rs"]
mod etcd;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use etcd::EtcdCluster;
use serde_json::json;
use support::client::{admin, get, try_admin, Conn};
use support::tls::{client_config, https_get, ssl_yaml, Issued, TestCa};
use support::upstream::Upstream;
use support::{wait_until, Pylon};

const REQUEST: &[u8] = b"GET /r HTTP/1.1\r\nHost: example.com\r\n\r\n";
/// Bounds the load threads should the test fail without stopping them.
const LOAD_LIMIT: Duration = Duration::from_secs(120);
const ADMIN_KEY: &str = "restart-admin-key";
/// Between two admin writes.
const ADMIN_PAUSE: Duration = Duration::from_millis(5);

/// The same scenarios on each config source.
macro_rules! on_every_source {
    ($($module:ident: $source:expr;)*) => {$(
        mod $module {
            use super::*;

            #[test]
            fn two_successive_takeovers_fail_no_request_and_lose_no_write() {
                two_successive_takeovers($source);
            }

            #[test]
            fn a_successor_that_fails_to_start_leaves_the_running_pylon_serving() {
                a_successor_that_fails_to_start($source);
            }

            #[test]
            fn a_socket_file_left_by_a_killed_pylon_does_not_stop_the_next_one() {
                a_killed_pylon($source);
            }
        }
    )*};
}

on_every_source! {
    on_a_yaml_file: Source::Yaml;
    on_the_embedded_store: Source::Embedded;
    on_etcd: Source::Etcd(EtcdCluster::single());
}

// === scenarios ===

fn two_successive_takeovers(source: Source) {
    let node = Node::new(source);
    let (one, two, three) = (
        Upstream::start("one"),
        Upstream::start("two"),
        Upstream::start("three"),
    );
    let mut first = node.start(0, &one, 2, None);
    let phase = Phase::default();
    let load = Load::start(&node, &first, &phase);
    load.wait_for(0, 5);

    // More workers than the first one had: the second binds a third socket per address.
    phase.store(1, Ordering::SeqCst);
    let mut second = node.start(1, &two, 3, Some(&first));
    // Two per proxy listener (one per worker of the first), the control API's, the metrics
    // listener's and the Admin API's.
    assert!(
        took_over(&second, node.handed_over(2), &first),
        "{:?}",
        second.startup
    );
    assert_eq!(
        (
            second.addr,
            second.https_addr,
            second.control,
            second.metrics,
            second.admin
        ),
        (
            first.addr,
            first.https_addr,
            first.control,
            first.metrics,
            first.admin
        )
    );
    load.wait_for(1, 3);
    let stdout = assert_drained(&mut first);
    let handed = format!(
        "pylon: pid {} took over the listening sockets",
        second.pid()
    );
    assert!(stdout.contains(&handed), "{stdout:?}");
    phase.store(2, Ordering::SeqCst);
    load.wait_for(2, 5);

    // Fewer workers: the third's one worker accepts on all three sockets of each address. The
    // operator also sends the old pylon SIGQUIT once the new one has taken over, as scripts
    // written for nginx do: whichever comes first, the signal or the word from the new pylon,
    // the old one drains, and its sockets live on in the new process.
    phase.store(3, Ordering::SeqCst);
    let third = node.start(2, &three, 1, Some(&second));
    assert!(
        took_over(&third, node.handed_over(3), &second),
        "{:?}",
        third.startup
    );
    second.signal("QUIT");
    load.wait_for(3, 3);
    assert_drained(&mut second);
    phase.store(4, Ordering::SeqCst);
    load.wait_for(4, 5);

    load.stop().assert_all_served(
        &["one", "one|two", "two", "two|three", "three"],
        &node,
        &third,
    );
    // The newest pylon keeps serving on its own, on every listener, the control API's too.
    let res = get(third.control.unwrap(), "localhost", "/v1/healthcheck");
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(get(third.addr, "example.com", "/").text(), "three");
    let config = client_config(node.ca.roots(), &["http/1.1"]);
    let res = https_get(third.https_addr.unwrap(), "example.com", config, "/").unwrap();
    assert_eq!(res.body, "three");
}

fn a_successor_that_fails_to_start(source: Source) {
    let node = Node::new(source);
    let (one, two) = (Upstream::start("one"), Upstream::start("two"));
    let mut first = node.start(0, &one, 2, None);
    let phase = Phase::default();
    let load = Load::start(&node, &first, &phase);
    load.wait_for(0, 5);

    // A listen address taken by someone else: the successor fails only once it has taken over
    // all it can, the embedded store included.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    phase.store(1, Ordering::SeqCst);
    let error = node
        .try_start(1, &two, 2, Some(&first), Some(taken_addr))
        .err()
        .expect("a successor that cannot listen where it is told to fails");
    assert!(error.contains("in use"), "{error}");
    // The running pylon serves on, and takes admin writes again.
    phase.store(2, Ordering::SeqCst);
    load.wait_for(2, 5);
    first.wait_for_log("hung up without serving");
    if let Source::Embedded = node.source {
        first.wait_for_log("the store is back");
    }

    // And a successor that starts still takes it over.
    phase.store(3, Ordering::SeqCst);
    let second = node.start(2, &two, 1, Some(&first));
    assert!(
        took_over(&second, node.handed_over(2), &first),
        "{:?}",
        second.startup
    );
    load.wait_for(3, 3);
    assert_drained(&mut first);
    phase.store(4, Ordering::SeqCst);
    load.wait_for(4, 5);
    load.stop()
        .assert_all_served(&["one", "one", "one", "one|two", "two"], &node, &second);
}

fn a_killed_pylon(source: Source) {
    let node = Node::new(source);
    let up = Upstream::start("up");
    let mut first = node.start(0, &up, 2, None);
    first.signal("KILL");
    let _ = first.wait_exit();
    assert!(first.handoff_socket.as_ref().unwrap().exists());

    // It starts on its own (on the embedded store: the kernel released the data directory).
    let next = node.start(1, &up, 2, Some(&first));
    assert!(
        !next.startup.iter().any(|l| l.contains("took over")),
        "{:?}",
        next.startup
    );
    // And can be taken over in turn.
    let newer = node.start(2, &up, 2, Some(&next));
    assert!(
        took_over(&newer, node.handed_over(2), &next),
        "{:?}",
        newer.startup
    );
}

// === the node ===

/// Where a node's routes come from.
enum Source {
    /// A standalone YAML file: each generation's node config names a file of its own, so that
    /// the pylon being replaced does not reload the next one's routes.
    Yaml,
    /// The embedded store in the node's data dir, which one pylon at a time may hold.
    Embedded,
    /// etcd, which the old and the new pylon read and write at once.
    Etcd(EtcdCluster),
}

/// A node's directory: its node config (rewritten for each generation, always at the same
/// path, so that every pylon of the node has the same handoff socket and data dir), and its
/// routes files or data dir.
struct Node {
    dir: tempfile::TempDir,
    source: Source,
    ca: TestCa,
    cert: Issued,
}

impl Node {
    fn new(source: Source) -> Node {
        let ca = TestCa::new("restart ca");
        let cert = ca.issue(&["example.com"]);
        Node {
            dir: tempfile::tempdir().unwrap(),
            source,
            ca,
            cert,
        }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("node.yaml")
    }

    fn has_admin(&self) -> bool {
        !matches!(self.source, Source::Yaml)
    }

    /// How many listening sockets a pylon with `workers` workers hands over: one per worker
    /// on each proxy listener (http and https), the control API's, the metrics listener's, and
    /// the Admin API's.
    fn handed_over(&self, workers: usize) -> usize {
        2 * workers + 2 + usize::from(self.has_admin())
    }

    /// Starts generation `generation` with `workers` workers, routing everything to
    /// `upstream`, on the listen addresses of `running` (which it takes over) or on free
    /// ports. Returns once it answers from `upstream`.
    fn start(
        &self,
        generation: usize,
        upstream: &Upstream,
        workers: usize,
        running: Option<&Pylon>,
    ) -> Pylon {
        self.try_start(generation, upstream, workers, running, None)
            .unwrap_or_else(|e| panic!("generation {generation} did not start: {e}"))
    }

    /// [`Node::start`], listening on `extra_listen` too.
    fn try_start(
        &self,
        generation: usize,
        upstream: &Upstream,
        workers: usize,
        running: Option<&Pylon>,
        extra_listen: Option<SocketAddr>,
    ) -> Result<Pylon, String> {
        let routes = routes(upstream, &self.cert);
        if let Source::Yaml = self.source {
            let file = self.dir.path().join(format!("routes-{generation}.yaml"));
            std::fs::write(file, &routes).unwrap();
        }
        std::fs::write(
            self.config_path(),
            self.node_config(generation, workers, running, extra_listen),
        )
        .unwrap();
        let pylon = Pylon::run_config(tempfile::tempdir().unwrap(), &self.config_path())?;
        if self.has_admin() {
            // Written through the new pylon's Admin API, once it has taken over. Until the old
            // pylon stops accepting, the load's writes may go through either: two nodes, whose
            // writes do not take turns as one node's do. This whole-configuration write loses
            // to a stream of small ones now and then, and is answered 409 "try again": it is
            // tried again, a bounded number of times.
            let document: serde_json::Value = serde_yaml::from_str(&routes).unwrap();
            let mut tries = 0;
            let res = loop {
                tries += 1;
                let res = admin(
                    pylon.admin.unwrap(),
                    ADMIN_KEY,
                    "POST",
                    "/pylon/admin/config",
                    Some(&document),
                );
                if res.status != 409 || tries == 5 {
                    break res;
                }
            };
            assert_eq!(res.status, 200, "{}", res.text());
        }
        wait_until(
            || get(pylon.addr, "example.com", "/").text() == upstream.name,
            &format!("generation {generation} to answer from {}", upstream.name),
        );
        Ok(pylon)
    }

    fn node_config(
        &self,
        generation: usize,
        workers: usize,
        running: Option<&Pylon>,
        extra_listen: Option<SocketAddr>,
    ) -> String {
        let at = |addr: Option<SocketAddr>| {
            format!(
                "\"{}\"",
                addr.map_or("127.0.0.1:0".to_owned(), |a| a.to_string())
            )
        };
        let mut listen = vec![at(running.map(|p| p.addr))];
        listen.extend(extra_listen.map(|a| at(Some(a))));
        let mut config = format!(
            "proxy:\n  listen: [{}]\n  workers: {workers}\n  https:\n    listen: [{}]\n\
             control:\n  listen: {}\n\
             metrics:\n  listen: {}\n\
             access_log:\n  path: access.log\n\
             log:\n  level: info\n",
            listen.join(", "),
            at(running.and_then(|p| p.https_addr)),
            at(running.and_then(|p| p.control)),
            at(running.and_then(|p| p.metrics)),
        );
        config += &match &self.source {
            Source::Yaml => format!("config:\n  source: yaml\n  file: routes-{generation}.yaml\n"),
            Source::Embedded => "config:\n  source: embedded\n  data_dir: data\n".to_owned(),
            Source::Etcd(cluster) => format!(
                "config:\n  source: etcd\n  data_dir: data\n  etcd:\n    endpoints: [\"{}\"]\n    prefix: /restart\n    timeout: 2\n\
                 data_encryption:\n  keyring: [\"a restart test secret\"]\n",
                cluster.endpoint(0)
            ),
        };
        if self.has_admin() {
            config += &format!(
                "admin:\n  listen: {}\n  admin_key: [{{name: admin, key: {ADMIN_KEY}, role: admin}}]\n",
                at(running.and_then(|p| p.admin))
            );
        }
        config
    }
}

fn routes(up: &Upstream, cert: &Issued) -> String {
    format!(
        "routes:\n  - {{id: r, uri: /*, upstream: {{nodes: {{{}}}}}}}\nssls:\n{}",
        up.node(),
        ssl_yaml("1", &["example.com"], cert, "")
    )
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

// === the load ===

/// Which pylons may answer: bumped by the test as it starts and retires them, read by the
/// clients before each request, so each response is judged against what was running when
/// its request began.
type Phase = Arc<AtomicUsize>;

/// What a client sends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Client {
    /// Requests through the proxy; the answer is the body, the upstream's name.
    Proxy,
    /// Admin API writes, each of a resource of its own; the answer is its id.
    AdminWrites,
    AdminReads,
}

/// What one client thread saw.
#[derive(Default)]
struct Tally {
    /// (phase when the request started, the answer or the id written) of each success.
    served: Vec<(usize, String)>,
    failures: Vec<String>,
}

/// Client threads sending requests back to back until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<(&'static str, Client, Arc<Mutex<Tally>>)>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(node: &Node, pylon: &Pylon, phase: &Phase) -> Load {
        let mut load = Load {
            stop: Arc::new(AtomicBool::new(false)),
            clients: Vec::new(),
            threads: Vec::new(),
        };
        let http = pylon.addr;
        // Several at once, so that connections are waiting in the accept queues whenever a
        // pylon lets go of its sockets.
        for name in [
            "new connections 1",
            "new connections 2",
            "new connections 3",
        ] {
            load.spawn(name, Client::Proxy, phase, move |_| new_connection(http));
        }
        load.spawn("kept-alive connection", Client::Proxy, phase, move |conn| {
            keep_alive(http, conn)
        });
        let (https, config) = (
            pylon.https_addr.unwrap(),
            client_config(node.ca.roots(), &["http/1.1"]),
        );
        load.spawn("https", Client::Proxy, phase, move |_| {
            match https_get(https, "example.com", config.clone(), "/r")? {
                res if res.status == 200 => Ok(res.body),
                res => Err(format!("{} {}", res.status, res.body)),
            }
        });
        if let Some(addr) = pylon.admin {
            let mut written = 0;
            load.spawn("admin writes", Client::AdminWrites, phase, move |_| {
                // A moment between writes leaves room for the test's own: each write is checked
                // against the whole configuration, so one made while another commits is tried
                // again.
                std::thread::sleep(ADMIN_PAUSE);
                written += 1;
                admin_write(addr, &format!("w{written}"))
            });
            load.spawn(
                "admin reads on a kept-alive connection",
                Client::AdminReads,
                phase,
                move |conn| admin_read_kept_alive(addr, conn),
            );
        }
        load
    }

    /// Runs `request` in a loop; it returns what it was answered, or why it failed.
    fn spawn(
        &mut self,
        name: &'static str,
        client: Client,
        phase: &Phase,
        mut request: impl FnMut(&mut Option<Conn>) -> Result<String, String> + Send + 'static,
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
                    Ok(answer) => tally.served.push((started_in, answer)),
                    Err(e) => tally.failures.push(e),
                }
            }
        }));
        self.clients.push((name, client, tally));
    }

    /// Waits until every client has had `n` answers to requests begun in `phase`.
    fn wait_for(&self, phase: usize, n: usize) {
        for (name, _, tally) in &self.clients {
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
                &format!("{name}: {n} answers in phase {phase}"),
            );
        }
    }

    fn stop(self) -> Tallies {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads {
            thread.join().unwrap();
        }
        Tallies(
            self.clients
                .into_iter()
                .map(|(name, client, tally)| {
                    (name, client, std::mem::take(&mut *tally.lock().unwrap()))
                })
                .collect(),
        )
    }
}

/// What every client saw.
struct Tallies(Vec<(&'static str, Client, Tally)>);

impl Tallies {
    /// Asserts that no request failed, that each was answered by a pylon running when it
    /// began (`answers[phase]`: the upstreams that may answer, `|`-separated), and that every
    /// admin write is in the store `newest` serves.
    fn assert_all_served(&self, answers: &[&str], node: &Node, newest: &Pylon) {
        let stored = node.has_admin().then(|| {
            let listing = admin(
                newest.admin.unwrap(),
                ADMIN_KEY,
                "GET",
                "/apisix/admin/upstreams",
                None,
            )
            .json();
            listing["list"]
                .as_array()
                .unwrap()
                .iter()
                .map(|item| {
                    item["value"]["desc"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect::<Vec<_>>()
        });
        for (name, client, tally) in &self.0 {
            assert!(tally.failures.is_empty(), "{name}: {:?}", tally.failures);
            for (phase, answer) in &tally.served {
                match client {
                    Client::Proxy => assert!(
                        answers[*phase].split('|').any(|a| a == answer),
                        "{name}: a request begun in phase {phase} was answered by {answer:?}"
                    ),
                    Client::AdminWrites => assert!(
                        stored.as_ref().unwrap().contains(answer),
                        "{name}: the write of {answer}, acknowledged in phase {phase}, is lost"
                    ),
                    Client::AdminReads => {}
                }
            }
            eprintln!("{name}: {} requests", tally.served.len());
        }
    }
}

/// One request on a connection of its own.
fn new_connection(addr: SocketAddr) -> Result<String, String> {
    let mut conn = Conn::try_connect(addr).map_err(|e| format!("connect: {e}"))?;
    conn.stream
        .write_all(b"GET /r HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let res = conn.read_response().map_err(|e| format!("read: {e}"))?;
    answered(res.status, res.text())
}

/// One request on the kept-alive connection `conn` (opened when there is none, or when the
/// last response said `Connection: close`). Strict: a request the server cuts off, even one on
/// a connection that has been idle, is a failure, although clients may retry those (RFC 9112
/// §9.3.1): a draining pylon waits a moment for a request on its way before closing.
fn keep_alive(addr: SocketAddr, conn: &mut Option<Conn>) -> Result<String, String> {
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
    answered(res.status, res.text())
}

fn answered(status: u16, body: String) -> Result<String, String> {
    match status {
        200 => Ok(body),
        _ => Err(format!("{status} {body}")),
    }
}

/// What the admin clients write to `upstreams/<id>`: the id is the description, so that the
/// listing shows which writes it holds.
fn upstream_body(id: &str) -> serde_json::Value {
    json!({"nodes": {"127.0.0.1:9": 1}, "desc": id})
}

/// Creates the upstream `id` through the Admin API, on a connection of its own.
fn admin_write(addr: SocketAddr, id: &str) -> Result<String, String> {
    let path = format!("/apisix/admin/upstreams/{id}");
    let res = try_admin(addr, ADMIN_KEY, "PUT", &path, Some(&upstream_body(id)))
        .map_err(|e| format!("PUT {id}: {e}"))?;
    created(id, res.status, &res.text())
}

/// Reads the route through the Admin API on the kept-alive connection `conn`, as
/// [`keep_alive`] does through the proxy.
fn admin_read_kept_alive(addr: SocketAddr, conn: &mut Option<Conn>) -> Result<String, String> {
    let reused = conn.is_some();
    let mut current = match conn.take() {
        Some(conn) => conn,
        None => Conn::try_connect(addr).map_err(|e| format!("connect: {e}"))?,
    };
    let request = format!(
        "GET /apisix/admin/routes/r HTTP/1.1\r\nHost: admin\r\nX-API-KEY: {ADMIN_KEY}\r\n\r\n"
    );
    let res = current
        .stream
        .write_all(request.as_bytes())
        .and_then(|()| current.read_response())
        .map_err(|e| format!("kept-alive connection (reused: {reused}): {e}"))?;
    if res.header("connection") != Some("close") {
        *conn = Some(current);
    }
    answered(res.status, res.text())
}

fn created(id: &str, status: u16, body: &str) -> Result<String, String> {
    match status {
        201 => Ok(id.to_owned()),
        _ => Err(format!("PUT {id}: {status} {body}")),
    }
}
