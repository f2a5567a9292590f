//! Passive outlier detection: each data plane watches the outcome of its
//! own requests and ejects an instance after `consecutive_failures` in a
//! row (5xx answers, connect failures, resets, timeouts).
//!
//! The n-th ejection in a row lasts `n * base_ejection_time` (at most
//! `max_ejection_time`); the count decays by one for every
//! `base_ejection_time` the instance spends back in service. No more than
//! `max_ejection_percent` of a service's healthy instances are ejected at
//! once (at least one may be). An ejection ends by itself when its time is
//! up; the balancer skips ejected instances meanwhile.

use crate::upstream::balancer::Endpoint;
use gateway_common::config::OutlierConfig;
use prometheus_client::metrics::counter::Counter;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Outlier bookkeeping of one instance; lives with its in-flight counter
/// and survives config updates.
#[derive(Debug, Default)]
pub struct OutlierState {
    consecutive: AtomicU32,
    /// While ejected: when the ejection ends (ms); 0 when not ejected.
    ejected_until: AtomicU64,
    /// Ejections in a row (decayed at the next ejection).
    ejections: AtomicU32,
    /// End of the last ejection (ms), 0 if never ejected.
    last_end: AtomicU64,
}

impl OutlierState {
    /// Whether the instance is ejected at `now` (no clearing).
    pub fn is_ejected(&self, now: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Acquire);
        until != 0 && now < until
    }

    /// Whether an ejection was ever set and not yet cleared (a cheap check
    /// that needs no clock).
    #[inline]
    pub fn maybe_ejected(&self) -> bool {
        self.ejected_until.load(Ordering::Relaxed) != 0
    }

    /// Consecutive failures counted.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive.load(Ordering::Relaxed)
    }
}

/// A service's outlier detector.
#[derive(Debug)]
pub struct OutlierDetector {
    service: Arc<String>,
    policy: OutlierConfig,
    /// Instances whose ejection is set and not yet cleared.
    ejected: AtomicUsize,
    ejections_total: Counter,
}

impl OutlierDetector {
    /// A detector applying `policy`.
    pub fn new(service: Arc<String>, policy: OutlierConfig, ejections_total: Counter) -> Self {
        Self {
            service,
            policy,
            ejected: AtomicUsize::new(0),
            ejections_total,
        }
    }

    /// The policy it applies.
    pub fn policy(&self) -> &OutlierConfig {
        &self.policy
    }

    /// Instances currently counted as ejected.
    pub fn ejected_count(&self) -> usize {
        self.ejected.load(Ordering::Relaxed)
    }

    /// Recounts the ejected instances among `endpoints` (after a rebuild:
    /// instances may have gone while ejected).
    pub fn recount(&self, endpoints: &[Arc<Endpoint>], now: u64) {
        let n = endpoints
            .iter()
            .filter(|e| e.load.outlier.is_ejected(now))
            .count();
        self.ejected.store(n, Ordering::Relaxed);
    }

