//! Which node an attempt goes to, and whether a failed attempt may be followed by another: the
//! rules every protocol path (HTTP/1.1, HTTP/2, gRPC) shares.
//!
//! A request is replayed only while nothing about it is lost: its body must still be whole in
//! the gateway's hands (never partly streamed), and once the upstream may have acted on it (it
//! was sent and then timed out or the connection dropped) only idempotent methods go again.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use pylon_balancer::BalancerState;
use pylon_router::RequestView;

use crate::error::GatewayError;
use crate::health::Attempt as HealthReport;
use crate::snapshot::{NodeTarget, UpstreamTarget, WorkerView};

/// Why one attempt failed before anything reached the client.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Failure {
    pub error: GatewayError,
    /// The request may go to another node (or a fresh connection to the same one).
    pub replayable: bool,
    /// A reused idle connection failed before the upstream could have seen the request:
    /// try again on a new connection without counting an attempt.
    pub stale: bool,
    /// The whole request reached the upstream, which may have acted on it: only an
    /// idempotent request may go again.
    pub sent: bool,
}

impl Failure {
    /// Whether the request may go to another attempt: its body must still be whole in our
    /// hands, and a request the upstream may have acted on goes again only if idempotent.
    pub fn allows_retry(&self, body_buffered: bool, idempotent: bool) -> bool {
        self.replayable && body_buffered && (idempotent || !self.sent)
    }

    /// The upstream answered with something that is not a usable response: it has seen the
    /// request, and nothing of its answer can be passed on.
    pub fn bad_response() -> Self {
        Failure {
            error: GatewayError::BadGateway,
            replayable: false,
            stale: false,
            sent: true,
        }
    }

    /// A connection that could not take the request (dead, or going away): nothing the
    /// upstream could act on reached it, and a reused connection earns a fresh one.
    pub fn stale_connection(reused: bool) -> Self {
        Failure {
            error: GatewayError::BadGateway,
            replayable: true,
            stale: reused,
            sent: false,
        }
    }

    /// Nothing was sent: any request may go elsewhere.
    pub fn before_sending(error: GatewayError) -> Self {
        Failure {
            error,
            replayable: true,
            stale: false,
            sent: false,
        }
    }
}

/// Methods that may be sent twice without changing the outcome (RFC 9110 §9.2.2).
pub(crate) fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

/// What the passive health check learns from an attempt that reached the client.
pub(crate) trait UpstreamAnswer {
    /// The upstream's status, when the response was the upstream's (not one the gateway made
    /// for a client-side failure).
    fn upstream_status(&self) -> Option<u16>;
}

/// An attempt that succeeded, and where.
pub(crate) struct Done<'v, T> {
    pub value: T,
    pub node: &'v NodeTarget,
    pub latency: Duration,
}

/// Why the request gets a gateway error, and the last node tried, if any.
pub(crate) struct GaveUp<'v> {
    pub error: GatewayError,
    pub node: Option<&'v NodeTarget>,
    pub latency: Option<Duration>,
}

/// The attempts of one request on one upstream.
pub(crate) struct Attempts<'v> {
    upstream: &'v UpstreamTarget,
    balancer: Rc<RefCell<BalancerState>>,
    hash_key: Option<String>,
    idempotent: bool,
    started: Instant,
    tried: Vec<usize>,
    last_error: GatewayError,
}

/// One attempt on one node, counted in flight by the balancer until it is finished or dropped.
struct Attempt<'v> {
    node: &'v NodeTarget,
    index: usize,
    started: Instant,
    balancer: Rc<RefCell<BalancerState>>,
    finished: bool,
}

impl<'v> Attempts<'v> {
    pub fn new(
        view: &'v WorkerView,
        upstream: &'v UpstreamTarget,
        vars: &impl RequestView,
        method: &str,
    ) -> Self {
        Attempts {
            upstream,
            balancer: view.balancer(upstream),
            hash_key: upstream.hash_key.as_ref().map(|key| key.render(vars)),
            idempotent: is_idempotent(method),
            started: Instant::now(),
            tried: Vec::new(),
            last_error: GatewayError::BadGateway,
        }
    }

