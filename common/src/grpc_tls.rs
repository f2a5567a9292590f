//! The clients' side of the control plane's gRPC port: data planes
//! (Discovery) and gwctl (Admin, Registry) dial it through [`endpoint`].
//!
//! The rule: an `https://` URL always speaks TLS, verified against the
//! platform's roots plus the given CA file, and a failed handshake is an
//! error, never a fall-back to plaintext; `http://` is plaintext, and TLS
//! files given with it are refused (they would be silently unused). A
//! client certificate, when given, is presented to a control plane that
//! asks for one (mTLS).

use crate::tls::{trust_roots, Identity, PairSettings, TlsError};
use std::path::Path;
use std::time::Duration;
use tonic::transport::{ClientTlsConfig, Endpoint};

/// Time allowed for the TLS handshake once the TCP connection is open.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Names of a client's TLS settings, for its messages (flags and
/// variables differ between the data plane and gwctl).
#[derive(Debug, Clone, Copy)]
pub struct ClientTlsNames {
    /// The setting of the control plane's URL.
    pub url: &'static str,
    /// The CA file's setting.
    pub ca_file: &'static str,
    /// The client certificate's and key's settings.
    pub identity: PairSettings,
}

/// The files a client was given (each optional).
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientTlsFiles<'a> {
    /// PEM file of CA certificates trusted besides the platform's.
    pub ca_file: Option<&'a Path>,
    /// PEM chain of the client certificate.
    pub client_cert: Option<&'a Path>,
    /// PEM private key of the client certificate.
    pub client_key: Option<&'a Path>,
}

impl ClientTlsFiles<'_> {
    /// The setting of the first file given, if any.
    fn first_given(&self, names: ClientTlsNames) -> Option<&'static str> {
        [
            (self.ca_file, names.ca_file),
            (self.client_cert, names.identity.cert),
            (self.client_key, names.identity.key),
        ]
        .into_iter()
        .find_map(|(file, setting)| file.map(|_| setting))
    }
}

/// Why a control-plane endpoint cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The URL is not a usable `http://` or `https://` URL.
    #[error("invalid control-plane URL {url:?}: {reason}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// TLS files were given for a plaintext URL.
    #[error("{setting} is set but {url_setting} {url:?} is not https://: use an https:// URL for TLS, or unset {setting}")]
    NotHttps {
        /// The TLS setting given.
        setting: &'static str,
        /// The URL's setting.
        url_setting: &'static str,
        /// The URL.
        url: String,
    },
    /// The TLS files cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The TLS settings of a client of an `https://` control plane: trusted
/// roots and an optional client certificate, read once.
#[derive(Clone)]
pub struct ClientTls {
    roots: rustls::RootCertStore,
    identity: Option<Identity>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("roots", &self.roots.len())
            .field("client_certificate", &self.identity.is_some())
            .finish()
    }
}

impl ClientTls {
    /// The TLS settings to dial `url` with: `Some` for `https://` (the
    /// platform's roots plus `files.ca_file`, and the client certificate
    /// when given), `None` for `http://`, where any file is refused.
    pub fn for_url(
        url: &str,
        names: ClientTlsNames,
        files: ClientTlsFiles<'_>,
    ) -> Result<Option<Self>, EndpointError> {
        match scheme(url)? {
            Scheme::Https => {
                let roots = trust_roots(names.ca_file, files.ca_file)?;
                let identity =
                    Identity::read_pair(names.identity, files.client_cert, files.client_key)?;
                Ok(Some(Self { roots, identity }))
            }
            Scheme::Http => match files.first_given(names) {
                None => Ok(None),
                Some(setting) => Err(EndpointError::NotHttps {
                    setting,
                    url_setting: names.url,
                    url: url.to_string(),
                }),
            },
        }
    }

    /// Whether a client certificate is presented.
    pub fn has_client_certificate(&self) -> bool {
        self.identity.is_some()
    }

