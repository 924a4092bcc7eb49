//! The HTTP/1.1 codec: heads parsed in place with `httparse`, bodies framed without copying.
//!
//! Heads are kept as the bytes received plus offsets, in buffers reused from one request to the
//! next, so parsing and forwarding a head allocates nothing once a connection is warm. Bodies
//! are never decoded on the way through: a chunked body is scanned for its end and forwarded
//! byte for byte.

mod chunked;
mod framing;
mod head;

pub use chunked::{ChunkError, ChunkedScanner};
pub use framing::{
    has_other_codings, request_framing, response_framing, write_response_framing, BodyFraming,
    FramingError,
};
pub use head::{HeadError, HeadLimits, RequestHead, ResponseHead};

/// Headers that describe one connection and must not be forwarded (RFC 9110 §7.6.1).
/// `Transfer-Encoding` is decided by the proxy for each hop, so it is listed here too.
pub fn is_hop_by_hop(name: &str) -> bool {
    const HOP_BY_HOP: [&str; 7] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "transfer-encoding",
        "upgrade",
    ];
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Whether a comma-separated header value lists `token`, ignoring case and whitespace.
pub fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Whether a header frames the body (`Content-Length`, `Transfer-Encoding`). The gateway writes
/// those itself for each hop, from the framing it found, never copies them.
pub fn is_framing_header(name: &str) -> bool {
    name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("transfer-encoding")
}

/// Whether `bytes` is a token (RFC 9110 §5.6.2), as a transfer coding's name must be.
fn is_token(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.iter().all(|&b| is_tchar(b))
}

/// Whether `b` may be part of a token (RFC 9110 §5.6.2): a header name, a transfer coding's name.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
