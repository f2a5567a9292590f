//! Instances: what a backend declares when it registers ([`InstanceSpec`]),
//! what the control plane decides about it ([`InstanceState`]), the rules a
//! registration must follow, and the static instances of a config.

use crate::config::{parse_instance_url, GatewayConfig};
use gateway_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

/// Lease TTL when a registration names none.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);
/// Shortest lease.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(1);
/// Longest lease.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(3600);
/// Most metadata entries per instance.
pub const MAX_METADATA_ENTRIES: usize = 64;
/// Most metadata bytes (keys and values) per instance.
pub const MAX_METADATA_BYTES: usize = 4096;
/// Largest weight.
pub const MAX_WEIGHT: u32 = 1000;

/// The part of an instance its backend declares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSpec {
    /// Globally unique id (also the lease id).
    pub id: String,
    /// Service the instance belongs to.
    pub service: String,
    /// Host name or IP address.
    pub address: String,
    /// TCP port.
    pub port: u16,
    /// Health-check path; empty for the service default.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub health_path: String,
    /// Load-balancing weight, 1-1000.
    pub weight: u32,
    /// Zone, free text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub zone: String,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Declared in the config rather than registered (no lease).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub static_instance: bool,
    /// Speaks TLS (`https://`): connected to with TLS only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
}

/// Result of active health checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Not checked yet; routable (a backend registers once it is ready).
    #[default]
    Unknown,
    /// Passed its checks.
    Healthy,
    /// Failed its checks; receives no traffic.
    Unhealthy,
}

/// The part of an instance the control plane decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct InstanceState {
    /// Health-check verdict.
    #[serde(default)]
    pub health: Health,
    /// Set by `gwctl drain`: no new requests.
    #[serde(default)]
    pub draining: bool,
}

impl InstanceState {
    /// Whether data planes may send new requests to the instance.
    pub fn routable(&self) -> bool {
        !self.draining && self.health != Health::Unhealthy
    }
}

/// An instance as streamed to data planes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Declared part.
    pub spec: InstanceSpec,
    /// Decided part.
    pub state: InstanceState,
}

impl Instance {
    /// The wire form.
    pub fn to_proto(&self) -> pb::Instance {
        let s = &self.spec;
        pb::Instance {
            id: s.id.clone(),
            service: s.service.clone(),
            address: s.address.clone(),
            port: u32::from(s.port),
            health_path: s.health_path.clone(),
            weight: s.weight,
            zone: s.zone.clone(),
            metadata: s
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            health: match self.state.health {
                Health::Unknown => pb::HealthState::Unknown,
                Health::Healthy => pb::HealthState::Healthy,
                Health::Unhealthy => pb::HealthState::Unhealthy,
            } as i32,
            draining: self.state.draining,
            static_instance: s.static_instance,
            tls: s.tls,
        }
    }

    /// Reads the wire form, checking what a data plane relies on.
    pub fn from_proto(p: &pb::Instance) -> Result<Self, String> {
        let port = u16::try_from(p.port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("instance {}: bad port {}", p.id, p.port))?;
        if p.id.is_empty() || p.service.is_empty() || p.address.is_empty() {
            return Err(format!(
                "instance {:?}: id, service and address are required",
                p.id
            ));
        }
        let health =
            match pb::HealthState::try_from(p.health).unwrap_or(pb::HealthState::Unspecified) {
                pb::HealthState::Healthy => Health::Healthy,
                pb::HealthState::Unhealthy => Health::Unhealthy,
                _ => Health::Unknown,
            };
        Ok(Instance {
            spec: InstanceSpec {
                id: p.id.clone(),
                service: p.service.clone(),
                address: p.address.clone(),
                port,
                health_path: p.health_path.clone(),
                weight: p.weight.clamp(1, MAX_WEIGHT),
                zone: p.zone.clone(),
                metadata: p
                    .metadata
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                static_instance: p.static_instance,
                tls: p.tls,
            },
            state: InstanceState {
                health,
                draining: p.draining,
            },
        })
    }
}

impl InstanceSpec {
    /// `host:port`, with brackets around IPv6 addresses.
    pub fn authority(&self) -> String {
        if self.address.contains(':') {
            format!("[{}]:{}", self.address, self.port)
        } else {
            format!("{}:{}", self.address, self.port)
        }
    }
}

/// A registration that passed every rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidRegistration {
    /// The instance; `id` is empty when one must be generated.
    pub spec: InstanceSpec,
    /// Lease TTL.
    pub ttl: Duration,
}

