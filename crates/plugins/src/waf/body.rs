//! The request body, as the rules see it: split into fields as its type says, each field
//! brought to its canonical form and scanned. Pieces arrive as they were read; a field split
//! across two reads is whole again before it is scanned, and a field longer than
//! [`MAX_FIELD`] is scanned in windows that overlap by [`LOOK_BACK`] bytes, so that a payload
//! across a window's edge is still seen.
//!
//! - `application/x-www-form-urlencoded`: each name and each value, URL-decoded.
//! - JSON: each string (keys and values), its escapes (`\u0027`, `\"`) decoded.
//! - anything else (multipart, XML, text): each line, as CRLF ends them (multipart's line
//!   ending): a lone LF stays in its field, where it separates shell commands.

use super::engine::{Hits, RuleSet, Targets};
use super::normalize::normalize;

/// The longest field scanned whole; a longer one is scanned in windows.
const MAX_FIELD: usize = 4096;
/// How much of a window the next one repeats.
const LOOK_BACK: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyKind {
    Form,
    Json,
    Lines,
}

impl BodyKind {
    pub fn of(content_type: Option<&str>) -> BodyKind {
        let essence = content_type
            .and_then(|t| t.split(';').next())
            .map(|t| t.trim().to_ascii_lowercase())
            .unwrap_or_default();
        if essence == "application/x-www-form-urlencoded" {
            BodyKind::Form
        } else if essence == "application/json" || essence.ends_with("+json") {
            BodyKind::Json
        } else {
            BodyKind::Lines
        }
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
    canonical: String,
}

impl BodyScanner {
    pub fn new(kind: BodyKind) -> Self {
        Self {
            kind,
            field: Vec::new(),
            json: Json::Outside,
            canonical: String::new(),
        }
    }

    /// Scans what `piece` completes; keeps what it leaves open for the next.
    pub fn feed(&mut self, piece: &[u8], rules: &RuleSet, hits: &mut Hits) {
        for &b in piece {
            match self.kind {
                BodyKind::Form if b == b'&' || b == b'=' => self.end_field(rules, hits),
                BodyKind::Lines if b == b'\n' && self.field.last() == Some(&b'\r') => {
                    self.field.pop();
                    self.end_field(rules, hits);
                }
                BodyKind::Form | BodyKind::Lines => self.push(b, rules, hits),
                BodyKind::Json => self.json_byte(b, rules, hits),
            }
        }
    }

    /// The body ended: the open field is complete.
    pub fn finish(&mut self, rules: &RuleSet, hits: &mut Hits) {
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
