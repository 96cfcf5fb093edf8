//! `docker stats` and `docker port` for containerVMs. A container's resources are its VM's:
//! CPU time and resident memory of the VM's process on this host, against the VM's size.

use std::collections::HashMap;
use std::time::Duration;

use hyper::StatusCode;
use serde_json::{json, Value};

use crate::api::http::{error, flag, json_response};
use crate::api::{Api, ApiResponse};

/// Clock ticks per second of /proc's CPU times (Linux's USER_HZ on every architecture we run).
const USER_HZ: u64 = 100;
const NS_PER_TICK: u64 = 1_000_000_000 / USER_HZ;

/// CPU time of `pid` and of its process group's other members is not summed: QEMU is one
/// process, and the `timeout` wrapper (tests only) uses none.
fn process_cpu_ns(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) * NS_PER_TICK)
}

fn system_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let total: u64 = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    Some(total * NS_PER_TICK)
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The VM's process: QEMU itself, which is the wrapper's only child when there is one.
fn vm_process(pid: u32) -> u32 {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    children
        .split_whitespace()
        .next()
        .and_then(|c| c.parse().ok())
        .unwrap_or(pid)
}

fn sample(pid: Option<u32>) -> Value {
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    json!({
        "cpu_usage": {"total_usage": pid.and_then(process_cpu_ns).unwrap_or(0), "usage_in_kernelmode": 0, "usage_in_usermode": 0},
        "system_cpu_usage": system_cpu_ns().unwrap_or(0),
        "online_cpus": online,
        "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
    })
}

impl Api {
    pub(crate) async fn stats(&self, reference: &str, q: &HashMap<String, String>) -> ApiResponse {
        let rec = match self.resolve(reference) {
            Ok(r) => r,
            Err(e) => return e.into_response(),
        };
        if q.get("stream").is_some_and(|_| flag(q, "stream")) {
            return error(
                StatusCode::BAD_REQUEST,
                "streaming stats are not served yet: use docker stats --no-stream",
            );
        }
        let running = self.engine.is_running(&rec.id);
        let pid = self
            .engine
            .vm_pid(&rec.id)
            .filter(|_| running)
            .map(vm_process);
        let pre = sample(pid);
        let read_pre = time_now();
        // Two samples apart, as dockerd sends `precpu_stats`, so the CLI can compute a rate.
        if pid.is_some() && !flag(q, "one-shot") {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let now = sample(pid);
        let limit = u64::from(if rec.options.memory_mb == 0 {
            crate::engine::DEFAULT_MEMORY_MB
        } else {
            rec.options.memory_mb
        }) * 1024
            * 1024;
        let usage = pid.and_then(rss_bytes).unwrap_or(0);
        json_response(
            StatusCode::OK,
            &json!({
                "id": rec.id,
                "name": format!("/{}", rec.name),
                "read": time_now(),
                "preread": read_pre,
                "cpu_stats": now,
                "precpu_stats": pre,
                "memory_stats": {"usage": usage, "limit": limit, "stats": {}},
                "pids_stats": {"current": u64::from(pid.is_some())},
                "blkio_stats": {},
                "networks": {},
            }),
        )
    }
}

fn time_now() -> String {
    crate::store::logs::now_rfc3339().0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let me = std::process::id();
        assert!(process_cpu_ns(me).is_some());
        assert!(rss_bytes(me).unwrap() > 0);
        assert!(system_cpu_ns().unwrap() > 0);
        assert_eq!(
            vm_process(me),
            me,
            "a test process has no child named first"
        );
    }
}
