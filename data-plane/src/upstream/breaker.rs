//! Circuit breaker of one service on one data plane (the seed's opossum
//! semantics): closed, open, half-open.
//!
//! * **Closed**: every call goes through; outcomes are counted in a rolling
//!   window of buckets. Once the window holds at least `volume_threshold`
//!   calls and the failures reach `error_threshold_percent` of them, the
//!   breaker opens.
//! * **Open**: calls are refused at once until `reset_timeout` has passed.
//! * **Half-open**: at most `half_open_max_requests` probes go through at a
//!   time; a successful probe closes the breaker (with a fresh window), a
//!   failed one opens it again for another `reset_timeout`.
//!
//! A failure is a 5xx answer, a transport failure, a timeout, or an answer
//! slower than `call_timeout`. The hot path is atomics only.

use crate::edge::errors::{GatewayError, X_REQUEST_ID};
pub use crate::ops::handles::BreakerMetrics;
use crate::rolling::RollingWindow;
use crate::upstream::h1::response::ProxyBody;
use bytes::Bytes;
use gateway_common::config::{BreakerConfig, FallbackResponse};
use http::header::RETRY_AFTER;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

const SUCCESS: usize = 0;
const FAILURE: usize = 1;

/// State of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused.
    Open,
    /// A limited number of probes go through.
    HalfOpen,
}

impl BreakerState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    /// Value of the state gauge (0 closed, 1 open, 2 half-open).
    pub fn as_u8(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }

    /// Lower-case name, as logged.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

/// A call refused by an open breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    /// Time until the breaker lets probes through.
    pub retry_after: Duration,
}

impl Rejected {
    /// Whole seconds for a `Retry-After` header (at least 1).
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_millis().div_ceil(1000).max(1) as u64
    }
}

/// A breaker; shared by the snapshots of a service while its policy stays
/// the same.
#[derive(Debug)]
pub struct CircuitBreaker {
    service: Arc<String>,
    policy: BreakerConfig,
    window: RollingWindow<2>,
    state: AtomicU8,
    /// While open: when probes may start (ms of [`crate::rolling::now_ms`]).
    open_until: AtomicU64,
    /// Probes in flight while half-open.
    probes: AtomicU32,
    metrics: BreakerMetrics,
}

/// Leave to make one call; report its outcome with [`Permit::record`].
/// Dropping it unrecorded (the client went away) frees a probe slot and
/// counts nothing.
#[derive(Debug)]
pub struct Permit {
    breaker: Arc<CircuitBreaker>,
    probe: bool,
    recorded: bool,
}

impl CircuitBreaker {
    /// A closed breaker with `policy`.
    pub fn new(service: Arc<String>, policy: BreakerConfig, metrics: BreakerMetrics) -> Self {
        let window_ms = u64::try_from(policy.rolling_window.as_millis()).unwrap_or(u64::MAX);
        metrics.state.set(0);
        Self {
            window: RollingWindow::new(window_ms, policy.rolling_buckets),
            service,
            policy,
            state: AtomicU8::new(BreakerState::Closed.as_u8()),
            open_until: AtomicU64::new(0),
            probes: AtomicU32::new(0),
            metrics,
        }
    }

    /// The policy it applies.
    pub fn policy(&self) -> &BreakerConfig {
        &self.policy
    }

    /// The state as seen at `now`: an open breaker whose reset timeout has
    /// passed counts as half-open (its next call is a probe).
    pub fn state(&self, now: u64) -> BreakerState {
        match BreakerState::from_u8(self.state.load(Ordering::Acquire)) {
            BreakerState::Open if now >= self.open_until.load(Ordering::Acquire) => {
                BreakerState::HalfOpen
            }
            state => state,
        }
    }

    fn set_state(&self, state: BreakerState) {
        self.metrics.state.set(i64::from(state.as_u8()));
        match state {
            BreakerState::Open => {
                tracing::warn!(service = %self.service, "circuit breaker opened")
            }
            BreakerState::HalfOpen => {
                tracing::info!(service = %self.service, "circuit breaker half-open")
            }
            BreakerState::Closed => {
                tracing::info!(service = %self.service, "circuit breaker closed")
            }
        }
    }

