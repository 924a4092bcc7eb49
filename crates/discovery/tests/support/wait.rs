//! Waiting for something a background task does, with a deadline rather than a fixed sleep.
#![allow(dead_code)] // Each test uses a part.

use std::sync::Arc;
use std::time::Duration;

use pylon_discovery::{Node, ServiceWatch};
use tokio::time::Instant;

/// Longer than anything awaited can take on a slow, shared machine.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Polls `check` until it gives a value; fails the test after [`PATIENCE`], saying `what`
/// was awaited (asked then, so that it can tell how things stand).
pub async fn until<T>(what: impl Fn() -> String, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "not within {PATIENCE:?}: {}",
            what()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The watch's nodes once `accept` takes them.
pub async fn nodes_where(
    watch: &ServiceWatch,
    what: &str,
    accept: impl Fn(&[Node]) -> bool,
) -> Arc<[Node]> {
    let what = || format!("{what}; the nodes are {:?}", watch.current());
    until(what, || watch.current().filter(|nodes| accept(nodes))).await
}

/// `(host, port)` of each node, sorted.
pub fn addresses(nodes: &[Node]) -> Vec<(String, u16)> {
    let mut addresses: Vec<_> = nodes.iter().map(|n| (n.host.clone(), n.port)).collect();
    addresses.sort();
    addresses
}

/// The nodes once they are exactly `expected` (`(host, port)` pairs, in any order).
pub async fn nodes_are(watch: &ServiceWatch, expected: &[(&str, u16)]) -> Arc<[Node]> {
    let mut expected: Vec<(String, u16)> =
        expected.iter().map(|(h, p)| (h.to_string(), *p)).collect();
    expected.sort();
    let what = format!("nodes {expected:?}");
    nodes_where(watch, &what, |nodes| addresses(nodes) == expected).await
}
