//! DNS discovery against a real dnsmasq (see `support/dnsmasq.rs`).

#[path = "support/dnsmasq.rs"]
mod dnsmasq;
#[path = "support/wait.rs"]
mod wait;

use std::time::Duration;

use dnsmasq::Dnsmasq;
use pylon_discovery::{DiscoveryError, DiscoverySettings, DnsSettings, Registry};
use serde_json::json;
use wait::{addresses, nodes_are, nodes_where};

fn registry(dns: &Dnsmasq) -> Registry {
    Registry::new(&DiscoverySettings {
        dns: Some(DnsSettings {
            servers: vec![dns.server()],
            ttl_floor: Duration::from_millis(200),
            ..DnsSettings::default()
        }),
        ..DiscoverySettings::default()
    })
    .expect("valid settings")
}

const WEB: &str = "10.0.0.1 web.pylon.test\n10.0.0.2 web.pylon.test\nfd00::1 web.pylon.test\n";

#[tokio::test]
async fn a_host_name_is_its_ipv4_and_ipv6_addresses_at_the_names_port() {
    let dns = Dnsmasq::start(WEB, &[]);
    let registry = registry(&dns);
    let with_port = registry.watch("dns", "web.pylon.test:8080", None).unwrap();
    let nodes = nodes_are(
        &with_port,
        &[("10.0.0.1", 8080), ("10.0.0.2", 8080), ("fd00::1", 8080)],
    )
    .await;
    assert!(nodes.iter().all(|n| n.weight == 1 && n.priority == 0));
    // Without a port: 0, the upstream's default for its scheme.
    let without = registry.watch("dns", "Web.Pylon.Test", None).unwrap();
    nodes_are(
        &without,
        &[("10.0.0.1", 0), ("10.0.0.2", 0), ("fd00::1", 0)],
    )
    .await;

    let dump = registry.dump("dns").unwrap();
    assert_eq!(
        dump["services"]["web.pylon.test:8080"][0]["host"],
        "10.0.0.1"
    );
    // Host names are not case-sensitive: watched under the lowercase spelling.
    assert!(dump["services"]["web.pylon.test"].is_array(), "{dump}");
    assert_eq!(dump["config"]["servers"], json!([dns.server()]));
}

#[tokio::test]
async fn srv_records_give_ports_weights_and_priorities() {
    let hosts = "10.0.1.1 a.pylon.test\n10.0.1.2 b.pylon.test\n";
    let srv = [
        "_http._tcp.svc.pylon.test,a.pylon.test,8001,10,5",
        "_http._tcp.svc.pylon.test,b.pylon.test,8002,20,1",
    ];
    let dns = Dnsmasq::start(hosts, &srv);
    let registry = registry(&dns);
    let watch = registry
        .watch("dns", "_http._tcp.svc.pylon.test", None)
        .unwrap();
    let nodes = nodes_are(&watch, &[("10.0.1.1", 8001), ("10.0.1.2", 8002)]).await;
    let a = nodes.iter().find(|n| n.host == "10.0.1.1").unwrap();
    let b = nodes.iter().find(|n| n.host == "10.0.1.2").unwrap();
    // SRV prefers its lowest priority, Pylon its highest.
    assert_eq!((a.weight, a.priority), (5, -10));
    assert_eq!((b.weight, b.priority), (1, -20));
    // A port in the name wins over the records'.
    let fixed = registry
        .watch("dns", "_http._tcp.svc.pylon.test:9000", None)
        .unwrap();
    nodes_are(&fixed, &[("10.0.1.1", 9000), ("10.0.1.2", 9000)]).await;
}

#[tokio::test]
async fn a_name_that_does_not_exist_is_a_service_without_nodes() {
    let dns = Dnsmasq::start(WEB, &[]);
    let registry = registry(&dns);
    let watch = registry
        .watch("dns", "nothing.pylon.test:80", None)
        .unwrap();
    nodes_where(&watch, "an answer", |_| true).await;
    assert_eq!(watch.current().unwrap().len(), 0);
    let srv = registry
        .watch("dns", "_http._tcp.nothing.pylon.test", None)
        .unwrap();
    nodes_where(&srv, "an answer", |_| true).await;
    assert_eq!(srv.current().unwrap().len(), 0);
}

