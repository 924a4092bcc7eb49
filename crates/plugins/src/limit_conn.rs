//! `limit-conn`: limits the requests in flight per key, as lua-resty-limit-conn does. Past
//! `conn`, a request waits a little before it goes on, while it is within `burst`; past
//! `conn + burst` it is refused. A request counts from its `access` phase to its end,
//! however it ends.
//!
//! With `policy: redis` or `redis-cluster`, the counts are kept in Redis for every node at
//! once: a script counts a request in (one round trip, which the request waits for), and
//! another counts it out at its end (sent without the request waiting). A key's count
//! expires an hour after its last request came in, so that the places of a node that died
//! with requests in flight are given back.

use std::cell::RefCell;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use pylon_model::FieldError;
use pylon_plugin::{Phases, Plugin, Reply, RequestCtx, Step};
use pylon_redis::{Redis, Script};
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
    name: "limit-conn",
    priority: 1003,
    schema: schema_of::<LimitConnConfig>,
    build,
    credential: None,
    metadata: None,
};

/// APISIX's Redis settings (`redis_host`, ..., `sync_interval`) are read by
/// [`crate::limits::redis::store`] before this is parsed.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("patternProperties" = {"^redis_": {}, "^sync_interval$": {}}))]
struct LimitConnConfig {
    /// Requests each key may have in flight before more are delayed.
    #[schemars(range(min = 1))]
    conn: u32,
    /// Requests beyond `conn` that are delayed rather than refused.
    burst: u32,
    /// Seconds a request beyond `conn` waits for each `conn` requests ahead of it.
    #[schemars(extend("exclusiveMinimum" = 0))]
    default_conn_delay: f64,
    /// Keep the delay at `default_conn_delay`. APISIX otherwise moves it towards the
    /// requests' latency; Pylon always keeps it.
    #[serde(default)]
    #[allow(dead_code)] // Pylon's behaviour is always what `true` asks for.
    only_use_default_delay: bool,
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
    /// Whether requests go on (`true`) or are refused with a 500 when Redis fails.
    #[serde(default)]
    #[allow(dead_code)] // Read by `limits::redis::store`, with the Redis fields.
    allow_degradation: bool,
    /// Where the counts are: `local` (this node), `redis` or `redis-cluster`.
    #[serde(default)]
    #[allow(dead_code)] // Read by `limits::redis::store`, with the Redis fields.
    policy: Policy,
}

/// What a stream route's `limit-conn` counts connections by: a connection has no headers or
/// arguments, only its two addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamConnKey {
    RemoteAddr,
    ServerAddr,
}

/// The key of a stream route's `limit-conn` (whose fields its schema has checked), counted on
/// this node: `key` is `remote_addr` or `server_addr`, `policy` is `local`.
pub fn stream_conn_key(config: &Value) -> Result<StreamConnKey, FieldError> {
    if config
        .get("policy")
        .and_then(Value::as_str)
        .is_some_and(|policy| policy != "local")
    {
        return Err(FieldError::new(
            "plugins.limit-conn.policy",
            "a stream route counts on this node only (`local`)",
        ));
    }
    match config.get("key").and_then(Value::as_str) {
        Some("remote_addr") => Ok(StreamConnKey::RemoteAddr),
        Some("server_addr") => Ok(StreamConnKey::ServerAddr),
        other => Err(FieldError::new(
            "plugins.limit-conn.key",
            format!(
                "a stream route counts by `remote_addr` or `server_addr`, not `{}`",
                other.unwrap_or_default()
            ),
        )),
    }
}

fn build(config: &Value, env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    let (own, store) = store(config)?;
    let mut limiter = LimitConn::new(parse(&own)?)?;
    limiter.redis = store.redis_counts(DESCRIPTOR.name, env.owner, &own);
    Ok(Arc::new(limiter))
}

struct LimitConn {
    key: LimitKey,
    conn: u32,
    burst: u32,
    unit_delay: Duration,
    rejected: Reply,
    /// Each key's requests in flight. Shared with the requests' [`Admitted`]s, which may
    /// outlive this configuration.
    in_flight: Arc<KeyedState<u64>>,
    /// With a Redis policy: the counts kept there instead.
    redis: Option<RedisCounts>,
}

/// How long a key's count in Redis outlives its last request in, in milliseconds.
const REDIS_COUNT_TTL_MS: i64 = 3600 * 1000;

