//! Client of the control plane's Discovery stream: says hello with the
//! version held, applies snapshots and deltas, ACKs or NACKs each, reports
//! in-flight counts, and reconnects with capped, jittered backoff while the
//! last good snapshot keeps serving.
//!
//! A control plane answers a Hello with nothing when the version said is
//! its current one. A data plane serving its cached config takes that
//! silence, [`DiscoveryTiming::current_after`] long on an open stream, for
//! the control plane's word that the cached version is current.

use crate::config::cache::Applied;
use crate::config::runtime::{ConfigSource, Runtime};
use crate::ops::metrics::Metrics;
use crate::upstream::breaker::BreakerState;
use gateway_common::grpc_tls::endpoint;
use gateway_proto::v1 as pb;
use gateway_proto::v1::discovery_client::DiscoveryClient;
use pb::data_plane_message::Kind;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;

/// An update with at least this many instances is large: once applied, the
/// memory it freed is handed back to the OS.
const LARGE_UPDATE: usize = 1_000;

/// HTTP/2 flow-control windows of the Discovery connection: a snapshot of
/// 10,000 instances is about 0.8 MiB.
const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 8 << 20;

/// Largest config update accepted. A full snapshot of a large fleet (every
/// instance may carry 4 KiB of metadata) is far above tonic's 4 MiB default.
pub const MAX_UPDATE_BYTES: usize = 512 * 1024 * 1024;

/// Timing of the Discovery client.
#[derive(Debug, Clone)]
pub struct DiscoveryTiming {
    /// First reconnect delay (before jitter).
    pub backoff_base: Duration,
    /// Largest reconnect delay.
    pub backoff_cap: Duration,
    /// How often in-flight counts are checked and sent when changed.
    pub report_interval: Duration,
    /// Longest time without a report (liveness).
    pub report_max_silence: Duration,
    /// Time allowed to open the connection.
    pub connect_timeout: Duration,
    /// Silence after a Hello with the cached version that means "current"
    /// (a control plane answers a Hello within about a second).
    pub current_after: Duration,
}

impl Default for DiscoveryTiming {
    fn default() -> Self {
        Self {
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(5),
            report_interval: Duration::from_millis(500),
            report_max_silence: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            current_after: Duration::from_secs(2),
        }
    }
}

/// Connection settings of the client.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// Control-plane URL.
    pub url: String,
    /// TLS of an `https://` URL (required for one: it never goes out in
    /// plaintext).
    pub tls: Option<gateway_common::grpc_tls::ClientTls>,
    /// Identity sent in Hello.
    pub node_id: String,
    /// Bearer token, if the control plane requires one.
    pub token: Option<String>,
    /// Timing.
    pub timing: DiscoveryTiming,
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("cannot connect: {}", gateway_common::error_chain(.0))]
    Connect(#[from] tonic::transport::Error),
    #[error("{0}")]
    Endpoint(#[from] gateway_common::grpc_tls::EndpointError),
    #[error("stream failed: {0}")]
    Status(#[from] tonic::Status),
    #[error("cannot open the stream: {status}{}", open_hint(status, *client_certificate))]
    Open {
        status: tonic::Status,
        client_certificate: Option<bool>,
    },
    #[error("the control plane closed the stream")]
    Closed,
    #[error("bad token: {0}")]
    Token(String),
}

/// Runs the client until `shutdown` turns true; each version applied is
/// announced to `applied` (the config cache's writer), when given.
pub async fn run(
    config: DiscoveryConfig,
    runtime: Arc<Runtime>,
    metrics: Arc<Metrics>,
    applied: Option<Applied>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut attempt: u32 = 0;
    loop {
        let mut session = Session {
            config: &config,
            runtime: &runtime,
            metrics: &metrics,
            applied: applied.as_ref(),
            received: false,
        };
        tokio::select! {
            result = session.run() => {
                metrics.control_plane_connected.set(0);
                if session.received {
                    attempt = 0;
                }
                if let Err(e) = result {
                    log_stream_down(&config.url, &e, &runtime);
                }
            }
            _ = crate::edge::shutdown::stopped(&mut shutdown) => break,
        }
        let delay = backoff(&config.timing, attempt);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = crate::edge::shutdown::stopped(&mut shutdown) => break,
        }
    }
    metrics.control_plane_connected.set(0);
}

/// Says what keeps serving while the stream is down: the config held, or
/// nothing at all.
fn log_stream_down(url: &str, error: &SessionError, runtime: &Runtime) {
    let snapshot = runtime.load();
    match snapshot.source {
        ConfigSource::None => tracing::warn!(
            %url,
            %error,
            "discovery stream down; no config yet: answering 503 NO_CONFIG"
        ),
        source => tracing::warn!(
            %url,
            %error,
            version = snapshot.version,
            source = source.as_str(),
            "discovery stream down; serving the last config (version {})",
            snapshot.version
        ),
    }
}

/// What a connection closed while opening the stream over TLS may mean
/// (`client_certificate`: whether one was presented; `None`: plaintext):
/// a control plane that requires client certificates closes the
/// connection after the handshake rather than answering.
fn open_hint(status: &tonic::Status, client_certificate: Option<bool>) -> &'static str {
    let closed = gateway_common::grpc_tls::closed_by_peer(&gateway_common::error_chain(status));
    match client_certificate {
        Some(false) if closed => " (a control plane that requires client certificates, CP_TLS_CLIENT_CA, closes connections without one: set GW_CP_CLIENT_CERT and GW_CP_CLIENT_KEY)",
        Some(true) if closed => " (the control plane may have refused the client certificate: it must be signed by its CP_TLS_CLIENT_CA)",
        _ => "",
    }
}

