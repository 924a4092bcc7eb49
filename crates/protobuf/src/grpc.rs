//! gRPC's wire details a transcoder needs: the length-prefixed message frame, and what a
//! `grpc-status` means over HTTP.

/// One message as gRPC frames it: an uncompressed flag, its length (4 bytes, big-endian),
/// the message.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    // Messages are bounded far below 4 GiB by the body limits that produced them.
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    framed
}

/// Why a stream of frames cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("a compressed message, which was not asked for")]
    Compressed,
    #[error("a message of {0} bytes, over the limit")]
    TooLarge(usize),
    #[error("the stream ended inside a message")]
    Truncated,
}

/// Cuts a byte stream into gRPC messages as its pieces arrive: a message split across pieces
/// is held until it is whole, and nothing more.
#[derive(Debug)]
pub struct Deframer {
    held: Vec<u8>,
    limit: usize,
}

impl Deframer {
    /// Refuses messages larger than `limit` bytes.
    pub fn new(limit: usize) -> Deframer {
        Deframer {
            held: Vec::new(),
            limit,
        }
    }

    /// Takes the next piece of the stream, and hands over each message it completes.
    pub fn push(&mut self, piece: &[u8], mut message: impl FnMut(&[u8])) -> Result<(), FrameError> {
        self.held.extend_from_slice(piece);
        let mut at = 0;
        while let Some(header) = self.held.get(at..at + 5) {
            if header[0] & 1 != 0 {
                return Err(FrameError::Compressed);
            }
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            if len > self.limit {
                return Err(FrameError::TooLarge(len));
            }
            let Some(body) = self.held.get(at + 5..at + 5 + len) else {
                break;
            };
            message(body);
            at += 5 + len;
        }
        self.held.drain(..at);
        Ok(())
    }

    /// The stream ended: it must not end inside a message.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.held.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated)
        }
    }
}

/// The HTTP status a gRPC status code maps to (the table of google.rpc.Code).
pub fn http_status(code: u32) -> u16 {
    match code {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        // UNKNOWN, INTERNAL, DATA_LOSS and codes from beyond the table.
        _ => 500,
    }
}

/// The gRPC status of a call whose response is not gRPC's, by its HTTP status (gRPC's
/// HTTP-to-gRPC status mapping): what a client reports for an answer from a proxy or a
/// server that is not the gRPC service.
pub fn code_of_http_status(status: u16) -> u32 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// A gRPC status code's name (`NOT_FOUND`).
pub fn status_name(code: u32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.get(code as usize).copied().unwrap_or("UNKNOWN")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_split_anywhere_come_out_whole_and_in_order() {
        let stream: Vec<u8> = [frame(b"one"), frame(b""), frame(b"three")].concat();
        for cut in 0..stream.len() {
            let mut deframer = Deframer::new(64);
            let mut messages = Vec::new();
            for piece in [&stream[..cut], &stream[cut..]] {
                deframer.push(piece, |m| messages.push(m.to_vec())).unwrap();
            }
            assert_eq!(messages, [&b"one"[..], b"", b"three"], "cut at {cut}");
            assert_eq!(deframer.finish(), Ok(()));
        }
    }

    #[test]
    fn bad_streams_are_refused() {
        let mut deframer = Deframer::new(2);
        assert_eq!(
            deframer.push(&frame(b"big"), |_| {}),
            Err(FrameError::TooLarge(3))
        );
        let mut deframer = Deframer::new(64);
        assert_eq!(
            deframer.push(&[1, 0, 0, 0, 0], |_| {}),
            Err(FrameError::Compressed)
        );
        let mut deframer = Deframer::new(64);
        deframer.push(&frame(b"ab")[..4], |_| {}).unwrap();
        assert_eq!(deframer.finish(), Err(FrameError::Truncated));
    }

    #[test]
    fn statuses_map_to_http_as_google_rpc_says() {
        let pairs = [(0, 200), (3, 400), (4, 504), (5, 404), (7, 403), (8, 429)];
        for (code, status) in pairs {
            assert_eq!(http_status(code), status, "{}", status_name(code));
        }
        assert_eq!(
            (http_status(14), http_status(16), http_status(99)),
            (503, 401, 500)
        );
        assert_eq!(status_name(5), "NOT_FOUND");
    }

    #[test]
    fn http_statuses_map_to_grpc_as_grpc_says() {
        let pairs = [
            (400, 13),
            (401, 16),
            (403, 7),
            (404, 12),
            (429, 14),
            (503, 14),
        ];
        for (status, code) in pairs {
            assert_eq!(code_of_http_status(status), code, "{status}");
        }
        assert_eq!((code_of_http_status(500), code_of_http_status(302)), (2, 2));
    }
}
