//! The plugin phases of a routed request, shared by every codec: the request phases before
//! the upstream exchange, the response head filter, and the log phase.
//!
//! Codecs call these at the same points of a request's life and apply what the plugins
//! decided ([`RequestEdits`], [`ResponseEdits`], a [`Reply`]) in their own wire format. A
//! route with no plugins (and no global rules) costs a bit test per phase.

use std::borrow::Cow;
use std::cell::Cell;
use std::time::Duration;

use bytes::Bytes;
use pylon_plugin::{
    BodyFilters, Chain, Consumer, DevicePush, FramesBridge, FramesPush, LogCtx, MetricNames, Phase,
    Reply, RequestBodyInspectors, RequestCtx, RequestPhase, RequestTaps, ResponseCtx,
    ResponseEdits, ResponseHeaders, Transcoder,
};

use crate::error::GatewayError;
use crate::http1::ResponseHead;
use crate::outcome::{End, Outcome, Side};
use crate::snapshot::{RouteTarget, Snapshot};

/// The chains that apply to one routed request: the global rules', then the route's.
#[derive(Clone, Copy)]
pub(crate) struct Plugins<'s> {
    global: &'s Chain,
    route: &'s Chain,
}

impl<'s> Plugins<'s> {
    pub fn of(snapshot: &'s Snapshot, route: &'s RouteTarget) -> Self {
        Plugins {
            global: &snapshot.global_plugins,
            route: &route.plugins,
        }
    }

    /// The global rules alone, for a request no route matched (as APISIX runs them).
    pub fn global(snapshot: &'s Snapshot) -> Self {
        static NO_ROUTE: Chain = Chain::EMPTY;
        Plugins {
            global: &snapshot.global_plugins,
            route: &NO_ROUTE,
        }
    }

    /// Runs `rewrite`, then `access` and `before_proxy` with the plugins of the consumer an
    /// authentication plugin identified. `Some(reply)` when a plugin answered the request.
    pub async fn request(&self, ctx: &mut RequestCtx<'_>) -> Option<Reply> {
        if self.global.is_empty() && self.route.is_empty() {
            return None;
        }
        for phase in RequestPhase::ALL {
            if let Some(reply) = self.global.run(phase, ctx, None).await {
                return Some(reply);
            }
            // Until the consumer is known (after the route's `rewrite`), its plugins cannot
            // apply; once it is, they take the place of the route's of the same name.
            let consumer = (phase != RequestPhase::Rewrite)
                .then(|| ctx.consumer().cloned())
                .flatten();
            let consumer_plugins = consumer.as_deref().map(Consumer::plugins);
            if let Some(reply) = self.route.run(phase, ctx, consumer_plugins).await {
                return Some(reply);
            }
            // The consumer's own `rewrite`s run right after it is identified, as APISIX's
            // do: a consumer's proxy-rewrite has the last word on the request.
            if phase == RequestPhase::Rewrite {
                if let Some(consumer) = ctx.consumer().cloned() {
                    if let Some(reply) = consumer.plugins().run(phase, ctx, None).await {
                        return Some(reply);
                    }
                }
            }
        }
        None
    }

