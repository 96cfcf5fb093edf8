//! Our own terminal while a tty session is attached: raw mode, its size, and its size changes
//! (SIGWINCH). Nothing here talks to the server.

use std::os::fd::AsFd;

/// Puts our terminal in raw mode while a tty session is attached; restores it on drop.
pub struct RawTerminal(Option<nix::sys::termios::Termios>);

impl RawTerminal {
    /// Raw mode when `tty` and our stdin is a terminal; otherwise does nothing.
    pub fn enable(tty: bool) -> Self {
        let stdin = std::io::stdin();
        if !tty || !nix::unistd::isatty(stdin.as_fd()).unwrap_or(false) {
            return Self(None);
        }
        let Ok(saved) = nix::sys::termios::tcgetattr(stdin.as_fd()) else {
            return Self(None);
        };
        let mut raw = saved.clone();
        nix::sys::termios::cfmakeraw(&mut raw);
        let _ =
            nix::sys::termios::tcsetattr(stdin.as_fd(), nix::sys::termios::SetArg::TCSANOW, &raw);
        Self(Some(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin().as_fd(),
                nix::sys::termios::SetArg::TCSANOW,
                saved,
            );
        }
    }
}

/// Our terminal's (rows, columns), if stdout is one.
pub fn terminal_size() -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize into the struct we pass, which outlives the call.
    let rc = unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0).then_some((ws.ws_row, ws.ws_col))
}

/// Tells when the terminal's size changes (SIGWINCH); [`terminal_size`] then says to what.
pub struct WindowChanges(tokio::signal::unix::Signal);

impl WindowChanges {
    /// None if the signal handler cannot be installed.
    pub fn listen() -> Option<Self> {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            .ok()
            .map(Self)
    }

    /// Waits for the next change; false if the signal stream ended (no more will come).
    pub async fn changed(&mut self) -> bool {
        self.0.recv().await.is_some()
    }
}
