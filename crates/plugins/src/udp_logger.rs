//! `udp-logger`: sends the records of the requests `match` selects to a UDP server, in
//! batches: a batch is one datagram holding a JSON array of its records, or as few as hold
//! them when one would be too large. See [`crate::batch`] for how batches gather and go.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pylon_model::FieldError;
use pylon_plugin::Plugin;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use tokio::net::UdpSocket;

use crate::batch::{Counts, Destinations, Sink};
use crate::descriptor::{BuildEnv, Descriptor};
use crate::logger::{self, json_array, Logger};
use crate::tcp_logger::Server;

pub(crate) const DESCRIPTOR: Descriptor = Descriptor {
    name: "udp-logger",
    priority: 400,
    schema: logger::schema::<UdpLoggerConfig>,
    build,
    credential: None,
    metadata: Some(logger::METADATA),
};

/// The most bytes of records one datagram carries (a UDP payload is at most 65507 bytes).
const MAX_DATAGRAM: usize = 65_000;

/// What became of its entries since the process started (`/v1/status`).
pub(crate) static COUNTS: Counts = Counts::new();
static DESTINATIONS: Destinations<(Server, Duration)> = Destinations::new();

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct UdpLoggerConfig {
    /// The server's name or IP address.
    #[schemars(length(min = 1))]
    host: String,
    #[schemars(range(min = 1))]
    port: u16,
    /// Seconds a batch may take to send, the name's lookup included.
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 1))]
    timeout: u64,
}

fn default_timeout() -> u64 {
    3
}

fn build(config: &Value, env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    let (config, records, batch) =
        logger::parse_config::<UdpLoggerConfig>(config, env, "udp logger")?;
    let server = Server::new(config.host, config.port)?;
    if config.timeout == 0 {
        return Err(FieldError::new("timeout", "must be at least 1"));
    }
    let timeout = Duration::from_secs(config.timeout);
    Ok(Arc::new(Logger {
        name: DESCRIPTOR.name,
        records,
        encode: logger::json,
        counts: &COUNTS,
        open: Box::new(move || {
            let sink = Datagrams::new(server.clone(), timeout, Packing::JsonArrays);
            DESTINATIONS.queue((server.clone(), timeout), &batch, &COUNTS, || sink)
        }),
        queue: OnceLock::new(),
    }))
}

/// How a batch's entries go into datagrams.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Packing {
    /// As many entries as fit, as one JSON array.
    JsonArrays,
    /// Each entry alone, as it is.
    Single,
}

/// Batches as datagrams, from a socket of the server's address family.
pub(crate) struct Datagrams {
    server: Server,
    timeout: Duration,
    packing: Packing,
    socket: Option<UdpSocket>,
}

impl Datagrams {
    pub(crate) fn new(server: Server, timeout: Duration, packing: Packing) -> Datagrams {
        Datagrams {
            server,
            timeout,
            packing,
            socket: None,
        }
    }

    async fn send_batch(&mut self, batch: &[Vec<u8>]) -> io::Result<()> {
        let to = tokio::net::lookup_host((self.server.host.as_str(), self.server.port))
            .await?
            .next()
            .ok_or_else(|| io::Error::other("the host has no address"))?;
        let socket = match self.socket.take() {
            Some(socket) if socket.local_addr()?.is_ipv4() == to.is_ipv4() => socket,
            _ => {
                let any: SocketAddr = if to.is_ipv4() {
                    (Ipv4Addr::UNSPECIFIED, 0).into()
                } else {
                    (Ipv6Addr::UNSPECIFIED, 0).into()
                };
                UdpSocket::bind(any).await?
            }
        };
        // Unconnected, so that an earlier datagram's ICMP refusal fails no later batch.
        match self.packing {
            Packing::JsonArrays => {
                for part in parts(batch, MAX_DATAGRAM) {
                    socket.send_to(&json_array(part), to).await?;
                }
            }
            Packing::Single => {
                for entry in batch {
                    socket.send_to(entry, to).await?;
                }
            }
        }
        self.socket = Some(socket);
        Ok(())
    }
}

impl Sink for Datagrams {
    async fn send(&mut self, batch: &[Vec<u8>]) -> io::Result<()> {
        match tokio::time::timeout(self.timeout, self.send_batch(batch)).await {
            Ok(sent) => sent,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")),
        }
    }
}

/// `batch` cut into runs of entries that add up to at most `max` bytes (an entry larger than
/// that is a run of its own).
fn parts(batch: &[Vec<u8>], max: usize) -> impl Iterator<Item = &[Vec<u8>]> {
    let mut rest = batch;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let len = rest
            .iter()
            .take_while(|entry| {
                bytes += entry.len() + 1;
                bytes <= max
            })
            .count()
            .max(1);
        let (part, after) = rest.split_at(len);
        rest = after;
        Some(part)
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::{build, refusal};

    #[test]
    fn bad_configurations_are_refused_with_their_field() {
        let cases = [
            (json!({"host": "h"}), ""),
            (json!({"host": "", "port": 1}), "host"),
            (json!({"host": "h", "port": 0}), "port"),
            (json!({"host": "h", "port": 1, "timeout": 0}), "timeout"),
            (json!({"host": "h", "port": 1, "tls": true}), "tls"),
        ];
        for (config, field) in cases {
            let error = refusal(&DESCRIPTOR, config.clone());
            assert_eq!(error.path, field, "{config}: {error:?}");
        }
        assert!(build(&DESCRIPTOR, json!({"host": "127.0.0.1", "port": 5044})).is_ok());
    }

    #[test]
    fn a_large_batch_is_cut_into_datagrams_that_fit() {
        let batch = [vec![b'a'; 4], vec![b'b'; 4], vec![b'c'; 20], vec![b'd'; 2]];
        let cut: Vec<_> = parts(&batch, 10).map(<[_]>::len).collect();
        assert_eq!(cut, [2, 1, 1]);
        assert_eq!(parts(&[], 10).count(), 0);
    }

    #[tokio::test]
    async fn a_batch_is_one_datagram() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = server.local_addr().unwrap().port();
        let mut sink = Datagrams::new(
            Server::new("127.0.0.1".into(), port).unwrap(),
            Duration::from_secs(10),
            Packing::JsonArrays,
        );
        let batch = [b"{}".to_vec(), b"1".to_vec()];
        sink.send(&batch).await.unwrap();
        let mut buf = [0; 100];
        let n = server.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"[{},1]");
    }
}
