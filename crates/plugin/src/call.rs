//! A plugin's wait on something outside the gateway, bounded in time, with a declared policy
//! for when it fails.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::reply::Reply;

/// What to do when a call fails or times out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Let the request through, as if the plugin had said nothing.
    Open,
    /// Refuse the request with this status.
    Closed { status: u16 },
}

/// Why a call did not produce an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("timed out")]
    TimedOut,
    #[error("{0}")]
    Failed(String),
}

/// A pending call: the work, its deadline and its failure policy. `Ok(None)` lets the request
/// go on; `Ok(Some(reply))` answers it.
pub struct Call<'a> {
    pub work: Pin<Box<dyn Future<Output = Result<Option<Reply>, CallError>> + 'a>>,
    pub timeout: Duration,
    pub policy: FailurePolicy,
}

impl Call<'_> {
    /// Runs the call to its end: what the request should do next, after the policy has had
    /// its say on a failure. A failure is logged with the plugin's name.
    pub(crate) async fn finish(self, plugin: &str) -> Option<Reply> {
        let error = match tokio::time::timeout(self.timeout, self.work).await {
            Ok(Ok(decision)) => return decision,
            Ok(Err(e)) => e,
            Err(_) => CallError::TimedOut,
        };
        match self.policy {
            FailurePolicy::Open => {
                tracing::warn!(
                    plugin,
                    "call failed ({error}); letting the request through (fail open)"
                );
                None
            }
            FailurePolicy::Closed { status } => {
                tracing::warn!(
                    plugin,
                    "call failed ({error}); refusing the request (fail closed)"
                );
                Some(Reply::status(status))
            }
        }
    }
}
