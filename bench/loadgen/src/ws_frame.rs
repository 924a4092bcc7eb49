//! The bits of RFC 6455 the benchmark needs: the handshake's accept key, and frames (read
//! with or without a mask, written with an optional mask). No extensions, no fragmentation
//! handling beyond passing continuation frames through.

use crate::sha1::{base64, sha1};

pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// The `Sec-WebSocket-Accept` value for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut input = key.trim().as_bytes().to_vec();
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64(&sha1(&input))
}

/// A frame whose header has been read; the payload is `buf[payload]`, still masked.
pub struct Header {
    /// FIN bit and opcode, as in the first byte.
    pub first: u8,
    pub mask: Option<[u8; 4]>,
    pub payload: std::ops::Range<usize>,
}

impl Header {
    pub fn opcode(&self) -> u8 {
        self.first & 0x0F
    }
}

/// The frame at the start of `buf`, if `buf` holds all of it; else how many bytes the whole
/// frame needs, when the header says so already.
pub fn parse(buf: &[u8]) -> Result<Header, Option<usize>> {
    let [first, second, ..] = *buf else {
        return Err(None);
    };
    let (len, mut at) = match second & 0x7F {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => {
            let mut n = [0u8; 8];
            n.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(n) as usize, 10)
        }
        126 | 127 => return Err(None),
        n => (n as usize, 2),
    };
    let mask = if second & 0x80 != 0 {
        let Some(m) = buf.get(at..at + 4) else {
            return Err(None);
        };
        at += 4;
        Some([m[0], m[1], m[2], m[3]])
    } else {
        None
    };
    if buf.len() < at + len {
        return Err(Some(at + len));
    }
    Ok(Header {
        first,
        mask,
        payload: at..at + len,
    })
}

/// Appends a frame to `out`: `first` is the FIN bit and opcode; with `mask`, the payload is
/// masked as a client must.
pub fn write(out: &mut Vec<u8>, first: u8, payload: &[u8], mask: Option<[u8; 4]>) {
    out.push(first);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.push(mask_bit | n as u8),
        n @ 126..=0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(mask) => {
            out.extend_from_slice(&mask);
            out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        }
        None => out.extend_from_slice(payload),
    }
}

/// Unmasks (or masks: the same operation) `payload` in place.
pub fn apply_mask(payload: &mut [u8], mask: [u8; 4]) {
    for (b, m) in payload.iter_mut().zip(mask.iter().cycle()) {
        *b ^= m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_is_the_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn frames_round_trip_at_each_length_encoding() {
        for len in [0, 5, 125, 126, 300, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut out = Vec::new();
            write(&mut out, 0x80 | OP_BINARY, &payload, Some([1, 2, 3, 4]));
            assert!(parse(&out[..out.len() - 1]).is_err());
            let header = parse(&out).ok().unwrap();
            assert_eq!(header.opcode(), OP_BINARY);
            assert_eq!(header.payload.end, out.len());
            let mut got = out[header.payload].to_vec();
            apply_mask(&mut got, header.mask.unwrap());
            assert_eq!(got, payload);
        }
    }
}
