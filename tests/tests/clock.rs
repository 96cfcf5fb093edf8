//! Time: a containerVM whose RTC starts years off (`-rtc base=2019-01-01`, the backend's test
//! knob) runs on the appliance's clock once its channel is up: `date +%s` in the container is
//! within a second of the host's, at once and again after the appliance was down a while and
//! came back. Start times in inspect are the appliance's.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use e2e::{named_sh, text, Appliance, Transport};

fn host_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The container's `date +%s`, and the host's seconds just before and after asking.
fn guest_time(app: &Appliance) -> (u64, u64, u64) {
    let before = host_secs();
    let out = app.docker(&["exec", "clock", "date", "+%s"]);
    let after = host_secs();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let guest: u64 = text(&out.stdout).trim().parse().unwrap();
    (before, guest, after)
}

fn assert_within_a_second(app: &Appliance, when: &str) {
    let (before, guest, after) = guest_time(app);
    assert!(
        guest + 1 >= before && guest <= after + 1,
        "{when}: the container says {guest}, the host {before}..{after}"
    );
}

#[test]
fn a_vm_booted_with_its_rtc_years_off_keeps_the_appliances_time_across_an_appliance_restart() {
    // Read by qemu_args when this test's VM is launched (the only test in this binary).
    std::env::set_var("TETHER_TEST_RTC_BASE", "2019-01-01");
    let mut app = Appliance::start_process("clock");
    let id = app.run_on(
        named_sh("clock", "while :; do sleep 1; done"),
        Transport::Virtio,
        "containerfs",
    );
    app.wait_status(&id, 90, "running");
    assert_within_a_second(&app, "after boot");
    let started = app.inspect("clock", "{{.State.StartedAt}}");
    assert!(
        started.starts_with(&format!("{}", time_year())),
        "StartedAt {started}"
    );
    // The appliance is away for a while; the VM keeps running; the appliance comes back.
    app.kill_server();
    std::thread::sleep(Duration::from_secs(15));
    app.restart_server();
    app.wait_for(&id, 60, |s| s["link"]["connections"].as_u64() >= Some(2));
    assert_within_a_second(&app, "after the appliance came back");
    assert!(app.docker(&["kill", "clock"]).status.success());
}

/// This year, as the host says (StartedAt is the appliance's clock, not the guest's 2019).
fn time_year() -> u64 {
    // Days since the epoch to a Gregorian year (valid 1970..2100).
    let days = host_secs() / 86_400;
    let mut year = 1970;
    let mut d = days;
    loop {
        let len = if year % 4 == 0 { 366 } else { 365 };
        if d < len {
            return year;
        }
        d -= len;
        year += 1;
    }
}
