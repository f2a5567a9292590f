//! TLS inside the cluster, with real processes: the control plane's gRPC
//! port over TLS and mTLS (data planes and gwctl), node identity pinned by
//! client certificates, refusals of bad settings at start, an `https://`
//! URL that never falls back to plaintext, and `rediss://` to a real
//! `redis-server` speaking TLS for both planes. Certificates come from a
//! test CA made with rcgen.

use gateway_tests::cluster::{
    start_test, wait_until, ControlPlaneProc, DataPlaneProc, Gwctl, Tokens, Upstream,
};
use gateway_tests::procs::Spec;
use gateway_tests::{free_port, RedisServer, RedisTlsFiles};
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Longest wait for a config to reach a data plane.
const PROPAGATION: Duration = Duration::from_secs(20);
/// How long a refused data plane is watched (several reconnects).
const REFUSED_FOR: Duration = Duration::from_secs(4);

/// A test certificate authority.
struct TestCa {
    ca: gateway_tests::certs::TestCa,
    file: PathBuf,
}

/// A certificate and key written to PEM files.
struct Issued {
    cert: PathBuf,
    key: PathBuf,
}

impl TestCa {
    fn new(name: &str) -> Self {
        let ca = gateway_tests::certs::TestCa::new(name);
        let file = temp_file(&format!("{name}-ca.pem"), &ca.pem());
        Self { ca, file }
    }

    fn ca_file(&self) -> String {
        path(&self.file)
    }

    /// A certificate for 127.0.0.1 and localhost (a server's).
    fn server(&self, name: &str) -> Issued {
        self.issue(name, server_params())
    }

    /// A client certificate, naming `node` in a URI SAN when given.
    fn client(&self, name: &str, node: Option<&str>) -> Issued {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        if let Some(node) = node {
            let uri = format!("spiffe://gateway/node/{node}");
            params
                .subject_alt_names
                .push(rcgen::SanType::URI(uri.as_str().try_into().unwrap()));
        }
        self.issue(name, params)
    }

    fn issue(&self, name: &str, params: rcgen::CertificateParams) -> Issued {
        let (cert, key) = self.ca.sign(params);
        Issued {
            cert: temp_file(&format!("{name}-cert.pem"), &cert),
            key: temp_file(&format!("{name}-key.pem"), &key),
        }
    }
}

fn server_params() -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    params
}

impl Issued {
    fn cert(&self) -> String {
        path(&self.cert)
    }
    fn key(&self) -> String {
        path(&self.key)
    }
}

fn temp_file(name: &str, content: &str) -> PathBuf {
    gateway_tests::cluster::write_temp_file(name, content)
}

