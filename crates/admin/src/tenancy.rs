//! Tenants: every resource belongs to one (its `tenant_id`, or `default` without one), a
//! tenant's callers see and change only its resources, a resource refers only to its own
//! tenant's, and a route may not take traffic another tenant's route already serves.
//!
//! The platform's own resources (global rules, plugin metadata, secrets) act on every tenant's
//! traffic: only the platform's callers reach them.

use pylon_model::{Key, Kind, DEFAULT_TENANT, TENANT_FIELD};
use pylon_store::{Entry, View};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::auth::forbidden;
use crate::identity::Caller;
use crate::references;
use crate::response::Reply;

/// A tenant as stored under `tenants/<id>`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub(crate) struct Tenant {
    /// Whether its changes are reviewed before they are published.
    #[serde(default)]
    pub review: bool,
}

impl Tenant {
    /// The tenant `id`, if it exists (the default tenant always does, without review).
    pub fn from_view(view: &View, id: &str) -> Option<Tenant> {
        match view.entries.get(&Key::new(Kind::Tenants, id)) {
            Some(entry) => Some(serde_json::from_value(entry.value.clone()).unwrap_or_default()),
            None => (id == DEFAULT_TENANT).then(Tenant::default),
        }
    }

    /// Whether tenant `id` exists and reviews its changes before they are published.
    pub fn requires_review(view: &View, id: &str) -> bool {
        Tenant::from_view(view, id).is_some_and(|t| t.review)
    }
}

/// The tenant a write by `caller` is for: the caller's own (which a `stated` one must be), or
/// for the platform's callers the `stated` one, else `otherwise`.
pub(crate) fn tenant_for(
    caller: &Caller,
    stated: Option<String>,
    otherwise: &str,
) -> Result<String, Reply> {
    match (&caller.tenant, stated) {
        (Some(own), Some(stated)) if *own != stated => Err(Reply::bad_request(format!(
            "invalid configuration: tenant_id: must be `{own}`, the caller's tenant"
        ))),
        (Some(own), _) => Ok(own.clone()),
        (None, stated) => Ok(stated.unwrap_or_else(|| otherwise.to_owned())),
    }
}

/// Refuses a `tenant` that does not exist, naming the `field` that gave it.
pub(crate) fn require_tenant(view: &View, tenant: &str, field: &str) -> Result<(), Reply> {
    match Tenant::from_view(view, tenant) {
        Some(_) => Ok(()),
        None => Err(Reply::bad_request(format!(
            "invalid configuration: {field}: no tenant `{tenant}`"
        ))),
    }
}

/// Whether only the platform's callers reach resources of `kind`.
pub(crate) fn is_platform_kind(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::GlobalRules | Kind::PluginMetadata | Kind::Secrets
    )
}

/// The tenant a resource's value belongs to.
pub(crate) fn owner(value: &Value) -> &str {
    value[TENANT_FIELD].as_str().unwrap_or(DEFAULT_TENANT)
}

/// Refuses a caller of one tenant the platform's kinds.
pub(crate) fn check_kind(caller: &Caller, kind: Kind) -> Result<(), Reply> {
    if caller.tenant.is_some() && is_platform_kind(kind) {
        return Err(forbidden(format!(
            "{kind} act on every tenant's traffic: only the platform's users reach them"
        )));
    }
    Ok(())
}

/// Whether `caller` sees the resource `value`.
pub(crate) fn visible(caller: &Caller, value: &Value) -> bool {
    caller.reaches(owner(value))
}

/// How a write reaches the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// Straight to the live configuration.
    Direct,
    /// Into a change set, reviewed before it is published.
    ChangeSet,
}

