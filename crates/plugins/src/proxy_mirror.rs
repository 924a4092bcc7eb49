//! `proxy-mirror`: copies requests, body and all, to another host (a new version under real
//! traffic, a recorder) and ignores its answers.
//!
//! The copy never holds up the request it copies. It is made when the request goes upstream:
//! its head at once, its body piece by piece as the body streams to the upstream, through a
//! short queue to a task of its own. A copy whose queue is full (the mirror reads slower than
//! the client sends) is dropped, and so is a sampled request while `max_in_flight` copies are
//! already under way; each is counted ([`mirror_counts`]). A copy takes at most `timeout`
//! from start to answer.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use pylon_model::FieldError;
use pylon_plugin::{Phases, Plugin, RequestCtx, RequestTap};
use pylon_router::RequestView;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::config::{parse, schema_of};
use crate::descriptor::{BuildEnv, Descriptor};
use crate::outbound::{self, push_header, Endpoint};

pub(crate) const DESCRIPTOR: Descriptor = Descriptor {
    name: "proxy-mirror",
    priority: 1010,
    schema: schema_of::<ProxyMirrorConfig>,
    build,
    credential: None,
    metadata: None,
};

/// How many pieces of a body wait for the mirror at most: with the relay's reads of up to
/// 16 KiB, about 256 KiB per copy.
const QUEUE_PIECES: usize = 16;
/// Queued pieces are written together up to this many bytes.
const COALESCE: usize = 64 * 1024;

/// Copies this process made, by what became of them.
static MIRRORED: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static IN_FLIGHT: AtomicU64 = AtomicU64::new(0);

/// What became of the copies `proxy-mirror` made since the process started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MirrorCounts {
    /// Sent whole and answered.
    pub mirrored: u64,
    /// The mirror could not be reached, broke the exchange or took longer than `timeout`.
    pub failed: u64,
    /// Not sent, or not sent whole: too many copies were under way, the mirror fell behind
    /// the body, or the request's body never ended.
    pub dropped: u64,
    /// Under way now.
    pub in_flight: u64,
}

pub fn mirror_counts() -> MirrorCounts {
    MirrorCounts {
        mirrored: MIRRORED.load(Ordering::Relaxed),
        failed: FAILED.load(Ordering::Relaxed),
        dropped: DROPPED.load(Ordering::Relaxed),
        in_flight: IN_FLIGHT.load(Ordering::Relaxed),
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ProxyMirrorConfig {
    /// The mirror: `http://host[:port]`, without a path (https is not supported yet).
    host: String,
    /// The path copies are sent to: instead of the request's own (`replace`, the query kept)
    /// or in front of it (`prefix`).
    #[schemars(regex(pattern = r"^/[^?&]+$"))]
    path: Option<String>,
    #[serde(default)]
    path_concat_mode: ConcatMode,
    /// The share of requests copied, from 0.00001 to 1.
    #[serde(default = "default_sample_ratio")]
    #[schemars(range(min = 0.00001, max = 1))]
    sample_ratio: f64,
    /// How long one copy may take, from its start to the mirror's answer, in milliseconds
    /// (Pylon's).
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 1, max = 600000))]
    timeout: u64,
    /// The most copies under way at once for this configuration; a request sampled beyond
    /// it is not copied, and is counted as dropped (Pylon's).
    #[serde(default = "default_max_in_flight")]
    #[schemars(range(min = 1, max = 65536))]
    max_in_flight: u32,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum ConcatMode {
    #[default]
    Replace,
    Prefix,
}

fn default_sample_ratio() -> f64 {
    1.0
}

fn default_timeout() -> u64 {
    10_000
}

fn default_max_in_flight() -> u32 {
    1024
}

