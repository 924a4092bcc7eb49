//! nginx's configuration syntax: directives ending in `;` or a `{ }` block, `#` comments,
//! single- and double-quoted arguments, and `include` resolved as the files are read, so every
//! directive of the tree knows the file and line it came from.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One directive: `name args... ;` or `name args... { block }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Directive {
    pub name: String,
    pub args: Vec<String>,
    /// The directives inside `{ }`; `None` for a directive ending in `;`.
    pub block: Option<Vec<Directive>>,
    pub file: Arc<Path>,
    pub line: usize,
}

impl Directive {
    /// `file:line`, as the unconverted list and errors print it.
    pub fn location(&self) -> String {
        format!("{}:{}", self.file.display(), self.line)
    }
}

/// Why a configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("{file}:{line}: {message}")]
    Syntax {
        file: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}: cannot read: {source}", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
}

impl ParseError {
    fn syntax(file: &Path, line: usize, message: impl Into<String>) -> Self {
        ParseError::Syntax {
            file: file.to_path_buf(),
            line,
            message: message.into(),
        }
    }
}

/// Reads `path` and every file it includes, into its top-level directives.
pub fn load(path: &Path) -> Result<Vec<Directive>, ParseError> {
    let mut reader = Reader { stack: Vec::new() };
    reader.file(path, path, 0)
}

/// Parses one file's text, without following `include`s (they stay directives).
pub fn parse_text(file: &Path, text: &str) -> Result<Vec<Directive>, ParseError> {
    let file: Arc<Path> = Arc::from(file);
    let tokens = tokenize(&file, text)?;
    let mut tokens = tokens.into_iter().peekable();
    let directives = block(&file, &mut tokens, None)?;
    Ok(directives)
}

#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    Open,
    Close,
    End,
}

fn tokenize(file: &Path, text: &str) -> Result<Vec<(Token, usize)>, ParseError> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while let Some(c) = chars.next() {
        match c {
            '\n' => line += 1,
            c if c.is_whitespace() => {}
            '#' => while chars.next_if(|&c| c != '\n').is_some() {},
            '{' => tokens.push((Token::Open, line)),
            '}' => tokens.push((Token::Close, line)),
            ';' => tokens.push((Token::End, line)),
            '"' | '\'' => {
                let start = line;
                let mut word = String::new();
                loop {
                    match chars.next() {
                        None => {
                            return Err(ParseError::syntax(
                                file,
                                start,
                                format!("unterminated {c}quoted{c} string"),
                            ))
                        }
                        Some(q) if q == c => break,
                        // nginx unescapes the quotes, the backslash, `\n`, `\r` and `\t`;
                        // the rest (`\d`, `\.`) stays as written, for regexes.
                        Some('\\') => match chars.next_if(|&n| "\"'\\nrt".contains(n)) {
                            Some('n') => word.push('\n'),
                            Some('r') => word.push('\r'),
                            Some('t') => word.push('\t'),
                            Some(n) => word.push(n),
                            None => word.push('\\'),
                        },
                        Some(ch) => {
                            if ch == '\n' {
                                line += 1;
                            }
                            word.push(ch);
                        }
                    }
                }
                tokens.push((Token::Word(word), start));
            }
            c => {
                let mut word = String::new();
                let mut next = Some(c);
                while let Some(ch) = next {
                    word.push(ch);
                    // `${name}` is a variable, not a block.
                    if ch == '$' && chars.peek() == Some(&'{') {
                        for v in chars.by_ref() {
                            word.push(v);
                            if v == '}' {
                                break;
                            }
                        }
                    }
                    next = chars.next_if(|&n| !n.is_whitespace() && !";{}".contains(n));
                }
                tokens.push((Token::Word(word), line));
            }
        }
    }
    Ok(tokens)
}

type Tokens = std::iter::Peekable<std::vec::IntoIter<(Token, usize)>>;

