//! The declarative config model shared by `gwctl apply` and
//! `data-plane --config`: services, routes and their policies.
//!
//! A document is parsed ([`GatewayConfig::parse`]), then validated as a
//! whole ([`GatewayConfig::validate`]): every problem is reported with its
//! path, and a config with any problem is rejected whole.

use crate::duration;
use crate::routing::{RouteSpec, RouteTable};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

/// The only config format version understood.
pub const CONFIG_VERSION: u32 = 1;

/// Largest request body a route may allow.
pub const MAX_BODY_LIMIT: u64 = 1 << 30;

/// Default request body limit of a route (the seed allowed 50 MiB).
pub const DEFAULT_BODY_LIMIT: u64 = 50 * 1024 * 1024;

/// A whole gateway config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Format version; must be 1.
    pub version: u32,
    /// Upstream services.
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
    /// Routes from public paths to services.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            version: CONFIG_VERSION,
            services: Vec::new(),
            routes: Vec::new(),
        }
    }
}

/// An upstream service: how its instances are checked, balanced and called.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Service name, `[a-z0-9-]{1,63}`.
    pub name: String,
    /// Active health checks run by the control plane.
    #[serde(default)]
    pub health_check: HealthCheckConfig,
    /// How requests are spread over instances.
    #[serde(default)]
    pub load_balancer: LoadBalancerConfig,
    /// Time allowed for the upstream to answer (response headers).
    #[serde(default = "default_timeout", with = "duration")]
    pub timeout: Duration,
    /// Time allowed to open a TCP connection to an instance.
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// Static instances as `http://host:port` URLs, besides registered ones.
    #[serde(default)]
    pub instances: Vec<String>,
    /// Circuit-breaker policy (also set with `gwctl breaker set`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<BreakerConfig>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}

/// Active health-check settings of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Path probed with GET when the instance registers none of its own.
    #[serde(default = "default_health_path")]
    pub path: String,
    /// Time between two checks of one instance.
    #[serde(default = "default_interval", with = "duration")]
    pub interval: Duration,
    /// Time one check may take.
    #[serde(default = "default_check_timeout", with = "duration")]
    pub timeout: Duration,
    /// Consecutive successes that mark an unhealthy instance healthy.
    #[serde(default = "default_threshold")]
    pub healthy_threshold: u32,
    /// Consecutive failures that mark an instance unhealthy.
    #[serde(default = "default_threshold")]
    pub unhealthy_threshold: u32,
    /// Set to false to turn active checks off for this service.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

fn default_health_path() -> String {
    "/health".to_string()
}
fn default_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_check_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_threshold() -> u32 {
    2
}
fn default_true() -> bool {
    true
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            path: default_health_path(),
            interval: default_interval(),
            timeout: default_check_timeout(),
            healthy_threshold: default_threshold(),
            unhealthy_threshold: default_threshold(),
            enabled: true,
        }
    }
}

/// Load-balancing strategy of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Smooth weighted round-robin.
    #[default]
    RoundRobin,
    /// Fewest in-flight requests among two random choices.
    LeastRequest,
    /// Uniformly random (weighted).
    Random,
    /// Same key, same instance, with minimal remapping (needs `hash_on`).
    ConsistentHash,
}

/// Load-balancer settings.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancerConfig {
    /// The strategy.
    #[serde(default)]
    pub strategy: Strategy,
    /// Key for consistent hashing: `header:NAME`, `cookie:NAME`, `jwt-sub`, `client-ip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<String>,
}

/// Circuit-breaker policy of a service (the seed's opossum options).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Whether the breaker is active.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Error percentage over the rolling window that opens the breaker.
    #[serde(default = "default_error_percent")]
    pub error_threshold_percent: u32,
    /// Requests in the window before the error percentage counts.
    #[serde(default = "default_volume")]
    pub volume_threshold: u32,
    /// Time an open breaker waits before half-open probes.
    #[serde(default = "default_reset", with = "duration")]
    pub reset_timeout: Duration,
    /// A call slower than this counts as a failure.
    #[serde(default = "default_call_timeout", with = "duration")]
    pub call_timeout: Duration,
    /// Length of the rolling window.
    #[serde(default = "default_window", with = "duration")]
    pub rolling_window: Duration,
    /// Buckets the window is divided into.
    #[serde(default = "default_buckets")]
    pub rolling_buckets: u32,
    /// Probes let through while half-open.
    #[serde(default = "default_probes")]
    pub half_open_max_requests: u32,
}

