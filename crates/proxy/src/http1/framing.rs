//! How long a message body is (RFC 9112 §6), and the framing fields a response goes on with.
//!
//! Chunked is the one transfer coding the gateway implements. A request that uses any other is
//! refused, because its upstream might frame it otherwise; a response's other codings are passed
//! on, never decoded.

use super::head::{RequestHead, ResponseHead};
use super::is_token;

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

/// A message whose length cannot be known safely. A request is answered with an error and a
/// closed connection, because the bytes that follow cannot be trusted to start the next request;
/// a response is a bad gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("both Content-Length and Transfer-Encoding")]
    Ambiguous,
    #[error("invalid Content-Length")]
    BadLength,
    #[error("Transfer-Encoding that does not end in one chunked")]
    BadTransferEncoding,
    #[error("a transfer coding other than chunked")]
    UnsupportedCoding,
    #[error("Transfer-Encoding in an HTTP/1.0 message")]
    Http10TransferEncoding,
}

pub fn request_framing(head: &RequestHead) -> Result<BodyFraming, FramingError> {
    match framing_fields(head.headers(), head.minor_version())? {
        Framing::Codings(Codings::Chunked) => Ok(BodyFraming::Chunked),
        // RFC 9112 §6.1: a server SHOULD answer a coding it does not understand with 501.
        Framing::Codings(Codings::OtherThenChunked) => Err(FramingError::UnsupportedCoding),
        // RFC 9112 §6.3: 400, and the connection closed.
        Framing::Codings(Codings::NotChunked) => Err(FramingError::BadTransferEncoding),
        Framing::Length(0) | Framing::Unspecified => Ok(BodyFraming::None),
        Framing::Length(n) => Ok(BodyFraming::Length(n)),
    }
}

/// The framing of a response to a request with method `method`.
pub fn response_framing(head: &ResponseHead, method: &str) -> Result<BodyFraming, FramingError> {
    if has_no_body(head, method) {
        return Ok(BodyFraming::None);
    }
    match framing_fields(head.headers(), head.minor_version())? {
        Framing::Codings(Codings::Chunked | Codings::OtherThenChunked) => Ok(BodyFraming::Chunked),
        Framing::Length(n) => Ok(BodyFraming::Length(n)),
        // RFC 9112 §6.3: without chunked last, the body ends when the connection does.
        Framing::Unspecified | Framing::Codings(Codings::NotChunked) => Ok(BodyFraming::UntilClose),
    }
}

/// Whether the response's `Transfer-Encoding` lists a coding other than chunked: one that an
/// HTTP/1.0 client, which knows no transfer codings, could not be sent.
pub fn has_other_codings(head: &ResponseHead) -> bool {
    transfer_encoding_values(head.headers())
        .flat_map(list_items)
        .any(|coding| !coding.eq_ignore_ascii_case(b"chunked"))
}

/// Writes the fields that frame a response's body for an HTTP/1.1 client, the body forwarded
/// as it came (`framing` is what [`response_framing`] found): one `Content-Length`, however the
/// upstream listed it, or its `Transfer-Encoding` whole.
pub fn write_response_framing(out: &mut Vec<u8>, head: &ResponseHead, framing: BodyFraming) {
    match framing {
        BodyFraming::Length(n) => push_content_length(out, n),
        BodyFraming::Chunked | BodyFraming::UntilClose => {
            let mut codings = transfer_encoding_values(head.headers()).flat_map(list_items);
            if let Some(first) = codings.next() {
                out.extend_from_slice(b"Transfer-Encoding: ");
                out.extend_from_slice(first);
                for coding in codings {
                    out.extend_from_slice(b", ");
                    out.extend_from_slice(coding);
                }
                out.extend_from_slice(b"\r\n");
            }
        }
        // A response to HEAD or a 304 keeps the length the body would have had; a 1xx or 204
        // can have none (RFC 9112 §6.2).
        BodyFraming::None => {
            let status = head.status();
            if (100..200).contains(&status) || status == 204 {
                return;
            }
            if let Ok(Some(n)) = content_length(head.headers()) {
                push_content_length(out, n);
            }
        }
    }
}

/// RFC 9112 §6.3: responses that end with their head, whatever their fields say.
fn has_no_body(head: &ResponseHead, method: &str) -> bool {
    let status = head.status();
    method == "HEAD" || (100..200).contains(&status) || status == 204 || status == 304
}

enum Framing {
    Unspecified,
    Length(u64),
    Codings(Codings),
}

/// What `Transfer-Encoding` lists.
enum Codings {
    Chunked,
    /// Other codings, then chunked.
    OtherThenChunked,
    /// A last coding that is not chunked.
    NotChunked,
}

