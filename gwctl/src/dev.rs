//! `gwctl dev`: a whole gateway in one process: an embedded control plane
//! (in-memory store), the built-in echo upstream and one data plane, with
//! the dev config applied; with `--tls` also an HTTPS listener serving
//! throwaway certificates ([`tls`]).

mod tls;

pub use tls::DEFAULT_TLS_LISTEN;

use crate::cli::DevArgs;
use crate::client::{Api, ControlPlane as CpClient};
use crate::echo::EchoServer;
use crate::jwt::MIN_SECRET_BYTES;
use crate::signal::shutdown_signal;
use anyhow::Context as _;
use gateway_common::config::RouteConfig;
use gateway_common::process::{self, LogFormat, LogTarget};
use gateway_common::GatewayConfig;
use gateway_proto::v1 as pb;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The dev config, relative to the working directory.
const DEV_CONFIG_PATH: &str = "deploy/examples/dev.yaml";
/// The same file, built in for when gwctl runs elsewhere.
const EMBEDDED_DEV_CONFIG: &str = include_str!("../../deploy/examples/dev.yaml");
/// Control plane gRPC address.
const CP_GRPC: ([u8; 4], u16) = ([127, 0, 0, 1], 50051);
/// Control plane HTTP address.
const CP_HTTP: ([u8; 4], u16) = ([127, 0, 0, 1], 9091);
/// Data plane admin address.
const DP_ADMIN: ([u8; 4], u16) = ([127, 0, 0, 1], 9090);
/// Echo upstream address (the dev config's static instance).
const ECHO: ([u8; 4], u16) = ([127, 0, 0, 1], 8081);
/// Time the data plane gets to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Time in-flight requests get when stopping.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Runs the embedded gateway until Ctrl-C or SIGTERM.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    init_logging();
    let (document, source) = dev_config(args.file.as_deref())?;
    let config = GatewayConfig::load(document.as_bytes()).with_context(|| source.clone())?;
    let admin_token = random_token();
    let registration_token = random_token();
    let jwt_secret = dev_jwt_secret(std::env::var("JWT_SECRET").ok())?;
    // Dropped (and a temporary directory removed) on every way out.
    let dev_tls = if args.tls {
        tls::check_port(args.tls_listen)?;
        Some(tls::DevTls::create(
            args.tls_dir.as_deref(),
            args.tls_listen,
        )?)
    } else {
        None
    };

    let cp = control_plane::ControlPlane::start(control_plane::Settings {
        grpc_addr: SocketAddr::from(CP_GRPC),
        http_addr: SocketAddr::from(CP_HTTP),
        redis_url: None,
        admin_token: Some(admin_token.clone()),
        registration_token: Some(registration_token.clone()),
        dataplane_token: None,
        allow_unauthenticated: false,
        replica_id: "dev".to_string(),
        key_prefix: "gw:".to_string(),
        leader_ttl: Duration::from_secs(10),
        lease_sweep_interval: Duration::from_millis(250),
        delta_ring: control_plane::view::RING_CAPACITY,
        ..control_plane::Settings::default()
    })
    .await
    .context("cannot start the embedded control plane")?;
    let echo = EchoServer::start(SocketAddr::from(ECHO)).await?;
    let cp_url = format!("http://{}", cp.grpc_addr());
    let dp = data_plane::DataPlane::start(data_plane::Settings {
        listen: args.listen,
        admin_listen: SocketAddr::from(DP_ADMIN),
        control_plane: cp_url.clone(),
        config_file: None,
        node_id: "dev".to_string(),
        dataplane_token: None,
        shutdown_grace: SHUTDOWN_GRACE,
        header_read_timeout: data_plane::settings::DEFAULT_HEADER_READ_TIMEOUT,
        service_urls: Vec::new(),
        jwt: Some(data_plane::auth::JwtSettings {
            secret: jwt_secret.clone(),
            algorithm: jsonwebtoken::Algorithm::HS256,
            issuer: None,
            audience: None,
        }),
        tls: dev_tls.as_ref().map(|t| t.settings(args.tls_listen)),
        ..data_plane::Settings::default()
    })
    .await
    .context("cannot start the embedded data plane")?;

    let version = apply(&cp_url, &admin_token, document).await?;
    wait_ready(dp.admin_addr(), READY_TIMEOUT).await?;
    println!(
        "{}",
        banner(&Banner {
            listen: dp.listen_addr(),
            admin: dp.admin_addr(),
            cp_grpc: cp.grpc_addr(),
            cp_http: cp.http_addr(),
            echo: echo.addr(),
            source: &source,
            version,
            config: &config,
            admin_token: &admin_token,
            registration_token: &registration_token,
            jwt_secret: &jwt_secret,
            https: dp.tls_addr().zip(dev_tls.as_ref()),
        })
    );

    shutdown_signal().await;
    println!("stopping: data plane, control plane, echo upstream");
    dp.shutdown().await;
    cp.shutdown().await;
    echo.shutdown();
    if let Some(tls) = dev_tls.filter(|t| t.is_temporary()) {
        let dir = tls.ca.parent().map(Path::to_path_buf);
        drop(tls);
        if let Some(dir) = dir {
            println!("removed {}", dir.display());
        }
    }
    Ok(())
}