/// Counts a request in, when fewer than `ARGV[1]` are: answers the count with it, or -1.
static COUNT_IN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local limit, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
if tonumber(redis.call('GET', KEYS[1]) or '0') >= limit then return -1 end
local n = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ttl)
return n
",
    )
});

/// Counts a request out; a count that expired meanwhile stays gone.
static COUNT_OUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if tonumber(redis.call('GET', KEYS[1]) or '0') > 1 then return redis.call('DECR', KEYS[1]) end
redis.call('DEL', KEYS[1])
return 0
",
    )
});

/// One admitted request's place in a count, given back when it is dropped: with the
/// request's context, at its end, whether it was answered, refused by a later plugin, failed
/// upstream or given up by its client.
enum Admitted {
    Local {
        in_flight: Arc<KeyedState<u64>>,
        key: Box<str>,
    },
    Redis {
        redis: Arc<Redis>,
        key: String,
    },
}

impl Drop for Admitted {
    fn drop(&mut self) {
        match self {
            // A key with requests in flight is never swept: its entry is there.
            Admitted::Local { in_flight, key } => {
                in_flight.with_existing(key, |n| *n -= 1);
            }
            Admitted::Redis { redis, key } => {
                // Sent on the worker's runtime without the request waiting; a place that
                // cannot be given back (Redis down) goes when its key expires.
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let (redis, key) = (redis.clone(), std::mem::take(key));
                    runtime.spawn(async move {
                        if let Err(e) = redis.run_script::<i64>(&COUNT_OUT, &key, &[]).await {
                            tracing::warn!(redis = %redis.status().name, "limit-conn: a place was not given back: {e}");
                        }
                    });
                }
            }
        }
    }
}

/// What a request holds in the context: one place per `limit-conn` it passed (a global
/// rule's and a route's may both count it).
struct Places(RefCell<Vec<Admitted>>);

impl Plugin for LimitConn {
    fn name(&self) -> &'static str {
        DESCRIPTOR.name
    }

    fn phases(&self) -> Phases {
        Phases::ACCESS
    }

    fn access<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Step<'a> {
        let limit = u64::from(self.conn) + u64::from(self.burst);
        if let Some(redis) = &self.redis {
            let key = redis.key(&self.key.of(ctx));
            let args = [limit as i64, REDIS_COUNT_TTL_MS];
            let longest_hold = self.delay(limit).unwrap_or_default();
            return Step::Call(redis.shared.call(longest_hold, async move {
                let shared = &redis.shared;
                let counted: i64 = shared.redis.run_script(&COUNT_IN, &key, &args).await?;
                let Ok(in_flight) = u64::try_from(counted) else {
                    return Ok(Some(self.rejected.clone()));
                };
                let redis = shared.redis.clone();
                admit(ctx, Admitted::Redis { redis, key });
                if let Some(delay) = self.delay(in_flight).filter(|d| *d >= MIN_DELAY) {
                    tokio::time::sleep(delay).await;
                }
                Ok(None)
            }));
        }
        let key: Box<str> = self.key.of(ctx).into();
        let counted = self.in_flight.with(
            &key,
            || 0,
            |n| {
                if *n >= limit {
                    return None;
                }
                *n += 1;
                Some(*n)
            },
        );
        let Some(in_flight) = counted else {
            return Step::Reply(self.rejected.clone());
        };
        let place = Admitted::Local {
            in_flight: self.in_flight.clone(),
            key,
        };
        admit(ctx, place);
        match self.delay(in_flight) {
            Some(delay) => hold(delay),
            None => Step::Continue,
        }
    }
}

/// Keeps `admitted` with the request, which gives its place back when it ends.
fn admit(ctx: &mut RequestCtx<'_>, admitted: Admitted) {
    match ctx.state::<Places>(DESCRIPTOR.name) {
        Some(places) => places.0.borrow_mut().push(admitted),
        None => ctx.set_state(DESCRIPTOR.name, Places(RefCell::new(vec![admitted]))),
    }
}

impl LimitConn {
    fn new(config: LimitConnConfig) -> Result<LimitConn, FieldError> {
        if config.conn == 0 {
            return Err(FieldError::new("conn", "must be 1 or more"));
        }
        let unit_delay = Duration::try_from_secs_f64(config.default_conn_delay)
            .ok()
            .filter(|delay| !delay.is_zero())
            .ok_or_else(|| FieldError::new("default_conn_delay", "must be more than 0 seconds"))?;
        Ok(LimitConn {
            key: LimitKey::new(config.key_type, &config.key)?,
            conn: config.conn,
            burst: config.burst,
            unit_delay,
            rejected: refusal(config.rejected_code, config.rejected_msg.as_deref())?,
            in_flight: Arc::new(KeyedState::new(|n, _| *n == 0)),
            redis: None,
        })
    }

