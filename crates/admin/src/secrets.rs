//! Secrets at rest: SSL private keys and the consumers' credentials (API keys, passwords,
//! HMAC and JWT secrets) are stored sealed by the keyring. They are opened only to be checked
//! or compared, and every answer shows them sealed.

use pylon_model::Kind;
use pylon_store::{Keyring, KeyringError};
use serde_json::Value;

/// Seals what of `value` (a resource of `kind`) is secret and not sealed yet.
pub(crate) fn seal(keyring: &Keyring, kind: Kind, value: &mut Value) -> Result<(), KeyringError> {
    match kind {
        Kind::Ssls => keyring.seal_ssl(value),
        _ => keyring.seal_at(value, &pylon_plugins::secret_pointers(kind, value)),
    }
}

/// Opens what of `value` is sealed, in place.
pub(crate) fn open(keyring: &Keyring, kind: Kind, value: &mut Value) -> Result<(), KeyringError> {
    match kind {
        Kind::Ssls => keyring.open_ssl(value),
        _ => keyring.open_at(value, &pylon_plugins::secret_pointers(kind, value)),
    }
}

/// Whether resources of `kind` can hold secrets.
pub(crate) fn may_hold(kind: Kind) -> bool {
    matches!(kind, Kind::Ssls | Kind::Consumers | Kind::Credentials)
}
