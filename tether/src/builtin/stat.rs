//! docker's `ContainerPathStat` of a path (`HEAD /containers/{id}/archive`): the lstat of the
//! path's last element, its mode in Go's `os.FileMode` bits.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::error::{is_missing, BuiltinError};
use super::fmt::{json_str, rfc3339_nano};
use super::scope::Scope;

/// Go's `os.FileMode` type bits (the permission bits are the low nine).
mod go {
    pub const DIR: u32 = 1 << 31;
    pub const SYMLINK: u32 = 1 << 27;
    pub const DEVICE: u32 = 1 << 26;
    pub const NAMED_PIPE: u32 = 1 << 25;
    pub const SOCKET: u32 = 1 << 24;
    pub const SETUID: u32 = 1 << 23;
    pub const SETGID: u32 = 1 << 22;
    pub const CHAR_DEVICE: u32 = 1 << 21;
    pub const STICKY: u32 = 1 << 20;
}

/// A Unix `st_mode` as Go's `os.Lstat` reports it.
pub fn go_file_mode(st_mode: u32) -> u32 {
    let mut mode = st_mode & 0o777;
    mode |= match st_mode & libc::S_IFMT {
        libc::S_IFDIR => go::DIR,
        libc::S_IFLNK => go::SYMLINK,
        libc::S_IFBLK => go::DEVICE,
        libc::S_IFCHR => go::DEVICE | go::CHAR_DEVICE,
        libc::S_IFIFO => go::NAMED_PIPE,
        libc::S_IFSOCK => go::SOCKET,
        _ => 0,
    };
    for (bit, go_bit) in [
        (libc::S_ISUID, go::SETUID),
        (libc::S_ISGID, go::SETGID),
        (libc::S_ISVTX, go::STICKY),
    ] {
        if st_mode & bit != 0 {
            mode |= go_bit;
        }
    }
    mode
}

/// The stat of `path` in the container as JSON, or NotFound (docker's 404).
pub fn stat(scope: &Scope, path: &str) -> Result<String, BuiltinError> {
    let missing = || BuiltinError::NotFound(path.to_string());
    let target = scope.target(path).map_err(|e| match is_missing(&e) {
        true => missing(),
        false => BuiltinError::Io {
            what: format!("resolving {path}"),
            source: e,
        },
    })?;
    let meta =
        std::fs::symlink_metadata(scope.host(&target.inner)).map_err(|e| match is_missing(&e) {
            true => missing(),
            false => BuiltinError::Io {
                what: format!("lstat {path}"),
                source: e,
            },
        })?;
    if target.dir_only && !meta.is_dir() {
        return Err(BuiltinError::PathNotADirectory {
            path: path.to_string(),
        });
    }
    // A symlink's target, fully resolved in the container, as an absolute path.
    let link_target = if meta.file_type().is_symlink() {
        scope
            .resolve(Path::new(path))
            .map_err(BuiltinError::io(format!("resolving the symlink {path}")))?
            .to_string_lossy()
            .into_owned()
    } else {
        String::new()
    };
    let mut out = String::from("{\"name\":");
    json_str(&mut out, &target.name.to_string_lossy());
    out.push_str(&format!(
        ",\"size\":{},\"mode\":{},\"mtime\":\"{}\",\"linkTarget\":",
        meta.size(),
        go_file_mode(meta.mode()),
        rfc3339_nano(meta.mtime(), meta.mtime_nsec().clamp(0, 999_999_999) as u32)
    ));
    json_str(&mut out, &link_target);
    out.push_str("}\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestDir;

    #[test]
    fn file_modes_are_gos() {
        assert_eq!(go_file_mode(libc::S_IFREG | 0o644), 0o644);
        assert_eq!(go_file_mode(libc::S_IFDIR | 0o755), (1 << 31) | 0o755);
        assert_eq!(go_file_mode(libc::S_IFLNK | 0o777), (1 << 27) | 0o777);
        assert_eq!(
            go_file_mode(libc::S_IFCHR | 0o666),
            (1 << 26) | (1 << 21) | 0o666
        );
        assert_eq!(go_file_mode(libc::S_IFBLK | 0o660), (1 << 26) | 0o660);
        assert_eq!(go_file_mode(libc::S_IFIFO | 0o600), (1 << 25) | 0o600);
        assert_eq!(go_file_mode(libc::S_IFSOCK | 0o755), (1 << 24) | 0o755);
        assert_eq!(
            go_file_mode(libc::S_IFREG | libc::S_ISUID | 0o755),
            (1 << 23) | 0o755
        );
        assert_eq!(
            go_file_mode(libc::S_IFDIR | libc::S_ISVTX | libc::S_ISGID | 0o777),
            (1 << 31) | (1 << 22) | (1 << 20) | 0o777
        );
    }

    #[test]
    fn stat_is_docker_json_and_missing_is_not_found() {
        let d = TestDir::new("stat");
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
        std::os::unix::fs::symlink("/etc/hosts", d.path().join("link")).unwrap();
        let times = std::fs::FileTimes::new().set_modified(
            std::time::UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 500_000_000),
        );
        let f = std::fs::File::options()
            .write(true)
            .open(d.path().join("etc/hosts"))
            .unwrap();
        f.set_times(times).unwrap();
        std::fs::set_permissions(
            d.path().join("etc/hosts"),
            std::os::unix::fs::PermissionsExt::from_mode(0o640),
        )
        .unwrap();
        std::fs::set_permissions(
            d.path().join("etc"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let scope = Scope::new(d.path());
        assert_eq!(
            stat(&scope, "/etc/../etc/hosts").unwrap(),
            "{\"name\":\"hosts\",\"size\":20,\"mode\":416,\
             \"mtime\":\"2023-11-14T22:13:20.5Z\",\"linkTarget\":\"\"}\n"
        );
        let link = stat(&scope, "link").unwrap();
        assert!(
            link.starts_with("{\"name\":\"link\",\"size\":10,\"mode\":134218239,"),
            "{link}"
        );
        assert!(
            link.ends_with(",\"linkTarget\":\"/etc/hosts\"}\n"),
            "{link}"
        );
        assert!(stat(&scope, "/etc/")
            .unwrap()
            .contains("\"mode\":2147484141"));
        for missing in ["/nope", "/etc/hosts/x", "/nope/deeper"] {
            assert_eq!(
                stat(&scope, missing).unwrap_err().to_string(),
                format!("Could not find the file {missing} in container")
            );
        }
        assert_eq!(
            stat(&scope, "/etc/hosts/").unwrap_err().to_string(),
            "/etc/hosts/: not a directory"
        );
    }
}
