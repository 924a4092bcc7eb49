//! A minimal HTTP/1.1 client for `propagation`: one kept-alive connection, one request at a
//! time, each response read to its end (by `Content-Length`, chunked, or to the close), so that
//! the next request can follow on the same connection. It connects again when the server has
//! closed the connection.

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub struct Client {
    addr: SocketAddr,
    /// Sent as `Host` and after it, each line ending in CRLF (e.g. an API key).
    headers: String,
    conn: Option<BufReader<TcpStream>>,
}

pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Client {
    /// `extra_headers`: whole header lines, each ending in `\r\n`.
    pub fn new(addr: SocketAddr, host: &str, extra_headers: &str) -> Client {
        Client {
            addr,
            headers: format!("Host: {host}\r\n{extra_headers}"),
            conn: None,
        }
    }

    /// Drops the connection, e.g. after a request was abandoned halfway.
    pub fn reset(&mut self) {
        self.conn = None;
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<Response, String> {
        let mut request = format!("{method} {path} HTTP/1.1\r\n{}", self.headers);
        if !body.is_empty() {
            request.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        request.push_str("\r\n");
        let mut request = request.into_bytes();
        request.extend_from_slice(body);
        // A kept-alive connection the server closed while idle fails the next request on it
        // before any answer: that one request is retried once on a new connection.
        let reused = self.conn.is_some();
        match self.exchange(&request).await {
            Err(e) if reused && e.before_answer => {
                self.conn = None;
                self.exchange(&request).await
            }
            other => other,
        }
        .map_err(|e| e.message)
    }

    async fn exchange(&mut self, request: &[u8]) -> Result<Response, Failure> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => {
                let tcp = TcpStream::connect(self.addr)
                    .await
                    .map_err(|e| Failure::before_answer(format!("{}: {e}", self.addr)))?;
                tcp.set_nodelay(true)
                    .map_err(|e| Failure::before_answer(e.to_string()))?;
                self.conn.insert(BufReader::new(tcp))
            }
        };
        let outcome = exchange_on(conn, request).await;
        if !matches!(outcome, Ok((_, true))) {
            self.conn = None;
        }
        outcome.map(|(response, _)| response)
    }
}

struct Failure {
    message: String,
    /// Nothing of a response had arrived: the request may be sent again.
    before_answer: bool,
}

impl Failure {
    fn before_answer(message: String) -> Failure {
        Failure {
            message,
            before_answer: true,
        }
    }

    fn after_answer(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            before_answer: false,
        }
    }
}

/// Sends `request`, reads the response; the flag says whether the connection can be reused.
async fn exchange_on(
    conn: &mut BufReader<TcpStream>,
    request: &[u8],
) -> Result<(Response, bool), Failure> {
    conn.get_mut()
        .write_all(request)
        .await
        .map_err(|e| Failure::before_answer(e.to_string()))?;
    let mut line = Vec::new();
    let status_line = match conn.read_until(b'\n', &mut line).await {
        Ok(0) => return Err(Failure::before_answer("closed before answering".into())),
        Ok(_) => String::from_utf8_lossy(&line).into_owned(),
        Err(e) => return Err(Failure::before_answer(e.to_string())),
    };
    let mut words = status_line.split_whitespace();
    let (version, status) = (words.next(), words.next().and_then(|s| s.parse().ok()));
    let (Some(version @ ("HTTP/1.1" | "HTTP/1.0")), Some(status)) = (version, status) else {
        return Err(Failure::after_answer(format!(
            "bad status line {status_line:?}"
        )));
    };
    // HTTP/1.0 closes unless told otherwise; 1.1 keeps the connection unless told otherwise.
    let (mut length, mut chunked, mut keep) = (None, false, version == "HTTP/1.1");
    loop {
        line.clear();
        conn.read_until(b'\n', &mut line)
            .await
            .map_err(|e| Failure::after_answer(e.to_string()))?;
        let header = String::from_utf8_lossy(&line);
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            return Err(Failure::after_answer(format!("bad header {header:?}")));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| Failure::after_answer(format!("bad Content-Length {value:?}")))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            keep = value.eq_ignore_ascii_case("keep-alive");
        }
    }
    let read_err = |e: std::io::Error| Failure::after_answer(e.to_string());
    let mut body = Vec::new();
    if matches!(status, 100..=199 | 204 | 304) {
        // No body.
    } else if chunked {
        loop {
            line.clear();
            conn.read_until(b'\n', &mut line).await.map_err(read_err)?;
            let size = String::from_utf8_lossy(&line);
            let size = size.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| Failure::after_answer(format!("bad chunk size {size:?}")))?;
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    line.clear();
                    conn.read_until(b'\n', &mut line).await.map_err(read_err)?;
                    if line == b"\r\n" || line.is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size + 2, 0);
            conn.read_exact(&mut body[start..])
                .await
                .map_err(read_err)?;
            body.truncate(start + size);
        }
    } else if let Some(length) = length {
        body.resize(length, 0);
        conn.read_exact(&mut body).await.map_err(read_err)?;
    } else {
        conn.read_to_end(&mut body).await.map_err(read_err)?;
        keep = false;
    }
    Ok((Response { status, body }, keep))
}
