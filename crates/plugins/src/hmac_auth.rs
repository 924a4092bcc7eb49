//! `hmac-auth`: identifies the consumer by an HMAC signature of the request, APISIX 3's
//! scheme (after draft-cavage-http-signatures):
//!
//! ```text
//! Authorization: Signature keyId="k",algorithm="hmac-sha256",headers="@request-target date",signature="<base64>"
//! ```
//!
//! The signed string is the key id, then one line per named header (`name: value`, or
//! `METHOD request-uri` for `@request-target`), each ending in `\n`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::alphabet::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use pylon_model::FieldError;
use pylon_plugin::{Consumer, Phases, Plugin, Reply, RequestCtx, Step};
use pylon_router::RequestView;
use ring::hmac;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{parse, schema_of};
use crate::credentials::{Credentials, Secret};
use crate::descriptor::{BuildEnv, CredentialSpec, Descriptor};
use crate::realm;

pub(crate) const DESCRIPTOR: Descriptor = Descriptor {
    name: "hmac-auth",
    priority: 2530,
    schema: schema_of::<HmacAuthConfig>,
    build,
    credential: Some(CredentialSpec {
        schema: schema_of::<HmacAuthCredential>,
        parse: parse_credential,
        secret_fields: &["secret_key"],
    }),
    metadata: None,
};

const BASE64: GeneralPurpose = GeneralPurpose::new(
    &STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The message of every 401 but a missing or foreign `Authorization`: which check failed is
/// logged, not told to the client.
const NOT_VALIDATED: &str = "client request can't be validated";

/// `hmac-auth` on a route.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct HmacAuthConfig {
    /// The algorithms a client may sign with.
    #[serde(default = "all_algorithms")]
    #[schemars(length(min = 1))]
    allowed_algorithms: Vec<Algorithm>,
    /// How far, in seconds, the request's `Date` may be from the gateway's clock.
    #[serde(default = "default_clock_skew")]
    #[schemars(range(min = 1))]
    clock_skew: u64,
    /// Headers every signature must cover (any case).
    #[serde(default = "default_signed_headers")]
    #[schemars(inner(length(min = 1, max = 50)))]
    signed_headers: Vec<String>,
    /// Check the `Digest` header against the request body. Not supported yet: plugins
    /// cannot read the body, so `true` is refused.
    #[serde(default)]
    validate_request_body: bool,
    /// Remove the `Authorization` header before the request goes upstream.
    #[serde(default)]
    hide_credentials: bool,
    /// The realm of the `WWW-Authenticate` challenge sent with a 401.
    #[serde(default = "default_realm")]
    #[schemars(length(min = 1, max = 128), pattern(realm::PATTERN))]
    realm: String,
}

fn all_algorithms() -> Vec<Algorithm> {
    vec![Algorithm::Sha1, Algorithm::Sha256, Algorithm::Sha512]
}

fn default_clock_skew() -> u64 {
    300
}

/// The `Date` is signed by default, so that the clock skew check cannot be defeated by
/// replaying a signature with a fresh `Date`.
fn default_signed_headers() -> Vec<String> {
    vec!["date".into()]
}

fn default_realm() -> String {
    "hmac".into()
}

/// The HMAC a client signs with, as `algorithm` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
enum Algorithm {
    /// HMAC-SHA1, for older clients.
    #[serde(rename = "hmac-sha1")]
    Sha1,
    /// HMAC-SHA256.
    #[serde(rename = "hmac-sha256")]
    Sha256,
    /// HMAC-SHA512.
    #[serde(rename = "hmac-sha512")]
    Sha512,
}

