//! The one constructor of Redis clients, for the control plane's store and
//! the data planes' shared state: `redis://` in plaintext, `rediss://` over
//! TLS (rustls on ring, TLS 1.2/1.3), with an optional CA file and client
//! certificate (`REDIS_CA_FILE`, `REDIS_CLIENT_CERT`, `REDIS_CLIENT_KEY`).
//!
//! Certificate verification cannot be turned off: a `rediss://` URL asking
//! for it (`#insecure`) is refused, and so are TLS files given with a
//! plaintext URL (they would be silently unused).

use crate::tls::{read_certificates, trust_roots, Identity, PairSettings, TlsError};
use redis::{ConnectionAddr, IntoConnectionInfo};
use std::path::PathBuf;

/// The variable of the CA file.
pub const CA_FILE_VAR: &str = "REDIS_CA_FILE";
/// The variables of the client certificate and its key.
pub const CLIENT_PAIR: PairSettings = PairSettings {
    cert: "REDIS_CLIENT_CERT",
    key: "REDIS_CLIENT_KEY",
};

/// The URL forms accepted, for messages.
pub const URL_FORMS: &str =
    "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] or rediss://[[USER]:PASSWORD@]HOST[:PORT][/DB]";

/// TLS files of a `rediss://` connection; all optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// PEM CA certificates that sign the server's certificate; set, they
    /// are the only roots trusted (a private CA); unset, the platform's.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain, for a Redis that asks for one.
    pub client_cert: Option<PathBuf>,
    /// Its PEM private key.
    pub client_key: Option<PathBuf>,
}

impl RedisTls {
    /// Whether any file is given.
    pub fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.client_cert.is_none() && self.client_key.is_none()
    }
}

/// The flags of [`RedisTls`], the same in both planes (flattened into
/// their command lines).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RedisTlsArgs {
    /// PEM CA certificates that sign a rediss:// server's certificate (the
    /// only roots trusted for Redis when set; unset: the platform's).
    #[arg(long, env = "REDIS_CA_FILE", value_name = "FILE")]
    pub redis_ca_file: Option<PathBuf>,

    /// PEM client certificate chain presented to a rediss:// server.
    #[arg(long, env = "REDIS_CLIENT_CERT", value_name = "FILE")]
    pub redis_client_cert: Option<PathBuf>,

    /// PEM private key of --redis-client-cert.
    #[arg(long, env = "REDIS_CLIENT_KEY", value_name = "FILE")]
    pub redis_client_key: Option<PathBuf>,
}

impl RedisTlsArgs {
    /// The files given (an empty path counts as unset).
    pub fn settings(&self) -> RedisTls {
        let given = |path: &Option<PathBuf>| path.clone().filter(|p| !p.as_os_str().is_empty());
        RedisTls {
            ca_file: given(&self.redis_ca_file),
            client_cert: given(&self.redis_client_cert),
            client_key: given(&self.redis_client_key),
        }
    }
}

/// Why a Redis client cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum RedisClientError {
    /// The URL does not parse.
    #[error("invalid REDIS_URL ({0}); expected {URL_FORMS}")]
    BadUrl(String),
    /// TLS files with a plaintext URL.
    #[error(
        "{0} is set but REDIS_URL is not rediss://: use a rediss:// URL for TLS, or unset {0}"
    )]
    NotTls(&'static str),
    /// `#insecure` asks to skip certificate verification.
    #[error("REDIS_URL asks to skip certificate verification (#insecure): not supported; give the server's CA in REDIS_CA_FILE instead")]
    Insecure,
    /// The TLS files cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// A client of the Redis at `url` (nothing is dialled yet).
pub fn open(url: &str, tls: &RedisTls) -> Result<redis::Client, RedisClientError> {
    let info = url
        .into_connection_info()
        .map_err(|e| RedisClientError::BadUrl(e.detail().unwrap_or("does not parse").into()))?;
    let ConnectionAddr::TcpTls { insecure, .. } = info.addr() else {
        if let Some(setting) = first_given(tls) {
            return Err(RedisClientError::NotTls(setting));
        }
        return redis::Client::open(info)
            .map_err(|e| RedisClientError::BadUrl(e.detail().unwrap_or("does not parse").into()));
    };
    if *insecure {
        return Err(RedisClientError::Insecure);
    }
    crate::tls::install_default_provider();
    let identity = Identity::read_pair(
        CLIENT_PAIR,
        tls.client_cert.as_deref(),
        tls.client_key.as_deref(),
    )?;
    let root_cert = match &tls.ca_file {
        Some(path) => {
            // Checked here so that a bad file is named at start.
            read_certificates(CA_FILE_VAR, path)?;
            Some(std::fs::read(path).map_err(|e| TlsError::Unreadable {
                setting: CA_FILE_VAR,
                path: path.clone(),
                reason: e.to_string(),
            })?)
        }
        None => {
            // The platform's roots are used; refuse at start when it has none.
            trust_roots(CA_FILE_VAR, None)?;
            None
        }
    };
    let certificates = redis::TlsCertificates {
        client_tls: identity.map(|identity| redis::ClientTlsConfig {
            client_cert: identity.chain_pem,
            client_key: identity.key_pem,
        }),
        root_cert,
    };
    redis::Client::build_with_tls(info, certificates)
        .map_err(|e| TlsError::Config(e.to_string()).into())
}

fn first_given(tls: &RedisTls) -> Option<&'static str> {
    [
        (&tls.ca_file, CA_FILE_VAR),
        (&tls.client_cert, CLIENT_PAIR.cert),
        (&tls.client_key, CLIENT_PAIR.key),
    ]
    .into_iter()
    .find_map(|(file, setting)| file.as_ref().map(|_| setting))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_and_tls_urls_are_told_apart() {
        assert!(open("redis://127.0.0.1:6379/0", &RedisTls::default()).is_ok());
        let with_ca = RedisTls {
            ca_file: Some(PathBuf::from("/etc/hostname")),
            ..RedisTls::default()
        };
        let err = open("redis://127.0.0.1:6379", &with_ca).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("REDIS_CA_FILE is set but REDIS_URL is not rediss://"),
            "{err}"
        );
        let err = open("rediss://127.0.0.1:6379/#insecure", &RedisTls::default()).unwrap_err();
        assert!(matches!(err, RedisClientError::Insecure), "{err}");
        let err = open("http://nope", &RedisTls::default()).unwrap_err();
        assert!(err.to_string().contains("rediss://"), "{err}");
        let missing = RedisTls {
            ca_file: Some(PathBuf::from("/nonexistent/ca.pem")),
            ..RedisTls::default()
        };
        let err = open("rediss://127.0.0.1:6380", &missing).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("REDIS_CA_FILE /nonexistent/ca.pem"),
            "{err}"
        );
        let half = RedisTls {
            client_key: Some(PathBuf::from("/etc/hostname")),
            ..RedisTls::default()
        };
        let err = open("rediss://127.0.0.1:6380", &half).unwrap_err();
        assert!(
            err.to_string()
                .contains("REDIS_CLIENT_KEY is set without REDIS_CLIENT_CERT"),
            "{err}"
        );
    }
}