/// Directives up to the `}` closing the block opened on `opened` (or the end of the file).
fn block(
    file: &Arc<Path>,
    tokens: &mut Tokens,
    opened: Option<usize>,
) -> Result<Vec<Directive>, ParseError> {
    let mut directives = Vec::new();
    loop {
        let (name, line) = match tokens.next() {
            None => match opened {
                Some(line) => {
                    return Err(ParseError::syntax(
                        file,
                        line,
                        "the block opened here is never closed",
                    ))
                }
                None => return Ok(directives),
            },
            Some((Token::Close, line)) => match opened {
                Some(_) => return Ok(directives),
                None => return Err(ParseError::syntax(file, line, "unexpected \"}\"")),
            },
            Some((Token::Word(name), line)) => (name, line),
            Some((Token::Open | Token::End, line)) => {
                return Err(ParseError::syntax(file, line, "expected a directive name"))
            }
        };
        let mut args = Vec::new();
        let block = loop {
            match tokens.next() {
                Some((Token::Word(arg), _)) => args.push(arg),
                Some((Token::End, _)) => break None,
                Some((Token::Open, open)) => break Some(block(file, tokens, Some(open))?),
                Some((Token::Close, at)) => {
                    return Err(ParseError::syntax(
                        file,
                        at,
                        format!("directive \"{name}\" is not terminated by \";\""),
                    ))
                }
                None => {
                    return Err(ParseError::syntax(
                        file,
                        line,
                        format!("directive \"{name}\" is not terminated by \";\""),
                    ))
                }
            }
        };
        directives.push(Directive {
            name,
            args,
            block,
            file: file.clone(),
            line,
        });
    }
}

/// Follows `include`s, remembering which files are being read to refuse a cycle.
struct Reader {
    stack: Vec<PathBuf>,
}

