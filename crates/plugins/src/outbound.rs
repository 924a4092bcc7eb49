//! The HTTP/1.1 client side that plugins which call out (`forward-auth`, `proxy-mirror`) share:
//! where a service is, and reading its answer with bounded heads, whatever the body's framing.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The most of a response head that is read.
const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

/// Where a service is: `http://host[:port][/path][?query]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Endpoint {
    /// The host to connect to: a name, an IPv4 address or an IPv6 one without brackets.
    pub host: String,
    pub port: u16,
    /// The `Host` header: the authority as the URI gives it.
    pub authority: String,
    /// The request target: path and query.
    pub target: String,
}

impl Endpoint {
    pub(crate) fn parse(uri: &str) -> Result<Endpoint, String> {
        let Some(rest) = uri.strip_prefix("http://") else {
            return Err(if uri.starts_with("https://") {
                "https is not supported yet: use an http:// uri".into()
            } else {
                "must be an http:// uri".into()
            });
        };
        let (authority, target) = match rest.find(['/', '?']) {
            Some(at) if rest[at..].starts_with('/') => (&rest[..at], rest[at..].to_owned()),
            Some(at) => (&rest[..at], format!("/{}", &rest[at..])),
            None => (rest, "/".to_owned()),
        };
        if target.bytes().any(|b| b <= b' ' || b >= 0x7f || b == b'#') {
            return Err("the path must not hold spaces, controls, `#` or non-ASCII".into());
        }
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (host, after) = v6.split_once(']').ok_or("an unclosed `[` in the host")?;
                (host, after.strip_prefix(':'))
            }
            None => match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        let port = match port {
            Some(port) => port.parse().map_err(|_| format!("a bad port `{port}`"))?,
            None => 80,
        };
        let valid_host = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b));
        if !valid_host {
            return Err(format!("a bad host `{host}`"));
        }
        Ok(Endpoint {
            host: host.to_owned(),
            port,
            authority: authority.to_owned(),
            target,
        })
    }
}

/// Appends a header line to a request head. `value` must hold no CR or LF: callers check
/// what comes from configuration, and a request's own headers were parsed without them.
pub(crate) fn push_header(head: &mut Vec<u8>, name: &str, value: &[u8]) {
    head.extend_from_slice(name.as_bytes());
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

/// A service's response head, once its body has been read.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The connection can carry another request: the body was framed and read to its end,
    /// and neither side asked to close.
    pub reusable: bool,
}

/// Reads a response to a request with `method`, handing its body to `body` piece by piece
/// (decoded from its framing); an error from `body` ends the read with that error.
pub(crate) async fn read_response<S: AsyncRead + Unpin>(
    stream: &mut S,
    method: &str,
    mut body: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<Answer> {
    let mut buf = Vec::with_capacity(4096);
    let (status, minor, headers) = loop {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut slots);
        match response.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let status = response.code.unwrap_or(0);
                let minor = response.version.unwrap_or(0);
                let headers = response
                    .headers
                    .iter()
                    .map(|h| {
                        let value = String::from_utf8_lossy(h.value).into_owned();
                        (h.name.to_owned(), value)
                    })
                    .collect::<Vec<_>>();
                buf.drain(..len);
                // An interim answer (`100 Continue`) is followed by the real one.
                if (100..200).contains(&status) && status != 101 {
                    continue;
                }
                break (status, minor, headers);
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {
                if fill(stream, &mut buf, MAX_HEAD).await? == 0 {
                    return Err(invalid("the connection closed before the response head"));
                }
            }
            Ok(httparse::Status::Partial) => return Err(invalid("the response head is too large")),
            Err(e) => return Err(invalid(&format!("a malformed response head: {e}"))),
        }
    };
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    };
    let closes = match find("connection") {
        Some(connection) => connection
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("close")),
        None => minor == 0,
    };
    let framed = if method == "HEAD" || status == 204 || status == 304 || status == 101 {
        true
    } else if find("transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked")) {
        read_chunked(stream, &mut buf, &mut body).await?;
        true
    } else if let Some(length) = find("content-length") {
        let mut left: u64 = length
            .parse()
            .map_err(|_| invalid("a malformed Content-Length"))?;
        loop {
            let take = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            body(&buf[..take])?;
            left -= take as u64;
            buf.drain(..take);
            if left == 0 {
                break;
            }
            more(stream, &mut buf).await?;
        }
        true
    } else {
        // No framing: the body ends with the connection.
        loop {
            body(&buf)?;
            buf.clear();
            if fill(stream, &mut buf, READ_SIZE).await? == 0 {
                break false;
            }
        }
    };
    Ok(Answer {
        status,
        headers,
        reusable: framed && !closes && status != 101 && buf.is_empty(),
    })
}

