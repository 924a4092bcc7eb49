//! Consul's service catalog: `GET /v1/catalog/services` (blocking) says which services exist,
//! then `GET /v1/health/service/<name>?passing=true` gives each one's instances whose checks
//! all pass. The instances are read again after every answer of the blocking query (a change,
//! or `wait` without one), so that a failing check takes effect within `wait` at the latest.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde::Deserialize;
use serde_json::Value;

use super::client::Client;
use super::{ip_literal, Table};
use crate::Node;

pub(super) struct Catalog {
    pub skip: HashSet<String>,
    /// Every instance's weight.
    pub weight: u32,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    node: EntryNode,
    service: EntryService,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EntryNode {
    address: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EntryService {
    #[serde(rename = "ID")]
    id: String,
    /// Empty: the node's address.
    #[serde(default)]
    address: String,
    port: u16,
    #[serde(default)]
    meta: Option<serde_json::Map<String, Value>>,
}

impl Catalog {
    pub async fn fetch(
        &self,
        client: &mut Client,
        query: &str,
        wait: Duration,
    ) -> Result<(u64, Table), String> {
        let answer = client
            .get(&format!("/v1/catalog/services?{query}"), wait)
            .await?;
        let index = answer.index;
        let services: BTreeMap<String, Value> = answer.ok_json("/v1/catalog/services")?;
        let mut table = Table::new();
        for name in services.keys().filter(|name| !self.skip.contains(*name)) {
            let name_segment = utf8_percent_encode(name, NON_ALPHANUMERIC);
            let path = format!("/v1/health/service/{name_segment}?passing=true");
            let answer = client.get(&path, Duration::ZERO).await?;
            let entries: Vec<Entry> = answer.ok_json(&path)?;
            let nodes = entries
                .into_iter()
                .filter_map(|entry| self.node(name, entry))
                .collect();
            table.insert(name.clone(), nodes);
        }
        Ok((index, table))
    }

    fn node(&self, name: &str, entry: Entry) -> Option<Node> {
        let service = entry.service;
        let address = match service.address.as_str() {
            "" => entry.node.address.as_str(),
            address => address,
        };
        let host = ip_literal(address, &format!("instance `{}` of `{name}`", service.id))?;
        let mut node = Node::new(host, service.port, self.weight);
        node.metadata = service.meta.unwrap_or_default();
        Some(node)
    }
}
