//! `limit-req`: limits the rate of requests per key with nginx's leaky bucket (`limit_req`).
//! A request beyond `rate` waits its turn while the requests ahead of it fit in `burst` (or,
//! with `nodelay`, goes on at once), and is refused beyond that.
//!
//! With `policy: redis` or `redis-cluster`, the bucket is kept in Redis for every node at
//! once: one script per request, on Redis's clock, answers how long the request waits.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use pylon_model::FieldError;
use pylon_plugin::{Phases, Plugin, Reply, RequestCtx, Step};
use pylon_redis::Script;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{parse, refusal, schema_of};
use crate::descriptor::{BuildEnv, Descriptor};
use crate::limits::key::{KeyType, LimitKey};
use crate::limits::redis::{store, RedisCounts};
use crate::limits::state::KeyedState;
use crate::limits::{default_rejected_code, hold, Policy, MIN_DELAY};

pub(crate) const DESCRIPTOR: Descriptor = Descriptor {
    name: "limit-req",
    priority: 1001,
    schema: schema_of::<LimitReqConfig>,
    build,
    credential: None,
    metadata: None,
};

/// The longest a bucket may take to drain one request (`1 / rate`) or a full burst
/// (`burst / rate`). Far beyond any real limit, it keeps the instants computed from them in
/// range.
const MAX_DRAIN: Duration = Duration::from_secs(365 * 24 * 3600);

/// APISIX's Redis settings (`redis_host`, ..., `sync_interval`) are read by
/// [`crate::limits::redis::store`] before this is parsed.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("patternProperties" = {"^redis_": {}, "^sync_interval$": {}}))]
struct LimitReqConfig {
    /// Requests per second each key may make, fractions allowed (`0.5`: one every two
    /// seconds).
    #[schemars(extend("exclusiveMinimum" = 0))]
    rate: f64,
    /// Requests beyond the rate a key may have waiting (or, with `nodelay`, let through)
    /// before more are refused.
    #[schemars(range(min = 0))]
    burst: f64,
    #[serde(default)]
    key_type: KeyType,
    /// What requests are counted by (see `key_type`).
    key: String,
    /// The status of a refusal.
    #[serde(default = "default_rejected_code")]
    #[schemars(range(min = 200, max = 599))]
    rejected_code: u16,
    /// The refusal's body, as `{"error_msg": ...}`; unset: an empty body.
    #[schemars(length(min = 1))]
    rejected_msg: Option<String>,
    /// Let requests within the burst through at once instead of at the rate.
    #[serde(default)]
    nodelay: bool,
    /// Whether requests go on (`true`) or are refused with a 500 when Redis fails.
    #[serde(default)]
    #[allow(dead_code)] // Read by `limits::redis::store`, with the Redis fields.
    allow_degradation: bool,
    /// Where the buckets are: `local` (this node), `redis` or `redis-cluster`.
    #[serde(default)]
    #[allow(dead_code)] // Read by `limits::redis::store`, with the Redis fields.
    policy: Policy,
}

fn build(config: &Value, env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    let (own, store) = store(config)?;
    let mut limiter = LimitReq::new(parse(&own)?)?;
    limiter.redis = store.redis_counts(DESCRIPTOR.name, env.owner, &own);
    Ok(Arc::new(limiter))
}

struct LimitReq {
    key: LimitKey,
    /// `1 / rate`: how long the bucket takes to drain one request.
    interval: Duration,
    burst: f64,
    nodelay: bool,
    rejected: Reply,
    /// Each key's bucket, as the instant from which a request finds it empty (the
    /// "theoretical arrival time" of GCRA, the same algorithm told another way). A request
    /// at `now` finds `(tat − now) / interval` requests ahead of it: nginx's `excess`, which
    /// it keeps with the time it was last updated instead. Stored this way, an entry says
    /// by itself when it has drained, and a drained one is the same as none.
    buckets: KeyedState<Instant>,
    /// With a Redis policy: the buckets kept there instead.
    redis: Option<RedisCounts>,
}

/// A key's bucket in Redis, as the local one: the theoretical arrival time in Redis's own
/// microseconds, expiring when it has drained. `ARGV`: the interval and the burst's
/// tolerance (`burst × interval`), in microseconds. Answers the request's wait, or -1 when
/// it is refused (and not counted).
static BUCKET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
local wait = tat - now
if wait > tolerance then return -1 end
tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000))
return wait
",
    )
});