impl Reader {
    fn file(
        &mut self,
        path: &Path,
        from: &Path,
        from_line: usize,
    ) -> Result<Vec<Directive>, ParseError> {
        let text = std::fs::read_to_string(path).map_err(|source| ParseError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if self.stack.contains(&canonical) {
            return Err(ParseError::syntax(
                from,
                from_line,
                format!("include cycle: {} includes itself", path.display()),
            ));
        }
        self.stack.push(canonical);
        let directives = parse_text(path, &text)?;
        let directives = self.expand(directives)?;
        self.stack.pop();
        Ok(directives)
    }

    /// Replaces every `include` (at any depth) with the directives of the files it names.
    fn expand(&mut self, directives: Vec<Directive>) -> Result<Vec<Directive>, ParseError> {
        let mut out = Vec::with_capacity(directives.len());
        for mut directive in directives {
            if directive.name == "include" && directive.block.is_none() {
                let [pattern] = directive.args.as_slice() else {
                    return Err(ParseError::syntax(
                        &directive.file,
                        directive.line,
                        "include takes one file name or pattern",
                    ));
                };
                for path in self.matches(&directive, pattern)? {
                    out.extend(self.file(&path, &directive.file, directive.line)?);
                }
                continue;
            }
            if let Some(block) = directive.block.take() {
                directive.block = Some(self.expand(block)?);
            }
            out.push(directive);
        }
        Ok(out)
    }

    /// The files an `include` names: relative to the including file's directory, with `*` and
    /// `?` allowed in the last component (matched files in name order, none is fine, as nginx).
    fn matches(&self, directive: &Directive, pattern: &str) -> Result<Vec<PathBuf>, ParseError> {
        let base = directive.file.parent().unwrap_or(Path::new("."));
        let path = base.join(pattern);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !name.contains(['*', '?']) {
            return Ok(vec![path]);
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        if dir.to_string_lossy().contains(['*', '?']) {
            return Err(ParseError::syntax(
                &directive.file,
                directive.line,
                "include patterns may only have wildcards in the file name",
            ));
        }
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(ParseError::Read {
                    file: dir.to_path_buf(),
                    source,
                })
            }
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
            .filter(|e| wildcard(&name, &e.file_name().to_string_lossy()))
            .map(|e| e.path())
            .collect();
        found.sort();
        Ok(found)
    }
}

/// Whether `name` matches `pattern`, where `*` is any run of characters and `?` one.
fn wildcard(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Greedy with one backtrack point: the last `*` seen and where its match ended.
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Vec<Directive> {
        parse_text(Path::new("t.conf"), text).unwrap()
    }

    fn error(text: &str) -> String {
        parse_text(Path::new("t.conf"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn directives_blocks_and_lines() {
        let d = parse("user nginx;\nhttp {\n  server {\n    listen 80;\n  }\n}\n");
        assert_eq!(d[0].name, "user");
        assert_eq!(d[0].args, ["nginx"]);
        assert_eq!(d[0].line, 1);
        let server = &d[1].block.as_ref().unwrap()[0];
        assert_eq!((server.name.as_str(), server.line), ("server", 3));
        let listen = &server.block.as_ref().unwrap()[0];
        assert_eq!((listen.args[0].as_str(), listen.line), ("80", 4));
        assert_eq!(listen.location(), "t.conf:4");
    }

    #[test]
    fn quotes_escapes_and_comments() {
        let d = parse(
            "# a comment\nadd_header X \"a b; {c}\" # trailing\n;\nreturn 200 'it\\'s \\\\ \\d\\n';\nset $x ${y}z;",
        );
        assert_eq!(d[0].args, ["X", "a b; {c}"]);
        assert_eq!(d[0].line, 2);
        assert_eq!(d[1].args, ["200", "it's \\ \\d\n"]);
        assert_eq!(d[2].args, ["$x", "${y}z"]);
    }

    #[test]
    fn errors_say_where() {
        assert_eq!(
            error("a 1;\nb \"open;\n"),
            "t.conf:2: unterminated \"quoted\" string"
        );
        assert_eq!(
            error("a 1;\nb {\n c;\n"),
            "t.conf:2: the block opened here is never closed"
        );
        assert_eq!(error("a;\n}\n"), "t.conf:2: unexpected \"}\"");
        assert_eq!(
            error("a 1;\nb 2"),
            "t.conf:2: directive \"b\" is not terminated by \";\""
        );
        assert_eq!(
            error("a {\n b 2 }"),
            "t.conf:2: directive \"b\" is not terminated by \";\""
        );
        assert_eq!(error("\n;"), "t.conf:2: expected a directive name");
    }

    #[test]
    fn includes_relative_globbed_and_nested() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("conf.d")).unwrap();
        std::fs::write(
            root.join("nginx.conf"),
            "http {\n  include conf.d/*.conf;\n  include missing/*.conf;\n}\n",
        )
        .unwrap();
        std::fs::write(
            root.join("conf.d/b.conf"),
            "server { include ../common; }\n",
        )
        .unwrap();
        std::fs::write(root.join("conf.d/a.conf"), "\nserver {}\n").unwrap();
        std::fs::write(root.join("conf.d/skip.txt"), "broken {").unwrap();
        std::fs::write(root.join("common"), "\n\nlisten 80;\n").unwrap();
        let d = load(&root.join("nginx.conf")).unwrap();
        let http = d[0].block.as_ref().unwrap();
        assert_eq!(http.len(), 2);
        assert!(http[0].file.ends_with("conf.d/a.conf"));
        assert_eq!(http[0].line, 2);
        let listen = &http[1].block.as_ref().unwrap()[0];
        assert_eq!(listen.name, "listen");
        assert!(listen.file.ends_with("common"));
        assert_eq!(listen.line, 3);
    }

    #[test]
    fn include_cycles_and_missing_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("a.conf"), "include b.conf;\n").unwrap();
        std::fs::write(root.join("b.conf"), "\ninclude a.conf;\n").unwrap();
        let e = load(&root.join("a.conf")).unwrap_err().to_string();
        assert!(e.contains("b.conf:2: include cycle"), "{e}");
        std::fs::write(root.join("c.conf"), "include nothere.conf;\n").unwrap();
        let e = load(&root.join("c.conf")).unwrap_err().to_string();
        assert!(e.contains("nothere.conf: cannot read"), "{e}");
    }

    #[test]
    fn wildcards() {
        assert!(wildcard("*.conf", "a.conf"));
        assert!(wildcard("*.conf", ".conf"));
        assert!(!wildcard("*.conf", "a.conf.bak"));
        assert!(wildcard("site-?.c*f", "site-1.conf"));
        assert!(!wildcard("site-?.conf", "site-12.conf"));
    }
}
