//! Secrets a node makes for itself on its first start (the embedded store's keyring, the
//! generated admin key): a file in the data dir, created once with a random secret, readable
//! by its owner only, and read as it is on every later start.

use std::io::Write;
use std::path::Path;

use ring::rand::{SecureRandom, SystemRandom};

/// Random bytes in a generated secret: 256 bits.
const GENERATED_SECRET_LEN: usize = 32;

/// The non-empty lines of `path`, trimmed. When the file does not exist, it is created holding
/// one new random secret; when another process creates it first, its secret is used.
pub fn read_or_create_secrets(path: &Path) -> std::io::Result<Vec<String>> {
    let text = match std::fs::read_to_string(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = random_secret()?;
            match create_private_file(path, &format!("{secret}\n")) {
                Ok(()) => secret,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    std::fs::read_to_string(path)?
                }
                Err(e) => return Err(e),
            }
        }
        read => read?,
    };
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// A new random secret, hex-encoded.
fn random_secret() -> std::io::Result<String> {
    let mut bytes = [0u8; GENERATED_SECRET_LEN];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| std::io::Error::other("the system random number generator failed"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Creates `path` with `content`, readable and writable by its owner only; fails if it exists.
fn create_private_file(path: &Path, content: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(content.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_generated_once_privately_and_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/secret");
        let first = read_or_create_secrets(&path).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].len(), 2 * GENERATED_SECRET_LEN);
        assert_eq!(read_or_create_secrets(&path).unwrap(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "one\n\n  two  \n").unwrap();
        assert_eq!(read_or_create_secrets(&path).unwrap(), ["one", "two"]);
    }
}
