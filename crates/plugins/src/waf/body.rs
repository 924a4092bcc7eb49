//! The request body, as the rules see it: split into fields as its type says, each field
//! brought to its canonical form and scanned. Pieces arrive as they were read; a field split
//! across two reads is whole again before it is scanned, and a field longer than
//! [`MAX_FIELD`] is scanned in windows that overlap by [`LOOK_BACK`] bytes, so that a payload
//! across a window's edge is still seen.
//!
//! - `application/x-www-form-urlencoded`: each name and each value, URL-decoded.
//! - JSON: each string (keys and values), its escapes (`\u0027`, `\"`) decoded.
//! - `multipart/form-data` (and the other multipart types): each part's body whole, however
//!   many lines it has, and the `name` and `filename` its headers give.
//! - anything else (XML, text): each line, as CRLF ends them: a lone LF stays in its field,
//!   where it separates shell commands.

use super::engine::{Hits, RuleSet, Targets};
use super::normalize::normalize;

/// The longest field scanned whole; a longer one is scanned in windows.
const MAX_FIELD: usize = 4096;
/// How much of a window the next one repeats.
const LOOK_BACK: usize = 256;

/// The longest part head a multipart body is parsed with; a longer one is scanned as a field.
const MAX_PART_HEAD: usize = 8192;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BodyKind {
    Form,
    Json,
    /// Parts between delimiters: `\r\n--` and the content type's `boundary`.
    Multipart {
        delimiter: Vec<u8>,
    },
    Lines,
}

impl BodyKind {
    pub fn of(content_type: Option<&str>) -> BodyKind {
        let mut params = content_type.unwrap_or_default().split(';');
        let essence = params
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if essence == "application/x-www-form-urlencoded" {
            BodyKind::Form
        } else if essence == "application/json" || essence.ends_with("+json") {
            BodyKind::Json
        } else if essence.starts_with("multipart/") {
            let boundary = params.find_map(|param| {
                let (name, value) = param.split_once('=')?;
                name.trim()
                    .eq_ignore_ascii_case("boundary")
                    .then(|| value.trim().trim_matches('"'))
            });
            match boundary {
                // RFC 2046: 1 to 70 characters.
                Some(boundary) if (1..=70).contains(&boundary.len()) => BodyKind::Multipart {
                    delimiter: format!("\r\n--{boundary}").into_bytes(),
                },
                _ => BodyKind::Lines,
            }
        } else {
            BodyKind::Lines
        }
    }
}

/// Where a multipart body's parser is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Before the first delimiter: nothing a server reads.
    Preamble,
    /// Right after a delimiter: `--` ends the body, else the rest of the line is padding.
    AfterDelimiter { dashes: u8 },
    /// The part's header lines, up to the empty line.
    Head,
    /// The part's content, up to the next delimiter.
    Body,
    /// After the closing delimiter.
    Epilogue,
}

/// Finds a multipart delimiter in a stream of bytes, one at a time (Knuth-Morris-Pratt, so
/// that a partial match that fails is no byte lost).
struct Delimiter {
    pattern: Vec<u8>,
    /// For each length matched, the longest proper prefix that is also a suffix.
    fallback: Vec<usize>,
    matched: usize,
}

impl Delimiter {
    fn new(pattern: Vec<u8>) -> Self {
        let mut fallback = vec![0; pattern.len() + 1];
        let mut k = 0;
        for i in 1..pattern.len() {
            while k > 0 && pattern[i] != pattern[k] {
                k = fallback[k];
            }
            if pattern[i] == pattern[k] {
                k += 1;
            }
            fallback[i + 1] = k;
        }
        Delimiter {
            pattern,
            fallback,
            matched: 0,
        }
    }

    /// Takes the next byte: whether the delimiter is complete with it. Bytes that turn out
    /// not to be part of it are handed to `spill`, in order.
    fn step(&mut self, b: u8, mut spill: impl FnMut(u8)) -> bool {
        let before = self.matched;
        while self.matched > 0 && self.pattern[self.matched] != b {
            self.matched = self.fallback[self.matched];
        }
        if self.pattern[self.matched] == b {
            self.matched += 1;
        }
        // Of the bytes held as a partial match and this one, those before the new partial
        // match are content after all.
        let content = before + 1 - self.matched;
        for i in 0..content {
            spill(if i < before { self.pattern[i] } else { b });
        }
        if self.matched == self.pattern.len() {
            self.matched = 0;
            return true;
        }
        false
    }
}

