//! `jwt-auth`: identifies the consumer by a signed JSON Web Token in a header, the query
//! string or a cookie; the token's key claim names the consumer, whose key verifies it.

mod cache;
mod key;
mod token;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use pylon_model::FieldError;
use pylon_plugin::{Phases, Plugin, Reply, RequestCtx, Step};
use pylon_router::RequestView;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{parse, schema_of};
use crate::credentials::{Credentials, Secret};
use crate::descriptor::{BuildEnv, CredentialSpec, Descriptor};
use crate::{query, realm};
use cache::{Verified, VerifiedTokens};
use key::{Algorithm, VerifyingKey};
use token::{check_lifetime, Claim, Token};

pub(crate) const DESCRIPTOR: Descriptor = Descriptor {
    name: "jwt-auth",
    priority: 2510,
    schema: schema_of::<JwtAuthConfig>,
    build,
    credential: Some(CredentialSpec {
        schema: schema_of::<JwtAuthCredential>,
        parse: parse_credential,
        secret_fields: &["secret"],
    }),
    metadata: None,
};

/// `jwt-auth` on a route: where the token is looked for, in this order.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct JwtAuthConfig {
    /// The request header that carries the token, with or without `Bearer `.
    #[serde(default = "default_header")]
    header: String,
    /// The query argument that carries the token when the header is absent.
    #[serde(default = "default_jwt")]
    query: String,
    /// The cookie that carries the token when the header and argument are absent.
    #[serde(default = "default_jwt")]
    cookie: String,
    /// Remove the token from the request before it goes upstream.
    #[serde(default)]
    hide_credentials: bool,
    /// The payload claim that holds the consumer's `key`.
    #[serde(default = "default_key_claim_name")]
    #[schemars(length(min = 1))]
    key_claim_name: String,
    /// Keep the verified payload for the plugins that run later: request state `jwt-auth`,
    /// an `Arc<serde_json::Map<String, Value>>`.
    #[serde(default)]
    store_in_ctx: bool,
    /// The realm of the `WWW-Authenticate` challenge sent with a 401.
    #[serde(default = "default_realm")]
    #[schemars(length(min = 1, max = 128), pattern(realm::PATTERN))]
    realm: String,
    /// Claims a token must have, and that must be valid. Without it, `exp` and `nbf` are
    /// checked when the token has them.
    #[serde(default)]
    #[schemars(extend("uniqueItems" = true))]
    claims_to_verify: Vec<Claim>,
}

fn default_header() -> String {
    "authorization".into()
}

fn default_jwt() -> String {
    "jwt".into()
}

fn default_key_claim_name() -> String {
    "key".into()
}

fn default_realm() -> String {
    "jwt".into()
}

/// `jwt-auth` on a consumer: its key and how its tokens are verified.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct JwtAuthCredential {
    /// The value of the token's key claim that names this consumer; unique among consumers.
    #[schemars(length(min = 1))]
    key: String,
    /// The HMAC secret, for the HS algorithms.
    #[schemars(length(min = 1))]
    secret: Option<String>,
    /// The PEM public key (`-----BEGIN PUBLIC KEY-----`), for RS256, ES256 and EdDSA.
    #[schemars(length(min = 1))]
    public_key: Option<String>,
    /// The algorithm the consumer's tokens are signed with; a token naming another is
    /// refused.
    #[serde(default)]
    algorithm: Algorithm,
    /// The lifetime, in seconds, of the tokens APISIX's signing endpoint issued. Tokens
    /// carry their own `exp`; this is kept for configurations written for APISIX.
    #[serde(default = "default_exp")]
    #[schemars(range(min = 1))]
    exp: u64,
    /// `secret` is base64: the HMAC key is what it decodes to.
    #[serde(default)]
    base64_secret: bool,
    /// Seconds of clock skew allowed when checking `exp` and `nbf`.
    #[serde(default)]
    lifetime_grace_period: u64,
}

fn default_exp() -> u64 {
    86400
}

/// What verifies one consumer's tokens.
struct ConsumerKey {
    algorithm: Algorithm,
    key: VerifyingKey,
    lifetime_grace_period: u64,
}

