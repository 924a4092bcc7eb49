//! What a plugin sees of a request and its response, and the edits it makes to them.

use std::borrow::Cow;
use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pylon_router::RequestView;

use crate::consumer::Consumer;
use crate::PluginState;

/// Header edits in the order plugins made them, kept normalized: a `Set` or `Remove` of a
/// name drops the earlier edits of that name, so that applying them is one pass over the
/// original headers (drop those a `Set` or `Remove` names) and one over the edits (append
/// every `Set` and `Add`).
#[derive(Debug, Default, PartialEq)]
pub struct HeaderEdits(Vec<HeaderEdit>);

/// A copy is made for the `header_filter`s to add to: room for a few more edits saves them
/// growing it (a reallocation and a copy) on every response.
impl Clone for HeaderEdits {
    fn clone(&self) -> HeaderEdits {
        let mut edits = Vec::with_capacity(self.0.len() + 4);
        edits.extend_from_slice(&self.0);
        HeaderEdits(edits)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum HeaderEdit {
    /// Replaces every header of this name.
    Set(Text, Text),
    /// Adds one more header of this name, keeping the others.
    Add(Text, Text),
    /// Removes every header of this name.
    Remove(Text),
}

/// A header name or value in an edit. Most are fixed by a plugin's code or configuration, so
/// an edit holds them without copying when it can: a static string, or one shared with the
/// configuration. Only what a request makes (a rendered template, a generated id) is owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Text {
    Static(&'static str),
    Shared(Arc<str>),
    Owned(String),
}

impl std::ops::Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            Text::Static(s) => s,
            Text::Shared(s) => s,
            Text::Owned(s) => s,
        }
    }
}

impl From<&'static str> for Text {
    fn from(s: &'static str) -> Text {
        Text::Static(s)
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        Text::Owned(s)
    }
}

impl From<Arc<str>> for Text {
    fn from(s: Arc<str>) -> Text {
        Text::Shared(s)
    }
}

impl From<&Arc<str>> for Text {
    fn from(s: &Arc<str>) -> Text {
        Text::Shared(s.clone())
    }
}

impl HeaderEdit {
    fn name(&self) -> &str {
        match self {
            HeaderEdit::Set(n, _) | HeaderEdit::Add(n, _) | HeaderEdit::Remove(n) => n,
        }
    }
}

impl HeaderEdits {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn set(&mut self, name: impl Into<Text>, value: impl Into<Text>) {
        let name = name.into();
        self.forget(&name);
        self.0.push(HeaderEdit::Set(name, value.into()));
    }

    pub fn add(&mut self, name: impl Into<Text>, value: impl Into<Text>) {
        self.0.push(HeaderEdit::Add(name.into(), value.into()));
    }

    pub fn remove(&mut self, name: impl Into<Text>) {
        let name = name.into();
        self.forget(&name);
        self.0.push(HeaderEdit::Remove(name));
    }

    fn forget(&mut self, name: &str) {
        let named = |e: &HeaderEdit| e.name().eq_ignore_ascii_case(name);
        // Names are seldom edited twice: look before paying for `retain`'s pass.
        if self.0.iter().any(named) {
            self.0.retain(|e| !named(e));
        }
    }

    /// The names whose original headers are to be left out (those set or removed).
    pub fn replaced(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|e| match e {
            HeaderEdit::Set(n, _) | HeaderEdit::Remove(n) => Some(&**n),
            HeaderEdit::Add(..) => None,
        })
    }

    /// Whether the original headers called `name` are to be left out.
    pub fn replaces(&self, name: &str) -> bool {
        self.0.iter().any(|e| {
            matches!(e, HeaderEdit::Set(..) | HeaderEdit::Remove(_))
                && e.name().eq_ignore_ascii_case(name)
        })
    }

    /// The headers the edits add, in order.
    pub fn added(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().filter_map(|e| match e {
            HeaderEdit::Set(n, v) | HeaderEdit::Add(n, v) => Some((&**n, &**v)),
            HeaderEdit::Remove(_) => None,
        })
    }

    /// What the edits say of header `name`: `Some(Some(value))` when they set or add it,
    /// `Some(None)` when they remove it, `None` when they leave the original alone.
    pub fn get(&self, name: &str) -> Option<Option<&str>> {
        self.0
            .iter()
            .rev()
            .find(|e| e.name().eq_ignore_ascii_case(name))
            .map(|e| match e {
                HeaderEdit::Set(_, v) | HeaderEdit::Add(_, v) => Some(&**v),
                HeaderEdit::Remove(_) => None,
            })
    }
}

