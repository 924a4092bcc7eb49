//! Who may use the API: the client's address must be allowed, and the request must carry a
//! known key (`X-API-KEY` header, `api_key` query argument or `x_api_key` cookie, as APISIX
//! reads them); a viewer's key only reads.

use std::net::IpAddr;

use http::{HeaderMap, Method, StatusCode};
use ipnet::IpNet;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::query::Query;
use crate::response::Reply;
use crate::settings::{AdminKey, Role};

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

/// The role of the request's key, if it may do what it asks.
pub(crate) fn authorize(
    keys: &[AdminKey],
    method: &Method,
    headers: &HeaderMap,
    query: &Query,
) -> Result<Role, Reply> {
    let refuse = |reason: &str| {
        Reply::json(
            StatusCode::UNAUTHORIZED,
            json!({ "error_msg": "failed to check token", "description": reason }),
        )
    };
    let token = query
        .get("api_key")
        .map(str::to_owned)
        .or_else(|| header_token(headers))
        .or_else(|| cookie_token(headers));
    let Some(token) = token else {
        return Err(refuse("missing apikey"));
    };
    let Some(key) = keys
        .iter()
        .find(|k| constant_time_eq(k.key.as_bytes(), token.as_bytes()))
    else {
        return Err(refuse("wrong apikey"));
    };
    if key.role == Role::Viewer && !(method == Method::GET || method == Method::HEAD) {
        return Err(refuse("invalid method for role viewer"));
    }
    Ok(key.role)
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

/// Compares keys without revealing, through timing, how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn reads_the_key_from_the_query_the_header_or_the_cookie() {
        let mut headers = HeaderMap::new();
        let none = Query::default();
        assert_eq!(
            authorize(&keys(), &Method::GET, &headers, &none)
                .unwrap_err()
                .status,
            StatusCode::UNAUTHORIZED
        );
        headers.insert("cookie", "a=b; X_API_KEY=viewer-key".parse().unwrap());
        assert_eq!(
            authorize(&keys(), &Method::GET, &headers, &none),
            Ok(Role::Viewer)
        );
        let refused = authorize(&keys(), &Method::PUT, &headers, &none).unwrap_err();
        assert_eq!(
            refused.body.unwrap()["description"],
            "invalid method for role viewer"
        );
        headers.insert("x-api-key", "admin-key".parse().unwrap());
        assert_eq!(
            authorize(&keys(), &Method::PUT, &headers, &none),
            Ok(Role::Admin)
        );
        let wrong = Query::parse("api_key=nope");
        let refused = authorize(&keys(), &Method::GET, &headers, &wrong).unwrap_err();
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
