//! `docker top`: the container's processes, read from /proc, in the columns of `ps -ef` (which
//! is what docker runs by default). The container's processes are tether's descendants: every
//! process in the guest but tether, its built-ins and the kernel's threads (in host mode, what
//! tether started).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::error::BuiltinError;
use super::fmt::{json_str, Utc};

pub const TITLES: [&str; 8] = ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"];

/// One line of `ps -ef`, column by column.
pub type Row = [String; 8];

/// What the listing needs besides /proc.
pub struct Listing<'a> {
    pub proc_dir: &'a Path,
    /// Uid to name, from the container's /etc/passwd.
    pub users: &'a BTreeMap<u32, String>,
    /// Tether's pid: listed are its descendants.
    pub tether: u32,
    /// Tether's own processes (built-ins running now), not listed.
    pub hide: &'a [u32],
    /// Clock ticks per second (USER_HZ).
    pub clk_tck: u64,
    /// The wall clock, in seconds since the epoch.
    pub now: i64,
}

/// `ps_args` the listing can honour: none, or `-ef` in any spelling (`-e -f`, `-fe`, `-A -f`).
pub fn check_ps_args(args: &str) -> Result<(), BuiltinError> {
    let bad = || BuiltinError::PsArgs(args.to_string());
    let mut letters = BTreeSet::new();
    for word in args.split_whitespace() {
        let flags = word
            .strip_prefix('-')
            .filter(|f| !f.is_empty())
            .ok_or_else(bad)?;
        for c in flags.chars() {
            match c {
                'e' | 'A' => letters.insert('e'),
                'f' => letters.insert('f'),
                _ => return Err(bad()),
            };
        }
    }
    if letters.is_empty() || letters.len() == 2 {
        Ok(())
    } else {
        Err(bad())
    }
}

#[derive(Debug, Default)]
struct Proc {
    pid: u32,
    ppid: u32,
    state: char,
    comm: String,
    tty_nr: u64,
    utime: u64,
    stime: u64,
    starttime: u64,
    euid: Option<u32>,
    cmdline: Vec<u8>,
}

/// `/proc/PID/stat`: the command sits in parentheses and may hold anything, ')' included, so
/// the fields are counted from the last ')'.
fn parse_stat(text: &str) -> Option<Proc> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text.get(..open)?.trim().parse().ok()?;
    let comm = text.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    let num = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some(Proc {
        pid,
        comm,
        state: fields.first()?.chars().next()?,
        ppid: u32::try_from(num(1)?).ok()?,
        tty_nr: num(4)?,
        utime: num(11)?,
        stime: num(12)?,
        starttime: num(19)?,
        ..Default::default()
    })
}

/// The effective uid from `/proc/PID/status` (`Uid: real effective saved fs`).
fn parse_euid(status: &str) -> Option<u32> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn read_proc(proc_dir: &Path, pid: u32) -> Option<Proc> {
    let dir = proc_dir.join(pid.to_string());
    let mut p = parse_stat(&std::fs::read_to_string(dir.join("stat")).ok()?)?;
    p.euid = std::fs::read_to_string(dir.join("status"))
        .ok()
        .and_then(|s| parse_euid(&s));
    p.cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
    Some(p)
}

/// The terminal a `tty_nr` names, as ps prints it; `?` for none or one it cannot name.
fn tty_name(tty_nr: u64) -> String {
    let major = (tty_nr >> 8) & 0xfff;
    let minor = (tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00);
    match major {
        0 => "?".into(),
        136..=143 => format!("pts/{}", (major - 136) * 256 + minor),
        4 if minor < 64 => format!("tty{minor}"),
        4 => format!("ttyS{}", minor - 64),
        5 if minor == 1 => "console".into(),
        _ => "?".into(),
    }
}

