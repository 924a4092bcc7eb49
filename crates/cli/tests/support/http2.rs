//! HTTP/2 test clients: the `h2` crate with prior knowledge (h2c) or over TLS, and raw frames
//! for what a well-behaved client never sends.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::{RecvStream, SendStream};
use http::{HeaderMap, Request};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;

use super::WAIT;

/// A client connection: the handle to send requests on, and the task driving the connection,
/// which ends with the connection (with the GOAWAY's error, if any).
pub struct H2Conn {
    pub sender: SendRequest<Bytes>,
    pub driver: JoinHandle<Result<(), h2::Error>>,
}

/// An h2c connection with prior knowledge.
pub async fn connect(addr: SocketAddr) -> H2Conn {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    handshake(tcp).await
}

/// HTTP/2 over an established stream (TCP, or TLS that negotiated `h2`).
pub async fn handshake<IO>(io: IO) -> H2Conn
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = h2::client::handshake(io).await.unwrap();
    H2Conn {
        sender,
        driver: tokio::spawn(connection),
    }
}

/// A request for `path` on `example.com`.
pub fn request(method: &str, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(format!("http://example.com{path}"))
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub trailers: Option<HeaderMap>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Sends `request` with `body` (none if empty) and reads the whole reply.
pub async fn send(sender: &mut SendRequest<Bytes>, request: Request<()>, body: &[u8]) -> Reply {
    let mut ready = sender.clone().ready().await.unwrap();
    let (response, mut stream) = ready.send_request(request, body.is_empty()).unwrap();
    if !body.is_empty() {
        send_body(&mut stream, Bytes::copy_from_slice(body), true).await;
    }
    read_reply(response).await
}

/// Sends `data` as the peer's window allows. Stops when the peer closes the stream: a server
/// may answer a request it refuses, and reset its stream, before the body is all sent.
pub async fn send_body(stream: &mut SendStream<Bytes>, mut data: Bytes, end: bool) {
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        let granted = loop {
            if stream.capacity() > 0 {
                break stream.capacity();
            }
            match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return,
            }
        };
        let piece = data.split_to(granted.min(data.len()));
        if stream.send_data(piece, end && data.is_empty()).is_err() {
            return;
        }
    }
}

pub async fn read_reply(response: ResponseFuture) -> Reply {
    let response = tokio::time::timeout(WAIT, response)
        .await
        .expect("a response within WAIT")
        .unwrap();
    let (head, mut recv) = response.into_parts();
    let body = read_body(&mut recv).await;
    let trailers = recv.trailers().await.unwrap();
    Reply {
        status: head.status.as_u16(),
        headers: head.headers,
        body,
        trailers,
    }
}

/// Reads a body to its end, giving the window back as it goes.
pub async fn read_body(recv: &mut RecvStream) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(data) = tokio::time::timeout(WAIT, recv.data())
        .await
        .expect("body data within WAIT")
    {
        let data = data.unwrap();
        recv.flow_control().release_capacity(data.len()).unwrap();
        body.extend_from_slice(&data);
    }
    body
}

// === raw frames ===

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const CONTINUATION: u8 = 0x9;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
/// The flag on a DATA or HEADERS frame that ends its stream.
pub const END_STREAM: u8 = 0x1;
pub const REFUSED_STREAM: u32 = 0x7;
pub const CANCEL: u32 = 0x8;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY.
    pub fn error_code(&self) -> u32 {
        let at = if self.kind == GOAWAY { 4 } else { 0 };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }
}

/// A client that writes frames by hand, over a blocking socket.
pub struct RawH2 {
    stream: TcpStream,
}

impl RawH2 {
    /// Sends the preface and empty SETTINGS, and waits for (and acknowledges) the server's.
    pub fn connect(addr: SocketAddr) -> RawH2 {
        let mut stream = TcpStream::connect_timeout(&addr, WAIT).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .unwrap();
        let mut raw = RawH2 { stream };
        raw.write(&frame(SETTINGS, 0, 0, &[]));
        let settings = raw.next_frame().expect("the server's SETTINGS");
        assert_eq!(settings.kind, SETTINGS);
        raw
    }

    pub fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Opens the stream and connection windows as wide as HTTP/2 allows: what holds the
    /// server's writes back is then the socket alone.
    pub fn open_windows(&mut self) {
        let max_window = 0x7fff_ffff_u32;
        let mut initial_window_size = vec![0, 4];
        initial_window_size.extend_from_slice(&max_window.to_be_bytes());
        self.write(&frame(SETTINGS, 0, 0, &initial_window_size));
        // The connection's window is not set by SETTINGS, only grown from 65535.
        self.write(&frame(
            WINDOW_UPDATE,
            0,
            0,
            &(max_window - 65_535).to_be_bytes(),
        ));
    }

    /// The next frame, SETTINGS acknowledged on the way; `None` once the server closed.
    pub fn next_frame(&mut self) -> Option<Frame> {
        let mut head = [0u8; 9];
        self.stream.read_exact(&mut head).ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0; len];
        self.stream.read_exact(&mut payload).ok()?;
        let received = Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff,
            payload,
        };
        if received.kind == SETTINGS && received.flags & 1 == 0 {
            let _ = self.stream.write_all(&frame(SETTINGS, 1, 0, &[]));
        }
        Some(received)
    }

    /// Whether the server closed the connection (EOF or reset) within `within`, reading and
    /// dropping whatever it sends until then.
    pub fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut sink = [0u8; 16 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut sink) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return false
                }
                Err(_) => return true,
            }
        }
    }

    /// Reads frames until one matches; `None` if the connection ended first.
    pub fn until(&mut self, mut pred: impl FnMut(&Frame) -> bool) -> Option<Frame> {
        while let Some(frame) = self.next_frame() {
            if pred(&frame) {
                return Some(frame);
            }
        }
        None
    }
}

/// A frame: 9-byte header and payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A HEADERS frame for `GET path` on `example.com`, ending the stream (END_HEADERS and
/// END_STREAM).
pub fn get_headers(stream: u32, path: &str) -> Vec<u8> {
    frame(HEADERS, 0x4 | 0x1, stream, &get_block(path))
}

/// The header block of `GET path` on `example.com`, encoded without Huffman or indexing.
pub fn get_block(path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86]; // :method GET, :scheme http
    literal(&mut block, 4, path.as_bytes()); // :path
    literal(&mut block, 1, b"example.com"); // :authority
    block
}

/// A header block fragment of one `x-filler` field, for CONTINUATION frames.
pub fn filler_field() -> Vec<u8> {
    let mut block = vec![0x00, 8];
    block.extend_from_slice(b"x-filler");
    block.push(16);
    block.extend_from_slice(b"0123456789abcdef");
    block
}

/// A literal header field without indexing, its name from the static table.
fn literal(block: &mut Vec<u8>, name_index: u8, value: &[u8]) {
    assert!(value.len() < 127);
    block.push(name_index);
    block.push(value.len() as u8);
    block.extend_from_slice(value);
}

pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}