/// How plugins change the request the upstream gets. Each codec applies these as it writes
/// the upstream request head.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestEdits {
    pub method: Option<String>,
    /// The request target for the upstream: path and query (APISIX's `upstream_uri`).
    pub uri: Option<String>,
    /// The `Host` the upstream gets, over what `pass_host` says.
    pub host: Option<String>,
    pub headers: HeaderEdits,
}

impl RequestEdits {
    pub fn is_empty(&self) -> bool {
        self.method.is_none()
            && self.uri.is_none()
            && self.host.is_none()
            && self.headers.is_empty()
    }
}

/// How plugins change the response the client gets, decided during the request phases or in
/// `header_filter`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResponseEdits {
    pub status: Option<u16>,
    pub headers: HeaderEdits,
    /// Replaces the whole body; the upstream's is discarded.
    pub body: Option<Bytes>,
}

impl ResponseEdits {
    pub fn is_empty(&self) -> bool {
        self.status.is_none() && self.headers.is_empty() && self.body.is_none()
    }
}

/// A request as the plugins see it, from route match to log.
pub struct RequestCtx<'r> {
    request: &'r dyn RequestView,
    route_id: &'r str,
    service_id: Option<&'r str>,
    consumer: Option<Arc<Consumer>>,
    /// The client's address when `real-ip` found it in what a trusted proxy sent.
    client_ip: Option<IpAddr>,
    /// Changes to the request on its way upstream.
    pub edits: RequestEdits,
    /// Changes to the response, whoever makes it (upstream, gateway or plugin).
    pub response: ResponseEdits,
    /// Another upstream than the route's for this request (`traffic-split`), by the key the
    /// route was compiled with it under; `None`: the route's own.
    pub upstream_override: Option<Arc<str>>,
    state: Vec<(&'static str, PluginState)>,
    /// Drawn once per request when a plugin with `_meta.gray_ratio` first asks: each plugin's
    /// draw derives from it, so a plugin runs in all of a request's phases or in none.
    gray_seed: Cell<Option<u64>>,
}

impl<'r> RequestCtx<'r> {
    pub fn new(
        request: &'r dyn RequestView,
        route_id: &'r str,
        service_id: Option<&'r str>,
    ) -> Self {
        RequestCtx {
            request,
            route_id,
            service_id,
            consumer: None,
            client_ip: None,
            edits: RequestEdits::default(),
            response: ResponseEdits::default(),
            upstream_override: None,
            state: Vec::new(),
            gray_seed: Cell::new(None),
        }
    }

    /// A number from 0 to 99 for `plugin`, the same in every phase of this request and
    /// uniformly spread over requests.
    pub(crate) fn gray_draw(&self, plugin: &str) -> u8 {
        let seed = match self.gray_seed.get() {
            Some(seed) => seed,
            None => {
                let seed = fastrand::u64(..);
                self.gray_seed.set(Some(seed));
                seed
            }
        };
        // FNV-1a over the name, then a splitmix64 finaliser: independent draws per plugin.
        let name = plugin.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let mut x = seed ^ name;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((x ^ (x >> 31)) % 100) as u8
    }

    pub fn route_id(&self) -> &str {
        self.route_id
    }

    pub fn service_id(&self) -> Option<&str> {
        self.service_id
    }

