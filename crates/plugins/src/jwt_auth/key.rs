//! The keys tokens are verified with: a shared secret (HMAC) or a public key from PEM.

use ring::hmac;
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use schemars::JsonSchema;
use serde::Deserialize;
use x509_parser::der_parser::oid::Oid;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

/// The signature algorithms a consumer's tokens may use: JWS's `alg` names.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
pub(super) enum Algorithm {
    /// HMAC with SHA-256, over `secret`.
    #[default]
    HS256,
    /// HMAC with SHA-384, over `secret`.
    HS384,
    /// HMAC with SHA-512, over `secret`.
    HS512,
    /// RSASSA-PKCS1-v1_5 with SHA-256, by an RSA `public_key` of 2048 to 8192 bits.
    RS256,
    /// ECDSA on P-256 with SHA-256, by an EC `public_key`.
    ES256,
    /// Ed25519, by an Ed25519 `public_key`.
    EdDSA,
}

impl Algorithm {
    /// The name a token's header gives it (`alg`).
    pub(super) fn name(self) -> &'static str {
        match self {
            Algorithm::HS256 => "HS256",
            Algorithm::HS384 => "HS384",
            Algorithm::HS512 => "HS512",
            Algorithm::RS256 => "RS256",
            Algorithm::ES256 => "ES256",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    pub(super) fn is_hmac(self) -> bool {
        matches!(self, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
    }
}

/// What checks a token's signature.
pub(super) enum VerifyingKey {
    Hmac(hmac::Key),
    Public(UnparsedPublicKey<Vec<u8>>),
}

impl VerifyingKey {
    /// The key of an HMAC algorithm.
    pub(super) fn hmac(algorithm: Algorithm, secret: &[u8]) -> VerifyingKey {
        let hmac_algorithm = match algorithm {
            Algorithm::HS384 => hmac::HMAC_SHA384,
            Algorithm::HS512 => hmac::HMAC_SHA512,
            _ => hmac::HMAC_SHA256,
        };
        VerifyingKey::Hmac(hmac::Key::new(hmac_algorithm, secret))
    }

    /// The key of a public-key algorithm, from a PEM `PUBLIC KEY` (SubjectPublicKeyInfo)
    /// of the type the algorithm needs.
    pub(super) fn public(algorithm: Algorithm, pem: &str) -> Result<VerifyingKey, &'static str> {
        const NOT_PEM: &str = "must be a PEM public key (-----BEGIN PUBLIC KEY-----)";
        let der = rustls_pemfile::public_keys(&mut pem.as_bytes())
            .next()
            .ok_or(NOT_PEM)?
            .map_err(|_| NOT_PEM)?;
        let (_, spki) = SubjectPublicKeyInfo::from_der(der.as_ref()).map_err(|_| NOT_PEM)?;
        let key_type = &spki.algorithm.algorithm;
        let bits = spki.subject_public_key.data.to_vec();
        let verification: &'static dyn VerificationAlgorithm = match algorithm {
            Algorithm::RS256 => {
                let size = match spki.parsed() {
                    Ok(PublicKey::RSA(rsa)) if *key_type == OID_PKCS1_RSAENCRYPTION => {
                        rsa.key_size()
                    }
                    _ => return Err("RS256 needs an RSA public key"),
                };
                if !(2048..=8192).contains(&size) {
                    return Err("RS256 needs an RSA key of 2048 to 8192 bits");
                }
                &signature::RSA_PKCS1_2048_8192_SHA256
            }
            Algorithm::ES256 => {
                let curve = spki
                    .algorithm
                    .parameters
                    .clone()
                    .and_then(|p| Oid::try_from(p).ok());
                let p256 = *key_type == OID_KEY_TYPE_EC_PUBLIC_KEY
                    && curve.is_some_and(|c| c == OID_EC_P256);
                if !p256 || bits.len() != 65 || bits[0] != 4 {
                    return Err("ES256 needs a P-256 public key");
                }
                &signature::ECDSA_P256_SHA256_FIXED
            }
            Algorithm::EdDSA => {
                if *key_type != OID_SIG_ED25519 || bits.len() != 32 {
                    return Err("EdDSA needs an Ed25519 public key");
                }
                &signature::ED25519
            }
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                return Err("HMAC algorithms use `secret`, not a public key")
            }
        };
        Ok(VerifyingKey::Public(UnparsedPublicKey::new(
            verification,
            bits,
        )))
    }

    /// Whether `signature` signs `message` (in constant time for HMAC).
    pub(super) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            VerifyingKey::Hmac(key) => hmac::verify(key, message, signature).is_ok(),
            VerifyingKey::Public(key) => key.verify(message, signature).is_ok(),
        }
    }
}
