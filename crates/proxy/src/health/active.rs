//! Active checks: probing every node of an upstream on a timer, as APISIX does.
//!
//! The checkers run on the control runtime (the thread that follows the store and compiles
//! snapshots), once per process: the workers never probe, and a node is probed once per
//! interval however many workers there are. That runtime is idle between config changes and
//! a probe is a connection and a few hundred bytes, so it needs no thread of its own.
//!
//! Each node has its own loop: probe, count the outcome, sleep for the interval of the state
//! the node is now in (`healthy.interval` or `unhealthy.interval`), measured from the start of
//! the probe. A semaphore of `concurrency` permits bounds the probes in flight per upstream.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pylon_model::{ActiveCheck, CheckType};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::status::{Outcome, Thresholds};
use super::{seconds, CheckedNode, StatusClasses, UpstreamHealth};
use crate::tls::{server_name, TlsContext, TlsError, UpstreamTls};

/// The longest status line a probe reads.
const MAX_STATUS_LINE: usize = 1024;

/// The active checks of one upstream, compiled.
pub(crate) struct ActivePlan {
    transport: Transport,
    timeout: Duration,
    concurrency: usize,
    host: Option<String>,
    port: Option<u16>,
    http_path: String,
    req_headers: Vec<String>,
    healthy_interval: Duration,
    unhealthy_interval: Duration,
    statuses: StatusClasses,
    thresholds: Thresholds,
}

/// How a probe talks to a node.
enum Transport {
    /// Connecting is all.
    Tcp,
    Http,
    /// Verifying the certificate unless `https_verify_certificate` is off, and presenting the
    /// upstream's client certificate (`tls.client_cert`) if it has one.
    Https(UpstreamTls),
}

impl ActivePlan {
    /// `upstream_tls` is the upstream's `tls`, whose client certificate https probes present.
    pub fn new(
        check: &ActiveCheck,
        upstream_tls: Option<&pylon_model::UpstreamTls>,
        tls: &TlsContext,
    ) -> Result<Self, TlsError> {
        let transport = match check.kind {
            CheckType::Tcp => Transport::Tcp,
            CheckType::Http => Transport::Http,
            CheckType::Https => {
                let settings = pylon_model::UpstreamTls {
                    client_cert: upstream_tls.and_then(|t| t.client_cert.clone()),
                    client_key: upstream_tls.and_then(|t| t.client_key.clone()),
                    verify: check.https_verify_certificate,
                };
                Transport::Https(UpstreamTls::new(
                    Some(&settings),
                    b"http/1.1",
                    &tls.upstream_roots,
                )?)
            }
        };
        // APISIX's defaults, for values validation should not have let through.
        let second = Duration::from_secs(1);
        Ok(Self {
            transport,
            timeout: seconds(check.timeout, second),
            concurrency: (check.concurrency as usize).max(1),
            host: check.host.clone(),
            port: check.port,
            http_path: check.http_path.clone(),
            req_headers: check.req_headers.clone(),
            healthy_interval: seconds(check.healthy.interval, second),
            unhealthy_interval: seconds(check.unhealthy.interval, second),
            statuses: StatusClasses::new(
                &check.healthy.http_statuses,
                &check.unhealthy.http_statuses,
            ),
            thresholds: Thresholds::new(
                check.healthy.successes,
                check.unhealthy.http_failures,
                check.unhealthy.tcp_failures,
                check.unhealthy.timeouts,
            ),
        })
    }

    /// Identifies the TLS settings of https probes; 0 for other checks.
    pub fn tls_fingerprint(&self) -> u64 {
        match &self.transport {
            Transport::Https(tls) => tls.fingerprint,
            Transport::Tcp | Transport::Http => 0,
        }
    }

    /// The request a probe of `node` sends: `GET http_path` with the `Host` of the checks or
    /// of the node, then `req_headers`. One request per connection.
    fn request(&self, node: &CheckedNode) -> Vec<u8> {
        let names_host = self.req_headers.iter().any(|h| {
            h.split_once(':')
                .is_some_and(|(name, _)| name.trim().eq_ignore_ascii_case("host"))
        });
        let mut request = format!("GET {} HTTP/1.1\r\n", self.http_path);
        if !names_host {
            request.push_str("Host: ");
            request.push_str(self.host.as_deref().unwrap_or(&node.host_header));
            request.push_str("\r\n");
        }
        for header in &self.req_headers {
            request.push_str(header.trim());
            request.push_str("\r\n");
        }
        request.push_str("Connection: close\r\n\r\n");
        request.into_bytes()
    }

    /// Where a probe of `node` connects: the node, on the checks' port if they name one.
    fn target(&self, node: &CheckedNode) -> Option<SocketAddr> {
        node.addr
            .map(|addr| SocketAddr::new(addr.ip(), self.port.unwrap_or(addr.port())))
    }
}

/// The running checker of one upstream; dropping it stops it.
pub(crate) struct Checker(Vec<AbortHandle>);

