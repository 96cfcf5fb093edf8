//! Boot-stage timestamps, reported to the appliance as `Timing` control records so a benchmark
//! can split a boot into stages on the guest's own clock. CLOCK_BOOTTIME starts near kernel start,
//! so a stage's value is also "time since the kernel began".

use std::cell::RefCell;

thread_local! {
    static STAGES: RefCell<Vec<(&'static str, u64)>> = const { RefCell::new(Vec::new()) };
}

/// Nanoseconds on CLOCK_BOOTTIME (0 if the clock cannot be read).
pub fn now_nanos() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
}

/// Notes that `stage` was reached now.
pub fn mark(stage: &'static str) {
    let now = now_nanos();
    STAGES.with(|s| s.borrow_mut().push((stage, now)));
}

/// Every stage noted so far, oldest first; the list is emptied.
pub fn take() -> Vec<(&'static str, u64)> {
    STAGES.with(|s| std::mem::take(&mut *s.borrow_mut()))
}
