//! `basic-auth`: identifies the consumer by a user name and password in `Authorization:
//! Basic` (RFC 7617).

use std::sync::Arc;

use base64::alphabet::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use pylon_model::FieldError;
use pylon_plugin::{Phases, Plugin, Reply, RequestCtx, Step};
use ring::error::Unspecified;
use ring::hmac;
use ring::rand::SystemRandom;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{parse, schema_of};
use crate::credentials::{Credentials, Secret};
use crate::descriptor::{BuildEnv, CredentialSpec, Descriptor};
use crate::realm;

pub(crate) const DESCRIPTOR: Descriptor = Descriptor {
    name: "basic-auth",
    priority: 2520,
    schema: schema_of::<BasicAuthConfig>,
    build,
    credential: Some(CredentialSpec {
        schema: schema_of::<BasicAuthCredential>,
        parse: parse_credential,
        secret_fields: &["password"],
    }),
    metadata: None,
};

/// Clients pad or not; both decode.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// `basic-auth` on a route.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct BasicAuthConfig {
    /// Remove the `Authorization` header before the request goes upstream.
    #[serde(default)]
    hide_credentials: bool,
    /// The realm of the `WWW-Authenticate` challenge sent with a 401.
    #[serde(default = "default_realm")]
    #[schemars(length(min = 1, max = 128), pattern(realm::PATTERN))]
    realm: String,
}

fn default_realm() -> String {
    "basic".into()
}

/// `basic-auth` on a consumer: its user name and password.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct BasicAuthCredential {
    /// The user name; unique among consumers.
    #[schemars(length(min = 1))]
    username: String,
    /// The password.
    password: String,
}

/// A consumer's password, kept only as its HMAC under a key drawn for it. Checking a guess
/// compares two tags in constant time, so the time it takes tells nothing about the
/// password or how much of a guess was right; and the password itself is not kept.
struct PasswordCheck {
    key: hmac::Key,
    tag: hmac::Tag,
}

impl PasswordCheck {
    fn new(password: &[u8]) -> Result<PasswordCheck, Unspecified> {
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())?;
        let tag = hmac::sign(&key, password);
        Ok(PasswordCheck { key, tag })
    }

    fn matches(&self, password: &[u8]) -> bool {
        hmac::verify(&self.key, password, self.tag.as_ref()).is_ok()
    }
}

fn parse_credential(config: &Value) -> Result<(String, Secret), FieldError> {
    let credential: BasicAuthCredential = parse(config)?;
    if credential.username.is_empty() {
        return Err(FieldError::new("username", "must not be empty"));
    }
    let check = PasswordCheck::new(credential.password.as_bytes())
        .map_err(|_| FieldError::new("password", "no random key to keep it with"))?;
    Ok((credential.username, Arc::new(check)))
}

fn build(config: &Value, env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    let config: BasicAuthConfig = parse(config)?;
    realm::check(&config.realm)?;
    Ok(Arc::new(BasicAuth {
        challenge: realm::challenge("Basic", &config.realm),
        hide_credentials: config.hide_credentials,
        credentials: env.credentials.clone(),
    }))
}

struct BasicAuth {
    /// The `WWW-Authenticate` value of every 401.
    challenge: String,
    hide_credentials: bool,
    credentials: Arc<Credentials>,
}

impl BasicAuth {
    fn refuse(&self, message: &str) -> Step<'static> {
        Step::Reply(
            Reply::message(401, message).header("www-authenticate", self.challenge.as_str()),
        )
    }
}

impl Plugin for BasicAuth {
    fn name(&self) -> &'static str {
        DESCRIPTOR.name
    }

    fn phases(&self) -> Phases {
        Phases::REWRITE
    }

    fn rewrite<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Step<'a> {
        let Some(authorization) = ctx.header("authorization") else {
            return self.refuse("Missing authorization in request");
        };
        let Some((username, password)) = user_and_password(&authorization) else {
            return self.refuse("Invalid authorization in request");
        };
        let Some(credential) = self.credentials.find(DESCRIPTOR.name, &username) else {
            return self.refuse("Invalid user authorization");
        };
        let right_password = credential
            .secret
            .downcast_ref::<PasswordCheck>()
            .is_some_and(|check| check.matches(password.as_bytes()));
        if !right_password {
            return self.refuse("Invalid user authorization");
        }
        let consumer = credential.consumer.clone();
        ctx.set_consumer(consumer);
        if self.hide_credentials {
            ctx.edits.headers.remove("authorization");
        }
        Step::Continue
    }
}

