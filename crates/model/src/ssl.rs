//! `ssls`: certificates the gateway serves, chosen by the name a client asks for (SNI), with an
//! optional CA to verify client certificates (mutual TLS).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use rustls::pki_types::CertificateDer;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::{de_opt_id, id_schema, Labels};
use crate::error::FieldError;
use crate::reference::Reference;
use crate::tls::{
    check_certificate, check_private_key, load_key_pair, parse_certificates, KeyPair, REDACTED,
};
use crate::validate::host_pattern;

/// One or more certificates for the same server names, with their keys.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Ssl {
    #[serde(
        default,
        deserialize_with = "de_opt_id",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "id_schema")]
    pub id: Option<String>,
    /// A description for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desc: Option<String>,
    /// PEM certificate, leaf first, then any intermediates.
    pub cert: String,
    /// PEM private key of `cert`.
    pub key: String,
    /// More certificates for the same names, typically an ECDSA one beside an RSA one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certs: Vec<String>,
    /// The keys of `certs`, in the same order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    /// Server names (`*.` wildcards allowed) this certificate is served for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snis: Option<Vec<String>>,
    /// APISIX's older single-name form of `snis`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Verification of client certificates (mutual TLS).
    pub client: Option<SslClient>,
    #[serde(rename = "type", default)]
    pub kind: SslType,
    /// 1 enabled, 0 disabled.
    #[serde(default = "enabled")]
    #[schemars(range(min = 0, max = 1))]
    pub status: i64,
    /// Key-value pairs to tag and select resources by.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    /// TLS versions offered to clients of these names; the listener's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_protocols: Option<Vec<TlsVersion>>,
    /// When the resource was created, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<i64>,
    /// When the resource was last changed, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_time: Option<i64>,
}

fn enabled() -> i64 {
    1
}

/// Verification of client certificates (mutual TLS).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SslClient {
    /// PEM CA certificate(s) a client certificate must chain to.
    pub ca: String,
    /// Longest chain of intermediates accepted between a client certificate and the CA.
    #[serde(default = "default_depth")]
    pub depth: u32,
    /// Requests whose URI matches one of these regexes need no client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_mtls_uri_regex: Option<Vec<String>>,
}

fn default_depth() -> u32 {
    1
}

/// What the certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SslType {
    /// Served to clients of the gateway.
    #[default]
    Server,
    /// Presented by the gateway to upstreams.
    Client,
}

/// A TLS version in `ssl_protocols`. TLSv1.1 and older are refused: rustls does not implement
/// them, and they are broken anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "TLSv1.2",
            TlsVersion::Tls13 => "TLSv1.3",
        }
    }
}

impl JsonSchema for TlsVersion {
    fn schema_name() -> Cow<'static, str> {
        "TlsVersion".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A TLS version: TLSv1.2 or TLSv1.3 (older ones are refused).",
            "type": "string",
            "enum": [TlsVersion::Tls12.as_str(), TlsVersion::Tls13.as_str()]
        })
    }
}

impl Serialize for TlsVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TlsVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        match name.as_str() {
            "TLSv1.2" => Ok(TlsVersion::Tls12),
            "TLSv1.3" => Ok(TlsVersion::Tls13),
            "TLSv1.1" | "TLSv1" | "TLSv1.0" | "SSLv3" => Err(serde::de::Error::custom(format!(
                "{name} is not supported: use TLSv1.2 or TLSv1.3"
            ))),
            _ => Err(serde::de::Error::custom(format!(
                "`{name}` is not a TLS version: use TLSv1.2 or TLSv1.3"
            ))),
        }
    }
}

impl Ssl {
    /// `snis`, or the single `sni`.
    pub fn server_names(&self) -> impl Iterator<Item = &str> {
        self.snis
            .iter()
            .flatten()
            .chain(self.sni.iter())
            .map(String::as_str)
    }

    pub fn is_enabled(&self) -> bool {
        self.status != 0
    }

    /// `cert`/`key` then each of `certs`/`keys`, parsed and checked, with `$env://`
    /// references read from this process's environment now. The error (the first problem
    /// found) has a path relative to the ssl, as `certs[1]`.
    pub fn key_pairs(&self) -> Result<Vec<KeyPair>, FieldError> {
        self.key_pairs_in(&|name| std::env::var(name).ok())
    }