    /// What the client's response becomes: the edits the request phases decided, then those
    /// of the `header_filter`s, which see `status` and the response's own `headers`; and the
    /// filters the body goes through. Without a response filter to run, the request phases'
    /// edits as they are: no copy.
    pub fn response<'c>(
        &self,
        ctx: &'c RequestCtx<'_>,
        status: u16,
        headers: &dyn ResponseHeaders,
    ) -> ResponseChanges<'c> {
        let filters_headers = self.uses(Phase::HeaderFilter, ctx);
        let filters_body = self.uses(Phase::BodyFilter, ctx);
        if !filters_headers && !filters_body {
            return ResponseChanges {
                edits: Cow::Borrowed(&ctx.response),
                body: BodyFilters::default(),
            };
        }
        let mut edits = ctx.response.clone();
        let mut body = BodyFilters::default();
        let consumer = ctx.consumer().cloned();
        let consumer_plugins = consumer.as_deref().map(Consumer::plugins);
        let mut filter = ResponseCtx {
            request: ctx,
            status: edits.status.unwrap_or(status),
            own_status: status,
            headers,
            edits: &mut edits,
        };
        if filters_headers {
            self.global.header_filter(&mut filter, None);
            self.route.header_filter(&mut filter, consumer_plugins);
        }
        if filters_body {
            self.global.body_filters(&filter, None, &mut body);
            self.route
                .body_filters(&filter, consumer_plugins, &mut body);
        }
        ResponseChanges {
            edits: Cow::Owned(edits),
            body,
        }
    }

    /// A reply (a plugin's, or the gateway's own error) as the client gets it: after the
    /// request phases' response edits, the `header_filter`s and the body filters.
    pub fn reply(&self, ctx: &RequestCtx<'_>, reply: Reply) -> Reply {
        let ResponseChanges { edits, mut body } =
            self.response(ctx, reply.status, &ReplyHeaders(&reply));
        let mut reply = edited_reply(reply, &edits);
        reply.body = body.run_whole(reply.body);
        reply
    }

    /// The inspectors of the request's body, when a plugin looks at it (empty for most
    /// requests: then nothing of the body is held).
    pub fn request_body(&self, ctx: &RequestCtx<'_>) -> RequestBodyInspectors {
        let mut inspectors = RequestBodyInspectors::default();
        if self.uses(Phase::RequestBody, ctx) {
            let consumer = ctx.consumer().cloned();
            let consumer_plugins = consumer.as_deref().map(Consumer::plugins);
            self.global
                .request_body_inspectors(ctx, None, &mut inspectors);
            self.route
                .request_body_inspectors(ctx, consumer_plugins, &mut inspectors);
        }
        inspectors
    }

    /// The taps on the request's body, when a plugin takes a copy of it (empty for most
    /// requests: then the body is relayed untouched).
    pub fn request_taps(&self, ctx: &RequestCtx<'_>) -> RequestTaps {
        let mut taps = RequestTaps::default();
        if self.uses(Phase::RequestTap, ctx) {
            let consumer = ctx.consumer().cloned();
            let consumer_plugins = consumer.as_deref().map(Consumer::plugins);
            self.global.request_taps(ctx, None, &mut taps);
            self.route.request_taps(ctx, consumer_plugins, &mut taps);
        }
        taps
    }

    /// The transcoder of the plugin that makes this request's upstream exchange itself, if
    /// any (see [`pylon_plugin::Transcoder`]); a bit test for every other route.
    pub fn transcoder(&self, ctx: &RequestCtx<'_>) -> Option<Box<dyn Transcoder>> {
        if !self.uses(Phase::Transcode, ctx) {
            return None;
        }
        let consumer = ctx.consumer().cloned();
        let consumer_plugins = consumer.as_deref().map(Consumer::plugins);
        self.global
            .transcoder(ctx, None)
            .or_else(|| self.route.transcoder(ctx, consumer_plugins))
    }

    /// What the request's WebSocket clients are bridged to, when a plugin has the gateway
    /// answer the upgrade itself; a bit test for every other route.
    pub fn frames_bridge(&self, ctx: &RequestCtx<'_>) -> Option<FramesBridge> {
        if !self.uses(Phase::Bridge, ctx) {
            return None;
        }
        let consumer = ctx.consumer().cloned();
        let consumer_plugins = consumer.as_deref().map(Consumer::plugins);
        (self.global.frames_bridge(ctx, None))
            .or_else(|| self.route.frames_bridge(ctx, consumer_plugins))
            .cloned()
    }

    /// The push gateway whose API the request is, when a plugin has the gateway serve it;
    /// a bit test for every other route.
    pub fn device_push(&self, ctx: &RequestCtx<'_>) -> Option<DevicePush> {
        if !self.uses(Phase::Bridge, ctx) {
            return None;
        }
        let consumer = ctx.consumer().cloned();
        let consumer_plugins = consumer.as_deref().map(Consumer::plugins);
        (self.global.device_push(ctx, None))
            .or_else(|| self.route.device_push(ctx, consumer_plugins))
            .cloned()
    }

    /// Where the request's body is pushed, when a plugin has the gateway push it to a frames
    /// client and answer itself; a bit test for every other route.
    pub fn frames_push(&self, ctx: &RequestCtx<'_>) -> Option<FramesPush> {
        if !self.uses(Phase::Bridge, ctx) {
            return None;
        }
        let consumer = ctx.consumer().cloned();
        let consumer_plugins = consumer.as_deref().map(Consumer::plugins);
        (self.global.frames_push(ctx, None))
            .or_else(|| self.route.frames_push(ctx, consumer_plugins))
            .cloned()
    }

    /// Whether the response goes through plugins at all: without, a codec passes the
    /// upstream's head and body on as they are.
    pub fn touches_response(&self, ctx: &RequestCtx<'_>) -> bool {
        !ctx.response.is_empty()
            || self.uses(Phase::HeaderFilter, ctx)
            || self.uses(Phase::BodyFilter, ctx)
    }

    /// Whether a plugin of the request's chains (its consumer's included) hooks `phase`.
    fn uses(&self, phase: Phase, ctx: &RequestCtx<'_>) -> bool {
        let hooks = |chain: &Chain| chain.phases().has(phase);
        hooks(self.global)
            || hooks(self.route)
            || ctx.consumer().is_some_and(|c| hooks(c.plugins()))
    }

    /// Runs the `log` phase; says how the request is to be counted in the metrics by route,
    /// if a plugin (`prometheus`) asked for it.
    pub fn log(
        &self,
        ctx: &RequestCtx<'_>,
        outcome: &Outcome,
        latency: Duration,
    ) -> Option<MetricNames> {
        if !self.uses(Phase::Log, ctx) {
            return None;
        }
        let consumer = ctx.consumer().cloned();
        let consumer_plugins = consumer.as_deref().map(Consumer::plugins);
        let client_left = matches!(outcome.end, End::Failed(Side::Client, _));
        let log = LogCtx {
            request: ctx,
            status: outcome.status,
            upstream_status: outcome
                .upstream
                .filter(|_| !client_left)
                .map(|_| outcome.status),
            upstream_addr: outcome.upstream,
            bytes_sent: outcome.bytes_sent,
            latency,
            metrics: Cell::default(),
        };
        self.global.log(&log, None);
        self.route.log(&log, consumer_plugins);
        log.metrics.get()
    }
}

