//! A segment trie of path patterns: the lookup walks the request path once, segment by segment,
//! so its cost follows the path's length and not the number of routes.
//!
//! At each node the walk tries, in order, the literal child for the next segment, then the
//! parameter child, then the prefixes ending at this node (longest first), backtracking when a
//! branch yields no accepted route. That order is the precedence: a route that matches more of
//! the path literally wins, and `exact > :param > prefix*` where they diverge.

use std::collections::HashMap;
use std::sync::Arc;

/// Index of a route in the router's table.
pub(crate) type RouteId = usize;

/// A parsed `uri`: `/a/:id/b` or `/a/b*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    segments: Vec<Segment>,
    /// For `/a/b*`: `Some("b")`, matched against the start of what follows `/a/`.
    prefix: Option<Box<str>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    /// `:name`: any one non-empty segment. The name does not take part in matching.
    Param,
}

impl Pattern {
    pub(crate) fn parse(uri: &str) -> Result<Self, String> {
        let Some(body) = uri.strip_prefix('/') else {
            return Err(format!("`{uri}` must start with `/`"));
        };
        let (body, is_prefix) = match body.strip_suffix('*') {
            Some(body) => (body, true),
            None => (body, false),
        };
        if body.contains('*') {
            return Err(format!("`{uri}`: `*` is allowed only at the end"));
        }
        // `split` yields at least one item; for a prefix the last one is the partial segment.
        let mut parts: Vec<&str> = body.split('/').collect();
        let prefix = if is_prefix { parts.pop() } else { None };
        if let Some(partial) = prefix.filter(|p| p.starts_with(':')) {
            return Err(format!(
                "`{uri}`: a parameter (`{partial}`) cannot end in `*`"
            ));
        }
        let segments = parts
            .into_iter()
            .map(|part| match part.strip_prefix(':') {
                Some("") => Err(format!("`{uri}`: a `:` parameter needs a name")),
                Some(_) => Ok(Segment::Param),
                None => Ok(Segment::Literal(part.into())),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            segments,
            prefix: prefix.map(Into::into),
        })
    }
}

/// Routes by path pattern. Within one pattern, routes are kept in precedence order, as the
/// caller's `precedes` says when each is inserted.
///
/// A tree is persistent: cloning it is one reference count, and inserting into or removing from
/// a clone copies only the nodes on the changed pattern's path. That is what lets a
/// configuration change touch a handful of nodes however many routes there are, while the
/// workers keep reading the version they hold.
#[derive(Debug, Default, Clone)]
pub(crate) struct PathTree {
    root: Arc<Node>,
}

#[derive(Debug, Default, Clone)]
struct Node {
    literals: HashMap<Box<str>, Arc<Node>>,
    param: Option<Arc<Node>>,
    /// Routes whose pattern ends exactly here.
    exact: Vec<RouteId>,
    /// Prefix patterns whose last, partial segment starts here, by that partial segment.
    prefixes: HashMap<Box<str>, Vec<RouteId>>,
    /// The distinct lengths of the keys of `prefixes`, longest first: the lookup probes the next
    /// segment's prefixes of these lengths, so many `/name*` routes at one node cost no scan.
    prefix_lens: Vec<usize>,
}

impl PathTree {
    /// Adds `route` under `pattern`, before the first route of that pattern it `precedes`.
    pub(crate) fn insert(
        &mut self,
        pattern: &Pattern,
        route: RouteId,
        precedes: impl Fn(RouteId, RouteId) -> bool,
    ) {
        let mut node = Arc::make_mut(&mut self.root);
        for segment in &pattern.segments {
            let child = match segment {
                Segment::Literal(s) => {
                    // Look up before inserting: the key is cloned only for a new node.
                    if !node.literals.contains_key(s) {
                        node.literals.insert(s.clone(), Arc::default());
                    }
                    node.literals.get_mut(s).expect("inserted above")
                }
                Segment::Param => node.param.get_or_insert_with(Default::default),
            };
            node = Arc::make_mut(child);
        }
        let routes = match &pattern.prefix {
            None => &mut node.exact,
            Some(partial) => {
                if let Err(i) = node
                    .prefix_lens
                    .binary_search_by(|len| partial.len().cmp(len))
                {
                    node.prefix_lens.insert(i, partial.len());
                }
                node.prefixes.entry(partial.clone()).or_default()
            }
        };
        // A route listing the same uri twice needs one entry.
        if !routes.contains(&route) {
            let at = routes
                .iter()
                .position(|&other| precedes(route, other))
                .unwrap_or(routes.len());
            routes.insert(at, route);
        }
    }

