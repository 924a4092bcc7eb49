//! An upstream's outlier detection (`outlier_detection`), a Pylon extension with Envoy's field
//! names and, but for one, its defaults.
//!
//! Outlier detection judges nodes by the answers of real traffic, as passive health checks
//! do, but takes a failing node out for a while instead of until an active probe brings it
//! back: a node is ejected after `consecutive_5xx` 5xx answers in a row, or
//! `consecutive_gateway_failure` gateway failures (502, 503, 504, a failed connection or a
//! timeout) in a row, for `base_ejection_time` times the number of times it was ejected (at
//! most `max_ejection_time`); and never while `max_ejection_percent` of the upstream's nodes
//! are out already.
//!
//! Unlike Envoy, where `enforcing_consecutive_gateway_failure` defaults to 0 (the detector
//! counts but never ejects), it defaults to 100 here: Envoy keeps 0 for configurations written
//! before the detector existed, and Pylon has none.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::FieldError;
use crate::validate::at_most_a_year;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
/// When a node is ejected, for how long, and how many may be out at once.
pub struct OutlierDetection {
    /// 5xx answers (or failed attempts) in a row that eject a node.
    #[schemars(range(min = 1, max = 65535))]
    pub consecutive_5xx: u32,
    /// The chance, in percent, that a node is ejected when `consecutive_5xx` says so: 0 counts
    /// without ejecting.
    #[schemars(range(max = 100))]
    pub enforcing_consecutive_5xx: u32,
    /// Gateway failures in a row (502, 503, 504, a failed connection, a timeout) that eject a
    /// node.
    #[schemars(range(min = 1, max = 65535))]
    pub consecutive_gateway_failure: u32,
    /// The chance, in percent, that a node is ejected when `consecutive_gateway_failure` says
    /// so.
    #[schemars(range(max = 100))]
    pub enforcing_consecutive_gateway_failure: u32,
    /// Seconds a node must stay in service for its ejection count to go down by one.
    #[schemars(extend("minimum" = MIN_SECONDS, "maximum" = crate::upstream::MAX_SECONDS))]
    pub interval: f64,
    /// Seconds of the first ejection; each further one lasts this much more.
    #[schemars(extend("minimum" = MIN_SECONDS, "maximum" = crate::upstream::MAX_SECONDS))]
    pub base_ejection_time: f64,
    /// Seconds an ejection lasts at most; absent: 300, or `base_ejection_time` if longer.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("minimum" = MIN_SECONDS, "maximum" = crate::upstream::MAX_SECONDS))]
    pub max_ejection_time: Option<f64>,
    /// The most of the upstream's nodes, in percent, that may be ejected at once (rounded
    /// down); one node may always be ejected unless this is 0.
    #[schemars(range(max = 100))]
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_5xx: 5,
            enforcing_consecutive_5xx: 100,
            consecutive_gateway_failure: 5,
            enforcing_consecutive_gateway_failure: 100,
            interval: 10.0,
            base_ejection_time: 30.0,
            max_ejection_time: None,
            max_ejection_percent: 10,
        }
    }
}

/// The shortest duration, in seconds: ejections are timed to the millisecond.
const MIN_SECONDS: f64 = 0.001;

/// `max_ejection_time` when absent, unless `base_ejection_time` is longer.
const DEFAULT_MAX_EJECTION_TIME: f64 = 300.0;

impl OutlierDetection {
    /// The longest ejection, in seconds.
    pub fn max_ejection_time(&self) -> f64 {
        self.max_ejection_time
            .unwrap_or(DEFAULT_MAX_EJECTION_TIME.max(self.base_ejection_time))
    }

