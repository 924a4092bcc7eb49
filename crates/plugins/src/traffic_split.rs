//! `traffic-split`: sends a share of a route's requests to other upstreams, for canary and
//! blue-green releases, lanes chosen by header or cookie, and sharding users across sites.
//!
//! The first rule whose `match` passes (or that has none) picks an upstream from its
//! `weighted_upstreams`; an entry without an upstream stands for the route's own. Without
//! `sticky_key` the picks follow the weights in a smooth interleaving (weights 1:1 alternate),
//! as APISIX's round robin does. With `sticky_key` (Pylon's addition) the pick is a weighted
//! rendezvous hash of that variable's value: one user stays on one upstream while the weights
//! hold, and a weight change moves only the users it must.
//!
//! The gateway compiles the upstreams named here with the route (see
//! [`traffic_split_upstreams`]); a request carries its pick as the key of one of them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pylon_model::expr::Expr;
use pylon_model::{Config, FieldError, Kind, Resource, Route, Upstream};
use pylon_plugin::{Phases, Plugin, RequestCtx, Step};
use pylon_router::{eval_vars, RequestView};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::compile::route_plugin;
use crate::config::{parse, schema_of};
use crate::descriptor::{BuildEnv, Descriptor};

pub(crate) const DESCRIPTOR: Descriptor = Descriptor {
    name: "traffic-split",
    priority: 966,
    schema: schema_of::<TrafficSplitConfig>,
    build,
    credential: None,
    metadata: None,
};