impl Algorithm {
    fn named(name: &str) -> Option<Algorithm> {
        match name {
            "hmac-sha1" => Some(Algorithm::Sha1),
            "hmac-sha256" => Some(Algorithm::Sha256),
            "hmac-sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }
}

/// `hmac-auth` on a consumer: its key id and secret.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct HmacAuthCredential {
    /// The id a client names in `keyId`; unique among consumers.
    #[schemars(length(min = 1, max = 256))]
    key_id: String,
    /// The key the client signs with.
    #[schemars(length(min = 1, max = 256))]
    secret_key: String,
}

/// A consumer's secret, ready for each algorithm.
struct SigningKeys {
    sha1: hmac::Key,
    sha256: hmac::Key,
    sha512: hmac::Key,
}

impl SigningKeys {
    fn for_algorithm(&self, algorithm: Algorithm) -> &hmac::Key {
        match algorithm {
            Algorithm::Sha1 => &self.sha1,
            Algorithm::Sha256 => &self.sha256,
            Algorithm::Sha512 => &self.sha512,
        }
    }
}

fn parse_credential(config: &Value) -> Result<(String, Secret), FieldError> {
    let credential: HmacAuthCredential = parse(config)?;
    for (field, value) in [
        ("key_id", &credential.key_id),
        ("secret_key", &credential.secret_key),
    ] {
        if value.is_empty() || value.len() > 256 {
            return Err(FieldError::new(field, "must be 1 to 256 bytes long"));
        }
    }
    let secret = credential.secret_key.as_bytes();
    let keys = SigningKeys {
        sha1: hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret),
        sha256: hmac::Key::new(hmac::HMAC_SHA256, secret),
        sha512: hmac::Key::new(hmac::HMAC_SHA512, secret),
    };
    Ok((credential.key_id, Arc::new(keys)))
}

fn build(config: &Value, env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    Ok(Arc::new(HmacAuth::new(config, env)?))
}

struct HmacAuth {
    config: HmacAuthConfig,
    /// The `WWW-Authenticate` value of every 401.
    challenge: String,
    credentials: Arc<Credentials>,
}

impl HmacAuth {
    fn new(config: &Value, env: &BuildEnv<'_>) -> Result<HmacAuth, FieldError> {
        let config: HmacAuthConfig = parse(config)?;
        if config.allowed_algorithms.is_empty() {
            return Err(FieldError::new("allowed_algorithms", "must not be empty"));
        }
        if config.clock_skew == 0 {
            return Err(FieldError::new("clock_skew", "must be at least 1"));
        }
        for (i, header) in config.signed_headers.iter().enumerate() {
            if header.is_empty() || header.len() > 50 {
                return Err(FieldError::new(
                    format!("signed_headers[{i}]"),
                    "must be 1 to 50 bytes long",
                ));
            }
        }
        if config.validate_request_body {
            return Err(FieldError::new(
                "validate_request_body",
                "request body validation is not supported yet: plugins cannot read the body",
            ));
        }
        realm::check(&config.realm)?;
        Ok(HmacAuth {
            challenge: realm::challenge("hmac", &config.realm),
            config,
            credentials: env.credentials.clone(),
        })
    }
}

/// The fields of `Authorization: Signature ...` this scheme uses.
#[derive(Debug, Default)]
struct SignatureFields<'h> {
    key_id: Option<&'h str>,
    algorithm: Option<&'h str>,
    signature: Option<&'h str>,
    headers: Vec<&'h str>,
}

impl<'h> SignatureFields<'h> {
    /// Parses `Signature k="v",k="v",...`; `None` when the header is of another scheme.
    /// Unknown fields and fields that are not `name="value"` are skipped.
    fn parse(authorization: &'h str) -> Option<SignatureFields<'h>> {
        let fields = authorization.strip_prefix("Signature")?;
        let mut parsed = SignatureFields::default();
        for field in fields.split(',') {
            let Some((name, quoted)) = field.trim_start().split_once('=') else {
                continue;
            };
            let Some(value) = quoted
                .strip_prefix('"')
                .and_then(|v| v.split_once('"'))
                .map(|(v, _)| v)
            else {
                continue;
            };
            match name {
                "keyId" => parsed.key_id = Some(value),
                "algorithm" => parsed.algorithm = Some(value),
                "signature" => parsed.signature = Some(value),
                "headers" => parsed.headers = value.split(' ').filter(|h| !h.is_empty()).collect(),
                _ => {}
            }
        }
        Some(parsed)
    }
}

impl HmacAuth {
    fn refuse(&self, message: &str) -> Step<'static> {
        Step::Reply(
            Reply::message(401, message).header("www-authenticate", self.challenge.as_str()),
        )
    }

