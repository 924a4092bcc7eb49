//! The write-ahead log: every change, appended and synced before it is acknowledged.
//!
//! `wal.log` is a sequence of [frames](super::frame), each holding one change as
//! [JSON](super::format), at consecutive revisions. Records at or below the snapshot's revision
//! are left over from a compaction interrupted between replacing the snapshot and emptying
//! the log: they are skipped, the snapshot already holds them.
//!
//! Crash safety: a change is acknowledged only once its whole record is written and synced
//! (`fdatasync`), and an append that fails is cut off again before the next one. So a crash
//! leaves at most one incomplete record, at the end: the one being written, never
//! acknowledged. Recovery cuts such a tail off. An invalid record followed by a valid one
//! cannot come from a crash: that is damage (the disk, or another writer), and opening refuses
//! it rather than silently drop the acknowledged changes after it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::{format, frame, sync_dir, EmbeddedError};
use crate::{Change, Revision};

const FILE_NAME: &str = "wal.log";

pub struct Wal {
    path: PathBuf,
    file: File,
    /// Bytes and records in the file, every one of them synced.
    len: u64,
    records: usize,
    /// Why writing stopped: a failed append whose partial record could not be cut off again.
    broken: Option<String>,
}

/// The valid prefix of a log's bytes.
#[derive(Debug)]
struct Scan {
    /// The changes after the snapshot, in order.
    changes: Vec<Change>,
    records: usize,
    len: usize,
}

