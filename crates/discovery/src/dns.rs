//! DNS: a service name is a host name, resolved again whenever its records' TTL runs out.
//!
//! - `host:port` and `host` ask for A and AAAA records; the port is the name's, or 0 (the
//!   upstream's default for its scheme) when it has none. An IP literal is its own one node.
//! - `_service._proto.name` (and `…:port`) asks for SRV records, then for each target's
//!   addresses: weight and port come from the SRV record (a port in the name wins), and the
//!   priority is the SRV priority negated, since SRV prefers its lowest and Pylon its highest.
//!
//! An answer is kept for the smallest TTL among the records it took, clamped to
//! `[ttl_floor, ttl_ceiling]`. A name that does not exist, or has no such records, is a service
//! without instances (asked again after its negative TTL, clamped alike). A resolver that fails
//! leaves the last good answer in place, and is asked again with backoff.
//!
//! Built on hickory-resolver, a pure-Rust stub resolver: UDP with TCP fallback, the system's
//! `resolv.conf` (search domains, ndots, several servers), and the TTLs of what it returns.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfigGroup, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{Name, ResolveError, TokioResolver};
use serde_json::{json, Value};
use tokio::task::AbortHandle;

use crate::backoff::Backoff;
use crate::book::{Book, Provider, Publisher};
use crate::{DiscoveryError, DnsSettings, Node};

pub(crate) const KIND: &str = "dns";

/// The longest wait between two attempts of a failing resolver.
const MAX_RETRY: Duration = Duration::from_secs(30);

pub(crate) struct Dns {
    settings: DnsSettings,
    servers: Vec<SocketAddr>,
    /// Made on the first watch: reading `resolv.conf` waits until a name is to be resolved,
    /// so that a node that resolves none starts without one.
    resolver: OnceLock<Result<Arc<TokioResolver>, String>>,
}

impl Dns {
    pub fn new(settings: DnsSettings) -> Result<Dns, DiscoveryError> {
        let invalid = |reason: String| DiscoveryError::Settings { kind: KIND, reason };
        if settings.ttl_floor > settings.ttl_ceiling {
            return Err(invalid("ttl_floor is above ttl_ceiling".to_owned()));
        }
        let servers = settings
            .servers
            .iter()
            .map(|server| {
                let address = server
                    .parse::<SocketAddr>()
                    .or_else(|_| server.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)));
                address.map_err(|_| invalid(format!("server `{server}` is not ip or ip:port")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Dns {
            settings,
            servers,
            resolver: OnceLock::new(),
        })
    }

    fn resolver(&self) -> Result<Arc<TokioResolver>, DiscoveryError> {
        self.resolver
            .get_or_init(|| self.build_resolver().map(Arc::new))
            .clone()
            .map_err(DiscoveryError::Resolver)
    }

    fn build_resolver(&self) -> Result<TokioResolver, String> {
        let (config, mut options) = if self.servers.is_empty() {
            let path = self.settings.resolv_conf.as_deref();
            let path = path.unwrap_or("/etc/resolv.conf".as_ref());
            let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            hickory_resolver::system_conf::parse_resolv_conf(text)
                .map_err(|e| format!("{}: {e}", path.display()))?
        } else {
            let mut servers = NameServerConfigGroup::new();
            for server in &self.servers {
                servers.merge(NameServerConfigGroup::from_ips_clear(
                    &[server.ip()],
                    server.port(),
                    true,
                ));
            }
            let mut options = ResolverOpts::default();
            // Names given are whole: no search domain from a config that is not used.
            options.use_hosts_file = ResolveHosts::Never;
            (
                ResolverConfig::from_parts(None, Vec::new(), servers),
                options,
            )
        };
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        options.timeout = self.settings.timeout;
        // Every service re-asks when its TTL runs out; a cache in between would only answer
        // with what is about to expire.
        options.cache_size = 0;
        let provider = TokioConnectionProvider::default();
        Ok(TokioResolver::builder_with_config(config, provider)
            .with_options(options)
            .build())
    }
}

/// What one service name asks for.
#[derive(Debug, Clone, PartialEq)]
enum Query {
    /// An address already: no question to ask.
    Literal(IpAddr),
    Host(Name),
    Srv(Name),
}

/// The query and port a service name stands for: `host`, `host:port`, `[v6]:port`, or an IP.
fn parse(service: &str) -> Result<(Query, u16), String> {
    if let Ok(ip) = service.parse::<IpAddr>() {
        return Ok((Query::Literal(ip), 0));
    }
    if let Ok(address) = service.parse::<SocketAddr>() {
        return Ok((Query::Literal(address.ip()), address.port()));
    }
    let (host, port) = match service.rsplit_once(':') {
        Some((host, port)) => {
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("`{port}` is not a port"))?;
            (host, port)
        }
        None => (service, 0),
    };
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err("not a host name".to_owned());
    }
    let name = Name::from_ascii(host).map_err(|e| e.to_string())?;
    let query = if host.starts_with('_') {
        Query::Srv(name)
    } else {
        Query::Host(name)
    };
    Ok((query, port))
}

