//! An upstream service: its timeouts and static instances, and how its
//! policies (health check, balancing, breaker, retry, outlier detection,
//! per-endpoint timeouts) are put together and checked.

use super::breaker::BreakerConfig;
use super::endpoint::EndpointPattern;
use super::health_check::HealthCheckConfig;
use super::instance::parse_instance_url;
use super::load_balancer::LoadBalancerConfig;
use super::outlier::OutlierConfig;
use super::retry::RetryConfig;
use super::shared::check_range;
use super::upstream_tls::UpstreamTlsConfig;
use crate::duration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

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
    /// Time allowed to open a connection to an instance (TCP, and the TLS
    /// handshake of an `https://` instance).
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// Static instances as `http://host:port` or `https://host:port` URLs,
    /// besides registered ones.
    #[serde(default)]
    pub instances: Vec<String>,
    /// TLS to the service's `https://` instances (trusted CA, verified name,
    /// client certificate); absent: the platform's roots and the instance's
    /// host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTlsConfig>,
    /// Circuit-breaker policy (also set with `gwctl breaker set`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<BreakerConfig>,
    /// Per-endpoint timeouts keyed `"METHOD /path"` (the path the service
    /// receives; `{param}` matches one segment, a final `*` any rest). They
    /// override the route's and the service's timeout.
    #[serde(
        default,
        with = "duration::map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub endpoint_timeouts: BTreeMap<String, Duration>,
    /// Retry policy; absent: a request gets one attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryConfig>,
    /// Passive outlier detection; absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierConfig>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}

