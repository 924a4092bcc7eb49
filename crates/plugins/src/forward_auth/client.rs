//! The HTTP/1.1 client `forward-auth` asks its authorization service with: one request per
//! connection (closed after the answer), a bounded response head and body. An answer that
//! is too large or malformed is a failed call, for the plugin's failure policy to decide.

use std::io;

use bytes::Bytes;
use pylon_plugin::CallError;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::outbound::{self, Endpoint};

/// The most of a response body that is read: an authorization answer is small.
pub(crate) const MAX_BODY: usize = 64 * 1024;

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
    )
    .into_bytes();
    for (name, value) in headers {
        outbound::push_header(&mut request, name, value.as_bytes());
    }
    if method != "GET" {
        request.extend_from_slice(b"Content-Length: 0\r\n");
    }
    request.extend_from_slice(b"\r\n");
    stream
        .write_all(&request)
        .await
        .map_err(|e| failed("writing to", e))?;
    read_response(&mut stream, method)
        .await
        .map_err(|e| failed("reading from", e))
}

/// The whole answer, its body collected up to [`MAX_BODY`].
async fn read_response(stream: &mut TcpStream, method: &str) -> io::Result<Response> {
    let mut body = Vec::new();
    let answer = outbound::read_response(stream, method, |piece| {
        if body.len() + piece.len() > MAX_BODY {
            return Err(outbound::invalid(&format!(
                "the response body is over {} KiB",
                MAX_BODY / 1024
            )));
        }
        body.extend_from_slice(piece);
        Ok(())
    })
    .await?;
    Ok(Response {
        status: answer.status,
        headers: answer.headers,
        body: Bytes::from(body),
    })
}
