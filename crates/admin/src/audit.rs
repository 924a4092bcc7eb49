//! The audit log and the versions of resources, written in the same transaction as the change
//! they record: a change is never stored without its record, nor a record without its change.
//!
//! Each record has the next sequence number and holds the hash of the one before it, and its
//! own hash covers all of it; the chain's head (`audit_head/chain`: the last sequence number
//! and hash) is written with it. A record changed or removed afterwards breaks the chain at that
//! point, which [`verify`] finds. Every resource a write touches also gets a version,
//! `versions/<kind>/<id>/<sequence>`: the resource as that write left it.

use std::net::SocketAddr;

use pylon_model::{Key, Kind, DEFAULT_TENANT, TENANT_FIELD};
use pylon_store::{ConfigStore, Entry, Precondition, StoreError, Txn, View};
use ring::digest::SHA256;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{json, Map, Value};

use crate::clock::now_ms;
use crate::identity::{hex, Caller};

/// The previous hash of the first record.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// A user's token hash is shown in no record.
const HIDDEN_FIELDS: [&str; 1] = ["token_sha256"];

fn head_key() -> Key {
    Key::new(Kind::AuditHead, "chain")
}

/// Sequence numbers as ids: zero-padded, so that key order is sequence order.
pub(crate) fn sequence_id(seq: u64) -> String {
    format!("{seq:020}")
}

/// What a write is, for its record: who made it, from where, and why.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub caller: Caller,
    pub from: SocketAddr,
    /// What was done, as `PUT routes/1` or `approve change_sets/7`.
    pub action: String,
    pub comment: Option<String>,
    /// The change set a publish comes from.
    pub change_set: Option<String>,
    /// Recorded even when it writes nothing else (a login).
    pub event: bool,
}

impl Record {
    pub fn new(caller: &Caller, from: SocketAddr, action: impl Into<String>) -> Record {
        Record {
            caller: caller.clone(),
            from,
            action: action.into(),
            comment: None,
            change_set: None,
            event: false,
        }
    }

    /// This record, for a step of change set `id`, with the comment given for it.
    pub fn for_change_set(&self, id: &str, comment: Option<String>) -> Record {
        Record {
            comment,
            change_set: Some(id.to_owned()),
            ..self.clone()
        }
    }
}

/// Adds to `txn` the audit record of its writes (before: as `view` holds them), the versions of
/// the resources among them, and the chain's new head.
pub(crate) fn append(view: &View, record: &Record, txn: &mut Txn) {
    let head = view.entries.get(&head_key());
    let (seq, prev) = match head {
        Some(entry) => (
            entry.value["seq"].as_u64().unwrap_or(0) + 1,
            entry.value["hash"].as_str().unwrap_or(GENESIS).to_owned(),
        ),
        None => (1, GENESIS.to_owned()),
    };
    let time = now_ms();
    let mut tenants: Vec<String> = record.caller.tenant.iter().cloned().collect();
    let mut changes = Vec::new();
    let mut versions = Vec::new();
    for (key, after) in &txn.writes {
        let before = view.entries.get(key).map(|e| &e.value);
        for value in before.into_iter().chain(after) {
            if let Some(tenant) = tenant_of(key.kind, &key.id, value) {
                if !tenants.contains(&tenant) {
                    tenants.push(tenant);
                }
            }
        }
        changes.push(json!({
            "key": key.to_string(),
            "before": before.map(shown),
            "after": after.as_ref().map(shown),
        }));
        if key.kind.is_resource() {
            versions.push((
                Key::new(Kind::Versions, format!("{key}/{}", sequence_id(seq))),
                json!({
                    "key": key.to_string(),
                    "seq": seq,
                    "time": time,
                    "user": record.caller.name,
                    "action": record.action,
                    "comment": record.comment,
                    "change_set": record.change_set,
                    "value": after,
                }),
            ));
        }
    }
    tenants.sort();
    let mut entry = json!({
        "seq": seq,
        "time": time,
        "user": record.caller.name,
        "role": record.caller.role.as_str(),
        "from": record.from.to_string(),
        "action": record.action,
        "comment": record.comment,
        "change_set": record.change_set,
        "tenants": tenants,
        "changes": changes,
        "prev": prev,
    });
    let hash = hash_of(&entry);
    entry["hash"] = Value::String(hash.clone());
    let condition = head.map_or(Precondition::Absent, |e| {
        Precondition::ModRevision(e.mod_revision)
    });
    txn.conditions.push((head_key(), condition));
    txn.writes
        .extend(versions.into_iter().map(|(key, value)| (key, Some(value))));
    txn.writes
        .push((Key::new(Kind::Audit, sequence_id(seq)), Some(entry)));
    txn.writes
        .push((head_key(), Some(json!({ "seq": seq, "hash": hash }))));
}