fn build(config: &Value, _env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    let config: ProxyMirrorConfig = parse(config)?;
    let endpoint = Endpoint::parse(&config.host).map_err(|e| FieldError::new("host", e))?;
    if config
        .host
        .trim_start_matches("http://")
        .contains(['/', '?'])
    {
        return Err(FieldError::new(
            "host",
            "must be http://host[:port], without a path",
        ));
    }
    if let Some(path) = &config.path {
        let valid = path.starts_with('/')
            && path.len() > 1
            && path
                .bytes()
                .all(|b| b > b' ' && b < 0x7f && !b"?&#".contains(&b));
        if !valid {
            return Err(FieldError::new(
                "path",
                "must start with `/` and hold no `?`, `&`, `#`, spaces or controls",
            ));
        }
    }
    if !(0.00001..=1.0).contains(&config.sample_ratio) {
        return Err(FieldError::new("sample_ratio", "must be from 0.00001 to 1"));
    }
    if !(1..=600_000).contains(&config.timeout) {
        return Err(FieldError::new("timeout", "must be from 1 to 600000"));
    }
    if !(1..=65_536).contains(&config.max_in_flight) {
        return Err(FieldError::new("max_in_flight", "must be from 1 to 65536"));
    }
    Ok(Arc::new(ProxyMirror {
        path: config.path,
        prefix: config.path_concat_mode == ConcatMode::Prefix,
        sample_ratio: config.sample_ratio,
        mirror: Arc::new(Mirror {
            endpoint,
            timeout: Duration::from_millis(config.timeout),
            in_flight: AtomicU32::new(0),
            idle: Mutex::new(Vec::new()),
            max_in_flight: config.max_in_flight,
        }),
    }))
}

struct ProxyMirror {
    path: Option<String>,
    prefix: bool,
    sample_ratio: f64,
    mirror: Arc<Mirror>,
}

/// The mirror host, shared by the copies of one configuration.
struct Mirror {
    endpoint: Endpoint,
    timeout: Duration,
    in_flight: AtomicU32,
    /// Connections that carried a whole exchange and may carry another.
    idle: Mutex<Vec<TcpStream>>,
    /// The most copies under way at once, and so the most idle connections worth keeping.
    max_in_flight: u32,
}

impl Plugin for ProxyMirror {
    fn name(&self) -> &'static str {
        "proxy-mirror"
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST_TAP
    }

    fn tap_request(&self, ctx: &RequestCtx<'_>) -> Option<Box<dyn RequestTap>> {
        if self.sample_ratio < 1.0 && fastrand::f64() >= self.sample_ratio {
            return None;
        }
        let Some(slot) = Slot::take(&self.mirror) else {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let copy = self.copy_head(ctx);
        let (queue, body) = mpsc::channel(QUEUE_PIECES);
        tokio::spawn(async move {
            let mirror = &slot.mirror;
            let counter = match tokio::time::timeout(mirror.timeout, mirror.send(copy, body)).await
            {
                Ok(Ok(Delivery::Answered)) => &MIRRORED,
                // Counted by the tap that let go of it.
                Ok(Ok(Delivery::Abandoned)) => return,
                Ok(Err(e)) => {
                    tracing::debug!(mirror = %mirror.endpoint.authority, "proxy-mirror: {e}");
                    &FAILED
                }
                Err(_) => {
                    tracing::debug!(mirror = %mirror.endpoint.authority, "proxy-mirror: timed out");
                    &FAILED
                }
            };
            counter.fetch_add(1, Ordering::Relaxed);
        });
        Some(Box::new(MirrorTap { queue: Some(queue) }))
    }
}

impl ProxyMirror {
    /// The copy's request line and headers: the request as it goes upstream (the plugins'
    /// edits applied), without the hop-by-hop headers and its framing, which are the copy's
    /// own.
    fn copy_head(&self, ctx: &RequestCtx<'_>) -> CopyHead {
        let upstream_uri = ctx.var("upstream_uri").unwrap_or_default();
        let query_at = upstream_uri.find('?').unwrap_or(upstream_uri.len());
        let target = match &self.path {
            Some(path) if self.prefix => format!("{path}{upstream_uri}"),
            Some(path) => format!("{path}{}", &upstream_uri[query_at..]),
            None => upstream_uri.into_owned(),
        };
        let method = ctx.edits.method.as_deref().unwrap_or(ctx.method());
        let mut head = format!("{method} {target} HTTP/1.1\r\n").into_bytes();
        let host = match &ctx.edits.host {
            Some(host) => Some(host.clone()),
            None => ctx
                .var("http_host")
                .or_else(|| ctx.host().map(Into::into))
                .map(|h| h.into_owned()),
        };
        if let Some(host) = host {
            push_header(&mut head, "Host", host.as_bytes());
        }
        let mut declared = None;
        ctx.for_each_header(&mut |name, value| {
            if name.eq_ignore_ascii_case("content-length") {
                declared = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            } else if !is_own_header(name) && !ctx.edits.headers.replaces(name) {
                push_header(&mut head, name, value);
            }
        });
        for (name, value) in ctx.edits.headers.added() {
            if !is_own_header(name) {
                push_header(&mut head, name, value.as_bytes());
            }
        }
        CopyHead {
            method: method.to_owned(),
            head,
            declared,
        }
    }
}

