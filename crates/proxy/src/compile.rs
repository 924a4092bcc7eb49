//! Compiling configuration versions, each from the last: a change recompiles the routes it
//! touches (a route, or every route of a changed service, upstream or plugin config) and
//! nothing else. The router is changed route by route; upstream targets, plugin instances
//! and certificates are reused while their own configuration is unchanged. A version with one
//! route changed among 100,000 costs that route, not the table.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use pylon_discovery::{Registry, ServiceWatch};
use pylon_model::{
    Config, FieldError, Key, Kind, Node, Route, Service, StreamRoute, Upstream, PUSH_PROTOCOL,
};
use pylon_plugins::{
    builds_every_plugin, push_config, route_split_upstreams, CompiledPlugins, SplitTarget,
};
use pylon_router::{RouteSpec, RouterBuilder};
use pylon_store::Revision;

use crate::health::HealthRegistry;
use crate::metrics::{Named, RouteLabels};
use crate::settings::UpstreamDefaults;
use crate::snapshot::{
    compile_upstream, resolve, CompileError, RouteTarget, Snapshot, Split, Timeouts, UpstreamTarget,
};
use crate::stream::push::PushGateway;
use crate::stream::{ConnLimit, StreamTable, StreamTarget};
use crate::tls::{SniTable, TlsContext};
use serde_json::Value;

/// The discovery type that also keeps upstream nodes' host names resolved.
const DNS: &str = "dns";

/// The compiled state of the configuration in force, kept between versions.
pub(crate) struct Compiler {
    /// This node's id: a push gateway's devices are recorded in Redis as held by it.
    node: Arc<str>,
    defaults: UpstreamDefaults,
    tls: Arc<TlsContext>,
    health: Arc<HealthRegistry>,
    /// Finds the nodes of upstreams that name a `discovery_type`.
    discovery: Registry,
    router: RouterBuilder<RouteTarget, Arc<str>>,
    plugins: CompiledPlugins,
    certificates: Arc<SniTable>,
    /// Every enabled route compiled so far, served or not, by id.
    routes: HashMap<String, CompiledRoute>,
    /// The routes that reference each service, upstream and plugin config, by its key.
    dependents: HashMap<Key, HashSet<String>>,
    /// The upstreams routes use, by upstream key.
    upstreams: HashMap<String, SharedUpstream>,
    /// Upstream slots given back, for reuse; `next_slot` is the first never given out.
    free_slots: Vec<usize>,
    next_slot: usize,
    /// The stream routes, compiled as a whole whenever one of them, an upstream, a service
    /// or a proto changes (they are few).
    stream: Arc<StreamTable>,
    /// The upstreams the stream routes use, by the user name they hold them under.
    stream_upstreams: Vec<(String, String)>,
    /// Each stream route's `limit-conn`, with the configuration it was built from: kept
    /// while that is unchanged, so that the connections open count across versions.
    stream_limits: HashMap<String, (Value, Arc<ConnLimit>)>,
}

/// What a route was compiled against.
struct CompiledRoute {
    /// The services, upstreams and plugin configs it references, present or not: when one
    /// comes, changes or goes, the route is compiled again.
    references: Vec<Key>,
    /// The keys of the upstreams it uses while it is served: its own, then those its
    /// `traffic-split` sends to.
    upstreams: Vec<String>,
    /// Whether any plugin applies to it (its own, its service's or its plugin config's):
    /// such routes are compiled again when consumers or plugin metadata change.
    has_plugins: bool,
}

struct SharedUpstream {
    /// The configuration it was compiled from: a route that brings the same one reuses it.
    source: Upstream,
    /// What its nodes were found with: its discovery service, or the DNS names of its
    /// nodes. Kept followed while this lives.
    followed: Vec<Followed>,
    target: Arc<UpstreamTarget>,
    /// The routes that use it.
    users: HashSet<String>,
}

/// A discovered service (or a DNS name), and the answer an upstream was compiled with.
struct Followed {
    watch: ServiceWatch,
    seen: Option<Arc<[pylon_discovery::Node]>>,
}

impl Followed {
    fn new(watch: ServiceWatch) -> Self {
        let seen = watch.current();
        Self { watch, seen }
    }
}

impl SharedUpstream {
    /// Whether discovery or DNS has found other nodes since this was compiled.
    fn outdated(&self) -> bool {
        self.followed.iter().any(|f| f.watch.current() != f.seen)
    }
}

/// A new version, and the routes of this change that cannot be served.
pub(crate) struct Compiled {
    pub snapshot: Snapshot,
    pub not_served: Vec<CompileError>,
}

impl Compiler {
    pub(crate) fn new(
        node: Arc<str>,
        defaults: UpstreamDefaults,
        tls: Arc<TlsContext>,
        health: Arc<HealthRegistry>,
        discovery: Registry,
    ) -> Self {
        Self {
            node,
            defaults,
            tls,
            health,
            discovery,
            router: RouterBuilder::new(),
            plugins: CompiledPlugins::compile(&Config::default()).0,
            certificates: Arc::default(),
            routes: HashMap::new(),
            dependents: HashMap::new(),
            upstreams: HashMap::new(),
            free_slots: Vec::new(),
            next_slot: 0,
            stream: Arc::default(),
            stream_upstreams: Vec::new(),
            stream_limits: HashMap::new(),
        }
    }

