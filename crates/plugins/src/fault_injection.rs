//! `fault-injection`: delays requests, aborts them with a configured answer, or both, for the
//! requests that match `vars` and a share of them, to see how clients cope with a slow or
//! failing service.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pylon_model::expr::Expr;
use pylon_model::FieldError;
use pylon_plugin::{Call, FailurePolicy, Phases, Plugin, Reply, RequestCtx, Step, Template};
use pylon_router::RequestView;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{parse, schema_of};
use crate::descriptor::{BuildEnv, Descriptor};
use crate::header_ops::{check_name, header_value, template, Scalar};

pub(crate) const DESCRIPTOR: Descriptor = Descriptor {
    name: "fault-injection",
    priority: 11000,
    schema: schema_of::<FaultInjectionConfig>,
    build,
    credential: None,
    metadata: None,
};

/// The longest delay, in seconds. APISIX sets none; past a few minutes a client or a proxy in
/// front has long given up, and each waiting request holds its connection meanwhile.
const MAX_DELAY_SECS: f64 = 300.0;

/// The most `vars` alternatives a fault takes (APISIX's `maxItems`).
const MAX_VARS: usize = 20;

/// One of `abort` and `delay` is required. With both, the delay comes first.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("minProperties" = 1))]
struct FaultInjectionConfig {
    /// Answer the request in the upstream's place.
    abort: Option<AbortConfig>,
    /// Hold the request before it goes on.
    delay: Option<DelayConfig>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct AbortConfig {
    /// The status of the answer.
    #[schemars(range(min = 200, max = 999))]
    http_status: u16,
    /// The answer's body, with `$var`s. Unset: an empty body.
    body: Option<String>,
    /// Headers of the answer, with `$var`s.
    #[schemars(extend("minProperties" = 1))]
    headers: Option<BTreeMap<String, Scalar>>,
    /// The share of requests aborted, in percent. Unset: all of them.
    #[schemars(range(max = 100))]
    percentage: Option<u8>,
    /// `vars` expressions: the fault applies to requests that match one of them. An empty
    /// list matches no request.
    #[schemars(with = "Option<Vec<Vec<Value>>>", length(max = 20))]
    vars: Option<Vec<Value>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct DelayConfig {
    /// Seconds to hold the request, fractions allowed; at most 300.
    #[schemars(range(min = 0, max = 300))]
    duration: f64,
    /// The share of requests delayed, in percent. Unset: all of them.
    #[schemars(range(max = 100))]
    percentage: Option<u8>,
    /// `vars` expressions: the fault applies to requests that match one of them. An empty
    /// list matches no request.
    #[schemars(with = "Option<Vec<Vec<Value>>>", length(max = 20))]
    vars: Option<Vec<Value>>,
}

fn build(config: &Value, _env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    let config: FaultInjectionConfig = parse(config)?;
    if config.abort.is_none() && config.delay.is_none() {
        return Err(FieldError::new(
            "",
            "one of `abort` and `delay` is required",
        ));
    }
    let abort = config.abort.map(abort).transpose()?;
    let delay = config.delay.map(delay).transpose()?;
    Ok(Arc::new(FaultInjection { abort, delay }))
}

fn abort(config: AbortConfig) -> Result<Abort, FieldError> {
    if !(200..=999).contains(&config.http_status) {
        return Err(FieldError::new(
            "abort.http_status",
            "must be from 200 to 999",
        ));
    }
    let mut headers = Vec::new();
    if let Some(configured) = &config.headers {
        if configured.is_empty() {
            return Err(FieldError::new(
                "abort.headers",
                "must have at least one header",
            ));
        }
        for (name, value) in configured {
            let path = format!("abort.headers.{name}");
            check_name(&path, name)?;
            headers.push((name.clone(), template(&path, &value.text())?));
        }
    }
    let body = config.body.as_deref().map(Template::parse);
    // nginx's `default_type`, which APISIX's abort answers get.
    let default_type = body.is_some()
        && !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("content-type"));
    if default_type {
        headers.push(("Content-Type".into(), Template::parse("text/plain")));
    }
    Ok(Abort {
        trigger: trigger("abort", config.percentage, config.vars)?,
        status: config.http_status,
        body,
        headers,
    })
}

fn delay(config: DelayConfig) -> Result<Delay, FieldError> {
    if !(0.0..=MAX_DELAY_SECS).contains(&config.duration) {
        return Err(FieldError::new(
            "delay.duration",
            format!("must be from 0 to {MAX_DELAY_SECS} seconds"),
        ));
    }
    Ok(Delay {
        trigger: trigger("delay", config.percentage, config.vars)?,
        duration: Duration::from_secs_f64(config.duration),
    })
}

fn trigger(
    fault: &str,
    percentage: Option<u8>,
    vars: Option<Vec<Value>>,
) -> Result<Trigger, FieldError> {
    let percentage = percentage.unwrap_or(100);
    if percentage > 100 {
        return Err(FieldError::new(
            format!("{fault}.percentage"),
            "must be from 0 to 100",
        ));
    }
    let vars = match vars {
        Some(vars) if vars.len() > MAX_VARS => {
            return Err(FieldError::new(
                format!("{fault}.vars"),
                format!("must have at most {MAX_VARS} expressions"),
            ));
        }
        Some(vars) => Some(
            vars.iter()
                .enumerate()
                .map(|(i, expr)| {
                    Expr::parse(expr).map_err(|e| e.within(&format!("{fault}.vars[{i}]")))
                })
                .collect::<Result<_, _>>()?,
        ),
        None => None,
    };
    Ok(Trigger { vars, percentage })
}

/// Which requests a fault applies to.
struct Trigger {
    /// Alternatives: a request that matches any one qualifies. `None`: every request.
    vars: Option<Vec<Expr>>,
    /// Of the qualifying requests, the share (in percent) picked at random.
    percentage: u8,
}

impl Trigger {
    fn matches(&self, request: &impl RequestView) -> bool {
        self.vars.as_ref().is_none_or(|alternatives| {
            alternatives
                .iter()
                .any(|expr| pylon_router::eval_vars(expr, request))
        })
    }

