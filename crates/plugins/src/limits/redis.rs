//! The Redis policies of the limiting plugins: APISIX's `redis_*` fields read into a
//! [`pylon_redis::Settings`], and a limiting plugin's call to Redis as a [`Call`] that never
//! holds a request past `redis_timeout`.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use pylon_model::FieldError;
use pylon_plugin::{Call, CallError, FailurePolicy, Reply};
use pylon_redis::{Address, Redis, Settings, Topology};
use serde::Deserialize;
use serde_json::Value;

use super::Policy;
use crate::config::parse;

/// APISIX's default `redis_timeout`, in milliseconds.
const DEFAULT_TIMEOUT_MS: u64 = 1000;

/// The status of a request refused because its counters could not be reached and
/// `allow_degradation` is off (APISIX's).
const UNAVAILABLE_STATUS: u16 = 500;

/// The Redis fields of a limiting plugin's configuration, as APISIX names them, plus
/// Pylon's Sentinel fields.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedisFields {
    redis_host: Option<String>,
    redis_port: Option<u16>,
    redis_username: Option<String>,
    redis_password: Option<String>,
    redis_database: Option<u32>,
    /// Milliseconds.
    redis_timeout: Option<u64>,
    #[serde(default)]
    redis_ssl: bool,
    #[serde(default)]
    redis_ssl_verify: bool,
    // APISIX's connection pool settings: each worker keeps one multiplexed connection to a
    // server instead, so these are accepted and have nothing to set.
    #[allow(dead_code)]
    redis_keepalive_timeout: Option<u64>,
    #[allow(dead_code)]
    redis_keepalive_pool: Option<u64>,
    redis_cluster_nodes: Option<Vec<String>>,
    redis_cluster_name: Option<String>,
    #[serde(default)]
    redis_cluster_ssl: bool,
    #[serde(default)]
    redis_cluster_ssl_verify: bool,
    redis_sentinels: Option<Vec<String>>,
    redis_sentinel_master: Option<String>,
    redis_sentinel_password: Option<String>,
    /// What the keys start with, instead of `pylon`.
    redis_prefix: Option<String>,
    // APISIX's counters synchronised every `sync_interval` seconds; Pylon's are counted in
    // Redis on every request, so there is nothing to synchronise.
    #[allow(dead_code)]
    sync_interval: Option<f64>,
}

fn is_redis_field(field: &str) -> bool {
    field.starts_with("redis_") || field == "sync_interval"
}

/// Where a limiting plugin counts.
pub(crate) enum Store {
    Local,
    Redis(Shared),
}

/// A plugin's Redis, and what to do when it cannot be reached.
pub(crate) struct Shared {
    pub redis: Arc<Redis>,
    /// Let requests through when Redis fails (`allow_degradation`), or refuse them.
    pub allow_degradation: bool,
    /// What every key starts with (`redis_prefix`, by default `pylon`).
    namespace: String,
}

/// Splits a limiting plugin's `config` into its own fields and its store. The `redis_*`
/// fields are read for the Redis policies, and dropped for `local` (APISIX keeps them in a
/// configuration moved back to `local`). Errors name the field.
pub(crate) fn store(config: &Value) -> Result<(Cow<'_, Value>, Store), FieldError> {
    let Value::Object(map) = config else {
        return Ok((Cow::Borrowed(config), Store::Local));
    };
    if !map.keys().any(|f| is_redis_field(f)) && map.get("policy").is_none() {
        return Ok((Cow::Borrowed(config), Store::Local));
    }
    let (redis, own): (serde_json::Map<_, _>, serde_json::Map<_, _>) = map
        .iter()
        .map(|(field, value)| (field.clone(), value.clone()))
        .partition(|(field, _)| is_redis_field(field));
    let policy: Policy = match own.get("policy") {
        Some(policy) => parse(policy).map_err(|e| e.within("policy"))?,
        None => Policy::Local,
    };
    let allow_degradation = match own.get("allow_degradation") {
        Some(Value::Bool(allow)) => *allow,
        Some(_) => return Err(FieldError::new("allow_degradation", "must be a boolean")),
        None => false,
    };
    let mut fields: RedisFields = parse(&Value::Object(redis))?;
    let namespace = match fields.redis_prefix.take() {
        Some(prefix) if prefix.is_empty() => {
            return Err(FieldError::new("redis_prefix", "must not be empty"));
        }
        prefix => prefix.unwrap_or_else(|| "pylon".to_owned()),
    };
    let store = match settings(policy, fields)? {
        None => Store::Local,
        Some(settings) => Store::Redis(Shared {
            redis: Redis::shared(settings),
            allow_degradation,
            namespace,
        }),
    };
    Ok((Cow::Owned(Value::Object(own)), store))
}