/// Logs of the embedded planes go to standard error, so the banner on
/// standard output stays readable: `LOG_LEVEL` (default warn; an invalid
/// one falls back to warn), `LOG_FORMAT=json|pretty` (default pretty).
fn init_logging() {
    let level = std::env::var("LOG_LEVEL").unwrap_or_else(|_| "warn".to_string());
    let format = match std::env::var("LOG_FORMAT") {
        Ok(f) if f == "json" => LogFormat::Json,
        _ => LogFormat::Pretty,
    };
    if process::init_logging(&level, format, LogTarget::Stderr).is_err() {
        let _ = process::init_logging("warn", format, LogTarget::Stderr);
    }
}

/// The config document and where it came from.
fn dev_config(file: Option<&Path>) -> anyhow::Result<(String, String)> {
    let path = match file {
        Some(path) => PathBuf::from(path),
        None if Path::new(DEV_CONFIG_PATH).is_file() => PathBuf::from(DEV_CONFIG_PATH),
        None => {
            return Ok((
                EMBEDDED_DEV_CONFIG.to_string(),
                "built-in dev.yaml".to_string(),
            ))
        }
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok((text, path.display().to_string()))
}

/// 32 random bytes, hex.
/// The HS256 secret the dev data plane verifies tokens with: `JWT_SECRET`
/// when it is set (so that tokens issued elsewhere work), else a random one
/// that the banner prints for `gwctl token issue`.
fn dev_jwt_secret(from_env: Option<String>) -> anyhow::Result<String> {
    match from_env {
        Some(secret) if secret.len() >= MIN_SECRET_BYTES => Ok(secret),
        Some(secret) => anyhow::bail!(
            "JWT_SECRET is {} bytes long: it must be at least {} bytes (or unset, for a random one)",
            secret.len(),
            MIN_SECRET_BYTES
        ),
        None => Ok(random_token()),
    }
}

fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Applies the document through the Admin API; returns the new version.
async fn apply(url: &str, admin_token: &str, document: String) -> anyhow::Result<u64> {
    let cp = CpClient::connect(url).await?;
    let answer = cp
        .admin_with_token(admin_token)
        .apply_config(pb::ApplyConfigRequest {
            document: document.into_bytes(),
            dry_run: false,
        })
        .await
        .map_err(|s| cp.explain(Api::Admin, s))
        .context("cannot apply the dev config")?
        .into_inner();
    Ok(answer.version)
}

/// Polls `GET /health/ready` on the data plane's admin address.
async fn wait_ready(admin: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        match get_status(admin, "/health/ready").await {
            Ok(200) => return Ok(()),
            Ok(status) => last = format!("status {status}"),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the data plane is not ready after {timeout:?} ({last})")
}

/// Status code of `GET path` on `addr` (HTTP/1.1, one request).
async fn get_status(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut stream = tokio::net::TcpStream::connect(loopback_if_unspecified(addr)).await?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut head = vec![0u8; 64];
    let n = stream.read(&mut head).await?;
    let text = String::from_utf8_lossy(&head[..n]);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad status line"))
}

/// `0.0.0.0:3000` is reached as `127.0.0.1:3000`.
fn loopback_if_unspecified(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

/// What the banner shows.
struct Banner<'a> {
    listen: SocketAddr,
    admin: SocketAddr,
    cp_grpc: SocketAddr,
    cp_http: SocketAddr,
    echo: SocketAddr,
    source: &'a str,
    version: u64,
    config: &'a GatewayConfig,
    admin_token: &'a str,
    registration_token: &'a str,
    jwt_secret: &'a str,
    /// The HTTPS listener and its certificates, with `--tls`.
    https: Option<(SocketAddr, &'a tls::DevTls)>,
}

/// What was started and how to use it.
fn banner(b: &Banner<'_>) -> String {
    let public = loopback_if_unspecified(b.listen);
    let host = if b.listen.ip().is_unspecified() {
        format!("localhost:{}", b.listen.port())
    } else {
        public.to_string()
    };
    // The certificate names localhost: curl checks that name.
    let https = b.https.map(|(addr, tls)| {
        let host = if addr.ip().is_unspecified() || addr.ip().is_loopback() {
            format!("localhost:{}", addr.port())
        } else {
            addr.to_string()
        };
        (addr, host, tls)
    });
    let mut out = String::new();
    out.push_str("gwctl dev: a whole gateway in this process\n\n");
    out.push_str(&format!(
        "  data plane     http://{}  (admin http://{}: /health/ready, /metrics)\n",
        b.listen, b.admin
    ));
    out.push_str(&format!(
        "  control plane  grpc {}, http http://{}  (in-memory store: not durable)\n",
        b.cp_grpc, b.cp_http
    ));
    if let Some((addr, host, tls)) = &https {
        out.push_str(&format!(
            "  https          https://{host}  (listening on {addr}; throwaway CA, {})\n",
            if tls.is_temporary() {
                "files removed on exit"
            } else {
                "files kept"
            }
        ));
        out.push_str(&format!("  CA cert        {}\n", tls.ca.display()));
    }
    out.push_str(&format!("  echo upstream  http://{}\n", b.echo));
    out.push_str(&format!(
        "  config         {} applied as version {}\n\n",
        b.source, b.version
    ));
    out.push_str("Try:\n");
    for example in curl_examples(&b.config.routes, &format!("http://{host}"), "") {
        out.push_str(&format!("  {example}\n"));
    }
    if let Some((_, host, tls)) = &https {
        let cacert = format!("--cacert {} ", shell_quote(&tls.ca.display().to_string()));
        let examples = curl_examples(&b.config.routes, &format!("https://{host}"), &cacert);
        if let Some(example) = examples.first() {
            out.push_str(&format!("  {example}\n"));
        }
    }
    out.push_str("\nUse gwctl against it (from another shell):\n");
    out.push_str(&format!("  export GW_CONTROL_PLANE=http://{}\n", b.cp_grpc));
    out.push_str(&format!("  export GW_ADMIN_TOKEN={}\n", b.admin_token));
    out.push_str(&format!(
        "  export GW_REGISTRATION_TOKEN={}\n",
        b.registration_token
    ));
    out.push_str("  gwctl topology\n");
    out.push_str("  gwctl get routes\n");
    out.push_str("  gwctl get instances\n");
    out.push_str(&format!(
        "  gwctl register --service echo --address {} --id echo-2 --ttl 10s --keepalive\n",
        b.echo
    ));
    out.push_str("\nAccess tokens the data plane accepts (routes with `auth`, e.g. /me):\n");
    out.push_str(&format!("  export JWT_SECRET={}\n", b.jwt_secret));
    out.push_str("  TOKEN=$(gwctl token issue --sub user-1 --tenant tenant-1 --role customer)\n");
    out.push_str(&format!(
        "  curl -s -H \"Authorization: Bearer $TOKEN\" 'http://{host}/me'\n"
    ));
    out.push_str("\nCtrl-C stops everything.");
    out
}

/// A `curl` line for each of the first routes, with sample path values:
/// `curl -s {options}[-X METHOD ]'{base}{path}'`.
fn curl_examples(routes: &[RouteConfig], base: &str, options: &str) -> Vec<String> {
    routes
        .iter()
        .take(4)
        .filter_map(|route| {
            let m = &route.matcher;
            let path = match (&m.path, &m.path_prefix) {
                (Some(path), _) => sample_path(path),
                (None, Some(prefix)) if route.strip_prefix => {
                    format!("{}/hello?x=1", prefix.trim_end_matches('/'))
                }
                (None, Some(prefix)) => format!("{}/7", prefix.trim_end_matches('/')),
                (None, None) => return None,
            };
            let method = m
                .methods
                .first()
                .filter(|method| method.as_str() != "GET")
                .map(|method| format!("-X {method} "))
                .unwrap_or_default();
            Some(format!("curl -s {options}{method}'{base}{path}'"))
        })
        .collect()
}

/// `text` as one shell word: as is when it holds only safe characters,
/// else in single quotes.
fn shell_quote(text: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c);
    if !text.is_empty() && text.chars().all(safe) {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// `/users/{id}` -> `/users/42`.
fn sample_path(pattern: &str) -> String {
    pattern
        .split('/')
        .map(|segment| {
            if segment.starts_with('{') && segment.ends_with('}') {
                "42"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_dev_config_is_valid() {
        let config = GatewayConfig::load(EMBEDDED_DEV_CONFIG.as_bytes()).unwrap();
        let echo = config.service("echo").unwrap();
        assert_eq!(echo.instances, vec!["http://127.0.0.1:8081".to_string()]);
        assert_eq!(echo.health_check.path, "/health");
        assert!(config.routes.iter().any(|r| r
            .matcher
            .path
            .as_deref()
            .is_some_and(|p| p.contains('{'))));
        assert!(config.routes.iter().any(|r| r.rewrite.is_some()));
    }

    #[test]
    fn the_jwt_secret_comes_from_the_environment_or_is_random() {
        let long = "s".repeat(32);
        assert_eq!(dev_jwt_secret(Some(long.clone())).unwrap(), long);
        assert!(dev_jwt_secret(Some("short".into())).is_err());
        let random = dev_jwt_secret(None).unwrap();
        assert_eq!(random.len(), 64);
        assert_ne!(random, dev_jwt_secret(None).unwrap());
    }

    #[test]
    fn examples_fill_in_parameters() {
        let config = GatewayConfig::load(EMBEDDED_DEV_CONFIG.as_bytes()).unwrap();
        let examples = curl_examples(&config.routes, "http://localhost:3000", "");
        assert!(
            examples.contains(&"curl -s 'http://localhost:3000/echo/hello?x=1'".to_string()),
            "{examples:?}"
        );
        assert!(
            examples.contains(&"curl -s 'http://localhost:3000/users/42'".to_string()),
            "{examples:?}"
        );
        let examples = curl_examples(&config.routes, "https://localhost:3443", "--cacert ca.pem ");
        assert_eq!(
            examples[0],
            "curl -s --cacert ca.pem 'https://localhost:3443/echo/hello?x=1'"
        );
    }

    #[test]
    fn shell_words() {
        assert_eq!(
            shell_quote("/tmp/gwctl-dev-tls.x1/ca.pem"),
            "/tmp/gwctl-dev-tls.x1/ca.pem"
        );
        assert_eq!(
            shell_quote("/tmp/my certs/ca.pem"),
            "'/tmp/my certs/ca.pem'"
        );
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
