//! How long a message body is (RFC 9112 §6).

use super::head::{RequestHead, ResponseHead};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body at all.
    None,
    Length(u64),
    Chunked,
    /// Responses only: the body ends when the upstream closes the connection.
    UntilClose,
}

impl BodyFraming {
    pub fn is_none(self) -> bool {
        matches!(self, BodyFraming::None | BodyFraming::Length(0))
    }
}

/// A request whose length cannot be known safely; answered with 400 and a closed connection,
/// because the bytes that follow cannot be trusted to start the next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("both Content-Length and Transfer-Encoding")]
    Ambiguous,
    #[error("invalid Content-Length")]
    BadLength,
    #[error("Transfer-Encoding whose final coding is not chunked")]
    BadTransferEncoding,
}

pub fn request_framing(head: &RequestHead) -> Result<BodyFraming, FramingError> {
    match framing_headers(head.headers())? {
        Framing::Chunked => Ok(BodyFraming::Chunked),
        Framing::Length(0) | Framing::Unspecified => Ok(BodyFraming::None),
        Framing::Length(n) => Ok(BodyFraming::Length(n)),
        Framing::OtherCoding => Err(FramingError::BadTransferEncoding),
    }
}

/// The framing of a response to a request with method `method`.
pub fn response_framing(head: &ResponseHead, method: &str) -> Result<BodyFraming, FramingError> {
    let status = head.status();
    if method == "HEAD" || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(BodyFraming::None);
    }
    match framing_headers(head.headers())? {
        Framing::Chunked => Ok(BodyFraming::Chunked),
        Framing::Length(n) => Ok(BodyFraming::Length(n)),
        Framing::Unspecified | Framing::OtherCoding => Ok(BodyFraming::UntilClose),
    }
}

enum Framing {
    Unspecified,
    Length(u64),
    Chunked,
    OtherCoding,
}

fn framing_headers<'a>(
    headers: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> Result<Framing, FramingError> {
    let mut length = None;
    let mut transfer_encoding: Option<bool> = None;
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("content-length") {
            // Repeated identical values (or a list of them) are tolerated, as RFC 9110 allows.
            for item in value.split(|&b| b == b',') {
                let n = parse_length(item.trim_ascii()).ok_or(FramingError::BadLength)?;
                if length.is_some_and(|l| l != n) {
                    return Err(FramingError::BadLength);
                }
                length = Some(n);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
            transfer_encoding = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        }
    }
    match (length, transfer_encoding) {
        (Some(_), Some(_)) => Err(FramingError::Ambiguous),
        (Some(n), None) => Ok(Framing::Length(n)),
        (None, Some(true)) => Ok(Framing::Chunked),
        (None, Some(false)) => Ok(Framing::OtherCoding),
        (None, None) => Ok(Framing::Unspecified),
    }
}

fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(wire: &str) -> Result<BodyFraming, FramingError> {
        let head = RequestHead::from_wire(wire);
        request_framing(&head)
    }

    #[test]
    fn request_bodies_are_framed_or_refused() {
        assert_eq!(request("GET / HTTP/1.1\r\n\r\n"), Ok(BodyFraming::None));
        assert_eq!(
            request("POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n"),
            Ok(BodyFraming::Length(12))
        );
        assert_eq!(
            request("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n"),
            Ok(BodyFraming::Length(5))
        );
        assert_eq!(
            request("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Ok(BodyFraming::Chunked)
        );
        assert_eq!(
            request("POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(FramingError::Ambiguous)
        );
        assert_eq!(
            request("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
            Err(FramingError::BadLength)
        );
        assert_eq!(
            request("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            Err(FramingError::BadLength)
        );
        assert_eq!(
            request("POST / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n"),
            Err(FramingError::BadLength)
        );
        assert_eq!(
            request("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Err(FramingError::BadTransferEncoding)
        );
    }

    #[test]
    fn response_bodies_follow_status_and_method() {
        let mut head = ResponseHead::default();
        head.parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", 1024)
            .unwrap();
        assert_eq!(response_framing(&head, "GET"), Ok(BodyFraming::Length(5)));
        assert_eq!(response_framing(&head, "HEAD"), Ok(BodyFraming::None));
        head.parse(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
            1024,
        )
        .unwrap();
        assert_eq!(response_framing(&head, "GET"), Ok(BodyFraming::None));
        head.parse(b"HTTP/1.1 200 OK\r\n\r\n", 1024).unwrap();
        assert_eq!(response_framing(&head, "GET"), Ok(BodyFraming::UntilClose));
    }
}