    /// How long the `in_flight`-th request of its key waits before it goes on: a unit for
    /// every `conn` requests ahead of it, once it is past `conn`.
    fn delay(&self, in_flight: u64) -> Option<Duration> {
        let conn = u64::from(self.conn);
        if in_flight <= conn {
            return None;
        }
        // At most `burst` units, so it fits.
        let units = u32::try_from((in_flight - 1) / conn).unwrap_or(u32::MAX);
        Some(self.unit_delay.saturating_mul(units))
    }
}

#[cfg(test)]
mod tests {
    use pylon_plugin::{ChainBuilder, Entry, Meta, RequestPhase};
    use serde_json::json;

    use super::*;
    use crate::testing::{build as build_plugin, refusal, TestRequest};

    /// What `access` decided, keeping the request in flight as long as `ctx` lives.
    fn access(plugin: &Arc<dyn Plugin>, ctx: &mut RequestCtx<'_>) -> &'static str {
        match plugin.access(ctx) {
            Step::Continue => "continue",
            Step::Reply(_) => "refuse",
            Step::Call(_) => "delay",
        }
    }

    #[test]
    fn past_conn_requests_are_delayed_then_refused_and_an_ended_one_gives_its_place_back() {
        let config = json!({"conn": 2, "burst": 1, "default_conn_delay": 0.1,
            "key": "remote_addr"});
        let plugin = build_plugin(&DESCRIPTOR, config).unwrap();
        let request = TestRequest::get("/");
        let mut first = RequestCtx::new(&request, "r1", None);
        let mut second = RequestCtx::new(&request, "r1", None);
        let mut third = RequestCtx::new(&request, "r1", None);
        let mut fourth = RequestCtx::new(&request, "r1", None);
        assert_eq!(access(&plugin, &mut first), "continue");
        assert_eq!(access(&plugin, &mut second), "continue");
        assert_eq!(access(&plugin, &mut third), "delay");
        assert_eq!(access(&plugin, &mut fourth), "refuse");
        // Another client counts apart.
        let other = TestRequest::get("/").from("192.0.2.8");
        assert_eq!(
            access(&plugin, &mut RequestCtx::new(&other, "r1", None)),
            "continue"
        );

        drop(first);
        // The refused request took no place: one ended, one is free.
        let mut again = RequestCtx::new(&request, "r1", None);
        assert_eq!(access(&plugin, &mut again), "delay");
        assert_eq!(access(&plugin, &mut fourth), "refuse");
        drop((second, third, again));
        let steps: Vec<_> = (0..4)
            .map(|_| access(&plugin, &mut RequestCtx::new(&request, "r1", None)))
            .collect();
        assert_eq!(steps, ["continue"; 4], "each ended at once");
    }

    #[test]
    fn the_delay_is_a_unit_for_every_conn_requests_ahead() {
        let config = json!({"conn": 2, "burst": 10, "default_conn_delay": 0.5,
            "key": "remote_addr"});
        let lim = LimitConn::new(parse(&config).unwrap()).unwrap();
        let delays: Vec<_> = (1..=7)
            .map(|n| lim.delay(n).map(|d| d.as_millis()))
            .collect();
        assert_eq!(
            delays,
            [
                None,
                None,
                Some(500),
                Some(500),
                Some(1000),
                Some(1000),
                Some(1500)
            ]
        );
    }

    #[test]
    fn a_request_passing_two_limits_holds_a_place_in_each() {
        let config = json!({"conn": 1, "burst": 0, "default_conn_delay": 1,
            "key_type": "constant", "key": "all"});
        let global = build_plugin(&DESCRIPTOR, config.clone()).unwrap();
        let route = build_plugin(&DESCRIPTOR, config).unwrap();
        let request = TestRequest::get("/");
        let mut ctx = RequestCtx::new(&request, "r1", None);
        assert_eq!(access(&global, &mut ctx), "continue");
        assert_eq!(access(&route, &mut ctx), "continue");
        let mut other = RequestCtx::new(&request, "r1", None);
        assert_eq!(access(&global, &mut other), "refuse");
        assert_eq!(access(&route, &mut other), "refuse");
        drop(ctx);
        assert_eq!(access(&global, &mut other), "continue");
        assert_eq!(access(&route, &mut other), "continue");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_the_burst_is_held_then_goes_on() {
        let config = json!({"conn": 1, "burst": 1, "default_conn_delay": 1.5,
            "key": "remote_addr"});
        let plugin = build_plugin(&DESCRIPTOR, config).unwrap();
        let mut chain = ChainBuilder::new();
        chain.add(Entry::new(plugin, DESCRIPTOR.priority, Meta::default()));
        let chain = chain.build();
        let request = TestRequest::get("/");
        let mut first = RequestCtx::new(&request, "r1", None);
        assert_eq!(
            chain.run(RequestPhase::Access, &mut first, None).await,
            None
        );
        let started = tokio::time::Instant::now();
        let mut second = RequestCtx::new(&request, "r1", None);
        assert_eq!(
            chain.run(RequestPhase::Access, &mut second, None).await,
            None
        );
        assert_eq!(started.elapsed(), Duration::from_millis(1500));
    }

    #[test]
    fn counting_is_exact_across_threads() {
        let config = json!({"conn": 100, "burst": 0, "default_conn_delay": 1,
            "key_type": "constant", "key": "all"});
        let plugin = build_plugin(&DESCRIPTOR, config).unwrap();
        let request = TestRequest::get("/");
        // Each thread holds what it was admitted for until all have tried.
        let barrier = std::sync::Barrier::new(8);
        let admitted: usize = std::thread::scope(|s| {
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        let mut held = Vec::new();
                        for _ in 0..50 {
                            let mut ctx = RequestCtx::new(&request, "r1", None);
                            if access(&plugin, &mut ctx) == "continue" {
                                held.push(ctx);
                            }
                        }
                        barrier.wait();
                        held.len()
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).sum()
        });
        assert_eq!(admitted, 100);
        // Every place was given back.
        let mut ctx = RequestCtx::new(&request, "r1", None);
        let steps: Vec<_> = (0..100).map(|_| access(&plugin, &mut ctx)).collect();
        assert_eq!(steps, ["continue"; 100]);
    }

    #[test]
    fn bad_configurations_are_refused_with_their_field() {
        let base = json!({"conn": 1, "burst": 0, "default_conn_delay": 0.1, "key": "remote_addr"});
        let with = |field: &str, value: Value| {
            let mut config = base.clone();
            config[field] = value;
            config
        };
        for field in ["conn", "burst", "default_conn_delay", "key"] {
            let mut config = base.clone();
            config.as_object_mut().unwrap().remove(field);
            let error = refusal(&DESCRIPTOR, config);
            assert_eq!(error.to_string(), format!("missing field `{field}`"));
        }
        let cases = [
            (with("conn", json!(0)), "conn"),
            (with("conn", json!(1.5)), "conn"),
            (with("burst", json!(-1)), "burst"),
            (with("default_conn_delay", json!(0)), "default_conn_delay"),
            (with("default_conn_delay", json!(-1)), "default_conn_delay"),
            (
                with("default_conn_delay", json!(1e300)),
                "default_conn_delay",
            ),
            (
                with("only_use_default_delay", json!(1)),
                "only_use_default_delay",
            ),
            (with("key", json!("$")), "key"),
            (with("key_type", json!("header")), "key_type"),
            (with("rejected_code", json!(600)), "rejected_code"),
            (with("rejected_msg", json!("")), "rejected_msg"),
            (with("policy", json!("memcached")), "policy"),
        ];
        for (config, field) in cases {
            assert_eq!(refusal(&DESCRIPTOR, config.clone()).path, field, "{config}");
        }
    }

    #[test]
    fn what_apisix_accepts_is_accepted() {
        for config in [
            json!({"conn": 1, "burst": 0, "default_conn_delay": 0.1, "rejected_code": 503,
                "key_type": "var", "key": "remote_addr"}),
            json!({"conn": 100, "burst": 50, "default_conn_delay": 2,
                "only_use_default_delay": true, "key_type": "var_combination",
                "key": "$consumer_name $remote_addr", "rejected_msg": "Too many",
                "allow_degradation": true, "policy": "local"}),
            // Moved back to `local`, with the Redis settings left in.
            json!({"conn": 1, "burst": 0, "default_conn_delay": 0.1, "key": "remote_addr",
                "policy": "local", "redis_host": "10.0.0.1", "redis_prefix": "x"}),
        ] {
            build_plugin(&DESCRIPTOR, config.clone()).unwrap_or_else(|e| panic!("{config}: {e}"));
        }
    }
}
