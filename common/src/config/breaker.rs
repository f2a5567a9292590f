//! The circuit-breaker policy of a service: when it opens, how long it
//! stays open and how it probes before closing.

use super::shared::{check_range, default_true};
use crate::duration;
use serde::{Deserialize, Serialize};
use std::time::Duration;

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
