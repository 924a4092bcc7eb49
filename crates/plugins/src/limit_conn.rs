//! `limit-conn`: limits the requests in flight per key, as lua-resty-limit-conn does. Past
//! `conn`, a request waits a little before it goes on, while it is within `burst`; past
//! `conn + burst` it is refused. A request counts from its `access` phase to its end,
//! however it ends.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use pylon_model::FieldError;
use pylon_plugin::{Phases, Plugin, Reply, RequestCtx, Step};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{parse, refusal, schema_of};
use crate::descriptor::{BuildEnv, Descriptor};
use crate::limits::key::{KeyType, LimitKey};
use crate::limits::state::KeyedState;
use crate::limits::{default_rejected_code, hold, local_config, Policy};

pub(crate) const DESCRIPTOR: Descriptor = Descriptor {
    name: "limit-conn",
    priority: 1003,
    schema: schema_of::<LimitConnConfig>,
    build,
    credential: None,
    metadata: None,
};

/// APISIX's Redis settings (`redis_host`, ..., `sync_interval`) are accepted and ignored: APISIX
/// keeps them in a configuration whose `policy` is `local`.
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
    /// Let requests through when the counts cannot be reached. The local counts always can:
    /// it is for the Redis policies.
    #[serde(default)]
    #[allow(dead_code)] // Read once the Redis policies are built.
    allow_degradation: bool,
    #[serde(default)]
    #[allow(dead_code)] // Only `local` gets this far: see `limits::local_config`.
    policy: Policy,
}

fn build(config: &Value, _env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    Ok(Arc::new(LimitConn::new(parse(&*local_config(config)?)?)?))
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
}

/// One admitted request's place in a count, given back when it is dropped: with the
/// request's context, at its end, whether it was answered, refused by a later plugin, failed
/// upstream or given up by its client.
struct Admitted {
    in_flight: Arc<KeyedState<u64>>,
    key: Box<str>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        // A key with requests in flight is never swept: its entry is there.
        self.in_flight.with_existing(&self.key, |n| *n -= 1);
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
        let key: Box<str> = self.key.of(ctx).into();
        let limit = u64::from(self.conn) + u64::from(self.burst);
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
        let admitted = Admitted {
            in_flight: self.in_flight.clone(),
            key,
        };
        match ctx.state::<Places>(DESCRIPTOR.name) {
            Some(places) => places.0.borrow_mut().push(admitted),
            None => ctx.set_state(DESCRIPTOR.name, Places(RefCell::new(vec![admitted]))),
        }
        match self.delay(in_flight) {
            Some(delay) => hold(delay),
            None => Step::Continue,
        }
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
        for policy in ["redis", "redis-cluster"] {
            let error = refusal(&DESCRIPTOR, with("policy", json!(policy)));
            assert_eq!(error.path, "policy");
            assert!(error.to_string().contains("not built yet"), "{error}");
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
