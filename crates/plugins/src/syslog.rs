//! `syslog`: sends the records of the requests `match` selects to a syslog server, each as
//! the message of an RFC 5424 entry (facility `syslog`, severity `info`, app `pylon`), in
//! batches: over TCP on one kept connection, each entry framed by octet counting (RFC 6587);
//! over UDP one datagram per entry (RFC 5426). See [`crate::batch`] for how batches gather,
//! go and are retried; `flush_limit` also ends a batch, and `drop_limit` bounds the bytes
//! waiting.

use std::io::{self, Write};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use pylon_model::FieldError;
use pylon_plugin::Plugin;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::batch::{Counts, Destinations, Sink};
use crate::descriptor::{BuildEnv, Descriptor};
use crate::logger::{self, Logger};
use crate::tcp_logger::{refuse_tls, Server};
use crate::udp_logger::{Datagrams, Packing};

pub(crate) const DESCRIPTOR: Descriptor = Descriptor {
    name: "syslog",
    priority: 401,
    schema: logger::schema::<SyslogConfig>,
    build,
    credential: None,
    metadata: Some(logger::METADATA),
};

/// `<PRI>VERSION`: facility syslog (5) × 8 + severity informational (6).
const HEADER_START: &str = "<46>1";
const APP_NAME: &str = "pylon";

/// What became of its entries since the process started (`/v1/status`).
pub(crate) static COUNTS: Counts = Counts::new();
static DESTINATIONS: Destinations<Transport> = Destinations::new();

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SyslogConfig {
    /// The server's name or IP address.
    #[schemars(length(min = 1))]
    host: String,
    #[schemars(range(min = 1))]
    port: u16,
    /// Milliseconds a batch may take to send, connecting included.
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 1))]
    timeout: u64,
    /// Not supported yet: only `false`.
    #[serde(default)]
    tls: bool,
    /// A batch is sent once its entries add up to this many bytes.
    #[serde(default = "default_flush_limit")]
    #[schemars(range(min = 1))]
    flush_limit: usize,
    /// Entries waiting to be sent add up to this many bytes at most; past it, entries are
    /// dropped and counted.
    #[serde(default = "default_drop_limit")]
    #[schemars(range(min = 1))]
    drop_limit: usize,
    /// `tcp` or `udp`.
    #[serde(default)]
    sock_type: SockType,
    /// Accepted as APISIX's (at least 5); a destination keeps one connection.
    #[serde(default = "default_pool_size")]
    #[schemars(range(min = 5))]
    pool_size: u32,
}

fn default_timeout() -> u64 {
    3000
}

fn default_flush_limit() -> usize {
    4096
}

fn default_drop_limit() -> usize {
    1024 * 1024
}

fn default_pool_size() -> u32 {
    5
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum SockType {
    #[default]
    Tcp,
    Udp,
}

/// What tells one destination from another.
#[derive(Debug, Clone, PartialEq)]
struct Transport {
    server: Server,
    sock_type: SockType,
    timeout: Duration,
}

fn build(config: &Value, env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    let (config, records, mut batch) =
        logger::parse_config::<SyslogConfig>(config, env, "sys logger")?;
    let server = Server::new(config.host, config.port)?;
    for (field, value) in [
        ("timeout", config.timeout as usize),
        ("flush_limit", config.flush_limit),
        ("drop_limit", config.drop_limit),
    ] {
        if value == 0 {
            return Err(FieldError::new(field, "must be at least 1"));
        }
    }
    if config.pool_size < 5 {
        return Err(FieldError::new("pool_size", "must be at least 5"));
    }
    refuse_tls(config.tls, None)?;
    batch.max_bytes = Some(config.flush_limit);
    batch.max_pending_bytes = Some(config.drop_limit);
    let transport = Transport {
        server,
        sock_type: config.sock_type,
        timeout: Duration::from_millis(config.timeout),
    };
    Ok(Arc::new(Logger {
        name: DESCRIPTOR.name,
        records,
        encode: entry,
        counts: &COUNTS,
        open: Box::new(move || {
            let t = transport.clone();
            match t.sock_type {
                SockType::Tcp => DESTINATIONS.queue(t.clone(), &batch, &COUNTS, || Stream {
                    server: t.server,
                    timeout: t.timeout,
                    conn: None,
                }),
                SockType::Udp => DESTINATIONS.queue(t.clone(), &batch, &COUNTS, || {
                    Datagrams::new(t.server, t.timeout, Packing::Single)
                }),
            }
        }),
        queue: OnceLock::new(),
    }))
}

/// A record as an RFC 5424 entry: `<46>1 TIMESTAMP HOSTNAME pylon PROCID - - MSG`, the
/// record's JSON its message.
fn entry(record: &Value) -> Vec<u8> {
    entry_at(record, SystemTime::now())
}

fn entry_at(record: &Value, at: SystemTime) -> Vec<u8> {
    let mut entry = Vec::with_capacity(256);
    let _ = write!(
        entry,
        "{HEADER_START} {} {} {APP_NAME} {} - - ",
        humantime::format_rfc3339_millis(at),
        hostname(),
        std::process::id()
    );
    let _ = serde_json::to_writer(&mut entry, record);
    entry
}

/// The machine's name as RFC 5424's HOSTNAME: printable ASCII, at most 255 characters, `-`
/// when unknown.
fn hostname() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let name = name.trim();
        let printable =
            !name.is_empty() && name.len() <= 255 && name.bytes().all(|b| b.is_ascii_graphic());
        if printable {
            name.to_owned()
        } else {
            "-".to_owned()
        }
    })
}

