//! `api-breaker`: stops sending a URI's requests upstream for a while when its upstream keeps
//! failing, as APISIX's does. Every `unhealthy.failures`-th unhealthy answer (a status of
//! `unhealthy.http_statuses`, or the gateway's 502 or 504 when no node answered) opens the
//! breaker for 2, 4, 8 ... seconds as the failures go on, at most `max_breaker_sec`; meanwhile
//! the URI's requests get `break_response_code` at once. `healthy.successes` healthy answers
//! (none unhealthy between them) close it for good and forget the failures.
//!
//! Counts are kept by host and URI, as APISIX keys them, on this node and shared by its
//! workers; an open breaker is forgotten `max_breaker_sec` after it opened.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pylon_model::FieldError;
use pylon_plugin::{LogCtx, Phases, Plugin, Reply, RequestCtx, Step, Template};
use pylon_router::RequestView;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{parse, schema_of};
use crate::descriptor::{BuildEnv, Descriptor};
use crate::header_ops::{check_name, template};
use crate::limits::state::KeyedState;

pub(crate) const DESCRIPTOR: Descriptor = Descriptor {
    name: "api-breaker",
    priority: 1005,
    schema: schema_of::<ApiBreakerConfig>,
    build,
    credential: None,
    metadata: None,
};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ApiBreakerConfig {
    /// The status of the requests refused while the breaker is open.
    #[schemars(range(min = 200, max = 599))]
    break_response_code: u16,
    /// Their body; unset: an empty one.
    break_response_body: Option<String>,
    /// Their headers; values may hold `$var`s.
    break_response_headers: Option<Vec<HeaderConfig>>,
    /// The longest the breaker stays open, in seconds.
    #[serde(default = "default_max_breaker_sec")]
    #[schemars(range(min = 3))]
    max_breaker_sec: u64,
    #[serde(default)]
    unhealthy: UnhealthyConfig,
    #[serde(default)]
    healthy: HealthyConfig,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct HeaderConfig {
    key: String,
    value: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct UnhealthyConfig {
    /// The upstream statuses that count as failures (500 to 599).
    #[serde(default = "default_unhealthy_statuses")]
    #[schemars(length(min = 1))]
    http_statuses: Vec<u16>,
    /// Every this many failures, the breaker opens (for longer each time).
    #[serde(default = "default_three")]
    #[schemars(range(min = 1))]
    failures: u64,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct HealthyConfig {
    /// The upstream statuses that count as successes (200 to 499).
    #[serde(default = "default_healthy_statuses")]
    #[schemars(length(min = 1))]
    http_statuses: Vec<u16>,
    /// This many successes after failures close the breaker and forget them.
    #[serde(default = "default_three")]
    #[schemars(range(min = 1))]
    successes: u64,
}

impl Default for UnhealthyConfig {
    fn default() -> Self {
        UnhealthyConfig {
            http_statuses: default_unhealthy_statuses(),
            failures: default_three(),
        }
    }
}

impl Default for HealthyConfig {
    fn default() -> Self {
        HealthyConfig {
            http_statuses: default_healthy_statuses(),
            successes: default_three(),
        }
    }
}

fn default_max_breaker_sec() -> u64 {
    300
}

fn default_unhealthy_statuses() -> Vec<u16> {
    vec![500]
}

fn default_healthy_statuses() -> Vec<u16> {
    vec![200]
}

fn default_three() -> u64 {
    3
}

/// The longest `max_breaker_sec`, a day: far past any real use, it keeps the breaker's
/// instants in the clock's range.
const MAX_BREAKER_SEC: u64 = 24 * 3600;

fn build(config: &Value, _env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    Ok(Arc::new(ApiBreaker::new(parse(config)?)?))
}

impl ApiBreaker {
    fn new(config: ApiBreakerConfig) -> Result<ApiBreaker, FieldError> {
        if !(200..=599).contains(&config.break_response_code) {
            return Err(FieldError::new(
                "break_response_code",
                "must be from 200 to 599",
            ));
        }
        if !(3..=MAX_BREAKER_SEC).contains(&config.max_breaker_sec) {
            return Err(FieldError::new(
                "max_breaker_sec",
                format!("must be from 3 to {MAX_BREAKER_SEC}"),
            ));
        }
        let unhealthy = &config.unhealthy;
        statuses(
            "unhealthy.http_statuses",
            &unhealthy.http_statuses,
            500..=599,
        )?;
        if unhealthy.failures == 0 {
            return Err(FieldError::new("unhealthy.failures", "must be at least 1"));
        }
        let healthy = &config.healthy;
        statuses("healthy.http_statuses", &healthy.http_statuses, 200..=499)?;
        if healthy.successes == 0 {
            return Err(FieldError::new("healthy.successes", "must be at least 1"));
        }
        let max_open = Duration::from_secs(config.max_breaker_sec);
        let mut headers = Vec::new();
        for (i, header) in config.break_response_headers.iter().flatten().enumerate() {
            check_name(&format!("break_response_headers[{i}].key"), &header.key)?;
            let value = template(&format!("break_response_headers[{i}].value"), &header.value)?;
            headers.push((header.key.clone(), value));
        }
        Ok(ApiBreaker {
            code: config.break_response_code,
            body: Bytes::from(config.break_response_body.unwrap_or_default()),
            headers,
            max_open,
            unhealthy_statuses: config.unhealthy.http_statuses,
            failures_to_open: config.unhealthy.failures,
            healthy_statuses: config.healthy.http_statuses,
            successes_to_close: config.healthy.successes,
            uris: KeyedState::new(move |breaker: &Breaker, now| breaker.is_stale(max_open, now)),
        })
    }
}

/// Checks a list of statuses: within `range`, none twice.
fn statuses(
    path: &str,
    list: &[u16],
    range: std::ops::RangeInclusive<u16>,
) -> Result<(), FieldError> {
    if list.is_empty() {
        return Err(FieldError::new(path, "must not be empty"));
    }
    for (i, status) in list.iter().enumerate() {
        if !range.contains(status) {
            let (low, high) = (range.start(), range.end());
            return Err(FieldError::new(
                format!("{path}[{i}]"),
                format!("must be from {low} to {high}"),
            ));
        }
        if list[..i].contains(status) {
            return Err(FieldError::new(format!("{path}[{i}]"), "appears twice"));
        }
    }
    Ok(())
}

struct ApiBreaker {
    code: u16,
    body: Bytes,
    headers: Vec<(String, Template)>,
    /// `max_breaker_sec`.
    max_open: Duration,
    unhealthy_statuses: Vec<u16>,
    failures_to_open: u64,
    healthy_statuses: Vec<u16>,
    successes_to_close: u64,
    /// By host and URI.
    uris: KeyedState<Breaker>,
}

/// One URI's breaker.
struct Breaker {
    /// Unhealthy answers since the breaker last closed.
    failures: u64,
    /// Healthy answers since the last unhealthy one.
    successes: u64,
    /// When the failures last reached a multiple of `unhealthy.failures`.
    opened: Option<Instant>,
    /// The last unhealthy answer.
    last_failure: Instant,
}

impl Breaker {
    /// A breaker that is closed, or has not seen a failure for `max_open`
    /// (`max_breaker_sec`), holds nothing worth keeping.
    fn is_stale(&self, max_open: Duration, now: Instant) -> bool {
        self.failures == 0 || now.saturating_duration_since(self.last_failure) > max_open
    }
}

impl ApiBreaker {
    /// Whether `key`'s breaker is open at `now`: for `2^n` seconds from its last opening,
    /// `n` the times it has opened since it last closed, at most `max_breaker_sec`.
    fn is_open(&self, key: &str, now: Instant) -> bool {
        self.uris
            .with_existing(key, |breaker| {
                let Some(opened) = breaker.opened else {
                    return false;
                };
                let times = breaker.failures.div_ceil(self.failures_to_open).max(1);
                let open_for = match 1u64.checked_shl(times.min(63) as u32) {
                    Some(secs) => Duration::from_secs(secs).min(self.max_open),
                    None => self.max_open,
                };
                now <= opened + open_for
            })
            .unwrap_or(false)
    }

    /// Counts an answer of `key`'s upstream with `status` at `now`.
    fn record(&self, key: &str, status: u16, now: Instant) {
        if self.unhealthy_statuses.contains(&status) {
            let new = || Breaker {
                failures: 0,
                successes: 0,
                opened: None,
                last_failure: now,
            };
            self.uris.with(key, new, |breaker| {
                breaker.failures += 1;
                breaker.successes = 0;
                breaker.last_failure = now;
                if breaker.failures % self.failures_to_open == 0 {
                    breaker.opened = Some(now);
                }
            });
        } else if self.healthy_statuses.contains(&status) {
            self.uris.with_existing(key, |breaker| {
                if breaker.failures == 0 {
                    return;
                }
                breaker.successes += 1;
                if breaker.successes >= self.successes_to_close {
                    breaker.failures = 0;
                    breaker.successes = 0;
                    breaker.opened = None;
                }
            });
        }
    }
}

/// What a request's breaker is kept by: its host and URI, as APISIX's.
fn key(request: &RequestCtx<'_>) -> String {
    let host = request.var("host").unwrap_or_default();
    format!("{host}{}", request.path())
}

impl Plugin for ApiBreaker {
    fn name(&self) -> &'static str {
        DESCRIPTOR.name
    }

    fn phases(&self) -> Phases {
        Phases::ACCESS | Phases::LOG
    }

    fn access<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Step<'a> {
        if !self.is_open(&key(ctx), Instant::now()) {
            return Step::Continue;
        }
        let headers = self
            .headers
            .iter()
            .map(|(name, value)| (name.clone(), value.render(&*ctx).into_owned()))
            .collect();
        Step::Reply(Reply {
            status: self.code,
            headers,
            body: self.body.clone(),
        })
    }

    fn log(&self, ctx: &LogCtx<'_, '_>) {
        if let Some(status) = ctx.upstream_status {
            self.record(&key(ctx.request), status, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::{build as build_plugin, refusal, replied, TestRequest};

    fn breaker(config: Value) -> ApiBreaker {
        ApiBreaker::new(parse(&config).unwrap()).unwrap()
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn every_nth_failure_opens_the_breaker_for_longer_up_to_the_maximum() {
        let b = breaker(json!({"break_response_code": 502, "max_breaker_sec": 5,
            "unhealthy": {"http_statuses": [500, 503], "failures": 2}}));
        let t0 = Instant::now();
        b.record("u", 500, t0);
        assert!(!b.is_open("u", t0), "one failure of two");
        b.record("u", 503, t0);
        // Opened for 2^1 seconds.
        assert!(b.is_open("u", t0 + secs(2)));
        assert!(!b.is_open("u", t0 + secs(3)));
        assert!(!b.is_open("other", t0), "each URI has its own breaker");
        // Two more failures: 2^2 seconds; two more: 2^3, past the maximum of 5.
        b.record("u", 500, t0 + secs(3));
        b.record("u", 500, t0 + secs(3));
        assert!(b.is_open("u", t0 + secs(7)) && !b.is_open("u", t0 + secs(8)));
        b.record("u", 500, t0 + secs(8));
        b.record("u", 500, t0 + secs(8));
        assert!(b.is_open("u", t0 + secs(13)) && !b.is_open("u", t0 + secs(14)));
        // Other statuses count for nothing.
        b.record("u", 404, t0 + secs(14));
        b.record("u", 502, t0 + secs(14));
        assert!(!b.is_open("u", t0 + secs(14)));
    }

    #[test]
    fn successes_in_a_row_close_the_breaker_and_forget_the_failures() {
        let b = breaker(json!({"break_response_code": 502,
            "unhealthy": {"failures": 2}, "healthy": {"http_statuses": [200, 204], "successes": 2}}));
        let t0 = Instant::now();
        for _ in 0..4 {
            b.record("u", 500, t0);
        }
        assert!(b.is_open("u", t0));
        // A failure between them starts the successes over.
        b.record("u", 200, t0);
        b.record("u", 500, t0);
        b.record("u", 204, t0);
        assert!(b.is_open("u", t0), "one success since the last failure");
        b.record("u", 200, t0);
        assert!(!b.is_open("u", t0), "closed");
        // Forgotten: the next opening is again after two failures, for 2 seconds.
        b.record("u", 500, t0 + secs(1));
        assert!(!b.is_open("u", t0 + secs(1)));
        b.record("u", 500, t0 + secs(1));
        assert!(b.is_open("u", t0 + secs(3)) && !b.is_open("u", t0 + secs(4)));
    }

    #[test]
    fn an_open_breaker_answers_with_its_configured_response() {
        let plugin = build_plugin(
            &DESCRIPTOR,
            json!({"break_response_code": 599, "break_response_body": "breaker open",
                "break_response_headers": [{"key": "X-Breaker", "value": "$uri"}],
                "unhealthy": {"failures": 1}}),
        )
        .unwrap();
        let request = TestRequest::get("/orders");
        let mut ctx = RequestCtx::new(&request, "r1", None);
        assert!(
            replied(plugin.access(&mut ctx)).is_none(),
            "closed at first"
        );
        let log = LogCtx {
            request: &ctx,
            status: 500,
            upstream_status: Some(500),
            upstream_addr: None,
            bytes_sent: 0,
            latency: Duration::ZERO,
            metrics: Default::default(),
        };
        plugin.log(&log);
        let reply = replied(plugin.access(&mut ctx)).expect("open");
        assert_eq!(reply.status, 599);
        assert_eq!(reply.body, "breaker open");
        assert_eq!(
            reply.headers,
            [("X-Breaker".to_owned(), "/orders".to_owned())]
        );
    }

    #[test]
    fn bad_configurations_are_refused_with_their_field() {
        let cases = [
            (json!({}), ""),
            (json!({"break_response_code": 600}), "break_response_code"),
            (
                json!({"break_response_code": 502, "max_breaker_sec": 2}),
                "max_breaker_sec",
            ),
            (
                json!({"break_response_code": 502, "unhealthy": {"http_statuses": [404]}}),
                "unhealthy.http_statuses[0]",
            ),
            (
                json!({"break_response_code": 502, "unhealthy": {"http_statuses": [500, 500]}}),
                "unhealthy.http_statuses[1]",
            ),
            (
                json!({"break_response_code": 502, "unhealthy": {"http_statuses": []}}),
                "unhealthy.http_statuses",
            ),
            (
                json!({"break_response_code": 502, "unhealthy": {"failures": 0}}),
                "unhealthy.failures",
            ),
            (
                json!({"break_response_code": 502, "healthy": {"http_statuses": [500]}}),
                "healthy.http_statuses[0]",
            ),
            (
                json!({"break_response_code": 502, "healthy": {"successes": 0}}),
                "healthy.successes",
            ),
            (
                json!({"break_response_code": 502, "break_response_headers": [{"key": "a b", "value": "x"}]}),
                "break_response_headers[0].key",
            ),
        ];
        for (config, field) in cases {
            assert_eq!(refusal(&DESCRIPTOR, config.clone()).path, field, "{config}");
        }
        let apisix = json!({"break_response_code": 502, "max_breaker_sec": 300,
            "unhealthy": {"http_statuses": [500, 503], "failures": 3},
            "healthy": {"http_statuses": [200], "successes": 3}});
        assert!(build_plugin(&DESCRIPTOR, apisix).is_ok());
    }
}