    /// Compiles the version `config`, which differs from the last one compiled by the
    /// resources at `changed` (every key of `config`, the first time). Host names of nodes
    /// are resolved here, on the control thread, never on a worker.
    ///
    /// A route that cannot be compiled (a reference is missing, its plugins or its
    /// upstream's TLS or checks cannot be built, a pattern is bad) is left out and reported;
    /// every other route is served.
    pub(crate) fn update(
        &mut self,
        config: &Config,
        changed: &[Key],
        revision: Revision,
    ) -> Compiled {
        let mut affected = BTreeSet::new();
        for key in changed {
            match key.kind {
                Kind::Routes => drop(affected.insert(key.id.clone())),
                Kind::Upstreams | Kind::Services | Kind::PluginConfigs => {
                    affected.extend(self.dependents_of(key));
                }
                _ => {}
            }
        }
        let plugin_errors = self.plugins.update(config, changed);
        let mut not_served: Vec<CompileError> = plugin_errors
            .into_iter()
            .map(|e| CompileError(e.to_string()))
            .collect();
        if changed.iter().any(|key| builds_every_plugin(key.kind)) {
            let with_plugins = self.routes.iter().filter(|(_, r)| r.has_plugins);
            affected.extend(with_plugins.map(|(id, _)| id.clone()));
        }
        if changed.iter().any(|key| key.kind == Kind::Ssls) {
            self.certificates = Arc::new(SniTable::compile(&config.ssls, &self.tls));
        }
        self.recompile(config, affected, &mut not_served);
        // Frames routes take their message types from the protos; push gateways check
        // devices against the consumers.
        let streams_touched = changed.iter().any(|key| {
            matches!(
                key.kind,
                Kind::StreamRoutes | Kind::Upstreams | Kind::Services | Kind::Protos
            ) || builds_every_plugin(key.kind) && self.stream.push_gateways().next().is_some()
        });
        if streams_touched && !(config.stream_routes.is_empty() && self.stream.is_empty()) {
            self.compile_streams(config, &mut not_served);
        }
        Compiled {
            snapshot: self.snapshot(revision),
            not_served,
        }
    }

    /// Compiles again the routes of the upstreams whose discovered nodes changed; `None`
    /// when none did (another upstream's service moved, and that was compiled already).
    pub(crate) fn rediscover(&mut self, config: &Config, revision: Revision) -> Option<Compiled> {
        let outdated = self.upstreams.values().filter(|u| u.outdated());
        let users: BTreeSet<String> = outdated.flat_map(|u| u.users.iter().cloned()).collect();
        if users.is_empty() {
            return None;
        }
        let (streams, affected): (BTreeSet<String>, _) =
            users.into_iter().partition(|user| is_stream_user(user));
        let mut not_served = Vec::new();
        self.recompile(config, affected, &mut not_served);
        if !streams.is_empty() {
            self.compile_streams(config, &mut not_served);
        }
        Some(Compiled {
            snapshot: self.snapshot(revision),
            not_served,
        })
    }

    fn snapshot(&self, revision: Revision) -> Snapshot {
        Snapshot {
            revision,
            router: self.router.router(),
            certificates: self.certificates.clone(),
            global_plugins: self.plugins.global.clone(),
            stream: self.stream.clone(),
        }
    }

    /// Compiles every stream route anew, reusing the upstreams (and their health state) and
    /// the connection limits that did not change. A route that cannot be compiled is left
    /// out and reported.
    fn compile_streams(&mut self, config: &Config, not_served: &mut Vec<CompileError>) {
        let previous = std::mem::take(&mut self.stream_upstreams);
        let mut limits = HashMap::new();
        let mut targets = Vec::new();
        for (id, route) in &config.stream_routes {
            let user = format!("{STREAM_USER}{id}");
            let compiled = self.compile_stream(config, id, route, &user, &mut limits);
            match compiled {
                Ok((target, upstream_key)) => {
                    if let Some(key) = upstream_key {
                        self.stream_upstreams.push((user, key));
                    }
                    targets.push(target);
                }
                Err(e) => not_served.push(e),
            }
        }
        for (user, key) in previous {
            if !self.stream_upstreams.contains(&(user.clone(), key.clone())) {
                self.release_upstream(&key, &user);
            }
        }
        self.stream_limits = limits;
        self.stream = Arc::new(StreamTable::new(targets));
    }

