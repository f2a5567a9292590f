//! TLS and mTLS from the data plane to its upstreams, end to end: a real
//! `data-plane` process in standalone mode in front of HTTPS instances
//! served here with rustls and hyper, certificates made with rcgen.
//!
//! Covered: requests proxied over TLS, the SNI the instance sees
//! (`server_name`), one TLS connection reused by several requests, an
//! instance certificate of another CA or for another name refused (502 in
//! the gateway's error shape, counted as `tls_error`), client certificates
//! (mTLS) given and missing, TLS sessions resumed on new connections, user
//! lookups over TLS, and unusable `tls` settings refusing the config at
//! start.

use gateway_tests::certs::{server_config, TestCa as Ca};
use gateway_tests::cluster::{start_test, write_temp_file, DataPlaneProc};
use gateway_tests::procs::Spec;
use http_body_util::Full;
use hyper::body::Bytes;
use rustls::HandshakeKind;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A certificate for `names` from `ca` (PEM chain, PEM key): a client's
/// (`CN=gateway`, client-auth usage) or a server's.
fn issue(ca: &Ca, names: &[&str], client: bool) -> (String, String) {
    if client {
        ca.client("gateway", "", names)
    } else {
        ca.server(names, None)
    }
}

/// A temporary directory of PEM files, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "gw-tls-upstream-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What an HTTPS instance saw.
#[derive(Default)]
struct Seen {
    /// TLS connections accepted (handshake completed).
    accepted: AtomicUsize,
    /// Handshakes that failed.
    refused: AtomicUsize,
    /// SNI of each accepted connection.
    sni: Mutex<Vec<Option<String>>>,
    /// Whether each accepted connection presented a client certificate.
    client_certs: Mutex<Vec<bool>>,
    /// Whether each accepted connection resumed an earlier TLS session.
    resumed: Mutex<Vec<bool>>,
}

/// An HTTPS instance, on its own runtime: answers every request with its
/// path and the path's last segment as `id` (so `/users/ID` is a user of a
/// user lookup), and closes the connection after answering a path that
/// holds `/close`.
struct TlsUpstream {
    addr: SocketAddr,
    seen: Arc<Seen>,
    _runtime: tokio::runtime::Runtime,
}

impl TlsUpstream {
    /// Serves `pair`; client certificates of `client_ca` are required when
    /// it is given.
    fn start(pair: &(String, String), client_ca: Option<&Ca>) -> Self {
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config(pair, client_ca));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let state = seen.clone();
        runtime.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, seen) = (acceptor.clone(), state.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        seen.refused.fetch_add(1, Ordering::SeqCst);
                        return;
                    };
                    let (_, session) = tls.get_ref();
                    let sni = session.server_name().map(str::to_string);
                    let cert = session.peer_certificates().is_some_and(|c| !c.is_empty());
                    let resumed = session.handshake_kind() == Some(HandshakeKind::Resumed);
                    seen.sni.lock().unwrap().push(sni);
                    seen.client_certs.lock().unwrap().push(cert);
                    seen.resumed.lock().unwrap().push(resumed);
                    seen.accepted.fetch_add(1, Ordering::SeqCst);
                    let service = hyper::service::service_fn(|req: hyper::Request<_>| {
                        let path = req.uri().path();
                        // The last segment as `id`: under /users/ID, a user
                        // of the auth service's lookup.
                        let id = path.rsplit('/').next().unwrap_or_default();
                        let body = format!("{{\"path\":\"{path}\",\"id\":\"{id}\"}}");
                        let close = path.contains("/close");
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .header("content-type", "application/json")
                                    .header(
                                        "connection",
                                        if close { "close" } else { "keep-alive" },
                                    )
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            seen,
            _runtime: runtime,
        }
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn accepted(&self) -> usize {
        self.seen.accepted.load(Ordering::SeqCst)
    }

    fn refused(&self) -> usize {
        self.seen.refused.load(Ordering::SeqCst)
    }
}

