//! A [`Txn`] as one etcd transaction: its conditions become compares, its writes and a put of the
//! guard the operations applied when every compare holds.
//!
//! Because every commit puts the guard, the guard's modification revision is that of the latest
//! commit through any node; "unchanged since `r`" is then a compare of that revision with `r`.
//! Deletions leave nothing behind to compare, which is why a compare over the prefix's keys could
//! not stand in for the guard.

use std::collections::BTreeMap;

use super::keyspace::Keyspace;
use super::proto::{
    compare::TargetUnion, request_op, Compare, CompareResult, CompareTarget, DeleteRangeRequest,
    PutRequest, RequestOp, TxnRequest,
};
use crate::{Precondition, Revision, StoreError, Txn};

/// The etcd transaction for `txn`; [`StoreError::Conflict`] if a condition can never hold.
pub(super) fn request(keyspace: &Keyspace, txn: Txn) -> Result<TxnRequest, StoreError> {
    let mut compare = Vec::with_capacity(txn.conditions.len() + 1);
    if let Some(since) = txn.unchanged_since {
        compare.push(Compare {
            result: CompareResult::Less as i32,
            target: CompareTarget::Mod as i32,
            key: keyspace.guard().to_vec(),
            target_union: Some(TargetUnion::ModRevision(etcd_revision(
                since.saturating_add(1),
            ))),
        });
    }
    for (key, condition) in &txn.conditions {
        let key = keyspace.path(key);
        compare.push(match *condition {
            // A key that does not exist has a creation revision of 0.
            Precondition::Absent => Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Create as i32,
                key,
                target_union: Some(TargetUnion::CreateRevision(0)),
            },
            // etcd would read "modified at 0" as "absent"; Pylon's condition asks for a key
            // that exists, and none was ever modified at revision 0.
            Precondition::ModRevision(0) => return Err(StoreError::Conflict),
            Precondition::ModRevision(revision) => Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Mod as i32,
                key,
                target_union: Some(TargetUnion::ModRevision(etcd_revision(revision))),
            },
        });
    }

    // etcd refuses a transaction that writes one key twice; applied in order, the last write
    // would win, so only it is sent.
    let writes: BTreeMap<Vec<u8>, Option<serde_json::Value>> = txn
        .writes
        .into_iter()
        .map(|(key, value)| (keyspace.path(&key), value))
        .collect();
    let guard = (keyspace.guard().to_vec(), Some(Vec::new()));
    let success = writes
        .into_iter()
        .map(|(key, value)| (key, value.map(|v| v.to_string().into_bytes())))
        .chain([guard])
        .map(|(key, value)| RequestOp {
            request: Some(match value {
                Some(value) => request_op::Request::Put(PutRequest { key, value }),
                None => request_op::Request::DeleteRange(DeleteRangeRequest { key }),
            }),
        })
        .collect();
    Ok(TxnRequest { compare, success })
}

fn etcd_revision(revision: Revision) -> i64 {
    i64::try_from(revision).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pylon_model::{Key, Kind};
    use serde_json::json;

    fn puts_and_deletes(request: &TxnRequest) -> Vec<(String, Option<String>)> {
        let text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).unwrap();
        request
            .success
            .iter()
            .map(|op| match op.request.as_ref().unwrap() {
                request_op::Request::Put(put) => (text(&put.key), Some(text(&put.value))),
                request_op::Request::DeleteRange(delete) => (text(&delete.key), None),
            })
            .collect()
    }

    #[test]
    fn every_commit_puts_the_guard_and_writes_a_key_once() {
        let keyspace = Keyspace::new("/pylon");
        let key = Key::new(Kind::Routes, "1");
        let mut txn = Txn::put(key.clone(), json!(1));
        txn.writes.push((Key::new(Kind::Routes, "2"), None));
        txn.writes.push((key, Some(json!({"last": true}))));
        let request = request(&keyspace, txn).unwrap();
        assert_eq!(request.compare, []);
        assert_eq!(
            puts_and_deletes(&request),
            [
                (
                    "/pylon/routes/1".to_owned(),
                    Some(r#"{"last":true}"#.to_owned())
                ),
                ("/pylon/routes/2".to_owned(), None),
                ("/pylon/.guard".to_owned(), Some(String::new())),
            ]
        );
    }

    #[test]
    fn unchanged_since_compares_the_guard() {
        let keyspace = Keyspace::new("/pylon");
        let txn = Txn::delete(Key::new(Kind::Routes, "1")).unchanged_since(41);
        let request = request(&keyspace, txn).unwrap();
        let guard = Compare {
            result: CompareResult::Less as i32,
            target: CompareTarget::Mod as i32,
            key: b"/pylon/.guard".to_vec(),
            target_union: Some(TargetUnion::ModRevision(42)),
        };
        assert_eq!(request.compare, [guard]);
    }
}
