//! HTTPS on the public side: the TLS listener's settings, its rustls
//! server config (TLS 1.2 and 1.3, the ring provider's default cipher
//! suites, ALPN `h2` then `http/1.1`), certificates chosen by SNI
//! ([`resolver`]), reloaded when their files change or on SIGHUP
//! ([`reload`]), client certificates verified against an optional CA, and
//! each connection's handshake ([`handshake`]).
//!
//! The listener serves the same proxy stack as the plain one
//! (`edge::server::serve` with a [`TlsHandshake`]); its requests carry a
//! [`crate::connection::TlsConnection`].

mod certs;
mod handshake;
mod reload;
mod resolver;
mod subject;

pub use certs::{CertInfo, CertPaths, TlsError};
pub use handshake::{classify, TlsHandshake, REASONS};
pub use reload::Reloader;
pub use subject::rfc4514;

use crate::ops::handles::TlsMetrics;
use resolver::{CertSet, Entry, SniResolver};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Default bound on a client's TLS handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default pause between two looks at the certificate files.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// The HTTPS listener's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Where it listens; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The certificates served, the first one by default (no SNI, or a
    /// name none has).
    pub certs: Vec<CertPaths>,
    /// CA (PEM) that client certificates are verified against; `None`: no
    /// client certificate is asked for.
    pub client_ca: Option<PathBuf>,
    /// Time a client gets to complete its handshake.
    pub handshake_timeout: Duration,
    /// Pause between two looks at the certificate files.
    pub reload_interval: Duration,
}

/// The HTTPS listener's TLS, loaded: the server config every handshake
/// uses and the certificates behind it.
#[derive(Debug)]
pub struct TlsEdge {
    settings: TlsSettings,
    config: Arc<rustls::ServerConfig>,
    reloader: Reloader,
}

impl TlsEdge {
    /// Loads every certificate, key and the client CA; any that cannot be
    /// used (unreadable, not PEM, a key that is not the certificate's) is
    /// an error. `metrics` gets the expiry of each certificate.
    pub fn load(settings: TlsSettings, metrics: TlsMetrics) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut loaded = Vec::with_capacity(settings.certs.len());
        for paths in &settings.certs {
            let (cert, contents) = certs::load(paths, &provider)?;
            loaded.push((paths.clone(), cert, contents));
        }
        let entries = loaded
            .iter()
            .map(|(_, cert, _)| Entry {
                names: cert.info.dns_names.clone(),
                key: cert.key.clone(),
            })
            .collect();
        let Some(set) = CertSet::new(entries) else {
            return Err(TlsError::BadCertificate {
                path: PathBuf::new(),
                reason: "no certificate given".into(),
            });
        };
        let resolver = Arc::new(SniResolver::new(set));
        let config = server_config(&provider, settings.client_ca.as_deref(), resolver.clone())?;
        metrics.enable(&REASONS);
        let reloader = Reloader::new(provider, resolver, loaded, metrics);
        for info in reloader.served() {
            tracing::info!(
                certificate = %info.name,
                names = ?info.dns_names,
                not_after = %crate::edge::errors::iso8601(info.not_after),
                "TLS certificate loaded"
            );
        }
        Ok(Self {
            settings,
            config: Arc::new(config),
            reloader,
        })
    }

    /// The listener's settings.
    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// The handshake of connections accepted on `port`.
    pub fn handshake(&self, port: u16) -> TlsHandshake {
        TlsHandshake::new(
            self.config.clone(),
            self.settings.handshake_timeout,
            port,
            self.reloader.metrics().clone(),
        )
    }

    /// What keeps the certificates fresh: run it with [`Reloader::run`].
    pub fn into_reloader(self) -> (Reloader, Duration) {
        (self.reloader, self.settings.reload_interval)
    }
}

/// The rustls server config: TLS 1.3 and 1.2, `resolver` choosing the
/// certificate, client certificates asked for (not required) and verified
/// against `client_ca` when given.
fn server_config(
    provider: &Arc<CryptoProvider>,
    client_ca: Option<&std::path::Path>,
    resolver: Arc<SniResolver>,
) -> Result<rustls::ServerConfig, TlsError> {
    let bad_ca = |path: &std::path::Path, reason: String| TlsError::BadClientCa {
        path: path.to_path_buf(),
        reason,
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::BadCertificate {
            path: PathBuf::new(),
            reason: format!("TLS versions: {e}"),
        })?;
    let builder = match client_ca {
        Some(path) => {
            let roots = certs::client_roots(path)?;
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| bad_ca(path, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    // The server's preference wins (rustls picks the first of its own list
    // the client offers): HTTP/2 for clients that speak it.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests;