    /// Takes `route` out from under `pattern`, and drops the nodes it leaves empty.
    pub(crate) fn remove(&mut self, pattern: &Pattern, route: RouteId) {
        Arc::make_mut(&mut self.root).remove(&pattern.segments, pattern.prefix.as_deref(), route);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.root.is_empty()
    }

    /// The first route, in precedence order, whose pattern matches `path` and that `accept`s.
    pub(crate) fn find(
        &self,
        path: &str,
        accept: &mut impl FnMut(RouteId) -> bool,
    ) -> Option<RouteId> {
        self.root.find(path, accept)
    }
}

impl Node {
    /// `rest` is what follows the segments consumed so far: empty, or starting with `/`.
    /// Recursion depth is bounded by the deepest pattern, not by the request.
    fn find(&self, rest: &str, accept: &mut impl FnMut(RouteId) -> bool) -> Option<RouteId> {
        let Some(tail) = rest.strip_prefix('/') else {
            // Anything else than the end (`OPTIONS *`, an absolute URI) matches no pattern.
            return if rest.is_empty() {
                first(&self.exact, accept)
            } else {
                None
            };
        };
        let (segment, after) = tail.find('/').map_or((tail, ""), |i| tail.split_at(i));
        if let Some(child) = self.literals.get(segment) {
            if let Some(route) = child.find(after, accept) {
                return Some(route);
            }
        }
        if let Some(param) = self.param.as_deref().filter(|_| !segment.is_empty()) {
            if let Some(route) = param.find(after, accept) {
                return Some(route);
            }
        }
        // A partial segment holds no `/`, so it can only be a prefix of this segment.
        self.prefix_lens
            .iter()
            .filter_map(|&len| segment.get(..len))
            .filter_map(|partial| self.prefixes.get(partial))
            .find_map(|routes| first(routes, accept))
    }

    /// Removes `route` from the pattern `segments`+`prefix` below this node; says whether
    /// the node is left empty, for its parent to drop it.
    fn remove(&mut self, segments: &[Segment], prefix: Option<&str>, route: RouteId) -> bool {
        match segments.split_first() {
            Some((Segment::Literal(s), rest)) => {
                if let Some(child) = self.literals.get_mut(s) {
                    if Arc::make_mut(child).remove(rest, prefix, route) {
                        self.literals.remove(s);
                    }
                }
            }
            Some((Segment::Param, rest)) => {
                if let Some(child) = &mut self.param {
                    if Arc::make_mut(child).remove(rest, prefix, route) {
                        self.param = None;
                    }
                }
            }
            None => match prefix {
                None => self.exact.retain(|&r| r != route),
                Some(partial) => {
                    if let Some(routes) = self.prefixes.get_mut(partial) {
                        routes.retain(|&r| r != route);
                        if routes.is_empty() {
                            self.prefixes.remove(partial);
                            if !self.prefixes.keys().any(|p| p.len() == partial.len()) {
                                self.prefix_lens.retain(|&len| len != partial.len());
                            }
                        }
                    }
                }
            },
        }
        self.is_empty()
    }

    fn is_empty(&self) -> bool {
        self.literals.is_empty()
            && self.param.is_none()
            && self.exact.is_empty()
            && self.prefixes.is_empty()
    }
}

