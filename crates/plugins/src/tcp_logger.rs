//! `tcp-logger`: sends the records of the requests `match` selects to a TCP server, in
//! batches: one connection per batch, which carries the batch as one JSON array and closes.
//! See [`crate::batch`] for how batches gather, go and are retried.

use std::io;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pylon_model::FieldError;
use pylon_plugin::Plugin;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::batch::{Counts, Destinations, Sink};
use crate::descriptor::{BuildEnv, Descriptor};
use crate::logger::{self, json_array, Logger};

pub(crate) const DESCRIPTOR: Descriptor = Descriptor {
    name: "tcp-logger",
    priority: 405,
    schema: logger::schema::<TcpLoggerConfig>,
    build,
    credential: None,
    metadata: Some(logger::METADATA),
};

/// What became of its entries since the process started (`/v1/status`).
pub(crate) static COUNTS: Counts = Counts::new();
static DESTINATIONS: Destinations<(Server, Duration)> = Destinations::new();

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct TcpLoggerConfig {
    /// The server's name or IP address.
    #[schemars(length(min = 1))]
    host: String,
    #[schemars(range(min = 1))]
    port: u16,
    /// Milliseconds each batch may take, connecting included.
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 1))]
    timeout: u64,
    /// Not supported yet: only `false`.
    #[serde(default)]
    tls: bool,
    /// Not supported yet (it needs `tls`).
    tls_options: Option<String>,
}

fn default_timeout() -> u64 {
    1000
}

/// A server, as a logger's `host` and `port` name it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Server {
    pub host: String,
    pub port: u16,
}

impl Server {
    /// Checks `host` and `port` as configured.
    pub(crate) fn new(host: String, port: u16) -> Result<Server, FieldError> {
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
            return Err(FieldError::new(
                "host",
                "must be a host name or an IP address",
            ));
        }
        if port == 0 {
            return Err(FieldError::new("port", "must be 1 to 65535"));
        }
        Ok(Server { host, port })
    }
}

/// Refuses `tls` and `tls_options`, which are not supported yet.
pub(crate) fn refuse_tls(tls: bool, tls_options: Option<&str>) -> Result<(), FieldError> {
    if tls {
        return Err(FieldError::new("tls", "TLS is not supported yet"));
    }
    if tls_options.is_some() {
        return Err(FieldError::new(
            "tls_options",
            "needs `tls`, which is not supported yet",
        ));
    }
    Ok(())
}

fn build(config: &Value, env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    let (config, records, batch) =
        logger::parse_config::<TcpLoggerConfig>(config, env, "tcp logger")?;
    let server = Server::new(config.host, config.port)?;
    if config.timeout == 0 {
        return Err(FieldError::new("timeout", "must be at least 1"));
    }
    refuse_tls(config.tls, config.tls_options.as_deref())?;
    let timeout = Duration::from_millis(config.timeout);
    Ok(Arc::new(Logger {
        name: DESCRIPTOR.name,
        records,
        encode: logger::json,
        counts: &COUNTS,
        open: Box::new(move || {
            let sink = Connections {
                server: server.clone(),
                timeout,
            };
            DESTINATIONS.queue((server.clone(), timeout), &batch, &COUNTS, || sink)
        }),
        queue: OnceLock::new(),
    }))
}

/// A connection per batch.
struct Connections {
    server: Server,
    timeout: Duration,
}

impl Connections {
    async fn send_batch(&self, batch: &[Vec<u8>]) -> io::Result<()> {
        let mut stream = TcpStream::connect((self.server.host.as_str(), self.server.port)).await?;
        stream.write_all(&json_array(batch)).await?;
        stream.shutdown().await
    }
}

impl Sink for Connections {
    async fn send(&mut self, batch: &[Vec<u8>]) -> io::Result<()> {
        match tokio::time::timeout(self.timeout, self.send_batch(batch)).await {
            Ok(sent) => sent,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;
    use crate::testing::{build, refusal};

    #[test]
    fn bad_configurations_are_refused_with_their_field() {
        let cases = [
            (json!({"port": 1}), ""),
            (json!({"host": "", "port": 1}), "host"),
            (json!({"host": "a b", "port": 1}), "host"),
            (json!({"host": "h", "port": 0}), "port"),
            (json!({"host": "h", "port": 70000}), "port"),
            (json!({"host": "h", "port": 1, "timeout": 0}), "timeout"),
            (json!({"host": "h", "port": 1, "tls": true}), "tls"),
            (
                json!({"host": "h", "port": 1, "tls_options": "x"}),
                "tls_options",
            ),
            (
                json!({"host": "h", "port": 1, "retry_delay": -1}),
                "retry_delay",
            ),
        ];
        for (config, field) in cases {
            let error = refusal(&DESCRIPTOR, config.clone());
            assert_eq!(error.path, field, "{config}: {error:?}");
        }
        assert!(build(&DESCRIPTOR, json!({"host": "127.0.0.1", "port": 5044})).is_ok());
    }

    #[tokio::test]
    async fn a_batch_is_one_json_array_on_its_own_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut sink = Connections {
            server: Server::new("127.0.0.1".into(), addr.port()).unwrap(),
            timeout: Duration::from_secs(10),
        };
        for batch in [vec![b"{}".to_vec(), b"1".to_vec()], vec![b"2".to_vec()]] {
            let (sent, accepted) = tokio::join!(sink.send(&batch), listener.accept());
            sent.unwrap();
            let mut received = Vec::new();
            accepted
                .unwrap()
                .0
                .read_to_end(&mut received)
                .await
                .unwrap();
            assert_eq!(received, json_array(&batch));
        }
        drop(listener);
        assert!(sink.send(&[b"3".to_vec()]).await.is_err(), "down");
    }
}