    /// [`Ssl::key_pairs`], `env` giving the environment's variables.
    fn key_pairs_in(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<KeyPair>, FieldError> {
        let now = SystemTime::now();
        let resolved = |text: &str, path: &str| match Reference::parse(text) {
            Some(reference) => reference.resolve(env).map_err(|m| FieldError::new(path, m)),
            None => Ok(text.to_owned()),
        };
        self.pairs()
            .map(|(cert, key, cert_path, key_path)| {
                let (cert, key) = (resolved(cert, &cert_path)?, resolved(key, &key_path)?);
                load_key_pair(&cert, &key, &cert_path, &key_path, now)
                    // Never empty: see `load_key_pair`.
                    .map_err(|mut errors| errors.remove(0))
            })
            .collect()
    }

    /// The CA certificates that client certificates must chain to; `None` without `client`.
    pub fn client_ca(&self) -> Option<Result<Vec<CertificateDer<'static>>, FieldError>> {
        let client = self.client.as_ref()?;
        Some(parse_certificates(&client.ca).map_err(|m| FieldError::new("client.ca", m)))
    }

    /// Each certificate with its key and their paths; `certs` and `keys` beyond the shorter of
    /// the two have no pair (validation reports the difference).
    fn pairs(&self) -> impl Iterator<Item = (&str, &str, String, String)> {
        let first = (
            self.cert.as_str(),
            self.key.as_str(),
            "cert".to_owned(),
            "key".to_owned(),
        );
        let more = self
            .certs
            .iter()
            .zip(&self.keys)
            .enumerate()
            .map(|(i, (cert, key))| {
                (
                    cert.as_str(),
                    key.as_str(),
                    format!("certs[{i}]"),
                    format!("keys[{i}]"),
                )
            });
        std::iter::once(first).chain(more)
    }

    /// Every problem, with paths relative to the ssl.
    pub(crate) fn validate(&self, errors: &mut Vec<FieldError>) {
        let now = SystemTime::now();
        for (cert, key, cert_path, key_path) in self.pairs() {
            for (path, text) in [(&cert_path, cert), (&key_path, key)] {
                if text.len() > MAX_PEM_LEN {
                    errors.push(FieldError::new(
                        path,
                        format!("must be at most {MAX_PEM_LEN} bytes"),
                    ));
                }
            }
            match (Reference::parse(cert), Reference::parse(key)) {
                (None, None) => {
                    if let Err(e) = load_key_pair(cert, key, &cert_path, &key_path, now) {
                        errors.extend(e);
                    }
                }
                // What a reference stands for is known only where the certificate is
                // compiled: each half is checked on its own, and whether they match then.
                (cert_reference, key_reference) => {
                    let cert_check = match cert_reference {
                        Some(reference) => reference.check(),
                        None => check_certificate(cert, now).map(drop),
                    };
                    let key_check = match key_reference {
                        Some(reference) => reference.check(),
                        None => check_private_key(key).map(drop),
                    };
                    for (path, check) in [(cert_path, cert_check), (key_path, key_check)] {
                        if let Err(m) = check {
                            errors.push(FieldError::new(path, m));
                        }
                    }
                }
            }
        }
        if self.certs.len() != self.keys.len() {
            errors.push(FieldError::new(
                "keys",
                "must have as many entries as certs",
            ));
        }

        if self.sni.is_some() && self.snis.is_some() {
            errors.push(FieldError::new("sni", "set `sni` or `snis`, not both"));
        }
        if self.snis.as_ref().is_some_and(Vec::is_empty) {
            errors.push(FieldError::new("snis", "must not be empty"));
        } else if self.kind == SslType::Server && self.server_names().next().is_none() {
            errors.push(FieldError::new(
                "snis",
                "a server certificate needs at least one name (`snis` or `sni`)",
            ));
        }
        if let Some(sni) = &self.sni {
            server_name("sni", sni, errors);
        }
        for (i, sni) in self.snis.iter().flatten().enumerate() {
            server_name(&format!("snis[{i}]"), sni, errors);
        }

        if let Some(Err(e)) = self.client_ca() {
            errors.push(e);
        }
        let patterns = self.client.iter().flat_map(|c| &c.skip_mtls_uri_regex);
        if patterns.clone().any(Vec::is_empty) {
            errors.push(FieldError::new(
                "client.skip_mtls_uri_regex",
                "must not be empty (leave it out instead)",
            ));
        }
        for (i, pattern) in patterns.flatten().enumerate() {
            if let Err(e) = regex::Regex::new(pattern) {
                errors.push(FieldError::new(
                    format!("client.skip_mtls_uri_regex[{i}]"),
                    format!("regex `{pattern}` does not compile: {e}"),
                ));
            }
        }

        if !(self.status == 0 || self.status == 1) {
            errors.push(FieldError::new(
                "status",
                "must be 0 (disabled) or 1 (enabled)",
            ));
        }
        if self.ssl_protocols.as_ref().is_some_and(Vec::is_empty) {
            errors.push(FieldError::new(
                "ssl_protocols",
                "must list TLSv1.2, TLSv1.3 or both (leave it out for the default)",
            ));
        }
        // As APISIX's schema: each protocol and each skipping pattern is named once.
        let protocols = self.ssl_protocols.iter().flatten().map(|v| v.as_str());
        once_each("ssl_protocols", protocols, errors);
        let patterns = self
            .client
            .iter()
            .flat_map(|c| c.skip_mtls_uri_regex.iter().flatten());
        once_each(
            "client.skip_mtls_uri_regex",
            patterns.map(String::as_str),
            errors,
        );
    }
}

