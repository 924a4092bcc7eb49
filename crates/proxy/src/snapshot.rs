//! The compiled configuration: one immutable [`Snapshot`] per config version, published
//! atomically; and each worker's view of it, which adds the worker's own balancer state.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use pylon_balancer::{Algorithm, BalancerSpec, BalancerState, NodeSpec};
use pylon_model::{Config, HashOn, PassHost, Route, Service, Timeout, Upstream, UpstreamType};
use pylon_plugin::Chain;
use pylon_plugins::CompiledPlugins;
use pylon_router::{RequestView, RouteSpec, Router};

use rustls::pki_types::ServerName;

use crate::health::UpstreamHealth;
use crate::settings::{secs, UpstreamDefaults};
use crate::tls::{server_name, SniTable, TlsContext, UpstreamTls};

/// One configuration version, compiled for the request path.
pub struct Snapshot {
    /// The store revision this was compiled from.
    pub revision: u64,
    pub router: Router<RouteTarget>,
    pub upstreams: Vec<UpstreamTarget>,
    /// Server certificates for the https listener, by SNI.
    pub certificates: SniTable,
    /// The plugins of the global rules: they run for every routed request, before the
    /// route's own.
    pub global_plugins: Chain,
}

/// What a matched route leads to.
pub struct RouteTarget {
    pub id: Arc<str>,
    /// Index into [`Snapshot::upstreams`].
    pub upstream: usize,
    /// The route's own timeouts, else its upstream's, else the node defaults.
    pub timeouts: Timeouts,
    /// `enable_websocket`, the route's or else its service's.
    pub websocket: bool,
    pub service_id: Option<Arc<str>>,
    /// The route's plugins: its service's, its plugin config's and its own, merged.
    pub plugins: Chain,
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
pub struct CompileError(String);

impl Snapshot {
    pub fn empty() -> Snapshot {
        Snapshot {
            revision: 0,
            router: Router::new(Vec::new()).expect("an empty router always builds"),
            upstreams: Vec::new(),
            certificates: SniTable::default(),
            global_plugins: Chain::default(),
        }
    }

