//! Active health checks of a service, run by the control plane: the probe,
//! its timing and thresholds, with their defaults and checks.

use super::shared::{check_range, default_true};
use crate::duration;
use serde::{Deserialize, Serialize};
use std::time::Duration;

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

impl HealthCheckConfig {
    /// Checks the probe settings; problems are pushed with `at` as their path.
    pub(super) fn validate(&self, at: &str, errors: &mut Vec<String>) {
        if !self.path.starts_with('/') {
            errors.push(format!("{at}.path: must start with '/'"));
        }
        let ms = Duration::from_millis;
        check_range(
            errors,
            &format!("{at}.interval"),
            self.interval,
            ms(100),
            ms(3_600_000),
        );
        check_range(
            errors,
            &format!("{at}.timeout"),
            self.timeout,
            ms(10),
            ms(60_000),
        );
        if self.timeout > self.interval {
            errors.push(format!("{at}.timeout: must not exceed the interval"));
        }
        for (field, v) in [
            ("healthy_threshold", self.healthy_threshold),
            ("unhealthy_threshold", self.unhealthy_threshold),
        ] {
            if !(1..=100).contains(&v) {
                errors.push(format!("{at}.{field}: must be between 1 and 100, got {v}"));
            }
        }
    }
}
