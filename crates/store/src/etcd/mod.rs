//! The etcd backend, for cluster mode: every gateway node lists one prefix of an etcd cluster and
//! watches it, and the Admin API of any node writes there.
//!
//! - **Keys.** A resource is the key `<prefix>/<kind>/<id>` (as [`Key::to_path`] writes it)
//!   holding its JSON; Pylon's revisions are etcd's. A listing reads the prefix in pages, all at
//!   the revision of the first, so that it is one consistent snapshot however large. Other
//!   prefixes are read and watched as raw keys through [`EtcdKeys`].
//! - **Changes.** One etcd transaction is one revision, and the watch passes each revision's
//!   events on as one [`Change`] once all of them have arrived.
//! - **Compare-and-swap of the whole configuration.** Every commit also puts a guard key,
//!   `<prefix>/.guard`, so the guard's modification revision is that of the last commit from
//!   any node; a commit made "unchanged since `r`" applies only if that revision is still at
//!   most `r`. Writes that bypass Pylon (`etcdctl`) leave the guard alone and go unnoticed by
//!   this check, though watchers see them.
//! - **Compaction.** A watch asked for revisions etcd has compacted away ends with
//!   [`StoreError::Compacted`]: the reader lists again.
//! - **Disconnection.** Requests move from an unreachable or slow endpoint to the next one. A
//!   watch whose connection breaks (a restart, the network, a member cut off from its leader, a
//!   keep-alive ping left unanswered) ends with [`StoreError::Unavailable`]: the reader lists
//!   again, from another member if need be.

mod endpoints;
mod keyspace;
mod prefix;
mod proto;
mod settings;
mod txn;
mod watch;

pub use endpoints::EtcdError;
pub use prefix::{EtcdKeys, RawEntry, RawEvent, RawWatchStream};
pub use settings::EtcdSettings;

use std::sync::Arc;

use async_trait::async_trait;
use pylon_model::{Key, Kind};

use crate::{ConfigStore, Entry, Listing, Revision, StoreError, Txn, WatchStream};
use endpoints::Endpoints;
use keyspace::{revision, Keyspace};
use proto::{KeyValue, RangeRequest, RangeResponse, ResponseHeader, TxnResponse, RANGE, TXN};

/// Keys per listing page: few enough that a page of large resources stays far below the
/// largest message either side accepts.
const PAGE: i64 = 500;

/// A [`ConfigStore`] kept in etcd (v3 API, over gRPC).
pub struct EtcdStore {
    endpoints: Endpoints,
    keyspace: Arc<Keyspace>,
}

impl EtcdStore {
    /// Connects lazily, on the first request, so this succeeds while etcd is down. Needs a
    /// Tokio runtime: the connections are driven by tasks on it.
    pub fn new(settings: &EtcdSettings) -> Result<EtcdStore, EtcdError> {
        Ok(EtcdStore {
            endpoints: Endpoints::new(&settings.endpoints, settings.timeout)?,
            keyspace: Arc::new(Keyspace::new(&settings.prefix)),
        })
    }

    async fn range(&self, request: RangeRequest) -> Result<RangeResponse, StoreError> {
        self.endpoints.unary(RANGE, request).await
    }
}

#[async_trait]
impl ConfigStore for EtcdStore {
    async fn list(&self) -> Result<Listing, StoreError> {
        let mut entries = Vec::new();
        // The ranges around the history, each read at the revision of the first.
        let mut revision = 0;
        for range in self.keyspace.current_ranges() {
            revision = list_range(&self.endpoints, range, revision, |kv| {
                entries.extend(self.keyspace.entry(kv));
            })
            .await?;
        }
        Ok(Listing { revision, entries })
    }

    async fn history(&self, kind: Kind, id_prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let mut entries = Vec::new();
        let range = self.keyspace.history_range(kind, id_prefix);
        list_range(&self.endpoints, range, 0, |kv| {
            entries.extend(self.keyspace.entry(kv));
        })
        .await?;
        Ok(entries)
    }

    async fn get(&self, key: &Key) -> Result<Option<Entry>, StoreError> {
        let response = self
            .range(RangeRequest {
                key: self.keyspace.path(key),
                ..RangeRequest::default()
            })
            .await?;
        Ok(response.kvs.first().and_then(|kv| self.keyspace.entry(kv)))
    }

    async fn committed_revision(&self) -> Result<Revision, StoreError> {
        // The guard is written by every commit: its modification revision is the last one's.
        let response = self
            .range(RangeRequest {
                key: self.keyspace.guard().to_vec(),
                ..RangeRequest::default()
            })
            .await?;
        Ok(response
            .kvs
            .first()
            .map_or(0, |kv| revision(kv.mod_revision)))
    }

    async fn watch(&self, after: Revision) -> Result<WatchStream, StoreError> {
        let range = self.keyspace.range();
        watch::start(&self.endpoints, self.keyspace.clone(), range, after).await
    }

    async fn commit(&self, txn: Txn) -> Result<Revision, StoreError> {
        let request = txn::request(&self.keyspace, txn)?;
        let response: TxnResponse = self.endpoints.unary(TXN, request).await?;
        if !response.succeeded {
            return Err(StoreError::Conflict);
        }
        header_revision(response.header)
    }
}

/// Reads every key in `[key, range_end)` in pages, all at `revision` (0: the revision of the
/// first page), so that it is one consistent snapshot however large; hands each to `take` in
/// key order and returns the revision read at.
async fn list_range(
    endpoints: &Endpoints,
    (key, range_end): (Vec<u8>, Vec<u8>),
    mut revision: Revision,
    mut take: impl FnMut(&KeyValue),
) -> Result<Revision, StoreError> {
    let mut request = RangeRequest {
        key,
        range_end,
        limit: PAGE,
        revision: i64::try_from(revision).unwrap_or(i64::MAX),
    };
    loop {
        let page: RangeResponse = endpoints.unary(RANGE, request.clone()).await?;
        if request.revision == 0 {
            revision = header_revision(page.header)?;
            request.revision = i64::try_from(revision).unwrap_or(i64::MAX);
        }
        page.kvs.iter().for_each(&mut take);
        match page.kvs.last() {
            Some(last) if page.more => {
                // The next page starts just after the last key read.
                request.key = [last.key.as_slice(), b"\0"].concat();
            }
            _ => return Ok(revision),
        }
    }
}

fn header_revision(header: Option<ResponseHeader>) -> Result<Revision, StoreError> {
    header.map(|h| revision(h.revision)).ok_or_else(|| {
        StoreError::Unavailable("etcd answered without a response header".to_owned())
    })
}
