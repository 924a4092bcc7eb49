//! Text with request variables in it (`$remote_addr`, `${http_x_user}-suffix`), parsed once
//! when the configuration is compiled and rendered per request.

use std::borrow::Cow;

use pylon_router::RequestView;

/// A parsed template. Variable names are letters, digits and `_`; `${name}` delimits a name
/// that text follows directly. A `$` followed by nothing that can start a name is literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Part>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Var(String),
}

impl Template {
    pub fn parse(text: &str) -> Template {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            literal.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            let (name, consumed) = match after.strip_prefix('{') {
                Some(braced) => match braced.find('}') {
                    Some(end) if is_name(&braced[..end]) => (&braced[..end], end + 2),
                    _ => ("", 0),
                },
                None => {
                    let end = after
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(after.len());
                    (&after[..end], end)
                }
            };
            if name.is_empty() {
                literal.push('$');
                rest = after;
                continue;
            }
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(Part::Var(name.to_owned()));
            rest = &after[consumed..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Template(parts)
    }

    /// Whether the template has no variables: rendering it costs nothing.
    pub fn is_literal(&self) -> bool {
        self.0.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// The text for one request; a variable the request does not have renders empty.
    pub fn render<'t>(&'t self, request: &impl RequestView) -> Cow<'t, str> {
        match self.0.as_slice() {
            [] => Cow::Borrowed(""),
            [Part::Literal(text)] => Cow::Borrowed(text),
            [Part::Var(name)] => {
                Cow::Owned(request.var(name).map(Cow::into_owned).unwrap_or_default())
            }
            parts => {
                let mut out = String::new();
                for part in parts {
                    match part {
                        Part::Literal(text) => out.push_str(text),
                        Part::Var(name) => out.push_str(request.var(name).as_deref().unwrap_or("")),
                    }
                }
                Cow::Owned(out)
            }
        }
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    struct Vars;
    impl RequestView for Vars {
        fn path(&self) -> &str {
            "/p"
        }
        fn host(&self) -> Option<&str> {
            None
        }
        fn method(&self) -> &str {
            "GET"
        }
        fn remote_addr(&self) -> IpAddr {
            [192, 0, 2, 1].into()
        }
        fn var(&self, name: &str) -> Option<Cow<'_, str>> {
            match name {
                "remote_addr" => Some("192.0.2.1".into()),
                "http_x_user" => Some("ann".into()),
                _ => None,
            }
        }
    }

    #[test]
    fn variables_are_rendered_and_the_rest_kept() {
        let t = Template::parse("ip=$remote_addr, ${http_x_user}-x $missing $ 5$");
        assert!(!t.is_literal());
        assert_eq!(t.render(&Vars), "ip=192.0.2.1, ann-x  $ 5$");
        let literal = Template::parse("plain ${not closed");
        assert!(literal.is_literal());
        assert_eq!(literal.render(&Vars), "plain ${not closed");
    }
}