fn framing_fields<'a>(
    headers: impl Iterator<Item = (&'a str, &'a [u8])> + Clone,
    minor_version: u8,
) -> Result<Framing, FramingError> {
    let length = content_length(headers.clone())?;
    let Some(codings) = transfer_codings(headers)? else {
        return Ok(length.map_or(Framing::Unspecified, Framing::Length));
    };
    // RFC 9112 §6.1: HTTP/1.0 has no Transfer-Encoding; a sender that uses it may have framed
    // the message any way, Content-Length or not.
    if minor_version == 0 {
        return Err(FramingError::Http10TransferEncoding);
    }
    // RFC 9112 §6.3 allows acting on Transfer-Encoding alone, but both together are how
    // requests are smuggled: refused.
    if length.is_some() {
        return Err(FramingError::Ambiguous);
    }
    Ok(Framing::Codings(codings))
}

/// The `Content-Length`, if there is one. Repeated identical values (or a list of them) are one
/// value (RFC 9112 §6.3); values that differ, or any that is not a number, are an error.
fn content_length<'a>(
    headers: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> Result<Option<u64>, FramingError> {
    let mut length = None;
    for (name, value) in headers {
        if !name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        for item in value.split(|&b| b == b',') {
            let n = parse_length(item.trim_ascii()).ok_or(FramingError::BadLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(FramingError::BadLength);
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// What `Transfer-Encoding` lists, if the message has one. Chunked must come last and only once
/// (RFC 9112 §6.1), without parameters (§7.1); every coding must be a token.
fn transfer_codings<'a>(
    headers: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> Result<Option<Codings>, FramingError> {
    let mut present = false;
    let mut codings = 0usize;
    let mut chunked_at = None;
    for value in transfer_encoding_values(headers) {
        present = true;
        for coding in list_items(value) {
            let name = coding
                .split(|&b| b == b';')
                .next()
                .unwrap_or_default()
                .trim_ascii();
            if !is_token(name) {
                return Err(FramingError::BadTransferEncoding);
            }
            if name.eq_ignore_ascii_case(b"chunked") {
                if chunked_at.is_some() || name.len() != coding.len() {
                    return Err(FramingError::BadTransferEncoding);
                }
                chunked_at = Some(codings);
            }
            codings += 1;
        }
    }
    Ok(match (present, chunked_at) {
        (false, _) => None,
        // Present but empty: nothing says how the body is framed.
        (true, _) if codings == 0 => return Err(FramingError::BadTransferEncoding),
        (true, Some(0)) if codings == 1 => Some(Codings::Chunked),
        (true, Some(at)) if at + 1 == codings => Some(Codings::OtherThenChunked),
        (true, _) => Some(Codings::NotChunked),
    })
}

fn transfer_encoding_values<'a>(
    headers: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> impl Iterator<Item = &'a [u8]> {
    headers
        .filter(|(name, _)| name.eq_ignore_ascii_case("transfer-encoding"))
        .map(|(_, value)| value)
}

/// The items of a comma-separated list, without the empty ones a recipient must ignore
/// (RFC 9110 §5.6.1).
fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|item| !item.is_empty())
}

/// A decimal `Content-Length`. Any number of digits is valid (RFC 9112 §6.2); one too large for
/// a `u64` is refused rather than wrapped.
fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if !d.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

fn push_content_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"Content-Length: ");
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
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
            request("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n"),
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

    fn response(wire: &str) -> ResponseHead {
        let mut head = ResponseHead::default();
        head.parse(wire.as_bytes(), 1024).unwrap().unwrap();
        head
    }

    fn response_to_get(wire: &str) -> Result<BodyFraming, FramingError> {
        response_framing(&response(wire), "GET")
    }

    #[test]
    fn an_http10_message_with_transfer_encoding_has_faulty_framing() {
        for wire in [
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.0\r\nContent-Length: 3\r\nTransfer-Encoding: gzip\r\n\r\n",
        ] {
            assert_eq!(
                request(wire),
                Err(FramingError::Http10TransferEncoding),
                "{wire}"
            );
        }
        assert_eq!(
            request("POST / HTTP/1.0\r\nContent-Length: 3\r\n\r\n"),
            Ok(BodyFraming::Length(3))
        );
        assert_eq!(
            response_to_get("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(FramingError::Http10TransferEncoding)
        );
        assert_eq!(
            response_to_get(
                "HTTP/1.0 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            ),
            Err(FramingError::Http10TransferEncoding)
        );
    }

    #[test]
    fn chunked_must_be_last_once_and_alone_in_a_request() {
        for wire in [
            // Applied twice, in one field or two (RFC 9112 §6.1).
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            // Not last (RFC 9112 §6.3), or last in an earlier field only.
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
            // With a parameter, which chunked has none of (RFC 9112 §7.1).
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked;q=1\r\n\r\n",
            // Not a list of codings at all.
            "POST / HTTP/1.1\r\nTransfer-Encoding: \"chunked\"\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked x\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: \r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: ,\r\n\r\n",
        ] {
            assert_eq!(
                request(wire),
                Err(FramingError::BadTransferEncoding),
                "{wire}"
            );
        }
        // Codings the gateway does not implement: its upstream might frame them otherwise.
        for wire in [
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(
                request(wire),
                Err(FramingError::UnsupportedCoding),
                "{wire}"
            );
        }
        // Empty list items are not codings (RFC 9110 §5.6.1).
        assert_eq!(
            request("POST / HTTP/1.1\r\nTransfer-Encoding: , chunked,\r\n\r\n"),
            Ok(BodyFraming::Chunked)
        );
    }

    #[test]
    fn any_content_length_a_u64_holds_is_valid() {
        assert_eq!(
            request("POST / HTTP/1.1\r\nContent-Length: 00000000000000000000007\r\n\r\n"),
            Ok(BodyFraming::Length(7))
        );
        assert_eq!(
            request("POST / HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n"),
            Ok(BodyFraming::Length(u64::MAX))
        );
        assert_eq!(
            request("POST / HTTP/1.1\r\nContent-Length: 18446744073709551616\r\n\r\n"),
            Err(FramingError::BadLength)
        );
        assert_eq!(
            request("POST / HTTP/1.1\r\nContent-Length: 7\r\nContent-Length: 7, 7\r\n\r\n"),
            Ok(BodyFraming::Length(7))
        );
    }

    #[test]
    fn response_codings_frame_as_rfc_9112_says() {
        let get = response_to_get;
        assert_eq!(
            get("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Ok(BodyFraming::Chunked)
        );
        // Chunked not last: the body ends with the connection (RFC 9112 §6.3).
        assert_eq!(
            get("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Ok(BodyFraming::UntilClose)
        );
        assert_eq!(
            get("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
            Ok(BodyFraming::UntilClose)
        );
        for wire in [
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked;x=1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
        ] {
            assert!(get(wire).is_err(), "{wire}");
        }
        // Whatever a bodiless response's fields say, it ends with its head.
        let head = response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(response_framing(&head, "HEAD"), Ok(BodyFraming::None));
        for status in ["100 Continue", "204 No Content", "304 Not Modified"] {
            let wire = format!("HTTP/1.1 {status}\r\nTransfer-Encoding: chunked\r\n\r\n");
            assert_eq!(get(&wire), Ok(BodyFraming::None), "{status}");
        }
    }

    fn forwarded_framing(wire: &str, method: &str) -> String {
        let head = response(wire);
        let mut out = Vec::new();
        write_response_framing(&mut out, &head, response_framing(&head, method).unwrap());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_response_goes_on_with_one_length_or_its_codings() {
        let framing = forwarded_framing;
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\n",
                "GET"
            ),
            "Content-Length: 2\r\n"
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 007\r\n\r\n", "HEAD"),
            "Content-Length: 7\r\n"
        );
        assert_eq!(
            framing(
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n",
                "GET"
            ),
            "Content-Length: 7\r\n"
        );
        // RFC 9112 §6.1, §6.2: no Content-Length nor Transfer-Encoding in a 1xx or a 204.
        for status in ["103 Early Hints", "204 No Content"] {
            let wire = format!(
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n"
            );
            assert_eq!(framing(&wire, "GET"), "", "{status}");
        }
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                "HEAD"
            ),
            ""
        );
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                "GET"
            ),
            "Transfer-Encoding: chunked\r\n"
        );
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip,\r\nTransfer-Encoding: chunked\r\n\r\n",
                "GET"
            ),
            "Transfer-Encoding: gzip, chunked\r\n"
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "GET"),
            "Transfer-Encoding: gzip\r\n"
        );
        assert_eq!(framing("HTTP/1.1 200 OK\r\n\r\n", "GET"), "");
    }

    #[test]
    fn other_codings_are_told_from_chunked_alone() {
        let codings = |wire: &str| has_other_codings(&response(wire));
        assert!(!codings(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(!codings("HTTP/1.1 200 OK\r\n\r\n"));
        assert!(codings(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        ));
        assert!(codings(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: deflate\r\n\r\n"
        ));
    }
}
