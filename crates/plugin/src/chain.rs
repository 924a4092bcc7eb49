//! Chains: the plugins that apply to a request, in the order they run.

use std::sync::Arc;

use crate::body::{BodyFilters, RequestBodyInspectors, RequestTaps};
use crate::bridge::{DevicePush, FramesBridge, FramesPush};
use crate::context::{LogCtx, RequestCtx, ResponseCtx};
use crate::meta::Meta;
use crate::phase::{Phase, Phases, RequestPhase};
use crate::reply::Reply;
use crate::transcode::Transcoder;
use crate::{Plugin, Step};

/// One plugin of a chain, with how it was configured to run.
#[derive(Clone)]
pub struct Entry {
    plugin: Arc<dyn Plugin>,
    priority: i64,
    phases: Phases,
    meta: Arc<Meta>,
}

impl Entry {
    /// `priority` is the plugin's own; `_meta.priority` overrides it.
    pub fn new(plugin: Arc<dyn Plugin>, priority: i64, meta: Meta) -> Entry {
        Entry {
            priority: meta.priority.unwrap_or(priority),
            phases: plugin.phases(),
            plugin,
            meta: Arc::new(meta),
        }
    }

    pub fn name(&self) -> &'static str {
        self.plugin.name()
    }

    pub fn priority(&self) -> i64 {
        self.priority
    }

    /// Whether the plugin runs for this request in `phase`: it implements the phase, its
    /// `_meta.filter` matches, and the request falls within its `_meta.gray_ratio`.
    fn applies(&self, phase: Phase, ctx: &RequestCtx<'_>) -> bool {
        self.phases.has(phase)
            && self
                .meta
                .filter
                .as_ref()
                .is_none_or(|filter| pylon_router::eval_vars(filter, ctx))
            && self
                .meta
                .gray_ratio
                .is_none_or(|ratio| ctx.gray_draw(self.name()) < ratio)
    }
}

/// The plugins of one route (or of the global rules, or of a consumer), sorted by
/// descending priority, and the union of the phases they use.
#[derive(Clone, Default)]
pub struct Chain {
    entries: Vec<Entry>,
    phases: Phases,
}