impl LimitReq {
    fn new(config: LimitReqConfig) -> Result<LimitReq, FieldError> {
        // A rate of 0 or less makes an infinite or negative interval, which does not convert.
        let interval = Duration::try_from_secs_f64(1.0 / config.rate)
            .ok()
            .filter(|interval| !interval.is_zero() && *interval <= MAX_DRAIN)
            .ok_or_else(|| {
                FieldError::new("rate", "must be from one request a year to 1e9 a second")
            })?;
        let drain = interval.as_secs_f64() * config.burst;
        if !(0.0..=MAX_DRAIN.as_secs_f64()).contains(&drain) {
            return Err(FieldError::new(
                "burst",
                "must be 0 or more, and drain within a year at `rate`",
            ));
        }
        Ok(LimitReq {
            key: LimitKey::new(config.key_type, &config.key)?,
            interval,
            burst: config.burst,
            nodelay: config.nodelay,
            rejected: refusal(config.rejected_code, config.rejected_msg.as_deref())?,
            buckets: KeyedState::new(|tat, now| *tat <= now),
            redis: None,
        })
    }

    /// Counts a request for `key` arriving at `now`: how long it must wait for its turn, or
    /// `None` when the requests ahead of it exceed the burst (it is refused, and not counted).
    fn admit(&self, key: &str, now: Instant) -> Option<Duration> {
        self.buckets.with(
            key,
            || now,
            |tat| {
                let wait = tat.saturating_duration_since(now);
                // In whole nanoseconds: a burst of requests at one instant finds exactly 0, 1,
                // 2 ... requests ahead, whatever the rate's rounding.
                let excess = wait.as_nanos() as f64 / self.interval.as_nanos() as f64;
                if excess > self.burst {
                    return None;
                }
                *tat = (*tat).max(now) + self.interval;
                Some(wait)
            },
        )
    }
}