    fn transition(&self, from: BreakerState, to: BreakerState) -> bool {
        let ok = self
            .state
            .compare_exchange(
                from.as_u8(),
                to.as_u8(),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok();
        if ok {
            self.set_state(to);
        }
        ok
    }

    fn reset_ms(&self) -> u64 {
        u64::try_from(self.policy.reset_timeout.as_millis()).unwrap_or(u64::MAX)
    }

    /// Asks to make a call at `now`.
    pub fn try_acquire(self: &Arc<Self>, now: u64) -> Result<Permit, Rejected> {
        loop {
            match BreakerState::from_u8(self.state.load(Ordering::Acquire)) {
                BreakerState::Closed => {
                    return Ok(Permit {
                        breaker: self.clone(),
                        probe: false,
                        recorded: false,
                    })
                }
                BreakerState::Open => {
                    let until = self.open_until.load(Ordering::Acquire);
                    if now < until {
                        self.metrics.rejected.inc();
                        return Err(Rejected {
                            retry_after: Duration::from_millis(until - now),
                        });
                    }
                    if self
                        .state
                        .compare_exchange(
                            BreakerState::Open.as_u8(),
                            BreakerState::HalfOpen.as_u8(),
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        )
                        .is_ok()
                    {
                        self.probes.store(0, Ordering::Release);
                        self.set_state(BreakerState::HalfOpen);
                    }
                }
                BreakerState::HalfOpen => {
                    let taken = self.probes.fetch_add(1, Ordering::AcqRel);
                    if taken < self.policy.half_open_max_requests {
                        return Ok(Permit {
                            breaker: self.clone(),
                            probe: true,
                            recorded: false,
                        });
                    }
                    self.release_probe();
                    self.metrics.rejected.inc();
                    return Err(Rejected {
                        retry_after: Duration::from_secs(1),
                    });
                }
            }
        }
    }

    /// Whether a call that took `elapsed` and succeeded (`ok`) counts as a
    /// success: slower than `call_timeout` is a failure.
    pub fn counts_as_success(&self, ok: bool, elapsed: Duration) -> bool {
        ok && elapsed <= self.policy.call_timeout
    }

    /// Frees a probe slot (never below zero: a probe of an earlier
    /// half-open period may finish after the count was reset).
    fn release_probe(&self) {
        let _ = self
            .probes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    fn record(&self, probe: bool, success: bool, now: u64) {
        if probe {
            self.release_probe();
            if success {
                if self.transition(BreakerState::HalfOpen, BreakerState::Closed) {
                    self.window.reset();
                }
            } else {
                self.open_until
                    .store(now.saturating_add(self.reset_ms()), Ordering::Release);
                self.transition(BreakerState::HalfOpen, BreakerState::Open);
            }
            return;
        }
        self.window
            .add(now, if success { SUCCESS } else { FAILURE }, 1);
        if success || self.state.load(Ordering::Acquire) != BreakerState::Closed.as_u8() {
            return;
        }
        let [ok, failed] = self.window.totals(now);
        let total = ok + failed;
        if total >= u64::from(self.policy.volume_threshold)
            && failed * 100 >= u64::from(self.policy.error_threshold_percent) * total
        {
            self.open_until
                .store(now.saturating_add(self.reset_ms()), Ordering::Release);
            if self.transition(BreakerState::Closed, BreakerState::Open) {
                tracing::warn!(
                    service = %self.service,
                    calls = total,
                    failures = failed,
                    "error rate over the breaker threshold"
                );
            }
        }
    }
}

impl Permit {
    /// Whether this call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// The breaker it belongs to.
    pub fn breaker(&self) -> &Arc<CircuitBreaker> {
        &self.breaker
    }

    /// Reports the call's outcome at `now`.
    pub fn record(mut self, success: bool, now: u64) {
        self.recorded = true;
        self.breaker.record(self.probe, success, now);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.recorded && self.probe {
            self.breaker.release_probe();
        }
    }
}

/// A route's fixed answer while its service's breaker is open.
#[derive(Debug)]
pub struct Fallback {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Fallback {
    /// From the route's validated `fallback` (a header that does not parse
    /// is left out).
    pub fn from_config(config: &FallbackResponse) -> Self {
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                (Ok(n), Ok(v)) => {
                    headers.append(n, v);
                }
                _ => tracing::warn!(header = %name, "fallback header left out: not a valid header"),
            }
        }
        Self {
            status: StatusCode::from_u16(config.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            headers,
            body: Bytes::from(config.body.clone()),
        }
    }
}

/// The answer to a call an open breaker refused: the route's fallback when
/// it has one, else the seed's JSON error (503 `CIRCUIT_OPEN`); both with
/// `Retry-After` (seconds until probes start).
pub fn open_response(
    service: &str,
    fallback: Option<&Fallback>,
    rejected: Rejected,
    request_id: Option<&HeaderValue>,
) -> Response<ProxyBody> {
    let retry_after = HeaderValue::from(rejected.retry_after_secs());
    let mut response = match fallback {
        Some(f) => {
            let mut response = Response::new(ProxyBody::full(f.body.clone()));
            *response.status_mut() = f.status;
            *response.headers_mut() = f.headers.clone();
            if let Some(id) = request_id {
                response.headers_mut().insert(X_REQUEST_ID, id.clone());
            }
            response
        }
        None => GatewayError::CircuitOpen.response(
            &format!("Service {service} is unavailable: its circuit breaker is open"),
            request_id,
        ),
    };
    if !response.headers().contains_key(RETRY_AFTER) {
        response.headers_mut().insert(RETRY_AFTER, retry_after);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(policy: BreakerConfig) -> Arc<CircuitBreaker> {
        Arc::new(CircuitBreaker::new(
            Arc::new("svc".into()),
            policy,
            BreakerMetrics::default(),
        ))
    }

    fn policy() -> BreakerConfig {
        BreakerConfig {
            error_threshold_percent: 50,
            volume_threshold: 4,
            reset_timeout: Duration::from_millis(1000),
            call_timeout: Duration::from_millis(500),
            rolling_window: Duration::from_millis(1000),
            rolling_buckets: 10,
            half_open_max_requests: 1,
            ..BreakerConfig::default()
        }
    }

    fn call(b: &Arc<CircuitBreaker>, now: u64, ok: bool) -> Result<(), Rejected> {
        b.try_acquire(now)?.record(ok, now);
        Ok(())
    }

    #[test]
    fn volume_threshold_holds_the_breaker_closed() {
        let b = breaker(policy());
        for t in 0..3 {
            call(&b, 10 + t, false).unwrap();
        }
        // Three failures out of three, but fewer than four calls.
        assert_eq!(b.state(20), BreakerState::Closed);
        call(&b, 21, false).unwrap();
        assert_eq!(b.state(21), BreakerState::Open);
    }

    #[test]
    fn error_percentage_over_the_window_opens_it() {
        let b = breaker(policy());
        // 3 successes, 2 failures: 40% < 50%.
        for (t, ok) in [(1, true), (2, true), (3, true), (4, false), (5, false)] {
            call(&b, t, ok).unwrap();
        }
        assert_eq!(b.state(5), BreakerState::Closed);
        // 3 of 6: 50%.
        call(&b, 6, false).unwrap();
        assert_eq!(b.state(6), BreakerState::Open);
        let rejected = b.try_acquire(300).unwrap_err();
        assert_eq!(rejected.retry_after, Duration::from_millis(706));
        assert_eq!(rejected.retry_after_secs(), 1);
    }

    #[test]
    fn old_failures_roll_out_of_the_window() {
        let b = breaker(policy());
        for t in 0..3 {
            call(&b, t, false).unwrap();
        }
        // 1.5 s later the window holds only the new calls.
        for t in 1500..1503 {
            call(&b, t, true).unwrap();
        }
        call(&b, 1504, false).unwrap();
        assert_eq!(b.state(1504), BreakerState::Closed);
    }

    #[test]
    fn half_open_lets_a_limited_number_of_probes_through() {
        let mut p = policy();
        p.half_open_max_requests = 2;
        let b = breaker(p);
        for t in 0..4 {
            call(&b, t, false).unwrap();
        }
        assert!(b.try_acquire(500).is_err());
        assert_eq!(b.state(1003), BreakerState::HalfOpen);
        let p1 = b.try_acquire(1010).unwrap();
        let p2 = b.try_acquire(1010).unwrap();
        assert!(p1.is_probe() && p2.is_probe());
        assert!(b.try_acquire(1010).is_err(), "a third probe");
        // A probe abandoned frees its slot.
        drop(p2);
        let p3 = b.try_acquire(1011).unwrap();
        // A failed probe opens it again for another reset timeout.
        p1.record(false, 1020);
        assert_eq!(b.state(1020), BreakerState::Open);
        assert!(b.try_acquire(1500).is_err());
        drop(p3);
        // Then a successful probe closes it with a fresh window.
        let probe = b.try_acquire(2021).unwrap();
        probe.record(true, 2030);
        assert_eq!(b.state(2030), BreakerState::Closed);
        call(&b, 2031, false).unwrap();
        assert_eq!(b.state(2031), BreakerState::Closed);
    }

    #[test]
    fn slow_calls_count_as_failures() {
        let b = breaker(policy());
        assert!(b.counts_as_success(true, Duration::from_millis(500)));
        assert!(!b.counts_as_success(true, Duration::from_millis(501)));
        assert!(!b.counts_as_success(false, Duration::from_millis(1)));
    }
}
