//! Prometheus metrics of the data plane.
//!
//! Per-request recording goes through handles cached per route
//! ([`RouteMetrics`]) and per service ([`UpstreamErrorMetrics`]), so the hot
//! path touches atomics only: no label set is built, no lock taken, no string
//! allocated, except the first time an unusual method or status is seen.

use gateway_common::metrics::UpdateKindLabel;
use http::{Method, StatusCode};
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Labels of `gateway_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route name; empty when no route matched.
    pub route: Arc<String>,
    /// Service name; empty when no route matched.
    pub service: Arc<String>,
    /// Request method.
    pub method: String,
    /// Response status code.
    pub status: u16,
}

/// Labels of per-route series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Route name.
    pub route: Arc<String>,
    /// Service name.
    pub service: Arc<String>,
}

/// Labels of `gateway_upstream_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    /// Service name.
    pub service: Arc<String>,
    /// What went wrong (see [`UpstreamErrorKind`]).
    pub kind: &'static str,
}

/// Labels of per-service resilience series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// Service name.
    pub service: Arc<String>,
}

/// Labels of `gateway_config_updates_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpdateLabels {
    /// See [`UpdateResult`].
    pub result: &'static str,
}

/// What became of a config update, as counted in
/// `gateway_config_updates_total{result}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateResult {
    /// In force.
    Applied,
    /// Refused for its content (NACKed with a reason); the config held
    /// serves on.
    Rejected,
    /// A delta that does not start from the version held; a snapshot was
    /// asked for (the stream heals itself).
    OutOfSequence,
}

impl UpdateResult {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Rejected => "rejected",
            Self::OutOfSequence => "out_of_sequence",
        }
    }
}

/// Labels of `gateway_cache_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// Route name.
    pub route: Arc<String>,
    /// `hit`, `miss` or `bypass`.
    pub result: &'static str,
}

/// Labels of `gateway_config_source`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// `none`, `control_plane`, `cache` or `file`.
    pub source: &'static str,
}

/// Labels of `gateway_config_cache_writes_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `error`.
    pub result: &'static str,
}

/// A gauge holding seconds.
pub type SecondsGauge = Gauge<f64, AtomicU64>;

/// Kinds of upstream failure, as counted in metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// No response head within the timeout.
    Timeout,
    /// The TCP connection was refused.
    ConnectRefused,
    /// The TCP connection did not open within the connect timeout.
    ConnectTimeout,
    /// Any other failure to connect.
    Connect,
    /// The TLS handshake with an `https://` instance failed (certificate
    /// refused, handshake broken off).
    Tls,
    /// The exchange failed after connecting.
    Protocol,
}

impl UpstreamErrorKind {
    const ALL: [UpstreamErrorKind; 6] = [
        Self::Timeout,
        Self::ConnectRefused,
        Self::ConnectTimeout,
        Self::Connect,
        Self::Tls,
        Self::Protocol,
    ];

    /// Whether no connection could be made (TCP or TLS), so the request
    /// never reached the instance (`retry_on: connect-failure`).
    pub fn is_connect_failure(self) -> bool {
        matches!(
            self,
            Self::ConnectRefused | Self::ConnectTimeout | Self::Connect | Self::Tls
        )
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::ConnectRefused => "connect_refused",
            Self::ConnectTimeout => "connect_timeout",
            Self::Connect => "connect_error",
            Self::Tls => "tls_error",
            Self::Protocol => "protocol_error",
        }
    }
}

/// Upper bounds (microseconds) of the latency buckets.
const LATENCY_BOUNDS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

