//! `limit-count`: at most `count` requests per `time_window` seconds for each key (a client
//! address, a header, a consumer), counted on this node (`policy: local`) or in Redis, for
//! every node at once (`policy: redis` or `redis-cluster`). The requests past the count are
//! refused with `rejected_code`.
//!
//! Two windows:
//! - `fixed` (APISIX's): a key's window starts at its first request and its count resets
//!   `time_window` later, at the next request after that.
//! - `sliding`: the approximation of the well-known gateways (Cloudflare's, Kong's), which
//!   smooths the burst a fixed window lets through at its edges. Time is cut into windows of
//!   `time_window` from the key's first request; a request is counted against the current
//!   window's count plus the previous window's, weighted by the share of the previous window
//!   that the last `time_window` seconds still cover.
//!
//! In Redis, a request costs one round trip: a script counts it and answers whether it is
//! let through, with the window timed by Redis's clock, so that the nodes' clocks do not
//! matter. A key's counter is named after the plugin's place and configuration
//! (`pylon:limit-count:routes/1:<hash>:<key>`, or the group's), so a changed configuration
//! counts afresh there too.
//!
//! The local counters live in the plugin instance: a changed configuration counts afresh, as
//! APISIX's does, and so does an instance built again for another reason (a consumer was
//! added, the route's upstream changed). With `group`, the instances configured with the same
//! group, `count`, `time_window` and `window_type` share one set of counters, across routes
//! and rebuilds; a group configured differently somewhere counts apart there, and a changed
//! group configuration counts afresh.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use pylon_model::FieldError;
use pylon_plugin::{Phases, Plugin, Reply, RequestCtx, Step};
use pylon_redis::Script;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::{parse, refusal, schema_of};
use crate::descriptor::{BuildEnv, Descriptor};
use crate::limits::key::{KeyType, LimitKey};
use crate::limits::redis::{store, RedisCounts, Store};
use crate::limits::state::KeyedState;
use crate::limits::{default_rejected_code, Policy};

pub(crate) const DESCRIPTOR: Descriptor = Descriptor {
    name: "limit-count",
    priority: 1002,
    schema: schema_of::<LimitCountConfig>,
    build,
    credential: None,
    metadata: None,
};

/// The longest `time_window`, in seconds (ten years). APISIX sets none; a bound keeps the
/// end of a window a time the clock can hold.
const MAX_TIME_WINDOW: u64 = 10 * 365 * 24 * 3600;

/// A `limit-count` configuration. APISIX's Redis settings (`redis_host`, `redis_cluster_nodes`,
/// ..., `sync_interval`) are read by [`crate::limits::redis::store`] before this is parsed.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("patternProperties" = {"^redis_": {}, "^sync_interval$": {}}))]
struct LimitCountConfig {
    /// The requests let through per window and key.
    #[schemars(range(min = 1))]
    count: u64,
    /// The window's length, in seconds.
    #[schemars(range(min = 1, max = MAX_TIME_WINDOW))]
    time_window: u64,
    /// `fixed` (APISIX's): the count resets at the window's end. `sliding`: the previous
    /// window's count, weighted by how much of it the last `time_window` covers, counts too.
    #[serde(default)]
    window_type: WindowType,
    /// How `key` is read.
    #[serde(default)]
    key_type: KeyType,
    /// What requests are counted by: a variable (`key_type: var`), text with variables
    /// (`var_combination`) or a fixed key (`constant`). A request without it counts by its
    /// client address.
    #[serde(default = "default_key")]
    key: String,
    /// The status of a refused request.
    #[serde(default = "default_rejected_code")]
    #[schemars(range(min = 200, max = 599))]
    rejected_code: u16,
    /// The refusal's body, as `{"error_msg": ...}`. Unset: an empty body.
    #[schemars(length(min = 1))]
    rejected_msg: Option<String>,
    /// Where the counters are: `local` (this node), `redis` or `redis-cluster`.
    #[serde(default)]
    #[allow(dead_code)] // Read by `limits::redis::store`, with the Redis fields.
    policy: Policy,
    /// Whether requests go on (`true`) or are refused with a 500 when Redis fails.
    #[serde(default)]
    #[allow(dead_code)] // Read by `limits::redis::store`, with the Redis fields.
    allow_degradation: bool,
    /// Send `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`.
    #[serde(default = "default_true")]
    show_limit_quota_header: bool,
    /// Routes whose `limit-count` has the same group (and count, window and window type)
    /// share its counters.
    #[schemars(length(min = 1))]
    group: Option<String>,
}

