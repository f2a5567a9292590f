//! Retries: which requests may be sent again, when, after how long, and the
//! budget that keeps an outage from multiplying the load on a service.
//!
//! * Only idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) or
//!   requests carrying `Idempotency-Key` are retried: a POST without one
//!   reaches the upstream at most once.
//! * Only the failures the policy names (`retry_on`), never a 4xx.
//! * Backoff is exponential with full jitter (uniform in `[0, min(max_delay,
//!   base_delay * multiplier^(n-1))]`), and a retry whose backoff would end
//!   past the request's deadline is not made.
//! * The budget: over the last 10 s, retries may be at most
//!   `budget_percent` of the service's requests, or `min_retries_per_second`
//!   per second, whichever is more.

pub use crate::ops::handles::RetryMetrics;
use crate::rolling::RollingWindow;
use gateway_common::config::{RetryConfig, RetryOn};
use http::{HeaderMap, HeaderName, Method};
use std::time::Duration;

/// The request header that makes a non-idempotent request retryable.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Length of the retry budget's window.
pub const BUDGET_WINDOW: Duration = Duration::from_secs(10);

const REQUESTS: usize = 0;
const RETRIES: usize = 1;

/// Whether a request may be sent more than once.
pub fn is_retryable_request(method: &Method, headers: &HeaderMap) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    ) || headers.contains_key(IDEMPOTENCY_KEY)
}

/// Caps retries to a share of requests over a rolling window.
#[derive(Debug)]
pub struct RetryBudget {
    window: RollingWindow<2>,
    percent: u64,
    floor: u64,
}

impl RetryBudget {
    /// A budget of `percent` of requests, at least `min_per_second` retries
    /// per second.
    pub fn new(percent: u32, min_per_second: u32) -> Self {
        let window_ms = BUDGET_WINDOW.as_millis() as u64;
        Self {
            window: RollingWindow::new(window_ms, 10),
            percent: u64::from(percent),
            floor: u64::from(min_per_second) * BUDGET_WINDOW.as_secs(),
        }
    }

    /// Counts a request (its first attempt) at `now`.
    pub fn record_request(&self, now: u64) {
        self.window.add(now, REQUESTS, 1);
    }

    /// Takes one retry from the budget at `now`, if any is left.
    pub fn try_take(&self, now: u64) -> bool {
        let [requests, retries] = self.window.totals(now);
        let allowed = (requests * self.percent / 100).max(self.floor);
        if retries < allowed {
            self.window.add(now, RETRIES, 1);
            true
        } else {
            false
        }
    }
}

/// A service's retry policy, ready to use.
#[derive(Debug)]
pub struct RetryPolicy {
    /// Attempts in all.
    pub max_attempts: u32,
    base_delay: Duration,
    max_delay: Duration,
    multiplier: f64,
    jitter: bool,
    /// Failures retried.
    pub on: RetryOn,
    /// Time one attempt may take.
    pub per_try_timeout: Option<Duration>,
    /// Largest body buffered for retries.
    pub max_buffered_body: u64,
    /// The budget (shared by the snapshots of the service while the policy stays).
    pub budget: RetryBudget,
    /// Counters.
    pub metrics: RetryMetrics,
    config: RetryConfig,
}

impl RetryPolicy {
    /// The policy of `config`.
    pub fn new(config: &RetryConfig, metrics: RetryMetrics) -> Self {
        Self {
            max_attempts: config.max_attempts.max(1),
            base_delay: config.base_delay,
            max_delay: config.max_delay,
            multiplier: config.multiplier,
            jitter: config.jitter,
            on: config.conditions(),
            per_try_timeout: config.per_try_timeout,
            max_buffered_body: config.max_buffered_body_bytes,
            budget: RetryBudget::new(config.budget_percent, config.min_retries_per_second),
            metrics,
            config: config.clone(),
        }
    }

    /// The config it was made from.
    pub fn config(&self) -> &RetryConfig {
        &self.config
    }

