//! Consul discovery (catalog and KV) against a stand-in for Consul's HTTP API (see
//! `support/consul.rs`): no real Consul runs in these tests.

#[path = "support/consul.rs"]
mod consul;
#[path = "support/wait.rs"]
mod wait;

use consul::{ConsulStandIn, Instance};
use pylon_discovery::{
    ConsulKvSettings, ConsulSettings, ConsulTimeouts, DefaultService, DiscoveryError,
    DiscoverySettings, Registry,
};
use serde_json::json;
use wait::{addresses, nodes_are, nodes_where, until};

/// Longer than the tests' patience: a change seen in time was answered by the blocking query,
/// not by its timing out.
const LONG_WAIT: u64 = 120;

fn timeouts() -> ConsulTimeouts {
    ConsulTimeouts {
        wait: LONG_WAIT,
        ..ConsulTimeouts::default()
    }
}

fn catalog(servers: &[&ConsulStandIn], edit: impl FnOnce(&mut ConsulSettings)) -> Registry {
    let mut settings = ConsulSettings {
        servers: servers.iter().map(|s| s.url()).collect(),
        timeout: timeouts(),
        ..ConsulSettings::default()
    };
    edit(&mut settings);
    Registry::new(&DiscoverySettings {
        consul: Some(settings),
        ..DiscoverySettings::default()
    })
    .expect("valid settings")
}

fn kv(servers: &[&ConsulStandIn], edit: impl FnOnce(&mut ConsulKvSettings)) -> Registry {
    let mut settings = ConsulKvSettings {
        servers: servers.iter().map(|s| s.url()).collect(),
        timeout: timeouts(),
        ..ConsulKvSettings::default()
    };
    edit(&mut settings);
    Registry::new(&DiscoverySettings {
        consul_kv: Some(settings),
        ..DiscoverySettings::default()
    })
    .expect("valid settings")
}

#[tokio::test]
async fn catalog_services_are_their_passing_instances() {
    let consul = ConsulStandIn::start().await;
    consul.require_token("secret");
    let mut first = Instance::new("web-1", "10.0.0.1", 80);
    first.meta = json!({"version": "2"});
    consul.register("web", first);
    let mut failing = Instance::new("web-2", "10.0.0.2", 80);
    failing.passing = false;
    consul.register("web", failing);
    let mut on_node = Instance::new("web-3", "", 81);
    on_node.node_address = "10.0.0.3".to_owned();
    consul.register("web", on_node);
    consul.register("consul", Instance::new("consul", "10.0.0.100", 8300));
    consul.register("internal", Instance::new("internal-1", "10.0.0.50", 80));

    let registry = catalog(&[&consul], |settings| {
        settings.token = "secret".to_owned();
        settings.weight = 3;
        settings.skip_services = vec!["internal".to_owned()];
        settings.default_service = Some(DefaultService {
            host: "10.9.9.9".to_owned(),
            port: 8080,
            metadata: serde_json::Map::new(),
        });
    });
    let web = registry.watch("consul", "web", None).unwrap();
    // Answered at all: every request carried the token (the stand-in answers 403 without it).
    let nodes = nodes_are(&web, &[("10.0.0.1", 80), ("10.0.0.3", 81)]).await;
    assert!(nodes.iter().all(|n| n.weight == 3));
    let first = nodes.iter().find(|n| n.host == "10.0.0.1").unwrap();
    assert_eq!(first.metadata["version"], "2");

    // Changes are answered by the blocking query, at once.
    let mut changed = registry.changed();
    let seen = *changed.borrow_and_update();
    consul.register("web", Instance::new("web-4", "10.0.0.4", 80));
    nodes_are(
        &web,
        &[("10.0.0.1", 80), ("10.0.0.3", 81), ("10.0.0.4", 80)],
    )
    .await;
    consul.set_passing("web", "web-1", false);
    nodes_are(&web, &[("10.0.0.3", 81), ("10.0.0.4", 80)]).await;
    assert!(*changed.borrow() > seen);

    // A service no server knows: the default service's node.
    let unknown = registry.watch("consul", "billing", None).unwrap();
    nodes_are(&unknown, &[("10.9.9.9", 8080)]).await;
    let skipped = registry.watch("consul", "internal", None).unwrap();
    nodes_are(&skipped, &[("10.9.9.9", 8080)]).await;

    let dump = registry.dump("consul").unwrap();
    assert_eq!(dump["config"]["token"], "******");
    let services = dump["services"].as_object().unwrap();
    assert_eq!(services.keys().collect::<Vec<_>>(), ["web"]);
    assert_eq!(services["web"].as_array().unwrap().len(), 2);

    // A catalog name is one path segment.
    assert!(registry.watch("consul", "a/b", None).is_err());
}

#[tokio::test]
async fn several_servers_are_followed_at_once() {
    let (east, west) = (ConsulStandIn::start().await, ConsulStandIn::start().await);
    east.register("web", Instance::new("web-e", "10.1.0.1", 80));
    east.register("api", Instance::new("api-e", "10.1.0.2", 80));
    west.register("web", Instance::new("web-w", "10.2.0.1", 80));
    let registry = catalog(&[&east, &west], |_| {});
    let web = registry.watch("consul", "web", None).unwrap();
    let api = registry.watch("consul", "api", None).unwrap();
    nodes_are(&web, &[("10.1.0.1", 80), ("10.2.0.1", 80)]).await;
    nodes_are(&api, &[("10.1.0.2", 80)]).await;
    west.deregister("web", "web-w");
    west.register("api", Instance::new("api-w", "10.2.0.2", 80));
    nodes_are(&web, &[("10.1.0.1", 80)]).await;
    nodes_are(&api, &[("10.1.0.2", 80), ("10.2.0.2", 80)]).await;
}

