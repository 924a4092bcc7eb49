//! Pylon's Admin API, compatible with Apache APISIX v3's, so that existing scripts and tools
//! work unchanged, and the control plane for the teams that share a gateway beside it.
//!
//! Resources live at `/apisix/admin/<kind>[/<id>]` (and a consumer's credentials at
//! `/apisix/admin/consumers/<username>/credentials[/<id>]`), with APISIX's methods, answers and
//! status codes. Every write is validated by the model and checked against the references of
//! the configuration before it is stored, as one compare-and-swap transaction, with its audit
//! record and the versions of what it changed; SSL private keys are stored sealed by a
//! [`pylon_store::Keyring`] and never shown.
//!
//! Every call is made by someone: a key of the node config (the platform's) or a user of the
//! store, with a role and a tenant, from allowed client addresses only. Under `/pylon/admin/`:
//! tenants and users, change sets (review, canary, publish), versions and rollback, the audit
//! log, the gateway nodes, and `config`, which dumps the whole configuration as one standalone
//! document and applies one atomically: the declarative workflow.
#![forbid(unsafe_code)]

mod address;
mod audit;
mod auth;
mod body;
mod change_sets;
mod clock;
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
mod resource_write;
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
