//! The etcd backend against real etcd servers (see `support/etcd.rs`).

#[path = "support/etcd.rs"]
mod support;

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use pylon_model::{Key, Kind};
use pylon_store::{
    Change, ConfigStore, EtcdSettings, EtcdStore, Event, Precondition, StoreError, Txn, WatchStream,
};
use serde_json::{json, Value};
use support::EtcdCluster;
use tokio::time::{timeout, Instant};

/// Per request and endpoint; short, so that the tests of failing members are quick.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Longer than anything a test waits for can take on a slow, shared machine.
const PATIENCE: Duration = Duration::from_secs(60);

fn store(endpoints: Vec<String>) -> EtcdStore {
    EtcdStore::new(&EtcdSettings {
        endpoints,
        timeout: REQUEST_TIMEOUT,
        ..EtcdSettings::default()
    })
    .expect("valid settings")
}

/// A store that talks to `member` alone.
fn store_of(etcd: &EtcdCluster, member: usize) -> EtcdStore {
    store(vec![etcd.endpoint(member)])
}

fn route(id: &str) -> Key {
    Key::new(Kind::Routes, id)
}

/// `operation`'s result, or a failure if it does not finish in time (a hang is a bug too).
async fn bounded<T>(operation: impl Future<Output = T>) -> T {
    timeout(PATIENCE, operation)
        .await
        .expect("no answer in time")
}

