//! Liveness of a connection, driven by the caller's monotonic clock.
//!
//! Any received frame proves the peer alive. After `interval_ms` of silence we ping; after
//! `timeout_ms` of silence the link is declared dead, so a broken cable or a vanished appliance
//! is noticed within a bound instead of when the next write happens to fail.

/// Protocol defaults: ping after this much silence...
pub const PING_INTERVAL_MS: u64 = 2_000;
/// ...and give the connection up after this much.
pub const DEAD_AFTER_MS: u64 = 10_000;

/// What the driver should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    SendPing(u64),
    Dead,
}

#[derive(Debug, Clone)]
pub struct Keepalive {
    interval_ms: u64,
    timeout_ms: u64,
    last_rx: u64,
    last_ping: Option<u64>,
    next_token: u64,
}

impl Keepalive {
    pub fn new(now_ms: u64, interval_ms: u64, timeout_ms: u64) -> Self {
        assert!(
            interval_ms < timeout_ms,
            "ping interval must be shorter than the timeout"
        );
        Self {
            interval_ms,
            timeout_ms,
            last_rx: now_ms,
            last_ping: None,
            next_token: 1,
        }
    }

    pub fn on_receive(&mut self, now_ms: u64) {
        self.last_rx = self.last_rx.max(now_ms);
        self.last_ping = None;
    }

    pub fn poll(&mut self, now_ms: u64) -> Liveness {
        let silent = now_ms.saturating_sub(self.last_rx);
        if silent >= self.timeout_ms {
            return Liveness::Dead;
        }
        let ping_due = match self.last_ping {
            None => silent >= self.interval_ms,
            Some(at) => now_ms.saturating_sub(at) >= self.interval_ms,
        };
        if ping_due {
            self.last_ping = Some(now_ms);
            let token = self.next_token;
            self.next_token += 1;
            return Liveness::SendPing(token);
        }
        Liveness::Alive
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_then_declares_dead() {
        let mut k = Keepalive::new(0, 100, 350);
        assert_eq!(k.poll(50), Liveness::Alive);
        assert_eq!(k.poll(100), Liveness::SendPing(1));
        assert_eq!(k.poll(150), Liveness::Alive);
        assert_eq!(k.poll(200), Liveness::SendPing(2));
        assert_eq!(k.poll(350), Liveness::Dead);
    }

    #[test]
    fn traffic_keeps_it_alive() {
        let mut k = Keepalive::new(0, 100, 350);
        for t in (0..2000).step_by(90) {
            k.on_receive(t);
            assert_eq!(k.poll(t + 10), Liveness::Alive);
        }
    }
}
