//! Tag expressions: which devices a message to a tag reaches. A device has a set of tags (it
//! names them when it connects); an expression combines tags with `AND`, `OR`, `NOT` and
//! parentheses: `vip AND NOT muted`, `(beta OR staff) AND android`. The words are matched in
//! any case; `AND` binds tighter than `OR`.

use std::fmt;

/// The most tags an expression may name, and the deepest it may nest: a device's check is
/// cheap and bounded however the push API is called.
pub const MAX_TERMS: usize = 32;
const MAX_DEPTH: usize = 16;

/// The longest tag, in bytes.
pub const MAX_TAG_LEN: usize = 64;

/// A parsed tag expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagExpr {
    Tag(String),
    Not(Box<TagExpr>),
    And(Box<TagExpr>, Box<TagExpr>),
    Or(Box<TagExpr>, Box<TagExpr>),
}

impl TagExpr {
    /// Parses `text`; the error says what is wrong and where (a byte offset).
    pub fn parse(text: &str) -> Result<TagExpr, String> {
        let tokens = tokenize(text)?;
        let terms = tokens.iter().filter(|t| matches!(t, Token::Tag(_))).count();
        if terms > MAX_TERMS {
            return Err(format!("names {terms} tags; at most {MAX_TERMS}"));
        }
        let mut parser = Parser { tokens, next: 0 };
        let expr = parser.or(0)?;
        match parser.tokens.get(parser.next) {
            None => Ok(expr),
            Some(token) => Err(format!("unexpected {token}")),
        }
    }

    /// Whether a device with `tags` matches.
    pub fn matches<S: AsRef<str>>(&self, tags: &[S]) -> bool {
        match self {
            TagExpr::Tag(tag) => tags.iter().any(|t| t.as_ref() == tag),
            TagExpr::Not(inner) => !inner.matches(tags),
            TagExpr::And(a, b) => a.matches(tags) && b.matches(tags),
            TagExpr::Or(a, b) => a.matches(tags) || b.matches(tags),
        }
    }
}

/// Whether `tag` is a tag a device may have: 1 to [`MAX_TAG_LEN`] letters, digits and
/// `_.:-`, and not one of the expression words.
pub fn check_tag(tag: &str) -> Result<(), String> {
    if tag.is_empty() || tag.len() > MAX_TAG_LEN {
        return Err(format!("must be 1 to {MAX_TAG_LEN} bytes"));
    }
    if !tag.bytes().all(is_tag_byte) {
        return Err("may hold letters, digits and `_.:-` only".into());
    }
    if keyword(tag).is_some() {
        return Err(format!("`{tag}` is a word of tag expressions"));
    }
    Ok(())
}

fn is_tag_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-')
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Tag(String),
    And,
    Or,
    Not,
    Open,
    Close,
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Tag(tag) => write!(f, "tag `{tag}`"),
            Token::And => f.write_str("`AND`"),
            Token::Or => f.write_str("`OR`"),
            Token::Not => f.write_str("`NOT`"),
            Token::Open => f.write_str("`(`"),
            Token::Close => f.write_str("`)`"),
        }
    }
}

fn keyword(word: &str) -> Option<Token> {
    if word.eq_ignore_ascii_case("and") {
        Some(Token::And)
    } else if word.eq_ignore_ascii_case("or") {
        Some(Token::Or)
    } else if word.eq_ignore_ascii_case("not") {
        Some(Token::Not)
    } else {
        None
    }
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b' ' | b'\t' => at += 1,
            b'(' => {
                tokens.push(Token::Open);
                at += 1;
            }
            b')' => {
                tokens.push(Token::Close);
                at += 1;
            }
            b if is_tag_byte(b) => {
                let start = at;
                while at < bytes.len() && is_tag_byte(bytes[at]) {
                    at += 1;
                }
                let word = &text[start..at];
                if word.len() > MAX_TAG_LEN {
                    return Err(format!(
                        "the tag at byte {start} is over {MAX_TAG_LEN} bytes"
                    ));
                }
                tokens.push(keyword(word).unwrap_or_else(|| Token::Tag(word.to_owned())));
            }
            _ => {
                let c = text[at..].chars().next().unwrap_or_default();
                return Err(format!("unexpected `{c}` at byte {at}"));
            }
        }
    }
    if tokens.is_empty() {
        return Err("is empty".into());
    }
    Ok(tokens)
}

