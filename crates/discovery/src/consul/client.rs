//! GET requests to one Consul server over HTTP/1.1, on one kept-alive connection, and the
//! index of Consul's blocking queries.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Consul's header naming the index of what an answer reflects.
const INDEX: &str = "x-consul-index";
const TOKEN: &str = "x-consul-token";

pub(super) struct Client {
    /// `host:port`.
    authority: String,
    token: Option<HeaderValue>,
    connect_timeout: Duration,
    read_timeout: Duration,
    connection: Option<SendRequest<Empty<Bytes>>>,
}

/// One answer: its status, its `X-Consul-Index` (0 if none), and its body.
pub(super) struct Answer {
    pub status: StatusCode,
    pub index: u64,
    pub body: Bytes,
}

impl Answer {
    /// The body of a 200 answer to `path`, as JSON.
    pub fn ok_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, String> {
        if self.status != StatusCode::OK {
            return Err(format!("{path}: status {}", self.status));
        }
        serde_json::from_slice(&self.body).map_err(|e| format!("{path}: {e}"))
    }
}

impl Client {
    pub fn new(authority: String, token: &str, connect: Duration, read: Duration) -> Client {
        Client {
            authority,
            token: HeaderValue::from_str(token)
                .ok()
                .filter(|_| !token.is_empty()),
            connect_timeout: connect,
            read_timeout: read,
            connection: None,
        }
    }

    /// GETs `path_and_query`; the answer may take `wait` more than the read timeout (a
    /// blocking query's).
    pub async fn get(&mut self, path_and_query: &str, wait: Duration) -> Result<Answer, String> {
        let mut sender = match self.connection.take().filter(|c| !c.is_closed()) {
            Some(sender) => sender,
            None => self.connect().await?,
        };
        let mut request = Request::get(path_and_query)
            .header(header::HOST, &self.authority)
            .body(Empty::new())
            .map_err(|e| format!("bad request `{path_and_query}`: {e}"))?;
        if let Some(token) = &self.token {
            request.headers_mut().insert(TOKEN, token.clone());
        }
        let exchange = async {
            sender.ready().await?;
            let (head, body) = sender.send_request(request).await?.into_parts();
            Ok::<_, hyper::Error>((head, body.collect().await?.to_bytes()))
        };
        let (head, body) = timeout(self.read_timeout + wait, exchange)
            .await
            .map_err(|_| {
                format!(
                    "no answer from {} within {:?}",
                    self.authority,
                    self.read_timeout + wait
                )
            })?
            .map_err(|e| format!("{}: {e}", self.authority))?;
        self.connection = Some(sender);
        let index = head
            .headers
            .get(INDEX)
            .and_then(|index| index.to_str().ok()?.parse().ok())
            .unwrap_or(0);
        Ok(Answer {
            status: head.status,
            index,
            body,
        })
    }

    async fn connect(&self) -> Result<SendRequest<Empty<Bytes>>, String> {
        let stream = timeout(self.connect_timeout, TcpStream::connect(&self.authority))
            .await
            .map_err(|_| {
                format!(
                    "cannot connect to {} within {:?}",
                    self.authority, self.connect_timeout
                )
            })?
            .map_err(|e| format!("cannot connect to {}: {e}", self.authority))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("{}: {e}", self.authority))?;
        // Ends when the sender is dropped or the server closes.
        tokio::spawn(connection);
        Ok(sender)
    }
}

/// The index of the next blocking query after an answer at `answered`, the last one at
/// `previous`, as Consul's documentation asks: an index that went backwards (the server's state
/// was restored or rebuilt) starts over from 0, and an index is never below 1 after the first
/// answer (0 would not block).
pub(super) fn next_index(previous: u64, answered: u64) -> u64 {
    if answered < previous {
        0
    } else {
        answered.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_that_goes_backwards_starts_over() {
        assert_eq!(next_index(0, 7), 7);
        assert_eq!(next_index(7, 7), 7);
        assert_eq!(next_index(7, 9), 9);
        assert_eq!(next_index(9, 3), 0);
        assert_eq!(next_index(0, 0), 1);
    }
}
