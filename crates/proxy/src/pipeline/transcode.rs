//! A request whose upstream exchange a plugin's [`Transcoder`] makes: the client's whole body
//! becomes one gRPC call on the node's HTTP/2 connection, and the call's answer becomes the
//! client's response, in whatever protocol the client speaks. The client gets a whole
//! response when the transcoder has its head only at the end (a unary call, whose status is
//! in the trailers), and a streamed one, piece by piece as the messages arrive, when it has
//! its head before (a server-streaming call).

use std::time::Duration;

use bytes::Bytes;
use h2::RecvStream;
use http::header::{HeaderValue, CONTENT_TYPE, TE};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Uri, Version};
use pylon_plugin::{Answer, AnswerHead, GrpcCall, Reply, ResponseHeaders, Transcoder};
use tokio::time::Instant;

use super::{Downstream, Exchange, PluginWork};
use crate::attempts::{Attempts, Failure, UpstreamAnswer};
use crate::error::GatewayError;
use crate::outbound::{append_header, plugin_may_set, upstream_host};
use crate::outcome::{End, Outcome};
use crate::snapshot::{NodeTarget, UpstreamTarget};
use crate::upstream::h2::{open, upstream_failure, Dial, OpenStream, StreamConnection};
use crate::vars::RequestVars;

/// Makes the request's exchange through `transcoder`.
pub(super) async fn transcode<D: Downstream>(
    downstream: &mut D,
    vars: &RequestVars<'_, D::Head>,
    exchange: Exchange<'_>,
    mut transcoder: Box<dyn Transcoder>,
) -> Outcome {
    let Exchange {
        worker,
        view,
        upstream,
        timeouts,
        work: PluginWork { plugins, ctx },
        ..
    } = exchange;
    if !upstream.grpc {
        tracing::warn!(
            route = ctx.route_id(),
            "a transcoding plugin needs an upstream with scheme grpc or grpcs"
        );
        return exchange
            .give_up(downstream, vars, GatewayError::BadGateway)
            .await;
    }
    let refuse = async |downstream: &mut D, reply: Reply| {
        let reply = plugins.reply(ctx, reply);
        downstream.reply(vars, &reply, End::Complete).await
    };
    let body = match downstream.read_body(vars, transcoder.body_limit()).await {
        Ok(Some(body)) => body,
        Ok(None) => {
            let reply = Reply::message(413, "request body too large");
            return refuse(downstream, reply).await;
        }
        Err(error) => return exchange.give_up(downstream, vars, error).await,
    };
    let call = match transcoder.call(ctx, body) {
        Ok(call) => call,
        Err(reply) => return refuse(downstream, reply).await,
    };
    let deadline = call.deadline.map(|d| Instant::now() + d);
    let limits = &worker.limits;
    let client_host = vars.host.map(str::as_bytes);
    let mut attempts = Attempts::new(view, upstream, ctx, "POST");
    let called = attempts
        .run(true, async |node, addr, _fresh| {
            let dial = Dial {
                pool: &worker.h2_upstreams,
                settings: &limits.http2,
                max_head: limits.max_response_head,
                upstream,
                node,
                addr,
                timeout: timeouts.connect,
            };
            let request =
                call_request(&call, upstream_host(client_host, upstream, node), upstream)?;
            let wait = until(deadline, timeouts.read);
            start(&dial, request, call.body.clone(), wait).await
        })
        .await;
    let (called, node, latency) = match called {
        Ok(done) => (done.value, done.node, done.latency),
        Err(gave_up) => {
            // The deadline passed before any answer: the transcoder's say, not a 504 of ours.
            if gave_up.error == GatewayError::GatewayTimeout && expired(deadline) {
                let mut answer = Answer::default();
                transcoder.expired(&mut answer);
                return with_node(
                    whole(downstream, vars, answer, plugins, ctx).await,
                    gave_up.node,
                    gave_up.latency,
                );
            }
            let outcome = exchange.give_up(downstream, vars, gave_up.error).await;
            return with_node(outcome, gave_up.node, gave_up.latency);
        }
    };
    let Called {
        head,
        recv,
        _connection,
    } = called;
    let mut reading = Reading {
        recv,
        transcoder: &mut *transcoder,
        deadline,
        read_timeout: timeouts.read,
        answer: Answer::default(),
        ended: false,
    };
    reading.head(&head);
    // A unary call's client status is known only from its trailers: read up to the head.
    while reading.answer.head.is_none() && !reading.ended {
        if let Err(error) = reading.advance().await {
            let outcome = exchange.give_up(downstream, vars, error).await;
            return with_node(outcome, Some(node), Some(latency));
        }
    }
    let outcome = if reading.ended {
        let answer = std::mem::take(&mut reading.answer);
        whole(downstream, vars, answer, plugins, ctx).await
    } else {
        let Some(AnswerHead { status, headers }) = reading.answer.head.take() else {
            unreachable!("the loop above ends with a head or the end")
        };
        let head = Reply {
            status,
            headers,
            body: Bytes::new(),
        };
        let changes = plugins.response(ctx, status, &super::plugins::ReplyHeaders(&head));
        let head = super::plugins::edited_reply(head, &changes.edits);
        let mut filters = changes.body;
        let mut flushed = false;
        let next = async || loop {
            if !reading.answer.body.is_empty() {
                let mut piece = std::mem::take(&mut reading.answer.body);
                filters.run(&mut piece, false);
                return Some(Ok(Bytes::from(piece)));
            }
            if reading.ended {
                if flushed {
                    return None;
                }
                flushed = true;
                let mut rest = Vec::new();
                filters.run(&mut rest, true);
                if rest.is_empty() {
                    return None;
                }
                return Some(Ok(Bytes::from(rest)));
            }
            if reading.advance().await.is_err() {
                return Some(Err(()));
            }
        };
        downstream.stream(vars, &head, next).await
    };
    with_node(outcome, Some(node), Some(latency))
}

