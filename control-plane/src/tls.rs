//! TLS of the gRPC port (`--tls-cert`, `--tls-key`, `--tls-client-ca`):
//! the whole port (Registry, Admin, Discovery, grpc.health.v1, reflection)
//! speaks TLS once a certificate is given, and with a client CA every
//! client (data planes and gwctl alike) must present a certificate signed
//! by it, on top of its bearer token. The files are read and checked at
//! start; a bad one refuses the start with the setting and path named.

use gateway_common::tls::{read_certificates, Identity, PairSettings, TlsError};
use std::path::Path;
use tonic::transport::ServerTlsConfig;

/// The settings of the server's certificate and key.
pub const SERVER_PAIR: PairSettings = PairSettings {
    cert: "CP_TLS_CERT",
    key: "CP_TLS_KEY",
};
/// The setting of the client CA.
pub const CLIENT_CA: &str = "CP_TLS_CLIENT_CA";

/// The gRPC port's TLS settings, read and checked.
#[derive(Debug, Clone)]
pub struct ServerTls {
    config: ServerTlsConfig,
    client_auth: bool,
}

impl ServerTls {
    /// Reads the server's certificate and key and the client CA; `None`
    /// when no certificate is given (plaintext). Refused: a certificate
    /// without its key (or the reverse), a client CA without a certificate,
    /// unreadable or empty files, a key that does not fit the certificate,
    /// a client CA that is not a usable CA certificate.
    pub fn load(
        cert: Option<&Path>,
        key: Option<&Path>,
        client_ca: Option<&Path>,
    ) -> Result<Option<Self>, TlsError> {
        let Some(identity) = Identity::read_pair(SERVER_PAIR, cert, key)? else {
            return match client_ca {
                Some(_) => Err(TlsError::HalfPair {
                    given: CLIENT_CA,
                    missing: "CP_TLS_CERT and CP_TLS_KEY",
                }),
                None => Ok(None),
            };
        };
        let mut config = ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(
            &identity.chain_pem,
            &identity.key_pem,
        ));
        if let Some(path) = client_ca {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certificates(CLIENT_CA, path)? {
                roots.add(cert).map_err(|e| TlsError::Unreadable {
                    setting: CLIENT_CA,
                    path: path.to_path_buf(),
                    reason: format!("not a usable CA certificate ({e})"),
                })?;
            }
            let pem = std::fs::read(path).map_err(|e| TlsError::Unreadable {
                setting: CLIENT_CA,
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
            config = config.client_ca_root(tonic::transport::Certificate::from_pem(pem));
        }
        let tls = ServerTls {
            config,
            client_auth: client_ca.is_some(),
        };
        // tonic builds its rustls settings here: anything rustls refuses
        // is refused at start.
        tonic::transport::Server::builder()
            .tls_config(tls.config.clone())
            .map_err(|e| TlsError::Config(gateway_common::error_chain(&e)))?;
        Ok(Some(tls))
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_certificates(&self) -> bool {
        self.client_auth
    }

    /// The settings tonic serves with.
    pub fn config(&self) -> ServerTlsConfig {
        self.config.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_unless_a_certificate_is_given() {
        assert!(ServerTls::load(None, None, None).unwrap().is_none());
        let err = ServerTls::load(None, None, Some(Path::new("/etc/hostname"))).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("CP_TLS_CLIENT_CA is set without CP_TLS_CERT"),
            "{err}"
        );
        let err = ServerTls::load(Some(Path::new("/etc/hostname")), None, None).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("CP_TLS_CERT is set without CP_TLS_KEY"),
            "{err}"
        );
        let err = ServerTls::load(
            Some(Path::new("/nonexistent/cert.pem")),
            Some(Path::new("/nonexistent/key.pem")),
            None,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("CP_TLS_CERT /nonexistent/cert.pem"),
            "{err}"
        );
    }
}
