//! `ip-restriction`: lets in only the clients of a whitelist, or keeps out those of a
//! blacklist.

use std::sync::Arc;

use pylon_model::FieldError;
use pylon_plugin::{Phases, Plugin, Reply, RequestCtx, Step};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{parse, schema_of};
use crate::descriptor::{BuildEnv, Descriptor};
use crate::ip_set::IpSet;

pub(crate) const DESCRIPTOR: Descriptor = Descriptor {
    name: "ip-restriction",
    priority: 3000,
    schema: schema_of::<IpRestrictionConfig>,
    build,
    credential: None,
    metadata: None,
};

/// Exactly one of `whitelist` and `blacklist`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct IpRestrictionConfig {
    /// The only clients let in: IP addresses and CIDRs, IPv4 or IPv6.
    #[schemars(length(min = 1))]
    whitelist: Option<Vec<String>>,
    /// The clients kept out: IP addresses and CIDRs, IPv4 or IPv6.
    #[schemars(length(min = 1))]
    blacklist: Option<Vec<String>>,
    /// The `message` of the refusal's JSON body.
    #[serde(default = "default_message")]
    #[schemars(length(min = 1, max = 1024))]
    message: String,
    /// The status a refused client gets: 403 or 404.
    #[serde(default = "default_response_code")]
    #[schemars(range(min = 403, max = 404))]
    response_code: u16,
}

fn default_message() -> String {
    "Your IP address is not allowed".into()
}

fn default_response_code() -> u16 {
    403
}

fn build(config: &Value, _env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    let config: IpRestrictionConfig = parse(config)?;
    if !(1..=1024).contains(&config.message.chars().count()) {
        return Err(FieldError::new("message", "must be 1 to 1024 characters"));
    }
    if !(403..=404).contains(&config.response_code) {
        return Err(FieldError::new("response_code", "must be 403 or 404"));
    }
    let rule = match (&config.whitelist, &config.blacklist) {
        (Some(list), None) => Rule::Allow(nonempty_set("whitelist", list)?),
        (None, Some(list)) => Rule::Deny(nonempty_set("blacklist", list)?),
        (Some(_), Some(_)) => {
            return Err(FieldError::new(
                "",
                "only one of `whitelist` and `blacklist` may be set",
            ))
        }
        (None, None) => {
            return Err(FieldError::new(
                "",
                "one of `whitelist` and `blacklist` is required",
            ))
        }
    };
    Ok(Arc::new(IpRestriction {
        rule,
        refusal: Reply::message(config.response_code, &config.message),
    }))
}

fn nonempty_set(field: &str, list: &[String]) -> Result<IpSet, FieldError> {
    if list.is_empty() {
        return Err(FieldError::new(field, "must list at least one address"));
    }
    IpSet::parse(field, list)
}

enum Rule {
    Allow(IpSet),
    Deny(IpSet),
}

struct IpRestriction {
    rule: Rule,
    /// Built once: every refusal is the same response.
    refusal: Reply,
}

impl Plugin for IpRestriction {
    fn name(&self) -> &'static str {
        DESCRIPTOR.name
    }

    fn phases(&self) -> Phases {
        Phases::ACCESS
    }

    fn access<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Step<'a> {
        // `client_ip` is the address `real-ip` (which runs in `rewrite`) found, if it did.
        let client = ctx.client_ip();
        let allowed = match &self.rule {
            Rule::Allow(set) => set.contains(client),
            Rule::Deny(set) => !set.contains(client),
        };
        if allowed {
            Step::Continue
        } else {
            Step::Reply(self.refusal.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::{build as build_plugin, refusal, replied, TestRequest};

    fn access(config: Value, request: &TestRequest) -> Option<Reply> {
        let plugin = build_plugin(&DESCRIPTOR, config).unwrap();
        let mut ctx = RequestCtx::new(request, "r1", None);
        replied(plugin.access(&mut ctx))
    }

    #[test]
    fn a_whitelist_lets_in_only_its_clients() {
        let config = json!({"whitelist": ["10.0.0.0/8", "2001:db8::/32", "192.0.2.9"]});
        for client in ["10.1.2.3", "2001:db8::5", "192.0.2.9", "::ffff:10.0.0.1"] {
            let request = TestRequest::get("/").from(client);
            assert_eq!(access(config.clone(), &request), None, "{client}");
        }
        let refusal = access(config, &TestRequest::get("/").from("192.0.2.10")).unwrap();
        assert_eq!(refusal.status, 403);
        assert_eq!(
            refusal.body,
            r#"{"message":"Your IP address is not allowed"}"#
        );
    }

    #[test]
    fn a_blacklist_keeps_out_its_clients_with_the_configured_reply() {
        let config = json!({
            "blacklist": ["203.0.113.0/24", "fe80::/10"],
            "message": "go away",
            "response_code": 404,
        });
        for client in ["203.0.113.77", "fe80::1"] {
            let refusal = access(config.clone(), &TestRequest::get("/").from(client)).unwrap();
            assert_eq!(refusal.status, 404);
            assert_eq!(refusal.body, r#"{"message":"go away"}"#);
        }
        assert_eq!(
            access(config, &TestRequest::get("/").from("203.0.114.1")),
            None
        );
    }

    #[test]
    fn the_address_real_ip_set_is_the_one_checked() {
        let plugin = build_plugin(&DESCRIPTOR, json!({"whitelist": ["198.51.100.1"]})).unwrap();
        let request = TestRequest::get("/").from("10.0.0.1");
        let mut ctx = RequestCtx::new(&request, "r1", None);
        assert!(replied(plugin.access(&mut ctx)).is_some());
        ctx.set_client_ip("198.51.100.1".parse().unwrap());
        assert_eq!(replied(plugin.access(&mut ctx)), None);
    }

    #[test]
    fn bad_configurations_are_refused_where_they_are_wrong() {
        let cases = [
            (json!({}), ""),
            (
                json!({"whitelist": ["1.2.3.4"], "blacklist": ["5.6.7.8"]}),
                "",
            ),
            (json!({"whitelist": []}), "whitelist"),
            (
                json!({"blacklist": ["1.2.3.4", "1.2.3.400"]}),
                "blacklist[1]",
            ),
            (json!({"whitelist": ["::1/129"]}), "whitelist[0]"),
            (
                json!({"whitelist": ["1.2.3.4"], "response_code": 401}),
                "response_code",
            ),
            (json!({"whitelist": ["1.2.3.4"], "message": ""}), "message"),
            (json!({"whitelist": ["1.2.3.4"], "allow": true}), "allow"),
        ];
        for (config, path) in cases {
            assert_eq!(refusal(&DESCRIPTOR, config.clone()).path, path, "{config}");
        }
        let err = refusal(&DESCRIPTOR, json!({"blacklist": ["10.0.0.0/8", "nope"]}));
        assert_eq!(err.message, "invalid ip address: nope");
    }
}
