//! A scanner for chunked bodies that finds where the body ends without copying it.
//!
//! The proxy forwards chunked bodies byte for byte; it only needs to know where each one ends so
//! the connection can carry the next message. The same scanner also hands out the data bytes, for
//! the one case that needs them decoded (an HTTP/1.0 client).

const MAX_SIZE_DIGITS: u32 = 15;
const MAX_LINE_EXTRA: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("invalid chunk size")]
    Size,
    #[error("chunk extension or trailer too long")]
    TooLong,
    #[error("missing CRLF after chunk data")]
    Delimiter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a chunk size.
    Size {
        value: u64,
        digits: u32,
    },
    /// After the size: optional whitespace and extensions up to LF.
    SizeLine {
        value: u64,
    },
    Data {
        remaining: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer line.
    Trailer,
    Done,
}

#[derive(Debug, Clone)]
pub struct ChunkedScanner {
    state: State,
    line_extra: usize,
    trailer_bytes: usize,
}

impl Default for ChunkedScanner {
    fn default() -> Self {
        Self {
            state: State::Size {
                value: 0,
                digits: 0,
            },
            line_extra: 0,
            trailer_bytes: 0,
        }
    }
}

impl ChunkedScanner {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Scans `input`; returns how many of its bytes belong to the body (all of them unless the
    /// body ends inside `input`). `on_data` receives the decoded data bytes.
    pub fn scan(&mut self, input: &[u8], on_data: impl FnMut(&[u8])) -> Result<usize, ChunkError> {
        self.scan_with_trailers(input, on_data, |_| {})
    }

    /// As [`ChunkedScanner::scan`], and `on_trailer` receives the trailer section's lines, CRLF
    /// included, without the empty line that ends it (for a proxy that turns them into
    /// HTTP/2 trailers).
    pub fn scan_with_trailers(
        &mut self,
        input: &[u8],
        mut on_data: impl FnMut(&[u8]),
        mut on_trailer: impl FnMut(u8),
    ) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            self.state = match self.state {
                State::Size { value, digits } => match hex(b) {
                    Some(d) if digits < MAX_SIZE_DIGITS => State::Size {
                        value: value << 4 | d,
                        digits: digits + 1,
                    },
                    Some(_) => return Err(ChunkError::Size),
                    None if digits == 0 => return Err(ChunkError::Size),
                    None => {
                        self.line_extra = 0;
                        self.size_line(value, b)?
                    }
                },
                State::SizeLine { value } => {
                    self.line_extra += 1;
                    if self.line_extra > MAX_LINE_EXTRA {
                        return Err(ChunkError::TooLong);
                    }
                    self.size_line(value, b)?
                }
                State::Data { remaining } => {
                    let n = (remaining as usize).min(input.len() - i);
                    on_data(&input[i..i + n]);
                    i += n;
                    let remaining = remaining - n as u64;
                    self.state = if remaining == 0 {
                        State::DataCr
                    } else {
                        State::Data { remaining }
                    };
                    continue;
                }
                State::DataCr if b == b'\r' => State::DataLf,
                State::DataCr | State::DataLf if b == b'\n' => State::Size {
                    value: 0,
                    digits: 0,
                },
                State::DataCr | State::DataLf => return Err(ChunkError::Delimiter),
                State::TrailerStart if b == b'\r' => State::TrailerStart,
                State::TrailerStart if b == b'\n' => {
                    self.state = State::Done;
                    return Ok(i + 1);
                }
                State::TrailerStart | State::Trailer => {
                    self.trailer_bytes += 1;
                    if self.trailer_bytes > MAX_TRAILERS {
                        return Err(ChunkError::TooLong);
                    }
                    on_trailer(b);
                    if b == b'\n' {
                        State::TrailerStart
                    } else {
                        State::Trailer
                    }
                }
                State::Done => return Ok(i),
            };
            i += 1;
        }
        Ok(i)
    }

    fn size_line(&mut self, value: u64, b: u8) -> Result<State, ChunkError> {
        Ok(match b {
            b'\n' if value == 0 => State::TrailerStart,
            b'\n' => State::Data { remaining: value },
            // Extensions (`;name=value`), whitespace and the CR before LF are skipped.
            b'\r' | b';' | b' ' | b'\t' => State::SizeLine { value },
            _ if matches!(self.state, State::SizeLine { .. }) => State::SizeLine { value },
            _ => return Err(ChunkError::Size),
        })
    }
}

fn hex(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(input: &[u8], step: usize) -> Result<(usize, Vec<u8>, bool), ChunkError> {
        let mut scanner = ChunkedScanner::default();
        let mut data = Vec::new();
        let mut used = 0;
        for piece in input.chunks(step) {
            used += scanner.scan(piece, |d| data.extend_from_slice(d))?;
            if scanner.is_done() {
                break;
            }
        }
        Ok((used, data, scanner.is_done()))
    }

    #[test]
    fn finds_the_end_whatever_the_read_boundaries() {
        let body = b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nTrailer-A: x\r\n\r\nNEXT";
        for step in 1..body.len() {
            let (used, data, done) = scan_all(body, step).unwrap();
            assert!(done, "step {step}");
            assert_eq!(used, body.len() - 4, "step {step}");
            assert_eq!(data, b"hello0123456789");
        }
    }

    #[test]
    fn trailers_come_out_as_lines() {
        let body = b"3\r\nabc\r\n0\r\nGrpc-Status: 0\r\nX-B: 2\r\n\r\nNEXT";
        for step in 1..body.len() {
            let mut scanner = ChunkedScanner::default();
            let mut trailers = Vec::new();
            for piece in body.chunks(step) {
                scanner
                    .scan_with_trailers(piece, |_| {}, |b| trailers.push(b))
                    .unwrap();
                if scanner.is_done() {
                    break;
                }
            }
            assert_eq!(trailers, b"Grpc-Status: 0\r\nX-B: 2\r\n", "step {step}");
        }
    }

    #[test]
    fn refuses_malformed_chunks() {
        assert_eq!(scan_all(b"zz\r\n", 4).unwrap_err(), ChunkError::Size);
        assert_eq!(
            scan_all(b"3\r\nabcX\r\n", 16).unwrap_err(),
            ChunkError::Delimiter
        );
        assert_eq!(
            scan_all(b"ffffffffffffffffff\r\n", 32).unwrap_err(),
            ChunkError::Size
        );
        assert_eq!(scan_all(b"\r\n", 2).unwrap_err(), ChunkError::Size);
        let long_ext = format!("1;{}\r\n", "x".repeat(MAX_LINE_EXTRA + 1));
        assert_eq!(
            scan_all(long_ext.as_bytes(), 64).unwrap_err(),
            ChunkError::TooLong
        );
    }

    #[test]
    fn an_incomplete_body_is_not_done() {
        let (used, _, done) = scan_all(b"5\r\nhel", 3).unwrap();
        assert_eq!((used, done), (6, false));
    }
}
