//! Regular-expression substitution with nginx's (`ngx.re.sub`) replacement and option
//! syntax, so that configurations written for APISIX mean the same here: over bytes for
//! bodies (`response-rewrite`), whole or as they flow, and the replacement parser
//! `regex_uri` uses too.

use std::borrow::Cow;

use pylon_model::FieldError;
use regex::bytes::{Captures, Regex, RegexBuilder};

/// One substitution: a compiled pattern, its replacement and how many matches it replaces.
#[derive(Debug)]
pub(crate) struct RegexSub {
    regex: Regex,
    replacement: Vec<Piece>,
    /// Every match, or only the first.
    global: bool,
    /// The longest a match can be, when it is bounded and no match is empty: then a match
    /// is settled once that much text after its start (and a character more) has arrived,
    /// and a body can be substituted as it flows.
    max_match_len: Option<usize>,
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
        // The same syntax, to measure its matches: `regex::bytes` may match bytes that are
        // not UTF-8.
        let mut syntax = regex_syntax::ParserBuilder::new();
        syntax.utf8(false);
        for option in options.chars() {
            match option {
                'i' => {
                    builder.case_insensitive(true);
                    syntax.case_insensitive(true);
                }
                'm' => {
                    builder.multi_line(true);
                    syntax.multi_line(true);
                }
                's' => {
                    builder.dot_matches_new_line(true);
                    syntax.dot_matches_new_line(true);
                }
                'x' => {
                    builder.ignore_whitespace(true);
                    syntax.ignore_whitespace(true);
                }
                // Compile once, JIT, UTF-8, duplicate names: what this engine always does
                // or needs no switch for.
                'j' | 'o' | 'u' | 'U' | 'J' | 'D' => {}
                other => {
                    return Err(FieldError::new(
                        format!("{path}.options"),
                        format!("unknown or unsupported regex option `{other}`"),
                    ))
                }
            }
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
        let max_match_len = syntax.build().parse(pattern).ok().and_then(|hir| {
            let lengths = hir.properties();
            let never_empty = lengths.minimum_len().is_some_and(|min| min > 0);
            lengths.maximum_len().filter(|_| never_empty)
        });
        Ok(RegexSub {
            regex,
            replacement,
            global,
            max_match_len,
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
            self.expand(&captures, &mut out);
            copied = whole.end();
            matched = true;
        }
        if !matched {
            return Cow::Borrowed(input);
        }
        out.extend_from_slice(&input[copied..]);
        Cow::Owned(out)
    }

    /// A substitution of a body as it flows that lets out what `apply` would make of the
    /// whole of it, or `None` when a match may be unbounded or empty: then only the whole
    /// body tells where the matches are.
    pub fn stream(&self) -> Option<SubStream> {
        self.max_match_len.map(|len| SubStream {
            window: Vec::new(),
            cursor: 0,
            reach: len + CHAR_LEN,
            replaced: false,
        })
    }

    /// Appends the replacement for `captures` to `out`.
    fn expand(&self, captures: &Captures<'_>, out: &mut Vec<u8>) {
        for piece in &self.replacement {
            match piece {
                Piece::Text(text) => out.extend_from_slice(text.as_bytes()),
                Piece::Group(i) => {
                    out.extend_from_slice(captures.get(*i).map_or(&[][..], |m| m.as_bytes()))
                }
            }
        }
    }
}

/// The most bytes of one UTF-8 character: what look-around (`\b`, `^` and `$` in multi-line
/// mode) reads on either side of a position.
const CHAR_LEN: usize = 4;

/// One body's substitution as it flows ([`RegexSub::stream`]). It holds a window on the
/// body: a character of what was let out, for look-behind, then the text not yet settled,
/// at most a match and two characters long between pieces.
#[derive(Debug)]
pub(crate) struct SubStream {
    window: Vec<u8>,
    /// Where in `window` the text not yet let out starts.
    cursor: usize,
    /// How much text after a match's start settles it: the longest match, and the
    /// character after it that look-ahead reads.
    reach: usize,
    /// `once` has replaced its match: the rest passes as it is.
    replaced: bool,
}

impl SubStream {
    /// Takes in `piece` of the body that `sub` substitutes, and puts in its place what is
    /// settled of the output; at the `end`, all the rest.
    pub fn feed(&mut self, sub: &RegexSub, piece: &mut Vec<u8>, end: bool) {
        if self.replaced {
            return;
        }
        self.window.append(piece);
        // Whether a match starts before `settled`, and which, hangs only on text that has
        // arrived: the longest match from there, and a character of look-ahead after it.
        // At the end, the window's end is the body's, and everything is settled.
        let settled = if end {
            self.window.len()
        } else {
            self.window.len().saturating_sub(self.reach)
        };
        while self.cursor < settled {
            // As `captures_iter` does on the whole body, from where the last match ended;
            // look-behind reads the window before `cursor`.
            let found = sub.regex.captures_at(&self.window, self.cursor);
            let Some(captures) = found.filter(|c| c.get_match().start() < settled) else {
                piece.extend_from_slice(&self.window[self.cursor..settled]);
                self.cursor = settled;
                break;
            };
            let whole = captures.get_match();
            piece.extend_from_slice(&self.window[self.cursor..whole.start()]);
            sub.expand(&captures, piece);
            self.cursor = whole.end();
            if !sub.global {
                piece.extend_from_slice(&self.window[self.cursor..]);
                self.window = Vec::new();
                self.replaced = true;
                return;
            }
        }
        // A character before `cursor` stays for look-behind. The window's start is then not
        // the body's, but a search from `cursor`, a character on, never tests `\A` there.
        let let_go = self.cursor.saturating_sub(CHAR_LEN);
        self.window.drain(..let_go);
        self.cursor -= let_go;
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
    use proptest::prelude::*;
    use proptest::sample::{select, Index};

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

    /// `body` cut at `cuts` and fed to a stream of `sub`, the end with the last piece.
    fn streamed(sub: &RegexSub, body: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut stream = sub.stream().expect("the pattern streams");
        let mut cuts = cuts.to_vec();
        cuts.sort_unstable();
        let mut out = Vec::new();
        let mut start = 0;
        for (i, &cut) in cuts.iter().chain([&body.len()]).enumerate() {
            let mut piece = body[start..cut].to_vec();
            stream.feed(sub, &mut piece, i == cuts.len());
            out.append(&mut piece);
            start = cut;
        }
        out
    }

    /// Patterns that stream, with a replacement and options each: literals, classes,
    /// alternations, bounded repeats, groups, and every look-around.
    const STREAMING: &[(&str, &str, &str)] = &[
        ("ab", "[$0]", "jo"),
        ("[ab]{2}", "<$0>", ""),
        ("a|ab|b a", "($0)", ""),
        ("ab|a", "X", ""),
        ("a{1,3}b?", "-", ""),
        ("(a)(b)?", "$2$1", ""),
        ("a b # x ignores spaces and comments", "x", "x"),
        ("a.b", "dot", "s"),
        ("[^ ]{2,4}", "#", ""),
        ("é|𝒜{1,2}", "U", ""),
        ("AB", "ci", "i"),
        ("É", "e", "i"),
        (r"\bab\b", "W", ""),
        (r"\w\b", "<$0>", ""),
        (r"\B\w", "_", ""),
        (r"(?-u:\b.)", "!", ""),
        (r"(?-u:\xff)", "?", ""),
        ("^a", "S", ""),
        ("a$", "E", ""),
        (r"\Ab|b\z", "Z", ""),
        ("^a|b$", "M", "m"),
        (r"(?m)^\w", "L", ""),
        ("a\n?$", "N", "m"),
        ("(?R)b$|^a", "C", "m"),
    ];

    /// Pieces bodies are made of: ASCII, line ends, two- and four-byte characters that are
    /// word characters, and a byte that is not UTF-8.
    const ATOMS: &[&[u8]] = &[
        b"a",
        b"b",
        b"ab",
        b"A",
        b"B",
        b" ",
        b"\n",
        b"\r",
        "é".as_bytes(),
        "𝒜".as_bytes(),
        b"\xff",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn a_stream_lets_out_what_apply_makes_of_the_whole_body(
            (pattern, replace, options) in select(STREAMING),
            global: bool,
            atoms in prop::collection::vec(select(ATOMS), 0..40),
            cuts in prop::collection::vec(any::<Index>(), 0..8),
        ) {
            let sub = RegexSub::new("f", pattern, replace, options, global).unwrap();
            let body = atoms.concat();
            let cuts: Vec<usize> = cuts.iter().map(|cut| cut.index(body.len() + 1)).collect();
            prop_assert_eq!(streamed(&sub, &body, &cuts), sub.apply(&body).into_owned());
        }
    }

    #[test]
    fn only_patterns_of_bounded_nonempty_matches_stream() {
        let streams = |pattern, options| {
            RegexSub::new("f", pattern, "", options, true)
                .unwrap()
                .stream()
                .is_some()
        };
        for pattern in ["a", "a{2,5}", "(?:ab|c)d?", r"\bx$", r"\w{1,10}"] {
            assert!(streams(pattern, ""), "{pattern}");
        }
        for pattern in [".*", "a+", "a*", "x?", "^", r"\b", "a|", "[^a]*b"] {
            assert!(!streams(pattern, ""), "{pattern}");
        }
        // `x` makes the space and the comment nothing, so the pattern matches the empty text.
        assert!(!streams("  # a", "x"));
    }

    #[test]
    fn a_stream_holds_no_more_than_a_match_and_two_characters() {
        let sub = RegexSub::new("f", "abc[0-9]{1,5}", "#", "", true).unwrap();
        let most = "abc12345".len() + 2 * CHAR_LEN;
        let body = "xabc123 abc1234567 ".repeat(200);
        for piece_len in [1, 7, 100] {
            let mut stream = sub.stream().unwrap();
            let mut out = Vec::new();
            for piece in body.as_bytes().chunks(piece_len) {
                let mut piece = piece.to_vec();
                stream.feed(&sub, &mut piece, false);
                assert!(stream.window.len() <= most, "{}", stream.window.len());
                out.append(&mut piece);
            }
            let mut rest = Vec::new();
            stream.feed(&sub, &mut rest, true);
            out.append(&mut rest);
            assert_eq!(out, sub.apply(body.as_bytes()).into_owned());
        }
    }

    #[test]
    fn a_match_waits_for_the_whole_character_after_it() {
        // `é` is a word character, so `a` before it ends no word; its first byte alone
        // would look like the end of one.
        let sub = RegexSub::new("f", r"a\b", "X", "", true).unwrap();
        let body = "aé aé".as_bytes();
        for cut in 0..=body.len() {
            assert_eq!(streamed(&sub, body, &[cut]), body, "{cut}");
        }
    }

    #[test]
    fn once_lets_everything_through_after_its_match() {
        let sub = RegexSub::new("f", "b", "c", "", false).unwrap();
        let mut stream = sub.stream().unwrap();
        let mut piece = b"aaaaaaaaab".to_vec();
        stream.feed(&sub, &mut piece, false);
        // The match is settled only once what follows it arrives.
        assert_eq!(piece, b"aaaaa");
        let mut piece = b"bbbbbbbbbb".to_vec();
        stream.feed(&sub, &mut piece, false);
        assert_eq!(piece, b"aaaacbbbbbbbbbb");
        assert!(stream.window.is_empty());
    }
}