    fn compile_stream(
        &mut self,
        config: &Config,
        id: &str,
        route: &StreamRoute,
        user: &str,
        limits: &mut HashMap<String, (Value, Arc<ConnLimit>)>,
    ) -> Result<(StreamTarget, Option<String>), CompileError> {
        let located = |e: &dyn std::fmt::Display| CompileError(format!("stream_routes/{id}: {e}"));
        let service = route
            .service_id
            .as_ref()
            .and_then(|s| config.services.get(s));
        // A route whose connections speak frames sends them to HTTP routes; its upstream, if
        // it has one, is the framed backend its WebSocket clients may be bridged to.
        let wanted = match stream_upstream(config, id, route, service) {
            Ok(wanted) => Some(wanted),
            Err(_) if route.protocol.is_some() && !names_upstream(route, service) => None,
            Err(e) => return Err(located(&e)),
        };
        let limit = match route.plugins.as_ref().and_then(|p| p.get("limit-conn")) {
            None => None,
            Some(config) => {
                let kept = self
                    .stream_limits
                    .get(id)
                    .filter(|(built_from, _)| built_from == config)
                    .map(|(_, limit)| limit.clone());
                let limit = match kept {
                    Some(limit) => limit,
                    None => Arc::new(ConnLimit::parse(config).map_err(|e| located(&e))?),
                };
                limits.insert(id.to_owned(), (config.clone(), limit.clone()));
                Some(limit)
            }
        };
        let scheme = wanted.as_ref().map(|(_, source)| source.scheme);
        let connect_timeout = wanted
            .as_ref()
            .and_then(|(_, source)| source.timeout)
            .map_or_else(
                || Timeouts::from_defaults(&self.defaults),
                Timeouts::from_model,
            )
            .connect;
        let upstream = match wanted {
            Some((key, source)) => {
                let target = self
                    .acquire_upstream(key.clone(), source, user)
                    .map_err(|e| located(&e))?;
                Some((key, target))
            }
            None => None,
        };
        let (key, target) = upstream.unzip();
        let push = match &route.protocol {
            Some(protocol) if protocol.name == PUSH_PROTOCOL => {
                let built = push_config(&protocol.conf)
                    .map_err(|errors| FieldError::first_within(errors, "protocol.conf"))
                    .and_then(|checked| {
                        let auth = self.plugins.push_auth_chain(id, route.plugins.as_ref())?;
                        PushGateway::new(checked, auth, &self.node, id)
                    });
                match built {
                    Ok(gateway) => Some(Arc::new(gateway)),
                    Err(e) => {
                        if let Some(key) = &key {
                            self.release_upstream(key, user);
                        }
                        return Err(located(&e));
                    }
                }
            }
            _ => None,
        };
        let protos = self.plugins.protos();
        match StreamTarget::new(
            id,
            route,
            target,
            scheme,
            connect_timeout,
            limit,
            protos,
            push,
        ) {
            Ok(target) => Ok((target, key)),
            Err(e) => {
                if let Some(key) = &key {
                    self.release_upstream(key, user);
                }
                Err(located(&e))
            }
        }
    }

    fn recompile(
        &mut self,
        config: &Config,
        affected: BTreeSet<String>,
        not_served: &mut Vec<CompileError>,
    ) {
        for id in affected {
            let previous_upstreams = self.remove_route(&id);
            if let Some(route) = config.routes.get(&id).filter(|r| r.is_enabled()) {
                if let Err(e) = self.add_route(config, &id, route) {
                    not_served.push(e);
                }
            }
            // Released after the new version took its own, and only those it no longer uses:
            // an upstream both use stays compiled, with its slot, health state and discovery.
            let now = self.routes.get(&id).map(|r| &r.upstreams);
            let unused: Vec<String> = previous_upstreams
                .into_iter()
                .filter(|key| !now.is_some_and(|now| now.contains(key)))
                .collect();
            for key in unused {
                self.release_upstream(&key, &id);
            }
        }
    }

