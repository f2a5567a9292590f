//! OpenTelemetry tracing shared by the control plane and the data plane:
//! the OTLP exporter set up from the standard `OTEL_*` variables, the
//! switch that request paths check before making a span, and W3C trace
//! context (`traceparent`, `tracestate`) read from and written to HTTP
//! headers.
//!
//! Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set: then no tracer exists,
//! [`enabled`] is false and request paths make no span at all.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::LazyLock;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Set once a tracer is installed; read on every request.
static ENABLED: AtomicBool = AtomicBool::new(false);

static PROPAGATOR: LazyLock<TraceContextPropagator> = LazyLock::new(TraceContextPropagator::new);

/// Whether spans are exported. Request paths make spans only when true, so
/// that tracing costs one load when it is off.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Why tracing could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter refused its settings (endpoint, headers, ...).
    #[error("cannot set up the OTLP trace exporter: {0}")]
    Exporter(String),
    /// `OTEL_TRACES_SAMPLER_ARG` is not a ratio between 0 and 1.
    #[error("OTEL_TRACES_SAMPLER_ARG {0:?} is not a ratio between 0 and 1")]
    SamplerRatio(String),
    /// The exporter needs a tokio runtime and none is running.
    #[error("OTLP export needs to be set up inside the async runtime")]
    NoRuntime,
}

/// The export settings read from the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetrySettings {
    /// `service.name` of every span (`OTEL_SERVICE_NAME`, else the
    /// process's default).
    pub service_name: String,
    /// Head sampling ratio for new traces (`OTEL_TRACES_SAMPLER_ARG` when
    /// `OTEL_TRACES_SAMPLER` is unset); `None`: the SDK's choice from
    /// `OTEL_TRACES_SAMPLER`, by default every trace, following the
    /// caller's decision when there is one.
    pub ratio: Option<f64>,
}

impl TelemetrySettings {
    /// The settings for a process named `default_service`, or `None` when
    /// no OTLP endpoint is configured (tracing off).
    pub fn from_env(default_service: &str) -> Result<Option<Self>, TelemetryError> {
        let var =
            |value: Result<String, std::env::VarError>| value.ok().filter(|v| !v.trim().is_empty());
        Self::from_vars(
            default_service,
            OtelVars {
                endpoint: var(std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT"))
                    .or(var(std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))),
                service_name: var(std::env::var("OTEL_SERVICE_NAME")),
                sampler: var(std::env::var("OTEL_TRACES_SAMPLER")),
                sampler_arg: var(std::env::var("OTEL_TRACES_SAMPLER_ARG")),
            },
        )
    }

    fn from_vars(default_service: &str, vars: OtelVars) -> Result<Option<Self>, TelemetryError> {
        if vars.endpoint.is_none() {
            return Ok(None);
        }
        let service_name = vars
            .service_name
            .unwrap_or_else(|| default_service.to_string());
        let ratio = match (vars.sampler, vars.sampler_arg) {
            (None, Some(arg)) => match arg.trim().parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Some(r),
                _ => return Err(TelemetryError::SamplerRatio(arg)),
            },
            _ => None,
        };
        Ok(Some(TelemetrySettings {
            service_name,
            ratio,
        }))
    }
}

/// The `OTEL_*` variables read here (set and not blank); the exporter and
/// the SDK read their own (`OTEL_EXPORTER_OTLP_*`, `OTEL_BSP_*`, ...).
#[derive(Debug, Default)]
struct OtelVars {
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, else `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`.
    endpoint: Option<String>,
    service_name: Option<String>,
    sampler: Option<String>,
    sampler_arg: Option<String>,
}

/// The installed tracer, to flush at exit.
#[derive(Debug, Default)]
#[must_use = "spans still queued are lost unless `shutdown` is awaited"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    /// The log writer thread's guard: dropping it writes the last lines.
    log_writer: Option<tracing_appender::non_blocking::WorkerGuard>,
}

impl Telemetry {
    /// Keeps the log writer thread's guard until shutdown.
    pub(crate) fn keep_log_writer(
        &mut self,
        guard: Option<tracing_appender::non_blocking::WorkerGuard>,
    ) {
        self.log_writer = guard;
    }

    /// Whether spans are exported.
    pub fn is_on(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still queued and stops the exporter. The export
    /// runs on a blocking thread so that the runtime (which drives the
    /// gRPC connection) keeps running meanwhile, even a single-threaded one.
    /// Log lines still queued are written when this returns.
    pub async fn shutdown(mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        ENABLED.store(false, Ordering::Relaxed);
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(e)) = flushed {
            eprintln!("tracing: the last spans could not be exported: {e}");
        }
    }
}

