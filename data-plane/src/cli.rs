//! Command line and environment of the `data-plane` binary, and its logging.

use crate::settings::{self, parse_listen, Settings, SettingsError};
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use gateway_common::process::LogFormat;

/// The gateway's data plane: proxies HTTP traffic to backend instances with
/// routing config streamed from the control plane (or read from a file).
#[derive(Debug, Parser)]
#[command(name = "data-plane", version, about, long_about = None)]
pub struct Cli {
    /// Public listener, HOST:PORT (or a bare port). Overrides PORT.
    #[arg(long, env = "GW_LISTEN", value_name = "ADDR", value_parser = parse_listen_arg)]
    pub listen: Option<SocketAddr>,

    /// Public port on 0.0.0.0, used when --listen/GW_LISTEN is not given [default: 3000].
    #[arg(long, env = "PORT", value_name = "PORT")]
    pub port: Option<u16>,

    /// Admin listener for /health/live, /health/ready and /metrics.
    #[arg(long, env = "GW_ADMIN_LISTEN", value_name = "ADDR", default_value = settings::DEFAULT_ADMIN_LISTEN, value_parser = parse_listen_arg)]
    pub admin_listen: SocketAddr,

    /// Control-plane URL to stream config from (ignored with --config).
    #[arg(long, env = "CONTROL_PLANE_URL", value_name = "URL", default_value = settings::DEFAULT_CONTROL_PLANE, value_parser = parse_control_plane)]
    pub control_plane: String,

    /// Standalone mode: read the declarative config (YAML or JSON) from FILE;
    /// no control plane. SIGHUP reloads it.
    #[arg(long, env = "GW_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Identity shown in the topology [default: HOSTNAME-PID].
    #[arg(long, env = "GW_NODE_ID", value_name = "ID")]
    pub node_id: Option<String>,

    /// Bearer token for the Discovery stream, when the control plane requires one.
    #[arg(
        long,
        env = "GW_DATAPLANE_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub dataplane_token: Option<String>,

    /// TLS to an https:// control plane and to a rediss:// Redis.
    #[command(flatten)]
    pub cluster_tls: crate::cluster_tls::ClusterTlsArgs,

    /// Time in-flight requests get to finish on SIGTERM/SIGINT (e.g. 30s, 500ms).
    #[arg(long, env = "GW_SHUTDOWN_GRACE", value_name = "DURATION", default_value = "30s", value_parser = gateway_common::duration::parse)]
    pub shutdown_grace: Duration,

    /// Time a client gets to send a whole request head once the connection
    /// waits for one (also closes idle keep-alive connections).
    #[arg(long, env = "GW_HEADER_READ_TIMEOUT", value_name = "DURATION", default_value = "30s", value_parser = gateway_common::duration::parse)]
    pub header_read_timeout: Duration,

    /// HTTPS listener, HOST:PORT (or a bare port), beside the plain one;
    /// unset: no HTTPS. Needs --tls-cert and --tls-key.
    #[arg(long, env = "GW_TLS_LISTEN", value_name = "ADDR", value_parser = parse_listen_arg)]
    pub tls_listen: Option<SocketAddr>,

    /// Certificate chains (PEM, end-entity first) of the HTTPS listener,
    /// comma-separated; chosen by SNI, the first one by default.
    #[arg(long, env = "GW_TLS_CERT", value_name = "FILES", value_delimiter = ',')]
    pub tls_cert: Vec<PathBuf>,

    /// Private keys (PEM) of those certificates, comma-separated, in the
    /// same order.
    #[arg(long, env = "GW_TLS_KEY", value_name = "FILES", value_delimiter = ',')]
    pub tls_key: Vec<PathBuf>,

    /// CA certificates (PEM) that client certificates are verified
    /// against; the HTTPS listener then asks for (without requiring) one.
    #[arg(long, env = "GW_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,

