//! Secrets sealed at rest: SSL private keys are stored encrypted, never as plain PEM.
//!
//! A [`Keyring`] holds one or more secrets. The first seals; every one is tried when opening,
//! so a secret can be rotated by putting the new one first and keeping the old one until every
//! sealed value has been written again. Each secret is expanded with HKDF-SHA256 into an
//! AES-256-GCM key; every sealed value has its own random nonce and carries a version prefix
//! (`pylon-sealed:v1:`) so that the format can change without guessing.
//!
//! Secrets are meant to be long random strings (as [`Keyring::load_or_generate`] makes), not
//! passwords: the key derivation is not built to slow down guessing.

use std::path::{Path, PathBuf};

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::secret_file::read_or_create_secrets;

/// What every sealed value starts with; the rest is base64 of nonce, ciphertext and tag.
const SEALED_PREFIX: &str = "pylon-sealed:v1:";
/// Binds the derived keys to this one use: a secret shared with something else yields other keys.
const DERIVATION_SALT: &[u8] = b"pylon keyring";
const DERIVATION_INFO: &[u8] = b"pylon sealed values v1";

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("no secret to seal or open secrets (SSL private keys, credentials) with: set data_encryption.keyring")]
    NoSecrets,
    #[error("{field}: sealed value is damaged or of an unknown version")]
    Malformed { field: String },
    #[error("{field}: sealed with a secret this keyring does not hold")]
    UnknownSecret { field: String },
    #[error("the system random number generator failed")]
    Random,
    #[error("value too large to seal")]
    TooLarge,
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub struct Keyring {
    /// The first key seals; all are tried to open.
    keys: Vec<LessSafeKey>,
    random: SystemRandom,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        write!(f, "Keyring({} secrets)", self.keys.len())
    }
}

impl Keyring {
    /// A keyring from `secrets`: the first seals, all open. A keyring without secrets
    /// (a cluster whose nodes were given none) reads plain keys, and refuses to seal or to
    /// open a sealed one.
    pub fn new(secrets: &[String]) -> Keyring {
        let keys: Vec<LessSafeKey> = secrets
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| derive_key(s))
            .collect();
        Keyring {
            keys,
            random: SystemRandom::new(),
        }
    }

    /// The keyring whose secrets are the non-empty lines of `path`; when the file does not
    /// exist, one random secret is generated into it (readable by its owner only).
    pub fn load_or_generate(path: &Path) -> Result<Keyring, KeyringError> {
        let secrets = read_or_create_secrets(path).map_err(|source| KeyringError::Io {
            path: path.to_owned(),
            source,
        })?;
        if secrets.is_empty() {
            return Err(KeyringError::NoSecrets);
        }
        Ok(Keyring::new(&secrets))
    }

    /// Whether `text` is a sealed value (of any version this build knows).
    pub fn is_sealed(text: &str) -> bool {
        text.starts_with(SEALED_PREFIX)
    }

    /// Seals `plain` with the first secret.
    pub fn seal(&self, plain: &str) -> Result<String, KeyringError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| KeyringError::Random)?;
        let key = self.keys.first().ok_or(KeyringError::NoSecrets)?;
        let mut sealed = plain.as_bytes().to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(SEALED_PREFIX.as_bytes()),
            &mut sealed,
        )
        // Fails only for inputs beyond AES-GCM's limit (64 GiB), far over any body limit.
        .map_err(|_| KeyringError::TooLarge)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(format!(
            "{SEALED_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(out)
        ))
    }

    /// Opens a sealed value; anything else is returned as it is (a plain PEM written by hand).
    /// `field` names the value in errors.
    pub fn open(&self, text: &str, field: &str) -> Result<String, KeyringError> {
        let Some(encoded) = text.strip_prefix(SEALED_PREFIX) else {
            return Ok(text.to_owned());
        };
        let malformed = || KeyringError::Malformed {
            field: field.to_owned(),
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| malformed())?;
        if bytes.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(malformed());
        }
        if self.keys.is_empty() {
            return Err(KeyringError::NoSecrets);
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        for key in &self.keys {
            let mut buffer = sealed.to_vec();
            let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| malformed())?;
            if let Ok(plain) =
                key.open_in_place(nonce, Aad::from(SEALED_PREFIX.as_bytes()), &mut buffer)
            {
                return String::from_utf8(plain.to_vec()).map_err(|_| malformed());
            }
        }
        Err(KeyringError::UnknownSecret {
            field: field.to_owned(),
        })
    }

    /// Seals the strings at `pointers` (JSON pointers into `value`, such as
    /// `/plugins/key-auth/key`) that are not sealed yet; pointers to nothing are skipped.
    pub fn seal_at(
        &self,
        value: &mut serde_json::Value,
        pointers: &[String],
    ) -> Result<(), KeyringError> {
        for pointer in pointers {
            if let Some(serde_json::Value::String(text)) = value.pointer_mut(pointer) {
                if !Keyring::is_sealed(text) {
                    *text = self.seal(text)?;
                }
            }
        }
        Ok(())
    }

    /// Opens the sealed strings at `pointers` in place; plain ones are left as they are.
    pub fn open_at(
        &self,
        value: &mut serde_json::Value,
        pointers: &[String],
    ) -> Result<(), KeyringError> {
        for pointer in pointers {
            if let Some(serde_json::Value::String(text)) = value.pointer_mut(pointer) {
                *text = self.open(text, pointer)?;
            }
        }
        Ok(())
    }

    /// Seals an SSL object's private keys (`key` and every `keys[*]`) that are not sealed yet.
    /// A `$env://` or `$secret://` reference is no key: it stays readable, as written.
    pub fn seal_ssl(&self, ssl: &mut serde_json::Value) -> Result<(), KeyringError> {
        for (_, slot) in private_keys(ssl) {
            if let serde_json::Value::String(text) = slot {
                if !Keyring::is_sealed(text) && !pylon_model::is_secret_reference(text) {
                    *text = self.seal(text)?;
                }
            }
        }
        Ok(())
    }

    /// Opens an SSL object's sealed private keys in place; plain ones are left as they are.
    pub fn open_ssl(&self, ssl: &mut serde_json::Value) -> Result<(), KeyringError> {
        for (field, slot) in private_keys(ssl) {
            if let serde_json::Value::String(text) = slot {
                *text = self.open(text, &field)?;
            }
        }
        Ok(())
    }
}

