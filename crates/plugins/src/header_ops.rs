//! Header operations with `$var` templates in their values, as `proxy-rewrite` and
//! `response-rewrite` configure them: headers to add, to set and to remove.

use std::borrow::Cow;
use std::sync::Arc;

use pylon_model::FieldError;
use pylon_plugin::{HeaderEdits, Template};
use pylon_router::RequestView;
use schemars::JsonSchema;
use serde::Deserialize;

/// A header value as APISIX accepts it: a string or a number.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub(crate) enum Scalar {
    Text(String),
    Number(serde_json::Number),
}

impl Scalar {
    pub(crate) fn text(&self) -> Cow<'_, str> {
        match self {
            Scalar::Text(text) => Cow::Borrowed(text),
            Scalar::Number(n) => Cow::Owned(n.to_string()),
        }
    }
}

/// Validated operations, applied in APISIX's order: add, then set, then remove.
#[derive(Debug, Default)]
pub(crate) struct HeaderOps {
    add: Vec<(Arc<str>, Template)>,
    set: Vec<(Arc<str>, Vec<Template>)>,
    remove: Vec<Arc<str>>,
}

impl HeaderOps {
    pub(crate) fn is_empty(&self) -> bool {
        self.add.is_empty() && self.set.is_empty() && self.remove.is_empty()
    }

    /// Adds one more header `name`; `path` locates the value in the configuration.
    pub(crate) fn add(&mut self, path: &str, name: &str, value: &str) -> Result<(), FieldError> {
        check_name(path, name)?;
        self.add.push((Arc::from(name), template(path, value)?));
        Ok(())
    }

    /// Replaces header `name` with these values (one header each).
    pub(crate) fn set(
        &mut self,
        path: &str,
        name: &str,
        values: &[Cow<'_, str>],
    ) -> Result<(), FieldError> {
        check_name(path, name)?;
        let values = values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let at = if values.len() == 1 {
                    path.to_owned()
                } else {
                    format!("{path}.{i}")
                };
                template(&at, v)
            })
            .collect::<Result<_, _>>()?;
        self.set.push((Arc::from(name), values));
        Ok(())
    }

    pub(crate) fn remove(&mut self, path: &str, name: &str) -> Result<(), FieldError> {
        check_name(path, name)?;
        self.remove.push(Arc::from(name));
        Ok(())
    }

    /// Renders the values for one request. Applying them is a separate step, so that the
    /// variables may be read from the very request whose edits change.
    pub(crate) fn render(&self, vars: &impl RequestView) -> Rendered<'_> {
        let templates = self.add.iter().map(|(_, value)| value);
        let templates = templates.chain(self.set.iter().flat_map(|(_, values)| values));
        Rendered {
            ops: self,
            values: templates.map(|t| header_value(t.render(vars))).collect(),
        }
    }
}

/// The operations with their values for one request.
pub(crate) struct Rendered<'o> {
    ops: &'o HeaderOps,
    /// The values of `add`, then of `set`, in order.
    values: Vec<String>,
}

impl Rendered<'_> {
    pub(crate) fn apply(self, edits: &mut HeaderEdits) {
        let mut values = self.values.into_iter();
        for ((name, _), value) in self.ops.add.iter().zip(values.by_ref()) {
            edits.add(name.clone(), value);
        }
        for (name, templates) in &self.ops.set {
            for (i, value) in values.by_ref().take(templates.len()).enumerate() {
                if i == 0 {
                    edits.set(name.clone(), value);
                } else {
                    edits.add(name.clone(), value);
                }
            }
        }
        for name in &self.ops.remove {
            edits.remove(name.clone());
        }
    }
}

/// A header name is a token: visible ASCII without `:`.
pub(crate) fn check_name(path: &str, name: &str) -> Result<(), FieldError> {
    if name.is_empty() {
        return Err(FieldError::new(path, "invalid field length in header"));
    }
    if !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        return Err(FieldError::new(path, "invalid field character in header"));
    }
    Ok(())
}

pub(crate) fn template(path: &str, value: &str) -> Result<Template, FieldError> {
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(FieldError::new(path, "invalid value character in header"));
    }
    Ok(Template::parse(value))
}

/// A rendered value without the control characters a variable may have brought in (a
/// percent-decoded argument can hold a CR LF), so that it stays one header.
pub(crate) fn header_value(value: Cow<'_, str>) -> String {
    // Visible ASCII, space and tab, the usual value, has none: only other bytes need the
    // look at characters.
    let plain = |b: u8| (b' '..0x7f).contains(&b) || b == b'\t';
    if !value.bytes().all(plain) && value.chars().any(|c| c.is_control() && c != '\t') {
        value
            .chars()
            .filter(|c| !c.is_control() || *c == '\t')
            .collect()
    } else {
        value.into_owned()
    }
}

/// Whether a response body is as its writer made it, without a content coding.
pub(crate) fn is_identity(headers: &dyn pylon_plugin::ResponseHeaders) -> bool {
    headers
        .header("content-encoding")
        .is_none_or(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"identity"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestRequest;

    #[test]
    fn operations_render_in_order_and_stay_one_header() {
        let mut ops = HeaderOps::default();
        ops.add("add.X-A", "X-A", "a-$arg_v").unwrap();
        ops.set("set.X-B", "X-B", &["1".into(), "$arg_v".into()])
            .unwrap();
        ops.remove("remove.0", "X-C").unwrap();
        let mut edits = HeaderEdits::default();
        ops.render(&TestRequest::get("/?v=x%0D%0AEvil:%201"))
            .apply(&mut edits);
        assert_eq!(
            edits.added().collect::<Vec<_>>(),
            [("X-A", "a-xEvil: 1"), ("X-B", "1"), ("X-B", "xEvil: 1")]
        );
        assert_eq!(edits.get("x-c"), Some(None));
    }

    #[test]
    fn rendered_values_lose_every_control_character_but_tab() {
        assert_eq!(header_value("plain value\t1".into()), "plain value\t1");
        assert_eq!(header_value("J\u{f6}rg".into()), "J\u{f6}rg");
        assert_eq!(header_value("a\r\nb\u{7f}c\u{85}d".into()), "abcd");
    }

    #[test]
    fn bad_names_and_values_are_refused_where_they_are() {
        let mut ops = HeaderOps::default();
        let e = ops.add("add.X:A", "X:A", "1").unwrap_err();
        assert_eq!(e.path, "add.X:A");
        let e = ops.set("set.X-B", "X-B", &["ok".into(), "a\nb".into()]);
        assert_eq!(e.unwrap_err().path, "set.X-B.1");
        assert!(ops.remove("remove.0", "").is_err());
    }
}