    /// Time a client gets to complete its TLS handshake.
    #[arg(long, env = "GW_TLS_HANDSHAKE_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = gateway_common::duration::parse)]
    pub tls_handshake_timeout: Duration,

    /// How often the certificate and key files are read again (a change is
    /// served from the next handshake on; SIGHUP reads them at once).
    #[arg(long, env = "GW_TLS_RELOAD_INTERVAL", value_name = "DURATION", default_value = "5s", value_parser = gateway_common::duration::parse)]
    pub tls_reload_interval: Duration,

    /// JWT signing secret; refused when shorter than 32 bytes.
    #[arg(
        long,
        env = "JWT_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,

    /// Algorithm access tokens must be signed with (HS256, HS384 or HS512).
    #[arg(
        long,
        env = "JWT_ALGORITHM",
        value_name = "ALG",
        default_value = "HS256"
    )]
    pub jwt_algorithm: String,

    /// Required `iss` claim of access tokens (unset: not checked).
    #[arg(long, env = "JWT_ISSUER", value_name = "ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim of access tokens (unset: not checked).
    #[arg(long, env = "JWT_AUDIENCE", value_name = "AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Secret of refresh tokens (at least 32 bytes, not JWT_SECRET); set, the
    /// gateway answers the refresh and logout endpoints itself (needs Redis).
    #[arg(
        long,
        env = "JWT_REFRESH_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub jwt_refresh_secret: Option<String>,

    /// Lifetime of the access tokens the refresh endpoint issues.
    #[arg(long, env = "JWT_EXPIRES_IN", value_name = "DURATION", default_value = "15m", value_parser = gateway_common::duration::parse)]
    pub jwt_expires_in: Duration,

    /// Lifetime of the refresh tokens the refresh endpoint issues.
    #[arg(long, env = "JWT_REFRESH_EXPIRES_IN", value_name = "DURATION", default_value = "7d", value_parser = gateway_common::duration::parse)]
    pub jwt_refresh_expires_in: Duration,

    /// Path of the refresh endpoint (POST), answered before routing.
    #[arg(long, env = "GW_AUTH_REFRESH_PATH", value_name = "PATH", default_value = crate::policy::auth::session::DEFAULT_REFRESH_PATH)]
    pub auth_refresh_path: String,

    /// Path of the logout endpoint (POST), answered before routing.
    #[arg(long, env = "GW_AUTH_LOGOUT_PATH", value_name = "PATH", default_value = crate::policy::auth::session::DEFAULT_LOGOUT_PATH)]
    pub auth_logout_path: String,

    /// JWKS URL (http or https) of the public keys of RS*/PS*/ES256/ES384
    /// access tokens; may be set together with JWT_SECRET.
    #[arg(long, env = "JWT_JWKS_URL", value_name = "URL")]
    pub jwt_jwks_url: Option<String>,

    /// PEM file of CA certificates trusted for an https JWKS URL, besides
    /// the platform's own (SSL_CERT_FILE / SSL_CERT_DIR / system store).
    #[arg(long, env = "JWT_JWKS_CA_FILE", value_name = "FILE")]
    pub jwt_jwks_ca_file: Option<std::path::PathBuf>,

    /// Period between two fetches of the JWKS (shortened by the answer's
    /// Cache-Control max-age).
    #[arg(long, env = "JWT_JWKS_REFRESH", value_name = "DURATION", default_value = "5m", value_parser = gateway_common::duration::parse)]
    pub jwt_jwks_refresh: Duration,

    /// Shortest period between two fetches of the JWKS: retry delay after
    /// a failure and rate limit of fetches caused by unknown `kid`s.
    #[arg(long, env = "JWT_JWKS_MIN_REFRESH", value_name = "DURATION", default_value = "30s", value_parser = gateway_common::duration::parse)]
    pub jwt_jwks_min_refresh: Duration,

    /// Address ranges (CIDR, comma-separated) of proxies in front of the
    /// gateway whose X-Forwarded-For is believed; empty: nobody's.
    #[arg(
        long,
        env = "GW_TRUSTED_PROXIES",
        value_name = "CIDRS",
        default_value = ""
    )]
    pub trusted_proxies: String,

    /// Worker threads of the async runtime [default: number of usable CPUs].
    #[arg(long, env = "GW_WORKER_THREADS", value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: Option<u16>,

    /// Redis shared by the data planes for rate-limit counters and the
    /// response cache; unset: each data plane keeps its own. The data plane
    /// starts and serves without it either way.
    #[arg(long, env = "REDIS_URL", value_name = "URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Prefix of every key the data plane writes in Redis.
    #[arg(long, env = "GW_KEY_PREFIX", value_name = "PREFIX", default_value = crate::shared_state::DEFAULT_KEY_PREFIX)]
    pub redis_key_prefix: String,

    /// Bound on one Redis call on the request path; past it the request
    /// goes on with the local fallback.
    #[arg(long, env = "GW_REDIS_TIMEOUT", value_name = "DURATION", default_value = "250ms", value_parser = gateway_common::duration::parse)]
    pub redis_timeout: Duration,

    /// Rate limiting: false turns every limit off; true also limits routes
    /// without a `rate_limit` policy (RATE_LIMIT_MAX_REQUESTS per
    /// RATE_LIMIT_WINDOW_MS per client); unset: only route policies apply.
    #[arg(long, env = "ENABLE_RATE_LIMITING", value_name = "BOOL", value_parser = clap::builder::BoolishValueParser::new())]
    pub enable_rate_limiting: Option<bool>,

    /// Window of the global default rate limit, in milliseconds (1000 to 86400000).
    #[arg(long, env = "RATE_LIMIT_WINDOW_MS", value_name = "MS", default_value = "60000", value_parser = clap::value_parser!(u64).range(1_000..=86_400_000))]
    pub rate_limit_window_ms: u64,

    /// Requests per window of the global default rate limit (1 to 1000000).
    #[arg(long, env = "RATE_LIMIT_MAX_REQUESTS", value_name = "N", default_value = "100", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate_limit_max_requests: u32,

    /// Key of the HMAC that turns client IPs into rate-limit keys; the same
    /// on every data plane so that IP-keyed limits are shared (unset: a
    /// random key per process, with a warning).
    #[arg(long, env = "IP_SALT", value_name = "SALT", hide_env_values = true)]
    pub ip_salt: Option<String>,

    /// One access-log line per request (tracing target `access`, level
    /// info): method, path, route, service, instance, status, latency,
    /// request id, tenant.
    #[arg(long, env = "GW_ACCESS_LOG", value_name = "BOOL", default_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub access_log: bool,

    /// Directory where the last config from the control plane is kept and
    /// read at start, so that a restart while no control plane answers still
    /// serves; `off` (or empty): no cache. Not used with --config.
    #[arg(long, env = "GW_CONFIG_CACHE", value_name = "DIR", default_value = crate::config::cache::DEFAULT_DIR)]
    pub config_cache: String,

    /// Time a starting data plane with a cached config waits for a control
    /// plane before it reports ready serving the cached config.
    #[arg(long, env = "GW_CONFIG_CACHE_GRACE", value_name = "DURATION", default_value = "2s", value_parser = gateway_common::duration::parse)]
    pub config_cache_grace: Duration,

    /// Log level or filter (error, warn, info, debug, trace, or a tracing filter).
    #[arg(long, env = "LOG_LEVEL", value_name = "LEVEL", default_value = "info")]
    pub log_level: String,

    /// Log format.
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_name = "FORMAT",
        default_value = "json",
        ignore_case = true
    )]
    pub log_format: LogFormat,
}

