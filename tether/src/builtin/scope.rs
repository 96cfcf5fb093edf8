//! Paths inside the container's root, resolved as docker's `FollowSymlinkInScope` resolves them:
//! the path is cleaned (`..` stops at `/`), then each element is looked at in turn and a symlink
//! is replaced by its target, an absolute target starting again from the root and a `..` in a
//! target stopping there too. Nothing resolves to a place outside the root. A missing element is
//! kept as it is, so a path that does not exist yet resolves too.
//!
//! In the guest the root is `/`; in host mode it is `--root DIR`. A built-in that can chroot
//! does, and then resolves against `/`: the kernel keeps it inside even if the container's
//! processes change the tree under it.

use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Symlinks followed in one resolution before giving up (ELOOP), as docker allows.
const MAX_LINKS: u32 = 255;

pub struct Scope {
    root: PathBuf,
}

/// A path as docker's archive endpoints take it (its `ResolvePath`): the directories on the way
/// are resolved; the last element is not followed, unless the path ends in `/` or `/.`.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    /// The container path to lstat: absolute, clean.
    pub inner: PathBuf,
    /// Go's `filepath.Base` of the cleaned path, which names the archive's top entry: `hosts`
    /// for `/etc/hosts`, `dir` for `dir/`, `.` for `dir/.`, `/` for `/`.
    pub name: OsString,
    /// The path ended in `/` or `/.`: only a directory will do.
    pub dir_only: bool,
}

/// The elements of `path` made absolute and cleaned lexically, as Go's
/// `filepath.Clean("/" + path)`: no `.`, and a `..` removes the element before it, or nothing.
pub fn clean(path: &Path) -> Vec<OsString> {
    let mut out: Vec<OsString> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    out
}

fn absolute(elements: &[OsString]) -> PathBuf {
    let mut p = PathBuf::from("/");
    p.extend(elements);
    p
}

impl Scope {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Where the container path `inner` is on this machine: under the root, whatever `inner`
    /// says (its `..` and root are dropped, not followed).
    pub fn host(&self, inner: &Path) -> PathBuf {
        let mut p = self.root.clone();
        for c in inner.components() {
            if let Component::Normal(n) = c {
                p.push(n);
            }
        }
        p
    }

