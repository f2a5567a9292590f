//! What a data plane is started with, and the seed's environment variables
//! that feed it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Default public listener.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:3000";
/// Default admin listener (`/metrics`, `/health/*`).
pub const DEFAULT_ADMIN_LISTEN: &str = "0.0.0.0:9090";
/// Default control-plane URL.
pub const DEFAULT_CONTROL_PLANE: &str = "http://127.0.0.1:50051";
/// Default time in-flight requests get to finish on shutdown.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Default time a client gets to send a request head, counted from the
/// moment the connection waits for one (so it also bounds idle keep-alive).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head (request line and headers) accepted, in bytes;
/// a larger one is answered 431 by hyper and the connection closed.
pub const MAX_REQUEST_HEAD_BYTES: usize = 32 * 1024;
/// HTTP/2 from clients (ALPN `h2`, h2c with prior knowledge): the bounds set
/// on hyper's `http2` server, the numbers of docs/security.md.
pub mod http2 {
    use std::time::Duration;

    /// Streams a client may have open at once on one connection
    /// (`SETTINGS_MAX_CONCURRENT_STREAMS`); more are refused with
    /// `RST_STREAM(REFUSED_STREAM)`.
    pub const MAX_CONCURRENT_STREAMS: u32 = 128;
    /// Largest request header list, decoded (`SETTINGS_MAX_HEADER_LIST_SIZE`),
    /// the bound HTTP/1.1 heads have. It also ends a CONTINUATION flood: the
    /// h2 crate stops decoding once a header block passes it.
    pub const MAX_HEADER_LIST_BYTES: u32 = super::MAX_REQUEST_HEAD_BYTES as u32;
    /// Request body bytes a client may send on one stream before the gateway
    /// reads them (`SETTINGS_INITIAL_WINDOW_SIZE`).
    pub const STREAM_WINDOW_BYTES: u32 = 256 * 1024;
    /// Request body bytes a client may send on the whole connection before
    /// the gateway reads them: what one connection can make it buffer.
    pub const CONNECTION_WINDOW_BYTES: u32 = 1024 * 1024;
    /// Largest frame payload accepted (`SETTINGS_MAX_FRAME_SIZE`, the
    /// protocol's minimum).
    pub const MAX_FRAME_BYTES: u32 = 16 * 1024;
    /// Streams a client may open and reset before the gateway has accepted
    /// them (rapid reset, CVE-2023-44487); one more and the connection gets
    /// `GOAWAY(ENHANCE_YOUR_CALM)`.
    pub const MAX_PENDING_ACCEPT_RESETS: usize = 20;
    /// Streams the gateway may reset for a client's protocol errors on one
    /// connection before it sends `GOAWAY(ENHANCE_YOUR_CALM)`.
    pub const MAX_LOCAL_ERROR_RESETS: usize = 256;
    /// Pause after which an idle connection is pinged.
    pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
    /// Time a ping's answer may take before the connection is closed.
    pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);
    /// Response bytes buffered per stream before the gateway waits for the
    /// client's window (hyper's `max_send_buf_size`).
    pub const MAX_SEND_BUFFER_BYTES: usize = 256 * 1024;
}

/// Shortest `JWT_SECRET` accepted, in bytes.
pub const MIN_JWT_SECRET_BYTES: usize = 32;

/// The seed's `*_SERVICE_URL` variables and the services they address.
pub const SERVICE_URL_VARS: [(&str, &str); 19] = [
    ("AUTH_SERVICE_URL", "auth"),
    ("VENUE_SERVICE_URL", "venue"),
    ("EVENT_SERVICE_URL", "event"),
    ("TICKET_SERVICE_URL", "ticket"),
    ("PAYMENT_SERVICE_URL", "payment"),
    ("MARKETPLACE_SERVICE_URL", "marketplace"),
    ("ANALYTICS_SERVICE_URL", "analytics"),
    ("NOTIFICATION_SERVICE_URL", "notification"),
    ("INTEGRATION_SERVICE_URL", "integration"),
    ("COMPLIANCE_SERVICE_URL", "compliance"),
    ("QUEUE_SERVICE_URL", "queue"),
    ("SEARCH_SERVICE_URL", "search"),
    ("FILE_SERVICE_URL", "file"),
    ("MONITORING_SERVICE_URL", "monitoring"),
    ("BLOCKCHAIN_SERVICE_URL", "blockchain"),
    ("ORDER_SERVICE_URL", "order"),
    ("SCANNING_SERVICE_URL", "scanning"),
    ("MINTING_SERVICE_URL", "minting"),
    ("TRANSFER_SERVICE_URL", "transfer"),
];