/// The outcome with the node that answered (or was tried last).
fn with_node(outcome: Outcome, node: Option<&NodeTarget>, latency: Option<Duration>) -> Outcome {
    Outcome {
        upstream: node.and_then(|n| n.addr),
        upstream_latency: latency,
        ..outcome
    }
}

/// The client's whole response, after the plugins' response edits.
async fn whole<D: Downstream>(
    downstream: &mut D,
    vars: &RequestVars<'_, D::Head>,
    answer: Answer,
    plugins: super::Plugins<'_>,
    ctx: &pylon_plugin::RequestCtx<'_>,
) -> Outcome {
    let Some(AnswerHead { status, headers }) = answer.head else {
        tracing::error!("a transcoder ended without a response head");
        return downstream.error(vars, GatewayError::BadGateway).await;
    };
    let reply = Reply {
        status,
        headers,
        body: Bytes::from(answer.body),
    };
    let reply = plugins.reply(ctx, reply);
    downstream.reply(vars, &reply, End::Complete).await
}

/// The call's request head: `POST` of the method's path, with gRPC's content type.
fn call_request(
    call: &GrpcCall,
    host: &[u8],
    upstream: &UpstreamTarget,
) -> Result<Request<()>, Failure> {
    let bad_gateway = || Failure::before_sending(GatewayError::BadGateway);
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(if upstream.tls.is_some() {
        Scheme::HTTPS
    } else {
        Scheme::HTTP
    });
    uri.authority = Some(Authority::try_from(host).map_err(|_| bad_gateway())?);
    uri.path_and_query =
        Some(PathAndQuery::try_from(call.path.as_str()).map_err(|_| bad_gateway())?);
    let mut request = Request::new(());
    *request.method_mut() = Method::POST;
    *request.uri_mut() = Uri::from_parts(uri).map_err(|_| bad_gateway())?;
    *request.version_mut() = Version::HTTP_2;
    let headers = request.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(TE, HeaderValue::from_static("trailers"));
    for (name, value) in &call.headers {
        if plugin_may_set(name) {
            append_header(headers, name.as_bytes(), value.as_bytes());
        }
    }
    Ok(request)
}

/// A call the upstream answered: its response head and the rest to read.
struct Called<'a> {
    head: http::response::Parts,
    recv: RecvStream,
    /// Counts the call on its connection while it lives.
    _connection: StreamConnection<'a>,
}

