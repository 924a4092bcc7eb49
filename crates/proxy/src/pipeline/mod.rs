//! A request's life, written once for every protocol that carries requests: route match, the
//! plugins' request phases, the exchange with the upstream (or a plugin's or the gateway's own
//! answer), the log phase and the access log. A server codec ([`Downstream`]) supplies the
//! request and carries out the answers in its wire format; [`run`] is monomorphised per codec.

mod device_push;
mod plugins;
mod push;
mod transcode;

use std::time::{Instant, SystemTime};

use bytes::Bytes;

use pylon_plugin::{FramesBridge, MetricNames, Reply, RequestCtx};

use crate::access_log::AccessRecord;
use crate::error::GatewayError;
use crate::metrics::Sample;
use crate::outcome::{Cause, End, Outcome, Side};
use crate::snapshot::{RouteTarget, Timeouts, UpstreamTarget, WorkerView};
use crate::vars::{RequestFields, RequestVars};
use crate::worker::Worker;
pub(crate) use plugins::{error_reply, PluginWork, Plugins, ResponseChanges};

/// A server codec's side of one request. `vars` is the request as the router, variables and
/// plugins see it.
pub(crate) trait Downstream {
    type Head: RequestFields;

    /// Answers with a whole response the gateway holds: a plugin's reply (`End::Complete`), or
    /// the gateway's own error after plugins edited it.
    async fn reply(
        &mut self,
        vars: &RequestVars<'_, Self::Head>,
        reply: &Reply,
        end: End,
    ) -> Outcome;

    /// Answers with the gateway's own response to `error`.
    async fn error(&mut self, vars: &RequestVars<'_, Self::Head>, error: GatewayError) -> Outcome;

    /// Sends the request to the route's upstream, with retries, and relays the response
    /// through the plugins' filters.
    async fn forward(
        &mut self,
        vars: &RequestVars<'_, Self::Head>,
        exchange: Exchange<'_>,
    ) -> Outcome;

    /// The request's whole body, for a plugin that makes the upstream exchange itself;
    /// `None` when it is longer than `limit` bytes (it is then left unread).
    async fn read_body(
        &mut self,
        vars: &RequestVars<'_, Self::Head>,
        limit: usize,
    ) -> Result<Option<Bytes>, GatewayError>;

    /// Answers with `head` (its body is empty), then with each piece `next` yields, sent as
    /// it comes, until `next` yields `None` (the response is whole) or `Err` (it is cut short:
    /// the client must see it broken off, never as complete).
    async fn stream(
        &mut self,
        vars: &RequestVars<'_, Self::Head>,
        head: &Reply,
        next: impl AsyncFnMut() -> Option<Result<Bytes, ()>>,
    ) -> Outcome;

    /// Serves the client of a route whose WebSocket upgrade the gateway answers itself
    /// (`websocket-frames`), once the request phases have passed. The default, for a codec
    /// without upgrades (HTTP/2 has no RFC 8441 support here), answers 426.
    async fn bridge(
        &mut self,
        vars: &RequestVars<'_, Self::Head>,
        _bridge: FramesBridge,
        work: PluginWork<'_>,
    ) -> Outcome {
        upgrade_required(self, vars, work).await
    }

    /// Whether plugins' response edits apply to the gateway's own errors. A gRPC client gets
    /// those as a gRPC status instead, which plugins do not see.
    fn edits_errors(&self) -> bool {
        true
    }
}

/// What forwarding one routed request needs.
#[derive(Clone, Copy)]
pub(crate) struct Exchange<'a> {
    pub worker: &'a Worker,
    pub view: &'a WorkerView,
    pub route: &'a RouteTarget,
    /// The route's upstream, or the one a plugin chose for this request.
    pub upstream: &'a UpstreamTarget,
    /// The route's timeouts, or those of the upstream a plugin chose.
    pub timeouts: Timeouts,
    pub work: PluginWork<'a>,
}

impl Exchange<'_> {
    /// The gateway's answer to `error` once an exchange gave up: as plugins edited it when
    /// they touch responses, else as it is.
    pub async fn give_up<D: Downstream>(
        &self,
        downstream: &mut D,
        vars: &RequestVars<'_, D::Head>,
        error: GatewayError,
    ) -> Outcome {
        answer_error(downstream, vars, Some(self.work), error).await
    }
}

