//! What every gateway process does the same way at start: its default
//! identity and its logging.

use crate::telemetry::{Telemetry, TelemetryError, TelemetrySettings};
use std::fmt;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
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
    install(level, format, target, None, false).map(|_| ())
}

/// Installs the global tracing subscriber as [`init_logging`] does and,
/// when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, the OpenTelemetry layer that
/// exports spans over OTLP (service name `OTEL_SERVICE_NAME`, else
/// `service`). Log lines are written by a thread of their own, batched
/// into few writes while they come fast, so a request never waits on
/// standard output. Must be called inside a tokio runtime; await
/// [`Telemetry::shutdown`] at exit to flush the last spans and lines.
pub fn init_logging_and_tracing(
    level: &str,
    format: LogFormat,
    target: LogTarget,
    service: &str,
) -> Result<Telemetry, LoggingError> {
    let settings = TelemetrySettings::from_env(service)?;
    install(level, format, target, settings.as_ref(), true)
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

fn install(
    level: &str,
    format: LogFormat,
    target: LogTarget,
    tracing: Option<&TelemetrySettings>,
    batched: bool,
) -> Result<Telemetry, LoggingError> {
    let filter = EnvFilter::try_new(level).map_err(|e| LoggingError::Level {
        level: level.to_string(),
        reason: e.to_string(),
    })?;
    let (writer, guard) = log_writer(target, batched);
    let mut layers = vec![log_layer(format, writer).with_filter(filter).boxed()];
    let mut telemetry = match tracing {
        Some(settings) => {
            let (layer, telemetry) = crate::telemetry::layer(settings)?;
            // Spans of every level that is not chatty: the gateway's own
            // request and RPC spans, and the events logged inside them.
            layers.push(layer.with_filter(LevelFilter::INFO).boxed());
            telemetry
        }
        None => Telemetry::default(),
    };
    telemetry.keep_log_writer(guard);
    tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .map_err(|e| LoggingError::Install(e.to_string()))?;
    Ok(telemetry)
}

/// Where the log layer writes: the stream itself, or (`batched`) a writer
/// thread with a 64 KiB buffer that it flushes whenever its queue is empty.
/// The queue never drops a line (security events must not be lost): when
/// it is full, logging waits, as a direct write would.
fn log_writer(target: LogTarget, batched: bool) -> (BoxMakeWriter, Option<WorkerGuard>) {
    if !batched {
        return match target {
            LogTarget::Stdout => (BoxMakeWriter::new(std::io::stdout), None),
            LogTarget::Stderr => (BoxMakeWriter::new(std::io::stderr), None),
        };
    }
    let stream: Box<dyn std::io::Write + Send> = match target {
        LogTarget::Stdout => Box::new(std::io::stdout()),
        LogTarget::Stderr => Box::new(std::io::stderr()),
    };
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("log-writer")
        .finish(std::io::BufWriter::with_capacity(64 * 1024, stream));
    (BoxMakeWriter::new(writer), Some(guard))
}

fn log_layer(format: LogFormat, writer: BoxMakeWriter) -> BoxedLayer {
    let layer = tracing_subscriber::fmt::layer();
    match format {
        LogFormat::Json => json(layer).with_writer(writer).boxed(),
        LogFormat::Pretty => layer.with_writer(writer).boxed(),
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
