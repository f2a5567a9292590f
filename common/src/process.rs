//! What every gateway process does the same way at start: its default
//! identity and its logging.

use crate::telemetry::{Telemetry, TelemetryError, TelemetrySettings};
use std::fmt;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry};

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
    /// The OpenTelemetry settings (`OTEL_*`) are not usable.
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
}

/// Installs the global tracing subscriber: `level` is a level (`info`) or a
/// filter (`control_plane=debug,info`).
pub fn init_logging(level: &str, format: LogFormat, target: LogTarget) -> Result<(), LoggingError> {
    install(level, format, target, None).map(|_| ())
}

/// Installs the global tracing subscriber as [`init_logging`] does and,
/// when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, the OpenTelemetry layer that
/// exports spans over OTLP (service name `OTEL_SERVICE_NAME`, else
/// `service`). Must be called inside a tokio runtime; await
/// [`Telemetry::shutdown`] at exit to flush the last spans.
pub fn init_logging_and_tracing(
    level: &str,
    format: LogFormat,
    target: LogTarget,
    service: &str,
) -> Result<Telemetry, LoggingError> {
    let settings = TelemetrySettings::from_env(service)?;
    install(level, format, target, settings.as_ref())
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

fn install(
    level: &str,
    format: LogFormat,
    target: LogTarget,
    tracing: Option<&TelemetrySettings>,
) -> Result<Telemetry, LoggingError> {
    let filter = EnvFilter::try_new(level).map_err(|e| LoggingError::Level {
        level: level.to_string(),
        reason: e.to_string(),
    })?;
    let mut layers = vec![log_layer(format, target).with_filter(filter).boxed()];
    let telemetry = match tracing {
        Some(settings) => {
            let (layer, telemetry) = crate::telemetry::layer(settings)?;
            // Spans of every level that is not chatty: the gateway's own
            // request and RPC spans, and the events logged inside them.
            layers.push(layer.with_filter(LevelFilter::INFO).boxed());
            telemetry
        }
        None => Telemetry::default(),
    };
    tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .map_err(|e| LoggingError::Install(e.to_string()))?;
    Ok(telemetry)
}

fn log_layer(format: LogFormat, target: LogTarget) -> BoxedLayer {
    let layer = tracing_subscriber::fmt::layer();
    match (format, target) {
        (LogFormat::Json, LogTarget::Stdout) => json(layer).with_writer(std::io::stdout).boxed(),
        (LogFormat::Json, LogTarget::Stderr) => json(layer).with_writer(std::io::stderr).boxed(),
        (LogFormat::Pretty, LogTarget::Stdout) => layer.with_writer(std::io::stdout).boxed(),
        (LogFormat::Pretty, LogTarget::Stderr) => layer.with_writer(std::io::stderr).boxed(),
    }
}

/// One JSON object per line with the event's fields at the top level; the
/// spans an event is in (when tracing is on) are left out so that lines
/// keep one shape.
fn json(
    layer: tracing_subscriber::fmt::Layer<Registry>,
) -> tracing_subscriber::fmt::Layer<
    Registry,
    tracing_subscriber::fmt::format::JsonFields,
    tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Json>,
> {
    layer
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
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
