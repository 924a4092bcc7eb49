//! Consul, two ways: its service catalog (`consul`) and instances written as keys of its KV
//! store (`consul_kv`), both over Consul's HTTP API.
//!
//! One task per configured server follows everything it holds with a blocking query (the
//! request waits on the server until something changes, or `timeout.wait` passes), or polls
//! every `fetch_interval` without `keepalive`. A service's nodes are those every server that
//! has answered knows of; a service none of them knows is `default_service`'s node, or has no
//! nodes. A server that fails keeps its last answer, and is asked again with backoff.
//!
//! The whole of each server is followed, not only the watched services, so that a dump shows
//! everything and a new watch is answered at once.

mod catalog;
mod client;
mod kv;

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::task::AbortHandle;

use crate::backoff::Backoff;
use crate::book::{Book, Provider, Publisher};
use crate::Node;
use crate::{ConsulKvSettings, ConsulSettings, ConsulTimeouts, DefaultService, DiscoveryError};
use client::{next_index, Client};

pub(crate) const CATALOG: &str = "consul";
pub(crate) const KV: &str = "consul_kv";

const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// One server's services and their nodes.
type Table = BTreeMap<String, Vec<Node>>;

/// The catalog provider; starts one follower per server.
pub(crate) fn catalog(
    settings: &ConsulSettings,
    book: &Arc<Book>,
) -> Result<Consul, DiscoveryError> {
    let mut skip: HashSet<String> = settings.skip_services.iter().cloned().collect();
    skip.insert("consul".to_owned());
    let flavor = Flavor::Catalog(catalog::Catalog {
        skip,
        weight: settings.weight,
    });
    let common = Common {
        servers: &settings.servers,
        token: &settings.token,
        keepalive: settings.keepalive,
        fetch_interval: settings.fetch_interval,
        weight: settings.weight,
        timeout: &settings.timeout,
        default_service: settings.default_service.as_ref(),
    };
    Consul::start(common, flavor, hide_token(settings), book)
}

/// The KV provider; starts one follower per server.
pub(crate) fn kv(settings: &ConsulKvSettings, book: &Arc<Book>) -> Result<Consul, DiscoveryError> {
    let flavor = Flavor::Kv(kv::Kv {
        prefix: settings.prefix.trim_matches('/').to_owned(),
        skip: settings.skip_keys.iter().cloned().collect(),
        weight: settings.weight,
    });
    let common = Common {
        servers: &settings.servers,
        token: &settings.token,
        keepalive: settings.keepalive,
        fetch_interval: settings.fetch_interval,
        weight: settings.weight,
        timeout: &settings.timeout,
        default_service: settings.default_service.as_ref(),
    };
    Consul::start(common, flavor, hide_token(settings), book)
}

/// The settings both flavors have.
struct Common<'a> {
    servers: &'a [String],
    token: &'a str,
    keepalive: bool,
    fetch_interval: u64,
    weight: u32,
    timeout: &'a ConsulTimeouts,
    default_service: Option<&'a DefaultService>,
}

enum Flavor {
    Catalog(catalog::Catalog),
    Kv(kv::Kv),
}

impl Flavor {
    fn kind(&self) -> &'static str {
        match self {
            Flavor::Catalog(_) => CATALOG,
            Flavor::Kv(_) => KV,
        }
    }

    /// What one server holds now (the services and their nodes) and the index of that, asking
    /// with a blocking query from `index` when `blocking` is `Some((index, wait))`.
    async fn fetch(
        &self,
        server: &str,
        client: &mut Client,
        blocking: Option<(u64, Duration)>,
    ) -> Result<(u64, Table), String> {
        let query = match blocking {
            Some((index, wait)) => format!("index={index}&wait={}s", wait.as_secs()),
            None => String::new(),
        };
        let wait = blocking.map_or(Duration::ZERO, |(_, wait)| blocking_slack(wait));
        match self {
            Flavor::Catalog(catalog) => catalog.fetch(client, &query, wait).await,
            Flavor::Kv(kv) => kv.fetch(server, client, &query, wait).await,
        }
    }
}

/// How much longer than `wait` a blocking query may take: Consul adds up to `wait / 16` to
/// spread the answers of many waiting clients.
fn blocking_slack(wait: Duration) -> Duration {
    wait + wait / 16
}

pub(crate) struct Consul {
    flavor: Arc<Flavor>,
    state: Arc<State>,
    /// The servers' URLs without a trailing `/`: a KV service name begins with one of them.
    servers: Vec<String>,
    config: Value,
    followers: Vec<AbortHandle>,
}

struct State {
    /// By server, in the settings' order: `None` until it first answered.
    tables: Mutex<Vec<Option<Table>>>,
    default_service: Option<Node>,
    book: Arc<Book>,
}

