//! Passive checks: what proxied requests say about a node, as the workers report it.
//!
//! As in APISIX, a node that passive checks took out gets no traffic, so no request can
//! bring it back: active checks do (or, when every node is out, the traffic that then goes to
//! all of them).

use pylon_model::{CheckType, PassiveCheck};

use super::status::{Outcome, Thresholds};
use super::{Attempt, StatusClasses};

pub(crate) struct PassivePolicy {
    /// `tcp` checks judge connections only: any answer is a success.
    tcp_only: bool,
    statuses: StatusClasses,
    pub thresholds: Thresholds,
}

impl PassivePolicy {
    pub fn new(check: &PassiveCheck) -> Self {
        Self {
            tcp_only: check.kind == CheckType::Tcp,
            statuses: StatusClasses::new(
                &check.healthy.http_statuses,
                &check.unhealthy.http_statuses,
            ),
            thresholds: Thresholds::new(
                check.healthy.successes,
                check.unhealthy.http_failures,
                check.unhealthy.tcp_failures,
                check.unhealthy.timeouts,
            ),
        }
    }

    /// What `attempt` counts as; `None` for a status in neither list.
    pub fn outcome(&self, attempt: Attempt) -> Option<Outcome> {
        match attempt {
            Attempt::Answered(_) if self.tcp_only => Some(Outcome::Success),
            Attempt::Answered(status) => self.statuses.classify(status),
            Attempt::Failed => Some(Outcome::TcpFailure),
            Attempt::TimedOut => Some(Outcome::Timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_count_as_apisix_counts_them() {
        let http = PassivePolicy::new(&PassiveCheck::default());
        assert_eq!(http.outcome(Attempt::Answered(200)), Some(Outcome::Success));
        assert_eq!(
            http.outcome(Attempt::Answered(500)),
            Some(Outcome::HttpFailure)
        );
        assert_eq!(http.outcome(Attempt::Answered(404)), None);
        assert_eq!(http.outcome(Attempt::Failed), Some(Outcome::TcpFailure));
        assert_eq!(http.outcome(Attempt::TimedOut), Some(Outcome::Timeout));

        let tcp = PassivePolicy::new(&PassiveCheck {
            kind: CheckType::Tcp,
            ..PassiveCheck::default()
        });
        assert_eq!(tcp.outcome(Attempt::Answered(500)), Some(Outcome::Success));
    }
}