/// Checks a `Register` request; every problem is reported.
pub fn validate_registration(req: &pb::RegisterRequest) -> Result<ValidRegistration, Vec<String>> {
    let mut errors = Vec::new();
    if !crate::config::is_valid_service_name(&req.service) {
        errors.push(format!(
            "service: {:?} must match [a-z0-9-]{{1,63}}",
            req.service
        ));
    }
    if !req.instance_id.is_empty() {
        if let Err(e) = check_instance_id(&req.instance_id) {
            errors.push(format!("instance_id: {e}"));
        }
    }
    if !is_valid_host(&req.address) {
        errors.push(format!(
            "address: {:?} is not a host name or IP address",
            req.address
        ));
    }
    if !(1..=65535).contains(&req.port) {
        errors.push(format!("port: {} is not between 1 and 65535", req.port));
    }
    if !req.health_path.is_empty() && !is_valid_health_path(&req.health_path) {
        errors.push("health_path: must start with '/' and hold no spaces or control characters (1024 bytes at most)".into());
    }
    if req.weight > MAX_WEIGHT {
        errors.push(format!("weight: {} is above {MAX_WEIGHT}", req.weight));
    }
    if req.zone.len() > 63 || req.zone.chars().any(|c| c.is_control()) {
        errors.push("zone: 63 printable characters at most".into());
    }
    check_metadata(&req.metadata, &mut errors);
    let tls = match req.scheme.as_str() {
        "" | "http" => false,
        "https" => true,
        other => {
            errors.push(format!(
                "scheme: {other:?} must be \"http\" or \"https\" (empty: http)"
            ));
            false
        }
    };
    let ttl = match req.lease_ttl_seconds {
        0 => DEFAULT_LEASE_TTL,
        s => Duration::from_secs(u64::from(s)),
    };
    if ttl < MIN_LEASE_TTL || ttl > MAX_LEASE_TTL {
        errors.push(format!(
            "lease_ttl_seconds: {} is not between 1 and 3600",
            req.lease_ttl_seconds
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(ValidRegistration {
        spec: InstanceSpec {
            id: req.instance_id.clone(),
            service: req.service.clone(),
            address: req.address.to_ascii_lowercase(),
            port: req.port as u16,
            health_path: req.health_path.clone(),
            weight: req.weight.max(1),
            zone: req.zone.clone(),
            metadata: req
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            static_instance: false,
            tls,
        },
        ttl,
    })
}

/// Checks an instance id: 1-128 of `[A-Za-z0-9._:-]`.
pub fn check_instance_id(id: &str) -> Result<(), String> {
    let ok = (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{id:?} must be 1-128 characters of [A-Za-z0-9._:-]"
        ))
    }
}

fn check_metadata(metadata: &std::collections::HashMap<String, String>, errors: &mut Vec<String>) {
    if metadata.len() > MAX_METADATA_ENTRIES {
        errors.push(format!(
            "metadata: {} entries, at most {MAX_METADATA_ENTRIES}",
            metadata.len()
        ));
    }
    let bytes: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_METADATA_BYTES {
        errors.push(format!(
            "metadata: {bytes} bytes, at most {MAX_METADATA_BYTES}"
        ));
    }
    let bad_key = metadata.keys().find(|k| {
        k.is_empty()
            || k.len() > 253
            || !k
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
    });
    if let Some(key) = bad_key {
        errors.push(format!(
            "metadata: key {key:?} must be 1-253 characters of [A-Za-z0-9._/-]"
        ));
    }
    if metadata.values().any(|v| v.chars().any(|c| c.is_control())) {
        errors.push("metadata: values must not hold control characters".into());
    }
}

/// Whether `text` is an IP address or a DNS host name.
pub fn is_valid_host(text: &str) -> bool {
    if text.parse::<IpAddr>().is_ok() {
        return true;
    }
    let labels_ok = text.split('.').all(|label| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    });
    (1..=253).contains(&text.len()) && labels_ok
}