/// Everything a [`crate::DataPlane`] needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Public listener; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Admin listener; port 0 picks a free port.
    pub admin_listen: SocketAddr,
    /// Control-plane URL (ignored in standalone mode).
    pub control_plane: String,
    /// Standalone mode: the declarative config file; no control plane.
    pub config_file: Option<PathBuf>,
    /// Identity shown in the topology.
    pub node_id: String,
    /// Bearer token sent on the Discovery stream.
    pub dataplane_token: Option<String>,
    /// TLS to an `https://` control plane (trusted roots, client
    /// certificate); `None` with an `https://` URL: the platform's roots.
    pub control_plane_tls: Option<gateway_common::grpc_tls::ClientTls>,
    /// Time in-flight requests get to finish on shutdown.
    pub shutdown_grace: Duration,
    /// Time a client gets to send a request head (slow-client protection).
    pub header_read_timeout: Duration,
    /// Seed `*_SERVICE_URL` overrides as (service, url); standalone mode only.
    pub service_urls: Vec<(String, String)>,
    /// Access-token verification (`JWT_*`); `None`: routes that require a
    /// token answer 401 to every request.
    pub jwt: Option<crate::policy::auth::JwtSettings>,
    /// Public keys of asymmetric access tokens (`JWT_JWKS_URL`), fetched
    /// and refreshed in the background; may be set with `jwt` (each
    /// algorithm has one key source).
    pub jwks: Option<crate::policy::auth::jwks::JwksSettings>,
    /// Peers whose `X-Forwarded-For` is believed (`GW_TRUSTED_PROXIES`).
    pub trusted_proxies: crate::edge::forwarded::TrustedProxies,
    /// Redis shared by the data planes (rate limits, response cache);
    /// `None`: every data plane keeps its own.
    pub redis_url: Option<String>,
    /// TLS files of a `rediss://` URL (`REDIS_CA_FILE`, `REDIS_CLIENT_*`).
    pub redis_tls: gateway_common::redis_client::RedisTls,
    /// Prefix of the keys the data plane writes in Redis.
    pub redis_key_prefix: String,
    /// Bound on one Redis call of the request path.
    pub redis_timeout: Duration,
    /// Rate limiting (`ENABLE_RATE_LIMITING`, `RATE_LIMIT_*`, `IP_SALT`).
    pub rate_limit: crate::policy::ratelimit::RateLimitSettings,
    /// The refresh and logout endpoints (`JWT_REFRESH_SECRET` and
    /// friends); `None`: not served (their paths route as any other).
    pub session: Option<crate::policy::auth::session::SessionSettings>,
    /// One access-log line per request (`GW_ACCESS_LOG`).
    pub access_log: bool,
    /// Directory of the config cache (`GW_CONFIG_CACHE`); `None`: no cache.
    /// Not used in standalone mode.
    pub config_cache: Option<PathBuf>,
    /// Time a starting data plane serving its cached config waits for a
    /// control plane before it reports ready (`GW_CONFIG_CACHE_GRACE`).
    pub config_cache_grace: Duration,
    /// The HTTPS listener (`GW_TLS_*`); `None`: plain HTTP only.
    pub tls: Option<crate::edge::tls::TlsSettings>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 3000)),
            admin_listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
            control_plane: DEFAULT_CONTROL_PLANE.to_string(),
            config_file: None,
            node_id: default_node_id(),
            dataplane_token: None,
            control_plane_tls: None,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            service_urls: Vec::new(),
            jwt: None,
            jwks: None,
            trusted_proxies: Default::default(),
            redis_url: None,
            redis_tls: Default::default(),
            redis_key_prefix: crate::shared_state::DEFAULT_KEY_PREFIX.to_string(),
            redis_timeout: crate::shared_state::DEFAULT_REDIS_TIMEOUT,
            rate_limit: crate::policy::ratelimit::RateLimitSettings::default(),
            session: None,
            access_log: true,
            config_cache: None,
            config_cache_grace: crate::config::cache::DEFAULT_GRACE,
            tls: None,
        }
    }
}

/// `hostname-pid`, the default node id.
pub fn default_node_id() -> String {
    gateway_common::process::hostname_pid("data-plane")
}

