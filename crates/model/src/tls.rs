//! PEM certificates and private keys: parsing, and the checks shared by every resource that
//! carries them (`ssls`, an upstream's client certificate).
//!
//! The proxy takes its key material from here ([`KeyPair`], [`parse_certificates`]) so that a
//! certificate is parsed by one piece of code, the one that validated it.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::{CertifiedKey, SigningKey};
use rustls::InconsistentKeys;

use crate::error::FieldError;
use crate::reference::is_secret_reference;

/// A certificate chain (leaf first) and the private key of its leaf, parsed and checked.
pub struct KeyPair {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl KeyPair {
    /// The pair in the form rustls serves or presents it.
    pub fn certified_key(&self) -> Result<CertifiedKey, String> {
        let key = signing_key(&self.key)?;
        Ok(CertifiedKey::new(self.chain.clone(), key))
    }
}

impl Clone for KeyPair {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field(
                "chain",
                &format_args!("{} certificate(s)", self.chain.len()),
            )
            .field("key", &REDACTED)
            .finish()
    }
}

/// What `Debug` prints instead of a private key, so that keys never reach a log.
pub(crate) const REDACTED: Redacted = Redacted;

#[derive(Clone, Copy)]
pub(crate) struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Every certificate in a PEM text, in order; other PEM blocks are ignored.
pub fn parse_certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    if is_secret_reference(pem) {
        return Err(MISPLACED_REFERENCE.to_owned());
    }
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "not a PEM certificate".to_owned())?;
    if certs.is_empty() {
        return Err("not a PEM certificate".to_owned());
    }
    for (i, cert) in certs.iter().enumerate() {
        if let Err(e) = x509_parser::parse_x509_certificate(cert) {
            return Err(format!(
                "certificate {} in the PEM text is not valid X.509: {e}",
                i + 1
            ));
        }
    }
    Ok(certs)
}

/// The first private key in a PEM text (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub fn parse_private_key(pem: &str) -> Result<PrivateKeyDer<'static>, String> {
    if is_secret_reference(pem) {
        return Err(MISPLACED_REFERENCE.to_owned());
    }
    match rustls_pemfile::private_key(&mut pem.as_bytes()) {
        Ok(Some(key)) => Ok(key),
        // rustls-pemfile skips encrypted keys (`ENCRYPTED PRIVATE KEY` blocks, or
        // `Proc-Type: 4,ENCRYPTED` headers) as unknown: say why instead.
        _ if pem.contains("ENCRYPTED") => {
            Err("is an encrypted private key: decrypt it first".to_owned())
        }
        _ => Err("not a PEM private key".to_owned()),
    }
}

/// Why a reference where PEM text is expected is refused: "not a PEM certificate" would be a
/// puzzling answer to an APISIX user, whose gateway takes references in more places.
const MISPLACED_REFERENCE: &str =
    "`$env://` and `$secret://` references are accepted only in an ssl's `cert`, `key`, `certs` and `keys`";

fn signing_key(key: &PrivateKeyDer<'_>) -> Result<Arc<dyn SigningKey>, String> {
    rustls::crypto::ring::sign::any_supported_type(key)
        .map_err(|e| format!("not a usable private key: {e}"))
}

/// Parses and checks one certificate chain and its key: both parse, the key is the leaf's, and
/// the leaf is valid at `now`. Errors name `cert_path` or `key_path`; every problem is reported,
/// so an `Err` is never empty.
pub(crate) fn load_key_pair(
    cert: &str,
    key: &str,
    cert_path: &str,
    key_path: &str,
    now: SystemTime,
) -> Result<KeyPair, Vec<FieldError>> {
    let mut errors = Vec::new();
    let chain = check_certificate(cert, now)
        .map_err(|m| errors.push(FieldError::new(cert_path, m)))
        .ok();
    let key = check_private_key(key)
        .map_err(|m| errors.push(FieldError::new(key_path, m)))
        .ok();
    let (Some(chain), Some((key, signer))) = (chain, key) else {
        return Err(errors);
    };
    match CertifiedKey::new(chain.clone(), signer).keys_match() {
        // A key that cannot tell its public half is not refused on a guess.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            return Err(vec![FieldError::new(
                key_path,
                "does not match the certificate",
            )]);
        }
        Err(e) => {
            return Err(vec![FieldError::new(
                cert_path,
                format!("certificate is not usable: {e}"),
            )])
        }
    }
    Ok(KeyPair { chain, key })
}

/// A certificate chain, parsed, whose leaf is valid at `now`.
pub(crate) fn check_certificate(
    pem: &str,
    now: SystemTime,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = parse_certificates(pem)?;
    check_validity(&chain[0], now)?;
    Ok(chain)
}