/// Settles the tenant of a write of `value` at `key` (replacing `existing`, if any) by
/// `caller`, and checks that the write keeps the tenants apart: the caller reaches both the old
/// and the new owner, the resource refers only to its own tenant's, a route takes no traffic
/// another tenant serves, and (for a direct write) no tenant involved requires review.
pub(crate) fn check_write(
    view: &View,
    caller: &Caller,
    key: &Key,
    existing: Option<&Entry>,
    value: &mut Map<String, Value>,
    via: Via,
) -> Result<(), Reply> {
    check_kind(caller, key.kind)?;
    if let Some(existing) = existing {
        check_reaches(caller, key, &existing.value)?;
    }
    if is_platform_kind(key.kind) {
        value.remove(TENANT_FIELD);
        return check_review(view, key, [], via);
    }
    let stated = match value.get(TENANT_FIELD) {
        None => None,
        Some(Value::String(tenant)) => Some(tenant.clone()),
        Some(_) => {
            return Err(Reply::bad_request(
                "invalid configuration: tenant_id: must be a string",
            ))
        }
    };
    let otherwise = existing.map_or(DEFAULT_TENANT, |e| owner(&e.value));
    let tenant = tenant_for(caller, stated, otherwise)?;
    require_tenant(view, &tenant, TENANT_FIELD)?;
    if tenant == DEFAULT_TENANT {
        value.remove(TENANT_FIELD);
    } else {
        value.insert(TENANT_FIELD.to_owned(), Value::String(tenant.clone()));
    }
    let previous = existing.map(|e| owner(&e.value));
    check_review(
        view,
        key,
        previous.into_iter().chain([tenant.as_str()]),
        via,
    )?;
    let value = Value::Object(value.clone());
    check_references(view, key, &value, &tenant)?;
    if key.kind == Kind::Routes {
        check_traffic(view, key, &value, &tenant)?;
    }
    Ok(())
}

/// Checks that `caller` may delete `existing` directly (or through a change set).
pub(crate) fn check_delete(
    view: &View,
    caller: &Caller,
    existing: &Entry,
    via: Via,
) -> Result<(), Reply> {
    check_kind(caller, existing.key.kind)?;
    check_reaches(caller, &existing.key, &existing.value)?;
    let tenant = (!is_platform_kind(existing.key.kind)).then(|| owner(&existing.value));
    check_review(view, &existing.key, tenant, via)
}

/// Checks a write of `key` in a whole configuration applied at once (the platform's): the
/// tenant it names exists, and neither it nor the tenant it had requires review.
pub(crate) fn check_applied(
    view: &View,
    key: &Key,
    before: Option<&Value>,
    after: Option<&Value>,
) -> Result<(), Reply> {
    if !key.kind.is_resource() || is_platform_kind(key.kind) {
        return Ok(());
    }
    if let Some(tenant) = after.map(owner) {
        require_tenant(view, tenant, &format!("{key}.{TENANT_FIELD}"))?;
    }
    let tenants = before.into_iter().chain(after).map(owner);
    check_review(view, key, tenants, Via::Direct)
}

fn check_reaches(caller: &Caller, key: &Key, value: &Value) -> Result<(), Reply> {
    if is_platform_kind(key.kind) || visible(caller, value) {
        Ok(())
    } else {
        Err(forbidden(format!("{key} is another tenant's")))
    }
}

/// A direct write to a tenant that requires review is refused, for every caller: such a
/// tenant's changes go through change sets.
fn check_review<'t>(
    view: &View,
    key: &Key,
    tenants: impl IntoIterator<Item = &'t str>,
    via: Via,
) -> Result<(), Reply> {
    if via == Via::ChangeSet {
        return Ok(());
    }
    for tenant in tenants {
        if Tenant::requires_review(view, tenant) {
            return Err(forbidden(format!(
                "tenant `{tenant}` requires review before publish: {key} changes through a change set (POST /pylon/admin/change_sets)"
            )));
        }
    }
    Ok(())
}

/// Every resource `value` refers to must be its tenant's; a credential's consumer too.
fn check_references(view: &View, key: &Key, value: &Value, tenant: &str) -> Result<(), Reply> {
    let mut targets = references::outgoing(key.kind, value);
    if key.kind == Kind::Credentials {
        if let Some((username, _)) = key.id.split_once("/credentials/") {
            targets.push(("consumer", Key::new(Kind::Consumers, username)));
        }
    }
    for (field, target) in targets {
        let Some(entry) = view.entries.get(&target) else {
            continue;
        };
        let target_tenant = owner(&entry.value);
        if target_tenant != tenant {
            return Err(Reply::bad_request(format!(
                "invalid configuration: {field}: {target} belongs to tenant `{target_tenant}`, and a resource of tenant `{tenant}` refers only to its own tenant's"
            )));
        }
    }
    Ok(())
}

/// What requests a route takes: its hosts (none: any), paths and methods (none: any).
struct Traffic {
    hosts: Vec<String>,
    uris: Vec<String>,
    methods: Vec<String>,
}

