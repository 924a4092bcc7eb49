//! Upstreams: the nodes a request is balanced over, and how it reaches them.

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use schemars::JsonSchema;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::checks::HealthChecks;
use crate::config::{de_opt_id, id_schema, Labels};
use crate::error::FieldError;
use crate::outlier::OutlierDetection;
use crate::tls::{load_key_pair, KeyPair, REDACTED};

/// The nodes requests are balanced over, and how they are reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("anyOf" = [{"required": ["nodes"]}, {"required": ["discovery_type", "service_name"]}]))]
pub struct Upstream {
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
    /// The nodes; absent when `discovery_type` and `service_name` find them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Nodes>,
    /// How a node is chosen for each request.
    #[serde(rename = "type", default)]
    pub balancer: UpstreamType,
    /// What `key` names, for `chash`.
    #[serde(default)]
    pub hash_on: HashOn,
    /// What `chash` hashes (see `hash_on`); required with `chash` unless `hash_on` is consumer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Further attempts after the first; absent means one per other node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub retries: Option<i64>,
    /// Seconds within which retries may still start; 0 or absent means no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub retry_timeout: Option<f64>,
    /// Timeouts towards the nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Timeout>,
    /// Idle connections kept to the nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_pool: Option<KeepalivePool>,
    #[serde(default)]
    pub pass_host: PassHost,
    /// The `Host` sent when `pass_host` is rewrite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_host: Option<String>,
    #[serde(default)]
    pub scheme: Scheme,
    /// Health checks of the nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<HealthChecks>,
    /// Ejection of nodes that keep failing, as Envoy's: a Pylon extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Where the nodes come from instead of `nodes`: `dns`, `etcd`, `consul` or `consul_kv`,
    /// as the node config's `discovery:` section sets them up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_type: Option<String>,
    /// The service to look up with `discovery_type`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// Arguments of the lookup; none of the discovery types takes any yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_args: Option<serde_json::Value>,
    /// TLS settings of an `https` or `grpcs` upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    /// When the resource was created, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<i64>,
    /// When the resource was last changed, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_time: Option<i64>,
}

/// The longest a configured duration may be, in seconds: a year. Longer is no timeout in
/// practice, and the bound keeps deadline arithmetic (`now + timeout`) far from overflowing.
pub const MAX_SECONDS: f64 = 31_536_000.0;

/// Connect, send and read timeouts in seconds, as APISIX writes them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Timeout {
    /// Seconds to establish a connection.
    #[schemars(extend("exclusiveMinimum" = 0, "maximum" = MAX_SECONDS))]
    pub connect: f64,
    /// Seconds between two writes of the request.
    #[schemars(extend("exclusiveMinimum" = 0, "maximum" = MAX_SECONDS))]
    pub send: f64,
    /// Seconds between two reads of the response.
    #[schemars(extend("exclusiveMinimum" = 0, "maximum" = MAX_SECONDS))]
    pub read: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeepalivePool {
    /// Idle connections kept per node and worker.
    #[serde(default = "KeepalivePool::default_size")]
    #[schemars(range(min = 0))]
    pub size: i64,
    /// Seconds an idle connection is kept.
    #[serde(default = "KeepalivePool::default_idle_timeout")]
    #[schemars(range(min = 0))]
    pub idle_timeout: f64,
    /// Requests served on one connection before it is closed.
    #[serde(default = "KeepalivePool::default_requests")]
    #[schemars(range(min = 1))]
    pub requests: i64,
}

impl KeepalivePool {
    fn default_size() -> i64 {
        320
    }
    fn default_idle_timeout() -> f64 {
        60.0
    }
    fn default_requests() -> i64 {
        1000
    }
}

