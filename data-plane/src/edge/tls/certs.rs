//! Reading a certificate chain and its private key from PEM files: the
//! signing key rustls serves with, checked against the certificate, and
//! what the gateway needs to know of the certificate (its DNS names for
//! SNI, its notAfter for the expiry metric).

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One certificate the HTTPS listener serves: a PEM chain (end-entity
/// certificate first) and its PEM private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    /// The certificate chain.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why the TLS listener's files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A certificate file holds no usable certificate.
    #[error("{}: {reason}", path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A key file holds no usable private key.
    #[error("{}: {reason}", path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The private key is not the certificate's.
    #[error("{} does not hold the private key of the certificate in {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The client CA file cannot be used to verify client certificates.
    #[error("client CA {}: {reason}", path.display())]
    BadClientCa {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// What the gateway knows of a served certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The first DNS name, else the certificate file's name: the label of
    /// its expiry metric and health entry.
    pub name: String,
    /// Its DNS names (subject alternative names, lower case; `*.` wildcards
    /// kept), matched against the client's SNI.
    pub dns_names: Vec<String>,
    /// Its notAfter.
    pub not_after: SystemTime,
}

/// A loaded certificate: the key rustls signs with, and what it is.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Chain and signing key.
    pub key: Arc<CertifiedKey>,
    /// Names and expiry.
    pub info: CertInfo,
}

/// The bytes of a certificate's two files, as read (to see whether they
/// changed since).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl Contents {
    /// Reads both files of `paths`.
    pub fn read(paths: &CertPaths) -> Result<Self, TlsError> {
        Ok(Self {
            cert: read(&paths.cert)?,
            key: read(&paths.key)?,
        })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses `contents` (read from `paths`) into a certificate to serve: the
/// chain, a private key the provider can sign with and that matches the
/// end-entity certificate.
pub fn parse(
    paths: &CertPaths,
    contents: &Contents,
    provider: &CryptoProvider,
) -> Result<Loaded, TlsError> {
    let bad_cert = |reason: String| TlsError::BadCertificate {
        path: paths.cert.clone(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(&contents.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_cert(format!("not a PEM certificate chain: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(bad_cert("holds no CERTIFICATE block".into()));
    };
    let info = describe(leaf, &paths.cert).map_err(bad_cert)?;
    let key = PrivateKeyDer::from_pem_slice(&contents.key).map_err(|e| TlsError::BadKey {
        path: paths.key.clone(),
        reason: format!("no PEM private key: {e}"),
    })?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::BadKey {
            path: paths.key.clone(),
            reason: format!("unusable private key: {e}"),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    // A key whose public half rustls cannot compute is refused too: the
    // gateway only serves pairs it has seen match.
    certified.keys_match().map_err(|_| TlsError::KeyMismatch {
        cert: paths.cert.clone(),
        key: paths.key.clone(),
    })?;
    Ok(Loaded {
        key: Arc::new(certified),
        info,
    })
}

/// Reads and parses the files of `paths`.
pub fn load(paths: &CertPaths, provider: &CryptoProvider) -> Result<(Loaded, Contents), TlsError> {
    let contents = Contents::read(paths)?;
    let loaded = parse(paths, &contents, provider)?;
    Ok((loaded, contents))
}

/// The DNS names and notAfter of the end-entity certificate `der`, read
/// from `file`.
fn describe(der: &CertificateDer<'_>, file: &Path) -> Result<CertInfo, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let mut dns_names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                dns_names.push(dns.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    let seconds = cert.validity().not_after.timestamp();
    let not_after = match u64::try_from(seconds) {
        Ok(s) => UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => UNIX_EPOCH,
    };
    let name = dns_names.first().cloned().unwrap_or_else(|| {
        file.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| file.display().to_string())
    });
    Ok(CertInfo {
        name,
        dns_names,
        not_after,
    })
}

/// A root store of the CA certificates in the PEM file `path`.
pub fn client_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let bad = |reason: String| TlsError::BadClientCa {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a PEM certificate list: {e}")))?;
    if certs.is_empty() {
        return Err(bad("holds no CERTIFICATE block".into()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}
