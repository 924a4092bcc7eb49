//! One HTTP/2 stream: the request as the router and variables see it, the HTTP/2 codec's side
//! of the pipeline, and the attempts on the upstream's nodes.

use std::rc::Rc;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use http::request::Parts;
use http::{Method, Request};
use pylon_plugin::Reply;

use super::body::{BodyOut, Halt, RequestBody};
use super::client::{response_head, Client, Delivered};
use super::exchange::Exchange;
use super::{to_h1, to_h2, Connection};
use crate::attempts::{Attempts, GaveUp};
use crate::error::GatewayError;
use crate::outbound::RequestContext;
use crate::outcome::{End, Outcome, Side};
use crate::pipeline::{self, Exchange as PipelineExchange, PluginWork};
use crate::vars::{normalize_host, RequestFields, RequestVars, TlsInfo};
use crate::worker::Worker;

impl RequestFields for Parts {
    fn method(&self) -> &str {
        self.method.as_str()
    }
    fn target(&self) -> &str {
        self.uri.path_and_query().map_or("/", |pq| pq.as_str())
    }
    fn path(&self) -> &str {
        match self.uri.path() {
            "" => "/",
            path => path,
        }
    }
    fn query(&self) -> Option<&str> {
        self.uri.query()
    }
    fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
    }
    fn protocol(&self) -> &'static str {
        "HTTP/2.0"
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.get(name).map(|v| v.as_bytes())
    }
}

/// The host the client asked for: `:authority`, else `Host` (RFC 9113 §8.3.1).
fn client_host(parts: &Parts) -> Option<&[u8]> {
    parts
        .uri
        .authority()
        .map(|a| a.as_str().as_bytes())
        .or_else(|| parts.headers.get(http::header::HOST).map(|v| v.as_bytes()))
}

/// gRPC requests say so in their content type (`application/grpc`, `application/grpc+proto`).
fn is_grpc(parts: &Parts) -> bool {
    parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

pub(super) async fn serve(
    worker: Rc<Worker>,
    conn: Rc<Connection>,
    request: Request<RecvStream>,
    respond: SendResponse<Bytes>,
) {
    let (parts, recv) = request.into_parts();
    let head = parts.method == Method::HEAD;
    let peer = &conn.peer;
    let mut host = String::new();
    let host_ok = client_host(&parts).is_none_or(|raw| normalize_host(raw, &mut host));
    let vars = RequestVars {
        head: &parts,
        host: (!host.is_empty()).then_some(host.as_str()),
        client: peer.client,
        local: peer.local,
        tls: peer.tls.then_some(TlsInfo {
            server_name: peer.server_name.as_deref(),
        }),
    };
    // CONNECT tunnels are not proxied (and extended CONNECT is not offered).
    let refused = (!host_ok || parts.method == Method::CONNECT).then_some(GatewayError::BadRequest);
    let mut http2 = Http2 {
        worker: &worker,
        client: Client::new(respond, conn.clone(), is_grpc(&parts), head),
        body: RequestBody::new(recv),
    };
    pipeline::run(&worker, &mut http2, &vars, refused).await;
}

/// The HTTP/2 codec's side of one stream: the response half and the request body.
struct Http2<'w> {
    worker: &'w Worker,
    client: Client,
    body: RequestBody,
}

