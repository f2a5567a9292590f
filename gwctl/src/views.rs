//! What gwctl shows: serializable views of the control plane's answers, and
//! their table forms.

use crate::output::{ago, human_duration, or_dash, Table};
use gateway_common::config::{BreakerConfig, RouteConfig, ServiceConfig};
use gateway_common::duration;
use gateway_proto::v1 as pb;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// One instance with its state, lease and last health check.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceView {
    /// Instance id.
    pub id: String,
    /// Service name.
    pub service: String,
    /// Host name or IP.
    pub address: String,
    /// TCP port.
    pub port: u32,
    /// `draining`, else the health: `healthy`, `unhealthy` or `unknown`.
    pub state: &'static str,
    /// Health-check verdict.
    pub health: &'static str,
    /// Drain flag.
    pub draining: bool,
    /// Load-balancing weight.
    pub weight: u32,
    /// Zone.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub zone: String,
    /// Declared in the config (no lease).
    pub static_instance: bool,
    /// Remaining lease in milliseconds (0 for static instances).
    pub lease_remaining_ms: u64,
    /// Unix ms of the last check; 0 when never checked.
    pub last_check_unix_ms: u64,
    /// Outcome of the last check.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub last_check_result: String,
    /// Health-check path of the instance (empty: the service's).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub health_path: String,
    /// Labels.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

fn health_name(health: i32) -> &'static str {
    match pb::HealthState::try_from(health).unwrap_or(pb::HealthState::Unspecified) {
        pb::HealthState::Healthy => "healthy",
        pb::HealthState::Unhealthy => "unhealthy",
        pb::HealthState::Unknown | pb::HealthState::Unspecified => "unknown",
    }
}

impl InstanceView {
    /// The view of one `InstanceStatus`.
    pub fn from_status(status: &pb::InstanceStatus) -> Self {
        let instance = status.instance.clone().unwrap_or_default();
        let health = health_name(instance.health);
        Self {
            state: if instance.draining {
                "draining"
            } else {
                health
            },
            health,
            draining: instance.draining,
            id: instance.id,
            service: instance.service,
            address: instance.address,
            port: instance.port,
            weight: instance.weight,
            zone: instance.zone,
            static_instance: instance.static_instance,
            lease_remaining_ms: status.lease_remaining_ms,
            last_check_unix_ms: status.last_check_unix_ms,
            last_check_result: status.last_check_result.clone(),
            health_path: instance.health_path,
            metadata: instance.metadata.into_iter().collect(),
        }
    }

    /// `host:port` (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.address.contains(':') {
            format!("[{}]:{}", self.address, self.port)
        } else {
            format!("{}:{}", self.address, self.port)
        }
    }

    /// Lease cell: `static` or the remaining time.
    pub fn lease_cell(&self) -> String {
        if self.static_instance {
            "static".into()
        } else {
            human_duration(Duration::from_millis(self.lease_remaining_ms))
        }
    }

    /// Last-check cell: `1.2s ago (200)` or `never`.
    pub fn last_check_cell(&self) -> String {
        let when = ago(self.last_check_unix_ms);
        if self.last_check_result.is_empty() || self.last_check_unix_ms == 0 {
            when
        } else {
            format!("{when} ({})", self.last_check_result)
        }
    }
}

/// Table of instances.
pub fn instances_table(instances: &[InstanceView]) -> Table {
    let mut table = Table::new([
        "ID",
        "SERVICE",
        "ADDRESS",
        "STATE",
        "WEIGHT",
        "ZONE",
        "LEASE",
        "LAST CHECK",
    ]);
    for i in instances {
        table.row(vec![
            i.id.clone(),
            i.service.clone(),
            i.authority(),
            i.state.to_string(),
            i.weight.to_string(),
            or_dash(&i.zone),
            i.lease_cell(),
            i.last_check_cell(),
        ]);
    }
    table
}

/// One data plane as reported on its Discovery stream.
#[derive(Debug, Clone, Serialize)]
pub struct DataPlaneView {
    /// Node id.
    pub node_id: String,
    /// Control-plane replica it is connected to.
    pub replica: String,
    /// Last acked config version.
    pub acked_version: u64,
    /// Last NACKed version (0: none).
    pub nacked_version: u64,
    /// Why it NACKed.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub nack_reason: String,
    /// Whether its stream is open.
    pub connected: bool,
    /// Unix ms of the connection.
    pub connected_at_unix_ms: u64,
    /// Unix ms of its last message.
    pub last_seen_unix_ms: u64,
    /// Sum of in-flight requests.
    pub in_flight_total: u64,
    /// In-flight requests per instance.
    pub in_flight: BTreeMap<String, u64>,
    /// Breaker state per service.
    pub breakers: BTreeMap<String, &'static str>,
    /// Build version of the data plane (empty: it did not say).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
}