/// A config with one service and route per `(name, url, tls settings)`;
/// service `NAME` is reached under `/NAME`.
fn config(services: &[(&str, String, String)]) -> String {
    let mut doc = String::from("version: 1\nservices:\n");
    for (name, url, tls) in services {
        doc.push_str(&format!(
            "  - name: {name}\n    instances: [\"{url}\"]\n    connect_timeout: 2s\n"
        ));
        if !tls.is_empty() {
            doc.push_str(&format!("    tls: {{ {tls} }}\n"));
        }
    }
    doc.push_str("routes:\n");
    for (name, _, _) in services {
        doc.push_str(&format!(
            "  - name: {name}\n    match: {{ path_prefix: /{name} }}\n    service: {name}\n    strip_prefix: true\n"
        ));
    }
    doc
}

/// The value of `series` in the data plane's `/metrics`.
fn metric(dp: &DataPlaneProc, series: &str) -> f64 {
    dp.metrics()
        .lines()
        .find_map(|line| {
            line.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

#[test]
fn requests_go_over_tls_with_the_server_name_and_reuse_one_connection() {
    let _guard = start_test();
    let dir = Dir::new();
    let ca = Ca::new("upstream test CA");
    let upstream = TlsUpstream::start(&issue(&ca, &["echo.internal"], false), None);
    let ca_file = dir.write("ca.pem", &ca.pem());
    let file = write_temp_file(
        "tls-upstream-ok.yaml",
        &config(&[(
            "echo",
            upstream.url(),
            format!("ca_file: {ca_file}, server_name: echo.internal"),
        )]),
    );
    let dp = DataPlaneProc::standalone(&format!("tls-up-ok-{}", std::process::id()), &file);
    for i in 0..5 {
        let r = dp.send("GET", &format!("/echo/item/{i}"), &[], b"");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["path"], format!("/item/{i}"));
    }
    assert_eq!(
        upstream.accepted(),
        1,
        "the pooled TLS connection is reused"
    );
    assert_eq!(
        *upstream.seen.sni.lock().unwrap(),
        vec![Some("echo.internal".to_string())]
    );
    assert_eq!(
        metric(
            &dp,
            r#"gateway_upstream_errors_total{service="echo",kind="tls_error"}"#
        ),
        0.0
    );
}

#[test]
fn an_untrusted_or_misnamed_upstream_certificate_is_a_counted_502() {
    let _guard = start_test();
    let dir = Dir::new();
    let ours = Ca::new("our CA");
    let theirs = Ca::new("another CA");
    let foreign = TlsUpstream::start(&issue(&theirs, &["echo.internal"], false), None);
    let misnamed = TlsUpstream::start(&issue(&ours, &["other.internal"], false), None);
    let ca_file = dir.write("ca.pem", &ours.pem());
    let tls = format!("ca_file: {ca_file}, server_name: echo.internal");
    let file = write_temp_file(
        "tls-upstream-refused.yaml",
        &config(&[
            ("foreign", foreign.url(), tls.clone()),
            ("misnamed", misnamed.url(), tls),
        ]),
    );
    let dp = DataPlaneProc::standalone(&format!("tls-up-refused-{}", std::process::id()), &file);
    for name in ["foreign", "misnamed"] {
        let r = dp.send("GET", &format!("/{name}/x"), &[], b"");
        assert_eq!(
            r.status,
            502,
            "{name}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let body = r.json();
        assert_eq!(body["statusCode"], 502, "{body}");
        assert_eq!(body["code"], "BAD_GATEWAY", "{body}");
        for key in ["error", "message", "requestId", "timestamp"] {
            assert!(body[key].is_string(), "{name}: {key} missing in {body}");
        }
        assert!(body["message"].as_str().unwrap().contains("TLS"), "{body}");
        assert_eq!(
            metric(
                &dp,
                &format!(r#"gateway_upstream_errors_total{{service="{name}",kind="tls_error"}}"#)
            ),
            1.0,
            "{name}"
        );
    }
    assert_eq!(foreign.accepted() + misnamed.accepted(), 0);
    assert!(foreign.refused() >= 1 && misnamed.refused() >= 1);
}

#[test]
fn an_upstream_requiring_client_certificates_takes_the_gateways_only() {
    let _guard = start_test();
    let dir = Dir::new();
    let ca = Ca::new("mesh CA");
    let upstream = TlsUpstream::start(&issue(&ca, &["localhost"], false), Some(&ca));
    let ca_file = dir.write("ca.pem", &ca.pem());
    let (cert, key) = issue(&ca, &["gateway.internal"], true);
    let (cert, key) = (dir.write("gw.crt", &cert), dir.write("gw.key", &key));
    let url = format!("https://localhost:{}", upstream.addr.port());
    let file = write_temp_file(
        "tls-upstream-mtls.yaml",
        &config(&[
            (
                "mtls",
                url.clone(),
                format!("ca_file: {ca_file}, client_cert: {cert}, client_key: {key}"),
            ),
            ("anonymous", url, format!("ca_file: {ca_file}")),
        ]),
    );
    let dp = DataPlaneProc::standalone(&format!("tls-up-mtls-{}", std::process::id()), &file);
    let r = dp.send("GET", "/mtls/who", &[], b"");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(*upstream.seen.client_certs.lock().unwrap(), vec![true]);
    // Verified against the instance's host (no server_name): localhost.
    assert_eq!(
        *upstream.seen.sni.lock().unwrap(),
        vec![Some("localhost".to_string())]
    );
    let r = dp.send("GET", "/anonymous/who", &[], b"");
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(upstream.accepted(), 1);
}

#[test]
fn new_connections_to_an_instance_resume_the_tls_session() {
    let _guard = start_test();
    let dir = Dir::new();
    let ca = Ca::new("upstream test CA");
    let upstream = TlsUpstream::start(&issue(&ca, &["echo.internal"], false), None);
    let ca_file = dir.write("ca.pem", &ca.pem());
    let file = write_temp_file(
        "tls-upstream-resume.yaml",
        &config(&[(
            "echo",
            upstream.url(),
            format!("ca_file: {ca_file}, server_name: echo.internal"),
        )]),
    );
    let dp = DataPlaneProc::standalone(&format!("tls-up-resume-{}", std::process::id()), &file);
    // Each answer closes its connection, so each request needs a new one.
    for i in 0..3 {
        let r = dp.send("GET", &format!("/echo/close/{i}"), &[], b"");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["path"], format!("/close/{i}"));
    }
    assert_eq!(upstream.accepted(), 3, "one connection per request");
    assert_eq!(
        *upstream.seen.resumed.lock().unwrap(),
        vec![false, true, true],
        "the first handshake is a full one, the later ones resume its session"
    );
}

const LOOKUP_SECRET: &str = "tls-lookup-test-secret-of-32-bytes";

/// An access token of user `sub` signed with [`LOOKUP_SECRET`].
fn token(sub: &str) -> String {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "sub": sub, "tenant_id": "tenant-a", "type": "access", "role": "customer",
        "iat": now, "exp": now + 900,
    });
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(LOOKUP_SECRET.as_bytes()),
    )
    .unwrap()
}