    /// Runs `exchange` on one node after another until it succeeds or the retry rules say
    /// stop. `body_buffered`: the request's body (if any) is whole in the gateway's hands, so
    /// an attempt that failed before streaming any of it may send it again. A node whose name
    /// did not resolve fails its attempt without being called.
    ///
    /// `exchange` may take an idle pooled connection; when that turns out stale (the
    /// upstream had closed it: the keep-alive race), it is called once more for the same
    /// node with `fresh` set, to go on a new connection, and that is not counted as an
    /// attempt.
    pub async fn run<T: UpstreamAnswer>(
        &mut self,
        body_buffered: bool,
        mut exchange: impl AsyncFnMut(&'v NodeTarget, SocketAddr, bool) -> Result<T, Failure>,
    ) -> Result<Done<'v, T>, GaveUp<'v>> {
        loop {
            let attempt = self.next().map_err(|error| GaveUp {
                error,
                node: None,
                latency: None,
            })?;
            let node = attempt.node;
            let result = match node.addr {
                None => Err(Failure::before_sending(GatewayError::BadGateway)),
                Some(addr) => match exchange(node, addr, false).await {
                    Err(f) if f.stale && f.allows_retry(body_buffered, self.idempotent) => {
                        exchange(node, addr, true).await
                    }
                    result => result,
                },
            };
            self.report_health(attempt.index, &result);
            match result {
                Ok(value) => {
                    return Ok(Done {
                        value,
                        node,
                        latency: attempt.finish(false),
                    })
                }
                Err(failure) => {
                    let (latency, again) = self.failed(attempt, &failure, body_buffered);
                    if !again {
                        return Err(GaveUp {
                            error: failure.error,
                            node: Some(node),
                            latency: Some(latency),
                        });
                    }
                }
            }
        }
    }

    /// Tells the passive health check and outlier detection, where the upstream has them,
    /// how the attempt went.
    fn report_health<T: UpstreamAnswer>(&self, index: usize, result: &Result<T, Failure>) {
        let (health, outlier) = (
            self.upstream.health.as_deref(),
            self.upstream.outlier.as_deref(),
        );
        if health.is_none() && outlier.is_none() {
            return;
        }
        let report = match result {
            Ok(delivered) => delivered.upstream_status().map(HealthReport::Answered),
            Err(f) if f.error == GatewayError::GatewayTimeout => Some(HealthReport::TimedOut),
            Err(_) => Some(HealthReport::Failed),
        };
        let Some(report) = report else {
            return;
        };
        if let Some(health) = health {
            health.report_attempt(index, report);
        }
        if let Some(outlier) = outlier {
            outlier.report_attempt(index, report);
        }
    }

    /// The node for the next attempt; or, when there is none, the error to answer with.
    fn next(&mut self) -> Result<Attempt<'v>, GatewayError> {
        let mut state = self.balancer.borrow_mut();
        let key = self.hash_key.as_deref().map(str::as_bytes);
        let pick = pick_node(&mut state, self.upstream, key, &self.tried);
        let Some(index) = pick else {
            return Err(if self.tried.is_empty() {
                GatewayError::NoUpstreamNode
            } else {
                self.last_error
            });
        };
        state.on_request_start(index);
        Ok(Attempt {
            node: &self.upstream.nodes[index],
            index,
            started: Instant::now(),
            balancer: self.balancer.clone(),
            finished: false,
        })
    }

    /// Ends a failed attempt; returns its latency and whether another attempt may follow.
    /// `body_buffered`: the request's body (if any) is still whole in the gateway's hands.
    fn failed(
        &mut self,
        attempt: Attempt<'_>,
        failure: &Failure,
        body_buffered: bool,
    ) -> (Duration, bool) {
        tracing::warn!(
            upstream = %self.upstream.key,
            node = ?attempt.node.addr,
            status = failure.error.status(),
            "upstream attempt failed"
        );
        self.tried.push(attempt.index);
        self.last_error = failure.error;
        let latency = attempt.finish(true);
        let in_time = self
            .upstream
            .retry_timeout
            .is_none_or(|t| self.started.elapsed() < t);
        let again = self.tried.len() <= self.upstream.retries
            && in_time
            && failure.allows_retry(body_buffered, self.idempotent);
        (latency, again)
    }
}