/// The Redis of a configuration other than a limiting plugin's (a push gateway's `redis`):
/// `limit-count`'s Redis fields, with `policy` `redis` or `redis-cluster`. Answers the
/// shared client and what every key starts with (`redis_prefix`, by default `pylon`).
pub fn shared_redis(config: &Value) -> Result<(Arc<Redis>, String), FieldError> {
    if !config.is_object() {
        return Err(FieldError::new("", "must be an object"));
    }
    let (own, store) = store(config)?;
    let unknown = own
        .as_object()
        .and_then(|o| o.keys().find(|f| *f != "policy"));
    if let Some(field) = unknown {
        return Err(FieldError::new(field.as_str(), "is not a Redis field"));
    }
    match store {
        Store::Redis(shared) => Ok((shared.redis, shared.namespace)),
        Store::Local => Err(FieldError::new(
            "policy",
            "must be `redis` or `redis-cluster`",
        )),
    }
}

/// The settings of `policy`, or `None` for `local`.
fn settings(policy: Policy, f: RedisFields) -> Result<Option<Settings>, FieldError> {
    let timeout_ms = f.redis_timeout.unwrap_or(DEFAULT_TIMEOUT_MS);
    if timeout_ms == 0 {
        return Err(FieldError::new("redis_timeout", "must be at least 1 (ms)"));
    }
    let timeout = Duration::from_millis(timeout_ms);
    let non_empty = |field: &str, value: Option<String>| match value {
        Some(v) if v.is_empty() => Err(FieldError::new(field, "must not be empty")),
        other => Ok(other),
    };
    let username = non_empty("redis_username", f.redis_username)?;
    let password = f.redis_password.filter(|p| !p.is_empty());
    let (topology, database, tls_verify) = match policy {
        Policy::Local => return Ok(None),
        Policy::Redis => {
            let tls = f.redis_ssl.then_some(f.redis_ssl_verify);
            let database = i64::from(f.redis_database.unwrap_or(0));
            let topology = match (f.redis_host, f.redis_sentinels) {
                (Some(_), Some(_)) => {
                    return Err(FieldError::new(
                        "redis_sentinels",
                        "give either `redis_host` or `redis_sentinels`, not both",
                    ))
                }
                (Some(host), None) => {
                    let host = non_empty("redis_host", Some(host))?.unwrap_or_default();
                    let port = f.redis_port.unwrap_or(6379);
                    if port == 0 {
                        return Err(FieldError::new("redis_port", "must be 1 to 65535"));
                    }
                    Topology::Single(Address { host, port })
                }
                (None, Some(sentinels)) => Topology::Sentinel {
                    sentinels: addresses("redis_sentinels", &sentinels)?,
                    master: non_empty("redis_sentinel_master", f.redis_sentinel_master)?
                        .ok_or_else(|| {
                            FieldError::new(
                                "redis_sentinel_master",
                                "is required with `redis_sentinels`",
                            )
                        })?,
                    password: f.redis_sentinel_password.filter(|p| !p.is_empty()),
                },
                (None, None) => {
                    return Err(FieldError::new(
                        "redis_host",
                        "is required with `policy: redis` (or `redis_sentinels`)",
                    ))
                }
            };
            (topology, database, tls)
        }
        Policy::RedisCluster => {
            let nodes = f.redis_cluster_nodes.ok_or_else(|| {
                FieldError::new(
                    "redis_cluster_nodes",
                    "is required with `policy: redis-cluster`",
                )
            })?;
            // APISIX requires the name; it names the cluster in logs only.
            non_empty("redis_cluster_name", f.redis_cluster_name)?.ok_or_else(|| {
                FieldError::new(
                    "redis_cluster_name",
                    "is required with `policy: redis-cluster`",
                )
            })?;
            let tls = f.redis_cluster_ssl.then_some(f.redis_cluster_ssl_verify);
            (
                Topology::Cluster(addresses("redis_cluster_nodes", &nodes)?),
                0,
                tls,
            )
        }
    };
    Ok(Some(Settings {
        topology,
        username,
        password,
        database,
        tls_verify,
        timeout,
    }))
}

