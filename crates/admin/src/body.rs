//! Request bodies as JSON, read as APISIX's decoder reads them.

use std::borrow::Cow;

use crate::response::Reply;

/// The body as JSON, or `None` when there is none.
pub(crate) fn json_body(body: &[u8]) -> Result<Option<serde_json::Value>, Reply> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&escape_control_characters(body))
        .map(Some)
        .map_err(|e| Reply::bad_request(format!("invalid request body: {e}")))
}

/// `body` with every raw control character (a literal newline or tab, ...) inside a string
/// literal written as its `\u00XX` escape. APISIX's decoder (cjson) accepts them there, and
/// bodies written for it hold them (a proto's `content` pasted with its line breaks), while
/// strict JSON, and serde_json, refuses them. Outside strings they are left alone: there,
/// newlines and tabs are whitespace, and anything else stays an error. A body without control
/// characters is not copied.
fn escape_control_characters(body: &[u8]) -> Cow<'_, [u8]> {
    if !body.iter().any(|&b| b < 0x20) {
        return Cow::Borrowed(body);
    }
    let mut out = Vec::with_capacity(body.len() + 16);
    let (mut in_string, mut escaped) = (false, false);
    for &b in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            } else if b < 0x20 {
                out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
                continue;
            }
        } else if b == b'"' {
            in_string = true;
        }
        out.push(b);
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;

    #[test]
    fn raw_control_characters_in_strings_are_escaped_and_elsewhere_kept() {
        let body = b"{\n\t\"content\": \"a\n\tb \\\" \\\\\",\n \"k\": \"\\n\x01\"}";
        let value = json_body(body).unwrap().unwrap();
        assert_eq!(value["content"], "a\n\tb \" \\");
        assert_eq!(value["k"], "\n\u{1}");
        assert!(matches!(
            escape_control_characters(b"{\"a\": 1}"),
            Cow::Borrowed(_)
        ));
        // Outside a string, a control character that is not whitespace is still an error.
        assert_eq!(
            json_body(b"{\"a\": 1\x01}").unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }
}
