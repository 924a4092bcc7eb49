//! `consumer-restriction`: lets a request through by who sent it (its consumer or consumer
//! group) or by where it goes (its route or service), from allow and deny lists.

use std::sync::Arc;

use pylon_model::FieldError;
use pylon_plugin::{Phases, Plugin, Reply, RequestCtx, Step};
use pylon_router::RequestView;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{parse, schema_of};
use crate::descriptor::{BuildEnv, Descriptor};

pub(crate) const DESCRIPTOR: Descriptor = Descriptor {
    name: "consumer-restriction",
    priority: 2400,
    schema: schema_of::<ConsumerRestrictionConfig>,
    build,
    credential: None,
    metadata: None,
};

/// `consumer-restriction`: at least one of `whitelist`, `blacklist` and
/// `allowed_by_methods`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("anyOf" = [
    {"required": ["whitelist"]},
    {"required": ["blacklist"]},
    {"required": ["allowed_by_methods"]}
]))]
struct ConsumerRestrictionConfig {
    /// What the lists name.
    #[serde(default, rename = "type")]
    kind: Subject,
    /// Only these may pass (besides what `allowed_by_methods` lets through).
    #[schemars(length(min = 1))]
    whitelist: Option<Vec<String>>,
    /// These may not pass; checked first.
    #[schemars(length(min = 1))]
    blacklist: Option<Vec<String>>,
    /// The methods each value may use; a value not listed here may use any. Applies to
    /// values the whitelist does not let through.
    allowed_by_methods: Option<Vec<MethodsFor>>,
    /// The status of a refusal.
    #[serde(default = "default_rejected_code")]
    #[schemars(range(min = 200, max = 599))]
    rejected_code: u16,
    /// The message of a refusal, instead of `The <type> is forbidden.`.
    rejected_msg: Option<String>,
}

fn default_rejected_code() -> u16 {
    403
}

/// What a request is restricted by.
#[derive(Debug, Default, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum Subject {
    /// The consumer an authentication plugin identified.
    #[default]
    ConsumerName,
    /// The group of that consumer.
    ConsumerGroupId,
    /// The route the request matched.
    RouteId,
    /// The service of that route.
    ServiceId,
}

impl Subject {
    fn as_str(self) -> &'static str {
        match self {
            Subject::ConsumerName => "consumer_name",
            Subject::ConsumerGroupId => "consumer_group_id",
            Subject::RouteId => "route_id",
            Subject::ServiceId => "service_id",
        }
    }

    /// The request's value of this subject; `None` when it has none (no consumer, no
    /// service).
    fn of<'c>(self, ctx: &'c RequestCtx<'_>) -> Option<&'c str> {
        match self {
            Subject::ConsumerName => ctx.consumer().map(|c| c.username()),
            Subject::ConsumerGroupId => ctx.consumer()?.group_id(),
            Subject::RouteId => Some(ctx.route_id()),
            Subject::ServiceId => ctx.service_id(),
        }
    }
}

/// The methods one consumer (or route, ...) may use.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct MethodsFor {
    /// The value of `type` this applies to.
    user: String,
    /// The methods it may use.
    #[schemars(length(min = 1))]
    methods: Vec<Method>,
}

/// The methods APISIX knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
enum Method {
    Get,
    Post,
    Put,
    Delete,
    Patch,
    Head,
    Options,
    Connect,
    Trace,
    Purge,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Patch => "PATCH",
            Method::Head => "HEAD",
            Method::Options => "OPTIONS",
            Method::Connect => "CONNECT",
            Method::Trace => "TRACE",
            Method::Purge => "PURGE",
        }
    }
}

