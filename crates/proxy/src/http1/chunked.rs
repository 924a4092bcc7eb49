//! A scanner for chunked bodies that finds where the body ends without copying it.
//!
//! The proxy forwards chunked bodies byte for byte; it only needs to know where each one ends so
//! the connection can carry the next message. The same scanner also hands out the data bytes, for
//! the one case that needs them decoded (an HTTP/1.0 client).

use super::is_tchar;

const MAX_SIZE_DIGITS: u32 = 15;
const MAX_LINE_EXTRA: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("invalid chunk size")]
    Size,
    #[error("invalid chunk extension")]
    Extension,
    #[error("invalid trailer field")]
    Trailer,
    #[error("chunk extension or trailer too long")]
    TooLong,
    #[error("a line not ended by CRLF")]
    Delimiter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a chunk size.
    Size {
        value: u64,
        digits: u32,
    },
    /// Whitespace after the size, which only an extension may follow.
    SizeSpace {
        value: u64,
    },
    /// A chunk extension (`;name=value`), up to CR.
    Extension {
        value: u64,
    },
    /// The LF that ends the size line.
    SizeLf {
        value: u64,
    },
    Data {
        remaining: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    /// The LF of the empty line that ends the body.
    EndLf,
    Done,
}

/// Every line of a chunked body ends with CRLF: a bare LF or CR is refused, not taken as a line
/// end. The body is forwarded as it came, so a line end the gateway saw and the next hop did not
/// (or the other way round) would let the two disagree on where the message ends.
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
            if matches!(
                self.state,
                State::SizeSpace { .. } | State::Extension { .. }
            ) {
                self.line_extra += 1;
                if self.line_extra > MAX_LINE_EXTRA {
                    return Err(ChunkError::TooLong);
                }
            }
            let in_trailer_line = match self.state {
                State::TrailerStart => b != b'\r',
                State::TrailerName | State::TrailerValue | State::TrailerLf => true,
                _ => false,
            };
            if in_trailer_line {
                self.trailer_bytes += 1;
                if self.trailer_bytes > MAX_TRAILERS {
                    return Err(ChunkError::TooLong);
                }
                on_trailer(b);
            }
            self.state = match (self.state, b) {
                (State::Data { remaining }, _) => {
                    // Compared as u64: a chunk may be larger than the address space.
                    let n = remaining.min((input.len() - i) as u64) as usize;
                    on_data(&input[i..i + n]);
                    i += n;
                    self.state = match remaining - n as u64 {
                        0 => State::DataCr,
                        remaining => State::Data { remaining },
                    };
                    continue;
                }
                (State::Size { value, digits }, _) => match hex(b) {
                    Some(d) if digits < MAX_SIZE_DIGITS => State::Size {
                        value: value << 4 | d,
                        digits: digits + 1,
                    },
                    Some(_) => return Err(ChunkError::Size),
                    None if digits == 0 => return Err(ChunkError::Size),
                    None => {
                        self.line_extra = 0;
                        after_size(value, b)?
                    }
                },
                // RFC 9112 §7.1.1: `chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS
                // chunk-ext-val ] )`: whitespace after the size only before an extension.
                (State::SizeSpace { value }, b' ' | b'\t') => State::SizeSpace { value },
                (State::SizeSpace { value }, b';') => State::Extension { value },
                (State::SizeSpace { .. }, _) => return Err(ChunkError::Size),
                // Extensions are ignored (RFC 9112 §7.1.1) but must be text: a name, a token
                // or a quoted string can hold no control character but HTAB.
                (State::Extension { value }, b'\r') => State::SizeLf { value },
                (State::Extension { value }, _) if is_text(b) => State::Extension { value },
                (State::Extension { .. }, _) => return Err(ChunkError::Extension),
                (State::SizeLf { value: 0 }, b'\n') => State::TrailerStart,
                (State::SizeLf { value }, b'\n') => State::Data { remaining: value },
                (State::DataCr, b'\r') => State::DataLf,
                (State::DataLf, b'\n') => State::Size {
                    value: 0,
                    digits: 0,
                },
                (State::SizeLf { .. } | State::DataCr | State::DataLf, _) => {
                    return Err(ChunkError::Delimiter)
                }
                // RFC 9112 §7.1.2: `trailer-section = *( field-line CRLF )`, each line a
                // token, a colon and a value; no folded line.
                (State::TrailerStart, b'\r') => State::EndLf,
                (State::TrailerStart | State::TrailerName, _) if is_tchar(b) => State::TrailerName,
                (State::TrailerName, b':') => State::TrailerValue,
                (State::TrailerValue, b'\r') => State::TrailerLf,
                (State::TrailerValue, _) if is_text(b) => State::TrailerValue,
                (State::TrailerStart | State::TrailerName | State::TrailerValue, _) => {
                    return Err(ChunkError::Trailer)
                }
                (State::TrailerLf, b'\n') => State::TrailerStart,
                (State::EndLf, b'\n') => {
                    self.state = State::Done;
                    return Ok(i + 1);
                }
                (State::TrailerLf | State::EndLf, _) => return Err(ChunkError::Delimiter),
                (State::Done, _) => return Ok(i),
            };
            i += 1;
        }
        Ok(i)
    }
}