/// The user name and password of `Basic <base64(user:password)>` (the scheme in any case);
/// the password is everything after the first colon.
fn user_and_password(authorization: &str) -> Option<(String, String)> {
    let (scheme, encoded) = authorization.split_once(|c: char| c.is_ascii_whitespace())?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = BASE64.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (username, password) = decoded.split_once(':')?;
    Some((username.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::{
        body, consumer_name, credential_refusal, credentials, refusal, replied, reply_header,
        TestRequest,
    };

    fn plugin(config: Value) -> Arc<dyn Plugin> {
        let consumers = credentials(
            &DESCRIPTOR,
            &[
                (
                    "jack",
                    json!({"username": "jack", "password": "pa:ss word"}),
                ),
                ("rose", json!({"username": "rose", "password": ""})),
            ],
        );
        let env = BuildEnv {
            protos: crate::protos::Protos::none(),
            credentials: &consumers,
            metadata: None,
            owner: "",
        };
        build(&config, &env).expect("a valid configuration")
    }

    fn basic(user_and_password: &str) -> String {
        format!("Basic {}", BASE64.encode(user_and_password))
    }

    /// Runs rewrite for a request with these headers: the reply if any, the consumer's name
    /// and whether `Authorization` is still there for the upstream.
    fn run(plugin: &dyn Plugin, headers: &[(&str, &str)]) -> (Option<Reply>, Option<String>, bool) {
        let request = headers
            .iter()
            .fold(TestRequest::get("/"), |r, (n, v)| r.header(n, v));
        let mut ctx = RequestCtx::new(&request, "r1", None);
        let reply = replied(plugin.rewrite(&mut ctx));
        let kept = ctx.header("authorization").is_some();
        (reply, consumer_name(&ctx), kept)
    }

    fn refused(plugin: &dyn Plugin, headers: &[(&str, &str)], message: &str) {
        let (reply, consumer, _) = run(plugin, headers);
        let reply = reply.expect("a 401");
        assert_eq!(reply.status, 401);
        assert_eq!(body(&reply), json!({ "message": message }));
        assert_eq!(
            reply_header(&reply, "www-authenticate"),
            Some("Basic realm=\"basic\"")
        );
        assert_eq!(consumer, None);
    }

    #[test]
    fn the_right_password_identifies_the_consumer() {
        let plugin = plugin(json!({}));
        let (reply, consumer, kept) =
            run(&*plugin, &[("Authorization", &basic("jack:pa:ss word"))]);
        assert_eq!(reply, None);
        assert_eq!(consumer.as_deref(), Some("jack"));
        assert!(kept, "credentials stay unless hidden");

        let lowercase = basic("rose:").replace("Basic", "basic");
        let (reply, consumer, _) = run(&*plugin, &[("authorization", &lowercase)]);
        assert_eq!(reply, None);
        assert_eq!(consumer.as_deref(), Some("rose"));
    }

    #[test]
    fn wrong_or_missing_credentials_get_401_with_a_challenge() {
        let plugin = plugin(json!({}));
        refused(&*plugin, &[], "Missing authorization in request");
        for malformed in ["Bearer abc", "Basic", "Basic !!!", &basic("no colon")] {
            refused(
                &*plugin,
                &[("Authorization", malformed)],
                "Invalid authorization in request",
            );
        }
        for wrong in ["jack:pa", "jack:pa:ss word ", "nobody:x", "rose:x"] {
            refused(
                &*plugin,
                &[("Authorization", &basic(wrong))],
                "Invalid user authorization",
            );
        }
    }

    #[test]
    fn hidden_credentials_do_not_reach_the_upstream() {
        let plugin = plugin(json!({"hide_credentials": true, "realm": "api"}));
        let (reply, consumer, kept) = run(&*plugin, &[("Authorization", &basic("rose:"))]);
        assert_eq!(
            (reply, consumer.as_deref(), kept),
            (None, Some("rose"), false)
        );

        let (reply, _, _) = run(&*plugin, &[]);
        let reply = reply.expect("a 401");
        assert_eq!(
            reply_header(&reply, "www-authenticate"),
            Some("Basic realm=\"api\"")
        );
    }

    #[test]
    fn bad_configurations_are_refused_with_their_path() {
        assert_eq!(refusal(&DESCRIPTOR, json!({"realm": "a\"b"})).path, "realm");
        assert_eq!(
            refusal(&DESCRIPTOR, json!({"hide_credentials": 1})).path,
            "hide_credentials"
        );
        assert_eq!(refusal(&DESCRIPTOR, json!({"other": 1})).path, "other");
        assert_eq!(
            credential_refusal(&DESCRIPTOR, json!({"username": "", "password": "p"})).path,
            "username"
        );
        let message = credential_refusal(&DESCRIPTOR, json!({"username": "u"})).message;
        assert!(message.contains("password"), "{message}");
    }
}