    fn authenticate<'a>(&'a self, ctx: &mut RequestCtx<'_>, now: SystemTime) -> Step<'a> {
        let Some(authorization) = ctx.header("authorization").map(|a| a.into_owned()) else {
            return self.refuse(&format!("{NOT_VALIDATED}: missing Authorization header"));
        };
        let Some(fields) = SignatureFields::parse(&authorization) else {
            return self.refuse(&format!(
                "{NOT_VALIDATED}: Authorization header does not start with 'Signature'"
            ));
        };
        match self.validate(ctx, &fields, now) {
            Ok(consumer) => {
                ctx.set_consumer(consumer);
                if self.config.hide_credentials {
                    ctx.edits.headers.remove("authorization");
                }
                Step::Continue
            }
            Err(reason) => {
                tracing::debug!(reason, "hmac-auth refused a request");
                self.refuse(NOT_VALIDATED)
            }
        }
    }

    /// The consumer whose key signed the request, or why there is none.
    fn validate(
        &self,
        ctx: &RequestCtx<'_>,
        fields: &SignatureFields<'_>,
        now: SystemTime,
    ) -> Result<Arc<Consumer>, &'static str> {
        let (Some(key_id), Some(signature)) = (fields.key_id, fields.signature) else {
            return Err("keyId or signature missing");
        };
        let algorithm = fields.algorithm.ok_or("algorithm missing")?;
        let credential = self
            .credentials
            .find(DESCRIPTOR.name, key_id)
            .ok_or("Invalid key_id")?;
        let algorithm = Algorithm::named(algorithm)
            .filter(|a| self.config.allowed_algorithms.contains(a))
            .ok_or("Invalid algorithm")?;
        let date = ctx
            .header("date")
            .ok_or("Date header missing. failed to validate clock skew")?;
        let date = httpdate::parse_http_date(&date).map_err(|_| "Invalid GMT format time")?;
        if seconds_between(now, date) > self.config.clock_skew {
            return Err("Clock skew exceeded");
        }
        let unsigned = self.config.signed_headers.iter().any(|required| {
            !fields
                .headers
                .iter()
                .any(|h| h.eq_ignore_ascii_case(required))
        });
        if unsigned {
            return Err("a header the route requires is not signed");
        }
        let keys = credential
            .secret
            .downcast_ref::<SigningKeys>()
            .ok_or("Invalid key_id")?;
        let signature = BASE64.decode(signature).map_err(|_| "Invalid signature")?;
        let signed = signing_string(ctx, key_id, &fields.headers);
        // Constant time: how long a comparison takes says nothing about the signature.
        hmac::verify(keys.for_algorithm(algorithm), signed.as_bytes(), &signature)
            .map_err(|_| "Invalid signature")?;
        Ok(credential.consumer.clone())
    }
}

/// What the client signed: the key id, then each header named in `headers` that the
/// request has (`@request-target` is the method and target), one per line.
fn signing_string(ctx: &RequestCtx<'_>, key_id: &str, headers: &[&str]) -> String {
    let mut signed = String::with_capacity(128);
    signed.push_str(key_id);
    signed.push('\n');
    for name in headers {
        if let Some(value) = ctx.header(name) {
            signed.push_str(name);
            signed.push_str(": ");
            signed.push_str(&value);
            signed.push('\n');
        } else if *name == "@request-target" {
            let target = ctx.var("request_uri").unwrap_or_default();
            signed.push_str(ctx.method());
            signed.push(' ');
            signed.push_str(if target.is_empty() { "/" } else { &target });
            signed.push('\n');
        }
    }
    signed
}

/// Whole seconds between two instants, whichever is later.
fn seconds_between(a: SystemTime, b: SystemTime) -> u64 {
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    secs(a).abs_diff(secs(b))
}