#[tokio::test]
async fn a_failing_server_keeps_its_last_answer() {
    let consul = ConsulStandIn::start().await;
    consul.register("web", Instance::new("web-1", "10.0.0.1", 80));
    let registry = catalog(&[&consul], |_| {});
    let web = registry.watch("consul", "web", None).unwrap();
    nodes_are(&web, &[("10.0.0.1", 80)]).await;

    // The held query is woken (as by a restart at the same index), and every request after
    // it is refused.
    consul.set_failing(true);
    let before = consul.request_count();
    consul.restart_at_index(consul.index());
    until(
        || "refused requests".to_owned(),
        || (consul.request_count() >= before + 3).then_some(()),
    )
    .await;
    assert_eq!(
        addresses(&web.current().unwrap()),
        [("10.0.0.1".to_owned(), 80)]
    );

    consul.set_failing(false);
    consul.register("web", Instance::new("web-2", "10.0.0.2", 80));
    nodes_are(&web, &[("10.0.0.1", 80), ("10.0.0.2", 80)]).await;
}

#[tokio::test]
async fn an_index_that_went_backwards_starts_over_from_zero() {
    let consul = ConsulStandIn::start().await;
    for i in 0..5 {
        consul.register("filler", Instance::new(&format!("f{i}"), "10.0.9.9", 80));
    }
    consul.register("web", Instance::new("web-1", "10.0.0.1", 80));
    let registry = catalog(&[&consul], |_| {});
    let web = registry.watch("consul", "web", None).unwrap();
    nodes_are(&web, &[("10.0.0.1", 80)]).await;
    let from_zero = || {
        let requests = consul.requests();
        let services = requests
            .iter()
            .filter(|r| r.starts_with("/v1/catalog/services"));
        services.filter(|r| r.contains("index=0&")).count()
    };
    assert_eq!(from_zero(), 1, "only the first query asks for everything");

    // Restored from an older state: the index goes from 7 back to 1.
    consul.restart_at_index(1);
    until(
        || "a query from index 0".to_owned(),
        || (from_zero() == 2).then_some(()),
    )
    .await;
    consul.register("web", Instance::new("web-2", "10.0.0.2", 80));
    nodes_are(&web, &[("10.0.0.1", 80), ("10.0.0.2", 80)]).await;
}

#[tokio::test]
async fn kv_keys_are_instances_of_the_service_their_folder_names() {
    let consul = ConsulStandIn::start().await;
    let registry = kv(&[&consul], |settings| {
        settings.weight = 4;
        settings.skip_keys = vec!["upstreams/webpages/10.0.0.9:8000".to_owned()];
    });
    let service = format!("{}/v1/kv/upstreams/webpages/", consul.url());
    let webpages = registry.watch("consul_kv", &service, None).unwrap();
    // No key at all yet: Consul answers 404, and the service has no instances.
    nodes_where(&webpages, "an answer", |nodes| nodes.is_empty()).await;

    // The keys left out come first: an answer with the instances after them has them too.
    consul.put_kv(
        "upstreams/webpages/10.0.0.3:8000",
        r#"{"check_status": false}"#,
    );
    consul.put_kv("upstreams/webpages/10.0.0.9:8000", "{}");
    consul.put_kv("upstreams/webpages/broken", "{}");
    consul.put_kv("upstreams/api/10.0.1.1:80", "{}");
    consul.put_kv(
        "upstreams/webpages/10.0.0.1:8000",
        r#"{"weight": 2, "max_fails": 2, "fail_timeout": 1}"#,
    );
    consul.put_kv("upstreams/webpages/10.0.0.2:8000", "{}");
    let nodes = nodes_are(&webpages, &[("10.0.0.1", 8000), ("10.0.0.2", 8000)]).await;
    let first = nodes.iter().find(|n| n.host == "10.0.0.1").unwrap();
    assert_eq!(first.weight, 2);
    assert_eq!(first.metadata["max_fails"], 2);
    assert_eq!(
        nodes.iter().find(|n| n.host == "10.0.0.2").unwrap().weight,
        4
    );

    consul.delete_kv("upstreams/webpages/10.0.0.1:8000");
    nodes_are(&webpages, &[("10.0.0.2", 8000)]).await;

    let dump = registry.dump("consul_kv").unwrap();
    let api = format!("{}/v1/kv/upstreams/api/", consul.url());
    assert_eq!(dump["services"][&api][0]["host"], "10.0.1.1");

    let other = "http://10.0.0.1:8500/v1/kv/upstreams/webpages/";
    assert!(matches!(
        registry.watch("consul_kv", other, None),
        Err(DiscoveryError::BadServiceName { .. })
    ));
    assert!(registry.watch("consul_kv", "webpages", None).is_err());
}

#[tokio::test]
async fn without_keepalive_the_servers_are_polled() {
    let consul = ConsulStandIn::start().await;
    consul.put_kv("upstreams/web/10.0.0.1:80", "{}");
    let registry = kv(&[&consul], |settings| {
        settings.keepalive = false;
        settings.fetch_interval = 1;
    });
    let web = registry
        .watch(
            "consul_kv",
            &format!("{}/v1/kv/upstreams/web/", consul.url()),
            None,
        )
        .unwrap();
    nodes_are(&web, &[("10.0.0.1", 80)]).await;
    consul.put_kv("upstreams/web/10.0.0.2:80", "{}");
    nodes_are(&web, &[("10.0.0.1", 80), ("10.0.0.2", 80)]).await;
    assert!(consul.requests().iter().all(|r| !r.contains("index=")));
}
