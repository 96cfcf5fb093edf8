//! The guest's wall clock, kept to the appliance's. A containerVM may boot with its RTC years off
//! (VIC never synced: vic#2527, exit times days off), and a VM that was paused or migrated
//! drifts. The appliance sends its time after every handshake and every minute
//! (`Message::Time`); tether steps the clock when it is off by more than [`STEP_THRESHOLD`] and
//! slews anything smaller (adjtimex's single-shot offset: the kernel runs the clock 0.05 % fast
//! or slow until the offset is gone), so time never jumps back over small errors.
//!
//! The clock calls go through the narrow [`Clock`] trait (the real one on [`crate::os::Real`]),
//! so the policy is unit-tested without root.

use std::io;

/// Off by more than this (either way), the clock is stepped; within it, slewed. Half a
/// second: above what one sample's delay on a serial line can be, below what a person notices.
pub const STEP_THRESHOLD: i128 = 500_000_000;
/// Offsets below this are noise (the sample's own delay): left alone.
pub const NOISE: i128 = 1_000_000;

/// What one time sample makes tether do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Correction {
    None,
    /// Set the clock to this (nanoseconds since the Unix epoch).
    Step {
        to: u64,
    },
    /// Move the clock by this many nanoseconds, gradually.
    Slew {
        by: i64,
    },
}

/// The correction for a clock reading `local` when the appliance says `server` (both
/// nanoseconds since the Unix epoch).
pub fn correction(local: i128, server: u64) -> Correction {
    let offset = i128::from(server) - local;
    if offset.abs() > STEP_THRESHOLD {
        Correction::Step { to: server }
    } else if offset.abs() >= NOISE {
        Correction::Slew { by: offset as i64 }
    } else {
        Correction::None
    }
}

/// The wall clock's system calls.
pub trait Clock {
    /// CLOCK_REALTIME, nanoseconds since the epoch (negative before 1970).
    fn now(&self) -> io::Result<i128>;
    /// Sets CLOCK_REALTIME, cancelling any slew in progress.
    fn step(&self, unix_nanos: u64) -> io::Result<()>;
    /// Slews by `nanos`, replacing any slew in progress.
    fn slew(&self, nanos: i64) -> io::Result<()>;
}

/// Applies one sample of the appliance's clock; what was done.
pub fn discipline(clock: &dyn Clock, server: u64) -> io::Result<Correction> {
    let c = correction(clock.now()?, server);
    match c {
        Correction::None => {}
        Correction::Step { to } => clock.step(to)?,
        Correction::Slew { by } => clock.slew(by)?,
    }
    Ok(c)
}

/// The appliance's time arrived. Only PID 1 touches the clock: tether in host mode (tests, a
/// development run) leaves the host's alone.
pub fn on_server_time(unix_nanos: u64) {
    if std::process::id() != 1 {
        return;
    }
    match discipline(&crate::os::Real, unix_nanos) {
        Ok(Correction::Step { .. }) => {
            crate::log::info("the clock was off; set from the appliance's")
        }
        Ok(_) => {}
        Err(e) => crate::log::warn(&format!("cannot correct the clock: {e}")),
    }
}

/// adjtimex with a single-shot offset of `micros` (what adjtime(3) does).
fn adjtime(micros: i64) -> io::Result<()> {
    // SAFETY: an all-zero timex is valid input; only `modes` and `offset` are read for
    // ADJ_OFFSET_SINGLESHOT, and adjtimex writes the structure we own.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    tx.modes = libc::ADJ_OFFSET_SINGLESHOT;
    tx.offset = micros as _;
    // SAFETY: adjtimex reads and writes the timex above.
    if unsafe { libc::adjtimex(&mut tx) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Clock for crate::os::Real {
    fn now(&self) -> io::Result<i128> {
        let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME)
            .map_err(io::Error::from)?;
        Ok(i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec()))
    }

    fn step(&self, unix_nanos: u64) -> io::Result<()> {
        let ts = libc::timespec {
            tv_sec: (unix_nanos / 1_000_000_000) as _,
            tv_nsec: (unix_nanos % 1_000_000_000) as _,
        };
        // SAFETY: clock_settime reads a valid timespec.
        if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // A slew from an earlier sample would pull the clock off again.
        adjtime(0)
    }

    fn slew(&self, nanos: i64) -> io::Result<()> {
        adjtime(nanos / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A clock that records what was done to it.
    struct FakeClock {
        now: i128,
        calls: RefCell<Vec<String>>,
    }

    impl Clock for FakeClock {
        fn now(&self) -> io::Result<i128> {
            Ok(self.now)
        }
        fn step(&self, to: u64) -> io::Result<()> {
            self.calls.borrow_mut().push(format!("step {to}"));
            Ok(())
        }
        fn slew(&self, by: i64) -> io::Result<()> {
            self.calls.borrow_mut().push(format!("slew {by}"));
            Ok(())
        }
    }

    const S: u64 = 1_000_000_000;
    /// 2025-01-01 and 2019-01-01 (`-rtc base=2019-01-01`).
    const NOW: u64 = 1_735_689_600 * S;
    const RTC_2019: i128 = 1_546_300_800 * S as i128;

    fn applied(local: i128, server: u64) -> (Correction, Vec<String>) {
        let clock = FakeClock {
            now: local,
            calls: RefCell::new(Vec::new()),
        };
        let c = discipline(&clock, server).unwrap();
        (c, clock.calls.into_inner())
    }

    #[test]
    fn years_off_steps() {
        assert_eq!(
            applied(RTC_2019, NOW),
            (Correction::Step { to: NOW }, vec![format!("step {NOW}")])
        );
    }

    #[test]
    fn ahead_by_more_than_the_threshold_steps_back() {
        let ahead = NOW as i128 + 3 * S as i128;
        assert_eq!(applied(ahead, NOW).0, Correction::Step { to: NOW });
    }

    #[test]
    fn small_drift_either_way_is_slewed_not_stepped() {
        let behind = NOW as i128 - 200_000_000;
        assert_eq!(
            applied(behind, NOW),
            (
                Correction::Slew { by: 200_000_000 },
                vec!["slew 200000000".to_string()]
            )
        );
        let ahead = NOW as i128 + 499_000_000;
        assert_eq!(applied(ahead, NOW).0, Correction::Slew { by: -499_000_000 });
    }

    #[test]
    fn noise_is_left_alone() {
        assert_eq!(
            applied(NOW as i128 + 300_000, NOW),
            (Correction::None, vec![])
        );
    }

    #[test]
    fn the_threshold_is_where_a_slew_becomes_a_step() {
        let at = NOW as i128 - STEP_THRESHOLD;
        assert!(matches!(correction(at, NOW), Correction::Slew { .. }));
        assert!(matches!(correction(at - 1, NOW), Correction::Step { .. }));
    }
}