/// The tenant an entry belongs to, if it belongs to one.
pub(crate) fn tenant_of(kind: Kind, id: &str, value: &Value) -> Option<String> {
    match kind {
        Kind::GlobalRules
        | Kind::PluginMetadata
        | Kind::Secrets
        | Kind::Versions
        | Kind::Audit
        | Kind::AuditHead
        | Kind::Nodes => None,
        Kind::Tenants => Some(id.to_owned()),
        Kind::Users | Kind::ChangeSets => value[TENANT_FIELD].as_str().map(str::to_owned),
        _ => Some(
            value[TENANT_FIELD]
                .as_str()
                .unwrap_or(DEFAULT_TENANT)
                .to_owned(),
        ),
    }
}

/// `value` without the fields no record shows.
fn shown(value: &Value) -> Value {
    let mut value = value.clone();
    if let Some(fields) = value.as_object_mut() {
        for field in HIDDEN_FIELDS {
            if fields.contains_key(field) {
                fields.insert(field.to_owned(), json!("(hidden)"));
            }
        }
    }
    value
}

/// The SHA-256 of a record without its own hash, over its JSON text (objects' fields are in
/// one order, so a record read back hashes as it was written). The text is hashed as it is
/// written out, never held: a publish of thousands of resources makes a record of megabytes.
fn hash_of(record: &Value) -> String {
    let mut digest = DigestWriter(ring::digest::Context::new(&SHA256));
    match record.as_object() {
        Some(fields) => serde_json::to_writer(&mut digest, &WithoutHash(fields)),
        None => serde_json::to_writer(&mut digest, record),
    }
    .expect("a JSON value serializes");
    hex(digest.0.finish().as_ref())
}

/// A record's fields but its `hash`.
struct WithoutHash<'a>(&'a Map<String, Value>);

