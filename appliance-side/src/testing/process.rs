//! The tests' view of a command they ran (docker, skopeo, podman, the appliance's CLI): its
//! output as text, and the check that it succeeded, which shows all of it when it did not.

use std::process::Output;

/// Bytes a command wrote, as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Panics unless the command `what` succeeded, with its stdout and stderr and then `context`
/// (a server's log, say); its stdout.
pub fn succeeded(out: &Output, what: &str, context: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}\n{context}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Panics unless the command failed with exit code `code` (`None`: any failure) and its stderr
/// says `says`, showing all it wrote when not.
pub fn failed(out: &Output, code: Option<i32>, says: &str) {
    let err = text(&out.stderr);
    let code_ok = match code {
        Some(c) => out.status.code() == Some(c),
        None => !out.status.success(),
    };
    assert!(
        code_ok && err.contains(says),
        "expected a failure{} saying {says:?}; got {}: {}{err}",
        code.map(|c| format!(" with exit code {c}"))
            .unwrap_or_default(),
        out.status,
        text(&out.stdout),
    );
}

/// Runs `script` with `sh -ec` on the host (a fixture step: mknod, setfattr, ...); panics
/// with its output unless it succeeded.
pub fn host_script(script: &str) {
    let out = std::process::Command::new("sh")
        .args(["-ec", script])
        .output()
        .expect("running sh");
    succeeded(&out, script, "");
}