fn default_key() -> String {
    "remote_addr".into()
}

fn default_true() -> bool {
    true
}

#[derive(
    Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
enum WindowType {
    #[default]
    Fixed,
    Sliding,
}

fn build(config: &Value, env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    let (own, store) = store(config)?;
    let config: LimitCountConfig = parse(&own)?;
    if config.count == 0 {
        return Err(FieldError::new("count", "must be greater than 0"));
    }
    if !(1..=MAX_TIME_WINDOW).contains(&config.time_window) {
        return Err(FieldError::new(
            "time_window",
            format!("must be from 1 to {MAX_TIME_WINDOW} seconds"),
        ));
    }
    let key = LimitKey::new(config.key_type, &config.key)?;
    let refusal = refusal(config.rejected_code, config.rejected_msg.as_deref())?;
    let group = match config.group {
        Some(group) if group.is_empty() => {
            return Err(FieldError::new("group", "must not be empty"));
        }
        Some(name) => Some(GroupKey {
            name,
            count: config.count,
            time_window: config.time_window,
            window_type: config.window_type,
        }),
        None => None,
    };
    let counting = match (store, group) {
        (Store::Local, Some(group)) => Counting::Local(group_counters(group)),
        (Store::Local, None) => Counting::Local(Arc::new(Counters::new(
            config.window_type,
            Duration::from_secs(config.time_window),
        ))),
        (Store::Redis(shared), group) => Counting::Redis {
            counts: match group {
                // A group is one counter wherever it is configured alike.
                Some(group) => shared.counts(
                    DESCRIPTOR.name,
                    &format!("group:{}", group.name),
                    &json!([group.count, group.time_window, group.window_type]),
                ),
                None => shared.counts(DESCRIPTOR.name, env.owner, &own),
            },
            script: match config.window_type {
                WindowType::Fixed => &FIXED_WINDOW,
                WindowType::Sliding => &SLIDING_WINDOW,
            },
        },
    };
    Ok(Arc::new(LimitCount {
        key,
        limit: Limit {
            count: config.count,
            window: Duration::from_secs(config.time_window),
        },
        counting,
        refusal,
        quota_header: config
            .show_limit_quota_header
            .then(|| Arc::from(config.count.to_string())),
    }))
}

/// What a group's counters are shared by: instances configured alike.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct GroupKey {
    name: String,
    count: u64,
    time_window: u64,
    window_type: WindowType,
}

/// Every group's counters, held by the instances that count with them: once the last is
/// dropped (its configuration changed or went), the group's counters go too.
static GROUPS: Mutex<BTreeMap<GroupKey, Weak<Counters>>> = Mutex::new(BTreeMap::new());

fn group_counters(key: GroupKey) -> Arc<Counters> {
    let mut groups = GROUPS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(counters) = groups.get(&key).and_then(Weak::upgrade) {
        return counters;
    }
    groups.retain(|_, counters| counters.strong_count() > 0);
    let window = Duration::from_secs(key.time_window);
    let counters = Arc::new(Counters::new(key.window_type, window));
    groups.insert(key, Arc::downgrade(&counters));
    counters
}

struct LimitCount {
    key: LimitKey,
    limit: Limit,
    counting: Counting,
    refusal: Reply,
    /// `X-RateLimit-Limit`'s value, when the quota headers are sent.
    quota_header: Option<Arc<str>>,
}

