//! The `admin:` section of the node config, and the admin key generated when none is set.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Where [`AdminSettings::resolve_keys`] keeps the generated key, under the data directory.
const GENERATED_KEY_FILE: &str = "admin_key";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Port 0 picks a free port.
    pub listen: SocketAddr,
    /// The keys that may use the API (APISIX's `deployment.admin.admin_key`). When empty,
    /// [`AdminSettings::resolve_keys`] generates one admin key into `<data_dir>/admin_key`
    /// (readable by its owner only) and reuses it on later starts: there is no well-known
    /// default key to forget to change.
    pub admin_key: Vec<AdminKey>,
    /// Client addresses allowed to use the API, as networks (`10.0.0.0/8`) or single addresses.
    /// An empty list allows every address, as APISIX does when the option is not set.
    #[serde(
        serialize_with = "serialize_networks",
        deserialize_with = "deserialize_networks"
    )]
    pub allow_admin: Vec<IpNet>,
    /// The largest request body accepted, in bytes; larger ones are refused with 413.
    pub max_body_size: usize,
    /// The largest declarative configuration accepted by `POST /pylon/admin/config`, in bytes:
    /// a whole configuration is much larger than one resource.
    pub max_config_size: usize,
    /// Answer browsers' cross-origin requests, as APISIX's `enable_admin_cors`.
    pub enable_admin_cors: bool,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9180)),
            admin_key: Vec::new(),
            allow_admin: vec![IpNet::V4(Ipv4Net::new_assert(
                Ipv4Addr::new(127, 0, 0, 0),
                24,
            ))],
            // APISIX's admin API reads at most 1.5 MiB of body.
            max_body_size: 1024 * 1024 * 3 / 2,
            max_config_size: 64 * 1024 * 1024,
            enable_admin_cors: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminKey {
    pub name: String,
    pub key: String,
    pub role: Role,
}

/// What a key may do: an admin reads and writes, a viewer only reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Viewer,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("admin.admin_key[{index}] ({name}): the key is empty")]
    EmptyKey { index: usize, name: String },
    #[error("admin key file {}: {source}", path.display())]
    KeyFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("admin key file {}: {reason}", path.display())]
    BadKeyFile { path: PathBuf, reason: String },
}

impl AdminSettings {
    /// Makes sure there is a key to use the API with: refuses configured keys that are empty,
    /// and when none is configured, loads the one in `<data_dir>/admin_key`, generating it on
    /// the first start. Returns the path of that file when the key came from it.
    pub fn resolve_keys(&mut self, data_dir: &Path) -> Result<Option<PathBuf>, SettingsError> {
        if let Some((index, key)) = self
            .admin_key
            .iter()
            .enumerate()
            .find(|(_, k)| k.key.is_empty())
        {
            return Err(SettingsError::EmptyKey {
                index,
                name: key.name.clone(),
            });
        }
        if !self.admin_key.is_empty() {
            return Ok(None);
        }
        let path = data_dir.join(GENERATED_KEY_FILE);
        let key = load_or_generate_key(&path)?;
        self.admin_key.push(AdminKey {
            name: "admin".to_owned(),
            key,
            role: Role::Admin,
        });
        Ok(Some(path))
    }
}

fn load_or_generate_key(path: &Path) -> Result<String, SettingsError> {
    let secrets =
        pylon_store::read_or_create_secrets(path).map_err(|source| SettingsError::KeyFile {
            path: path.to_owned(),
            source,
        })?;
    secrets
        .into_iter()
        .next()
        .ok_or_else(|| SettingsError::BadKeyFile {
            path: path.to_owned(),
            reason: "the file is empty; delete it to generate a new key".to_owned(),
        })
}

/// Networks as strings; a single address is the network of just that address.
fn deserialize_networks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|text| {
            text.parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "`{text}` is neither an IP address nor a network (a.b.c.d/n)"
                    ))
                })
        })
        .collect()
}

fn serialize_networks<S: Serializer>(networks: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(networks.iter().map(ToString::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_apisix() {
        let settings: AdminSettings = serde_yaml::from_str("{}").unwrap();
        assert_eq!(settings.listen.to_string(), "127.0.0.1:9180");
        assert_eq!(settings.allow_admin, vec!["127.0.0.0/24".parse().unwrap()]);
        assert_eq!(settings.max_body_size, 1_572_864);
        assert!(settings.admin_key.is_empty());
    }

    #[test]
    fn reads_apisix_shaped_keys_and_networks() {
        let settings: AdminSettings = serde_yaml::from_str(
            "admin_key:\n  - {name: admin, key: k1, role: admin}\n  - {name: ro, key: k2, role: viewer}\nallow_admin: [10.0.0.0/8, 192.168.1.7, '::1']\n",
        )
        .unwrap();
        assert_eq!(settings.admin_key[1].role, Role::Viewer);
        assert_eq!(settings.allow_admin[1].to_string(), "192.168.1.7/32");
        assert_eq!(settings.allow_admin[2].to_string(), "::1/128");
        let err = serde_yaml::from_str::<AdminSettings>("allow_admin: [nope]\n").unwrap_err();
        assert!(err.to_string().contains("`nope` is neither"), "{err}");
        assert!(serde_yaml::from_str::<AdminSettings>("admin_keys: []\n").is_err());
    }

    #[test]
    fn generates_a_private_key_once_and_reuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = AdminSettings::default();
        let path = first.resolve_keys(dir.path()).unwrap().unwrap();
        assert_eq!(first.admin_key.len(), 1);
        assert_eq!(first.admin_key[0].role, Role::Admin);
        assert_eq!(first.admin_key[0].key.len(), 64);
        let mut again = AdminSettings::default();
        again.resolve_keys(dir.path()).unwrap();
        assert_eq!(again.admin_key, first.admin_key);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        let mut configured = AdminSettings {
            admin_key: vec![AdminKey {
                name: "ops".into(),
                key: String::new(),
                role: Role::Admin,
            }],
            ..AdminSettings::default()
        };
        let err = configured.resolve_keys(dir.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "admin.admin_key[0] (ops): the key is empty"
        );
    }
}