impl Plugin for HmacAuth {
    fn name(&self) -> &'static str {
        DESCRIPTOR.name
    }

    fn phases(&self) -> Phases {
        Phases::REWRITE
    }

    fn rewrite<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Step<'a> {
        self.authenticate(ctx, SystemTime::now())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::testing::{
        body, build as build_plugin, consumer_name, credential_refusal, credentials, refusal,
        replied, reply_header, TestRequest,
    };

    /// The gateway's clock in these tests.
    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    /// What a client signs and sends.
    struct Signed<'a> {
        key_id: &'a str,
        secret: &'a str,
        algorithm: &'a str,
        headers: &'a str,
        date: SystemTime,
        target: &'a str,
    }

    impl Default for Signed<'_> {
        fn default() -> Self {
            Signed {
                key_id: "jack-key",
                secret: "jack-secret",
                algorithm: "hmac-sha256",
                headers: "@request-target date x-custom",
                date: now(),
                target: "/orders?id=1",
            }
        }
    }

    impl Signed<'_> {
        /// The `Authorization` header a client sends.
        fn authorization(&self) -> String {
            let date = httpdate::fmt_http_date(self.date);
            let mut signed = format!("{}\n", self.key_id);
            for name in self.headers.split(' ') {
                match name {
                    "@request-target" => signed.push_str(&format!("POST {}\n", self.target)),
                    "date" => signed.push_str(&format!("date: {date}\n")),
                    "x-custom" => signed.push_str("x-custom: v\n"),
                    _ => {}
                }
            }
            let algorithm = match self.algorithm {
                "hmac-sha1" => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
                "hmac-sha512" => hmac::HMAC_SHA512,
                _ => hmac::HMAC_SHA256,
            };
            let key = hmac::Key::new(algorithm, self.secret.as_bytes());
            let signature = BASE64.encode(hmac::sign(&key, signed.as_bytes()));
            format!(
                r#"Signature keyId="{}",algorithm="{}",headers="{}",signature="{signature}""#,
                self.key_id, self.algorithm, self.headers
            )
        }

        /// The signed request, sent to `target` (a tampering proxy may have changed it).
        fn request(&self, target: &str) -> TestRequest {
            TestRequest::get(target)
                .method("POST")
                .header("Authorization", &self.authorization())
                .header("Date", &httpdate::fmt_http_date(self.date))
                .header("X-Custom", "v")
        }
    }

    fn plugin(config: Value) -> HmacAuth {
        let consumers = credentials(
            &DESCRIPTOR,
            &[(
                "jack",
                json!({"key_id": "jack-key", "secret_key": "jack-secret"}),
            )],
        );
        let env = BuildEnv {
            protos: crate::protos::Protos::none(),
            credentials: &consumers,
            metadata: None,
            owner: "",
        };
        HmacAuth::new(&config, &env).expect("a valid configuration")
    }

    /// Runs rewrite at [`now`]: the reply if any, the consumer and whether `Authorization`
    /// goes on upstream.
    fn run(plugin: &HmacAuth, request: &TestRequest) -> (Option<Reply>, Option<String>, bool) {
        let mut ctx = RequestCtx::new(request, "r1", None);
        let reply = replied(plugin.authenticate(&mut ctx, now()));
        let kept = ctx.header("authorization").is_some();
        (reply, consumer_name(&ctx), kept)
    }

    fn refused(plugin: &HmacAuth, request: &TestRequest, message: &str) {
        let (reply, consumer, _) = run(plugin, request);
        let reply = reply.expect("a 401");
        assert_eq!(reply.status, 401);
        assert_eq!(body(&reply), json!({ "message": message }));
        assert_eq!(
            reply_header(&reply, "www-authenticate"),
            Some("hmac realm=\"hmac\"")
        );
        assert_eq!(consumer, None);
    }

    #[test]
    fn a_good_signature_identifies_the_consumer() {
        let plugin = plugin(json!({}));
        for algorithm in ["hmac-sha1", "hmac-sha256", "hmac-sha512"] {
            let signed = Signed {
                algorithm,
                ..Signed::default()
            };
            let (reply, consumer, kept) = run(&plugin, &signed.request("/orders?id=1"));
            assert_eq!(reply, None, "{algorithm}");
            assert_eq!(consumer.as_deref(), Some("jack"));
            assert!(kept);
        }
        // Within the clock skew either way.
        for date in [
            now() - Duration::from_secs(300),
            now() + Duration::from_secs(300),
        ] {
            let signed = Signed {
                date,
                ..Signed::default()
            };
            assert_eq!(run(&plugin, &signed.request("/orders?id=1")).0, None);
        }
    }

    #[test]
    fn hidden_credentials_do_not_reach_the_upstream() {
        let plugin = plugin(json!({"hide_credentials": true}));
        let (reply, consumer, kept) = run(&plugin, &Signed::default().request("/orders?id=1"));
        assert_eq!(
            (reply, consumer.as_deref(), kept),
            (None, Some("jack"), false)
        );
    }

    #[test]
    fn a_missing_or_foreign_authorization_is_named() {
        let plugin = plugin(json!({}));
        refused(
            &plugin,
            &TestRequest::get("/"),
            "client request can't be validated: missing Authorization header",
        );
        refused(
            &plugin,
            &TestRequest::get("/").header("Authorization", "Bearer x"),
            "client request can't be validated: Authorization header does not start with 'Signature'",
        );
    }

    #[test]
    fn every_failed_check_is_refused_alike() {
        let plugin = plugin(json!({"allowed_algorithms": ["hmac-sha256", "hmac-sha512"]}));
        let target = "/orders?id=1";
        let bad = [
            Signed {
                secret: "other",
                ..Signed::default()
            }
            .request(target),
            Signed {
                key_id: "nobody",
                ..Signed::default()
            }
            .request(target),
            Signed {
                algorithm: "hmac-sha1",
                ..Signed::default()
            }
            .request(target),
            Signed {
                algorithm: "hmac-md5",
                ..Signed::default()
            }
            .request(target),
            Signed {
                date: now() - Duration::from_secs(301),
                ..Signed::default()
            }
            .request(target),
            Signed {
                date: now() + Duration::from_secs(301),
                ..Signed::default()
            }
            .request(target),
            // `date` must be signed, by default.
            Signed {
                headers: "@request-target x-custom",
                ..Signed::default()
            }
            .request(target),
            // The request went elsewhere than what was signed.
            Signed::default().request("/orders?id=2"),
            TestRequest::get("/").header("Authorization", r#"Signature keyId="jack-key""#),
            TestRequest::get("/").header(
                "Authorization",
                r#"Signature keyId="jack-key",signature="eA==""#,
            ),
        ];
        for request in &bad {
            refused(&plugin, request, "client request can't be validated");
        }
        let authorization = Signed::default().authorization();
        let undated = TestRequest::get(target)
            .method("POST")
            .header("Authorization", &authorization)
            .header("X-Custom", "v");
        refused(&plugin, &undated, "client request can't be validated");
        let garbled = TestRequest::get(target)
            .method("POST")
            .header("Authorization", &authorization)
            .header("Date", "yesterday")
            .header("X-Custom", "v");
        refused(&plugin, &garbled, "client request can't be validated");
    }

    #[test]
    fn signed_headers_the_route_requires_must_be_signed() {
        let plugin = plugin(json!({"signed_headers": ["X-Custom", "date"]}));
        assert_eq!(
            run(&plugin, &Signed::default().request("/orders?id=1")).0,
            None
        );
        let unsigned = Signed {
            headers: "@request-target date",
            ..Signed::default()
        };
        refused(
            &plugin,
            &unsigned.request("/orders?id=1"),
            "client request can't be validated",
        );

        let plugin = self::plugin(json!({"signed_headers": []}));
        let minimal = Signed {
            headers: "date",
            ..Signed::default()
        };
        assert_eq!(run(&plugin, &minimal.request("/anything")).0, None);
    }

    #[test]
    fn bad_configurations_are_refused_with_their_path() {
        for (config, path) in [
            (
                json!({"validate_request_body": true}),
                "validate_request_body",
            ),
            (json!({"allowed_algorithms": []}), "allowed_algorithms"),
            (
                json!({"allowed_algorithms": ["hmac-md5"]}),
                "allowed_algorithms[0]",
            ),
            (json!({"clock_skew": 0}), "clock_skew"),
            (json!({"clock_skew": -1}), "clock_skew"),
            (json!({"signed_headers": [""]}), "signed_headers[0]"),
            (
                json!({"signed_headers": ["a", "x".repeat(51)]}),
                "signed_headers[1]",
            ),
            (json!({"realm": ""}), "realm"),
            (json!({"keep_headers": true}), "keep_headers"),
        ] {
            assert_eq!(refusal(&DESCRIPTOR, config.clone()).path, path, "{config}");
        }
        let message = refusal(&DESCRIPTOR, json!({"validate_request_body": true})).message;
        assert!(message.contains("not supported yet"), "{message}");
        assert!(refusal_free(json!({"validate_request_body": false})));

        for (config, path) in [
            (json!({"key_id": "", "secret_key": "s"}), "key_id"),
            (
                json!({"key_id": "k", "secret_key": "s".repeat(257)}),
                "secret_key",
            ),
            (json!({"key_id": "k", "access_key": "s"}), "access_key"),
        ] {
            assert_eq!(
                credential_refusal(&DESCRIPTOR, config.clone()).path,
                path,
                "{config}"
            );
        }
    }

    fn refusal_free(config: Value) -> bool {
        build_plugin(&DESCRIPTOR, config)
            .expect("a valid configuration")
            .phases()
            .has(pylon_plugin::Phase::Rewrite)
    }
}