impl Plugin for LimitCount {
    fn name(&self) -> &'static str {
        DESCRIPTOR.name
    }

    fn phases(&self) -> Phases {
        Phases::ACCESS
    }

    fn access<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Step<'a> {
        match &self.counting {
            Counting::Local(counters) => {
                let quota = counters.admit(&self.key.of(ctx), &self.limit, Instant::now());
                match self.decide(ctx, &quota) {
                    None => Step::Continue,
                    Some(refusal) => Step::Reply(refusal),
                }
            }
            Counting::Redis { counts, script } => {
                let key = counts.key(&self.key.of(ctx));
                let shared = &counts.shared;
                let args = [
                    i64::try_from(self.limit.count).unwrap_or(i64::MAX),
                    self.limit.window.as_millis() as i64,
                ];
                Step::Call(shared.call(Duration::ZERO, async move {
                    let (admitted, remaining, reset_ms): (i64, i64, i64) =
                        shared.redis.run_script(script, &key, &args).await?;
                    let quota = Quota {
                        admitted: admitted == 1,
                        remaining: remaining.max(0) as u64,
                        reset: whole_seconds(Duration::from_millis(reset_ms.max(0) as u64)),
                    };
                    Ok(self.decide(ctx, &quota))
                }))
            }
        }
    }
}

impl LimitCount {
    /// Announces `quota` and says whether the request is refused.
    fn decide(&self, ctx: &mut RequestCtx<'_>, quota: &Quota) -> Option<Reply> {
        // Response edits, so that the upstream's answer and the refusal both carry them.
        if let Some(limit) = &self.quota_header {
            let headers = &mut ctx.response.headers;
            headers.set("X-RateLimit-Limit", limit);
            headers.set("X-RateLimit-Remaining", quota.remaining.to_string());
            headers.set("X-RateLimit-Reset", quota.reset.to_string());
        }
        (!quota.admitted).then(|| self.refusal.clone())
    }
}

/// Where a `limit-count` counts.
enum Counting {
    /// On this node: the instance's counters, or its group's.
    Local(Arc<Counters>),
    /// In Redis, with the script of the window type.
    Redis {
        counts: RedisCounts,
        script: &'static Script,
    },
}

/// A fixed window in Redis: the key holds the count and expires at the window's end, so
/// the first request after it starts the next. Answers `{admitted, remaining, reset_ms}`.
/// A refused request is not counted, as on a node.
static FIXED_WINDOW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then used, ttl = 0, window end
if used >= limit then return {0, 0, ttl} end
if used == 0 then
  redis.call('SET', KEYS[1], 1, 'PX', window)
else
  redis.call('INCR', KEYS[1])
end
return {1, limit - used - 1, ttl}
",
    )
});

/// The sliding window of [`SlidingWindow`], kept in a hash (`start` in Redis's own
/// milliseconds, `previous`, `current`) that expires when neither count matters any more.
/// Answers `{admitted, remaining, reset_ms}`.
static SLIDING_WINDOW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local saved = redis.call('HMGET', KEYS[1], 'start', 'previous', 'current')
local start, previous, current = tonumber(saved[1]), tonumber(saved[2]) or 0, tonumber(saved[3]) or 0
if not start or now >= start + 2 * window then
  start, previous, current = now, 0, 0
elseif now >= start + window then
  start, previous, current = start + window, current, 0
end
local left = window - (now - start)
local carried = previous * left / window
local admitted = carried + current < limit
if admitted then current = current + 1 end
redis.call('HSET', KEYS[1], 'start', start, 'previous', previous, 'current', current)
redis.call('PEXPIRE', KEYS[1], start + 2 * window - now)
local wait = left
if not admitted and current < limit then
  wait = math.max(0, left - window * (limit - current) / previous)
end
local remaining = math.max(0, math.floor(limit - carried - current))
return {admitted and 1 or 0, remaining, math.ceil(wait)}
",
    )
});

#[derive(Debug, Clone, Copy)]
struct Limit {
    count: u64,
    window: Duration,
}

