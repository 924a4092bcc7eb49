//! What the access plugins' unit tests share: building a plugin from its JSON configuration,
//! a client request answering variables as the proxy's does, and a phase's outcome.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use pylon_model::FieldError;
use pylon_plugin::{Plugin, Reply, Step};
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

/// The reply a request phase answered with, `None` when it let the request go on.
pub(crate) fn replied(step: Step<'_>) -> Option<Reply> {
    match step {
        Step::Continue => None,
        Step::Reply(reply) => Some(reply),
        Step::Call(_) => panic!("the phase called out"),
    }
}

/// A client request: method, target, headers and the connection's peer. Its variables are
/// `uri`, `request_uri`, `args`, `request_method`, `remote_addr`, `http_*` (the first header
/// of the name) and `arg_*` (raw).
pub(crate) struct TestRequest {
    method: &'static str,
    target: String,
    headers: Vec<(String, String)>,
    peer: IpAddr,
}

impl TestRequest {
    pub(crate) fn get(target: &str) -> TestRequest {
        TestRequest {
            method: "GET",
            target: target.to_owned(),
            headers: Vec::new(),
            peer: [192, 0, 2, 7].into(),
        }
    }

    pub(crate) fn method(mut self, method: &'static str) -> TestRequest {
        self.method = method;
        self
    }

    pub(crate) fn header(mut self, name: &str, value: &str) -> TestRequest {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The connection's peer address.
    pub(crate) fn from(mut self, peer: &str) -> TestRequest {
        self.peer = peer.parse().expect("a test address");
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
        None
    }

    fn method(&self) -> &str {
        self.method
    }

    fn remote_addr(&self) -> IpAddr {
        self.peer
    }

    fn var(&self, name: &str) -> Option<Cow<'_, str>> {
        if let Some(arg) = name.strip_prefix("arg_") {
            return self
                .query()?
                .split('&')
                .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
                .find(|(k, _)| *k == arg)
                .map(|(_, v)| Cow::Borrowed(v));
        }
        if let Some(header) = name.strip_prefix("http_") {
            return self
                .headers
                .iter()
                .find(|(n, _)| n.to_ascii_lowercase().replace('-', "_") == header)
                .map(|(_, v)| Cow::Borrowed(v.as_str()));
        }
        Some(match name {
            "uri" => Cow::Borrowed(self.path()),
            "request_uri" => Cow::Borrowed(&self.target),
            "args" => Cow::Borrowed(self.query()?),
            "request_method" => Cow::Borrowed(self.method),
            "remote_addr" => Cow::Owned(self.peer.to_string()),
            _ => return None,
        })
    }
}
