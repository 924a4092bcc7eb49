//! A raw HTTP/1.1 client over std sockets: requests are written byte for byte and responses
//! parsed strictly, so tests see exactly what the gateway sent.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::WAIT;

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Interim (1xx) responses received before this one.
    pub interim: Vec<u16>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// One client connection.
pub struct Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub fn connect(addr: SocketAddr) -> Conn {
        Self::try_connect(addr).unwrap()
    }

    /// For tests where connecting may fail and that is what they count.
    pub fn try_connect(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, WAIT)?;
        stream.set_read_timeout(Some(WAIT))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
        })
    }

    pub fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).unwrap();
    }

    /// Reads one response to a request with method `method` (HEAD responses have no body).
    pub fn read_response_to(&mut self, method: &str) -> std::io::Result<Response> {
        let mut interim = Vec::new();
        loop {
            let (status, headers, head_len) = loop {
                let mut storage = [httparse::EMPTY_HEADER; 64];
                let mut res = httparse::Response::new(&mut storage);
                match res.parse(&self.buf) {
                    Ok(httparse::Status::Complete(len)) => {
                        let headers = res
                            .headers
                            .iter()
                            .map(|h| {
                                (
                                    h.name.to_owned(),
                                    String::from_utf8_lossy(h.value).into_owned(),
                                )
                            })
                            .collect::<Vec<_>>();
                        break (res.code.unwrap(), headers, len);
                    }
                    Ok(httparse::Status::Partial) => self.fill()?,
                    Err(e) => {
                        return Err(std::io::Error::new(
                            ErrorKind::InvalidData,
                            format!("bad response head: {e}"),
                        ))
                    }
                }
            };
            self.buf.drain(..head_len);
            if (100..200).contains(&status) {
                interim.push(status);
                continue;
            }
            let mut response = Response {
                status,
                headers,
                body: Vec::new(),
                interim,
            };
            let chunked = response
                .header("transfer-encoding")
                .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
            let length = response
                .header("content-length")
                .map(|v| v.trim().parse::<usize>().unwrap());
            if method == "HEAD" || status == 204 || status == 304 {
            } else if chunked {
                response.body = self.read_chunked()?;
            } else if let Some(n) = length {
                while self.buf.len() < n {
                    self.fill()?;
                }
                response.body = self.buf.drain(..n).collect();
            } else {
                loop {
                    match self.fill() {
                        Ok(()) => {}
                        Err(e) if e.kind() == ErrorKind::UnexpectedEof => break,
                        Err(e) => return Err(e),
                    }
                }
                response.body = std::mem::take(&mut self.buf);
            }
            return Ok(response);
        }
    }

    pub fn read_response(&mut self) -> std::io::Result<Response> {
        self.read_response_to("GET")
    }

    /// Sends `raw` and reads the response.
    pub fn request(&mut self, raw: &[u8]) -> Response {
        self.send(raw);
        let method = std::str::from_utf8(raw)
            .unwrap_or("")
            .split(' ')
            .next()
            .unwrap_or("")
            .to_owned();
        self.read_response_to(&method).unwrap()
    }

    /// True when the server closed the connection (EOF or reset) within [`WAIT`].
    pub fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match self.stream.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        }
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    fn read_line(&mut self) -> std::io::Result<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).collect();
                return Ok(String::from_utf8_lossy(&line[..i]).into_owned());
            }
            self.fill()?;
        }
    }

    fn read_chunked(&mut self) -> std::io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line()?;
            let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16).map_err(
                |_| std::io::Error::new(ErrorKind::InvalidData, format!("bad chunk size {line:?}")),
            )?;
            if size == 0 {
                while !self.read_line()?.is_empty() {}
                return Ok(body);
            }
            while self.buf.len() < size + 2 {
                self.fill()?;
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
        }
    }
}

/// A GET with `Host: host` on a new connection.
pub fn get(addr: SocketAddr, host: &str, target: &str) -> Response {
    Conn::connect(addr).request(format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
}

/// Sends `raw` on a new connection and reads one response.
pub fn raw(addr: SocketAddr, raw: &[u8]) -> Response {
    Conn::connect(addr).request(raw)
}

/// One Admin API request, presenting `key`, with a JSON body if given.
pub fn admin(
    addr: SocketAddr,
    key: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Response {
    try_admin(addr, key, method, path, body)
        .unwrap_or_else(|e| panic!("{method} {path} on the Admin API at {addr}: {e}"))
}

/// [`admin`], for tests where the node may be gone and that is what they count.
pub fn try_admin(
    addr: SocketAddr,
    key: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> std::io::Result<Response> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut conn = Conn::try_connect(addr)?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nX-API-KEY: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.stream.write_all(request.as_bytes())?;
    conn.read_response()
}

/// A short pause for things that must not happen (no timing is asserted).
pub fn settle() {
    std::thread::sleep(Duration::from_millis(50));
}

// === raw reads, for tests that check bytes as they arrive ===

impl Conn {
    /// Reads until `needle` has arrived; returns everything up to and including it, raw, and
    /// keeps what came after it for the next read.
    pub fn read_until(&mut self, needle: &[u8]) -> std::io::Result<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.windows(needle.len()).position(|w| w == needle) {
                return Ok(self.buf.drain(..i + needle.len()).collect());
            }
            self.fill()?;
        }
    }

    /// Reads exactly `n` raw bytes.
    pub fn read_raw(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        while self.buf.len() < n {
            self.fill()?;
        }
        Ok(self.buf.drain(..n).collect())
    }
}
