//! Following a range of keys with an etcd watch, and turning its events into whole [`Change`]s.
//!
//! etcd sends events in revision order, a revision's events together in one response, unless
//! the response is too large for one message: then it comes in fragments, all but the last
//! flagged. So a revision is complete when the next one begins or a response that is not a
//! fragment ends, and only then is it passed on.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::codec::{ProstCodec, Streaming};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::MetadataValue;

use super::endpoints::{describe, Endpoints};
use super::keyspace::revision;
use super::proto::{self, watch_request, WatchCreateRequest, WatchRequest, WatchResponse, WATCH};
use crate::{Change, Revision, StoreError};

/// Changes buffered for a reader that is behind; beyond that, etcd waits for it.
const BUFFER: usize = 256;

/// What a watch's events become for its reader: the configuration's resources, or raw keys.
pub(super) trait Decode: Send + Sync + 'static {
    type Event: Send + 'static;

    /// The event for the reader, or `None` for one it does not care about (the revision is
    /// passed on all the same).
    fn decode(&self, raw: &proto::Event) -> Option<Self::Event>;
}

/// What a reader receives: changes in revision order, or the error that ended the watch.
pub(super) type Changes<D> = mpsc::Receiver<Result<Change<<D as Decode>::Event>, StoreError>>;

/// Starts a watch of every key in `[key, range_end)` from the revision after `after`, on the
/// first member that accepts it.
pub(super) async fn start<D: Decode>(
    endpoints: &Endpoints,
    decoder: Arc<D>,
    (key, range_end): (Vec<u8>, Vec<u8>),
    after: Revision,
) -> Result<Changes<D>, StoreError> {
    let create = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key,
                range_end,
                start_revision: i64::try_from(after.saturating_add(1)).unwrap_or(i64::MAX),
                fragment: true,
            },
        )),
    };
    let ((responses, first), endpoint) = endpoints
        .first_answer(|mut grpc| {
            // The request stream is kept open for the life of the watch, as etcd's own client
            // keeps it: a half-closed call is not one to count on being served on.
            let requests = tokio_stream::once(create.clone()).chain(tokio_stream::pending());
            let mut request = tonic::Request::new(requests);
            // A member cut off from the cluster's leader ends the watch rather than leaving it
            // silent while the others move on.
            request
                .metadata_mut()
                .insert("hasleader", MetadataValue::from_static("true"));
            async move {
                let path = PathAndQuery::from_static(WATCH);
                let mut responses = grpc
                    .streaming(request, path, ProstCodec::default())
                    .await?
                    .into_inner();
                // The watch exists once etcd says so in its first response.
                let first = responses
                    .message()
                    .await?
                    .ok_or_else(|| tonic::Status::unavailable("watch stream closed at once"))?;
                Ok((responses, first))
            }
        })
        .await?;
    let (tx, rx) = mpsc::channel(BUFFER);
    let relay = Relay {
        decoder,
        endpoint: endpoint.to_owned(),
        delivered: after,
        pending: None,
        tx,
    };
    tokio::spawn(relay.run(first, responses));
    Ok(rx)
}

/// Passes one watch's changes on to its reader, until either end stops.
struct Relay<D: Decode> {
    decoder: Arc<D>,
    endpoint: String,
    /// The revision of the last change passed on.
    delivered: Revision,
    /// The revision whose events are being gathered.
    pending: Option<Change<D::Event>>,
    tx: mpsc::Sender<Result<Change<D::Event>, StoreError>>,
}

impl<D: Decode> Relay<D> {
    async fn run(mut self, first: WatchResponse, responses: Streaming<WatchResponse>) {
        if let Some(end) = self.follow(first, responses).await {
            // The reader is told why its watch ended, unless it is gone too.
            let _ = self.tx.send(Err(end)).await;
        }
    }

