//! The data plane's health report (`GET /health` on the admin listener), in
//! the seed's `HealthCheck` shape: an overall `ok`, `degraded` or `error`
//! with one check per dependency.
//!
//! * `error` (HTTP 503): no config applied yet, shutting down, or no
//!   service has a routable instance: the data plane cannot serve.
//! * `degraded` (HTTP 200): it serves, but something is missing: Redis is
//!   configured and not answering (rate limits and the cache run locally),
//!   the control plane is disconnected (the last config keeps serving), the
//!   config cache cannot be written, some services have no routable
//!   instance, or a certificate the HTTPS listener serves expires within
//!   [`CERTIFICATE_WARNING`] (or has expired).
//! * `ok` (HTTP 200): none of the above.
//!
//! Liveness (`/health/live`) and readiness (`/health/ready`) stay separate
//! and simpler: an orchestrator should not restart or unroute a data plane
//! because a backend service is down.

use crate::config::cache::CacheStatus;
use crate::config::runtime::{ConfigSource, Runtime};
use crate::edge::errors::iso8601;
use crate::ops::metrics::Metrics;
use crate::shared_state::SharedState;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// A served certificate closer than this to its notAfter is warned about.
pub const CERTIFICATE_WARNING: Duration = Duration::from_secs(14 * 86_400);

/// Overall or per-check status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Working.
    Ok,
    /// Serving with something missing.
    Degraded,
    /// Not working.
    Error,
    /// Not configured (Redis without `REDIS_URL`).
    NotConfigured,
    /// No control plane: the config comes from a file.
    Standalone,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    /// `ok`, `degraded` or `error`.
    pub status: Status,
    /// When the report was made (RFC 3339, UTC).
    pub timestamp: String,
    /// Seconds since the data plane started.
    pub uptime: u64,
    /// Build version of the data plane.
    pub version: &'static str,
    /// One entry per dependency.
    pub checks: Checks,
}

/// The checks of a report.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Checks {
    /// The Redis shared by the data planes.
    pub redis: DependencyCheck,
    /// The Discovery stream to the control plane.
    pub control_plane: ControlPlaneCheck,
    /// The config cache on local disk.
    pub config_cache: CacheCheck,
    /// The certificates of the HTTPS listener.
    pub tls: TlsCheck,
    /// Each service of the config applied.
    pub services: BTreeMap<String, ServiceCheck>,
}

/// Status of a dependency.
#[derive(Debug, Clone, Serialize)]
pub struct DependencyCheck {
    /// `ok`, `error` or `not_configured`.
    pub status: Status,
}

/// Status of the control-plane connection and the config held.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneCheck {
    /// `ok` (connected), `error` (disconnected) or `standalone`.
    pub status: Status,
    /// Whether a config has been applied.
    pub config_applied: bool,
    /// Epoch of the config held.
    pub epoch: String,
    /// Version of the config held.
    pub config_version: u64,
    /// Where the config held came from: `none`, `control_plane`, `cache`
    /// or `file`.
    pub source: &'static str,
    /// When the cached config served was written (source `cache` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached_at: Option<String>,
    /// Its age in seconds (source `cache` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_age_seconds: Option<u64>,
}

/// Status of the config cache.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheCheck {
    /// `ok` (written, or nothing to write yet), `error` (the last write
    /// failed) or `not_configured` (off, or standalone).
    pub status: Status,
    /// The cache file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Version in the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub written_version: Option<u64>,
    /// When the file was written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub written_at: Option<String>,
    /// Why the last write failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The certificates the HTTPS listener serves.
#[derive(Debug, Clone, Serialize)]
pub struct TlsCheck {
    /// `ok`, `degraded` (one expires within 14 days), `error` (one has
    /// expired) or `not_configured` (no HTTPS listener).
    pub status: Status,
    /// Each certificate served.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateCheck>,
    /// What is wrong, for people.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// One served certificate's expiry.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateCheck {
    /// Its first DNS name, else its file name.
    pub name: String,
    /// Its notAfter (RFC 3339, UTC).
    pub not_after: String,
    /// Seconds until then (negative once expired).
    pub expires_in_seconds: i64,
}

/// The TLS check of the certificates `served` at `now`, or `None` when no
/// HTTPS listener is configured.
pub fn tls_check(
    served: Option<Vec<crate::ops::handles::ServedCertificate>>,
    now: SystemTime,
) -> TlsCheck {
    let Some(served) = served else {
        return TlsCheck {
            status: Status::NotConfigured,
            certificates: Vec::new(),
            warning: None,
        };
    };
    let mut status = Status::Ok;
    let mut warnings = Vec::new();
    let certificates = served
        .into_iter()
        .map(|cert| {
            let left = match cert.not_after.duration_since(now) {
                Ok(left) => i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                Err(past) => -i64::try_from(past.duration().as_secs()).unwrap_or(i64::MAX),
            };
            if left <= 0 {
                status = Status::Error;
                warnings.push(format!("certificate {} has expired", cert.name));
            } else if left < CERTIFICATE_WARNING.as_secs() as i64 {
                if status == Status::Ok {
                    status = Status::Degraded;
                }
                warnings.push(format!(
                    "certificate {} expires in {} day(s)",
                    cert.name,
                    left / 86_400
                ));
            }
            CertificateCheck {
                name: cert.name,
                not_after: iso8601(cert.not_after),
                expires_in_seconds: left,
            }
        })
        .collect();
    TlsCheck {
        status,
        certificates,
        warning: (!warnings.is_empty()).then(|| warnings.join("; ")),
    }
}

