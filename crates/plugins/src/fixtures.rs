//! What the authentication plugins' tests build on: a client request with the variables
//! plugins read, consumers with credentials, and running one phase.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use pylon_plugin::{Chain, Consumer, Plugin, Reply, RequestCtx, Step};
use pylon_router::RequestView;
use serde_json::Value;

use crate::catalog::{BuildEnv, Descriptor};
use crate::credentials::{Credential, Credentials};

/// A client request: method, target, headers and address. Its variables are `uri`,
/// `request_uri`, `http_*`, `arg_*` (raw) and `cookie_*`.
pub(crate) struct TestRequest {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

impl TestRequest {
    pub(crate) fn get(target: &str) -> TestRequest {
        TestRequest {
            method: "GET".into(),
            target: target.into(),
            headers: Vec::new(),
        }
    }

    pub(crate) fn method(mut self, method: &str) -> TestRequest {
        self.method = method.into();
        self
    }

    pub(crate) fn header(mut self, name: &str, value: &str) -> TestRequest {
        self.headers.push((name.into(), value.into()));
        self
    }

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

    fn host(&self) -> Option<&str> {
        None
    }

    fn method(&self) -> &str {
        &self.method
    }

    fn remote_addr(&self) -> IpAddr {
        [127, 0, 0, 1].into()
    }

    fn var(&self, name: &str) -> Option<Cow<'_, str>> {
        if name == "uri" {
            return Some(self.path().into());
        }
        if name == "request_uri" {
            return Some(self.target.as_str().into());
        }
        if let Some(header) = name.strip_prefix("http_") {
            return self.header_value(header).map(Cow::Borrowed);
        }
        if let Some(arg) = name.strip_prefix("arg_") {
            let (_, query) = self.target.split_once('?')?;
            return query
                .split('&')
                .filter_map(|pair| pair.split_once('='))
                .find(|(k, _)| *k == arg)
                .map(|(_, v)| Cow::Borrowed(v));
        }
        if let Some(cookie) = name.strip_prefix("cookie_") {
            return self
                .header_value("cookie")?
                .split(';')
                .filter_map(|pair| pair.trim().split_once('='))
                .find(|(k, _)| *k == cookie)
                .map(|(_, v)| Cow::Borrowed(v));
        }
        None
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

/// Builds `plugin` from its route configuration over `credentials`.
pub(crate) fn build(
    plugin: &Descriptor,
    config: Value,
    credentials: &Arc<Credentials>,
) -> Arc<dyn Plugin> {
    (plugin.build)(&config, &BuildEnv { credentials }).expect("a valid configuration")
}

/// The error a configuration is refused with: `(path, message)`.
pub(crate) fn refusal(plugin: &Descriptor, config: Value) -> (String, String) {
    let credentials = Arc::new(Credentials::default());
    match (plugin.build)(
        &config,
        &BuildEnv {
            credentials: &credentials,
        },
    ) {
        Ok(_) => panic!("{config} was accepted"),
        Err(e) => (e.path, e.message),
    }
}

/// The error a consumer configuration is refused with: `(path, message)`.
pub(crate) fn credential_refusal(plugin: &Descriptor, config: Value) -> (String, String) {
    let spec = plugin
        .credential
        .as_ref()
        .expect("an authentication plugin");
    match (spec.parse)(&config) {
        Ok(_) => panic!("{config} was accepted"),
        Err(e) => (e.path, e.message),
    }
}

/// What a request phase decided, without the borrows: `None` to go on, or the reply.
pub(crate) fn decided(step: Step<'_>) -> Option<Reply> {
    match step {
        Step::Continue => None,
        Step::Reply(reply) => Some(reply),
        Step::Call(_) => panic!("authentication plugins call nothing"),
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
