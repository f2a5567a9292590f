//! Active health checks, run by the leader only.
//!
//! Every instance of a service whose `health_check` is enabled is probed
//! with `GET http://ADDRESS:PORT{path}` every `interval` (the first probe at a
//! random point of the first interval, so checks spread out). 2xx and 3xx
//! answers are successes. `healthy_threshold` consecutive successes mark an
//! instance healthy and `unhealthy_threshold` consecutive failures
//! unhealthy; only those transitions are written (batched into one version
//! per tick). The last result of every check goes to the store's health
//! records in batches, outside the change log.

use crate::health_tls::TlsClients;
use crate::metrics::{Metrics, OutcomeLabel};
use crate::store::{unix_ms, HealthRecord, Store};
use crate::view::{Stamp, View};
use gateway_common::config::{GatewayConfig, HealthCheckConfig, UpstreamTlsConfig};
use gateway_common::error_chain;
use gateway_common::http_client::{self, Client, HttpClientError};
use gateway_common::registration::{Health, Instance};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often due checks are started and results written.
const TICK: Duration = Duration::from_millis(100);
/// Least time between two writes of health records.
const RECORD_FLUSH: Duration = Duration::from_millis(500);
/// Most probes in flight at once.
const MAX_CONCURRENT: usize = 512;
/// Most body bytes read from a health endpoint.
const MAX_BODY: usize = 64 * 1024;

/// How one service's instances are checked.
#[derive(Debug, Clone, PartialEq)]
struct ServiceCheck {
    path: String,
    interval: Duration,
    timeout: Duration,
    healthy_threshold: u32,
    unhealthy_threshold: u32,
    /// The service's TLS settings, for its `https://` instances.
    tls: UpstreamTlsConfig,
}

impl ServiceCheck {
    fn from_config(hc: &HealthCheckConfig, tls: Option<&UpstreamTlsConfig>) -> Option<Self> {
        hc.enabled.then(|| ServiceCheck {
            tls: tls.cloned().unwrap_or_default(),
            path: hc.path.clone(),
            interval: hc.interval,
            timeout: hc.timeout,
            healthy_threshold: hc.healthy_threshold,
            unhealthy_threshold: hc.unhealthy_threshold,
        })
    }
}

/// One checked instance.
#[derive(Debug)]
struct Target {
    uri: String,
    check: ServiceCheck,
    health: Health,
    next_due: Instant,
    consecutive_ok: u32,
    consecutive_fail: u32,
    revision: u64,
    in_flight: bool,
}

/// Result of one probe.
#[derive(Debug)]
struct Outcome {
    id: String,
    revision: u64,
    success: bool,
    result: String,
}

/// The next health of an instance after a probe, if it changes.
fn verdict(target: &mut Target, success: bool) -> Option<Health> {
    if success {
        target.consecutive_ok = target.consecutive_ok.saturating_add(1);
        target.consecutive_fail = 0;
        (target.health != Health::Healthy
            && target.consecutive_ok >= target.check.healthy_threshold)
            .then_some(Health::Healthy)
    } else {
        target.consecutive_fail = target.consecutive_fail.saturating_add(1);
        target.consecutive_ok = 0;
        (target.health != Health::Unhealthy
            && target.consecutive_fail >= target.check.unhealthy_threshold)
            .then_some(Health::Unhealthy)
    }
}

fn jitter(interval: Duration) -> Duration {
    let ms = interval.as_millis().max(1) as u64;
    Duration::from_millis(rand::random_range(0..ms))
}

/// The client of the probes: plain HTTP/1.1, connections kept for the
/// next probe of the same instance.
fn http_client() -> Result<Client, HttpClientError> {
    http_client::builder(None)?
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(1)
        .build()
        .map_err(|e| HttpClientError::Build(error_chain(&e)))
}

/// Probes `uri` once: success and what to record.
async fn probe(client: Client, uri: String, timeout: Duration) -> (bool, String) {
    let request = match client
        .get(&uri)
        .header(
            http::header::USER_AGENT,
            "gateway-control-plane/health-check",
        )
        .build()
    {
        Ok(request) => request,
        Err(e) => return (false, format!("bad health-check URL: {e}")),
    };
    let exchange = async {
        let response = client.execute(request).await.map_err(|e| error_chain(&e))?;
        let status = response.status();
        // Read the body so that the connection can be reused.
        let _ = http_client::read_limited(response, MAX_BODY).await;
        Ok::<_, String>(status)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(status)) => (
            status.is_success() || status.is_redirection(),
            status.as_u16().to_string(),
        ),
        Ok(Err(error)) => (false, error),
        Err(_) => (
            false,
            format!(
                "timeout after {}",
                gateway_common::duration::format(timeout)
            ),
        ),
    }
}

