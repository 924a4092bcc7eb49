//! The compiled configuration: one immutable [`Snapshot`] per config version, published
//! atomically; and each worker's view of it, which adds the worker's own balancer state.
//! [`crate::compile`] makes each version from the last, recompiling what a change touches.

use std::cell::RefCell;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use pylon_balancer::{Algorithm, BalancerSpec, BalancerState, NodeSpec};
use pylon_model::{HashOn, Node, PassHost, Timeout, Upstream, UpstreamType};
use pylon_plugin::Chain;
use pylon_router::{RequestView, Router};

use rustls::pki_types::ServerName;

use crate::health::{UpstreamHealth, UpstreamOutlier};
use crate::metrics::RouteLabels;
use crate::settings::{secs, UpstreamDefaults};
use crate::stream::StreamTable;
use crate::tls::{server_name, SniTable, TlsContext, UpstreamTls};

/// One configuration version, compiled for the request path.
pub struct Snapshot {
    /// The store revision this was compiled from.
    pub revision: u64,
    /// Routes by id, which is also their order among equals.
    pub router: Router<RouteTarget, Arc<str>>,
    /// Server certificates for the https listener, by SNI.
    pub certificates: Arc<SniTable>,
    /// The plugins of the global rules: they run for every routed request, before the
    /// route's own.
    pub global_plugins: Chain,
    /// The stream routes, for the stream listeners.
    pub(crate) stream: Arc<StreamTable>,
}

/// What a matched route leads to.
pub struct RouteTarget {
    pub id: Arc<str>,
    /// `None` for a route only its plugins answer (APISIX allows one with plugins and no
    /// upstream); should none of them answer, the gateway does, with 503.
    pub upstream: Option<Arc<UpstreamTarget>>,
    /// The route's own timeouts, else its upstream's, else the node defaults.
    pub timeouts: Timeouts,
    /// `enable_websocket`, the route's or else its service's.
    pub websocket: bool,
    pub service_id: Option<Arc<str>>,
    /// The route's plugins: its service's, its plugin config's and its own, merged.
    pub plugins: Chain,
    /// The upstreams its `traffic-split` may send a request to instead of its own.
    pub splits: Vec<Split>,
    /// What its requests are counted under in the metrics.
    pub(crate) labels: RouteLabels,
}

/// An upstream a plugin may choose for a request instead of the route's own.
pub struct Split {
    pub upstream: Arc<UpstreamTarget>,
    /// The route's timeouts, else this upstream's, else the node defaults.
    pub timeouts: Timeouts,
}