/// A private key, parsed, that rustls can sign with.
pub(crate) fn check_private_key(
    pem: &str,
) -> Result<(PrivateKeyDer<'static>, Arc<dyn SigningKey>), String> {
    let der = parse_private_key(pem)?;
    let signer = signing_key(&der)?;
    Ok((der, signer))
}

/// Refuses a certificate outside its validity period: TLS clients would refuse it anyway, and
/// the error is better found when the configuration is written than on the first handshake.
fn check_validity(cert: &CertificateDer<'_>, now: SystemTime) -> Result<(), String> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| format!("not valid X.509: {e}"))?;
    let validity = parsed.validity();
    let now = match now.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    };
    let not_before = validity.not_before.timestamp();
    let not_after = validity.not_after.timestamp();
    if now < not_before {
        return Err(format!(
            "certificate is not valid before {}",
            rfc3339(not_before)
        ));
    }
    if now > not_after {
        return Err(format!("certificate expired at {}", rfc3339(not_after)));
    }
    Ok(())
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since 1970 (any sign), by the days-to-civil-date
/// conversion of the proleptic Gregorian calendar (as in Howard Hinnant's `civil_from_days`).
fn rfc3339(timestamp: i64) -> String {
    let (days, secs) = (timestamp.div_euclid(86_400), timestamp.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3_600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_certs::{ca_and_leaf, ecdsa, rsa, valid_between};

    fn load(cert: &str, key: &str) -> Result<KeyPair, Vec<String>> {
        load_key_pair(cert, key, "cert", "key", SystemTime::now())
            .map_err(|errors| errors.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn a_matching_pair_loads_and_serves() {
        for pem in [ecdsa(&["a.test"]), rsa(&["a.test"])] {
            let pair = load(&pem.cert, &pem.key).unwrap();
            assert_eq!(pair.chain.len(), 1);
            assert!(pair.certified_key().unwrap().keys_match().is_ok());
        }
        let (_, leaf) = ca_and_leaf(&["a.test"]);
        assert_eq!(load(&leaf.cert, &leaf.key).unwrap().chain.len(), 2);
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let (a, b) = (ecdsa(&["a.test"]), ecdsa(&["a.test"]));
        assert_eq!(
            load(&a.cert, &b.key).unwrap_err(),
            ["key: does not match the certificate"]
        );
        let other_algorithm = rsa(&["a.test"]);
        assert_eq!(
            load(&a.cert, &other_algorithm.key).unwrap_err(),
            ["key: does not match the certificate"]
        );
    }

    #[test]
    fn certificates_outside_their_validity_are_refused() {
        let expired = valid_between(&["a.test"], (2000, 1, 1), (2001, 1, 1));
        assert_eq!(
            load(&expired.cert, &expired.key).unwrap_err(),
            ["cert: certificate expired at 2001-01-01T00:00:00Z"]
        );
        let early = valid_between(&["a.test"], (2990, 6, 1), (2999, 1, 1));
        assert_eq!(
            load(&early.cert, &early.key).unwrap_err(),
            ["cert: certificate is not valid before 2990-06-01T00:00:00Z"]
        );
    }

    #[test]
    fn text_that_is_not_pem_is_refused_with_the_reason() {
        let good = ecdsa(&["a.test"]);
        assert_eq!(
            load("hello", "world").unwrap_err(),
            ["cert: not a PEM certificate", "key: not a PEM private key"]
        );
        // A key where the certificate belongs, and the other way round.
        assert_eq!(
            load(&good.key, &good.cert).unwrap_err(),
            ["cert: not a PEM certificate", "key: not a PEM private key"]
        );
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(parse_certificates(garbage)
            .unwrap_err()
            .starts_with("certificate 1 in the PEM text is not valid X.509"));
        assert_eq!(
            parse_private_key("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n")
                .unwrap_err(),
            "is an encrypted private key: decrypt it first"
        );
        assert_eq!(
            parse_certificates("$secret://vault/1/cert").unwrap_err(),
            MISPLACED_REFERENCE
        );
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let pem = ecdsa(&["a.test"]);
        let pair = load(&pem.cert, &pem.key).unwrap();
        let debug = format!("{pair:?}");
        assert_eq!(
            debug,
            "KeyPair { chain: 1 certificate(s), key: <redacted> }"
        );
    }

    #[test]
    fn timestamps_format_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_704_067_199), "2023-12-31T23:59:59Z");
        assert_eq!(rfc3339(1_704_067_200), "2024-01-01T00:00:00Z");
        assert_eq!(rfc3339(253_402_300_799), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }
}