impl Chain {
    /// A chain of no plugins.
    pub const EMPTY: Chain = Chain {
        entries: Vec::new(),
        phases: Phases::NONE,
    };

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every phase some plugin of the chain uses.
    pub fn phases(&self) -> Phases {
        self.phases
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Runs a request phase (`rewrite`, `access` or `before_proxy`) over this chain, with
    /// the plugins of the consumer the request was identified as taking the place of the
    /// chain's own of the same name (from `access` on). `Some(reply)` when a plugin
    /// answered the request itself.
    pub async fn run(
        &self,
        request_phase: RequestPhase,
        ctx: &mut RequestCtx<'_>,
        consumer: Option<&Chain>,
    ) -> Option<Reply> {
        let phase = Phase::from(request_phase);
        let consumer = consumer.filter(|c| c.phases.has(phase));
        if !self.phases.has(phase) && consumer.is_none() {
            return None;
        }
        let consumer_entries = consumer.map_or(&[][..], |c| &c.entries[..]);
        for entry in merged(&self.entries, consumer_entries) {
            if !entry.applies(phase, ctx) {
                continue;
            }
            let step = match request_phase {
                RequestPhase::Rewrite => entry.plugin.rewrite(ctx),
                RequestPhase::Access => entry.plugin.access(ctx),
                RequestPhase::BeforeProxy => entry.plugin.before_proxy(ctx),
            };
            let reply = match step {
                Step::Continue => None,
                Step::Reply(reply) => Some(reply),
                Step::Call(call) => call.finish(entry.name()).await,
            };
            if let Some(reply) = reply {
                return Some(entry.meta.shape(reply));
            }
        }
        None
    }

    /// Runs `header_filter` over the chain (with the consumer's plugins, as [`Chain::run`]).
    pub fn header_filter(&self, ctx: &mut ResponseCtx<'_, '_>, consumer: Option<&Chain>) {
        let consumer_entries = consumer.map_or(&[][..], |c| &c.entries[..]);
        for entry in merged(&self.entries, consumer_entries) {
            if entry.applies(Phase::HeaderFilter, ctx.request) {
                entry.plugin.header_filter(ctx);
                ctx.status = ctx.edits.status.unwrap_or(ctx.status);
            }
        }
    }

    /// Adds the body filters the chain's plugins (with the consumer's, as [`Chain::run`])
    /// put in the way of this response's body.
    pub fn body_filters(
        &self,
        ctx: &ResponseCtx<'_, '_>,
        consumer: Option<&Chain>,
        filters: &mut BodyFilters,
    ) {
        let consumer_entries = consumer.map_or(&[][..], |c| &c.entries[..]);
        for entry in merged(&self.entries, consumer_entries) {
            if entry.applies(Phase::BodyFilter, ctx.request) {
                if let Some(filter) = entry.plugin.body_filter(ctx) {
                    filters.push(filter);
                }
            }
        }
    }

    /// Adds the inspectors the chain's plugins (with the consumer's, as [`Chain::run`]) put
    /// in the way of this request's body.
    pub fn request_body_inspectors(
        &self,
        ctx: &RequestCtx<'_>,
        consumer: Option<&Chain>,
        inspectors: &mut RequestBodyInspectors,
    ) {
        let consumer_entries = consumer.map_or(&[][..], |c| &c.entries[..]);
        for entry in merged(&self.entries, consumer_entries) {
            if entry.applies(Phase::RequestBody, ctx) {
                if let Some(inspector) = entry.plugin.request_body(ctx) {
                    inspectors.push(inspector);
                }
            }
        }
    }

    /// Adds the taps the chain's plugins (with the consumer's, as [`Chain::run`]) put on this
    /// request's body.
    pub fn request_taps(
        &self,
        ctx: &RequestCtx<'_>,
        consumer: Option<&Chain>,
        taps: &mut RequestTaps,
    ) {
        let consumer_entries = consumer.map_or(&[][..], |c| &c.entries[..]);
        for entry in merged(&self.entries, consumer_entries) {
            if entry.applies(Phase::RequestTap, ctx) {
                if let Some(tap) = entry.plugin.tap_request(ctx) {
                    taps.push(tap);
                }
            }
        }
    }

    /// The transcoder of the first plugin of the chain (with the consumer's, as
    /// [`Chain::run`]) that makes this request's upstream exchange itself, if any.
    pub fn transcoder(
        &self,
        ctx: &RequestCtx<'_>,
        consumer: Option<&Chain>,
    ) -> Option<Box<dyn Transcoder>> {
        let consumer_entries = consumer.map_or(&[][..], |c| &c.entries[..]);
        merged(&self.entries, consumer_entries)
            .filter(|entry| entry.applies(Phase::Transcode, ctx))
            .find_map(|entry| entry.plugin.transcoder(ctx))
    }

    /// The bridge of the first plugin of the chain (with the consumer's, as [`Chain::run`])
    /// that answers this request's WebSocket upgrade itself, if any.
    pub fn frames_bridge<'a>(
        &'a self,
        ctx: &RequestCtx<'_>,
        consumer: Option<&'a Chain>,
    ) -> Option<&'a FramesBridge> {
        let consumer_entries = consumer.map_or(&[][..], |c| &c.entries[..]);
        merged(&self.entries, consumer_entries)
            .filter(|entry| entry.applies(Phase::Bridge, ctx))
            .find_map(|entry| entry.plugin.frames_bridge())
    }

    /// The push of the first plugin of the chain (with the consumer's, as [`Chain::run`])
    /// that has the gateway push this request's body to a frames client, if any.
    pub fn frames_push<'a>(
        &'a self,
        ctx: &RequestCtx<'_>,
        consumer: Option<&'a Chain>,
    ) -> Option<&'a FramesPush> {
        let consumer_entries = consumer.map_or(&[][..], |c| &c.entries[..]);
        merged(&self.entries, consumer_entries)
            .filter(|entry| entry.applies(Phase::Bridge, ctx))
            .find_map(|entry| entry.plugin.frames_push())
    }

    /// The push API of the first plugin of the chain (with the consumer's, as
    /// [`Chain::run`]) that has the gateway serve this request as a push to devices, if any.
    pub fn device_push<'a>(
        &'a self,
        ctx: &RequestCtx<'_>,
        consumer: Option<&'a Chain>,
    ) -> Option<&'a DevicePush> {
        let consumer_entries = consumer.map_or(&[][..], |c| &c.entries[..]);
        merged(&self.entries, consumer_entries)
            .filter(|entry| entry.applies(Phase::Bridge, ctx))
            .find_map(|entry| entry.plugin.device_push())
    }

    /// Runs `log` over the chain (with the consumer's plugins, as [`Chain::run`]).
    pub fn log(&self, ctx: &LogCtx<'_, '_>, consumer: Option<&Chain>) {
        let consumer_entries = consumer.map_or(&[][..], |c| &c.entries[..]);
        for entry in merged(&self.entries, consumer_entries) {
            if entry.applies(Phase::Log, ctx.request) {
                entry.plugin.log(ctx);
            }
        }
    }
}

