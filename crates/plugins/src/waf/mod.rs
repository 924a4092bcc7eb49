//! `waf`: inspects each request's path, query arguments, headers, cookies and the start of its
//! body against a rule set (SQL injection, XSS, path traversal, command injection, PHP code
//! injection) and blocks it, or only logs it, when the rules it matches add up to the anomaly
//! threshold.
//!
//! The body is looked at before any of it goes upstream: the gateway holds up to
//! `body_limit` bytes of it and hands them over as they arrive ([`body`]); a longer body's
//! rest is passed, or the request refused, as `over_body_limit` says.
//!
//! Every input is brought to one canonical form first ([`normalize`]), then matched by one
//! automaton over every literal and one set of every regex ([`engine`]), compiled when the
//! configuration is: a request costs one pass per input, not one per rule. The rules are the
//! shipped set ([`rules`]) and those of `plugin_metadata/waf`; a route can switch rules off by
//! id.

mod body;
#[cfg(test)]
mod corpus;
mod engine;
mod normalize;
mod rules;

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use pylon_model::FieldError;
use pylon_plugin::{Phases, Plugin, Reply, RequestBodyInspector, RequestCtx, Step};
use pylon_router::RequestView;
use regex::Regex;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{parse, refusal, schema_of};
use crate::descriptor::{BuildEnv, Descriptor, Metadata, MetadataSpec};
use body::{BodyKind, BodyScanner};
use engine::{Hits, Pattern, RuleSet, RuleSpec, Targets};
use normalize::normalize;

pub(crate) const DESCRIPTOR: Descriptor = Descriptor {
    name: "waf",
    // After `real-ip` and `ip-restriction` (the client is known), before authentication.
    priority: 2950,
    schema: schema_of::<WafConfig>,
    build,
    credential: None,
    metadata: Some(MetadataSpec {
        schema: schema_of::<WafMetadata>,
        parse: parse_metadata,
    }),
};

/// Requests refused, and those `mode: log` let through that would have been, since the
/// process started: one process-wide count each (a relaxed add per verdict, none per request
/// that passes), reported by the node's status.
static REFUSED: AtomicU64 = AtomicU64::new(0);
static WOULD_REFUSE: AtomicU64 = AtomicU64::new(0);

/// What the `waf` plugins decided since the process started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WafVerdicts {
    pub refused: u64,
    /// Let through in log mode.
    pub would_refuse: u64,
}

pub fn waf_verdicts() -> WafVerdicts {
    WafVerdicts {
        refused: REFUSED.load(Ordering::Relaxed),
        would_refuse: WOULD_REFUSE.load(Ordering::Relaxed),
    }
}