/// The node for the next attempt: an untried healthy one if there is one. Nodes that health
/// checks marked unhealthy or outlier detection ejected are left out, so a lower priority tier
/// takes over when every node above it is down; and when no node is healthy at all, all of
/// them take traffic rather than none (as APISIX, and as Envoy's panic threshold).
fn pick_node(
    state: &mut BalancerState,
    upstream: &UpstreamTarget,
    key: Option<&[u8]>,
    tried: &[usize],
) -> Option<usize> {
    let spec = &upstream.balancer;
    let down = |i: usize| {
        upstream.health.as_ref().is_some_and(|h| h.is_down(i))
            || upstream.outlier.as_ref().is_some_and(|o| o.is_ejected(i))
    };
    state
        .pick(spec, key, |i| tried.contains(&i) || down(i))
        // Every healthy node was tried: retries may go round them again rather than give up
        // early.
        .or_else(|| state.pick(spec, key, down))
        .or_else(|| state.pick(spec, key, |i| tried.contains(&i)))
        .or_else(|| state.pick(spec, key, |_| false))
}

impl Attempt<'_> {
    /// Ends the attempt for the balancer; returns how long it took.
    fn finish(mut self, failed: bool) -> Duration {
        self.end(failed)
    }

    fn end(&mut self, failed: bool) -> Duration {
        self.finished = true;
        let latency = self.started.elapsed();
        self.balancer
            .borrow_mut()
            .on_request_end(self.index, latency, failed);
        latency
    }
}