fn default_error_percent() -> u32 {
    50
}
fn default_volume() -> u32 {
    10
}
fn default_reset() -> Duration {
    Duration::from_secs(30)
}
fn default_call_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_window() -> Duration {
    Duration::from_secs(10)
}
fn default_buckets() -> u32 {
    10
}
fn default_probes() -> u32 {
    1
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            error_threshold_percent: default_error_percent(),
            volume_threshold: default_volume(),
            reset_timeout: default_reset(),
            call_timeout: default_call_timeout(),
            rolling_window: default_window(),
            rolling_buckets: default_buckets(),
            half_open_max_requests: default_probes(),
        }
    }
}

/// A route: which requests go to which service, and how the path is rewritten.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique route name (shown in metrics and logs).
    pub name: String,
    /// What requests the route takes.
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    /// Target service.
    pub service: String,
    /// Remove the matched `path_prefix` before forwarding (`/echo/x` -> `/x`).
    #[serde(default)]
    pub strip_prefix: bool,
    /// Replace the matched prefix (or, for an exact path, the whole path,
    /// with `{param}` filled in) by this path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<String>,
    /// Largest request body accepted, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// Overrides the service's timeout for this route.
    #[serde(
        default,
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
}

impl RouteConfig {
    /// The body limit in force for this route.
    pub fn body_limit(&self) -> u64 {
        self.max_body_bytes.unwrap_or(DEFAULT_BODY_LIMIT)
    }
}

/// Request matching of a route. Exactly one of `path` and `path_prefix`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Exact path; segments may be `{param}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Path prefix on segment boundaries (`/echo` takes `/echo` and `/echo/x`, not `/echoes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Allowed methods; empty for all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Host (`api.example.com` or `*.example.com`); absent for any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// Why a config was refused: every problem found, each with its path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The document is not valid YAML/JSON or does not fit the model.
    #[error("cannot parse config: {0}")]
    Parse(String),
    /// The document parsed but breaks one or more rules.
    #[error("invalid config: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

/// One difference between two configs, for `gwctl apply` output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// `service` or `route`.
    pub kind: &'static str,
    /// Name of the service or route.
    pub name: String,
    /// `added`, `removed` or `changed`.
    pub action: &'static str,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.kind, self.name, self.action)
    }
}

