//! The router: host groups of path trees over one table of routes, built and changed route by
//! route.

use std::borrow::Borrow;
use std::cmp::Reverse;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use pylon_model::expr::Expr;

use crate::error::{RouteError, RouterError};
use crate::expr;
use crate::host::{HostPattern, HostTable};
use crate::method::MethodSet;
use crate::path_tree::{PathTree, Pattern, RouteId};
use crate::remote_addr::AddrSet;
use crate::{RequestView, RouteSpec};

/// Every route of one configuration version, compiled for matching. Immutable, and cheap to
/// clone: a [`RouterBuilder`] makes each next version, sharing everything it did not change.
///
/// `K` names a route: among routes of equal priority under one path pattern, the smaller key
/// is tried first.
#[derive(Debug)]
pub struct Router<T, K = usize> {
    routes: Table<Route<T, K>>,
    by_host: Arc<HostTable<PathTree>>,
    any_host: PathTree,
    len: usize,
}

impl<T, K> Default for Router<T, K> {
    fn default() -> Self {
        Self {
            routes: Table::default(),
            by_host: Arc::default(),
            any_host: PathTree::default(),
            len: 0,
        }
    }
}

impl<T, K> Clone for Router<T, K> {
    fn clone(&self) -> Self {
        Self {
            routes: self.routes.clone(),
            by_host: self.by_host.clone(),
            any_host: self.any_host.clone(),
            len: self.len,
        }
    }
}

/// What is checked once a route's host and path match, and what it leads to.
#[derive(Debug)]
struct Route<T, K> {
    key: K,
    priority: i64,
    patterns: Patterns,
    methods: MethodSet,
    remote_addrs: AddrSet,
    vars: Option<Expr>,
    value: T,
}

impl<T, K: Ord> Route<T, K> {
    /// Whether this route is tried before `other` where both match.
    fn precedes(&self, other: &Self) -> bool {
        (Reverse(self.priority), &self.key) < (Reverse(other.priority), &other.key)
    }
}

/// A route's patterns, parsed before anything is inserted so that a bad route changes nothing.
#[derive(Debug)]
struct Patterns {
    uris: Vec<Pattern>,
    hosts: Vec<HostPattern>,
}

impl<T> Router<T> {
    /// Compiles `routes`, in list order among equal priorities; the first bad field (in route
    /// order) is the error.
    pub fn new(specs: Vec<RouteSpec<T>>) -> Result<Self, RouterError> {
        let mut builder = RouterBuilder::new();
        for (index, spec) in specs.into_iter().enumerate() {
            builder
                .insert(index, spec)
                .map_err(|e| RouterError::new(index, e))?;
        }
        Ok(builder.router())
    }
}

impl<T, K> Router<T, K> {
    /// The value of the first route, in precedence order, that matches `req`:
    /// host groups (exact host, then wildcards by decreasing suffix), then routes without
    /// hosts; within a group, the most specific path, then priority, then key.
    pub fn find(&self, req: &impl RequestView) -> Option<&T> {
        let path = req.path();
        let method = MethodSet::bit(req.method());
        let remote_addr = req.remote_addr();
        let mut accept = |id: RouteId| {
            let route = self.routes.get(id);
            route.methods.allows(method)
                && route.remote_addrs.allows(remote_addr)
                && route
                    .vars
                    .as_ref()
                    .is_none_or(|vars| expr::matches(vars, req))
        };
        let host_groups = req
            .host()
            .into_iter()
            .flat_map(|host| self.by_host.matching(host));
        host_groups
            .chain(std::iter::once(&self.any_host))
            .find_map(|tree| tree.find(path, &mut accept))
            .map(|id| &self.routes.get(id).value)
    }

    /// The number of routes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Makes router versions route by route: each [`RouterBuilder::router`] is a snapshot that
/// later changes do not affect, and a change costs what that route touches (its path patterns'
/// nodes), not what the whole table holds.
pub struct RouterBuilder<T, K = usize> {
    router: Router<T, K>,
    /// Where each route sits in the table.
    slots: HashMap<K, RouteId>,
    /// Slots of removed routes, for reuse.
    free: Vec<RouteId>,
}

impl<T, K: Ord + Hash + Clone> Default for RouterBuilder<T, K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, K: Ord + Hash + Clone> RouterBuilder<T, K> {
    pub fn new() -> Self {
        Self {
            router: Router::default(),
            slots: HashMap::new(),
            free: Vec::new(),
        }
    }

