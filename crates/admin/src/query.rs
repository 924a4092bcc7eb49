//! The query string, decoded as a form (`a=1&b=x%20y`): APISIX's `force`, `ttl`, `page`, ...

/// The decoded arguments, in order; the last of a repeated name wins, as in APISIX.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(query: &str) -> Query {
        Query(
            query
                .split('&')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                    (decode(name), decode(value))
                })
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the flag is `true` (APISIX's `force=true`: any other value is false).
    pub fn flag(&self, name: &str) -> bool {
        self.get(name) == Some("true")
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

fn decode(text: &str) -> String {
    let spaced = text.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_forms() {
        let q = Query::parse("force=true&filter=service_id%3D1&name=a+b&x&name=c");
        assert!(q.flag("force"));
        assert_eq!(q.get("filter"), Some("service_id=1"));
        assert_eq!(q.get("name"), Some("c"));
        assert_eq!(q.get("x"), Some(""));
        assert!(!Query::parse("force=yes").flag("force"));
    }
}
