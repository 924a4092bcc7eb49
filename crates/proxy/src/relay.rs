//! Moving one message body from one socket to another, as it arrives.
//!
//! The body is never held whole: each read is written on before the next. Bytes that were read
//! past the body's end stay in the buffer for the next message on that connection.

use std::io;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use pylon_plugin::BodyFilters;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::http1::{BodyFraming, ChunkError, ChunkedScanner};

/// Below this, a head and the body bytes after it go out in one write.
const COALESCE: usize = 16 * 1024;
const READ_RESERVE: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading from the source failed, timed out, or it closed before the body ended.
    #[error("reading the body: {0}")]
    Source(io::Error),
    /// The source sent a body that is not valid chunked encoding.
    #[error("malformed chunked body: {0}")]
    Framing(ChunkError),
    /// Writing to the destination failed or timed out.
    #[error("writing the body: {0}")]
    Destination(io::Error),
}

pub struct Relay {
    pub framing: BodyFraming,
    /// Strip the chunked framing on the way (for HTTP/1.0 clients).
    pub decode_chunked: bool,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
}

impl Relay {
    /// Writes `prefix` (a head, or nothing) and then the body read from `src`, whose first bytes
    /// may already be in `buf`. Returns the number of bytes written, prefix included.
    pub async fn run<R, W>(
        &self,
        src: &mut R,
        buf: &mut BytesMut,
        dst: &mut W,
        prefix: &mut Vec<u8>,
    ) -> Result<u64, RelayError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        self.run_observed(src, buf, dst, prefix, |_| {}).await
    }

    /// As [`Relay::run`], showing `observe` each piece of the body, decoded from its framing,
    /// as it passes (a plugin's copy of a request body).
    pub async fn run_observed<R, W>(
        &self,
        src: &mut R,
        buf: &mut BytesMut,
        dst: &mut W,
        prefix: &mut Vec<u8>,
        mut observe: impl FnMut(&[u8]),
    ) -> Result<u64, RelayError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut out = Output::new(dst, prefix, self.write_timeout);
        match self.framing {
            BodyFraming::None => {}
            BodyFraming::Length(mut left) => loop {
                let take = (buf.len() as u64).min(left) as usize;
                if take > 0 {
                    observe(&buf[..take]);
                    out.write(&buf[..take]).await?;
                    buf.advance(take);
                    left -= take as u64;
                }
                if left == 0 {
                    break;
                }
                if read_more(src, buf, self.read_timeout).await? == 0 {
                    return Err(RelayError::Source(io::ErrorKind::UnexpectedEof.into()));
                }
            },
            BodyFraming::Chunked => {
                let mut scanner = ChunkedScanner::default();
                let mut decoded = Vec::new();
                loop {
                    if !buf.is_empty() {
                        let used = if self.decode_chunked {
                            decoded.clear();
                            scanner.scan(buf, |d| {
                                observe(d);
                                decoded.extend_from_slice(d)
                            })
                        } else {
                            scanner.scan(buf, &mut observe)
                        }
                        .map_err(RelayError::Framing)?;
                        if self.decode_chunked {
                            out.write(&decoded).await?;
                        } else {
                            out.write(&buf[..used]).await?;
                        }
                        buf.advance(used);
                    }
                    if scanner.is_done() {
                        break;
                    }
                    if read_more(src, buf, self.read_timeout).await? == 0 {
                        return Err(RelayError::Source(io::ErrorKind::UnexpectedEof.into()));
                    }
                }
            }
            BodyFraming::UntilClose => loop {
                if !buf.is_empty() {
                    observe(buf);
                    out.write(buf).await?;
                    buf.clear();
                }
                if read_more(src, buf, self.read_timeout).await? == 0 {
                    break;
                }
            },
        }
        out.finish().await
    }
}