impl Drop for Checker {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Starts the active checks of `health` on the current runtime; `None` when it has none.
pub(crate) fn start(health: &Arc<UpstreamHealth>) -> Option<Checker> {
    health.config.active.as_ref()?;
    let limit = Arc::new(Semaphore::new(
        health.config.active.as_ref().map_or(1, |a| a.concurrency),
    ));
    let tasks = (0..health.nodes.len())
        .map(|index| tokio::spawn(watch(health.clone(), index, limit.clone())).abort_handle())
        .collect();
    Some(Checker(tasks))
}

/// Probes node `index` for ever.
async fn watch(health: Arc<UpstreamHealth>, index: usize, limit: Arc<Semaphore>) {
    let (Some(plan), Some(node)) = (health.config.active.as_ref(), health.nodes.get(index)) else {
        return;
    };
    let request = plan.request(node);
    let target = plan.target(node);
    // SNI and the name verified: the checks' `host`, else the node's.
    let name = server_name(plan.host.as_deref().unwrap_or(&node.host));
    loop {
        let (started, outcome) = {
            // The semaphore is never closed: this cannot fail.
            let Ok(_permit) = limit.acquire().await else {
                return;
            };
            let started = Instant::now();
            (started, probe(plan, target, name.as_ref(), &request).await)
        };
        if let Some(outcome) = outcome {
            health.record(index, outcome, &plan.thresholds, "active");
        }
        let interval = if node.health.is_healthy() {
            plan.healthy_interval
        } else {
            plan.unhealthy_interval
        };
        tokio::time::sleep_until(started + interval).await;
    }
}

/// One probe; `None` when the node answered a status in neither list.
async fn probe(
    plan: &ActivePlan,
    target: Option<SocketAddr>,
    name: Option<&ServerName<'static>>,
    request: &[u8],
) -> Option<Outcome> {
    let Some(addr) = target else {
        return Some(Outcome::TcpFailure);
    };
    match tokio::time::timeout(plan.timeout, exchange(plan, addr, name, request)).await {
        Err(_) => Some(Outcome::Timeout),
        Ok(Err(_)) => Some(Outcome::TcpFailure),
        Ok(Ok(None)) => Some(Outcome::Success),
        Ok(Ok(Some(status))) => plan.statuses.classify(status),
    }
}

/// Connects and, for http(s) checks, sends the request and reads the status; `None` for a
/// tcp check, which only connects. A failed TLS handshake fails like a connection.
async fn exchange(
    plan: &ActivePlan,
    addr: SocketAddr,
    name: Option<&ServerName<'static>>,
    request: &[u8],
) -> io::Result<Option<u16>> {
    let mut tcp = TcpStream::connect(addr).await?;
    match &plan.transport {
        Transport::Tcp => Ok(None),
        Transport::Http => ask(&mut tcp, request).await.map(Some),
        Transport::Https(tls) => {
            let name = name.cloned().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "not a valid TLS server name")
            })?;
            let mut stream = tls.connect(name, tcp, plan.timeout).await?;
            ask(&mut stream, request).await.map(Some)
        }
    }
}

async fn ask<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, request: &[u8]) -> io::Result<u16> {
    stream.write_all(request).await?;
    stream.flush().await?;
    read_status(stream).await
}

/// Reads up to the end of the status line and returns its code.
async fn read_status<R: AsyncRead + Unpin>(reader: &mut R) -> io::Result<u16> {
    let mut buf = [0u8; MAX_STATUS_LINE];
    let mut len = 0;
    loop {
        if let Some(end) = buf[..len].windows(2).position(|w| w == b"\r\n") {
            return parse_status_line(&buf[..end])
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an HTTP status"));
        }
        if len == buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "status line too long",
            ));
        }
        let n = reader.read(&mut buf[len..]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        len += n;
    }
}