    /// A fresh draw each time, so the delay's and the abort's are independent, as APISIX's
    /// `random(1, 100) <= percentage`.
    fn sampled(&self) -> bool {
        self.percentage >= 100 || fastrand::u8(1..=100) <= self.percentage
    }
}

struct Abort {
    trigger: Trigger,
    status: u16,
    body: Option<Template>,
    headers: Vec<(String, Template)>,
}

impl Abort {
    /// The answer, when this request is one of the sampled share.
    fn reply(&self, ctx: &RequestCtx<'_>) -> Option<Reply> {
        if !self.trigger.sampled() {
            return None;
        }
        let body = self.body.as_ref().map_or_else(Bytes::new, |body| {
            Bytes::from(body.render(ctx).into_owned())
        });
        let headers = self
            .headers
            .iter()
            .map(|(name, value)| (name.clone(), header_value(value.render(ctx))))
            .collect();
        Some(Reply {
            status: self.status,
            headers,
            body,
        })
    }
}

struct Delay {
    trigger: Trigger,
    duration: Duration,
}

struct FaultInjection {
    abort: Option<Abort>,
    delay: Option<Delay>,
}

impl FaultInjection {
    /// How long this request is held: `None` when the delay does not apply to it.
    fn delay_for(&self, request: &impl RequestView) -> Option<Duration> {
        self.delay
            .as_ref()
            .filter(|delay| !delay.duration.is_zero())
            .filter(|delay| delay.trigger.matches(request) && delay.trigger.sampled())
            .map(|delay| delay.duration)
    }
}

impl Plugin for FaultInjection {
    fn name(&self) -> &'static str {
        DESCRIPTOR.name
    }

    fn phases(&self) -> Phases {
        Phases::REWRITE
    }

