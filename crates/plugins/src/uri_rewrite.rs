//! New request targets made from the client's: `regex_uri` substitutions, as nginx's
//! `ngx.re.sub` makes them (see [`parse_replacement`], first match only), and
//! the encoding that keeps a rewritten target fit for a request line or a `Location`.

use regex::Regex;

use crate::regex_sub::{parse_replacement, Piece};

/// One `regex_uri` pair: a pattern, and the replacement for its first match.
#[derive(Debug)]
pub(crate) struct RegexUri {
    pattern: Regex,
    replacement: Vec<Piece>,
}

/// A `regex_uri` substitution that happened: the new target and the pattern's groups
/// (`0` is the whole match; a group that did not take part is empty).
pub(crate) struct Substituted {
    pub target: String,
    pub groups: Vec<String>,
}

impl RegexUri {
    /// Compiles a pair; the error says what is wrong with the pattern or the replacement.
    pub(crate) fn new(pattern: &str, replacement: &str) -> Result<RegexUri, String> {
        Ok(RegexUri {
            pattern: Regex::new(pattern).map_err(|e| e.to_string())?,
            replacement: parse_replacement(replacement)?,
        })
    }

    /// `uri` with the pattern's first match replaced; `None` when the pattern does not match.
    pub(crate) fn substitute(&self, uri: &str) -> Option<Substituted> {
        let captures = self.pattern.captures(uri)?;
        let whole = captures.get(0)?;
        let mut target = String::with_capacity(uri.len());
        target.push_str(&uri[..whole.start()]);
        for piece in &self.replacement {
            match piece {
                Piece::Text(text) => target.push_str(text),
                Piece::Group(i) => target.push_str(captures.get(*i).map_or("", |m| m.as_str())),
            }
        }
        target.push_str(&uri[whole.end()..]);
        let groups = captures
            .iter()
            .map(|m| m.map_or_else(String::new, |m| m.as_str().to_owned()))
            .collect();
        Some(Substituted { target, groups })
    }
}

/// A rewritten target made safe to send: the path percent-encodes what a path may not hold
/// raw (control characters, space, `#`, `?` from a variable, non-ASCII) and the query keeps
/// its delimiters with only control characters encoded, so that nothing a variable or a
/// group brings in can end the request line or a header. `%` is kept: the path is the
/// client's raw one, already encoded.
pub(crate) fn encode_target(path: &str, query: Option<&str>) -> String {
    let mut out = String::with_capacity(path.len() + query.map_or(0, |q| q.len() + 1));
    for b in path.bytes() {
        if b <= b' ' || b >= 0x7f || b == b'#' || b == b'?' {
            push_escaped(&mut out, b);
        } else {
            out.push(b as char);
        }
    }
    if let Some(query) = query {
        out.push('?');
        out.push_str(&escape_controls(query));
    }
    out
}

/// `text` with control characters (CR and LF among them) percent-encoded.
pub(crate) fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii_control() {
            push_escaped(&mut out, c as u8);
        } else {
            out.push(c);
        }
    }
    out
}

fn push_escaped(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[usize::from(b >> 4)] as char);
    out.push(HEX[usize::from(b & 0xf)] as char);
}

/// `target` with the client's query string `args` appended, as APISIX appends it: after a
/// `&` when the target has a query of its own.
pub(crate) fn append_args(mut target: String, args: &str) -> String {
    target.push(if target.contains('?') { '&' } else { '?' });
    target.push_str(args);
    target
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_match_is_replaced_with_its_groups() {
        let rewrite = RegexUri::new("^/api/(\\w+)/(\\d+)", "/v2/$2/${1}x$$").unwrap();
        let done = rewrite.substitute("/api/user/42/tail").unwrap();
        assert_eq!(done.target, "/v2/42/userx$/tail");
        assert_eq!(done.groups, ["/api/user/42", "user", "42"]);
        assert!(rewrite.substitute("/other").is_none());
        let missing = RegexUri::new("^/(a)|(b)", "/$2$7-").unwrap();
        assert_eq!(missing.substitute("/a/z").unwrap().target, "/-/z");
    }

    #[test]
    fn bad_patterns_and_replacements_are_refused() {
        assert!(RegexUri::new("(", "/").is_err());
        let bad_name = RegexUri::new("^/", "/$x").unwrap_err();
        assert_eq!(bad_name, "invalid capturing variable name found in \"/$x\"");
        assert!(RegexUri::new("^/", "/${1").is_err());
        assert!(RegexUri::new("^/", "/$").is_err());
    }

    #[test]
    fn targets_cannot_break_a_request_line() {
        assert_eq!(
            encode_target("/a b#c?d\r\né%41", Some("x=1&y=\r\n")),
            "/a%20b%23c%3Fd%0D%0A%C3%A9%41?x=1&y=%0D%0A"
        );
        assert_eq!(append_args("/a".into(), "q=1"), "/a?q=1");
        assert_eq!(append_args("/a?p=2".into(), "q=1"), "/a?p=2&q=1");
    }
}
