//! The words docker's list and inspect use for where a container stands: `Up 5 minutes
//! (unhealthy)`, `Exited (3) About a minute ago`, and `State.Health`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::engine::health::Health;
use crate::store::state::{ContainerStatus, State};

/// `docker ps`'s STATUS column, as dockerd words it.
pub fn status_text(st: &State, health: Option<&Health>) -> String {
    let main = st.main();
    let since = |t: Option<&String>| t.and_then(|t| ago(t)).map(human_duration);
    match st.status {
        ContainerStatus::Running => {
            let mut text = match since(main.map(|m| &m.started_at)) {
                Some(d) => format!("Up {d}"),
                None => "Up".into(),
            };
            if let Some(h) = health {
                if h.is_unhealthy() {
                    text.push_str(" (unhealthy)");
                } else if h.store_error.is_some() {
                    text.push_str(" (log store full)");
                }
            }
            text
        }
        ContainerStatus::Exited | ContainerStatus::Failed => {
            let code = main.and_then(|m| m.exit_code).unwrap_or(0);
            match since(main.map(|m| &m.finished_at)) {
                Some(d) => format!("Exited ({code}) {d} ago"),
                None => format!("Exited ({code})"),
            }
        }
        ContainerStatus::Created => "Created".into(),
    }
}

/// `State.Health` of a running container: tether's channel is its health check.
pub fn health_json(health: &Health, threshold: Duration, now: &str) -> Value {
    let unhealthy = health.is_unhealthy();
    json!({
        "Status": if unhealthy { "unhealthy" } else { "healthy" },
        "FailingStreak": u32::from(unhealthy),
        "Log": [{
            "Start": now,
            "End": now,
            "ExitCode": i32::from(unhealthy),
            "Output": health.describe(threshold),
        }],
    })
}

/// How long ago the RFC 3339 time `t` was; None if it is not a time.
fn ago(t: &str) -> Option<Duration> {
    let then =
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()?;
    let d = time::OffsetDateTime::now_utc() - then;
    Some(Duration::from_secs_f64(d.as_seconds_f64().max(0.0)))
}

/// docker's (go-units') `HumanDuration`: "Less than a second", "About a minute", "3 hours".
pub fn human_duration(d: Duration) -> String {
    let seconds = d.as_secs();
    let minutes = seconds / 60;
    let hours = (d.as_secs_f64() / 3600.0 + 0.5) as u64;
    match () {
        _ if seconds < 1 => "Less than a second".into(),
        _ if seconds == 1 => "1 second".into(),
        _ if seconds < 60 => format!("{seconds} seconds"),
        _ if minutes == 1 => "About a minute".into(),
        _ if minutes < 60 => format!("{minutes} minutes"),
        _ if hours == 1 => "About an hour".into(),
        _ if hours < 48 => format!("{hours} hours"),
        _ if hours < 24 * 7 * 2 => format!("{} days", hours / 24),
        _ if hours < 24 * 30 * 2 => format!("{} weeks", hours / 24 / 7),
        _ if hours < 24 * 365 * 2 => format!("{} months", hours / 24 / 30),
        _ => format!("{} years", seconds / 3600 / 24 / 365),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_dockers() {
        for (secs, want) in [
            (0, "Less than a second"),
            (1, "1 second"),
            (59, "59 seconds"),
            (60, "About a minute"),
            (119, "About a minute"),
            (120, "2 minutes"),
            (3599, "59 minutes"),
            (3600, "About an hour"),
            (5399, "About an hour"),
            (5400, "2 hours"),
            (47 * 3600, "47 hours"),
            (48 * 3600, "2 days"),
            (14 * 24 * 3600, "2 weeks"),
            (60 * 24 * 3600, "2 months"),
            (2 * 365 * 24 * 3600, "2 years"),
        ] {
            assert_eq!(human_duration(Duration::from_secs(secs)), want, "{secs} s");
        }
    }

    #[test]
    fn running_says_unhealthy_before_store_full_and_exited_says_when() {
        let mut st = State::for_boot("ab");
        st.status = ContainerStatus::Running;
        let main = st.sessions.entry(1).or_default();
        main.started_at = crate::store::logs::now_rfc3339().0;
        let both = Health {
            unresponsive_for: Some(Duration::from_secs(40)),
            store_error: Some("full".into()),
        };
        assert_eq!(
            status_text(&st, Some(&both)),
            "Up Less than a second (unhealthy)"
        );
        let full = Health {
            store_error: Some("full".into()),
            ..Default::default()
        };
        assert_eq!(
            status_text(&st, Some(&full)),
            "Up Less than a second (log store full)"
        );
        st.status = ContainerStatus::Exited;
        let main = st.sessions.get_mut(&1).unwrap();
        main.exit_code = Some(3);
        main.finished_at = "2020-01-01T00:00:00Z".into();
        assert!(
            status_text(&st, None).starts_with("Exited (3) "),
            "{}",
            status_text(&st, None)
        );
        assert!(status_text(&st, None).ends_with(" years ago"));
    }
}
