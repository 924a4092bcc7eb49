//! One HTTP/2 stream: the request as the router and variables see it, the route, the attempts
//! on the upstream's nodes, and the access log line.

use std::rc::Rc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::request::Parts;
use http::{Method, Request};
use pylon_plugin::{Reply, RequestCtx};

use super::body::{Halt, RequestBody};
use super::client::{Client, Delivered};
use super::exchange::Exchange;
use super::{to_h1, to_h2, Connection};
use crate::access_log::AccessRecord;
use crate::attempts::{Attempts, GaveUp};
use crate::error::GatewayError;
use crate::outbound::RequestContext;
use crate::pipeline::{error_reply, Plugins};
use crate::snapshot::{RouteTarget, WorkerView};
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
    let started = Instant::now();
    let (parts, recv) = request.into_parts();
    let head = parts.method == Method::HEAD;
    let mut client = Client::new(respond, conn.clone(), is_grpc(&parts), head);
    let peer = &conn.peer;
    let mut host = String::new();
    let host_ok = client_host(&parts).is_none_or(|raw| normalize_host(raw, &mut host));
    let view = worker.view();
    let vars = RequestVars {
        head: &parts,
        host: (!host.is_empty()).then_some(host.as_str()),
        client: peer.client,
        local: peer.local,
        tls: peer.tls.then_some(TlsInfo {
            server_name: peer.server_name.as_deref(),
        }),
    };
    let route = view.snapshot.router.find(&vars);
    let mut upstream = None;
    // The client as the log names it: the peer, or the address `real-ip` found.
    let mut client_ip = peer.client.ip();
    let delivered = if !host_ok || parts.method == Method::CONNECT {
        // CONNECT tunnels are not proxied (and extended CONNECT is not offered).
        client.send_error(GatewayError::BadRequest)
    } else {
        match route {
            None => client.send_error(GatewayError::RouteNotFound),
            Some(route) => {
                let plugins = Plugins::of(&view.snapshot, route);
                let mut ctx = RequestCtx::new(&vars, &route.id, route.service_id.as_deref());
                let delivered = match plugins.request(&mut ctx).await {
                    Some(reply) => send_reply(&mut client, plugins, &ctx, reply),
                    None => {
                        let (delivered, tried) = proxy(
                            &worker,
                            &view,
                            (route, plugins),
                            (&vars, &ctx),
                            recv,
                            &mut client,
                        )
                        .await;
                        upstream = tried;
                        delivered
                    }
                };
                plugins.log(
                    &ctx,
                    delivered.status,
                    delivered.bytes_sent,
                    started.elapsed(),
                );
                client_ip = ctx.client_ip();
                delivered
            }
        }
    };
    if worker.access_log.is_enabled() {
        worker.access_log.record(AccessRecord {
            time: SystemTime::now(),
            client: client_ip,
            method: parts.method.as_str().to_owned(),
            uri: parts.target().to_owned(),
            host,
            status: delivered.status,
            bytes_sent: delivered.bytes_sent,
            request_length: parts
                .headers
                .iter()
                .map(|(n, v)| (n.as_str().len() + v.len()) as u64)
                .sum(),
            route_id: route.map(|r| r.id.clone()),
            upstream: upstream.and_then(|(addr, _)| addr),
            upstream_latency: upstream.and_then(|(_, latency)| latency),
            latency: started.elapsed(),
            user_agent: parts
                .headers
                .get(http::header::USER_AGENT)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default(),
        });
    }
}

/// Answers with a plugin's reply, or the gateway's own error, after the plugins' response
/// edits. A gRPC client gets gateway errors as a gRPC status (see [`Client::send_error`]).
fn send_reply(
    client: &mut Client,
    plugins: Plugins<'_>,
    ctx: &RequestCtx<'_>,
    reply: Reply,
) -> Delivered {
    client.send_reply(&plugins.reply(ctx, reply))
}

fn send_error(
    client: &mut Client,
    plugins: Plugins<'_>,
    ctx: &RequestCtx<'_>,
    error: GatewayError,
) -> Delivered {
    if client.is_grpc() || !plugins.touches_response(ctx) {
        client.send_error(error)
    } else {
        send_reply(client, plugins, ctx, error_reply(error))
    }
}

type Tried = Option<(Option<std::net::SocketAddr>, Option<std::time::Duration>)>;

/// Proxies the stream to the route's upstream; returns what the client got and the last node
/// tried with its latency.
async fn proxy(
    worker: &Worker,
    view: &WorkerView,
    (route, plugins): (&RouteTarget, Plugins<'_>),
    (vars, ctx): (&RequestVars<'_, Parts>, &RequestCtx<'_>),
    recv: RecvStream,
    client: &mut Client,
) -> (Delivered, Tried) {
    let parts = vars.head;
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let body_timeout = worker.limits.body_timeout;
    let mut body = match RequestBody::prefetch(recv, declared, body_timeout).await {
        Ok(body) => body,
        Err(Halt::TimedOut) => {
            let error = GatewayError::RequestTimeout;
            return (send_error(client, plugins, ctx, error), None);
        }
        Err(halt) => {
            client.halted(halt);
            return (Delivered::CLIENT_GONE, None);
        }
    };
    // Balancing sees the request as plugins left it (a consumer to hash on, say).
    let mut attempts = Attempts::new(view, route, ctx, parts.method.as_str());
    let upstream = attempts.upstream();
    let exchange = Exchange {
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
        timeouts: route.timeouts,
        idempotent: attempts.idempotent(),
        plugins,
        ctx,
    };
    // The body beyond what the gateway holds stays with the client until an attempt starts
    // streaming it, and every failure after that is marked not replayable (`with_upload`):
    // for the failures that are, the body is still whole.
    let result = attempts
        .run(true, async |node, addr| {
            if upstream.grpc {
                to_h2::exchange(&exchange, node, addr, &mut body, client).await
            } else {
                to_h1::exchange(&exchange, node, addr, &mut body, client).await
            }
        })
        .await;
    match result {
        Ok(done) => (done.value, Some((done.node.addr, Some(done.latency)))),
        Err(GaveUp {
            error,
            node,
            latency,
        }) => (
            send_error(client, plugins, ctx, error),
            node.map(|n| (n.addr, latency)),
        ),
    }
}