/// The strings of a field given as one (`uri`) or as a list (`uris`).
fn one_or_many<'v>(value: &'v Value, one: &str, many: &str) -> impl Iterator<Item = &'v str> {
    let listed = value[many].as_array().into_iter().flatten();
    listed.chain(Some(&value[one])).filter_map(Value::as_str)
}

impl Traffic {
    fn of(view: &View, route: &Value) -> Traffic {
        // Hosts and methods are matched regardless of case; paths are not.
        let folded = |value: &Value, one, many| -> Vec<String> {
            one_or_many(value, one, many)
                .map(str::to_ascii_lowercase)
                .collect()
        };
        let mut hosts = folded(route, "host", "hosts");
        if hosts.is_empty() {
            // A route without hosts takes its service's.
            let service = references::id_text(&route["service_id"])
                .and_then(|id| view.entries.get(&Key::new(Kind::Services, id)));
            if let Some(service) = service {
                hosts = folded(&service.value, "host", "hosts");
            }
        }
        Traffic {
            hosts,
            uris: one_or_many(route, "uri", "uris")
                .map(str::to_owned)
                .collect(),
            methods: folded(route, "method", "methods"),
        }
    }

    /// A path of `route` that some request shares with one of these: the cheap first test
    /// of another route.
    fn path_shared_with<'v>(&self, route: &'v Value) -> Option<&'v str> {
        one_or_many(route, "uri", "uris")
            .find(|uri| self.uris.iter().any(|mine| paths_meet(mine, uri)))
    }

    /// Requests both routes would take, described by the other route's host and path, if
    /// there are some.
    fn shared_with(&self, other: &Traffic) -> Option<String> {
        /// The other's entry that meets one of `mine` (none given: any), if they meet.
        fn meet<'a>(
            mine: &[String],
            others: &'a [String],
            same: impl Fn(&str, &str) -> bool,
        ) -> Option<Option<&'a String>> {
            match (mine.is_empty(), others.is_empty()) {
                (_, true) => Some(None),
                (true, false) => others.first().map(Some),
                (false, false) => others
                    .iter()
                    .find(|o| mine.iter().any(|m| same(m, o)))
                    .map(Some),
            }
        }
        let uri = meet(&self.uris, &other.uris, paths_meet)??;
        let host = meet(&self.hosts, &other.hosts, hosts_meet)?;
        meet(&self.methods, &other.methods, |a, b| a == b)?;
        Some(match host {
            Some(host) => format!("host `{host}` path `{uri}`"),
            None => format!("path `{uri}` on any host"),
        })
    }
}

/// Whether some request path matches both route paths: exact paths, `:name` segments (any one
/// segment) and a trailing `*` (anything after what precedes it), as the router reads them.
fn paths_meet(a: &str, b: &str) -> bool {
    match (a.strip_suffix('*'), b.strip_suffix('*')) {
        (Some(a), Some(b)) => prefix_meets(a, b) || prefix_meets(b, a),
        (Some(prefix), None) => prefix_meets(prefix, b),
        (None, Some(prefix)) => prefix_meets(prefix, a),
        (None, None) => {
            let (a, b) = (a.split('/'), b.split('/'));
            a.clone().count() == b.clone().count() && a.zip(b).all(|(x, y)| segments_meet(x, y))
        }
    }
}

/// Whether a path that `pattern` matches can start with `prefix`.
fn prefix_meets(prefix: &str, pattern: &str) -> bool {
    let mut prefix_parts = prefix.split('/').peekable();
    let mut pattern_parts = pattern.split('/');
    while let Some(part) = prefix_parts.next() {
        let last = prefix_parts.peek().is_none();
        let Some(theirs) = pattern_parts.next() else {
            // The pattern's paths end before the prefix does (`/a` against `/a/`).
            return false;
        };
        let meets = if last {
            // The prefix's last part may be cut short: `/ab*` starts `/abc`.
            theirs.starts_with(':') || theirs.starts_with(part)
        } else {
            segments_meet(part, theirs)
        };
        if !meets {
            return false;
        }
    }
    true
}

fn segments_meet(a: &str, b: &str) -> bool {
    a == b || (a.starts_with(':') && !b.is_empty()) || (b.starts_with(':') && !a.is_empty())
}

