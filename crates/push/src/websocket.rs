//! Devices that speak WebSocket to the push gateway's listener: the answer to the opening
//! handshake, and RFC 6455's frames as a server reads them (masked) and writes them (not).
//! A device's messages are small and few, so this codec is small too: it keeps no buffer of
//! its own, reads whole frames off the connection's bytes and joins fragments.

use base64::Engine;
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The longest handshake request a device may send.
pub const MAX_HANDSHAKE: usize = 8 * 1024;

/// The GUID RFC 6455 appends to a client's key to prove the server read it.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Whether the first bytes of a connection are a WebSocket opening handshake (an HTTP GET),
/// rather than a frame of the device protocol. `None` while too few bytes came to tell.
pub fn is_handshake(bytes: &[u8]) -> Option<bool> {
    const GET: &[u8] = b"GET ";
    if bytes.len() < GET.len() {
        return if GET.starts_with(bytes) {
            None
        } else {
            Some(false)
        };
    }
    Some(bytes.starts_with(GET))
}

/// Where the handshake request in `bytes` ends (after its blank line), once it is whole.
pub fn handshake_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
}

/// The `101` answer to the handshake request `head`, or why it is not one.
pub fn accept(head: &[u8]) -> Result<Vec<u8>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err("not an HTTP request"),
    }
    if request.method != Some("GET") {
        return Err("a WebSocket handshake is a GET");
    }
    let header = |name: &str| {
        (request.headers.iter())
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err("not a WebSocket upgrade");
    }
    if header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err("Sec-WebSocket-Version must be 13");
    }
    let Some(key) = header("sec-websocket-key").map(str::trim) else {
        return Err("Sec-WebSocket-Key is missing");
    };
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{ACCEPT_GUID}").as_bytes(),
    );
    let accept = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    Ok(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes())
}

/// A whole message from a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Text(Bytes),
    Binary(Bytes),
    /// To be answered with a pong carrying the same bytes.
    Ping(Bytes),
    Pong,
    Close,
}

/// Why a device's bytes are not WebSocket frames a server accepts: the connection closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsError {
    /// A client frame without a mask, or with reserved bits set.
    Protocol,
    /// A message longer than the gateway takes.
    TooLong,
}

impl WsError {
    pub fn name(self) -> &'static str {
        match self {
            WsError::Protocol => "bad_websocket_frame",
            WsError::TooLong => "too_long",
        }
    }
}

/// The first fragments of a message not yet whole: text or binary, and the bytes so far.
#[derive(Debug, Default)]
pub struct Fragments(Option<(bool, BytesMut)>);

/// Takes the next whole message off `buf` (joining fragments into `fragments`), or leaves
/// `buf` as it is when a frame is not whole yet. Messages are at most `max` bytes.
pub fn decode(
    buf: &mut BytesMut,
    fragments: &mut Fragments,
    max: usize,
) -> Result<Option<Message>, WsError> {
    loop {
        let Some((fin, opcode, payload)) = decode_frame(buf, max)? else {
            return Ok(None);
        };
        match opcode {
            TEXT | BINARY if fin && fragments.0.is_none() => {
                return Ok(Some(match opcode {
                    TEXT => Message::Text(payload),
                    _ => Message::Binary(payload),
                }))
            }
            TEXT | BINARY if fragments.0.is_none() => {
                fragments.0 = Some((opcode == TEXT, BytesMut::from(&payload[..])));
            }
            CONTINUATION => {
                let Some((text, mut joined)) = fragments.0.take() else {
                    return Err(WsError::Protocol);
                };
                if joined.len() + payload.len() > max {
                    return Err(WsError::TooLong);
                }
                joined.extend_from_slice(&payload);
                if !fin {
                    fragments.0 = Some((text, joined));
                    continue;
                }
                let joined = joined.freeze();
                return Ok(Some(if text {
                    Message::Text(joined)
                } else {
                    Message::Binary(joined)
                }));
            }
            PING if fin => return Ok(Some(Message::Ping(payload))),
            PONG if fin => return Ok(Some(Message::Pong)),
            CLOSE if fin => return Ok(Some(Message::Close)),
            _ => return Err(WsError::Protocol),
        }
    }
}

/// One frame off `buf`: FIN, the opcode and the unmasked payload.
fn decode_frame(buf: &mut BytesMut, max: usize) -> Result<Option<(bool, u8, Bytes)>, WsError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (first, second) = (buf[0], buf[1]);
    if first & 0x70 != 0 || second & 0x80 == 0 {
        return Err(WsError::Protocol);
    }
    let (len, header) = match second & 0x7F {
        126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => {
            let mut bytes = [0; 8];
            bytes.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(bytes), 10)
        }
        126 | 127 => return Ok(None),
        short => (u64::from(short), 2),
    };
    if len > max as u64 {
        return Err(WsError::TooLong);
    }
    let len = len as usize;
    if buf.len() < header + 4 + len {
        return Ok(None);
    }
    let mut mask = [0; 4];
    mask.copy_from_slice(&buf[header..header + 4]);
    buf.advance(header + 4);
    let mut payload = buf.split_to(len);
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
    Ok(Some((first & 0x80 != 0, first & 0x0F, payload.freeze())))
}