fn parse_listen_arg(text: &str) -> Result<SocketAddr, String> {
    parse_listen(text).map_err(|e| e.to_string())
}

fn parse_control_plane(text: &str) -> Result<String, String> {
    let uri: http::Uri = text
        .parse()
        .map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(text.to_string()),
        _ => Err(format!(
            "{text:?} must be http://HOST:PORT or https://HOST:PORT"
        )),
    }
}

/// The TLS settings of the JWKS URL `url`: made for `https` (trusting the
/// platform's roots and `ca_file`), none for `http`, where a `ca_file` is a
/// mistake worth refusing.
fn jwks_tls(
    url: &http::Uri,
    ca_file: Option<&std::path::Path>,
) -> Result<Option<crate::policy::auth::jwks::JwksTls>, SettingsError> {
    if url.scheme_str() == Some("https") {
        return crate::policy::auth::jwks::JwksTls::new(ca_file)
            .map(Some)
            .map_err(SettingsError::BadJwksUrl);
    }
    match ca_file {
        Some(_) => Err(SettingsError::BadJwksUrl(
            "JWT_JWKS_CA_FILE is set but JWT_JWKS_URL is not https".into(),
        )),
        None => Ok(None),
    }
}

impl Cli {
    /// Checks what clap cannot (JWT secret strength) and builds the settings;
    /// `service_urls` are the seed `*_SERVICE_URL` overrides.
    pub fn into_settings(
        self,
        service_urls: Vec<(String, String)>,
    ) -> Result<Settings, SettingsError> {
        settings::check_jwt_secret(self.jwt_secret.as_deref())?;
        let algorithm = crate::policy::auth::parse_algorithm(&self.jwt_algorithm)
            .map_err(SettingsError::BadJwtAlgorithm)?;
        let non_empty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        let issuer = non_empty(self.jwt_issuer);
        let audience = non_empty(self.jwt_audience);
        let ca_file = self.jwt_jwks_ca_file.filter(|p| !p.as_os_str().is_empty());
        let jwks = match non_empty(self.jwt_jwks_url) {
            Some(url) => {
                let url = crate::policy::auth::jwks::parse_url(&url)
                    .map_err(SettingsError::BadJwksUrl)?;
                Some(crate::policy::auth::jwks::JwksSettings {
                    tls: jwks_tls(&url, ca_file.as_deref())?,
                    url,
                    refresh: self.jwt_jwks_refresh.max(self.jwt_jwks_min_refresh),
                    min_refresh: self.jwt_jwks_min_refresh,
                    issuer: issuer.clone(),
                    audience: audience.clone(),
                })
            }
            None if ca_file.is_some() => {
                return Err(SettingsError::BadJwksUrl(
                    "JWT_JWKS_CA_FILE is set but JWT_JWKS_URL is not".into(),
                ))
            }
            None => None,
        };
        let trusted_proxies =
            self.trusted_proxies
                .parse()
                .map_err(|e: crate::edge::forwarded::BadCidr| {
                    SettingsError::BadTrustedProxies(e.to_string())
                })?;
        let jwt = non_empty(self.jwt_secret).map(|secret| crate::policy::auth::JwtSettings {
            secret,
            algorithm,
            issuer,
            audience,
        });
        let session = non_empty(self.jwt_refresh_secret).map(|refresh_secret| {
            crate::policy::auth::session::SessionSettings {
                refresh_secret,
                access_ttl: self.jwt_expires_in,
                refresh_ttl: self.jwt_refresh_expires_in,
                refresh_path: self.auth_refresh_path,
                logout_path: self.auth_logout_path,
            }
        });
        if let Some(session) = &session {
            settings::check_session(session, jwt.as_ref().map(|j| j.secret.as_str()))?;
        }
        let tls = settings::tls_settings(
            self.tls_listen,
            &self.tls_cert,
            &self.tls_key,
            self.tls_client_ca.filter(|p| !p.as_os_str().is_empty()),
            self.tls_handshake_timeout,
            self.tls_reload_interval,
        )?;
        let listen = match (self.listen, self.port) {
            (Some(addr), _) => addr,
            (None, Some(port)) => SocketAddr::from(([0, 0, 0, 0], port)),
            (None, None) => parse_listen(settings::DEFAULT_LISTEN)?,
        };
        let control_plane_tls = match &self.config {
            Some(_) => None,
            None => self.cluster_tls.control_plane(&self.control_plane)?,
        };
        Ok(Settings {
            listen,
            admin_listen: self.admin_listen,
            control_plane: self.control_plane,
            control_plane_tls,
            config_file: self.config,
            node_id: self
                .node_id
                .filter(|id| !id.trim().is_empty())
                .unwrap_or_else(settings::default_node_id),
            dataplane_token: self.dataplane_token.filter(|t| !t.is_empty()),
            shutdown_grace: self.shutdown_grace,
            header_read_timeout: self.header_read_timeout,
            service_urls,
            jwt,
            jwks,
            trusted_proxies,
            redis_url: non_empty(self.redis_url),
            redis_tls: self.cluster_tls.redis(),
            redis_key_prefix: self.redis_key_prefix,
            redis_timeout: self.redis_timeout,
            rate_limit: crate::policy::ratelimit::RateLimitSettings {
                enabled: self.enable_rate_limiting,
                default_requests: self.rate_limit_max_requests,
                default_window: Duration::from_millis(self.rate_limit_window_ms),
                ip_salt: non_empty(self.ip_salt),
            },
            session,
            access_log: self.access_log,
            config_cache: settings::config_cache_dir(&self.config_cache),
            config_cache_grace: self.config_cache_grace,
            tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("data-plane").chain(args.iter().copied()))
    }

    #[test]
    fn listen_precedence() {
        let s = parse(&["--port", "8081"])
            .unwrap()
            .into_settings(vec![])
            .unwrap();
        assert_eq!(s.listen, "0.0.0.0:8081".parse().unwrap());
        let s = parse(&["--port", "8081", "--listen", "127.0.0.1:9"])
            .unwrap()
            .into_settings(vec![])
            .unwrap();
        assert_eq!(s.listen, "127.0.0.1:9".parse().unwrap());
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse(&["--listen", "nowhere"]).is_err());
        assert!(parse(&["--control-plane", "ftp://x"]).is_err());
        assert!(parse(&["--shutdown-grace", "soon"]).is_err());
        let weak = parse(&["--jwt-secret", "short"]).unwrap();
        assert!(weak.into_settings(vec![]).is_err());
        let secret = "s".repeat(32);
        let rsa = parse(&["--jwt-secret", &secret, "--jwt-algorithm", "RS256"]).unwrap();
        assert!(rsa.into_settings(vec![]).is_err());
        let none = parse(&["--jwt-secret", &secret, "--jwt-algorithm", "none"]).unwrap();
        assert!(none.into_settings(vec![]).is_err());
    }

