//! Telling HTTP/2 with prior knowledge (h2c) from HTTP/1 on a plain connection: an HTTP/2
//! client opens with a fixed preface that no HTTP/1 request starts with. The bytes read to
//! decide are handed on to whichever protocol it is, through [`crate::rewind::Rewind`] for HTTP/2.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::AsyncRead;

use crate::relay::read_more;

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub(crate) enum Sniffed {
    Http2,
    Http1,
    /// The client closed, or went quiet before it was clear which.
    Closed,
}

/// Reads into `buf` until it holds the HTTP/2 preface or bytes that cannot begin it. An HTTP/1
/// request differs by its second byte at the latest, so it costs no read of its own.
pub(crate) async fn sniff<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    timeout: Duration,
) -> Sniffed {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = buf.len().min(PREFACE.len());
        if buf[..seen] != PREFACE[..seen] {
            return Sniffed::Http1;
        }
        if seen == PREFACE.len() {
            return Sniffed::Http2;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match read_more(io, buf, left).await {
            Ok(n) if n > 0 => {}
            _ => return Sniffed::Closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rewind::Rewind;
    use tokio::io::AsyncReadExt;
    use tokio_test::io::Builder;

    #[tokio::test]
    async fn the_preface_in_pieces_is_http2_and_the_bytes_are_read_again() {
        let mut io = Builder::new()
            .read(&PREFACE[..3])
            .read(&PREFACE[3..])
            .read(b"FRAMES")
            .build();
        let mut buf = BytesMut::new();
        let sniffed = sniff(&mut io, &mut buf, Duration::from_secs(5)).await;
        assert!(matches!(sniffed, Sniffed::Http2));
        let mut rewound = Rewind::new(buf, io);
        let mut all = Vec::new();
        rewound.read_to_end(&mut all).await.unwrap();
        assert_eq!(&all[..PREFACE.len()], PREFACE);
        assert_eq!(&all[PREFACE.len()..], b"FRAMES");
    }

    #[tokio::test]
    async fn http1_is_told_apart_without_waiting_for_more() {
        for request in [&b"GET / HTTP/1.1\r\n"[..], b"POST /", b"PRI / HTTP/1.1\r\n"] {
            let mut io = Builder::new().read(request).build();
            let mut buf = BytesMut::new();
            let sniffed = sniff(&mut io, &mut buf, Duration::from_secs(5)).await;
            assert!(matches!(sniffed, Sniffed::Http1));
            assert_eq!(&buf[..], request);
        }
        let mut io = Builder::new().read(b"PRI * HT").build();
        let sniffed = sniff(&mut io, &mut BytesMut::new(), Duration::from_secs(5)).await;
        assert!(matches!(sniffed, Sniffed::Closed), "closed mid-preface");
    }
}
