//! The node's write side, as a restart hands it over: the Admin API, and the embedded store,
//! which one process at a time may hold.
//!
//! When a successor asks for the store, this process stops taking Admin API requests (those
//! not accepted yet wait in the listening socket's queue, which the successor serves next),
//! answers the ones it has, and only then lets go of the store: every write it acknowledged is
//! on disk, and none comes after. Should the successor fail before it serves, the store and
//! the Admin API come back here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pylon_admin::AdminApi;
use pylon_store::{EmbeddedError, EmbeddedStore};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long the Admin API's requests in flight may take to finish when it stops; a client
/// still sending its request by then is cut off (a write it got to the store is on disk all
/// the same: the store lets go only after it).
const ADMIN_DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// How long a successor that failed may take to exit and unlock the data directory.
const RECLAIM_WITHIN: Duration = Duration::from_secs(30);
const RECLAIM_RETRY: Duration = Duration::from_millis(50);

pub struct Writes {
    admin: Option<AdminServer>,
    /// The embedded store; the others are shared with a successor.
    embedded: Option<Arc<EmbeddedStore>>,
}

/// The Admin API, served on the control runtime while `running`.
struct AdminServer {
    api: Arc<AdminApi>,
    running: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl Writes {
    /// Starts serving `admin`, if this node has an Admin API.
    pub fn start(admin: Option<AdminApi>, embedded: Option<Arc<EmbeddedStore>>) -> Writes {
        let mut admin = admin.map(|api| AdminServer {
            api: Arc::new(api),
            running: None,
        });
        if let Some(admin) = &mut admin {
            admin.resume();
        }
        Writes { admin, embedded }
    }

    /// Stops taking writes and lets go of the store, for a successor to open.
    pub async fn release(&mut self) {
        if let Some(admin) = &mut self.admin {
            admin.pause().await;
        }
        if let Some(store) = self.embedded.clone() {
            // Waits for a commit under way, and its sync.
            if let Err(e) = tokio::task::spawn_blocking(move || store.release()).await {
                tracing::error!("releasing the store: {e}");
            }
        }
    }

    /// Takes the store back from a successor that failed before it served, and serves the
    /// Admin API again.
    pub async fn reclaim(&mut self) {
        if let Some(store) = self.embedded.clone() {
            let reclaimed = tokio::task::spawn_blocking(move || reclaim_once_free(&store)).await;
            match reclaimed {
                Ok(Ok(())) => tracing::info!("the store is back: writing to it again"),
                // Reads go on; writes fail, saying that the store went to another process.
                Ok(Err(e)) => tracing::error!("the store did not come back: {e}"),
                Err(e) => tracing::error!("the store did not come back: {e}"),
            }
        }
        if let Some(admin) = &mut self.admin {
            admin.resume();
        }
    }

    /// Finishes the Admin API's requests in flight and takes no more.
    pub async fn stop(mut self) {
        if let Some(admin) = &mut self.admin {
            admin.pause().await;
        }
    }
}

/// The successor that failed may still be exiting, with the data directory locked.
fn reclaim_once_free(store: &EmbeddedStore) -> Result<(), EmbeddedError> {
    let deadline = Instant::now() + RECLAIM_WITHIN;
    loop {
        match store.reclaim() {
            Err(EmbeddedError::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(RECLAIM_RETRY);
            }
            reclaimed => return reclaimed,
        }
    }
}

impl AdminServer {
    fn resume(&mut self) {
        if self.running.is_some() {
            return;
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let api = self.api.clone();
        let task = tokio::spawn(async move {
            api.serve_until(async {
                let _ = stopped.await;
            })
            .await;
        });
        self.running = Some((stop, task));
    }

    /// Returns once the API has stopped accepting and its connections have closed.
    async fn pause(&mut self) {
        let Some((stop, mut task)) = self.running.take() else {
            return;
        };
        let _ = stop.send(());
        if tokio::time::timeout(ADMIN_DRAIN_LIMIT, &mut task)
            .await
            .is_err()
        {
            tracing::warn!(
                "admin API requests still unfinished after {ADMIN_DRAIN_LIMIT:?}: cut off"
            );
            task.abort();
            let _ = task.await;
        }
    }
}