    fn dependents_of(&self, key: &Key) -> impl Iterator<Item = String> + '_ {
        self.dependents.get(key).into_iter().flatten().cloned()
    }

    /// Compiles route `id` and puts it in the router; or says why it cannot be served.
    fn add_route(&mut self, config: &Config, id: &str, route: &Route) -> Result<(), CompileError> {
        let service = route
            .service_id
            .as_ref()
            .and_then(|s| config.services.get(s).map(|svc| (s, svc)));
        let splits = route_split_upstreams(config, route);
        let mut references = references(route, service.map(|(_, s)| s));
        references.extend(splits.iter().filter_map(|split| match &split.target {
            SplitTarget::Id(uid) => Some(Key::new(Kind::Upstreams, uid)),
            SplitTarget::Inline(_) => None,
        }));
        for key in &references {
            let dependents = self.dependents.entry(key.clone()).or_default();
            dependents.insert(id.to_owned());
        }
        self.routes.insert(
            id.to_owned(),
            CompiledRoute {
                references,
                upstreams: Vec::new(),
                has_plugins: route.plugins.is_some()
                    || route.plugin_config_id.is_some()
                    || service.is_some_and(|(_, s)| s.plugins.is_some()),
            },
        );

        let upstream = route_upstream(config, id, route, service)?;
        // A route whose plugins cannot all be built is not served: without its
        // authentication, say, it would be open to anyone.
        let chain = self
            .plugins
            .route_chain(id, route)
            .map_err(|e| CompileError(e.to_string()))?;
        let timeouts_with = |upstream: Option<&Upstream>| {
            let upstream_timeout = upstream.and_then(|u| u.timeout);
            route.timeout.or(upstream_timeout).map_or_else(
                || Timeouts::from_defaults(&self.defaults),
                Timeouts::from_model,
            )
        };
        let timeouts = timeouts_with(upstream.as_ref().map(|(_, u)| *u));
        let mut split_sources = Vec::with_capacity(splits.len());
        for split in &splits {
            let source = match &split.target {
                SplitTarget::Id(uid) => match config.upstreams.get(uid) {
                    Some(upstream) => upstream,
                    // The route serves on; only the requests sent there are refused. It is
                    // compiled again when the upstream comes.
                    None => {
                        tracing::error!(
                            route = id,
                            "traffic-split: upstream `{uid}` does not exist; \
                             requests sent to it answer 503"
                        );
                        continue;
                    }
                },
                SplitTarget::Inline(upstream) => upstream,
            };
            split_sources.push((split.key.clone(), source, timeouts_with(Some(source))));
        }
        let mut wanted: Vec<(String, &Upstream)> = upstream
            .iter()
            .map(|(key, source)| (key.clone(), *source))
            .collect();
        wanted.extend(
            split_sources
                .iter()
                .map(|(key, source, _)| (key.clone(), *source)),
        );
        let mut targets = self.acquire_all(&wanted, id)?.into_iter();
        let acquired: Vec<String> = wanted.into_iter().map(|(key, _)| key).collect();
        let target = upstream.as_ref().and_then(|_| targets.next());
        let splits = targets
            .zip(split_sources)
            .map(|(upstream, (_, _, timeouts))| Split { upstream, timeouts })
            .collect();
        let mut hosts: Vec<String> = route.all_hosts().map(str::to_owned).collect();
        if hosts.is_empty() {
            hosts = service
                .and_then(|(_, s)| s.hosts.clone())
                .unwrap_or_default();
        }
        let id: Arc<str> = Arc::from(id);
        let uris: Vec<String> = route.all_uris().map(str::to_owned).collect();
        let labels = RouteLabels::new(
            Named {
                id: id.clone(),
                name: route.name.as_deref(),
            },
            service.map(|(service_id, service)| Named {
                id: Arc::from(service_id.as_str()),
                name: service.name.as_deref(),
            }),
            &uris,
            &hosts,
        );
        let spec = RouteSpec {
            uris,
            hosts,
            methods: route.methods.clone().unwrap_or_default(),
            remote_addrs: route.all_remote_addrs().map(str::to_owned).collect(),
            vars: route.vars.clone(),
            priority: route.priority,
            value: RouteTarget {
                id: id.clone(),
                upstream: target,
                timeouts,
                websocket: route
                    .enable_websocket
                    .or(service.and_then(|(_, s)| s.enable_websocket))
                    .unwrap_or(false),
                service_id: route.service_id.as_deref().map(Arc::from),
                plugins: chain,
                splits,
                labels,
            },
        };
        if let Err(e) = self.router.insert(id.clone(), spec) {
            for key in &acquired {
                self.release_upstream(key, &id);
            }
            return Err(CompileError(format!("routes/{id}: {e}")));
        }
        if let Some(compiled) = self.routes.get_mut(&*id) {
            compiled.upstreams = acquired;
        }
        Ok(())
    }

    /// The upstreams `wanted` (key and configuration) for route `user`, in order: all of them,
    /// or none (those taken before a failure are given back).
    fn acquire_all(
        &mut self,
        wanted: &[(String, &Upstream)],
        user: &str,
    ) -> Result<Vec<Arc<UpstreamTarget>>, CompileError> {
        let mut targets = Vec::with_capacity(wanted.len());
        for (key, source) in wanted {
            match self.acquire_upstream(key.clone(), source, user) {
                Ok(target) => targets.push(target),
                Err(e) => {
                    for (key, _) in &wanted[..targets.len()] {
                        self.release_upstream(key, user);
                    }
                    return Err(CompileError(format!("routes/{user}: {e}")));
                }
            }
        }
        Ok(targets)
    }

    /// Takes route `id` out of the router and of everything that tracks it; returns the keys
    /// of the upstreams it used, for the caller to release.
    fn remove_route(&mut self, id: &str) -> Vec<String> {
        let Some(compiled) = self.routes.remove(id) else {
            return Vec::new();
        };
        self.router.remove(id);
        for key in &compiled.references {
            if let Some(dependents) = self.dependents.get_mut(key) {
                dependents.remove(id);
                if dependents.is_empty() {
                    self.dependents.remove(key);
                }
            }
        }
        compiled.upstreams
    }

    /// The compiled upstream at `key` for route `user`: the one in use if it was compiled
    /// from the same configuration (and discovered nodes), else compiled now, keeping its
    /// slot and, where the nodes, checks and outlier detection allow, its health state.
    fn acquire_upstream(
        &mut self,
        key: String,
        source: &Upstream,
        user: &str,
    ) -> Result<Arc<UpstreamTarget>, CompileError> {
        let existing = self.upstreams.get_mut(&key);
        if let Some(shared) = existing.filter(|s| s.source == *source && !s.outdated()) {
            shared.users.insert(user.to_owned());
            return Ok(shared.target.clone());
        }
        // The new follows are taken while the previous version still holds its own: a
        // service followed by both goes on without a gap, its last answer at hand.
        let (nodes, mut followed) = self.nodes(&key, source)?;
        let addresses = self.follow_names(&nodes, &mut followed);
        let previous = self.upstreams.remove(&key);
        let slot = previous.as_ref().map_or_else(
            || {
                self.free_slots.pop().unwrap_or_else(|| {
                    self.next_slot += 1;
                    self.next_slot - 1
                })
            },
            |p| p.target.slot,
        );
        let address = |host: &str, port| match addresses.get(&(host, port)) {
            Some(Some(found)) => Some(*found),
            // No answer yet: asked here, once, so that a new upstream serves at once.
            _ => resolve(host, port),
        };
        let compiled = compile_upstream(
            key.clone(),
            slot,
            source,
            &nodes,
            address,
            &self.defaults,
            &self.tls,
        );
        let mut target = match compiled {
            Ok(target) => target,
            Err(e) => {
                match previous {
                    Some(previous) => drop(self.upstreams.insert(key, previous)),
                    None => self.free_slots.push(slot),
                }
                return Err(e);
            }
        };
        self.health.attach(&mut target);
        let target = Arc::new(target);
        let mut users = previous.map(|p| p.users).unwrap_or_default();
        users.insert(user.to_owned());
        let shared = SharedUpstream {
            source: source.clone(),
            followed,
            target: target.clone(),
            users,
        };
        self.upstreams.insert(key, shared);
        Ok(target)
    }

    /// An upstream's nodes: those its `discovery_type` finds now (none before the first
    /// answer), and the service followed; or its own.
    fn nodes(
        &self,
        key: &str,
        source: &Upstream,
    ) -> Result<(Vec<Node>, Vec<Followed>), CompileError> {
        let (Some(kind), Some(name)) = (&source.discovery_type, &source.service_name) else {
            // Validation has already resolved these nodes once; it cannot fail here.
            let own = source
                .nodes
                .as_ref()
                .and_then(|n| n.resolve(source.scheme).ok());
            return Ok((own.unwrap_or_default(), Vec::new()));
        };
        let watch = self
            .discovery
            .watch(kind, name, source.discovery_args.as_ref())
            .map_err(|e| CompileError(format!("{key}: {e}")))?;
        let service = Followed::new(watch);
        let nodes = service.seen.iter().flat_map(|nodes| nodes.iter());
        let nodes = nodes
            .map(|n| Node {
                host: n.host.clone(),
                // Port 0: the name gave none; the scheme's own.
                port: match n.port {
                    0 => source.scheme.default_port(),
                    port => port,
                },
                weight: n.weight,
                priority: n.priority,
            })
            .collect();
        Ok((nodes, vec![service]))
    }

    /// Follows the host names among `nodes` with DNS, as their records' TTLs say; returns
    /// each one's address as last answered (`None` before the first answer).
    fn follow_names<'n>(
        &self,
        nodes: &'n [Node],
        followed: &mut Vec<Followed>,
    ) -> HashMap<(&'n str, u16), Option<SocketAddr>> {
        let mut addresses = HashMap::new();
        for node in nodes {
            let name = (node.host.as_str(), node.port);
            if node.host.parse::<IpAddr>().is_ok() || addresses.contains_key(&name) {
                continue;
            }
            let service = format!("{}:{}", node.host, node.port);
            let watch = match self.discovery.watch(DNS, &service, None) {
                Ok(watch) => Followed::new(watch),
                Err(e) => {
                    tracing::warn!(node = %service, "not followed by DNS: {e}");
                    continue;
                }
            };
            let first = watch.seen.as_ref().and_then(|found| found.first());
            let address =
                first.and_then(|n| Some(SocketAddr::new(n.host.parse().ok()?, node.port)));
            addresses.insert(name, address);
            followed.push(watch);
        }
        addresses
    }

    /// Route `user` no longer uses the upstream at `key`; the last one frees its slot and
    /// stops its health checks and discovery.
    fn release_upstream(&mut self, key: &str, user: &str) {
        let Some(shared) = self.upstreams.get_mut(key) else {
            return;
        };
        shared.users.remove(user);
        if shared.users.is_empty() {
            let slot = shared.target.slot;
            self.upstreams.remove(key);
            self.free_slots.push(slot);
            self.health.detach(key);
        }
    }
}

