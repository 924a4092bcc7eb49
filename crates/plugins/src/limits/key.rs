//! What a limiting plugin (`limit-count`, `limit-req`, `limit-conn`) counts by: APISIX's
//! `key_type` and `key`.

use std::borrow::Cow;

use pylon_model::FieldError;
use pylon_plugin::{RequestCtx, Template};
use pylon_router::RequestView;
use schemars::JsonSchema;
use serde::Deserialize;

/// How `key` is read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum KeyType {
    /// `key` names one request variable (`remote_addr`, `http_x_api_key`, `consumer_name`).
    #[default]
    Var,
    /// `key` is text with variables in it (`$remote_addr $http_user_agent`).
    VarCombination,
    /// `key` is the key: every request counts together.
    Constant,
}

/// A built key: one value per request, each value counted apart.
#[derive(Debug)]
pub(crate) enum LimitKey {
    Var(String),
    Combination(Template),
    Constant(String),
}

impl LimitKey {
    /// Checks `key` for `key_type`; an error names `key`.
    pub fn new(key_type: KeyType, key: &str) -> Result<LimitKey, FieldError> {
        if key.is_empty() {
            return Err(FieldError::new("key", "must not be empty"));
        }
        Ok(match key_type {
            KeyType::Var => {
                // APISIX's configurations write it with or without the `$`.
                let name = key.strip_prefix('$').unwrap_or(key);
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(FieldError::new(
                        "key",
                        format!("`{key}` is not a variable name (letters, digits and `_`)"),
                    ));
                }
                LimitKey::Var(name.to_owned())
            }
            KeyType::VarCombination => {
                let template = Template::parse(key);
                if template.is_literal() {
                    return Err(FieldError::new(
                        "key",
                        "names no variable (`$name`): use key_type constant for a fixed key",
                    ));
                }
                LimitKey::Combination(template)
            }
            KeyType::Constant => LimitKey::Constant(key.to_owned()),
        })
    }

    /// The key `ctx`'s request counts under. A request without the variable (or with every
    /// variable of a combination empty) counts by its client address, as APISIX does.
    pub fn of<'c>(&'c self, ctx: &'c RequestCtx<'_>) -> Cow<'c, str> {
        let value = match self {
            LimitKey::Constant(key) => return Cow::Borrowed(key),
            LimitKey::Var(name) => ctx.var(name).filter(|v| !v.is_empty()),
            LimitKey::Combination(template) => {
                Some(template.render(ctx)).filter(|v| !v.trim().is_empty())
            }
        };
        value.unwrap_or_else(|| Cow::Owned(ctx.client_ip().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestRequest;

    #[test]
    fn a_key_is_read_as_its_type_says_and_falls_back_to_the_client_address() {
        let request = TestRequest::get("/").header("x-user", "ann");
        let ctx = RequestCtx::new(&request, "r1", None);
        let key = |key_type, key: &str| LimitKey::new(key_type, key).unwrap().of(&ctx).into_owned();
        let client = ctx.client_ip().to_string();
        assert_eq!(key(KeyType::Var, "http_x_user"), "ann");
        assert_eq!(key(KeyType::Var, "$http_x_user"), "ann");
        assert_eq!(key(KeyType::Var, "http_x_missing"), client);
        assert_eq!(key(KeyType::VarCombination, "$http_x_user:$uri"), "ann:/");
        assert_eq!(key(KeyType::VarCombination, "$http_x_missing "), client);
        assert_eq!(key(KeyType::Constant, "all"), "all");
    }

    #[test]
    fn a_bad_key_is_refused() {
        for (key_type, key) in [
            (KeyType::Var, ""),
            (KeyType::Var, "http-x-user"),
            (KeyType::Var, "$"),
            (KeyType::VarCombination, "no variables"),
        ] {
            let error = LimitKey::new(key_type, key).unwrap_err();
            assert_eq!(error.path, "key", "{key_type:?} {key:?}");
        }
    }
}