fn breaker_name(state: i32) -> &'static str {
    match pb::BreakerState::try_from(state).unwrap_or(pb::BreakerState::Unspecified) {
        pb::BreakerState::Closed => "closed",
        pb::BreakerState::Open => "open",
        pb::BreakerState::HalfOpen => "half-open",
        pb::BreakerState::Unspecified => "unknown",
    }
}

impl DataPlaneView {
    /// The view of one `DataPlaneStatus`.
    pub fn from_status(status: &pb::DataPlaneStatus) -> Self {
        let in_flight: BTreeMap<String, u64> = status
            .in_flight
            .iter()
            .map(|l| (l.instance_id.clone(), l.in_flight))
            .collect();
        Self {
            node_id: status.node_id.clone(),
            replica: status.replica.clone(),
            acked_version: status.acked_version,
            nacked_version: status.nacked_version,
            nack_reason: status.nack_reason.clone(),
            connected: status.connected,
            connected_at_unix_ms: status.connected_at_unix_ms,
            last_seen_unix_ms: status.last_seen_unix_ms,
            in_flight_total: in_flight.values().sum(),
            in_flight,
            breakers: status
                .breakers
                .iter()
                .map(|b| (b.service.clone(), breaker_name(b.state)))
                .collect(),
            version: status.build_version.clone(),
        }
    }

