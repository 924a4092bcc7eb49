//! A plugin's wait on something outside the gateway, bounded in time, with a declared policy
//! for when it fails.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::reply::Reply;

/// Calls that failed or timed out since the process started, by the policy applied: one
/// process-wide count (a relaxed atomic add per failure, never per request), reported by the
/// node's status.
static FAILED_OPEN: AtomicU64 = AtomicU64::new(0);
static FAILED_CLOSED: AtomicU64 = AtomicU64::new(0);

/// How many plugin calls failed, by what was done about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallFailures {
    /// Let through (fail open).
    pub opened: u64,
    /// Refused (fail closed).
    pub closed: u64,
}

pub fn call_failures() -> CallFailures {
    CallFailures {
        opened: FAILED_OPEN.load(Ordering::Relaxed),
        closed: FAILED_CLOSED.load(Ordering::Relaxed),
    }
}

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
                FAILED_OPEN.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    plugin,
                    "call failed ({error}); letting the request through (fail open)"
                );
                None
            }
            FailurePolicy::Closed { status } => {
                FAILED_CLOSED.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    plugin,
                    "call failed ({error}); refusing the request (fail closed)"
                );
                Some(Reply::status(status))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failing(policy: FailurePolicy) -> Call<'static> {
        Call {
            work: Box::pin(async { Err(CallError::Failed("refused".into())) }),
            timeout: Duration::from_secs(1),
            policy,
        }
    }

    #[tokio::test]
    async fn a_failed_call_follows_its_policy_and_is_counted() {
        let before = call_failures();
        assert_eq!(failing(FailurePolicy::Open).finish("p").await, None);
        let refused = failing(FailurePolicy::Closed { status: 503 })
            .finish("p")
            .await;
        assert_eq!(refused.map(|r| r.status), Some(503));
        let after = call_failures();
        // Other tests may fail calls at the same time: at least these two were counted.
        assert!(after.opened > before.opened && after.closed > before.closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_hangs_times_out() {
        let call = Call {
            work: Box::pin(std::future::pending()),
            timeout: Duration::from_millis(500),
            policy: FailurePolicy::Closed { status: 403 },
        };
        assert_eq!(call.finish("p").await.map(|r| r.status), Some(403));
    }
}