/// Entries over one kept TCP connection, octet-counted.
struct Stream {
    server: Server,
    timeout: Duration,
    conn: Option<TcpStream>,
}

impl Stream {
    async fn send_batch(&mut self, batch: &[Vec<u8>]) -> io::Result<()> {
        let mut stream = match self.conn.take().filter(still_open) {
            Some(stream) => stream,
            None => TcpStream::connect((self.server.host.as_str(), self.server.port)).await?,
        };
        stream.write_all(&octet_counted(batch)).await?;
        self.conn = Some(stream);
        Ok(())
    }
}

impl Sink for Stream {
    async fn send(&mut self, batch: &[Vec<u8>]) -> io::Result<()> {
        match tokio::time::timeout(self.timeout, self.send_batch(batch)).await {
            Ok(sent) => sent,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")),
        }
    }
}

/// Whether a kept connection is still open: a server that closed it while it idled would
/// take the next write without a word and lose it.
fn still_open(stream: &TcpStream) -> bool {
    let mut probe = [0; 64];
    match stream.try_read(&mut probe) {
        Ok(0) => false,
        // The server has nothing to say; whatever it said is of no use.
        Ok(_) => true,
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
    }
}

/// Each entry as `LENGTH SP ENTRY` (RFC 6587's octet counting).
fn octet_counted(batch: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(batch.iter().map(|e| e.len() + 8).sum());
    for entry in batch {
        let _ = write!(out, "{} ", entry.len());
        out.extend_from_slice(entry);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use serde_json::json;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;
    use crate::testing::{build, refusal};

    #[test]
    fn bad_configurations_are_refused_with_their_field() {
        let cases = [
            (json!({"host": "h"}), ""),
            (json!({"host": "h", "port": 0}), "port"),
            (
                json!({"host": "h", "port": 1, "sock_type": "sctp"}),
                "sock_type",
            ),
            (json!({"host": "h", "port": 1, "tls": true}), "tls"),
            (json!({"host": "h", "port": 1, "pool_size": 4}), "pool_size"),
            (
                json!({"host": "h", "port": 1, "flush_limit": 0}),
                "flush_limit",
            ),
            (
                json!({"host": "h", "port": 1, "drop_limit": 0}),
                "drop_limit",
            ),
            (json!({"host": "h", "port": 1, "timeout": 0}), "timeout"),
        ];
        for (config, field) in cases {
            let error = refusal(&DESCRIPTOR, config.clone());
            assert_eq!(error.path, field, "{config}: {error:?}");
        }
        for sock_type in ["tcp", "udp"] {
            let config = json!({"host": "127.0.0.1", "port": 514, "sock_type": sock_type,
                "max_retry_count": 2, "retry_delay": 1, "name": "s"});
            assert!(build(&DESCRIPTOR, config).is_ok(), "{sock_type}");
        }
    }

    #[test]
    fn an_entry_is_rfc_5424_with_the_record_as_its_message() {
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let entry = String::from_utf8(entry_at(&json!({"a": 1}), at)).unwrap();
        let expected = format!(
            "<46>1 2023-11-14T22:13:20.123Z {} pylon {} - - {{\"a\":1}}",
            hostname(),
            std::process::id()
        );
        assert_eq!(entry, expected);
        assert!(!hostname().contains(' '));
    }

    #[tokio::test]
    async fn entries_go_octet_counted_on_a_kept_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut sink = Stream {
            server: Server::new("127.0.0.1".into(), port).unwrap(),
            timeout: Duration::from_secs(10),
            conn: None,
        };
        let first = [b"ab".to_vec(), b"c d".to_vec()];
        let (sent, accepted) = tokio::join!(sink.send(&first), listener.accept());
        sent.unwrap();
        let mut conn = accepted.unwrap().0;
        sink.send(&[b"e".to_vec()]).await.unwrap();
        let mut received = vec![0; 12];
        conn.read_exact(&mut received).await.unwrap();
        assert_eq!(received, b"2 ab3 c d1 e");

        // The server closes it: the next batch goes on a new connection.
        drop(conn);
        let (sent, accepted) = tokio::join!(
            async {
                // Until the close has reached the client, the probe cannot see it.
                for _ in 0..500 {
                    if !sink.conn.as_ref().is_some_and(still_open) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                sink.send(&[b"f".to_vec()]).await
            },
            listener.accept()
        );
        sent.unwrap();
        let mut received = Vec::new();
        let mut conn = accepted.unwrap().0;
        drop(sink);
        conn.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, b"1 f");
    }
}
