//! `--name value` options and `--flag`s after the mode and address.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

/// Options that take no value.
const FLAGS: [&str; 2] = ["resume", "reconnect"];

pub struct Args {
    values: HashMap<String, String>,
}

impl Args {
    pub fn parse(argv: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut values = HashMap::new();
        let mut argv = argv.peekable();
        while let Some(arg) = argv.next() {
            let name = arg
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument `{arg}`"))?;
            let value = if FLAGS.contains(&name) {
                String::new()
            } else {
                argv.next()
                    .ok_or_else(|| format!("--{name} needs a value"))?
            };
            values.insert(name.to_owned(), value);
        }
        Ok(Args { values })
    }

    pub fn flag(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }

    pub fn str<'a>(&'a self, name: &str, default: &'a str) -> &'a str {
        self.values.get(name).map_or(default, String::as_str)
    }

    pub fn num<T: FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.values.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{name}: `{v}` is not a number")),
        }
    }

    pub fn seconds(&self, name: &str, default: f64) -> Result<Duration, String> {
        let s: f64 = self.num(name, default)?;
        Duration::try_from_secs_f64(s).map_err(|_| format!("--{name}: `{s}` is not a duration"))
    }
}
