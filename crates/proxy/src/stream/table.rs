//! The stream routes of one configuration version, compiled: what each takes and where it
//! sends it, with its `ip-restriction` and `limit-conn`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pylon_model::{FieldError, ProxyProtocolVersion, Scheme, StreamRoute};
use pylon_plugins::{stream_conn_key, IpSet, Protos, StreamConnKey};
use serde::Deserialize;
use serde_json::Value;

use super::frames::Frames;
use super::push::PushGateway;
use crate::snapshot::UpstreamTarget;

/// The stream routes, most specific first: a route with more conditions is tried before one
/// with fewer, and among equals the lower id first.
#[derive(Default)]
pub(crate) struct StreamTable {
    routes: Vec<StreamTarget>,
}

/// What a connection, or a UDP session's first datagram, is matched by.
pub(crate) struct Arrival<'a> {
    pub client: SocketAddr,
    pub local: SocketAddr,
    /// The TLS server name, on a listener that terminates TLS.
    pub sni: Option<&'a str>,
    pub transport: Transport,
}

/// How the client's bytes came, and how they go on to the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Tcp,
    Udp,
}

pub(crate) struct StreamTarget {
    pub id: Arc<str>,
    remote: Option<IpSet>,
    server: Option<IpSet>,
    port: Option<u16>,
    sni: Option<SniPattern>,
    /// The only transport the route takes, when its upstream names one (`tcp`, `tls`: TCP;
    /// `udp`: UDP) or it speaks frames; `None`: both, each relayed as it came.
    transport: Option<Transport>,
    /// Where the bytes go; on a route whose connections speak frames, the framed backend its
    /// bridged WebSocket clients (`mode: tcp`) are relayed to, if any.
    pub upstream: Option<Arc<UpstreamTarget>>,
    /// The framed protocol its connections speak (`protocol: pylon-frames`).
    pub frames: Option<Arc<Frames>>,
    /// The push gateway its connections are devices of (`protocol: pylon-push`).
    pub push: Option<Arc<PushGateway>>,
    pub connect_timeout: Duration,
    pub proxy_protocol: Option<ProxyProtocolVersion>,
    pub access: Option<Access>,
    pub limit: Option<Arc<ConnLimit>>,
}

impl StreamTable {
    pub(crate) fn new(mut routes: Vec<StreamTarget>) -> StreamTable {
        routes.sort_by(|a, b| {
            b.conditions()
                .cmp(&a.conditions())
                .then_with(|| a.id.cmp(&b.id))
        });
        StreamTable { routes }
    }

    pub(crate) fn find(&self, arrival: &Arrival<'_>) -> Option<&StreamTarget> {
        self.routes.iter().find(|route| route.takes(arrival))
    }

    /// Whether a route could take `arrival` by the server name its ClientHello sends: then
    /// the name is read before the route is chosen.
    pub(crate) fn routes_by_name(&self, arrival: &Arrival<'_>) -> bool {
        self.routes
            .iter()
            .any(|route| route.sni.is_some() && route.takes_by_address(arrival))
    }

    /// The frames route `id`, for the WebSocket clients bridged to it.
    pub(crate) fn frames_route(&self, id: &str) -> Option<&StreamTarget> {
        self.routes
            .iter()
            .find(|route| &*route.id == id && route.frames.is_some())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Push gateway `id`, if this version has it.
    pub(crate) fn push_route(&self, id: &str) -> Option<&Arc<PushGateway>> {
        (self.routes.iter())
            .find(|route| &*route.id == id)
            .and_then(|route| route.push.as_ref())
    }

    /// Every push gateway of this version.
    pub(crate) fn push_gateways(&self) -> impl Iterator<Item = &Arc<PushGateway>> {
        self.routes.iter().filter_map(|route| route.push.as_ref())
    }
}

impl StreamTarget {
    /// `upstream` (with the `scheme` its definition says), `connect_timeout` and `limit` are
    /// the compiler's, and `protos` the version's, where a frames route's message types are;
    /// the rest is the route's own.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: &str,
        route: &StreamRoute,
        upstream: Option<Arc<UpstreamTarget>>,
        scheme: Option<Scheme>,
        connect_timeout: Duration,
        limit: Option<Arc<ConnLimit>>,
        protos: &Protos,
        push: Option<Arc<PushGateway>>,
    ) -> Result<StreamTarget, FieldError> {
        let frames = match &route.protocol {
            _ if push.is_some() => None,
            Some(protocol) => {
                let compiled = Frames::new(&protocol.conf, protos)
                    .map_err(|errors| FieldError::first_within(errors, "protocol.conf"))?;
                Some(Arc::new(compiled))
            }
            None => None,
        };
        let transport = match scheme {
            _ if frames.is_some() || push.is_some() => Some(Transport::Tcp),
            Some(Scheme::Udp) => Some(Transport::Udp),
            Some(Scheme::Tcp | Scheme::Tls | Scheme::Https) => Some(Transport::Tcp),
            _ => None,
        };
        let network = |field: &str, addr: &Option<String>| {
            addr.as_ref()
                .map(|a| IpSet::parse(field, std::slice::from_ref(a)))
                .transpose()
        };
        let plugins = route.plugins.as_ref();
        let access = plugins
            .and_then(|p| p.get("ip-restriction"))
            .map(Access::parse)
            .transpose()?;
        Ok(StreamTarget {
            id: Arc::from(id),
            remote: network("remote_addr", &route.remote_addr)?,
            server: network("server_addr", &route.server_addr)?,
            port: route.server_port,
            sni: route.sni.as_deref().map(SniPattern::new),
            transport,
            upstream,
            frames,
            push,
            connect_timeout,
            proxy_protocol: route.upstream_proxy_protocol,
            access,
            limit,
        })
    }

