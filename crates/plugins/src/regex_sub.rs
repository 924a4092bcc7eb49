//! Regular-expression substitution over bytes, with nginx's (`ngx.re.sub`) template and
//! option syntax, so that configurations written for APISIX mean the same here.

use std::borrow::Cow;

use pylon_model::FieldError;
use regex::bytes::{Regex, RegexBuilder};

/// One substitution: a compiled pattern, its replacement and how many matches it replaces.
#[derive(Debug)]
pub(crate) struct RegexSub {
    regex: Regex,
    /// The replacement in the regex crate's syntax (`${1}`, `$$`).
    replacement: String,
    /// Every match, or only the first.
    global: bool,
}

impl RegexSub {
    /// Compiles `pattern` with nginx's `options` letters and checks `template`. Errors name
    /// `path`'s fields: `<path>.regex`, `<path>.options`, `<path>.replace`.
    pub fn new(
        path: &str,
        pattern: &str,
        template: &str,
        options: &str,
        global: bool,
    ) -> Result<RegexSub, FieldError> {
        let mut builder = RegexBuilder::new(pattern);
        for option in options.chars() {
            match option {
                'i' => builder.case_insensitive(true),
                'm' => builder.multi_line(true),
                's' => builder.dot_matches_new_line(true),
                'x' => builder.ignore_whitespace(true),
                // Compile once, JIT, UTF-8, duplicate names: what this engine always does
                // or needs no switch for.
                'j' | 'o' | 'u' | 'U' | 'J' | 'D' => &mut builder,
                other => {
                    return Err(FieldError::new(
                        format!("{path}.options"),
                        format!("unknown or unsupported regex option `{other}`"),
                    ))
                }
            };
        }
        let regex = builder.build().map_err(|e| {
            FieldError::new(
                format!("{path}.regex"),
                format!("regex \"{pattern}\" validation failed: {e}"),
            )
        })?;
        let replacement = replacement(template, regex.captures_len())
            .map_err(|reason| FieldError::new(format!("{path}.replace"), reason))?;
        Ok(RegexSub {
            regex,
            replacement,
            global,
        })
    }

    /// `input` with the first match (or every match) replaced; borrowed when nothing matched.
    pub fn apply<'a>(&self, input: &'a [u8]) -> Cow<'a, [u8]> {
        let limit = if self.global { 0 } else { 1 };
        self.regex
            .replacen(input, limit, self.replacement.as_bytes())
    }
}

/// nginx's template (`$0`, `$1`, `${1}`, `$$`) in the regex crate's syntax, where `$1a`
/// would name a group `1a`: every group reference becomes `${n}`. A reference to a group
/// the pattern does not have, or a `$` followed by anything else, is refused.
fn replacement(template: &str, groups: usize) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 4);
    let mut rest = template;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        let (digits, after) = if let Some(braced) = rest.strip_prefix('{') {
            let end = braced
                .find('}')
                .ok_or("unterminated `${` in the replacement")?;
            (&braced[..end], &braced[end + 1..])
        } else if let Some(after) = rest.strip_prefix('$') {
            out.push_str("$$");
            rest = after;
            continue;
        } else {
            let end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            (&rest[..end], &rest[end..])
        };
        let group: usize = digits
            .parse()
            .map_err(|_| "`$` must be followed by a group number, `{n}` or `$`".to_owned())?;
        if group >= groups {
            return Err(format!(
                "refers to group {group}, and the regex has {} groups",
                groups - 1
            ));
        }
        out.push_str(&format!("${{{group}}}"));
        rest = after;
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(pattern: &str, template: &str, options: &str, global: bool, input: &str) -> String {
        let sub = RegexSub::new("f", pattern, template, options, global).unwrap();
        String::from_utf8(sub.apply(input.as_bytes()).into_owned()).unwrap()
    }

    #[test]
    fn once_replaces_the_first_match_and_global_every_one() {
        assert_eq!(sub("o", "0", "jo", false, "foo boo"), "f0o boo");
        assert_eq!(sub("o", "0", "jo", true, "foo boo"), "f00 b00");
    }

    #[test]
    fn templates_use_nginx_group_syntax() {
        assert_eq!(
            sub(r"(\w+)@(\w+)", "$2 at ${1}s $$ $0", "", false, "me@host"),
            "host at mes $ me@host"
        );
        // A digit after a group number belongs to the number, a letter does not.
        assert_eq!(sub("(a)", "$1b", "", true, "xa"), "xab");
    }

    #[test]
    fn options_are_nginx_letters() {
        assert_eq!(sub("hello", "bye", "i", true, "HeLLo"), "bye");
        assert_eq!(sub("a.b", "x", "s", true, "a\nb"), "x");
        assert_eq!(sub("^b", "x", "m", true, "a\nb"), "a\nx");
    }

    #[test]
    fn bad_patterns_options_and_templates_name_their_field() {
        let path = |pattern, template, options| {
            RegexSub::new("filters[0]", pattern, template, options, false)
                .unwrap_err()
                .path
        };
        assert_eq!(path("(", "", "jo"), "filters[0].regex");
        assert_eq!(path("a", "", "jq"), "filters[0].options");
        assert_eq!(path("(a)", "$2", ""), "filters[0].replace");
        assert_eq!(path("a", "$x", ""), "filters[0].replace");
        assert_eq!(path("a", "${1", ""), "filters[0].replace");
    }

    #[test]
    fn bodies_that_are_not_utf8_are_matched_bytewise() {
        let sub = RegexSub::new("f", "b", "c", "", true).unwrap();
        assert_eq!(&*sub.apply(b"\xffab"), b"\xffac");
    }
}