/// `HTTP/1.x NNN reason` → `NNN`.
fn parse_status_line(line: &[u8]) -> Option<u16> {
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let (version, rest) = rest.split_first()?;
    let rest = rest
        .strip_prefix(b" ")
        .filter(|_| version.is_ascii_digit())?;
    let (code, after) = rest.split_at_checked(3)?;
    if !code.iter().all(u8::is_ascii_digit) || after.first().is_some_and(|&b| b != b' ') {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pylon_model::{ActiveHealthy, ActiveUnhealthy};

    #[test]
    fn status_lines_parse_strictly() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 503"), Some(503));
        assert_eq!(parse_status_line(b"HTTP/1.1 2000 OK"), None);
        assert_eq!(parse_status_line(b"HTTP/2 200"), None);
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH"), None);
    }

    #[tokio::test]
    async fn the_status_line_may_arrive_in_pieces() {
        let mut io = tokio_test::io::Builder::new()
            .read(b"HTTP/1.1 5")
            .read(b"02 Bad Gateway\r\nContent-Length: 0\r\n")
            .build();
        assert_eq!(read_status(&mut io).await.unwrap(), 502);
        let mut closed = tokio_test::io::Builder::new().read(b"HTTP/1.1 2").build();
        assert_eq!(
            read_status(&mut closed).await.unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    fn node(host_header: &str) -> CheckedNode {
        CheckedNode {
            host: "127.0.0.1".into(),
            port: 8080,
            addr: Some("127.0.0.1:8080".parse().unwrap()),
            host_header: host_header.into(),
            health: Default::default(),
        }
    }

    #[test]
    fn probes_send_the_path_host_and_headers_configured() {
        let mut check = ActiveCheck {
            http_path: "/status?full=1".into(),
            req_headers: vec!["User-Agent: pylon-check".into(), "X-A: b".into()],
            port: Some(9000),
            ..ActiveCheck::default()
        };
        let probes = plan(&check);
        assert_eq!(
            String::from_utf8(probes.request(&node("127.0.0.1:8080"))).unwrap(),
            "GET /status?full=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: pylon-check\r\nX-A: b\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(
            probes.target(&node("x")),
            Some("127.0.0.1:9000".parse().unwrap())
        );
        check.host = Some("health.example".into());
        let request = String::from_utf8(plan(&check).request(&node("x"))).unwrap();
        assert!(
            request.contains("\r\nHost: health.example\r\n"),
            "{request}"
        );
        check.req_headers = vec!["host: other".into()];
        let request = String::from_utf8(plan(&check).request(&node("x"))).unwrap();
        assert_eq!(request.matches("ost:").count(), 1, "{request}");
    }

    fn plan(check: &ActiveCheck) -> ActivePlan {
        let tls = TlsContext::new(None, None).unwrap();
        ActivePlan::new(check, None, &tls).unwrap()
    }

    /// A one-node upstream whose checks are `check`.
    fn checked(addr: SocketAddr, check: ActiveCheck) -> Arc<UpstreamHealth> {
        let active = plan(&check);
        let checks = pylon_model::HealthChecks {
            active: Some(check),
            passive: None,
        };
        let nodes = [pylon_model::Node {
            host: addr.ip().to_string(),
            port: addr.port(),
            weight: 1,
            priority: 0,
        }];
        let host_header = addr.to_string();
        Arc::new(UpstreamHealth::new(
            "upstreams/1",
            &checks,
            Some(active),
            &nodes,
            &[(Some(addr), &host_header)],
        ))
    }

    fn fast(kind: CheckType) -> ActiveCheck {
        ActiveCheck {
            kind,
            timeout: 0.5,
            healthy: ActiveHealthy {
                interval: 0.01,
                successes: 2,
                ..ActiveHealthy::default()
            },
            unhealthy: ActiveUnhealthy {
                interval: 0.01,
                http_failures: 2,
                tcp_failures: 2,
                ..ActiveUnhealthy::default()
            },
            ..ActiveCheck::default()
        }
    }

    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A server that answers every connection with `status` (shared, so a test can change it).
    async fn serve(status: Arc<std::sync::atomic::AtomicU16>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let status = status.load(std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = stream.read(&mut buf).await;
                    let response = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn http_checks_take_a_failing_node_out_and_bring_it_back() {
        let status = Arc::new(std::sync::atomic::AtomicU16::new(200));
        let addr = serve(status.clone()).await;
        let health = checked(addr, fast(CheckType::Http));
        let _checker = start(&health).unwrap();
        // Probes of a healthy node change nothing.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(health.nodes[0].health.status().label(), "healthy");
        status.store(500, std::sync::atomic::Ordering::SeqCst);
        until("the node to go down", || health.is_down(0)).await;
        assert_eq!(health.nodes[0].health.status().http_failure, 2);
        status.store(200, std::sync::atomic::Ordering::SeqCst);
        until("the node to come back", || !health.is_down(0)).await;
    }

    #[tokio::test]
    async fn tcp_checks_only_connect() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let health = checked(addr, fast(CheckType::Tcp));
        let checker = start(&health).unwrap();
        // Nothing is ever read or answered, yet connecting is enough.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!health.is_down(0));
        drop(listener);
        until("the closed port to count", || health.is_down(0)).await;
        assert_eq!(health.nodes[0].health.status().tcp_failure, 2);
        drop(checker);
    }

    #[tokio::test]
    async fn a_silent_node_times_out() {
        // Accepts (the backlog does) but never answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut check = fast(CheckType::Http);
        check.timeout = 0.05;
        check.unhealthy.timeouts = 1;
        let health = checked(listener.local_addr().unwrap(), check);
        let _checker = start(&health).unwrap();
        until("a timeout", || health.is_down(0)).await;
        assert_eq!(health.nodes[0].health.status().timeout_failure, 1);
    }

    #[tokio::test]
    async fn a_dropped_checker_probes_no_more() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let health = checked(listener.local_addr().unwrap(), fast(CheckType::Tcp));
        let checker = start(&health).unwrap();
        let _ = listener.accept().await.unwrap();
        drop(checker);
        // Let an aborted probe that was mid-connect finish being torn down.
        tokio::time::sleep(Duration::from_millis(50)).await;
        while let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(1), listener.accept()).await
        {}
        let more = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(more.is_err(), "a probe after the checker was dropped");
    }
}
