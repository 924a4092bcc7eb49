//! A response a plugin makes itself, instead of the upstream's.

use bytes::Bytes;

/// A complete response: status, headers and body. Written by whichever codec carries the
/// request; `Content-Length` is set from the body.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Reply {
    /// A response with an empty body.
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// APISIX's error body for plugins: `{"message": "..."}`.
    pub fn message(status: u16, message: &str) -> Reply {
        Reply::json(status, &serde_json::json!({ "message": message }))
    }

    /// A JSON body with its content type.
    pub fn json(status: u16, body: &serde_json::Value) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::from(body.to_string()),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }
}