fn build(config: &Value, _env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    let config: ConsumerRestrictionConfig = parse(config)?;
    let lists = [
        ("whitelist", config.whitelist.as_ref().map(Vec::len)),
        ("blacklist", config.blacklist.as_ref().map(Vec::len)),
    ];
    for (field, len) in lists {
        if len == Some(0) {
            return Err(FieldError::new(field, "must not be empty"));
        }
    }
    if config.whitelist.is_none()
        && config.blacklist.is_none()
        && config.allowed_by_methods.is_none()
    {
        return Err(FieldError::new(
            "",
            "one of `whitelist`, `blacklist` or `allowed_by_methods` is required",
        ));
    }
    for (i, entry) in config.allowed_by_methods.iter().flatten().enumerate() {
        if entry.methods.is_empty() {
            return Err(FieldError::new(
                format!("allowed_by_methods[{i}].methods"),
                "must not be empty",
            ));
        }
    }
    if !(200..=599).contains(&config.rejected_code) {
        return Err(FieldError::new(
            "rejected_code",
            "must be an HTTP status from 200 to 599",
        ));
    }
    let rejected_msg = config
        .rejected_msg
        .clone()
        .unwrap_or_else(|| format!("The {} is forbidden.", config.kind.as_str()));
    Ok(Arc::new(ConsumerRestriction {
        rejected: Reply::message(config.rejected_code, &rejected_msg),
        unidentified: Reply::message(
            401,
            &format!(
                "The request is rejected, please check the {} for this request",
                config.kind.as_str()
            ),
        ),
        config,
    }))
}

struct ConsumerRestriction {
    config: ConsumerRestrictionConfig,
    /// The reply to a request the lists refuse.
    rejected: Reply,
    /// The reply to a request without the value the lists are about.
    unidentified: Reply,
}

impl ConsumerRestriction {
    /// APISIX's order: the blacklist refuses, the whitelist lets through, and what the
    /// whitelist does not name is refused; without a whitelist, `allowed_by_methods` limits
    /// the values it names to their methods.
    fn allows(&self, value: &str, method: &str) -> bool {
        let listed = |list: &Option<Vec<String>>| list.iter().flatten().any(|v| v == value);
        if listed(&self.config.blacklist) {
            return false;
        }
        if self.config.whitelist.is_some() {
            return listed(&self.config.whitelist);
        }
        self.config
            .allowed_by_methods
            .iter()
            .flatten()
            .find(|entry| entry.user == value)
            .is_none_or(|entry| entry.methods.iter().any(|m| m.as_str() == method))
    }
}