    /// Range checks; paths are relative to `outlier_detection`.
    pub(crate) fn validate(&self, errors: &mut Vec<FieldError>) {
        for (path, value) in [
            ("consecutive_5xx", self.consecutive_5xx),
            (
                "consecutive_gateway_failure",
                self.consecutive_gateway_failure,
            ),
        ] {
            if !(1..=u32::from(u16::MAX)).contains(&value) {
                errors.push(FieldError::new(path, "must be 1..65535"));
            }
        }
        for (path, value) in [
            ("enforcing_consecutive_5xx", self.enforcing_consecutive_5xx),
            (
                "enforcing_consecutive_gateway_failure",
                self.enforcing_consecutive_gateway_failure,
            ),
            ("max_ejection_percent", self.max_ejection_percent),
        ] {
            if value > 100 {
                errors.push(FieldError::new(path, "must be 0..100 (a percentage)"));
            }
        }
        duration("interval", self.interval, errors);
        let base = duration("base_ejection_time", self.base_ejection_time, errors);
        if let Some(max) = self.max_ejection_time {
            if duration("max_ejection_time", max, errors) && base && max < self.base_ejection_time {
                errors.push(FieldError::new(
                    "max_ejection_time",
                    format!(
                        "must be at least base_ejection_time ({} seconds)",
                        self.base_ejection_time
                    ),
                ));
            }
        }
    }
}

/// Checks a duration in seconds; returns whether it is valid.
fn duration(path: &str, seconds: f64, errors: &mut Vec<FieldError>) -> bool {
    let before = errors.len();
    if !(seconds >= MIN_SECONDS && seconds.is_finite()) {
        errors.push(FieldError::new(
            path,
            format!("must be a number of seconds >= {MIN_SECONDS}"),
        ));
    } else {
        at_most_a_year(path, seconds, errors);
    }
    errors.len() == before
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(json: &str) -> Vec<String> {
        let outlier: OutlierDetection = serde_json::from_str(json).unwrap();
        let mut errors = Vec::new();
        outlier.validate(&mut errors);
        errors.into_iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn defaults_are_envoys_but_for_gateway_failures_which_eject() {
        let outlier: OutlierDetection = serde_json::from_str("{}").unwrap();
        assert_eq!(outlier, OutlierDetection::default());
        assert_eq!(
            (outlier.consecutive_5xx, outlier.enforcing_consecutive_5xx),
            (5, 100)
        );
        assert_eq!(
            (
                outlier.consecutive_gateway_failure,
                outlier.enforcing_consecutive_gateway_failure
            ),
            (5, 100)
        );
        assert_eq!((outlier.interval, outlier.base_ejection_time), (10.0, 30.0));
        assert_eq!(outlier.max_ejection_percent, 10);
        assert_eq!(outlier.max_ejection_time(), 300.0);
        assert!(errors("{}").is_empty());
    }

    #[test]
    fn the_longest_ejection_is_never_shorter_than_the_first() {
        let long_base: OutlierDetection =
            serde_json::from_str(r#"{"base_ejection_time": 600}"#).unwrap();
        assert_eq!(long_base.max_ejection_time(), 600.0);
        assert!(errors(r#"{"base_ejection_time": 600}"#).is_empty());
        assert_eq!(
            errors(r#"{"base_ejection_time": 10, "max_ejection_time": 5}"#),
            ["max_ejection_time: must be at least base_ejection_time (10 seconds)"]
        );
    }

    #[test]
    fn fields_are_range_checked() {
        assert_eq!(
            errors(
                r#"{"consecutive_5xx": 0, "consecutive_gateway_failure": 65536,
                    "enforcing_consecutive_5xx": 101, "enforcing_consecutive_gateway_failure": 0,
                    "max_ejection_percent": 200, "interval": 0, "base_ejection_time": 0.0001,
                    "max_ejection_time": 40000000}"#
            ),
            [
                "consecutive_5xx: must be 1..65535",
                "consecutive_gateway_failure: must be 1..65535",
                "enforcing_consecutive_5xx: must be 0..100 (a percentage)",
                "max_ejection_percent: must be 0..100 (a percentage)",
                "interval: must be a number of seconds >= 0.001",
                "base_ejection_time: must be a number of seconds >= 0.001",
                "max_ejection_time: must be at most 31536000 seconds (a year)",
            ]
        );
    }

    #[test]
    fn unknown_fields_and_negative_counts_are_refused() {
        assert!(
            serde_json::from_str::<OutlierDetection>(r#"{"consecutive_5xx_errors": 1}"#).is_err()
        );
        assert!(serde_json::from_str::<OutlierDetection>(r#"{"consecutive_5xx": -1}"#).is_err());
        assert!(serde_json::from_str::<OutlierDetection>(r#"{"interval": "10s"}"#).is_err());
    }
}
