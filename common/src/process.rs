//! What every gateway process does the same way at start: its default
//! identity and its logging.

use std::fmt;

/// `hostname-pid`: the default replica id of a control plane and node id of
/// a data plane. `fallback` names the host when no hostname can be read.
pub fn hostname_pid(fallback: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| fallback.to_string());
    format!("{host}-{}", std::process::id())
}

/// Log output format (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, event fields at the top level.
    Json,
    /// Human-readable lines, coloured when on a terminal.
    Pretty,
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// Standard output; standard error stays free for a failed start's one-line reason.
    Stdout,
    /// Standard error, for a process whose standard output is for people (`gwctl dev`).
    Stderr,
}

/// Why logging could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoggingError {
    /// `LOG_LEVEL` is neither a level nor a tracing filter.
    #[error("LOG_LEVEL {level:?} is not a level or filter: {reason}")]
    Level {
        /// The value given.
        level: String,
        /// The parser's complaint.
        reason: String,
    },
    /// A global subscriber was already installed.
    #[error("cannot install the logger: {0}")]
    Install(String),
}

/// Installs the global tracing subscriber: `level` is a level (`info`) or a
/// filter (`control_plane=debug,info`).
pub fn init_logging(level: &str, format: LogFormat, target: LogTarget) -> Result<(), LoggingError> {
    let filter =
        tracing_subscriber::EnvFilter::try_new(level).map_err(|e| LoggingError::Level {
            level: level.to_string(),
            reason: e.to_string(),
        })?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let installed = match (format, target) {
        (LogFormat::Json, LogTarget::Stdout) => {
            json(builder).with_writer(std::io::stdout).try_init()
        }
        (LogFormat::Json, LogTarget::Stderr) => {
            json(builder).with_writer(std::io::stderr).try_init()
        }
        (LogFormat::Pretty, LogTarget::Stdout) => builder.with_writer(std::io::stdout).try_init(),
        (LogFormat::Pretty, LogTarget::Stderr) => builder.with_writer(std::io::stderr).try_init(),
    };
    installed.map_err(|e| LoggingError::Install(e.to_string()))
}

type FmtBuilder = tracing_subscriber::fmt::SubscriberBuilder<
    tracing_subscriber::fmt::format::DefaultFields,
    tracing_subscriber::fmt::format::Format,
    tracing_subscriber::EnvFilter,
>;

fn json(
    builder: FmtBuilder,
) -> tracing_subscriber::fmt::SubscriberBuilder<
    tracing_subscriber::fmt::format::JsonFields,
    tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Json>,
    tracing_subscriber::EnvFilter,
> {
    builder.json().flatten_event(true).with_current_span(false)
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Json => "json",
            LogFormat::Pretty => "pretty",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_pid_ends_with_the_pid() {
        let id = hostname_pid("x");
        assert!(id.ends_with(&format!("-{}", std::process::id())), "{id}");
        assert!(id.len() > format!("-{}", std::process::id()).len());
    }

    #[test]
    fn a_bad_level_is_refused_with_its_value() {
        let err = init_logging("info,=[", LogFormat::Json, LogTarget::Stdout).unwrap_err();
        assert!(err.to_string().contains("info,=["), "{err}");
    }
}
