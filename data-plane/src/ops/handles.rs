//! Metric handles the layers below the registry hold: a route's cache
//! counters, a breaker's, a service's retry counters, and the rate-limit
//! metrics. Defined here so that the registry depends on none of them.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// The route's `gateway_cache_requests_total` handles.
#[derive(Debug, Clone)]
pub struct CacheCounters {
    /// Answered from the cache.
    pub hit: Counter,
    /// Looked up and not found: answered by the upstream.
    pub miss: Counter,
    /// Not looked up (not a GET, or credentials the gateway did not verify).
    pub bypass: Counter,
}

/// Metric handles of one breaker.
#[derive(Debug, Clone, Default)]
pub struct BreakerMetrics {
    /// 0 closed, 1 open, 2 half-open.
    pub state: Gauge,
    /// Calls refused while open.
    pub rejected: Counter,
}

/// Counters of a service's retries.
#[derive(Debug, Clone, Default)]
pub struct RetryMetrics {
    /// Retries made.
    pub retries: Counter,
    /// Retries refused by the budget.
    pub budget_exhausted: Counter,
}

/// Labels of `gateway_ratelimit_rejected_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    /// Route name.
    pub route: Arc<String>,
}

/// Rate-limit metrics.
#[derive(Debug, Clone, Default)]
pub struct RateLimitMetrics {
    pub(crate) rejected: Family<RejectLabels, Counter>,
    /// Decisions taken locally because Redis was configured but unusable.
    pub fallback: Counter,
    /// 1 while decisions are taken in Redis (shared), 0 while local.
    pub shared: Gauge,
}

impl RateLimitMetrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "ratelimit_rejected",
            "Requests refused with 429 by a rate limit, by route",
            metrics.rejected.clone(),
        );
        registry.register(
            "ratelimit_fallback",
            "Rate-limit decisions taken by the data plane alone because Redis was unreachable or slow",
            metrics.fallback.clone(),
        );
        registry.register(
            "ratelimit_shared",
            "1 while rate limits are decided in Redis (shared by all data planes), 0 while each data plane decides alone",
            metrics.shared.clone(),
        );
        metrics
    }

    /// Requests refused on `route` so far.
    pub fn rejected(&self, route: &Arc<String>) -> u64 {
        self.rejected
            .get_or_create(&RejectLabels {
                route: route.clone(),
            })
            .get()
    }
}
