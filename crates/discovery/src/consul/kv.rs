//! Consul's KV store as a registry: an instance is a key `<prefix>/<service>/<ip>:<port>` whose
//! value is a JSON object (`{"weight": 1, "max_fails": 2, "fail_timeout": 1}`), read with
//! `GET /v1/kv/<prefix>?recurse=true` (blocking). The service's name is the URL of its folder:
//! `http://127.0.0.1:8500/v1/kv/upstreams/webpages/`. A value with `"check_status": false` is
//! an unhealthy instance, left out; the weight is the value's, or the settings' `weight`; the
//! value's other fields are the node's metadata.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use http::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use super::client::Client;
use super::Table;
use crate::Node;

pub(super) struct Kv {
    /// Without a leading or trailing `/`.
    pub prefix: String,
    /// Whole keys never read as instances.
    pub skip: HashSet<String>,
    /// The weight of an instance whose value names none.
    pub weight: u32,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    key: String,
    /// Base64; `null` for a key without a value.
    value: Option<String>,
}

impl Kv {
    /// Everything under the prefix, by service (`<server>/v1/kv/<folder>/`).
    pub async fn fetch(
        &self,
        server: &str,
        client: &mut Client,
        query: &str,
        wait: Duration,
    ) -> Result<(u64, Table), String> {
        let path = format!("/v1/kv/{}?recurse=true&{query}", self.prefix);
        let answer = client.get(&path, wait).await?;
        // A prefix without keys is a 404 that still carries an index to block on.
        if answer.status == StatusCode::NOT_FOUND {
            return Ok((answer.index, Table::new()));
        }
        let entries: Vec<Entry> = answer.ok_json(&path)?;
        let mut table = Table::new();
        for entry in entries.iter().filter(|e| !self.skip.contains(&e.key)) {
            let Some((folder, address)) = entry.key.rsplit_once('/') else {
                continue;
            };
            match self.node(address, entry.value.as_deref()) {
                Ok(Some(node)) => {
                    let service = format!("{server}/v1/kv/{folder}/");
                    table.entry(service).or_default().push(node);
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(
                    key = %entry.key,
                    "consul_kv discovery: not an instance: {error}"
                ),
            }
        }
        Ok((answer.index, table))
    }

    /// The instance of key `…/<address>` with `value`, `None` if it is unhealthy.
    fn node(&self, address: &str, value: Option<&str>) -> Result<Option<Node>, String> {
        let address: SocketAddr = address
            .parse()
            .map_err(|_| format!("`{address}` is not ip:port"))?;
        let value = base64::engine::general_purpose::STANDARD
            .decode(value.unwrap_or_default())
            .map_err(|e| format!("the value is not base64: {e}"))?;
        let mut metadata: serde_json::Map<String, Value> =
            serde_json::from_slice(&value).map_err(|e| format!("the value: {e}"))?;
        if matches!(metadata.get("check_status"), Some(Value::Bool(false)))
            || metadata.get("check_status").and_then(Value::as_str) == Some("false")
        {
            return Ok(None);
        }
        let weight = match metadata.remove("weight") {
            None => self.weight,
            Some(weight) => weight
                .as_u64()
                .and_then(|w| u32::try_from(w).ok())
                .ok_or_else(|| format!("weight {weight} is not a whole number"))?,
        };
        let mut node = Node::new(address.ip().to_string(), address.port(), weight);
        node.metadata = metadata;
        Ok(Some(node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv() -> Kv {
        Kv {
            prefix: "upstreams".to_owned(),
            skip: HashSet::new(),
            weight: 3,
        }
    }

    fn encoded(value: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(value)
    }

    #[test]
    fn a_key_is_an_address_and_its_value_the_weight_and_metadata() {
        let value = encoded(r#"{"weight": 7, "max_fails": 2, "fail_timeout": 1}"#);
        let node = kv().node("10.0.0.1:8000", Some(&value)).unwrap().unwrap();
        assert_eq!(
            (node.host.as_str(), node.port, node.weight),
            ("10.0.0.1", 8000, 7)
        );
        assert_eq!(node.metadata["max_fails"], 2);
        assert!(!node.metadata.contains_key("weight"));
        let node = kv()
            .node("[::1]:80", Some(&encoded("{}")))
            .unwrap()
            .unwrap();
        assert_eq!((node.host.as_str(), node.weight), ("::1", 3));
    }

    #[test]
    fn unhealthy_and_malformed_instances_are_left_out() {
        let down = encoded(r#"{"check_status": false}"#);
        assert_eq!(kv().node("10.0.0.1:80", Some(&down)), Ok(None));
        let down = encoded(r#"{"check_status": "false"}"#);
        assert_eq!(kv().node("10.0.0.1:80", Some(&down)), Ok(None));
        assert!(kv().node("web:80", Some(&encoded("{}"))).is_err());
        assert!(kv().node("10.0.0.1:80", None).is_err());
        assert!(kv().node("10.0.0.1:80", Some(&encoded("[1]"))).is_err());
    }
}