impl UpstreamAnswer for Called<'_> {
    fn upstream_status(&self) -> Option<u16> {
        Some(self.head.status.as_u16())
    }
}

/// Sends the call on the node's connection and waits (`wait` at most) for its response head.
async fn start<'a>(
    dial: &Dial<'a>,
    request: Request<()>,
    body: Bytes,
    wait: Duration,
) -> Result<Called<'a>, Failure> {
    let OpenStream {
        response,
        mut send,
        connection,
    } = open(dial, request, false).await?;
    // A call's messages are small and held whole: the stream buffers what its window does
    // not yet take.
    if send.send_data(body, true).is_err() {
        connection.retire();
        return Err(Failure::stale_connection(false));
    }
    match tokio::time::timeout(wait, response).await {
        Ok(Ok(response)) => {
            let (head, recv) = response.into_parts();
            Ok(Called {
                head,
                recv,
                _connection: connection,
            })
        }
        Ok(Err(e)) => {
            let failure = upstream_failure(&e);
            if failure.stale {
                connection.retire();
            }
            Err(failure)
        }
        Err(_) => Err(Failure {
            error: GatewayError::GatewayTimeout,
            replayable: false,
            stale: false,
            sent: true,
        }),
    }
}

/// The call's response as it is read, and what the transcoder made of it so far.
struct Reading<'t> {
    recv: RecvStream,
    transcoder: &'t mut dyn Transcoder,
    deadline: Option<Instant>,
    read_timeout: Duration,
    answer: Answer,
    /// The call ended (its trailers read, or its deadline passed).
    ended: bool,
}

impl Reading<'_> {
    fn head(&mut self, head: &http::response::Parts) {
        let headers = Headers(&head.headers);
        self.transcoder
            .head(head.status.as_u16(), &headers, &mut self.answer);
        if self.recv.is_end_stream() {
            self.transcoder.end(None, &mut self.answer);
            self.ended = true;
        }
    }

    /// Reads the next piece of the call (a piece of data, or its trailers) into the
    /// transcoder. An error says why the call broke off.
    async fn advance(&mut self) -> Result<(), GatewayError> {
        let wait = until(self.deadline, self.read_timeout);
        let read = tokio::time::timeout(wait, self.recv.data()).await;
        match read {
            Ok(Some(Ok(data))) => {
                // Gives the window back: the piece is with the transcoder now.
                let _ = self.recv.flow_control().release_capacity(data.len());
                self.transcoder.data(&data, &mut self.answer);
                return Ok(());
            }
            Ok(Some(Err(_))) => return Err(GatewayError::BadGateway),
            Ok(None) => {}
            Err(_) => return self.timed_out(),
        }
        let wait = until(self.deadline, self.read_timeout);
        match tokio::time::timeout(wait, self.recv.trailers()).await {
            Ok(Ok(trailers)) => {
                let trailers = trailers.as_ref().map(Headers);
                let trailers = trailers.as_ref().map(|t| t as &dyn ResponseHeaders);
                self.transcoder.end(trailers, &mut self.answer);
                self.ended = true;
                Ok(())
            }
            Ok(Err(_)) => Err(GatewayError::BadGateway),
            Err(_) => self.timed_out(),
        }
    }

    /// A read timed out: at the call's deadline, the transcoder answers; otherwise it is
    /// the upstream's timeout.
    fn timed_out(&mut self) -> Result<(), GatewayError> {
        if !expired(self.deadline) {
            return Err(GatewayError::GatewayTimeout);
        }
        self.transcoder.expired(&mut self.answer);
        self.ended = true;
        Ok(())
    }
}

/// How long the next wait may take: to the deadline, at most the read timeout.
fn until(deadline: Option<Instant>, read_timeout: Duration) -> Duration {
    deadline.map_or(read_timeout, |deadline| {
        deadline
            .saturating_duration_since(Instant::now())
            .min(read_timeout)
    })
}

fn expired(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|deadline| Instant::now() >= deadline)
}

/// An HTTP/2 header block as transcoders read it.
struct Headers<'a>(&'a HeaderMap);

impl ResponseHeaders for Headers<'_> {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.0.get(name).map(HeaderValue::as_bytes)
    }
}