impl Relay {
    /// As [`Relay::run`], with the body going through plugins' body filters on the way: it
    /// is decoded from its framing, filtered piece by piece, and written as chunks, or as it
    /// is for a destination that reads to the connection's close (`chunked` false).
    pub async fn run_filtered<R, W>(
        &self,
        src: &mut R,
        buf: &mut BytesMut,
        dst: &mut W,
        prefix: &mut Vec<u8>,
        filters: &mut BodyFilters,
        chunked: bool,
    ) -> Result<u64, RelayError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut out = Output::new(dst, prefix, self.write_timeout);
        let mut scanner = ChunkedScanner::default();
        let mut left = match self.framing {
            BodyFraming::Length(n) => n,
            _ => 0,
        };
        let mut piece = Vec::new();
        loop {
            let done = match self.framing {
                BodyFraming::None => true,
                BodyFraming::Length(_) => {
                    let take = (buf.len() as u64).min(left) as usize;
                    piece.extend_from_slice(&buf[..take]);
                    buf.advance(take);
                    left -= take as u64;
                    left == 0
                }
                BodyFraming::Chunked => {
                    let used = scanner
                        .scan(buf, |data| piece.extend_from_slice(data))
                        .map_err(RelayError::Framing)?;
                    buf.advance(used);
                    scanner.is_done()
                }
                BodyFraming::UntilClose => {
                    piece.extend_from_slice(buf);
                    buf.clear();
                    false
                }
            };
            if !piece.is_empty() {
                filters.run(&mut piece, false);
                out.write_piece(&piece, chunked).await?;
                piece.clear();
            }
            if done {
                break;
            }
            if read_more(src, buf, self.read_timeout).await? == 0 {
                if self.framing == BodyFraming::UntilClose {
                    break;
                }
                return Err(RelayError::Source(io::ErrorKind::UnexpectedEof.into()));
            }
        }
        filters.run(&mut piece, true);
        out.write_piece(&piece, chunked).await?;
        if chunked {
            out.write(b"0\r\n\r\n").await?;
        }
        out.finish().await
    }
}

/// The destination side: holds back the prefix so a small head and body leave together.
struct Output<'a, W> {
    dst: &'a mut W,
    prefix: &'a mut Vec<u8>,
    written: u64,
    timeout: Duration,
}

impl<'a, W: AsyncWrite + Unpin> Output<'a, W> {
    fn new(dst: &'a mut W, prefix: &'a mut Vec<u8>, timeout: Duration) -> Self {
        Output {
            dst,
            prefix,
            written: 0,
            timeout,
        }
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), RelayError> {
        if !self.prefix.is_empty() {
            if self.prefix.len() + data.len() <= COALESCE {
                self.prefix.extend_from_slice(data);
                return self.flush_prefix().await;
            }
            self.flush_prefix().await?;
        }
        write_all(self.dst, data, self.timeout).await?;
        self.written += data.len() as u64;
        Ok(())
    }

    /// Writes a piece of a body, as one chunk when `chunked`; nothing for an empty piece,
    /// which as a chunk would end the body.
    async fn write_piece(&mut self, piece: &[u8], chunked: bool) -> Result<(), RelayError> {
        if piece.is_empty() {
            return Ok(());
        }
        if !chunked {
            return self.write(piece).await;
        }
        let mut chunk = Vec::with_capacity(piece.len() + 20);
        chunk.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunk.extend_from_slice(piece);
        chunk.extend_from_slice(b"\r\n");
        self.write(&chunk).await
    }

    async fn flush_prefix(&mut self) -> Result<(), RelayError> {
        write_all(self.dst, self.prefix, self.timeout).await?;
        self.written += self.prefix.len() as u64;
        self.prefix.clear();
        Ok(())
    }

    async fn finish(mut self) -> Result<u64, RelayError> {
        if !self.prefix.is_empty() {
            self.flush_prefix().await?;
        }
        Ok(self.written)
    }
}

pub async fn write_all<W: AsyncWrite + Unpin>(
    dst: &mut W,
    data: &[u8],
    timeout: Duration,
) -> Result<(), RelayError> {
    match tokio::time::timeout(timeout, dst.write_all(data)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(RelayError::Destination(e)),
        Err(_) => Err(RelayError::Destination(io::ErrorKind::TimedOut.into())),
    }
}