impl Provider for Dns {
    fn service(&self, name: &str) -> Result<String, DiscoveryError> {
        // Host names are not case-sensitive: one watch for every spelling.
        let service = name.to_ascii_lowercase();
        let (query, _) = parse(&service).map_err(|reason| DiscoveryError::BadServiceName {
            kind: KIND,
            name: name.to_owned(),
            reason,
        })?;
        // The resolver is needed from the first name on: an unreadable config is the watch's
        // error, not a silent empty service.
        if !matches!(query, Query::Literal(_)) {
            self.resolver()?;
        }
        Ok(service)
    }

    fn follow(&self, service: &str, publisher: Publisher) -> Option<AbortHandle> {
        let (query, port) = parse(service).ok()?;
        if let Query::Literal(ip) = query {
            // An address never changes: published once, nothing to follow.
            publisher.publish(vec![Node::new(ip.to_string(), port, 1)]);
            return None;
        }
        // `service` checked that the resolver could be made.
        let resolver = self.resolver().ok()?;
        let follower = Follower {
            resolver,
            query,
            port,
            floor: self.settings.ttl_floor,
            ceiling: self.settings.ttl_ceiling,
        };
        let service = service.to_owned();
        let retry = Backoff::new(
            self.settings.ttl_floor,
            MAX_RETRY.max(self.settings.ttl_floor),
        );
        Some(tokio::spawn(follower.run(service, publisher, retry)).abort_handle())
    }

    fn dump(&self, book: &Book) -> Value {
        json!({"services": book.services(), "config": self.settings})
    }
}

/// Resolves one service again and again.
struct Follower {
    resolver: Arc<TokioResolver>,
    query: Query,
    port: u16,
    floor: Duration,
    ceiling: Duration,
}