/// Runs one request through its life; `refused` when the codec already found it malformed
/// (it is still logged, with the route it would have matched).
pub(crate) async fn run<D: Downstream>(
    worker: &Worker,
    downstream: &mut D,
    vars: &RequestVars<'_, D::Head>,
    refused: Option<GatewayError>,
) -> Outcome {
    let started = Instant::now();
    let view = worker.view();
    let route = view.snapshot.router.find(vars);
    // Holds the plugins' view of the request, and logs the request once: at its end, or when
    // its future is dropped before that.
    let mut unfinished = Unfinished {
        worker,
        vars,
        route,
        started,
        plugins: None,
        ctx: None,
        ended: false,
    };
    let outcome = match (refused, route) {
        (Some(error), _) => downstream.error(vars, error).await,
        (None, None) if view.snapshot.global_plugins.is_empty() => {
            downstream.error(vars, GatewayError::RouteNotFound).await
        }
        // Global rules run for a request no route matched too (an `ip-restriction` against
        // scanners, a CORS header on the 404), as APISIX's do.
        (None, route) => {
            let (plugins, route_id, service_id) = match route {
                Some(route) => (
                    Plugins::of(&view.snapshot, route),
                    &*route.id,
                    route.service_id.as_deref(),
                ),
                None => (Plugins::global(&view.snapshot), "", None),
            };
            unfinished.plugins = Some(plugins);
            let ctx = unfinished
                .ctx
                .insert(RequestCtx::new(vars, route_id, service_id));
            let decided = plugins.request(ctx).await;
            // A bridged route's clients, and a push route's requests, are served by the
            // gateway, not proxied.
            let bridge = decided
                .is_none()
                .then(|| plugins.frames_bridge(ctx))
                .flatten();
            let push = (decided.is_none() && bridge.is_none())
                .then(|| plugins.frames_push(ctx))
                .flatten();
            let device_push = (decided.is_none() && bridge.is_none() && push.is_none())
                .then(|| plugins.device_push(ctx))
                .flatten();
            let outcome = match (decided, bridge, push, device_push) {
                (Some(reply), _, _, _) => {
                    let reply = plugins.reply(ctx, reply);
                    downstream.reply(vars, &reply, End::Complete).await
                }
                (None, Some(bridge), _, _) => {
                    let work = PluginWork { plugins, ctx };
                    downstream.bridge(vars, bridge, work).await
                }
                (None, None, Some(push), _) => {
                    let work = PluginWork { plugins, ctx };
                    push::push(worker, downstream, vars, &push, work).await
                }
                (None, None, None, Some(api)) => {
                    let work = PluginWork { plugins, ctx };
                    device_push::serve(worker, downstream, vars, &api, work).await
                }
                (None, None, None, None) => {
                    let work = PluginWork { plugins, ctx };
                    let chosen = ctx.upstream_override.as_deref();
                    let upstream = route.and_then(|r| r.upstream_for(chosen));
                    match (route, upstream) {
                        (Some(route), Some((upstream, timeouts))) => {
                            let exchange = Exchange {
                                worker,
                                view: &view,
                                route,
                                upstream,
                                timeouts,
                                work,
                            };
                            match plugins.transcoder(ctx) {
                                Some(transcoder) => {
                                    transcode::transcode(downstream, vars, exchange, transcoder)
                                        .await
                                }
                                None => downstream.forward(vars, exchange).await,
                            }
                        }
                        (Some(_), None) => {
                            let error = GatewayError::MissingUpstream;
                            answer_error(downstream, vars, Some(work), error).await
                        }
                        (None, _) => {
                            let error = GatewayError::RouteNotFound;
                            answer_error(downstream, vars, Some(work), error).await
                        }
                    }
                }
            };
            outcome
        }
    };
    unfinished.finish(&outcome, refused);
    outcome
}

/// A request under way, logged once by [`Unfinished::finish`]. A codec drops a request's
/// future when its client leaves before the end (its HTTP/2 connection closed, say): then,
/// once whatever the request was waiting on is dropped, the `log` phase and the access log
/// still see it, as a 499 that sent nothing the log can count.
struct Unfinished<'a, 'v, H: RequestFields> {
    worker: &'a Worker,
    vars: &'a RequestVars<'v, H>,
    route: Option<&'a RouteTarget>,
    started: Instant,
    plugins: Option<Plugins<'a>>,
    ctx: Option<RequestCtx<'a>>,
    /// The request was logged ([`Unfinished::finish`]).
    ended: bool,
}