#[test]
fn user_lookups_go_over_tls_and_an_untrusted_lookup_service_is_a_503() {
    let _guard = start_test();
    let dir = Dir::new();
    let ours = Ca::new("our CA");
    let theirs = Ca::new("another CA");
    let app = TlsUpstream::start(&issue(&ours, &["app.internal"], false), None);
    let auth = TlsUpstream::start(&issue(&ours, &["auth.internal"], false), None);
    let foreign = TlsUpstream::start(&issue(&theirs, &["auth.internal"], false), None);
    let ca_file = dir.write("ca.pem", &ours.pem());
    let tls = |name: &str| format!("{{ ca_file: {ca_file}, server_name: {name}.internal }}");
    let yaml = format!(
        r#"
version: 1
services:
  - {{ name: app, instances: ["{app}"], tls: {app_tls} }}
  - {{ name: auth, instances: ["{auth}"], tls: {auth_tls} }}
  - {{ name: auth-foreign, instances: ["{foreign}"], tls: {auth_tls} }}
routes:
  - name: me
    match: {{ path_prefix: /me }}
    service: app
    auth: {{ user_details: true, user_lookup: {{ service: auth, path: "/users/{{userId}}" }} }}
  - name: foreign
    match: {{ path_prefix: /foreign }}
    service: app
    auth: {{ user_details: true, user_lookup: {{ service: auth-foreign, path: "/users/{{userId}}" }} }}
"#,
        app = app.url(),
        auth = auth.url(),
        foreign = foreign.url(),
        app_tls = tls("app"),
        auth_tls = tls("auth"),
    );
    let file = write_temp_file("tls-upstream-lookup.yaml", &yaml);
    let dp = DataPlaneProc::standalone_with_env(
        &format!("tls-up-lookup-{}", std::process::id()),
        &file,
        &[("JWT_SECRET", LOOKUP_SECRET)],
    );
    let bearer = format!("Bearer {}", token("u1"));
    let r = dp.send("GET", "/me/tickets", &[("authorization", &bearer)], b"");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["path"], "/me/tickets");
    assert_eq!(auth.accepted(), 1, "the lookup went to the auth service");
    assert_eq!(
        *auth.seen.sni.lock().unwrap(),
        vec![Some("auth.internal".to_string())]
    );

    // The lookup service's certificate is not trusted: no user, no pass.
    // Another user: user details are cached by user, whatever the service.
    let bearer = format!("Bearer {}", token("u2"));
    let r = dp.send(
        "GET",
        "/foreign/tickets",
        &[("authorization", &bearer)],
        b"",
    );
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["code"], "SERVICE_UNAVAILABLE", "{}", r.text());
    assert_eq!(foreign.accepted(), 0);
    assert!(foreign.refused() >= 1);
    assert_eq!(
        metric(
            &dp,
            r#"gateway_upstream_errors_total{service="auth-foreign",kind="tls_error"}"#
        ),
        1.0
    );
}

