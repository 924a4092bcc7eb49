//! Request and response heads: the raw bytes of the head and where each part of it is.

use std::ops::Range;

use super::{has_token, is_framing_header, is_hop_by_hop};

/// Size limits for a request head; breaking one is the client's error (414 / 431).
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    pub max_request_line: usize,
    pub max_head: usize,
    pub max_headers: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("request line too long")]
    LineTooLong,
    #[error("header section too large")]
    HeadTooLarge,
    #[error("too many headers")]
    TooManyHeaders,
    #[error("malformed head: {0}")]
    Malformed(&'static str),
    #[error("unsupported HTTP version")]
    Version,
}

/// Where one header is within the head: its name in [`Block::text`], its value in
/// [`Block::raw`].
#[derive(Debug, Clone)]
struct HeaderAt {
    name: Range<usize>,
    value: Range<usize>,
}

/// The header block shared by request and response heads.
#[derive(Debug, Default)]
struct Block {
    /// The head as received.
    raw: Vec<u8>,
    /// The parts httparse has checked as text (method, target, reason, header names), copied
    /// as `str`: they are read dozens of times per request, and reading them from `raw` would
    /// check them as UTF-8 each time.
    text: String,
    headers: Vec<HeaderAt>,
}

impl Block {
    /// Starts the block of a new head: the first `len` bytes of `buf`.
    fn start(&mut self, buf: &[u8], len: usize) {
        self.raw.clear();
        self.raw.extend_from_slice(&buf[..len]);
        self.text.clear();
        self.headers.clear();
    }

    /// Keeps `part` as text; returns where it is in `text`.
    fn push_text(&mut self, part: &str) -> Range<usize> {
        let start = self.text.len();
        self.text.push_str(part);
        start..self.text.len()
    }

    /// Records `headers`, parsed from `buf`, whose first bytes [`Block::start`] kept.
    fn push_headers(&mut self, buf: &[u8], headers: &[httparse::Header<'_>]) {
        let base = buf.as_ptr() as usize;
        for header in headers {
            let start = header.value.as_ptr() as usize - base;
            let name = self.push_text(header.name);
            self.headers.push(HeaderAt {
                name,
                value: start..start + header.value.len(),
            });
        }
    }

    fn text_at(&self, r: &Range<usize>) -> &str {
        &self.text[r.clone()]
    }

    fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + Clone {
        self.headers
            .iter()
            .map(|h| (self.text_at(&h.name), &self.raw[h.value.clone()]))
    }

    /// Names are compared length first: lookups run several times per request over every
    /// header.
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| {
                h.name.len() == name.len()
                    && self.text.as_bytes()[h.name.clone()].eq_ignore_ascii_case(name.as_bytes())
            })
            .map(|h| &self.raw[h.value.clone()])
    }
}

/// A parsed request head. Reused across the requests of a connection.
#[derive(Debug, Default)]
pub struct RequestHead {
    block: Block,
    method: Range<usize>,
    target: Range<usize>,
    minor_version: u8,
}

impl RequestHead {
    /// Parses the head at the start of `buf`. `Ok(None)`: more bytes are needed.
    /// On success returns the head's length; the body, if any, follows it in `buf`.
    pub fn parse(&mut self, buf: &[u8], limits: &HeadLimits) -> Result<Option<usize>, HeadError> {
        let mut storage = [httparse::EMPTY_HEADER; 128];
        let storage = &mut storage[..limits.max_headers.min(128)];
        let mut req = httparse::Request::new(storage);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(len)) => {
                if len > limits.max_head {
                    return Err(HeadError::HeadTooLarge);
                }
                let line_end = memchr::memchr(b'\n', buf).unwrap_or(len);
                if line_end > limits.max_request_line {
                    return Err(HeadError::LineTooLong);
                }
                let version = req.version.ok_or(HeadError::Malformed("no version"))?;
                let method = req.method.ok_or(HeadError::Malformed("no method"))?;
                let target = req.path.ok_or(HeadError::Malformed("no target"))?;
                self.block.start(buf, len);
                self.method = self.block.push_text(method);
                self.target = self.block.push_text(target);
                self.minor_version = version;
                self.block.push_headers(buf, req.headers);
                Ok(Some(len))
            }
            Ok(httparse::Status::Partial) => match memchr::memchr(b'\n', buf) {
                None if buf.len() > limits.max_request_line => Err(HeadError::LineTooLong),
                Some(end) if end > limits.max_request_line => Err(HeadError::LineTooLong),
                _ if buf.len() > limits.max_head => Err(HeadError::HeadTooLarge),
                _ => Ok(None),
            },
            Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooManyHeaders),
            Err(httparse::Error::Version) => Err(HeadError::Version),
            Err(httparse::Error::Token) => Err(HeadError::Malformed(
                "invalid character in method or header name",
            )),
            Err(httparse::Error::HeaderName) => Err(HeadError::Malformed("invalid header name")),
            Err(httparse::Error::HeaderValue) => Err(HeadError::Malformed("invalid header value")),
            Err(_) => Err(HeadError::Malformed("invalid request line")),
        }
    }

    pub fn method(&self) -> &str {
        self.block.text_at(&self.method)
    }

    /// The request target exactly as received.
    pub fn target(&self) -> &str {
        self.block.text_at(&self.target)
    }

    /// The target's path: everything before `?`, without the scheme and authority of an
    /// absolute-form target (`GET http://host/path`).
    pub fn path(&self) -> &str {
        let target = self.origin_form();
        match target.split_once('?').map_or(target, |(p, _)| p) {
            "" => "/",
            path => path,
        }
    }

    /// The query string after `?`, if any.
    pub fn query(&self) -> Option<&str> {
        self.origin_form().split_once('?').map(|(_, q)| q)
    }

    /// The authority of an absolute-form target, which stands in for `Host` (RFC 9112 §3.2.2).
    pub fn authority(&self) -> Option<&str> {
        let rest = strip_scheme(self.target())?;
        Some(&rest[..rest.find(['/', '?']).unwrap_or(rest.len())])
    }

    /// The host the client asked for: an absolute-form target's authority, else `Host`.
    pub fn client_host(&self) -> Option<&[u8]> {
        self.authority()
            .map(str::as_bytes)
            .or_else(|| self.header("host"))
    }

    fn origin_form(&self) -> &str {
        let target = self.target();
        match strip_scheme(target) {
            Some(rest) => &rest[rest.find(['/', '?']).unwrap_or(rest.len())..],
            None => target,
        }
    }

    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub fn minor_version(&self) -> u8 {
        self.minor_version
    }

    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + Clone {
        self.block.headers()
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.block.header(name)
    }

    /// The raw head, request line included.
    pub fn raw(&self) -> &[u8] {
        &self.block.raw
    }
}