impl Consul {
    fn start(
        common: Common<'_>,
        flavor: Flavor,
        config: Value,
        book: &Arc<Book>,
    ) -> Result<Consul, DiscoveryError> {
        let kind = flavor.kind();
        let invalid = |reason: String| DiscoveryError::Settings { kind, reason };
        if common.servers.is_empty() {
            return Err(invalid("`servers` lists no server".to_owned()));
        }
        let timeout = common.timeout;
        let zeros = [
            ("fetch_interval", common.fetch_interval),
            ("timeout.connect", timeout.connect),
            ("timeout.read", timeout.read),
            ("timeout.wait", timeout.wait),
            ("weight", u64::from(common.weight)),
        ];
        if let Some((field, _)) = zeros.iter().find(|(_, value)| *value == 0) {
            return Err(invalid(format!("`{field}` must be at least 1")));
        }
        let default_service = match common.default_service {
            Some(service) => {
                let host = service.host.parse::<IpAddr>().map_err(|_| {
                    invalid(format!("default_service host `{}` is no IP", service.host))
                })?;
                let weight = service.metadata.get("weight").and_then(Value::as_u64);
                let weight = weight.and_then(|w| u32::try_from(w).ok()).unwrap_or(1);
                let mut node = Node::new(host.to_string(), service.port, weight);
                node.metadata = service.metadata.clone();
                Some(node)
            }
            None => None,
        };
        let mut servers = Vec::new();
        let mut authorities = Vec::new();
        for url in common.servers {
            let url = url.trim_end_matches('/');
            let authority = authority(url).map_err(|reason| invalid(format!("{url}: {reason}")))?;
            servers.push(url.to_owned());
            authorities.push(authority);
        }
        let state = Arc::new(State {
            tables: Mutex::new(vec![None; servers.len()]),
            default_service,
            book: book.clone(),
        });
        let flavor = Arc::new(flavor);
        let followers = authorities
            .into_iter()
            .enumerate()
            .map(|(index, authority)| {
                let follower = Follower {
                    state: state.clone(),
                    flavor: flavor.clone(),
                    server: index,
                    url: servers[index].clone(),
                    client: Client::new(
                        authority,
                        common.token,
                        Duration::from_millis(timeout.connect),
                        Duration::from_millis(timeout.read),
                    ),
                    blocking: common.keepalive.then(|| Duration::from_secs(timeout.wait)),
                    interval: Duration::from_secs(common.fetch_interval),
                };
                tokio::spawn(follower.run()).abort_handle()
            })
            .collect();
        Ok(Consul {
            flavor,
            state,
            servers,
            config,
            followers,
        })
    }
}

impl Drop for Consul {
    fn drop(&mut self) {
        for follower in &self.followers {
            follower.abort();
        }
    }
}

impl Provider for Consul {
    fn service(&self, name: &str) -> Result<String, DiscoveryError> {
        let bad = |reason: &str| DiscoveryError::BadServiceName {
            kind: self.flavor.kind(),
            name: name.to_owned(),
            reason: reason.to_owned(),
        };
        if let Flavor::Kv(_) = *self.flavor {
            // `<server>/v1/kv/<prefix>/<service>/`, as the keys' folders read.
            let known = self.servers.iter().any(|server| {
                name.strip_prefix(server.as_str())
                    .is_some_and(|path| path.starts_with("/v1/kv/"))
            });
            if !known || !name.ends_with('/') {
                return Err(bad("not `<server>/v1/kv/<folder>/` of a configured server"));
            }
        } else if name.is_empty() || name.contains(|c: char| c == '/' || c.is_whitespace()) {
            return Err(bad("not a Consul service name"));
        }
        Ok(name.to_owned())
    }

    fn follow(&self, service: &str, publisher: Publisher) -> Option<AbortHandle> {
        if let Some(nodes) = self.state.nodes(&self.state.tables(), service) {
            publisher.publish(nodes);
        }
        None
    }

    fn dump(&self, _: &Book) -> Value {
        let tables = self.state.tables();
        let mut names: Vec<&String> = tables.iter().flatten().flat_map(|t| t.keys()).collect();
        names.sort();
        names.dedup();
        let services: serde_json::Map<String, Value> = names
            .into_iter()
            .map(|name| {
                let nodes = self.state.nodes(&tables, name);
                (name.clone(), json!(nodes))
            })
            .collect();
        json!({"services": services, "config": self.config})
    }
}

impl State {
    fn tables(&self) -> MutexGuard<'_, Vec<Option<Table>>> {
        // A poisoned lock only means a panic elsewhere while it was held; the tables are whole.
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `service`'s nodes across the servers that have answered; `None` if none has.
    fn nodes(&self, tables: &[Option<Table>], service: &str) -> Option<Vec<Node>> {
        let answered: Vec<&Table> = tables.iter().flatten().collect();
        if answered.is_empty() {
            return None;
        }
        let mut known = false;
        let mut nodes = Vec::new();
        for table in answered {
            if let Some(found) = table.get(service) {
                known = true;
                nodes.extend(found.iter().cloned());
            }
        }
        if !known {
            nodes.extend(self.default_service.clone());
        }
        Some(nodes)
    }