impl Default for KeepalivePool {
    fn default() -> Self {
        Self {
            size: Self::default_size(),
            idle_timeout: Self::default_idle_timeout(),
            requests: Self::default_requests(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
/// The balancing algorithm.
pub enum UpstreamType {
    /// Weighted round robin.
    #[default]
    Roundrobin,
    /// Consistent hashing of `key`.
    Chash,
    /// The node with the fewest requests in flight.
    LeastConn,
    /// The node with the lowest latency (peak EWMA).
    Ewma,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
/// What `key` names for `chash`.
pub enum HashOn {
    /// A request variable, as `remote_addr` or `arg_id`.
    #[default]
    Vars,
    /// A request header.
    Header,
    /// A cookie.
    Cookie,
    /// The authenticated consumer; `key` is not needed.
    Consumer,
    /// Variables inside a string, as `$host$uri`.
    VarsCombinations,
}

/// Which `Host` the upstream sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PassHost {
    /// The client's `Host`.
    #[default]
    Pass,
    /// The chosen node's `host[:port]`.
    Node,
    /// `upstream_host`.
    Rewrite,
}

/// How the gateway talks to the nodes: HTTP/1.1 or gRPC (HTTP/2), in clear or over TLS; for
/// stream routes, the bytes as they are, in clear (`tcp`) or over TLS (`tls`), or datagrams
/// (`udp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scheme {
    #[default]
    Http,
    Https,
    Grpc,
    Grpcs,
    Tcp,
    Tls,
    Udp,
}

impl Scheme {
    /// The port of a node written without one.
    pub fn default_port(self) -> u16 {
        if self.is_tls() {
            443
        } else {
            80
        }
    }

    pub fn is_tls(self) -> bool {
        matches!(self, Scheme::Https | Scheme::Grpcs | Scheme::Tls)
    }

    /// Only stream routes speak it: an HTTP route's upstream may not.
    pub fn is_stream_only(self) -> bool {
        matches!(self, Scheme::Tcp | Scheme::Tls | Scheme::Udp)
    }

    pub fn is_grpc(self) -> bool {
        matches!(self, Scheme::Grpc | Scheme::Grpcs)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::Grpc => "grpc",
            Scheme::Grpcs => "grpcs",
            Scheme::Tcp => "tcp",
            Scheme::Tls => "tls",
            Scheme::Udp => "udp",
        }
    }
}

/// TLS towards the nodes of an `https` or `grpcs` upstream.
///
/// Unlike APISIX, where `verify` defaults to false, Pylon verifies the nodes' certificates
/// (against the system's roots, for the node's host name) unless `verify: false` is written:
/// an upstream reached over TLS without verification is open to anyone on the path, and that
/// should be a visible choice.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// PEM certificate (chain) presented to the nodes: mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    /// PEM private key of `client_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
    #[serde(default = "verify_by_default")]
    pub verify: bool,
}

fn verify_by_default() -> bool {
    true
}

impl UpstreamTls {
    /// The client certificate and key, parsed and checked; `None` without a client
    /// certificate. Error paths are relative to `tls`.
    pub fn client_key_pair(&self) -> Option<Result<KeyPair, FieldError>> {
        // Errors are never empty: every branch below, and `load_key_pair`, report one or more.
        self.load_client_key_pair()
            .map(|r| r.map_err(|mut errors| errors.remove(0)))
    }

    fn load_client_key_pair(&self) -> Option<Result<KeyPair, Vec<FieldError>>> {
        match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => Some(load_key_pair(
                cert,
                key,
                "client_cert",
                "client_key",
                SystemTime::now(),
            )),
            (Some(_), None) => Some(Err(vec![FieldError::new(
                "client_key",
                "required when tls.client_cert is set",
            )])),
            (None, Some(_)) => Some(Err(vec![FieldError::new(
                "client_cert",
                "required when tls.client_key is set",
            )])),
            (None, None) => None,
        }
    }

    /// Every problem, with paths relative to `tls`.
    pub(crate) fn validate(&self, errors: &mut Vec<FieldError>) {
        if let Some(Err(e)) = self.load_client_key_pair() {
            errors.extend(e);
        }
    }
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key.as_ref().map(|_| REDACTED))
            .field("verify", &self.verify)
            .finish()
    }
}

/// `nodes` in either of APISIX's forms: `{"host:port": weight}` or a list of node objects.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Nodes {
    /// `host[:port]` to weight.
    #[schemars(extend("additionalProperties" = {"type": "integer", "minimum": 0, "maximum": u32::MAX}))]
    Map(BTreeMap<String, i64>),
    /// Node objects.
    List(Vec<NodeSpec>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// An IP address or a host name.
    pub host: String,
    /// 80, or 443 with TLS, when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i64>,
    /// The node's share of requests; 0 takes it out of balancing.
    #[schemars(range(min = 0, max = u32::MAX))]
    pub weight: i64,
    /// Nodes of a lower priority get requests only when no node of a higher one can be used.
    #[serde(default)]
    #[schemars(range(min = i32::MIN, max = i32::MAX))]
    pub priority: i64,
    /// Free-form data about the node; not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
}

/// A node after validation: the form the data plane uses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Node {
    pub host: String,
    pub port: u16,
    pub weight: u32,
    pub priority: i32,
}

