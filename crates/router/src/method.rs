//! A route's `methods` as a bit set, so the check is one AND.

/// The methods APISIX accepts in `methods`.
const METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "PURGE",
];

/// An empty set means any method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MethodSet(u16);

impl MethodSet {
    /// Config names are accepted in any case; on error, the index of the bad name.
    pub(crate) fn parse(names: &[String]) -> Result<Self, (usize, String)> {
        let mut bits = 0;
        for (i, name) in names.iter().enumerate() {
            let Some(pos) = METHODS.iter().position(|m| m.eq_ignore_ascii_case(name)) else {
                return Err((i, format!("`{name}` is not one of {}", METHODS.join(", "))));
            };
            bits |= 1 << pos;
        }
        Ok(Self(bits))
    }

    /// The request method's bit; 0 for a method no route can name (and `get`: HTTP methods are
    /// case-sensitive).
    pub(crate) fn bit(method: &str) -> u16 {
        METHODS
            .iter()
            .position(|m| *m == method)
            .map_or(0, |pos| 1 << pos)
    }

    pub(crate) fn allows(self, bit: u16) -> bool {
        self.0 == 0 || self.0 & bit != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> MethodSet {
        MethodSet::parse(&names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn empty_set_allows_everything_even_unknown_methods() {
        let any = set(&[]);
        assert!(any.allows(MethodSet::bit("GET")));
        assert!(any.allows(MethodSet::bit("BREW")));
    }

    #[test]
    fn listed_methods_only() {
        let s = set(&["GET", "post"]);
        assert!(s.allows(MethodSet::bit("GET")));
        assert!(s.allows(MethodSet::bit("POST")));
        assert!(!s.allows(MethodSet::bit("PUT")));
        assert!(!s.allows(MethodSet::bit("get")));
        assert!(!s.allows(MethodSet::bit("BREW")));
    }

    #[test]
    fn unknown_name_is_an_error_with_its_index() {
        let err = MethodSet::parse(&["GET".into(), "FETCH".into()]).unwrap_err();
        assert_eq!(err.0, 1);
        assert!(err.1.starts_with("`FETCH` is not one of GET, POST"));
    }
}