impl GatewayConfig {
    /// Parses a YAML or JSON document (no validation beyond the model's shape).
    pub fn parse(document: &[u8]) -> Result<Self, ConfigError> {
        let text = std::str::from_utf8(document)
            .map_err(|_| ConfigError::Parse("document is not UTF-8".into()))?;
        if text.trim().is_empty() {
            return Err(ConfigError::Parse("document is empty".into()));
        }
        serde_norway::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// Parses then validates a document: what `gwctl apply` and `--config` accept.
    pub fn load(document: &[u8]) -> Result<Self, ConfigError> {
        let config = Self::parse(document)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses the canonical JSON form (as streamed to data planes) and validates it.
    pub fn from_json(json: &str) -> Result<Self, ConfigError> {
        let config: Self =
            serde_json::from_str(json).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// The canonical JSON form.
    pub fn to_json(&self) -> String {
        // Serializing plain structs, strings and numbers to JSON cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Looks a service up by name.
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Checks every rule and reports all problems at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        if self.version != CONFIG_VERSION {
            errors.push(format!(
                "version: must be {CONFIG_VERSION}, got {}",
                self.version
            ));
        }
        let mut names = BTreeSet::new();
        for (i, service) in self.services.iter().enumerate() {
            let at = format!("services[{i}]");
            if !names.insert(service.name.as_str()) {
                errors.push(format!("{at}.name: duplicate service {:?}", service.name));
            }
            service.validate(&at, &mut errors);
        }
        let mut route_names = BTreeSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            if !route_names.insert(route.name.as_str()) {
                errors.push(format!("{at}.name: duplicate route {:?}", route.name));
            }
            if !names.contains(route.service.as_str()) {
                errors.push(format!("{at}.service: unknown service {:?}", route.service));
            }
            route.validate(&at, &mut errors);
        }
        if errors.is_empty() {
            if let Err(e) =
                RouteTable::build(self.routes.iter().map(RouteSpec::from_route).zip(0..))
            {
                errors.push(format!("routes: {e}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }

    /// What changes when `self` is replaced by `next`.
    pub fn diff(&self, next: &GatewayConfig) -> Vec<Change> {
        let mut changes = diff_named(
            "service",
            self.services.iter().map(|s| (s.name.as_str(), s)),
            next.services.iter().map(|s| (s.name.as_str(), s)),
        );
        changes.extend(diff_named(
            "route",
            self.routes.iter().map(|r| (r.name.as_str(), r)),
            next.routes.iter().map(|r| (r.name.as_str(), r)),
        ));
        changes
    }
}

fn diff_named<'a, T: PartialEq + 'a>(
    kind: &'static str,
    old: impl Iterator<Item = (&'a str, &'a T)>,
    new: impl Iterator<Item = (&'a str, &'a T)>,
) -> Vec<Change> {
    let old: BTreeMap<_, _> = old.collect();
    let new: BTreeMap<_, _> = new.collect();
    let mut changes = Vec::new();
    for (name, item) in &new {
        let action = match old.get(name) {
            None => "added",
            Some(before) if before != item => "changed",
            Some(_) => continue,
        };
        changes.push(Change {
            kind,
            name: name.to_string(),
            action,
        });
    }
    for name in old.keys().filter(|n| !new.contains_key(*n)) {
        changes.push(Change {
            kind,
            name: name.to_string(),
            action: "removed",
        });
    }
    changes
}

/// Whether `name` is a valid service name: `[a-z0-9-]{1,63}`.
pub fn is_valid_service_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
];

fn check_range(errors: &mut Vec<String>, at: &str, value: Duration, min: Duration, max: Duration) {
    if value < min || value > max {
        errors.push(format!(
            "{at}: must be between {} and {}, got {}",
            duration::format(min),
            duration::format(max),
            duration::format(value)
        ));
    }
}

impl ServiceConfig {
    fn validate(&self, at: &str, errors: &mut Vec<String>) {
        if !is_valid_service_name(&self.name) {
            errors.push(format!(
                "{at}.name: {:?} must match [a-z0-9-]{{1,63}}",
                self.name
            ));
        }
        let hc = &self.health_check;
        if !hc.path.starts_with('/') {
            errors.push(format!("{at}.health_check.path: must start with '/'"));
        }
        let ms = Duration::from_millis;
        check_range(
            errors,
            &format!("{at}.health_check.interval"),
            hc.interval,
            ms(100),
            ms(3_600_000),
        );
        check_range(
            errors,
            &format!("{at}.health_check.timeout"),
            hc.timeout,
            ms(10),
            ms(60_000),
        );
        if hc.timeout > hc.interval {
            errors.push(format!(
                "{at}.health_check.timeout: must not exceed the interval"
            ));
        }
        for (field, v) in [
            ("healthy_threshold", hc.healthy_threshold),
            ("unhealthy_threshold", hc.unhealthy_threshold),
        ] {
            if !(1..=100).contains(&v) {
                errors.push(format!(
                    "{at}.health_check.{field}: must be between 1 and 100, got {v}"
                ));
            }
        }
        check_range(
            errors,
            &format!("{at}.timeout"),
            self.timeout,
            ms(1),
            ms(3_600_000),
        );
        check_range(
            errors,
            &format!("{at}.connect_timeout"),
            self.connect_timeout,
            ms(1),
            ms(60_000),
        );
        if let Err(e) = validate_hash_on(&self.load_balancer) {
            errors.push(format!("{at}.load_balancer: {e}"));
        }
        for (i, url) in self.instances.iter().enumerate() {
            if let Err(e) = parse_instance_url(url) {
                errors.push(format!("{at}.instances[{i}]: {e}"));
            }
        }
        if let Some(cb) = &self.circuit_breaker {
            cb.validate(&format!("{at}.circuit_breaker"), errors);
        }
    }
}

fn validate_hash_on(lb: &LoadBalancerConfig) -> Result<(), String> {
    match (&lb.strategy, lb.hash_on.as_deref()) {
        (Strategy::ConsistentHash, None) => Err("consistent-hash needs hash_on".into()),
        (_, None) => Ok(()),
        (_, Some(key)) => {
            let ok = key == "jwt-sub"
                || key == "client-ip"
                || key.strip_prefix("header:").is_some_and(|h| !h.is_empty())
                || key.strip_prefix("cookie:").is_some_and(|c| !c.is_empty());
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "hash_on {key:?} must be header:NAME, cookie:NAME, jwt-sub or client-ip"
                ))
            }
        }
    }
}

impl BreakerConfig {
    /// Checks the policy; problems are pushed with `at` as their path.
    pub fn validate(&self, at: &str, errors: &mut Vec<String>) {
        if !(1..=100).contains(&self.error_threshold_percent) {
            errors.push(format!(
                "{at}.error_threshold_percent: must be between 1 and 100"
            ));
        }
        if self.volume_threshold == 0 {
            errors.push(format!("{at}.volume_threshold: must be at least 1"));
        }
        let ms = Duration::from_millis;
        check_range(
            errors,
            &format!("{at}.reset_timeout"),
            self.reset_timeout,
            ms(10),
            ms(3_600_000),
        );
        check_range(
            errors,
            &format!("{at}.call_timeout"),
            self.call_timeout,
            ms(1),
            ms(3_600_000),
        );
        check_range(
            errors,
            &format!("{at}.rolling_window"),
            self.rolling_window,
            ms(100),
            ms(3_600_000),
        );
        if !(1..=1000).contains(&self.rolling_buckets) {
            errors.push(format!("{at}.rolling_buckets: must be between 1 and 1000"));
        }
        if !(1..=1000).contains(&self.half_open_max_requests) {
            errors.push(format!(
                "{at}.half_open_max_requests: must be between 1 and 1000"
            ));
        }
    }
}

impl RouteConfig {
    fn validate(&self, at: &str, errors: &mut Vec<String>) {
        if self.name.is_empty()
            || self.name.len() > 128
            || self
                .name
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            errors.push(format!(
                "{at}.name: must be 1-128 characters without spaces"
            ));
        }
        let m = &self.matcher;
        match (&m.path, &m.path_prefix) {
            (Some(_), Some(_)) | (None, None) => {
                errors.push(format!(
                    "{at}.match: needs exactly one of path and path_prefix"
                ));
            }
            (Some(p), None) | (None, Some(p)) => {
                if let Err(e) = crate::routing::check_pattern(p, m.path_prefix.is_some()) {
                    errors.push(format!("{at}.match: {e}"));
                }
            }
        }
        for method in &m.methods {
            if !METHODS.contains(&method.as_str()) {
                errors.push(format!(
                    "{at}.match.methods: unknown method {method:?} (use upper case)"
                ));
            }
        }
        if let Some(host) = &m.host {
            let bare = host.strip_prefix("*.").unwrap_or(host);
            let valid = !bare.is_empty()
                && bare.len() <= 253
                && bare
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !valid || host.bytes().any(|b| b.is_ascii_uppercase()) {
                errors.push(format!(
                    "{at}.match.host: {host:?} must be a lower-case host name or *.domain"
                ));
            }
        }
        if self.strip_prefix && m.path_prefix.is_none() {
            errors.push(format!(
                "{at}.strip_prefix: only applies to path_prefix routes"
            ));
        }
        if self.strip_prefix && self.rewrite.is_some() {
            errors.push(format!("{at}: strip_prefix and rewrite exclude each other"));
        }
        if let Some(rewrite) = &self.rewrite {
            if !rewrite.starts_with('/') {
                errors.push(format!("{at}.rewrite: must start with '/'"));
            }
        }
        if let Some(limit) = self.max_body_bytes {
            if limit > MAX_BODY_LIMIT {
                errors.push(format!("{at}.max_body_bytes: at most {MAX_BODY_LIMIT}"));
            }
        }
        if let Some(t) = self.timeout {
            check_range(
                errors,
                &format!("{at}.timeout"),
                t,
                Duration::from_millis(1),
                Duration::from_secs(3600),
            );
        }
    }
}

/// A static instance address parsed from `http://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceAddr {
    /// Host name or IP (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// Parses a static instance URL (`http://host:port`, port defaults to 80).
pub fn parse_instance_url(text: &str) -> Result<InstanceAddr, String> {
    let url = url::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if url.scheme() != "http" {
        return Err(format!("{text:?}: only http:// instances are supported"));
    }
    if url.path() != "/" || url.query().is_some() || !url.username().is_empty() {
        return Err(format!(
            "{text:?}: must be http://host:port without path, query or user"
        ));
    }
    let host = match url.host() {
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        Some(h) => h.to_string(),
        None => return Err(format!("{text:?}: missing host")),
    };
    Ok(InstanceAddr {
        host,
        port: url.port().unwrap_or(80),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
version: 1
services:
  - name: echo
    health_check: { path: /health, interval: 5s, timeout: 2s, healthy_threshold: 2, unhealthy_threshold: 2 }
    load_balancer: { strategy: round-robin }
    timeout: 10s
    instances: [ "http://127.0.0.1:8081" ]
routes:
  - name: echo
    match: { path_prefix: /echo, methods: [GET, POST] }
    service: echo
    strip_prefix: true
"#;

    #[test]
    fn parses_the_design_example() {
        let config = GatewayConfig::load(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(config.services[0].timeout, Duration::from_secs(10));
        assert_eq!(
            config.routes[0].matcher.path_prefix.as_deref(),
            Some("/echo")
        );
        let again = GatewayConfig::from_json(&config.to_json()).unwrap();
        assert_eq!(again, config);
    }

    #[test]
    fn json_documents_are_accepted() {
        let json = r#"{"version":1,"services":[{"name":"a"}],"routes":[{"name":"r","match":{"path":"/a/{id}"},"service":"a"}]}"#;
        let config = GatewayConfig::load(json.as_bytes()).unwrap();
        assert_eq!(
            config.services[0].health_check,
            HealthCheckConfig::default()
        );
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        let doc = r#"
version: 2
services:
  - name: Bad_Name
    instances: ["ftp://x"]
    health_check: { interval: 1s, timeout: 5s, unhealthy_threshold: 0 }
  - name: ok
  - name: ok
routes:
  - name: r1
    match: { path: /x, path_prefix: /y }
    service: nope
  - name: r1
    match: { path: nope, methods: [get] }
    service: ok
"#;
        let Err(ConfigError::Invalid(errors)) = GatewayConfig::load(doc.as_bytes()) else {
            panic!("expected invalid");
        };
        let all = errors.join("\n");
        for needle in [
            "version: must be 1",
            "services[0].name",
            "services[0].instances[0]",
            "services[0].health_check.timeout",
            "services[0].health_check.unhealthy_threshold",
            "services[2].name: duplicate",
            "routes[0].match: needs exactly one",
            "routes[0].service: unknown service",
            "routes[1].name: duplicate",
            "routes[1].match: ",
            "routes[1].match.methods",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let doc = "version: 1\nservices:\n  - name: a\n    timout: 5s\n";
        assert!(
            matches!(GatewayConfig::load(doc.as_bytes()), Err(ConfigError::Parse(m)) if m.contains("timout"))
        );
    }

    #[test]
    fn empty_and_binary_documents_are_refused() {
        assert!(GatewayConfig::load(b"  ").is_err());
        assert!(GatewayConfig::load(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn consistent_hash_needs_a_key() {
        let doc = "version: 1\nservices:\n  - name: a\n    load_balancer: { strategy: consistent-hash }\n";
        assert!(GatewayConfig::load(doc.as_bytes()).is_err());
        let doc = "version: 1\nservices:\n  - name: a\n    load_balancer: { strategy: consistent-hash, hash_on: 'header:x-user' }\n";
        assert!(GatewayConfig::load(doc.as_bytes()).is_ok());
    }

    #[test]
    fn diff_names_what_changed() {
        let old = GatewayConfig::load(EXAMPLE.as_bytes()).unwrap();
        let mut new = old.clone();
        new.services[0].timeout = Duration::from_secs(3);
        new.routes.clear();
        new.services.push(ServiceConfig {
            name: "b".into(),
            ..old.services[0].clone()
        });
        let changes: Vec<String> = old.diff(&new).iter().map(|c| c.to_string()).collect();
        assert_eq!(
            changes,
            vec![
                "service b added",
                "service echo changed",
                "route echo removed"
            ]
        );
    }

    #[test]
    fn instance_urls() {
        assert_eq!(
            parse_instance_url("http://10.0.0.1:81").unwrap(),
            InstanceAddr {
                host: "10.0.0.1".into(),
                port: 81
            }
        );
        assert_eq!(parse_instance_url("http://[::1]:81").unwrap().host, "::1");
        assert_eq!(parse_instance_url("http://svc").unwrap().port, 80);
        assert!(parse_instance_url("http://svc:1/path").is_err());
        assert!(parse_instance_url("https://svc:1").is_err());
    }
}
