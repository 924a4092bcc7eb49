//! Answers as APISIX's Admin API gives them: JSON bodies, `{error_msg}` for errors, and the
//! headers every answer carries.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use pylon_model::{FieldError, Key, Kind};
use pylon_store::{Entry, StoreError};
use serde_json::{json, Value};

/// The API version every answer announces, as APISIX v3 does.
const API_VERSION: &str = "v3";

/// One answer, before it becomes an HTTP response.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reply {
    pub status: StatusCode,
    pub body: Option<Value>,
    /// The connection must not be reused: the request was not read to its end.
    pub close: bool,
}

impl Reply {
    pub fn json(status: StatusCode, body: Value) -> Reply {
        Reply {
            status,
            body: Some(body),
            close: false,
        }
    }

    pub fn empty(status: StatusCode) -> Reply {
        Reply {
            status,
            body: None,
            close: false,
        }
    }

    pub fn error(status: StatusCode, message: impl Into<String>) -> Reply {
        Reply::json(status, json!({ "error_msg": message.into() }))
    }

    pub fn bad_request(message: impl Into<String>) -> Reply {
        Reply::error(StatusCode::BAD_REQUEST, message)
    }

    /// Field errors of a resource, as one message that names every field.
    pub fn invalid(errors: &[FieldError]) -> Reply {
        let message = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        Reply::bad_request(format!("invalid configuration: {message}"))
    }

    /// What APISIX answers for a key that is not in the store.
    pub fn not_found() -> Reply {
        Reply::json(StatusCode::NOT_FOUND, json!({ "message": "Key not found" }))
    }

    pub fn method_not_supported(method: &http::Method, kind: Kind) -> Reply {
        Reply::error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("not supported `{method}` method for {}", singular(kind)),
        )
    }

    pub fn store_error(error: &StoreError) -> Reply {
        let status = match error {
            StoreError::Conflict => StatusCode::CONFLICT,
            StoreError::ReadOnly(_) => StatusCode::METHOD_NOT_ALLOWED,
            StoreError::Unavailable(_) | StoreError::Compacted(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        Reply::error(status, error.to_string())
    }

    pub fn into_response(self, cors: bool) -> Response<Full<Bytes>> {
        let body = self
            .body
            .map(|v| Bytes::from(v.to_string()))
            .unwrap_or_default();
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert("x-api-version", HeaderValue::from_static(API_VERSION));
        if cors {
            for (name, value) in [
                ("access-control-allow-origin", "*"),
                ("access-control-allow-credentials", "true"),
                ("access-control-expose-headers", "*"),
                ("access-control-max-age", "3600"),
            ] {
                headers.insert(name, HeaderValue::from_static(value));
            }
        }
        if self.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }

    /// The answer to a browser's preflight request.
    pub fn preflight() -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::new()));
        let headers = response.headers_mut();
        for (name, value) in [
            ("access-control-allow-origin", "*"),
            (
                "access-control-allow-methods",
                "POST, GET, PUT, OPTIONS, DELETE, PATCH",
            ),
            ("access-control-max-age", "3600"),
            ("access-control-allow-headers", "*"),
            ("access-control-allow-credentials", "true"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        response
    }
}

/// The store path of `key`, as answers name it (`/pylon/routes/1`).
pub(crate) fn key_path(key: &Key) -> String {
    key.to_path(Key::DEFAULT_PREFIX)
}

/// One stored resource as APISIX shows it: `{key, value, createdIndex, modifiedIndex}`.
pub(crate) fn node(entry: &Entry) -> Value {
    json!({
        "key": key_path(&entry.key),
        "value": presentable(entry.key.kind, entry.value.clone()),
        "createdIndex": entry.create_revision,
        "modifiedIndex": entry.mod_revision,
    })
}

/// A value as it may leave the API: an SSL's private keys never do, nor a consumer's
/// credentials (its API keys, passwords and signing secrets).
pub(crate) fn presentable(kind: Kind, mut value: Value) -> Value {
    if kind == Kind::Ssls {
        if let Some(object) = value.as_object_mut() {
            object.remove("key");
            object.remove("keys");
        }
    }
    for pointer in pylon_plugins::secret_pointers(kind, &value) {
        let Some((parent, field)) = pointer.rsplit_once('/') else {
            continue;
        };
        if let Some(Value::Object(object)) = value.pointer_mut(parent) {
            object.remove(field);
        }
    }
    value
}

/// A list as the API answers one: `{list, total}`.
pub(crate) fn listed(list: Vec<Value>) -> Reply {
    let total = list.len();
    Reply::json(StatusCode::OK, json!({ "list": list, "total": total }))
}

/// A request body as `T`, or a refusal that names the field and the reason.
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(body: Option<Value>) -> Result<T, Reply> {
    let body = body.ok_or_else(|| Reply::bad_request("missing configurations"))?;
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        Reply::bad_request(format!("invalid configuration: {path}: {}", e.into_inner()))
    })
}

/// The kind's name in APISIX's messages (`missing route id`).
pub(crate) fn singular(kind: Kind) -> &'static str {
    match kind {
        Kind::Routes => "route",
        Kind::Services => "service",
        Kind::Upstreams => "upstream",
        Kind::GlobalRules => "global rule",
        Kind::PluginConfigs => "plugin config",
        Kind::Consumers => "consumer",
        Kind::Credentials => "credential",
        Kind::ConsumerGroups => "consumer group",
        Kind::Ssls => "ssl",
        Kind::StreamRoutes => "stream route",
        Kind::Protos => "proto",
        Kind::PluginMetadata => "plugin_metadata",
        Kind::Secrets => "secret",
        Kind::Tenants => "tenant",
        Kind::Users => "user",
        Kind::ChangeSets => "change set",
        Kind::Versions => "version",
        Kind::Audit => "audit record",
        Kind::AuditHead => "audit chain",
        Kind::Nodes => "node",
    }
}