/// The shipped rules, compiled once per process.
static DEFAULT_SET: LazyLock<Arc<RuleSet>> = LazyLock::new(|| {
    Arc::new(RuleSet::compile(rules::DEFAULT_RULES.to_vec()).expect("the shipped rules compile"))
});

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Mode {
    /// Refuse a request whose score reaches the threshold.
    #[default]
    Block,
    /// Let every request through, and log what would have been refused: for trying a rule
    /// set on live traffic.
    Log,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct WafConfig {
    #[serde(default)]
    mode: Mode,
    /// The score at which a request is refused; each rule that matches adds its own (the
    /// shipped rules 5 each: one is enough with the default).
    #[serde(default = "default_threshold")]
    #[schemars(range(min = 1, max = 10000))]
    anomaly_threshold: u32,
    /// The status of a refused request.
    #[serde(default = "default_rejected_code")]
    #[schemars(range(min = 200, max = 599))]
    rejected_code: u16,
    /// The refusal's body, as `{"error_msg": ...}`. Unset: an empty body.
    #[schemars(length(min = 1))]
    rejected_msg: Option<String>,
    /// Ids of rules that do not apply on this route (a known false positive, say).
    #[serde(default)]
    disabled_rules: Vec<u32>,
    /// How much of a request body is inspected, in bytes (at most 16 MiB); the gateway holds
    /// that much before sending the request on. 0: bodies are not inspected.
    #[serde(default = "default_body_limit")]
    #[schemars(range(max = 16777216))]
    body_limit: usize,
    /// What happens to a body longer than `body_limit`: `pass` (its rest goes uninspected)
    /// or `block`.
    #[serde(default)]
    over_body_limit: OverLimit,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum OverLimit {
    #[default]
    Pass,
    Block,
}

fn default_body_limit() -> usize {
    64 * 1024
}

fn default_threshold() -> u32 {
    5
}

fn default_rejected_code() -> u16 {
    403
}

/// `plugin_metadata/waf`: rules of one's own, beside the shipped ones or instead of them.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct WafMetadata {
    /// Whether the shipped rules apply.
    #[serde(default = "yes")]
    default_rules: bool,
    #[serde(default)]
    rules: Vec<OwnRule>,
}

fn yes() -> bool {
    true
}

/// A rule of the metadata. Inputs are matched in their canonical form (decoded, lowercase,
/// comments and runs of whitespace as one space), so a pattern is written in that form.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct OwnRule {
    /// Unique among all rules, the shipped ones included.
    #[schemars(range(min = 1))]
    id: u32,
    /// A regular expression searched for in the input...
    regex: Option<String>,
    /// ...or a lowercase string found anywhere in it.
    literal: Option<String>,
    /// Where to look: `path`, `arg_names`, `args`, `headers`, `cookies`, `body`. Default:
    /// all but `path`.
    targets: Option<Vec<String>>,
    /// What a match adds to the score.
    #[serde(default = "default_threshold")]
    #[schemars(range(min = 1, max = 10000))]
    score: u32,
    /// What it detects, for the log.
    class: Option<String>,
    message: Option<String>,
}

/// The metadata, parsed: the rule set every `waf` instance uses.
struct SharedRules(Arc<RuleSet>);

fn parse_metadata(metadata: &Value) -> Result<Metadata, FieldError> {
    let metadata: WafMetadata = parse(metadata)?;
    let mut specs: Vec<RuleSpec> = if metadata.default_rules {
        rules::DEFAULT_RULES.to_vec()
    } else {
        Vec::new()
    };
    for (i, rule) in metadata.rules.into_iter().enumerate() {
        let at = |field: &str| format!("rules[{i}].{field}");
        if specs.iter().any(|s| s.id == rule.id) {
            return Err(FieldError::new(
                at("id"),
                format!("rule {} exists already", rule.id),
            ));
        }
        let pattern = match (rule.regex, rule.literal) {
            (Some(regex), None) => {
                Regex::new(&regex).map_err(|e| FieldError::new(at("regex"), e.to_string()))?;
                Pattern::Regex {
                    text: Cow::Owned(regex),
                    needs_symbol: false,
                }
            }
            (None, Some(literal)) if literal.is_empty() => {
                return Err(FieldError::new(at("literal"), "must not be empty"))
            }
            (None, Some(literal)) if literal != literal.to_lowercase() => {
                return Err(FieldError::new(
                    at("literal"),
                    "must be lowercase: inputs are matched lowercased",
                ))
            }
            (None, Some(literal)) => Pattern::Literals(Cow::Owned(vec![Cow::Owned(literal)])),
            _ => {
                return Err(FieldError::new(
                    format!("rules[{i}]"),
                    "needs one of `regex` and `literal`",
                ))
            }
        };
        let targets = match rule.targets {
            None => Targets::DATA,
            Some(names) if names.is_empty() => {
                return Err(FieldError::new(at("targets"), "must not be empty"))
            }
            Some(names) => {
                let mut targets = Targets::NONE;
                for (j, name) in names.iter().enumerate() {
                    let (_, target) =
                        Targets::NAMES
                            .iter()
                            .find(|(n, _)| n == name)
                            .ok_or_else(|| {
                                let names = Targets::NAMES.map(|(name, _)| name);
                                FieldError::new(
                                    at(&format!("targets[{j}]")),
                                    format!("must be one of {}", names.join(", ")),
                                )
                            })?;
                    targets = targets.union(*target);
                }
                targets
            }
        };
        if !(1..=10_000).contains(&rule.score) {
            return Err(FieldError::new(at("score"), "must be 1..10000"));
        }
        specs.push(RuleSpec {
            id: rule.id,
            class: Cow::Owned(rule.class.unwrap_or_else(|| "custom".to_owned())),
            targets,
            pattern,
            score: rule.score,
            message: Cow::Owned(rule.message.unwrap_or_default()),
            command_line: false,
        });
    }
    Ok(Arc::new(SharedRules(Arc::new(RuleSet::compile(specs)?))))
}

