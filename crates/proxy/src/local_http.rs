//! The node's local HTTP endpoints (the control API, the metrics listener): a small HTTP/1.1
//! server on the control runtime, one GET per connection, for the operator and the tools on
//! the machine. It has no authentication: it must never listen where traffic comes from.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::http1::{HeadLimits, RequestHead};

/// A client has this long to send its request and take the answer.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
const LIMITS: HeadLimits = HeadLimits {
    max_request_line: 4096,
    max_head: 16 * 1024,
    max_headers: 64,
};

/// A whole response.
#[derive(Debug, PartialEq)]
pub(crate) struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Answer {
    pub fn json(status: u16, body: String) -> Answer {
        Answer {
            status,
            content_type: "application/json",
            body,
        }
    }

    /// `{"error_msg": message}`, as the gateway's other errors.
    pub fn error(status: u16, message: &str) -> Answer {
        Answer::json(
            status,
            serde_json::json!({ "error_msg": message }).to_string(),
        )
    }
}

/// Answers every connection to `listener` with `respond(method, path)`, for ever; run it on
/// the control runtime. `respond` runs on the runtime's blocking threads: a long answer (a
/// scrape of many routes' metrics) holds up no config change. `name` says whose listener
/// failed in the log.
pub(crate) async fn serve<F>(listener: TcpListener, name: &'static str, respond: F)
where
    F: Fn(&str, &str) -> Answer + Send + Sync + 'static,
{
    let respond = Arc::new(respond);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let respond = respond.clone();
                tokio::spawn(async move {
                    let exchange = answer(stream, respond);
                    let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, exchange).await;
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("{name} accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer<F>(mut stream: TcpStream, respond: Arc<F>) -> io::Result<()>
where
    F: Fn(&str, &str) -> Answer + Send + Sync + 'static,
{
    let mut buf = Vec::with_capacity(1024);
    let mut head = RequestHead::default();
    let answer = loop {
        match head.parse(&buf, &LIMITS) {
            Ok(Some(_)) => {
                let (method, path) = (head.method().to_owned(), head.path().to_owned());
                let answered = tokio::task::spawn_blocking(move || respond(&method, &path));
                break answered
                    .await
                    .unwrap_or_else(|_| Answer::error(500, "500 Internal Server Error"));
            }
            Ok(None) => {}
            Err(_) => break Answer::error(400, "400 Bad Request"),
        }
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = format!(
        "HTTP/1.1 {} {}\r\nServer: Pylon\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        answer.status,
        reason(answer.status),
        answer.content_type,
        answer.body.len(),
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(answer.body.as_bytes()).await?;
    stream.shutdown().await
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}