/// The upstream a stream route relays to, with the key its runtime state is kept under: its
/// own, its `upstream_id`'s, or its service's.
/// Whether a stream route names an upstream, its own or its service's.
fn names_upstream(route: &StreamRoute, service: Option<&Service>) -> bool {
    route.upstream.is_some()
        || route.upstream_id.is_some()
        || service.is_some_and(|s| s.upstream.is_some() || s.upstream_id.is_some())
}

fn stream_upstream<'a>(
    config: &'a Config,
    id: &str,
    route: &'a StreamRoute,
    service: Option<&'a Service>,
) -> Result<(String, &'a Upstream), String> {
    let by_id = |uid: &String| {
        config
            .upstreams
            .get(uid)
            .map(|u| (format!("upstreams/{uid}"), u))
            .ok_or_else(|| format!("upstream `{uid}` does not exist"))
    };
    match (&route.upstream, &route.upstream_id, service) {
        (Some(u), _, _) => Ok((format!("{STREAM_USER}{id}"), u)),
        (None, Some(uid), _) => by_id(uid),
        (None, None, Some(service)) => match (&service.upstream, &service.upstream_id) {
            (Some(u), _) => {
                let sid = route.service_id.as_deref().unwrap_or_default();
                Ok((format!("services/{sid}"), u))
            }
            (None, Some(uid)) => by_id(uid),
            (None, None) => Err("has no upstream".to_owned()),
        },
        (None, None, None) => Err("has no upstream".to_owned()),
    }
}

/// What a stream route's hold on an upstream is named, beside the routes' ids (which cannot
/// hold a `/`).
const STREAM_USER: &str = "stream_routes/";

fn is_stream_user(user: &str) -> bool {
    user.starts_with(STREAM_USER)
}

