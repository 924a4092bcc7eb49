//! The labels a route's requests are counted under, made once when the route is compiled so
//! that counting a request copies no string.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use pylon_plugin::MetricNames;

/// A route's labels both ways `prometheus` may name it.
pub(crate) struct RouteLabels {
    ids: LabelSet,
    names: LabelSet,
}

/// The labels of one route (APISIX's `route`, `service`, `matched_uri`, `matched_host`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct LabelSet {
    pub route: Arc<str>,
    pub service: Arc<str>,
    /// The route's `uri` (its `uris`, comma-separated: the router does not say which one
    /// matched).
    pub matched_uri: Arc<str>,
    /// Its hosts (or its service's) likewise; empty for a route on any host.
    pub matched_host: Arc<str>,
    /// Of the four above; computed once, and the same for equal labels of any version.
    pub hash: u64,
}

/// What a route is named by, with its service's.
pub(crate) struct Named<'a> {
    pub id: Arc<str>,
    pub name: Option<&'a str>,
}

impl RouteLabels {
    /// The labels of `route` (on `service`, if it has one), matching `uris` and `hosts`.
    pub fn new(
        route: Named<'_>,
        service: Option<Named<'_>>,
        uris: &[String],
        hosts: &[String],
    ) -> Self {
        let matched_uri: Arc<str> = Arc::from(uris.join(","));
        let matched_host: Arc<str> = Arc::from(hosts.join(","));
        let by_name = |named: &Named<'_>| match named.name.filter(|n| !n.is_empty()) {
            Some(name) => Arc::from(name),
            None => named.id.clone(),
        };
        let service_id = service
            .as_ref()
            .map_or_else(|| Arc::from(""), |s| s.id.clone());
        let service_name = service.as_ref().map_or_else(|| Arc::from(""), by_name);
        RouteLabels {
            ids: LabelSet::new(
                route.id.clone(),
                service_id,
                matched_uri.clone(),
                matched_host.clone(),
            ),
            names: LabelSet::new(by_name(&route), service_name, matched_uri, matched_host),
        }
    }

    /// What requests no route matched count under: one set of empty labels, whatever their
    /// path or host, so that a scan of random paths adds no series.
    pub fn unmatched() -> Self {
        let empty: Arc<str> = Arc::from("");
        let set = || LabelSet::new(empty.clone(), empty.clone(), empty.clone(), empty.clone());
        RouteLabels {
            ids: set(),
            names: set(),
        }
    }

    pub fn get(&self, names: MetricNames) -> &LabelSet {
        match names {
            MetricNames::Ids => &self.ids,
            MetricNames::Names => &self.names,
        }
    }
}

impl LabelSet {
    fn new(
        route: Arc<str>,
        service: Arc<str>,
        matched_uri: Arc<str>,
        matched_host: Arc<str>,
    ) -> Self {
        // SipHash with fixed keys: equal labels hash alike in every version and worker.
        let mut hasher = std::hash::DefaultHasher::new();
        (&route, &service, &matched_uri, &matched_host).hash(&mut hasher);
        LabelSet {
            route,
            service,
            matched_uri,
            matched_host,
            hash: hasher.finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fall_back_to_ids_and_patterns_are_listed() {
        let labels = RouteLabels::new(
            Named {
                id: Arc::from("r1"),
                name: Some("orders"),
            },
            Some(Named {
                id: Arc::from("s1"),
                name: Some(""),
            }),
            &["/orders".into(), "/orders/*".into()],
            &[],
        );
        let ids = labels.get(MetricNames::Ids);
        assert_eq!((&*ids.route, &*ids.service), ("r1", "s1"));
        assert_eq!(
            (&*ids.matched_uri, &*ids.matched_host),
            ("/orders,/orders/*", "")
        );
        let names = labels.get(MetricNames::Names);
        assert_eq!((&*names.route, &*names.service), ("orders", "s1"));
        assert_ne!(ids.hash, names.hash);
    }

    #[test]
    fn equal_labels_of_two_versions_hash_alike() {
        let make = || {
            let id = Arc::from("r1");
            RouteLabels::new(Named { id, name: None }, None, &["/a".into()], &[])
        };
        let (first, second) = (make(), make());
        assert_eq!(first.get(MetricNames::Ids), second.get(MetricNames::Ids));
    }
}