#[cfg(test)]
impl RequestHead {
    /// The head of `wire`, which must be a complete request head, parsed with roomy limits.
    pub(crate) fn from_wire(wire: &str) -> RequestHead {
        let mut head = RequestHead::default();
        let limits = HeadLimits {
            max_request_line: 1024,
            max_head: 4096,
            max_headers: 64,
        };
        head.parse(wire.as_bytes(), &limits).unwrap().unwrap();
        head
    }
}

/// What follows `http://` or `https://` (in any case) in an absolute-form target.
fn strip_scheme(target: &str) -> Option<&str> {
    ["http://", "https://"].iter().find_map(|scheme| {
        let head = target.get(..scheme.len())?;
        head.eq_ignore_ascii_case(scheme)
            .then(|| &target[scheme.len()..])
    })
}

/// A parsed response head.
#[derive(Debug, Default)]
pub struct ResponseHead {
    block: Block,
    status: u16,
    reason: Range<usize>,
    minor_version: u8,
}

impl ResponseHead {
    /// Parses the head at the start of `buf`. `Ok(None)`: more bytes are needed.
    pub fn parse(&mut self, buf: &[u8], max_head: usize) -> Result<Option<usize>, HeadError> {
        let mut storage = [httparse::EMPTY_HEADER; 128];
        let mut res = httparse::Response::new(&mut storage);
        match res.parse(buf) {
            Ok(httparse::Status::Complete(len)) if len <= max_head => {
                self.status = res.code.ok_or(HeadError::Malformed("no status"))?;
                self.minor_version = res.version.ok_or(HeadError::Malformed("no version"))?;
                self.block.start(buf, len);
                self.reason = self.block.push_text(res.reason.unwrap_or(""));
                self.block.push_headers(buf, res.headers);
                Ok(Some(len))
            }
            Ok(httparse::Status::Partial) if buf.len() <= max_head => Ok(None),
            Ok(_) => Err(HeadError::HeadTooLarge),
            Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooManyHeaders),
            Err(_) => Err(HeadError::Malformed("invalid response head")),
        }
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    pub fn reason(&self) -> &str {
        self.block.text_at(&self.reason)
    }

    pub fn minor_version(&self) -> u8 {
        self.minor_version
    }

    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + Clone {
        self.block.headers()
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.block.header(name)
    }

    pub fn raw(&self) -> &[u8] {
        &self.block.raw
    }

    /// Writes the head as it goes on to the client, up to its framing: the status line and
    /// every field but the hop-by-hop ones, those `Connection` names, and `Content-Length` and
    /// `Transfer-Encoding`, which depend on how the body is forwarded (see
    /// [`super::write_response_framing`]; a 1xx has neither, RFC 9112 §6.1, §6.2).
    pub fn write_forwarded(&self, out: &mut Vec<u8>) {
        self.write_edited(out, None, |_| true);
    }

