//! Stream routes: which TCP connections they take (by the address and port they reached, the
//! client's address and the TLS server name), and where their bytes go.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::{de_opt_id, id_schema, Labels, Plugins};
use crate::error::FieldError;
use crate::upstream::{Scheme, Upstream};
use crate::validate::{host_pattern, nested, plugin_objects, remote_addr, upstream};

/// A stream route, with APISIX's fields. Each condition set must hold; none set: every
/// connection of the stream listeners.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamRoute {
    #[serde(
        default,
        deserialize_with = "de_opt_id",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "id_schema")]
    pub id: Option<String>,
    /// A name for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A description for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desc: Option<String>,
    /// Key-value pairs to tag and select resources by.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    /// The client's address: an IP address or a CIDR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_addr: Option<String>,
    /// The address the client reached (the listener's): an IP address or a CIDR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_addr: Option<String>,
    /// The port the client reached (the listener's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub server_port: Option<u16>,
    /// The TLS server name the client asked for; a leading `*.` matches any subdomain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(
        default,
        deserialize_with = "de_opt_id",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "id_schema")]
    /// The service whose upstream the route uses.
    pub service_id: Option<String>,
    #[serde(
        default,
        deserialize_with = "de_opt_id",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "id_schema")]
    /// The upstream connections go to, by id.
    pub upstream_id: Option<String>,
    /// The upstream connections go to, written inline; takes precedence over `upstream_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Upstream>,
    /// Plugins by name, with their configuration: stream routes run `ip-restriction` and
    /// `limit-conn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugins: Option<Plugins>,
    /// Pylon's: the PROXY protocol header (`v1` or `v2`) each upstream connection starts
    /// with, naming the client, for upstreams that ask for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_proxy_protocol: Option<ProxyProtocolVersion>,
    /// What the connections speak, when the gateway reads them rather than relaying bytes
    /// (APISIX's xRPC field): `pylon-frames`, the framed binary protocol, whose frames become
    /// HTTP requests to the routes; `pylon-push`, the devices of the push gateway. Such a
    /// route needs no upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<StreamProtocol>,
    /// When the resource was created, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<i64>,
    /// When the resource was last changed, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_time: Option<i64>,
}

/// The protocol a stream route's connections speak.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamProtocol {
    /// `pylon-frames` or `pylon-push`.
    pub name: String,
    /// The protocol's configuration (for `pylon-frames`: the frame layout and the commands;
    /// for `pylon-push`: the device protocol, heartbeats, delivery and the Redis).
    #[serde(default)]
    pub conf: serde_json::Value,
}

/// The framed binary protocol's name in `protocol.name`.
pub const FRAMES_PROTOCOL: &str = "pylon-frames";
/// The push gateway's name in `protocol.name`.
pub const PUSH_PROTOCOL: &str = "pylon-push";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProxyProtocolVersion {
    V1,
    V2,
}

impl StreamRoute {
    pub(crate) fn validate(&self, errors: &mut Vec<FieldError>) {
        for (field, addr) in [
            ("remote_addr", &self.remote_addr),
            ("server_addr", &self.server_addr),
        ] {
            if let Some(addr) = addr {
                remote_addr(field, addr, errors);
            }
        }
        if let Some(sni) = &self.sni {
            host_pattern("sni", sni, errors);
        }
        if let Some(u) = &self.upstream {
            nested(errors, "upstream", |e| {
                upstream(u, e);
                stream_scheme(u.scheme, e);
            });
        }
        plugin_objects(self.plugins.as_ref(), errors);
        if let Some(protocol) = &self.protocol {
            if ![FRAMES_PROTOCOL, PUSH_PROTOCOL].contains(&protocol.name.as_str()) {
                errors.push(FieldError::new(
                    "protocol.name",
                    format!(
                        "`{}` is not a protocol of this build; it has `{FRAMES_PROTOCOL}` and `{PUSH_PROTOCOL}`",
                        protocol.name
                    ),
                ));
            }
        }
    }
}

/// What an upstream of a stream route may speak: bytes, in clear or over TLS, or datagrams.
/// `http` (the default) and `https` are read as `tcp` and `tls`, so that an upstream serves
/// both kinds of route.
fn stream_scheme(scheme: Scheme, errors: &mut Vec<FieldError>) {
    if scheme.is_grpc() {
        errors.push(FieldError::new(
            "scheme",
            format!(
                "`{}` is for HTTP routes; a stream route's upstream is `tcp`, `tls` or `udp`",
                scheme.as_str()
            ),
        ));
    }
}
