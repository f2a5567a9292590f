//! The retry policy of a service: attempts, backoff, the failures retried
//! ([`RetryOn`]) and the retry budget.

use super::shared::{check_range, default_true};
use crate::duration;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What a failed attempt may be retried on.
pub const RETRY_CONDITIONS: [&str; 4] = ["connect-failure", "reset", "timeout", "5xx"];

/// Retry policy of a service (the seed's `retry.service.ts` options).
///
/// Only idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) and
/// requests carrying `Idempotency-Key` are retried, never on a 4xx, within
/// the request's deadline and the service's retry budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all, the first included (the seed's `maxRetries`), 1-10.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Backoff before the first retry.
    #[serde(default = "default_base_delay", with = "duration")]
    pub base_delay: Duration,
    /// Longest backoff.
    #[serde(default = "default_max_delay", with = "duration")]
    pub max_delay: Duration,
    /// Growth of the backoff per retry, 1-10.
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
    /// Full jitter: each backoff is uniform in `[0, computed]`.
    #[serde(default = "default_true")]
    pub jitter: bool,
    /// Failures retried: `connect-failure`, `reset` (the connection failed
    /// after the request was sent), `timeout` (an attempt's
    /// `per_try_timeout` expired), `5xx`, or a status code 500-599.
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<String>,
    /// Time one attempt may take; absent: the whole remaining deadline.
    #[serde(
        default,
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub per_try_timeout: Option<Duration>,
    /// Retries allowed as a share (percent) of the service's requests over
    /// the last 10 s.
    #[serde(default = "default_budget_percent")]
    pub budget_percent: u32,
    /// Retries per second always allowed, whatever the traffic.
    #[serde(default = "default_min_retries")]
    pub min_retries_per_second: u32,
    /// Request bodies up to this size (declared by `Content-Length`) are
    /// buffered so the request can be retried; larger or chunked bodies are
    /// streamed and get one attempt.
    #[serde(default = "default_retry_body")]
    pub max_buffered_body_bytes: u64,
}

/// Largest `max_buffered_body_bytes`.
pub const MAX_RETRY_BODY: u64 = 1 << 20;

fn default_attempts() -> u32 {
    3
}
fn default_base_delay() -> Duration {
    Duration::from_millis(100)
}
fn default_max_delay() -> Duration {
    Duration::from_secs(2)
}
fn default_multiplier() -> f64 {
    2.0
}
fn default_retry_on() -> Vec<String> {
    ["connect-failure", "reset", "502", "503", "504"]
        .map(String::from)
        .to_vec()
}
fn default_budget_percent() -> u32 {
    20
}
fn default_min_retries() -> u32 {
    3
}
fn default_retry_body() -> u64 {
    64 * 1024
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: default_attempts(),
            base_delay: default_base_delay(),
            max_delay: default_max_delay(),
            multiplier: default_multiplier(),
            jitter: true,
            retry_on: default_retry_on(),
            per_try_timeout: None,
            budget_percent: default_budget_percent(),
            min_retries_per_second: default_min_retries(),
            max_buffered_body_bytes: default_retry_body(),
        }
    }
}

impl RetryConfig {
    /// Checks the policy; problems are pushed with `at` as their path.
    pub fn validate(&self, at: &str, errors: &mut Vec<String>) {
        if !(1..=10).contains(&self.max_attempts) {
            errors.push(format!("{at}.max_attempts: must be between 1 and 10"));
        }
        let ms = Duration::from_millis;
        check_range(
            errors,
            &format!("{at}.base_delay"),
            self.base_delay,
            ms(1),
            ms(3_600_000),
        );
        check_range(
            errors,
            &format!("{at}.max_delay"),
            self.max_delay,
            ms(1),
            ms(3_600_000),
        );
        if self.max_delay < self.base_delay {
            errors.push(format!("{at}.max_delay: must not be below base_delay"));
        }
        if !(1.0..=10.0).contains(&self.multiplier) {
            errors.push(format!("{at}.multiplier: must be between 1 and 10"));
        }
        if self.retry_on.is_empty() {
            errors.push(format!("{at}.retry_on: must name at least one failure"));
        }
        for (i, condition) in self.retry_on.iter().enumerate() {
            if let Err(e) = RetryOn::parse(condition) {
                errors.push(format!("{at}.retry_on[{i}]: {e}"));
            }
        }
        if let Some(t) = self.per_try_timeout {
            check_range(
                errors,
                &format!("{at}.per_try_timeout"),
                t,
                ms(1),
                ms(3_600_000),
            );
        }
        if self.budget_percent > 100 {
            errors.push(format!("{at}.budget_percent: must be between 0 and 100"));
        }
        if self.min_retries_per_second > 10_000 {
            errors.push(format!(
                "{at}.min_retries_per_second: must be at most 10000"
            ));
        }
        if self.max_buffered_body_bytes > MAX_RETRY_BODY {
            errors.push(format!(
                "{at}.max_buffered_body_bytes: at most {MAX_RETRY_BODY}"
            ));
        }
    }

    /// The parsed `retry_on` conditions (invalid ones skipped; a validated
    /// config has none).
    pub fn conditions(&self) -> RetryOn {
        self.retry_on
            .iter()
            .filter_map(|c| RetryOn::parse(c).ok())
            .fold(RetryOn::default(), RetryOn::union)
    }
}

/// The failures a retry policy retries, as a set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// The connection could not be opened (the request was never sent).
    pub connect_failure: bool,
    /// The exchange failed after the request was sent.
    pub reset: bool,
    /// An attempt's `per_try_timeout` expired.
    pub timeout: bool,
    /// Bit `n` set: retry a response with status `500 + n`.
    pub statuses: u128,
}

impl RetryOn {
    /// Parses one `retry_on` entry.
    pub fn parse(text: &str) -> Result<RetryOn, String> {
        let mut on = RetryOn::default();
        match text {
            "connect-failure" => on.connect_failure = true,
            "reset" => on.reset = true,
            "timeout" => on.timeout = true,
            "5xx" => on.statuses = u128::MAX >> 28,
            code => match code.parse::<u16>() {
                Ok(status @ 500..=599) => on.statuses = 1 << (status - 500),
                Ok(status @ 400..=499) => {
                    return Err(format!("{status}: a 4xx answer is never retried"))
                }
                _ => {
                    return Err(format!(
                        "{text:?} must be one of {} or a status code 500-599",
                        RETRY_CONDITIONS.join(", ")
                    ))
                }
            },
        }
        Ok(on)
    }

    fn union(self, other: RetryOn) -> RetryOn {
        RetryOn {
            connect_failure: self.connect_failure || other.connect_failure,
            reset: self.reset || other.reset,
            timeout: self.timeout || other.timeout,
            statuses: self.statuses | other.statuses,
        }
    }

    /// Whether a response with `status` is retried.
    pub fn status(&self, status: u16) -> bool {
        (500..600).contains(&status) && self.statuses & (1 << (status - 500)) != 0
    }
}