    fn rewrite<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Step<'a> {
        // As APISIX: both faults' `vars` are matched first, the abort sampled after the delay.
        let abort = self
            .abort
            .as_ref()
            .filter(|abort| abort.trigger.matches(ctx));
        let Some(duration) = self.delay_for(ctx) else {
            return match abort.and_then(|abort| abort.reply(ctx)) {
                Some(reply) => Step::Reply(reply),
                None => Step::Continue,
            };
        };
        Step::Call(Call {
            work: Box::pin(async move {
                tokio::time::sleep(duration).await;
                Ok(abort.and_then(|abort| abort.reply(ctx)))
            }),
            // The wait is the plugin's own, on the same clock: the bound only has to be past
            // it. Were it ever reached, the request would go on (fail open), never be refused.
            timeout: duration + Duration::from_secs(1),
            policy: FailurePolicy::Open,
        })
    }
}

#[cfg(test)]
mod tests {
    use pylon_plugin::{ChainBuilder, Entry, Meta, RequestPhase};
    use serde_json::json;

    use super::*;
    use crate::testing::{build as build_plugin, refusal, replied, reply_header, TestRequest};

    /// What `rewrite` decides for `request`, for a configuration without a delay.
    fn rewrite(config: Value, request: &TestRequest) -> Option<Reply> {
        let plugin = build_plugin(&DESCRIPTOR, config).unwrap();
        let mut ctx = RequestCtx::new(request, "r1", None);
        replied(plugin.rewrite(&mut ctx))
    }

    /// Runs the rewrite phase through a chain, so that a delay is waited out.
    async fn run(config: Value, request: &TestRequest) -> Option<Reply> {
        let plugin = build_plugin(&DESCRIPTOR, config).unwrap();
        let mut chain = ChainBuilder::new();
        chain.add(Entry::new(plugin, DESCRIPTOR.priority, Meta::default()));
        let mut ctx = RequestCtx::new(request, "r1", None);
        chain
            .build()
            .run(RequestPhase::Rewrite, &mut ctx, None)
            .await
    }

    #[test]
    fn an_abort_answers_with_its_status_body_and_headers_rendered() {
        let request = TestRequest::get("/p?name=ann").header("X-User", "bob");
        let reply = rewrite(
            json!({"abort": {
                "http_status": 503,
                "body": "down for $arg_name and ${http_x_user}!",
                "headers": {"X-Fault": "$uri", "Retry-After": 5}
            }}),
            &request,
        )
        .unwrap();
        assert_eq!(reply.status, 503);
        assert_eq!(&reply.body[..], b"down for ann and bob!");
        assert_eq!(reply_header(&reply, "x-fault"), Some("/p"));
        assert_eq!(reply_header(&reply, "retry-after"), Some("5"));
        assert_eq!(reply_header(&reply, "content-type"), Some("text/plain"));

        let bare = rewrite(json!({"abort": {"http_status": 200}}), &request).unwrap();
        assert_eq!((bare.status, bare.body.len()), (200, 0));
        assert_eq!(bare.headers, []);
        let typed = rewrite(
            json!({"abort": {"http_status": 200, "body": "{}",
                "headers": {"content-type": "application/json"}}}),
            &request,
        )
        .unwrap();
        assert_eq!(
            typed.headers,
            [("content-type".into(), "application/json".into())]
        );
    }

    #[test]
    fn a_rendered_header_value_stays_one_header() {
        let request = TestRequest::get("/?v=a%0D%0AX-Evil:%201");
        let config = json!({"abort": {"http_status": 403, "headers": {"X-V": "$arg_v"}}});
        let reply = rewrite(config, &request).unwrap();
        assert_eq!(reply_header(&reply, "x-v"), Some("aX-Evil: 1"));
    }