    /// Compiles a validated configuration. Host names of nodes are resolved here, on the
    /// control thread, never on a worker.
    ///
    /// A route that cannot be compiled (its upstream or service is missing, or its upstream's
    /// TLS or checks cannot be built) is left out and reported in `skipped`; every other route
    /// is served. Only a router that cannot be built at all fails the whole snapshot.
    pub fn compile(
        config: &Config,
        revision: u64,
        defaults: &UpstreamDefaults,
        tls: &TlsContext,
    ) -> Result<Compiled, CompileError> {
        let mut upstreams = Vec::new();
        let mut index_of: HashMap<String, usize> = HashMap::new();
        let mut specs = Vec::new();
        let (plugins, plugin_errors) = CompiledPlugins::compile(config);
        let mut skipped: Vec<CompileError> = plugin_errors
            .into_iter()
            .map(|e| CompileError(e.to_string()))
            .collect();
        for (id, route) in config.routes.iter().filter(|(_, r)| r.is_enabled()) {
            let service = route
                .service_id
                .as_ref()
                .and_then(|s| config.services.get(s).map(|svc| (s, svc)));
            let upstream = match route_upstream(config, id, route, service) {
                Ok(found) => found,
                Err(e) => {
                    skipped.push(e);
                    continue;
                }
            };
            // A route whose plugins cannot all be built is not served: without its
            // authentication, say, it would be open to anyone.
            let chain = match plugins.route_chain(id, route) {
                Ok(chain) => chain,
                Err(e) => {
                    skipped.push(CompileError(e.to_string()));
                    continue;
                }
            };
            let (key, upstream) = upstream;
            let index = match index_of.get(&key) {
                Some(&i) => i,
                None => match compile_upstream(key.clone(), upstream, defaults, tls) {
                    Ok(target) => {
                        upstreams.push(target);
                        index_of.insert(key, upstreams.len() - 1);
                        upstreams.len() - 1
                    }
                    Err(e) => {
                        skipped.push(CompileError(format!("routes/{id}: {e}")));
                        continue;
                    }
                },
            };
            let timeouts = route
                .timeout
                .or(upstream.timeout)
                .map_or_else(|| Timeouts::from_defaults(defaults), Timeouts::from_model);
            let mut hosts: Vec<String> = route.all_hosts().map(str::to_owned).collect();
            if hosts.is_empty() {
                hosts = service
                    .and_then(|(_, s)| s.hosts.clone())
                    .unwrap_or_default();
            }
            specs.push(RouteSpec {
                uris: route.all_uris().map(str::to_owned).collect(),
                hosts,
                methods: route.methods.clone().unwrap_or_default(),
                remote_addrs: route.all_remote_addrs().map(str::to_owned).collect(),
                vars: route.vars.clone(),
                priority: route.priority,
                value: RouteTarget {
                    id: Arc::from(id.as_str()),
                    upstream: index,
                    timeouts,
                    websocket: route
                        .enable_websocket
                        .or(service.and_then(|(_, s)| s.enable_websocket))
                        .unwrap_or(false),
                    service_id: route.service_id.as_deref().map(Arc::from),
                    plugins: chain,
                },
            });
        }
        let router = Router::new(specs).map_err(|e| CompileError(e.to_string()))?;
        let snapshot = Snapshot {
            revision,
            router,
            upstreams,
            certificates: SniTable::compile(&config.ssls, tls),
            global_plugins: plugins.global,
        };
        Ok(Compiled { snapshot, skipped })
    }
}

/// A compiled snapshot, and the routes that had to be left out of it.
pub struct Compiled {
    pub snapshot: Snapshot,
    pub skipped: Vec<CompileError>,
}

/// The upstream a route sends to, with the key its runtime state is kept under: its own, its
/// `upstream_id`'s, or its service's.
fn route_upstream<'a>(
    config: &'a Config,
    id: &str,
    route: &'a Route,
    service: Option<(&String, &'a Service)>,
) -> Result<(String, &'a Upstream), CompileError> {
    let lookup = |uid: &str| {
        config
            .upstreams
            .get(uid)
            .map(|u| (format!("upstreams/{uid}"), u))
            .ok_or_else(|| CompileError(format!("routes/{id}: upstream `{uid}` does not exist")))
    };
    if let Some(u) = &route.upstream {
        return Ok((format!("routes/{id}"), u));
    }
    if let Some(uid) = &route.upstream_id {
        return lookup(uid);
    }
    match (&route.service_id, service) {
        (Some(sid), None) => Err(CompileError(format!(
            "routes/{id}: service `{sid}` does not exist"
        ))),
        (_, Some((sid, svc))) => match (&svc.upstream, &svc.upstream_id) {
            (Some(u), _) => Ok((format!("services/{sid}"), u)),
            (None, Some(uid)) => lookup(uid),
            (None, None) => Err(CompileError(format!("routes/{id}: has no upstream"))),
        },
        (None, None) => Err(CompileError(format!("routes/{id}: has no upstream"))),
    }
}

impl Timeouts {
    fn from_model(t: Timeout) -> Self {
        Self {
            connect: secs(t.connect),
            send: secs(t.send),
            read: secs(t.read),
        }
    }