    fn breakers_cell(&self) -> String {
        if self.breakers.is_empty() {
            return "-".into();
        }
        self.breakers
            .iter()
            .map(|(service, state)| format!("{service}={state}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn nack_cell(&self) -> String {
        if self.nacked_version == 0 {
            "-".into()
        } else {
            format!("{}: {}", self.nacked_version, self.nack_reason)
        }
    }
}

/// Table of data planes.
pub fn data_planes_table(data_planes: &[DataPlaneView]) -> Table {
    let mut table = Table::new([
        "NODE",
        "VERSION",
        "REPLICA",
        "ACKED",
        "CONNECTED",
        "IN-FLIGHT",
        "BREAKERS",
        "LAST SEEN",
        "NACKED",
    ]);
    for d in data_planes {
        table.row(vec![
            d.node_id.clone(),
            or_dash(&d.version),
            or_dash(&d.replica),
            d.acked_version.to_string(),
            if d.connected { "yes" } else { "no" }.into(),
            d.in_flight_total.to_string(),
            d.breakers_cell(),
            ago(d.last_seen_unix_ms),
            d.nack_cell(),
        ]);
    }
    table
}

/// Circuit-breaker state per data plane and service; `None` when no data
/// plane reports a breaker.
pub fn breakers_table(data_planes: &[DataPlaneView]) -> Option<Table> {
    let mut table = Table::new(["DATA PLANE", "SERVICE", "BREAKER"]);
    let mut any = false;
    for d in data_planes {
        for (service, state) in &d.breakers {
            any = true;
            table.row(vec![d.node_id.clone(), service.clone(), state.to_string()]);
        }
    }
    any.then_some(table)
}

/// Table of services.
pub fn services_table(services: &[ServiceConfig]) -> Table {
    let mut table = Table::new([
        "NAME",
        "BALANCER",
        "TIMEOUT",
        "HEALTH CHECK",
        "STATIC INSTANCES",
        "BREAKER",
    ]);
    for s in services {
        let hc = &s.health_check;
        let health = if hc.enabled {
            format!("{} every {}", hc.path, duration::format(hc.interval))
        } else {
            "off".into()
        };
        let strategy = serde_json::to_value(s.load_balancer.strategy)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let breaker = match &s.circuit_breaker {
            None => "-".to_string(),
            Some(b) if b.enabled => "on".into(),
            Some(_) => "off".into(),
        };
        table.row(vec![
            s.name.clone(),
            strategy,
            duration::format(s.timeout),
            health,
            if s.instances.is_empty() {
                "-".into()
            } else {
                s.instances.join(",")
            },
            breaker,
        ]);
    }
    table
}

/// Table of routes.
pub fn routes_table(routes: &[RouteConfig]) -> Table {
    let mut table = Table::new(["NAME", "MATCH", "METHODS", "HOST", "SERVICE", "REWRITE"]);
    for r in routes {
        let m = &r.matcher;
        let matcher = match (&m.path, &m.path_prefix) {
            (Some(p), _) => format!("path {p}"),
            (None, Some(p)) => format!("prefix {p}"),
            (None, None) => "-".into(),
        };
        let methods = if m.methods.is_empty() {
            "*".into()
        } else {
            m.methods.join(",")
        };
        let rewrite = match (&r.rewrite, r.strip_prefix) {
            (Some(to), _) => format!("-> {to}"),
            (None, true) => "strip prefix".into(),
            (None, false) => "-".into(),
        };
        table.row(vec![
            r.name.clone(),
            matcher,
            methods,
            m.host.clone().unwrap_or_else(|| "*".into()),
            match &r.aggregate {
                // An aggregate names its sources' services.
                Some(a) => {
                    let services: Vec<&str> =
                        a.sources.iter().map(|s| s.service.as_str()).collect();
                    format!("aggregate({})", services.join(","))
                }
                None => r.service.clone(),
            },
            rewrite,
        ]);
    }
    table
}

/// A circuit-breaker policy with durations written like in configs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BreakerView {
    /// Service name.
    pub service: String,
    /// Whether the breaker is active.
    pub enabled: bool,
    /// Error percentage that opens it.
    pub error_threshold_percent: u32,
    /// Requests before the percentage counts.
    pub volume_threshold: u32,
    /// Wait before half-open probes.
    pub reset_timeout: String,
    /// Slower calls count as failures.
    pub call_timeout: String,
    /// Rolling window length.
    pub rolling_window: String,
    /// Buckets of the window.
    pub rolling_buckets: u32,
    /// Probes while half-open.
    pub half_open_max_requests: u32,
}

impl BreakerView {
    /// The view of a policy.
    pub fn from_policy(p: &pb::BreakerPolicy) -> Self {
        let ms = |v: u64| duration::format(Duration::from_millis(v));
        Self {
            service: p.service.clone(),
            enabled: p.enabled,
            error_threshold_percent: p.error_threshold_percent,
            volume_threshold: p.volume_threshold,
            reset_timeout: ms(p.reset_timeout_ms),
            call_timeout: ms(p.call_timeout_ms),
            rolling_window: ms(p.rolling_window_ms),
            rolling_buckets: p.rolling_buckets,
            half_open_max_requests: p.half_open_max_requests,
        }
    }

    /// As a table of one row.
    pub fn table(&self) -> Table {
        let mut table = Table::new([
            "SERVICE",
            "ENABLED",
            "ERROR %",
            "VOLUME",
            "RESET TIMEOUT",
            "CALL TIMEOUT",
            "WINDOW",
            "BUCKETS",
            "HALF-OPEN PROBES",
        ]);
        table.row(vec![
            self.service.clone(),
            self.enabled.to_string(),
            self.error_threshold_percent.to_string(),
            self.volume_threshold.to_string(),
            self.reset_timeout.clone(),
            self.call_timeout.clone(),
            self.rolling_window.clone(),
            self.rolling_buckets.to_string(),
            self.half_open_max_requests.to_string(),
        ]);
        table
    }
}

/// The wire form of a service's breaker config.
pub fn policy_from_config(service: &str, c: &BreakerConfig) -> pb::BreakerPolicy {
    let ms = |d: Duration| d.as_millis() as u64;
    pb::BreakerPolicy {
        service: service.to_string(),
        enabled: c.enabled,
        error_threshold_percent: c.error_threshold_percent,
        volume_threshold: c.volume_threshold,
        reset_timeout_ms: ms(c.reset_timeout),
        call_timeout_ms: ms(c.call_timeout),
        rolling_window_ms: ms(c.rolling_window),
        rolling_buckets: c.rolling_buckets,
        half_open_max_requests: c.half_open_max_requests,
    }
}

/// The whole topology: services with their instances, and the data planes.
#[derive(Debug, Clone, Serialize)]
pub struct TopologyView {
    /// Current config version.
    pub version: u64,
    /// Replica that answered.
    pub replica: String,
    /// Replica running health checks and lease expiry.
    pub leader: String,
    /// Services and their instances.
    pub services: Vec<ServiceTopologyView>,
    /// Data planes.
    pub data_planes: Vec<DataPlaneView>,
}

/// A service and its instances.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceTopologyView {
    /// Service name.
    pub name: String,
    /// Its instances.
    pub instances: Vec<InstanceView>,
}