    #[test]
    fn vars_are_alternatives_each_of_which_must_hold_whole() {
        let config = json!({"abort": {"http_status": 403, "vars": [
            [["arg_name", "==", "jack"], ["arg_age", "==", 18]],
            [["http_x_fault", "==", "yes"]]
        ]}});
        let aborted = |request: TestRequest| rewrite(config.clone(), &request).is_some();
        assert!(aborted(TestRequest::get("/?name=jack&age=18")));
        assert!(aborted(TestRequest::get("/").header("X-Fault", "yes")));
        assert!(!aborted(TestRequest::get("/?name=jack")));
        assert!(!aborted(
            TestRequest::get("/?age=18").header("X-Fault", "no")
        ));
        // As APISIX: no alternative, no match.
        let none = json!({"abort": {"http_status": 403, "vars": []}});
        assert!(rewrite(none, &TestRequest::get("/")).is_none());
    }

    #[test]
    fn percentage_0_never_applies_and_100_always() {
        let request = TestRequest::get("/");
        for _ in 0..200 {
            let never = json!({"abort": {"http_status": 403, "percentage": 0}});
            assert!(rewrite(never, &request).is_none());
            let always = json!({"abort": {"http_status": 403, "percentage": 100}});
            assert!(rewrite(always, &request).is_some());
        }
        let plugin = build_plugin(
            &DESCRIPTOR,
            json!({"delay": {"duration": 1, "percentage": 0}}),
        )
        .unwrap();
        for _ in 0..200 {
            let mut ctx = RequestCtx::new(&request, "r1", None);
            assert!(matches!(plugin.rewrite(&mut ctx), Step::Continue));
        }
        let plugin = build_plugin(
            &DESCRIPTOR,
            json!({"delay": {"duration": 1, "percentage": 100}}),
        )
        .unwrap();
        for _ in 0..200 {
            let mut ctx = RequestCtx::new(&request, "r1", None);
            assert!(matches!(plugin.rewrite(&mut ctx), Step::Call(_)));
        }
    }

