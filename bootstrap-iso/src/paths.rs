//! Archive paths under a root directory, never outside it.

use std::path::{Component, Path, PathBuf};

/// `root` joined with the archive path `rel`; `None` when `rel` is absolute or climbs out with
/// `..` (such entries are skipped, never written outside the root).
pub fn safe_join(root: &Path, rel: &Path) -> Option<PathBuf> {
    let mut out = root.to_path_buf();
    for c in rel.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_under_the_root() {
        let root = Path::new("/r");
        assert_eq!(
            safe_join(root, Path::new("./etc/a")),
            Some(PathBuf::from("/r/etc/a"))
        );
        assert_eq!(safe_join(root, Path::new("../etc")), None);
        assert_eq!(safe_join(root, Path::new("/etc")), None);
        assert_eq!(safe_join(root, Path::new("a/../../b")), None);
    }
}
