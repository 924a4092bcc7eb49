//! Pylon's plugin framework.
//!
//! A plugin is an object built once from its JSON configuration when a configuration version
//! is compiled, and then shared by every worker for as long as that version serves. It hooks
//! into a request's life at APISIX's phases (see [`Plugin`]); a [`Chain`] holds the plugins
//! of one route (global rules, service, plugin config and route merged by APISIX's precedence),
//! sorted by priority, and knows which phases any of them uses, so that a phase no plugin uses
//! costs one bit test per request.
//!
//! Plugins never see a protocol. They read the request through [`RequestCtx`] (variables,
//! headers, the consumer) and change it only through a small overlay of edits
//! ([`RequestEdits`], [`ResponseEdits`]) that the HTTP/1 and HTTP/2 codecs apply as they write
//! the head: a plugin that rewrites a header costs one entry in a short list, not a copy of the
//! request, and a chain without response filters leaves the response bytes untouched.
#![forbid(unsafe_code)]

mod body;
mod bridge;
mod call;
mod chain;
mod consumer;
mod context;
mod meta;
mod phase;
mod reply;
mod template;
mod transcode;

use std::any::Any;

pub use body::{
    BodyFilter, BodyFilters, RequestBodyInspector, RequestBodyInspectors, RequestTap, RequestTaps,
};
pub use bridge::{BridgeMode, DevicePush, FramesBridge, FramesPush};
pub use call::{call_failures, Call, CallError, CallFailures, FailurePolicy};
pub use chain::{Chain, ChainBuilder, Entry};
pub use consumer::Consumer;
pub use context::{
    HeaderEdit, HeaderEdits, LogCtx, MetricNames, RequestCtx, RequestEdits, ResponseCtx,
    ResponseEdits, ResponseHeaders, Text,
};
pub use meta::Meta;
pub use phase::{Phase, Phases, RequestPhase};
pub use reply::Reply;
pub use template::Template;
pub use transcode::{Answer, AnswerHead, GrpcCall, Transcoder};

/// What a request phase decided.
pub enum Step<'a> {
    /// Go on with the next plugin, then the next phase.
    Continue,
    /// Answer the client with this and skip the rest of the request phases and the upstream.
    /// The response phases (`header_filter`, `body_filter`, `log`) still run for it, so that
    /// a CORS header or a request id reaches a `401` too.
    Reply(Reply),
    /// The plugin waits for something outside the gateway (an auth service, say). The chain
    /// bounds the wait by the call's timeout and applies its failure policy when it ends in an
    /// error or times out.
    Call(Call<'a>),
}

