//! The one directory the server and the CLI agree on: `$TETHER_HOME`, by default
//! `~/.local/share/tether`.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// `$TETHER_HOME`, else `$HOME/.local/share/tether`.
    pub fn from_env() -> Self {
        let root = std::env::var_os("TETHER_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let home =
                    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
                home.join(".local/share/tether")
            });
        Self { root }
    }

    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The docker Engine API socket.
    pub fn docker_socket(&self) -> PathBuf {
        self.root.join("docker.sock")
    }

    /// Where containerVMs' channels connect (QEMU `-chardev socket`).
    pub fn channel_socket(&self) -> PathBuf {
        self.root.join("channel.sock")
    }

    /// The TCP address of the channel listener, written by the server at start-up.
    pub fn channel_tcp_file(&self) -> PathBuf {
        self.root.join("channel.tcp")
    }

    pub fn pid_file(&self) -> PathBuf {
        self.root.join("appliance.pid")
    }

    pub fn containers(&self) -> PathBuf {
        self.root.join("containers")
    }

    pub fn container(&self, id: &str) -> PathBuf {
        self.containers().join(id)
    }
}