    /// Makes `table` server `server`'s, and republishes every watched service.
    fn update(&self, server: usize, table: Table) {
        self.tables()[server] = Some(table);
        // Taken with the tables unlocked: a watch begins under the book's lock and then reads
        // the tables (already updated, if it is not among these publishers).
        let publishers = self.book.publishers();
        // Held while publishing, so that two servers' updates publish in the order they merge.
        let tables = self.tables();
        for (service, publisher) in publishers {
            if let Some(nodes) = self.nodes(&tables, &service) {
                publisher.publish(nodes);
            }
        }
    }
}

/// Follows one server.
struct Follower {
    state: Arc<State>,
    flavor: Arc<Flavor>,
    server: usize,
    url: String,
    client: Client,
    /// `Some(wait)` for blocking queries.
    blocking: Option<Duration>,
    /// Between polls, without blocking queries.
    interval: Duration,
}

impl Follower {
    async fn run(mut self) {
        let kind = self.flavor.kind();
        let mut retry = Backoff::new(FIRST_RETRY, MAX_RETRY);
        let mut index = 0;
        loop {
            let blocking = self.blocking.map(|wait| (index, wait));
            match self
                .flavor
                .fetch(&self.url, &mut self.client, blocking)
                .await
            {
                Ok((answered, table)) => {
                    retry.succeeded();
                    index = next_index(index, answered);
                    self.state.update(self.server, table);
                    if self.blocking.is_none() {
                        tokio::time::sleep(self.interval).await;
                    }
                }
                Err(error) => {
                    let wait = retry.failed();
                    tracing::warn!(
                        server = %self.url,
                        "{kind} discovery keeps the last answer: {error}; asking again in {wait:?}"
                    );
                    // The next answer is a whole one, whatever changed meanwhile.
                    index = 0;
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

/// `host:port` of an `http://host[:port]` URL (port 80 by default).
fn authority(url: &str) -> Result<String, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("only http:// servers are supported".to_owned());
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err("a server is `http://host:port`, without a path".to_owned());
    }
    let host = uri.host().ok_or("no host")?;
    Ok(format!("{host}:{}", uri.port_u16().unwrap_or(80)))
}

/// The settings as a dump shows them: the token hidden.
fn hide_token<S: serde::Serialize>(settings: &S) -> Value {
    let mut config = json!(settings);
    if let Some(token) = config.get_mut("token") {
        if token.as_str().is_some_and(|t| !t.is_empty()) {
            *token = json!("******");
        }
    }
    config
}

/// An instance's address if it is an IP literal (Consul also holds names, which a node of
/// Pylon's cannot be); warns about any other.
fn ip_literal(address: &str, what: &str) -> Option<String> {
    match address.trim().parse::<IpAddr>() {
        Ok(ip) => Some(ip.to_string()),
        Err(_) => {
            tracing::warn!("consul discovery: {what} has address `{address}`, no IP; left out");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_http_urls_without_a_path() {
        assert_eq!(
            authority("http://127.0.0.1:8500"),
            Ok("127.0.0.1:8500".to_owned())
        );
        assert_eq!(
            authority("http://consul.internal"),
            Ok("consul.internal:80".to_owned())
        );
        assert!(authority("https://127.0.0.1:8500").is_err());
        assert!(authority("http://127.0.0.1:8500/v1").is_err());
    }

    #[tokio::test]
    async fn settings_without_servers_or_with_zeros_are_refused() {
        let book = Arc::new(Book::new(
            CATALOG,
            Arc::new(tokio::sync::watch::Sender::new(0)),
        ));
        let refusal = |edit: fn(&mut ConsulSettings)| {
            let mut settings = ConsulSettings {
                servers: vec!["http://127.0.0.1:8500".to_owned()],
                ..ConsulSettings::default()
            };
            edit(&mut settings);
            catalog(&settings, &book).err().map(|e| e.to_string())
        };
        assert_eq!(refusal(|_| {}), None);
        assert!(refusal(|s| s.servers.clear())
            .unwrap()
            .contains("no server"));
        assert!(refusal(|s| s.fetch_interval = 0)
            .unwrap()
            .contains("fetch_interval"));
        assert!(refusal(|s| s.timeout.wait = 0)
            .unwrap()
            .contains("timeout.wait"));
        assert!(refusal(|s| s.weight = 0).unwrap().contains("weight"));
        let bad_default = |s: &mut ConsulSettings| {
            s.default_service = Some(DefaultService {
                host: "web.internal".to_owned(),
                port: 80,
                metadata: serde_json::Map::new(),
            })
        };
        assert!(refusal(bad_default).unwrap().contains("no IP"));
    }

    #[test]
    fn a_dump_hides_the_token() {
        let settings = ConsulSettings {
            token: "secret".to_owned(),
            ..ConsulSettings::default()
        };
        assert_eq!(hide_token(&settings)["token"], "******");
        assert_eq!(hide_token(&ConsulSettings::default())["token"], "");
    }
}