    /// The consumer an authentication plugin identified, if any.
    pub fn consumer(&self) -> Option<&Arc<Consumer>> {
        self.consumer.as_ref()
    }

    pub fn set_consumer(&mut self, consumer: Arc<Consumer>) {
        self.consumer = Some(consumer);
    }

    /// The client's address: the connection's peer, or the address `real-ip` set.
    pub fn client_ip(&self) -> IpAddr {
        self.client_ip.unwrap_or_else(|| self.request.remote_addr())
    }

    /// Makes `ip` the client's address for the rest of the request: later plugins, the
    /// `remote_addr` variable and the access log see it. The connection's peer stays
    /// `realip_remote_addr`, as in nginx's realip module.
    pub fn set_client_ip(&mut self, ip: IpAddr) {
        self.client_ip = Some(ip);
    }

    /// A request header as the upstream will get it: the edits made so far over the
    /// client's header.
    pub fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        if let Some(edited) = self.edits.headers.get(name) {
            return edited.map(Cow::Borrowed);
        }
        self.request.header(name)
    }

    /// State a plugin keeps for this request, by the plugin's name.
    pub fn state<T: 'static>(&self, plugin: &'static str) -> Option<&T> {
        self.state
            .iter()
            .find(|(p, _)| *p == plugin)
            .and_then(|(_, s)| s.downcast_ref())
    }

    pub fn set_state<T: 'static>(&mut self, plugin: &'static str, value: T) {
        self.state.retain(|(p, _)| *p != plugin);
        self.state.push((plugin, Box::new(value)));
    }
}

/// Variables are the client's request as edited so far, plus what the gateway knows of it
/// (`route_id`, `consumer_name`, ...). `uri` stays the path the client sent, as APISIX's
/// does; an edited target is `upstream_uri`.
impl RequestView for RequestCtx<'_> {
    fn path(&self) -> &str {
        self.request.path()
    }

    fn for_each_header(&self, each: &mut dyn FnMut(&str, &[u8])) {
        self.request.for_each_header(each);
    }

    fn host(&self) -> Option<&str> {
        self.request.host()
    }

    fn method(&self) -> &str {
        self.request.method()
    }

    fn remote_addr(&self) -> IpAddr {
        self.client_ip()
    }

    fn var(&self, name: &str) -> Option<Cow<'_, str>> {
        match name {
            "remote_addr" if self.client_ip.is_some() => {
                return Some(Cow::Owned(self.client_ip().to_string()));
            }
            "realip_remote_addr" => return self.request.var("remote_addr"),
            // A request no route matched (seen by global rules) has none.
            "route_id" => {
                return (!self.route_id.is_empty()).then_some(Cow::Borrowed(self.route_id))
            }
            "service_id" => return self.service_id.map(Cow::Borrowed),
            "consumer_name" => return self.consumer.as_ref().map(|c| Cow::Borrowed(c.username())),
            "consumer_group_id" => {
                return self.consumer.as_ref()?.group_id().map(Cow::Borrowed);
            }
            "upstream_uri" => {
                return match &self.edits.uri {
                    Some(uri) => Some(Cow::Borrowed(uri)),
                    None => self.request.var("request_uri"),
                }
            }
            _ => {}
        }
        if let Some(header) = name.strip_prefix("http_") {
            let edited = self.edits.headers.0.iter().rev().find(|e| {
                let n = e.name();
                n.len() == header.len()
                    && n.bytes()
                        .zip(header.bytes())
                        .all(|(a, b)| a.eq_ignore_ascii_case(&b) || (a == b'-' && b == b'_'))
            });
            if let Some(edit) = edited {
                return match edit {
                    HeaderEdit::Set(_, v) | HeaderEdit::Add(_, v) => Some(Cow::Borrowed(v)),
                    HeaderEdit::Remove(_) => None,
                };
            }
        }
        self.request.var(name)
    }
}