    /// As [`ResponseHead::write_forwarded`], with another status (and its standard reason)
    /// if `status` says so, and only the fields `keep` keeps.
    pub fn write_edited(
        &self,
        out: &mut Vec<u8>,
        status: Option<u16>,
        keep: impl Fn(&str) -> bool,
    ) {
        out.extend_from_slice(b"HTTP/1.1 ");
        match status.filter(|&s| s != self.status) {
            Some(status) => {
                out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
                out.push(b' ');
                let reason = http::StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("");
                out.extend_from_slice(reason.as_bytes());
            }
            None => {
                out.extend_from_slice(itoa::Buffer::new().format(self.status).as_bytes());
                out.push(b' ');
                out.extend_from_slice(self.reason().as_bytes());
            }
        }
        out.extend_from_slice(b"\r\n");
        let connection = self.header("connection");
        for (name, value) in self.headers() {
            if is_hop_by_hop(name)
                || is_framing_header(name)
                || connection.is_some_and(|c| has_token(c, name))
                || !keep(name)
            {
                continue;
            }
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_request_line: 64,
        max_head: 256,
        max_headers: 4,
    };

    #[test]
    fn parses_a_request_head_in_pieces() {
        let mut head = RequestHead::default();
        let wire = b"GET /a/b?x=1&y HTTP/1.1\r\nHost: Example.com\r\nX-A: 1\r\n\r\nBODY";
        assert_eq!(head.parse(&wire[..20], &LIMITS), Ok(None));
        assert_eq!(head.parse(wire, &LIMITS), Ok(Some(wire.len() - 4)));
        assert_eq!(head.method(), "GET");
        assert_eq!(head.target(), "/a/b?x=1&y");
        assert_eq!(head.path(), "/a/b");
        assert_eq!(head.query(), Some("x=1&y"));
        assert_eq!(head.minor_version(), 1);
        assert_eq!(head.header("host"), Some(&b"Example.com"[..]));
        assert_eq!(head.headers().count(), 2);
    }

    #[test]
    fn absolute_form_targets_give_path_query_and_authority() {
        let head = RequestHead::from_wire(
            "GET HTTP://API.example.com:8080/v1/x?y=1 HTTP/1.1\r\nHost: other\r\n\r\n",
        );
        assert_eq!(head.target(), "HTTP://API.example.com:8080/v1/x?y=1");
        assert_eq!(head.authority(), Some("API.example.com:8080"));
        assert_eq!(head.path(), "/v1/x");
        assert_eq!(head.query(), Some("y=1"));
        let head = RequestHead::from_wire("GET http://h?q HTTP/1.1\r\n\r\n");
        assert_eq!((head.path(), head.query()), ("/", Some("q")));
        let head = RequestHead::from_wire("GET /plain HTTP/1.1\r\n\r\n");
        assert_eq!((head.authority(), head.path()), (None, "/plain"));
    }

    #[test]
    fn enforces_limits_before_the_head_is_complete() {
        let mut head = RequestHead::default();
        let long_line = format!("GET /{} HTTP/1.1\r\n", "a".repeat(80));
        assert_eq!(
            head.parse(long_line.as_bytes(), &LIMITS),
            Err(HeadError::LineTooLong)
        );
        assert_eq!(
            head.parse(&[b'a'; 65], &LIMITS),
            Err(HeadError::LineTooLong)
        );
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "v".repeat(300));
        assert_eq!(
            head.parse(big.as_bytes(), &LIMITS),
            Err(HeadError::HeadTooLarge)
        );
        let many = "GET / HTTP/1.1\r\na: 1\r\nb: 1\r\nc: 1\r\nd: 1\r\ne: 1\r\n\r\n";
        assert_eq!(
            head.parse(many.as_bytes(), &LIMITS),
            Err(HeadError::TooManyHeaders)
        );
        assert!(matches!(
            head.parse(b"GET / HTTP/1.1\r\nBad Header: 1\r\n\r\n", &LIMITS),
            Err(HeadError::Malformed(_))
        ));
        assert_eq!(
            head.parse(b"GET / HTTP/2.0\r\n\r\n", &LIMITS),
            Err(HeadError::Version)
        );
    }

    #[test]
    fn parses_a_response_head() {
        let mut head = ResponseHead::default();
        let wire = b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(head.parse(wire, 1024), Ok(Some(wire.len() - 3)));
        assert_eq!(head.status(), 404);
        assert_eq!(head.reason(), "Not Found");
        assert_eq!(head.header("content-length"), Some(&b"3"[..]));
        assert!(head.parse(b"garbage\r\n\r\n", 1024).is_err());
        assert_eq!(
            head.parse(b"HTTP/1.1 200 OK\r\n", 8),
            Err(HeadError::HeadTooLarge)
        );
    }

    #[test]
    fn a_forwarded_response_head_keeps_only_end_to_end_fields() {
        let mut head = ResponseHead::default();
        let wire = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nConnection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\nLink: </b.js>\r\n\r\n";
        head.parse(wire, 1024).unwrap();
        let mut out = Vec::new();
        head.write_forwarded(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nLink: </b.js>\r\n"
        );
    }
}
