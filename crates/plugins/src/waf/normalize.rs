//! What every WAF rule sees of an input: one canonical form, made in one pass per step, so
//! that the encodings an attacker hides a payload in fall away before matching (`%27%20OR%201=1`
//! and `' Or/**/1=1` both become `' or 1=1`).
//!
//! The steps, in order: URL decoding (repeated while it changes something, up to three times:
//! double encoding), HTML entity decoding, NUL bytes dropped, ASCII lowercase, comments
//! (`/* */`) replaced by a space (MySQL's executable `/*! */` keeps its content), and runs of
//! whitespace made one space (one line break, when the run has one: a shell reads it as the
//! end of a command).

use std::borrow::Cow;

/// How many times an input is URL-decoded at most: a payload encoded twice is seen, and an
/// input cannot make the decoding loop long.
const URL_DECODE_ROUNDS: usize = 3;

/// Writes the canonical form of `input` into `out` (cleared first). `plus_is_space`: the input
/// is from a query string or a form body, where `+` is a space.
///
/// The work is on bytes: every step changes ASCII only, and no byte of a multi-byte UTF-8
/// character is ASCII. A step with nothing to do (no `%`, no `&`) copies nothing.
pub(crate) fn normalize(input: &[u8], plus_is_space: bool, out: &mut String) {
    let mut decoded = Cow::Borrowed(input);
    for round in 0..URL_DECODE_ROUNDS {
        let plus = plus_is_space && round == 0 && decoded.contains(&b'+');
        if !plus && !decoded.contains(&b'%') {
            break;
        }
        let again = url_decode(&decoded, plus_is_space && round == 0);
        if again == *decoded {
            break;
        }
        decoded = Cow::Owned(again);
    }
    if decoded.iter().any(|&b| b == 0xc0 || b == 0xc1) {
        decoded = Cow::Owned(overlong_ascii(&decoded));
    }
    if decoded.contains(&b'&') {
        decoded = Cow::Owned(html_decode(&decoded));
    }
    let mut bytes = std::mem::take(out).into_bytes();
    bytes.clear();
    let mut pending: Option<u8> = None;
    let mut i = 0;
    while i < decoded.len() {
        let b = match (decoded[i], decoded.get(i + 1)) {
            (0, _) => {
                i += 1;
                continue;
            }
            (b'/', Some(b'*')) => {
                i += 2;
                if decoded.get(i) == Some(&b'!') {
                    // MySQL runs what is inside `/*! ... */` (after an optional version): keep
                    // it, drop the markers.
                    i += 1;
                    while decoded.get(i).is_some_and(u8::is_ascii_digit) {
                        i += 1;
                    }
                } else {
                    i = comment_end(&decoded, i);
                }
                b' '
            }
            (b'*', Some(b'/')) => {
                i += 2;
                b' '
            }
            (b, _) => {
                i += 1;
                b.to_ascii_lowercase()
            }
        };
        if matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
            // A line break leads the value too: it ends whatever the value is put after.
            if (!bytes.is_empty() || b == b'\n') && pending != Some(b'\n') {
                pending = Some(if b == b'\n' { b'\n' } else { b' ' });
            }
            continue;
        }
        if let Some(space) = pending.take() {
            bytes.push(space);
        }
        bytes.push(b);
    }
    *out = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    };
}

/// Where the `/* */` comment that starts before `from` ends (past its `*/`), or the input's
/// end when it is not closed.
fn comment_end(bytes: &[u8], from: usize) -> usize {
    bytes[from..]
        .windows(2)
        .position(|w| w == b"*/")
        .map_or(bytes.len(), |at| from + at + 2)
}

