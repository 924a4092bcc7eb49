//! The two ends of an L4 (stream) connection through the gateway: an upstream that echoes
//! whatever each connection sends and keeps it, and a blocking client.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use super::client::get;
use super::receivers::Connection;
use super::{wait_until, Pylon, WAIT};

/// An upstream that echoes each connection's bytes as they come and, once the client's side
/// has ended, sends its name and closes: an answer that ends in the name shows the client's
/// half-close went through and the answer after it came back.
pub struct EchoUpstream {
    pub addr: SocketAddr,
    pub name: String,
    connections: Arc<Mutex<Vec<Connection>>>,
    stopped: Arc<AtomicBool>,
}

impl EchoUpstream {
    pub fn start(name: &str) -> EchoUpstream {
        Self::on(SocketAddr::from(([127, 0, 0, 1], 0)), name)
    }

    /// Listens on `addr` (to bring an upstream up where one was expected).
    pub fn on(addr: SocketAddr, name: &str) -> EchoUpstream {
        let listener = TcpListener::bind(addr).unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(Mutex::new(Vec::new()));
        let stopped = Arc::new(AtomicBool::new(false));
        let (all, stop, own_name) = (connections.clone(), stopped.clone(), name.to_owned());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let index = {
                    let mut all = all.lock().unwrap();
                    all.push(Connection::default());
                    all.len() - 1
                };
                let (all, name) = (all.clone(), own_name.clone());
                std::thread::spawn(move || echo(stream, &name, index, &all));
            }
        });
        EchoUpstream {
            addr,
            name: name.to_owned(),
            connections,
            stopped,
        }
    }

    /// Every connection so far, in the order they came.
    pub fn connections(&self) -> Vec<Connection> {
        self.connections.lock().unwrap().clone()
    }

    /// What a client that sent `sent` and then ended its side hears back.
    pub fn answer(&self, sent: &[u8]) -> Vec<u8> {
        [sent, self.name.as_bytes()].concat()
    }
}

/// Echoes `stream` into connection `index` until the client's end, then says `name`.
fn echo(mut stream: TcpStream, name: &str, index: usize, all: &Mutex<Vec<Connection>>) {
    let mut chunk = [0; 16 * 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => {
                let _ = stream.write_all(name.as_bytes());
                break;
            }
            Ok(n) => {
                // Kept before it is echoed: a client that has its echo finds it kept.
                all.lock().unwrap()[index]
                    .bytes
                    .extend_from_slice(&chunk[..n]);
                if stream.write_all(&chunk[..n]).is_err() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
    all.lock().unwrap()[index].closed = true;
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag and drops the listener.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

// === the client ===

/// A connection to `addr` whose reads give up after [`WAIT`].
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
}

/// Sends `bytes` on a new connection to `addr`, ends the sending side and reads until the
/// gateway closes: everything that came back.
pub fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    exchange_on(connect(addr), bytes)
}

/// [`exchange`] on a connection already open. The bytes are sent while the answer is read,
/// so that an echo of any size flows.
pub fn exchange_on(mut stream: TcpStream, bytes: &[u8]) -> Vec<u8> {
    let mut writer = stream.try_clone().unwrap();
    let sent = bytes.to_vec();
    let sending = std::thread::spawn(move || {
        writer.write_all(&sent)?;
        writer.shutdown(Shutdown::Write)
    });
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    let written = sending.join().unwrap();
    read.unwrap_or_else(|e| panic!("reading the answer ({} bytes so far): {e}", answer.len()));
    written.unwrap_or_else(|e| panic!("sending: {e}"));
    answer
}

/// Whether the gateway closes a new connection to `addr` that sends `bytes`, without a byte
/// of answer.
pub fn closed_unanswered(addr: SocketAddr, bytes: &[u8]) -> bool {
    let mut stream = connect(addr);
    // The gateway may close before it reads a byte: a failed write is a closed connection too.
    let _ = stream.write_all(bytes);
    is_closed_unanswered(&mut stream)
}

/// Whether `stream` is closed by its other end (within [`WAIT`]) with nothing more to read.
pub fn is_closed_unanswered(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(n) => n == 0,
        // A reset (the gateway closed with the client's bytes unread) closes it too; a timeout
        // does not.
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// A standalone config of stream `routes` (JSON is YAML).
pub fn config(routes: &[Value]) -> String {
    format!("stream_routes: {}\n", Value::from(routes.to_vec()))
}

/// A round-robin upstream over `nodes`, with `extra` fields (a `scheme`, say).
pub fn round_robin(nodes: &[SocketAddr], extra: Value) -> Value {
    let nodes: serde_json::Map<String, Value> =
        nodes.iter().map(|n| (n.to_string(), json!(1))).collect();
    let mut upstream = json!({"type": "roundrobin", "nodes": nodes});
    if let (Some(upstream), Value::Object(extra)) = (upstream.as_object_mut(), extra) {
        upstream.extend(extra);
    }
    upstream
}

/// The `i`th stream listener's address.
pub fn listener(pylon: &Pylon, i: usize) -> SocketAddr {
    pylon.stream_addrs[i].1
}

/// The first access log line `matches` picks, once written (bounded wait).
fn logged(pylon: &Pylon, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
    wait_until(|| pylon.access_log().iter().any(&matches), what);
    pylon.access_log().into_iter().find(matches).unwrap()
}

/// The line of the connection or session that `route` ended with `status`.
pub fn logged_as(pylon: &Pylon, route: Option<&str>, status: u16) -> Value {
    logged(
        pylon,
        &format!("a log line of route {route:?} with status {status}"),
        |line| line["route_id"].as_str() == route && line["status"] == status,
    )
}

/// Whether the metrics listener reports `sample` (a whole line of the exposition).
pub fn reports(pylon: &Pylon, sample: &str) -> bool {
    let metrics = pylon.metrics.expect("a metrics listener");
    let text = get(metrics, "localhost", "/apisix/prometheus/metrics").text();
    text.lines().any(|line| line == sample)
}