impl Follower {
    async fn run(self, service: String, publisher: Publisher, mut retry: Backoff) {
        loop {
            let wait = match self.resolve().await {
                Ok((nodes, ttl)) => {
                    retry.succeeded();
                    publisher.publish(nodes);
                    ttl.clamp(self.floor, self.ceiling)
                }
                Err(error) => {
                    let wait = retry.failed();
                    tracing::warn!(%service, "DNS discovery keeps the last answer: {error}; asking again in {wait:?}");
                    wait
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// The nodes and how long they hold, or why the resolver gave no answer.
    async fn resolve(&self) -> Result<(Vec<Node>, Duration), ResolveError> {
        match &self.query {
            Query::Host(name) => {
                let (ips, ttl) = self.addresses(name).await?;
                let nodes = ips
                    .into_iter()
                    .map(|ip| Node::new(ip.to_string(), self.port, 1))
                    .collect();
                Ok((nodes, ttl))
            }
            Query::Srv(name) => self.srv(name).await,
            Query::Literal(ip) => {
                let node = Node::new(ip.to_string(), self.port, 1);
                Ok((vec![node], self.ceiling))
            }
        }
    }

    async fn srv(&self, name: &Name) -> Result<(Vec<Node>, Duration), ResolveError> {
        let lookup = match self.resolver.lookup(name.clone(), RecordType::SRV).await {
            Ok(lookup) => lookup,
            Err(error) => return absent(error),
        };
        let mut ttl = remaining(lookup.valid_until());
        let mut nodes = Vec::new();
        for record in lookup.iter() {
            let RData::SRV(srv) = record else { continue };
            // "." says the service is decidedly not offered.
            if srv.target().is_root() {
                continue;
            }
            let (ips, target_ttl) = self.addresses(srv.target()).await?;
            ttl = ttl.min(target_ttl);
            let port = if self.port != 0 {
                self.port
            } else {
                srv.port()
            };
            for ip in ips {
                let mut node = Node::new(ip.to_string(), port, srv.weight().into());
                node.priority = -i32::from(srv.priority());
                nodes.push(node);
            }
        }
        Ok((nodes, ttl))
    }

    /// `name`'s IPv4 and IPv6 addresses; none if it has none or does not exist.
    async fn addresses(&self, name: &Name) -> Result<(Vec<IpAddr>, Duration), ResolveError> {
        match self.resolver.lookup_ip(name.clone()).await {
            Ok(lookup) => Ok((lookup.iter().collect(), remaining(lookup.valid_until()))),
            Err(error) => absent(error),
        }
    }
}

/// An answer that there is nothing (no such name, or no such records), held for the negative
/// TTL the server gave; any other error is the resolver's failure.
fn absent<T: Default>(error: ResolveError) -> Result<(T, Duration), ResolveError> {
    match error.proto().map(|e| e.kind()) {
        Some(ProtoErrorKind::NoRecordsFound { negative_ttl, .. }) => {
            let ttl = Duration::from_secs(negative_ttl.unwrap_or(0).into());
            Ok((T::default(), ttl))
        }
        _ => Err(error),
    }
}

fn remaining(valid_until: Instant) -> Duration {
    valid_until.saturating_duration_since(Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_are_hosts_with_or_without_a_port_srv_names_or_addresses() {
        let host = |name: &str| Name::from_ascii(name).unwrap();
        assert_eq!(
            parse("api.internal:8080"),
            Ok((Query::Host(host("api.internal")), 8080))
        );
        assert_eq!(
            parse("api.internal"),
            Ok((Query::Host(host("api.internal")), 0))
        );
        assert_eq!(
            parse("_http._tcp.web.internal"),
            Ok((Query::Srv(host("_http._tcp.web.internal")), 0))
        );
        assert_eq!(
            parse("10.0.0.1:80"),
            Ok((Query::Literal("10.0.0.1".parse().unwrap()), 80))
        );
        assert_eq!(
            parse("[::1]:80"),
            Ok((Query::Literal("::1".parse().unwrap()), 80))
        );
        assert_eq!(
            parse("::1"),
            Ok((Query::Literal("::1".parse().unwrap()), 0))
        );
        for bad in [
            "",
            ":80",
            "api.internal:http",
            "api.internal:99999",
            "a b",
            "a/b:80",
        ] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn settings_are_checked() {
        let dns = |servers: &[&str], floor: u64| {
            Dns::new(DnsSettings {
                servers: servers.iter().map(|s| s.to_string()).collect(),
                ttl_floor: Duration::from_secs(floor),
                ..DnsSettings::default()
            })
        };
        let dns_ok = dns(&["127.0.0.1", "127.0.0.1:8600", "[::1]:53"], 1).unwrap();
        assert_eq!(dns_ok.servers[0], "127.0.0.1:53".parse().unwrap());
        assert!(dns(&["dns.internal:53"], 1).is_err());
        assert!(dns(&[], 600).is_err(), "a floor above the ceiling");
    }
}