fn first(routes: &[RouteId], accept: &mut impl FnMut(RouteId) -> bool) -> Option<RouteId> {
    routes.iter().copied().find(|&route| accept(route))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(uris: &[&str]) -> PathTree {
        let mut tree = PathTree::default();
        for (id, uri) in uris.iter().enumerate() {
            tree.insert(&Pattern::parse(uri).unwrap(), id, |_, _| false);
        }
        tree
    }

    /// The pattern that matches `path` first, accepting every route.
    fn lookup<'a>(uris: &[&'a str], path: &str) -> Option<&'a str> {
        tree(uris).find(path, &mut |_| true).map(|id| uris[id])
    }

    #[test]
    fn exact_paths_match_only_themselves() {
        let uris = ["/", "/a", "/a/", "/a/b"];
        assert_eq!(lookup(&uris, "/"), Some("/"));
        assert_eq!(lookup(&uris, "/a"), Some("/a"));
        assert_eq!(lookup(&uris, "/a/"), Some("/a/"));
        assert_eq!(lookup(&uris, "/a/b"), Some("/a/b"));
        assert_eq!(lookup(&uris, "/a/b/"), None);
        assert_eq!(lookup(&uris, "/ab"), None);
        assert_eq!(lookup(&uris, ""), None);
        assert_eq!(lookup(&uris, "*"), None);
    }

    #[test]
    fn prefixes_follow_apisix_character_prefixes() {
        let uris = ["/a/*", "/b*", "/*"];
        assert_eq!(lookup(&uris, "/a/"), Some("/a/*"));
        assert_eq!(lookup(&uris, "/a/x/y"), Some("/a/*"));
        // As APISIX: `/a/*` is the character prefix `/a/`, which `/a` lacks.
        assert_eq!(lookup(&uris, "/a"), Some("/*"));
        assert_eq!(lookup(&uris, "/b"), Some("/b*"));
        assert_eq!(lookup(&uris, "/bcd/e"), Some("/b*"));
        assert_eq!(lookup(&uris, "/"), Some("/*"));
        assert_eq!(lookup(&["/a/*"], "/a"), None);
    }

    #[test]
    fn longer_prefix_before_shorter() {
        let uris = [
            "/blog/foo/*",
            "/blog/foo/a/*",
            "/blog/foo/c/*",
            "/blog/foo/bar",
            "/blog/f*",
            "/blog/fo*",
        ];
        assert_eq!(lookup(&uris, "/blog/foo/bar"), Some("/blog/foo/bar"));
        assert_eq!(lookup(&uris, "/blog/foo/a/b/c"), Some("/blog/foo/a/*"));
        assert_eq!(lookup(&uris, "/blog/foo/c/d"), Some("/blog/foo/c/*"));
        assert_eq!(lookup(&uris, "/blog/foo/gloo"), Some("/blog/foo/*"));
        assert_eq!(lookup(&uris, "/blog/foo"), Some("/blog/fo*"));
        assert_eq!(lookup(&uris, "/blog/fa"), Some("/blog/f*"));
        assert_eq!(lookup(&uris, "/blog/bar"), None);
    }

    #[test]
    fn params_match_one_non_empty_segment() {
        let uris = ["/user/:id/profile", "/user/:id"];
        assert_eq!(lookup(&uris, "/user/42/profile"), Some("/user/:id/profile"));
        assert_eq!(lookup(&uris, "/user/42"), Some("/user/:id"));
        assert_eq!(lookup(&uris, "/user//profile"), None);
        assert_eq!(lookup(&uris, "/user/"), None);
        assert_eq!(lookup(&uris, "/user/42/"), None);
        assert_eq!(lookup(&uris, "/user/42/profile/x"), None);
    }

    #[test]
    fn exact_before_param_before_prefix() {
        let uris = ["/a/*", "/a/:id", "/a/me"];
        assert_eq!(lookup(&uris, "/a/me"), Some("/a/me"));
        assert_eq!(lookup(&uris, "/a/you"), Some("/a/:id"));
        assert_eq!(lookup(&uris, "/a/you/x"), Some("/a/*"));
    }

    #[test]
    fn backtracks_when_the_more_specific_branch_rejects() {
        let uris = ["/a/b/c", "/a/:x/c", "/a/*"];
        let t = tree(&uris);
        assert_eq!(t.find("/a/b/c", &mut |_| true), Some(0));
        assert_eq!(t.find("/a/b/c", &mut |id| id != 0), Some(1));
        assert_eq!(t.find("/a/b/c", &mut |id| id == 2), Some(2));
        assert_eq!(t.find("/a/b/c", &mut |_| false), None);
    }

    #[test]
    fn routes_of_one_pattern_keep_insertion_order() {
        let mut t = PathTree::default();
        for id in [7, 3, 5] {
            t.insert(&Pattern::parse("/same").unwrap(), id, |_, _| false);
            t.insert(&Pattern::parse("/p/*").unwrap(), id, |_, _| false);
        }
        let mut seen = Vec::new();
        assert_eq!(
            t.find("/same", &mut |id| {
                seen.push(id);
                false
            }),
            None
        );
        assert_eq!(seen, [7, 3, 5]);
        assert_eq!(t.find("/p/x", &mut |id| id == 5), Some(5));
    }

    #[test]
    fn bad_patterns_say_why() {
        assert_eq!(
            Pattern::parse("a/b").unwrap_err(),
            "`a/b` must start with `/`"
        );
        assert_eq!(
            Pattern::parse("/a/*/b").unwrap_err(),
            "`/a/*/b`: `*` is allowed only at the end"
        );
        assert_eq!(
            Pattern::parse("/a/:/b").unwrap_err(),
            "`/a/:/b`: a `:` parameter needs a name"
        );
        assert_eq!(
            Pattern::parse("/a/:id*").unwrap_err(),
            "`/a/:id*`: a parameter (`:id`) cannot end in `*`"
        );
    }
}
