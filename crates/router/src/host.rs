//! Host groups: the routes of each host pattern, found by hashing, never by scanning.
//!
//! Exact hosts are one map lookup. A wildcard `*.example.com` is stored under `.example.com`,
//! and a request for `a.b.example.com` probes `.b.example.com`, then `.example.com`, then `.com`:
//! one lookup per label, longest suffix first, and never the bare `example.com`.

use std::collections::HashMap;
use std::sync::Arc;

/// A parsed `hosts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(Arc<str>),
    /// The suffix with its leading dot: `.example.com` for `*.example.com`.
    Wildcard(Arc<str>),
}

impl HostPattern {
    pub fn parse(host: &str) -> Result<Self, String> {
        let lower = host.to_ascii_lowercase();
        let (pattern, name) = match lower.strip_prefix('*') {
            Some(suffix) => (
                HostPattern::Wildcard(suffix.into()),
                suffix.strip_prefix('.'),
            ),
            None => (
                HostPattern::Exact(lower.as_str().into()),
                Some(lower.as_str()),
            ),
        };
        match name {
            Some(name) if !name.is_empty() && !name.contains('*') && !name.starts_with('.') => {
                Ok(pattern)
            }
            _ => Err(format!(
                "`{host}` is not a host name (a leading `*.` is the only wildcard)"
            )),
        }
    }
}

/// Something per host pattern (the router keeps a path tree per host). Keys are shared, so
/// a clone copies no host name.
#[derive(Debug, Clone)]
pub struct HostTable<V> {
    exact: HashMap<Arc<str>, V>,
    wildcard: HashMap<Arc<str>, V>,
}

impl<V> Default for HostTable<V> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        }
    }
}

impl<V: Default> HostTable<V> {
    pub fn entry(&mut self, pattern: &HostPattern) -> &mut V {
        match pattern {
            HostPattern::Exact(host) => self.exact.entry(host.clone()).or_default(),
            HostPattern::Wildcard(suffix) => self.wildcard.entry(suffix.clone()).or_default(),
        }
    }
}

impl<V> HostTable<V> {
    /// Changes the value of `pattern`, if there is one, and drops it when `change` says it is
    /// left empty.
    pub fn remove_if(&mut self, pattern: &HostPattern, change: impl FnOnce(&mut V) -> bool) {
        let (map, key) = match pattern {
            HostPattern::Exact(host) => (&mut self.exact, host),
            HostPattern::Wildcard(suffix) => (&mut self.wildcard, suffix),
        };
        if map.get_mut(key).is_some_and(change) {
            map.remove(key);
        }
    }
}

impl<V> HostTable<V> {
    /// The groups whose pattern matches `host` (lowercase), most specific first: the exact host,
    /// then wildcards from the longest suffix to the shortest.
    pub fn matching<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a V> + 'a {
        let wildcards = (!self.wildcard.is_empty())
            .then(|| {
                host.match_indices('.')
                    .filter(|&(i, _)| i > 0)
                    .filter_map(|(i, _)| self.wildcard.get(&host[i..]))
            })
            .into_iter()
            .flatten();
        self.exact.get(host).into_iter().chain(wildcards)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(patterns: &[&str]) -> HostTable<Vec<&'static str>> {
        let mut t = HostTable::<Vec<&'static str>>::default();
        for p in patterns {
            let name: &'static str = Box::leak(p.to_string().into_boxed_str());
            t.entry(&HostPattern::parse(p).unwrap()).push(name);
        }
        t
    }

    fn matching(t: &HostTable<Vec<&'static str>>, host: &str) -> Vec<&'static str> {
        t.matching(host).flatten().copied().collect()
    }

    #[test]
    fn exact_then_longest_wildcard_first() {
        let t = table(&[
            "*.example.com",
            "a.b.example.com",
            "*.b.example.com",
            "*.com",
            "Other.Org",
        ]);
        assert_eq!(
            matching(&t, "a.b.example.com"),
            [
                "a.b.example.com",
                "*.b.example.com",
                "*.example.com",
                "*.com"
            ]
        );
        assert_eq!(matching(&t, "x.example.com"), ["*.example.com", "*.com"]);
        assert_eq!(matching(&t, "other.org"), ["Other.Org"]);
        assert!(matching(&t, "nothing.net").is_empty());
    }

    #[test]
    fn wildcard_does_not_match_the_bare_domain() {
        let t = table(&["*.example.com"]);
        assert!(matching(&t, "example.com").is_empty());
        assert!(matching(&t, ".example.com").is_empty());
        assert!(matching(&t, "badexample.com").is_empty());
        assert_eq!(matching(&t, "deep.sub.example.com"), ["*.example.com"]);
    }

    #[test]
    fn bad_patterns_are_rejected() {
        for bad in [
            "",
            "*",
            "*.",
            "*example.com",
            "a.*.com",
            "**.a.com",
            ".a.com",
        ] {
            assert!(
                HostPattern::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
        assert_eq!(
            HostPattern::parse("A.Com"),
            Ok(HostPattern::Exact("a.com".into()))
        );
        assert_eq!(
            HostPattern::parse("*.A.Com"),
            Ok(HostPattern::Wildcard(".a.com".into()))
        );
    }
}