/// Retries `operation` until it succeeds, as a node does after an outage.
async fn eventually<T, F: Future<Output = Result<T, StoreError>>>(
    mut operation: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match operation().await {
            Ok(value) => return value,
            Err(e) if Instant::now() > deadline => panic!("still failing: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn next(watch: &mut WatchStream) -> Result<Change, StoreError> {
    bounded(watch.recv())
        .await
        .expect("the watch ended without saying why")
}

async fn commit(store: &EtcdStore, txn: Txn) -> u64 {
    bounded(store.commit(txn)).await.expect("commit failed")
}

fn put_all<'a>(keys: impl IntoIterator<Item = &'a Key>, value: &Value) -> Txn {
    Txn {
        writes: keys
            .into_iter()
            .map(|k| (k.clone(), Some(value.clone())))
            .collect(),
        ..Txn::default()
    }
}

fn keys_of(change: &Change) -> BTreeSet<Key> {
    change.events.iter().map(|e| e.key().clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_apply_only_when_their_conditions_hold() {
    let etcd = EtcdCluster::single();
    let store = store(etcd.endpoints());
    let (r1, r2) = (route("1"), route("2"));

    let created = commit(
        &store,
        Txn::put(r1.clone(), json!({"uri": "/1"})).when(r1.clone(), Precondition::Absent),
    )
    .await;
    let again = Txn::put(r1.clone(), json!({})).when(r1.clone(), Precondition::Absent);
    assert_eq!(store.commit(again).await, Err(StoreError::Conflict));
    let entry = store.get(&r1).await.unwrap().expect("created");
    assert_eq!(entry.value, json!({"uri": "/1"}));
    assert_eq!(
        (entry.create_revision, entry.mod_revision),
        (created, created)
    );

    let updated = commit(
        &store,
        Txn::put(r1.clone(), json!({"uri": "/one"}))
            .when(r1.clone(), Precondition::ModRevision(created)),
    )
    .await;
    assert!(updated > created);
    let entry = store.get(&r1).await.unwrap().expect("still there");
    assert_eq!(
        (entry.create_revision, entry.mod_revision),
        (created, updated)
    );
    for stale in [created, 0] {
        let lost_update =
            Txn::put(r1.clone(), json!({})).when(r1.clone(), Precondition::ModRevision(stale));
        assert_eq!(store.commit(lost_update).await, Err(StoreError::Conflict));
    }

    // One failed condition and nothing is written, not even the writes it did not concern.
    let half = Txn::put(r2.clone(), json!({}))
        .when(r2.clone(), Precondition::Absent)
        .when(r1.clone(), Precondition::Absent);
    assert_eq!(store.commit(half).await, Err(StoreError::Conflict));
    assert_eq!(store.get(&r2).await.unwrap(), None);
    assert_eq!(store.get(&r1).await.unwrap().unwrap().mod_revision, updated);

    let deleted = commit(
        &store,
        Txn::delete(r1.clone()).when(r1.clone(), Precondition::ModRevision(updated)),
    )
    .await;
    assert_eq!(store.get(&r1).await.unwrap(), None);
    let listing = store.list().await.unwrap();
    assert_eq!(listing.revision, deleted);
    assert_eq!(listing.entries, []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_holds_pylons_resources_and_ignores_the_rest() {
    let etcd = EtcdCluster::single();
    let store = store(etcd.endpoints());
    let upstream = Key::new(Kind::Upstreams, "u1");
    commit(&store, Txn::put(upstream.clone(), json!({"nodes": {}}))).await;
    etcd.etcdctl(&["put", "/pylon/routes/garbled", "{not json"]);
    etcd.etcdctl(&["put", "/pylon/no_such_kind/1", "{}"]);
    etcd.etcdctl(&["put", "/pylon/routes/a/b", "{}"]);
    etcd.etcdctl(&["put", "/pylonic/routes/1", "{}"]);
    etcd.etcdctl(&["put", "/pylon/routes/by-hand", r#"{"uri":"/hand"}"#]);

    let listing = store.list().await.unwrap();
    let keys: Vec<&Key> = listing.entries.iter().map(|e| &e.key).collect();
    assert_eq!(keys, [&route("by-hand"), &upstream]);
    assert_eq!(listing.entries[0].value, json!({"uri": "/hand"}));
    assert_eq!(store.get(&route("garbled")).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_since_fails_after_a_commit_from_any_node() {
    let etcd = EtcdCluster::single();
    let (a, b) = (store(etcd.endpoints()), store(etcd.endpoints()));
    commit(&a, Txn::put(route("kept"), json!({}))).await;

    let seen = a.list().await.unwrap().revision;
    let deleted = commit(&b, Txn::delete(route("kept"))).await;
    // Every node learns where the last commit, made anywhere, stands.
    assert_eq!(a.committed_revision().await.unwrap(), deleted);
    let stale = Txn::put(route("1"), json!({})).unchanged_since(seen);
    assert_eq!(a.commit(stale).await, Err(StoreError::Conflict));
    assert_eq!(a.get(&route("1")).await.unwrap(), None);

    let seen = a.list().await.unwrap().revision;
    commit(&a, Txn::put(route("1"), json!({})).unchanged_since(seen)).await;

    // Two nodes check their change against the same configuration and commit at once: one
    // wins, the other must check again.
    for round in 0..5 {
        let seen = a.list().await.unwrap().revision;
        let (from_a, from_b) = tokio::join!(
            a.commit(Txn::put(route("a"), json!(round)).unchanged_since(seen)),
            b.commit(Txn::put(route("b"), json!(round)).unchanged_since(seen)),
        );
        let mut outcomes = [from_a.map(|_| ()), from_b.map(|_| ())];
        outcomes.sort_by_key(|o| o.is_err());
        assert_eq!(
            outcomes,
            [Ok(()), Err(StoreError::Conflict)],
            "round {round}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_arrives_as_one_change() {
    let etcd = EtcdCluster::single();
    let store = store(etcd.endpoints());
    let start = store.list().await.unwrap().revision;
    let mut watch = store.watch(start).await.unwrap();

    let keys = [route("1"), route("2"), Key::new(Kind::Services, "s")];
    let mut txn = put_all(&keys, &json!({"v": 1}));
    txn.writes.push((route("never-existed"), None));
    let revision = commit(&store, txn).await;
    let change = next(&mut watch).await.unwrap();
    assert_eq!(change.revision, revision);
    assert_eq!(keys_of(&change), keys.iter().cloned().collect());
    assert!(change
        .events
        .iter()
        .all(|e| matches!(e, Event::Put(entry) if entry.mod_revision == revision)));

    let mut txn = Txn::delete(route("1"));
    txn.writes.push((route("2"), Some(json!({"v": 2}))));
    let revision = commit(&store, txn).await;
    let change = next(&mut watch).await.unwrap();
    assert_eq!(change.revision, revision);
    assert_eq!(change.events.len(), 2);
    assert!(change.events.contains(&Event::Delete {
        key: route("1"),
        revision
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_writes_arrives_whole_and_in_order() {
    const WRITERS: usize = 8;
    const COMMITS: usize = 400;
    let etcd = EtcdCluster::single();
    let store = std::sync::Arc::new(store(etcd.endpoints()));
    let start = store.list().await.unwrap().revision;
    let live = store.watch(start).await.unwrap();

    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..COMMITS {
                    let key = route(&format!("{writer}-{i}"));
                    commit(&store, Txn::put(key, json!({"writer": writer, "i": i}))).await;
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let end = store.list().await.unwrap().revision;

    // Received as they happen, and replayed from history afterwards: the same changes.
    let replayed = store.watch(start).await.unwrap();
    for mut watch in [live, replayed] {
        let mut seen = BTreeSet::new();
        let mut revision = start;
        while revision < end {
            let change = next(&mut watch).await.unwrap();
            assert!(change.revision > revision, "out of order");
            revision = change.revision;
            let [Event::Put(entry)] = &change.events[..] else {
                panic!("one put per commit, got {change:?}");
            };
            assert!(seen.insert(entry.key.clone()), "{} twice", entry.key);
        }
        assert_eq!(seen.len(), WRITERS * COMMITS);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transactions_arrive_whole() {
    const TXNS: usize = 6;
    const PUTS: usize = 10;
    let etcd = EtcdCluster::single();
    let store = store(etcd.endpoints());
    let start = store.list().await.unwrap().revision;
    // About 1 MB per transaction: several are more than one gRPC message may hold, and each is
    // near etcd's limit on a request, beyond which it splits a watch response in fragments.
    let big = json!("x".repeat(100_000));
    let mut revisions = Vec::new();
    for t in 0..TXNS {
        let keys: Vec<Key> = (0..PUTS).map(|p| route(&format!("{t}-{p}"))).collect();
        revisions.push(commit(&store, put_all(&keys, &big)).await);
    }

    let mut watch = store.watch(start).await.unwrap();
    for revision in revisions {
        let change = next(&mut watch).await.unwrap();
        assert_eq!(change.revision, revision);
        assert_eq!(change.events.len(), PUTS);
    }
    assert_eq!(store.list().await.unwrap().entries.len(), TXNS * PUTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_spans_several_pages_at_one_revision() {
    const ROUTES: usize = 1234;
    let etcd = EtcdCluster::single();
    let store = store(etcd.endpoints());
    let keys: Vec<Key> = (0..ROUTES).map(|i| route(&format!("{i:05}"))).collect();
    let mut last = 0;
    // etcd takes at most 128 operations in a transaction.
    for chunk in keys.chunks(100) {
        last = commit(&store, put_all(chunk, &json!({"uri": "/"}))).await;
    }

    let listing = store.list().await.unwrap();
    assert_eq!(listing.revision, last);
    let listed: Vec<Key> = listing.entries.iter().map(|e| e.key.clone()).collect();
    assert_eq!(listed, keys);
    assert!(listing
        .entries
        .iter()
        .all(|e| e.value == json!({"uri": "/"})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_a_compacted_revision_ends_with_compacted() {
    let etcd = EtcdCluster::single();
    let store = store(etcd.endpoints());
    let first = commit(&store, Txn::put(route("1"), json!(1))).await;
    let mut last = first;
    for i in 2..6 {
        last = commit(&store, Txn::put(route("1"), json!(i))).await;
    }
    etcd.etcdctl(&["compact", &last.to_string()]);

    let mut watch = store.watch(first).await.unwrap();
    assert_eq!(next(&mut watch).await, Err(StoreError::Compacted(first)));
    assert!(bounded(watch.recv()).await.is_none(), "the watch is over");

    // From the compaction on, history is there.
    let mut watch = store.watch(last).await.unwrap();
    let revision = commit(&store, Txn::put(route("1"), json!(6))).await;
    assert_eq!(next(&mut watch).await.unwrap().revision, revision);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_keeps_serving_with_a_member_down() {
    let mut etcd = EtcdCluster::start(3);
    let down = (etcd.leader() + 1) % 3;
    // The member that will go down comes first: requests start there.
    let mut endpoints = etcd.endpoints();
    endpoints.rotate_left(down);
    let store = store(endpoints);
    let before = commit(&store, Txn::put(route("1"), json!(1))).await;
    let mut broken = store_of(&etcd, down).watch(before).await.unwrap();

    etcd.kill(down);
    match next(&mut broken).await {
        Err(StoreError::Unavailable(cause)) => assert!(cause.contains(&etcd.endpoint(down))),
        other => panic!("expected the watch to break, got {other:?}"),
    }
    let after = commit(&store, Txn::put(route("2"), json!(2))).await;
    let listing = store.list().await.unwrap();
    assert_eq!(listing.revision, after);
    assert_eq!(listing.entries.len(), 2);
    let mut watch = store.watch(before).await.unwrap();
    assert_eq!(next(&mut watch).await.unwrap().revision, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_stops_answering_is_passed_over() {
    let mut etcd = EtcdCluster::start(3);
    let frozen = (etcd.leader() + 1) % 3;
    let mut endpoints = etcd.endpoints();
    endpoints.rotate_left(frozen);
    let store = store(endpoints);
    let before = commit(&store, Txn::put(route("1"), json!(1))).await;
    let mut silent = store_of(&etcd, frozen).watch(before).await.unwrap();

    // Its connections stay open; only the timeout, and the keep-alive ping for the watch, tell.
    etcd.pause(frozen);
    let after = commit(&store, Txn::put(route("2"), json!(2))).await;
    assert_eq!(store.list().await.unwrap().revision, after);
    match next(&mut silent).await {
        Err(StoreError::Unavailable(cause)) => assert!(cause.contains(&etcd.endpoint(frozen))),
        other => panic!("expected the watch to break, got {other:?}"),
    }
    etcd.resume(frozen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_member_down_requests_fail_in_time_then_recover() {
    let mut etcd = EtcdCluster::start(3);
    let store = store(etcd.endpoints());
    let written = commit(&store, Txn::put(route("1"), json!(1))).await;
    let mut watch = store.watch(written).await.unwrap();

    for member in 0..3 {
        etcd.stop(member);
    }
    assert!(matches!(
        next(&mut watch).await,
        Err(StoreError::Unavailable(_))
    ));
    let names_every_endpoint = |error: StoreError| match error {
        StoreError::Unavailable(cause) => etcd.endpoints().iter().all(|e| cause.contains(e)),
        _ => false,
    };
    let listed = bounded(store.list()).await.unwrap_err();
    assert!(names_every_endpoint(listed.clone()), "{listed}");
    let committed = bounded(store.commit(Txn::put(route("2"), json!(2))))
        .await
        .unwrap_err();
    assert!(names_every_endpoint(committed.clone()), "{committed}");
    let watched = bounded(store.watch(written)).await.unwrap_err();
    assert!(names_every_endpoint(watched.clone()), "{watched}");

    etcd.restart(&[0, 1, 2]);
    let listing = eventually(|| store.list()).await;
    assert_eq!(listing.revision, written);
    let mut watch = store.watch(written).await.unwrap();
    let revision = commit(&store, Txn::put(route("2"), json!(2))).await;
    assert_eq!(next(&mut watch).await.unwrap().revision, revision);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_store_reports_a_lower_revision() {
    let mut etcd = EtcdCluster::single();
    let store = store(etcd.endpoints());
    let mut before = 0;
    for i in 0..10 {
        before = commit(&store, Txn::put(route(&i.to_string()), json!(i))).await;
    }
    let mut watch = store.watch(before).await.unwrap();

    etcd.wipe_and_restart();
    assert!(matches!(
        next(&mut watch).await,
        Err(StoreError::Unavailable(_))
    ));
    let listing = eventually(|| store.list()).await;
    assert!(
        listing.revision < before,
        "{} >= {before}",
        listing.revision
    );
    assert_eq!(listing.entries, []);
    let mut watch = store.watch(listing.revision).await.unwrap();
    let revision = commit(&store, Txn::put(route("new"), json!({}))).await;
    assert_eq!(next(&mut watch).await.unwrap().revision, revision);
}