impl Plugin for ConsumerRestriction {
    fn name(&self) -> &'static str {
        DESCRIPTOR.name
    }

    fn phases(&self) -> Phases {
        Phases::ACCESS
    }

    fn access<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Step<'a> {
        let Some(value) = self.config.kind.of(ctx) else {
            return Step::Reply(self.unidentified.clone());
        };
        if self.allows(value, ctx.method()) {
            Step::Continue
        } else {
            Step::Reply(self.rejected.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use pylon_plugin::{Chain, Consumer};
    use serde_json::json;

    use super::*;
    use crate::testing::{body, build as build_plugin, refusal, replied, TestRequest};

    fn plugin(config: Value) -> Arc<dyn Plugin> {
        build_plugin(&DESCRIPTOR, config).expect("a valid configuration")
    }

    /// Runs access for `method` on route `r1` of service `s1` (or no service), as
    /// `consumer` of `group`: `None` when it passes, else the status and message.
    fn access(
        plugin: &dyn Plugin,
        method: &str,
        service: Option<&str>,
        consumer: Option<(&str, Option<&str>)>,
    ) -> Option<(u16, Value)> {
        let request = TestRequest::get("/").method(method);
        let mut ctx = RequestCtx::new(&request, "r1", service);
        if let Some((name, group)) = consumer {
            let consumer = Consumer::new(name.into(), group.map(Into::into), Chain::default());
            ctx.set_consumer(Arc::new(consumer));
        }
        replied(plugin.access(&mut ctx)).map(|r| (r.status, body(&r)))
    }

    fn as_user(plugin: &dyn Plugin, method: &str, name: &str) -> Option<(u16, Value)> {
        access(plugin, method, None, Some((name, None)))
    }

    #[test]
    fn the_whitelist_lets_through_only_whom_it_names() {
        let plugin = plugin(json!({"whitelist": ["jack"]}));
        assert_eq!(as_user(&*plugin, "GET", "jack"), None);
        let forbidden = Some((403, json!({"message": "The consumer_name is forbidden."})));
        assert_eq!(as_user(&*plugin, "GET", "rose"), forbidden);
        let anonymous = Some((
            401,
            json!({"message": "The request is rejected, please check the consumer_name for this request"}),
        ));
        assert_eq!(access(&*plugin, "GET", None, None), anonymous);
    }

    #[test]
    fn the_blacklist_refuses_whom_it_names_with_the_configured_reply() {
        let plugin = plugin(json!({
            "blacklist": ["jack"], "rejected_code": 401, "rejected_msg": "go away"
        }));
        assert_eq!(
            as_user(&*plugin, "GET", "jack"),
            Some((401, json!({"message": "go away"})))
        );
        assert_eq!(as_user(&*plugin, "GET", "rose"), None);
    }

    #[test]
    fn allowed_by_methods_limits_only_the_values_it_names() {
        let plugin = plugin(json!({
            "allowed_by_methods": [{"user": "jack", "methods": ["GET", "POST"]}]
        }));
        assert_eq!(as_user(&*plugin, "POST", "jack"), None);
        assert_eq!(as_user(&*plugin, "DELETE", "jack").map(|r| r.0), Some(403));
        assert_eq!(as_user(&*plugin, "DELETE", "rose"), None);

        // Whitelisted values skip it; the others are refused by the whitelist anyway.
        let plugin = plugin_with_whitelist();
        assert_eq!(as_user(&*plugin, "DELETE", "jack"), None);
        assert_eq!(as_user(&*plugin, "GET", "rose").map(|r| r.0), Some(403));
    }

    fn plugin_with_whitelist() -> Arc<dyn Plugin> {
        plugin(json!({
            "whitelist": ["jack"],
            "allowed_by_methods": [
                {"user": "jack", "methods": ["GET"]}, {"user": "rose", "methods": ["GET"]}
            ]
        }))
    }

    #[test]
    fn routes_services_and_groups_can_be_restricted() {
        let by_route = plugin(json!({"type": "route_id", "blacklist": ["r1"]}));
        let refused = Some((403, json!({"message": "The route_id is forbidden."})));
        assert_eq!(access(&*by_route, "GET", None, None), refused);

        let by_service = plugin(json!({"type": "service_id", "whitelist": ["s1"]}));
        assert_eq!(access(&*by_service, "GET", Some("s1"), None), None);
        assert_eq!(
            access(&*by_service, "GET", Some("s2"), None).map(|r| r.0),
            Some(403)
        );
        assert_eq!(
            access(&*by_service, "GET", None, None).map(|r| r.0),
            Some(401)
        );

        let by_group = plugin(json!({"type": "consumer_group_id", "whitelist": ["gold"]}));
        let member = |group| access(&*by_group, "GET", None, Some(("jack", group)));
        assert_eq!(member(Some("gold")), None);
        assert_eq!(member(Some("free")).map(|r| r.0), Some(403));
        assert_eq!(member(None).map(|r| r.0), Some(401));
    }

    #[test]
    fn bad_configurations_are_refused_with_their_path() {
        for (config, path) in [
            (json!({}), ""),
            (json!({"type": "consumer_name"}), ""),
            (json!({"whitelist": []}), "whitelist"),
            (json!({"blacklist": []}), "blacklist"),
            (json!({"type": "ip", "whitelist": ["a"]}), "type"),
            (
                json!({"whitelist": ["a"], "rejected_code": 199}),
                "rejected_code",
            ),
            (
                json!({"whitelist": ["a"], "rejected_code": 600}),
                "rejected_code",
            ),
            (
                json!({"allowed_by_methods": [{"user": "a", "methods": []}]}),
                "allowed_by_methods[0].methods",
            ),
            (
                json!({"allowed_by_methods": [{"user": "a", "methods": ["FETCH"]}]}),
                "allowed_by_methods[0].methods[0]",
            ),
        ] {
            assert_eq!(refusal(&DESCRIPTOR, config.clone()).path, path, "{config}");
        }
    }
}
