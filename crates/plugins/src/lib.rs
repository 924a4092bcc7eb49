//! Pylon's plugins, with APISIX's names, fields, defaults and error bodies.
//!
//! Each plugin is one module: its configuration type (parsed with serde, its JSON Schema
//! derived from the same type), the checks the type cannot express, and the [`Plugin`]
//! implementation built from it. Building is validating: the Admin API builds a plugin to
//! check a write, and the snapshot compiler builds it again to serve it, so what is accepted
//! is exactly what can run.
//!
//! [`Plugin`]: pylon_plugin::Plugin
#![forbid(unsafe_code)]

mod catalog;
mod client_control;
mod compile;
mod config;
mod cors;
mod credentials;
mod ip_restriction;
mod ip_set;
mod key_auth;
mod query;
mod real_ip;
mod request_validation;
#[cfg(test)]
mod test_request;
mod uri_blocker;

pub use catalog::{find, Descriptor, Scope, CATALOG};
pub use compile::{check, CompiledPlugins};
pub use credentials::{Credential, Credentials};
