//! PEM files and trust roots of the gateway's own TLS: the control plane's
//! gRPC port and its clients (data planes, gwctl), and Redis.
//!
//! Everything is read once, at start, and checked there: an unreadable
//! file, a file without a certificate or key, or a key that does not belong
//! to its certificate is refused with the variable and the path named, so
//! a process never starts with TLS settings it cannot use. TLS is rustls on
//! the ring provider (TLS 1.2 and 1.3 only).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why TLS settings cannot be used. Each names the setting (flag or
/// variable) and the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read or is not PEM.
    #[error("{setting} {path}: {reason}")]
    Unreadable {
        /// The setting naming the file (e.g. `CP_TLS_CERT`).
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A file holds no certificate (or no private key).
    #[error("{setting} {path} holds no PEM {what}")]
    Empty {
        /// The setting naming the file.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// `certificate` or `private key`.
        what: &'static str,
    },
    /// The private key does not go with the certificate, or is of a kind
    /// rustls cannot sign with.
    #[error("{key_setting} {key} does not fit {cert_setting} {cert}: {reason}")]
    KeyMismatch {
        /// The certificate's setting.
        cert_setting: &'static str,
        /// The certificate file.
        cert: PathBuf,
        /// The key's setting.
        key_setting: &'static str,
        /// The key file.
        key: PathBuf,
        /// rustls' reason.
        reason: String,
    },
    /// A certificate is given without its key, or a key without its
    /// certificate.
    #[error("{given} is set without {missing}: both or neither")]
    HalfPair {
        /// The setting given.
        given: &'static str,
        /// The setting missing.
        missing: &'static str,
    },
    /// No root certificate to trust at all.
    #[error("no trusted root certificate: the platform has none (install its CA certificates) and {setting} is not set")]
    NoRoots {
        /// The CA file setting that would add roots.
        setting: &'static str,
    },
    /// Any other refusal of the settings by rustls.
    #[error("TLS settings: {0}")]
    Config(String),
}

/// The crypto provider of every TLS connection the gateway makes or takes.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes ring the process's default rustls provider, for libraries that
/// build their TLS settings from the default (the Redis client). Harmless
/// when a default is already installed.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The certificates of the PEM file `path` (at least one), read for
/// `setting`.
pub fn read_certificates(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let unreadable = |reason: String| TlsError::Unreadable {
        setting,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| unreadable(pem_reason(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(pem_reason(e)))?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            setting,
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// The private key of the PEM file `path` (PKCS#8, PKCS#1 or SEC1), read
/// for `setting`.
pub fn read_private_key(
    setting: &'static str,
    path: &Path,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            setting,
            path: path.to_path_buf(),
            what: "private key",
        },
        e => TlsError::Unreadable {
            setting,
            path: path.to_path_buf(),
            reason: pem_reason(e),
        },
    })
}

fn pem_reason(error: rustls::pki_types::pem::Error) -> String {
    match error {
        rustls::pki_types::pem::Error::Io(e) => e.to_string(),
        e => format!("not a PEM file ({e})"),
    }
}

/// A certificate chain and its private key, read and checked together.
pub struct Identity {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// The chain as the PEM text it was read from.
    pub chain_pem: Vec<u8>,
    /// The key as the PEM text it was read from.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            chain_pem: self.chain_pem.clone(),
            key_pem: self.key_pem.clone(),
        }
    }
}

/// Names of the two settings of a certificate and its key.
#[derive(Debug, Clone, Copy)]
pub struct PairSettings {
    /// The certificate's setting (e.g. `CP_TLS_CERT`).
    pub cert: &'static str,
    /// The key's setting (e.g. `CP_TLS_KEY`).
    pub key: &'static str,
}

