//! One process per data directory: an exclusive `flock` on its `lock` file, held while the
//! store is open and released by the kernel when the process ends, however it ends. The
//! holder writes its pid there so that the next one can say who holds it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

use rustix::fs::{flock, FlockOperation};
use rustix::io::Errno;

use super::EmbeddedError;

const FILE_NAME: &str = "lock";

/// Holds the lock until dropped.
pub struct DirLock {
    _file: File,
}

impl DirLock {
    pub fn acquire(dir: &Path) -> Result<DirLock, EmbeddedError> {
        let path = dir.join(FILE_NAME);
        let io_error = |source| EmbeddedError::Io {
            path: path.clone(),
            source,
        };
        // Not truncated on open: the pid in it belongs to the holder until we hold the lock.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(Errno::WOULDBLOCK) => {
                let mut holder = String::new();
                // The pid only makes the message better; the lock is what matters.
                let _ = file.read_to_string(&mut holder);
                return Err(EmbeddedError::Locked {
                    dir: dir.to_path_buf(),
                    pid: holder.trim().parse().ok(),
                });
            }
            Err(errno) => return Err(io_error(errno.into())),
        }
        file.set_len(0)
            .and_then(|()| write!(file, "{}", std::process::id()))
            .map_err(io_error)?;
        Ok(DirLock { _file: file })
    }
}