/// APISIX's bound on a certificate's and a key's PEM text: 64 KiB.
const MAX_PEM_LEN: usize = 64 * 1024;

/// Errors for the items of a list that repeat an earlier one.
fn once_each<'a>(path: &str, items: impl Iterator<Item = &'a str>, errors: &mut Vec<FieldError>) {
    let mut seen = Vec::new();
    for (i, item) in items.enumerate() {
        if seen.contains(&item) {
            errors.push(FieldError::new(
                format!("{path}[{i}]"),
                format!("`{item}` is listed twice"),
            ));
        }
        seen.push(item);
    }
}

/// A server name as a client sends it in SNI: a host name, never an address or a port.
fn server_name(path: &str, name: &str, errors: &mut Vec<FieldError>) {
    let before = errors.len();
    host_pattern(path, name, errors);
    if errors.len() > before {
        return;
    }
    let unbracketed = name.trim_start_matches('[').trim_end_matches(']');
    if unbracketed.parse::<std::net::IpAddr>().is_ok() {
        errors.push(FieldError::new(
            path,
            format!("`{name}` is an IP address: clients send only host names as SNI"),
        ));
    } else if name.contains([':', '[', ']']) {
        errors.push(FieldError::new(
            path,
            format!("`{name}` is not a host name: a server name has no port"),
        ));
    }
}

