//! A JSON Web Token in JWS compact form, and its time claims.

use base64::alphabet::URL_SAFE;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

/// JWS drops the padding; a padded token decodes too.
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A token, decoded but not verified.
pub(super) struct Token<'t> {
    /// `header.payload`: what the signature signs.
    pub signing_input: &'t str,
    /// The header's `alg`.
    pub algorithm: String,
    pub payload: Map<String, Value>,
    pub signature: Vec<u8>,
}

impl<'t> Token<'t> {
    /// Decodes `header.payload.signature`; `None` unless both parts are JSON objects, the
    /// header names its algorithm and every part is base64url.
    pub(super) fn decode(token: &'t str) -> Option<Token<'t>> {
        let (signing_input, signature) = token.rsplit_once('.')?;
        let (header, payload) = signing_input.split_once('.')?;
        let object = |part: &str| match serde_json::from_slice(&BASE64URL.decode(part).ok()?) {
            Ok(Value::Object(map)) => Some(map),
            _ => None,
        };
        let algorithm = object(header)?.get("alg")?.as_str()?.to_owned();
        Some(Token {
            signing_input,
            algorithm,
            payload: object(payload)?,
            signature: BASE64URL.decode(signature).ok()?,
        })
    }
}

/// A registered claim about a token's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum Claim {
    /// Expiration time: the token is refused from then on.
    Exp,
    /// Not before: the token is refused until then.
    Nbf,
}

impl Claim {
    fn name(self) -> &'static str {
        match self {
            Claim::Exp => "exp",
            Claim::Nbf => "nbf",
        }
    }
}

/// Checks the time claims of `payload` at `now` (seconds since the epoch), allowing `grace`
/// seconds of clock skew. `required` claims must be present; without any, `exp` and `nbf`
/// are checked when present. Returns until when the token stays valid (its `exp` plus the
/// grace), or why it is not valid now.
pub(super) fn check_lifetime(
    payload: &Map<String, Value>,
    required: &[Claim],
    grace: u64,
    now: u64,
) -> Result<Option<f64>, String> {
    let checked: &[Claim] = if required.is_empty() {
        &[Claim::Exp, Claim::Nbf]
    } else {
        required
    };
    let (now, grace) = (now as f64, grace as f64);
    for &claim in checked {
        let Some(value) = payload.get(claim.name()) else {
            if required.is_empty() {
                continue;
            }
            return Err(format!("claim {} is missing", claim.name()));
        };
        let Some(time) = value.as_f64() else {
            return Err(format!("claim {} is not a number", claim.name()));
        };
        let valid = match claim {
            Claim::Exp => now < time + grace,
            Claim::Nbf => time <= now + grace,
        };
        if !valid {
            return Err(format!("'{}' claim not valid at {now}", claim.name()));
        }
    }
    let exp = payload.get("exp").and_then(Value::as_f64);
    Ok(exp.map(|exp| exp + grace))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn payload(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn only_well_formed_tokens_decode() {
        let token = "eyJhbGciOiJIUzI1NiJ9.eyJrZXkiOiJqYWNrIn0.c2ln";
        let decoded = Token::decode(token).expect("a token");
        assert_eq!(
            decoded.signing_input,
            "eyJhbGciOiJIUzI1NiJ9.eyJrZXkiOiJqYWNrIn0"
        );
        assert_eq!(decoded.algorithm, "HS256");
        assert_eq!(decoded.payload, payload(json!({"key": "jack"})));
        assert_eq!(decoded.signature, b"sig");
        for bad in [
            "",
            "a.b",
            "eyJhbGciOiJIUzI1NiJ9.eyJrZXkiOiJqYWNrIn0",
            "eyJhbGciOiJIUzI1NiJ9.e30.c2ln.c2ln",
            "e30.eyJrZXkiOiJqYWNrIn0.c2ln",
            "eyJhbGciOiJIUzI1NiJ9.WzFd.c2ln",
            "eyJhbGciOiJIUzI1NiJ9.eyJrZXkiOiJqYWNrIn0.c2l*",
        ] {
            assert!(Token::decode(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn time_claims_are_checked_with_the_grace_period() {
        let claims = payload(json!({"exp": 100, "nbf": 50}));
        assert_eq!(check_lifetime(&claims, &[], 0, 99), Ok(Some(100.0)));
        assert!(check_lifetime(&claims, &[], 0, 100).is_err());
        assert_eq!(check_lifetime(&claims, &[], 10, 109), Ok(Some(110.0)));
        assert!(check_lifetime(&claims, &[], 0, 49).is_err());
        assert!(check_lifetime(&claims, &[], 1, 49).is_ok());

        let none = payload(json!({}));
        assert_eq!(check_lifetime(&none, &[], 0, 1), Ok(None));
        assert!(check_lifetime(&none, &[Claim::Exp], 0, 1).is_err());
        let text = payload(json!({"exp": "100"}));
        assert!(check_lifetime(&text, &[], 0, 1).is_err());
    }
}
