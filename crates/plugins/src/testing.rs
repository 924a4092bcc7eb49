//! What the plugins' unit tests share: building a plugin from its JSON configuration, a client
//! request answering variables as the proxy's does, consumers with credentials, and what a
//! request phase decided.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use pylon_model::FieldError;
use pylon_plugin::{Chain, Consumer, Plugin, Reply, RequestCtx, Step};
use pylon_router::RequestView;
use serde_json::Value;

use crate::credentials::{Credential, Credentials};
use crate::descriptor::{BuildEnv, Descriptor};

/// The `Host` every test request is sent to.
const HOST: &str = "example.com";

/// Builds a plugin as the snapshot compiler does, with no consumers and no metadata.
pub(crate) fn build(descriptor: &Descriptor, config: Value) -> Result<Arc<dyn Plugin>, FieldError> {
    let credentials = Arc::new(Credentials::default());
    (descriptor.build)(
        &config,
        &BuildEnv {
            protos: crate::protos::Protos::none(),
            credentials: &credentials,
            metadata: None,
            owner: "",
        },
    )
}

/// Builds a plugin with `metadata` as its `plugin_metadata`, parsed by its metadata spec.
pub(crate) fn build_with_metadata(
    descriptor: &Descriptor,
    config: Value,
    metadata: Value,
) -> Result<Arc<dyn Plugin>, FieldError> {
    let spec = descriptor
        .metadata
        .as_ref()
        .expect("a plugin with metadata");
    let metadata = (spec.parse)(&metadata)?;
    let credentials = Arc::new(Credentials::default());
    (descriptor.build)(
        &config,
        &BuildEnv {
            protos: crate::protos::Protos::none(),
            credentials: &credentials,
            metadata: Some(&metadata),
            owner: "",
        },
    )
}

/// The error a configuration is refused with.
pub(crate) fn refusal(descriptor: &Descriptor, config: Value) -> FieldError {
    match build(descriptor, config.clone()) {
        Ok(_) => panic!("{config} was accepted"),
        Err(e) => e,
    }
}

/// Every consumer of `consumers` (name, the plugin's consumer configuration), indexed as
/// the snapshot compiler indexes them.
pub(crate) fn credentials(plugin: &Descriptor, consumers: &[(&str, Value)]) -> Arc<Credentials> {
    let spec = plugin
        .credential
        .as_ref()
        .expect("an authentication plugin");
    let mut credentials = Credentials::default();
    for (name, config) in consumers {
        let (lookup, secret) = (spec.parse)(config).expect("a valid credential");
        let consumer = Arc::new(Consumer::new((*name).into(), None, Chain::default()));
        credentials
            .insert(plugin.name, &lookup, Credential { consumer, secret })
            .expect("no duplicate credential");
    }
    Arc::new(credentials)
}

/// The error a consumer configuration is refused with.
pub(crate) fn credential_refusal(plugin: &Descriptor, config: Value) -> FieldError {
    let spec = plugin
        .credential
        .as_ref()
        .expect("an authentication plugin");
    match (spec.parse)(&config) {
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

/// A reply's body as JSON.
pub(crate) fn body(reply: &Reply) -> Value {
    serde_json::from_slice(&reply.body).expect("a JSON body")
}

/// A reply's header, by name (any case).
pub(crate) fn reply_header<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
    reply
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The name of the consumer the request was identified as.
pub(crate) fn consumer_name(ctx: &RequestCtx<'_>) -> Option<String> {
    ctx.consumer().map(|c| c.username().to_owned())
}

/// A client request to [`HOST`]: method, target, scheme, headers and the connection's peer.
/// Its variables are `uri`, `request_uri`, `args` (or `query_string`), `host`,
/// `request_method`, `remote_addr`, `scheme`, `http_*` (the first header of the name),
/// `arg_*` (percent-decoded) and `cookie_*`.
#[derive(Debug)]
pub(crate) struct TestRequest {
    method: String,
    target: String,
    scheme: &'static str,
    headers: Vec<(String, String)>,
    peer: IpAddr,
}

impl TestRequest {
    pub(crate) fn get(target: &str) -> TestRequest {
        TestRequest {
            method: "GET".into(),
            target: target.into(),
            scheme: "http",
            headers: Vec::new(),
            peer: [192, 0, 2, 7].into(),
        }
    }

    pub(crate) fn method(mut self, method: &str) -> TestRequest {
        self.method = method.into();
        self
    }

    pub(crate) fn https(mut self) -> TestRequest {
        self.scheme = "https";
        self
    }

    pub(crate) fn header(mut self, name: &str, value: &str) -> TestRequest {
        self.headers.push((name.into(), value.into()));
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

    /// The first header whose variable name (`x_api_key` for `X-Api-Key`) is `var_name`.
    fn header_value(&self, var_name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.to_ascii_lowercase().replace('-', "_") == var_name)
            .map(|(_, v)| v.as_str())
    }
}

impl RequestView for TestRequest {
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    fn for_each_header(&self, each: &mut dyn FnMut(&str, &[u8])) {
        for (name, value) in &self.headers {
            each(name, value.as_bytes());
        }
    }

    fn host(&self) -> Option<&str> {
        Some(HOST)
    }

    fn method(&self) -> &str {
        &self.method
    }

    fn remote_addr(&self) -> IpAddr {
        self.peer
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
            return self.header_value(header).map(Cow::Borrowed);
        }
        if let Some(cookie) = name.strip_prefix("cookie_") {
            return self
                .header_value("cookie")?
                .split(';')
                .filter_map(|pair| pair.trim().split_once('='))
                .find(|(k, _)| *k == cookie)
                .map(|(_, v)| Cow::Borrowed(v));
        }
        Some(match name {
            "uri" => Cow::Borrowed(self.path()),
            "request_uri" => Cow::Borrowed(&self.target),
            "args" | "query_string" => Cow::Borrowed(self.query()?),
            "host" => Cow::Borrowed(HOST),
            "request_method" => Cow::Borrowed(&self.method),
            "remote_addr" => Cow::Owned(self.peer.to_string()),
            "scheme" => Cow::Borrowed(self.scheme),
            _ => return None,
        })
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