/// Decodes a chunked body from `buf`, which holds what was read after the head, and the
/// stream; the trailers, if any, are read and dropped. What follows the body stays in `buf`.
async fn read_chunked<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    body: &mut impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    loop {
        let (line, size) = loop {
            match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete(found)) => break found,
                Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => more(stream, buf).await?,
                _ => return Err(invalid("a malformed chunk size")),
            }
        };
        buf.drain(..line);
        if size == 0 {
            return skip_trailers(stream, buf).await;
        }
        let mut left = size;
        loop {
            let take = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            body(&buf[..take])?;
            buf.drain(..take);
            left -= take as u64;
            if left == 0 {
                break;
            }
            more(stream, buf).await?;
        }
        while buf.len() < 2 {
            more(stream, buf).await?;
        }
        if &buf[..2] != b"\r\n" {
            return Err(invalid("a chunk without its CRLF"));
        }
        buf.drain(..2);
    }
}

/// Reads the trailer section after the last chunk, to the empty line that ends it.
async fn skip_trailers<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> io::Result<()> {
    loop {
        match buf.windows(2).position(|w| w == b"\r\n") {
            Some(0) => {
                buf.drain(..2);
                return Ok(());
            }
            Some(end) => {
                buf.drain(..end + 2);
            }
            None if buf.len() < MAX_HEAD => more(stream, buf).await?,
            None => return Err(invalid("the trailers are too large")),
        }
    }
}

/// How much one read takes at most.
const READ_SIZE: usize = 16 * 1024;

/// Reads more of a body into `buf`; the stream's end there is an error.
async fn more<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> io::Result<()> {
    let limit = buf.len() + READ_SIZE;
    match fill(stream, buf, limit).await? {
        0 => Err(invalid("the connection closed within the body")),
        _ => Ok(()),
    }
}

/// Reads more into `buf`, up to `limit` bytes in all; the count read, 0 at the end.
async fn fill<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    limit: usize,
) -> io::Result<usize> {
    let want = limit.saturating_sub(buf.len()).clamp(1, READ_SIZE);
    // Into spare capacity, uninitialised: no bytes are zeroed only to be overwritten.
    buf.reserve(want);
    stream.take(want as u64).read_buf(buf).await
}

pub(crate) fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_is_read_to_its_end_whatever_its_framing() {
        let cases: [(&[u8], &[u8], bool); 6] = [
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                b"hello",
                true,
            ),
            (
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\n\
                  Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\
                  X-Trailer: 1\r\n\r\n",
                b"hello world",
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\n\r\nuntil the close",
                b"until the close",
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
                b"ok",
                false,
            ),
            (b"HTTP/1.0 204 No Content\r\n\r\n", b"", false),
            (
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                b"",
                true,
            ),
        ];
        for (response, expected, reusable) in cases {
            let mut body = Vec::new();
            let mut stream = response;
            let answer = read_response(&mut stream, "GET", |piece| {
                body.extend_from_slice(piece);
                Ok(())
            })
            .await
            .unwrap();
            let what = String::from_utf8_lossy(response);
            assert!(answer.status >= 200, "{what}");
            assert_eq!(
                (body.as_slice(), answer.reusable),
                (expected, reusable),
                "{what}"
            );
        }
    }

    #[tokio::test]
    async fn a_broken_answer_is_an_error() {
        let cases: [&[u8]; 4] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokX",
            b"NOT HTTP\r\n\r\n",
        ];
        for response in cases {
            let mut stream = response;
            let read = read_response(&mut stream, "GET", |_| Ok(())).await;
            assert!(read.is_err(), "{}", String::from_utf8_lossy(response));
        }
    }

    #[test]
    fn endpoints_are_http_uris() {
        let e = Endpoint::parse("http://auth.local:9000/check?x=1").unwrap();
        assert_eq!(
            (
                e.host.as_str(),
                e.port,
                e.authority.as_str(),
                e.target.as_str()
            ),
            ("auth.local", 9000, "auth.local:9000", "/check?x=1")
        );
        let e = Endpoint::parse("http://[::1]?q").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.target.as_str()),
            ("::1", 80, "/?q")
        );
        let e = Endpoint::parse("http://127.0.0.1").unwrap();
        assert_eq!((e.port, e.target.as_str()), (80, "/"));
        assert!(Endpoint::parse("https://a/")
            .unwrap_err()
            .contains("https is not supported"));
        assert!(Endpoint::parse("ftp://a/").is_err());
        assert!(Endpoint::parse("http://a:99999/").is_err());
        assert!(Endpoint::parse("http:///x").is_err());
        assert!(Endpoint::parse("http://a/b c").is_err());
    }
}