impl Plugin for LimitReq {
    fn name(&self) -> &'static str {
        DESCRIPTOR.name
    }

    fn phases(&self) -> Phases {
        Phases::ACCESS
    }

    fn access<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Step<'a> {
        if let Some(redis) = &self.redis {
            let key = redis.key(&self.key.of(ctx));
            let interval = self.interval.as_micros().max(1) as i64;
            let args = [interval, (interval as f64 * self.burst).round() as i64];
            // The longest a request waits for its turn: the burst ahead of it.
            let longest_hold = self.interval.mul_f64(self.burst);
            return Step::Call(redis.shared.call(longest_hold, async move {
                let wait: i64 = redis.shared.redis.run_script(&BUCKET, &key, &args).await?;
                let Ok(wait) = u64::try_from(wait) else {
                    return Ok(Some(self.rejected.clone()));
                };
                let wait = Duration::from_micros(wait);
                if !self.nodelay && wait >= MIN_DELAY {
                    tokio::time::sleep(wait).await;
                }
                Ok(None)
            }));
        }
        match self.admit(&self.key.of(ctx), Instant::now()) {
            None => Step::Reply(self.rejected.clone()),
            Some(wait) if !self.nodelay => hold(wait),
            Some(_) => Step::Continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use pylon_plugin::{ChainBuilder, Entry, Meta, RequestPhase};
    use serde_json::json;

    use super::*;
    use crate::testing::{build as build_plugin, refusal, replied, TestRequest};

    fn limiter(config: Value) -> LimitReq {
        LimitReq::new(parse(&config).unwrap()).unwrap()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_bucket_drains_at_the_rate_and_holds_the_burst() {
        // Two requests a second: the bucket drains one every 500 ms.
        let lim = limiter(json!({"rate": 2, "burst": 2, "key": "k", "key_type": "constant"}));
        let t0 = Instant::now();
        // At one instant: the first finds the bucket empty, the next two wait their turns,
        // the fourth would have three ahead of it, more than the burst.
        assert_eq!(lim.admit("k", t0), Some(ms(0)));
        assert_eq!(lim.admit("k", t0), Some(ms(500)));
        assert_eq!(lim.admit("k", t0), Some(ms(1000)));
        assert_eq!(lim.admit("k", t0), None);
        // A refusal is not counted; 250 ms later half a request has drained: still full.
        assert_eq!(lim.admit("k", t0 + ms(250)), None);
        // After 500 ms one has: the newcomer waits behind the two left.
        assert_eq!(lim.admit("k", t0 + ms(500)), Some(ms(1000)));
        // Other keys have buckets of their own.
        assert_eq!(lim.admit("other", t0), Some(ms(0)));
        // Once drained, the bucket is as new: nothing ahead.
        assert_eq!(lim.admit("k", t0 + ms(5000)), Some(ms(0)));
        assert_eq!(lim.admit("k", t0 + ms(5100)), Some(ms(400)));
    }

    #[test]
    fn a_burst_of_n_lets_n_plus_one_through_at_once_at_any_rate() {
        for rate in [0.001, 0.3, 3.0, 7.0, 1000.0] {
            let lim =
                limiter(json!({"rate": rate, "burst": 5, "key": "k", "key_type": "constant"}));
            let t0 = Instant::now();
            let admitted = (0..20).filter(|_| lim.admit("k", t0).is_some()).count();
            assert_eq!(admitted, 6, "rate {rate}");
        }
    }

    #[test]
    fn with_burst_0_requests_are_spaced_by_the_rate() {
        let lim = limiter(json!({"rate": 10, "burst": 0, "key": "k", "key_type": "constant"}));
        let t0 = Instant::now();
        assert_eq!(lim.admit("k", t0), Some(ms(0)));
        assert_eq!(lim.admit("k", t0 + ms(99)), None);
        assert_eq!(lim.admit("k", t0 + ms(100)), Some(ms(0)));
        assert_eq!(lim.admit("k", t0 + ms(250)), Some(ms(0)));
    }

    fn access(plugin: &Arc<dyn Plugin>, request: &TestRequest) -> &'static str {
        let mut ctx = RequestCtx::new(request, "r1", None);
        let step = match plugin.access(&mut ctx) {
            Step::Continue => "continue",
            Step::Reply(_) => "refuse",
            Step::Call(_) => "delay",
        };
        step
    }

    #[test]
    fn requests_within_the_burst_are_delayed_unless_nodelay() {
        let request = TestRequest::get("/");
        let config = json!({"rate": 0.001, "burst": 1, "key": "remote_addr"});
        let delaying = build_plugin(&DESCRIPTOR, config).unwrap();
        let steps: Vec<_> = (0..3).map(|_| access(&delaying, &request)).collect();
        assert_eq!(steps, ["continue", "delay", "refuse"]);

        let config = json!({"rate": 0.001, "burst": 1, "key": "remote_addr", "nodelay": true});
        let nodelay = build_plugin(&DESCRIPTOR, config).unwrap();
        let steps: Vec<_> = (0..3).map(|_| access(&nodelay, &request)).collect();
        assert_eq!(steps, ["continue", "continue", "refuse"]);
        // A wait under a millisecond is not worth holding a request for (as APISIX).
        let config = json!({"rate": 10000, "burst": 1, "key": "remote_addr"});
        let fast = build_plugin(&DESCRIPTOR, config).unwrap();
        let steps: Vec<_> = (0..2).map(|_| access(&fast, &request)).collect();
        assert_eq!(steps, ["continue", "continue"]);
        // Counted by client address: another client has its own bucket.
        assert_eq!(
            access(&nodelay, &TestRequest::get("/").from("192.0.2.8")),
            "continue"
        );
    }

    #[test]
    fn a_refusal_has_the_configured_status_and_message() {
        let config = json!({"rate": 0.001, "burst": 0, "key": "k", "key_type": "constant",
            "rejected_code": 429, "rejected_msg": "slow down"});
        let plugin = build_plugin(&DESCRIPTOR, config).unwrap();
        let request = TestRequest::get("/");
        let mut ctx = RequestCtx::new(&request, "r1", None);
        assert!(replied(plugin.access(&mut ctx)).is_none());
        let reply = replied(plugin.access(&mut ctx)).unwrap();
        assert_eq!(reply.status, 429);
        assert_eq!(&reply.body[..], br#"{"error_msg":"slow down"}"#);

        let bare = json!({"rate": 0.001, "burst": 0, "key": "k", "key_type": "constant"});
        let plugin = build_plugin(&DESCRIPTOR, bare).unwrap();
        assert!(replied(plugin.access(&mut ctx)).is_none());
        let reply = replied(plugin.access(&mut ctx)).unwrap();
        assert_eq!((reply.status, reply.body.len()), (503, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_delayed_request_is_held_its_wait_then_goes_on() {
        let config = json!({"rate": 0.5, "burst": 1, "key": "k", "key_type": "constant"});
        let plugin = build_plugin(&DESCRIPTOR, config).unwrap();
        let mut chain = ChainBuilder::new();
        chain.add(Entry::new(plugin, DESCRIPTOR.priority, Meta::default()));
        let chain = chain.build();
        let request = TestRequest::get("/");
        let started = tokio::time::Instant::now();
        let mut ctx = RequestCtx::new(&request, "r1", None);
        assert_eq!(chain.run(RequestPhase::Access, &mut ctx, None).await, None);
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "the first finds the bucket empty"
        );
        // The second waits its turn, two seconds less the (real) time since the first.
        let mut ctx = RequestCtx::new(&request, "r1", None);
        assert_eq!(chain.run(RequestPhase::Access, &mut ctx, None).await, None);
        let waited = started.elapsed();
        assert!(waited > ms(1900) && waited <= ms(2000), "{waited:?}");
    }

    #[test]
    fn counting_is_exact_across_threads() {
        let config = json!({"rate": 0.001, "burst": 999, "key": "k", "key_type": "constant",
            "nodelay": true});
        let plugin = build_plugin(&DESCRIPTOR, config).unwrap();
        let admitted = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let request = TestRequest::get("/");
                    for _ in 0..500 {
                        if access(&plugin, &request) == "continue" {
                            admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.into_inner(), 1000);
    }

    #[test]
    fn bad_configurations_are_refused_with_their_field() {
        let base = json!({"rate": 1, "burst": 0, "key": "remote_addr"});
        let with = |field: &str, value: Value| {
            let mut config = base.clone();
            config[field] = value;
            config
        };
        for (config, field) in [
            (json!({"burst": 0, "key": "remote_addr"}), "rate"),
            (json!({"rate": 1, "key": "remote_addr"}), "burst"),
            (json!({"rate": 1, "burst": 0}), "key"),
        ] {
            let error = refusal(&DESCRIPTOR, config);
            assert_eq!(error.to_string(), format!("missing field `{field}`"));
        }
        let cases = [
            (with("rate", json!(0)), "rate"),
            (with("rate", json!(-1)), "rate"),
            (with("rate", json!(1e-9)), "rate"),
            (with("rate", json!(1e12)), "rate"),
            (with("rate", json!("1")), "rate"),
            (with("burst", json!(-1)), "burst"),
            (with("burst", json!(1e9)), "burst"),
            (with("key", json!("")), "key"),
            (with("key", json!("http-x-user")), "key"),
            (with("key_type", json!("header")), "key_type"),
            (with("rejected_code", json!(199)), "rejected_code"),
            (with("rejected_code", json!(600)), "rejected_code"),
            (with("rejected_msg", json!("")), "rejected_msg"),
            (with("nodelay", json!("yes")), "nodelay"),
            (with("policy", json!("memcached")), "policy"),
            (with("surplus", json!(1)), "surplus"),
        ];
        for (config, field) in cases {
            assert_eq!(refusal(&DESCRIPTOR, config.clone()).path, field, "{config}");
        }
    }

    #[test]
    fn what_apisix_accepts_is_accepted() {
        for config in [
            json!({"rate": 1, "burst": 2, "rejected_code": 503, "key_type": "var",
                "key": "remote_addr"}),
            json!({"rate": 0.1, "burst": 0, "key": "consumer_name", "nodelay": true}),
            json!({"rate": 3, "burst": 1.5, "key_type": "var_combination",
                "key": "$consumer_name $remote_addr", "rejected_msg": "Too many requests",
                "allow_degradation": true, "policy": "local"}),
            json!({"rate": 10, "burst": 0, "key_type": "constant", "key": "all",
                "_meta": {"priority": 1}}),
        ] {
            build_plugin(&DESCRIPTOR, config.clone()).unwrap_or_else(|e| panic!("{config}: {e}"));
        }
    }
}