fn parse_credential(config: &Value) -> Result<(String, Secret), FieldError> {
    let credential: JwtAuthCredential = parse(config)?;
    if credential.key.is_empty() {
        return Err(FieldError::new("key", "must not be empty"));
    }
    if credential.exp == 0 {
        return Err(FieldError::new("exp", "must be at least 1"));
    }
    let algorithm = credential.algorithm;
    let key = if algorithm.is_hmac() {
        let secret = match credential.secret.as_deref() {
            None | Some("") => {
                return Err(FieldError::new(
                    "secret",
                    "property \"secret\" is required when using HS based algorithms",
                ))
            }
            Some(secret) => secret,
        };
        if credential.base64_secret {
            let decoded = STANDARD.decode(secret).map_err(|_| {
                FieldError::new(
                    "secret",
                    "base64_secret required but the secret is not in base64 format",
                )
            })?;
            VerifyingKey::hmac(algorithm, &decoded)
        } else {
            VerifyingKey::hmac(algorithm, secret.as_bytes())
        }
    } else {
        let pem = credential
            .public_key
            .as_deref()
            .ok_or_else(|| FieldError::new("public_key", "missing valid public key"))?;
        VerifyingKey::public(algorithm, pem).map_err(|e| FieldError::new("public_key", e))?
    };
    let consumer_key = ConsumerKey {
        algorithm,
        key,
        lifetime_grace_period: credential.lifetime_grace_period,
    };
    Ok((credential.key, Arc::new(consumer_key)))
}

fn build(config: &Value, env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    Ok(Arc::new(JwtAuth::new(config, env)?))
}

struct JwtAuth {
    config: JwtAuthConfig,
    /// The `WWW-Authenticate` value of every 401.
    challenge: String,
    credentials: Arc<Credentials>,
    verified: VerifiedTokens,
}

/// The message of a token with the wrong algorithm, signature or lifetime: which of them
/// is logged, not told to the client.
const NOT_VERIFIED: &str = "failed to verify jwt";

impl JwtAuth {
    fn new(config: &Value, env: &BuildEnv<'_>) -> Result<JwtAuth, FieldError> {
        let config: JwtAuthConfig = parse(config)?;
        if config.key_claim_name.is_empty() {
            return Err(FieldError::new("key_claim_name", "must not be empty"));
        }
        for (i, claim) in config.claims_to_verify.iter().enumerate() {
            if config.claims_to_verify[..i].contains(claim) {
                return Err(FieldError::new(
                    format!("claims_to_verify[{i}]"),
                    "is listed twice",
                ));
            }
        }
        realm::check(&config.realm)?;
        Ok(JwtAuth {
            challenge: realm::challenge("Bearer", &config.realm),
            config,
            credentials: env.credentials.clone(),
            verified: VerifiedTokens::new(),
        })
    }

