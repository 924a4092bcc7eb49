//! The Redis client against real servers: one server (with a password and a database, and
//! over TLS), a three-master Redis Cluster and a Sentinel; a server that stops fails calls
//! at once, and is used again when it is back.

mod support;

use std::sync::Arc;
use std::time::Duration;

use pylon_redis::{Address, Error, Redis, Script, Settings, Topology};
use support::redis_server::{try_redis_cli, RedisCluster, RedisServer, Sentinel};

/// Counts a call on `KEYS[1]`: the count after it.
fn counter() -> Script {
    Script::new("return redis.call('INCR', KEYS[1])")
}

fn address(text: &str) -> Address {
    let (host, port) = text.rsplit_once(':').unwrap();
    Address {
        host: host.to_owned(),
        port: port.parse().unwrap(),
    }
}

/// Polls `done`, bounded.
fn wait_for(mut done: impl FnMut() -> bool, what: &str) {
    for _ in 0..200 {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting until {what}");
}

fn settings(topology: Topology) -> Settings {
    Settings {
        topology,
        username: None,
        password: None,
        database: 0,
        tls_verify: None,
        timeout: Duration::from_secs(2),
    }
}

#[tokio::test]
async fn a_script_runs_on_one_server_with_its_password_and_database() {
    let server = RedisServer::start_with(&["--requirepass", "secret"]);
    let redis = Redis::shared(Settings {
        password: Some("secret".into()),
        database: 3,
        ..settings(Topology::Single(address(&server.address())))
    });
    let script = counter();
    for expected in 1..=3 {
        let count: i64 = redis.run_script(&script, "k", &[]).await.unwrap();
        assert_eq!(count, expected);
    }
    let in_db3 = server.cli(&["-a", "secret", "--no-auth-warning", "-n", "3", "get", "k"]);
    assert_eq!(in_db3, "3");
    assert!(redis.status().reachable);

    // A wrong password is an error, not a hang.
    let wrong = Redis::shared(Settings {
        password: Some("wrong".into()),
        ..settings(Topology::Single(address(&server.address())))
    });
    assert!(wrong.run_script::<i64>(&script, "k", &[]).await.is_err());
    assert!(!wrong.status().reachable);
}

#[tokio::test]
async fn one_settings_share_one_client() {
    let topology = Topology::Single(address("127.0.0.1:1"));
    let a = Redis::shared(settings(topology.clone()));
    let b = Redis::shared(settings(topology));
    assert!(Arc::ptr_eq(&a, &b));
    assert!(Redis::statuses()
        .iter()
        .any(|status| status.name == "127.0.0.1:1"));
}

#[tokio::test]
async fn a_stopped_server_fails_calls_at_once_and_is_used_again_when_back() {
    let mut server = RedisServer::start();
    let redis = Redis::shared(settings(Topology::Single(address(&server.address()))));
    let script = counter();
    assert_eq!(redis.run_script::<i64>(&script, "k", &[]).await.unwrap(), 1);

    server.stop();
    // The first call finds the connection gone; the next ones fail at once without trying
    // to connect, until the pause is over.
    assert!(redis.run_script::<i64>(&script, "k", &[]).await.is_err());
    let failed = redis.run_script::<i64>(&script, "k", &[]).await;
    assert!(matches!(failed, Err(Error::Reconnecting(_))), "{failed:?}");
    assert!(!redis.status().reachable);
    let failures = redis.status().failures;
    assert!(failures >= 2, "{failures} failures counted");

    server.restart();
    // Bounded: the pause is 200 ms; a call after it connects anew.
    let mut recovered = None;
    for _ in 0..100 {
        if let Ok(count) = redis.run_script::<i64>(&script, "k", &[]).await {
            recovered = Some(count);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The restarted server is empty: the count starts again.
    assert_eq!(recovered, Some(1));
    assert!(redis.status().reachable);
}

#[tokio::test]
async fn keys_go_to_their_slots_node_in_a_cluster() {
    let cluster = RedisCluster::start();
    let nodes = cluster.addresses().iter().map(|a| address(a)).collect();
    let redis = Redis::shared(settings(Topology::Cluster(nodes)));
    let script = counter();
    // Enough keys that every node holds some.
    for key in 0..60 {
        let count: i64 = redis
            .run_script(&script, &format!("key-{key}"), &[])
            .await
            .unwrap();
        assert_eq!(count, 1);
    }
    assert_eq!(cluster.sum(&["dbsize"]), 60);
    for node in &cluster.nodes {
        let held: i64 = node.cli(&["dbsize"]).parse().unwrap();
        assert!(held > 0, "a node holds no key");
    }
}

#[tokio::test]
async fn a_sentinel_names_the_master() {
    let master = RedisServer::start();
    let sentinel = Sentinel::start("main", &master);
    let redis = Redis::shared(settings(Topology::Sentinel {
        sentinels: vec![address(&sentinel.address())],
        master: "main".into(),
        password: None,
    }));
    let count: i64 = redis.run_script(&counter(), "k", &[]).await.unwrap();
    assert_eq!(count, 1);
    assert_eq!(master.cli(&["get", "k"]), "1");
}

#[tokio::test]
async fn after_a_sentinel_failover_calls_go_to_the_new_master() {
    let old = RedisServer::start();
    let new = RedisServer::start_with(&[]);
    new.cli(&["replicaof", "127.0.0.1", &old.port.to_string()]);
    let sentinel = Sentinel::start("main", &old);
    let redis = Redis::shared(settings(Topology::Sentinel {
        sentinels: vec![address(&sentinel.address())],
        master: "main".into(),
        password: None,
    }));
    let script = counter();
    assert_eq!(redis.run_script::<i64>(&script, "k", &[]).await.unwrap(), 1);
    // The replica has the count, and the Sentinel has seen the replica, before it is
    // promoted; the old master is a replica once the failover is over.
    wait_for(
        || new.cli(&["get", "k"]) == "1",
        "the replica has the count",
    );
    sentinel.wait_for_replica("main");
    sentinel.failover("main", new.port);
    wait_for(
        || try_redis_cli(old.port, &["role"]).is_ok_and(|role| role.starts_with("slave")),
        "the old master is a replica",
    );
    // The old master is a replica now: the calls that reach it fail, and the client asks the
    // Sentinel again. Bounded: a few pauses of 200 ms.
    let mut count = None;
    for _ in 0..100 {
        if let Ok(n) = redis.run_script::<i64>(&script, "k", &[]).await {
            count = Some(n);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(count, Some(2), "the count went on on the new master");
    assert_eq!(new.cli(&["get", "k"]), "2");
}

#[tokio::test]
async fn tls_without_verification_connects_and_with_it_refuses_an_unknown_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let server = RedisServer::start_tls(&cert_path, &key_path);
    let at = |verify| {
        Redis::shared(Settings {
            tls_verify: Some(verify),
            ..settings(Topology::Single(Address {
                host: "localhost".into(),
                port: server.tls_port.unwrap(),
            }))
        })
    };
    let count: i64 = at(false).run_script(&counter(), "k", &[]).await.unwrap();
    assert_eq!(count, 1);
    // The certificate is self-signed: no system root vouches for it.
    assert!(at(true)
        .run_script::<i64>(&counter(), "k", &[])
        .await
        .is_err());
}
