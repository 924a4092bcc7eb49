//! `google.api.http` rules: which HTTP verb and path template reach a method, and how the
//! request's path variables, body and query arguments fill its input message, as the public
//! HttpRule specification says.

use prost_reflect::{FieldDescriptor, MethodDescriptor, ServiceDescriptor, Value as Reflected};
use serde_json::{Map, Value};

use crate::json::{set_param, JsonError};

/// Why a method's HTTP rule cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("method `{method}`: {message}")]
pub struct RuleError {
    method: String,
    message: String,
}

/// One HTTP binding of a method: `GET /v1/{name=shelves/*}` with its body rule.
#[derive(Debug, Clone)]
pub struct Binding {
    verb: String,
    template: Template,
    /// `*`: the whole body is the input message; a field name: the body is that field;
    /// `None`: no body, and query arguments fill what the path does not.
    body: Option<String>,
    /// The field of the output whose value is the response body (`response_body`); `None`:
    /// the whole output message.
    response_body: Option<FieldDescriptor>,
    method: MethodDescriptor,
}

/// A request matched to a binding, with its path variables.
#[derive(Debug)]
pub struct Bound<'b> {
    binding: &'b Binding,
    variables: Vec<(String, String)>,
}

impl Binding {
    /// The bindings of every method of `service` that has a `google.api.http` option, in
    /// the order the service declares them (a method's additional bindings after its own).
    pub fn of_service(service: &ServiceDescriptor) -> Result<Vec<Binding>, RuleError> {
        let Some(extension) = service
            .parent_pool()
            .get_extension_by_name("google.api.http")
        else {
            return Ok(Vec::new());
        };
        let mut bindings = Vec::new();
        for method in service.methods() {
            let options = method.options();
            if !options.has_extension(&extension) {
                continue;
            }
            if let Reflected::Message(rule) = &*options.get_extension(&extension) {
                collect(&method, rule, &mut bindings, true)?;
            }
        }
        Ok(bindings)
    }

    /// The first of `bindings` that `verb` and `path` match.
    pub fn find<'b>(bindings: &'b [Binding], verb: &str, path: &str) -> Option<Bound<'b>> {
        bindings.iter().find_map(|binding| {
            if !binding.verb.eq_ignore_ascii_case(verb) {
                return None;
            }
            let variables = binding.template.matches(path)?;
            Some(Bound { binding, variables })
        })
    }

    pub fn method(&self) -> &MethodDescriptor {
        &self.method
    }
}

impl Bound<'_> {
    pub fn method(&self) -> &MethodDescriptor {
        &self.binding.method
    }

    /// The output field whose value is the answer's body, if the rule names one.
    pub fn response_body(&self) -> Option<&FieldDescriptor> {
        self.binding.response_body.as_ref()
    }

    /// Whether the request's body is read at all.
    pub fn takes_body(&self) -> bool {
        self.binding.body.is_some()
    }

    /// The JSON of the method's input: the body where the rule puts it, then the query
    /// arguments (only when the body is not the whole message), then the path variables,
    /// each later one over an earlier one for the same field.
    pub fn input(
        &self,
        body: Option<Value>,
        query: &[(String, String)],
    ) -> Result<Value, JsonError> {
        let desc = self.binding.method.input();
        let mut json = Map::new();
        match (self.binding.body.as_deref(), body) {
            (Some("*"), Some(Value::Object(whole))) => json = whole,
            (Some("*"), Some(_)) => {
                return Err(JsonError::new("the body must be a JSON object"));
            }
            (Some(field), Some(value)) if field != "*" => {
                json.insert(field.to_owned(), value);
            }
            _ => {}
        }
        if self.binding.body.as_deref() != Some("*") {
            for (name, value) in query {
                set_param(&desc, &mut json, name, value)?;
            }
        }
        for (path, value) in &self.variables {
            set_param(&desc, &mut json, path, value)?;
        }
        Ok(Value::Object(json))
    }
}

