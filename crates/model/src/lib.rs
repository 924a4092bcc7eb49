//! Pylon's resources, as APISIX v3 names them: types, parsing and validation.
//!
//! Everything here is plain data. A resource is parsed from JSON (the store's format) or from the
//! standalone YAML file, validated field by field, and then checked against the others (an
//! `upstream_id` must name an upstream). Every error carries the path of the field it is about.
#![forbid(unsafe_code)]

mod change_set;
mod checks;
mod config;
mod consumer;
mod error;
pub mod expr;
mod key;
mod nested;
mod outlier;
mod proto;
mod reference;
mod route;
mod schema;
mod secret;
mod ssl;
mod standalone;
mod stream_route;
#[cfg(test)]
mod test_certs;
mod tls;
mod upstream;
mod validate;

pub use change_set::{CanaryTarget, Change, ChangeSet, ChangeSetState, Review};
pub use checks::{
    ActiveCheck, ActiveHealthy, ActiveUnhealthy, CheckType, HealthChecks, PassiveCheck,
    PassiveHealthy, PassiveUnhealthy,
};
pub use config::{
    Config, GlobalRule, PluginConfig, Resource, Service, DEFAULT_TENANT, TENANT_FIELD,
};
pub use error::{FieldError, ValidationErrors};
pub use key::{Key, Kind};
pub use nested::{Found, Holder, Holders, NestedReference, NESTED_REFERENCES};
pub use outlier::OutlierDetection;
pub use reference::is_secret_reference;
pub use route::Route;
pub use schema::json_schema;
pub use ssl::{Ssl, SslClient, SslType, TlsVersion};
pub use standalone::{parse_standalone, parse_standalone_document, Standalone};
pub use stream_route::{
    ProxyProtocolVersion, StreamProtocol, StreamRoute, FRAMES_PROTOCOL, PUSH_PROTOCOL,
};
pub use tls::{parse_certificates, parse_private_key, KeyPair};
pub use upstream::{
    HashOn, KeepalivePool, Node, Nodes, PassHost, Scheme, Timeout, Upstream, UpstreamTls,
    UpstreamType, MAX_SECONDS,
};
pub use validate::{is_id, is_username, MAX_ID_LEN, MAX_NAME_LEN};
