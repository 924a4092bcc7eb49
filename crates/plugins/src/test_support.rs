//! What the plugins' unit tests share: building a plugin from its JSON configuration, and a
//! request answering variables as the proxy's do.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use pylon_model::FieldError;
use pylon_plugin::Plugin;
use pylon_router::RequestView;
use serde_json::Value;

use crate::catalog::{BuildEnv, Descriptor};
use crate::credentials::Credentials;

/// Builds a plugin as the snapshot compiler does, with no consumers.
pub(crate) fn build(descriptor: &Descriptor, config: Value) -> Result<Arc<dyn Plugin>, FieldError> {
    let credentials = Arc::new(Credentials::default());
    (descriptor.build)(
        &config,
        &BuildEnv {
            credentials: &credentials,
        },
    )
}

/// The error a configuration is refused with.
pub(crate) fn refused(descriptor: &Descriptor, config: Value) -> FieldError {
    match build(descriptor, config.clone()) {
        Ok(_) => panic!("{config} was accepted"),
        Err(e) => e,
    }
}

pub(crate) struct TestRequest {
    method: &'static str,
    target: String,
    host: Option<String>,
    scheme: &'static str,
    headers: Vec<(String, String)>,
}

impl TestRequest {
    pub(crate) fn get(target: &str) -> TestRequest {
        TestRequest {
            method: "GET",
            target: target.to_owned(),
            host: Some("example.com".into()),
            scheme: "http",
            headers: Vec::new(),
        }
    }

    pub(crate) fn method(mut self, method: &'static str) -> TestRequest {
        self.method = method;
        self
    }

    pub(crate) fn https(mut self) -> TestRequest {
        self.scheme = "https";
        self
    }

    pub(crate) fn header(mut self, name: &str, value: &str) -> TestRequest {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }
}

impl RequestView for TestRequest {
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    fn method(&self) -> &str {
        self.method
    }

    fn remote_addr(&self) -> IpAddr {
        [192, 0, 2, 7].into()
    }

    fn var(&self, name: &str) -> Option<Cow<'_, str>> {
        if let Some(arg) = name.strip_prefix("arg_") {
            let (_, value) = self
                .query()?
                .split('&')
                .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
                .find(|(k, _)| *k == arg)?;
            return Some(Cow::Owned(percent_decode(value)));
        }
        if let Some(header) = name.strip_prefix("http_") {
            return self
                .headers
                .iter()
                .find(|(n, _)| n.to_ascii_lowercase().replace('-', "_") == header)
                .map(|(_, v)| Cow::Borrowed(v.as_str()));
        }
        Some(Cow::Borrowed(match name {
            "uri" => self.path(),
            "request_uri" => &self.target,
            "args" | "query_string" => self.query()?,
            "host" => self.host.as_deref()?,
            "request_method" => self.method,
            "remote_addr" => "192.0.2.7",
            "scheme" => self.scheme,
            _ => return None,
        }))
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = s
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