    fn refuse(&self, message: &str) -> Step<'static> {
        Step::Reply(
            Reply::message(401, message).header("www-authenticate", self.challenge.as_str()),
        )
    }

    /// Identifies the consumer at `now` (seconds since the epoch).
    fn authenticate<'a>(&'a self, ctx: &mut RequestCtx<'_>, now: u64) -> Step<'a> {
        let Some(token) = self.take_token(ctx) else {
            return self.refuse("Missing JWT token in request");
        };
        let verified = match self.verified.get(&token, now) {
            Some(verified) => verified,
            None => match self.verify(&token, now) {
                Ok(verified) => {
                    self.verified.insert(&token, verified.clone(), now);
                    verified
                }
                Err(message) => return self.refuse(message),
            },
        };
        ctx.set_consumer(verified.consumer);
        if let Some(payload) = verified.payload {
            ctx.set_state(DESCRIPTOR.name, payload);
        }
        Step::Continue
    }

    /// The token from the header, the query argument or the cookie (the first that has
    /// one), removed from the upstream request when credentials are hidden.
    fn take_token(&self, ctx: &mut RequestCtx<'_>) -> Option<String> {
        let hide = self.config.hide_credentials;
        if let Some(value) = ctx.header(&self.config.header).map(|v| v.into_owned()) {
            if hide {
                ctx.edits.headers.remove(self.config.header.clone());
            }
            let token = match value.get(..7) {
                Some("Bearer " | "bearer ") => value[7..].to_owned(),
                _ => value,
            };
            return Some(token);
        }
        let argument = format!("arg_{}", self.config.query);
        if let Some(token) = ctx.var(&argument).map(|v| v.into_owned()) {
            if hide {
                if let Some(target) = ctx.var("upstream_uri").map(|t| t.into_owned()) {
                    ctx.edits.uri = Some(query::without_arg(&target, &self.config.query));
                }
            }
            return Some(token);
        }
        let cookie = format!("cookie_{}", self.config.cookie);
        let token = ctx.var(&cookie)?.into_owned();
        if hide {
            let cookies = ctx.header("cookie").map(|c| c.into_owned());
            match cookies.map(|c| without_cookie(&c, &self.config.cookie)) {
                Some(rest) if !rest.is_empty() => ctx.edits.headers.set("cookie", rest),
                _ => ctx.edits.headers.remove("cookie"),
            }
        }
        Some(token)
    }

    /// Verifies `token` with its consumer's key; the message of the 401 when it fails.
    fn verify(&self, token: &str, now: u64) -> Result<Verified, &'static str> {
        let token = Token::decode(token).ok_or("JWT token invalid")?;
        let key = match token.payload.get(&self.config.key_claim_name) {
            None | Some(Value::Null) => return Err("missing user key in JWT token"),
            Some(key) => key.as_str().ok_or("Invalid user key in JWT token")?,
        };
        let credential = self
            .credentials
            .find(DESCRIPTOR.name, key)
            .ok_or("Invalid user key in JWT token")?;
        let consumer_key = credential
            .secret
            .downcast_ref::<ConsumerKey>()
            .ok_or("Invalid user key in JWT token")?;
        // The consumer's algorithm, not the token's, decides how it is verified: a token
        // cannot pick HMAC over a public key it knows.
        if token.algorithm != consumer_key.algorithm.name() {
            tracing::debug!(alg = %token.algorithm, "jwt-auth: algorithm mismatch");
            return Err(NOT_VERIFIED);
        }
        if !consumer_key
            .key
            .verify(token.signing_input.as_bytes(), &token.signature)
        {
            tracing::debug!("jwt-auth: signature mismatch");
            return Err(NOT_VERIFIED);
        }
        let valid_until = check_lifetime(
            &token.payload,
            &self.config.claims_to_verify,
            consumer_key.lifetime_grace_period,
            now,
        )
        .map_err(|reason| {
            tracing::debug!(reason, "jwt-auth: claims not valid");
            NOT_VERIFIED
        })?;
        Ok(Verified {
            consumer: credential.consumer.clone(),
            payload: self.config.store_in_ctx.then(|| Arc::new(token.payload)),
            valid_until,
        })
    }
}

impl Plugin for JwtAuth {
    fn name(&self) -> &'static str {
        DESCRIPTOR.name
    }

    fn phases(&self) -> Phases {
        Phases::REWRITE
    }

    fn rewrite<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Step<'a> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.authenticate(ctx, now)
    }
}