/// The headers of a response head, whichever codec parsed it.
pub trait ResponseHeaders {
    /// The first header called `name` (any case).
    fn header(&self, name: &str) -> Option<&[u8]>;
}

/// The response head a `header_filter` sees.
pub struct ResponseCtx<'a, 'r> {
    pub request: &'a RequestCtx<'r>,
    /// The status as it will go out (after earlier edits).
    pub status: u16,
    /// The response's own status and headers, before any edits.
    pub own_status: u16,
    pub headers: &'a dyn ResponseHeaders,
    pub edits: &'a mut ResponseEdits,
}

/// What the log phase sees of a finished request.
pub struct LogCtx<'a, 'r> {
    pub request: &'a RequestCtx<'r>,
    /// The status the client got.
    pub status: u16,
    /// The status of the exchange with the upstream, when a node was tried and the client
    /// stayed for its end: the node's answer (as the client got it), or the gateway's 502 or
    /// 504 when no node answered. `None` for a request answered before the upstream (a
    /// plugin's reply, no route) or one its client left.
    pub upstream_status: Option<u16>,
    /// The last upstream node tried, whether or not it answered.
    pub upstream_addr: Option<SocketAddr>,
    pub bytes_sent: u64,
    pub latency: Duration,
    /// Set by a plugin that has the gateway count this request in its metrics by route
    /// (`prometheus`), with how it names the route and service. Left unset, the request
    /// counts only in the node's totals.
    pub metrics: Cell<Option<MetricNames>>,
}

/// How the gateway's metrics name a request's route and service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricNames {
    /// By id.
    Ids,
    /// By `name` where the resource has one, else by id.
    Names,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_or_remove_replaces_earlier_edits_of_the_name() {
        let mut edits = HeaderEdits::default();
        edits.add("X-A", "1");
        edits.set("x-a", "2");
        edits.add("X-B", "3");
        assert_eq!(
            edits.added().collect::<Vec<_>>(),
            [("x-a", "2"), ("X-B", "3")]
        );
        assert!(edits.replaces("X-A") && !edits.replaces("x-b"));
        edits.remove("X-B");
        assert_eq!(edits.get("x-b"), Some(None));
        assert_eq!(edits.get("X-A"), Some(Some("2")));
        assert_eq!(edits.get("X-C"), None);
    }

    struct Peer;
    impl RequestView for Peer {
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
            [192, 0, 2, 1].into()
        }
        fn var(&self, name: &str) -> Option<Cow<'_, str>> {
            match name {
                "remote_addr" => Some("192.0.2.1".into()),
                "http_x_api_key" => Some("k1".into()),
                _ => None,
            }
        }
    }

    #[test]
    fn headers_read_through_variables_unless_edited() {
        let mut ctx = RequestCtx::new(&Peer, "r", None);
        assert_eq!(ctx.header("X-Api-Key").as_deref(), Some("k1"));
        ctx.edits.headers.set("x-api-key", "k2");
        assert_eq!(ctx.header("X-Api-Key").as_deref(), Some("k2"));
        ctx.edits.headers.remove("X-API-KEY");
        assert_eq!(ctx.header("x-api-key"), None);
    }

    #[test]
    fn a_set_client_address_is_the_one_everything_reads() {
        let mut ctx = RequestCtx::new(&Peer, "r", None);
        assert_eq!(ctx.client_ip(), IpAddr::from([192, 0, 2, 1]));
        assert_eq!(ctx.var("realip_remote_addr").as_deref(), Some("192.0.2.1"));

        ctx.set_client_ip("2001:db8::7".parse().unwrap());
        assert_eq!(ctx.client_ip().to_string(), "2001:db8::7");
        assert_eq!(RequestView::remote_addr(&ctx).to_string(), "2001:db8::7");
        assert_eq!(ctx.var("remote_addr").as_deref(), Some("2001:db8::7"));
        assert_eq!(ctx.var("realip_remote_addr").as_deref(), Some("192.0.2.1"));
    }
}