    /// Whether `endpoint` is ejected at `now`; an ejection whose time is up
    /// is cleared here.
    pub fn is_ejected(&self, endpoint: &Endpoint, now: u64) -> bool {
        let state = &endpoint.load.outlier;
        let until = state.ejected_until.load(Ordering::Acquire);
        if until == 0 {
            return false;
        }
        if now < until {
            return true;
        }
        if state
            .ejected_until
            .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let _ = self
                .ejected
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
            tracing::info!(service = %self.service, instance = %endpoint.id, "instance back from ejection");
        }
        false
    }

    /// Most instances that may be ejected at once out of `total`.
    pub fn max_ejected(&self, total: usize) -> usize {
        if self.policy.max_ejection_percent == 0 || total == 0 {
            return 0;
        }
        (total * self.policy.max_ejection_percent as usize / 100).max(1)
    }

    /// Records the outcome of a request to `endpoint` at `now`; `peers` are
    /// the service's healthy instances (for the ejection cap).
    pub fn record(&self, endpoint: &Endpoint, failed: bool, now: u64, peers: &[Arc<Endpoint>]) {
        let state = &endpoint.load.outlier;
        if !failed {
            if state.consecutive.load(Ordering::Relaxed) != 0 {
                state.consecutive.store(0, Ordering::Relaxed);
            }
            return;
        }
        let n = state.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
        if n < self.policy.consecutive_failures || state.maybe_ejected() {
            return;
        }
        let ejected_now = peers.iter().filter(|p| self.is_ejected(p, now)).count();
        if ejected_now >= self.max_ejected(peers.len()) {
            tracing::debug!(service = %self.service, instance = %endpoint.id, "not ejected: too many instances ejected already");
            return;
        }
        let base = self.policy.base_ejection_time.as_millis() as u64;
        let max = self.policy.max_ejection_time.as_millis() as u64;
        let last_end = state.last_end.load(Ordering::Relaxed);
        let previous = state.ejections.load(Ordering::Relaxed);
        let decayed = if last_end != 0 && now > last_end && base > 0 {
            let periods = (now - last_end) / base;
            previous.saturating_sub(u32::try_from(periods).unwrap_or(u32::MAX))
        } else {
            previous
        };
        let count = decayed.saturating_add(1);
        let period = base.saturating_mul(u64::from(count)).min(max).max(1);
        let until = now.saturating_add(period);
        if state
            .ejected_until
            .compare_exchange(0, until, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            state.ejections.store(count, Ordering::Relaxed);
            state.last_end.store(until, Ordering::Relaxed);
            state.consecutive.store(0, Ordering::Relaxed);
            self.ejected.fetch_add(1, Ordering::AcqRel);
            self.ejections_total.inc();
            tracing::warn!(
                service = %self.service,
                instance = %endpoint.id,
                failures = n,
                ejection = count,
                period_ms = period,
                "instance ejected after consecutive failures"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::balancer::fixtures::endpoint;
    use std::time::Duration;

    fn detector(percent: u32) -> OutlierDetector {
        OutlierDetector::new(
            Arc::new("svc".into()),
            OutlierConfig {
                consecutive_failures: 3,
                base_ejection_time: Duration::from_millis(1000),
                max_ejection_time: Duration::from_millis(2500),
                max_ejection_percent: percent,
            },
            Counter::default(),
        )
    }

    fn fail(d: &OutlierDetector, e: &Arc<Endpoint>, times: u32, now: u64, peers: &[Arc<Endpoint>]) {
        for _ in 0..times {
            d.record(e, true, now, peers);
        }
    }

    #[test]
    fn consecutive_failures_eject_and_a_success_resets_the_count() {
        let d = detector(100);
        let peers = vec![endpoint("a", 1), endpoint("b", 1)];
        let a = &peers[0];
        fail(&d, a, 2, 10, &peers);
        d.record(a, false, 11, &peers);
        fail(&d, a, 2, 12, &peers);
        assert!(!d.is_ejected(a, 12));
        fail(&d, a, 1, 13, &peers);
        assert!(d.is_ejected(a, 13));
        assert_eq!(d.ejected_count(), 1);
        // Ends by itself after the base time.
        assert!(d.is_ejected(a, 1012));
        assert!(!d.is_ejected(a, 1013));
        assert_eq!(d.ejected_count(), 0);
    }

    #[test]
    fn ejections_in_a_row_grow_up_to_the_cap_and_decay() {
        let d = detector(100);
        let peers = vec![endpoint("a", 1), endpoint("b", 1)];
        let a = &peers[0];
        let mut now = 0;
        let mut periods = Vec::new();
        for _ in 0..4 {
            fail(&d, a, 3, now, &peers);
            let start = now;
            while d.is_ejected(a, now) {
                now += 1;
            }
            periods.push(now - start);
        }
        assert_eq!(periods, vec![1000, 2000, 2500, 2500]);
        // After a long healthy stretch the period is back to the base.
        now += 10_000;
        fail(&d, a, 3, now, &peers);
        assert!(d.is_ejected(a, now + 999));
        assert!(!d.is_ejected(a, now + 1000));
    }

    #[test]
    fn no_more_than_the_configured_share_is_ejected() {
        let d = detector(50);
        let peers: Vec<_> = (0..4).map(|i| endpoint(&i.to_string(), 1)).collect();
        for p in &peers {
            fail(&d, p, 3, 5, &peers);
        }
        let ejected = peers.iter().filter(|p| d.is_ejected(p, 5)).count();
        assert_eq!(ejected, 2);
        // One of three at 50%: one (floor 1.5).
        let d = detector(50);
        let three: Vec<_> = (0..3).map(|i| endpoint(&i.to_string(), 1)).collect();
        for p in &three {
            fail(&d, p, 3, 5, &three);
        }
        assert_eq!(three.iter().filter(|p| d.is_ejected(p, 5)).count(), 1);
        // A single instance may be ejected (at least one always may).
        let d = detector(10);
        let one = vec![endpoint("solo", 1)];
        fail(&d, &one[0], 3, 5, &one);
        assert!(d.is_ejected(&one[0], 5));
        // 0% ejects nothing.
        let d = detector(0);
        let fresh = vec![endpoint("fresh", 1)];
        fail(&d, &fresh[0], 3, 5, &fresh);
        assert!(!d.is_ejected(&fresh[0], 5));
        assert_eq!(d.ejected_count(), 0);
    }
}
