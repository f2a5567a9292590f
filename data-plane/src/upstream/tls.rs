//! TLS to `https://` instances: a service's client settings, built once per
//! set of `tls` settings, and the handshake of a new pooled connection.
//!
//! One [`UpstreamTls`] (one rustls `ClientConfig`) serves every instance of
//! a service, so rustls' session cache (resumption by ticket or session id)
//! is shared by the service's connections and outlives any one of them. A
//! config change that leaves a service's `tls` settings as they are keeps
//! its `UpstreamTls`, cache included; the files are read again only when
//! the settings change (or at start). Services without `tls` settings share
//! one process-wide client trusting the platform's roots.

use gateway_common::config::{GatewayConfig, UpstreamTlsConfig};
use gateway_common::tls::{upstream_client_config, TlsError};
use rustls::pki_types::ServerName;
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, OnceLock};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// The TLS client of a service's `https://` instances.
pub struct UpstreamTls {
    connector: TlsConnector,
    /// The name verified (and sent as SNI) instead of the instance's host.
    server_name: Option<ServerName<'static>>,
    /// The settings it was built from; `None`: the platform default.
    settings: Option<UpstreamTlsConfig>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Why a TLS connection to an instance could not be made. Always the
/// upstream side's failure (a certificate refused, a handshake broken off),
/// never the client's.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The service has no usable TLS client (the platform has no trusted
    /// root and the service names no `ca_file`).
    #[error("no TLS client for an https instance: {0}")]
    NoClient(&'static str),
    /// The handshake failed.
    #[error("TLS handshake: {0}")]
    Failed(#[source] io::Error),
}

impl UpstreamTls {
    /// Builds the client of `settings`, reading its files.
    pub fn build(settings: &UpstreamTlsConfig) -> Result<Self, TlsError> {
        let config = upstream_client_config(settings)?;
        let server_name = match &settings.server_name {
            Some(name) => Some(
                ServerName::try_from(name.clone())
                    .map_err(|e| TlsError::Config(format!("tls.server_name {name:?}: {e}")))?,
            ),
            None => None,
        };
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
            settings: Some(settings.clone()),
        })
    }

    /// The process-wide client of services without `tls` settings: the
    /// platform's roots, no client certificate. Built on first need (when
    /// a snapshot holds an `https://` instance of such a service), never
    /// on a request's path. `None` when the platform has no root at all.
    pub fn platform() -> Option<Arc<Self>> {
        static PLATFORM: OnceLock<Option<Arc<UpstreamTls>>> = OnceLock::new();
        PLATFORM
            .get_or_init(|| match Self::build(&UpstreamTlsConfig::default()) {
                Ok(mut tls) => {
                    tls.settings = None;
                    Some(Arc::new(tls))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "https instances of services without tls settings cannot be reached");
                    None
                }
            })
            .clone()
    }

    /// The settings it was built from; `None`: the platform default.
    pub fn settings(&self) -> Option<&UpstreamTlsConfig> {
        self.settings.as_ref()
    }

    /// TLS over `tcp` to an instance whose host is `host`: verified against
    /// `server_name` when the service sets one, else against `host`.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        host: &ServerName<'static>,
    ) -> Result<TlsStream<TcpStream>, HandshakeError> {
        let name = self.server_name.as_ref().unwrap_or(host).clone();
        self.connector
            .connect(name, tcp)
            .await
            .map_err(HandshakeError::Failed)
    }
}

/// The TLS clients of the services of `config` that have `tls` settings,
/// by service name: the one of `previous` (the snapshot in force) when the
/// settings are the same, else a new one read from the files. Any service
/// whose settings cannot be used refuses the whole config.
pub fn clients_for(
    config: &GatewayConfig,
    previous: impl Fn(&str) -> Option<Arc<UpstreamTls>>,
) -> Result<HashMap<String, Arc<UpstreamTls>>, String> {
    let mut clients = HashMap::new();
    for service in &config.services {
        let Some(settings) = &service.tls else {
            continue;
        };
        let kept = previous(&service.name).filter(|p| p.settings() == Some(settings));
        let client = match kept {
            Some(client) => client,
            None => Arc::new(
                UpstreamTls::build(settings)
                    .map_err(|e| format!("service {}: {e}", service.name))?,
            ),
        };
        clients.insert(service.name.clone(), client);
    }
    Ok(clients)
}