    /// Adds the route `key`, replacing the one of that key if any. A route with a bad field
    /// is refused, and the router is left as it was.
    pub fn insert(&mut self, key: K, spec: RouteSpec<T>) -> Result<(), RouteError> {
        let route = Route {
            patterns: Patterns::parse(&spec)?,
            methods: MethodSet::parse(&spec.methods)
                .map_err(|(i, msg)| RouteError::new(format!("methods[{i}]"), msg))?,
            remote_addrs: AddrSet::parse(&spec.remote_addrs)
                .map_err(|(i, msg)| RouteError::new(format!("remote_addrs[{i}]"), msg))?,
            key: key.clone(),
            priority: spec.priority,
            vars: spec.vars,
            value: spec.value,
        };
        self.remove(&key);
        let id = self.free.pop().unwrap_or(self.router.routes.len());
        let Router {
            routes,
            by_host,
            any_host,
            len,
        } = &mut self.router;
        routes.set(id, Some(Arc::new(route)));
        let routes = &*routes;
        let route = routes.get(id);
        let precedes = |a: RouteId, b: RouteId| routes.get(a).precedes(routes.get(b));
        let Patterns { uris, hosts } = &route.patterns;
        if hosts.is_empty() {
            uris.iter()
                .for_each(|uri| any_host.insert(uri, id, precedes));
        } else {
            let by_host = Arc::make_mut(by_host);
            for host in hosts {
                let tree = by_host.entry(host);
                uris.iter().for_each(|uri| tree.insert(uri, id, precedes));
            }
        }
        *len += 1;
        self.slots.insert(key, id);
        Ok(())
    }

    /// Removes the route `key`; says whether there was one.
    pub fn remove<Q>(&mut self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let Some(id) = self.slots.remove(key) else {
            return false;
        };
        let Router {
            routes,
            by_host,
            any_host,
            len,
        } = &mut self.router;
        let Patterns { uris, hosts } = &routes.get(id).patterns;
        if hosts.is_empty() {
            uris.iter().for_each(|uri| any_host.remove(uri, id));
        } else {
            let by_host = Arc::make_mut(by_host);
            for host in hosts {
                by_host.remove_if(host, |tree| {
                    uris.iter().for_each(|uri| tree.remove(uri, id));
                    tree.is_empty()
                });
            }
        }
        routes.set(id, None);
        *len -= 1;
        self.free.push(id);
        true
    }

    /// The router as it is now.
    pub fn router(&self) -> Router<T, K> {
        self.router.clone()
    }
}

/// Route slots in chunks, each shared between versions until a change in it: setting one slot
/// copies one chunk and the list of chunks, never the table.
#[derive(Debug)]
struct Table<R> {
    chunks: Vec<Arc<Vec<Option<Arc<R>>>>>,
}

const CHUNK: usize = 64;

impl<R> Default for Table<R> {
    fn default() -> Self {
        Self { chunks: Vec::new() }
    }
}

impl<R> Clone for Table<R> {
    fn clone(&self) -> Self {
        Self {
            chunks: self.chunks.clone(),
        }
    }
}

impl<R> Table<R> {
    /// The route in slot `id`, which the trees reference: it is there.
    fn get(&self, id: RouteId) -> &R {
        self.chunks[id / CHUNK][id % CHUNK]
            .as_deref()
            .expect("the trees reference only occupied slots")
    }

    /// The number of slots, free or not.
    fn len(&self) -> usize {
        self.chunks.len() * CHUNK
    }

    fn set(&mut self, id: RouteId, route: Option<Arc<R>>) {
        if id / CHUNK == self.chunks.len() {
            self.chunks.push(Arc::new(vec![None; CHUNK]));
        }
        Arc::make_mut(&mut self.chunks[id / CHUNK])[id % CHUNK] = route;
    }
}

impl Patterns {
    fn parse<T>(spec: &RouteSpec<T>) -> Result<Self, RouteError> {
        if spec.uris.is_empty() {
            return Err(RouteError::new("uris", "a route needs at least one uri"));
        }
        let uris = spec
            .uris
            .iter()
            .enumerate()
            .map(|(i, uri)| {
                Pattern::parse(uri).map_err(|msg| RouteError::new(format!("uris[{i}]"), msg))
            })
            .collect::<Result<_, _>>()?;
        let hosts = spec
            .hosts
            .iter()
            .enumerate()
            .map(|(i, host)| {
                HostPattern::parse(host).map_err(|msg| RouteError::new(format!("hosts[{i}]"), msg))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { uris, hosts })
    }
}