/// A recursive descent over the tokens: `or := and (OR and)*`, `and := unary (AND unary)*`,
/// `unary := NOT unary | ( or ) | tag`.
struct Parser {
    tokens: Vec<Token>,
    next: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next)
    }

    fn or(&mut self, depth: usize) -> Result<TagExpr, String> {
        let mut expr = self.and(depth)?;
        while self.peek() == Some(&Token::Or) {
            self.next += 1;
            expr = TagExpr::Or(Box::new(expr), Box::new(self.and(depth)?));
        }
        Ok(expr)
    }

    fn and(&mut self, depth: usize) -> Result<TagExpr, String> {
        let mut expr = self.unary(depth)?;
        while self.peek() == Some(&Token::And) {
            self.next += 1;
            expr = TagExpr::And(Box::new(expr), Box::new(self.unary(depth)?));
        }
        Ok(expr)
    }

    fn unary(&mut self, depth: usize) -> Result<TagExpr, String> {
        if depth > MAX_DEPTH {
            return Err(format!("nests deeper than {MAX_DEPTH}"));
        }
        let token = self.tokens.get(self.next).cloned();
        self.next += 1;
        match token {
            Some(Token::Tag(tag)) => Ok(TagExpr::Tag(tag)),
            Some(Token::Not) => Ok(TagExpr::Not(Box::new(self.unary(depth + 1)?))),
            Some(Token::Open) => {
                let inner = self.or(depth + 1)?;
                match self.tokens.get(self.next) {
                    Some(Token::Close) => {
                        self.next += 1;
                        Ok(inner)
                    }
                    Some(token) => Err(format!("expected `)`, found {token}")),
                    None => Err("a `(` is not closed".into()),
                }
            }
            Some(token) => Err(format!("expected a tag, found {token}")),
            None => Err("ends where a tag was expected".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(expr: &str, tags: &[&str]) -> bool {
        TagExpr::parse(expr).unwrap().matches(tags)
    }

    #[test]
    fn and_or_not_and_parentheses() {
        assert!(matches("vip", &["vip", "x"]));
        assert!(!matches("vip", &["x"]));
        assert!(matches("a AND b", &["a", "b"]));
        assert!(!matches("a AND b", &["a"]));
        assert!(matches("a AND NOT b", &["a"]));
        assert!(!matches("a AND NOT b", &["a", "b"]));
        assert!(matches("a or b", &["b"]));
        // AND binds tighter than OR.
        assert!(matches("a OR b AND c", &["a"]));
        assert!(!matches("(a OR b) AND c", &["a"]));
        assert!(matches("NOT (a OR b)", &["c"]));
        assert!(matches("not not a", &["a"]));
    }

    #[test]
    fn bad_expressions_say_why() {
        assert_eq!(TagExpr::parse("").unwrap_err(), "is empty");
        assert_eq!(
            TagExpr::parse("a AND").unwrap_err(),
            "ends where a tag was expected"
        );
        assert_eq!(TagExpr::parse("(a").unwrap_err(), "a `(` is not closed");
        assert_eq!(TagExpr::parse("a b").unwrap_err(), "unexpected tag `b`");
        assert_eq!(
            TagExpr::parse("a & b").unwrap_err(),
            "unexpected `&` at byte 2"
        );
        assert_eq!(
            TagExpr::parse("AND a").unwrap_err(),
            "expected a tag, found `AND`"
        );
        let many = vec!["t"; MAX_TERMS + 1].join(" OR ");
        assert_eq!(
            TagExpr::parse(&many).unwrap_err(),
            format!("names {} tags; at most {MAX_TERMS}", MAX_TERMS + 1)
        );
        let deep = format!("{}a{}", "(".repeat(20), ")".repeat(20));
        assert_eq!(
            TagExpr::parse(&deep).unwrap_err(),
            format!("nests deeper than {MAX_DEPTH}")
        );
    }

    #[test]
    fn tags_are_checked() {
        assert!(check_tag("android-14").is_ok());
        assert!(check_tag("").is_err());
        assert!(check_tag("a b").is_err());
        assert!(check_tag("Not").is_err());
        assert!(check_tag(&"x".repeat(MAX_TAG_LEN + 1)).is_err());
    }
}