/// What the plugins make of one response.
pub(crate) struct ResponseChanges<'c> {
    /// To the head: status and headers, and a body that replaces the response's own.
    pub edits: Cow<'c, ResponseEdits>,
    /// What the body goes through on its way to the client; empty for most responses.
    pub body: BodyFilters,
}

/// The gateway's own response for `error`, as a reply that plugins' response edits can
/// apply to (a CORS header on a 502, say).
pub(crate) fn error_reply(error: GatewayError) -> Reply {
    let mut body = Vec::with_capacity(error.body_len());
    error.write_body(&mut body);
    Reply {
        status: error.status(),
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: Bytes::from(body),
    }
}

/// A reply with the response edits applied: status, headers, body.
pub(super) fn edited_reply(mut reply: Reply, edits: &ResponseEdits) -> Reply {
    if let Some(status) = edits.status {
        reply.status = status;
    }
    if !edits.headers.is_empty() {
        reply
            .headers
            .retain(|(name, _)| !edits.headers.replaces(name));
        reply.headers.extend(
            edits
                .headers
                .added()
                .map(|(n, v)| (n.to_owned(), v.to_owned())),
        );
    }
    if let Some(body) = &edits.body {
        reply.body = body.clone();
    }
    reply
}

impl ResponseHeaders for ResponseHead {
    fn header(&self, name: &str) -> Option<&[u8]> {
        ResponseHead::header(self, name)
    }
}

/// A reply's headers as plugins read them.
pub(crate) struct ReplyHeaders<'a>(pub &'a Reply);

impl ResponseHeaders for ReplyHeaders<'_> {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.0
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_bytes())
    }
}

/// What the plugins of a request have to do with its exchange: their edits to the request,
/// and their say on the response head.
#[derive(Clone, Copy)]
pub(crate) struct PluginWork<'a> {
    pub plugins: Plugins<'a>,
    pub ctx: &'a RequestCtx<'a>,
}