/// Routable instances of one service.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceCheck {
    /// `ok` with at least one routable instance, else `error`.
    pub status: Status,
    /// Routable (healthy, not draining) instances.
    pub healthy: usize,
    /// Non-draining instances.
    pub total: usize,
}

/// What the report is made from.
#[derive(Debug, Clone)]
pub struct HealthSources {
    /// Routing state.
    pub runtime: Arc<Runtime>,
    /// Metrics (control-plane connection gauge).
    pub metrics: Arc<Metrics>,
    /// Shared Redis, when configured.
    pub shared: Option<Arc<SharedState>>,
    /// True when the config comes from a file.
    pub standalone: bool,
    /// The config cache, when one is kept.
    pub config_cache: Option<Arc<CacheStatus>>,
    /// When the data plane started.
    pub started: Instant,
}

impl HealthSources {
    /// The report now; `stopping` is true once shutdown has begun.
    pub async fn report(&self, stopping: bool) -> HealthReport {
        let redis = self.redis().await;
        let snapshot = self.runtime.snapshot();
        let ready = self.runtime.is_ready();
        let services: BTreeMap<String, ServiceCheck> = snapshot
            .services
            .iter()
            .map(|s| {
                let healthy = s.balancer.endpoints().len();
                let check = ServiceCheck {
                    status: if healthy > 0 {
                        Status::Ok
                    } else {
                        Status::Error
                    },
                    healthy,
                    total: s.balancer.total(),
                };
                (s.name.to_string(), check)
            })
            .collect();
        let control_plane = if self.standalone {
            Status::Standalone
        } else if self.metrics.control_plane_connected.get() > 0 {
            Status::Ok
        } else {
            Status::Error
        };
        let cache = self.config_cache.as_ref().map(|c| c.state());
        let loaded = cache
            .as_ref()
            .and_then(|c| c.loaded.as_ref())
            .filter(|_| snapshot.source == ConfigSource::Cache);
        let checks = Checks {
            redis: DependencyCheck { status: redis },
            control_plane: ControlPlaneCheck {
                status: control_plane,
                config_applied: snapshot.source != ConfigSource::None,
                epoch: snapshot.epoch.clone(),
                config_version: snapshot.version,
                source: snapshot.source.as_str(),
                cached_at: loaded.map(|l| iso8601(l.written_at)),
                cache_age_seconds: loaded.map(|l| {
                    SystemTime::now()
                        .duration_since(l.written_at)
                        .unwrap_or_default()
                        .as_secs()
                }),
            },
            config_cache: self.cache_check(cache),
            tls: tls_check(
                self.metrics
                    .tls
                    .enabled()
                    .then(|| self.metrics.tls.served()),
                SystemTime::now(),
            ),
            services,
        };
        HealthReport {
            status: overall(stopping, ready, &checks),
            timestamp: now_rfc3339(),
            uptime: self.started.elapsed().as_secs(),
            version: env!("CARGO_PKG_VERSION"),
            checks,
        }
    }
}

impl HealthSources {
    fn cache_check(&self, state: Option<crate::config::cache::CacheState>) -> CacheCheck {
        let (Some(status), Some(state)) = (&self.config_cache, state) else {
            return CacheCheck {
                status: Status::NotConfigured,
                path: None,
                written_version: None,
                written_at: None,
                error: None,
            };
        };
        CacheCheck {
            status: if state.error.is_some() {
                Status::Error
            } else {
                Status::Ok
            },
            path: Some(status.path().display().to_string()),
            written_version: state.written.as_ref().map(|w| w.version),
            written_at: state.written.as_ref().map(|w| iso8601(w.written_at)),
            error: state.error,
        }
    }

    /// Pings Redis (bounded by the shared state's timeout) rather than
    /// trusting the last request's call: an idle data plane has made none.
    /// The outcome is recorded, so the request path learns of it too.
    async fn redis(&self) -> Status {
        let Some(shared) = &self.shared else {
            return Status::NotConfigured;
        };
        let Some(mut conn) = shared.connection() else {
            return Status::Error;
        };
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        let ok = matches!(
            tokio::time::timeout(shared.timeout(), ping).await,
            Ok(Ok(_))
        );
        shared.record(ok);
        if ok {
            Status::Ok
        } else {
            Status::Error
        }
    }
}

