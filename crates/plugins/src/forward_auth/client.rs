//! The HTTP/1.1 client `forward-auth` asks its authorization service with: one request per
//! connection (closed after the answer), a bounded response head and body. An answer that
//! is too large or malformed is a failed call, for the plugin's failure policy to decide.

use std::io;

use bytes::Bytes;
use pylon_plugin::CallError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most of a response head that is read.
const MAX_HEAD: usize = 16 * 1024;
/// The most of a response body that is read: an authorization answer is small.
pub(crate) const MAX_BODY: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;

/// Where the service is: `http://host[:port][/path][?query]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Endpoint {
    /// The host to connect to: a name, an IPv4 address or an IPv6 one without brackets.
    host: String,
    port: u16,
    /// The `Host` header: the authority as the URI gives it.
    authority: String,
    /// The request target: path and query.
    target: String,
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

/// The service's answer.
#[derive(Debug)]
pub(crate) struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Response {
    /// The first header called `name` (any case).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one request without a body and reads the answer. `headers` must be valid header
/// lines (no CR or LF): the caller checks what comes from the request.
pub(crate) async fn send(
    endpoint: &Endpoint,
    method: &str,
    headers: &[(String, String)],
) -> Result<Response, CallError> {
    let failed = |what: &str, e: io::Error| {
        CallError::Failed(format!("{what} {}:{}: {e}", endpoint.host, endpoint.port))
    };
    let mut stream = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|e| failed("connecting to", e))?;
    let mut request = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        endpoint.target, endpoint.authority
    );
    for (name, value) in headers {
        request.push_str(name);
        request.push_str(": ");
        request.push_str(value);
        request.push_str("\r\n");
    }
    if method != "GET" {
        request.push_str("Content-Length: 0\r\n");
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| failed("writing to", e))?;
    read_response(&mut stream)
        .await
        .map_err(|e| failed("reading from", e))
}

async fn read_response(stream: &mut TcpStream) -> io::Result<Response> {
    let mut buf = Vec::with_capacity(4096);
    let (status, headers, head_len) = loop {
        if fill(stream, &mut buf, MAX_HEAD).await? == 0 {
            return Err(invalid("the connection closed before the response head"));
        }
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut slots);
        match response.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let headers = response
                    .headers
                    .iter()
                    .map(|h| {
                        let value = String::from_utf8_lossy(h.value).into_owned();
                        (h.name.to_owned(), value)
                    })
                    .collect::<Vec<_>>();
                break (response.code.unwrap_or(0), headers, len);
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
            Ok(httparse::Status::Partial) => return Err(invalid("the response head is too large")),
            Err(e) => return Err(invalid(&format!("a malformed response head: {e}"))),
        }
    };
    buf.drain(..head_len);
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    };
    let body = if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else if find("transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked")) {
        read_chunked(stream, buf).await?
    } else if let Some(length) = find("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| invalid("a malformed Content-Length"))?;
        if length > MAX_BODY {
            return Err(too_large());
        }
        while buf.len() < length {
            if fill(stream, &mut buf, length).await? == 0 {
                return Err(invalid("the connection closed within the body"));
            }
        }
        buf.truncate(length);
        buf
    } else {
        // No framing: the body ends with the connection.
        while fill(stream, &mut buf, MAX_BODY + 1).await? > 0 {
            if buf.len() > MAX_BODY {
                return Err(too_large());
            }
        }
        buf
    };
    Ok(Response {
        status,
        headers,
        body: Bytes::from(body),
    })
}

/// Decodes a chunked body; `buf` holds what was read after the head.
async fn read_chunked(stream: &mut TcpStream, mut buf: Vec<u8>) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let (line, size) = loop {
            match httparse::parse_chunk_size(&buf) {
                Ok(httparse::Status::Complete(found)) => break found,
                Ok(httparse::Status::Partial) => {
                    let limit = buf.len() + 1024;
                    if fill(stream, &mut buf, limit).await? == 0 {
                        return Err(invalid("the connection closed within the body"));
                    }
                }
                Err(_) => return Err(invalid("a malformed chunk size")),
            }
        };
        // Trailers, if any, are left unread: the connection closes after this answer.
        if size == 0 {
            return Ok(body);
        }
        let size = usize::try_from(size).map_err(|_| too_large())?;
        if body.len().saturating_add(size) > MAX_BODY {
            return Err(too_large());
        }
        let end = line + size + 2;
        while buf.len() < end {
            if fill(stream, &mut buf, end).await? == 0 {
                return Err(invalid("the connection closed within the body"));
            }
        }
        body.extend_from_slice(&buf[line..line + size]);
        buf.drain(..end);
    }
}

/// Reads more into `buf`, up to `limit` bytes in all; the count read, 0 at the end.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>, limit: usize) -> io::Result<usize> {
    let start = buf.len();
    let want = limit.saturating_sub(start).clamp(1, 16 * 1024);
    buf.resize(start + want, 0);
    let read = stream.read(&mut buf[start..]).await;
    buf.truncate(start + *read.as_ref().unwrap_or(&0));
    read
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

fn too_large() -> io::Error {
    invalid(&format!(
        "the response body is over {} KiB",
        MAX_BODY / 1024
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

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