#[tokio::test]
async fn changed_records_are_seen_once_their_ttl_has_passed() {
    let mut dns = Dnsmasq::start(WEB, &[]);
    let registry = registry(&dns);
    let mut changed = registry.changed();
    let watch = registry.watch("dns", "web.pylon.test:80", None).unwrap();
    nodes_are(
        &watch,
        &[("10.0.0.1", 80), ("10.0.0.2", 80), ("fd00::1", 80)],
    )
    .await;
    let seen = *changed.borrow_and_update();

    dns.set_hosts("10.0.0.3 web.pylon.test\n");
    nodes_are(&watch, &[("10.0.0.3", 80)]).await;
    assert!(
        *changed.borrow_and_update() > seen,
        "the registry told of the change"
    );

    dns.set_hosts("");
    nodes_where(&watch, "no nodes", |nodes| nodes.is_empty()).await;
}

#[tokio::test]
async fn a_failing_resolver_leaves_the_last_answer_until_it_answers_again() {
    let hosts = "10.0.1.1 a.pylon.test\n10.0.1.2 b.pylon.test\n";
    let mut dns = Dnsmasq::start(hosts, &["_http._tcp.svc.pylon.test,a.pylon.test,8001,10,5"]);
    let registry = registry(&dns);
    let watch = registry
        .watch("dns", "_http._tcp.svc.pylon.test", None)
        .unwrap();
    nodes_are(&watch, &[("10.0.1.1", 8001)]).await;

    dns.kill();
    // Several TTLs go by with every query failing; the answer stays.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        addresses(&watch.current().unwrap()),
        [("10.0.1.1".to_owned(), 8001)]
    );

    dns.restart(&["_http._tcp.svc.pylon.test,b.pylon.test,8002,10,5"]);
    nodes_are(&watch, &[("10.0.1.2", 8002)]).await;
}

#[tokio::test]
async fn without_servers_the_resolver_config_is_used_search_domains_included() {
    let dns = Dnsmasq::start_on_port_53(WEB);
    let dir = tempfile::tempdir().unwrap();
    let resolv_conf = dir.path().join("resolv.conf");
    let config = format!("nameserver {}\nsearch pylon.test\n", dns.ip());
    std::fs::write(&resolv_conf, config).unwrap();
    let registry = Registry::new(&DiscoverySettings {
        dns: Some(DnsSettings {
            resolv_conf: Some(resolv_conf),
            ..DnsSettings::default()
        }),
        ..DiscoverySettings::default()
    })
    .unwrap();
    let watch = registry.watch("dns", "web:80", None).unwrap();
    nodes_are(
        &watch,
        &[("10.0.0.1", 80), ("10.0.0.2", 80), ("fd00::1", 80)],
    )
    .await;
}

#[tokio::test]
async fn addresses_need_no_settings_and_no_question() {
    let registry = Registry::new(&DiscoverySettings::default()).unwrap();
    let watch = registry.watch("dns", "127.0.0.1:8080", None).unwrap();
    assert_eq!(
        addresses(&watch.current().unwrap()),
        [("127.0.0.1".to_owned(), 8080)]
    );
    let watch = registry.watch("dns", "[::1]:80", None).unwrap();
    assert_eq!(
        addresses(&watch.current().unwrap()),
        [("::1".to_owned(), 80)]
    );
    // The system's resolver config, and its hosts file.
    let localhost = registry.watch("dns", "localhost:80", None).unwrap();
    nodes_where(&localhost, "a node for localhost", |nodes| {
        nodes
            .iter()
            .any(|n| n.host == "127.0.0.1" || n.host == "::1")
    })
    .await;
}

#[tokio::test]
async fn watches_name_a_configured_type_and_a_valid_service() {
    let registry = Registry::new(&DiscoverySettings::default()).unwrap();
    let error = |kind: &str, name: &str, args| registry.watch(kind, name, args).err().unwrap();
    assert_eq!(
        error("nacos", "web", None),
        DiscoveryError::UnknownType("nacos".to_owned())
    );
    assert_eq!(
        error("etcd", "web", None),
        DiscoveryError::NotConfigured("etcd")
    );
    assert_eq!(
        error("consul", "web", None),
        DiscoveryError::NotConfigured("consul")
    );
    assert!(matches!(
        error("dns", "web.internal:http", None),
        DiscoveryError::BadServiceName { kind: "dns", .. }
    ));
    assert_eq!(
        error("dns", "web.internal", Some(&json!({"group": "a"}))),
        DiscoveryError::UnexpectedArgs("dns")
    );
    assert!(registry
        .watch("dns", "10.0.0.1:80", Some(&json!({})))
        .is_ok());
    assert_eq!(registry.dump("etcd"), None);
    assert_eq!(registry.dump("nacos"), None);
}