/// The state after a chunk size, from the byte that ended its digits.
fn after_size(value: u64, b: u8) -> Result<State, ChunkError> {
    match b {
        b'\r' => Ok(State::SizeLf { value }),
        b';' => Ok(State::Extension { value }),
        b' ' | b'\t' => Ok(State::SizeSpace { value }),
        b'\n' => Err(ChunkError::Delimiter),
        _ => Err(ChunkError::Size),
    }
}

/// A byte of a field value or chunk extension: visible ASCII, SP, HTAB or obs-text.
fn is_text(b: u8) -> bool {
    b == b'\t' || b >= b' ' && b != 0x7f
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

    /// Each body is refused, for its reason.
    fn assert_refused(bodies: &[(&[u8], ChunkError)]) {
        for (body, error) in bodies {
            assert_eq!(
                scan_all(body, body.len()).unwrap_err(),
                *error,
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn every_line_must_end_with_crlf() {
        let bodies: [(&[u8], ChunkError); 7] = [
            (b"3\nabc\r\n0\r\n\r\n", ChunkError::Delimiter),
            (b"3;ext\nabc\r\n0\r\n\r\n", ChunkError::Extension),
            (b"3;ext\rabc\r\n0\r\n\r\n", ChunkError::Delimiter),
            (b"3\r\nabc\n0\r\n\r\n", ChunkError::Delimiter),
            (b"3\r\nabc\r\n0\n\r\n", ChunkError::Delimiter),
            (b"3\r\nabc\r\n0\r\nX-T: 1\n\r\n", ChunkError::Trailer),
            (b"3\r\nabc\r\n0\r\n\r\r\n", ChunkError::Delimiter),
        ];
        assert_refused(&bodies);
    }

    #[test]
    fn size_lines_and_trailers_follow_the_grammar() {
        let bodies: [(&[u8], ChunkError); 9] = [
            // Whitespace after the size only before an extension (RFC 9112 §7.1.1).
            (b"3 junk\r\nabc\r\n0\r\n\r\n", ChunkError::Size),
            (b"3 \r\nabc\r\n0\r\n\r\n", ChunkError::Size),
            (b"3\x00\r\nabc\r\n0\r\n\r\n", ChunkError::Size),
            (b"3;a\x01b\r\nabc\r\n0\r\n\r\n", ChunkError::Extension),
            // A trailer line is `name: value` (RFC 9112 §7.1.2): no folding, no bare name.
            (b"0\r\nNo-Colon\r\n\r\n", ChunkError::Trailer),
            (b"0\r\n: no-name\r\n\r\n", ChunkError::Trailer),
            (b"0\r\nBad Name: 1\r\n\r\n", ChunkError::Trailer),
            (b"0\r\nX-T: 1\r\n folded\r\n\r\n", ChunkError::Trailer),
            (b"0\r\nX-T: a\x00b\r\n\r\n", ChunkError::Trailer),
        ];
        assert_refused(&bodies);
        let body =
            b"3 ; name = \"quoted;value\"\t;flag\r\nabc\r\n000;last\r\nX-T:\r\nX-U: \xe9 v\r\n\r\n";
        for step in 1..body.len() {
            let (used, data, done) = scan_all(body, step).unwrap();
            assert_eq!(
                (used, data.as_slice(), done),
                (body.len(), &b"abc"[..], true)
            );
        }
    }

    #[test]
    fn a_chunk_size_as_large_as_fifteen_hex_digits_is_read_without_overflow() {
        let (used, data, done) = scan_all(b"fffffffffffffff\r\nab", 64).unwrap();
        assert_eq!((used, data.as_slice(), done), (19, &b"ab"[..], false));
        assert_eq!(
            scan_all(b"1000000000000000\r\n", 64).unwrap_err(),
            ChunkError::Size
        );
    }

    #[test]
    fn an_incomplete_body_is_not_done() {
        let (used, _, done) = scan_all(b"5\r\nhel", 3).unwrap();
        assert_eq!((used, done), (6, false));
    }
}