    /// The longest wait before retry number `retry` (1 for the first).
    pub fn backoff_ceiling(&self, retry: u32) -> Duration {
        let exp = i32::try_from(retry.saturating_sub(1)).unwrap_or(i32::MAX);
        let factor = self.multiplier.powi(exp);
        let ms = self.base_delay.as_secs_f64() * 1000.0 * factor;
        let max_ms = self.max_delay.as_secs_f64() * 1000.0;
        Duration::from_millis(ms.min(max_ms).max(0.0) as u64)
    }

    /// The wait before retry number `retry`: the ceiling, or with jitter a
    /// uniform draw below it.
    pub fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self.backoff_ceiling(retry);
        if !self.jitter {
            return ceiling;
        }
        let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::random_range(0..=ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(config: RetryConfig) -> RetryPolicy {
        RetryPolicy::new(&config, RetryMetrics::default())
    }

    #[test]
    fn only_idempotent_or_keyed_requests_are_retryable() {
        let none = HeaderMap::new();
        for m in [
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ] {
            assert!(is_retryable_request(&m, &none), "{m}");
        }
        assert!(!is_retryable_request(&Method::POST, &none));
        assert!(!is_retryable_request(&Method::PATCH, &none));
        let mut keyed = HeaderMap::new();
        keyed.insert(IDEMPOTENCY_KEY, "k-1".parse().unwrap());
        assert!(is_retryable_request(&Method::POST, &keyed));
    }

    #[test]
    fn backoff_grows_exponentially_up_to_the_cap() {
        let p = policy(RetryConfig {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            multiplier: 2.0,
            jitter: false,
            ..RetryConfig::default()
        });
        let waits: Vec<u64> = (1..=6).map(|n| p.backoff(n).as_millis() as u64).collect();
        assert_eq!(waits, vec![100, 200, 400, 800, 1000, 1000]);
        // The seed's NFT settings: 5 s, x2.5, at most 10 min.
        let nft = policy(RetryConfig {
            base_delay: Duration::from_secs(5),
            max_delay: Duration::from_secs(600),
            multiplier: 2.5,
            ..RetryConfig::default()
        });
        assert_eq!(nft.backoff_ceiling(2), Duration::from_millis(12_500));
        assert_eq!(nft.backoff_ceiling(40), Duration::from_secs(600));
    }

    #[test]
    fn jittered_backoff_stays_within_bounds_and_varies() {
        let p = policy(RetryConfig {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(400),
            ..RetryConfig::default()
        });
        let mut seen = std::collections::HashSet::new();
        for retry in 1..=5 {
            for _ in 0..200 {
                let d = p.backoff(retry);
                assert!(d <= p.backoff_ceiling(retry), "{retry}: {d:?}");
                seen.insert(d);
            }
        }
        assert!(seen.len() > 50, "little jitter: {}", seen.len());
    }

    #[test]
    fn budget_caps_retries_to_a_share_of_requests() {
        // 20%, no floor.
        let budget = RetryBudget::new(20, 0);
        for t in 0..100 {
            budget.record_request(t);
        }
        let granted = (0..100).filter(|t| budget.try_take(100 + t)).count();
        assert_eq!(granted, 20);
        // More requests, more retries.
        for t in 0..50 {
            budget.record_request(300 + t);
        }
        assert_eq!((0..100).filter(|_| budget.try_take(400)).count(), 10);
        // Once the window has rolled past, the budget is whole again.
        for t in 0..10 {
            budget.record_request(20_000 + t);
        }
        assert_eq!((0..100).filter(|_| budget.try_take(20_010)).count(), 2);
    }

    #[test]
    fn budget_floor_lets_low_traffic_retry() {
        let budget = RetryBudget::new(20, 3);
        budget.record_request(1);
        // 3 per second over a 10 s window.
        assert_eq!((0..100).filter(|_| budget.try_take(2)).count(), 30);
        let none = RetryBudget::new(0, 0);
        none.record_request(1);
        assert!(!none.try_take(2));
    }
}