/// Whether `name` is a valid service name: `[a-z0-9-]{1,63}`.
pub fn is_valid_service_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl ServiceConfig {
    /// Checks the service and its policies; problems are pushed with `at`
    /// as their path.
    pub(super) fn validate(&self, at: &str, errors: &mut Vec<String>) {
        if !is_valid_service_name(&self.name) {
            errors.push(format!(
                "{at}.name: {:?} must match [a-z0-9-]{{1,63}}",
                self.name
            ));
        }
        self.health_check
            .validate(&format!("{at}.health_check"), errors);
        self.validate_timeouts(at, errors);
        if let Err(e) = self.load_balancer.check_hash_on() {
            errors.push(format!("{at}.load_balancer: {e}"));
        }
        for (i, url) in self.instances.iter().enumerate() {
            if let Err(e) = parse_instance_url(url) {
                errors.push(format!("{at}.instances[{i}]: {e}"));
            }
        }
        if let Some(tls) = &self.tls {
            tls.validate(&format!("{at}.tls"), errors);
        }
        if let Some(cb) = &self.circuit_breaker {
            cb.validate(&format!("{at}.circuit_breaker"), errors);
        }
        self.load_balancer
            .validate_panic_threshold(&format!("{at}.load_balancer"), errors);
        self.validate_endpoint_timeouts(at, errors);
        if let Some(retry) = &self.retry {
            retry.validate(&format!("{at}.retry"), errors);
        }
        if let Some(outlier) = &self.outlier_detection {
            outlier.validate(&format!("{at}.outlier_detection"), errors);
        }
    }

    /// Checks the service's own timeout and connect timeout.
    fn validate_timeouts(&self, at: &str, errors: &mut Vec<String>) {
        let ms = Duration::from_millis;
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
    }

    /// Checks each per-endpoint timeout: its key and its duration.
    fn validate_endpoint_timeouts(&self, at: &str, errors: &mut Vec<String>) {
        let ms = Duration::from_millis;
        for (key, timeout) in &self.endpoint_timeouts {
            let path = format!("{at}.endpoint_timeouts[{key:?}]");
            if let Err(e) = EndpointPattern::parse(key) {
                errors.push(format!("{path}: {e}"));
            }
            check_range(errors, &path, *timeout, ms(1), ms(3_600_000));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::invalid;
    use crate::config::{ConfigError, GatewayConfig};

    #[test]
    fn resilience_policies_parse_with_defaults() {
        let doc = r#"
version: 1
services:
  - name: pay
    load_balancer: { strategy: least-request, panic_threshold_percent: 30 }
    endpoint_timeouts: { "POST /payments": 30s, "GET /payments/{id}": 2s, "GET /reports/*": 1m }
    retry: { max_attempts: 4, retry_on: [connect-failure, 5xx], per_try_timeout: 1s }
    outlier_detection: { consecutive_failures: 3 }
    circuit_breaker: { error_threshold_percent: 25 }
routes:
  - name: pay
    match: { path_prefix: /pay }
    service: pay
    fallback: { status: 200, headers: { content-type: application/json }, body: '{"queued":true}' }
"#;
        let config = GatewayConfig::load(doc.as_bytes()).unwrap();
        let pay = &config.services[0];
        assert_eq!(pay.load_balancer.panic_threshold_percent, 30);
        assert_eq!(
            pay.endpoint_timeouts["POST /payments"],
            Duration::from_secs(30)
        );
        let retry = pay.retry.as_ref().unwrap();
        assert_eq!(retry.budget_percent, 20);
        assert_eq!(retry.max_buffered_body_bytes, 64 * 1024);
        let on = retry.conditions();
        assert!(on.connect_failure && !on.reset && !on.timeout);
        assert!(on.status(500) && on.status(599) && !on.status(404));
        let outlier = pay.outlier_detection.as_ref().unwrap();
        assert_eq!(outlier.max_ejection_percent, 50);
        assert_eq!(config.routes[0].fallback.as_ref().unwrap().status, 200);
        let again = GatewayConfig::from_json(&config.to_json()).unwrap();
        assert_eq!(again, config);
        // Defaults of a plain service: no retry, no outlier detection, panic at 50%.
        let plain = GatewayConfig::load(b"version: 1\nservices: [ {name: a} ]\n").unwrap();
        assert!(plain.services[0].retry.is_none());
        assert!(plain.services[0].outlier_detection.is_none());
        assert_eq!(plain.services[0].load_balancer.panic_threshold_percent, 50);
        let json = plain.to_json();
        for newer in [
            "endpoint_timeouts",
            "panic_threshold",
            "retry",
            "outlier",
            "fallback",
        ] {
            assert!(!json.contains(newer), "{json}");
        }
    }

    #[test]
    fn invalid_resilience_policies_are_reported_with_their_path() {
        let all = invalid(
            r#"
version: 1
services:
  - name: a
    load_balancer: { panic_threshold_percent: 101 }
    endpoint_timeouts: { "FETCH /x": 1s, "GET x": 1s, "GET /a/*/b": 1s, "GET /ok": 0ms }
    retry:
      max_attempts: 0
      base_delay: 5s
      max_delay: 1s
      multiplier: 0.5
      retry_on: [404, sometimes]
      budget_percent: 150
      max_buffered_body_bytes: 10000000
    outlier_detection: { consecutive_failures: 0, base_ejection_time: 10s, max_ejection_time: 1s, max_ejection_percent: 101 }
routes:
  - name: r
    match: { path_prefix: /a }
    service: a
    fallback: { status: 99, headers: { "bad name": x, content-length: "1" } }
"#,
        );
        for needle in [
            "services[0].load_balancer.panic_threshold_percent",
            "endpoint_timeouts[\"FETCH /x\"]: unknown method",
            "endpoint_timeouts[\"GET x\"]: the path must start",
            "endpoint_timeouts[\"GET /a/*/b\"]: '*' may only",
            "endpoint_timeouts[\"GET /ok\"]: must be between",
            "services[0].retry.max_attempts",
            "services[0].retry.max_delay: must not be below",
            "services[0].retry.multiplier",
            "services[0].retry.retry_on[0]: 404: a 4xx answer is never retried",
            "services[0].retry.retry_on[1]",
            "services[0].retry.budget_percent",
            "services[0].retry.max_buffered_body_bytes",
            "services[0].outlier_detection.consecutive_failures",
            "services[0].outlier_detection.max_ejection_time",
            "services[0].outlier_detection.max_ejection_percent",
            "routes[0].fallback.status",
            "routes[0].fallback.headers: \"bad name\"",
            "routes[0].fallback.headers: \"content-length\" is set by the gateway",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        let doc = "version: 1\nservices:\n  - name: a\n    retry: { attempts: 3 }\n";
        assert!(matches!(
            GatewayConfig::load(doc.as_bytes()),
            Err(ConfigError::Parse(m)) if m.contains("attempts")
        ));
    }
}
