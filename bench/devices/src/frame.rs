//! The TCP layout of pylon-push frames: a 9-byte header (u32 big-endian body length, u8
//! command, u32 big-endian sequence) and a JSON body. Public so that tests can craft frames,
//! good or broken, and read what a gateway answers.

use bytes::{Buf, Bytes, BytesMut};

/// Bytes of the header before each body.
pub const HEADER_LEN: usize = 9;

/// The default command numbers of the protocol.
pub mod command {
    pub const AUTH: u8 = 1;
    pub const AUTH_OK: u8 = 2;
    pub const PING: u8 = 3;
    pub const PONG: u8 = 4;
    pub const PUSH: u8 = 5;
    pub const ACK: u8 = 6;
    pub const RECONNECT: u8 = 7;
    pub const ERROR: u8 = 8;
}

/// The commands' names, the `"type"` of WebSocket text messages.
const NAMES: [(u8, &str); 8] = [
    (command::AUTH, "auth"),
    (command::AUTH_OK, "auth_ok"),
    (command::PING, "ping"),
    (command::PONG, "pong"),
    (command::PUSH, "push"),
    (command::ACK, "ack"),
    (command::RECONNECT, "reconnect"),
    (command::ERROR, "error"),
];

/// The name of a command, as WebSocket text messages carry it in `"type"`.
pub fn command_name(command: u8) -> Option<&'static str> {
    NAMES
        .iter()
        .find(|(number, _)| *number == command)
        .map(|(_, name)| *name)
}

/// The command a WebSocket text message's `"type"` names.
pub fn command_by_name(name: &str) -> Option<u8> {
    NAMES
        .iter()
        .find(|(_, known)| *known == name)
        .map(|(number, _)| *number)
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub command: u8,
    pub sequence: u32,
    pub body: Bytes,
}

impl Frame {
    /// The body as JSON; an empty body reads as `null`.
    pub fn json(&self) -> Result<serde_json::Value, serde_json::Error> {
        if self.body.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&self.body)
    }
}

/// A frame announcing a body longer than the reader accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooLong {
    pub length: usize,
    pub max: usize,
}

impl std::fmt::Display for TooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "frame body of {} bytes over {}", self.length, self.max)
    }
}

impl std::error::Error for TooLong {}

/// One frame in the TCP layout.
pub fn encode_frame(command: u8, sequence: u32, body: &[u8]) -> Vec<u8> {
    let length = u32::try_from(body.len()).expect("frame body over 4 GiB");
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&length.to_be_bytes());
    out.push(command);
    out.extend_from_slice(&sequence.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// One frame whose body is `body` serialized as JSON.
pub fn encode_json(command: u8, sequence: u32, body: &serde_json::Value) -> Vec<u8> {
    encode_frame(command, sequence, body.to_string().as_bytes())
}

/// Takes the first whole frame off the front of `buf`: `Ok(None)` while it is incomplete (then
/// `buf` has room reserved for the rest of it, so that reads fill it in few steps).
pub fn decode_frame(buf: &mut BytesMut, max_body: usize) -> Result<Option<Frame>, TooLong> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let length = u32::from_be_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
    if length > max_body {
        return Err(TooLong {
            length,
            max: max_body,
        });
    }
    if buf.len() < HEADER_LEN + length {
        buf.reserve(HEADER_LEN + length - buf.len());
        return Ok(None);
    }
    let command = buf[4];
    let sequence = u32::from_be_bytes(buf[5..9].try_into().expect("4 bytes"));
    buf.advance(HEADER_LEN);
    let body = buf.split_to(length).freeze();
    Ok(Some(Frame {
        command,
        sequence,
        body,
    }))
}

/// Every whole frame in `bytes` (such as what `raw_session` read), and the bytes left over
/// after the last whole one.
pub fn decode_all(bytes: &[u8], max_body: usize) -> Result<(Vec<Frame>, usize), TooLong> {
    let mut buf = BytesMut::from(bytes);
    let mut frames = Vec::new();
    while let Some(frame) = decode_frame(&mut buf, max_body)? {
        frames.push(frame);
    }
    Ok((frames, buf.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_in_pieces() {
        let mut wire = encode_frame(command::PUSH, 7, br#"{"id":"m-1"}"#);
        wire.extend(encode_frame(command::PING, 8, b""));
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for byte in wire {
            buf.extend_from_slice(&[byte]);
            while let Some(frame) = decode_frame(&mut buf, 1024).unwrap() {
                frames.push(frame);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].command, command::PUSH);
        assert_eq!(frames[0].sequence, 7);
        assert_eq!(frames[0].json().unwrap()["id"], "m-1");
        assert_eq!(frames[1].command, command::PING);
        assert_eq!(frames[1].json().unwrap(), serde_json::Value::Null);
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_body_is_refused_from_its_header() {
        let mut buf = BytesMut::from(&encode_frame(command::PUSH, 1, &[b' '; 100])[..HEADER_LEN]);
        assert_eq!(
            decode_frame(&mut buf, 99),
            Err(TooLong {
                length: 100,
                max: 99
            })
        );
    }

    #[test]
    fn names_and_numbers_match() {
        for number in 1..=8 {
            assert_eq!(command_by_name(command_name(number).unwrap()), Some(number));
        }
        assert_eq!(command_name(9), None);
        assert_eq!(command_by_name("nope"), None);
    }

    #[test]
    fn decode_all_reports_the_partial_tail() {
        let mut wire = encode_frame(command::ERROR, 0, br#"{"error":"x"}"#);
        wire.extend_from_slice(&[0, 0, 0, 5, 2]);
        let (frames, rest) = decode_all(&wire, 1024).unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!(rest, 5);
    }
}