/// Where the JSON tokenizer is.
#[derive(Debug, Clone, Copy)]
enum Json {
    Outside,
    InString,
    Escape,
    /// `\u` and the hex digits so far.
    Unicode {
        digits: u8,
        code: u32,
    },
}

/// Splits a body into fields and scans each with the rules.
pub(crate) struct BodyScanner {
    kind: BodyKind,
    field: Vec<u8>,
    json: Json,
    /// For a multipart body: where its parser is.
    multipart: Option<Multipart>,
    canonical: String,
}

/// A multipart body's parser.
struct Multipart {
    delimiter: Delimiter,
    part: Part,
    /// The part head's line so far.
    line: Vec<u8>,
}

impl BodyScanner {
    pub fn new(kind: BodyKind) -> Self {
        let multipart = match &kind {
            BodyKind::Multipart { delimiter } => {
                let mut delimiter = Delimiter::new(delimiter.clone());
                // The first delimiter may open the body, without the line break before it.
                delimiter.matched = 2;
                Some(Multipart {
                    delimiter,
                    part: Part::Preamble,
                    line: Vec::new(),
                })
            }
            _ => None,
        };
        Self {
            kind,
            field: Vec::new(),
            json: Json::Outside,
            multipart,
            canonical: String::new(),
        }
    }

    /// Scans what `piece` completes; keeps what it leaves open for the next.
    pub fn feed(&mut self, piece: &[u8], rules: &RuleSet, hits: &mut Hits) {
        if let Some(mut multipart) = self.multipart.take() {
            for &b in piece {
                self.multipart_byte(&mut multipart, b, rules, hits);
            }
            self.multipart = Some(multipart);
            return;
        }
        for &b in piece {
            match self.kind {
                BodyKind::Form if b == b'&' || b == b'=' => self.end_field(rules, hits),
                BodyKind::Lines if b == b'\n' && self.field.last() == Some(&b'\r') => {
                    self.field.pop();
                    self.end_field(rules, hits);
                }
                BodyKind::Json => self.json_byte(b, rules, hits),
                _ => self.push(b, rules, hits),
            }
        }
    }

    /// The body ended: the open field is complete.
    pub fn finish(&mut self, rules: &RuleSet, hits: &mut Hits) {
        if let Some(mut multipart) = self.multipart.take() {
            // A part cut short: what looked like the start of a delimiter is its content.
            let held = std::mem::take(&mut multipart.delimiter.matched);
            if multipart.part == Part::Body {
                for &b in &multipart.delimiter.pattern[..held] {
                    self.push(b, rules, hits);
                }
            }
            self.multipart = Some(multipart);
        }
        self.end_field(rules, hits);
    }

