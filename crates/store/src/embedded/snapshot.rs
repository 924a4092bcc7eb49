//! The snapshot: every entry at one revision, in one file replaced atomically.
//!
//! It is written to a temporary file, synced, renamed over the previous one, and the directory
//! synced: a crash at any point leaves the old snapshot or the new one, whole. So unlike the
//! log, a snapshot that does not read back is damage, never an interrupted write.

use std::fs::File;
use std::io::{ErrorKind, Write};
use std::path::Path;

use super::{format, frame, sync_dir, EmbeddedError};
use crate::Listing;

const FILE_NAME: &str = "snapshot";
const TEMP_NAME: &str = "snapshot.tmp";

/// The snapshot in `dir`; an empty store at revision 0 if there is none yet.
pub fn load(dir: &Path) -> Result<Listing, EmbeddedError> {
    let path = dir.join(FILE_NAME);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Listing::default()),
        Err(source) => return Err(EmbeddedError::Io { path, source }),
    };
    let corrupt = |reason: String| EmbeddedError::Corrupt {
        file: path.clone(),
        offset: 0,
        reason,
    };
    let (body, len) = frame::decode(&bytes).map_err(|reason| corrupt(reason.into()))?;
    if len != bytes.len() {
        return Err(corrupt(format!(
            "{} bytes after the snapshot",
            bytes.len() - len
        )));
    }
    format::decode_snapshot(body).map_err(corrupt)
}

/// Replaces the snapshot in `dir` with `listing`.
pub fn save(dir: &Path, listing: &Listing) -> Result<(), EmbeddedError> {
    let temp = dir.join(TEMP_NAME);
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| EmbeddedError::Io { path, source }
    };
    let bytes = format::encode_snapshot(listing)
        .map_err(std::io::Error::other)
        .and_then(|body| frame::encode(&body))
        .map_err(io_error(&temp))?;
    // Truncates whatever an interrupted compaction left here.
    let mut file = File::create(&temp).map_err(io_error(&temp))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_error(&temp))?;
    let path = dir.join(FILE_NAME);
    std::fs::rename(&temp, &path).map_err(io_error(&path))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Entry;
    use pylon_model::{Key, Kind};

    #[test]
    fn a_snapshot_reads_back_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), Listing::default());
        let listing = Listing {
            revision: 5,
            entries: vec![Entry {
                key: Key::new(Kind::Services, "s1"),
                value: serde_json::json!({"name": "s"}),
                create_revision: 2,
                mod_revision: 4,
            }],
        };
        save(dir.path(), &listing).unwrap();
        assert_eq!(load(dir.path()).unwrap(), listing);

        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("snapshot") && err.contains("checksum mismatch"),
            "{err}"
        );
    }
}
