//! Whole-file writes that readers never see half done, and the random ids and secrets the store
//! hands out.

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Who may read a file the store writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// 0644: state and logs.
    Shared,
    /// 0600: anything holding a channel secret (record.json, config.vmx).
    Owner,
}

impl Access {
    fn mode(self) -> u32 {
        match self {
            Self::Shared => 0o644,
            Self::Owner => 0o600,
        }
    }
}

/// Writes `bytes` to `path` atomically (temp file + rename), so readers never see half a file.
/// The temp file is created with the final mode, so a secret is never readable even briefly.
pub fn write_atomic_with(path: &Path, bytes: &[u8], access: Access) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(access.mode())
        .open(&tmp)?;
    f.write_all(bytes)?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// [`write_atomic_with`] for files without secrets.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, bytes, Access::Shared)
}

/// Random bytes from the OS.
pub fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the OS random source is available");
    b
}

/// Lowercase hex, as docker writes ids.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::TestDir;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn owner_files_are_not_readable_by_others_and_replace_atomically() {
        let dir = TestDir::new("atomic");
        let path = dir.path().join("record.json");
        write_atomic_with(&path, b"one", Access::Owner).unwrap();
        write_atomic_with(&path, b"two", Access::Owner).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        write_atomic(&dir.path().join("state.json"), b"{}").unwrap();
        let mode = std::fs::metadata(dir.path().join("state.json"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode & 0o600, 0o600);
        assert!(!dir.path().join("record.tmp").exists());
    }

    #[test]
    fn hex_is_lowercase_two_digits_per_byte() {
        assert_eq!(hex(&[0, 0xab, 7]), "00ab07");
    }
}
