//! Optimistic writes: plan against a view, commit only if nothing changed since, otherwise
//! plan again on the newer view.
//!
//! Every write is checked against one view of the whole configuration (references included),
//! so its transaction carries `unchanged_since(view.revision)` besides the conditions on its own
//! keys. A conflict means someone else wrote first: the replica is given a moment to catch up,
//! and the whole operation (a PATCH's merge included) is done again on what it now holds. After
//! a commit the answer waits until this node serves the write (on a node that proxies: its
//! workers' snapshot has it), so a request sent after the answer finds it.
//!
//! A node's own writes take turns, from planning to their commit being seen: they never
//! conflict with each other, only with other nodes' (etcd). Racing each other instead, clients
//! writing back to back through one node kept invalidating each other's plans, and one of them
//! could lose every attempt and get 409, even on the embedded store where no one else writes.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use pylon_store::{ConfigStore, Keyring, Replica, Revision, StoreError, Txn, View};
use tokio::sync::watch;

use crate::audit::{self, Record};
use crate::response::Reply;

/// Plans tried before giving up with 409.
const ATTEMPTS: u32 = 16;
/// How long a conflicting writer waits for the replica to see the write that beat it.
const CATCH_UP_AFTER_CONFLICT: Duration = Duration::from_secs(2);
/// How long a request waits for the store's last revision, and for this node's copy to reach
/// it, before it reads the copy as it is.
const CATCH_UP_BEFORE_READ: Duration = Duration::from_secs(1);
/// How long an answer waits for the replica to show the committed write.
const CATCH_UP_AFTER_COMMIT: Duration = Duration::from_secs(5);

/// What every handler works with: the store to write to, this node's copy of it to read and
/// check against, and the keyring that seals SSL private keys.
pub(crate) struct Backend {
    pub store: Arc<dyn ConfigStore>,
    pub replica: Arc<Replica>,
    /// The revision this node's workers serve, on a node that proxies.
    pub served: Option<watch::Receiver<Revision>>,
    pub keyring: Arc<Keyring>,
    /// Held by one write of this node at a time; first come, first served.
    pub turn: tokio::sync::Mutex<()>,
}

/// A write worked out against one view: the transaction, and what to answer once committed.
pub(crate) struct Plan<T> {
    pub txn: Txn,
    pub outcome: T,
}

pub(crate) struct Committed<T> {
    /// The store's revision after the write (the view's, if there was nothing to write).
    pub revision: Revision,
    /// Whether the store changed: a write of what is already stored is a no-op.
    pub changed: bool,
    pub outcome: T,
}

impl Backend {
    /// Plans with `plan` and commits, with the audit record of the write (see [`audit`]),
    /// again and again while others write first (bounded).
    pub async fn write<T>(
        &self,
        record: &Record,
        mut plan: impl FnMut(&View) -> Result<Plan<T>, Reply>,
    ) -> Result<Committed<T>, Reply> {
        let _turn = self.turn.lock().await;
        let (store, replica) = (&*self.store, &*self.replica);
        // Checked against a copy that has every write made so far, through any node: a route
        // may name an upstream created through another node an instant ago.
        let committed = store
            .committed_revision()
            .await
            .map_err(|e| Reply::store_error(&e))?;
        let mut view = tokio::time::timeout(CATCH_UP_AFTER_CONFLICT, replica.caught_up(committed))
            .await
            .unwrap_or_else(|_| replica.view());
        for attempt in 0..ATTEMPTS {
            let Plan { mut txn, outcome } = plan(&view)?;
            if txn.writes.is_empty() && !record.event {
                return Ok(Committed {
                    revision: view.revision,
                    changed: false,
                    outcome,
                });
            }
            audit::append(&view, record, &mut txn);
            match store.commit(txn.unchanged_since(view.revision)).await {
                Ok(revision) => {
                    if tokio::time::timeout(CATCH_UP_AFTER_COMMIT, self.caught_up(revision))
                        .await
                        .is_err()
                    {
                        tracing::warn!(
                        "admin write committed at revision {revision}, but this node does not serve it yet"
                    );
                    }
                    return Ok(Committed {
                        revision,
                        changed: revision != view.revision,
                        outcome,
                    });
                }
                Err(StoreError::Conflict) => {
                    // Two writers that retry in lockstep can keep beating each other (the one
                    // whose node saw the last commit first wins again): a random pause, growing
                    // with the attempts, breaks the tie.
                    tokio::time::sleep(jitter(attempt)).await;
                    view = newer_view(replica, view.revision).await;
                }
                Err(e) => return Err(Reply::store_error(&e)),
            }
        }
        Err(Reply::error(
        StatusCode::CONFLICT,
        format!(
            "the configuration kept changing concurrently ({ATTEMPTS} attempts); nothing was written, try again"
        ),
    ))
    }
}

impl Backend {
    /// Brings this node's copy of the store up to every write acknowledged so far, through
    /// any node, so that a request (and the token it is checked with: a user removed through
    /// another node an instant ago) never reads older than a write answered before it. While
    /// the store cannot be reached, the copy is read as it is.
    pub async fn catch_up(&self) {
        let committed = tokio::time::timeout(CATCH_UP_BEFORE_READ, self.store.committed_revision());
        if let Ok(Ok(revision)) = committed.await {
            let caught_up = self.replica.caught_up(revision);
            let _ = tokio::time::timeout(CATCH_UP_BEFORE_READ, caught_up).await;
        }
    }

    /// Completes once this node has `revision`: its workers serve it, on a node that
    /// proxies; its copy of the store holds it, on one that does not.
    async fn caught_up(&self, revision: Revision) {
        match &self.served {
            Some(served) => {
                // The publisher only stops with the process.
                let _ = served.clone().wait_for(|served| *served >= revision).await;
            }
            None => drop(self.replica.caught_up(revision).await),
        }
    }
}

/// The first view after `revision`, or the current one if none comes in time.
/// A random pause of up to `attempt` × 5 ms.
fn jitter(attempt: u32) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    // A randomly keyed hasher is random enough to spread retries.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let ceiling_us = u64::from(attempt + 1) * 5_000;
    Duration::from_micros(random % ceiling_us)
}

async fn newer_view(replica: &Replica, revision: Revision) -> Arc<View> {
    let mut views = replica.subscribe();
    let newer = tokio::time::timeout(
        CATCH_UP_AFTER_CONFLICT,
        views.wait_for(|v| v.revision > revision),
    )
    .await;
    match newer {
        Ok(Ok(view)) => view.clone(),
        _ => replica.view(),
    }
}