/// Full-jitter exponential backoff: uniform in `[0, min(cap, base * 2^attempt)]`.
pub fn backoff(timing: &DiscoveryTiming, attempt: u32) -> Duration {
    let ceiling = timing
        .backoff_base
        .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
        .min(timing.backoff_cap);
    let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::random_range(0..=ms))
}

struct Session<'a> {
    config: &'a DiscoveryConfig,
    runtime: &'a Arc<Runtime>,
    metrics: &'a Metrics,
    applied: Option<&'a Applied>,
    received: bool,
}

impl Session<'_> {
    async fn run(&mut self) -> Result<(), SessionError> {
        let opened = Instant::now();
        let channel = endpoint(&self.config.url, self.config.tls.as_ref())?
            .connect_timeout(self.config.timing.connect_timeout)
            .tcp_nodelay(true)
            // A snapshot of a large fleet arrives in one flight instead of
            // 64 KiB at a time, each waiting for a window update.
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect()
            .await?;
        let (tx, rx) = mpsc::channel::<pb::DataPlaneMessage>(64);
        let (epoch, version, mut cached) = {
            let held = self.runtime.load();
            let cached = held.source == ConfigSource::Cache;
            (held.epoch.clone(), held.version, cached)
        };
        send(
            &tx,
            Kind::Hello(pb::Hello {
                node_id: self.config.node_id.clone(),
                epoch: epoch.clone(),
                version,
                build_version: env!("CARGO_PKG_VERSION").to_string(),
            }),
        )
        .await?;
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(token) = &self.config.token {
            let value = MetadataValue::try_from(format!("Bearer {token}"))
                .map_err(|e| SessionError::Token(e.to_string()))?;
            request.metadata_mut().insert("authorization", value);
        }
        let client_certificate = self
            .config
            .tls
            .as_ref()
            .map(|tls| tls.has_client_certificate());
        let mut inbound = DiscoveryClient::new(channel)
            .max_decoding_message_size(MAX_UPDATE_BYTES)
            .stream(request)
            .await
            .map_err(|status| SessionError::Open {
                status,
                client_certificate,
            })?
            .into_inner();
        self.metrics.control_plane_connected.set(1);
        tracing::info!(url = %self.config.url, "discovery stream open");

        let mut reporter = Reporter::new(self.config.timing.report_max_silence);
        let mut tick = tokio::time::interval(self.config.timing.report_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // While the cached config said in the Hello serves and nothing has
        // come, silence means it is current.
        let silence = tokio::time::sleep(self.config.timing.current_after);
        tokio::pin!(silence);
        loop {
            tokio::select! {
                _ = &mut silence, if cached && !self.received => {
                    cached = false;
                    if self.runtime.confirm_cached(&epoch, version) {
                        tracing::info!(
                            %epoch,
                            version,
                            "the control plane has nothing newer than the cached config; in sync"
                        );
                    }
                }
                message = inbound.message() => match message? {
                    Some(update) => {
                        let arrived = opened.elapsed();
                        let first = !self.received;
                        self.received = true;
                        let large = update.snapshot || update.upserts.len() >= LARGE_UPDATE;
                        let reply = self.handle(&update);
                        if first && matches!(reply, Kind::Ack(_)) {
                            let elapsed = opened.elapsed();
                            self.metrics.sync_seconds.set(elapsed.as_secs_f64());
                            tracing::info!(
                                version = update.version,
                                snapshot = update.snapshot,
                                received_ms = arrived.as_secs_f64() * 1000.0,
                                since_connect_ms = elapsed.as_secs_f64() * 1000.0,
                                "in sync with the control plane"
                            );
                        }
                        drop(update);
                        if large {
                            crate::config::runtime::release_memory();
                        }
                        send(&tx, reply).await?;
                    }
                    None => return Err(SessionError::Closed),
                },
                _ = tick.tick() => {
                    let breakers = self.runtime.breaker_states();
                    if let Some(report) = reporter.next(&self.runtime.busy(), &breakers) {
                        send(&tx, Kind::Report(report)).await?;
                    }
                }
            }
        }
    }

    fn handle(&self, update: &pb::ConfigUpdate) -> Kind {
        let bytes = prost::Message::encoded_len(update);
        self.metrics.count_received(update.snapshot, bytes);
        let started = Instant::now();
        let applied = self.runtime.apply_update(update);
        let elapsed = started.elapsed();
        match applied {
            Ok(()) => {
                self.metrics.observe_apply(update.snapshot, elapsed);
                if let Some(applied) = self.applied {
                    applied.notify(update.version);
                }
                let apply_ms = elapsed.as_secs_f64() * 1000.0;
                // Instance-only deltas come by the thousand in a busy fleet.
                if update.snapshot || !update.config_json.is_empty() {
                    tracing::info!(
                        epoch = %update.epoch,
                        version = update.version,
                        snapshot = update.snapshot,
                        upserts = update.upserts.len(),
                        removals = update.removals.len(),
                        config = !update.config_json.is_empty(),
                        bytes,
                        apply_ms,
                        "config applied"
                    );
                } else {
                    tracing::debug!(
                        version = update.version,
                        upserts = update.upserts.len(),
                        removals = update.removals.len(),
                        bytes,
                        apply_ms,
                        "config applied"
                    );
                }
                Kind::Ack(pb::Ack {
                    version: update.version,
                })
            }
            Err(e) => {
                let want_snapshot = e.wants_snapshot();
                tracing::warn!(version = update.version, want_snapshot, error = %e, "config update refused");
                Kind::Nack(pb::Nack {
                    version: update.version,
                    reason: e.to_string(),
                    want_snapshot,
                })
            }
        }
    }
}

