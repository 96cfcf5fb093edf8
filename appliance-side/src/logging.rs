//! The daemon's own log: levelled, structured records on stderr (`appliance.log` when detached),
//! as text for people or JSON lines for collectors. Every record about one container carries
//! its id as the `container` field.

use std::str::FromStr;

use thiserror::Error;
use tracing_subscriber::EnvFilter;

/// How records are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LogError {
    #[error("log format {0:?}: use text or json")]
    Format(String),
    #[error("log level {level:?}: {reason} (use error, warn, info, debug, trace, or a RUST_LOG filter such as appliance=debug)")]
    Level { level: String, reason: String },
}

impl FromStr for LogFormat {
    type Err = LogError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(LogError::Format(other.to_string())),
        }
    }
}

/// The filter: `--log-level` if given, else `RUST_LOG`, else `info`.
pub fn filter(level: Option<&str>) -> Result<EnvFilter, LogError> {
    let spec = level
        .map(str::to_string)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".into());
    EnvFilter::try_new(&spec).map_err(|e| LogError::Level {
        level: spec,
        reason: e.to_string(),
    })
}

/// Installs the process-wide subscriber (once; later calls change nothing).
pub fn init(level: Option<&str>, format: LogFormat) -> Result<(), LogError> {
    let filter = filter(level)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_levels_parse_or_name_what_is_wrong() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        let e = "xml".parse::<LogFormat>().unwrap_err();
        assert!(e.to_string().contains("\"xml\""), "{e}");
        assert!(filter(Some("debug")).is_ok());
        assert!(filter(Some("appliance=trace,warn")).is_ok());
        let e = filter(Some("appliance=loudest")).unwrap_err();
        assert!(e.to_string().contains("loudest"), "{e}");
    }
}