/// At most this many weighted upstreams per rule, as APISIX.
const MAX_UPSTREAMS: usize = 20;
/// The longest interleaving kept; weights whose reduced sum is larger are scaled down to it.
const MAX_SCHEDULE: u64 = 4096;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct TrafficSplitConfig {
    #[serde(default)]
    rules: Vec<RuleConfig>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RuleConfig {
    /// The rule applies when any of these matches; without `match`, always.
    #[serde(rename = "match")]
    matches: Option<Vec<MatchConfig>>,
    /// Where the rule's requests go, in proportion to the weights. Default: the route's own
    /// upstream only.
    #[serde(default = "route_only")]
    #[schemars(length(min = 1, max = 20))]
    weighted_upstreams: Vec<WeightedUpstreamConfig>,
    /// A request variable (`cookie_user`, `http_x_user_id`, `arg_uid`) whose value keeps a
    /// user on one upstream while the weights hold. Pylon's own field; a request without the
    /// variable is picked as if the rule had none.
    sticky_key: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct MatchConfig {
    vars: Option<Expr>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct WeightedUpstreamConfig {
    upstream_id: Option<IdValue>,
    /// An upstream of its own, as an `upstreams` resource is written.
    #[schemars(with = "Option<Upstream>")]
    upstream: Option<Value>,
    #[serde(default = "one")]
    weight: u32,
}

/// An id, written as a string or a number (APISIX accepts both).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
enum IdValue {
    Text(String),
    Number(u64),
}

impl IdValue {
    fn as_string(&self) -> String {
        match self {
            IdValue::Text(s) => s.clone(),
            IdValue::Number(n) => n.to_string(),
        }
    }
}

fn route_only() -> Vec<WeightedUpstreamConfig> {
    vec![WeightedUpstreamConfig {
        upstream_id: None,
        upstream: None,
        weight: 1,
    }]
}

fn one() -> u32 {
    1
}

/// An upstream a `traffic-split` sends to besides the route's own.
pub struct SplitUpstream {
    /// What a request that goes there carries in `upstream_override`; the gateway keeps the
    /// upstream's runtime state under it (`upstreams/<id>` for a named one, shared with every
    /// other user of that upstream).
    pub key: String,
    pub target: SplitTarget,
}

pub enum SplitTarget {
    /// An `upstreams` resource, by id.
    Id(String),
    /// An upstream written into the plugin's configuration.
    Inline(Box<Upstream>),
}

/// The upstreams the `traffic-split` in force on `route` sends to besides the route's own
/// (see [`crate::compile::route_plugin`]).
pub fn route_split_upstreams(config: &Config, route: &Route) -> Vec<SplitUpstream> {
    route_plugin(config, route, DESCRIPTOR.name)
        .map(traffic_split_upstreams)
        .unwrap_or_default()
}

/// The upstreams a `traffic-split` configuration names, each once, in the order written. A
/// configuration that does not build names none.
fn traffic_split_upstreams(config: &Value) -> Vec<SplitUpstream> {
    let Ok(config) = parse::<TrafficSplitConfig>(config) else {
        return Vec::new();
    };
    let mut found: Vec<SplitUpstream> = Vec::new();
    let entries = config.rules.iter().flat_map(|r| &r.weighted_upstreams);
    for entry in entries {
        let Ok(Some(split)) = split_upstream(entry) else {
            continue;
        };
        if !found.iter().any(|f| f.key == split.key) {
            found.push(split);
        }
    }
    found
}

/// The upstream an entry names, with its key; `None` for the route's own.
fn split_upstream(entry: &WeightedUpstreamConfig) -> Result<Option<SplitUpstream>, FieldError> {
    match (&entry.upstream_id, &entry.upstream) {
        (Some(_), Some(_)) => Err(FieldError::new(
            "",
            "`upstream_id` and `upstream` are exclusive",
        )),
        (Some(id), None) => {
            let id = id.as_string();
            if !pylon_model::is_id(&id) {
                return Err(FieldError::new("upstream_id", "not a valid id"));
            }
            Ok(Some(SplitUpstream {
                key: format!("upstreams/{id}"),
                target: SplitTarget::Id(id),
            }))
        }
        (None, Some(value)) => match Resource::from_json(Kind::Upstreams, value) {
            Ok(Resource::Upstream(upstream)) => {
                // The same upstream written twice is one: its key is its content's.
                Ok(Some(SplitUpstream {
                    key: format!(
                        "traffic-split/{:016x}",
                        stable_hash(&[value.to_string().as_bytes()])
                    ),
                    target: SplitTarget::Inline(Box::new(upstream)),
                }))
            }
            Ok(_) => unreachable!("an upstream parses as an upstream"),
            Err(errors) => Err(errors
                .0
                .into_iter()
                .next()
                .map(|e| e.within("upstream"))
                .unwrap_or_else(|| FieldError::new("upstream", "invalid"))),
        },
        (None, None) => Ok(None),
    }
}

fn build(config: &Value, _env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    let config: TrafficSplitConfig = parse(config)?;
    let everything = Expr::parse(&Value::Array(Vec::new()))?;
    let mut rules = Vec::with_capacity(config.rules.len());
    for (r, rule) in config.rules.iter().enumerate() {
        let at = |field: &str| format!("rules[{r}].{field}");
        let n = rule.weighted_upstreams.len();
        if !(1..=MAX_UPSTREAMS).contains(&n) {
            return Err(FieldError::new(
                at("weighted_upstreams"),
                format!("must have 1 to {MAX_UPSTREAMS} items"),
            ));
        }
        let mut lanes = Vec::with_capacity(n);
        for (i, entry) in rule.weighted_upstreams.iter().enumerate() {
            let split = split_upstream(entry)
                .map_err(|e| e.within(&at(&format!("weighted_upstreams[{i}]"))))?;
            lanes.push(Lane {
                upstream: split.map(|s| Arc::from(s.key)),
                weight: entry.weight,
            });
        }
        if let Some(key) = &rule.sticky_key {
            if key.is_empty() {
                return Err(FieldError::new(at("sticky_key"), "must not be empty"));
            }
        }
        // A `match` item without `vars` matches every request.
        let matches = rule.matches.as_ref().map(|ms| {
            ms.iter()
                .map(|m| m.vars.clone().unwrap_or_else(|| everything.clone()))
                .collect()
        });
        rules.push(Rule {
            matches,
            schedule: schedule(&lanes),
            next: AtomicU64::new(0),
            sticky_key: rule.sticky_key.clone(),
            lanes,
        });
    }
    Ok(Arc::new(TrafficSplit { rules }))
}

struct TrafficSplit {
    rules: Vec<Rule>,
}

struct Rule {
    /// `None`: the rule applies to every request.
    matches: Option<Vec<Expr>>,
    lanes: Vec<Lane>,
    /// Lane indexes in a smooth weighted interleaving, walked by `next` (shared by the
    /// workers: one relaxed add per request on this rule).
    schedule: Vec<u8>,
    next: AtomicU64,
    sticky_key: Option<String>,
}

struct Lane {
    /// `None`: the route's own upstream.
    upstream: Option<Arc<str>>,
    weight: u32,
}

/// The smooth weighted round robin's sequence for `lanes` (as nginx's: at each step the lane
/// with the highest running credit goes, and pays the total back), over one period of the
/// weights divided by their common divisor. Empty when every weight is 0.
fn schedule(lanes: &[Lane]) -> Vec<u8> {
    let divisor = lanes
        .iter()
        .map(|l| u64::from(l.weight))
        .fold(0, gcd)
        .max(1);
    let mut weights: Vec<u64> = lanes
        .iter()
        .map(|l| u64::from(l.weight) / divisor)
        .collect();
    let total: u64 = weights.iter().sum();
    if total > MAX_SCHEDULE {
        // Scaled down, each non-zero weight keeping at least one turn.
        for w in weights.iter_mut().filter(|w| **w > 0) {
            *w = (*w * MAX_SCHEDULE / total).max(1);
        }
    }
    let total: i64 = weights.iter().map(|&w| w as i64).sum();
    let mut credit = vec![0i64; weights.len()];
    (0..total)
        .map(|_| {
            for (c, &w) in credit.iter_mut().zip(&weights) {
                *c += w as i64;
            }
            let best = (0..credit.len())
                .max_by_key(|&i| (credit[i], std::cmp::Reverse(i)))
                .unwrap_or(0);
            credit[best] -= total;
            best as u8
        })
        .collect()
}

/// A hash that is the same on every node and every build (FNV-1a over the parts, each
/// followed by a separator, then splitmix64's finaliser to spread it): a user must land on
/// the same upstream whichever node of a cluster serves them.
fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for part in parts {
        for &b in part.iter().chain(&[0xff]) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Rule {
    fn applies(&self, request: &impl RequestView) -> bool {
        self.matches
            .as_ref()
            .is_none_or(|ms| ms.iter().any(|m| eval_vars(m, request)))
    }

    /// The lane this request goes to; `None` when every weight is 0.
    fn pick(&self, request: &impl RequestView) -> Option<&Lane> {
        let sticky = self.sticky_key.as_deref().and_then(|k| request.var(k));
        match sticky {
            Some(value) => self.rendezvous(&value),
            None if self.schedule.is_empty() => None,
            None => {
                let turn = self.next.fetch_add(1, Ordering::Relaxed);
                let at = (turn % self.schedule.len() as u64) as usize;
                Some(&self.lanes[usize::from(self.schedule[at])])
            }
        }
    }

    /// Weighted rendezvous hashing: each lane scores the user by a hash of the user and the
    /// lane, scaled by the lane's weight; the best score wins. A lane's score for a user does
    /// not depend on the other lanes, so a weight change moves only users to or from the lanes
    /// whose weight changed.
    fn rendezvous(&self, user: &str) -> Option<&Lane> {
        let score = |lane: &Lane, i: usize| {
            let position = i.to_string();
            let lane_name = lane.upstream.as_deref().unwrap_or(&position);
            let hash = stable_hash(&[user.as_bytes(), lane_name.as_bytes()]);
            // A uniform draw in (0, 1], then -ln(u) / weight: the smallest wins, and a
            // lane wins with a probability proportional to its weight.
            let u = ((hash >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
            -u.ln() / f64::from(lane.weight)
        };
        self.lanes
            .iter()
            .enumerate()
            .filter(|(_, lane)| lane.weight > 0)
            .min_by(|(i, a), (j, b)| score(a, *i).total_cmp(&score(b, *j)))
            .map(|(_, lane)| lane)
    }
}

impl Plugin for TrafficSplit {
    fn name(&self) -> &'static str {
        DESCRIPTOR.name
    }

    fn phases(&self) -> Phases {
        Phases::ACCESS
    }

    fn access<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Step<'a> {
        // No rule that applies, or only zero weights: the route's own upstream, as APISIX.
        let lane = self
            .rules
            .iter()
            .find(|rule| rule.applies(&*ctx))
            .and_then(|rule| rule.pick(&*ctx));
        ctx.upstream_override = lane.and_then(|l| l.upstream.clone());
        Step::Continue
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::{build as build_plugin, refusal, TestRequest};

    /// The upstream key each of `count` requests is sent with (`-` for the route's own).
    fn picks(config: Value, request: &TestRequest, count: usize) -> Vec<String> {
        let plugin = build_plugin(&DESCRIPTOR, config).unwrap();
        (0..count)
            .map(|_| {
                let mut ctx = RequestCtx::new(request, "r1", None);
                assert!(matches!(plugin.access(&mut ctx), Step::Continue));
                ctx.upstream_override.as_deref().unwrap_or("-").to_owned()
            })
            .collect()
    }

    fn lanes(weights: &[u32]) -> Vec<Lane> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Lane {
                upstream: Some(Arc::from(format!("upstreams/{i}"))),
                weight,
            })
            .collect()
    }

    #[test]
    fn weights_interleave_smoothly_over_one_period() {
        assert_eq!(schedule(&lanes(&[1, 1])), [0, 1]);
        assert_eq!(schedule(&lanes(&[3, 1])), [0, 0, 1, 0]);
        // Reduced by their common divisor, zero weights never picked.
        assert_eq!(schedule(&lanes(&[50, 0, 50])), [0, 2]);
        assert_eq!(schedule(&lanes(&[5, 3, 2])).len(), 10);
        assert!(schedule(&lanes(&[0, 0])).is_empty());
        // Too long a period is scaled down, each lane keeping its turns.
        let long = schedule(&lanes(&[1_000_000, 1]));
        assert!(long.len() as u64 <= MAX_SCHEDULE + 1);
        assert_eq!(long.iter().filter(|&&l| l == 1).count(), 1);
    }

    #[test]
    fn requests_follow_the_weights_with_the_route_upstream_as_an_entry() {
        let config = json!({"rules": [{"weighted_upstreams": [
            {"upstream_id": "canary", "weight": 1},
            {"weight": 3}
        ]}]});
        let got = picks(config, &TestRequest::get("/"), 8);
        let canary = got.iter().filter(|k| *k == "upstreams/canary").count();
        assert_eq!((canary, got.len() - canary), (2, 6), "{got:?}");
        assert!(got.iter().all(|k| k == "upstreams/canary" || k == "-"));
    }

    #[test]
    fn the_first_rule_that_matches_decides_and_none_means_the_route_upstream() {
        let config = json!({"rules": [
            {
                "match": [
                    {"vars": [["http_x_lane", "==", "blue"]]},
                    {"vars": [["arg_lane", "==", "blue"]]}
                ],
                "weighted_upstreams": [{"upstream_id": 1}]
            },
            {
                "match": [{"vars": [["http_x_lane", "==", "green"]]}],
                "weighted_upstreams": [{"upstream": {"nodes": {"127.0.0.1:1990": 1}}}]
            }
        ]});
        let blue = TestRequest::get("/").header("x-lane", "blue");
        assert_eq!(picks(config.clone(), &blue, 2), ["upstreams/1"; 2]);
        let blue_by_arg = TestRequest::get("/?lane=blue");
        assert_eq!(picks(config.clone(), &blue_by_arg, 1), ["upstreams/1"]);
        let green = TestRequest::get("/").header("x-lane", "green");
        let inline = &picks(config.clone(), &green, 1)[0];
        assert!(inline.starts_with("traffic-split/"), "{inline}");
        assert_eq!(picks(config, &TestRequest::get("/"), 2), ["-"; 2]);
    }

    #[test]
    fn a_rule_whose_weights_are_all_zero_sends_to_the_route_upstream() {
        let config =
            json!({"rules": [{"weighted_upstreams": [{"upstream_id": "a", "weight": 0}]}]});
        assert_eq!(picks(config, &TestRequest::get("/"), 3), ["-"; 3]);
    }

    /// For `users` sticky keys, the lane each is sent to under `weights` (upstreams 0, 1, ...).
    fn sticky_lanes(weights: &[u32], users: usize) -> Vec<String> {
        let upstreams: Vec<Value> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| json!({"upstream_id": i.to_string(), "weight": w}))
            .collect();
        let config = json!({"rules": [{
            "sticky_key": "cookie_user",
            "weighted_upstreams": upstreams
        }]});
        let plugin = build_plugin(&DESCRIPTOR, config).unwrap();
        (0..users)
            .map(|u| {
                let request = TestRequest::get("/").header("cookie", &format!("user=u{u}"));
                let mut ctx = RequestCtx::new(&request, "r1", None);
                let _ = plugin.access(&mut ctx);
                ctx.upstream_override.unwrap().to_string()
            })
            .collect()
    }

    #[test]
    fn a_sticky_user_stays_put_and_a_weight_change_moves_only_whom_it_must() {
        const USERS: usize = 10_000;
        let before = sticky_lanes(&[90, 10], USERS);
        assert_eq!(
            before,
            sticky_lanes(&[90, 10], USERS),
            "the same lane every time"
        );
        // Binomial bounds: 10,000 draws at p = 0.1 have a standard deviation of 30.
        let canary = before.iter().filter(|l| *l == "upstreams/1").count();
        assert!((850..=1150).contains(&canary), "{canary} on the 10% lane");

        // 90/10 to 80/20: users only move to the lane that grew, about 10% of them.
        let after = sticky_lanes(&[80, 20], USERS);
        let moved: Vec<_> = before.iter().zip(&after).filter(|(b, a)| b != a).collect();
        assert!(moved
            .iter()
            .all(|(b, a)| *b == "upstreams/0" && *a == "upstreams/1"));
        assert!((850..=1150).contains(&moved.len()), "{} moved", moved.len());

        // A third lane takes its share from both, and moves nobody between the first two.
        let third = sticky_lanes(&[80, 20, 25], USERS);
        let moved = after.iter().zip(&third).filter(|(a, t)| a != t);
        assert!(moved.clone().all(|(_, t)| *t == "upstreams/2"));
        assert!(
            (1800..=2200).contains(&moved.count()),
            "about 20% to the new lane"
        );
    }

    #[test]
    fn the_sticky_hash_is_fixed_across_builds() {
        // Every node of a cluster must send a user to the same lane: this value may never
        // change.
        assert_eq!(stable_hash(&[b"u1", b"upstreams/a"]), 0x60e7_513b_a832_87cc);
    }

    #[test]
    fn a_request_without_the_sticky_variable_follows_the_weights() {
        let config = json!({"rules": [{
            "sticky_key": "cookie_user",
            "weighted_upstreams": [{"upstream_id": "a"}, {"weight": 1}]
        }]});
        let got = picks(config, &TestRequest::get("/"), 4);
        assert_eq!(got.iter().filter(|k| *k == "upstreams/a").count(), 2);
    }

    #[test]
    fn the_upstreams_are_named_once_with_the_keys_requests_carry() {
        let inline = json!({"nodes": {"127.0.0.1:1990": 1}});
        let config = json!({"rules": [
            {"weighted_upstreams": [{"upstream_id": "a"}, {"upstream": inline}, {"weight": 1}]},
            {"weighted_upstreams": [{"upstream_id": "a"}, {"upstream": inline}]}
        ]});
        let named = traffic_split_upstreams(&config);
        let keys: Vec<&str> = named.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert_eq!(keys[0], "upstreams/a");
        assert!(matches!(&named[0].target, SplitTarget::Id(id) if id == "a"));
        assert!(matches!(&named[1].target, SplitTarget::Inline(_)));
        let green = TestRequest::get("/");
        let carried = picks(
            json!({"rules": [{"weighted_upstreams": [{"upstream": inline}]}]}),
            &green,
            1,
        );
        assert_eq!(carried[0], keys[1]);
    }

    #[test]
    fn bad_configurations_are_refused_with_their_field() {
        let cases = [
            (
                json!({"rules": [{"weighted_upstreams": []}]}),
                "rules[0].weighted_upstreams: must have 1 to 20 items",
            ),
            (
                json!({"rules": [{"weighted_upstreams": [{"upstream_id": "a", "upstream": {"nodes": {}}}]}]}),
                "rules[0].weighted_upstreams[0]: `upstream_id` and `upstream` are exclusive",
            ),
            (
                json!({"rules": [{"weighted_upstreams": [{"upstream_id": "a b"}]}]}),
                "rules[0].weighted_upstreams[0].upstream_id: not a valid id",
            ),
            (
                json!({"rules": [{"weighted_upstreams": [{"weight": 1}, {"upstream": {"nodes": {"127.0.0.1:80": 1}, "retries": 1000}}]}]}),
                "rules[0].weighted_upstreams[1].upstream.retries: must be 0..100",
            ),
            (
                json!({"rules": [{"sticky_key": "", "weighted_upstreams": [{"weight": 1}]}]}),
                "rules[0].sticky_key: must not be empty",
            ),
        ];
        for (config, expected) in cases {
            assert_eq!(refusal(&DESCRIPTOR, config).to_string(), expected);
        }
        for (config, field) in [
            (
                json!({"rules": [{"weighted_upstreams": [{"weight": -1}]}]}),
                "rules[0].weighted_upstreams[0].weight",
            ),
            (
                json!({"rules": [{"match": [{"vars": [["arg_a", "~~", "("]]}]}]}),
                "rules[0].match[0].vars",
            ),
            (json!({"rules": [{"unknown": 1}]}), "rules[0]"),
        ] {
            let refused = refusal(&DESCRIPTOR, config).to_string();
            assert!(refused.starts_with(field), "{refused}");
        }
    }
}
