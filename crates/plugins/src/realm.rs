//! The `realm` of an authentication plugin's `WWW-Authenticate` challenge.

use pylon_model::FieldError;

/// The JSON Schema pattern of a realm: printable ASCII but `"` and `\`, which would end or
/// escape the quoted value.
pub(crate) const PATTERN: &str = r#"^[\x20-\x21\x23-\x5B\x5D-\x7E]+$"#;

/// Refuses a realm that cannot sit in a quoted header value (APISIX's limits: 1 to 128
/// characters of [`PATTERN`]).
pub(crate) fn check(realm: &str) -> Result<(), FieldError> {
    let printable = |b: &u8| (0x20..=0x7e).contains(b) && *b != b'"' && *b != b'\\';
    if realm.is_empty() || realm.len() > 128 || !realm.bytes().all(|b| printable(&b)) {
        return Err(FieldError::new(
            "realm",
            "must be 1 to 128 printable ASCII characters, without `\"` or `\\`",
        ));
    }
    Ok(())
}

/// The `WWW-Authenticate` value that asks for `scheme` credentials in `realm`.
pub(crate) fn challenge(scheme: &str, realm: &str) -> String {
    format!("{scheme} realm=\"{realm}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_realm_must_fit_in_a_quoted_value() {
        assert!(check("basic").is_ok());
        assert!(check("my api!").is_ok());
        for bad in ["", "a\"b", "a\\b", "é", "a\nb", &"x".repeat(129)] {
            assert_eq!(check(bad).unwrap_err().path, "realm", "{bad:?}");
        }
        assert_eq!(challenge("Basic", "basic"), "Basic realm=\"basic\"");
    }
}
