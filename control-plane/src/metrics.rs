//! Prometheus metrics of the control plane (`/metrics`).

use gateway_common::metrics::UpdateKindLabel;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;
use tonic::Status;

/// Upper bounds (seconds) of the RPC latency buckets.
const RPC_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Upper bounds (seconds) of the propagation buckets.
const PROPAGATION_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];

fn rpc_histogram() -> Histogram {
    Histogram::new(RPC_BUCKETS)
}

/// Labels of registration counts.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EffectLabel {
    /// `created`, `updated` or `renewed`.
    pub effect: &'static str,
}

/// Labels of health-check counts.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `success` or `failure`.
    pub outcome: &'static str,
}

/// Labels of gRPC error counts.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcErrorLabels {
    /// RPC, e.g. `Registry/Register`.
    pub method: &'static str,
    /// gRPC status code name.
    pub code: String,
}

/// Labels of `control_plane_grpc_request_duration_seconds`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcRequestLabels {
    /// RPC, e.g. `Registry/Register`.
    pub method: Arc<String>,
    /// gRPC status code name (`Ok`, `Unavailable`, ...).
    pub code: &'static str,
}

/// Every metric of the control plane.
pub struct Metrics {
    /// The unprefixed root: `process_*` there, `control_plane_*` in a
    /// sub-registry.
    registry: Registry,
    /// Registrations by effect.
    pub registrations: Family<EffectLabel, Counter>,
    /// Instances removed through `Deregister`.
    pub deregistrations: Counter,
    /// Instances removed because their lease lapsed.
    pub lease_expiries: Counter,
    /// Active health checks by outcome.
    pub health_checks: Family<OutcomeLabel, Counter>,
    /// Data planes with an open Discovery stream on this replica.
    pub connected_data_planes: Gauge,
    /// Version of this replica's view.
    pub config_version: Gauge,
    /// Largest difference between the view's version and a connected data
    /// plane's acknowledged version.
    pub dataplane_version_lag: Gauge,
    /// 1 when this replica holds the leader lock.
    pub leader: Gauge,
    /// gRPC calls answered with an error, by method and code.
    pub grpc_errors: Family<GrpcErrorLabels, Counter>,
    /// Discovery updates sent to data planes, by kind.
    pub updates_sent: Family<UpdateKindLabel, Counter>,
    /// Encoded bytes of the Discovery updates sent, by kind.
    pub update_sent_bytes: Family<UpdateKindLabel, Counter>,
    /// Times this replica wrote its view back into a store that lost its data.
    pub store_reseeds: Counter,
    /// Latency of unary RPCs, by method and code.
    pub grpc_request_duration: Family<GrpcRequestLabels, Histogram, fn() -> Histogram>,
    /// From this replica's view applying a version to a data plane
    /// acknowledging it (see `discovery`).
    pub config_propagation: Histogram,
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
        let registry = root.sub_registry_with_prefix("control_plane");
        let m = Metrics {
            registrations: Family::default(),
            deregistrations: Counter::default(),
            lease_expiries: Counter::default(),
            health_checks: Family::default(),
            connected_data_planes: Gauge::default(),
            config_version: Gauge::default(),
            dataplane_version_lag: Gauge::default(),
            leader: Gauge::default(),
            grpc_errors: Family::default(),
            updates_sent: Family::default(),
            update_sent_bytes: Family::default(),
            store_reseeds: Counter::default(),
            grpc_request_duration: Family::new_with_constructor(rpc_histogram),
            config_propagation: Histogram::new(PROPAGATION_BUCKETS),
            registry: Registry::default(),
        };
        registry.register(
            "registrations",
            "Instance registrations by effect",
            m.registrations.clone(),
        );
        registry.register(
            "deregistrations",
            "Instances removed by Deregister",
            m.deregistrations.clone(),
        );
        registry.register(
            "lease_expiries",
            "Instances removed because their lease lapsed",
            m.lease_expiries.clone(),
        );
        registry.register(
            "health_checks",
            "Active health checks by outcome",
            m.health_checks.clone(),
        );
        registry.register(
            "connected_data_planes",
            "Data planes streaming from this replica",
            m.connected_data_planes.clone(),
        );
        registry.register(
            "config_version",
            "Version of this replica's view",
            m.config_version.clone(),
        );
        registry.register(
            "dataplane_version_lag",
            "Largest gap between the current version and a connected data plane's acked version",
            m.dataplane_version_lag.clone(),
        );
        registry.register(
            "leader",
            "1 when this replica runs health checks and lease expiry",
            m.leader.clone(),
        );
        registry.register(
            "grpc_errors",
            "gRPC calls answered with an error",
            m.grpc_errors.clone(),
        );
        registry.register(
            "discovery_updates_sent",
            "Discovery updates sent to data planes, by kind (snapshot or delta)",
            m.updates_sent.clone(),
        );
        registry.register_with_unit(
            "discovery_update_sent",
            "Encoded bytes of the Discovery updates sent to data planes, by kind",
            prometheus_client::registry::Unit::Bytes,
            m.update_sent_bytes.clone(),
        );
        registry.register(
            "store_reseeds",
            "Times this replica wrote its view back into a store that had lost its data",
            m.store_reseeds.clone(),
        );
        registry.register(
            "grpc_request_duration_seconds",
            "Time to answer a unary gRPC call, by method and code (streams are not timed)",
            m.grpc_request_duration.clone(),
        );
        registry.register(
            "config_propagation_seconds",
            "From this replica's view applying a version to a data plane acknowledging it (the oldest change each acknowledgement covers)",
            m.config_propagation.clone(),
        );
        gateway_common::metrics::register_common(&mut root, "control_plane");
        Metrics {
            registry: root,
            ..m
        }
    }

    /// Counts a Discovery update of `bytes` encoded bytes sent to one data plane.
    pub fn update_sent(&self, snapshot: bool, bytes: usize) {
        let label = UpdateKindLabel::of(snapshot);
        self.updates_sent.get_or_create(&label).inc();
        self.update_sent_bytes
            .get_or_create(&label)
            .inc_by(bytes as u64);
    }

    /// Counts an error answer of `method`.
    pub fn grpc_error(&self, method: &'static str, status: &Status) {
        self.grpc_errors
            .get_or_create(&GrpcErrorLabels {
                method,
                code: format!("{:?}", status.code()),
            })
            .inc();
    }

    /// Passes `result` through, counting it when it is an error.
    pub fn observe<T>(&self, method: &'static str, result: Result<T, Status>) -> Result<T, Status> {
        if let Err(status) = &result {
            self.grpc_error(method, status);
        }
        result
    }

    /// Records one unary call of `method` answered with gRPC status `code`.
    pub fn observe_rpc(&self, method: Arc<String>, code: u16, elapsed: Duration) {
        self.grpc_request_duration
            .get_or_create(&GrpcRequestLabels {
                method,
                code: code_name(code),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The name of a gRPC status code, as `tonic::Code`'s `Debug` spells it
/// (and `grpc_errors_total{code}` shows it).
fn code_name(code: u16) -> &'static str {
    const NAMES: [&str; 17] = [
        "Ok",
        "Cancelled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    NAMES.get(usize::from(code)).copied().unwrap_or("Unknown")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_every_family() {
        let m = Metrics::new();
        m.registrations
            .get_or_create(&EffectLabel { effect: "created" })
            .inc();
        m.grpc_error("Registry/Register", &Status::unavailable("down"));
        m.health_checks
            .get_or_create(&OutcomeLabel { outcome: "failure" })
            .inc();
        m.config_version.set(7);
        m.update_sent(true, 100);
        m.update_sent(false, 10);
        m.update_sent(false, 5);
        m.observe_rpc(
            Arc::new("Admin/GetConfig".into()),
            0,
            Duration::from_millis(3),
        );
        m.observe_rpc(
            Arc::new("Admin/GetConfig".into()),
            16,
            Duration::from_millis(30),
        );
        m.config_propagation.observe(0.02);
        let text = m.encode();
        for needle in [
            "control_plane_registrations_total{effect=\"created\"} 1",
            "control_plane_grpc_errors_total{method=\"Registry/Register\",code=\"Unavailable\"} 1",
            "control_plane_health_checks_total{outcome=\"failure\"} 1",
            "control_plane_config_version 7",
            "control_plane_lease_expiries_total 0",
            "control_plane_store_reseeds_total 0",
            "control_plane_connected_data_planes 0",
            "control_plane_dataplane_version_lag 0",
            "control_plane_discovery_updates_sent_total{kind=\"snapshot\"} 1",
            "control_plane_discovery_updates_sent_total{kind=\"delta\"} 2",
            "control_plane_discovery_update_sent_bytes_total{kind=\"delta\"} 15",
            "control_plane_grpc_request_duration_seconds_bucket{le=\"0.005\",method=\"Admin/GetConfig\",code=\"Ok\"} 1",
            "control_plane_grpc_request_duration_seconds_count{method=\"Admin/GetConfig\",code=\"Unauthenticated\"} 1",
            "control_plane_config_propagation_seconds_bucket{le=\"0.025\"} 1",
            "control_plane_build_info{version=",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }

    #[test]
    fn code_names_follow_tonic() {
        for n in 0..=16u16 {
            let code = tonic::Code::from_i32(i32::from(n));
            assert_eq!(code_name(n), format!("{code:?}"));
        }
        assert_eq!(code_name(99), "Unknown");
    }
}