impl Drop for Attempt<'_> {
    /// An attempt abandoned mid-way (the client reset its stream, the connection was closed at
    /// shutdown) still leaves the balancer's in-flight count, or least_conn and EWMA would
    /// count it for ever. It is not the node's fault, so it does not count as a failure.
    fn drop(&mut self) {
        if !self.finished {
            self.end(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::RequestHead;
    use crate::snapshot::Snapshot;
    use crate::vars::RequestVars;

    /// `GET /` from a client, as the router and the balancer see it.
    fn get_root(head: &RequestHead) -> RequestVars<'_> {
        RequestVars {
            head,
            host: None,
            client: "127.0.0.1:1000".parse().unwrap(),
            local: "127.0.0.1:9080".parse().unwrap(),
            tls: None,
        }
    }

    fn root_head() -> RequestHead {
        RequestHead::from_wire("GET / HTTP/1.1\r\n\r\n")
    }

    /// The upstream of the route `GET /` matches.
    fn only_upstream(snapshot: &Snapshot) -> std::sync::Arc<UpstreamTarget> {
        let head = root_head();
        let route = snapshot.router.find(&get_root(&head)).unwrap();
        route.upstream.clone().unwrap()
    }

    #[test]
    fn only_idempotent_requests_go_again_once_the_upstream_may_have_acted() {
        let refused = Failure::before_sending(GatewayError::BadGateway);
        assert!(
            refused.allows_retry(true, false),
            "nothing sent: a POST may go elsewhere"
        );
        let dropped = Failure {
            error: GatewayError::BadGateway,
            replayable: true,
            stale: false,
            sent: true,
        };
        assert!(dropped.allows_retry(true, true));
        assert!(
            !dropped.allows_retry(true, false),
            "a POST the upstream may have acted on"
        );
        assert!(
            !refused.allows_retry(false, true),
            "a body partly streamed is gone"
        );
    }

    #[test]
    fn an_abandoned_attempt_is_no_longer_counted_in_flight() {
        let text = "upstreams:\n  - {id: u, type: least_conn, nodes: {\"127.0.0.1:1\": 1, \"127.0.0.1:2\": 1}}\nroutes:\n  - {id: r, uri: /, upstream_id: u}\n";
        let config = pylon_model::parse_standalone(text).unwrap().1;
        let snapshot = crate::snapshot::Snapshot::compile(&config);
        let upstream = only_upstream(&snapshot);
        let view = WorkerView::new(std::sync::Arc::new(snapshot), None);
        let head = root_head();
        let mut attempts = Attempts::new(&view, &upstream, &get_root(&head), "GET");
        // A stream the client cancelled mid-attempt: the attempt is dropped, never finished.
        drop(attempts.next().unwrap());
        // Both nodes are idle again, so least_conn takes turns between them.
        let mut picks = [0; 2];
        for _ in 0..4 {
            let attempt = attempts.next().unwrap();
            picks[attempt.index] += 1;
            attempt.finish(false);
        }
        assert_eq!(picks, [2, 2]);
    }

    #[tokio::test]
    async fn unhealthy_nodes_are_skipped_until_none_is_healthy() {
        let text = r#"
upstreams:
  - id: u
    nodes:
      - {host: 127.0.0.1, port: 1, weight: 1, priority: 1}
      - {host: 127.0.0.1, port: 2, weight: 1, priority: 1}
      - {host: 127.0.0.1, port: 3, weight: 1, priority: 0}
    checks: {active: {type: tcp}, passive: {unhealthy: {http_failures: 1}}}
routes:
  - {id: r, uri: /, upstream_id: u}
"#;
        let config = pylon_model::parse_standalone(text).unwrap().1;
        let snapshot = crate::snapshot::Snapshot::compile(&config);
        let upstream = &*only_upstream(&snapshot);
        let health = upstream.health.as_ref().unwrap();
        let mut state = upstream.balancer.new_state();
        let mut picks = |tried: &[usize]| -> Vec<usize> {
            let mut picked: Vec<usize> = (0..6)
                .filter_map(|_| pick_node(&mut state, upstream, None, tried))
                .collect();
            picked.sort_unstable();
            picked.dedup();
            picked
        };
        assert_eq!(picks(&[]), [0, 1], "the first tier takes all");
        health.report_attempt(0, HealthReport::Answered(500));
        assert_eq!(picks(&[]), [1], "its healthy node");
        assert_eq!(picks(&[1]), [2], "a retry: the untried healthy node below");
        assert_eq!(
            picks(&[1, 2]),
            [1],
            "every healthy node tried: round them again"
        );
        health.report_attempt(1, HealthReport::Answered(500));
        assert_eq!(picks(&[]), [2], "the backup tier takes over");
        health.report_attempt(2, HealthReport::Answered(500));
        assert_eq!(picks(&[]), [0, 1], "none healthy: all, by priority");
        assert_eq!(picks(&[0, 1]), [2]);
    }

    #[test]
    fn ejected_nodes_are_skipped_like_unhealthy_ones() {
        let text = r#"
upstreams:
  - id: u
    nodes: {"127.0.0.1:1": 1, "127.0.0.1:2": 1}
    outlier_detection: {consecutive_5xx: 1, base_ejection_time: 60, max_ejection_percent: 100}
routes:
  - {id: r, uri: /, upstream_id: u}
"#;
        let config = pylon_model::parse_standalone(text).unwrap().1;
        let snapshot = crate::snapshot::Snapshot::compile(&config);
        let upstream = &*only_upstream(&snapshot);
        let outlier = upstream.outlier.as_ref().unwrap();
        let mut state = upstream.balancer.new_state();
        let mut picks = || -> Vec<usize> {
            let mut picked: Vec<usize> = (0..4)
                .filter_map(|_| pick_node(&mut state, upstream, None, &[]))
                .collect();
            picked.sort_unstable();
            picked.dedup();
            picked
        };
        assert_eq!(picks(), [0, 1]);
        outlier.report_attempt(0, HealthReport::Answered(503));
        assert_eq!(picks(), [1], "the ejected node is left out");
        outlier.report_attempt(1, HealthReport::Failed);
        assert_eq!(picks(), [0, 1], "every node out: all take traffic");
    }
}
