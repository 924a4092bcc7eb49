//! Service discovery: the nodes of upstreams that name a `discovery_type` and a `service_name`
//! instead of listing nodes, found and kept current in the background.
//!
//! A [`Registry`] is built once from the node config's `discovery:` section, on the control
//! runtime. [`Registry::watch`] answers at once with a [`ServiceWatch`] whose nodes fill in when
//! the provider first answers; every network exchange runs in tasks of that runtime, so no
//! caller ever waits on a resolver, etcd or Consul. Whenever a watched service's nodes change,
//! the counter of [`Registry::changed`] moves on, and the owner recompiles what uses them.
//!
//! Providers (one module each, behind one `Provider` trait):
//! - `dns`: A/AAAA for `host[:port]`, SRV for `_service._proto.name`, re-resolved as the
//!   records' TTL says; needs no settings (the system's resolver config is used).
//! - `etcd`: Pylon's own registry of leased keys, one etcd watch per service.
//! - `consul` and `consul_kv`: Consul's catalog and KV store, one blocking query per server.
#![forbid(unsafe_code)]

mod backoff;
mod book;
mod consul;
mod dns;
mod etcd;
mod settings;

pub use book::ServiceWatch;
pub use settings::{
    ConsulKvSettings, ConsulSettings, ConsulTimeouts, DefaultService, DiscoverySettings,
    DnsSettings, EtcdRegistrySettings,
};

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use book::{Book, Provider};

/// One instance of a service, as a balancer uses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    /// An IP address literal (IPv6 without brackets): no provider hands out names.
    pub host: String,
    /// 0 when the service name gave none and the provider has none (a DNS name without a port):
    /// the upstream's default port for its scheme applies.
    pub port: u16,
    pub weight: u32,
    /// Higher is preferred; lower tiers are backups (an SRV record's priority, negated).
    pub priority: i32,
    /// What the provider says about the instance beyond its address (etcd's `metadata`,
    /// Consul's service `Meta`, a Consul KV value's other fields).
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub metadata: serde_json::Map<String, Value>,
}

impl Node {
    fn new(host: String, port: u16, weight: u32) -> Node {
        Node {
            host,
            port,
            weight,
            priority: 0,
            metadata: serde_json::Map::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    #[error("unknown discovery_type `{0}`")]
    UnknownType(String),
    #[error("discovery_type `{0}` is not configured (no `discovery.{0}` in the node config)")]
    NotConfigured(&'static str),
    #[error("invalid service_name `{name}` for discovery_type `{kind}`: {reason}")]
    BadServiceName {
        kind: &'static str,
        name: String,
        reason: String,
    },
    #[error("discovery_type `{0}` takes no discovery_args")]
    UnexpectedArgs(&'static str),
    #[error("the DNS resolver cannot be set up: {0}")]
    Resolver(String),
    #[error("invalid `discovery.{kind}` settings: {reason}")]
    Settings { kind: &'static str, reason: String },
}

/// Every provider the node config enables (DNS always), and the services being watched.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    /// By discovery type; a type absent from the settings is `None`.
    providers: BTreeMap<&'static str, Option<Source>>,
    changed: Arc<watch::Sender<u64>>,
}

/// One configured discovery type: its watched services and what keeps them current.
struct Source {
    book: Arc<Book>,
    provider: Box<dyn Provider>,
}

impl Source {
    fn new<P: Provider>(
        kind: &'static str,
        changed: &Arc<watch::Sender<u64>>,
        provider: impl FnOnce(&Arc<Book>) -> Result<P, DiscoveryError>,
    ) -> Result<Source, DiscoveryError> {
        let book = Arc::new(Book::new(kind, changed.clone()));
        let provider = Box::new(provider(&book)?);
        Ok(Source { book, provider })
    }
}

impl Registry {
    /// Checks the settings and starts the providers that follow all their services at once
    /// (Consul's), in tasks of the current Tokio runtime, which must be there.
    pub fn new(settings: &DiscoverySettings) -> Result<Registry, DiscoveryError> {
        let changed = Arc::new(watch::Sender::new(0));
        let dns = settings.dns.clone().unwrap_or_default();
        let dns = Source::new(dns::KIND, &changed, |_| dns::Dns::new(dns))?;
        let etcd = settings
            .etcd
            .as_ref()
            .map(|etcd| Source::new(etcd::KIND, &changed, |_| etcd::Etcd::new(etcd)));
        let consul = settings.consul.as_ref().map(|consul| {
            Source::new(consul::CATALOG, &changed, |book| {
                consul::catalog(consul, book)
            })
        });
        let consul_kv = settings
            .consul_kv
            .as_ref()
            .map(|consul_kv| Source::new(consul::KV, &changed, |book| consul::kv(consul_kv, book)));
        let providers = BTreeMap::from([
            (dns::KIND, Some(dns)),
            (etcd::KIND, etcd.transpose()?),
            (consul::CATALOG, consul.transpose()?),
            (consul::KV, consul_kv.transpose()?),
        ]);
        Ok(Registry {
            inner: Arc::new(Inner { providers, changed }),
        })
    }

    /// Starts (or shares) watching one service. The handle keeps it watched; once every handle
    /// of a service is dropped, its provider stops following it.
    ///
    /// For `dns`, `service_name` may be any upstream node's host (`api.internal:8080`,
    /// `api.internal`, an IP literal): this is how ordinary host names are re-resolved.
    pub fn watch(
        &self,
        discovery_type: &str,
        service_name: &str,
        args: Option<&Value>,
    ) -> Result<ServiceWatch, DiscoveryError> {
        let (kind, source) = self
            .inner
            .providers
            .get_key_value(discovery_type)
            .ok_or_else(|| DiscoveryError::UnknownType(discovery_type.to_owned()))?;
        let Source { book, provider } =
            source.as_ref().ok_or(DiscoveryError::NotConfigured(kind))?;
        if args.is_some_and(|args| !is_empty(args)) {
            return Err(DiscoveryError::UnexpectedArgs(kind));
        }
        let service = provider.service(service_name)?;
        Ok(book.subscribe(&service, |publisher| provider.follow(&service, publisher)))
    }

    /// A counter that moves on whenever a watched service's nodes change.
    pub fn changed(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// The body of the control API's `GET /v1/discovery/<type>/dump`: `services` (name → nodes,
    /// `null` before the first answer) and the provider's `config`, secrets hidden. `None` for a
    /// type that is unknown or not configured.
    pub fn dump(&self, discovery_type: &str) -> Option<Value> {
        let source = self.inner.providers.get(discovery_type)?.as_ref()?;
        Some(source.provider.dump(&source.book))
    }
}

/// `null`, `{}` and `[]` say nothing, as no `discovery_args` at all.
fn is_empty(args: &Value) -> bool {
    match args {
        Value::Null => true,
        Value::Object(map) => map.is_empty(),
        Value::Array(list) => list.is_empty(),
        _ => false,
    }
}