impl Wal {
    /// Opens the log in `dir` (creating it if missing), cuts off a torn tail, and returns it
    /// with the changes it holds after `snapshot_revision`.
    pub fn open(
        dir: &Path,
        snapshot_revision: Revision,
    ) -> Result<(Wal, Vec<Change>), EmbeddedError> {
        let path = dir.join(FILE_NAME);
        let io_error = |source| EmbeddedError::Io {
            path: path.clone(),
            source,
        };
        let created = !path.try_exists().map_err(io_error)?;
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io_error)?;
        if created {
            sync_dir(dir)?;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io_error)?;
        let scan =
            scan(&bytes, snapshot_revision).map_err(|(offset, reason)| EmbeddedError::Corrupt {
                file: path.clone(),
                offset: offset as u64,
                reason,
            })?;
        if scan.len < bytes.len() {
            tracing::warn!(
                file = %path.display(),
                offset = scan.len,
                bytes = bytes.len() - scan.len,
                "cutting off an incomplete record left by a crash (it was never acknowledged)"
            );
            file.set_len(scan.len as u64)
                .and_then(|()| file.sync_data())
                .map_err(io_error)?;
        }
        let wal = Wal {
            len: scan.len as u64,
            records: scan.records,
            path,
            file,
            broken: None,
        };
        Ok((wal, scan.changes))
    }

    /// Appends `change` and syncs it: once this returns `Ok`, the change survives a crash.
    pub fn append(&mut self, change: &Change) -> Result<(), EmbeddedError> {
        if let Some(reason) = &self.broken {
            return Err(self.error(io::Error::other(format!(
                "writing stopped after a failed write could not be undone ({reason}); reopen the store"
            ))));
        }
        let record = format::encode_change(change)
            .map_err(io::Error::other)
            .and_then(|body| frame::encode(&body))
            .map_err(|e| self.error(e))?;
        if let Err(e) = self
            .file
            .write_all(&record)
            .and_then(|()| self.file.sync_data())
        {
            // A partial record followed by the next one would read as damage, and a whole one
            // that failed to sync must not come back after a crash: cut it off either way.
            if let Err(undo) = self
                .file
                .set_len(self.len)
                .and_then(|()| self.file.sync_data())
            {
                self.broken = Some(undo.to_string());
            }
            return Err(self.error(e));
        }
        self.len += record.len() as u64;
        self.records += 1;
        Ok(())
    }

    /// Empties the log, once a snapshot holds everything in it.
    pub fn reset(&mut self) -> Result<(), EmbeddedError> {
        self.file.set_len(0).map_err(|e| self.error(e))?;
        self.len = 0;
        self.records = 0;
        if let Err(e) = self.file.sync_data() {
            // Whether the old records are still on disk is unknown: appending after them
            // could leave a log that does not read back.
            self.broken = Some(e.to_string());
            return Err(self.error(e));
        }
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn records(&self) -> usize {
        self.records
    }

    fn error(&self, source: io::Error) -> EmbeddedError {
        EmbeddedError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

/// Reads records from the start of `bytes` until the end or an invalid one. An invalid one
/// with a valid record anywhere after it is damage: its offset and why, as the error.
fn scan(bytes: &[u8], snapshot_revision: Revision) -> Result<Scan, (usize, String)> {
    let mut scan = Scan {
        changes: Vec::new(),
        records: 0,
        len: 0,
    };
    let mut previous: Option<Revision> = None;
    while scan.len < bytes.len() {
        let offset = scan.len;
        let (change, size) = match read_record(&bytes[offset..]) {
            Ok(record) => record,
            Err(reason) => {
                // Byte by byte, since the damaged record's length cannot be trusted. Only a
                // damaged log pays for a long search: a torn tail is at most one record.
                if let Some(next) =
                    (offset + 1..bytes.len()).find(|&at| read_record(&bytes[at..]).is_ok())
                {
                    return Err((
                        offset,
                        format!("{reason}, yet a valid record follows at byte {next}: this is damage, not an interrupted write"),
                    ));
                }
                break;
            }
        };
        let revision = change.revision;
        match previous {
            Some(previous) if revision != previous + 1 => {
                return Err((
                    offset,
                    format!("revision {revision} follows revision {previous}"),
                ));
            }
            None if revision > snapshot_revision + 1 => {
                return Err((
                    offset,
                    format!("the log starts at revision {revision} but the snapshot ends at revision {snapshot_revision}: changes are missing"),
                ));
            }
            _ => {}
        }
        previous = Some(revision);
        if revision > snapshot_revision {
            scan.changes.push(change);
        }
        scan.records += 1;
        scan.len += size;
    }
    Ok(scan)
}

fn read_record(bytes: &[u8]) -> Result<(Change, usize), String> {
    let (body, size) = frame::decode(bytes)?;
    Ok((format::decode_change(body)?, size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Entry, Event};
    use pylon_model::{Key, Kind};

    fn change(revision: Revision) -> Change {
        Change {
            revision,
            events: vec![Event::Put(Entry {
                key: Key::new(Kind::Routes, format!("r{revision}")),
                value: serde_json::json!({"n": revision}),
                create_revision: revision,
                mod_revision: revision,
            })],
        }
    }

    fn revisions(changes: &[Change]) -> Vec<Revision> {
        changes.iter().map(|c| c.revision).collect()
    }

    #[test]
    fn a_failed_append_is_undone_or_stops_writing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 0).unwrap();
        wal.append(&change(1)).unwrap();

        // A handle that cannot write makes the append fail, and the undo too.
        let writable = std::mem::replace(&mut wal.file, File::open(&wal.path).unwrap());
        assert!(wal.append(&change(2)).is_err());
        wal.file = writable;
        let refused = wal.append(&change(2)).unwrap_err().to_string();
        assert!(refused.contains("reopen the store"), "{refused}");
        drop(wal);

        let (wal, changes) = Wal::open(dir.path(), 0).unwrap();
        assert_eq!(revisions(&changes), [1]);
        assert_eq!(
            (wal.records(), wal.len()),
            (
                1,
                std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().len()
            )
        );
    }

    #[test]
    fn records_the_snapshot_holds_are_skipped_and_a_gap_is_refused() {
        let bytes: Vec<u8> = (1..=4)
            .flat_map(|r| frame::encode(&format::encode_change(&change(r)).unwrap()).unwrap())
            .collect();
        let scanned = scan(&bytes, 2).unwrap();
        assert_eq!(revisions(&scanned.changes), [3, 4]);
        assert_eq!((scanned.records, scanned.len), (4, bytes.len()));

        let first_len = frame::decode(&bytes).unwrap().1;
        let (offset, reason) = scan(&bytes[first_len..], 0).unwrap_err();
        assert_eq!(offset, 0);
        assert!(reason.contains("changes are missing"), "{reason}");
    }
}