/// `host:port` strings (`[v6]:port` for IPv6); at least one. Errors name the item.
fn addresses(field: &str, list: &[String]) -> Result<Vec<Address>, FieldError> {
    if list.is_empty() {
        return Err(FieldError::new(field, "must name at least one `host:port`"));
    }
    list.iter()
        .enumerate()
        .map(|(i, item)| {
            let bad = || {
                FieldError::new(
                    format!("{field}[{i}]"),
                    format!("`{item}` is not `host:port`"),
                )
            };
            let (host, port) = item.rsplit_once(':').ok_or_else(bad)?;
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            let port: u16 = port.parse().map_err(|_| bad())?;
            if host.is_empty() || port == 0 || host.contains(':') && !item.starts_with('[') {
                return Err(bad());
            }
            Ok(Address {
                host: host.to_owned(),
                port,
            })
        })
        .collect()
}

impl Store {
    /// The counts in Redis of plugin `plugin` configured with `config` at `owner`; `None` for
    /// `local`.
    pub fn redis_counts(self, plugin: &str, owner: &str, config: &Value) -> Option<RedisCounts> {
        match self {
            Store::Local => None,
            Store::Redis(shared) => Some(shared.counts(plugin, owner, config)),
        }
    }
}

/// A plugin's counts in Redis: its server, and the start of their keys.
pub(crate) struct RedisCounts {
    pub shared: Shared,
    prefix: String,
}

impl RedisCounts {
    /// The Redis key of the count of `key`.
    pub fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

impl Shared {
    /// The counts of plugin `plugin` configured with `config` at `owner`, under keys
    /// `pylon:<plugin>:<owner>:<hash of config>:<key>`. Every node that serves the
    /// configuration names the same keys, and a changed configuration counts afresh, as on a
    /// node.
    pub fn counts(self, plugin: &str, owner: &str, config: &Value) -> RedisCounts {
        let hash = crc32fast::hash(config.to_string().as_bytes());
        let prefix = format!("{}:{plugin}:{owner}:{hash:08x}:", self.namespace);
        RedisCounts {
            shared: self,
            prefix,
        }
    }

