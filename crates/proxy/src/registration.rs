//! The node's record in the config store, `nodes/<id>`: who it is, where it listens, what it
//! serves and when it was last seen, for the operator (the Admin API lists these records) to
//! see the cluster's gateways and to choose where a canary goes.
//!
//! Written at start, at every heartbeat, and at once when the canaries the node serves change.
//! A write is a plain put, checked against nothing: a heartbeat must never conflict with the
//! configuration's writes, nor with another heartbeat (during a restart the old and the new
//! process beat under one id for a moment). A write that fails is logged, at most once a
//! minute, and the next beat tries again; serving never waits on it. The record outlives the
//! process: `last_seen` tells that a node is gone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pylon_model::{Key, Kind};
use pylon_store::{ConfigStore, Revision, StoreError, Txn};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use crate::canary::NodeIdentity;
use crate::publish::Publisher;

/// A failed write is logged once, then at most this often while writes keep failing.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// What a node listens on, as its record shows it (ports resolved).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Addresses {
    pub http: Vec<SocketAddr>,
    pub https: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub control: Option<SocketAddr>,
}

/// Keeps a node's record written; see the module documentation.
pub struct Registration {
    store: Arc<dyn ConfigStore>,
    node: NodeIdentity,
    /// `traditional` or `data_plane`.
    role: &'static str,
    addresses: Addresses,
    /// When this process started, in Unix seconds.
    started: u64,
    interval: Duration,
    served: watch::Receiver<Revision>,
    canaries: watch::Receiver<Vec<String>>,
}

/// The record as stored.
#[derive(Serialize)]
struct Record<'a> {
    id: &'a str,
    labels: &'a std::collections::BTreeMap<String, String>,
    addresses: &'a Addresses,
    version: &'static str,
    role: &'static str,
    started: u64,
    last_seen: u64,
    /// The configuration revision the workers serve.
    revision: Revision,
    /// The canary change sets they serve.
    canaries: &'a [String],
}

impl Registration {
    /// The registration of the node whose workers `publisher` feeds, beating every `interval`.
    pub fn new(
        store: Arc<dyn ConfigStore>,
        node: NodeIdentity,
        role: &'static str,
        addresses: Addresses,
        interval: Duration,
        publisher: &Publisher,
    ) -> Self {
        Self {
            store,
            node,
            role,
            addresses,
            started: unix_now(),
            interval,
            served: publisher.served(),
            canaries: publisher.canaries(),
        }
    }

    /// Writes the record now, at every beat and whenever the canaries served change, for ever.
    pub async fn run(mut self) {
        let key = Key::new(Kind::Nodes, self.node.id.clone());
        let mut beats = tokio::time::interval(self.interval);
        beats.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut failures = Failures::default();
        loop {
            tokio::select! {
                _ = beats.tick() => {}
                Ok(()) = self.canaries.changed() => {}
            }
            let record = self.record();
            let written = self.store.commit(Txn::put(key.clone(), record)).await;
            failures.note(&key, written, Instant::now());
        }
    }

    fn record(&mut self) -> serde_json::Value {
        let canaries = self.canaries.borrow_and_update();
        let record = Record {
            id: &self.node.id,
            labels: &self.node.labels,
            addresses: &self.addresses,
            version: env!("CARGO_PKG_VERSION"),
            role: self.role,
            started: self.started,
            last_seen: unix_now(),
            revision: *self.served.borrow(),
            canaries: &canaries,
        };
        serde_json::json!(record)
    }
}

/// Writes that failed in a row, and when that was last logged.
#[derive(Default)]
struct Failures {
    in_a_row: u64,
    logged: Option<Instant>,
}

impl Failures {
    /// Takes the outcome of a write; logs a failure unless one was logged less than
    /// [`FAILURE_LOG_INTERVAL`] ago, and the first success after failures. Returns whether it
    /// logged.
    fn note(&mut self, key: &Key, written: Result<Revision, StoreError>, now: Instant) -> bool {
        match written {
            Ok(_) if self.in_a_row == 0 => false,
            Ok(_) => {
                tracing::info!(
                    "{key} written again, after {} failed write(s)",
                    self.in_a_row
                );
                *self = Failures::default();
                true
            }
            Err(e) => {
                self.in_a_row += 1;
                let due = self
                    .logged
                    .is_none_or(|at| now.duration_since(at) >= FAILURE_LOG_INTERVAL);
                if due {
                    tracing::warn!(
                        "{key} not written ({} failed write(s) in a row): {e}; trying again at the next heartbeat",
                        self.in_a_row
                    );
                    self.logged = Some(now);
                }
                due
            }
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_writes_are_logged_once_a_minute_and_the_recovery_once() {
        let key = Key::new(Kind::Nodes, "gw-1");
        let down = || Err(StoreError::Unavailable("etcd is down".into()));
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut failures = Failures::default();
        assert!(!failures.note(&key, Ok(3), at(0)), "success is quiet");
        assert!(
            failures.note(&key, down(), at(0)),
            "the first failure is logged"
        );
        assert!(!failures.note(&key, down(), at(10)));
        assert!(!failures.note(&key, down(), at(59)));
        assert!(
            failures.note(&key, down(), at(60)),
            "and one a minute after"
        );
        assert_eq!(failures.in_a_row, 4);
        assert!(failures.note(&key, Ok(9), at(70)), "the recovery is logged");
        assert!(!failures.note(&key, Ok(10), at(80)));
        assert!(
            failures.note(&key, down(), at(81)),
            "a new outage is logged at once"
        );
    }
}