    /// `path` with every symlink in it followed inside the root: an absolute, clean container
    /// path with no symlink on the way (at the time of looking). ELOOP after 255 symlinks.
    pub fn resolve(&self, path: &Path) -> io::Result<PathBuf> {
        let mut done: Vec<OsString> = Vec::new();
        // A stack: the next element to look at is on top.
        let mut todo: Vec<OsString> = clean(path).into_iter().rev().collect();
        let mut links = 0;
        while let Some(element) = todo.pop() {
            if element == ".." {
                done.pop(); // only from a link target: the path itself was cleaned
                continue;
            }
            let host = self.host(&absolute(&done)).join(&element);
            match std::fs::symlink_metadata(&host) {
                Ok(m) if m.file_type().is_symlink() => {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(io::Error::from_raw_os_error(libc::ELOOP));
                    }
                    let target = std::fs::read_link(&host)?;
                    if target.has_root() {
                        done.clear();
                    }
                    for c in target.components().rev() {
                        match c {
                            Component::Normal(n) => todo.push(n.to_os_string()),
                            Component::ParentDir => todo.push(OsString::from("..")),
                            _ => {}
                        }
                    }
                }
                Ok(_) => done.push(element),
                Err(e) if e.kind() == io::ErrorKind::NotFound => done.push(element),
                Err(e) => return Err(e),
            }
        }
        Ok(absolute(&done))
    }

    /// docker's `ResolvePath` for the archive endpoints (see [`Target`]).
    pub fn target(&self, path: &str) -> io::Result<Target> {
        let elements = clean(Path::new(path));
        let trimmed = path.trim_end_matches('/');
        let trailing_dot = trimmed == "." || trimmed.ends_with("/.");
        let trailing_slash = path.len() > trimmed.len();
        let name = if trailing_dot {
            OsString::from(".")
        } else {
            elements
                .last()
                .cloned()
                .unwrap_or_else(|| OsString::from("/"))
        };
        let (inner, dir_only) = match elements.split_last() {
            Some((last, dirs)) if !trailing_dot && !trailing_slash => {
                (self.resolve(&absolute(dirs))?.join(last), false)
            }
            _ => (self.resolve(&absolute(&elements))?, true),
        };
        Ok(Target {
            inner,
            name,
            dir_only,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestDir;
    use std::os::unix::fs::symlink;

    fn image() -> (TestDir, Scope) {
        let d = TestDir::new("scope");
        for dir in ["etc", "a/b", "usr/lib"] {
            std::fs::create_dir_all(d.path().join(dir)).unwrap();
        }
        std::fs::write(d.path().join("etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
        symlink("/etc", d.path().join("abs")).unwrap();
        symlink("../../../../../../etc", d.path().join("a/b/up")).unwrap();
        symlink("usr/lib", d.path().join("lib")).unwrap();
        symlink("loop2", d.path().join("loop1")).unwrap();
        symlink("loop1", d.path().join("loop2")).unwrap();
        let scope = Scope::new(d.path());
        (d, scope)
    }

    fn resolve(scope: &Scope, path: &str) -> PathBuf {
        scope.resolve(Path::new(path)).unwrap()
    }

    #[test]
    fn dot_dot_and_symlinks_stay_inside_the_root() {
        let (d, scope) = image();
        assert_eq!(
            resolve(&scope, "../../etc/passwd"),
            Path::new("/etc/passwd")
        );
        assert_eq!(resolve(&scope, "/a/../../../etc"), Path::new("/etc"));
        // An absolute symlink is taken from the container's root, not the host's.
        assert_eq!(resolve(&scope, "/abs/passwd"), Path::new("/etc/passwd"));
        assert_eq!(
            scope.host(&resolve(&scope, "/abs/passwd")),
            d.path().join("etc/passwd")
        );
        // A relative one climbs no higher than the root.
        assert_eq!(resolve(&scope, "/a/b/up/passwd"), Path::new("/etc/passwd"));
        assert_eq!(resolve(&scope, "/lib/x/y"), Path::new("/usr/lib/x/y"));
        assert_eq!(resolve(&scope, "/"), Path::new("/"));
        assert_eq!(resolve(&scope, ""), Path::new("/"));
        assert_eq!(
            scope.host(Path::new("/../../etc")),
            d.path().join("etc"),
            "host() drops what would climb"
        );
    }

    #[test]
    fn missing_elements_are_kept_and_loops_fail() {
        let (_d, scope) = image();
        assert_eq!(resolve(&scope, "/nope/../x/y"), Path::new("/x/y"));
        assert_eq!(resolve(&scope, "/abs/new/file"), Path::new("/etc/new/file"));
        let e = scope.resolve(Path::new("/loop1/x")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        let e = scope.resolve(Path::new("/etc/passwd/x")).unwrap_err();
        assert!(crate::builtin::error::is_missing(&e), "{e}");
    }

    #[test]
    fn targets_follow_docker_resolve_path() {
        let (_d, scope) = image();
        let t = |p: &str| scope.target(p).unwrap();
        let want = |inner: &str, name: &str, dir_only| Target {
            inner: PathBuf::from(inner),
            name: OsString::from(name),
            dir_only,
        };
        // The last element is not followed...
        assert_eq!(t("/abs"), want("/abs", "abs", false));
        assert_eq!(t("etc/passwd"), want("/etc/passwd", "passwd", false));
        assert_eq!(t("/lib/x"), want("/usr/lib/x", "x", false));
        // ...unless the path ends in / or /.
        assert_eq!(t("/abs/"), want("/etc", "abs", true));
        assert_eq!(t("/abs/."), want("/etc", ".", true));
        assert_eq!(t("/abs/./"), want("/etc", ".", true));
        assert_eq!(t("/"), want("/", "/", true));
        assert_eq!(t("."), want("/", ".", true));
        assert_eq!(t("/../../abs"), want("/abs", "abs", false));
    }
}