/// Appends one unmasked frame (a whole message) to `out`.
fn encode(opcode: u8, payload: &[u8], out: &mut BytesMut) {
    out.put_u8(0x80 | opcode);
    match payload.len() {
        len @ 0..=125 => out.put_u8(len as u8),
        len @ 126..=0xFFFF => {
            out.put_u8(126);
            out.put_u16(len as u16);
        }
        len => {
            out.put_u8(127);
            out.put_u64(len as u64);
        }
    }
    out.extend_from_slice(payload);
}

pub fn encode_text(payload: &[u8], out: &mut BytesMut) {
    encode(TEXT, payload, out);
}

pub fn encode_binary(payload: &[u8], out: &mut BytesMut) {
    encode(BINARY, payload, out);
}

pub fn encode_pong(payload: &[u8], out: &mut BytesMut) {
    encode(PONG, payload, out);
}

pub fn encode_close(out: &mut BytesMut) {
    // 1000: a normal close.
    encode(CLOSE, &1000u16.to_be_bytes(), out);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked, as RFC 6455 requires of clients.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            len @ 0..=125 => out.push(0x80 | len as u8),
            len => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn the_handshake_is_answered_with_rfc_6455s_accept_key() {
        let head = b"GET /push HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        assert_eq!(is_handshake(b"GE"), None);
        assert_eq!(is_handshake(b"\0\0\0"), Some(false));
        assert_eq!(is_handshake(head), Some(true));
        assert_eq!(handshake_end(head), Some(head.len()));
        let answer = String::from_utf8(accept(head).unwrap()).unwrap();
        // RFC 6455's own example.
        assert!(
            answer.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
            "{answer}"
        );
        let plain = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(accept(plain), Err("not a WebSocket upgrade"));
    }

    #[test]
    fn frames_decode_unmasked_and_fragments_join() {
        let mut buf = BytesMut::new();
        let mut fragments = Fragments::default();
        buf.extend_from_slice(&client_frame(true, TEXT, b"{\"type\":\"ping\"}"));
        let whole = client_frame(false, BINARY, b"ab");
        buf.extend_from_slice(&whole);
        buf.extend_from_slice(&client_frame(true, PING, b"p"));
        buf.extend_from_slice(&client_frame(true, CONTINUATION, &[b'c'; 200]));
        let message = decode(&mut buf, &mut fragments, 1024).unwrap();
        assert_eq!(
            message,
            Some(Message::Text(Bytes::from_static(b"{\"type\":\"ping\"}")))
        );
        // A control frame may come between fragments.
        assert_eq!(
            decode(&mut buf, &mut fragments, 1024).unwrap(),
            Some(Message::Ping(Bytes::from_static(b"p")))
        );
        let Some(Message::Binary(joined)) = decode(&mut buf, &mut fragments, 1024).unwrap() else {
            panic!("a binary message");
        };
        assert_eq!((joined.len(), &joined[..2]), (202, &b"ab"[..]));
        assert!(buf.is_empty());
        // Part of a frame waits for the rest.
        let frame = client_frame(true, BINARY, b"xyz");
        buf.extend_from_slice(&frame[..3]);
        assert_eq!(decode(&mut buf, &mut fragments, 1024).unwrap(), None);
        assert_eq!(buf.len(), 3);
    }

    #[test]
    fn bad_frames_are_refused() {
        let mut fragments = Fragments::default();
        let unmasked = &mut BytesMut::from(&[0x82, 0x01, b'x'][..]);
        assert_eq!(
            decode(unmasked, &mut fragments, 1024),
            Err(WsError::Protocol)
        );
        let long = &mut BytesMut::from(&client_frame(true, BINARY, &[0; 300])[..]);
        assert_eq!(decode(long, &mut fragments, 100), Err(WsError::TooLong));
        let stray = &mut BytesMut::from(&client_frame(true, CONTINUATION, b"x")[..]);
        assert_eq!(decode(stray, &mut fragments, 100), Err(WsError::Protocol));
    }

    #[test]
    fn server_frames_are_unmasked() {
        let mut out = BytesMut::new();
        encode_text(b"hi", &mut out);
        assert_eq!(&out[..], b"\x81\x02hi");
        out.clear();
        encode_binary(&[7; 300], &mut out);
        assert_eq!(&out[..4], &[0x82, 126, 1, 44]);
    }
}
