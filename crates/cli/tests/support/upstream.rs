//! Real upstream servers for the gateway to proxy to: HTTP/1.1 with keep-alive on std sockets,
//! one thread per connection, recording every request they get.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub target: String,
    pub version: u8,
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// Whether the body came chunked.
    pub chunked: bool,
    /// Which connection (numbered from 0) carried it.
    pub connection: usize,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
}

/// Writes a whole response for a request; returning false closes the connection.
pub type Handler = Arc<dyn Fn(&Received, &mut TcpStream) -> bool + Send + Sync>;

pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    received: Arc<Mutex<Vec<Received>>>,
    connections: Arc<AtomicUsize>,
    stopped: Arc<AtomicBool>,
}

impl Upstream {
    /// The last request this upstream received.
    pub fn last(&self) -> Received {
        self.received().pop().expect("the upstream got a request")
    }

    /// Answers every request `200` with body `name` and header `X-Upstream: name`.
    pub fn start(name: &str) -> Upstream {
        let reply_name = name.to_owned();
        Self::with_handler(
            name,
            Arc::new(move |_, stream| {
                respond(
                    stream,
                    200,
                    &[("X-Upstream", &reply_name)],
                    reply_name.as_bytes(),
                );
                true
            }),
        )
    }

    pub fn with_handler(name: &str, handler: Handler) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        Self::serve(name, listener, handler)
    }

    /// Serves on an address chosen by the test (to bring a node back on the same port).
    pub fn on(addr: SocketAddr, name: &str, handler: Handler) -> Upstream {
        let listener = TcpListener::bind(addr).unwrap();
        Self::serve(name, listener, handler)
    }

    fn serve(name: &str, listener: TcpListener, handler: Handler) -> Upstream {
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let stopped = Arc::new(AtomicBool::new(false));
        let (r, c, s) = (received.clone(), connections.clone(), stopped.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let id = c.fetch_add(1, Ordering::SeqCst);
                let (r, h, s) = (r.clone(), handler.clone(), s.clone());
                std::thread::spawn(move || serve_connection(stream, id, &r, &h, &s));
            }
        });
        Upstream {
            addr,
            name: name.to_owned(),
            received,
            connections,
            stopped,
        }
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// Connections accepted so far.
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// `"host:port": weight` for a nodes map.
    pub fn node(&self) -> String {
        format!("\"{}\": 1", self.addr)
    }

    /// Stops accepting and closes the listener.
    pub fn stop(self) {}
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag and drops the listener.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn serve_connection(
    mut stream: TcpStream,
    id: usize,
    received: &Mutex<Vec<Received>>,
    handler: &Handler,
    stopped: &AtomicBool,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = Vec::new();
    loop {
        let Some(request) = read_request(&mut stream, &mut buf, id) else {
            return;
        };
        if stopped.load(Ordering::SeqCst) {
            return;
        }
        received.lock().unwrap().push(request.clone());
        if !handler(&request, &mut stream) {
            return;
        }
    }
}

fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>, connection: usize) -> Option<Received> {
    let (mut request, head_len, length, chunked) = loop {
        let mut storage = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut storage);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(len)) => {
                let headers: Vec<(String, String)> = req
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_owned(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                let find = |n: &str| {
                    headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(n))
                        .map(|(_, v)| v.clone())
                };
                let chunked = find("transfer-encoding")
                    .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
                let length = find("content-length")
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                let request = Received {
                    method: req.method.unwrap().to_owned(),
                    target: req.path.unwrap().to_owned(),
                    version: req.version.unwrap(),
                    headers,
                    body: Vec::new(),
                    chunked,
                    connection,
                };
                break (request, len, length, chunked);
            }
            Ok(httparse::Status::Partial) => fill(stream, buf)?,
            Err(_) => return None,
        }
    };
    buf.drain(..head_len);
    if chunked {
        loop {
            let line = read_line(stream, buf)?;
            let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
            if size == 0 {
                while !read_line(stream, buf)?.is_empty() {}
                break;
            }
            while buf.len() < size + 2 {
                fill(stream, buf)?;
            }
            request.body.extend(buf.drain(..size));
            buf.drain(..2);
        }
    } else {
        while buf.len() < length {
            fill(stream, buf)?;
        }
        request.body = buf.drain(..length).collect();
    }
    Some(request)
}

fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 16 * 1024];
    match stream.read(&mut chunk) {
        Ok(0) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
        Err(e) if e.kind() == ErrorKind::Interrupted => Some(()),
        Err(_) => None,
    }
}

fn read_line(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            let line: Vec<u8> = buf.drain(..i + 2).collect();
            return Some(String::from_utf8_lossy(&line[..i]).into_owned());
        }
        fill(stream, buf)?;
    }
}

/// Writes a complete response with a Content-Length body.
pub fn respond(stream: &mut TcpStream, status: u16, headers: &[(&str, &str)], body: &[u8]) {
    let mut out = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    let _ = stream.write_all(&bytes);
}

/// The handler [`Upstream::start`] uses: `200`, body `name`, header `X-Upstream: name`; for
/// bringing a node back with [`Upstream::on`].
pub fn named(name: &str) -> Handler {
    let name = name.to_owned();
    Arc::new(move |_, stream| {
        respond(stream, 200, &[("X-Upstream", &name)], name.as_bytes());
        true
    })
}

/// A latch that handlers wait on to hold a request until the test opens it. The wait is
/// bounded by [`super::WAIT`], so a failing test cannot leave a thread behind for ever.
#[derive(Clone, Default)]
pub struct Gate(Arc<AtomicBool>);

impl Gate {
    pub fn open(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn wait(&self) {
        let deadline = std::time::Instant::now() + super::WAIT;
        while !self.0.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
