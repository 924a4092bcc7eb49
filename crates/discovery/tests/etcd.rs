//! The etcd registry against a real etcd (see the store's `tests/support/etcd.rs`): instances
//! are keys attached to leases, and go when their lease does.

#[path = "../../store/tests/support/etcd.rs"]
mod etcd;
#[path = "support/wait.rs"]
mod wait;

use std::sync::Arc;
use std::time::Duration;

use etcd::EtcdCluster;
use pylon_discovery::{DiscoverySettings, EtcdRegistrySettings, Registry};
use serde_json::json;
use wait::{nodes_are, nodes_where};

const PREFIX: &str = "/pylon-discovery";

fn registry(etcd: &EtcdCluster) -> Registry {
    Registry::new(&DiscoverySettings {
        etcd: Some(EtcdRegistrySettings {
            endpoints: etcd.endpoints(),
            prefix: PREFIX.to_owned(),
            timeout: Duration::from_secs(1),
        }),
        ..DiscoverySettings::default()
    })
    .expect("valid settings")
}

/// A new lease of `ttl` seconds; its ID as etcdctl takes it.
fn grant(etcd: &EtcdCluster, ttl: u32) -> String {
    // "lease 694d77aa9b6e3a0b granted with TTL(60s)"
    let output = etcd.etcdctl(&["lease", "grant", &ttl.to_string()]);
    output
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no lease ID in {output:?}"))
        .to_owned()
}

fn register(etcd: &EtcdCluster, service: &str, id: &str, value: &str, lease: Option<&str>) {
    let key = format!("{PREFIX}/{service}/{id}");
    let lease = lease.map(|lease| format!("--lease={lease}"));
    let mut args = vec!["put", key.as_str(), value];
    args.extend(lease.as_deref());
    etcd.etcdctl(&args);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_come_and_go_with_their_leases() {
    let etcd = tokio::task::block_in_place(EtcdCluster::single);
    let registry = registry(&etcd);
    let web = registry.watch("etcd", "web", None).unwrap();
    nodes_where(&web, "an answer", |_| true).await;
    assert_eq!(web.current().unwrap().len(), 0);

    let long = grant(&etcd, 600);
    // Another service, a name that merely begins alike, and a value that is no instance:
    // written first, so that once the instance after them is seen, they were seen too.
    register(
        &etcd,
        "web2",
        "x",
        r#"{"host": "10.9.9.9", "port": 1}"#,
        None,
    );
    register(&etcd, "web", "broken", "10.0.0.9:80", Some(&long));
    let value = r#"{"host": "10.0.0.1", "port": 8080, "weight": 2, "metadata": {"zone": "a"}}"#;
    register(&etcd, "web", "i1", value, Some(&long));
    let nodes = nodes_are(&web, &[("10.0.0.1", 8080)]).await;
    assert_eq!((nodes[0].weight, nodes[0].priority), (2, 0));
    assert_eq!(nodes[0].metadata["zone"], "a");

    // A lease nobody keeps alive: the instance goes once it expires (etcd's shortest TTL is a
    // few seconds).
    let short = grant(&etcd, 1);
    register(
        &etcd,
        "web",
        "i2",
        r#"{"host": "10.0.0.2", "port": 8080}"#,
        Some(&short),
    );
    nodes_are(&web, &[("10.0.0.1", 8080), ("10.0.0.2", 8080)]).await;
    nodes_are(&web, &[("10.0.0.1", 8080)]).await;

    etcd.etcdctl(&["lease", "revoke", &long]);
    nodes_where(&web, "no instance left", |nodes| nodes.is_empty()).await;

    let dump = registry.dump("etcd").unwrap();
    assert_eq!(dump["services"]["web"], json!([]));
    assert_eq!(dump["config"]["prefix"], PREFIX);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_lists_again_after_etcd_comes_back() {
    let mut etcd = tokio::task::block_in_place(EtcdCluster::single);
    let registry = registry(&etcd);
    register(
        &etcd,
        "api",
        "i1",
        r#"{"host": "10.0.1.1", "port": 80}"#,
        None,
    );
    let api = registry.watch("etcd", "api", None).unwrap();
    nodes_are(&api, &[("10.0.1.1", 80)]).await;

    tokio::task::block_in_place(|| etcd.kill(0));
    let seen = registry.changed().borrow().to_owned();
    tokio::task::block_in_place(|| etcd.restart(&[0]));
    register(
        &etcd,
        "api",
        "i2",
        r#"{"host": "10.0.1.2", "port": 80}"#,
        None,
    );
    nodes_are(&api, &[("10.0.1.1", 80), ("10.0.1.2", 80)]).await;
    assert!(*registry.changed().borrow() > seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_of_one_service_share_its_nodes_and_names_are_one_segment() {
    let etcd = tokio::task::block_in_place(EtcdCluster::single);
    let registry = registry(&etcd);
    register(
        &etcd,
        "web",
        "i1",
        r#"{"host": "10.0.0.1", "port": 80}"#,
        None,
    );
    let first = registry.watch("etcd", "web", None).unwrap();
    let second = registry.clone().watch("etcd", "web", None).unwrap();
    nodes_are(&first, &[("10.0.0.1", 80)]).await;
    assert_eq!(first.current(), second.current());
    // The very same nodes: one follower serves both watches.
    assert!(Arc::ptr_eq(
        &first.current().unwrap(),
        &second.current().unwrap()
    ));
    assert!(registry.watch("etcd", "web/i1", None).is_err());
    assert!(registry.watch("etcd", "", None).is_err());
}
