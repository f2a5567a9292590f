//! A service as the upstream layer uses it, and how gateway calls find the
//! services of the config in force without knowing the snapshot.

use crate::ops::metrics::UpstreamErrorMetrics;
use crate::upstream::balancer::Balancer;
use crate::upstream::breaker::CircuitBreaker;
use crate::upstream::deadline::EndpointTimeouts;
use crate::upstream::retry::RetryPolicy;
use crate::upstream::tls::UpstreamTls;
use gateway_common::config::ServiceConfig;
use std::sync::Arc;

/// A service as the proxy uses it.
#[derive(Debug)]
pub struct ServiceRuntime {
    /// Service name.
    pub name: Arc<String>,
    /// Its config.
    pub config: ServiceConfig,
    /// Picks among the routable instances (and holds the outlier detector).
    pub balancer: Balancer,
    /// Circuit breaker, when the service has an enabled one.
    pub breaker: Option<Arc<CircuitBreaker>>,
    /// Retry policy, when the service has one.
    pub retry: Option<Arc<RetryPolicy>>,
    /// Per-endpoint timeouts.
    pub endpoint_timeouts: EndpointTimeouts,
    /// Cached error counters.
    pub errors: UpstreamErrorMetrics,
    /// The TLS client of its `https://` instances: built from its `tls`
    /// settings, or the platform default when it has none but holds an
    /// `https://` instance; `None` otherwise.
    pub tls: Option<Arc<UpstreamTls>>,
}

/// The services of one config, by name (the runtime snapshot).
pub trait Services: Send + Sync {
    /// A service by name.
    fn service_named(&self, name: &str) -> Option<&Arc<ServiceRuntime>>;
}

/// Where the services of the config in force are read, at the moment a
/// gateway call needs them.
pub trait CurrentServices: Send + Sync {
    /// The services in force now.
    fn current(&self) -> Arc<dyn Services>;
}
