//! Just enough of an HTTP/1.1 client to talk to a node's Admin API: one request per
//! connection, the whole answer read.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context};

const TIMEOUT: Duration = Duration::from_secs(30);

/// An Admin API at `host:port`, with the key to present.
pub struct AdminClient {
    authority: String,
    api_key: String,
}

pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON; for an error status, an error carrying APISIX's `error_msg`.
    pub fn json(self) -> anyhow::Result<serde_json::Value> {
        let value: serde_json::Value = serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "the Admin API answered {} with a body that is not JSON: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })?;
        if !(200..300).contains(&self.status) {
            match value.get("error_msg").and_then(|m| m.as_str()) {
                Some(message) => bail!("{message}"),
                None => bail!("the Admin API answered {}: {value}", self.status),
            }
        }
        Ok(value)
    }
}

impl AdminClient {
    /// `address` is `host:port`, optionally with an `http://` in front.
    pub fn new(address: &str, api_key: String) -> anyhow::Result<AdminClient> {
        let authority = address.strip_prefix("http://").unwrap_or(address);
        let authority = authority.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            bail!("`{address}` is not an Admin API address (host:port)");
        }
        Ok(AdminClient {
            authority: authority.to_owned(),
            api_key,
        })
    }

    pub fn request(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<&[u8]>,
    ) -> anyhow::Result<Response> {
        let exchange = || -> std::io::Result<Vec<u8>> {
            let addr = self
                .authority
                .to_socket_addrs()?
                .next()
                .ok_or_else(|| std::io::Error::other("the name resolves to no address"))?;
            let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
            stream.set_read_timeout(Some(TIMEOUT))?;
            stream.set_write_timeout(Some(TIMEOUT))?;
            let body = body.unwrap_or_default();
            let head = format!(
                "{method} {path_and_query} HTTP/1.1\r\nHost: {}\r\nX-API-KEY: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                self.authority,
                self.api_key,
                body.len()
            );
            stream.write_all(head.as_bytes())?;
            stream.write_all(body)?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer)?;
            Ok(answer)
        };
        let answer = exchange().with_context(|| {
            format!("Admin API at {}: {method} {path_and_query}", self.authority)
        })?;
        parse_response(&answer)
            .with_context(|| format!("Admin API at {}: {method} {path_and_query}", self.authority))
    }
}

fn parse_response(answer: &[u8]) -> anyhow::Result<Response> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(answer)? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => bail!("the answer ended inside its head"),
    };
    let status = response.code.unwrap_or_default();
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    let rest = &answer[head_len..];
    let body = if header("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        dechunk(rest)?
    } else if let Some(len) = header("content-length") {
        let len: usize = len.parse().context("bad Content-Length")?;
        rest.get(..len)
            .context("the answer is shorter than its Content-Length")?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response { status, body })
}

fn dechunk(mut rest: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("a chunk size line is cut short")?;
        let size = std::str::from_utf8(&rest[..line_end])?;
        let size = size.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16).context("bad chunk size")?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(rest.get(..size).context("a chunk is cut short")?);
        rest = rest.get(size + 2..).context("a chunk is cut short")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sized_and_chunked_bodies() {
        let sized = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!((sized.status, sized.body.as_slice()), (200, &b"{}"[..]));
        let chunked = parse_response(
            b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(chunked.body, b"{\"a\":1}");
        assert_eq!(
            chunked.json().unwrap_err().to_string(),
            "the Admin API answered 400: {\"a\":1}"
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Le").is_err());
    }
}