fn build(config: &Value, env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    Ok(Arc::new(Waf(Arc::new(settings(config, env)?))))
}

/// A configuration, checked and built.
fn settings(config: &Value, env: &BuildEnv<'_>) -> Result<Settings, FieldError> {
    let config: WafConfig = parse(config)?;
    let rules = match env.metadata::<SharedRules>() {
        Some(SharedRules(rules)) => rules.clone(),
        None => DEFAULT_SET.clone(),
    };
    if !(1..=10_000).contains(&config.anomaly_threshold) {
        return Err(FieldError::new("anomaly_threshold", "must be 1..10000"));
    }
    let refusal = refusal(config.rejected_code, config.rejected_msg.as_deref())?;
    if config.body_limit > 16 << 20 {
        return Err(FieldError::new(
            "body_limit",
            "must be at most 16777216 (16 MiB)",
        ));
    }
    let mut disabled = vec![false; rules.rules().len()];
    for (i, id) in config.disabled_rules.iter().enumerate() {
        let index = rules.position(*id).ok_or_else(|| {
            FieldError::new(format!("disabled_rules[{i}]"), format!("no rule {id}"))
        })?;
        disabled[index] = true;
    }
    Ok(Settings {
        rules,
        disabled: disabled.into(),
        mode: config.mode,
        threshold: config.anomaly_threshold,
        refusal,
        body_limit: config.body_limit,
        over_body_limit: config.over_body_limit,
    })
}

/// One `waf` configuration, built; shared with the body inspectors of its requests.
struct Settings {
    rules: Arc<RuleSet>,
    /// By rule index: switched off on this route.
    disabled: Arc<[bool]>,
    mode: Mode,
    threshold: u32,
    refusal: Reply,
    body_limit: usize,
    over_body_limit: OverLimit,
}

struct Waf(Arc<Settings>);

/// What the head of a request matched, for its body's inspection to add to.
struct HeadHits(Hits);

impl Settings {
    /// Whether `hits` decide the request in block mode: nothing more would change that.
    fn decided(&self, hits: &Hits) -> bool {
        self.mode == Mode::Block && hits.score >= self.threshold
    }