impl<H: RequestFields> Unfinished<'_, '_, H> {
    /// Ends the request: its plugins' `log` phase, then its access log record and metrics.
    fn finish(&mut self, outcome: &Outcome, refused: Option<GatewayError>) {
        self.ended = true;
        // Whether the plugins have it counted by route.
        let counted = match (&self.plugins, &self.ctx) {
            (Some(plugins), Some(ctx)) => plugins.log(ctx, outcome, self.started.elapsed()),
            _ => None,
        };
        let request = Logged {
            route: self.route,
            plugin_ctx: self.ctx.as_ref(),
            refused,
            counted,
            started: self.started,
        };
        log(self.worker, self.vars, &request, outcome);
    }
}

impl<H: RequestFields> Drop for Unfinished<'_, '_, H> {
    fn drop(&mut self) {
        if !self.ended {
            self.finish(&Outcome::failed(499, 0, Side::Client, Cause::Reset), None);
        }
    }
}

/// The answer to a request on a bridged route that is not a WebSocket upgrade the codec can
/// take: 426, saying which upgrade it takes (in the body: `Upgrade` is a connection header,
/// which the codecs do not let a reply carry).
pub(crate) async fn upgrade_required<D: Downstream + ?Sized>(
    downstream: &mut D,
    vars: &RequestVars<'_, D::Head>,
    PluginWork { plugins, ctx }: PluginWork<'_>,
) -> Outcome {
    let reply = Reply::message(426, "this route takes WebSocket upgrades over HTTP/1.1");
    let reply = plugins.reply(ctx, reply);
    downstream.reply(vars, &reply, End::Complete).await
}

/// Answers with the gateway's own response to `error`, edited by the plugins when there are
/// any that touch responses and the codec lets them.
async fn answer_error<D: Downstream>(
    downstream: &mut D,
    vars: &RequestVars<'_, D::Head>,
    work: Option<PluginWork<'_>>,
    error: GatewayError,
) -> Outcome {
    match work {
        Some(PluginWork { plugins, ctx })
            if downstream.edits_errors() && plugins.touches_response(ctx) =>
        {
            let reply = plugins.reply(ctx, error_reply(error));
            downstream.reply(vars, &reply, End::of(error)).await
        }
        _ => downstream.error(vars, error).await,
    }
}

/// What the log step knows of a request besides its outcome.
pub(crate) struct Logged<'a> {
    /// The route it matched (or, refused, would have matched).
    pub route: Option<&'a RouteTarget>,
    /// The plugins' view of it, when it went through plugins.
    pub plugin_ctx: Option<&'a RequestCtx<'a>>,
    /// Why the codec refused it before routing.
    pub refused: Option<GatewayError>,
    /// How the metrics count it by route, when a plugin (`prometheus`) asked.
    pub counted: Option<MetricNames>,
    pub started: Instant,
}

/// The access log's record of one request, and its count in the metrics: the one place
/// either is made.
pub(crate) fn log<H: RequestFields>(
    worker: &Worker,
    vars: &RequestVars<'_, H>,
    request: &Logged<'_>,
    outcome: &Outcome,
) {
    let latency = request.started.elapsed();
    let head = vars.head;
    if let Some(names) = request.counted {
        let consumer = request.plugin_ctx.and_then(RequestCtx::consumer);
        let sample = Sample {
            consumer: consumer.map_or("", |c| c.username()),
            node: outcome.upstream.map(|addr| addr.ip()),
            status: outcome.status,
            latency,
            upstream_latency: outcome.upstream_latency,
            ingress: head.head_length(),
            egress: outcome.bytes_sent,
        };
        let labels = request.route.map(|route| route.labels.get(names));
        worker.metrics.observe(labels, &sample);
    }
    worker.metrics.request(request.refused);
    if !worker.access_log.is_enabled() {
        return;
    }
    // The client as the log names it: the peer, or the address `real-ip` found.
    let client = request
        .plugin_ctx
        .map_or_else(|| vars.client.ip(), RequestCtx::client_ip);
    worker.access_log.record(AccessRecord {
        time: SystemTime::now(),
        client,
        method: head.method().to_owned(),
        uri: head.target().to_owned(),
        host: vars.host.unwrap_or_default().to_owned(),
        status: outcome.status,
        bytes_sent: outcome.bytes_sent,
        request_length: head.head_length(),
        route_id: request.route.map(|r| r.id.clone()),
        upstream: outcome.upstream,
        upstream_latency: outcome.upstream_latency,
        latency,
        user_agent: head
            .header("user-agent")
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default(),
        failure: outcome.end.failure(),
    });
}