/// A plugin, as APISIX's phases see it. Every hook has a default that does nothing, and
/// [`Plugin::phases`] says which hooks a plugin implements: the chain calls only those.
///
/// The order of a request's life, for a chain of global rules `G` and route plugins `R`:
///
/// 1. `rewrite`: `G` then `R`. Authentication plugins identify the consumer here.
/// 2. The consumer's plugins (and its group's) are merged in: one configured on the consumer
///    replaces the route's plugin of the same name for the phases below.
/// 3. `access`: `G` then `R`. Access control, limits.
/// 4. `before_proxy`: `G` then `R`, once per request, right before the first upstream attempt.
/// 5. `request_body`, then `tap_request`: once, when the request goes upstream. An inspector
///    holds the start of the body and may still refuse the request; a tap gets a copy of the
///    body as it streams, and holds nothing.
/// 6. `header_filter`: `G` then `R`, on the response head (the upstream's, the gateway's own
///    error, or a plugin's reply).
/// 7. `body_filter`: `G` then `R`, once the response head is final: each plugin may put a
///    [`BodyFilter`] in the way of this response's body, which then sees every piece of it.
/// 8. `log`: `G` then `R`, once the response is over (or the client left).
///
/// A plugin that speaks to the upstream in another protocol than the client's (gRPC for a
/// JSON client) makes the exchange itself: after `before_proxy`, the first plugin whose
/// [`Plugin::transcoder`] says so takes the request's whole body and turns it into the
/// upstream's request, and the upstream's answer into the client's (steps 5 to 7 are then
/// its own).
///
/// Within a phase, plugins run by descending priority.
pub trait Plugin: Send + Sync + 'static {
    /// The plugin's name, as configured (`key-auth`).
    fn name(&self) -> &'static str;

    /// The hooks this plugin implements. The chain skips the others.
    fn phases(&self) -> Phases;

    /// Runs first, before authentication has identified a consumer. Rewriting the request
    /// and identifying the consumer belong here. The default continues.
    fn rewrite<'a>(&'a self, _ctx: &'a mut RequestCtx<'_>) -> Step<'a> {
        Step::Continue
    }

    /// Runs once the consumer (if any) is known: access control and limits. The default
    /// continues.
    fn access<'a>(&'a self, _ctx: &'a mut RequestCtx<'_>) -> Step<'a> {
        Step::Continue
    }

    /// Runs once, right before the request goes upstream (not again on a retry). The last
    /// moment to edit what the upstream gets. The default continues.
    fn before_proxy<'a>(&'a self, _ctx: &'a mut RequestCtx<'_>) -> Step<'a> {
        Step::Continue
    }

    /// Decides, once the request phases have passed, whether this plugin looks at the start of
    /// the request's body before it goes upstream: `Some(inspector)` to look. The default does
    /// not.
    fn request_body(&self, _ctx: &RequestCtx<'_>) -> Option<Box<dyn RequestBodyInspector>> {
        None
    }

    /// Decides, once the request goes upstream (its body inspected, if any plugin does), whether
    /// this plugin gets a copy of its body as it streams: `Some(tap)` to get one. The request's
    /// head is in `ctx`, with the plugins' edits. The default takes no copy.
    fn tap_request(&self, _ctx: &RequestCtx<'_>) -> Option<Box<dyn RequestTap>> {
        None
    }

    /// Sees the response head before it is written to the client, and may change its status
    /// and headers through `ctx.edits`. The default changes nothing.
    fn header_filter(&self, _ctx: &mut ResponseCtx<'_, '_>) {}

    /// Decides, on the final response head, whether this plugin edits this response's body:
    /// `Some(filter)` puts the filter in the body's way. A filtered body loses its declared
    /// length (it goes out chunked, or as DATA frames without `content-length`), so a
    /// plugin says `None` for the responses it leaves alone. The default leaves every body
    /// alone.
    fn body_filter(&self, _ctx: &ResponseCtx<'_, '_>) -> Option<Box<dyn BodyFilter>> {
        None
    }

    /// Runs when the request is over, with what the access log records. The default does
    /// nothing.
    fn log(&self, _ctx: &LogCtx<'_, '_>) {}

    /// Decides, once the request phases have passed, whether this plugin makes the exchange
    /// with the upstream itself, as a gRPC call: `Some(transcoder)` to make it. The default
    /// leaves the request to be proxied as it is.
    fn transcoder(&self, _ctx: &RequestCtx<'_>) -> Option<Box<dyn Transcoder>> {
        None
    }

    /// Decides, once the request phases have passed, whether the gateway answers this
    /// request's WebSocket upgrade itself and serves its messages as frames:
    /// `Some(bridge)` to bridge. The default leaves the request to be proxied.
    fn frames_bridge(&self) -> Option<&FramesBridge> {
        None
    }

    /// Decides, once the request phases have passed, whether the gateway answers this
    /// request itself by pushing its body as a frame to a client of a frames route:
    /// `Some(push)` to push. The default leaves the request to be proxied.
    fn frames_push(&self) -> Option<&FramesPush> {
        None
    }

    /// Decides, once the request phases have passed, whether the gateway answers this
    /// request itself as the push API of a push gateway's devices: `Some(push)` to do so.
    /// The default leaves the request to be proxied.
    fn device_push(&self) -> Option<&DevicePush> {
        None
    }
}

/// Per-request state a plugin keeps between its phases (a generated id, a decision), held
/// in the request context by the plugin's name.
pub type PluginState = Box<dyn Any>;
