//! Who is calling: the node config's keys (the platform's) or a user of the store, found by its
//! API token, with the role and tenant that decide what it may do.
//!
//! A user's token is `<username>.<secret>`: the name finds the user, and the secret's SHA-256
//! is compared, in constant time, with the hash stored for it. Only the hash is stored; the
//! token itself is shown once, when it is made. The secret is 256 random bits, so a fast hash
//! is enough: there is nothing to guess from it.

use base64::Engine;
use pylon_model::{Key, Kind};
use pylon_store::View;
use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use subtle::ConstantTimeEq;

use crate::settings::{self, AdminKey};

/// What a caller may do. Platform roles reach every tenant; the others one tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Role {
    /// Everything: tenants, users, every tenant's resources, the platform's own resources.
    PlatformAdmin,
    /// A tenant's resources, change sets and users.
    TenantAdmin,
    /// A tenant's resources and change sets.
    Editor,
    /// Reads a tenant's resources; approves or rejects its change sets.
    Reviewer,
    /// Reads: a tenant's resources, or with no tenant, everything.
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::PlatformAdmin => "platform_admin",
            Role::TenantAdmin => "tenant_admin",
            Role::Editor => "editor",
            Role::Reviewer => "reviewer",
            Role::Viewer => "viewer",
        }
    }

    pub fn writes(self) -> bool {
        matches!(self, Role::PlatformAdmin | Role::TenantAdmin | Role::Editor)
    }

    pub fn reviews(self) -> bool {
        matches!(
            self,
            Role::PlatformAdmin | Role::TenantAdmin | Role::Reviewer
        )
    }
}

/// The one making a request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Caller {
    /// A user's name, or `key:<name>` for a key of the node config.
    pub name: String,
    /// `None`: the platform's, reaching every tenant.
    pub tenant: Option<String>,
    pub role: Role,
}

impl Caller {
    pub fn is_platform_admin(&self) -> bool {
        self.role == Role::PlatformAdmin
    }

    /// Whether the caller sees resources of `tenant`.
    pub fn reaches(&self, tenant: &str) -> bool {
        self.tenant.as_deref().is_none_or(|own| own == tenant)
    }
}

/// A user as stored under `users/<username>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct User {
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    pub role: Role,
    /// The hex SHA-256 of the user's token.
    pub token_sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desc: Option<String>,
    pub create_time: i64,
    pub update_time: i64,
}

impl User {
    pub fn from_view(view: &View, username: &str) -> Option<User> {
        let entry = view.entries.get(&Key::new(Kind::Users, username))?;
        serde_json::from_value(entry.value.clone()).ok()
    }

    /// The user as the API shows it: without its token's hash.
    pub fn shown(&self) -> Value {
        let mut value = serde_json::to_value(self).expect("a user serializes");
        if let Some(fields) = value.as_object_mut() {
            fields.remove("token_sha256");
        }
        value
    }

    fn caller(&self) -> Caller {
        Caller {
            name: self.username.clone(),
            tenant: self.tenant_id.clone(),
            role: self.role,
        }
    }
}

/// The caller `token` identifies: a key of the node config, or a user of `view`.
pub(crate) fn identify(keys: &[AdminKey], view: &View, token: &str) -> Option<Caller> {
    if let Some(key) = keys
        .iter()
        .find(|k| constant_time_eq(k.key.as_bytes(), token.as_bytes()))
    {
        return Some(Caller {
            name: format!("key:{}", key.name),
            tenant: None,
            role: match key.role {
                settings::Role::Admin => Role::PlatformAdmin,
                settings::Role::Viewer => Role::Viewer,
            },
        });
    }
    let (username, _) = token.split_once('.')?;
    let user = User::from_view(view, username)?;
    let presented = hex(digest(&SHA256, token.as_bytes()).as_ref());
    constant_time_eq(presented.as_bytes(), user.token_sha256.as_bytes()).then(|| user.caller())
}

/// A new token for `username`, and the hash to store for it.
pub(crate) fn new_token(username: &str) -> (String, String) {
    let mut secret = [0u8; 32];
    SystemRandom::new()
        .fill(&mut secret)
        .expect("the system's random source works");
    let token = format!(
        "{username}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    );
    let hash = hex(digest(&SHA256, token.as_bytes()).as_ref());
    (token, hash)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares secrets without revealing, through timing, how much of a guess was right.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pylon_store::Entry;

    use super::*;

    fn view_with(user: &User) -> View {
        let entry = Entry {
            key: Key::new(Kind::Users, user.username.clone()),
            value: serde_json::to_value(user).unwrap(),
            create_revision: 1,
            mod_revision: 1,
        };
        View {
            revision: 1,
            entries: [Arc::new(entry)].into_iter().collect(),
            live: true,
        }
    }

    #[test]
    fn a_token_identifies_its_user_and_nothing_else_does() {
        let (token, hash) = new_token("alice");
        let alice = User {
            username: "alice".into(),
            tenant_id: Some("team-a".into()),
            role: Role::Editor,
            token_sha256: hash,
            desc: None,
            create_time: 0,
            update_time: 0,
        };
        let view = view_with(&alice);
        let caller = identify(&[], &view, &token).unwrap();
        assert_eq!(caller.tenant.as_deref(), Some("team-a"));
        assert_eq!(caller.role, Role::Editor);
        let (other, _) = new_token("alice");
        assert_eq!(identify(&[], &view, &other), None);
        assert_eq!(identify(&[], &view, "bob.x"), None);
        assert_eq!(identify(&[], &view, "no-dot"), None);
        assert!(!alice.shown().to_string().contains("token_sha256"));
    }

    #[test]
    fn node_config_keys_are_the_platforms() {
        let keys = [
            AdminKey {
                name: "ops".into(),
                key: "k1".into(),
                role: settings::Role::Admin,
            },
            AdminKey {
                name: "ro".into(),
                key: "k2".into(),
                role: settings::Role::Viewer,
            },
        ];
        let view = View::default();
        let admin = identify(&keys, &view, "k1").unwrap();
        assert!(admin.is_platform_admin() && admin.reaches("any"));
        let viewer = identify(&keys, &view, "k2").unwrap();
        assert_eq!((viewer.role, viewer.tenant), (Role::Viewer, None));
    }
}
