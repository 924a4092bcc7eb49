//! HelloTalk's frames (crates/frames/README.md) for the framed-protocol tests: the frame
//! codec of a test client, the protocol configuration the tests use, the frames counters
//! of the metrics listener, and a WebSocket client of a bridged route.

use std::collections::{BTreeMap, HashSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::upstream::Received;
use super::{client, Pylon, WAIT};

/// The error frames' commands.
pub const ON_ERROR: u16 = 65535;
pub const UNKNOWN_COMMAND: u16 = 65534;

/// A frame of HelloTalk's layout (crates/frames/README.md): the header, big-endian, is the
/// body's length (u32), the command (u16), the sequence id (u32), the version (u8), flags
/// (u8), the user id (u32) and 4 reserved bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub command: u16,
    pub sequence: u32,
    pub version: u8,
    pub flags: u8,
    pub user_id: u32,
    pub body: Vec<u8>,
}

pub const HEADER: usize = 20;

impl Frame {
    pub fn new(command: u16, sequence: u32, body: &[u8]) -> Frame {
        Frame {
            command,
            sequence,
            version: 1,
            flags: 0x80,
            user_id: 123_456,
            body: body.to_vec(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![0x09];
        bytes.extend_from_slice(&(self.body.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&self.command.to_be_bytes());
        bytes.extend_from_slice(&self.sequence.to_be_bytes());
        bytes.extend_from_slice(&[self.version, self.flags]);
        bytes.extend_from_slice(&self.user_id.to_be_bytes());
        bytes.extend_from_slice(&[0; 4]);
        bytes.extend_from_slice(&self.body);
        bytes.push(0x0a);
        bytes
    }

    /// A frame from a header and the body and end marker after it.
    pub fn decode(header: &[u8; HEADER], rest: &[u8]) -> Frame {
        let be32 = |at: usize| u32::from_be_bytes(header[at..at + 4].try_into().unwrap());
        assert_eq!(header[16..], [0; 4], "reserved header bytes are zeros");
        assert_eq!(rest.last(), Some(&0x0a), "the end marker");
        Frame {
            command: u16::from_be_bytes([header[4], header[5]]),
            sequence: be32(6),
            version: header[10],
            flags: header[11],
            user_id: be32(12),
            body: rest[..rest.len() - 1].to_vec(),
        }
    }

    /// A whole frame, as one WebSocket message holds it.
    pub fn from_bytes(bytes: &[u8]) -> Frame {
        assert_eq!(bytes.first(), Some(&0x09), "the start marker");
        let header: [u8; HEADER] = bytes[1..=HEADER].try_into().expect("a whole header");
        Frame::decode(&header, &bytes[HEADER + 1..])
    }

    /// An error frame as the protocol below configures them: its command, the sequence id
    /// it answers, `version` 1 and every other header field zero, no body.
    pub fn error(command: u16, sequence: u32) -> Frame {
        Frame {
            command,
            sequence,
            version: u8::from(command == ON_ERROR),
            flags: 0,
            user_id: 0,
            body: Vec::new(),
        }
    }
}

/// HelloTalk's protocol with `commands`, error frames for failed calls (65535, `version` 1)
/// and unknown commands (65534), and `extra` fields.
pub fn protocol(commands: Value, extra: Value) -> Value {
    let mut conf = json!({
        "layout": {
            "start": "09", "end": "0a", "header_length": 20,
            "body_length": {"offset": 0, "width": 4},
            "command": {"offset": 4, "width": 2},
            "sequence": {"offset": 6, "width": 4},
            "fields": {
                "version": {"offset": 10, "width": 1},
                "flags": {"offset": 11, "width": 1},
                "user_id": {"offset": 12, "width": 4}
            }
        },
        "on_error": {"action": "error_frame", "command": ON_ERROR, "fields": {"version": 1}},
        "unknown_command": {"action": "error_frame", "command": UNKNOWN_COMMAND},
        "commands": commands,
    });
    for (field, value) in extra.as_object().unwrap() {
        conf[field] = value.clone();
    }
    json!({"name": "pylon-frames", "conf": conf})
}

pub const STREAM_LISTENER: &str = "  stream:\n    tcp:\n      - addr: \"127.0.0.1:0\"\n";

/// The messages of the IM service's `send` command.
pub const IM_PROTO: &str = r#"syntax = "proto3";
package im;
message SendReq { uint32 to = 1; string text = 2; repeated string tags = 3; }
message SendResp { uint64 id = 1; string status = 2; }
"#;

/// The frames counters a scrape of the metrics listener shows, by series
/// (`pylon_frames_errors_total{reason="bad_end"}`).
pub fn frame_metrics(pylon: &Pylon) -> BTreeMap<String, f64> {
    let res = client::get(pylon.metrics.unwrap(), "localhost", "/metrics");
    assert_eq!(res.status, 200, "{}", res.text());
    res.text()
        .lines()
        .filter(|line| line.starts_with("pylon_frames"))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// Waits (bounded) until the metrics show `expected` for each of its series.
pub fn wait_frame_metrics(pylon: &Pylon, expected: &[(&str, f64)]) {
    let mut seen = BTreeMap::new();
    let matches = |seen: &BTreeMap<String, f64>| {
        (expected.iter()).all(|(series, value)| seen.get(*series) == Some(value))
    };
    let deadline = Instant::now() + WAIT;
    while !matches(&seen) {
        assert!(
            Instant::now() < deadline,
            "frames metrics {seen:?}, wanted {expected:?}"
        );
        seen = frame_metrics(pylon);
    }
}

pub fn errors(reason: &str) -> String {
    format!("pylon_frames_errors_total{{reason=\"{reason}\"}}")
}

pub fn frames(direction: &str) -> String {
    format!("pylon_frames_total{{direction=\"{direction}\"}}")
}

/// Requests held until the test releases them by sequence id.
#[derive(Default)]
pub struct Gate {
    released: Mutex<HashSet<String>>,
    changed: Condvar,
}

impl Gate {
    pub fn release(&self, sequence: u32) {
        self.released.lock().unwrap().insert(sequence.to_string());
        self.changed.notify_all();
    }

    /// Waits (bounded) until `request`'s sequence id is released.
    pub fn wait(&self, request: &Received) -> bool {
        let sequence = request.header("x-frame-sequence").unwrap_or_default();
        let released = self.released.lock().unwrap();
        let (released, _) = self
            .changed
            .wait_timeout_while(released, WAIT, |released| !released.contains(sequence))
            .unwrap();
        released.contains(sequence)
    }
}

/// The address frame clients connect from: a loopback address of their own, so that the
/// logs and plugins that see it cannot mistake it for the gateway's.
pub const CLIENT_IP: [u8; 4] = [127, 0, 0, 2];

/// A framed-protocol client on a blocking socket, from [`CLIENT_IP`] (or another loopback
/// address).
pub struct FrameClient {
    pub stream: TcpStream,
}

impl FrameClient {
    pub fn connect(addr: SocketAddr) -> FrameClient {
        Self::connect_from(addr, CLIENT_IP.into())
    }

    pub fn connect_from(addr: SocketAddr, from: IpAddr) -> FrameClient {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket.bind(&SocketAddr::new(from, 0).into()).unwrap();
        socket.connect(&addr.into()).unwrap();
        let stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        FrameClient { stream }
    }

    pub fn send(&mut self, frame: &Frame) {
        self.send_raw(&frame.encode());
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The next frame, or `None` when the gateway closed the connection.
    pub fn read(&mut self) -> Option<Frame> {
        let mut header = [0u8; HEADER + 1];
        match self.stream.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if is_closed(&e) => return None,
            Err(e) => panic!("reading a frame: {e}"),
        }
        assert_eq!(header[0], 0x09, "the start marker");
        let header: [u8; HEADER] = header[1..].try_into().unwrap();
        let length = u32::from_be_bytes(header[..4].try_into().unwrap()) as usize;
        let mut rest = vec![0; length + 1];
        self.stream.read_exact(&mut rest).expect("a whole frame");
        Some(Frame::decode(&header, &rest))
    }

    pub fn answer(&mut self) -> Frame {
        self.read().expect("an answer frame")
    }

    /// Asserts that the gateway closes the connection with nothing more to read.
    pub fn assert_closed(&mut self) {
        let mut byte = [0u8; 1];
        match self.stream.read(&mut byte) {
            Ok(0) => {}
            Ok(_) => panic!("a byte after the last frame: {byte:?}"),
            Err(e) if is_closed(&e) => {}
            Err(e) => panic!("the connection is still open: {e}"),
        }
    }
}

fn is_closed(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
    )
}

/// The stream listener's address, from pylon's startup lines.
pub fn stream_addr(pylon: &Pylon) -> SocketAddr {
    let line = pylon
        .startup
        .iter()
        .find_map(|line| line.strip_prefix("pylon: stream listening on tcp://"))
        .unwrap_or_else(|| panic!("no stream listener in {:?}", pylon.startup));
    line.parse().unwrap()
}

/// `im.SendResp` of [`IM_PROTO`], as a client decodes it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SendResp {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(string, tag = "2")]
    pub status: String,
}

/// A WebSocket client.
pub type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket to `path` on `pylon`'s proxy listener, upgraded.
pub async fn connect_ws(pylon: &Pylon, path: &str) -> Ws {
    let url = format!("ws://{}{path}", pylon.addr);
    let (ws, response) = tokio_tungstenite::connect_async(url)
        .await
        .expect("the upgrade is answered");
    assert_eq!(response.status(), 101);
    ws
}

/// The next message that carries data (the WebSocket layer answers pings on its own).
pub async fn next_message(ws: &mut Ws) -> Message {
    let message = tokio::time::timeout(WAIT, ws.next()).await;
    message
        .expect("a message within the wait")
        .expect("the WebSocket is open")
        .expect("a message")
}