/// The seed's `*_SERVICE_URL` variables that `lookup` finds set (non-empty),
/// as (service, url) pairs in the seed's order.
pub fn service_urls_from(lookup: impl Fn(&str) -> Option<String>) -> Vec<(String, String)> {
    SERVICE_URL_VARS
        .iter()
        .filter_map(|(var, service)| {
            let url = lookup(var)?;
            let url = url.trim();
            (!url.is_empty()).then(|| (service.to_string(), url.to_string()))
        })
        .collect()
}

/// The seed's `*_SERVICE_URL` variables set in the process environment.
pub fn service_urls_from_env() -> Vec<(String, String)> {
    service_urls_from(|var| std::env::var(var).ok())
}

/// Why a setting was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    /// `JWT_SECRET` is set but too short to be safe.
    #[error(
        "JWT_SECRET is {0} bytes long; it must be at least {MIN_JWT_SECRET_BYTES} bytes (256 bits)"
    )]
    WeakJwtSecret(usize),
    /// `JWT_ALGORITHM` names an algorithm the gateway does not verify.
    #[error("{0}")]
    BadJwtAlgorithm(String),
    /// `JWT_JWKS_URL` is not a usable URL.
    #[error("{0}")]
    BadJwksUrl(String),
    /// `GW_TRUSTED_PROXIES` is not a list of address ranges.
    #[error("GW_TRUSTED_PROXIES: {0}")]
    BadTrustedProxies(String),
    /// A listen address could not be read.
    #[error("{0:?} is neither an address (HOST:PORT) nor a port number")]
    BadListenAddress(String),
    /// `JWT_REFRESH_SECRET` is set but cannot be used.
    #[error("{0}")]
    BadRefreshSettings(String),
    /// The HTTPS listener's flags do not go together.
    #[error("{0}")]
    BadTls(String),
    /// The TLS settings to the control plane or Redis cannot be used.
    #[error("{0}")]
    ClusterTls(String),
}

/// Refuses a `JWT_SECRET` shorter than [`MIN_JWT_SECRET_BYTES`]; unset is fine.
pub fn check_jwt_secret(secret: Option<&str>) -> Result<(), SettingsError> {
    match secret {
        Some(s) if s.len() < MIN_JWT_SECRET_BYTES => Err(SettingsError::WeakJwtSecret(s.len())),
        _ => Ok(()),
    }
}

/// Checks the refresh settings: a secret of at least
/// [`MIN_JWT_SECRET_BYTES`] that is not `JWT_SECRET` (which must be set, to
/// sign the access tokens), endpoint paths that are plain absolute paths,
/// and non-zero lifetimes.
pub fn check_session(
    session: &crate::policy::auth::session::SessionSettings,
    jwt_secret: Option<&str>,
) -> Result<(), SettingsError> {
    let bad = |m: String| Err(SettingsError::BadRefreshSettings(m));
    let secret = &session.refresh_secret;
    if secret.len() < MIN_JWT_SECRET_BYTES {
        return bad(format!("JWT_REFRESH_SECRET is {} bytes long; it must be at least {MIN_JWT_SECRET_BYTES} bytes (256 bits)", secret.len()));
    }
    match jwt_secret {
        None => {
            return bad(
                "JWT_REFRESH_SECRET needs JWT_SECRET (to sign the access tokens it issues)".into(),
            )
        }
        Some(access) if access == secret => {
            return bad("JWT_REFRESH_SECRET must differ from JWT_SECRET".into())
        }
        Some(_) => {}
    }
    if session.access_ttl.is_zero() || session.refresh_ttl.is_zero() {
        return bad("JWT_EXPIRES_IN and JWT_REFRESH_EXPIRES_IN must be longer than zero".into());
    }
    for (var, path) in [
        ("GW_AUTH_REFRESH_PATH", &session.refresh_path),
        ("GW_AUTH_LOGOUT_PATH", &session.logout_path),
    ] {
        if let Err(e) = gateway_common::config::check_public_path(path) {
            return bad(format!("{var} {path:?} {e}"));
        }
        if path.contains('*') || path.ends_with('/') {
            return bad(format!("{var} {path:?} must be one exact path"));
        }
    }
    if session.refresh_path == session.logout_path {
        return bad("GW_AUTH_REFRESH_PATH and GW_AUTH_LOGOUT_PATH must differ".into());
    }
    Ok(())
}