#[derive(Debug, Default)]
struct HistogramCells {
    buckets: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

/// A latency histogram recorded with relaxed atomics only (prometheus-client's
/// own histogram takes a lock on every observation).
#[derive(Debug, Clone, Default)]
pub struct LatencyHistogram {
    cells: Arc<HistogramCells>,
}

impl LatencyHistogram {
    /// Records one duration.
    pub fn observe(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let slot = LATENCY_BOUNDS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(LATENCY_BOUNDS_US.len());
        self.cells.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.cells.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.cells
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut buckets = [(0.0, 0u64); LATENCY_BOUNDS_US.len() + 1];
        let mut count = 0;
        for (i, cell) in self.cells.buckets.iter().enumerate() {
            let n = cell.load(Ordering::Relaxed);
            count += n;
            let bound = LATENCY_BOUNDS_US
                .get(i)
                .map_or(f64::MAX, |&us| us as f64 / 1e6);
            buckets[i] = (bound, n);
        }
        let sum = self.cells.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Every metric of a data plane, registered in one registry.
pub struct Metrics {
    /// The unprefixed root: `process_*` there, `gateway_*` in a sub-registry.
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, LatencyHistogram>,
    upstream_errors: Family<UpstreamErrorLabels, Counter>,
    updates: Family<UpdateLabels, Counter>,
    breaker_state: Family<ServiceLabels, Gauge>,
    breaker_rejections: Family<ServiceLabels, Counter>,
    retries: Family<ServiceLabels, Counter>,
    retry_budget_exhausted: Family<ServiceLabels, Counter>,
    ejections: Family<ServiceLabels, Counter>,
    upstream_attempts: Family<ServiceLabels, Counter>,
    /// Client connections open on the public listener.
    pub open_connections: Gauge,
    /// Requests being handled.
    pub in_flight: Gauge,
    /// Version of the config applied last.
    pub config_version: Gauge,
    /// Instances known (routable or not) at that version.
    pub instances: Gauge,
    /// 1 while the Discovery stream is up.
    pub control_plane_connected: Gauge,
    /// 1 while `/health/ready` answers 200 (set at every scrape).
    pub ready: Gauge,
    /// Discovery updates received, by kind.
    pub updates_received: Family<UpdateKindLabel, Counter>,
    /// Encoded bytes of the Discovery updates received, by kind.
    pub update_bytes: Family<UpdateKindLabel, Counter>,
    /// Time the last update of each kind took to apply, from the decoded
    /// message to the new snapshot being in force.
    pub apply_seconds: Family<UpdateKindLabel, SecondsGauge>,
    /// From opening the Discovery connection to the first update applied,
    /// for the last session that received one.
    pub sync_seconds: SecondsGauge,
    /// From the start of the data plane to its first config applied.
    pub ready_seconds: SecondsGauge,
    /// 1 for where the config in force came from, 0 for the other sources.
    config_source: Family<SourceLabels, Gauge>,
    /// Writes of the config cache file, by result.
    pub config_cache_writes: Family<ResultLabels, Counter>,
    /// Rate-limit rejections and mode.
    pub ratelimit: crate::ops::handles::RateLimitMetrics,
    /// The HTTPS listener's handshakes and certificates.
    pub tls: crate::ops::handles::TlsMetrics,
    /// Client connections served, by protocol.
    pub connections: crate::ops::handles::ConnectionMetrics,
    unmatched: Arc<RouteMetrics>,
    cache_requests: Family<CacheLabels, Counter>,
    /// Redis calls of the response cache that failed or timed out.
    pub cache_redis_errors: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut root = Registry::default();
        let registry = root.sub_registry_with_prefix("gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, LatencyHistogram>::default();
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        let updates = Family::<UpdateLabels, Counter>::default();
        let in_flight = Gauge::default();
        let config_version = Gauge::default();
        let instances = Gauge::default();
        let control_plane_connected = Gauge::default();
        let ready = Gauge::default();
        let breaker_state = Family::<ServiceLabels, Gauge>::default();
        let breaker_rejections = Family::<ServiceLabels, Counter>::default();
        let retries = Family::<ServiceLabels, Counter>::default();
        let retry_budget_exhausted = Family::<ServiceLabels, Counter>::default();
        let ejections = Family::<ServiceLabels, Counter>::default();
        let upstream_attempts = Family::<ServiceLabels, Counter>::default();
        let open_connections = Gauge::default();
        registry.register(
            "upstream_attempts",
            "Exchanges sent to instances (first attempts and retries), by service",
            upstream_attempts.clone(),
        );
        registry.register(
            "open_connections",
            "Client connections open on the public listener",
            open_connections.clone(),
        );
        registry.register(
            "circuit_breaker_state",
            "Circuit-breaker state by service: 0 closed, 1 open, 2 half-open",
            breaker_state.clone(),
        );
        registry.register(
            "circuit_breaker_rejections",
            "Requests refused by an open circuit breaker, by service",
            breaker_rejections.clone(),
        );
        registry.register("retries", "Retries sent, by service", retries.clone());
        registry.register(
            "retry_budget_exhausted",
            "Retries not sent because the service's retry budget was spent",
            retry_budget_exhausted.clone(),
        );
        registry.register(
            "outlier_ejections",
            "Instances ejected by outlier detection, by service",
            ejections.clone(),
        );
        let updates_received = Family::<UpdateKindLabel, Counter>::default();
        let update_bytes = Family::<UpdateKindLabel, Counter>::default();
        let apply_seconds = Family::<UpdateKindLabel, SecondsGauge>::default();
        let sync_seconds = SecondsGauge::default();
        let ready_seconds = SecondsGauge::default();
        registry.register(
            "requests",
            "Requests answered, by route, service, method and status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to the response head, by route",
            latency.clone(),
        );
        registry.register(
            "upstream_errors",
            "Failed upstream exchanges, by service and kind",
            upstream_errors.clone(),
        );
        registry.register(
            "config_updates",
            "Config updates by result: applied, rejected (refused for their content) or out_of_sequence (a snapshot was asked for)",
            updates.clone(),
        );
        registry.register(
            "ready",
            "1 while the data plane is ready for traffic (/health/ready answers 200)",
            ready.clone(),
        );
        registry.register(
            "in_flight_requests",
            "Requests being handled",
            in_flight.clone(),
        );
        registry.register(
            "config_version",
            "Version of the config applied last",
            config_version.clone(),
        );
        registry.register(
            "instances",
            "Instances known (routable or not) at the config version applied last",
            instances.clone(),
        );
        registry.register(
            "control_plane_connected",
            "1 while the Discovery stream to the control plane is up",
            control_plane_connected.clone(),
        );
        registry.register(
            "discovery_updates_received",
            "Discovery updates received, by kind (snapshot or delta)",
            updates_received.clone(),
        );
        registry.register(
            "discovery_update_bytes",
            "Encoded bytes of the Discovery updates received, by kind",
            update_bytes.clone(),
        );
        registry.register(
            "config_apply_seconds",
            "Time the last update of each kind took to apply, from the received message to the new config in force",
            apply_seconds.clone(),
        );
        registry.register(
            "discovery_sync_seconds",
            "From opening the Discovery connection to the first update applied (last session that received one)",
            sync_seconds.clone(),
        );
        registry.register(
            "ready_seconds",
            "From the start of the data plane to its first config applied",
            ready_seconds.clone(),
        );
        let config_source = Family::<SourceLabels, Gauge>::default();
        let config_cache_writes = Family::<ResultLabels, Counter>::default();
        registry.register(
            "config_source",
            "Where the config in force came from: 1 for its source (none, control_plane, cache, file), 0 for the others",
            config_source.clone(),
        );
        registry.register(
            "config_cache_writes",
            "Writes of the config cache file, by result (ok, error)",
            config_cache_writes.clone(),
        );
        let cache_requests = Family::<CacheLabels, Counter>::default();
        let cache_redis_errors = Counter::default();
        registry.register(
            "cache_requests",
            "Requests on routes with a response cache, by route and result (hit, miss, bypass)",
            cache_requests.clone(),
        );
        registry.register(
            "cache_redis_errors",
            "Redis calls of the response cache that failed or timed out (the cache then serves from memory or the upstream)",
            cache_redis_errors.clone(),
        );
        let ratelimit = crate::ops::handles::RateLimitMetrics::register(registry);
        let tls = crate::ops::handles::TlsMetrics::register(registry);
        let connections = crate::ops::handles::ConnectionMetrics::register(registry);
        gateway_common::metrics::register_common(&mut root, "gateway");
        let empty = Arc::new(String::new());
        let unmatched = Arc::new(RouteMetrics::build(
            &requests,
            &latency,
            empty.clone(),
            empty,
        ));
        let metrics = Self {
            registry: root,
            requests,
            latency,
            upstream_errors,
            updates,
            breaker_state,
            breaker_rejections,
            retries,
            retry_budget_exhausted,
            ejections,
            upstream_attempts,
            open_connections,
            in_flight,
            config_version,
            instances,
            control_plane_connected,
            ready,
            updates_received,
            update_bytes,
            apply_seconds,
            sync_seconds,
            ready_seconds,
            config_source,
            config_cache_writes,
            ratelimit,
            tls,
            connections,
            unmatched,
            cache_requests,
            cache_redis_errors,
        };
        metrics.set_config_source(crate::config::source::ConfigSource::None);
        metrics
    }

    /// Records where the config in force came from.
    pub fn set_config_source(&self, source: crate::config::source::ConfigSource) {
        for each in crate::config::source::ConfigSource::ALL {
            self.config_source
                .get_or_create(&SourceLabels {
                    source: each.as_str(),
                })
                .set(i64::from(each == source));
        }
    }

    /// Counts one write of the config cache file.
    pub fn count_cache_write(&self, ok: bool) {
        self.config_cache_writes
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    /// Handles of a route's response-cache counters.
    pub fn cache(&self, route: &Arc<String>) -> crate::ops::handles::CacheCounters {
        let counter = |result| {
            self.cache_requests
                .get_or_create(&CacheLabels {
                    route: route.clone(),
                    result,
                })
                .clone()
        };
        crate::ops::handles::CacheCounters {
            hit: counter("hit"),
            miss: counter("miss"),
            bypass: counter("bypass"),
        }
    }

    /// Cached handles for one route.
    pub fn route(&self, route: Arc<String>, service: Arc<String>) -> RouteMetrics {
        RouteMetrics::build(&self.requests, &self.latency, route, service)
    }

    /// Handles for requests no route took.
    pub fn unmatched(&self) -> &Arc<RouteMetrics> {
        &self.unmatched
    }

    /// Cached handles for one service's upstream errors.
    pub fn upstream_errors(&self, service: &Arc<String>) -> UpstreamErrorMetrics {
        let counters = UpstreamErrorKind::ALL.map(|kind| {
            self.upstream_errors
                .get_or_create(&UpstreamErrorLabels {
                    service: service.clone(),
                    kind: kind.as_str(),
                })
                .clone()
        });
        let attempts = self
            .upstream_attempts
            .get_or_create(&ServiceLabels {
                service: service.clone(),
            })
            .clone();
        UpstreamErrorMetrics { counters, attempts }
    }

    /// Handles of a service's circuit breaker.
    pub fn breaker(&self, service: &Arc<String>) -> crate::ops::handles::BreakerMetrics {
        let labels = ServiceLabels {
            service: service.clone(),
        };
        crate::ops::handles::BreakerMetrics {
            state: self.breaker_state.get_or_create(&labels).clone(),
            rejected: self.breaker_rejections.get_or_create(&labels).clone(),
        }
    }

    /// Handles of a service's retries.
    pub fn retries(&self, service: &Arc<String>) -> crate::ops::handles::RetryMetrics {
        let labels = ServiceLabels {
            service: service.clone(),
        };
        crate::ops::handles::RetryMetrics {
            retries: self.retries.get_or_create(&labels).clone(),
            budget_exhausted: self.retry_budget_exhausted.get_or_create(&labels).clone(),
        }
    }

    /// The ejection counter of a service.
    pub fn ejections(&self, service: &Arc<String>) -> Counter {
        self.ejections
            .get_or_create(&ServiceLabels {
                service: service.clone(),
            })
            .clone()
    }

    /// Counts a config update.
    pub fn count_update(&self, result: UpdateResult) {
        self.updates
            .get_or_create(&UpdateLabels {
                result: result.as_str(),
            })
            .inc();
    }

    /// Counts a Discovery update of `bytes` encoded bytes as received.
    pub fn count_received(&self, snapshot: bool, bytes: usize) {
        let labels = UpdateKindLabel::of(snapshot);
        self.updates_received.get_or_create(&labels).inc();
        self.update_bytes
            .get_or_create(&labels)
            .inc_by(u64::try_from(bytes).unwrap_or(u64::MAX));
    }

    /// Records how long applying an update took.
    pub fn observe_apply(&self, snapshot: bool, elapsed: Duration) {
        self.apply_seconds
            .get_or_create(&UpdateKindLabel::of(snapshot))
            .set(elapsed.as_secs_f64());
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Methods with a cached counter slot, in slot order.
const METHOD_SLOTS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
    Method::TRACE,
    Method::CONNECT,
];

/// Statuses with a cached counter slot, in slot order.
const STATUS_SLOTS: [u16; 22] = [
    200, 201, 202, 204, 206, 301, 302, 304, 307, 308, 400, 401, 403, 404, 405, 409, 413, 422, 429,
    500, 502, 503,
];
const STATUS_504: usize = STATUS_SLOTS.len();
const STATUS_COUNT: usize = STATUS_SLOTS.len() + 1;

fn method_slot(method: &Method) -> Option<usize> {
    METHOD_SLOTS.iter().position(|m| m == method)
}

fn status_slot(status: StatusCode) -> Option<usize> {
    let code = status.as_u16();
    if code == 504 {
        return Some(STATUS_504);
    }
    STATUS_SLOTS.iter().position(|&s| s == code)
}

/// Counter handles of one method, by status slot.
type StatusRow = Box<[OnceLock<Counter>]>;

/// Metric handles of one route, filled lazily and then read lock-free. A
/// method's row of status counters is only allocated once the route sees
/// that method, so a large route table costs little until it is used.
pub struct RouteMetrics {
    route: Arc<String>,
    service: Arc<String>,
    requests: Family<RequestLabels, Counter>,
    cache: [OnceLock<StatusRow>; METHOD_SLOTS.len()],
    latency: LatencyHistogram,
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics")
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

impl RouteMetrics {
    fn build(
        requests: &Family<RequestLabels, Counter>,
        latency: &Family<RouteLabels, LatencyHistogram>,
        route: Arc<String>,
        service: Arc<String>,
    ) -> Self {
        let latency = latency
            .get_or_create(&RouteLabels {
                route: route.clone(),
                service: service.clone(),
            })
            .clone();
        Self {
            route,
            service,
            requests: requests.clone(),
            cache: Default::default(),
            latency,
        }
    }

    /// Records one answered request.
    pub fn record(&self, method: &Method, status: StatusCode, elapsed: Duration) {
        self.latency.observe(elapsed);
        match (method_slot(method), status_slot(status)) {
            (Some(m), Some(s)) => {
                let row = self.cache[m]
                    .get_or_init(|| (0..STATUS_COUNT).map(|_| OnceLock::new()).collect());
                row[s].get_or_init(|| self.counter(method, status)).inc();
            }
            _ => {
                self.counter(method, status).inc();
            }
        }
    }

    fn counter(&self, method: &Method, status: StatusCode) -> Counter {
        self.requests
            .get_or_create(&RequestLabels {
                route: self.route.clone(),
                service: self.service.clone(),
                method: method.as_str().to_string(),
                status: status.as_u16(),
            })
            .clone()
    }
}

/// Upstream attempt and error counters of one service.
#[derive(Debug, Clone)]
pub struct UpstreamErrorMetrics {
    counters: [Counter; UpstreamErrorKind::ALL.len()],
    attempts: Counter,
}

impl UpstreamErrorMetrics {
    /// Counts one exchange sent to an instance (first attempts, retries and
    /// aggregate sources alike).
    pub fn attempt(&self) {
        self.attempts.inc();
    }

    /// Counts one failure.
    pub fn count(&self, kind: UpstreamErrorKind) {
        let slot = UpstreamErrorKind::ALL
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(0);
        self.counters[slot].inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_counters_and_histogram_are_exposed() {
        let metrics = Metrics::new();
        let route = metrics.route(Arc::new("echo".into()), Arc::new("echo-svc".into()));
        route.record(&Method::GET, StatusCode::OK, Duration::from_millis(3));
        route.record(&Method::GET, StatusCode::OK, Duration::from_millis(3));
        route.record(
            &Method::from_bytes(b"PURGE").unwrap(),
            StatusCode::IM_A_TEAPOT,
            Duration::from_secs(20),
        );
        metrics
            .upstream_errors(&Arc::new("echo-svc".into()))
            .count(UpstreamErrorKind::Timeout);
        metrics.count_update(UpdateResult::Applied);
        let text = metrics.encode();
        assert!(text.contains(
            r#"gateway_requests_total{route="echo",service="echo-svc",method="GET",status="200"} 2"#
        ), "{text}");
        assert!(text.contains(r#"method="PURGE",status="418"} 1"#), "{text}");
        assert!(text.contains(
            r#"gateway_request_duration_seconds_bucket{le="0.005",route="echo",service="echo-svc"} 2"#
        ) || text.contains(
            r#"gateway_request_duration_seconds_bucket{route="echo",service="echo-svc",le="0.005"} 2"#
        ), "{text}");
        assert!(
            text.contains(
                r#"gateway_request_duration_seconds_count{route="echo",service="echo-svc"} 3"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"gateway_upstream_errors_total{service="echo-svc",kind="timeout"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"gateway_config_updates_total{result="applied"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn histogram_buckets_are_per_bound() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(400));
        h.observe(Duration::from_secs(100));
        assert_eq!(h.count(), 2);
        assert_eq!(h.cells.buckets[0].load(Ordering::Relaxed), 1);
        assert_eq!(
            h.cells.buckets[LATENCY_BOUNDS_US.len()].load(Ordering::Relaxed),
            1
        );
    }
}