/// Reads one `HttpRule` (and its additional bindings, which may not nest further).
fn collect(
    method: &MethodDescriptor,
    rule: &prost_reflect::DynamicMessage,
    into: &mut Vec<Binding>,
    top: bool,
) -> Result<(), RuleError> {
    let error = |message: String| RuleError {
        method: method.full_name().to_owned(),
        message,
    };
    let text = |name: &str| match rule.get_field_by_name(name).as_deref() {
        Some(Reflected::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    let simple = ["get", "put", "post", "delete", "patch"]
        .into_iter()
        .find_map(|verb| Some((verb.to_ascii_uppercase(), text(verb)?)));
    let custom = match rule.get_field_by_name("custom").as_deref() {
        Some(Reflected::Message(custom)) if rule.has_field_by_name("custom") => {
            let field = |name: &str| match custom.get_field_by_name(name).as_deref() {
                Some(Reflected::String(s)) => s.clone(),
                _ => String::new(),
            };
            Some((field("kind"), field("path")))
        }
        _ => None,
    };
    let Some((verb, path)) = simple.or(custom) else {
        return Err(error("the http rule names no verb and path".into()));
    };
    let template = Template::parse(&path).map_err(|e| error(format!("path `{path}`: {e}")))?;
    let body = text("body");
    if let Some(field) = body.as_deref().filter(|b| *b != "*") {
        if method.input().get_field_by_name(field).is_none() {
            return Err(error(format!(
                "body field `{field}` is not in the input message"
            )));
        }
    }
    let response_body = match text("response_body") {
        None => None,
        Some(field) => Some(method.output().get_field_by_name(&field).ok_or_else(|| {
            error(format!(
                "response_body field `{field}` is not in the output message"
            ))
        })?),
    };
    for (field, _) in &template.variables {
        let first = field.split('.').next().unwrap_or_default();
        if method.input().get_field_by_name(first).is_none() {
            return Err(error(format!(
                "path variable `{field}` is not in the input message"
            )));
        }
    }
    into.push(Binding {
        verb,
        template,
        body,
        response_body,
        method: method.clone(),
    });
    if top {
        if let Some(Reflected::List(more)) =
            rule.get_field_by_name("additional_bindings").as_deref()
        {
            for binding in more {
                if let Reflected::Message(binding) = binding {
                    collect(method, binding, into, false)?;
                }
            }
        }
    }
    Ok(())
}

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    One,
    /// `**`: the rest of the path, any number of segments.
    Rest,
}

/// A parsed path template: its segments, the variables that capture runs of them, and the
/// verb after a last `:`.
#[derive(Debug, Clone)]
struct Template {
    segments: Vec<Segment>,
    /// A variable's field path, and the segments it spans (`start..end`).
    variables: Vec<(String, std::ops::Range<usize>)>,
    verb: Option<String>,
}

impl Template {
    fn parse(template: &str) -> Result<Template, String> {
        let rest = template.strip_prefix('/').ok_or("must start with `/`")?;
        // The verb follows the last `:` that is outside every variable.
        let mut depth = 0;
        let mut verb_at = None;
        for (i, c) in rest.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ':' if depth == 0 => verb_at = Some(i),
                _ => {}
            }
        }
        let (path, verb) = match verb_at {
            Some(i) => (&rest[..i], Some(rest[i + 1..].to_owned())),
            None => (rest, None),
        };
        let mut template = Template {
            segments: Vec::new(),
            variables: Vec::new(),
            verb,
        };
        let mut chars = path;
        while !chars.is_empty() {
            if let Some(inner) = chars.strip_prefix('{') {
                let close = inner.find('}').ok_or("a `{` without its `}`")?;
                let (field, pattern) = match inner[..close].split_once('=') {
                    Some((field, pattern)) => (field, pattern),
                    None => (&inner[..close], "*"),
                };
                if field.is_empty() {
                    return Err("a variable without a field name".into());
                }
                let start = template.segments.len();
                for part in pattern.split('/') {
                    template.segments.push(Segment::of(part)?);
                }
                let span = start..template.segments.len();
                template.variables.push((field.to_owned(), span));
                chars = &inner[close + 1..];
            } else {
                let end = chars.find('/').unwrap_or(chars.len());
                template.segments.push(Segment::of(&chars[..end])?);
                chars = &chars[end..];
            }
            chars = match chars.strip_prefix('/') {
                Some(next) if !next.is_empty() => next,
                Some(_) => return Err("ends with `/`".into()),
                None if chars.is_empty() => chars,
                None => return Err("a variable must be a whole segment".into()),
            };
        }
        let rest_at = template.segments.iter().position(|s| *s == Segment::Rest);
        if rest_at.is_some_and(|at| at + 1 != template.segments.len()) {
            return Err("`**` must be the last segment".into());
        }
        Ok(template)
    }

    /// The variables' values when `path` matches, percent-decoded.
    fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let path = path.strip_prefix('/')?;
        let path = match &self.verb {
            Some(verb) => path.strip_suffix(verb.as_str())?.strip_suffix(':')?,
            None => path,
        };
        let parts: Vec<&str> = if path.is_empty() {
            Vec::new()
        } else {
            path.split('/').collect()
        };
        // Where each template segment's match starts in `parts`, and one past the last.
        let mut starts = Vec::with_capacity(self.segments.len() + 1);
        let mut at = 0;
        for segment in &self.segments {
            starts.push(at);
            match segment {
                Segment::Literal(literal) => {
                    if parts.get(at) != Some(&literal.as_str()) {
                        return None;
                    }
                    at += 1;
                }
                Segment::One => {
                    parts.get(at).filter(|p| !p.is_empty())?;
                    at += 1;
                }
                Segment::Rest => at = parts.len(),
            }
        }
        starts.push(at);
        if at != parts.len() {
            return None;
        }
        let variables = self
            .variables
            .iter()
            .map(|(field, span)| {
                let run = &parts[starts[span.start]..starts[span.end]];
                let value = run.iter().map(|p| decode(p)).collect::<Vec<_>>().join("/");
                (field.clone(), value)
            })
            .collect();
        Some(variables)
    }
}

