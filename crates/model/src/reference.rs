//! References to key material kept out of the configuration, as APISIX writes them in an ssl's
//! `cert` and `key`: `$env://NAME` (an environment variable of the gateway's process) and
//! `$secret://<manager>/<id>/<key>` (a secret manager's). They are stored as written and
//! resolved where the certificate is compiled, on each node that serves it.

/// A reference, by what it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reference<'a> {
    Env(&'a str),
    Secret(&'a str),
}

/// APISIX reads the `$env://` prefix in any case (`$ENV://` too), `$secret://` only so.
const ENV_PREFIX: &str = "$env://";
const SECRET_PREFIX: &str = "$secret://";

impl<'a> Reference<'a> {
    /// The reference `text` is, if it is one.
    pub(crate) fn parse(text: &'a str) -> Option<Reference<'a>> {
        if let Some(path) = text.strip_prefix(SECRET_PREFIX) {
            return Some(Reference::Secret(path));
        }
        let prefix = text.get(..ENV_PREFIX.len())?;
        prefix
            .eq_ignore_ascii_case(ENV_PREFIX)
            .then(|| Reference::Env(&text[ENV_PREFIX.len()..]))
    }

    /// Why the reference cannot be resolved by this build, whatever the environment.
    pub(crate) fn check(self) -> Result<(), String> {
        self.resolve(&|_| Some(String::new())).map(drop)
    }

    /// What the reference stands for, `env` giving the environment's variables.
    pub(crate) fn resolve(self, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
        match self {
            Reference::Env("") => Err("`$env://` needs the name of a variable".to_owned()),
            Reference::Env(name) => {
                env(name).ok_or_else(|| format!("environment variable `{name}` is not set"))
            }
            // Pylon has no client for Vault, AWS or GCP secret managers.
            Reference::Secret(_) => Err(
                "`$secret://` references are not supported by this build (it reaches no secret manager): use `$env://NAME`"
                    .to_owned(),
            ),
        }
    }
}

/// Whether `text` is a `$env://` or `$secret://` reference rather than key material itself.
pub fn is_secret_reference(text: &str) -> bool {
    Reference::parse(text).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_read_as_apisix_reads_them() {
        assert_eq!(
            Reference::parse("$env://CERT"),
            Some(Reference::Env("CERT"))
        );
        assert_eq!(
            Reference::parse("$ENV://CERT"),
            Some(Reference::Env("CERT"))
        );
        assert_eq!(
            Reference::parse("$secret://vault/1/ssl/cert"),
            Some(Reference::Secret("vault/1/ssl/cert"))
        );
        assert_eq!(Reference::parse("$SECRET://vault/1/a"), None);
        assert_eq!(Reference::parse("-----BEGIN CERTIFICATE-----"), None);
        assert_eq!(Reference::parse("$e"), None);

        let env = |name: &str| (name == "CERT").then(|| "pem".to_owned());
        assert_eq!(Reference::Env("CERT").resolve(&env).unwrap(), "pem");
        assert_eq!(
            Reference::Env("NOPE").resolve(&env).unwrap_err(),
            "environment variable `NOPE` is not set"
        );
        assert!(Reference::Env("").check().is_err());
        assert!(Reference::Secret("vault/1/a")
            .resolve(&env)
            .unwrap_err()
            .contains("not supported by this build"));
    }
}