    #[test]
    fn jwt_settings_are_built() {
        let secret = "s".repeat(32);
        let s = parse(&["--jwt-secret", &secret, "--jwt-issuer", "tickettoken"])
            .unwrap()
            .into_settings(vec![])
            .unwrap();
        let jwt = s.jwt.unwrap();
        assert_eq!(jwt.issuer.as_deref(), Some("tickettoken"));
        assert_eq!(jwt.audience, None);
        assert_eq!(jwt.algorithm, jsonwebtoken::Algorithm::HS256);
        assert!(!format!("{jwt:?}").contains(&secret));
    }

    #[test]
    fn jwks_and_trusted_proxies_are_read_and_checked() {
        let s = parse(&[
            "--jwt-jwks-url",
            "http://idp:8080/jwks",
            "--jwt-issuer",
            "idp",
            "--jwt-jwks-min-refresh",
            "10s",
            "--trusted-proxies",
            "10.0.0.0/8, 127.0.0.1",
        ])
        .unwrap()
        .into_settings(vec![])
        .unwrap();
        assert!(s.jwt.is_none());
        let jwks = s.jwks.unwrap();
        assert_eq!(jwks.url, "http://idp:8080/jwks");
        assert_eq!(jwks.issuer.as_deref(), Some("idp"));
        assert_eq!(jwks.refresh, Duration::from_secs(300));
        assert_eq!(jwks.min_refresh, Duration::from_secs(10));
        assert!(s.trusted_proxies.trusts("10.1.2.3".parse().unwrap()));
        assert!(!s.trusted_proxies.trusts("127.0.0.2".parse().unwrap()));
        let defaults = parse(&[]).unwrap().into_settings(vec![]).unwrap();
        assert!(defaults.jwks.is_none());
        assert!(defaults.trusted_proxies.is_empty());
        let https = parse(&["--jwt-jwks-url", "https://idp/jwks"])
            .unwrap()
            .into_settings(vec![]);
        // Without any trusted root (a bare container), https is refused at
        // start rather than failing every fetch.
        match https {
            Ok(s) => assert!(s.jwks.unwrap().tls.is_some()),
            Err(e) => assert!(e.to_string().contains("JWT_JWKS_CA_FILE"), "{e}"),
        }
        for bad in [
            &["--jwt-jwks-url", "idp/jwks"][..],
            &[
                "--jwt-jwks-url",
                "https://idp/jwks",
                "--jwt-jwks-ca-file",
                "/nonexistent/ca.pem",
            ],
            &[
                "--jwt-jwks-url",
                "http://idp/jwks",
                "--jwt-jwks-ca-file",
                "/etc/hostname",
            ],
            &["--jwt-jwks-ca-file", "/etc/hostname"],
            &["--trusted-proxies", "10.0.0.0/33"],
            &["--trusted-proxies", "everyone"],
        ] {
            let refused = parse(bad).unwrap().into_settings(vec![]);
            assert!(refused.is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn rate_limit_variables_are_read_and_checked() {
        let s = parse(&[]).unwrap().into_settings(vec![]).unwrap();
        assert_eq!(s.rate_limit.enabled, None);
        assert_eq!(s.rate_limit.default_requests, 100);
        assert_eq!(s.rate_limit.default_window, Duration::from_secs(60));
        let s = parse(&[
            "--enable-rate-limiting",
            "true",
            "--rate-limit-window-ms",
            "1000",
            "--rate-limit-max-requests",
            "5",
            "--ip-salt",
            "pepper",
        ])
        .unwrap()
        .into_settings(vec![])
        .unwrap();
        assert_eq!(s.rate_limit.enabled, Some(true));
        assert_eq!(s.rate_limit.default_requests, 5);
        assert_eq!(s.rate_limit.default_window, Duration::from_secs(1));
        assert!(!format!("{:?}", s.rate_limit).contains("pepper"));
        let off = parse(&["--enable-rate-limiting", "false"]).unwrap();
        assert_eq!(off.enable_rate_limiting, Some(false));
        for bad in [
            ["--rate-limit-window-ms", "999"],
            ["--rate-limit-window-ms", "86400001"],
            ["--rate-limit-max-requests", "0"],
            ["--enable-rate-limiting", "maybe"],
        ] {
            assert!(parse(&bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn refresh_settings_are_read_and_checked() {
        let access = "a".repeat(32);
        let refresh = "r".repeat(32);
        let s = parse(&["--jwt-secret", &access, "--jwt-refresh-secret", &refresh])
            .unwrap()
            .into_settings(vec![])
            .unwrap();
        let session = s.session.unwrap();
        assert_eq!(session.access_ttl, Duration::from_secs(900));
        assert_eq!(session.refresh_ttl, Duration::from_secs(7 * 86_400));
        assert_eq!(session.refresh_path, "/auth/refresh");
        assert_eq!(session.logout_path, "/auth/logout");
        assert!(!format!("{session:?}").contains(&refresh));
        assert!(parse(&[])
            .unwrap()
            .into_settings(vec![])
            .unwrap()
            .session
            .is_none());
        for bad in [
            vec!["--jwt-secret", &access, "--jwt-refresh-secret", "short"],
            vec!["--jwt-refresh-secret", &refresh],
            vec!["--jwt-secret", &access, "--jwt-refresh-secret", &access],
            vec![
                "--jwt-secret",
                &access,
                "--jwt-refresh-secret",
                &refresh,
                "--auth-refresh-path",
                "auth/x",
            ],
            vec![
                "--jwt-secret",
                &access,
                "--jwt-refresh-secret",
                &refresh,
                "--auth-logout-path",
                "/auth/refresh",
            ],
            vec![
                "--jwt-secret",
                &access,
                "--jwt-refresh-secret",
                &refresh,
                "--jwt-expires-in",
                "0s",
            ],
        ] {
            let result = parse(&bad).unwrap().into_settings(vec![]);
            assert!(result.is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn config_cache_flags() {
        let s = parse(&[]).unwrap().into_settings(vec![]).unwrap();
        assert_eq!(
            s.config_cache.as_deref(),
            Some(std::path::Path::new("/var/lib/gateway/data-plane"))
        );
        assert_eq!(s.config_cache_grace, Duration::from_secs(2));
        let s = parse(&["--config-cache", "", "--config-cache-grace", "500ms"])
            .unwrap()
            .into_settings(vec![])
            .unwrap();
        assert_eq!(s.config_cache, None);
        assert_eq!(s.config_cache_grace, Duration::from_millis(500));
        assert!(parse(&["--config-cache-grace", "soon"]).is_err());
    }

    #[test]
    fn tls_flags_are_paired_and_checked() {
        let s = parse(&[]).unwrap().into_settings(vec![]).unwrap();
        assert!(s.tls.is_none());
        let s = parse(&[
            "--tls-listen",
            "8443",
            "--tls-cert",
            "a.crt,b.crt",
            "--tls-key",
            "a.key,b.key",
            "--tls-handshake-timeout",
            "2s",
        ])
        .unwrap()
        .into_settings(vec![])
        .unwrap();
        let tls = s.tls.unwrap();
        assert_eq!(tls.listen, "0.0.0.0:8443".parse().unwrap());
        assert_eq!(tls.certs.len(), 2);
        assert_eq!(tls.certs[1].cert, PathBuf::from("b.crt"));
        assert_eq!(tls.certs[1].key, PathBuf::from("b.key"));
        assert_eq!(tls.handshake_timeout, Duration::from_secs(2));
        assert_eq!(tls.reload_interval, Duration::from_secs(5));
        assert_eq!(tls.client_ca, None);
        for (bad, needle) in [
            (&["--tls-listen", "8443"][..], "GW_TLS_CERT"),
            (
                &["--tls-listen", "8443", "--tls-cert", "a.crt"],
                "GW_TLS_KEY",
            ),
            (
                &[
                    "--tls-listen",
                    "8443",
                    "--tls-cert",
                    "a.crt,b.crt",
                    "--tls-key",
                    "a.key",
                ],
                "one key per certificate",
            ),
            (
                &["--tls-cert", "a.crt", "--tls-key", "a.key"],
                "need GW_TLS_LISTEN",
            ),
            (&["--tls-client-ca", "ca.pem"], "need GW_TLS_LISTEN"),
        ] {
            let err = parse(bad).unwrap().into_settings(vec![]).unwrap_err();
            assert!(err.to_string().contains(needle), "{bad:?}: {err}");
        }
        assert!(parse(&["--tls-listen", "nowhere"]).is_err());
    }

    #[test]
    fn grace_reads_durations() {
        let cli = parse(&["--shutdown-grace", "250ms"]).unwrap();
        assert_eq!(cli.shutdown_grace, Duration::from_millis(250));
    }
}