impl fmt::Debug for Ssl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ssl")
            .field("id", &self.id)
            .field("desc", &self.desc)
            .field("cert", &self.cert)
            .field("key", &REDACTED)
            .field("certs", &self.certs)
            .field("keys", &vec![REDACTED; self.keys.len()])
            .field("snis", &self.snis)
            .field("sni", &self.sni)
            .field("client", &self.client)
            .field("kind", &self.kind)
            .field("status", &self.status)
            .field("labels", &self.labels)
            .field("ssl_protocols", &self.ssl_protocols)
            .field("create_time", &self.create_time)
            .field("update_time", &self.update_time)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::config::Resource;
    use crate::key::Kind;
    use crate::test_certs::{ca_and_leaf, ecdsa, rsa, valid_between};

    fn parse(value: Value) -> Result<Ssl, Vec<String>> {
        match Resource::from_json(Kind::Ssls, &value) {
            Ok(Resource::Ssl(ssl)) => Ok(ssl),
            Ok(other) => panic!("parsed as {other:?}"),
            Err(e) => Err(e.0.iter().map(ToString::to_string).collect()),
        }
    }

    fn server(names: &[&str]) -> Value {
        let pem = ecdsa(names);
        json!({"cert": pem.cert, "key": pem.key, "snis": names})
    }

    fn with(mut base: Value, field: &str, value: Value) -> Value {
        base[field] = value;
        base
    }

    #[test]
    fn a_server_certificate_with_defaults() {
        let ssl = parse(server(&["a.test", "*.b.test"])).unwrap();
        assert_eq!(ssl.kind, SslType::Server);
        assert!(ssl.is_enabled());
        assert_eq!(
            ssl.server_names().collect::<Vec<_>>(),
            ["a.test", "*.b.test"]
        );
        assert_eq!(ssl.key_pairs().unwrap().len(), 1);
        assert!(ssl.client_ca().is_none());
        assert_eq!(ssl.ssl_protocols, None);

        let legacy = with(server(&["a.test"]), "snis", Value::Null);
        let legacy = parse(with(legacy, "sni", json!("a.test"))).unwrap();
        assert_eq!(legacy.server_names().collect::<Vec<_>>(), ["a.test"]);
    }

    #[test]
    fn rsa_and_ecdsa_certificates_for_the_same_names() {
        let (e, r) = (ecdsa(&["a.test"]), rsa(&["a.test"]));
        let ssl = parse(json!({
            "id": 7, "cert": e.cert, "key": e.key, "certs": [r.cert], "keys": [r.key],
            "snis": ["a.test"], "ssl_protocols": ["TLSv1.3", "TLSv1.2"],
        }))
        .unwrap();
        assert_eq!(ssl.id.as_deref(), Some("7"));
        assert_eq!(ssl.key_pairs().unwrap().len(), 2);
        assert_eq!(
            ssl.ssl_protocols,
            Some(vec![TlsVersion::Tls13, TlsVersion::Tls12])
        );
    }

    #[test]
    fn key_material_errors_name_the_field() {
        let (e, r, other) = (ecdsa(&["a.test"]), rsa(&["a.test"]), ecdsa(&["a.test"]));
        let expired = valid_between(&["a.test"], (2000, 1, 1), (2001, 1, 1));
        assert_eq!(
            parse(json!({"cert": "nope", "key": other.key, "snis": ["a.test"]})).unwrap_err(),
            ["cert: not a PEM certificate"]
        );
        assert_eq!(
            parse(json!({"cert": e.cert, "key": other.key, "snis": ["a.test"]})).unwrap_err(),
            ["key: does not match the certificate"]
        );
        assert_eq!(
            parse(json!({
                "cert": e.cert, "key": e.key, "snis": ["a.test"],
                "certs": [r.cert, expired.cert], "keys": [r.key, expired.key],
            }))
            .unwrap_err(),
            ["certs[1]: certificate expired at 2001-01-01T00:00:00Z"]
        );
        assert_eq!(
            parse(json!({
                "cert": e.cert, "key": e.key, "snis": ["a.test"],
                "certs": [r.cert], "keys": [other.key],
            }))
            .unwrap_err(),
            ["keys[0]: does not match the certificate"]
        );
        assert_eq!(
            parse(json!({
                "cert": e.cert, "key": e.key, "snis": ["a.test"],
                "certs": [r.cert, other.cert], "keys": [r.key],
            }))
            .unwrap_err(),
            ["keys: must have as many entries as certs"]
        );
        assert!(
            parse(json!({"key": e.key, "snis": ["a.test"]})).unwrap_err()[0]
                .contains("missing field `cert`")
        );
    }

    #[test]
    fn key_material_may_be_an_environment_reference_resolved_when_compiled() {
        let (e, r) = (ecdsa(&["a.test"]), rsa(&["a.test"]));
        let ssl = parse(json!({
            "cert": "$env://A_CERT", "key": "$ENV://A_KEY",
            "certs": [r.cert], "keys": ["$env://R_KEY"], "snis": ["a.test"],
        }))
        .unwrap();
        let env = |name: &str| match name {
            "A_CERT" => Some(e.cert.clone()),
            "A_KEY" => Some(e.key.clone()),
            "R_KEY" => Some(r.key.clone()),
            _ => None,
        };
        assert_eq!(ssl.key_pairs_in(&env).unwrap().len(), 2);
        assert_eq!(
            ssl.key_pairs_in(&|_| None).unwrap_err().to_string(),
            "cert: environment variable `A_CERT` is not set"
        );
        let swapped = |name: &str| match name {
            "A_CERT" => Some(e.cert.clone()),
            _ => Some(r.key.clone()),
        };
        assert_eq!(
            ssl.key_pairs_in(&swapped).unwrap_err().to_string(),
            "key: does not match the certificate"
        );

        // The half given as PEM is still checked; a secret manager cannot be reached.
        assert_eq!(
            parse(json!({"cert": "nope", "key": "$env://K", "snis": ["a.test"]})).unwrap_err(),
            ["cert: not a PEM certificate"]
        );
        assert_eq!(
            parse(json!({
                "cert": "$secret://vault/1/a.test/cert", "key": "$env://", "snis": ["a.test"],
            }))
            .unwrap_err(),
            [
                "cert: `$secret://` references are not supported by this build (it reaches no secret manager): use `$env://NAME`",
                "key: `$env://` needs the name of a variable",
            ]
        );
        // Elsewhere key material is PEM only.
        assert_eq!(
            parse(with(server(&["a.test"]), "client", json!({"ca": "$env://CA"}))).unwrap_err(),
            ["client.ca: `$env://` and `$secret://` references are accepted only in an ssl's `cert`, `key`, `certs` and `keys`"]
        );
    }

    #[test]
    fn server_names_follow_the_host_rules_of_routes() {
        let errors = parse(server(&[
            "a.test",
            "*.a.test",
            "a.*.test",
            "*",
            "a.test:443",
            "*.",
            "127.0.0.1",
            "[::1]",
        ]))
        .unwrap_err();
        assert_eq!(
            errors,
            [
                "snis[2]: `a.*.test` is not a host name (a leading `*.` is the only wildcard)",
                "snis[3]: `*` is not a host name (a leading `*.` is the only wildcard)",
                "snis[4]: `a.test:443` is not a host name: a server name has no port",
                "snis[5]: `*.` is not a host name (a leading `*.` is the only wildcard)",
                "snis[6]: `127.0.0.1` is an IP address: clients send only host names as SNI",
                "snis[7]: `[::1]` is an IP address: clients send only host names as SNI",
            ]
        );
    }

    #[test]
    fn a_server_certificate_needs_names_and_one_way_to_write_them() {
        let none = with(server(&["a.test"]), "snis", Value::Null);
        assert_eq!(
            parse(none.clone()).unwrap_err(),
            ["snis: a server certificate needs at least one name (`snis` or `sni`)"]
        );
        assert_eq!(
            parse(with(server(&["a.test"]), "snis", json!([]))).unwrap_err(),
            ["snis: must not be empty"]
        );
        assert_eq!(
            parse(with(server(&["a.test"]), "sni", json!("b.test"))).unwrap_err(),
            ["sni: set `sni` or `snis`, not both"]
        );
        let client = parse(with(none, "type", json!("client"))).unwrap();
        assert_eq!(client.kind, SslType::Client);
        assert_eq!(client.server_names().count(), 0);
    }

    #[test]
    fn client_verification() {
        let (ca, _) = ca_and_leaf(&["a.test"]);
        let ssl = parse(with(
            server(&["a.test"]),
            "client",
            json!({"ca": ca.cert, "skip_mtls_uri_regex": ["^/health$", "/public/.*"]}),
        ))
        .unwrap();
        let client = ssl.client.as_ref().unwrap();
        assert_eq!(client.depth, 1);
        assert_eq!(ssl.client_ca().unwrap().unwrap().len(), 1);

        assert_eq!(
            parse(with(
                server(&["a.test"]),
                "client",
                json!({"ca": "nope", "depth": 2, "skip_mtls_uri_regex": ["/ok", "(open"]}),
            ))
            .unwrap_err()
            .iter()
            .map(|e| e.lines().next().unwrap_or_default())
            .collect::<Vec<_>>(),
            [
                "client.ca: not a PEM certificate",
                "client.skip_mtls_uri_regex[1]: regex `(open` does not compile: regex parse error:",
            ]
        );
        assert_eq!(
            parse(with(
                server(&["a.test"]),
                "client",
                json!({"ca": ca.cert, "skip_mtls_uri_regex": []}),
            ))
            .unwrap_err(),
            ["client.skip_mtls_uri_regex: must not be empty (leave it out instead)"]
        );
        assert!(
            parse(with(server(&["a.test"]), "client", json!({"depth": 1}))).unwrap_err()[0]
                .starts_with("client: missing field `ca`")
        );
    }

    #[test]
    fn status_type_and_protocols_are_checked() {
        assert_eq!(
            parse(with(server(&["a.test"]), "status", json!(2))).unwrap_err(),
            ["status: must be 0 (disabled) or 1 (enabled)"]
        );
        assert!(!parse(with(server(&["a.test"]), "status", json!(0)))
            .unwrap()
            .is_enabled());
        assert_eq!(
            parse(with(
                server(&["a.test"]),
                "ssl_protocols",
                json!(["TLSv1.2", "TLSv1.1"])
            ))
            .unwrap_err(),
            ["ssl_protocols[1]: TLSv1.1 is not supported: use TLSv1.2 or TLSv1.3"]
        );
        assert_eq!(
            parse(with(server(&["a.test"]), "ssl_protocols", json!(["tls13"]))).unwrap_err(),
            ["ssl_protocols[0]: `tls13` is not a TLS version: use TLSv1.2 or TLSv1.3"]
        );
        assert_eq!(
            parse(with(server(&["a.test"]), "ssl_protocols", json!([]))).unwrap_err(),
            ["ssl_protocols: must list TLSv1.2, TLSv1.3 or both (leave it out for the default)"]
        );
        assert!(
            parse(with(server(&["a.test"]), "type", json!("both"))).unwrap_err()[0]
                .starts_with("type: unknown variant `both`")
        );
        assert!(
            parse(with(server(&["a.test"]), "exptime", json!(1))).unwrap_err()[0]
                .contains("unknown field `exptime`")
        );
        assert_eq!(
            parse(with(
                server(&["a.test"]),
                "ssl_protocols",
                json!(["TLSv1.3", "TLSv1.2", "TLSv1.3"])
            ))
            .unwrap_err(),
            ["ssl_protocols[2]: `TLSv1.3` is listed twice"]
        );
        let (ca, _) = ca_and_leaf(&["a.test"]);
        assert_eq!(
            parse(with(
                server(&["a.test"]),
                "client",
                json!({"ca": ca.cert, "skip_mtls_uri_regex": ["^/h", "^/h"]}),
            ))
            .unwrap_err(),
            ["client.skip_mtls_uri_regex[1]: `^/h` is listed twice"]
        );
        let described = parse(with(
            server(&["a.test"]),
            "desc",
            json!("the a.test certificate"),
        ));
        assert_eq!(
            described.unwrap().desc.as_deref(),
            Some("the a.test certificate")
        );
        let huge = format!("{}{}", ecdsa(&["a.test"]).cert, " ".repeat(64 * 1024));
        assert!(parse(with(server(&["a.test"]), "cert", json!(huge)))
            .unwrap_err()
            .contains(&"cert: must be at most 65536 bytes".to_owned()));
    }

    #[test]
    fn json_round_trips() {
        let (e, r) = (ecdsa(&["a.test"]), rsa(&["a.test"]));
        let (ca, _) = ca_and_leaf(&["a.test"]);
        let value = json!({
            "id": "s1", "cert": e.cert, "key": e.key, "certs": [r.cert], "keys": [r.key],
            "snis": ["a.test", "*.a.test"], "type": "server", "status": 1,
            "client": {"ca": ca.cert, "depth": 3, "skip_mtls_uri_regex": ["^/h"]},
            "labels": {"env": "prod"}, "ssl_protocols": ["TLSv1.2"],
            "create_time": 1, "update_time": 2,
        });
        let resource = Resource::from_json(Kind::Ssls, &value).unwrap();
        assert_eq!(resource.to_json(), value);
        assert_eq!(
            Resource::from_json(Kind::Ssls, &resource.to_json()).unwrap(),
            resource
        );
    }

    #[test]
    fn debug_output_never_shows_keys() {
        let (e, r) = (ecdsa(&["a.test"]), rsa(&["a.test"]));
        let ssl = parse(json!({
            "cert": e.cert, "key": e.key, "certs": [r.cert], "keys": [r.key], "snis": ["a.test"],
        }))
        .unwrap();
        let debug = format!("{ssl:?}");
        assert!(debug.contains("key: <redacted>, "), "{debug}");
        assert!(debug.contains("keys: [<redacted>]"), "{debug}");
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
        let debug = format!("{:?}", Resource::Ssl(ssl));
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
    }
}