    fn multipart_byte(
        &mut self,
        multipart: &mut Multipart,
        b: u8,
        rules: &RuleSet,
        hits: &mut Hits,
    ) {
        multipart.part = match multipart.part {
            Part::Preamble => match multipart.delimiter.step(b, |_| {}) {
                true => Part::AfterDelimiter { dashes: 0 },
                false => Part::Preamble,
            },
            Part::Body => {
                let ended = multipart
                    .delimiter
                    .step(b, |content| self.push(content, rules, hits));
                if ended {
                    self.end_field(rules, hits);
                    Part::AfterDelimiter { dashes: 0 }
                } else {
                    Part::Body
                }
            }
            Part::AfterDelimiter { dashes } => match b {
                b'-' if dashes == 0 => Part::AfterDelimiter { dashes: 1 },
                b'-' if dashes == 1 => Part::Epilogue,
                // The rest of the delimiter's line (transport padding) is nothing.
                b'\n' => Part::Head,
                _ => Part::AfterDelimiter { dashes: 2 },
            },
            Part::Head if b == b'\n' => {
                let mut line = std::mem::take(&mut multipart.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if line.is_empty() {
                    Part::Body
                } else {
                    self.part_header(&line, rules, hits);
                    Part::Head
                }
            }
            Part::Head => {
                multipart.line.push(b);
                if multipart.line.len() > MAX_PART_HEAD {
                    // Not a head a server parses: it is looked at as it is.
                    let line = std::mem::take(&mut multipart.line);
                    self.scan_field(&line, rules, hits);
                }
                Part::Head
            }
            Part::Epilogue => Part::Epilogue,
        };
    }

    /// Scans the names a part's `Content-Disposition` gives: the field's and the file's.
    fn part_header(&mut self, line: &[u8], rules: &RuleSet, hits: &mut Hits) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return self.scan_field(line, rules, hits);
        };
        if !line[..colon]
            .trim_ascii()
            .eq_ignore_ascii_case(b"content-disposition")
        {
            return;
        }
        for (name, value) in disposition_params(&line[colon + 1..]) {
            if name.eq_ignore_ascii_case(b"name")
                || name.eq_ignore_ascii_case(b"filename")
                || name.eq_ignore_ascii_case(b"filename*")
            {
                self.scan_field(&value, rules, hits);
            }
        }
    }

    fn scan_field(&mut self, value: &[u8], rules: &RuleSet, hits: &mut Hits) {
        self.end_field(rules, hits);
        for &b in value {
            self.push(b, rules, hits);
        }
        self.end_field(rules, hits);
    }

    fn json_byte(&mut self, b: u8, rules: &RuleSet, hits: &mut Hits) {
        self.json = match (self.json, b) {
            (Json::Outside, b'"') => Json::InString,
            (Json::Outside, _) => Json::Outside,
            (Json::InString, b'"') => {
                self.end_field(rules, hits);
                Json::Outside
            }
            (Json::InString, b'\\') => Json::Escape,
            (Json::InString, b) => {
                self.push(b, rules, hits);
                Json::InString
            }
            (Json::Escape, b'u') => Json::Unicode { digits: 0, code: 0 },
            (Json::Escape, b) => {
                let unescaped = match b {
                    b'n' => b'\n',
                    b't' => b'\t',
                    b'r' => b'\r',
                    b'b' | b'f' => b' ',
                    other => other,
                };
                self.push(unescaped, rules, hits);
                Json::InString
            }
            (Json::Unicode { digits, code }, b) => match (b as char).to_digit(16) {
                Some(d) if digits < 3 => Json::Unicode {
                    digits: digits + 1,
                    code: code << 4 | d,
                },
                Some(d) => {
                    let c = char::from_u32(code << 4 | d).unwrap_or(char::REPLACEMENT_CHARACTER);
                    let mut buf = [0; 4];
                    for &byte in c.encode_utf8(&mut buf).as_bytes() {
                        self.push(byte, rules, hits);
                    }
                    Json::InString
                }
                // Not JSON: the string goes on from here.
                None => Json::InString,
            },
        };
    }

    fn push(&mut self, b: u8, rules: &RuleSet, hits: &mut Hits) {
        self.field.push(b);
        if self.field.len() >= MAX_FIELD {
            self.scan(rules, hits);
            let keep = self.field.len() - LOOK_BACK;
            self.field.drain(..keep);
        }
    }

    fn end_field(&mut self, rules: &RuleSet, hits: &mut Hits) {
        if !self.field.is_empty() {
            self.scan(rules, hits);
            self.field.clear();
        }
    }

    fn scan(&mut self, rules: &RuleSet, hits: &mut Hits) {
        normalize(
            &self.field,
            self.kind == BodyKind::Form,
            &mut self.canonical,
        );
        rules.scan(&self.canonical, Targets::BODY, hits);
    }
}

/// The parameters of a `Content-Disposition` value (`form-data; name="a"; filename="b.txt"`),
/// quoted strings unquoted (so that a `;` inside one does not cut it short).
fn disposition_params(value: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut params = Vec::new();
    let mut rest = value;
    while let Some(semicolon) = rest.iter().position(|&b| b == b';') {
        rest = &rest[semicolon + 1..];
        let Some(eq) = rest.iter().position(|&b| b == b'=' || b == b';') else {
            break;
        };
        if rest[eq] == b';' {
            continue;
        }
        let name = rest[..eq].trim_ascii().to_vec();
        let after = rest[eq + 1..].trim_ascii_start();
        let mut value = Vec::new();
        if let Some(quoted) = after.strip_prefix(b"\"") {
            let mut i = 0;
            while i < quoted.len() && quoted[i] != b'"' {
                // Only `\"` is an escape: browsers send a Windows path's backslashes as they
                // are, and a server reads them so.
                if quoted[i] == b'\\' && quoted.get(i + 1) == Some(&b'"') {
                    i += 1;
                }
                value.push(quoted[i]);
                i += 1;
            }
            rest = &quoted[(i + 1).min(quoted.len())..];
        } else {
            let end = after.iter().position(|&b| b == b';').unwrap_or(after.len());
            value.extend_from_slice(after[..end].trim_ascii_end());
            rest = &after[end..];
        }
        params.push((name, value));
    }
    params
}