/// The HTTPS listener's settings from its flags: `None` without
/// `listen`; certificates and keys paired in order, as many of each, and
/// none of them without a listener.
pub fn tls_settings(
    listen: Option<SocketAddr>,
    certs: &[PathBuf],
    keys: &[PathBuf],
    client_ca: Option<PathBuf>,
    handshake_timeout: Duration,
    reload_interval: Duration,
) -> Result<Option<crate::edge::tls::TlsSettings>, SettingsError> {
    let bad = |m: &str| Err(SettingsError::BadTls(m.to_string()));
    let given = |paths: &[PathBuf]| paths.iter().any(|p| !p.as_os_str().is_empty());
    let Some(listen) = listen else {
        if given(certs) || given(keys) || client_ca.is_some() {
            return bad(
                "GW_TLS_CERT, GW_TLS_KEY and GW_TLS_CLIENT_CA need GW_TLS_LISTEN (--tls-listen)",
            );
        }
        return Ok(None);
    };
    if certs.is_empty() || keys.is_empty() {
        return bad("GW_TLS_LISTEN needs a certificate and its key: set GW_TLS_CERT and GW_TLS_KEY (--tls-cert, --tls-key)");
    }
    if certs.len() != keys.len() {
        return Err(SettingsError::BadTls(format!(
            "GW_TLS_CERT names {} certificate file(s) and GW_TLS_KEY {} key file(s); give one key per certificate, in the same order",
            certs.len(),
            keys.len()
        )));
    }
    if certs.iter().chain(keys).any(|p| p.as_os_str().is_empty()) {
        return bad("GW_TLS_CERT and GW_TLS_KEY hold an empty file name");
    }
    if handshake_timeout.is_zero() || reload_interval.is_zero() {
        return bad("GW_TLS_HANDSHAKE_TIMEOUT and GW_TLS_RELOAD_INTERVAL must be longer than zero");
    }
    Ok(Some(crate::edge::tls::TlsSettings {
        listen,
        certs: certs
            .iter()
            .zip(keys)
            .map(|(cert, key)| crate::edge::tls::CertPaths {
                cert: cert.clone(),
                key: key.clone(),
            })
            .collect(),
        client_ca,
        handshake_timeout,
        reload_interval,
    }))
}

/// The config cache directory of `--config-cache`: `off` or an empty
/// value means none.
pub fn config_cache_dir(value: &str) -> Option<PathBuf> {
    match value.trim() {
        "" | "off" => None,
        dir => Some(PathBuf::from(dir)),
    }
}

/// Reads `HOST:PORT`, or a bare port number meaning `0.0.0.0:PORT`.
pub fn parse_listen(text: &str) -> Result<SocketAddr, SettingsError> {
    let text = text.trim();
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    text.parse()
        .map_err(|_| SettingsError::BadListenAddress(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_urls_follow_the_seed_names() {
        let urls = service_urls_from(|var| match var {
            "AUTH_SERVICE_URL" => Some("http://10.0.0.1:3001".into()),
            "TRANSFER_SERVICE_URL" => Some(" http://t:3019 ".into()),
            "EVENT_SERVICE_URL" => Some("".into()),
            _ => None,
        });
        assert_eq!(
            urls,
            vec![
                ("auth".to_string(), "http://10.0.0.1:3001".to_string()),
                ("transfer".to_string(), "http://t:3019".to_string())
            ]
        );
    }

    #[test]
    fn jwt_secret_length_is_checked() {
        assert!(check_jwt_secret(None).is_ok());
        assert!(check_jwt_secret(Some(&"x".repeat(32))).is_ok());
        assert_eq!(
            check_jwt_secret(Some("short")),
            Err(SettingsError::WeakJwtSecret(5))
        );
    }

    #[test]
    fn listen_accepts_addresses_and_bare_ports() {
        assert_eq!(
            parse_listen("8080").unwrap(),
            "0.0.0.0:8080".parse().unwrap()
        );
        assert_eq!(
            parse_listen("127.0.0.1:1").unwrap(),
            "127.0.0.1:1".parse().unwrap()
        );
        assert!(parse_listen("localhost").is_err());
    }

    #[test]
    fn config_cache_can_be_off() {
        assert_eq!(config_cache_dir("off"), None);
        assert_eq!(config_cache_dir(" "), None);
        assert_eq!(config_cache_dir("/tmp/x"), Some(PathBuf::from("/tmp/x")));
    }

    #[test]
    fn node_id_names_host_and_pid() {
        assert!(default_node_id().ends_with(&format!("-{}", std::process::id())));
    }
}