/// Whether some host matches both host patterns (a leading `*.` is any labels before).
fn hosts_meet(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(a), Some(b)) => a.ends_with(b) || b.ends_with(a),
        (Some(suffix), None) => b.ends_with(suffix),
        (None, Some(suffix)) => a.ends_with(suffix),
        (None, None) => a == b,
    }
}

/// A route of one tenant may not take requests (a host, path and method both match) that a
/// route of another tenant already serves: the refusal names that route.
fn check_traffic(view: &View, key: &Key, value: &Value, tenant: &str) -> Result<(), Reply> {
    // Without tenants every route is the default tenant's: there is no other tenant's traffic
    // to take, and the scan of every route is spared.
    if view.of_kind(Kind::Tenants).next().is_none() {
        return Ok(());
    }
    let traffic = Traffic::of(view, value);
    for other in view.of_kind(Kind::Routes) {
        let elsewhere = other.key == *key || traffic.path_shared_with(&other.value).is_none();
        if elsewhere || owner(&other.value) == tenant {
            continue;
        }
        if let Some(shared) = traffic.shared_with(&Traffic::of(view, &other.value)) {
            return Err(Reply::error(
                http::StatusCode::CONFLICT,
                format!(
                    "{shared} is served by {} of tenant `{}`: a tenant's route may not take another tenant's traffic",
                    other.key,
                    owner(&other.value)
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn paths_and_hosts_meet_as_the_router_matches_them() {
        use super::{hosts_meet, paths_meet};
        for (a, b) in [
            ("/a", "/a"),
            ("/a/*", "/a/b"),
            ("/a/*", "/a/b/c"),
            ("/a/*", "/a/:id"),
            ("/ab*", "/abc"),
            ("/a/*", "/a/b/*"),
            ("/users/:id/profile", "/users/7/profile"),
            ("/*", "/anything"),
        ] {
            assert!(paths_meet(a, b) && paths_meet(b, a), "{a} and {b}");
        }
        for (a, b) in [
            ("/a", "/b"),
            ("/a/*", "/b/c"),
            ("/a/:id", "/a/b/c"),
            ("/users/:id/profile", "/users/7/settings"),
            ("/a/b/*", "/a/c"),
            ("/a/*", "/a"),
        ] {
            assert!(!paths_meet(a, b) && !paths_meet(b, a), "{a} and {b}");
        }
        assert!(hosts_meet("*.a.com", "x.y.a.com"));
        assert!(hosts_meet("*.a.com", "*.y.a.com"));
        assert!(!hosts_meet("*.a.com", "a.com"));
        assert!(!hosts_meet("b.com", "a.com"));
    }

    use super::*;
    use serde_json::json;

    fn traffic(route: Value) -> Traffic {
        Traffic::of(&View::default(), &route)
    }

    #[test]
    fn routes_share_traffic_when_path_host_and_method_meet() {
        let a = traffic(json!({"uri": "/api/*", "hosts": ["a.com", "b.com"]}));
        let same = traffic(json!({"uris": ["/x", "/api/*"], "host": "B.com"}));
        assert_eq!(
            a.shared_with(&same).as_deref(),
            Some("host `b.com` path `/api/*`")
        );
        let any_host = traffic(json!({"uri": "/api/*"}));
        assert!(a.shared_with(&any_host).is_some());
        let other_host = traffic(json!({"uri": "/api/*", "host": "c.com"}));
        assert_eq!(a.shared_with(&other_host), None);
        let other_path = traffic(json!({"uri": "/api", "host": "a.com"}));
        assert_eq!(a.shared_with(&other_path), None);
        // Paths meet by the router's patterns, hosts by their wildcards.
        let inside = traffic(json!({"uri": "/api/orders", "host": "x.b.com"}));
        let wildcard = traffic(json!({"uri": "/api/*", "host": "*.b.com"}));
        assert_eq!(
            inside.shared_with(&wildcard).as_deref(),
            Some("host `*.b.com` path `/api/*`")
        );
        let param = traffic(json!({"uri": "/api/:what"}));
        assert!(param.shared_with(&inside).is_some());
        assert_eq!(
            param.shared_with(&traffic(json!({"uri": "/api/a/b"}))),
            None
        );
        let get = traffic(json!({"uri": "/api/*", "methods": ["GET"]}));
        let post = traffic(json!({"uri": "/api/*", "methods": ["POST"]}));
        assert_eq!(get.shared_with(&post), None);
        assert!(get.shared_with(&any_host).is_some());
    }
}