#[cfg(test)]
mod tests {
    use super::super::DEFAULT_SET;
    use super::*;

    /// The score the shipped rules give `body`, fed `step` bytes at a time.
    fn score(content_type: &str, body: &[u8], step: usize) -> u32 {
        let rules = &**DEFAULT_SET;
        let mut hits = Hits::new(std::sync::Arc::from([]));
        let mut scanner = BodyScanner::new(BodyKind::of(Some(content_type)));
        for piece in body.chunks(step) {
            scanner.feed(piece, rules, &mut hits);
        }
        scanner.finish(rules, &mut hits);
        hits.score
    }

    const FORM: &str = "multipart/form-data; boundary=\"----b0undary\"";

    fn multipart(parts: &[(&str, &str)]) -> Vec<u8> {
        let mut body = String::from("preamble, ignored\r\n");
        for (head, content) in parts {
            body.push_str(&format!("------b0undary\r\n{head}\r\n\r\n{content}\r\n"));
        }
        body.push_str("------b0undary--\r\nepilogue, ignored");
        body.into_bytes()
    }

    #[test]
    fn a_delimiter_is_found_across_partial_matches_and_nothing_else_is_lost() {
        let mut delimiter = Delimiter::new(b"\r\n--ab".to_vec());
        let input = b"x\r\n-\r\n--a\r\r\n--ab";
        let mut content = Vec::new();
        let ends: Vec<bool> = input
            .iter()
            .map(|&b| delimiter.step(b, |c| content.push(c)))
            .collect();
        assert_eq!(content, b"x\r\n-\r\n--a\r");
        assert_eq!(ends.iter().filter(|&&e| e).count(), 1);
        assert!(ends[input.len() - 1]);
    }

    #[test]
    fn a_part_is_scanned_whole_across_its_lines_and_the_pieces_it_came_in() {
        let payload = "1 UNION\r\nSELECT password FROM users";
        let body = multipart(&[
            ("Content-Disposition: form-data; name=\"note\"", "hello"),
            ("Content-Disposition: form-data; name=\"id\"", payload),
        ]);
        for step in [1, 2, 7, 64, body.len()] {
            assert!(score(FORM, &body, step) > 0, "pieces of {step}");
        }
        // As lines, neither half is an attack.
        assert_eq!(score("text/plain", payload.as_bytes(), 5), 0);
    }

    #[test]
    fn the_names_a_part_head_gives_are_scanned() {
        let head =
            "Content-Disposition: form-data; name=\"f\"; filename=\"a;b/../../../etc/passwd\"";
        let body = multipart(&[(head, "content")]);
        assert!(score(FORM, &body, 3) > 0);
    }

    #[test]
    fn ordinary_uploads_pass() {
        let binary: String = (0u8..=255).map(char::from).collect();
        let body = multipart(&[
            (
                "Content-Disposition: form-data; name=\"title\"",
                "Quarterly report; draft 2",
            ),
            (
                "Content-Disposition: form-data; name=\"file\"; filename=\"report.pdf\"\r\n\
                 Content-Type: application/pdf",
                "%PDF-1.7 some bytes -- and dashes\r\n--not the boundary\r\n",
            ),
            ("Content-Disposition: form-data; name=\"bytes\"", &binary),
        ]);
        for step in [1, 5, body.len()] {
            assert_eq!(score(FORM, &body, step), 0, "pieces of {step}");
        }
    }

    #[test]
    fn a_multipart_type_without_a_boundary_is_read_as_lines() {
        assert_eq!(BodyKind::of(Some("multipart/form-data")), BodyKind::Lines);
        assert_eq!(
            BodyKind::of(Some("multipart/mixed; charset=utf-8; boundary=xyz")),
            BodyKind::Multipart {
                delimiter: b"\r\n--xyz".to_vec()
            }
        );
    }
}