    /// A call to Redis that decides the request (`work`'s `Ok(Some(reply))` refuses it),
    /// and may then hold it for up to `longest_hold`. When Redis fails or is slower than its
    /// `redis_timeout`, the request goes on with `allow_degradation`, and is refused with a
    /// 500 without.
    pub fn call<'a>(
        &self,
        longest_hold: Duration,
        work: impl Future<Output = Result<Option<Reply>, pylon_redis::Error>> + 'a,
    ) -> Call<'a> {
        Call {
            work: Box::pin(async move { work.await.map_err(|e| CallError::Failed(e.to_string())) }),
            // The Redis client bounds each call by `redis_timeout` itself, and counts what
            // timed out; this bound is only a backstop past it.
            timeout: self.redis.settings().timeout + Duration::from_millis(100) + longest_hold,
            policy: if self.allow_degradation {
                FailurePolicy::Open
            } else {
                FailurePolicy::Closed {
                    status: UNAVAILABLE_STATUS,
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn error(config: Value) -> FieldError {
        store(&config).err().expect("refused")
    }

    #[test]
    fn local_drops_the_redis_fields_as_apisix_keeps_them() {
        let config =
            json!({"policy": "local", "redis_host": "10.0.0.1", "sync_interval": 1, "count": 2});
        let (own, local) = store(&config).unwrap();
        assert_eq!(*own, json!({"policy": "local", "count": 2}));
        assert!(matches!(local, Store::Local));
        let plain = json!({"count": 2});
        assert!(matches!(store(&plain).unwrap().0, Cow::Borrowed(_)));
    }

    #[test]
    fn the_redis_policies_read_apisix_fields() {
        let config = json!({"policy": "redis", "redis_host": "127.0.0.1", "redis_port": 6380,
            "redis_password": "pw", "redis_database": 2, "redis_timeout": 250,
            "redis_ssl": true, "allow_degradation": true, "count": 1});
        let (own, Store::Redis(shared)) = store(&config).unwrap() else {
            panic!("a Redis store")
        };
        assert_eq!(
            *own,
            json!({"policy": "redis", "allow_degradation": true, "count": 1})
        );
        assert!(shared.allow_degradation);
        let settings = shared.redis.settings();
        assert_eq!(
            settings.topology,
            Topology::Single(Address {
                host: "127.0.0.1".into(),
                port: 6380
            })
        );
        assert_eq!(
            (settings.database, settings.password.as_deref()),
            (2, Some("pw"))
        );
        assert_eq!(settings.tls_verify, Some(false));
        assert_eq!(settings.timeout, Duration::from_millis(250));

        let config = json!({"policy": "redis-cluster", "redis_cluster_name": "c",
            "redis_cluster_nodes": ["127.0.0.1:7000", "[::1]:7001"]});
        let (_, Store::Redis(shared)) = store(&config).unwrap() else {
            panic!("a Redis store")
        };
        let Topology::Cluster(nodes) = &shared.redis.settings().topology else {
            panic!("a cluster")
        };
        assert_eq!(nodes[1].to_string(), "[::1]:7001");

        let config = json!({"policy": "redis", "redis_sentinels": ["127.0.0.1:26379"],
            "redis_sentinel_master": "main"});
        let (_, Store::Redis(shared)) = store(&config).unwrap() else {
            panic!("a Redis store")
        };
        assert!(matches!(
            &shared.redis.settings().topology,
            Topology::Sentinel { master, .. } if master == "main"
        ));
    }

    #[test]
    fn one_settings_one_client() {
        let config = json!({"policy": "redis", "redis_host": "127.0.0.1", "redis_port": 6390});
        let (_, Store::Redis(a)) = store(&config).unwrap() else {
            panic!()
        };
        let (_, Store::Redis(b)) = store(&config).unwrap() else {
            panic!()
        };
        assert!(Arc::ptr_eq(&a.redis, &b.redis));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (json!({"policy": "redis"}), "redis_host"),
            (json!({"policy": "redis", "redis_host": ""}), "redis_host"),
            (
                json!({"policy": "redis", "redis_host": "h", "redis_port": 0}),
                "redis_port",
            ),
            (
                json!({"policy": "redis", "redis_host": "h", "redis_timeout": 0}),
                "redis_timeout",
            ),
            (
                json!({"policy": "redis", "redis_host": "h", "redis_color": 1}),
                "redis_color",
            ),
            (
                json!({"policy": "redis", "redis_sentinels": ["h:1"]}),
                "redis_sentinel_master",
            ),
            (
                json!({"policy": "redis", "redis_host": "h", "redis_sentinels": ["h:1"]}),
                "redis_sentinels",
            ),
            (
                json!({"policy": "redis-cluster", "redis_cluster_name": "c"}),
                "redis_cluster_nodes",
            ),
            (
                json!({"policy": "redis-cluster", "redis_cluster_nodes": ["h:1"]}),
                "redis_cluster_name",
            ),
            (
                json!({"policy": "redis-cluster", "redis_cluster_name": "c", "redis_cluster_nodes": []}),
                "redis_cluster_nodes",
            ),
            (
                json!({"policy": "redis-cluster", "redis_cluster_name": "c", "redis_cluster_nodes": ["h:1", "h"]}),
                "redis_cluster_nodes[1]",
            ),
            (
                json!({"policy": "redis-cluster", "redis_cluster_name": "c", "redis_cluster_nodes": ["::1:7000"]}),
                "redis_cluster_nodes[0]",
            ),
            (json!({"policy": "memcached"}), "policy"),
            (
                json!({"policy": "redis", "redis_host": "h", "allow_degradation": "yes"}),
                "allow_degradation",
            ),
        ];
        for (config, path) in cases {
            assert_eq!(error(config.clone()).path, path, "{config}");
        }
    }
}