/// A `Cookie` header without the cookies called `name`.
fn without_cookie(cookies: &str, name: &str) -> String {
    cookies
        .split(';')
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && pair.split_once('=').map_or(*pair, |(n, _)| n) != name)
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use ring::hmac;
    use ring::rand::SystemRandom;
    use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
    use serde_json::{json, Map};

    use super::*;
    use crate::testing::{
        body, consumer_name, credential_refusal, credentials, refusal, replied, reply_header,
        TestRequest,
    };

    /// The tests' clock, in seconds since the epoch.
    const NOW: u64 = 1_700_000_000;

    /// A 2048-bit RSA key made for these tests.
    const RSA_PRIVATE_KEY: &str = "\
-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCwHqrTvyabkNfT
MLbqeJwnEmMZUxOtSnim6/+rCl4V3vHFr8ZMiczdEMBOlw91negtIVFwj20OI4mZ
jO85mhnRp+I+bIyRfKY12TD3nzuZLhCRu1ZVLnV5MOPhfi/l0x8Lio3Cb7y5jI1Y
9yiUKN3JiU08d6lBpVu7ZdrUyqWb44FzwLuUYJo39yoHTwbpKXLFbICUPtB/gkwW
8a+hZxv1zdgbWyYRiOBSghHq9E4ws4HYXaA2JMmlhEL241Ji5p6SQcVB/JcoCYjD
leE7Tbj98rNg2SrrcvmG/6RAOtoMF6gtL8uxUJwUWUK5DueVu3LDl0EdczCzqqyi
9U4KZ+B7AgMBAAECggEABIXDep/oRJfLewBZI7WiKOMXfJFK3Y9rTSBqFpqaQBlT
MwtCKwZhpnTLw2Wspdpx5leT/Erdw/GuRfoKmi7DWZD9xcv9/HrR19GMD0Fdaeyq
MnVrKgSasdh+cyfNRt6mtIiqMdZ/TaWqBLrs2O66hBAMopaRPmUzirqt8mEbyWBB
mdlmmB1dGYe567xBCMW4LS3gxc4tSi0PHK/GSkOZ1b3ETe44ZCrRDdVd8S7mU+JH
Sl2cCP2dblsyI6+2AUP8eFwt0X+Fb4ipQpklPH8gr1Bmo3hae56sNw51qP4reOQm
Q4j0EUavq3q6ccD+TcS0TEVDSwoG/Zf4tz/O4tNRoQKBgQDXS2rekgHFgVs/F5Sg
62cskLPeNVB7GK6XQZhtGYNu+4h9FHbZSTqQoIgpBWK7Z8rI9f83dHM+RkmF9ZZL
MrVbYR4ysMP2HS2+YD71ADet8t5bAmTQ2PnSWs6thyFnp74FUAQ15hG+zAAy4XlI
tvVUOcSE4an7g2pWaoSKJ5CtIQKBgQDRayFcVHmhyPc96FqsyHqWsSVQn/wGZgdO
ht9ycTW6fpkyPpA4ha1Gi5fzAUc7QiV/VMbqFm5ZtbB+aTxXjlMadnt0YBDUa2x8
ikAlOSEW+my3zBZhWPTZsb1lm/6eVGejTrVzG0BsmTrBnECnWVmDC/tLqmdBFLlB
Fot8rKPeGwKBgEBmmu1BF66Q506UKy2HvTEjh+psYEqyM2ejg4j/HMXSEB36RSLy
OMaSfqhmqAYPIiXDEDjyaJa0R8H+mJqd7IoNHw9iuPuh9tD/0VVQX1d1UvY+XRHs
Fa7K4xAdX+y1zK2iJeBJlf1Q4K5XrAQIVpJ/RT3KkyJdSS3YZxU8iJaBAoGAWTda
rwsOBm6nZihm+NUv5KLzUrXVmKQ+2KV87DRuv1TPzyf4KRxKBZPS2CPjRMuZTfXA
CFomCPHujuwmWOa5YLy5O4rxoI1jWmtLiJAeGLv3NRYtMqvDJDskhPVANBOhU2Fk
y/UALUPaVEFNCf52s+2W0VV3R7Kcea4xHpwt86ECgYEAm6bD3HQ/j/QJAO88XFBO
bpd1EkDeTOA0lS02thKppF4ys9u4W7N/IiNT8oRj874NAwmwYJvsoVrDjxLeyhp5
P0g1qWUBFXzXrDyjXkZBkG5Rm3h1hc0qqeR4R8navd7Z3BPY8zrf+5uVv0omK5No
HRZJzXTe2EEWWrqAOu//4GE=
-----END PRIVATE KEY-----";
    const RSA_PUBLIC_KEY: &str = "\
-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAsB6q078mm5DX0zC26nic
JxJjGVMTrUp4puv/qwpeFd7xxa/GTInM3RDATpcPdZ3oLSFRcI9tDiOJmYzvOZoZ
0afiPmyMkXymNdkw9587mS4QkbtWVS51eTDj4X4v5dMfC4qNwm+8uYyNWPcolCjd
yYlNPHepQaVbu2Xa1Mqlm+OBc8C7lGCaN/cqB08G6SlyxWyAlD7Qf4JMFvGvoWcb
9c3YG1smEYjgUoIR6vROMLOB2F2gNiTJpYRC9uNSYuaekkHFQfyXKAmIw5XhO024
/fKzYNkq63L5hv+kQDraDBeoLS/LsVCcFFlCuQ7nlbtyw5dBHXMws6qsovVOCmfg
ewIDAQAB
-----END PUBLIC KEY-----";

    /// How a test client signs its tokens.
    enum Signer {
        Hmac(hmac::Key),
        Rsa(RsaKeyPair),
        Ecdsa(EcdsaKeyPair),
        Ed25519(Ed25519KeyPair),
    }

    impl Signer {
        fn hmac(algorithm: hmac::Algorithm, secret: &[u8]) -> Signer {
            Signer::Hmac(hmac::Key::new(algorithm, secret))
        }

        fn sign(&self, message: &[u8]) -> Vec<u8> {
            let rng = SystemRandom::new();
            match self {
                Signer::Hmac(key) => hmac::sign(key, message).as_ref().to_vec(),
                Signer::Rsa(pair) => {
                    let mut signature = vec![0; pair.public().modulus_len()];
                    pair.sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut signature)
                        .expect("an RSA signature");
                    signature
                }
                Signer::Ecdsa(pair) => pair
                    .sign(&rng, message)
                    .expect("a signature")
                    .as_ref()
                    .to_vec(),
                Signer::Ed25519(pair) => pair.sign(message).as_ref().to_vec(),
            }
        }
    }

    fn der(pem: &str) -> Vec<u8> {
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        STANDARD.decode(body).expect("base64")
    }

    /// A raw public key as a PEM SubjectPublicKeyInfo, behind the DER prefix of its type.
    fn public_pem(spki_prefix: &[u8], key: &[u8]) -> String {
        let encoded = STANDARD.encode([spki_prefix, key].concat());
        let lines: Vec<&str> = encoded
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect();
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            lines.join("\n")
        )
    }

    const P256_SPKI: &[u8] = &[
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    const ED25519_SPKI: &[u8] = &[
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];

    /// The consumers of these tests, one per algorithm, and how their clients sign.
    struct Keys {
        consumers: Vec<(&'static str, Value)>,
        /// Key claim, `alg` and signer.
        signers: Vec<(&'static str, &'static str, Signer)>,
        ecdsa_pem: String,
    }

    fn keys() -> Keys {
        let rng = SystemRandom::new();
        let p256 = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let ecdsa_pkcs8 = EcdsaKeyPair::generate_pkcs8(p256, &rng).expect("a P-256 key");
        let ecdsa = EcdsaKeyPair::from_pkcs8(p256, ecdsa_pkcs8.as_ref(), &rng).expect("a key");
        let ed_pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("an Ed25519 key");
        let ed = Ed25519KeyPair::from_pkcs8(ed_pkcs8.as_ref()).expect("an Ed25519 key");
        let rsa = RsaKeyPair::from_pkcs8(&der(RSA_PRIVATE_KEY)).expect("the RSA key");
        let ecdsa_pem = public_pem(P256_SPKI, ecdsa.public_key().as_ref());
        let ed_pem = public_pem(ED25519_SPKI, ed.public_key().as_ref());
        let hs512_secret = b"\x00\x01binary secret\xff";
        Keys {
            consumers: vec![
                ("jack", json!({"key": "jack-key", "secret": "jack-secret"})),
                (
                    "hs384",
                    json!({"key": "hs384-key", "secret": "s384", "algorithm": "HS384"}),
                ),
                (
                    "hs512",
                    json!({
                        "key": "hs512-key", "secret": STANDARD.encode(hs512_secret),
                        "algorithm": "HS512", "base64_secret": true
                    }),
                ),
                (
                    "rsa",
                    json!({"key": "rsa-key", "public_key": RSA_PUBLIC_KEY, "algorithm": "RS256"}),
                ),
                (
                    "ec",
                    json!({"key": "ec-key", "public_key": ecdsa_pem, "algorithm": "ES256"}),
                ),
                (
                    "ed",
                    json!({"key": "ed-key", "public_key": ed_pem, "algorithm": "EdDSA"}),
                ),
                (
                    "late",
                    json!({"key": "late-key", "secret": "late", "lifetime_grace_period": 60}),
                ),
            ],
            signers: vec![
                (
                    "jack-key",
                    "HS256",
                    Signer::hmac(hmac::HMAC_SHA256, b"jack-secret"),
                ),
                (
                    "hs384-key",
                    "HS384",
                    Signer::hmac(hmac::HMAC_SHA384, b"s384"),
                ),
                (
                    "hs512-key",
                    "HS512",
                    Signer::hmac(hmac::HMAC_SHA512, hs512_secret),
                ),
                ("rsa-key", "RS256", Signer::Rsa(rsa)),
                ("ec-key", "ES256", Signer::Ecdsa(ecdsa)),
                ("ed-key", "EdDSA", Signer::Ed25519(ed)),
            ],
            ecdsa_pem,
        }
    }

    /// A token of `alg` with `payload`, signed by `signer`.
    fn token(alg: &str, payload: Value, signer: &Signer) -> String {
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "typ": "JWT"}).to_string());
        let payload = URL_SAFE_NO_PAD.encode(payload.to_string());
        let input = format!("{header}.{payload}");
        let signature = URL_SAFE_NO_PAD.encode(signer.sign(input.as_bytes()));
        format!("{input}.{signature}")
    }

    /// A token of consumer `jack`'s algorithm and secret.
    fn hs256(payload: Value) -> String {
        token(
            "HS256",
            payload,
            &Signer::hmac(hmac::HMAC_SHA256, b"jack-secret"),
        )
    }

    fn plugin(config: Value, keys: &Keys) -> JwtAuth {
        let consumers = credentials(&DESCRIPTOR, &keys.consumers);
        let env = BuildEnv {
            protos: crate::protos::Protos::none(),
            credentials: &consumers,
            metadata: None,
            owner: "",
        };
        JwtAuth::new(&config, &env).expect("a valid configuration")
    }

    /// Who the consumer is and what the upstream gets, after rewrite.
    struct Outcome {
        reply: Option<Reply>,
        consumer: Option<String>,
        authorization: Option<String>,
        cookie: Option<String>,
        upstream_uri: Option<String>,
        payload: Option<Map<String, Value>>,
    }

    fn run_at(plugin: &JwtAuth, request: &TestRequest, now: u64) -> Outcome {
        let mut ctx = RequestCtx::new(request, "r1", None);
        let reply = replied(plugin.authenticate(&mut ctx, now));
        Outcome {
            reply,
            consumer: consumer_name(&ctx),
            authorization: ctx.header("authorization").map(|v| v.into_owned()),
            cookie: ctx.header("cookie").map(|v| v.into_owned()),
            upstream_uri: ctx.var("upstream_uri").map(|v| v.into_owned()),
            payload: ctx
                .state::<Arc<Map<String, Value>>>(DESCRIPTOR.name)
                .map(|p| (**p).clone()),
        }
    }

    fn run(plugin: &JwtAuth, request: &TestRequest) -> Outcome {
        run_at(plugin, request, NOW)
    }

    fn bearer(token: &str) -> TestRequest {
        TestRequest::get("/").header("Authorization", &format!("Bearer {token}"))
    }

    fn refused(outcome: Outcome, message: &str) {
        let reply = outcome.reply.expect("a 401");
        assert_eq!(reply.status, 401);
        assert_eq!(body(&reply), json!({ "message": message }));
        assert_eq!(
            reply_header(&reply, "www-authenticate"),
            Some("Bearer realm=\"jwt\"")
        );
        assert_eq!(outcome.consumer, None);
    }

    #[test]
    fn every_algorithm_verifies_its_consumers_tokens() {
        let keys = keys();
        let plugin = plugin(json!({}), &keys);
        for (key, alg, signer) in &keys.signers {
            let token = token(alg, json!({"key": key, "exp": NOW + 60}), signer);
            let outcome = run(&plugin, &bearer(&token));
            assert!(
                outcome.reply.is_none(),
                "{alg}: {:?}",
                outcome.reply.map(|r| body(&r))
            );
            assert!(outcome.consumer.is_some(), "{alg}");
            assert_eq!(outcome.authorization, Some(format!("Bearer {token}")));
            assert_eq!(outcome.payload, None);
        }
        let plain =
            TestRequest::get("/").header("authorization", &hs256(json!({"key": "jack-key"})));
        assert_eq!(run(&plugin, &plain).consumer.as_deref(), Some("jack"));
    }

    #[test]
    fn the_token_is_found_in_the_header_the_argument_or_the_cookie_and_hidden() {
        let keys = keys();
        let token = hs256(json!({"key": "jack-key"}));
        let config = json!({
            "header": "X-Token", "query": "t", "cookie": "sess", "hide_credentials": true
        });
        let plugin = plugin(config, &keys);

        let in_header = TestRequest::get("/a?t=x").header("X-Token", &token);
        let outcome = run(&plugin, &in_header);
        assert_eq!(outcome.consumer.as_deref(), Some("jack"));
        assert_eq!(outcome.upstream_uri.as_deref(), Some("/a?t=x"));

        let outcome = run(&plugin, &TestRequest::get(&format!("/a?b=1&t={token}")));
        assert_eq!(outcome.consumer.as_deref(), Some("jack"));
        assert_eq!(outcome.upstream_uri.as_deref(), Some("/a?b=1"));

        let in_cookie = TestRequest::get("/a").header("Cookie", &format!("a=1; sess={token}; b=2"));
        let outcome = run(&plugin, &in_cookie);
        assert_eq!(outcome.consumer.as_deref(), Some("jack"));
        assert_eq!(outcome.cookie.as_deref(), Some("a=1; b=2"));
        let only_cookie = TestRequest::get("/a").header("Cookie", &format!("sess={token}"));
        assert_eq!(run(&plugin, &only_cookie).cookie, None);

        // `Authorization` is not looked at when another header is named.
        refused(
            run(&plugin, &bearer(&token)),
            "Missing JWT token in request",
        );

        // The default places, not hidden.
        let defaults = self::plugin(json!({}), &keys);
        let in_query = format!("/?jwt={token}");
        let outcome = run(&defaults, &TestRequest::get(&in_query));
        assert_eq!(outcome.consumer.as_deref(), Some("jack"));
        assert_eq!(outcome.upstream_uri, Some(in_query));
        let cookie = TestRequest::get("/").header("Cookie", &format!("jwt={token}"));
        assert_eq!(run(&defaults, &cookie).consumer.as_deref(), Some("jack"));
    }

    #[test]
    fn bad_tokens_get_apisix_messages() {
        let keys = keys();
        let plugin = plugin(json!({}), &keys);
        refused(
            run(&plugin, &TestRequest::get("/")),
            "Missing JWT token in request",
        );
        refused(run(&plugin, &bearer("not.a-token")), "JWT token invalid");
        let cases = [
            (json!({"sub": "x"}), "missing user key in JWT token"),
            (json!({"key": "nobody"}), "Invalid user key in JWT token"),
            (json!({"key": 7}), "Invalid user key in JWT token"),
        ];
        for (payload, message) in cases {
            refused(run(&plugin, &bearer(&hs256(payload))), message);
        }

        let forged = token_with_bad_signature();
        let expired = hs256(json!({"key": "jack-key", "exp": NOW - 1}));
        let early = hs256(json!({"key": "jack-key", "nbf": NOW + 10}));
        let mut tampered = hs256(json!({"key": "jack-key"}));
        tampered.push('A');
        // The RS256 consumer's public key is no HMAC secret, whatever the token says.
        let public_as_secret = Signer::hmac(hmac::HMAC_SHA256, RSA_PUBLIC_KEY.as_bytes());
        let confused = token("HS256", json!({"key": "rsa-key"}), &public_as_secret);
        let unsigned = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(r#"{"key":"jack-key"}"#)
        );
        // Signed with the consumer's key, but naming another algorithm than the consumer's.
        let misnamed = token(
            "HS256",
            json!({"key": "hs384-key"}),
            &Signer::hmac(hmac::HMAC_SHA384, b"s384"),
        );
        for token in [
            forged, expired, early, tampered, confused, unsigned, misnamed,
        ] {
            refused(run(&plugin, &bearer(&token)), "failed to verify jwt");
        }
    }

    fn token_with_bad_signature() -> String {
        token(
            "HS256",
            json!({"key": "jack-key"}),
            &Signer::hmac(hmac::HMAC_SHA256, b"guess"),
        )
    }

    #[test]
    fn the_grace_period_and_required_claims_apply() {
        let keys = keys();
        let late = Signer::hmac(hmac::HMAC_SHA256, b"late");
        let plugin = plugin(json!({}), &keys);
        let just_expired = token("HS256", json!({"key": "late-key", "exp": NOW - 30}), &late);
        assert_eq!(
            run(&plugin, &bearer(&just_expired)).consumer.as_deref(),
            Some("late")
        );
        let long_expired = token("HS256", json!({"key": "late-key", "exp": NOW - 61}), &late);
        refused(run(&plugin, &bearer(&long_expired)), "failed to verify jwt");

        let strict = self::plugin(json!({"claims_to_verify": ["exp"]}), &keys);
        let without_exp = hs256(json!({"key": "jack-key"}));
        refused(run(&strict, &bearer(&without_exp)), "failed to verify jwt");
        let with_exp = hs256(json!({"key": "jack-key", "exp": NOW + 1}));
        assert_eq!(
            run(&strict, &bearer(&with_exp)).consumer.as_deref(),
            Some("jack")
        );
    }

    #[test]
    fn the_key_claim_and_the_stored_payload_are_configurable() {
        let keys = keys();
        let plugin = plugin(
            json!({"key_claim_name": "iss", "store_in_ctx": true}),
            &keys,
        );
        let token = hs256(json!({"iss": "jack-key", "role": "admin"}));
        let outcome = run(&plugin, &bearer(&token));
        assert_eq!(outcome.consumer.as_deref(), Some("jack"));
        let payload = outcome.payload.expect("the payload");
        assert_eq!(payload.get("role"), Some(&json!("admin")));
        assert!(
            run(&plugin, &bearer(&token)).payload.is_some(),
            "from the cache too"
        );
        let keyed = hs256(json!({"key": "jack-key"}));
        refused(
            run(&plugin, &bearer(&keyed)),
            "missing user key in JWT token",
        );
    }

    #[test]
    fn a_verified_token_is_served_from_the_cache_until_it_expires() {
        let keys = keys();
        let plugin = plugin(json!({}), &keys);
        let exp = NOW + 100;
        let token = hs256(json!({"key": "jack-key", "exp": exp}));
        assert!(plugin.verified.get(&token, NOW).is_none());
        assert_eq!(
            run(&plugin, &bearer(&token)).consumer.as_deref(),
            Some("jack")
        );
        assert!(
            plugin.verified.get(&token, NOW).is_some(),
            "verified once, then cached"
        );
        assert_eq!(
            run_at(&plugin, &bearer(&token), exp - 1)
                .consumer
                .as_deref(),
            Some("jack")
        );
        refused(
            run_at(&plugin, &bearer(&token), exp),
            "failed to verify jwt",
        );

        let forged = token_with_bad_signature();
        refused(run(&plugin, &bearer(&forged)), "failed to verify jwt");
        assert!(
            plugin.verified.get(&forged, NOW).is_none(),
            "refusals are not cached"
        );
    }

    #[test]
    fn bad_configurations_are_refused_with_their_path() {
        for (config, path) in [
            (json!({"key_claim_name": ""}), "key_claim_name"),
            (
                json!({"claims_to_verify": ["exp", "exp"]}),
                "claims_to_verify[1]",
            ),
            (json!({"claims_to_verify": ["iat"]}), "claims_to_verify[0]"),
            (json!({"realm": "a\\b"}), "realm"),
            (json!({"store_in_ctx": "yes"}), "store_in_ctx"),
        ] {
            assert_eq!(refusal(&DESCRIPTOR, config.clone()).path, path, "{config}");
        }
        let ecdsa_pem = keys().ecdsa_pem;
        let rsa = RSA_PUBLIC_KEY;
        for (config, path, message) in [
            (json!({"key": ""}), "key", "must not be empty"),
            (
                json!({"key": "k"}),
                "secret",
                "\"secret\" is required when using HS based",
            ),
            (
                json!({"key": "k", "secret": "*", "base64_secret": true}),
                "secret",
                "base64_secret required but the secret is not in base64 format",
            ),
            (
                json!({"key": "k", "algorithm": "RS256"}),
                "public_key",
                "missing valid public key",
            ),
            (
                json!({"key": "k", "algorithm": "PS256", "public_key": rsa}),
                "algorithm",
                "",
            ),
            (
                json!({"key": "k", "algorithm": "RS256", "public_key": "x"}),
                "public_key",
                "PEM",
            ),
            (
                json!({"key": "k", "algorithm": "RS256", "public_key": ecdsa_pem}),
                "public_key",
                "RSA",
            ),
            (
                json!({"key": "k", "algorithm": "ES256", "public_key": rsa}),
                "public_key",
                "P-256",
            ),
            (
                json!({"key": "k", "algorithm": "EdDSA", "public_key": ecdsa_pem}),
                "public_key",
                "Ed25519",
            ),
            (json!({"key": "k", "secret": "s", "exp": 0}), "exp", ""),
            (
                json!({"key": "k", "secret": "s", "lifetime_grace_period": -1}),
                "lifetime_grace_period",
                "",
            ),
            (
                json!({"key": "k", "secret": "s", "private": "x"}),
                "private",
                "",
            ),
        ] {
            let got = credential_refusal(&DESCRIPTOR, config.clone());
            assert_eq!(got.path, path, "{config}");
            assert!(got.message.contains(message), "{config}: {}", got.message);
        }
    }

    #[test]
    fn cookies_are_removed_by_name() {
        assert_eq!(without_cookie("a=1; jwt=x; b=2", "jwt"), "a=1; b=2");
        assert_eq!(without_cookie("jwt=x", "jwt"), "");
        assert_eq!(without_cookie("jwts=x;jwt=y", "jwt"), "jwts=x");
    }
}