/// CPU time as ps's TIME column: `HH:MM:SS`, with `D-` in front past a day.
fn cpu_time(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}-{h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

/// ps's STIME: `HH:MM` today, `MonDD` this year, else the year (in UTC: the guest has no zone).
fn start_time(start: i64, now: i64) -> String {
    let (s, n) = (Utc::from_unix(start), Utc::from_unix(now));
    if s.year != n.year {
        format!("{}", s.year)
    } else if (s.month, s.day) != (n.month, n.day) {
        format!("{}{:02}", s.month_abbrev(), s.day)
    } else {
        format!("{:02}:{:02}", s.hour, s.min)
    }
}

/// ps's CMD: the arguments joined by spaces, or `[comm]` when there are none (a zombie).
fn command(p: &Proc) -> String {
    let args: Vec<String> = p
        .cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    match (args.is_empty(), p.state == 'Z') {
        (false, _) => args.join(" "),
        (true, false) => format!("[{}]", p.comm),
        (true, true) => format!("[{}] <defunct>", p.comm),
    }
}

/// The whole part of the first number in `text`, or on its line that starts with `key`. (Not
/// parsed as a float: float parsing costs tether ~20 KB.)
fn first_number(text: &str, key: Option<&str>) -> Option<u64> {
    let line = match key {
        Some(k) => text.lines().find_map(|l| l.strip_prefix(k))?,
        None => text,
    };
    let word = line.split_whitespace().next()?;
    word.split('.').next()?.parse().ok()
}

/// The container's processes in pid order.
pub fn list(l: &Listing<'_>) -> Result<Vec<Row>, BuiltinError> {
    let read = |name: &str| {
        std::fs::read_to_string(l.proc_dir.join(name)).map_err(BuiltinError::io(format!(
            "reading {}",
            l.proc_dir.join(name).display()
        )))
    };
    let boot = first_number(&read("stat")?, Some("btime ")).unwrap_or(0);
    let boot = i64::try_from(boot).unwrap_or(0);
    let uptime = first_number(&read("uptime")?, None).unwrap_or(0);
    let entries = std::fs::read_dir(l.proc_dir).map_err(BuiltinError::io(format!(
        "listing {}",
        l.proc_dir.display()
    )))?;
    // Inserted one by one: collecting into a BTreeMap would link a stable sort (~6 KB).
    let mut procs: BTreeMap<u32, Proc> = BTreeMap::new();
    let mut parent: BTreeMap<u32, u32> = BTreeMap::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(p) = read_proc(l.proc_dir, pid) {
            parent.insert(pid, p.ppid);
            procs.insert(pid, p);
        } // else gone meanwhile: not listed
    }
    let descends = |mut pid: u32| {
        // Bounded: a chain of parents is no longer than the table (a pid reused mid-read could
        // otherwise make a cycle).
        for _ in 0..=parent.len() {
            match parent.get(&pid) {
                Some(&pp) if pp == l.tether => return true,
                Some(&pp) if pp != 0 => pid = pp,
                _ => return false,
            }
        }
        false
    };
    procs.retain(|&pid, _| pid != l.tether && !l.hide.contains(&pid) && descends(pid));
    let hz = l.clk_tck.max(1);
    Ok(procs
        .values()
        .map(|p| {
            let uid = match p.euid {
                Some(u) => l.users.get(&u).cloned().unwrap_or_else(|| u.to_string()),
                None => "?".into(),
            };
            // Saturating throughout: whatever /proc says, the listing does not overflow.
            let cpu_ticks = p.utime.saturating_add(p.stime);
            let alive = uptime.saturating_sub(p.starttime / hz);
            let c = (cpu_ticks.saturating_mul(100) / hz)
                .checked_div(alive)
                .unwrap_or(0)
                .min(99);
            let started = boot.saturating_add(i64::try_from(p.starttime / hz).unwrap_or(0));
            [
                uid,
                p.pid.to_string(),
                p.ppid.to_string(),
                c.to_string(),
                start_time(started, l.now),
                tty_name(p.tty_nr),
                cpu_time(cpu_ticks / hz),
                command(p),
            ]
        })
        .collect())
}

/// docker's `ContainerTopOKBody`.
pub fn to_json(rows: &[Row]) -> String {
    let mut out = String::from("{\"Titles\":[");
    for (i, t) in TITLES.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_str(&mut out, t);
    }
    out.push_str("],\"Processes\":[");
    for (i, row) in rows.iter().enumerate() {
        out.push_str(if i > 0 { ",[" } else { "[" });
        for (j, cell) in row.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            json_str(&mut out, cell);
        }
        out.push(']');
    }
    out.push_str("]}\n");
    out
}

#[cfg(test)]
mod tests;
