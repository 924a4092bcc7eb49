//! The control API: one node's internal state over HTTP, APISIX's `/v1/...` endpoints.
//!
//! A small HTTP/1.1 server on the control runtime, one request per connection. It is meant
//! for the operator on the machine (loopback by default, as APISIX's): it has no
//! authentication, so it must never listen where traffic comes from.
//!
//! - `GET /v1/healthcheck`: every upstream with health checks, its nodes and their status.
//! - `GET /v1/healthcheck/<kind>/<id>`: the one defined at `<kind>/<id>` (`upstreams/1`, or
//!   `routes/7` for an inline upstream).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::health::HealthRegistry;
use crate::http1::{HeadLimits, RequestHead};

/// A client has this long to send its request and take the answer.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
const LIMITS: HeadLimits = HeadLimits {
    max_request_line: 4096,
    max_head: 16 * 1024,
    max_headers: 64,
};

/// The `control` section of the node config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlSettings {
    pub enabled: bool,
    /// Port 0 picks a free port.
    pub listen: SocketAddr,
}

impl Default for ControlSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
        }
    }
}

/// The control API's listener, bound and ready to serve.
pub struct ControlApi {
    listener: TcpListener,
    health: Arc<HealthRegistry>,
}

impl ControlApi {
    pub async fn bind(settings: &ControlSettings, health: Arc<HealthRegistry>) -> io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(settings.listen).await?,
            health,
        })
    }

    /// The address actually listened on (port 0 resolved).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves for ever; run it on the control runtime.
    pub async fn serve(self) {
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    let health = self.health.clone();
                    tokio::spawn(async move {
                        let _ =
                            tokio::time::timeout(EXCHANGE_TIMEOUT, answer(stream, &health)).await;
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("control API accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

async fn answer(mut stream: TcpStream, health: &HealthRegistry) -> io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut head = RequestHead::default();
    let (status, body) = loop {
        match head.parse(&buf, &LIMITS) {
            Ok(Some(_)) => break route(head.method(), head.path(), health),
            Ok(None) => {}
            Err(_) => break error(400, "400 Bad Request"),
        }
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let response = format!(
        "HTTP/1.1 {status} {}\r\nServer: Pylon\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        reason(status),
        body.len(),
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// The status and JSON body for `method path`.
fn route(method: &str, path: &str, health: &HealthRegistry) -> (u16, String) {
    let Some(rest) = path.strip_prefix("/v1/healthcheck") else {
        return error(404, "404 Not Found");
    };
    if method != "GET" {
        return error(405, "405 Method Not Allowed");
    }
    let json = match rest {
        "" | "/" => serde_json::to_string(&health.report_all()),
        _ => {
            let key = rest.trim_start_matches('/').trim_end_matches('/');
            match health.report(key) {
                Some(report) => serde_json::to_string(&report),
                None => return error(404, &format!("no health checker for {key}")),
            }
        }
    };
    match json {
        Ok(body) => (200, body),
        // Plain data with string keys: serializing it cannot fail.
        Err(e) => error(500, &e.to_string()),
    }
}

fn error(status: u16, message: &str) -> (u16, String) {
    (
        status,
        serde_json::json!({ "error_msg": message }).to_string(),
    )
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Internal Server Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_paths_and_upstreams_are_json_404s() {
        let health = HealthRegistry::default();
        assert_eq!(route("GET", "/v1/healthcheck", &health), (200, "[]".into()));
        assert_eq!(
            route("GET", "/v1/schema", &health),
            (404, r#"{"error_msg":"404 Not Found"}"#.into())
        );
        assert_eq!(
            route("GET", "/v1/healthcheck/upstreams/1", &health),
            (
                404,
                r#"{"error_msg":"no health checker for upstreams/1"}"#.into()
            )
        );
        assert_eq!(route("POST", "/v1/healthcheck", &health).0, 405);
    }
}