/// The health checker; see the module docs.
pub struct HealthChecker {
    view: Arc<View>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    services: HashMap<String, ServiceCheck>,
    targets: HashMap<String, Target>,
    synced: Option<Stamp>,
    next_revision: u64,
    verdicts: HashMap<String, Health>,
    records: HashMap<String, HealthRecord>,
    probes: JoinSet<Outcome>,
    tls_clients: TlsClients,
}

impl HealthChecker {
    /// A checker of the instances in `view`.
    pub fn new(view: Arc<View>, store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        HealthChecker {
            view,
            store,
            metrics,
            services: HashMap::new(),
            targets: HashMap::new(),
            synced: None,
            next_revision: 0,
            verdicts: HashMap::new(),
            records: HashMap::new(),
            probes: JoinSet::new(),
            tls_clients: TlsClients::default(),
        }
    }

    /// Checks until `cancel` fires (leadership lost or shutdown); probes in
    /// flight are abandoned.
    pub async fn run(mut self, cancel: CancellationToken) {
        let client = match http_client() {
            Ok(client) => client,
            Err(e) => {
                tracing::error!(error = %e, "no health checks this term");
                cancel.cancelled().await;
                return;
            }
        };
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_flush = Instant::now();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(done) = self.probes.join_next(), if !self.probes.is_empty() => {
                    if let Ok(outcome) = done {
                        self.record(outcome);
                    }
                }
                _ = tick.tick() => {
                    self.sync();
                    self.launch_due(&client);
                    self.flush_verdicts().await;
                    if last_flush.elapsed() >= RECORD_FLUSH {
                        self.flush_records().await;
                        last_flush = Instant::now();
                    }
                }
            }
        }
        self.probes.abort_all();
    }

    /// Brings the targets in line with the view: incrementally from the
    /// ring when possible, else from every instance.
    fn sync(&mut self) {
        let stamp = self.view.stamp();
        if self.synced == Some(stamp) {
            return;
        }
        let view = self.view.clone();
        let state = view.read();
        let incremental = self
            .synced
            .filter(|s| s.generation == state.generation())
            .and_then(|s| state.deltas_between(s.version, state.version()))
            .filter(|deltas| deltas.iter().all(|d| d.config.is_none()));
        match incremental {
            Some(deltas) => {
                for delta in deltas {
                    for id in &delta.removals {
                        self.targets.remove(id);
                        self.verdicts.remove(id);
                        self.records.remove(id);
                    }
                    for instance in &delta.upserts {
                        // The view holds the latest state of the instance.
                        if let Some(current) = state.instances().get(&instance.spec.id) {
                            self.update_target(current);
                        }
                    }
                }
            }
            None => self.full_sync(state.config(), state.instances().values()),
        }
        self.synced = Some(Stamp {
            generation: state.generation(),
            version: state.version(),
        });
    }

    fn full_sync<'a>(
        &mut self,
        config: &GatewayConfig,
        instances: impl Iterator<Item = &'a Instance>,
    ) {
        self.services = config
            .services
            .iter()
            .filter_map(|s| {
                Some((
                    s.name.clone(),
                    ServiceCheck::from_config(&s.health_check, s.tls.as_ref())?,
                ))
            })
            .collect();
        let mut seen = HashSet::with_capacity(self.targets.len());
        for instance in instances {
            self.update_target(instance);
            seen.insert(instance.spec.id.clone());
        }
        self.targets.retain(|id, _| seen.contains(id));
        self.verdicts.retain(|id, _| seen.contains(id));
        self.records.retain(|id, _| seen.contains(id));
    }

    fn update_target(&mut self, instance: &Instance) {
        let id = &instance.spec.id;
        let Some(service) = self.services.get(&instance.spec.service) else {
            // Not checked: an old verdict must not stick.
            self.targets.remove(id);
            if instance.state.health != Health::Unknown {
                self.verdicts.insert(id.clone(), Health::Unknown);
            }
            return;
        };
        let path = if instance.spec.health_path.is_empty() {
            &service.path
        } else {
            &instance.spec.health_path
        };
        let scheme = if instance.spec.tls { "https" } else { "http" };
        let uri = format!("{scheme}://{}{}", instance.spec.authority(), path);
        let check = service.clone();
        match self.targets.get_mut(id) {
            Some(target) if target.uri == uri => {
                target.check = check;
                target.health = instance.state.health;
            }
            _ => {
                self.next_revision += 1;
                let first = Instant::now() + jitter(check.interval);
                self.targets.insert(
                    id.clone(),
                    Target {
                        uri,
                        check,
                        health: instance.state.health,
                        next_due: first,
                        consecutive_ok: 0,
                        consecutive_fail: 0,
                        revision: self.next_revision,
                        in_flight: false,
                    },
                );
            }
        }
    }

    fn launch_due(&mut self, client: &Client) {
        let now = Instant::now();
        for (id, target) in &mut self.targets {
            if self.probes.len() >= MAX_CONCURRENT {
                break;
            }
            if target.in_flight || target.next_due > now {
                continue;
            }
            target.in_flight = true;
            let (id, revision) = (id.clone(), target.revision);
            // An https:// instance is checked with its service's TLS client.
            let client = match target.uri.starts_with("https:") {
                true => self.tls_clients.get(&target.check.tls),
                false => Ok(client.clone()),
            };
            let (uri, timeout) = (target.uri.clone(), target.check.timeout);
            self.probes.spawn(async move {
                let (success, result) = match client {
                    Ok(client) => probe(client, uri, timeout).await,
                    Err(reason) => (false, reason),
                };
                Outcome {
                    id,
                    revision,
                    success,
                    result,
                }
            });
        }
    }

    fn record(&mut self, outcome: Outcome) {
        let Some(target) = self.targets.get_mut(&outcome.id) else {
            return;
        };
        if target.revision != outcome.revision {
            return;
        }
        target.in_flight = false;
        target.next_due = Instant::now() + target.check.interval;
        let label = if outcome.success {
            "success"
        } else {
            "failure"
        };
        self.metrics
            .health_checks
            .get_or_create(&OutcomeLabel { outcome: label })
            .inc();
        if let Some(health) = verdict(target, outcome.success) {
            self.verdicts.insert(outcome.id.clone(), health);
        }
        self.records.insert(
            outcome.id,
            HealthRecord {
                last_check_unix_ms: unix_ms(),
                result: outcome.result,
                consecutive_ok: target.consecutive_ok,
                consecutive_fail: target.consecutive_fail,
            },
        );
    }

    async fn flush_verdicts(&mut self) {
        if self.verdicts.is_empty() {
            return;
        }
        let batch: Vec<(String, Health)> =
            self.verdicts.iter().map(|(k, v)| (k.clone(), *v)).collect();
        match self.store.set_health(&batch).await {
            Ok(version) => {
                for (id, health) in &batch {
                    tracing::info!(id = %id, health = ?health, version = ?version, "instance health changed");
                    if let Some(target) = self.targets.get_mut(id) {
                        target.health = *health;
                    }
                }
                self.verdicts.clear();
            }
            Err(e) => tracing::warn!(error = %e, "cannot write health verdicts; retrying"),
        }
    }

    async fn flush_records(&mut self) {
        if self.records.is_empty() {
            return;
        }
        let batch: Vec<(String, HealthRecord)> = self.records.drain().collect();
        if let Err(e) = self.store.record_health_checks(&batch).await {
            tracing::debug!(error = %e, "cannot write health-check records");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(health: Health) -> Target {
        Target {
            uri: "http://127.0.0.1:1/health".into(),
            check: ServiceCheck {
                path: "/health".into(),
                interval: Duration::from_secs(1),
                timeout: Duration::from_millis(500),
                healthy_threshold: 2,
                unhealthy_threshold: 3,
                tls: Default::default(),
            },
            health,
            next_due: Instant::now(),
            consecutive_ok: 0,
            consecutive_fail: 0,
            revision: 1,
            in_flight: false,
        }
    }

    #[test]
    fn thresholds_count_consecutive_results() {
        let mut t = target(Health::Unknown);
        assert_eq!(verdict(&mut t, true), None);
        assert_eq!(verdict(&mut t, true), Some(Health::Healthy));
        t.health = Health::Healthy;
        assert_eq!(verdict(&mut t, false), None);
        assert_eq!(verdict(&mut t, false), None);
        assert_eq!(verdict(&mut t, true), None, "a success resets the failures");
        assert_eq!(verdict(&mut t, false), None);
        assert_eq!(verdict(&mut t, false), None);
        assert_eq!(verdict(&mut t, false), Some(Health::Unhealthy));
        t.health = Health::Unhealthy;
        assert_eq!(verdict(&mut t, false), None, "no repeated verdicts");
    }

    #[test]
    fn jitter_stays_within_the_interval() {
        for _ in 0..100 {
            assert!(jitter(Duration::from_millis(50)) < Duration::from_millis(50));
        }
    }

    #[tokio::test]
    async fn probes_classify_answers() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for status in ["204 No Content", "302 Found", "503 Service Unavailable"] {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await;
                let answer =
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                socket.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        let client = http_client().unwrap();
        let uri = format!("http://{addr}/health");
        let t = Duration::from_secs(2);
        assert_eq!(
            probe(client.clone(), uri.clone(), t).await,
            (true, "204".into())
        );
        assert_eq!(
            probe(client.clone(), uri.clone(), t).await,
            (true, "302".into())
        );
        assert_eq!(
            probe(client.clone(), uri.clone(), t).await,
            (false, "503".into())
        );
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let (ok, result) = probe(client, format!("http://127.0.0.1:{port}/"), t).await;
        assert!(!ok);
        assert!(
            result.contains("connect") || result.contains("refused"),
            "{result}"
        );
    }
}