async fn send(tx: &mpsc::Sender<pb::DataPlaneMessage>, kind: Kind) -> Result<(), SessionError> {
    tx.send(pb::DataPlaneMessage { kind: Some(kind) })
        .await
        .map_err(|_| SessionError::Closed)
}

/// Decides what a report carries: every instance whose count is non-zero or
/// changed since the last report (an instance missing from the counts has
/// none), and every breaker whose state changed (a breaker gone, its service
/// removed or its policy disabled, is reported once as `UNSPECIFIED`); a
/// report is sent when something changed, or after `max_silence` as a
/// liveness signal.
#[derive(Debug)]
pub struct Reporter {
    last: HashMap<String, u64>,
    last_breakers: HashMap<String, pb::BreakerState>,
    last_sent: Option<Instant>,
    max_silence: Duration,
}

impl Reporter {
    /// A reporter that stays silent at most `max_silence`.
    pub fn new(max_silence: Duration) -> Self {
        Self {
            last: HashMap::new(),
            last_breakers: HashMap::new(),
            last_sent: None,
            max_silence,
        }
    }

    /// The report to send now, if any, given the current counts and
    /// breaker states.
    pub fn next(
        &mut self,
        counts: &[(String, u64)],
        breakers: &[(String, BreakerState)],
    ) -> Option<pb::Report> {
        let mut changed = false;
        let mut breaker_changes = Vec::new();
        let mut current_breakers = HashMap::with_capacity(breakers.len());
        for (service, state) in breakers {
            let state = match state {
                BreakerState::Closed => pb::BreakerState::Closed,
                BreakerState::Open => pb::BreakerState::Open,
                BreakerState::HalfOpen => pb::BreakerState::HalfOpen,
            };
            if self.last_breakers.get(service) != Some(&state) {
                breaker_changes.push(pb::ServiceBreakerState {
                    service: service.clone(),
                    state: state as i32,
                });
            }
            current_breakers.insert(service.clone(), state);
        }
        for service in self.last_breakers.keys() {
            if !current_breakers.contains_key(service) {
                breaker_changes.push(pb::ServiceBreakerState {
                    service: service.clone(),
                    state: pb::BreakerState::Unspecified as i32,
                });
            }
        }
        changed |= !breaker_changes.is_empty();
        let mut loads = Vec::new();
        let mut current = HashMap::with_capacity(counts.len());
        for (id, n) in counts {
            let before = self.last.get(id).copied().unwrap_or(0);
            if *n != before {
                changed = true;
            }
            if *n != 0 || before != 0 {
                loads.push(pb::InstanceLoad {
                    instance_id: id.clone(),
                    in_flight: *n,
                });
            }
            if *n != 0 {
                current.insert(id.clone(), *n);
            }
        }
        // Instances gone since the last report with a non-zero count.
        for (id, _) in self
            .last
            .iter()
            .filter(|(id, _)| !current.contains_key(*id))
        {
            if !counts.iter().any(|(c, _)| c == id) {
                changed = true;
                loads.push(pb::InstanceLoad {
                    instance_id: id.clone(),
                    in_flight: 0,
                });
            }
        }
        let silent_too_long = self
            .last_sent
            .is_none_or(|at| at.elapsed() >= self.max_silence);
        if !changed && !silent_too_long {
            return None;
        }
        self.last = current;
        self.last_breakers = current_breakers;
        self.last_sent = Some(Instant::now());
        loads.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        breaker_changes.sort_by(|a, b| a.service.cmp(&b.service));
        Some(pb::Report {
            in_flight: loads,
            breakers: breaker_changes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(items: &[(&str, u64)]) -> Vec<(String, u64)> {
        items.iter().map(|(id, n)| (id.to_string(), *n)).collect()
    }

    fn loads(report: &pb::Report) -> Vec<(String, u64)> {
        report
            .in_flight
            .iter()
            .map(|l| (l.instance_id.clone(), l.in_flight))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn reports_changes_zeroes_and_liveness() {
        let mut r = Reporter::new(Duration::from_secs(5));
        // First report is always sent (liveness), empty here.
        assert_eq!(loads(&r.next(&counts(&[("a", 0)]), &[]).unwrap()), vec![]);
        assert!(r.next(&counts(&[("a", 0)]), &[]).is_none());
        let report = r.next(&counts(&[("a", 2), ("b", 0)]), &[]).unwrap();
        assert_eq!(loads(&report), counts(&[("a", 2)]));
        assert!(r.next(&counts(&[("a", 2)]), &[]).is_none());
        let report = r.next(&counts(&[("a", 0)]), &[]).unwrap();
        assert_eq!(loads(&report), counts(&[("a", 0)]));
        assert!(r.next(&counts(&[("a", 0)]), &[]).is_none());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(r.next(&counts(&[("a", 0)]), &[]).is_some());
        r.next(&counts(&[("c", 1)]), &[]).unwrap();
        let report = r.next(&counts(&[]), &[]).unwrap();
        assert_eq!(loads(&report), counts(&[("c", 0)]));
        // Only busy instances are listed: one that goes idle is reported once.
        r.next(&counts(&[("d", 3), ("e", 1)]), &[]).unwrap();
        let report = r.next(&counts(&[("e", 1)]), &[]).unwrap();
        assert_eq!(loads(&report), counts(&[("d", 0), ("e", 1)]));
        assert!(r.next(&counts(&[("e", 1)]), &[]).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_changes_and_removals_are_reported() {
        let mut r = Reporter::new(Duration::from_secs(5));
        let states = |report: &pb::Report| -> Vec<(String, i32)> {
            report
                .breakers
                .iter()
                .map(|b| (b.service.clone(), b.state))
                .collect()
        };
        let report = r
            .next(
                &[],
                &[
                    ("a".into(), BreakerState::Closed),
                    ("b".into(), BreakerState::Closed),
                ],
            )
            .unwrap();
        assert_eq!(
            states(&report),
            vec![
                ("a".into(), pb::BreakerState::Closed as i32),
                ("b".into(), pb::BreakerState::Closed as i32)
            ]
        );
        assert!(r
            .next(
                &[],
                &[
                    ("a".into(), BreakerState::Closed),
                    ("b".into(), BreakerState::Closed)
                ]
            )
            .is_none());
        let report = r.next(&[], &[("a".into(), BreakerState::Open)]).unwrap();
        assert_eq!(
            states(&report),
            vec![
                ("a".into(), pb::BreakerState::Open as i32),
                ("b".into(), pb::BreakerState::Unspecified as i32)
            ]
        );
        assert!(r.next(&[], &[("a".into(), BreakerState::Open)]).is_none());
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let timing = DiscoveryTiming::default();
        for attempt in 0..40 {
            let d = backoff(&timing, attempt);
            assert!(d <= timing.backoff_cap, "{attempt}: {d:?}");
            let ceiling = timing.backoff_base * 2u32.pow(attempt.min(6));
            assert!(d <= ceiling.min(timing.backoff_cap));
        }
        let samples: std::collections::HashSet<_> = (0..50).map(|_| backoff(&timing, 10)).collect();
        assert!(samples.len() > 5, "no jitter: {samples:?}");
    }
}