impl pipeline::Downstream for Http2<'_> {
    type Head = Parts;

    async fn reply(&mut self, _: &RequestVars<'_, Parts>, reply: &Reply, end: End) -> Outcome {
        self.client.send_reply(reply, end).into()
    }

    async fn error(&mut self, _: &RequestVars<'_, Parts>, error: GatewayError) -> Outcome {
        self.client.send_error(error).into()
    }

    async fn read_body(
        &mut self,
        _: &RequestVars<'_, Parts>,
        limit: usize,
    ) -> Result<Option<Bytes>, GatewayError> {
        let timeout = self.worker.limits.body_timeout;
        match self.body.hold(limit.saturating_add(1), timeout).await {
            Ok(()) => {}
            Err(Halt::TimedOut) => return Err(GatewayError::RequestTimeout),
            Err(halt) => {
                self.client.halted(halt);
                return Err(GatewayError::BadRequest);
            }
        }
        if self.body.early_len() > limit {
            return Ok(None);
        }
        Ok(Some(match self.body.early() {
            [] => Bytes::new(),
            [one] => one.clone(),
            pieces => Bytes::from(pieces.concat()),
        }))
    }

    async fn stream(
        &mut self,
        _: &RequestVars<'_, Parts>,
        head: &Reply,
        mut next: impl AsyncFnMut() -> Option<Result<Bytes, ()>>,
    ) -> Outcome {
        let Ok(mut send) = self.client.send_head(response_head(head), false) else {
            return Delivered::CLIENT_GONE.into();
        };
        let mut out = BodyOut::plain(&mut send, self.worker.limits.send_timeout);
        while let Some(piece) = next().await {
            let Ok(piece) = piece else {
                out.send_reset(Reason::INTERNAL_ERROR);
                return Delivered::cut_short(head.status, out.sent(), Side::Upstream).into();
            };
            if let Err(halt) = out.data(piece, false).await {
                self.client.halted(halt);
                return Delivered::cut_short(head.status, out.sent(), Side::Client).into();
            }
        }
        if let Err(halt) = out.finish(None).await {
            self.client.halted(halt);
            return Delivered::cut_short(head.status, out.sent(), Side::Client).into();
        }
        Delivered::upstream(head.status, out.sent()).into()
    }

    /// A gRPC client gets the gateway's errors as a gRPC status (see [`Client::send_error`]).
    fn edits_errors(&self) -> bool {
        !self.client.is_grpc()
    }

    async fn forward(
        &mut self,
        vars: &RequestVars<'_, Parts>,
        exchange: PipelineExchange<'_>,
    ) -> Outcome {
        let parts = vars.head;
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        let PipelineExchange {
            worker,
            view,
            route: _,
            upstream,
            timeouts,
            work: PluginWork { plugins, ctx },
        } = exchange;
        // What plugins inspect of the body is held on top of what is prefetched.
        let mut inspectors = plugins.request_body(ctx);
        let timeout = worker.limits.body_timeout;
        let held = match self.body.prefetch(declared, timeout).await {
            Ok(()) if !inspectors.is_empty() => self.body.hold(inspectors.limit(), timeout).await,
            prefetched => prefetched,
        };
        match held {
            Ok(()) => {}
            Err(Halt::TimedOut) => {
                return exchange
                    .give_up(self, vars, GatewayError::RequestTimeout)
                    .await
            }
            Err(halt) => {
                self.client.halted(halt);
                return Delivered::CLIENT_GONE.into();
            }
        }
        if let Some(refusal) = self.body.inspect_held(&mut inspectors) {
            let reply = plugins.reply(ctx, refusal);
            return self.reply(vars, &reply, End::Complete).await;
        }
        self.body.tap(plugins.request_taps(ctx));
        // Balancing sees the request as plugins left it (a consumer to hash on, say).
        let mut attempts = Attempts::new(view, upstream, ctx, parts.method.as_str());
        let shared = Exchange {
            worker,
            parts,
            declared,
            context: RequestContext {
                client_host: client_host(parts),
                client: ctx.client_ip(),
                local: vars.local,
                scheme: vars.scheme(),
                edits: &ctx.edits,
            },
            upstream,
            timeouts,
            plugins,
            ctx,
        };
        // The body beyond what the gateway holds stays with the client until an attempt starts
        // streaming it, and every failure after that is marked not replayable (`with_upload`):
        // for the failures that are, the body is still whole.
        let (body, client) = (&mut self.body, &mut self.client);
        let result = attempts
            .run(true, async |node, addr, fresh| {
                if upstream.grpc {
                    // A connection found going away is retired: the next dial is fresh.
                    to_h2::exchange(&shared, node, addr, body, client).await
                } else {
                    to_h1::exchange(&shared, node, addr, fresh, body, client).await
                }
            })
            .await;
        match result {
            Ok(done) => Outcome {
                upstream: done.node.addr,
                upstream_latency: Some(done.latency),
                ..done.value.into()
            },
            Err(GaveUp {
                error,
                node,
                latency,
            }) => Outcome {
                upstream: node.and_then(|n| n.addr),
                upstream_latency: latency,
                ..exchange.give_up(self, vars, error).await
            },
        }
    }
}
