//! Upstreams whose nodes come from service discovery: served over HTTP/1 and HTTP/2 once found,
//! 503 until then, moved as the registry changes, and reported on the control API. Nodes given
//! by host name follow their DNS records the same way.

mod support;

#[path = "../../store/tests/support/etcd.rs"]
mod etcd;

#[path = "../../discovery/tests/support/dnsmasq.rs"]
mod dnsmasq;

use dnsmasq::Dnsmasq;
use etcd::EtcdCluster;
use serde_json::json;
use support::client::get;
use support::protocols::{call, PROTOCOLS};
use support::upstream::Upstream;
use support::{wait_until, Pylon};

/// A route `/d` to the upstream that discovery type `kind` finds as `service`.
fn discovered_route(kind: &str, service: &str) -> String {
    json!({"routes": [{
        "id": "d", "uri": "/d",
        "upstream": {"discovery_type": kind, "service_name": service},
    }]})
    .to_string()
}

/// Waits until every request for `path` is answered by the upstream `name`, then checks
/// that HTTP/1 and HTTP/2 get it too.
async fn wait_served_by(pylon: &Pylon, path: &str, name: &str) {
    wait_until(
        || (0..4).all(|_| get(pylon.addr, "example.com", path).text() == name),
        &format!("{path} served by {name}"),
    );
    for protocol in PROTOCOLS {
        let res = call(protocol, pylon.addr, "GET", path, &[], b"").await;
        assert_eq!(res.text(), name, "{protocol:?}");
    }
}

fn control_get(pylon: &Pylon, path: &str) -> serde_json::Value {
    let control = pylon.control.expect("the control API listens");
    get(control, "127.0.0.1", path).json()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_found_by_dns_is_served_and_dumped() {
    let up = Upstream::start("found");
    // An address literal is its own answer: no resolver is asked.
    let service = up.addr.to_string();
    let pylon = Pylon::start(&discovered_route("dns", &service), "");
    for protocol in PROTOCOLS {
        let res = call(protocol, pylon.addr, "GET", "/d", &[], b"").await;
        assert_eq!(res.status, 200, "{protocol:?}: {}", res.text());
        assert_eq!(res.text(), "found", "{protocol:?}");
    }
    let dump = control_get(&pylon, "/v1/discovery/dns/dump");
    let nodes = &dump["services"][&service];
    assert_eq!(nodes[0]["port"], up.addr.port(), "{dump}");
    let unconfigured = control_get(&pylon, "/v1/discovery/consul/dump");
    assert_eq!(
        unconfigured,
        json!({"error_msg": "discovery `consul` is not configured"})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_etcd_registry_moves_requests_to_the_instances_it_holds() {
    let etcd = EtcdCluster::single();
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    let endpoints = format!("{:?}", etcd.endpoints());
    let discovery =
        format!("discovery:\n  etcd:\n    endpoints: {endpoints}\n    prefix: /services\n");
    let pylon = Pylon::start(&discovered_route("etcd", "web"), &discovery);
    let instance = |up: &Upstream| {
        json!({"host": "127.0.0.1", "port": up.addr.port(), "weight": 1}).to_string()
    };

    // Nothing registered yet: a clear 503, on both protocols.
    for protocol in PROTOCOLS {
        let res = call(protocol, pylon.addr, "GET", "/d", &[], b"").await;
        assert_eq!(res.status, 503, "{protocol:?}: {}", res.text());
    }

    etcd.etcdctl(&["put", "/services/web/a", &instance(&a)]);
    wait_served_by(&pylon, "/d", "a").await;

    // a goes, b comes: requests follow without a configuration change.
    etcd.etcdctl(&["put", "/services/web/b", &instance(&b)]);
    etcd.etcdctl(&["del", "/services/web/a"]);
    wait_served_by(&pylon, "/d", "b").await;
    let dump = control_get(&pylon, "/v1/discovery/etcd/dump");
    assert_eq!(dump["services"]["web"][0]["port"], b.addr.port(), "{dump}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_given_by_name_follows_its_dns_records() {
    let a = Upstream::start("a");
    // The same port on another loopback address: only the name's address changes.
    let b_addr = format!("127.0.0.2:{}", a.addr.port()).parse().unwrap();
    let _b = Upstream::on(b_addr, "b", support::upstream::named("b"));
    let name = format!("api.{}", dnsmasq::DOMAIN);
    let mut dns = Dnsmasq::start(&format!("127.0.0.1 {name}\n"), &[]);
    let routes = json!({"routes": [{
        "id": "n", "uri": "/n",
        "upstream": {"nodes": {format!("{name}:{}", a.addr.port()): 1}},
    }]});
    let discovery = format!("discovery:\n  dns:\n    servers: [\"{}\"]\n", dns.server());
    let pylon = Pylon::start(&routes.to_string(), &discovery);
    wait_served_by(&pylon, "/n", "a").await;

    dns.set_hosts(&format!("127.0.0.2 {name}\n"));
    wait_served_by(&pylon, "/n", "b").await;
}
