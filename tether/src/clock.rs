//! The wall clock. A containerVM may boot with a wrong RTC; the appliance sends its time.

/// Sets CLOCK_REALTIME when we may (PID 1); otherwise leaves the host's clock alone.
pub fn set_wall_clock(unix_nanos: u64) {
    if std::process::id() != 1 {
        return;
    }
    let ts = libc::timespec {
        tv_sec: (unix_nanos / 1_000_000_000) as _,
        tv_nsec: (unix_nanos % 1_000_000_000) as _,
    };
    // SAFETY: clock_settime reads a valid timespec.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        crate::log::warn(&format!(
            "cannot set the clock: {}",
            std::io::Error::last_os_error()
        ));
    }
}