    /// Relays until the watch ends; returns why, or `None` if the reader is gone.
    async fn follow(
        &mut self,
        first: WatchResponse,
        mut responses: Streaming<WatchResponse>,
    ) -> Option<StoreError> {
        let mut response = first;
        loop {
            if let Err(end) = self.take(response).await {
                return end;
            }
            let next = tokio::select! {
                // Dropping the response stream cancels the watch on etcd's side.
                _ = self.tx.closed() => return None,
                next = responses.message() => next,
            };
            response = match next {
                Ok(Some(response)) => response,
                Ok(None) => {
                    let cause = format!("etcd at {} ended the watch", self.endpoint);
                    return Some(StoreError::Unavailable(cause));
                }
                Err(status) => {
                    let cause = format!("watch on {} broke: {}", self.endpoint, describe(&status));
                    return Some(StoreError::Unavailable(cause));
                }
            };
        }
    }

    /// Passes on the changes `response` completes. `Err` ends the watch: with the error for the
    /// reader, or `None` if the reader is gone.
    async fn take(&mut self, response: WatchResponse) -> Result<(), Option<StoreError>> {
        if response.compact_revision > 0 {
            return Err(Some(StoreError::Compacted(self.delivered)));
        }
        if response.canceled {
            let cause = format!(
                "etcd at {} canceled the watch: {}",
                self.endpoint, response.cancel_reason
            );
            return Err(Some(StoreError::Unavailable(cause)));
        }
        let decoder = self.decoder.clone();
        for raw in &response.events {
            let Some(kv) = &raw.kv else { continue };
            // Every revision is passed on, even one that only touched the guard or keys that
            // are no resource: a reader's revision must reach the store's, or its
            // `unchanged_since` commits would fail for ever.
            if let Some(complete) = self.begin(revision(kv.mod_revision)) {
                self.pass_on(complete).await?;
            }
            if let (Some(event), Some(pending)) = (decoder.decode(raw), &mut self.pending) {
                pending.events.push(event);
            }
        }
        if !response.fragment {
            if let Some(complete) = self.pending.take() {
                self.pass_on(complete).await?;
            }
        }
        Ok(())
    }

    /// Makes `revision` the pending change's; returns the previous pending change if this
    /// begins the next one.
    fn begin(&mut self, revision: Revision) -> Option<Change<D::Event>> {
        match &self.pending {
            Some(pending) if pending.revision == revision => None,
            _ => self.pending.replace(Change {
                revision,
                events: Vec::new(),
            }),
        }
    }

    async fn pass_on(&mut self, change: Change<D::Event>) -> Result<(), Option<StoreError>> {
        self.delivered = change.revision;
        self.tx.send(Ok(change)).await.map_err(|_| None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd::keyspace::Keyspace;
    use crate::etcd::proto::EventType;

    fn put(path: &str, revision: i64) -> proto::Event {
        proto::Event {
            r#type: EventType::Put as i32,
            kv: Some(proto::KeyValue {
                key: path.as_bytes().to_vec(),
                create_revision: revision,
                mod_revision: revision,
                value: b"{}".to_vec(),
            }),
        }
    }

    fn response(events: Vec<proto::Event>, fragment: bool) -> WatchResponse {
        WatchResponse {
            events,
            fragment,
            ..WatchResponse::default()
        }
    }

    #[tokio::test]
    async fn a_revision_is_passed_on_once_all_its_fragments_arrived() {
        let (tx, mut rx) = mpsc::channel(8);
        let mut relay = Relay {
            decoder: Arc::new(Keyspace::new("/pylon")),
            endpoint: "http://127.0.0.1:2379".to_owned(),
            delivered: 1,
            pending: None,
            tx,
        };
        let first = vec![put("/pylon/routes/a", 2), put("/pylon/routes/b", 3)];
        relay.take(response(first, true)).await.unwrap();
        assert_eq!(rx.try_recv().unwrap().unwrap().revision, 2);
        assert!(rx.try_recv().is_err(), "revision 3 may have more events");

        // The guard's put is no resource; a revision of nothing else is still passed on,
        // empty, so that the reader's revision keeps up with the store's.
        let rest = vec![put("/pylon/routes/c", 3), put("/pylon/.guard", 4)];
        relay.take(response(rest, false)).await.unwrap();
        let change = rx.try_recv().unwrap().unwrap();
        assert_eq!((change.revision, change.events.len()), (3, 2));
        let change = rx.try_recv().unwrap().unwrap();
        assert_eq!((change.revision, change.events.len()), (4, 0));
        assert_eq!(relay.delivered, 4);
    }
}