fn path(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

fn server_env(cert: &Issued) -> Vec<(&'static str, String)> {
    vec![("CP_TLS_CERT", cert.cert()), ("CP_TLS_KEY", cert.key())]
}

fn refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn https(cp: &ControlPlaneProc) -> String {
    format!("https://{}", cp.grpc)
}

fn echo_config(upstream: &Upstream) -> String {
    format!(
        "version: 1\nservices:\n  - name: echo\n    instances: [\"{}\"]\nroutes:\n  - name: echo\n    match: {{ path_prefix: /echo }}\n    service: echo\n",
        upstream.url()
    )
}

/// Waits until `dp` proxies `GET /echo` to the upstream.
fn wait_routed(dp: &mut DataPlaneProc) {
    dp.wait_ready();
    wait_until(
        &format!("{} to route /echo", dp.node_id),
        PROPAGATION,
        || match dp.get("/echo/x") {
            Ok(r) if r.status == 200 => Ok(()),
            Ok(r) => Err(format!("{} {}", r.status, r.text())),
            Err(e) => Err(e.to_string()),
        },
    );
}

/// Asserts that `dp` never became ready and that its log says `why`.
fn assert_refused(dp: &DataPlaneProc, why: &str) {
    let ready = gateway_tests::http::get(dp.admin, "/health/ready").map(|r| r.status);
    assert!(
        !matches!(ready, Ok(200)),
        "{} became ready; log:\n{}",
        dp.node_id,
        dp.log()
    );
    wait_until(
        &format!("{} to log {why:?}", dp.node_id),
        PROPAGATION,
        || {
            let log = dp.log();
            if log.contains(why) {
                Ok(())
            } else {
                Err(gateway_tests::procs::tail(&log, 20))
            }
        },
    );
}

fn gwctl_tls(cp: &ControlPlaneProc, env: &[(&str, &str)]) -> Gwctl {
    env.iter()
        .fold(Gwctl::new(&https(cp), &cp.tokens), |g, (k, v)| {
            g.with_env(k, v)
        })
}

fn assert_gwctl_fails(out: &gateway_tests::cluster::CmdOutput, why: &[&str]) {
    assert_ne!(out.code, 0, "gwctl succeeded: {}", out.stdout);
    for part in why {
        assert!(out.stderr.contains(part), "{part:?} not in: {}", out.stderr);
    }
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
}

/// A TCP listener that records every byte clients send it.
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Recorder {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let sink = sink.clone();
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        sink.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                });
            }
        });
        Self { addr, seen }
    }

    fn bytes(&self) -> Vec<u8> {
        self.seen.lock().unwrap().clone()
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

#[test]
fn an_https_url_never_falls_back_to_plaintext() {
    let _guard = start_test();
    let recorder = Recorder::start();
    let url = format!("https://{}", recorder.addr);
    let tokens = Tokens::random();
    let out = Gwctl::new(&url, &tokens).run(&["get", "services"]);
    assert_gwctl_fails(&out, &["cannot reach the control plane"]);

    let dataplane_token = "dataplane-token-never-in-clear";
    let dp = DataPlaneProc::start_with_env(
        "dp-plain-https",
        &url,
        None,
        &[("GW_DATAPLANE_TOKEN", dataplane_token)],
    );
    wait_until("the data plane to try the listener", PROPAGATION, || {
        let seen = recorder.bytes();
        (seen.len() > 200)
            .then_some(())
            .ok_or(seen.len().to_string())
    });
    std::thread::sleep(Duration::from_secs(1));
    let seen = recorder.bytes();
    // Only TLS handshake records (0x16) arrived: no HTTP/2 preface, no
    // header, no token.
    assert_eq!(seen.first(), Some(&0x16), "not a TLS ClientHello");
    for secret in [
        b"authorization".as_slice(),
        b"PRI * HTTP/2.0",
        tokens.admin.as_bytes(),
        dataplane_token.as_bytes(),
    ] {
        assert!(
            !contains(&seen, secret),
            "{:?} was sent in the clear",
            String::from_utf8_lossy(secret)
        );
    }
    assert_refused(&dp, "discovery stream down");

    // A real plaintext control plane: https:// to it fails too.
    let cp = ControlPlaneProc::start("cp-plain", None, &tokens);
    let out = Gwctl::new(&https(&cp), &tokens).run(&["get", "services"]);
    assert_gwctl_fails(&out, &["cannot reach the control plane"]);
}

#[test]
fn a_tls_control_plane_serves_data_planes_and_gwctl_that_trust_its_ca() {
    let _guard = start_test();
    let ca = TestCa::new("cluster");
    let other = TestCa::new("other");
    let cert = ca.server("cp");
    let upstream = Upstream::start("echo");
    let cp = ControlPlaneProc::start_with_env(
        "cp-tls",
        None,
        &Tokens::random(),
        &refs(&server_env(&cert)),
    );

    let ca_file = ca.ca_file();
    let gwctl = gwctl_tls(&cp, &[("GW_CA_FILE", &ca_file)]);
    gwctl.apply(&echo_config(&upstream)).success();
    let out = gwctl_tls(&cp, &[]).run(&["get", "services"]);
    assert_gwctl_fails(&out, &["UnknownIssuer", "--ca-file"]);
    let other_file = other.ca_file();
    let out = gwctl_tls(&cp, &[("GW_CA_FILE", &other_file)]).run(&["get", "services"]);
    assert_gwctl_fails(&out, &["UnknownIssuer"]);
    // The whole port speaks TLS: plaintext gRPC gets nothing.
    let out = Gwctl::new(&cp.url(), &cp.tokens).run(&["get", "services"]);
    assert_ne!(out.code, 0, "plaintext gRPC answered: {}", out.stdout);
    // The flag works like the variable.
    let out = Gwctl::new(&https(&cp), &cp.tokens).run(&["--ca-file", &ca_file, "get", "routes"]);
    assert!(out.success().contains("echo"), "{}", out.stdout);

    let untrusting = DataPlaneProc::start("dp-no-ca", &https(&cp), None);
    let mut trusting =
        DataPlaneProc::start_with_env("dp-ca", &https(&cp), None, &[("GW_CP_CA_FILE", &ca_file)]);
    wait_routed(&mut trusting);
    let topology = gwctl.run(&["get", "dataplanes", "-o", "json"]);
    assert!(topology.success().contains("dp-ca"), "{}", topology.stdout);
    assert_refused(&untrusting, "UnknownIssuer");
}

#[test]
fn mutual_tls_wants_a_client_certificate_of_the_ca_and_pins_node_ids() {
    let _guard = start_test();
    let ca = TestCa::new("mtls");
    let other = TestCa::new("mtls-other");
    let server = ca.server("cp-mtls");
    let mut env = server_env(&server);
    env.push(("CP_TLS_CLIENT_CA", ca.ca_file()));
    let upstream = Upstream::start("echo");
    let cp = ControlPlaneProc::start_with_env("cp-mtls", None, &Tokens::random(), &refs(&env));
    let ca_file = ca.ca_file();
    let operator = ca.client("operator", None);
    let stranger = other.client("stranger", None);
    let node_a = ca.client("node-a", Some("dp-a"));
    let fleet = ca.client("fleet", None);

    // gwctl: no certificate, a certificate of another CA, then the right one.
    let out = gwctl_tls(&cp, &[("GW_CA_FILE", &ca_file)]).run(&["get", "services"]);
    assert_gwctl_fails(&out, &["cannot reach the control plane", "--client-cert"]);
    let (cert, key) = (stranger.cert(), stranger.key());
    let out = gwctl_tls(
        &cp,
        &[
            ("GW_CA_FILE", &ca_file),
            ("GW_CLIENT_CERT", &cert),
            ("GW_CLIENT_KEY", &key),
        ],
    )
    .run(&["get", "services"]);
    assert_gwctl_fails(&out, &["cannot reach the control plane"]);
    let (cert, key) = (operator.cert(), operator.key());
    let gwctl = gwctl_tls(
        &cp,
        &[
            ("GW_CA_FILE", &ca_file),
            ("GW_CLIENT_CERT", &cert),
            ("GW_CLIENT_KEY", &key),
        ],
    );
    gwctl.apply(&echo_config(&upstream)).success();
    // The certificate does not replace the token.
    let out = Gwctl::new(&https(&cp), &Tokens::random())
        .with_env("GW_CA_FILE", &ca_file)
        .with_env("GW_CLIENT_CERT", &cert)
        .with_env("GW_CLIENT_KEY", &key)
        .run(&["get", "services"]);
    assert_gwctl_fails(&out, &["GW_ADMIN_TOKEN"]);

    // Data planes: refused ones first, so that they retry meanwhile.
    let dp_env = |issued: Option<&Issued>| -> Vec<(&'static str, String)> {
        let mut env = vec![("GW_CP_CA_FILE", ca_file.clone())];
        if let Some(issued) = issued {
            env.push(("GW_CP_CLIENT_CERT", issued.cert()));
            env.push(("GW_CP_CLIENT_KEY", issued.key()));
        }
        env
    };
    let url = https(&cp);
    let anonymous = DataPlaneProc::start_with_env("dp-anon", &url, None, &refs(&dp_env(None)));
    let foreign =
        DataPlaneProc::start_with_env("dp-foreign", &url, None, &refs(&dp_env(Some(&stranger))));
    let impostor = DataPlaneProc::start_with_env("dp-b", &url, None, &refs(&dp_env(Some(&node_a))));
    let mut pinned =
        DataPlaneProc::start_with_env("dp-a", &url, None, &refs(&dp_env(Some(&node_a))));
    let mut shared =
        DataPlaneProc::start_with_env("dp-any", &url, None, &refs(&dp_env(Some(&fleet))));
    wait_routed(&mut pinned);
    wait_routed(&mut shared);
    std::thread::sleep(REFUSED_FOR);
    assert_refused(
        &anonymous,
        "closes connections without one: set GW_CP_CLIENT_CERT",
    );
    assert_refused(&foreign, "may have refused the client certificate");
    assert_refused(&impostor, "may not say Hello as node dp-b");
    let listed = gwctl
        .run(&["get", "dataplanes", "-o", "json"])
        .success()
        .to_string();
    assert!(
        listed.contains("dp-a") && listed.contains("dp-any"),
        "{listed}"
    );
    assert!(!listed.contains("dp-b"), "{listed}");
}

#[test]
fn an_expired_control_plane_certificate_is_refused() {
    let _guard = start_test();
    let ca = TestCa::new("expired");
    let mut params = server_params();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let expired = ca.issue("cp-expired", params);
    let cp = ControlPlaneProc::start_with_env(
        "cp-expired",
        None,
        &Tokens::random(),
        &refs(&server_env(&expired)),
    );
    let ca_file = ca.ca_file();
    let dp = DataPlaneProc::start_with_env(
        "dp-expired",
        &https(&cp),
        None,
        &[("GW_CP_CA_FILE", &ca_file)],
    );
    let out = gwctl_tls(&cp, &[("GW_CA_FILE", &ca_file)]).run(&["get", "services"]);
    assert_gwctl_fails(&out, &["certificate expired", "has expired"]);
    std::thread::sleep(REFUSED_FOR);
    assert_refused(&dp, "certificate expired");
}

/// Runs `binary` with `args` and `env` and expects a refused start whose
/// stderr says every part of `why`.
fn assert_start_refused(binary: &str, args: &[&str], env: &[(&str, &str)], why: &[&str]) {
    let spec = env.iter().fold(
        Spec::new(binary, binary).args(args.iter().copied()),
        |spec, (k, v)| spec.env(*k, *v),
    );
    let output = spec.run(Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "{binary} {args:?} started: {stderr}"
    );
    for part in why {
        assert!(stderr.contains(part), "{part:?} not in: {stderr}");
    }
}

#[test]
fn bad_tls_settings_are_refused_at_start() {
    let _guard = start_test();
    let ca = TestCa::new("bad");
    let good = ca.server("good");
    let another = ca.server("another");
    let grpc = format!("127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let cp_args = ["--grpc-addr", &grpc, "--http-addr", &http];
    let open = ("CP_ALLOW_UNAUTHENTICATED", "true");
    let (cert, key, other_key) = (good.cert(), good.key(), another.key());
    let ca_file = ca.ca_file();
    assert_start_refused(
        "control-plane",
        &cp_args,
        &[open, ("CP_TLS_CERT", &cert)],
        &["CP_TLS_CERT is set without CP_TLS_KEY"],
    );
    assert_start_refused(
        "control-plane",
        &cp_args,
        &[open, ("CP_TLS_CLIENT_CA", &ca_file)],
        &["CP_TLS_CLIENT_CA is set without CP_TLS_CERT"],
    );
    assert_start_refused(
        "control-plane",
        &cp_args,
        &[
            open,
            ("CP_TLS_CERT", "/nonexistent/cert.pem"),
            ("CP_TLS_KEY", &key),
        ],
        &["CP_TLS_CERT /nonexistent/cert.pem"],
    );
    assert_start_refused(
        "control-plane",
        &cp_args,
        &[open, ("CP_TLS_CERT", &cert), ("CP_TLS_KEY", &other_key)],
        &["CP_TLS_KEY", "does not fit CP_TLS_CERT"],
    );
    assert_start_refused(
        "control-plane",
        &cp_args,
        &[open, ("CP_TLS_CERT", &cert), ("CP_TLS_KEY", &cert)],
        &["CP_TLS_KEY", "holds no PEM private key"],
    );
    assert_start_refused(
        "control-plane",
        &cp_args,
        &[
            open,
            ("CP_TLS_CERT", &cert),
            ("CP_TLS_KEY", &key),
            ("CP_TLS_CLIENT_CA", &key),
        ],
        &["CP_TLS_CLIENT_CA", "holds no PEM certificate"],
    );

    let listen = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let dp_args = ["--listen", &listen, "--admin-listen", &admin];
    assert_start_refused(
        "data-plane",
        &dp_args,
        &[
            ("CONTROL_PLANE_URL", "https://127.0.0.1:1"),
            ("GW_CP_CA_FILE", "/nonexistent/ca.pem"),
        ],
        &["GW_CP_CA_FILE /nonexistent/ca.pem"],
    );
    assert_start_refused(
        "data-plane",
        &dp_args,
        &[
            ("CONTROL_PLANE_URL", "http://127.0.0.1:1"),
            ("GW_CP_CA_FILE", &ca_file),
        ],
        &[
            "GW_CP_CA_FILE is set but CONTROL_PLANE_URL",
            "is not https://",
        ],
    );
    assert_start_refused(
        "data-plane",
        &dp_args,
        &[
            ("CONTROL_PLANE_URL", "https://127.0.0.1:1"),
            ("GW_CP_CLIENT_CERT", &cert),
        ],
        &["GW_CP_CLIENT_CERT is set without GW_CP_CLIENT_KEY"],
    );
    assert_start_refused(
        "data-plane",
        &dp_args,
        &[
            ("REDIS_URL", "redis://127.0.0.1:1"),
            ("REDIS_CA_FILE", &ca_file),
        ],
        &["REDIS_CA_FILE is set but REDIS_URL is not rediss://"],
    );
    let out = Gwctl::new("http://127.0.0.1:1", &Tokens::random())
        .with_env("GW_CA_FILE", &ca_file)
        .run(&["get", "services"]);
    assert_gwctl_fails(&out, &["GW_CA_FILE is set but", "is not https://"]);
}

#[test]
fn rediss_for_the_control_plane_and_the_data_planes() {
    let _guard = start_test();
    let ca = TestCa::new("redis");
    let server = ca.server("redis");
    let redis = RedisServer::start_tls(RedisTlsFiles {
        cert: server.cert.clone(),
        key: server.key.clone(),
        ca: ca.file.clone(),
    });
    let url = redis.tls_url();
    let ca_file = ca.ca_file();
    let upstream = Upstream::start("echo");

    // Without the CA, or in plaintext, the control plane cannot use it.
    let grpc = format!("127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let cp_args = ["--grpc-addr", &grpc, "--http-addr", &http];
    let open = ("CP_ALLOW_UNAUTHENTICATED", "true");
    assert_start_refused(
        "control-plane",
        &cp_args,
        &[open, ("REDIS_URL", &url)],
        &["cannot use Redis"],
    );
    let plain = url.replacen("rediss://", "redis://", 1);
    assert_start_refused(
        "control-plane",
        &cp_args,
        &[open, ("REDIS_URL", &plain)],
        &["cannot use Redis"],
    );

    let tokens = Tokens::random();
    let cp_env = [("REDIS_CA_FILE", ca_file.as_str())];
    let mut cp = ControlPlaneProc::start_with_env("cp-rediss", Some(&url), &tokens, &cp_env);
    let config = format!(
        "{}    rate_limit: {{ requests: 4, window: 1h }}\n",
        echo_config(&upstream)
    );
    cp.gwctl().apply(&config).success();
    // Durable in the TLS Redis: a restarted control plane still has it.
    cp.restart();
    let routes = cp.gwctl().run(&["get", "routes", "-o", "json"]);
    assert!(routes.success().contains("echo"), "{}", routes.stdout);

    let dp_env = [
        ("REDIS_CA_FILE", ca_file.as_str()),
        ("IP_SALT", "one-salt-for-the-whole-fleet"),
        ("GW_REDIS_TIMEOUT", "500ms"),
    ];
    let mut dps: Vec<DataPlaneProc> = ["dp-r1", "dp-r2"]
        .iter()
        .map(|id| DataPlaneProc::start_with_env(id, &cp.url(), Some(&url), &dp_env))
        .collect();
    for dp in &mut dps {
        dp.wait_ready();
        let health = gateway_tests::http::get(dp.admin, "/health")
            .unwrap()
            .json();
        assert_eq!(health["checks"]["redis"]["status"], "ok", "{health}");
    }
    // One limit of 4 for the fleet: counted in the TLS Redis, not per data plane.
    let mut allowed = 0;
    for i in 0..10 {
        let r = dps[i % 2].send("GET", "/echo/x", &[], b"");
        match r.status {
            200 => allowed += 1,
            429 => {}
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    assert_eq!(allowed, 4, "the limit was not shared through rediss://");

    // A data plane without the CA cannot use it, and says so.
    let untrusting = DataPlaneProc::start_with_env(
        "dp-r3",
        &cp.url(),
        Some(&url),
        &[("IP_SALT", "one-salt-for-the-whole-fleet")],
    );
    wait_until("the untrusting data plane to log", PROPAGATION, || {
        let log = untrusting.log();
        log.contains("cannot reach Redis yet")
            .then_some(())
            .ok_or_else(|| gateway_tests::procs::tail(&log, 20))
    });
}
