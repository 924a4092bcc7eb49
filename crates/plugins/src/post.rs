//! Batches POSTed over HTTP/1.1 (`http-logger`'s records, the OpenTelemetry exporter's spans),
//! on one connection kept alive between batches.

use std::io;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::batch::Sink;
use crate::outbound::{self, push_header, Endpoint};

/// How a batch becomes a request body.
pub(crate) type Body = Box<dyn Fn(&[Vec<u8>]) -> Vec<u8> + Send>;

/// A destination that takes batches as POST requests.
pub(crate) struct Post {
    endpoint: Endpoint,
    /// Headers every request carries besides `Host`, `Content-Type` and `Content-Length`
    /// (checked for CR and LF when configured).
    headers: Vec<(String, String)>,
    content_type: &'static str,
    /// How a batch becomes a body.
    body: Body,
    /// Bounds each exchange: connecting, sending, and reading the answer.
    timeout: Duration,
    /// The connection the last answer left open.
    conn: Option<TcpStream>,
}

impl Post {
    pub(crate) fn new(
        endpoint: Endpoint,
        headers: Vec<(String, String)>,
        content_type: &'static str,
        body: Body,
        timeout: Duration,
    ) -> Post {
        Post {
            endpoint,
            headers,
            content_type,
            body,
            timeout,
            conn: None,
        }
    }

    /// One request and its answer's status, on the kept connection or a new one.
    async fn exchange(&mut self, body: &[u8]) -> io::Result<u16> {
        let mut stream = match self.conn.take() {
            Some(stream) => stream,
            None => TcpStream::connect((self.endpoint.host.as_str(), self.endpoint.port)).await?,
        };
        let mut head = Vec::with_capacity(256);
        head.extend_from_slice(b"POST ");
        head.extend_from_slice(self.endpoint.target.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\n");
        push_header(&mut head, "Host", self.endpoint.authority.as_bytes());
        push_header(&mut head, "Content-Type", self.content_type.as_bytes());
        push_header(
            &mut head,
            "Content-Length",
            body.len().to_string().as_bytes(),
        );
        for (name, value) in &self.headers {
            push_header(&mut head, name, value.as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        stream.write_all(&head).await?;
        stream.write_all(body).await?;
        let answer = outbound::read_response(&mut stream, "POST", |_| Ok(())).await?;
        if answer.reusable {
            self.conn = Some(stream);
        }
        Ok(answer.status)
    }

    async fn bounded_exchange(&mut self, body: &[u8]) -> io::Result<u16> {
        match tokio::time::timeout(self.timeout, self.exchange(body)).await {
            Ok(answered) => answered,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")),
        }
    }
}

impl Sink for Post {
    async fn send(&mut self, batch: &[Vec<u8>]) -> io::Result<()> {
        let body = (self.body)(batch);
        let reused = self.conn.is_some();
        let status = match self.bounded_exchange(&body).await {
            // The server may have closed a kept connection while it idled: that is no
            // failure of the destination, so the batch goes again on a new one.
            Err(_) if reused => self.bounded_exchange(&body).await?,
            answered => answered?,
        };
        if status >= 400 {
            return Err(io::Error::other(format!("the server answered {status}")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;
    use crate::logger::json_array;

    /// Reads one request (head and `Content-Length` body) from `stream`.
    async fn request(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
        let mut buf = Vec::new();
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let mut body = buf[end + 4..].to_vec();
                while body.len() < len {
                    let mut more = [0; 1024];
                    let n = stream.read(&mut more).await.ok()?;
                    if n == 0 {
                        return None;
                    }
                    body.extend_from_slice(&more[..n]);
                }
                return Some((head, body));
            }
            let mut more = [0; 1024];
            let n = stream.read(&mut more).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&more[..n]);
        }
    }

    fn post(addr: std::net::SocketAddr) -> Post {
        Post::new(
            Endpoint::parse(&format!("http://{addr}/logs?x=1")).unwrap(),
            vec![("Authorization".into(), "Bearer t".into())],
            "application/json",
            Box::new(json_array),
            Duration::from_secs(10),
        )
    }

    #[tokio::test]
    async fn a_batch_is_one_post_and_the_connection_is_kept() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            for status in [200, 500] {
                let (head, body) = request(&mut stream).await.unwrap();
                seen.push((head, body));
                let answer = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
                stream.write_all(answer.as_bytes()).await.unwrap();
            }
            seen
        });
        let mut post = post(addr);
        post.send(&[b"1".to_vec(), b"{}".to_vec()]).await.unwrap();
        let error = post.send(&[b"2".to_vec()]).await.unwrap_err();
        assert!(error.to_string().contains("500"), "{error}");
        let seen = server.await.unwrap();
        let (head, body) = &seen[0];
        assert!(head.starts_with("POST /logs?x=1 HTTP/1.1\r\n"), "{head}");
        for line in [
            format!("Host: {addr}"),
            "Content-Type: application/json".into(),
            "Authorization: Bearer t".into(),
        ] {
            assert!(head.lines().any(|l| l == line), "{line} in {head}");
        }
        assert_eq!(body, b"[1,{}]");
        assert_eq!(seen[1].1, b"[2]", "sent on the same connection");
    }

    #[tokio::test]
    async fn a_kept_connection_the_server_closed_is_replaced_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut bodies = Vec::new();
            for _ in 0..2 {
                let (mut stream, _) = listener.accept().await.unwrap();
                let (_, body) = request(&mut stream).await.unwrap();
                bodies.push(body);
                stream
                    .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                    .await
                    .unwrap();
                // Closes the connection, having said nothing of it.
            }
            bodies
        });
        let mut post = post(addr);
        post.send(&[b"1".to_vec()]).await.unwrap();
        post.send(&[b"2".to_vec()]).await.unwrap();
        assert_eq!(server.await.unwrap(), [b"[1]".to_vec(), b"[2]".to_vec()]);
    }

    #[tokio::test]
    async fn a_destination_that_is_down_fails_the_try() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(post(addr).send(&[b"1".to_vec()]).await.is_err());
    }
}