impl RouteTarget {
    /// Where a request goes, with its timeouts: the upstream a plugin chose (by key), else
    /// the route's own. `None` when there is none, or the chosen one is not compiled with
    /// this route (a `traffic-split` configured on a consumer or a global rule).
    pub fn upstream_for(&self, chosen: Option<&str>) -> Option<(&UpstreamTarget, Timeouts)> {
        match chosen {
            None => Some((self.upstream.as_deref()?, self.timeouts)),
            Some(key) => self
                .splits
                .iter()
                .find(|split| split.upstream.key == key)
                .map(|split| (&*split.upstream, split.timeouts)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    pub connect: Duration,
    pub send: Duration,
    pub read: Duration,
}

pub struct UpstreamTarget {
    /// Where this upstream was defined: `upstreams/1`, or `routes/7` for an inline one.
    pub key: String,
    /// Where workers keep their balancer state for this upstream: one number per key for as
    /// long as any route uses it.
    pub slot: usize,
    /// Changes when anything the balancer state depends on changes.
    pub fingerprint: u64,
    pub nodes: Vec<NodeTarget>,
    pub balancer: BalancerSpec,
    /// For consistent hashing: what the key is made of.
    pub hash_key: Option<HashKey>,
    /// Further attempts after the first one.
    pub retries: usize,
    pub retry_timeout: Option<Duration>,
    pub pass_host: PassHost,
    pub upstream_host: Option<String>,
    pub pool: PoolSettings,
    /// For `https` and `grpcs` upstreams.
    pub tls: Option<UpstreamTls>,
    /// `grpc` and `grpcs` upstreams are spoken to in HTTP/2.
    pub grpc: bool,
    /// With `checks`: the nodes' health, shared by every worker and the checker.
    pub(crate) health: Option<Arc<UpstreamHealth>>,
    /// With `outlier_detection`: which nodes are ejected, shared by every worker.
    pub(crate) outlier: Option<Arc<UpstreamOutlier>>,
}

pub struct NodeTarget {
    /// `None` when the host name did not resolve when this version was compiled.
    pub addr: Option<SocketAddr>,
    /// `host[:port]` as the `Host` header for `pass_host: node`.
    pub host_header: String,
    /// The name sent in SNI and verified against the node's certificate, for TLS upstreams.
    pub tls_name: Option<ServerName<'static>>,
    /// Tells this node's pooled connections from others to the same address: 0 for plain
    /// TCP, else a hash of the TLS settings and server name.
    pub pool_id: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolSettings {
    pub size: usize,
    pub idle_timeout: Duration,
    pub requests: u64,
}

/// A consistent-hash key template: literal text and request variables, concatenated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HashKey(pub Vec<HashPart>);

impl HashKey {
    /// The key for one request.
    pub fn render(&self, vars: &impl RequestView) -> String {
        let mut key = String::new();
        for part in &self.0 {
            match part {
                HashPart::Literal(s) => key.push_str(s),
                HashPart::Var(name) => key.push_str(vars.var(name).as_deref().unwrap_or("")),
                // Without authentication there is no consumer; APISIX then hashes the client
                // address.
                HashPart::Consumer => match vars.var("consumer_name") {
                    Some(name) => key.push_str(&name),
                    None => key.push_str(&vars.remote_addr().to_string()),
                },
            }
        }
        key
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HashPart {
    Literal(String),
    Var(String),
    /// The consumer an authentication plugin identified.
    Consumer,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CompileError(pub(crate) String);

impl Snapshot {
    pub fn empty() -> Snapshot {
        Snapshot {
            revision: 0,
            router: Router::default(),
            certificates: Arc::default(),
            global_plugins: Chain::default(),
            stream: Arc::default(),
        }
    }
}

impl Timeouts {
    pub(crate) fn from_model(t: Timeout) -> Self {
        Self {
            connect: secs(t.connect),
            send: secs(t.send),
            read: secs(t.read),
        }
    }

    pub(crate) fn from_defaults(d: &UpstreamDefaults) -> Self {
        Self {
            connect: secs(d.connect_timeout),
            send: secs(d.send_timeout),
            read: secs(d.read_timeout),
        }
    }
}

/// Compiles one upstream over `nodes` (its own, or discovered), each at its `address`, which
/// workers will find their balancer state for at `slot`.
pub(crate) fn compile_upstream(
    key: String,
    slot: usize,
    upstream: &Upstream,
    nodes: &[Node],
    address: impl Fn(&str, u16) -> Option<SocketAddr>,
    defaults: &UpstreamDefaults,
    tls: &TlsContext,
) -> Result<UpstreamTarget, CompileError> {
    let algorithm = match upstream.balancer {
        UpstreamType::Roundrobin => Algorithm::RoundRobin,
        UpstreamType::Chash => Algorithm::ConsistentHash,
        UpstreamType::LeastConn => Algorithm::LeastConn,
        UpstreamType::Ewma => Algorithm::Ewma,
    };
    let node_specs: Vec<NodeSpec> = nodes
        .iter()
        .map(|n| NodeSpec::new(n.address(), n.weight).with_priority(n.priority))
        .collect();
    let hash_key = (upstream.balancer == UpstreamType::Chash).then(|| hash_key(upstream));
    let pool = upstream.keepalive_pool.map_or(
        PoolSettings {
            size: defaults.keepalive_size,
            idle_timeout: secs(defaults.keepalive_idle_timeout),
            requests: defaults.keepalive_requests,
        },
        |p| PoolSettings {
            size: p.size as usize,
            idle_timeout: secs(p.idle_timeout),
            requests: p.requests as u64,
        },
    );
    let mut fingerprint = std::collections::hash_map::DefaultHasher::new();
    (&key, algorithm, &hash_key).hash(&mut fingerprint);
    for n in nodes {
        n.hash(&mut fingerprint);
    }
    let upstream_tls = upstream
        .scheme
        .is_tls()
        .then(|| {
            let alpn: &[u8] = if upstream.scheme.is_grpc() {
                b"h2"
            } else {
                b"http/1.1"
            };
            UpstreamTls::new(upstream.tls.as_ref(), alpn, &tls.upstream_roots)
        })
        .transpose()
        .map_err(|e| CompileError(format!("{key}: tls: {e}")))?;
    if let Some(t) = &upstream_tls {
        t.fingerprint.hash(&mut fingerprint);
    }
    let retries = upstream
        .retries
        .map_or(nodes.len().saturating_sub(1), |r| r as usize);
    let sni_override = match upstream.pass_host {
        PassHost::Rewrite => upstream.upstream_host.as_deref(),
        PassHost::Pass | PassHost::Node => None,
    };
    let targets: Vec<NodeTarget> = nodes
        .iter()
        .map(|n| NodeTarget {
            addr: address(&n.host, n.port),
            host_header: if n.port == upstream.scheme.default_port() {
                n.host.clone()
            } else {
                n.address()
            },
            tls_name: upstream_tls
                .as_ref()
                .and_then(|_| server_name(sni_override.unwrap_or(&n.host))),
            pool_id: upstream_tls.as_ref().map_or(0, |t| {
                let mut id = std::collections::hash_map::DefaultHasher::new();
                (t.fingerprint, sni_override.unwrap_or(&n.host)).hash(&mut id);
                id.finish() | 1
            }),
        })
        .collect();
    let addresses: Vec<_> = targets
        .iter()
        .map(|t| (t.addr, t.host_header.as_str()))
        .collect();
    let health = UpstreamHealth::compile(&key, upstream, nodes, &addresses, tls)
        .map_err(|e| CompileError(format!("{key}: checks: {e}")))?
        .map(Arc::new);
    let resolved: Vec<_> = targets.iter().map(|t| t.addr).collect();
    let outlier =
        UpstreamOutlier::compile(&key, upstream.outlier_detection.as_ref(), nodes, &resolved)
            .map(Arc::new);
    Ok(UpstreamTarget {
        key,
        slot,
        fingerprint: fingerprint.finish(),
        nodes: targets,
        balancer: BalancerSpec::new(algorithm, &node_specs),
        hash_key,
        retries,
        retry_timeout: upstream.retry_timeout.filter(|&t| t > 0.0).map(secs),
        pass_host: upstream.pass_host,
        upstream_host: upstream.upstream_host.clone(),
        pool,
        tls: upstream_tls,
        grpc: upstream.scheme.is_grpc(),
        health,
        outlier,
    })
}

fn hash_key(upstream: &Upstream) -> HashKey {
    let key = upstream.key.clone().unwrap_or_default();
    let var = |name: String| HashKey(vec![HashPart::Var(name)]);
    match upstream.hash_on {
        HashOn::Vars => var(key),
        HashOn::Header => var(format!(
            "http_{}",
            key.to_ascii_lowercase().replace('-', "_")
        )),
        HashOn::Cookie => var(format!("cookie_{key}")),
        HashOn::Consumer => HashKey(vec![HashPart::Consumer]),
        HashOn::VarsCombinations => HashKey(parse_template(&key)),
    }
}

/// Splits `$host-$uri` into variables and literals.
fn parse_template(template: &str) -> Vec<HashPart> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(dollar) = rest.find('$') {
        if dollar > 0 {
            parts.push(HashPart::Literal(rest[..dollar].to_owned()));
        }
        let name_len = rest[dollar + 1..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len() - dollar - 1);
        parts.push(HashPart::Var(
            rest[dollar + 1..dollar + 1 + name_len].to_owned(),
        ));
        rest = &rest[dollar + 1 + name_len..];
    }
    if !rest.is_empty() {
        parts.push(HashPart::Literal(rest.to_owned()));
    }
    parts
}

/// `host`'s address, asking the system's resolver (blocking) for a name.
pub(crate) fn resolve(host: &str, port: u16) -> Option<SocketAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    match (host, port).to_socket_addrs() {
        Ok(mut addrs) => addrs.next(),
        Err(e) => {
            tracing::warn!(host, "upstream node does not resolve: {e}");
            None
        }
    }
}

/// Where workers find the current snapshot.
pub type SnapshotCell = Arc<ArcSwap<Snapshot>>;

/// One worker's view of a snapshot: the snapshot plus the worker's own balancer state for
/// each upstream (round-robin positions, in-flight counts, latency averages).
pub struct WorkerView {
    pub snapshot: Arc<Snapshot>,
    balancers: Rc<Balancers>,
}

/// A worker's balancer states by upstream slot, with the fingerprint each was made for. Shared
/// by the worker's views, so that a new version costs the worker nothing: an upstream's state
/// carries over while its fingerprint stays, and is made afresh at its first request after a
/// change. A request that started before a change keeps the state it started with, so its
/// `on_request_end` reaches the state it counted in (else least_conn/EWMA would count it in
/// flight for ever).
#[derive(Default)]
struct Balancers(RefCell<Vec<Option<(u64, SharedState)>>>);

type SharedState = Rc<RefCell<BalancerState>>;

impl WorkerView {
    pub fn new(snapshot: Arc<Snapshot>, previous: Option<&WorkerView>) -> WorkerView {
        WorkerView {
            snapshot,
            balancers: previous.map(|p| p.balancers.clone()).unwrap_or_default(),
        }
    }

    /// This worker's balancer state for `upstream`.
    pub fn balancer(&self, upstream: &UpstreamTarget) -> SharedState {
        let mut states = self.balancers.0.borrow_mut();
        if states.len() <= upstream.slot {
            states.resize_with(upstream.slot + 1, || None);
        }
        match &mut states[upstream.slot] {
            Some((fingerprint, state)) if *fingerprint == upstream.fingerprint => state.clone(),
            slot => {
                let state = Rc::new(RefCell::new(upstream.balancer.new_state()));
                *slot = Some((upstream.fingerprint, state.clone()));
                state
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_templates_split_into_vars_and_literals() {
        assert_eq!(
            parse_template("$host-$uri!"),
            vec![
                HashPart::Var("host".into()),
                HashPart::Literal("-".into()),
                HashPart::Var("uri".into()),
                HashPart::Literal("!".into()),
            ]
        );
    }
}
