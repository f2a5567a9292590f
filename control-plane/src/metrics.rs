//! Prometheus metrics of the control plane (`/metrics`).

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tonic::Status;

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

/// Labels of Discovery update counts.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpdateKindLabel {
    /// `snapshot` or `delta`.
    pub kind: &'static str,
}

impl UpdateKindLabel {
    /// The label of a snapshot (`true`) or a delta.
    pub fn of(snapshot: bool) -> Self {
        UpdateKindLabel {
            kind: if snapshot { "snapshot" } else { "delta" },
        }
    }
}

/// Labels of gRPC error counts.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcErrorLabels {
    /// RPC, e.g. `Registry/Register`.
    pub method: &'static str,
    /// gRPC status code name.
    pub code: String,
}

/// Every metric of the control plane.
pub struct Metrics {
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
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("control_plane");
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
        Metrics { registry, ..m }
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

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
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
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }
}