/// The private key slots of an SSL object, with their field paths.
fn private_keys(ssl: &mut serde_json::Value) -> Vec<(String, &mut serde_json::Value)> {
    let Some(object) = ssl.as_object_mut() else {
        return Vec::new();
    };
    let mut slots = Vec::new();
    for (name, value) in object.iter_mut() {
        match (name.as_str(), value) {
            ("key", value) => slots.push(("key".to_owned(), value)),
            ("keys", serde_json::Value::Array(items)) => slots.extend(
                items
                    .iter_mut()
                    .enumerate()
                    .map(|(i, item)| (format!("keys[{i}]"), item)),
            ),
            _ => {}
        }
    }
    slots
}

fn derive_key(secret: &str) -> LessSafeKey {
    let prk =
        ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, DERIVATION_SALT).extract(secret.as_bytes());
    // Expanding to one AES-256 key is far below HKDF's output limit: it cannot fail.
    let okm = prk
        .expand(&[DERIVATION_INFO], &AES_256_GCM)
        .expect("HKDF expands to one key");
    LessSafeKey::new(UnboundKey::from(okm))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PEM: &str = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";

    fn keyring(secrets: &[&str]) -> Keyring {
        Keyring::new(&secrets.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn seals_with_the_first_secret_and_opens_with_any() {
        let old = keyring(&["old"]);
        let sealed_by_old = old.seal(PEM).unwrap();
        assert!(sealed_by_old.starts_with("pylon-sealed:v1:"));
        assert!(!sealed_by_old.contains("PRIVATE"));
        assert_ne!(
            old.seal(PEM).unwrap(),
            sealed_by_old,
            "a fresh nonce every time"
        );

        let rotated = keyring(&["new", "old"]);
        assert_eq!(rotated.open(&sealed_by_old, "key").unwrap(), PEM);
        let sealed_by_new = rotated.seal(PEM).unwrap();
        let err = old.open(&sealed_by_new, "keys[1]").unwrap_err();
        assert_eq!(
            err.to_string(),
            "keys[1]: sealed with a secret this keyring does not hold"
        );
    }

    #[test]
    fn ssl_keys_are_sealed_and_opened_in_place_and_plain_ones_pass() {
        let ring = keyring(&["s"]);
        let mut ssl = json!({"cert": "c", "key": PEM, "keys": [PEM, PEM], "snis": ["a"]});
        ring.seal_ssl(&mut ssl).unwrap();
        assert!(Keyring::is_sealed(ssl["key"].as_str().unwrap()));
        assert!(Keyring::is_sealed(ssl["keys"][1].as_str().unwrap()));
        assert_eq!(ssl["cert"], "c");
        let sealed = ssl.clone();
        ring.seal_ssl(&mut ssl).unwrap();
        assert_eq!(ssl, sealed, "sealing twice changes nothing");

        ring.open_ssl(&mut ssl).unwrap();
        assert_eq!(
            ssl,
            json!({"cert": "c", "key": PEM, "keys": [PEM, PEM], "snis": ["a"]})
        );
        ring.open_ssl(&mut ssl).unwrap();
        assert_eq!(ssl["key"], PEM, "a plain key is left as it is");

        let mut referring = json!({"key": "$env://SSL_KEY", "keys": ["$secret://vault/1/k", PEM]});
        ring.seal_ssl(&mut referring).unwrap();
        assert_eq!(referring["key"], "$env://SSL_KEY");
        assert_eq!(referring["keys"][0], "$secret://vault/1/k");
        assert!(Keyring::is_sealed(referring["keys"][1].as_str().unwrap()));

        let mut damaged = json!({"key": "pylon-sealed:v1:!!"});
        assert_eq!(
            ring.open_ssl(&mut damaged).unwrap_err().to_string(),
            "key: sealed value is damaged or of an unknown version"
        );
    }

    #[test]
    fn a_keyring_without_secrets_reads_plain_keys_and_refuses_to_seal() {
        let sealed = Keyring::new(&["s".to_owned()]).seal("k").unwrap();
        let empty = Keyring::new(&[String::new()]);
        assert_eq!(empty.open("plain", "key").unwrap(), "plain");
        assert!(matches!(empty.seal("k"), Err(KeyringError::NoSecrets)));
        assert!(matches!(
            empty.open(&sealed, "key"),
            Err(KeyringError::NoSecrets)
        ));
    }

    #[test]
    fn generates_a_private_secret_once_and_reuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/keyring");
        let first = Keyring::load_or_generate(&path).unwrap();
        let sealed = first.seal(PEM).unwrap();
        let again = Keyring::load_or_generate(&path).unwrap();
        assert_eq!(again.open(&sealed, "key").unwrap(), PEM);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
