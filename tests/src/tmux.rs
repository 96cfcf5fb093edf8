//! A terminal program driven in tmux, as a person would drive it.

/// Drives a terminal program in tmux, as a person would: type, read the screen.
pub struct Tmux {
    socket: String,
}

impl Tmux {
    pub fn start(tag: &str, cols: u16, rows: u16, command: &str) -> Self {
        let t = Tmux {
            socket: format!("e2e-{tag}-{}", std::process::id()),
        };
        t.run(&[
            "new-session",
            "-d",
            "-s",
            "s",
            "-x",
            &cols.to_string(),
            "-y",
            &rows.to_string(),
            command,
        ]);
        t
    }

    pub fn run(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux is installed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn screen(&self) -> String {
        self.run(&["capture-pane", "-t", "s", "-p"])
    }

    /// Sends tmux key names as they are (e.g. `C-p`), without Enter.
    pub fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "s"];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    /// Waits until the screen shows `expect`.
    pub fn wait_for(&self, expect: &str) {
        for _ in 0..300 {
            if self.screen().contains(expect) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("screen never showed {expect:?}:\n{}", self.screen());
    }

    /// Types `keys` + Enter, then waits until the screen shows `expect`.
    pub fn type_until(&self, keys: &str, expect: &str) {
        self.run(&["send-keys", "-t", "s", keys, "Enter"]);
        for _ in 0..100 {
            if self.screen().contains(expect) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("screen never showed {expect:?}:\n{}", self.screen());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.run(&["kill-server"]);
    }
}