/// The entries of two chains sorted by descending priority, in that order, leaving out the
/// first chain's entries that the second has a plugin of the same name for.
fn merged<'a>(base: &'a [Entry], over: &'a [Entry]) -> impl Iterator<Item = &'a Entry> {
    let mut base = base
        .iter()
        .filter(move |e| !over.iter().any(|o| o.name() == e.name()))
        .peekable();
    let mut over = over.iter().peekable();
    std::iter::from_fn(move || match (base.peek(), over.peek()) {
        (Some(b), Some(o)) if o.priority > b.priority => over.next(),
        (Some(_), _) => base.next(),
        (None, _) => over.next(),
    })
}

/// Builds a chain from the places plugins are configured, lowest precedence first: a plugin
/// added again replaces the earlier one of the same name.
#[derive(Default)]
pub struct ChainBuilder {
    entries: Vec<Entry>,
}

impl ChainBuilder {
    pub fn new() -> ChainBuilder {
        ChainBuilder::default()
    }

    /// Adds (or replaces) a plugin. A plugin whose `_meta.disable` is set replaces one of the
    /// same name from a lower place and then does not run.
    pub fn add(&mut self, entry: Entry) {
        self.entries.retain(|e| e.name() != entry.name());
        self.entries.push(entry);
    }

    pub fn build(self) -> Chain {
        let mut entries: Vec<Entry> = self
            .entries
            .into_iter()
            .filter(|e| !e.meta.disable)
            .collect();
        // Ties keep a stable, documented order: by name.
        entries.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.name().cmp(b.name())));
        let phases = entries.iter().fold(Phases::NONE, |p, e| p | e.phases);
        Chain { entries, phases }
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::net::IpAddr;

    use pylon_router::RequestView;
    use serde_json::json;

    use super::*;

    struct Get;
    impl RequestView for Get {
        fn path(&self) -> &str {
            "/"
        }
        fn host(&self) -> Option<&str> {
            None
        }
        fn method(&self) -> &str {
            "GET"
        }
        fn remote_addr(&self) -> IpAddr {
            [127, 0, 0, 1].into()
        }
        fn var(&self, name: &str) -> Option<Cow<'_, str>> {
            (name == "arg_v").then(|| "1".into())
        }
    }

    /// Appends its name to `X-Trace` in rewrite and access; answers 403 when `deny`.
    struct Tracer {
        name: &'static str,
        deny: bool,
    }

    impl Plugin for Tracer {
        fn name(&self) -> &'static str {
            self.name
        }
        fn phases(&self) -> Phases {
            Phases::REWRITE | Phases::ACCESS
        }
        fn rewrite<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Step<'a> {
            self.trace(ctx, "r")
        }
        fn access<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Step<'a> {
            self.trace(ctx, "a")
        }
    }

    impl Tracer {
        fn trace<'a>(&self, ctx: &mut RequestCtx<'_>, phase: &str) -> Step<'a> {
            let trace = ctx.header("x-trace").unwrap_or_default().into_owned();
            ctx.edits
                .headers
                .set("x-trace", format!("{trace}{phase}:{} ", self.name));
            if self.deny {
                Step::Reply(Reply::message(403, "denied"))
            } else {
                Step::Continue
            }
        }
    }

    fn entry(name: &'static str, priority: i64, meta: serde_json::Value) -> Entry {
        Entry::new(
            Arc::new(Tracer { name, deny: false }),
            priority,
            Meta::parse(&json!({ "_meta": meta })).unwrap(),
        )
    }

    fn trace(chain: &Chain, phase: RequestPhase, consumer: Option<&Chain>) -> String {
        let request = Get;
        let mut ctx = RequestCtx::new(&request, "r1", None);
        let reply = futures_lite(chain.run(phase, &mut ctx, consumer));
        assert!(reply.is_none());
        ctx.header("x-trace").unwrap_or_default().into_owned()
    }

    /// Runs a future that never waits (none of these plugins calls out).
    fn futures_lite<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn plugins_run_by_priority_and_later_places_replace_earlier_ones() {
        let mut builder = ChainBuilder::new();
        builder.add(entry("low", 1, json!({})));
        builder.add(entry("high", 10, json!({})));
        builder.add(entry("low", 100, json!({}))); // the route's, over the service's
        let chain = builder.build();
        assert_eq!(trace(&chain, RequestPhase::Rewrite, None), "r:low r:high ");
        assert!(chain.phases().has(Phase::Access) && !chain.phases().has(Phase::Log));
    }

    #[test]
    fn disabled_and_filtered_out_plugins_do_not_run() {
        let mut builder = ChainBuilder::new();
        builder.add(entry("off", 5, json!({"disable": true})));
        builder.add(entry("match", 4, json!({"filter": [["arg_v", "==", "1"]]})));
        builder.add(entry("miss", 3, json!({"filter": [["arg_v", "==", "2"]]})));
        builder.add(entry("never", 2, json!({"gray_ratio": 0})));
        builder.add(entry("always", 1, json!({"gray_ratio": 100})));
        assert_eq!(
            trace(&builder.build(), RequestPhase::Access, None),
            "a:match a:always "
        );
    }

    #[test]
    fn a_consumers_plugins_take_the_place_of_the_routes() {
        let mut route = ChainBuilder::new();
        route.add(entry("a", 30, json!({})));
        route.add(entry("b", 20, json!({})));
        route.add(entry("c", 10, json!({})));
        let mut consumer = ChainBuilder::new();
        consumer.add(entry("b", 5, json!({})));
        consumer.add(entry("d", 25, json!({})));
        let consumer = consumer.build();
        assert_eq!(
            trace(&route.build(), RequestPhase::Access, Some(&consumer)),
            "a:a a:d a:c a:b "
        );
    }

    #[test]
    fn a_reply_ends_the_phase_shaped_by_error_response() {
        let mut builder = ChainBuilder::new();
        builder.add(Entry::new(
            Arc::new(Tracer {
                name: "deny",
                deny: true,
            }),
            2,
            Meta::parse(&json!({"_meta": {"error_response": "go away"}})).unwrap(),
        ));
        builder.add(entry("after", 1, json!({})));
        let chain = builder.build();
        let request = Get;
        let mut ctx = RequestCtx::new(&request, "r1", None);
        let reply = futures_lite(chain.run(RequestPhase::Access, &mut ctx, None)).unwrap();
        assert_eq!((reply.status, &reply.body[..]), (403, &b"go away"[..]));
        assert_eq!(ctx.header("x-trace").as_deref(), Some("a:deny "));
    }
}