/// ASCII written as an overlong two-byte UTF-8 sequence (`%c0%af` for `/`), which some
/// servers decode as the character: as that character.
fn overlong_ascii(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1)) {
            (lead @ (0xc0 | 0xc1), Some(&next)) if next & 0xc0 == 0x80 => {
                out.push((lead & 0x1f) << 6 | (next & 0x3f));
                i += 2;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// `%XX` decoded (a `%` without two hex digits stays), `%uXXXX` (IIS's) too, `+` as a space
/// when asked.
fn url_decode(input: &[u8], plus_is_space: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'%' => {
                if let Some(byte) = hex_pair(input.get(i + 1..i + 3)) {
                    out.push(byte);
                    i += 3;
                    continue;
                }
                let unicode = input
                    .get(i + 1)
                    .is_some_and(|b| b.eq_ignore_ascii_case(&b'u'));
                if let Some(c) = unicode
                    .then(|| hex_code(input.get(i + 2..i + 6)?))
                    .flatten()
                {
                    let mut buf = [0; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    i += 6;
                    continue;
                }
                out.push(b'%');
            }
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

fn hex_pair(pair: Option<&[u8]>) -> Option<u8> {
    let pair = pair?;
    let text = std::str::from_utf8(pair).ok()?;
    u8::from_str_radix(text, 16).ok()
}

fn hex_code(digits: &[u8]) -> Option<char> {
    let text = std::str::from_utf8(digits).ok()?;
    char::from_u32(u32::from_str_radix(text, 16).ok()?)
}

/// HTML character references: decimal and hex (the `;` optional, as browsers take them), and
/// the named ones that spell markup or script.
fn html_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'&' {
            if let Some((c, used)) = reference(&input[i + 1..]) {
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                i += 1 + used;
                continue;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    out
}

/// The character a reference after `&` stands for, and how many bytes it took.
fn reference(after: &[u8]) -> Option<(char, usize)> {
    const NAMED: [(&[u8], char); 13] = [
        (b"lt", '<'),
        (b"gt", '>'),
        (b"quot", '"'),
        (b"apos", '\''),
        (b"amp", '&'),
        (b"colon", ':'),
        (b"tab", '\t'),
        (b"newline", '\n'),
        (b"lpar", '('),
        (b"rpar", ')'),
        (b"sol", '/'),
        (b"bsol", '\\'),
        (b"grave", '`'),
    ];
    let semicolon = |at: usize| usize::from(after.get(at) == Some(&b';'));
    if let Some(rest) = after.strip_prefix(b"#") {
        let (hex, digits) = match rest.first() {
            Some(b'x' | b'X') => (true, &rest[1..]),
            _ => (false, rest),
        };
        let len = digits
            .iter()
            .take(8)
            .take_while(|b| {
                if hex {
                    b.is_ascii_hexdigit()
                } else {
                    b.is_ascii_digit()
                }
            })
            .count();
        if len == 0 {
            return None;
        }
        let text = std::str::from_utf8(&digits[..len]).ok()?;
        let code = u32::from_str_radix(text, if hex { 16 } else { 10 }).ok()?;
        let used = 1 + usize::from(hex) + len;
        return Some((char::from_u32(code)?, used + semicolon(used)));
    }
    NAMED.iter().find_map(|(name, c)| {
        let prefix = after.get(..name.len())?;
        prefix
            .eq_ignore_ascii_case(name)
            .then(|| (*c, name.len() + semicolon(name.len())))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(input: &str) -> String {
        let mut out = String::new();
        normalize(input.as_bytes(), true, &mut out);
        out
    }

    #[test]
    fn encodings_and_evasions_come_out_alike() {
        for input in [
            "' OR 1=1",
            "%27%20OR%201=1",
            "' Or/**/1=1",
            "%2527%2520or%25201%253D1",
            "'\t\tOR  1=1",
            "'+OR+1=1",
            "&#39; or 1=1",
            "&#x27;/*a comment*/OR 1=1",
            "%u0027 or 1=1",
            "'\0 or 1=1",
            "%c0%a7 or 1=1",
        ] {
            assert_eq!(canonical(input), "' or 1=1", "{input:?}");
        }
    }

    #[test]
    fn a_run_of_whitespace_with_a_line_break_is_one_line_break() {
        assert_eq!(canonical("a \r\n\t b%0d%0Ac  d"), "a\nb\nc d");
    }

    #[test]
    fn mysql_executable_comments_keep_their_content() {
        assert_eq!(canonical("1 /*!50000UNION*/ SELECT"), "1 union select");
        assert_eq!(canonical("a/*unclosed"), "a");
    }

    #[test]
    fn references_without_a_semicolon_and_script_spelled_in_entities() {
        assert_eq!(
            canonical("&#x6a;avascript&colon;alert&lpar;1&rpar;"),
            "javascript:alert(1)"
        );
        assert_eq!(canonical("&#106&#97;va"), "java");
        assert_eq!(canonical("&lt;script&gt;"), "<script>");
        assert_eq!(canonical("fish & chips &amp"), "fish & chips &");
    }

    #[test]
    fn a_plus_is_a_space_only_where_the_input_says_so() {
        let mut out = String::new();
        normalize(b"a+b", false, &mut out);
        assert_eq!(out, "a+b");
        assert_eq!(canonical("a+b"), "a b");
        assert_eq!(canonical("100%"), "100%");
        assert_eq!(canonical("%zz%4"), "%zz%4");
    }
}