/// What counting one request decided.
#[derive(Debug, PartialEq, Eq)]
struct Quota {
    admitted: bool,
    /// Requests still let through now.
    remaining: u64,
    /// Seconds until the count resets (fixed), or until a request is let through again
    /// (sliding, when refused).
    reset: u64,
}

/// The counters of one instance or group: one window per key.
enum Counters {
    Fixed(KeyedState<FixedWindow>),
    Sliding(KeyedState<SlidingWindow>),
}

impl Counters {
    fn new(window_type: WindowType, window: Duration) -> Counters {
        match window_type {
            WindowType::Fixed => Counters::Fixed(KeyedState::new(FixedWindow::is_over)),
            WindowType::Sliding => {
                Counters::Sliding(KeyedState::new(move |sliding: &SlidingWindow, now| {
                    sliding.is_forgotten(window, now)
                }))
            }
        }
    }

    fn admit(&self, key: &str, limit: &Limit, now: Instant) -> Quota {
        match self {
            Counters::Fixed(state) => state.with(
                key,
                || FixedWindow::starting(now, limit),
                |window| window.admit(limit, now),
            ),
            Counters::Sliding(state) => state.with(
                key,
                || SlidingWindow::starting(now),
                |window| window.admit(limit, now),
            ),
        }
    }
}

/// A key's fixed window.
struct FixedWindow {
    resets_at: Instant,
    count: u64,
}

impl FixedWindow {
    fn starting(now: Instant, limit: &Limit) -> FixedWindow {
        FixedWindow {
            resets_at: now + limit.window,
            count: 0,
        }
    }

    fn admit(&mut self, limit: &Limit, now: Instant) -> Quota {
        if now >= self.resets_at {
            *self = FixedWindow::starting(now, limit);
        }
        // A refused request is not counted: the count never passes the limit.
        let admitted = self.count < limit.count;
        self.count += u64::from(admitted);
        Quota {
            admitted,
            remaining: limit.count - self.count,
            reset: whole_seconds(self.resets_at - now),
        }
    }

    fn is_over(&self, now: Instant) -> bool {
        now >= self.resets_at
    }
}

/// A key's sliding window: the counts of the current fixed window and the one before.
struct SlidingWindow {
    /// When the current window started.
    start: Instant,
    previous: u64,
    current: u64,
}

impl SlidingWindow {
    fn starting(now: Instant) -> SlidingWindow {
        SlidingWindow {
            start: now,
            previous: 0,
            current: 0,
        }
    }

    fn admit(&mut self, limit: &Limit, now: Instant) -> Quota {
        let window = limit.window;
        if self.is_forgotten(window, now) {
            *self = SlidingWindow::starting(now);
        } else if now >= self.start + window {
            self.start += window;
            self.previous = self.current;
            self.current = 0;
        }
        let left = window - (now - self.start);
        let share_left = left.as_secs_f64() / window.as_secs_f64();
        let carried = self.previous as f64 * share_left;
        let admitted = carried + (self.current as f64) < limit.count as f64;
        self.current += u64::from(admitted);
        let used = carried + self.current as f64;
        // The wait until the previous window's weight has fallen enough to let one more in
        // (`carried + current < count`): at the latest, this window's end.
        let wait = if admitted || self.current >= limit.count {
            left
        } else {
            let spare = (limit.count - self.current) as f64;
            let spare_share = spare / self.previous as f64;
            left.saturating_sub(window.mul_f64(spare_share))
        };
        Quota {
            admitted,
            remaining: (limit.count as f64 - used).floor().max(0.0) as u64,
            reset: whole_seconds(wait),
        }
    }

    /// Whether neither count matters any more at `now`: past the end of the window after
    /// the current one.
    fn is_forgotten(&self, window: Duration, now: Instant) -> bool {
        now >= self.start + 2 * window
    }
}