    fn from_defaults(d: &UpstreamDefaults) -> Self {
        Self {
            connect: secs(d.connect_timeout),
            send: secs(d.send_timeout),
            read: secs(d.read_timeout),
        }
    }
}

fn compile_upstream(
    key: String,
    upstream: &Upstream,
    defaults: &UpstreamDefaults,
    tls: &TlsContext,
) -> Result<UpstreamTarget, CompileError> {
    // Validation has already resolved these nodes once; it cannot fail here.
    let nodes = upstream.nodes.resolve(upstream.scheme).unwrap_or_default();
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
    (algorithm, &hash_key).hash(&mut fingerprint);
    for n in &nodes {
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
            addr: resolve(&n.host, n.port),
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
    let health = UpstreamHealth::compile(&key, upstream, &nodes, &addresses, tls)
        .map_err(|e| CompileError(format!("{key}: checks: {e}")))?
        .map(Arc::new);
    Ok(UpstreamTarget {
        key,
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

fn resolve(host: &str, port: u16) -> Option<SocketAddr> {
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
/// each upstream (round-robin positions, in-flight counts, latency averages), which carries
/// over from the previous view for every upstream whose nodes and algorithm did not change.
pub struct WorkerView {
    pub snapshot: Arc<Snapshot>,
    /// Shared with the previous view, not copied from it: a request that started before a
    /// config change ends on the view it started with, and its `on_request_end` must reach
    /// the state the new view picks with, or least_conn/EWMA would count it in flight for ever.
    pub balancers: Vec<Rc<RefCell<BalancerState>>>,
}

impl WorkerView {
    pub fn new(snapshot: Arc<Snapshot>, previous: Option<&WorkerView>) -> WorkerView {
        let mut carried: HashMap<(&str, u64), &Rc<RefCell<BalancerState>>> = HashMap::new();
        if let Some(prev) = previous {
            for (u, state) in prev.snapshot.upstreams.iter().zip(&prev.balancers) {
                carried.insert((u.key.as_str(), u.fingerprint), state);
            }
        }
        let balancers = snapshot
            .upstreams
            .iter()
            .map(|u| {
                carried.get(&(u.key.as_str(), u.fingerprint)).map_or_else(
                    || Rc::new(RefCell::new(u.balancer.new_state())),
                    |s| Rc::clone(s),
                )
            })
            .collect();
        WorkerView {
            snapshot,
            balancers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls() -> TlsContext {
        TlsContext::new(None, None).unwrap()
    }

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

    #[test]
    fn balancer_state_survives_unrelated_config_changes() {
        let defaults = UpstreamDefaults::default();
        let config = |nodes: &str, extra_route: bool| {
            let mut text = format!(
                "upstreams:\n  - {{id: u, nodes: {nodes}}}\nroutes:\n  - {{id: r, uri: /a, upstream_id: u}}\n"
            );
            if extra_route {
                text.push_str("  - {id: r2, uri: /b, upstream_id: u}\n");
            }
            pylon_model::parse_standalone(&text).unwrap().1
        };
        let rr = |view: &WorkerView| {
            let u = &view.snapshot.upstreams[0];
            view.balancers[0]
                .borrow_mut()
                .pick(&u.balancer, None, |_| false)
                .unwrap()
        };
        let nodes = r#"{"127.0.0.1:1": 1, "127.0.0.1:2": 1}"#;
        let v1 = WorkerView::new(
            Arc::new(
                Snapshot::compile(&config(nodes, false), 1, &defaults, &tls())
                    .unwrap()
                    .snapshot,
            ),
            None,
        );
        let first = rr(&v1);
        // A new route does not reset the round robin: the next pick is the other node.
        let v2 = WorkerView::new(
            Arc::new(
                Snapshot::compile(&config(nodes, true), 2, &defaults, &tls())
                    .unwrap()
                    .snapshot,
            ),
            Some(&v1),
        );
        assert_ne!(rr(&v2), first);
        // Changed nodes start afresh.
        let v3 = WorkerView::new(
            Arc::new(
                Snapshot::compile(
                    &config(r#"{"127.0.0.1:1": 1, "127.0.0.1:3": 1}"#, true),
                    3,
                    &defaults,
                    &tls(),
                )
                .unwrap()
                .snapshot,
            ),
            Some(&v2),
        );
        assert_ne!(
            v3.snapshot.upstreams[0].fingerprint,
            v2.snapshot.upstreams[0].fingerprint
        );
    }

    #[test]
    fn a_request_started_before_a_config_change_ends_on_the_state_in_use() {
        let defaults = UpstreamDefaults::default();
        let config = |extra_route: bool| {
            let mut text = "upstreams:\n  - {id: u, type: least_conn, nodes: {\"127.0.0.1:1\": 1, \"127.0.0.1:2\": 1}}\nroutes:\n  - {id: r, uri: /a, upstream_id: u}\n".to_owned();
            if extra_route {
                text.push_str("  - {id: r2, uri: /b, upstream_id: u}\n");
            }
            pylon_model::parse_standalone(&text).unwrap().1
        };
        let v1 = WorkerView::new(
            Arc::new(
                Snapshot::compile(&config(false), 1, &defaults, &tls())
                    .unwrap()
                    .snapshot,
            ),
            None,
        );
        let spec = &v1.snapshot.upstreams[0].balancer;
        let busy = v1.balancers[0]
            .borrow_mut()
            .pick(spec, None, |_| false)
            .unwrap();
        v1.balancers[0].borrow_mut().on_request_start(busy);

        let v2 = WorkerView::new(
            Arc::new(
                Snapshot::compile(&config(true), 2, &defaults, &tls())
                    .unwrap()
                    .snapshot,
            ),
            Some(&v1),
        );
        // The request ends on the view it started with, after the change.
        v1.balancers[0]
            .borrow_mut()
            .on_request_end(busy, Duration::from_millis(1), false);
        // Both nodes idle in the new view: they take turns.
        let spec = &v2.snapshot.upstreams[0].balancer;
        let picks: Vec<usize> = (0..4)
            .map(|_| {
                let mut state = v2.balancers[0].borrow_mut();
                let node = state.pick(spec, None, |_| false).unwrap();
                state.on_request_start(node);
                state.on_request_end(node, Duration::from_millis(1), false);
                node
            })
            .collect();
        assert_eq!(picks.iter().filter(|&&n| n == busy).count(), 2, "{picks:?}");
    }
}
