//! User and group lookup in the *image's* /etc/passwd and /etc/group (never the host's or the
//! initramfs's), as docker resolves `--user`.

use std::collections::BTreeMap;
use std::path::Path;

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UserError {
    #[error("unable to find user {0}: no matching entries in the image's /etc/passwd")]
    NoUser(String),
    #[error("unable to find group {0}: no matching entries in the image's /etc/group")]
    NoGroup(String),
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn read(root: &Path, file: &str) -> String {
    std::fs::read_to_string(root.join("etc").join(file)).unwrap_or_default()
}

fn passwd(root: &Path) -> Vec<PasswdEntry> {
    parse_passwd(&read(root, "passwd"))
}

/// Uid to user name, from the text of a passwd file (the first entry of each uid wins, as
/// getpwuid finds it): the UID column of a process listing.
pub fn user_names(passwd_text: &str) -> BTreeMap<u32, String> {
    let mut names = BTreeMap::new();
    for e in parse_passwd(passwd_text) {
        names.entry(e.uid).or_insert(e.name);
    }
    names
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5).unwrap_or(&"/").to_string(),
            })
        })
        .collect()
}

fn groups(root: &Path) -> Vec<GroupEntry> {
    read(root, "group")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(GroupEntry {
                name: f.first()?.to_string(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Resolves `user` (name, uid, or `user:group`) and `group` against the image under `root`.
/// Empty user means root. A numeric uid absent from passwd is allowed, as docker allows it, with
/// gid 0 unless a group is given, and HOME=/.
pub fn resolve(root: &Path, user: &str, group: &str) -> Result<Identity, UserError> {
    let (user, group) = match user.split_once(':') {
        Some((u, g)) if group.is_empty() => (u, g),
        Some((u, _)) => (u, group),
        None => (user, group),
    };
    let entries = passwd(root);
    let (uid, mut gid, home, name) = if user.is_empty() {
        let e = entries.iter().find(|e| e.uid == 0);
        (
            0,
            e.map_or(0, |e| e.gid),
            e.map_or("/root".into(), |e| e.home.clone()),
            "root".to_string(),
        )
    } else if let Some(e) = entries.iter().find(|e| e.name == user) {
        (e.uid, e.gid, e.home.clone(), e.name.clone())
    } else if let Ok(uid) = user.parse::<u32>() {
        match entries.iter().find(|e| e.uid == uid) {
            Some(e) => (uid, e.gid, e.home.clone(), e.name.clone()),
            None => (uid, 0, "/".to_string(), String::new()),
        }
    } else {
        return Err(UserError::NoUser(user.to_string()));
    };
    let all_groups = groups(root);
    if !group.is_empty() {
        gid = match all_groups.iter().find(|g| g.name == group) {
            Some(g) => g.gid,
            None => group
                .parse()
                .map_err(|_| UserError::NoGroup(group.to_string()))?,
        };
    }
    let mut supplementary: Vec<u32> = vec![gid];
    if !name.is_empty() {
        for g in all_groups.iter().filter(|g| g.members.contains(&name)) {
            if !supplementary.contains(&g.gid) {
                supplementary.push(g.gid);
            }
        }
    }
    Ok(Identity {
        uid,
        gid,
        groups: supplementary,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> tempdir::Dir {
        let d = tempdir::Dir::new();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/var/www:/bin/false\nbad line\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("etc/group"),
            "root:x:0:\nwww:x:33:\nstaff:x:50:www,other\n",
        )
        .unwrap();
        d
    }

    #[test]
    fn resolves_names_numbers_and_groups() {
        let d = image();
        let root = resolve(d.path(), "", "").unwrap();
        assert_eq!((root.uid, root.gid, root.home.as_str()), (0, 0, "/root"));
        let www = resolve(d.path(), "www", "").unwrap();
        assert_eq!((www.uid, www.gid, www.home.as_str()), (33, 33, "/var/www"));
        assert_eq!(www.groups, [33, 50]);
        let by_num = resolve(d.path(), "33:staff", "").unwrap();
        assert_eq!((by_num.uid, by_num.gid), (33, 50));
        let unknown_uid = resolve(d.path(), "1234", "").unwrap();
        assert_eq!(
            (unknown_uid.uid, unknown_uid.gid, unknown_uid.home.as_str()),
            (1234, 0, "/")
        );
        assert_eq!(
            resolve(d.path(), "nobody", "").unwrap_err().to_string(),
            "unable to find user nobody: no matching entries in the image's /etc/passwd"
        );
        assert_eq!(
            resolve(d.path(), "www", "wheel").unwrap_err(),
            UserError::NoGroup("wheel".into())
        );
    }

    #[test]
    fn user_names_take_the_first_entry_of_each_uid() {
        let names =
            user_names("root:x:0:0::/:/bin/sh\ntoor:x:0:0::/:/bin/sh\nwww:x:33:33::/:\nbad\n");
        assert_eq!(names.get(&0).map(String::as_str), Some("root"));
        assert_eq!(names.get(&33).map(String::as_str), Some("www"));
        assert_eq!(names.len(), 2);
    }

    /// A tiny temporary directory, removed on drop (std has none; not worth a dependency).
    mod tempdir {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                let p = std::env::temp_dir().join(format!(
                    "tether-users-{}-{:?}",
                    std::process::id(),
                    std::thread::current().id()
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }
}