impl Serialize for WithoutHash<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (name, value) in self.0.iter().filter(|(name, _)| *name != "hash") {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// Hashes what is written to it.
struct DigestWriter(ring::digest::Context);

impl std::io::Write for DigestWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Which records a query asks for.
#[derive(Debug, Default)]
pub(crate) struct Filter {
    pub tenant: Option<String>,
    pub user: Option<String>,
    /// `<kind>/<id>`: records of writes to that resource.
    pub resource: Option<String>,
    /// Milliseconds since the epoch, inclusive.
    pub since: Option<u64>,
    pub until: Option<u64>,
}

impl Filter {
    fn matches(&self, record: &Value) -> bool {
        let time = record["time"].as_u64().unwrap_or(0);
        self.tenant.as_ref().is_none_or(|t| {
            record["tenants"]
                .as_array()
                .is_some_and(|ts| ts.contains(&json!(t)))
        }) && self
            .user
            .as_ref()
            .is_none_or(|u| record["user"] == json!(u))
            && self.resource.as_ref().is_none_or(|r| {
                record["changes"]
                    .as_array()
                    .is_some_and(|cs| cs.iter().any(|c| c["key"] == json!(r)))
            })
            && self.since.is_none_or(|since| time >= since)
            && self.until.is_none_or(|until| time <= until)
    }
}

/// The records `filter` selects, oldest first.
pub(crate) async fn query(
    store: &dyn ConfigStore,
    filter: &Filter,
) -> Result<Vec<Value>, StoreError> {
    let records = store.history(Kind::Audit, "").await?;
    Ok(records
        .into_iter()
        .map(|e| e.value)
        .filter(|r| filter.matches(r))
        .collect())
}

/// Where the chain is broken.
#[derive(Debug, PartialEq)]
pub(crate) struct Break {
    pub seq: u64,
    pub reason: String,
}

/// Walks the chain from the first record to the head: every record must be there, in order,
/// hash as it says, and hold the hash of the one before it.
pub(crate) async fn verify(
    store: &dyn ConfigStore,
    view: &View,
) -> Result<Result<u64, Break>, StoreError> {
    let records = store.history(Kind::Audit, "").await?;
    let head = view.entries.get(&head_key()).map(|e| &e.value);
    Ok(check_chain(&records, head))
}

fn check_chain(records: &[Entry], head: Option<&Value>) -> Result<u64, Break> {
    let mut prev = GENESIS.to_owned();
    let mut expected = 1;
    for entry in records {
        let record = &entry.value;
        let broken = |reason: &str| Break {
            seq: expected,
            reason: reason.to_owned(),
        };
        let seq = record["seq"].as_u64();
        if entry.key.id != sequence_id(expected) || seq != Some(expected) {
            return Err(broken("the record is missing, or out of place"));
        }
        if record["prev"].as_str() != Some(prev.as_str()) {
            return Err(broken("the record does not follow the one before it"));
        }
        let hash = hash_of(record);
        if record["hash"].as_str() != Some(hash.as_str()) {
            return Err(broken("the record was changed after it was written"));
        }
        prev = hash;
        expected += 1;
    }
    let last = expected - 1;
    match head {
        None if last == 0 => Ok(0),
        Some(head)
            if head["seq"].as_u64() == Some(last) && head["hash"].as_str() == Some(&prev) =>
        {
            Ok(last)
        }
        _ => Err(Break {
            seq: expected,
            reason: "records after this one were removed".to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};
    use std::sync::Arc;

    use super::*;
    use crate::identity::Role;

    fn caller() -> Caller {
        Caller {
            name: "alice".into(),
            tenant: Some("team-a".into()),
            role: Role::Editor,
        }
    }

    /// Applies `txn`'s writes to `view` as the store would, at the next revision.
    fn apply(view: &mut View, txn: Txn) {
        view.revision += 1;
        for (key, value) in txn.writes {
            match value {
                Some(value) => view.entries.insert(Arc::new(Entry {
                    key,
                    value,
                    create_revision: view.revision,
                    mod_revision: view.revision,
                })),
                None => view.entries.remove(&key),
            }
        }
    }

    fn chain(writes: usize) -> (View, Vec<Entry>) {
        let mut view = View::default();
        let record = Record::new(
            &caller(),
            SocketAddr::from((Ipv4Addr::LOCALHOST, 1)),
            "PUT routes/1",
        );
        let mut records = Vec::new();
        for n in 0..writes {
            let mut txn = Txn::put(
                Key::new(Kind::Routes, "1"),
                json!({ "uri": format!("/{n}"), "tenant_id": "team-a" }),
            );
            append(&view, &record, &mut txn);
            let audit = txn
                .writes
                .iter()
                .find(|(k, _)| k.kind == Kind::Audit)
                .cloned()
                .unwrap();
            records.push(Entry {
                key: audit.0,
                value: audit.1.unwrap(),
                create_revision: 0,
                mod_revision: 0,
            });
            apply(&mut view, txn);
        }
        (view, records)
    }

    #[test]
    fn records_chain_and_versions_follow_the_writes() {
        let (view, records) = chain(3);
        let head = view.entries.get(&head_key()).map(|e| &e.value);
        assert_eq!(check_chain(&records, head), Ok(3));
        assert_eq!(records[1].value["changes"][0]["before"]["uri"], "/0");
        assert_eq!(records[1].value["changes"][0]["after"]["uri"], "/1");
        assert_eq!(records[2].value["tenants"], json!(["team-a"]));
        let version = view.entries.get(&Key::new(
            Kind::Versions,
            format!("routes/1/{}", sequence_id(2)),
        ));
        assert_eq!(version.unwrap().value["value"]["uri"], "/1");
    }

    #[test]
    fn a_changed_or_removed_record_breaks_the_chain() {
        let (view, records) = chain(4);
        let head = view.entries.get(&head_key()).map(|e| &e.value);
        let mut changed = records.clone();
        changed[1].value["action"] = json!("nothing to see");
        assert_eq!(check_chain(&changed, head).unwrap_err().seq, 2);
        let mut removed = records.clone();
        removed.remove(2);
        assert_eq!(check_chain(&removed, head).unwrap_err().seq, 3);
        let truncated = &records[..3];
        let err = check_chain(truncated, head).unwrap_err();
        assert_eq!(err.seq, 4);
        // A record rewritten with a fresh hash still breaks the link to the next one.
        let mut rehashed = records;
        rehashed[1].value["action"] = json!("forged");
        let hash = hash_of(&rehashed[1].value);
        rehashed[1].value["hash"] = json!(hash);
        assert_eq!(check_chain(&rehashed, head).unwrap_err().seq, 3);
    }
}