impl Node {
    /// `host:port`, with brackets around IPv6 literals: the node's stable identity.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl Nodes {
    /// The nodes in list form, or every problem found, with paths relative to `nodes`.
    pub fn resolve(&self, scheme: Scheme) -> Result<Vec<Node>, Vec<FieldError>> {
        let mut nodes = Vec::new();
        let mut errors = Vec::new();
        match self {
            Nodes::Map(map) => {
                for (addr, &weight) in map {
                    let path = format!("[\"{addr}\"]");
                    let node = split_host_port(addr)
                        .map_err(|m| FieldError::new(path.clone(), m))
                        .and_then(|(host, port)| {
                            build_node(host, port, weight, 0, scheme, &path, "")
                        });
                    match node {
                        Ok(n) => nodes.push(n),
                        Err(e) => errors.push(e),
                    }
                }
            }
            Nodes::List(list) => {
                for (i, spec) in list.iter().enumerate() {
                    let path = format!("[{i}]");
                    match build_node(
                        &spec.host,
                        spec.port,
                        spec.weight,
                        spec.priority,
                        scheme,
                        &path,
                        ".",
                    ) {
                        Ok(n) => nodes.push(n),
                        Err(e) => errors.push(e),
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(nodes)
        } else {
            Err(errors)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        match self {
            Nodes::Map(m) => m.len(),
            Nodes::List(l) => l.len(),
        }
    }
}

fn build_node(
    host: &str,
    port: Option<i64>,
    weight: i64,
    priority: i64,
    scheme: Scheme,
    path: &str,
    field_sep: &str,
) -> Result<Node, FieldError> {
    let field = |name: &str| {
        if field_sep.is_empty() {
            path.to_owned()
        } else {
            format!("{path}{field_sep}{name}")
        }
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(FieldError::new(
            field("host"),
            "must be an IP address or a host name",
        ));
    }
    // `127.0.0.1:1980` as a host would be dialled at the default port, never at 1980.
    if host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err() {
        return Err(FieldError::new(
            field("host"),
            format!("`{host}` holds a port: give the host alone, and the port in `port`"),
        ));
    }
    let port = match port {
        None => scheme.default_port(),
        Some(p) if (1..=65535).contains(&p) => p as u16,
        Some(_) => return Err(FieldError::new(field("port"), "must be 1..65535")),
    };
    let weight = u32::try_from(weight)
        .map_err(|_| FieldError::new(field("weight"), "must be 0..4294967295"))?;
    let priority = i32::try_from(priority)
        .map_err(|_| FieldError::new(field("priority"), "must fit in 32 bits"))?;
    Ok(Node {
        host: host.to_owned(),
        port,
        weight,
        priority,
    })
}

/// Splits `host[:port]` and `[v6][:port]`; an IPv6 address without brackets is refused, as
/// APISIX does (`::1:80` could be either).
fn split_host_port(addr: &str) -> Result<(&str, Option<i64>), String> {
    let bad_port = || format!("port of `{addr}` must be 1..65535");
    if let Some(rest) = addr.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("`{addr}`: unclosed `[`"))?;
        return match after.strip_prefix(':') {
            Some(p) => Ok((host, Some(p.parse().map_err(|_| bad_port())?))),
            None if after.is_empty() => Ok((host, None)),
            None => Err(format!("`{addr}` is not host:port")),
        };
    }
    match addr.rsplit_once(':') {
        Some((host, _)) if host.contains(':') => Err(format!(
            "`{addr}`: an IPv6 address is written in brackets, as `[::1]:80`"
        )),
        Some((host, p)) => Ok((host, Some(p.parse().map_err(|_| bad_port())?))),
        None => Ok((addr, None)),
    }
}

impl<'de> Deserialize<'de> for Nodes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NodesVisitor;
        impl<'de> Visitor<'de> for NodesVisitor {
            type Value = Nodes;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of \"host:port\" to weight, or a list of {host, port, weight}")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Nodes, A::Error> {
                let mut nodes = BTreeMap::new();
                while let Some((k, v)) = map.next_entry::<String, i64>()? {
                    nodes.insert(k, v);
                }
                Ok(Nodes::Map(nodes))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Nodes, A::Error> {
                let mut nodes = Vec::new();
                while let Some(n) = seq.next_element::<NodeSpec>()? {
                    nodes.push(n);
                }
                Ok(Nodes::List(nodes))
            }
        }
        d.deserialize_any(NodesVisitor).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(json: &str) -> Nodes {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn map_and_list_forms_resolve_to_the_same_nodes() {
        let map = nodes(r#"{"127.0.0.1:1980": 2, "[::1]:81": 1, "example.com": 1}"#);
        let list = nodes(
            r#"[{"host":"127.0.0.1","port":1980,"weight":2},
                {"host":"::1","port":81,"weight":1},
                {"host":"example.com","weight":1}]"#,
        );
        let mut a = map.resolve(Scheme::Http).unwrap();
        let mut b = list.resolve(Scheme::Http).unwrap();
        a.sort_by_key(Node::address);
        b.sort_by_key(Node::address);
        assert_eq!(a, b);
        assert_eq!(a[0].address(), "127.0.0.1:1980");
        assert_eq!(a[1].address(), "[::1]:81");
        assert_eq!(a[2].address(), "example.com:80");
    }

    #[test]
    fn bad_nodes_are_reported_with_their_paths() {
        let errs =
            nodes(r#"[{"host":"a","port":0,"weight":1},{"host":"b","port":80,"weight":-1}]"#)
                .resolve(Scheme::Http)
                .unwrap_err();
        assert_eq!(
            errs,
            vec![
                FieldError::new("[0].port", "must be 1..65535"),
                FieldError::new("[1].weight", "must be 0..4294967295"),
            ]
        );
        let errs = nodes(r#"{"a:99999": 1}"#)
            .resolve(Scheme::Http)
            .unwrap_err();
        assert_eq!(errs[0].path, "[\"a:99999\"]");
    }
}