/// Reads whatever is available into `buf`; 0 means the peer closed.
pub async fn read_more<R: AsyncRead + Unpin>(
    src: &mut R,
    buf: &mut BytesMut,
    timeout: Duration,
) -> Result<usize, RelayError> {
    if buf.capacity() - buf.len() < READ_RESERVE / 4 {
        buf.reserve(READ_RESERVE);
    }
    match tokio::time::timeout(timeout, src.read_buf(buf)).await {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(RelayError::Source(e)),
        Err(_) => Err(RelayError::Source(io::ErrorKind::TimedOut.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_test_io::Builder;

    mod tokio_test_io {
        pub use tokio_test::io::Builder;
    }

    fn relay(framing: BodyFraming, decode_chunked: bool) -> Relay {
        Relay {
            framing,
            decode_chunked,
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn a_small_head_and_body_leave_in_one_write_and_the_rest_stays() {
        let mut src = Builder::new().build();
        let mut dst = Builder::new().write(b"HEAD|hello").build();
        let mut buf = BytesMut::from(&b"helloNEXT"[..]);
        let mut prefix = b"HEAD|".to_vec();
        let n = relay(BodyFraming::Length(5), false)
            .run(&mut src, &mut buf, &mut dst, &mut prefix)
            .await
            .unwrap();
        assert_eq!(n, 10);
        assert_eq!(&buf[..], b"NEXT");
    }

    #[tokio::test]
    async fn streams_a_length_body_read_by_read() {
        let mut src = Builder::new().read(b"def").read(b"ghi").build();
        let mut dst = Builder::new()
            .write(b"abc")
            .write(b"def")
            .write(b"ghi")
            .build();
        let mut buf = BytesMut::from(&b"abc"[..]);
        let n = relay(BodyFraming::Length(9), false)
            .run(&mut src, &mut buf, &mut dst, &mut Vec::new())
            .await
            .unwrap();
        assert_eq!(n, 9);
    }

    #[tokio::test]
    async fn a_source_that_closes_early_is_an_error_not_a_short_body() {
        let mut src = Builder::new().read(b"ab").build();
        let mut dst = Builder::new().write(b"ab").build();
        let err = relay(BodyFraming::Length(5), false)
            .run(&mut src, &mut BytesMut::new(), &mut dst, &mut Vec::new())
            .await
            .unwrap_err();
        assert!(matches!(err, RelayError::Source(e) if e.kind() == io::ErrorKind::UnexpectedEof));
    }

    #[tokio::test]
    async fn chunked_bodies_pass_through_byte_for_byte_or_decoded() {
        let wire: &[u8] = b"3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n";
        let mut dst = Builder::new()
            .write(b"3\r\nabc\r\n")
            .write(b"0\r\nX-T: 1\r\n\r\n")
            .build();
        let mut src = Builder::new().read(&wire[8..]).build();
        let mut buf = BytesMut::from(&wire[..8]);
        relay(BodyFraming::Chunked, false)
            .run(&mut src, &mut buf, &mut dst, &mut Vec::new())
            .await
            .unwrap();

        let mut dst = Builder::new().write(b"abc").build();
        let mut buf = BytesMut::from(wire);
        relay(BodyFraming::Chunked, true)
            .run(
                &mut Builder::new().build(),
                &mut buf,
                &mut dst,
                &mut Vec::new(),
            )
            .await
            .unwrap();
        assert!(buf.is_empty());
    }

    /// Upper-cases what passes and adds `!` at the end.
    struct Shout;

    impl pylon_plugin::BodyFilter for Shout {
        fn filter(&mut self, piece: &mut Vec<u8>, end: bool) {
            piece.make_ascii_uppercase();
            if end {
                piece.push(b'!');
            }
        }
    }

    #[tokio::test]
    async fn a_filtered_body_is_decoded_filtered_and_chunked_again_or_sent_raw() {
        let mut filters = BodyFilters::default();
        filters.push(Box::new(Shout));
        let mut dst = Builder::new()
            .write(b"HEAD|3\r\nABC\r\n")
            .write(b"2\r\nDE\r\n")
            .write(b"1\r\n!\r\n")
            .write(b"0\r\n\r\n")
            .build();
        let mut src = Builder::new().read(b"2\r\nde\r\n0\r\n\r\nNEXT").build();
        let mut buf = BytesMut::from(&b"3\r\nabc\r\n"[..]);
        let n = relay(BodyFraming::Chunked, false)
            .run_filtered(
                &mut src,
                &mut buf,
                &mut dst,
                &mut b"HEAD|".to_vec(),
                &mut filters,
                true,
            )
            .await
            .unwrap();
        assert_eq!(n, 31);
        assert_eq!(&buf[..], b"NEXT");

        let mut filters = BodyFilters::default();
        filters.push(Box::new(Shout));
        let mut dst = Builder::new().write(b"ABCDE").write(b"!").build();
        let mut buf = BytesMut::from(&b"abcdeNEXT"[..]);
        relay(BodyFraming::Length(5), false)
            .run_filtered(
                &mut Builder::new().build(),
                &mut buf,
                &mut dst,
                &mut Vec::new(),
                &mut filters,
                false,
            )
            .await
            .unwrap();
        assert_eq!(&buf[..], b"NEXT");
    }
}
