//! The TLS clients of active health checks of `https://` instances: one
//! per distinct set of service `tls` settings (not one per check), built
//! on first need and kept for the checker's term, so connections and TLS
//! sessions are reused from one probe to the next.
//!
//! The files named by the settings are read here, on the control plane: a
//! service whose files the control plane cannot read gets its `https://`
//! probes failed with the reason (the data planes read the same settings
//! on their side and refuse the config if they cannot use them).

use gateway_common::config::UpstreamTlsConfig;
use gateway_common::error_chain;
use gateway_common::http_client::{self, Client};
use gateway_common::tls::{provider, trust_roots, upstream_client_config};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The clients, by settings.
#[derive(Default)]
pub(crate) struct TlsClients {
    clients: HashMap<UpstreamTlsConfig, Result<Client, String>>,
}

impl TlsClients {
    /// The client of `settings`, built on first use; the reason when the
    /// settings cannot be used here.
    pub(crate) fn get(&mut self, settings: &UpstreamTlsConfig) -> Result<Client, String> {
        self.clients
            .entry(settings.clone())
            .or_insert_with(|| {
                build(settings).inspect_err(|e| {
                    tracing::warn!(error = %e, "health checks of https instances fail: unusable tls settings");
                })
            })
            .clone()
    }
}

fn build(settings: &UpstreamTlsConfig) -> Result<Client, String> {
    let mut config = upstream_client_config(settings).map_err(|e| format!("tls settings: {e}"))?;
    if let Some(name) = &settings.server_name {
        // reqwest verifies the URL's host; the service's server_name is
        // verified instead.
        let name = ServerName::try_from(name.clone())
            .map_err(|e| format!("tls.server_name {name:?}: {e}"))?;
        let roots = trust_roots("tls.ca_file", settings.ca_file.as_deref())
            .map_err(|e| format!("tls settings: {e}"))?;
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| format!("tls settings: {e}"))?;
        config
            .dangerous()
            .set_certificate_verifier(Arc::new(FixedName { inner, name }));
    }
    http_client::builder(Some(&config))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(1)
        .build()
        .map_err(|e| format!("building the health-check client: {}", error_chain(&e)))
}

/// Verifies the server's certificate against a fixed name (the service's
/// `tls.server_name`) whatever host was dialled.
#[derive(Debug)]
struct FixedName {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for FixedName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
