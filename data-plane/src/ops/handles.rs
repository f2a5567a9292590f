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

/// Labels of `gateway_connections_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    /// `http1` or `h2`.
    pub protocol: &'static str,
}

/// `gateway_connections_total`: client connections served, by the protocol
/// chosen for them (ALPN, or the h2c preface). One counter increment per
/// connection.
#[derive(Debug, Clone, Default)]
pub struct ConnectionMetrics {
    /// Connections served with HTTP/1.1.
    pub http1: Counter,
    /// Connections served with HTTP/2.
    pub h2: Counter,
}

impl ConnectionMetrics {
    /// Creates and registers the counter, both protocols shown from the
    /// start.
    pub fn register(registry: &mut Registry) -> Self {
        let family = Family::<ProtocolLabels, Counter>::default();
        let of = |protocol| family.get_or_create(&ProtocolLabels { protocol }).clone();
        let metrics = Self {
            http1: of("http1"),
            h2: of("h2"),
        };
        registry.register(
            "connections",
            "Client connections served on the public listeners, by protocol (http1, h2)",
            family,
        );
        metrics
    }
}

/// Labels of `gateway_tls_handshake_failures_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeFailureLabels {
    /// Why the handshake failed (a small fixed set, see `edge::tls`).
    pub reason: &'static str,
}

/// Labels of `gateway_tls_certificate_expiry_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabels {
    /// The certificate's first DNS name, else its file name.
    pub name: String,
}

/// A certificate the HTTPS listener serves, as the health report shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedCertificate {
    /// The certificate's first DNS name, else its file name.
    pub name: String,
    /// Its notAfter.
    pub not_after: std::time::SystemTime,
}

/// Metrics and state of the HTTPS listener.
#[derive(Debug, Clone, Default)]
pub struct TlsMetrics {
    /// Handshakes completed.
    pub handshakes: Counter,
    failures: Family<HandshakeFailureLabels, Counter>,
    expiry: Family<CertificateLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    served: Arc<parking_lot::RwLock<Vec<ServedCertificate>>>,
    /// Whether an HTTPS listener is configured.
    enabled: Arc<std::sync::atomic::AtomicBool>,
}

impl TlsMetrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "tls_handshakes",
            "TLS handshakes completed on the HTTPS listener",
            metrics.handshakes.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed on the HTTPS listener, by reason",
            metrics.failures.clone(),
        );
        registry.register(
            "tls_certificate_expiry_seconds",
            "Seconds until the notAfter of each certificate the HTTPS listener serves (negative once expired)",
            metrics.expiry.clone(),
        );
        metrics
    }

    /// Marks the HTTPS listener as configured and makes the failure
    /// series of `reasons` exist at zero.
    pub fn enable(&self, reasons: &[&'static str]) {
        self.enabled
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for reason in reasons {
            let _ = self
                .failures
                .get_or_create(&HandshakeFailureLabels { reason });
        }
    }

    /// Whether an HTTPS listener is configured.
    pub fn enabled(&self) -> bool {
        self.enabled.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts one failed handshake.
    pub fn failed(&self, reason: &'static str) {
        self.failures
            .get_or_create(&HandshakeFailureLabels { reason })
            .inc();
    }

    /// Failed handshakes counted for `reason`.
    pub fn failures(&self, reason: &'static str) -> u64 {
        self.failures
            .get_or_create(&HandshakeFailureLabels { reason })
            .get()
    }

    /// Records the certificates served now: their expiry gauges (seconds
    /// from `now`), with the series of certificates no longer served
    /// removed.
    pub fn serve(&self, certificates: Vec<ServedCertificate>, now: std::time::SystemTime) {
        let mut served = self.served.write();
        for gone in served
            .iter()
            .filter(|old| !certificates.iter().any(|c| c.name == old.name))
        {
            self.expiry.remove(&CertificateLabels {
                name: gone.name.clone(),
            });
        }
        for cert in &certificates {
            let left = match cert.not_after.duration_since(now) {
                Ok(left) => left.as_secs_f64(),
                Err(past) => -past.duration().as_secs_f64(),
            };
            self.expiry
                .get_or_create(&CertificateLabels {
                    name: cert.name.clone(),
                })
                .set(left.floor());
        }
        *served = certificates;
    }

    /// The certificates served now.
    pub fn served(&self) -> Vec<ServedCertificate> {
        self.served.read().clone()
    }
}
