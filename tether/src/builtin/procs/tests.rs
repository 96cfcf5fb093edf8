use super::*;
use crate::testing::TestDir;

const BOOT: i64 = 1_700_000_000; // 2023-11-14T22:13:20Z
const HZ: u64 = 100;

struct FakeProc(TestDir);

impl FakeProc {
    fn new() -> Self {
        let d = TestDir::new("proc");
        std::fs::write(
            d.path().join("stat"),
            format!("cpu  1 2 3 4\nbtime {BOOT}\nprocesses 99\n"),
        )
        .unwrap();
        std::fs::write(d.path().join("uptime"), "1000.42 1900.00\n").unwrap();
        std::fs::write(d.path().join("meminfo"), "MemTotal: 1 kB\n").unwrap();
        Self(d)
    }

    #[allow(clippy::too_many_arguments)]
    fn add(
        &self,
        pid: u32,
        comm: &str,
        state: char,
        ppid: u32,
        uid: u32,
        tty: u64,
        cpu: (u64, u64),
        start: u64,
        cmdline: &[u8],
    ) {
        let dir = self.0.path().join(pid.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let (utime, stime) = cpu;
        std::fs::write(
            dir.join("stat"),
            format!(
                "{pid} ({comm}) {state} {ppid} {pid} {pid} {tty} -1 4194560 100 0 0 0 {utime} \
                 {stime} 0 0 20 0 1 0 {start} 1000000 100 18446744073709551615 1 1 0 0\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("status"),
            format!("Name:\t{comm}\nState:\t{state}\nUid:\t1000\t{uid}\t{uid}\t{uid}\nGid:\t0\t0\t0\t0\n"),
        )
        .unwrap();
        std::fs::write(dir.join("cmdline"), cmdline).unwrap();
    }
}

#[test]
fn lists_tethers_descendants_as_ps_ef_does() {
    let p = FakeProc::new();
    p.add(1, "tether", 'S', 0, 0, 0, (5, 5), 1, b"/init\0");
    p.add(2, "kthreadd", 'S', 0, 0, 0, (0, 0), 1, b"");
    p.add(3, "kworker/0:0", 'I', 2, 0, 0, (0, 0), 1, b"");
    // The main session on a pty, started 100 s after boot.
    p.add(
        50,
        "sh",
        'S',
        1,
        0,
        34_816,
        (1, 2),
        100 * HZ,
        b"sh\0-c\0sleep 30; echo done\0",
    );
    // Its child: 2 s of CPU over 450 s of life is 0 %; 9000 s of CPU over 900 s is capped at 99.
    p.add(
        51,
        "sleep",
        'S',
        50,
        33,
        0,
        (150, 50),
        550 * HZ,
        b"sleep\x0030\0",
    );
    p.add(
        53,
        "busy",
        'R',
        50,
        4242,
        1025,
        (800_000, 100_000),
        100 * HZ,
        b"busy\0",
    );
    // A zombie (no cmdline), with a command name that holds ") (".
    p.add(52, "odd) (name", 'Z', 50, 0, 0, (0, 0), 600 * HZ, b"");
    // A built-in of tether's, and a process that is not tether's.
    p.add(60, "tether", 'R', 1, 0, 0, (0, 0), 990 * HZ, b"/init\0");
    p.add(70, "other", 'S', 999, 0, 0, (0, 0), 1, b"other\0");
    std::fs::create_dir_all(p.0.path().join("self")).unwrap();

    let users = BTreeMap::from([(0, "root".to_string()), (33, "www".to_string())]);
    let rows = list(&Listing {
        proc_dir: p.0.path(),
        users: &users,
        tether: 1,
        hide: &[60],
        clk_tck: HZ,
        now: BOOT + 1000,
    })
    .unwrap();
    let row = |cells: [&str; 8]| cells.map(String::from);
    assert_eq!(
        rows,
        [
            row([
                "root",
                "50",
                "1",
                "0",
                "22:15",
                "pts/0",
                "00:00:00",
                "sh -c sleep 30; echo done"
            ]),
            row(["www", "51", "50", "0", "22:22", "?", "00:00:02", "sleep 30"]),
            row([
                "root",
                "52",
                "50",
                "0",
                "22:23",
                "?",
                "00:00:00",
                "[odd) (name] <defunct>"
            ]),
            row(["4242", "53", "50", "99", "22:15", "tty1", "02:30:00", "busy"]),
        ]
    );
    let json = to_json(&rows[1..2]);
    assert_eq!(
        json,
        "{\"Titles\":[\"UID\",\"PID\",\"PPID\",\"C\",\"STIME\",\"TTY\",\"TIME\",\"CMD\"],\
         \"Processes\":[[\"www\",\"51\",\"50\",\"0\",\"22:22\",\"?\",\"00:00:02\",\"sleep 30\"]]}\n"
    );
    assert_eq!(to_json(&[]).trim_end(), "{\"Titles\":[\"UID\",\"PID\",\"PPID\",\"C\",\"STIME\",\"TTY\",\"TIME\",\"CMD\"],\"Processes\":[]}");
}

#[test]
fn a_missing_proc_is_an_error_not_an_empty_list() {
    let d = TestDir::new("noproc");
    let users = BTreeMap::new();
    let l = Listing {
        proc_dir: &d.path().join("proc"),
        users: &users,
        tether: 1,
        hide: &[],
        clk_tck: HZ,
        now: BOOT,
    };
    assert!(list(&l).unwrap_err().to_string().starts_with("reading "));
}

#[test]
fn columns_are_formatted_as_ps_formats_them() {
    assert_eq!(cpu_time(0), "00:00:00");
    assert_eq!(cpu_time(3 * 3600 + 4 * 60 + 5), "03:04:05");
    assert_eq!(cpu_time(2 * 86_400 + 61), "2-00:01:01");
    assert_eq!(start_time(BOOT, BOOT + 60), "22:13");
    assert_eq!(start_time(BOOT - 86_400 * 30, BOOT), "Oct15");
    assert_eq!(start_time(BOOT - 86_400 * 365, BOOT), "2022");
    assert_eq!(tty_name(0), "?");
    assert_eq!(tty_name((136 << 8) | 3), "pts/3");
    assert_eq!(tty_name((137 << 8) | 1), "pts/257");
    assert_eq!(tty_name((4 << 8) | 65), "ttyS1");
    assert_eq!(tty_name((5 << 8) | 1), "console");
    assert_eq!(parse_euid("Uid:\t1\t2\t3\t4\n"), Some(2));
    assert!(parse_stat("garbage").is_none());
}

#[test]
fn ps_args_are_ef_or_nothing() {
    for ok in ["", "-ef", "-fe", "-e -f", " -A  -f ", "-efe"] {
        assert!(check_ps_args(ok).is_ok(), "{ok:?}");
    }
    for bad in ["aux", "-e", "-f", "-ef x", "-", "-eo pid", "-ej"] {
        let e = check_ps_args(bad).unwrap_err().to_string();
        assert!(e.starts_with("unsupported ps_args"), "{bad:?}: {e}");
    }
}
