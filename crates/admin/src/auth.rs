//! Who may use the API: the client's address must be allowed, and the request must carry a
//! known token (`X-API-KEY` header, `api_key` query argument or `x_api_key` cookie, as APISIX
//! reads them): a key of the node config or a user's token; a role that only reads only reads.

use std::net::IpAddr;

use http::{HeaderMap, Method, StatusCode};
use ipnet::IpNet;
use pylon_store::View;
use serde_json::json;

use crate::identity::{self, Caller};
use crate::query::Query;
use crate::response::Reply;
use crate::settings::AdminKey;

/// Whether `client` may reach the API at all. An empty list allows everyone.
pub(crate) fn address_allowed(allow: &[IpNet], client: IpAddr) -> bool {
    // A dual-stack listener sees IPv4 clients as `::ffff:a.b.c.d`.
    let client = match client {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, IpAddr::V4),
        v4 => v4,
    };
    allow.is_empty() || allow.iter().any(|net| net.contains(&client))
}

pub(crate) fn address_refused() -> Reply {
    Reply::error(
        StatusCode::FORBIDDEN,
        "this address is not allowed to use the Admin API (see admin.allow_admin)",
    )
}

/// Who the request's token (the `X-API-KEY` header, the `api_key` query argument or the
/// `x_api_key` cookie) says is calling: a key of the node config, or a user of `view`.
pub(crate) fn identify(
    keys: &[AdminKey],
    view: &View,
    headers: &HeaderMap,
    query: &Query,
) -> Result<Caller, Reply> {
    let token = query
        .get("api_key")
        .map(str::to_owned)
        .or_else(|| header_token(headers))
        .or_else(|| cookie_token(headers));
    let Some(token) = token else {
        return Err(unauthorized("missing apikey"));
    };
    identity::identify(keys, view, &token).ok_or_else(|| unauthorized("wrong apikey"))
}

/// APISIX's refusal of a request its token does not allow.
pub(crate) fn unauthorized(reason: &str) -> Reply {
    Reply::json(
        StatusCode::UNAUTHORIZED,
        json!({ "error_msg": "failed to check token", "description": reason }),
    )
}

/// Refuses a change by a caller whose role only reads, as APISIX refuses a viewer's key.
pub(crate) fn check_writes(caller: &Caller, method: &Method) -> Result<(), Reply> {
    let reads = method == Method::GET || method == Method::HEAD;
    if reads || caller.role.writes() {
        Ok(())
    } else {
        Err(unauthorized(&format!(
            "invalid method for role {}",
            caller.role.as_str()
        )))
    }
}

/// A request the caller's role or tenant does not allow.
pub(crate) fn forbidden(message: impl Into<String>) -> Reply {
    Reply::error(StatusCode::FORBIDDEN, message)
}

fn header_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|line| line.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| name.eq_ignore_ascii_case("x_api_key"))
        .map(|(_, value)| value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Role;

    fn keys() -> Vec<AdminKey> {
        vec![
            AdminKey {
                name: "a".into(),
                key: "admin-key".into(),
                role: Role::Admin,
            },
            AdminKey {
                name: "v".into(),
                key: "viewer-key".into(),
                role: Role::Viewer,
            },
        ]
    }

    fn caller(method: Method, headers: &HeaderMap, query: &Query) -> Result<Caller, Reply> {
        let caller = identify(&keys(), &View::default(), headers, query)?;
        check_writes(&caller, &method)?;
        Ok(caller)
    }

    #[test]
    fn reads_the_key_from_the_query_the_header_or_the_cookie() {
        let mut headers = HeaderMap::new();
        let none = Query::default();
        assert_eq!(
            caller(Method::GET, &headers, &none).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
        headers.insert("cookie", "a=b; X_API_KEY=viewer-key".parse().unwrap());
        assert_eq!(caller(Method::GET, &headers, &none).unwrap().name, "key:v");
        let refused = caller(Method::PUT, &headers, &none).unwrap_err();
        assert_eq!(
            refused.body.unwrap()["description"],
            "invalid method for role viewer"
        );
        headers.insert("x-api-key", "admin-key".parse().unwrap());
        assert!(caller(Method::PUT, &headers, &none)
            .unwrap()
            .is_platform_admin());
        let wrong = Query::parse("api_key=nope");
        let refused = caller(Method::GET, &headers, &wrong).unwrap_err();
        assert_eq!(refused.body.unwrap()["description"], "wrong apikey");
    }

    #[test]
    fn allows_listed_networks_and_mapped_ipv4() {
        let allow: Vec<IpNet> = vec!["127.0.0.0/24".parse().unwrap()];
        assert!(address_allowed(&allow, "127.0.0.9".parse().unwrap()));
        assert!(address_allowed(&allow, "::ffff:127.0.0.1".parse().unwrap()));
        assert!(!address_allowed(&allow, "10.0.0.1".parse().unwrap()));
        assert!(address_allowed(&[], "10.0.0.1".parse().unwrap()));
    }
}
