//! `docker ps --filter`: docker's filter JSON (`{"status":{"exited":true}}`, or the older
//! `{"status":["exited"]}`), matched against a container the way dockerd matches: values of one
//! key are alternatives, different keys must all hold.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::engine::EngineError;
use crate::store::records::Record;
use crate::store::state::State;

/// The keys this engine filters on.
const KEYS: &[&str] = &["status", "name", "id", "label", "ancestor", "exited"];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters(BTreeMap<String, Vec<String>>);

impl Filters {
    /// Parses the `filters` query value (empty: no filters).
    pub fn parse(text: &str) -> Result<Self, EngineError> {
        Self::parse_with(text, KEYS)
    }

    /// Parses a `filters` value whose keys must be among `keys`.
    pub fn parse_with(text: &str, keys: &[&str]) -> Result<Self, EngineError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let v: Value = serde_json::from_str(text)
            .map_err(|e| EngineError::BadRequest(format!("invalid filters {text:?}: {e}")))?;
        let obj = v.as_object().ok_or_else(|| {
            EngineError::BadRequest(format!("invalid filters {text:?}: not an object"))
        })?;
        let mut out = BTreeMap::new();
        for (key, values) in obj {
            if !keys.contains(&key.as_str()) {
                return Err(EngineError::BadRequest(format!("invalid filter '{key}'")));
            }
            let values: Vec<String> = match values {
                Value::Object(m) => m
                    .iter()
                    .filter(|(_, on)| on.as_bool().unwrap_or(false))
                    .map(|(k, _)| k.clone())
                    .collect(),
                Value::Array(a) => a
                    .iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect(),
                _ => return Err(EngineError::BadRequest(format!("invalid filter '{key}'"))),
            };
            if key == "status" {
                if let Some(bad) = values.iter().find(|s| !STATUSES.contains(&s.as_str())) {
                    return Err(EngineError::BadRequest(format!(
                        "invalid filter 'status={bad}'"
                    )));
                }
            }
            out.insert(key.clone(), values);
        }
        Ok(Self(out))
    }

    /// The values given for `key` (none: no such filter).
    pub fn values(&self, key: &str) -> &[String] {
        self.0.get(key).map_or(&[], Vec::as_slice)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a status filter is given (then stopped containers are listed without `-a`).
    pub fn names_status(&self) -> bool {
        self.0.contains_key("status") || self.0.contains_key("exited")
    }

    /// Whether the container passes. `image_matches` answers the ancestor filter for one value.
    pub fn matches(&self, rec: &Record, st: &State, image_matches: impl Fn(&str) -> bool) -> bool {
        self.0.iter().all(|(key, values)| {
            values.iter().any(|v| match key.as_str() {
                "status" => st.status.docker_word() == v,
                "name" => rec.name.contains(v.trim_start_matches('/')),
                "id" => rec.id.starts_with(v.as_str()),
                "label" => match v.split_once('=') {
                    Some((k, want)) => rec.options.labels.get(k).is_some_and(|x| x == want),
                    None => rec.options.labels.contains_key(v),
                },
                "ancestor" => rec.image == *v || image_matches(v),
                "exited" => {
                    st.status.is_finished()
                        && st
                            .main()
                            .and_then(|m| m.exit_code)
                            .map(|c| c.to_string())
                            .as_deref()
                            == Some(v.as_str())
                }
                _ => false,
            })
        })
    }
}

const STATUSES: &[&str] = &[
    "created",
    "restarting",
    "running",
    "removing",
    "paused",
    "exited",
    "dead",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::state::{ContainerStatus, SessionState};

    fn rec(name: &str, labels: &[(&str, &str)]) -> Record {
        Record {
            id: format!("{name}0123456789"),
            name: name.into(),
            secret: String::new(),
            created: String::new(),
            path: "/bin/true".into(),
            args: vec!["/bin/true".into()],
            env: vec![],
            tty: false,
            open_stdin: false,
            image: "busybox".into(),
            options: crate::store::records::ContainerOptions {
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            },
            restart_count: 0,
        }
    }

    fn exited(code: i32) -> State {
        let mut st = State::for_boot("b");
        st.status = ContainerStatus::Exited;
        st.sessions.insert(
            1,
            SessionState {
                exit_code: Some(code),
                ..Default::default()
            },
        );
        st
    }

    #[test]
    fn keys_are_anded_and_values_ored_in_both_json_forms() {
        let f = Filters::parse(r#"{"status":{"exited":true},"label":["tier=web","x"]}"#).unwrap();
        let none = |_: &str| false;
        assert!(f.matches(&rec("a", &[("tier", "web")]), &exited(0), none));
        assert!(f.matches(&rec("b", &[("x", "1")]), &exited(0), none));
        assert!(!f.matches(&rec("c", &[("tier", "db")]), &exited(0), none));
        let running = State {
            status: ContainerStatus::Running,
            ..Default::default()
        };
        assert!(!f.matches(&rec("a", &[("tier", "web")]), &running, none));
        let f = Filters::parse(r#"{"name":["web"],"exited":["3"]}"#).unwrap();
        assert!(f.matches(&rec("myweb1", &[]), &exited(3), none));
        assert!(!f.matches(&rec("myweb1", &[]), &exited(0), none));
        let f = Filters::parse(r#"{"ancestor":["sha256:1"]}"#).unwrap();
        assert!(f.matches(&rec("a", &[]), &exited(0), |v| v == "sha256:1"));
        assert!(Filters::parse(r#"{"status":["sleepy"]}"#).is_err());
        assert!(Filters::parse(r#"{"colour":["red"]}"#).is_err());
        assert!(Filters::parse("").unwrap().is_empty());
    }
}