impl Segment {
    fn of(text: &str) -> Result<Segment, String> {
        Ok(match text {
            "*" => Segment::One,
            "**" => Segment::Rest,
            "" => return Err("an empty segment".into()),
            literal if literal.contains(['{', '}', '=']) => {
                return Err(format!("`{literal}` is not a segment"))
            }
            literal => Segment::Literal(literal.to_owned()),
        })
    }
}

/// Percent-decodes a path segment; a broken escape stays as it was.
fn decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| segment.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::Schema;

    const LIBRARY: &str = r#"syntax = "proto3";
package lib;
import "google/api/annotations.proto";
service Library {
  rpc GetBook (GetBookRequest) returns (Book) {
    option (google.api.http) = {
      get: "/v1/{name=shelves/*/books/*}"
      additional_bindings { get: "/v1/books/{name}:fetch" }
      additional_bindings { get: "/v1/books/{name}:title" response_body: "title" }
    };
  }
  rpc CreateBook (CreateBookRequest) returns (Book) {
    option (google.api.http) = { post: "/v1/shelves/{shelf}/books" body: "book" };
  }
  rpc UpdateBook (Book) returns (Book) {
    option (google.api.http) = { patch: "/v1/{name=**}" body: "*" };
  }
  rpc Plain (Book) returns (Book);
}
message Book { string name = 1; string title = 2; int32 pages = 3; }
message GetBookRequest { string name = 1; bool full = 2; }
message CreateBookRequest { string shelf = 1; Book book = 2; int64 trace = 3; }
"#;

    fn bindings() -> Vec<Binding> {
        let schema = Schema::compile("lib.proto", LIBRARY).unwrap();
        Binding::of_service(&schema.service("lib.Library").unwrap()).unwrap()
    }

    fn input(
        verb: &str,
        path: &str,
        body: Option<Value>,
        query: &[(&str, &str)],
    ) -> (String, Value) {
        let bindings = bindings();
        let bound = Binding::find(&bindings, verb, path).expect("a binding");
        let query: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        (
            bound.method().name().to_owned(),
            bound.input(body, &query).unwrap(),
        )
    }

    #[test]
    fn path_variables_capture_their_segments() {
        let (method, json) = input(
            "GET",
            "/v1/shelves/s1/books/b%201",
            None,
            &[("full", "true")],
        );
        assert_eq!(method, "GetBook");
        assert_eq!(json, json!({"name": "shelves/s1/books/b 1", "full": true}));
        let (method, json) = input("GET", "/v1/books/b2:fetch", None, &[]);
        assert_eq!((method.as_str(), json), ("GetBook", json!({"name": "b2"})));
        let bindings = bindings();
        let title = Binding::find(&bindings, "GET", "/v1/books/b2:title").unwrap();
        assert_eq!(title.response_body().map(|f| f.name()), Some("title"));
        let fetch = Binding::find(&bindings, "GET", "/v1/books/b2:fetch").unwrap();
        assert!(fetch.response_body().is_none(), "the whole message");
        let (_, json) = input(
            "PATCH",
            "/v1/a/b/c",
            Some(json!({"title": "t"})),
            &[("pages", "3")],
        );
        assert_eq!(
            json,
            json!({"name": "a/b/c", "title": "t"}),
            "body `*` takes no query"
        );
    }

    #[test]
    fn a_body_field_takes_the_body_and_the_query_fills_the_rest() {
        let (method, json) = input(
            "post",
            "/v1/shelves/7/books",
            Some(json!({"title": "Dune"})),
            &[("trace", "12"), ("unknown", "x")],
        );
        assert_eq!(method, "CreateBook");
        assert_eq!(
            json,
            json!({"book": {"title": "Dune"}, "shelf": "7", "trace": "12"})
        );
    }

    #[test]
    fn requests_no_rule_matches_find_nothing() {
        let bindings = bindings();
        for (verb, path) in [
            ("POST", "/v1/shelves/s1/books/b1"),
            ("GET", "/v1/shelves/s1/books"),
            ("GET", "/v1/books/b2"),
            ("GET", "/v2/x"),
        ] {
            assert!(
                Binding::find(&bindings, verb, path).is_none(),
                "{verb} {path}"
            );
        }
        assert_eq!(bindings.len(), 5, "Plain has no rule");
    }

    #[test]
    fn bad_templates_and_fields_are_refused() {
        for bad in ["v1", "/v1/{name", "/v1/**/x", "/v1/a{b}", "/v1/"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
        let proto = LIBRARY.replace(
            "{shelf}/books\" body: \"book\"",
            "{shelf}/books\" body: \"nope\"",
        );
        let schema = Schema::compile("lib.proto", &proto).unwrap();
        let error = Binding::of_service(&schema.service("lib.Library").unwrap()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "method `lib.Library.CreateBook`: body field `nope` is not in the input message"
        );
        let proto = LIBRARY.replace("response_body: \"title\"", "response_body: \"nope\"");
        let schema = Schema::compile("lib.proto", &proto).unwrap();
        let error = Binding::of_service(&schema.service("lib.Library").unwrap()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "method `lib.Library.GetBook`: response_body field `nope` is not in the output message"
        );
    }
}
