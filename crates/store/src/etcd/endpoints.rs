//! The cluster's members as seen from one node, and how a request finds one that answers.
//!
//! Each endpoint has its own HTTP/2 connection, opened on first use (a node starts while etcd is
//! down) and reopened after it breaks. A request goes to the member that answered last; if that
//! member cannot be reached or does not answer in time, the request moves on to the next, trying
//! each member once. Retrying beyond that, with backoff, is the caller's business.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tonic::client::Grpc;
use tonic::codec::ProstCodec;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::StoreError;

/// Large enough for a listing page or a burst of watch events with big values; tonic's default,
/// 4 MiB, is not.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// How long a connection may stay silent before it is pinged; one whose ping is not answered
/// within the request timeout is closed, which ends its watches. etcd answers pings more frequent
/// than every 5 s (`--grpc-keepalive-min-time`) by closing the connection, and counts pings on a
/// connection without streams as abuse, hence no pings while idle.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("no etcd endpoint given")]
    NoEndpoints,
    #[error("etcd endpoint `{url}`: {reason}")]
    InvalidEndpoint { url: String, reason: String },
}

pub(super) struct Endpoints {
    members: Vec<Member>,
    /// Where the next request starts: the member that answered last, so that a dead member costs
    /// one timeout rather than one per request.
    preferred: AtomicUsize,
    timeout: Duration,
}

struct Member {
    url: String,
    channel: Channel,
}

impl Endpoints {
    /// Needs a Tokio runtime: the connections are driven by tasks on it.
    pub fn new(urls: &[String], timeout: Duration) -> Result<Endpoints, EtcdError> {
        if urls.is_empty() {
            return Err(EtcdError::NoEndpoints);
        }
        let members = urls
            .iter()
            .map(|url| {
                let invalid = |reason: String| EtcdError::InvalidEndpoint {
                    url: url.clone(),
                    reason,
                };
                if !url.starts_with("http://") {
                    return Err(invalid("only http:// URLs are supported".to_owned()));
                }
                let endpoint = Endpoint::from_shared(url.clone())
                    .map_err(|e| invalid(e.to_string()))?
                    .connect_timeout(timeout)
                    .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
                    .keep_alive_timeout(timeout)
                    .keep_alive_while_idle(false);
                Ok(Member {
                    url: url.clone(),
                    channel: endpoint.connect_lazy(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Endpoints {
            members,
            preferred: AtomicUsize::new(0),
            timeout,
        })
    }

    /// Sends one unary request (`path` is the method's) to the first member that answers.
    pub async fn unary<Request, Response>(
        &self,
        path: &'static str,
        request: Request,
    ) -> Result<Response, StoreError>
    where
        Request: prost::Message + Clone + 'static,
        Response: prost::Message + Default + 'static,
    {
        let (response, _) = self
            .first_answer(|mut grpc: Grpc<Channel>| {
                let request = tonic::Request::new(request.clone());
                async move {
                    let path = PathAndQuery::from_static(path);
                    let response = grpc.unary(request, path, ProstCodec::default()).await?;
                    Ok(response.into_inner())
                }
            })
            .await?;
        Ok(response)
    }

    /// Runs `attempt` against each member in turn, from the preferred one, until one succeeds
    /// within the timeout; returns its result and the member's URL.
    ///
    /// A write whose answer timed out may have been applied all the same. Sent again to the next
    /// member, it is applied twice (the same values, one revision more) or, if it has
    /// conditions, they no longer hold and it reports a conflict: the caller reads again and
    /// finds its change made.
    pub async fn first_answer<T, Attempt, Answer>(
        &self,
        mut attempt: Attempt,
    ) -> Result<(T, &str), StoreError>
    where
        Attempt: FnMut(Grpc<Channel>) -> Answer,
        Answer: Future<Output = Result<T, Status>>,
    {
        let count = self.members.len();
        let first = self.preferred.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        for index in (first..first + count).map(|i| i % count) {
            let member = &self.members[index];
            let mut grpc =
                Grpc::new(member.channel.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES);
            let answer = async {
                grpc.ready()
                    .await
                    .map_err(|e| Status::unavailable(format!("connection not ready: {e}")))?;
                attempt(grpc).await
            };
            match tokio::time::timeout(self.timeout, answer).await {
                Ok(Ok(answer)) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok((answer, &member.url));
                }
                Ok(Err(status)) if another_member_may_answer(&status) => {
                    failures.push(format!("{}: {}", member.url, describe(&status)));
                }
                Ok(Err(status)) => {
                    return Err(StoreError::Unavailable(format!(
                        "etcd at {} refused the request: {}",
                        member.url,
                        describe(&status)
                    )))
                }
                Err(_) => failures.push(format!(
                    "{}: no answer within {:?}",
                    member.url, self.timeout
                )),
            }
        }
        Err(StoreError::Unavailable(format!(
            "no etcd endpoint answered ({})",
            failures.join("; ")
        )))
    }
}

/// Whether `status` is about the member rather than the request: the member is down,
/// unreachable, stopping, or cut off from its leader. Anything else (a compacted revision, a
/// transaction with too many operations) every member would answer alike.
fn another_member_may_answer(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
            | Code::Internal
    )
}

/// The status and the error at the root of it: tonic's message alone says "tcp connect error",
/// not why, and the errors in between mostly repeat it.
pub(super) fn describe(status: &Status) -> String {
    let mut description = format!("{:?}: {}", status.code(), status.message());
    let mut root = std::error::Error::source(status);
    while let Some(cause) = root.and_then(|e| e.source()) {
        root = Some(cause);
    }
    if let Some(root) = root.map(|e| e.to_string()) {
        if !description.ends_with(&root) {
            description = format!("{description}: {root}");
        }
    }
    description
}
