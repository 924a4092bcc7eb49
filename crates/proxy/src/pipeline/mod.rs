//! A request's life, written once for every protocol that carries requests: route match, the
//! plugins' request phases, the exchange with the upstream (or a plugin's or the gateway's own
//! answer), the log phase and the access log. A server codec ([`Downstream`]) supplies the
//! request and carries out the answers in its wire format; [`run`] is monomorphised per codec.

mod plugins;

use std::net::IpAddr;
use std::time::{Instant, SystemTime};

use pylon_plugin::{Reply, RequestCtx};

use crate::access_log::AccessRecord;
use crate::error::GatewayError;
use crate::outcome::{End, Outcome};
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
    // The client as the log names it: the peer, or the address `real-ip` found.
    let mut client = vars.client.ip();
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
            let mut ctx = RequestCtx::new(vars, route_id, service_id);
            let outcome = match plugins.request(&mut ctx).await {
                Some(reply) => {
                    let reply = plugins.reply(&ctx, reply);
                    downstream.reply(vars, &reply, End::Complete).await
                }
                None => {
                    let work = PluginWork { plugins, ctx: &ctx };
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
                            downstream.forward(vars, exchange).await
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
            plugins.log(&ctx, &outcome, started.elapsed());
            client = ctx.client_ip();
            outcome
        }
    };
    log(worker, vars, client, route, started, &outcome);
    outcome
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

/// The access log's record of one request: the one place it is made.
pub(crate) fn log<H: RequestFields>(
    worker: &Worker,
    vars: &RequestVars<'_, H>,
    client: IpAddr,
    route: Option<&RouteTarget>,
    started: Instant,
    outcome: &Outcome,
) {
    if !worker.access_log.is_enabled() {
        return;
    }
    let head = vars.head;
    worker.access_log.record(AccessRecord {
        time: SystemTime::now(),
        client,
        method: head.method().to_owned(),
        uri: head.target().to_owned(),
        host: vars.host.unwrap_or_default().to_owned(),
        status: outcome.status,
        bytes_sent: outcome.bytes_sent,
        request_length: head.head_length(),
        route_id: route.map(|r| r.id.clone()),
        upstream: outcome.upstream,
        upstream_latency: outcome.upstream_latency,
        latency: started.elapsed(),
        user_agent: head
            .header("user-agent")
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default(),
        failure: outcome.end.failure(),
    });
}
