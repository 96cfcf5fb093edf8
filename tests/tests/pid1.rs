//! PID 1 under stress, in real containerVMs: a main process that leaves 1000 children behind, a
//! session that closes its stdout early, a channel device that does not exist. Tether reaps,
//! reports, and powers off (or carries on) as it should; the kernel never panics.

use e2e::{named_sh, text, Appliance};

#[test]
fn a_main_process_that_forks_a_thousand_children_and_exits_is_reaped_and_reported() {
    let mut app = Appliance::start("fork1000");
    let id = app.run(
        // The children hold the stdout pipe open: tether must stop them to finish.
        named_sh(
            "forker",
            "i=0; while [ $i -lt 1000 ]; do sleep 1000 & i=$((i+1)); done; echo forked $i; exit 4",
        ),
    );
    app.wait_exit(&id, 180, 4);
    let console = app.powered_off_console(&id, 120);
    assert_eq!(app.logs("forker"), "forked 1000\n");
    assert!(
        console.contains("reboot: Power down"),
        "a clean power-off:\n{console}"
    );
}

#[test]
fn a_session_that_closes_its_stdout_early_keeps_running() {
    let mut app = Appliance::start("closeout");
    let id = app.run(named_sh(
        "closer",
        "echo before; exec 1>&-; sleep 2; echo still-running >&2; exit 6",
    ));
    app.wait_exit(&id, 120, 6);
    let logs = app.docker(&["logs", "closer"]);
    assert_eq!(text(&logs.stdout), "before\n");
    assert_eq!(text(&logs.stderr), "still-running\n");
    assert_eq!(app.wait_vms_off(60), vec![0]);
}

#[test]
fn a_missing_channel_device_is_named_on_the_console_and_the_vm_powers_off() {
    let mut app = Appliance::start("nochan");
    let id = app.run_with_config_edit(named_sh("nochan", "echo unreachable"), |vmx| {
        let key = "guestinfo.vice./channel/device";
        let kept: String = vmx
            .lines()
            .filter(|l| !l.starts_with(key))
            .map(|l| format!("{l}\n"))
            .collect();
        format!("{kept}{key} = \"/dev/no-such-port\"\n")
    });
    let console = app.powered_off_console(&id, 120);
    assert!(
        console.contains("cannot open the channel /dev/no-such-port"),
        "the console names the device:\n{console}"
    );
    assert_eq!(
        app.state(&id)["connected"],
        serde_json::Value::Null,
        "it never connected"
    );
}
