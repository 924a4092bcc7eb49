//! `_meta`: what every plugin's configuration may say about how the plugin runs, whatever the
//! plugin (APISIX's `disable`, `priority`, `filter` and `error_response`; and `gray_ratio`,
//! to run a plugin for a share of requests only, as large in-house gateways do).

use pylon_model::expr::Expr;
use pylon_model::FieldError;
use serde::Deserialize;
use serde_json::Value;

use crate::reply::Reply;

/// A plugin's `_meta`, parsed when the configuration is compiled.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    /// The plugin is configured but does not run.
    pub disable: bool,
    /// Overrides the plugin's own priority.
    pub priority: Option<i64>,
    /// The plugin runs only for requests that match (a `vars` expression).
    pub filter: Option<Expr>,
    /// Replaces the body of the plugin's own error replies (status 400 and above).
    pub error_response: Option<bytes::Bytes>,
    /// The plugin runs for this percentage of requests (0 to 100), picked at random.
    pub gray_ratio: Option<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMeta {
    #[serde(default)]
    disable: bool,
    priority: Option<i64>,
    filter: Option<Value>,
    error_response: Option<Value>,
    gray_ratio: Option<f64>,
}

impl Meta {
    /// Parses `_meta` out of a plugin's configuration; errors are relative to the plugin.
    pub fn parse(config: &Value) -> Result<Meta, FieldError> {
        let Some(raw) = config.get("_meta") else {
            return Ok(Meta::default());
        };
        let raw: RawMeta = serde_json::from_value(raw.clone())
            .map_err(|e| FieldError::new("_meta", e.to_string()))?;
        let filter = match raw.filter {
            Some(v) => Some(Expr::parse(&v).map_err(|e| e.within("_meta.filter"))?),
            None => None,
        };
        let error_response = match raw.error_response {
            None => None,
            Some(Value::String(s)) => Some(bytes::Bytes::from(s)),
            Some(v @ Value::Object(_)) => Some(bytes::Bytes::from(v.to_string())),
            Some(_) => {
                return Err(FieldError::new(
                    "_meta.error_response",
                    "must be a string or an object",
                ))
            }
        };
        let gray_ratio = match raw.gray_ratio {
            None => None,
            Some(r) if (0.0..=100.0).contains(&r) && r.fract() == 0.0 => Some(r as u8),
            Some(_) => {
                return Err(FieldError::new(
                    "_meta.gray_ratio",
                    "must be an integer percentage from 0 to 100",
                ))
            }
        };
        Ok(Meta {
            disable: raw.disable,
            priority: raw.priority,
            filter,
            error_response,
            gray_ratio,
        })
    }

    /// A plugin's error reply as the client gets it: with `error_response`'s body instead of
    /// the plugin's own.
    pub(crate) fn shape(&self, mut reply: Reply) -> Reply {
        if let Some(body) = &self.error_response {
            if reply.status >= 400 {
                reply.body = body.clone();
            }
        }
        reply
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn meta_fields_are_parsed_and_checked() {
        let meta = Meta::parse(&json!({"_meta": {
            "disable": true, "priority": 7, "gray_ratio": 30,
            "filter": [["arg_v", "==", "1"]], "error_response": {"msg": "no"}
        }}))
        .unwrap();
        assert!(meta.disable);
        assert_eq!(meta.priority, Some(7));
        assert_eq!(meta.gray_ratio, Some(30));
        assert!(meta.filter.is_some());
        assert_eq!(
            meta.error_response.as_deref(),
            Some(&b"{\"msg\":\"no\"}"[..])
        );
        assert!(Meta::parse(&json!({})).unwrap().filter.is_none());
    }

    #[test]
    fn bad_meta_is_refused_with_its_path() {
        let error = Meta::parse(&json!({"_meta": {"gray_ratio": 101}})).unwrap_err();
        assert_eq!(error.path, "_meta.gray_ratio");
        let error = Meta::parse(&json!({"_meta": {"filter": [["arg_v", "~~", "("]]}})).unwrap_err();
        assert!(error.path.starts_with("_meta.filter"), "{error}");
        let error = Meta::parse(&json!({"_meta": {"colour": 1}})).unwrap_err();
        assert_eq!(error.path, "_meta");
        assert!(error.message.contains("colour"), "{error}");
    }
}
