//! Certificate rotation: every few seconds, and at once on SIGHUP, the
//! certificate and key files are read again; a pair whose bytes changed is
//! parsed and, when usable, the whole set is swapped in for the handshakes
//! to come. Open connections keep the session they have. A new file that
//! cannot be used (half written, a key of another certificate, not PEM) is
//! logged once as a warning and the certificate served stays.

use super::certs::{self, CertInfo, CertPaths, Contents, Loaded};
use super::resolver::{CertSet, Entry, SniResolver};
use crate::ops::handles::{ServedCertificate, TlsMetrics};
use rustls::crypto::CryptoProvider;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// One certificate of the set, as last read.
#[derive(Debug)]
pub(super) struct Pair {
    paths: CertPaths,
    /// What is served.
    loaded: Loaded,
    /// The files' bytes it was made from.
    contents: Contents,
    /// The last problem logged for this pair (not logged again until it
    /// changes or an operator asks with SIGHUP).
    pub(super) problem: Option<String>,
}

/// Keeps the served certificates in step with their files.
#[derive(Debug)]
pub struct Reloader {
    provider: Arc<CryptoProvider>,
    pub(super) resolver: Arc<SniResolver>,
    pub(super) pairs: Vec<Pair>,
    metrics: TlsMetrics,
}

impl Reloader {
    /// A reloader of `loaded` (paths, certificate, file bytes) served by
    /// `resolver`; publishes their expiry to `metrics` at once.
    pub(super) fn new(
        provider: Arc<CryptoProvider>,
        resolver: Arc<SniResolver>,
        loaded: Vec<(CertPaths, Loaded, Contents)>,
        metrics: TlsMetrics,
    ) -> Self {
        let pairs = loaded
            .into_iter()
            .map(|(paths, loaded, contents)| Pair {
                paths,
                loaded,
                contents,
                problem: None,
            })
            .collect();
        let reloader = Self {
            provider,
            resolver,
            pairs,
            metrics,
        };
        reloader.publish(SystemTime::now());
        reloader
    }

    /// The TLS metrics it publishes to.
    pub fn metrics(&self) -> &TlsMetrics {
        &self.metrics
    }

    /// What is served, in order.
    pub fn served(&self) -> Vec<CertInfo> {
        self.pairs.iter().map(|p| p.loaded.info.clone()).collect()
    }

    /// Looks at the files every `every` and on SIGHUP until `stop`.
    pub async fn run(mut self, every: Duration, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut hup = hangups();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.check(false);
                }
                Some(()) = next_hangup(&mut hup) => {
                    self.check(true);
                }
                _ = crate::edge::shutdown::stopped(&mut stop) => return,
            }
        }
    }

    /// Reads every pair's files again and swaps in those that changed and
    /// can be used; `asked` (SIGHUP) logs the outcome even when nothing
    /// changed. Returns whether the set served changed.
    pub fn check(&mut self, asked: bool) -> bool {
        let mut changed = false;
        for pair in &mut self.pairs {
            changed |= pair.refresh(&self.provider, asked);
        }
        if changed {
            let entries = self
                .pairs
                .iter()
                .map(|p| Entry {
                    names: p.loaded.info.dns_names.clone(),
                    key: p.loaded.key.clone(),
                })
                .collect();
            if let Some(set) = CertSet::new(entries) {
                self.resolver.replace(set);
            }
        } else if asked {
            tracing::info!("TLS certificates checked on SIGHUP; none changed");
        }
        self.publish(SystemTime::now());
        changed
    }

    /// Publishes the expiry of what is served, as of `now`.
    fn publish(&self, now: SystemTime) {
        let served = self
            .pairs
            .iter()
            .map(|p| ServedCertificate {
                name: p.loaded.info.name.clone(),
                not_after: p.loaded.info.not_after,
            })
            .collect();
        self.metrics.serve(served, now);
    }
}

impl Pair {
    /// Reads the pair's files; swaps in a changed, usable certificate.
    fn refresh(&mut self, provider: &CryptoProvider, asked: bool) -> bool {
        let parsed = Contents::read(&self.paths).and_then(|contents| {
            if contents == self.contents {
                return Ok(None);
            }
            certs::parse(&self.paths, &contents, provider).map(|loaded| Some((loaded, contents)))
        });
        match parsed {
            Ok(None) => {
                self.problem = None;
                false
            }
            Ok(Some((loaded, contents))) => {
                tracing::info!(
                    certificate = %loaded.info.name,
                    file = %self.paths.cert.display(),
                    names = ?loaded.info.dns_names,
                    not_after = %crate::edge::errors::iso8601(loaded.info.not_after),
                    "TLS certificate reloaded"
                );
                self.loaded = loaded;
                self.contents = contents;
                self.problem = None;
                true
            }
            Err(e) => {
                let problem = e.to_string();
                if asked || self.problem.as_ref() != Some(&problem) {
                    tracing::warn!(
                        error = %problem,
                        certificate = %self.loaded.info.name,
                        "the new TLS certificate cannot be used; the one loaded before is still served"
                    );
                }
                self.problem = Some(problem);
                false
            }
        }
    }
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = ();

#[cfg(unix)]
fn hangups() -> Hangups {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(hup) => Some(hup),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; certificates reload on file changes only");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangups() -> Hangups {}

/// The next SIGHUP; never, when there is no way to hear one.
async fn next_hangup(hup: &mut Hangups) -> Option<()> {
    #[cfg(unix)]
    if let Some(hup) = hup {
        return hup.recv().await;
    }
    let _ = hup;
    std::future::pending().await
}
