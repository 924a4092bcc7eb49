//! The access log: workers hand a small record to a channel and move on; one writer thread
//! formats JSON lines and writes them. A full channel drops the line (and counts it) rather
//! than slowing a request down.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::settings::AccessLogSettings;

/// One request, as the log line describes it.
pub struct AccessRecord {
    pub time: SystemTime,
    /// The client's address: the peer's, or the one `real-ip` found.
    pub client: IpAddr,
    pub method: String,
    pub uri: String,
    pub host: String,
    pub status: u16,
    /// Response bytes sent to the client, head included.
    pub bytes_sent: u64,
    pub request_length: u64,
    pub route_id: Option<Arc<str>>,
    pub upstream: Option<SocketAddr>,
    pub upstream_latency: Option<Duration>,
    pub latency: Duration,
    pub user_agent: String,
    /// Which side failed the exchange and why (`upstream_timeout`), when it broke off.
    pub failure: Option<&'static str>,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    client_ip: String,
    method: &'a str,
    uri: &'a str,
    host: &'a str,
    status: u16,
    bytes_sent: u64,
    request_length: u64,
    route_id: Option<&'a str>,
    upstream_addr: Option<String>,
    upstream_latency_ms: Option<f64>,
    latency_ms: f64,
    user_agent: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure: Option<&'a str>,
}

/// The workers' side of the log; cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    tx: Option<SyncSender<AccessRecord>>,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// A log that records nothing.
    pub fn disabled() -> Self {
        Self {
            tx: None,
            dropped: Arc::default(),
        }
    }

    /// Starts the writer thread.
    pub fn start(settings: &AccessLogSettings) -> std::io::Result<Self> {
        if !settings.enabled {
            return Ok(Self::disabled());
        }
        let out: Box<dyn Write + Send> = if settings.path == "stdout" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&settings.path)?,
            )
        };
        let (tx, rx) = sync_channel(settings.buffer.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let writer_dropped = dropped.clone();
        std::thread::Builder::new()
            .name("pylon-access-log".into())
            .spawn(move || write_lines(rx, out, &writer_dropped))?;
        Ok(Self {
            tx: Some(tx),
            dropped,
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn record(&self, record: AccessRecord) {
        if let Some(tx) = &self.tx {
            if let Err(TrySendError::Full(_)) = tx.try_send(record) {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// How long the writer lets records gather while traffic flows.
const BATCH_INTERVAL: Duration = Duration::from_millis(20);

fn write_lines(rx: Receiver<AccessRecord>, out: Box<dyn Write + Send>, dropped: &AtomicU64) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut reported_drops = 0;
    // The writer blocks only when the log is idle. While records flow it wakes up every
    // BATCH_INTERVAL and takes what has gathered, so a worker's send never has to wake it:
    // waking a thread per request would cost more than the log line itself.
    while let Ok(first) = rx.recv() {
        write_line(&mut out, &first);
        loop {
            let mut gathered = 0;
            while let Ok(record) = rx.try_recv() {
                write_line(&mut out, &record);
                gathered += 1;
            }
            let drops = dropped.load(Ordering::Relaxed);
            if drops > reported_drops {
                tracing::warn!(
                    lines = drops - reported_drops,
                    "access log lines dropped: the writer could not keep up"
                );
                reported_drops = drops;
            }
            let _ = out.flush();
            if gathered == 0 {
                break;
            }
            std::thread::sleep(BATCH_INTERVAL);
        }
    }
}

fn write_line(out: &mut impl Write, record: &AccessRecord) {
    let line = Line {
        time: humantime::format_rfc3339_millis(record.time).to_string(),
        client_ip: record.client.to_string(),
        method: &record.method,
        uri: &record.uri,
        host: &record.host,
        status: record.status,
        bytes_sent: record.bytes_sent,
        request_length: record.request_length,
        route_id: record.route_id.as_deref(),
        upstream_addr: record.upstream.map(|a| a.to_string()),
        upstream_latency_ms: record.upstream_latency.map(millis),
        latency_ms: millis(record.latency),
        user_agent: &record.user_agent,
        failure: record.failure,
    };
    if serde_json::to_writer(&mut *out, &line).is_ok() {
        let _ = out.write_all(b"\n");
    }
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}