/// Headers a copy does not take from the request: the hop-by-hop ones, the host (set
/// first) and the body's framing, which the copy states for itself.
fn is_own_header(name: &str) -> bool {
    const OWN: [&str; 11] = [
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
        "content-length",
        "http2-settings",
    ];
    name.starts_with(':') || OWN.iter().any(|own| own.eq_ignore_ascii_case(name))
}

/// A copy's head, as it goes to the mirror once its body's start is known.
struct CopyHead {
    method: String,
    /// The request line and headers, without the framing and the final empty line.
    head: Vec<u8>,
    /// The request's `Content-Length`, which the copy keeps.
    declared: Option<u64>,
}

/// What the tap hands the copy's task.
enum Event {
    Piece(Bytes),
    End,
}

/// How a copy's exchange ended, when it did not fail.
enum Delivery {
    Answered,
    /// The tap let go of the copy before its body ended.
    Abandoned,
}

/// One of a configuration's `max_in_flight` copies, given back when its task ends.
struct Slot {
    mirror: Arc<Mirror>,
}

impl Slot {
    fn take(mirror: &Arc<Mirror>) -> Option<Slot> {
        let max = mirror.max_in_flight;
        mirror
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        Some(Slot {
            mirror: mirror.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.mirror.in_flight.fetch_sub(1, Ordering::AcqRel);
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The request's side of a copy: queues each piece of the body without waiting, and lets go
/// of the copy when the queue is full.
struct MirrorTap {
    queue: Option<mpsc::Sender<Event>>,
}

impl MirrorTap {
    fn queue(&mut self, event: Event) {
        let Some(queue) = &self.queue else { return };
        match queue.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.queue = None;
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
            // The copy's task ended already (failed or timed out), and counted it.
            Err(mpsc::error::TrySendError::Closed(_)) => self.queue = None,
        }
    }
}

impl RequestTap for MirrorTap {
    fn piece(&mut self, piece: &[u8]) {
        self.queue(Event::Piece(Bytes::copy_from_slice(piece)));
    }

    fn end(&mut self) {
        self.queue(Event::End);
        self.queue = None;
    }
}

impl Drop for MirrorTap {
    fn drop(&mut self) {
        // The body never ended: the copy is abandoned with it.
        if self.queue.take().is_some_and(|queue| !queue.is_closed()) {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Mirror {
    /// Sends one copy: its head once the body's start is known, then the body as it is
    /// queued, then reads (and ignores) the answer.
    async fn send(
        &self,
        copy: CopyHead,
        mut body: mpsc::Receiver<Event>,
    ) -> std::io::Result<Delivery> {
        let (mut stream, reused) = self.connection().await?;
        let Some(first) = body.recv().await else {
            return Ok(Delivery::Abandoned);
        };
        let mut out = copy.head;
        let chunked = match (&first, copy.declared) {
            (Event::End, _) => {
                if copy.declared.is_some() || !matches!(copy.method.as_str(), "GET" | "HEAD") {
                    out.extend_from_slice(b"Content-Length: 0\r\n");
                }
                false
            }
            (Event::Piece(_), Some(length)) => {
                out.extend_from_slice(format!("Content-Length: {length}\r\n").as_bytes());
                false
            }
            (Event::Piece(_), None) => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
                true
            }
        };
        out.extend_from_slice(b"\r\n");
        let mut ended = push_event(&mut out, first, chunked);
        if let Err(e) = stream.write_all(&out).await {
            // A kept-alive connection the mirror closed meanwhile: once more on a new one.
            if !reused {
                return Err(e);
            }
            stream = self.connect().await?;
            stream.write_all(&out).await?;
        }
        while !ended {
            let Some(event) = body.recv().await else {
                return Ok(Delivery::Abandoned);
            };
            out.clear();
            ended = push_event(&mut out, event, chunked);
            // What else is queued goes out in the same write.
            while !ended && out.len() < COALESCE {
                match body.try_recv() {
                    Ok(event) => ended = push_event(&mut out, event, chunked),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return Ok(Delivery::Abandoned),
                }
            }
            stream.write_all(&out).await?;
        }
        let answer = outbound::read_response(&mut stream, &copy.method, |_| Ok(())).await?;
        if answer.reusable {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            // As many as copies may be under way: each finds one.
            if idle.len() < self.max_in_flight as usize {
                idle.push(stream);
            }
        }
        Ok(Delivery::Answered)
    }

    /// A kept-alive connection that is still open, else a new one; whether it was kept.
    async fn connection(&self) -> std::io::Result<(TcpStream, bool)> {
        loop {
            let kept = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let Some(stream) = kept else { break };
            // An idle connection has nothing to read: a close, or bytes no request asked
            // for, make it useless.
            let mut probe = [0u8; 1];
            if let Err(e) = stream.try_read(&mut probe) {
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    return Ok((stream, true));
                }
            }
        }
        Ok((self.connect().await?, false))
    }

    async fn connect(&self) -> std::io::Result<TcpStream> {
        let endpoint = &self.endpoint;
        let stream = TcpStream::connect((endpoint.host.as_str(), endpoint.port)).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// Appends an event to what goes to the mirror, framed; whether it ended the body.
fn push_event(out: &mut Vec<u8>, event: Event, chunked: bool) -> bool {
    match event {
        Event::Piece(piece) if chunked => {
            out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            out.extend_from_slice(&piece);
            out.extend_from_slice(b"\r\n");
            false
        }
        Event::Piece(piece) => {
            out.extend_from_slice(&piece);
            false
        }
        Event::End => {
            if chunked {
                out.extend_from_slice(b"0\r\n\r\n");
            }
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::build as build_plugin;

    #[test]
    fn a_bad_configuration_is_refused_with_its_field() {
        let refused = |config: Value| build_plugin(&DESCRIPTOR, config).err().unwrap();
        let cases = [
            (json!({"host": "https://m:9797"}), "host"),
            (json!({"host": "http://m:9797/path"}), "host"),
            (json!({"host": "m:9797"}), "host"),
            (json!({"host": "http://m", "path": "/a?b"}), "path"),
            (json!({"host": "http://m", "path": "a"}), "path"),
            (
                json!({"host": "http://m", "path_concat_mode": "append"}),
                "path_concat_mode",
            ),
            (
                json!({"host": "http://m", "sample_ratio": 0}),
                "sample_ratio",
            ),
            (
                json!({"host": "http://m", "sample_ratio": 1.5}),
                "sample_ratio",
            ),
            (
                json!({"host": "http://m", "max_in_flight": 0}),
                "max_in_flight",
            ),
            (json!({"host": "http://m", "timeout": 0}), "timeout"),
            (json!({"path": "/a"}), ""),
        ];
        for (config, field) in cases {
            let error = refused(config.clone());
            assert_eq!(error.path, field, "{config}: {error:?}");
        }
        assert!(build_plugin(&DESCRIPTOR, json!({"host": "http://[::1]:9797"})).is_ok());
    }

    #[test]
    fn events_are_framed_as_the_copy_declares() {
        let mut out = Vec::new();
        assert!(!push_event(
            &mut out,
            Event::Piece(Bytes::from_static(b"hello")),
            true
        ));
        assert!(push_event(&mut out, Event::End, true));
        assert_eq!(out, b"5\r\nhello\r\n0\r\n\r\n");
        out.clear();
        assert!(!push_event(
            &mut out,
            Event::Piece(Bytes::from_static(b"hello")),
            false
        ));
        assert!(push_event(&mut out, Event::End, false));
        assert_eq!(out, b"hello");
    }
}