    #[test]
    fn a_percentage_picks_that_share_of_requests() {
        let plugin = build_plugin(
            &DESCRIPTOR,
            json!({"abort": {"http_status": 403, "percentage": 30}}),
        )
        .unwrap();
        let request = TestRequest::get("/");
        let n = 10_000;
        let aborted = (0..n)
            .filter(|_| {
                let mut ctx = RequestCtx::new(&request, "r1", None);
                replied(plugin.rewrite(&mut ctx)).is_some()
            })
            .count();
        // Binomial(10000, 0.3): mean 3000, standard deviation about 46; six of them either
        // side fail a fair sampler about once in 500 million runs.
        assert!((2725..=3275).contains(&aborted), "{aborted} of {n}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_delay_holds_the_request_then_lets_it_go_on() {
        let request = TestRequest::get("/");
        let started = tokio::time::Instant::now();
        assert_eq!(
            run(json!({"delay": {"duration": 1.5}}), &request).await,
            None
        );
        assert!(started.elapsed() >= Duration::from_millis(1500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_delay_comes_before_the_abort() {
        let request = TestRequest::get("/?n=1");
        let config = json!({
            "delay": {"duration": 2},
            "abort": {"http_status": 418, "body": "late $arg_n"}
        });
        let started = tokio::time::Instant::now();
        let reply = run(config, &request).await.unwrap();
        assert!(started.elapsed() >= Duration::from_secs(2));
        assert_eq!((reply.status, &reply.body[..]), (418, &b"late 1"[..]));
    }

    #[test]
    fn each_fault_has_its_own_vars() {
        let plugin = build_plugin(
            &DESCRIPTOR,
            json!({
                "delay": {"duration": 2, "vars": [[["http_x_slow", "==", "1"]]]},
                "abort": {"http_status": 500, "vars": [[["arg_fail", "==", "1"]]]}
            }),
        )
        .unwrap();
        let step = |request: &TestRequest| {
            let mut ctx = RequestCtx::new(request, "r1", None);
            let step = match plugin.rewrite(&mut ctx) {
                Step::Continue => "continue",
                Step::Reply(_) => "abort",
                Step::Call(_) => "delay",
            };
            step
        };
        assert_eq!(step(&TestRequest::get("/?fail=1")), "abort");
        assert_eq!(step(&TestRequest::get("/").header("X-Slow", "1")), "delay");
        assert_eq!(step(&TestRequest::get("/")), "continue");
    }

    #[test]
    fn a_zero_delay_is_no_wait() {
        let plugin = build_plugin(&DESCRIPTOR, json!({"delay": {"duration": 0}})).unwrap();
        let request = TestRequest::get("/");
        let mut ctx = RequestCtx::new(&request, "r1", None);
        assert!(matches!(plugin.rewrite(&mut ctx), Step::Continue));
    }

    #[test]
    fn bad_configurations_are_refused_with_their_path() {
        let cases = [
            (json!({}), ""),
            (json!({"abort": null}), ""),
            (json!({"slow": {}}), "slow"),
            (json!({"abort": {}}), "abort"),
            (json!({"abort": {"http_status": 199}}), "abort.http_status"),
            (json!({"abort": {"http_status": 1000}}), "abort.http_status"),
            (
                json!({"abort": {"http_status": "500"}}),
                "abort.http_status",
            ),
            (
                json!({"abort": {"http_status": 500, "body": 1}}),
                "abort.body",
            ),
            (
                json!({"abort": {"http_status": 500, "headers": {}}}),
                "abort.headers",
            ),
            (
                json!({"abort": {"http_status": 500, "headers": {"X:A": "1"}}}),
                "abort.headers.X:A",
            ),
            (
                json!({"abort": {"http_status": 500, "headers": {"X-A": "a\nb"}}}),
                "abort.headers.X-A",
            ),
            (
                json!({"abort": {"http_status": 500, "headers": {"X-A": true}}}),
                "abort.headers.X-A",
            ),
            (
                json!({"abort": {"http_status": 500, "percentage": 101}}),
                "abort.percentage",
            ),
            (
                json!({"abort": {"http_status": 500, "percentage": -1}}),
                "abort.percentage",
            ),
            (
                json!({"abort": {"http_status": 500, "vars": {}}}),
                "abort.vars",
            ),
            (
                json!({"abort": {"http_status": 500, "vars": [[["a", "==", "1"]], "x"]}}),
                "abort.vars[1]",
            ),
            (
                json!({"abort": {"http_status": 500, "vars": [[["a", "~~", "("]]]}}),
                "abort.vars[0][0][2]",
            ),
            (
                json!({"abort": {"http_status": 500, "vars": vec![json!([]); 21]}}),
                "abort.vars",
            ),
            (json!({"abort": {"http_status": 500, "x": 1}}), "abort.x"),
            (json!({"delay": {}}), "delay"),
            (json!({"delay": {"duration": -0.5}}), "delay.duration"),
            (json!({"delay": {"duration": 300.5}}), "delay.duration"),
            (json!({"delay": {"duration": "1"}}), "delay.duration"),
            (
                json!({"delay": {"duration": 1, "percentage": 50.5}}),
                "delay.percentage",
            ),
            (
                json!({"delay": {"duration": 1, "vars": [[["a", "nope", "1"]]]}}),
                "delay.vars[0][0][1]",
            ),
        ];
        for (config, path) in cases {
            assert_eq!(refusal(&DESCRIPTOR, config.clone()).path, path, "{config}");
        }
    }

    #[test]
    fn what_apisix_accepts_is_accepted() {
        for config in [
            json!({"abort": {"http_status": 200, "body": "Fault Injection!"}}),
            json!({"delay": {"duration": 3}}),
            json!({"delay": {"duration": 0.1, "percentage": 50}}),
            json!({
                "abort": {"http_status": 403, "body": "Fault Injection!\n",
                    "vars": [[["arg_name", "==", "jack"]]]},
                "delay": {"duration": 2, "vars": [[["http_age", "==", "18"]]]}
            }),
            json!({"abort": {"http_status": 500}, "_meta": {"priority": 1}}),
        ] {
            build_plugin(&DESCRIPTOR, config.clone()).unwrap_or_else(|e| panic!("{config}: {e}"));
        }
    }
}