/// The overall status from the checks (see the module doc).
fn overall(stopping: bool, ready: bool, checks: &Checks) -> Status {
    let routable = checks
        .services
        .values()
        .filter(|s| s.status == Status::Ok)
        .count();
    if stopping || !ready || (!checks.services.is_empty() && routable == 0) {
        return Status::Error;
    }
    if checks.redis.status == Status::Error
        || checks.control_plane.status == Status::Error
        || checks.config_cache.status == Status::Error
        || matches!(checks.tls.status, Status::Degraded | Status::Error)
        || routable < checks.services.len()
    {
        return Status::Degraded;
    }
    Status::Ok
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checks(redis: Status, cp: Status, services: &[usize]) -> Checks {
        Checks {
            redis: DependencyCheck { status: redis },
            control_plane: ControlPlaneCheck {
                status: cp,
                config_applied: true,
                epoch: String::new(),
                config_version: 1,
                source: "control_plane",
                cached_at: None,
                cache_age_seconds: None,
            },
            config_cache: CacheCheck {
                status: Status::Ok,
                path: None,
                written_version: Some(1),
                written_at: None,
                error: None,
            },
            tls: tls_check(None, SystemTime::now()),
            services: services
                .iter()
                .enumerate()
                .map(|(i, &healthy)| {
                    let status = if healthy > 0 {
                        Status::Ok
                    } else {
                        Status::Error
                    };
                    let check = ServiceCheck {
                        status,
                        healthy,
                        total: healthy.max(1),
                    };
                    (format!("s{i}"), check)
                })
                .collect(),
        }
    }

    #[test]
    fn everything_up_is_ok() {
        let c = checks(Status::Ok, Status::Ok, &[1, 2]);
        assert_eq!(overall(false, true, &c), Status::Ok);
        let c = checks(Status::NotConfigured, Status::Standalone, &[1]);
        assert_eq!(overall(false, true, &c), Status::Ok);
    }

    #[test]
    fn a_missing_dependency_degrades() {
        let c = checks(Status::Error, Status::Ok, &[1]);
        assert_eq!(overall(false, true, &c), Status::Degraded);
        let c = checks(Status::Ok, Status::Error, &[1]);
        assert_eq!(overall(false, true, &c), Status::Degraded);
        let c = checks(Status::Ok, Status::Ok, &[1, 0]);
        assert_eq!(overall(false, true, &c), Status::Degraded);
        let mut c = checks(Status::Ok, Status::Ok, &[1]);
        c.config_cache.status = Status::Error;
        assert_eq!(overall(false, true, &c), Status::Degraded);
    }

    #[test]
    fn no_config_no_instance_or_stopping_is_an_error() {
        let c = checks(Status::Ok, Status::Ok, &[1]);
        assert_eq!(overall(false, false, &c), Status::Error);
        assert_eq!(overall(true, true, &c), Status::Error);
        let c = checks(Status::Ok, Status::Ok, &[0, 0]);
        assert_eq!(overall(false, true, &c), Status::Error);
    }

    #[test]
    fn certificates_close_to_expiry_are_warned_about() {
        use crate::ops::handles::ServedCertificate;
        let now = SystemTime::now();
        let cert = |name: &str, days: i64| ServedCertificate {
            name: name.into(),
            not_after: if days >= 0 {
                now + Duration::from_secs(days as u64 * 86_400)
            } else {
                now - Duration::from_secs(days.unsigned_abs() * 86_400)
            },
        };
        let fine = tls_check(Some(vec![cert("a.test", 90)]), now);
        assert_eq!(fine.status, Status::Ok);
        assert!(fine.warning.is_none());
        assert_eq!(fine.certificates[0].expires_in_seconds, 90 * 86_400);
        let soon = tls_check(Some(vec![cert("a.test", 90), cert("b.test", 13)]), now);
        assert_eq!(soon.status, Status::Degraded);
        assert_eq!(
            soon.warning.as_deref(),
            Some("certificate b.test expires in 13 day(s)")
        );
        let gone = tls_check(Some(vec![cert("b.test", 13), cert("c.test", -1)]), now);
        assert_eq!(gone.status, Status::Error);
        assert!(gone
            .warning
            .unwrap()
            .contains("certificate c.test has expired"));
        let mut c = checks(Status::Ok, Status::Ok, &[1]);
        c.tls = soon;
        assert_eq!(overall(false, true, &c), Status::Degraded);
        let json = serde_json::to_value(&c.tls).unwrap();
        assert_eq!(json["certificates"][1]["name"], "b.test");
        assert!(json["certificates"][1]["notAfter"]
            .as_str()
            .unwrap()
            .ends_with('Z'));
        assert_eq!(tls_check(None, now).status, Status::NotConfigured);
    }

    #[test]
    fn the_report_has_the_seed_shape() {
        let c = checks(Status::NotConfigured, Status::Ok, &[1]);
        let report = HealthReport {
            status: Status::Ok,
            timestamp: now_rfc3339(),
            uptime: 3,
            version: "0",
            checks: c,
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["status"], "ok");
        assert_eq!(json["checks"]["redis"]["status"], "not_configured");
        assert_eq!(json["checks"]["controlPlane"]["status"], "ok");
        assert_eq!(json["checks"]["controlPlane"]["source"], "control_plane");
        assert!(json["checks"]["controlPlane"].get("cachedAt").is_none());
        assert_eq!(json["checks"]["configCache"]["writtenVersion"], 1);
        assert_eq!(json["checks"]["services"]["s0"]["healthy"], 1);
        assert!(json["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}