    fn tonic(&self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new()
            .trust_anchors(self.roots.roots.iter().cloned())
            .timeout(HANDSHAKE_TIMEOUT);
        match &self.identity {
            Some(identity) => config.identity(tonic::transport::Identity::from_pem(
                &identity.chain_pem,
                &identity.key_pem,
            )),
            None => config,
        }
    }
}

enum Scheme {
    Http,
    Https,
}

fn scheme(url: &str) -> Result<Scheme, EndpointError> {
    let bad = |reason: &str| EndpointError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let uri: http::Uri = url.parse().map_err(|_| bad("does not parse"))?;
    if uri.host().is_none() {
        return Err(bad(
            "no host; expected http://HOST:PORT or https://HOST:PORT",
        ));
    }
    match uri.scheme_str() {
        Some("http") => Ok(Scheme::Http),
        Some("https") => Ok(Scheme::Https),
        _ => Err(bad("expected http://HOST:PORT or https://HOST:PORT")),
    }
}

/// The endpoint of the control plane at `url`: TLS with `tls` for
/// `https://` (which must then be given: see [`ClientTls::for_url`]),
/// plaintext for `http://`.
pub fn endpoint(url: &str, tls: Option<&ClientTls>) -> Result<Endpoint, EndpointError> {
    let https = matches!(scheme(url)?, Scheme::Https);
    let endpoint = Endpoint::from_shared(url.to_string()).map_err(|e| EndpointError::BadUrl {
        url: url.to_string(),
        reason: e.to_string(),
    })?;
    match (https, tls) {
        (true, Some(tls)) => endpoint
            .tls_config(tls.tonic())
            .map_err(|e| TlsError::Config(crate::error_chain(&e)).into()),
        (true, None) => Err(EndpointError::BadUrl {
            url: url.to_string(),
            reason: "an https:// URL needs TLS settings".into(),
        }),
        (false, _) => Ok(endpoint),
    }
}

/// Whether a transport error says the control plane dropped the
/// connection: how a TLS 1.3 server that wants a client certificate refuses
/// one, seen by the client as a closed, reset or cancelled connection
/// depending on when the refusal arrives.
pub fn closed_by_peer(reason: &str) -> bool {
    [
        "connection closed",
        "connection reset",
        "connection was not ready",
        "operation was canceled",
        "broken pipe",
    ]
    .iter()
    .any(|words| reason.contains(words))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: ClientTlsNames = ClientTlsNames {
        url: "GW_CONTROL_PLANE",
        ca_file: "GW_CA_FILE",
        identity: PairSettings {
            cert: "GW_CLIENT_CERT",
            key: "GW_CLIENT_KEY",
        },
    };

    #[test]
    fn plaintext_urls_take_no_tls_files() {
        let none = ClientTls::for_url("http://cp:50051", NAMES, ClientTlsFiles::default());
        assert!(none.unwrap().is_none());
        let files = ClientTlsFiles {
            ca_file: Some(Path::new("/etc/hostname")),
            ..ClientTlsFiles::default()
        };
        let err = ClientTls::for_url("http://cp:50051", NAMES, files).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("GW_CA_FILE is set but GW_CONTROL_PLANE"),
            "{err}"
        );
        let err = ClientTls::for_url("ftp://cp", NAMES, files).unwrap_err();
        assert!(matches!(err, EndpointError::BadUrl { .. }), "{err}");
    }

    #[test]
    fn https_never_goes_out_in_plaintext() {
        let err = endpoint("https://cp:50051", None).unwrap_err();
        assert!(err.to_string().contains("needs TLS settings"), "{err}");
        assert!(endpoint("http://cp:50051", None).is_ok());
        let files = ClientTlsFiles {
            ca_file: Some(Path::new("/nonexistent/ca.pem")),
            ..ClientTlsFiles::default()
        };
        let err = ClientTls::for_url("https://cp:50051", NAMES, files).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("GW_CA_FILE /nonexistent/ca.pem"),
            "{err}"
        );
    }
}