/// The services, upstreams and plugin configs a route's compiled form depends on.
fn references(route: &Route, service: Option<&Service>) -> Vec<Key> {
    let upstream_id = route
        .upstream_id
        .as_ref()
        .or_else(|| service.and_then(|s| s.upstream_id.as_ref()));
    [
        route
            .service_id
            .as_ref()
            .map(|s| Key::new(Kind::Services, s)),
        upstream_id.map(|u| Key::new(Kind::Upstreams, u)),
        route
            .plugin_config_id
            .as_ref()
            .map(|p| Key::new(Kind::PluginConfigs, p)),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The upstream a route sends to, with the key its runtime state is kept under: its own, its
/// `upstream_id`'s, or its service's; `None` for a route with none, which validation allows
/// only with plugins.
fn route_upstream<'a>(
    config: &'a Config,
    id: &str,
    route: &'a Route,
    service: Option<(&String, &'a Service)>,
) -> Result<Option<(String, &'a Upstream)>, CompileError> {
    let lookup = |uid: &str| {
        config
            .upstreams
            .get(uid)
            .map(|u| Some((format!("upstreams/{uid}"), u)))
            .ok_or_else(|| CompileError(format!("routes/{id}: upstream `{uid}` does not exist")))
    };
    if let Some(u) = &route.upstream {
        return Ok(Some((format!("routes/{id}"), u)));
    }
    if let Some(uid) = &route.upstream_id {
        return lookup(uid);
    }
    match (&route.service_id, service) {
        (Some(sid), None) => Err(CompileError(format!(
            "routes/{id}: service `{sid}` does not exist"
        ))),
        (_, Some((sid, svc))) => match (&svc.upstream, &svc.upstream_id) {
            (Some(u), _) => Ok(Some((format!("services/{sid}"), u))),
            (None, Some(uid)) => lookup(uid),
            (None, None) => Ok(None),
        },
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
impl Snapshot {
    /// `config` compiled afresh, with default settings.
    pub(crate) fn compile(config: &Config) -> Snapshot {
        let tls = Arc::new(TlsContext::new(None, None).expect("a default TLS context builds"));
        let discovery = Registry::new(&Default::default()).expect("default discovery settings");
        let mut compiler = Compiler::new(
            "node".into(),
            UpstreamDefaults::default(),
            tls,
            Arc::default(),
            discovery,
        );
        let keys: Vec<Key> = config.keys().collect();
        compiler.update(config, &keys, 1).snapshot
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::collections::BTreeMap;
    use std::net::IpAddr;
    use std::rc::Rc;
    use std::time::Duration;

    use pylon_model::Resource;
    use pylon_router::RequestView;
    use serde_json::{json, Value};

    use super::*;
    use crate::snapshot::WorkerView;

    /// A request the router sees.
    struct Get<'a> {
        path: &'a str,
        host: Option<&'a str>,
    }

    impl RequestView for Get<'_> {
        fn path(&self) -> &str {
            self.path
        }
        fn host(&self) -> Option<&str> {
            self.host
        }
        fn method(&self) -> &str {
            "GET"
        }
        fn remote_addr(&self) -> IpAddr {
            IpAddr::from([127, 0, 0, 1])
        }
        fn var(&self, _: &str) -> Option<Cow<'_, str>> {
            None
        }
    }

    /// A store's content, and the versions compiled from it.
    struct Versions {
        entries: BTreeMap<Key, Value>,
        compiler: Compiler,
        revision: Revision,
    }

    impl Versions {
        fn new() -> Self {
            let tls = Arc::new(TlsContext::new(None, None).unwrap());
            Self {
                entries: BTreeMap::new(),
                compiler: Compiler::new(
                    "node".into(),
                    UpstreamDefaults::default(),
                    tls,
                    Arc::default(),
                    Registry::new(&Default::default()).unwrap(),
                ),
                revision: 0,
            }
        }

        fn config(&self) -> Config {
            let mut config = Config::default();
            for (key, value) in &self.entries {
                config.insert(key, Resource::from_json(key.kind, value).unwrap());
            }
            config
        }

        /// Puts (`Some`) or deletes resources, and compiles the next version incrementally.
        fn change(&mut self, changes: &[(Key, Option<Value>)]) -> Snapshot {
            for (key, value) in changes {
                match value {
                    Some(v) => drop(self.entries.insert(key.clone(), v.clone())),
                    None => drop(self.entries.remove(key)),
                }
            }
            self.revision += 1;
            let keys: Vec<Key> = changes.iter().map(|(k, _)| k.clone()).collect();
            self.compiler
                .update(&self.config(), &keys, self.revision)
                .snapshot
        }
    }

    fn route(id: &str) -> Key {
        Key::new(Kind::Routes, id)
    }

    fn upstream(id: &str) -> Key {
        Key::new(Kind::Upstreams, id)
    }

    /// The upstream of the route `path` matches.
    fn upstream_of<'s>(snapshot: &'s Snapshot, path: &str) -> &'s Arc<UpstreamTarget> {
        let req = Get { path, host: None };
        let route = snapshot.router.find(&req).expect("a route matches");
        route.upstream.as_ref().expect("the route has an upstream")
    }

    fn round_robin(view: &WorkerView, path: &str) -> usize {
        let upstream = upstream_of(&view.snapshot, path);
        let state = view.balancer(upstream);
        let picked = state.borrow_mut().pick(&upstream.balancer, None, |_| false);
        picked.unwrap()
    }

    #[test]
    fn balancer_state_survives_unrelated_config_changes() {
        let two = json!({"127.0.0.1:1": 1, "127.0.0.1:2": 1});
        let mut versions = Versions::new();
        let v1 = versions.change(&[
            (upstream("u"), Some(json!({"nodes": two}))),
            (route("r"), Some(json!({"uri": "/a", "upstream_id": "u"}))),
        ]);
        let v1 = WorkerView::new(Arc::new(v1), None);
        let first = round_robin(&v1, "/a");

        // A new route does not reset the round robin: the next pick is the other node.
        let v2 = versions.change(&[(route("r2"), Some(json!({"uri": "/b", "upstream_id": "u"})))]);
        let v2 = WorkerView::new(Arc::new(v2), Some(&v1));
        assert!(Arc::ptr_eq(
            upstream_of(&v1.snapshot, "/a"),
            upstream_of(&v2.snapshot, "/a")
        ));
        assert_ne!(round_robin(&v2, "/b"), first);

        // Changed nodes start afresh.
        let three = json!({"127.0.0.1:1": 1, "127.0.0.1:3": 1});
        let v3 = versions.change(&[(upstream("u"), Some(json!({"nodes": three})))]);
        let v3 = WorkerView::new(Arc::new(v3), Some(&v2));
        let (old, new) = (
            upstream_of(&v2.snapshot, "/a"),
            upstream_of(&v3.snapshot, "/a"),
        );
        assert_eq!(old.slot, new.slot);
        assert_ne!(old.fingerprint, new.fingerprint);
        let kept = v2.balancer(old);
        assert!(Rc::ptr_eq(
            &kept,
            &v1.balancer(upstream_of(&v1.snapshot, "/a"))
        ));
        assert!(
            !Rc::ptr_eq(&kept, &v3.balancer(new)),
            "a new state for new nodes"
        );
        assert_eq!(round_robin(&v3, "/a"), round_robin(&v3, "/b") ^ 1);
    }

    #[test]
    fn a_request_started_before_a_config_change_ends_on_the_state_in_use() {
        let mut versions = Versions::new();
        let nodes = json!({"127.0.0.1:1": 1, "127.0.0.1:2": 1});
        let v1 = versions.change(&[
            (
                upstream("u"),
                Some(json!({"type": "least_conn", "nodes": nodes})),
            ),
            (route("r"), Some(json!({"uri": "/a", "upstream_id": "u"}))),
        ]);
        let v1 = WorkerView::new(Arc::new(v1), None);
        let u1 = upstream_of(&v1.snapshot, "/a").clone();
        let state = v1.balancer(&u1);
        let busy = state
            .borrow_mut()
            .pick(&u1.balancer, None, |_| false)
            .unwrap();
        state.borrow_mut().on_request_start(busy);

        let v2 = versions.change(&[(route("r2"), Some(json!({"uri": "/b", "upstream_id": "u"})))]);
        let v2 = WorkerView::new(Arc::new(v2), Some(&v1));
        // The request ends on the state it started with, after the change.
        state
            .borrow_mut()
            .on_request_end(busy, Duration::from_millis(1), false);
        // Both nodes idle in the new view: they take turns.
        let u2 = upstream_of(&v2.snapshot, "/a").clone();
        let picks: Vec<usize> = (0..4)
            .map(|_| {
                let state = v2.balancer(&u2);
                let mut state = state.borrow_mut();
                let node = state.pick(&u2.balancer, None, |_| false).unwrap();
                state.on_request_start(node);
                state.on_request_end(node, Duration::from_millis(1), false);
                node
            })
            .collect();
        assert_eq!(picks.iter().filter(|&&n| n == busy).count(), 2, "{picks:?}");
    }

    #[test]
    fn an_upstream_no_route_uses_gives_back_its_slot() {
        let mut versions = Versions::new();
        let inline = |port: u16| json!({"uri": "/a", "upstream": {"nodes": {format!("127.0.0.1:{port}"): 1}}});
        let v1 = versions.change(&[(route("r"), Some(inline(1)))]);
        let slot = upstream_of(&v1, "/a").slot;
        versions.change(&[(route("r"), None)]);
        assert!(versions.compiler.upstreams.is_empty());

        // The same for the upstreams a traffic-split sends to, when it goes.
        let mut split = inline(3);
        split["plugins"] = json!({"traffic-split": {"rules": [{"weighted_upstreams": [
            {"upstream": {"nodes": {"127.0.0.1:4": 1}}}
        ]}]}});
        versions.change(&[(route("t"), Some(split))]);
        assert_eq!(versions.compiler.upstreams.len(), 2);
        versions.change(&[(route("t"), Some(inline(3)))]);
        assert_eq!(versions.compiler.upstreams.len(), 1);
        versions.change(&[(route("t"), None)]);
        assert!(versions.compiler.upstreams.is_empty());
        let v3 = versions.change(&[(route("s"), Some(inline(2)))]);
        assert_eq!(upstream_of(&v3, "/a").slot, slot);
    }

    #[test]
    fn a_frames_route_is_served_once_its_proto_defines_its_messages() {
        let mut versions = Versions::new();
        let stream = Key::new(Kind::StreamRoutes, "im");
        let proto = Key::new(Kind::Protos, "im");
        let frames = json!({"protocol": {"name": "pylon-frames", "conf": {
            "layout": {
                "header_length": 8,
                "body_length": {"offset": 0, "width": 4},
                "command": {"offset": 4, "width": 2},
                "sequence": {"offset": 6, "width": 2}
            },
            "commands": {"1": {"uri": "/send", "proto_id": "im",
                               "request": "im.Send", "response": "im.Sent"}}
        }}});
        let v1 = versions.change(&[(stream.clone(), Some(frames))]);
        assert!(v1.stream.is_empty(), "no proto: not served");

        let content = |sent: &str| json!({"content": format!("syntax = \"proto3\"; package im; message Send {{}} message {sent} {{}}")});
        let v2 = versions.change(&[(proto.clone(), Some(content("Other")))]);
        assert!(v2.stream.is_empty(), "no `im.Sent`: not served");
        let v3 = versions.change(&[(proto.clone(), Some(content("Sent")))]);
        assert!(
            !v3.stream.is_empty(),
            "a proto change compiles the stream routes"
        );
        let v4 = versions.change(&[(proto, None)]);
        assert!(v4.stream.is_empty());
    }

    /// An upstream, comparably: its key and nodes.
    fn described(upstream: &UpstreamTarget) -> (String, Vec<String>) {
        let nodes = upstream.nodes.iter().map(|n| n.host_header.clone());
        (upstream.key.clone(), nodes.collect())
    }

    /// What a request leads to, comparably: the route, its upstream and those its
    /// traffic-split may send to.
    type Outcome = (
        String,
        Option<(String, Vec<String>)>,
        Vec<(String, Vec<String>)>,
    );

    fn outcome(snapshot: &Snapshot, req: &Get<'_>) -> Option<Outcome> {
        let target = snapshot.router.find(req)?;
        let splits = target.splits.iter().map(|s| described(&s.upstream));
        Some((
            target.id.to_string(),
            target.upstream.as_deref().map(described),
            splits.collect(),
        ))
    }

    /// For random sequences of changes to routes, services and upstreams (some with a
    /// traffic-split), the incrementally compiled version routes every request of a generated
    /// set as a fresh compile does, to the same upstreams.
    #[test]
    fn incremental_versions_route_as_fresh_compiles_do() {
        const URIS: [&str; 6] = ["/", "/a", "/a/*", "/a/:id", "/b*", "/a/b"];
        let paths = ["/", "/a", "/a/1", "/a/b", "/b", "/bc/d"];
        let hosts = [None, Some("x.com"), Some("y.com")];

        let split = |rng: &mut fastrand::Rng| {
            let lane = match rng.usize(..2) {
                0 => json!({"upstream_id": format!("u{}", rng.usize(..3))}),
                _ => json!({"upstream": {"nodes": {format!("127.0.0.1:{}", rng.u16(5..7)): 1}}}),
            };
            json!({"traffic-split": {"rules": [{"weighted_upstreams": [lane, {"weight": 1}]}]}})
        };
        let random_value = |rng: &mut fastrand::Rng, kind: Kind| -> Value {
            let nodes = json!({format!("127.0.0.1:{}", rng.u16(1..4)): 1});
            match kind {
                Kind::Upstreams => json!({"nodes": nodes}),
                Kind::Services => {
                    let mut s = match rng.usize(..3) {
                        0 => json!({"upstream_id": format!("u{}", rng.usize(..3))}),
                        1 => json!({"upstream": {"nodes": nodes}, "hosts": ["x.com"]}),
                        _ => {
                            json!({"upstream_id": format!("u{}", rng.usize(..3)), "hosts": ["y.com"]})
                        }
                    };
                    if rng.usize(..3) == 0 {
                        s["plugins"] = split(rng);
                    }
                    s
                }
                _ => {
                    let mut r =
                        json!({"uri": URIS[rng.usize(..URIS.len())], "priority": rng.i64(0..2)});
                    match rng.usize(..3) {
                        0 => r["upstream_id"] = json!(format!("u{}", rng.usize(..3))),
                        1 => r["service_id"] = json!(format!("s{}", rng.usize(..3))),
                        _ => r["upstream"] = json!({"nodes": nodes}),
                    }
                    if rng.usize(..4) == 0 {
                        r["hosts"] = json!(["x.com"]);
                    }
                    if rng.usize(..6) == 0 {
                        r["status"] = json!(0);
                    }
                    if rng.usize(..3) == 0 {
                        r["plugins"] = split(rng);
                    }
                    r
                }
            }
        };

        for seed in 0..30 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut versions = Versions::new();
            for step in 0..40 {
                let (kind, prefix, count) = match rng.usize(..5) {
                    0 => (Kind::Upstreams, "u", 3),
                    1 => (Kind::Services, "s", 3),
                    _ => (Kind::Routes, "r", 8),
                };
                let key = Key::new(kind, format!("{prefix}{}", rng.usize(..count)));
                let value = (rng.usize(..5) != 0).then(|| random_value(&mut rng, kind));
                let incremental = versions.change(&[(key, value)]);
                let fresh = Snapshot::compile(&versions.config());
                assert_eq!(
                    incremental.router.len(),
                    fresh.router.len(),
                    "seed {seed} step {step}"
                );
                for path in paths {
                    for host in hosts {
                        let req = Get { path, host };
                        assert_eq!(
                            outcome(&incremental, &req),
                            outcome(&fresh, &req),
                            "seed {seed} step {step}: {host:?} {path}"
                        );
                    }
                }
            }
        }
    }
}