    /// What `request`'s head matches, input by input; stops once that decides the request.
    fn inspect(&self, request: &impl RequestView) -> Hits {
        let mut hits = Hits::new(self.disabled.clone());
        let mut canonical = String::new();
        let enough = |hits: &Hits| self.decided(hits);
        let mut scan = |input: &[u8], plus_is_space: bool, target: Targets, hits: &mut Hits| {
            normalize(input, plus_is_space, &mut canonical);
            self.rules.scan(&canonical, target, hits);
        };
        scan(request.path().as_bytes(), false, Targets::PATH, &mut hits);
        if self.rules.looks_at(Targets::RAW_URI) {
            if let Some(raw) = request.var("request_uri") {
                self.rules
                    .scan(&raw.to_ascii_lowercase(), Targets::RAW_URI, &mut hits);
            }
        }
        if let Some(query) = request.var("query_string") {
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                scan(name.as_bytes(), true, Targets::ARG_NAMES, &mut hits);
                scan(value.as_bytes(), true, Targets::ARG_VALUES, &mut hits);
                if enough(&hits) {
                    return hits;
                }
            }
        }
        request.for_each_header(&mut |name, value| {
            if enough(&hits) {
                return;
            }
            if name.eq_ignore_ascii_case("cookie") {
                for pair in value.split(|&b| b == b';') {
                    let pair = pair.trim_ascii();
                    let value = pair.splitn(2, |&b| b == b'=').nth(1).unwrap_or(pair);
                    scan(value, false, Targets::COOKIES, &mut hits);
                }
            } else {
                scan(value, false, Targets::HEADERS, &mut hits);
            }
        });
        hits
    }

    /// The refusal for `hits` at or past the threshold (logged), or `None` to let the request
    /// on (in log mode, logged as what would have been refused).
    fn verdict(&self, hits: &Hits, route: &str) -> Option<Reply> {
        if hits.score < self.threshold {
            return None;
        }
        let matched = self.describe(hits);
        match self.mode {
            Mode::Block => {
                REFUSED.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(route, score = hits.score, "waf: refused: {matched}");
                Some(self.refusal.clone())
            }
            Mode::Log => {
                WOULD_REFUSE.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    route,
                    score = hits.score,
                    "waf: would refuse (mode: log): {matched}"
                );
                None
            }
        }
    }

    /// The rules `hits` matched, for the log: `1001 sqli (args): ..., 2001 xss (headers): ...`.
    fn describe(&self, hits: &Hits) -> String {
        let rules = self.rules.rules();
        let names = |targets: Targets| {
            Targets::NAMES
                .iter()
                .find(|(_, t)| *t == targets)
                .map_or("?", |(n, _)| n)
        };
        hits.matched
            .iter()
            .map(|&(rule, target)| {
                let rule = &rules[rule];
                format!(
                    "{} {} ({}): {}",
                    rule.id,
                    rule.class,
                    names(target),
                    rule.message
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Plugin for Waf {
    fn name(&self) -> &'static str {
        DESCRIPTOR.name
    }

    fn phases(&self) -> Phases {
        Phases::REWRITE | Phases::REQUEST_BODY
    }

    fn rewrite<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Step<'a> {
        let hits = self.0.inspect(&*ctx);
        if let Some(refusal) = self.0.verdict(&hits, ctx.route_id()) {
            return Step::Reply(refusal);
        }
        // In log mode, what the head matched is logged once: the body starts afresh.
        if hits.score < self.0.threshold {
            ctx.set_state(DESCRIPTOR.name, HeadHits(hits));
        }
        Step::Continue
    }

    fn request_body(&self, ctx: &RequestCtx<'_>) -> Option<Box<dyn RequestBodyInspector>> {
        if self.0.body_limit == 0 && self.0.over_body_limit == OverLimit::Pass {
            return None;
        }
        let hits = match ctx.state::<HeadHits>(DESCRIPTOR.name) {
            Some(HeadHits(head)) => head.clone(),
            None => Hits::new(self.0.disabled.clone()),
        };
        let content_type = ctx.header("content-type");
        Some(Box::new(BodyInspection {
            settings: self.0.clone(),
            scanner: BodyScanner::new(BodyKind::of(content_type.as_deref())),
            hits,
            route: ctx.route_id().to_owned(),
        }))
    }
}

/// One request body's inspection.
struct BodyInspection {
    settings: Arc<Settings>,
    scanner: BodyScanner,
    /// The head's and, so far, the body's.
    hits: Hits,
    route: String,
}

impl RequestBodyInspector for BodyInspection {
    fn limit(&self) -> usize {
        self.settings.body_limit
    }

    fn inspect(&mut self, piece: &[u8]) -> Option<Reply> {
        let settings = &self.settings;
        self.scanner.feed(piece, &settings.rules, &mut self.hits);
        if settings.decided(&self.hits) {
            return settings.verdict(&self.hits, &self.route);
        }
        None
    }

    fn finish(&mut self, whole: bool) -> Option<Reply> {
        let settings = &self.settings;
        self.scanner.finish(&settings.rules, &mut self.hits);
        if let Some(refusal) = settings.verdict(&self.hits, &self.route) {
            return Some(refusal);
        }
        if !whole && settings.over_body_limit == OverLimit::Block {
            REFUSED.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                route = self.route,
                limit = settings.body_limit,
                "waf: refused: a body longer than body_limit"
            );
            return Some(settings.refusal.clone());
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::{
        build as build_plugin, build_with_metadata, refusal, replied, TestRequest,
    };

    fn refused(plugin: &Arc<dyn Plugin>, request: &TestRequest) -> bool {
        let mut ctx = RequestCtx::new(request, "r1", None);
        replied(plugin.rewrite(&mut ctx)).is_some()
    }

    fn waf(config: Value) -> Arc<dyn Plugin> {
        build_plugin(&DESCRIPTOR, config).unwrap()
    }

    #[test]
    fn each_class_is_refused_wherever_it_hides() {
        let plugin = waf(json!({}));
        let attacks = [
            TestRequest::get("/search?q=%27%20OR%201=1--"),
            TestRequest::get("/search?q=1'+Or/**/1=1"),
            TestRequest::get("/items?id=1%20UNION%20SELECT%20username,password%20FROM%20users"),
            TestRequest::get("/items?id=1;%20DROP%20TABLE%20users"),
            TestRequest::get("/a?q=%3Cscript%3Ealert(1)%3C/script%3E"),
            TestRequest::get("/a").header("referer", "<img src=x onerror=alert(1)>"),
            TestRequest::get("/a?next=&#x6a;avascript:alert(1)"),
            TestRequest::get("/download?file=..%2f..%2f..%2fetc%2fpasswd"),
            TestRequest::get("/download?file=%252e%252e%252fetc%252fpasswd"),
            TestRequest::get("/static/../../etc/shadow"),
            TestRequest::get("/ping?host=127.0.0.1;cat%20/etc/hosts"),
            TestRequest::get("/ping?host=$(whoami)"),
            TestRequest::get("/a").header("user-agent", "() { :; }; /bin/bash -c 'id'"),
            TestRequest::get("/a?c=%3C?php%20system($_GET['c']);%20?%3E"),
            TestRequest::get("/a?x=eval(base64_decode('ZWNobyAx'))"),
            TestRequest::get("/a?page=php://filter/convert.base64-encode/resource=index"),
            TestRequest::get("/a").header("cookie", "session=abc; pref=' or 'a'='a"),
        ];
        for request in &attacks {
            assert!(refused(&plugin, request), "let through: {request:?}");
        }
    }

    #[test]
    fn ordinary_requests_pass() {
        let plugin = waf(json!({}));
        let benign = [
            TestRequest::get("/api/v1/users/42/orders?page=2&sort=-created_at"),
            TestRequest::get("/search?q=O%27Brien+and+sons"),
            TestRequest::get("/search?q=select+the+best+option+from+the+menu"),
            TestRequest::get("/search?q=cat+food+%26+treats"),
            TestRequest::get("/search?q=drop+me+a+line;+update+your+profile"),
            TestRequest::get("/a?redirect=https%3A%2F%2Fexample.com%2Fa%3Fb%3Dc"),
            TestRequest::get("/a?q=%E4%BD%A0%E5%A5%BD&emoji=%F0%9F%98%80")
                .header(
                    "user-agent",
                    "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
                )
                .header("accept", "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8")
                .header(
                    "authorization",
                    "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
                )
                .header("cookie", "sid=3f2a9c; theme=dark; consent=yes"),
            TestRequest::get("/docs/getting-started.html?ref=nav#intro"),
            TestRequest::get("/a?note=the+system+(beta)+is+down;+please+confirm+(by+email)"),
        ];
        for request in &benign {
            assert!(!refused(&plugin, request), "refused: {request:?}");
        }
    }

    #[test]
    fn log_mode_lets_through_and_a_rule_turns_off_for_one_route() {
        let attack = TestRequest::get("/a?q=%3Cscript%3Ealert(1)%3C/script%3E");
        assert!(!refused(&waf(json!({"mode": "log"})), &attack));
        // Both XSS rules it matches off: nothing else matches.
        let off = waf(json!({"disabled_rules": [2001, 2005]}));
        assert!(!refused(&off, &attack));
        assert!(refused(&waf(json!({"disabled_rules": [2001]})), &attack));
    }

    #[test]
    fn the_anomaly_score_adds_up_to_the_threshold() {
        // One rule (5) is not enough for 10; two are.
        let strict = waf(json!({"anomaly_threshold": 10}));
        assert!(!refused(&strict, &TestRequest::get("/a?f=../x")));
        assert!(refused(&strict, &TestRequest::get("/a?f=../etc/passwd")));
    }

    #[test]
    fn the_refusal_is_configured() {
        let plugin = waf(json!({"rejected_code": 406, "rejected_msg": "no"}));
        let request = TestRequest::get("/a?q=1%20union%20select%201");
        let mut ctx = RequestCtx::new(&request, "r1", None);
        let reply = replied(plugin.rewrite(&mut ctx)).unwrap();
        assert_eq!(reply.status, 406);
        assert_eq!(crate::testing::body(&reply), json!({"error_msg": "no"}));
    }

    #[test]
    fn metadata_rules_join_or_replace_the_shipped_ones() {
        let config = json!({});
        let own = json!({"rules": [{"id": 9001, "literal": "evil-bot", "targets": ["headers"]}]});
        let plugin = build_with_metadata(&DESCRIPTOR, config.clone(), own).unwrap();
        assert!(refused(
            &plugin,
            &TestRequest::get("/").header("user-agent", "Evil-Bot/1.0")
        ));
        assert!(refused(
            &plugin,
            &TestRequest::get("/a?q=1%20union%20select%201")
        ));
        // Only in headers.
        assert!(!refused(&plugin, &TestRequest::get("/a?q=evil-bot")));

        let only = json!({"default_rules": false, "rules": [{"id": 1, "regex": "^zzz"}]});
        let plugin = build_with_metadata(&DESCRIPTOR, config, only).unwrap();
        assert!(!refused(
            &plugin,
            &TestRequest::get("/a?q=1%20union%20select%201")
        ));
        assert!(refused(&plugin, &TestRequest::get("/a?q=ZZZ")));
    }

    #[test]
    fn a_rule_on_the_raw_uri_sees_the_request_as_it_was_encoded() {
        let rules = |targets: Value| {
            json!({"default_rules": false, "rules": [
                {"id": 9001, "literal": "%252e", "targets": targets},
                {"id": 9002, "regex": "%00", "targets": targets}
            ]})
        };
        let raw = build_with_metadata(&DESCRIPTOR, json!({}), rules(json!(["raw_uri"]))).unwrap();
        let decoded = build_with_metadata(&DESCRIPTOR, json!({}), rules(json!(["path", "args"])));
        let decoded = decoded.unwrap();
        for request in [
            TestRequest::get("/files/%252E%252E/x"),
            TestRequest::get("/a?name=x%00.jpg"),
        ] {
            assert!(refused(&raw, &request), "{request:?}");
            // Decoding leaves nothing of how the request was encoded.
            assert!(!refused(&decoded, &request), "{request:?}");
        }
        assert!(!refused(&raw, &TestRequest::get("/files/x?name=x.jpg")));
    }

    #[test]
    fn bad_configurations_are_refused_with_their_field() {
        for (config, expected) in [
            (
                json!({"disabled_rules": [1001, 77]}),
                "disabled_rules[1]: no rule 77",
            ),
            (
                json!({"anomaly_threshold": 0}),
                "anomaly_threshold: must be 1..10000",
            ),
            (
                json!({"rejected_code": 100}),
                "rejected_code: must be 200 to 599",
            ),
        ] {
            assert_eq!(refusal(&DESCRIPTOR, config).to_string(), expected);
        }
        let spec = DESCRIPTOR.metadata.as_ref().unwrap();
        for (metadata, expected) in [
            (
                json!({"rules": [{"id": 1001, "literal": "x"}]}),
                "rules[0].id: rule 1001 exists already",
            ),
            (
                json!({"rules": [{"id": 1, "literal": "X"}]}),
                "rules[0].literal: must be lowercase: inputs are matched lowercased",
            ),
            (
                json!({"rules": [{"id": 1}]}),
                "rules[0]: needs one of `regex` and `literal`",
            ),
            (
                json!({"rules": [{"id": 1, "literal": "x", "targets": ["url"]}]}),
                "rules[0].targets[0]: must be one of path, arg_names, args, headers, cookies, body, \
                 raw_uri",
            ),
        ] {
            let Err(refused) = (spec.parse)(&metadata) else {
                panic!("{metadata} was accepted");
            };
            assert_eq!(refused.to_string(), expected);
        }
        let bad_regex = (spec.parse)(&json!({"rules": [{"id": 1, "regex": "("}]}));
        assert!(bad_regex
            .err()
            .unwrap()
            .to_string()
            .starts_with("rules[0].regex: "));
    }
}