fn refusal(config: &Path) -> String {
    let out = Spec::new("data-plane-refused", "data-plane")
        .args(["--config", &config.to_string_lossy()])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .env("LOG_LEVEL", "off")
        .run(Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "started: {stderr}");
    stderr
}

#[test]
fn unusable_tls_settings_refuse_the_config_at_start() {
    let _guard = start_test();
    let dir = Dir::new();
    let ca = Ca::new("test CA");
    let (cert, _) = issue(&ca, &["a.internal"], true);
    let (_, other_key) = issue(&ca, &["b.internal"], true);
    let cert = dir.write("c.crt", &cert);
    let other_key = dir.write("other.key", &other_key);
    let missing = dir.0.join("missing.pem").to_string_lossy().into_owned();
    for (tls, needle) in [
        (format!("ca_file: {missing}"), "tls.ca_file"),
        (
            format!("client_cert: {cert}"),
            "client_key: both or neither",
        ),
        (
            format!("client_cert: {cert}, client_key: {other_key}"),
            "does not fit",
        ),
        ("server_name: \"bad name\"".to_string(), "server_name"),
    ] {
        let file = dir.0.join("config.yaml");
        std::fs::write(
            &file,
            config(&[("svc", "https://127.0.0.1:9".to_string(), tls.clone())]),
        )
        .unwrap();
        let stderr = refusal(&file);
        assert!(stderr.contains(needle), "{tls}: {needle:?} not in {stderr}");
    }
}