/// The OpenTelemetry layer for `settings`, with the tracer behind it. Must
/// be called inside a tokio runtime (the gRPC channel's tasks run there).
pub(crate) fn layer<S>(
    settings: &TelemetrySettings,
) -> Result<
    (
        tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
        Telemetry,
    ),
    TelemetryError,
>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(TelemetryError::NoRuntime);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_protocol(opentelemetry_otlp::Protocol::Grpc)
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let resource = Resource::builder()
        .with_service_name(settings.service_name.clone())
        .build();
    let mut builder = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource);
    if let Some(ratio) = settings.ratio {
        builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))));
    }
    let provider = builder.build();
    let tracer = provider.tracer(env!("CARGO_PKG_NAME"));
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_threads(false)
        .with_location(false);
    ENABLED.store(true, Ordering::Relaxed);
    Ok((
        layer,
        Telemetry {
            provider: Some(provider),
            log_writer: None,
        },
    ))
}

/// Makes `span`'s parent the remote span named by `headers`' `traceparent`
/// (and `tracestate`), when they carry a valid one.
pub fn continue_from(span: &tracing::Span, headers: &http::HeaderMap) {
    if headers.contains_key("traceparent") {
        let cx = PROPAGATOR.extract(&HeaderExtractor(headers));
        // Fails only for a span that is disabled or already started.
        let _ = span.set_parent(cx);
    }
}

/// Renames `span` (the name of a span already started, e.g. a request's
/// once its route is known, cannot be set through its `otel.name` field).
pub fn rename(span: &tracing::Span, name: String) {
    use opentelemetry::trace::TraceContextExt as _;
    span.context().span().update_name(name);
}

/// Writes `span`'s trace context into `headers` as `traceparent` (and
/// `tracestate`), replacing what was there.
pub fn inject(span: &tracing::Span, headers: &mut http::HeaderMap) {
    let cx = span.context();
    PROPAGATOR.inject_context(&cx, &mut HeaderInjector(headers));
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) else {
            return;
        };
        self.0.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<Option<TelemetrySettings>, TelemetryError> {
        let vars: HashMap<&str, &str> = vars.iter().copied().collect();
        let get = |name: &str| {
            vars.get(name)
                .map(|v| v.to_string())
                .filter(|v| !v.trim().is_empty())
        };
        TelemetrySettings::from_vars(
            "data-plane",
            OtelVars {
                endpoint: get("OTEL_EXPORTER_OTLP_ENDPOINT")
                    .or(get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")),
                service_name: get("OTEL_SERVICE_NAME"),
                sampler: get("OTEL_TRACES_SAMPLER"),
                sampler_arg: get("OTEL_TRACES_SAMPLER_ARG"),
            },
        )
    }

    #[test]
    fn off_without_an_endpoint() {
        assert_eq!(settings(&[]), Ok(None));
        assert_eq!(settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]), Ok(None));
        assert_eq!(settings(&[("OTEL_SERVICE_NAME", "x")]), Ok(None));
    }

    #[test]
    fn service_name_defaults_to_the_process() {
        let on = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")])
            .unwrap()
            .unwrap();
        assert_eq!(on.service_name, "data-plane");
        assert_eq!(on.ratio, None);
        let named = settings(&[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4317"),
            ("OTEL_SERVICE_NAME", "edge"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(named.service_name, "edge");
    }

    #[test]
    fn sampler_ratio_is_read_and_checked() {
        let on = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(on.ratio, Some(0.25));
        for bad in ["1.5", "-0.1", "half"] {
            let err = settings(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_TRACES_SAMPLER_ARG", bad),
            ])
            .unwrap_err();
            assert_eq!(err, TelemetryError::SamplerRatio(bad.to_string()));
        }
        // With OTEL_TRACES_SAMPLER, the SDK reads the argument itself.
        let sdk = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(sdk.ratio, None);
    }

    #[test]
    fn headers_round_trip_through_the_propagator() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        );
        headers.insert("tracestate", http::HeaderValue::from_static("k=v"));
        let cx = PROPAGATOR.extract(&HeaderExtractor(&headers));
        let mut out = http::HeaderMap::new();
        PROPAGATOR.inject_context(&cx, &mut HeaderInjector(&mut out));
        assert_eq!(out.get("traceparent"), headers.get("traceparent"));
        assert_eq!(out.get("tracestate"), headers.get("tracestate"));
    }

    #[test]
    fn layer_refuses_to_start_outside_a_runtime() {
        let settings = TelemetrySettings {
            service_name: "x".into(),
            ratio: None,
        };
        let Err(err) = layer::<tracing_subscriber::Registry>(&settings) else {
            panic!("a layer was made outside a runtime");
        };
        assert_eq!(err, TelemetryError::NoRuntime);
        assert!(!enabled());
    }
}
