//! Tether's own diagnostics: to stderr (the console as PID 1) with a level filter. The
//! controller's warnings also go to the appliance, as `Log` records (controller.rs).

use std::sync::atomic::{AtomicU8, Ordering};

static LEVEL: AtomicU8 = AtomicU8::new(1);

/// 0 errors, 1 warnings, 2 info, 3 debug.
pub fn set_level(level: u8) {
    LEVEL.store(level.min(3), Ordering::Relaxed);
}

fn emit(level: u8, tag: &str, msg: &str) {
    if level <= LEVEL.load(Ordering::Relaxed) {
        // eprintln! would panic if stderr is gone; PID 1 must not panic over a log line.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "tether: {tag}: {msg}");
    }
}

pub fn error(msg: &str) {
    emit(0, "error", msg);
}
pub fn warn(msg: &str) {
    emit(1, "warning", msg);
}
pub fn info(msg: &str) {
    emit(2, "info", msg);
}
pub fn debug(msg: &str) {
    emit(3, "debug", msg);
}
