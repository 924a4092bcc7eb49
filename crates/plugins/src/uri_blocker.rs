//! `uri-blocker`: refuses requests whose target (path and query, as the client sent them)
//! matches one of a list of regular expressions.

use std::sync::Arc;

use pylon_model::FieldError;
use pylon_plugin::{Phases, Plugin, Reply, RequestCtx, Step};
use pylon_router::RequestView;
use regex::{Regex, RegexSet, RegexSetBuilder};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{parse, refusal, schema_of};
use crate::descriptor::{BuildEnv, Descriptor};

pub(crate) const DESCRIPTOR: Descriptor = Descriptor {
    name: "uri-blocker",
    priority: 2900,
    schema: schema_of::<UriBlockerConfig>,
    build,
    credential: None,
    metadata: None,
};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct UriBlockerConfig {
    /// Regular expressions searched for in the request target (`/path?query`); a match
    /// anywhere refuses the request. Unique, each 1 to 4096 characters.
    #[schemars(inner(length(min = 1, max = 4096)))]
    block_rules: Vec<String>,
    /// The status of a refused request.
    #[serde(default = "default_rejected_code")]
    #[schemars(range(min = 200, max = 599))]
    rejected_code: u16,
    /// The refusal's body, as `{"error_msg": ...}`. Unset: an empty body.
    #[schemars(length(min = 1))]
    rejected_msg: Option<String>,
    /// Match the rules ignoring case.
    #[serde(default)]
    case_insensitive: bool,
}

fn default_rejected_code() -> u16 {
    403
}

fn build(config: &Value, _env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    let config: UriBlockerConfig = parse(config)?;
    for (i, rule) in config.block_rules.iter().enumerate() {
        let path = format!("block_rules[{i}]");
        if !(1..=4096).contains(&rule.chars().count()) {
            return Err(FieldError::new(path, "must be 1 to 4096 characters"));
        }
        if let Some(first) = config.block_rules[..i].iter().position(|r| r == rule) {
            return Err(FieldError::new(
                path,
                format!("the same rule as block_rules[{first}]"),
            ));
        }
        // Compiled alone first so that an error names its rule.
        Regex::new(rule).map_err(|e| FieldError::new(path, e.to_string()))?;
    }
    let refusal = refusal(config.rejected_code, config.rejected_msg.as_deref())?;
    let rules = RegexSetBuilder::new(&config.block_rules)
        .case_insensitive(config.case_insensitive)
        .build()
        .map_err(|e| FieldError::new("block_rules", e.to_string()))?;
    Ok(Arc::new(UriBlocker { rules, refusal }))
}

struct UriBlocker {
    /// Every rule in one automaton: a request costs one pass over its target.
    rules: RegexSet,
    refusal: Reply,
}

impl Plugin for UriBlocker {
    fn name(&self) -> &'static str {
        DESCRIPTOR.name
    }

    fn phases(&self) -> Phases {
        Phases::REWRITE
    }

    fn rewrite<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Step<'a> {
        let blocked = ctx
            .var("request_uri")
            .is_some_and(|target| self.rules.is_match(&target));
        if blocked {
            Step::Reply(self.refusal.clone())
        } else {
            Step::Continue
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::{build as build_plugin, refusal, replied, TestRequest};

    fn rewrite(config: Value, target: &str) -> Option<Reply> {
        let plugin = build_plugin(&DESCRIPTOR, config).unwrap();
        let request = TestRequest::get(target);
        let mut ctx = RequestCtx::new(&request, "r1", None);
        replied(plugin.rewrite(&mut ctx))
    }

    #[test]
    fn a_rule_matching_the_path_or_query_refuses_with_an_empty_403() {
        let config = json!({"block_rules": ["^/admin", r"\.php$", "token=[0-9]+"]});
        for blocked in ["/admin/x", "/a/index.php", "/search?token=123&x=1"] {
            let reply = rewrite(config.clone(), blocked).expect(blocked);
            assert_eq!((reply.status, reply.body.len()), (403, 0), "{blocked}");
        }
        for passed in [
            "/public/admin",
            "/a/index.php?x=1",
            "/search?token=abc",
            "/ADMIN",
        ] {
            assert_eq!(rewrite(config.clone(), passed), None, "{passed}");
        }
    }

    #[test]
    fn the_configured_code_and_message_and_case_insensitivity() {
        let config = json!({
            "block_rules": ["^/admin"],
            "rejected_code": 410,
            "rejected_msg": "access is not allowed",
            "case_insensitive": true,
        });
        let reply = rewrite(config, "/AdMiN/x").unwrap();
        assert_eq!(reply.status, 410);
        assert_eq!(reply.body, r#"{"error_msg":"access is not allowed"}"#);
    }

    #[test]
    fn bad_configurations_are_refused_where_they_are_wrong() {
        let cases = [
            (json!({}), ""),
            (json!({"block_rules": ["a", "(b"]}), "block_rules[1]"),
            (json!({"block_rules": ["a", ""]}), "block_rules[1]"),
            (json!({"block_rules": ["a", "b", "a"]}), "block_rules[2]"),
            (
                json!({"block_rules": ["a"], "rejected_code": 199}),
                "rejected_code",
            ),
            (
                json!({"block_rules": ["a"], "rejected_code": 600}),
                "rejected_code",
            ),
            (
                json!({"block_rules": ["a"], "rejected_msg": ""}),
                "rejected_msg",
            ),
        ];
        for (config, path) in cases {
            assert_eq!(refusal(&DESCRIPTOR, config.clone()).path, path, "{config}");
        }
        // A PCRE feature the regex engine has not: said at the rule, not at request time.
        let err = refusal(&DESCRIPTOR, json!({"block_rules": ["^/(?!public)"]}));
        assert_eq!(err.path, "block_rules[0]");
        assert!(err.message.contains("look-around"), "{}", err.message);
    }
}
