//! Pylon's Admin API, compatible with Apache APISIX v3's, so that existing scripts and tools
//! work unchanged.
//!
//! Resources live at `/apisix/admin/<kind>[/<id>]` (and a consumer's credentials at
//! `/apisix/admin/consumers/<username>/credentials[/<id>]`), with APISIX's methods, answers and
//! status codes. Every write is validated by the model and checked against the references of
//! the configuration before it is stored, as one compare-and-swap transaction; SSL private keys
//! are stored sealed by a [`pylon_store::Keyring`] and never shown. Keys are `X-API-KEY`s with
//! a role (admin or viewer), from allowed client addresses only.
//!
//! Beside the APISIX paths, `/pylon/admin/config` dumps the whole configuration as one
//! standalone document and applies one atomically: the declarative workflow.
#![forbid(unsafe_code)]

mod address;
mod audit;
mod auth;
mod change_sets;
mod control;
mod declarative;
mod history;
mod identity;
mod listing;
mod merge;
mod nodes;
mod plugins;
mod query;
mod references;
mod resources;
mod response;
mod schema;
mod secrets;
mod server;
mod settings;
mod tenancy;
mod tenants;
mod validation;
mod writer;

pub use server::AdminApi;
pub use settings::{AdminKey, AdminSettings, Role, SettingsError};