    fn conditions(&self) -> usize {
        [
            self.remote.is_some(),
            self.server.is_some(),
            self.port.is_some(),
            self.sni.is_some(),
        ]
        .into_iter()
        .filter(|set| *set)
        .count()
    }

    fn takes(&self, arrival: &Arrival<'_>) -> bool {
        self.takes_by_address(arrival)
            && self
                .sni
                .as_ref()
                .is_none_or(|pattern| arrival.sni.is_some_and(|name| pattern.matches(name)))
    }

    fn takes_by_address(&self, arrival: &Arrival<'_>) -> bool {
        self.transport.is_none_or(|t| t == arrival.transport)
            && self.port.is_none_or(|port| port == arrival.local.port())
            && self
                .server
                .as_ref()
                .is_none_or(|set| set.contains(arrival.local.ip()))
            && self
                .remote
                .as_ref()
                .is_none_or(|set| set.contains(arrival.client.ip()))
    }
}

/// A server name, or `*.` and the names under it.
struct SniPattern {
    name: String,
    wildcard: bool,
}

impl SniPattern {
    fn new(pattern: &str) -> SniPattern {
        let pattern = pattern.to_ascii_lowercase();
        match pattern.strip_prefix("*.") {
            Some(suffix) => SniPattern {
                name: format!(".{suffix}"),
                wildcard: true,
            },
            None => SniPattern {
                name: pattern,
                wildcard: false,
            },
        }
    }

    fn matches(&self, sni: &str) -> bool {
        let sni = sni.to_ascii_lowercase();
        if self.wildcard {
            sni.len() > self.name.len() && sni.ends_with(&self.name)
        } else {
            sni == self.name
        }
    }
}

/// `ip-restriction` on a stream route: a connection from outside `whitelist`, or from inside
/// `blacklist`, is closed before the upstream is tried.
pub(crate) enum Access {
    Allow(IpSet),
    Deny(IpSet),
}

impl Access {
    fn parse(config: &Value) -> Result<Access, FieldError> {
        let list = |field: &str| -> Result<Option<IpSet>, FieldError> {
            let Some(entries) = config.get(field).and_then(Value::as_array) else {
                return Ok(None);
            };
            let entries: Vec<String> = entries
                .iter()
                .filter_map(|e| e.as_str().map(str::to_owned))
                .collect();
            IpSet::parse(&format!("plugins.ip-restriction.{field}"), &entries).map(Some)
        };
        match (list("whitelist")?, list("blacklist")?) {
            (Some(allow), _) => Ok(Access::Allow(allow)),
            (None, Some(deny)) => Ok(Access::Deny(deny)),
            (None, None) => Err(FieldError::new(
                "plugins.ip-restriction",
                "needs `whitelist` or `blacklist`",
            )),
        }
    }

    pub(crate) fn admits(&self, client: IpAddr) -> bool {
        match self {
            Access::Allow(set) => set.contains(client),
            Access::Deny(set) => !set.contains(client),
        }
    }
}

/// `limit-conn` on a stream route: connections open at once per key (the client's address,
/// or the address it reached). Past `conn` a connection waits `default_conn_delay` for each
/// `conn` ahead of it, while within `burst`; past `conn + burst` it is closed. Shared by every
/// worker, and kept across versions while the route's plugin configuration is unchanged.
pub(crate) struct ConnLimit {
    conn: u32,
    burst: u32,
    delay: Duration,
    key: StreamConnKey,
    open: Mutex<HashMap<IpAddr, u32>>,
}

/// The fields of `limit-conn` a stream route uses; the rest are its schema's to check.
#[derive(Deserialize)]
struct LimitConnConfig {
    conn: u32,
    burst: u32,
    default_conn_delay: f64,
}

/// A connection's place under a [`ConnLimit`], given back when it is dropped.
pub(crate) struct ConnPermit {
    limit: Arc<ConnLimit>,
    key: IpAddr,
}

/// Whether a connection goes on under a [`ConnLimit`].
pub(crate) enum Admission {
    Now(ConnPermit),
    After(ConnPermit, Duration),
    Refused,
}

impl ConnLimit {
    /// The limit `config` asks for (the `limit-conn` plugin's fields, already checked by its
    /// schema); a stream route counts by `remote_addr` or `server_addr`, on this node.
    pub(crate) fn parse(config: &Value) -> Result<ConnLimit, FieldError> {
        let key = stream_conn_key(config)?;
        let fields: LimitConnConfig = serde_json::from_value(config.clone())
            .map_err(|e| FieldError::new("plugins.limit-conn", e.to_string()))?;
        Ok(ConnLimit {
            conn: fields.conn,
            burst: fields.burst,
            delay: Duration::try_from_secs_f64(fields.default_conn_delay).unwrap_or_default(),
            key,
            open: Mutex::default(),
        })
    }

    pub(crate) fn admit(self: &Arc<Self>, arrival: &Arrival<'_>) -> Admission {
        let key = match self.key {
            StreamConnKey::RemoteAddr => arrival.client.ip(),
            StreamConnKey::ServerAddr => arrival.local.ip(),
        };
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(key).or_default();
        if *count >= self.conn + self.burst {
            return Admission::Refused;
        }
        *count += 1;
        let ahead = *count;
        drop(open);
        let permit = ConnPermit {
            limit: self.clone(),
            key,
        };
        if ahead <= self.conn {
            Admission::Now(permit)
        } else {
            let rounds = (ahead - 1) / self.conn;
            Admission::After(permit, self.delay * rounds)
        }
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut open = self
            .limit
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}
