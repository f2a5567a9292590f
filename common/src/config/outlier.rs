//! Passive outlier detection of a service: when an instance is ejected and
//! for how long.

use super::shared::check_range;
use crate::duration;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Passive outlier detection of a service: each data plane ejects an
/// instance after consecutive failures (5xx answers, connect failures,
/// resets, timeouts) for a period that grows with each ejection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    /// Consecutive failures that eject an instance.
    #[serde(default = "default_consecutive")]
    pub consecutive_failures: u32,
    /// First ejection period; the n-th ejection in a row lasts n times this.
    #[serde(default = "default_base_ejection", with = "duration")]
    pub base_ejection_time: Duration,
    /// Longest ejection period.
    #[serde(default = "default_max_ejection", with = "duration")]
    pub max_ejection_time: Duration,
    /// Most instances of the service ejected at once, as a percentage (at
    /// least one instance may always be ejected when this is above 0).
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
}

fn default_consecutive() -> u32 {
    5
}
fn default_base_ejection() -> Duration {
    Duration::from_secs(30)
}
fn default_max_ejection() -> Duration {
    Duration::from_secs(300)
}
fn default_max_ejection_percent() -> u32 {
    50
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: default_consecutive(),
            base_ejection_time: default_base_ejection(),
            max_ejection_time: default_max_ejection(),
            max_ejection_percent: default_max_ejection_percent(),
        }
    }
}

impl OutlierConfig {
    /// Checks the policy; problems are pushed with `at` as their path.
    pub fn validate(&self, at: &str, errors: &mut Vec<String>) {
        if !(1..=1000).contains(&self.consecutive_failures) {
            errors.push(format!(
                "{at}.consecutive_failures: must be between 1 and 1000"
            ));
        }
        let ms = Duration::from_millis;
        check_range(
            errors,
            &format!("{at}.base_ejection_time"),
            self.base_ejection_time,
            ms(1),
            ms(3_600_000),
        );
        check_range(
            errors,
            &format!("{at}.max_ejection_time"),
            self.max_ejection_time,
            ms(1),
            ms(86_400_000),
        );
        if self.max_ejection_time < self.base_ejection_time {
            errors.push(format!(
                "{at}.max_ejection_time: must not be below base_ejection_time"
            ));
        }
        if self.max_ejection_percent > 100 {
            errors.push(format!(
                "{at}.max_ejection_percent: must be between 0 and 100"
            ));
        }
    }
}