fn is_valid_health_path(path: &str) -> bool {
    path.starts_with('/')
        && path.len() <= 1024
        && !path.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Id of a static instance of a service: `static:SERVICE:HOST:PORT`.
pub fn static_instance_id(service: &str, host: &str, port: u16) -> String {
    format!("static:{service}:{host}:{port}")
}

/// The static instances a (validated) config declares.
pub fn static_instances(config: &GatewayConfig) -> Vec<InstanceSpec> {
    let mut out = Vec::new();
    for service in &config.services {
        for url in &service.instances {
            // A validated config only holds parseable URLs.
            let Ok(addr) = parse_instance_url(url) else {
                continue;
            };
            out.push(InstanceSpec {
                id: static_instance_id(&service.name, &addr.host, addr.port),
                service: service.name.clone(),
                address: addr.host,
                port: addr.port,
                health_path: String::new(),
                weight: 1,
                zone: String::new(),
                metadata: BTreeMap::new(),
                static_instance: true,
                tls: addr.tls,
            });
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out.dedup_by(|a, b| a.id == b.id);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> pb::RegisterRequest {
        pb::RegisterRequest {
            service: "ticket".into(),
            instance_id: "ticket-1".into(),
            address: "10.0.0.7".into(),
            port: 8080,
            health_path: "/health".into(),
            weight: 0,
            zone: "a".into(),
            metadata: [("version".to_string(), "1.2.3".to_string())].into(),
            lease_ttl_seconds: 0,
            scheme: String::new(),
        }
    }

    #[test]
    fn good_registration_gets_defaults() {
        let valid = validate_registration(&request()).unwrap();
        assert_eq!(valid.ttl, DEFAULT_LEASE_TTL);
        assert_eq!(valid.spec.weight, 1);
        assert_eq!(valid.spec.port, 8080);
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut r = request();
        r.service = "Ticket!".into();
        r.instance_id = "has space".into();
        r.address = "bad host".into();
        r.port = 70000;
        r.health_path = "health".into();
        r.weight = 5000;
        r.lease_ttl_seconds = 7200;
        r.scheme = "tcp".into();
        r.metadata = (0..70)
            .map(|i| (format!("k{i}"), "v".repeat(100)))
            .collect();
        let errors = validate_registration(&r).unwrap_err().join("\n");
        for field in [
            "service:",
            "instance_id:",
            "address:",
            "port:",
            "health_path:",
            "weight:",
            "lease_ttl_seconds:",
            "scheme: \"tcp\" must be",
            "entries",
            "bytes",
        ] {
            assert!(errors.contains(field), "{field} missing from {errors}");
        }
    }

    #[test]
    fn port_zero_and_empty_address_are_refused() {
        let mut r = request();
        r.port = 0;
        r.address.clear();
        assert_eq!(validate_registration(&r).unwrap_err().len(), 2);
    }

    #[test]
    fn hosts() {
        for ok in [
            "10.0.0.1",
            "::1",
            "svc.default.svc.cluster.local",
            "localhost",
        ] {
            assert!(is_valid_host(ok), "{ok}");
        }
        for bad in ["", "-a", "a..b", "a b", "x".repeat(64).as_str()] {
            assert!(!is_valid_host(bad), "{bad}");
        }
    }

    #[test]
    fn schemes() {
        let mut r = request();
        assert!(!validate_registration(&r).unwrap().spec.tls);
        r.scheme = "http".into();
        assert!(!validate_registration(&r).unwrap().spec.tls);
        r.scheme = "https".into();
        assert!(validate_registration(&r).unwrap().spec.tls);
        r.scheme = "HTTPS".into();
        assert!(validate_registration(&r).is_err());
    }

    #[test]
    fn proto_round_trip() {
        let mut request = request();
        request.scheme = "https".into();
        let valid = validate_registration(&request).unwrap();
        let inst = Instance {
            spec: valid.spec,
            state: InstanceState {
                health: Health::Unhealthy,
                draining: true,
            },
        };
        assert_eq!(Instance::from_proto(&inst.to_proto()).unwrap(), inst);
        assert!(!inst.state.routable());
    }

    #[test]
    fn static_instances_of_a_config() {
        let config = GatewayConfig::load(b"version: 1\nservices:\n  - name: a\n    instances: ['http://127.0.0.1:81', 'https://[::1]:82']\n").unwrap();
        let tls: Vec<bool> = static_instances(&config).iter().map(|s| s.tls).collect();
        assert_eq!(tls, [false, true]);
        let ids: Vec<_> = static_instances(&config)
            .into_iter()
            .map(|s| (s.id.clone(), s.authority()))
            .collect();
        assert_eq!(
            ids,
            vec![
                ("static:a:127.0.0.1:81".into(), "127.0.0.1:81".into()),
                ("static:a:::1:82".into(), "[::1]:82".into())
            ]
        );
    }
}
