//! `bootstrap-iso guestinfo`: a container spec in TOML to the guestinfo key/value text tether
//! decodes (for QEMU's fw_cfg, or a VMX extraConfig section). Example:
//!
//! ```toml
//! name = "web"
//! hostname = "web"
//! secret = "c2VjcmV0"          # base64; the appliance's record holds the same
//! [main]
//! cmd = ["/bin/sh", "-c", "echo hi | tr a-z A-Z"]
//! env = ["GREETING=hello"]
//! tty = false
//! ```

use std::collections::BTreeMap;

use base64::Engine as _;
use guestinfo::{ContainerSpec, Rlimit, SessionSpec};
use serde::Deserialize;

/// What is wrong with a container spec.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not TOML, a field of the wrong type, a missing or an unknown field: the message names it.
    #[error("container spec: {0}")]
    Toml(#[from] toml::de::Error),
    #[error(
        "secret: not base64 ({0}); give the secret the appliance's record holds, base64-encoded"
    )]
    SecretNotBase64(base64::DecodeError),
    #[error("secret: must not be empty; the appliance authenticates the VM with it")]
    EmptySecret,
    #[error("session {0:?}: cmd must name a program, e.g. cmd = [\"/bin/sh\", \"-c\", \"...\"]")]
    EmptyCmd(String),
    #[error(
        "session {session:?}: ulimit {message} (write NAME=SOFT[:HARD], e.g. nofile=1024:2048)"
    )]
    Ulimit { session: String, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Session {
    cmd: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    dir: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    group: String,
    #[serde(default)]
    tty: bool,
    #[serde(default)]
    stdin: bool,
    #[serde(default)]
    wait_for_attach: bool,
    #[serde(default)]
    restart: bool,
    #[serde(default)]
    stop_signal: Option<String>,
    #[serde(default)]
    ulimits: Vec<String>,
    #[serde(default)]
    cap_drop: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    id: Option<String>,
    #[serde(default)]
    name: String,
    secret: String,
    hostname: Option<String>,
    domainname: Option<String>,
    #[serde(default = "one")]
    debug: u8,
    #[serde(default)]
    dns: Vec<String>,
    #[serde(default)]
    dns_search: Vec<String>,
    disk_label: Option<String>,
    main: Session,
    #[serde(default)]
    sessions: BTreeMap<String, Session>,
}

fn one() -> u8 {
    1
}

fn session(id: &str, s: Session) -> Result<SessionSpec, Error> {
    let path = s
        .cmd
        .first()
        .cloned()
        .ok_or_else(|| Error::EmptyCmd(id.to_string()))?;
    let rlimits = s
        .ulimits
        .iter()
        .map(|u| {
            Rlimit::parse(u).map_err(|message| Error::Ulimit {
                session: id.to_string(),
                message,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(SessionSpec {
        id: id.to_string(),
        name: id.to_string(),
        path,
        args: s.cmd,
        env: s.env,
        dir: if s.dir.is_empty() { "/".into() } else { s.dir },
        user: s.user,
        group: s.group,
        tty: s.tty,
        attach: s.wait_for_attach,
        open_stdin: s.stdin,
        restart: s.restart,
        stop_signal: s.stop_signal.unwrap_or_else(|| "SIGTERM".into()),
        rlimits,
        cap_drop: s.cap_drop,
        ..Default::default()
    })
}

/// Parses the TOML and encodes it as VMX `key = "value"` text. `id` is used when the TOML has none.
pub fn to_vmx(text: &str, default_id: &str) -> Result<String, Error> {
    let spec: Spec = toml::from_str(text)?;
    let secret = base64::engine::general_purpose::STANDARD
        .decode(&spec.secret)
        .map_err(Error::SecretNotBase64)?;
    if secret.is_empty() {
        return Err(Error::EmptySecret);
    }
    let id = spec.id.unwrap_or_else(|| default_id.to_string());
    let mut sessions = BTreeMap::new();
    sessions.insert(id.clone(), session(&id, spec.main)?);
    for (sid, s) in spec.sessions {
        sessions.insert(sid.clone(), session(&sid, s)?);
    }
    let c = ContainerSpec {
        name: spec.name,
        debug: spec.debug,
        hostname: spec.hostname,
        domainname: spec.domainname,
        secret,
        channel_device: None,
        disk_label: spec
            .disk_label
            .unwrap_or_else(|| guestinfo::contract::DEFAULT_DISK_LABEL.into()),
        disk_wait_ms: guestinfo::spec::DEFAULT_DISK_WAIT_MS,
        stop_grace_ms: guestinfo::spec::DEFAULT_STOP_GRACE_MS,
        dns: spec.dns,
        dns_search: spec.dns_search,
        sessions,
        execs: BTreeMap::new(),
        id,
        extra_hosts: Vec::new(),
        networks: Default::default(),
    };
    Ok(guestinfo::spec_to_vmx(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_becomes_guestinfo_tether_decodes() {
        let text = r#"
            name = "web"
            secret = "c2VjcmV0"
            hostname = "box"
            [main]
            cmd = ["/bin/sh", "-c", "echo a|b"]
            env = ["X=y|z"]
            ulimits = ["nofile=1024:2048"]
            [sessions.side]
            cmd = ["/bin/sleep", "9"]
        "#;
        let vmx = to_vmx(text, "cid1").unwrap();
        let spec = guestinfo::spec_from_vmx(&vmx).unwrap();
        let main = spec.main_session().unwrap();
        assert_eq!(main.args, ["/bin/sh", "-c", "echo a|b"]);
        assert_eq!(main.env, ["X=y|z"]);
        assert_eq!(main.rlimits[0].soft, Some(1024));
        assert_eq!(spec.sessions["side"].path, "/bin/sleep");
        assert_eq!(spec.secret, b"secret");
        assert_eq!(spec.effective_hostname(), "box");
    }

    #[test]
    fn mistakes_are_named() {
        let e = |text: &str| to_vmx(text, "x").unwrap_err();
        let cmd = e("secret = \"c2VjcmV0\"\n[main]\ncmd = []\n");
        assert!(matches!(&cmd, Error::EmptyCmd(s) if s == "x"), "{cmd:?}");
        assert!(cmd.to_string().contains("cmd must name a program"), "{cmd}");
        let b64 = e("secret = \"!!\"\n[main]\ncmd = [\"a\"]\n");
        assert!(b64.to_string().contains("secret: not base64"), "{b64}");
        let empty = e("secret = \"\"\n[main]\ncmd = [\"a\"]\n");
        assert!(matches!(empty, Error::EmptySecret), "{empty:?}");
        let typo = e("secret = \"c2VjcmV0\"\ntypo = 1\n[main]\ncmd = [\"a\"]\n");
        assert!(typo.to_string().contains("typo"), "{typo}");
        let ulimit = e("secret = \"c2VjcmV0\"\n[main]\ncmd = [\"a\"]\nulimits = [\"nofile\"]\n");
        assert!(
            matches!(&ulimit, Error::Ulimit { session, .. } if session == "x"),
            "{ulimit:?}"
        );
    }
}