impl Identity {
    /// Reads a certificate chain and its key; `None` when neither is given.
    /// Refused: one without the other, unreadable files, and a key that
    /// does not belong to the certificate.
    pub fn read_pair(
        names: PairSettings,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Option<Self>, TlsError> {
        match (cert, key) {
            (None, None) => Ok(None),
            (Some(_), None) => Err(TlsError::HalfPair {
                given: names.cert,
                missing: names.key,
            }),
            (None, Some(_)) => Err(TlsError::HalfPair {
                given: names.key,
                missing: names.cert,
            }),
            (Some(cert), Some(key)) => Self::read(names, cert, key).map(Some),
        }
    }

    /// Reads the chain of `cert` and the key of `key` and checks that they
    /// belong together.
    pub fn read(names: PairSettings, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let chain = read_certificates(names.cert, cert)?;
        let private = read_private_key(names.key, key)?;
        rustls::sign::CertifiedKey::from_der(chain.clone(), private.clone_key(), &provider())
            .map_err(|e| TlsError::KeyMismatch {
                cert_setting: names.cert,
                cert: cert.to_path_buf(),
                key_setting: names.key,
                key: key.to_path_buf(),
                reason: e.to_string(),
            })?;
        let read = |setting, path: &Path| {
            std::fs::read(path).map_err(|e| TlsError::Unreadable {
                setting,
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
        };
        Ok(Self {
            chain,
            key: private,
            chain_pem: read(names.cert, cert)?,
            key_pem: read(names.key, key)?,
        })
    }
}

/// The roots a client trusts: the platform's (the system store, or
/// `SSL_CERT_FILE` / `SSL_CERT_DIR` when set) plus the certificates of the
/// PEM file `ca_file` (named by `setting`). Unreadable entries of the
/// platform store are skipped; no root at all is refused.
pub fn trust_roots(
    setting: &'static str,
    ca_file: Option<&Path>,
) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = ca_file {
        for cert in read_certificates(setting, path)? {
            roots.add(cert).map_err(|e| TlsError::Unreadable {
                setting,
                path: path.to_path_buf(),
                reason: format!("not a usable CA certificate ({e})"),
            })?;
        }
    }
    if roots.is_empty() {
        return Err(TlsError::NoRoots { setting });
    }
    Ok(roots)
}

/// The TLS client settings of calls to a service's `https://` instances
/// (the data planes' connections, the control plane's health checks):
/// rustls on ring, TLS 1.2 and 1.3, ALPN `http/1.1`, session resumption on
/// (rustls' in-memory cache, which lives as long as the returned config),
/// the platform's roots plus `ca_file`, and the client certificate of
/// `client_cert`/`client_key` when given. The files are read here: an
/// unreadable file, a key that does not fit its certificate, or no trusted
/// root at all is refused, naming the `tls.*` key and the file.
pub fn upstream_client_config(
    settings: &crate::config::UpstreamTlsConfig,
) -> Result<rustls::ClientConfig, TlsError> {
    let roots = trust_roots("tls.ca_file", settings.ca_file.as_deref())?;
    let identity = Identity::read_pair(
        PairSettings {
            cert: "tls.client_cert",
            key: "tls.client_key",
        },
        settings.client_cert.as_deref(),
        settings.client_key.as_deref(),
    )?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(identity) => builder
            .with_client_auth_cert(identity.chain, identity.key)
            .map_err(|e| TlsError::Config(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, content: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("gw-tls-{}-{name}", std::process::id()));
        std::fs::write(&path, content).unwrap();
        path
    }

    #[test]
    fn unreadable_and_empty_files_are_named() {
        let missing = Path::new("/nonexistent/ca.pem");
        let err = read_certificates("GW_CA_FILE", missing).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("GW_CA_FILE /nonexistent/ca.pem:"),
            "{err}"
        );
        let empty = temp("empty.pem", "not pem at all\n");
        let err = read_certificates("GW_CA_FILE", &empty).unwrap_err();
        assert!(
            err.to_string().contains("holds no PEM certificate"),
            "{err}"
        );
        let err = read_private_key("CP_TLS_KEY", &empty).unwrap_err();
        assert!(
            err.to_string().contains("holds no PEM private key"),
            "{err}"
        );
        let _ = std::fs::remove_file(empty);
    }

    #[test]
    fn a_certificate_needs_its_key() {
        let names = PairSettings {
            cert: "CP_TLS_CERT",
            key: "CP_TLS_KEY",
        };
        assert!(Identity::read_pair(names, None, None).unwrap().is_none());
        let err = Identity::read_pair(names, Some(Path::new("/x")), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "CP_TLS_CERT is set without CP_TLS_KEY: both or neither"
        );
        let err = Identity::read_pair(names, None, Some(Path::new("/x"))).unwrap_err();
        assert!(
            err.to_string().starts_with("CP_TLS_KEY is set without"),
            "{err}"
        );
    }
}