impl TopologyView {
    /// The view of a `Topology`.
    pub fn from_proto(t: &pb::Topology) -> Self {
        Self {
            version: t.version,
            replica: t.replica.clone(),
            leader: t.leader.clone(),
            services: t
                .services
                .iter()
                .map(|s| ServiceTopologyView {
                    name: s.name.clone(),
                    instances: s.instances.iter().map(InstanceView::from_status).collect(),
                })
                .collect(),
            data_planes: t
                .data_planes
                .iter()
                .map(DataPlaneView::from_status)
                .collect(),
        }
    }

    /// Human form: a header line, services with instances, then data planes.
    pub fn render(&self) -> String {
        let mut out = format!(
            "version {}   answered by {}   leader {}\n\n",
            self.version,
            or_dash(&self.replica),
            or_dash(&self.leader)
        );
        let mut services = Table::new([
            "SERVICE",
            "INSTANCE",
            "ADDRESS",
            "STATE",
            "LEASE",
            "LAST CHECK",
        ]);
        for s in &self.services {
            if s.instances.is_empty() {
                services.row(vec![
                    s.name.clone(),
                    "(no instances)".into(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                ]);
            }
            for i in &s.instances {
                services.row(vec![
                    s.name.clone(),
                    i.id.clone(),
                    i.authority(),
                    i.state.to_string(),
                    i.lease_cell(),
                    i.last_check_cell(),
                ]);
            }
        }
        if services.is_empty() {
            out.push_str("no services\n");
        } else {
            out.push_str(&services.render());
        }
        out.push('\n');
        if self.data_planes.is_empty() {
            out.push_str("no data planes\n");
        } else {
            out.push_str(&data_planes_table(&self.data_planes).render());
        }
        if let Some(breakers) = breakers_table(&self.data_planes) {
            out.push('\n');
            out.push_str(&breakers.render());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_state_prefers_draining() {
        let status = pb::InstanceStatus {
            instance: Some(pb::Instance {
                id: "a".into(),
                service: "s".into(),
                address: "::1".into(),
                port: 80,
                health: pb::HealthState::Healthy as i32,
                draining: true,
                ..Default::default()
            }),
            lease_remaining_ms: 1500,
            last_check_unix_ms: 0,
            last_check_result: String::new(),
        };
        let view = InstanceView::from_status(&status);
        assert_eq!(view.state, "draining");
        assert_eq!(view.health, "healthy");
        assert_eq!(view.authority(), "[::1]:80");
        assert_eq!(view.lease_cell(), "1.5s");
        assert_eq!(view.last_check_cell(), "never");
    }

    #[test]
    fn data_plane_totals_in_flight() {
        let status = pb::DataPlaneStatus {
            node_id: "dp".into(),
            in_flight: vec![
                pb::InstanceLoad {
                    instance_id: "a".into(),
                    in_flight: 2,
                },
                pb::InstanceLoad {
                    instance_id: "b".into(),
                    in_flight: 3,
                },
            ],
            breakers: vec![pb::ServiceBreakerState {
                service: "s".into(),
                state: pb::BreakerState::HalfOpen as i32,
            }],
            ..Default::default()
        };
        let view = DataPlaneView::from_status(&status);
        assert_eq!(view.in_flight_total, 5);
        assert_eq!(view.breakers_cell(), "s=half-open");
        let table = breakers_table(&[view]).unwrap().render();
        assert!(table.contains("DATA PLANE"), "{table}");
        assert!(
            table
                .lines()
                .any(|l| l.contains("dp") && l.contains(" s ") && l.contains("half-open")),
            "{table}"
        );
        assert!(breakers_table(&[]).is_none());
    }

    #[test]
    fn breaker_policy_round_trips_through_the_view() {
        let policy = policy_from_config("pay", &BreakerConfig::default());
        let view = BreakerView::from_policy(&policy);
        assert_eq!(view.reset_timeout, "30s");
        assert_eq!(view.error_threshold_percent, 50);
        assert!(view.table().render().contains("pay"));
    }
}
