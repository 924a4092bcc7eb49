//! Regular-expression substitution with nginx's (`ngx.re.sub`) replacement and option
//! syntax, so that configurations written for APISIX mean the same here: over bytes for
//! bodies (`response-rewrite`), and the replacement parser `regex_uri` uses too.

use std::borrow::Cow;

use pylon_model::FieldError;
use regex::bytes::{Regex, RegexBuilder};

/// One substitution: a compiled pattern, its replacement and how many matches it replaces.
#[derive(Debug)]
pub(crate) struct RegexSub {
    regex: Regex,
    replacement: Vec<Piece>,
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
        let replacement = parse_replacement(template)
            .map_err(|reason| FieldError::new(format!("{path}.replace"), reason))?;
        let groups = regex.captures_len() - 1;
        if let Some(group) = replacement.iter().find_map(|piece| match piece {
            Piece::Group(group) if *group > groups => Some(group),
            _ => None,
        }) {
            return Err(FieldError::new(
                format!("{path}.replace"),
                format!("refers to group {group}, and the regex has {groups} groups"),
            ));
        }
        Ok(RegexSub {
            regex,
            replacement,
            global,
        })
    }

    /// `input` with the first match (or every match) replaced; borrowed when nothing matched.
    pub fn apply<'a>(&self, input: &'a [u8]) -> Cow<'a, [u8]> {
        let limit = if self.global { usize::MAX } else { 1 };
        let mut out = Vec::new();
        let mut copied = 0;
        let mut matched = false;
        for captures in self.regex.captures_iter(input).take(limit) {
            let whole = captures.get_match();
            out.extend_from_slice(&input[copied..whole.start()]);
            for piece in &self.replacement {
                match piece {
                    Piece::Text(text) => out.extend_from_slice(text.as_bytes()),
                    Piece::Group(i) => {
                        out.extend_from_slice(captures.get(*i).map_or(&[][..], |m| m.as_bytes()))
                    }
                }
            }
            copied = whole.end();
            matched = true;
        }
        if !matched {
            return Cow::Borrowed(input);
        }
        out.extend_from_slice(&input[copied..]);
        Cow::Owned(out)
    }
}

/// A replacement's parts: text as it is, and the groups of a match.
#[derive(Debug, PartialEq)]
pub(crate) enum Piece {
    Text(String),
    Group(usize),
}

/// Parses an `ngx.re.sub` replacement: `$N` and `${N}` name a group, `$$` is a `$`, and any
/// other `$` is an error, as nginx says.
pub(crate) fn parse_replacement(replacement: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = replacement;
    while let Some(at) = rest.find('$') {
        text.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (digits, consumed) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced.find('}').ok_or_else(|| {
                format!("the closing bracket in \"{replacement}\" variable is missing")
            })?;
            (&braced[..end], end + 2)
        } else if let Some(after_dollar) = after.strip_prefix('$') {
            text.push('$');
            rest = after_dollar;
            continue;
        } else {
            let end = after
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        let group = digits
            .parse()
            .ok()
            .filter(|_| digits.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| format!("invalid capturing variable name found in \"{replacement}\""))?;
        if !text.is_empty() {
            pieces.push(Piece::Text(std::mem::take(&mut text)));
        }
        pieces.push(Piece::Group(group));
        rest = &after[consumed..];
    }
    text.push_str(rest);
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
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