/// `duration` in whole seconds, rounded up: a reset is never announced early.
fn whole_seconds(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::{body, build as build_plugin, refusal, replied, TestRequest};

    fn limit(count: u64, secs: u64) -> Limit {
        Limit {
            count,
            window: Duration::from_secs(secs),
        }
    }

    /// Admits one request at each of `at` (seconds after `t0`) on one key.
    fn quotas(counters: &Counters, limit: Limit, at: &[f64]) -> Vec<Quota> {
        let t0 = Instant::now();
        at.iter()
            .map(|&secs| counters.admit("k", &limit, t0 + Duration::from_secs_f64(secs)))
            .collect()
    }

    fn quota(admitted: bool, remaining: u64, reset: u64) -> Quota {
        Quota {
            admitted,
            remaining,
            reset,
        }
    }

    #[test]
    fn a_fixed_window_lets_count_through_and_resets_at_its_end() {
        let counters = Counters::new(WindowType::Fixed, Duration::from_secs(10));
        let got = quotas(&counters, limit(2, 10), &[0.0, 3.0, 9.5, 10.0, 10.5, 25.0]);
        assert_eq!(
            got,
            [
                quota(true, 1, 10),
                quota(true, 0, 7),
                quota(false, 0, 1),
                // The window started at the first request: it ends 10 s later.
                quota(true, 1, 10),
                quota(true, 0, 10),
                quota(true, 1, 10),
            ]
        );
    }

    #[test]
    fn a_sliding_window_weighs_the_previous_windows_count_by_its_overlap() {
        let counters = Counters::new(WindowType::Sliding, Duration::from_secs(10));
        let got = quotas(
            &counters,
            limit(4, 10),
            &[
                0.0, 1.0, 2.0, 3.0, 4.0, 11.0, 12.0, 13.0, 14.0, 16.0, 25.0, 45.0,
            ],
        );
        assert_eq!(
            got,
            [
                quota(true, 3, 10),
                quota(true, 2, 9),
                quota(true, 1, 8),
                quota(true, 0, 7),
                quota(false, 0, 6),
                // 1 s into the next window, 90 % of the previous one is still covered:
                // 4 * 0.9 = 3.6 carried, so one more request fits.
                quota(true, 0, 9),
                // 3.2 + 1 is over 4 until 4 * (10 - t) / 10 + 1 < 4, from t = 2.5 s.
                quota(false, 0, 1),
                quota(true, 0, 7),
                quota(false, 0, 1),
                quota(true, 0, 4),
                // The next window carries 3 * 0.5 = 1.5: 2.5 of 4 used.
                quota(true, 1, 5),
                // Two windows on, nothing is carried.
                quota(true, 3, 10),
            ]
        );
    }

    #[test]
    fn windows_that_ended_are_swept_as_stale() {
        let t0 = Instant::now();
        let limit = limit(1, 10);
        let fixed = FixedWindow::starting(t0, &limit);
        assert!(!fixed.is_over(t0 + Duration::from_secs(9)));
        assert!(fixed.is_over(t0 + Duration::from_secs(10)));
        let mut sliding = SlidingWindow::starting(t0);
        sliding.admit(&limit, t0);
        // Its count still weighs on the next window.
        let window = limit.window;
        assert!(!sliding.is_forgotten(window, t0 + Duration::from_secs(15)));
        assert!(sliding.is_forgotten(window, t0 + Duration::from_secs(20)));
    }

    #[test]
    fn counting_is_exact_across_threads() {
        for window_type in [WindowType::Fixed, WindowType::Sliding] {
            let counters = Counters::new(window_type, Duration::from_secs(3600));
            let limit = limit(1000, 3600);
            let admitted: u64 = std::thread::scope(|scope| {
                let threads: Vec<_> = (0..8)
                    .map(|_| {
                        scope.spawn(|| {
                            (0..500)
                                .filter(|_| counters.admit("k", &limit, Instant::now()).admitted)
                                .count() as u64
                        })
                    })
                    .collect();
                threads.into_iter().map(|t| t.join().unwrap()).sum()
            });
            assert_eq!(admitted, 1000, "{window_type:?}");
        }
    }

    /// Sends `request` through a built plugin's access phase: its reply, if it refused, and
    /// the quota headers it set.
    fn access(
        plugin: &dyn Plugin,
        request: &TestRequest,
    ) -> (Option<Reply>, Vec<(String, String)>) {
        let mut ctx = RequestCtx::new(request, "r1", None);
        let reply = replied(plugin.access(&mut ctx));
        let headers = ctx
            .response
            .headers
            .added()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect();
        (reply, headers)
    }

    fn headers(limit: u64, remaining: u64, reset: u64) -> Vec<(String, String)> {
        [
            ("X-RateLimit-Limit", limit),
            ("X-RateLimit-Remaining", remaining),
            ("X-RateLimit-Reset", reset),
        ]
        .map(|(n, v)| (n.to_owned(), v.to_string()))
        .to_vec()
    }

    #[test]
    fn requests_past_the_count_are_refused_with_the_quota_headers() {
        let plugin = build_plugin(
            &DESCRIPTOR,
            json!({"count": 2, "time_window": 60, "rejected_code": 429, "rejected_msg": "slow down"}),
        )
        .unwrap();
        let request = TestRequest::get("/");
        assert_eq!(access(&*plugin, &request), (None, headers(2, 1, 60)));
        assert_eq!(access(&*plugin, &request).1, headers(2, 0, 60));
        let (reply, quota) = access(&*plugin, &request);
        let reply = reply.expect("the third request is refused");
        assert_eq!(reply.status, 429);
        assert_eq!(body(&reply), json!({"error_msg": "slow down"}));
        assert_eq!(quota, headers(2, 0, 60));
        // Another client has its own count.
        let other = TestRequest::get("/").from("192.0.2.8");
        assert_eq!(access(&*plugin, &other), (None, headers(2, 1, 60)));
    }

    #[test]
    fn the_defaults_are_apisixs_and_headers_can_be_left_out() {
        let plugin = build_plugin(
            &DESCRIPTOR,
            json!({"count": 1, "time_window": 60, "show_limit_quota_header": false}),
        )
        .unwrap();
        let request = TestRequest::get("/");
        assert_eq!(access(&*plugin, &request), (None, vec![]));
        let (reply, quota) = access(&*plugin, &request);
        let reply = reply.unwrap();
        assert_eq!((reply.status, reply.body.len()), (503, 0));
        assert_eq!(quota, []);
    }

    #[test]
    fn keys_are_counted_apart_and_a_group_shares_its_counters() {
        let by_user = json!({"count": 1, "time_window": 60, "key": "http_x_user"});
        let plugin = build_plugin(&DESCRIPTOR, by_user).unwrap();
        let ann = TestRequest::get("/").header("X-User", "ann");
        let bob = TestRequest::get("/").header("X-User", "bob");
        assert!(access(&*plugin, &ann).0.is_none());
        assert!(access(&*plugin, &bob).0.is_none());
        assert!(access(&*plugin, &ann).0.is_some());

        let grouped = json!({"count": 1, "time_window": 60, "group": "keys-test"});
        let first = build_plugin(&DESCRIPTOR, grouped.clone()).unwrap();
        let second = build_plugin(&DESCRIPTOR, grouped).unwrap();
        let alone = build_plugin(&DESCRIPTOR, json!({"count": 1, "time_window": 60})).unwrap();
        // Configured otherwise, the same group counts apart.
        let other_count = json!({"count": 2, "time_window": 60, "group": "keys-test"});
        let other_count = build_plugin(&DESCRIPTOR, other_count).unwrap();
        let request = TestRequest::get("/");
        assert!(access(&*first, &request).0.is_none());
        assert!(access(&*second, &request).0.is_some());
        assert!(access(&*alone, &request).0.is_none());
        assert!(access(&*other_count, &request).0.is_none());
    }

    #[test]
    fn a_group_counts_afresh_once_its_instances_are_gone() {
        let grouped = json!({"count": 1, "time_window": 60, "group": "afresh-test"});
        let request = TestRequest::get("/");
        let plugin = build_plugin(&DESCRIPTOR, grouped.clone()).unwrap();
        assert!(access(&*plugin, &request).0.is_none());
        // Built again while the first serves (a rebuild): the same counters.
        let rebuilt = build_plugin(&DESCRIPTOR, grouped.clone()).unwrap();
        assert!(access(&*rebuilt, &request).0.is_some());
        drop((plugin, rebuilt));
        let plugin = build_plugin(&DESCRIPTOR, grouped).unwrap();
        assert!(access(&*plugin, &request).0.is_none());
    }

    #[test]
    fn a_constant_key_counts_every_request_together() {
        let config = json!({"count": 1, "time_window": 60, "key_type": "constant", "key": "all"});
        let plugin = build_plugin(&DESCRIPTOR, config).unwrap();
        assert!(access(&*plugin, &TestRequest::get("/").from("192.0.2.1"))
            .0
            .is_none());
        assert!(access(&*plugin, &TestRequest::get("/").from("192.0.2.2"))
            .0
            .is_some());
    }

    #[test]
    fn bad_configurations_are_refused_with_their_path() {
        let cases = [
            (json!({"time_window": 60}), ""),
            (json!({"count": 1}), ""),
            (json!({"count": 0, "time_window": 60}), "count"),
            (json!({"count": -1, "time_window": 60}), "count"),
            (json!({"count": 1.5, "time_window": 60}), "count"),
            (json!({"count": 1, "time_window": 0}), "time_window"),
            (
                json!({"count": 1, "time_window": 315_360_001}),
                "time_window",
            ),
            (
                json!({"count": 1, "time_window": 60, "window_type": "rolling"}),
                "window_type",
            ),
            (
                json!({"count": 1, "time_window": 60, "key_type": "header"}),
                "key_type",
            ),
            (
                json!({"count": 1, "time_window": 60, "key": "http-x"}),
                "key",
            ),
            (
                json!({"count": 1, "time_window": 60, "rejected_code": 199}),
                "rejected_code",
            ),
            (
                json!({"count": 1, "time_window": 60, "rejected_code": 600}),
                "rejected_code",
            ),
            (
                json!({"count": 1, "time_window": 60, "rejected_msg": ""}),
                "rejected_msg",
            ),
            (
                json!({"count": 1, "time_window": 60, "policy": "memcached"}),
                "policy",
            ),
            (json!({"count": 1, "time_window": 60, "group": ""}), "group"),
            (
                json!({"count": 1, "time_window": 60, "show_limit_quota_header": 1}),
                "show_limit_quota_header",
            ),
            (json!({"count": 1, "time_window": 60, "burst": 1}), "burst"),
        ];
        for (config, path) in cases {
            assert_eq!(refusal(&DESCRIPTOR, config.clone()).path, path, "{config}");
        }
    }

    #[test]
    fn what_apisix_accepts_is_accepted() {
        for config in [
            json!({"count": 2, "time_window": 60}),
            json!({"count": 2, "time_window": 60, "rejected_code": 429, "key_type": "var",
                "key": "remote_addr", "policy": "local", "allow_degradation": true,
                "show_limit_quota_header": true}),
            json!({"count": 1, "time_window": 30, "key_type": "var_combination",
                "key": "$remote_addr $consumer_name", "rejected_msg": "too many"}),
            json!({"count": 1, "time_window": 30, "group": "srv1", "window_type": "sliding"}),
            // APISIX keeps the Redis settings of a configuration that went back to `local`.
            json!({"count": 1, "time_window": 30, "policy": "local", "redis_host": "10.0.0.1",
                "redis_port": 6379, "redis_timeout": 1001, "sync_interval": -1}),
            json!({"count": 1, "time_window": 30, "_meta": {"disable": false}}),
        ] {
            build_plugin(&DESCRIPTOR, config.clone()).unwrap_or_else(|e| panic!("{config}: {e}"));
        }
    }
}
