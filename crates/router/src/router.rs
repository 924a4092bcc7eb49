//! The router: host groups of path trees over one table of routes.

use std::cmp::Reverse;

use pylon_model::expr::Expr;

use crate::error::RouterError;
use crate::expr;
use crate::host::{HostPattern, HostTable};
use crate::method::MethodSet;
use crate::path_tree::{PathTree, Pattern, RouteId};
use crate::remote_addr::AddrSet;
use crate::{RequestView, RouteSpec};

/// Every route of one configuration version, compiled for matching. Immutable once built:
/// a new configuration builds a new router.
#[derive(Debug)]
pub struct Router<T> {
    routes: Vec<Route<T>>,
    by_host: HostTable<PathTree>,
    any_host: PathTree,
}

/// What is checked once a route's host and path match.
#[derive(Debug)]
struct Route<T> {
    methods: MethodSet,
    remote_addrs: AddrSet,
    vars: Option<Expr>,
    value: T,
}

/// A route's patterns, parsed before anything is inserted so that errors come in route order.
struct Patterns {
    uris: Vec<Pattern>,
    hosts: Vec<HostPattern>,
}

impl<T> Router<T> {
    /// Compiles `routes`; the first bad field (in route order) is the error.
    pub fn new(specs: Vec<RouteSpec<T>>) -> Result<Self, RouterError> {
        let mut routes = Vec::with_capacity(specs.len());
        let mut patterns = Vec::with_capacity(specs.len());
        let mut priorities = Vec::with_capacity(specs.len());
        for (index, spec) in specs.into_iter().enumerate() {
            patterns.push(Patterns::parse(index, &spec)?);
            priorities.push(spec.priority);
            routes.push(Route {
                methods: MethodSet::parse(&spec.methods)
                    .map_err(|(i, msg)| RouterError::new(index, format!("methods[{i}]"), msg))?,
                remote_addrs: AddrSet::parse(&spec.remote_addrs).map_err(|(i, msg)| {
                    RouterError::new(index, format!("remote_addrs[{i}]"), msg)
                })?,
                vars: spec.vars,
                value: spec.value,
            });
        }

        // Trees keep each pattern's routes in insertion order, so insert in preference order:
        // higher priority first, then earlier in the list.
        let mut order: Vec<RouteId> = (0..routes.len()).collect();
        order.sort_by_key(|&id| (Reverse(priorities[id]), id));
        let mut by_host = HostTable::<PathTree>::default();
        let mut any_host = PathTree::default();
        for id in order {
            let Patterns { uris, hosts } = &patterns[id];
            if hosts.is_empty() {
                uris.iter().for_each(|uri| any_host.insert(uri, id));
            }
            for host in hosts {
                let tree = by_host.entry(host);
                uris.iter().for_each(|uri| tree.insert(uri, id));
            }
        }
        Ok(Self {
            routes,
            by_host,
            any_host,
        })
    }

    /// The value of the first route, in precedence order, that matches `req`:
    /// host groups (exact host, then wildcards by decreasing suffix), then routes without
    /// hosts; within a group, the most specific path, then priority, then list order.
    pub fn find(&self, req: &impl RequestView) -> Option<&T> {
        let path = req.path();
        let method = MethodSet::bit(req.method());
        let remote_addr = req.remote_addr();
        let mut accept = |id: RouteId| {
            let route = &self.routes[id];
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
            .map(|id| &self.routes[id].value)
    }

    /// The number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

impl Patterns {
    fn parse<T>(index: usize, spec: &RouteSpec<T>) -> Result<Self, RouterError> {
        if spec.uris.is_empty() {
            return Err(RouterError::new(
                index,
                "uris",
                "a route needs at least one uri",
            ));
        }
        let uris = spec
            .uris
            .iter()
            .enumerate()
            .map(|(i, uri)| {
                Pattern::parse(uri)
                    .map_err(|msg| RouterError::new(index, format!("uris[{i}]"), msg))
            })
            .collect::<Result<_, _>>()?;
        let hosts = spec
            .hosts
            .iter()
            .enumerate()
            .map(|(i, host)| {
                HostPattern::parse(host)
                    .map_err(|msg| RouterError::new(index, format!("hosts[{i}]"), msg))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { uris, hosts })
    }
}
