//! HTTPS on the data plane's public side, end to end: a real `data-plane`
//! process in standalone mode with a TLS listener beside the plain one,
//! certificates made here with rcgen, a `test-upstream` that echoes the
//! headers it received, and clients the project did not write: `curl`,
//! Python's `ssl` and `http.client`, and `openssl`. Each is required: a
//! missing one fails the test rather than skipping it.
//!
//! Covered: proxying with `x-forwarded-proto: https` and the listener's
//! port, SNI choosing between two certificates, client certificates (a
//! route that requires one, the subject header and its forgery, a
//! certificate of another CA), rotation (new handshakes get the new
//! certificate while an open keep-alive connection and steady load go on
//! unharmed; a broken file keeps the old one; SIGHUP), refusals at start,
//! the handshake timeout and the metrics and health report.

use gateway_tests::certs::TestCa as Ca;
use gateway_tests::cluster::{start_test, write_temp_file, DataPlaneProc, Upstream};
use gateway_tests::procs::Spec;
use gateway_tests::tools::{self, run, Curl};
use gateway_tests::wait::wait_until;
use gateway_tests::{free_port, http, wait_for_port};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A temporary directory of PEM files, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "gw-tls-edge-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Writes a certificate and its key as `name.crt` and `name.key`.
    fn pair(&self, name: &str, (cert, key): &(String, String)) -> (PathBuf, PathBuf) {
        (
            self.write(&format!("{name}.crt"), cert),
            self.write(&format!("{name}.key"), key),
        )
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config(upstream: &Upstream) -> String {
    format!(
        r#"
version: 1
services:
  - name: echo
    instances: ["{url}"]
routes:
  - name: partner
    match: {{ path_prefix: /partner }}
    service: echo
    auth: {{ required: false, client_cert: required }}
  - name: api
    match: {{ path_prefix: /api }}
    service: echo
"#,
        url = upstream.url()
    )
}

/// A data plane with an HTTPS listener.
struct Gateway {
    dp: DataPlaneProc,
    tls: SocketAddr,
}

fn start(
    name: &str,
    upstream: &Upstream,
    pairs: &[&(PathBuf, PathBuf)],
    extra: &[(&str, &str)],
) -> Gateway {
    let file = write_temp_file(&format!("{name}.yaml"), &config(upstream));
    let tls = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let join = |f: fn(&(PathBuf, PathBuf)) -> &PathBuf| {
        pairs
            .iter()
            .map(|p| f(p).to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(",")
    };
    let (certs, keys) = (join(|p| &p.0), join(|p| &p.1));
    let listen = tls.to_string();
    let mut env = vec![
        ("GW_TLS_LISTEN", listen.as_str()),
        ("GW_TLS_CERT", certs.as_str()),
        ("GW_TLS_KEY", keys.as_str()),
        ("GW_TLS_RELOAD_INTERVAL", "1s"),
        ("GW_TLS_HANDSHAKE_TIMEOUT", "1s"),
    ];
    env.extend_from_slice(extra);
    let dp = DataPlaneProc::standalone_with_env(name, &file, &env);
    wait_for_port(tls, Duration::from_secs(10)).unwrap();
    Gateway { dp, tls }
}

/// `curl` over HTTPS to `name` (resolved to the gateway) with `args`.
fn curl(gw: &Gateway, name: &str, path: &str, args: &[&str]) -> Curl {
    let resolve = format!("{name}:{}:127.0.0.1", gw.tls.port());
    let url = format!("https://{name}:{}{path}", gw.tls.port());
    let mut all = vec!["--resolve", &resolve];
    all.extend_from_slice(args);
    tools::curl(&all, &url)
}

fn header<'a>(echo: &'a Value, name: &str) -> Option<&'a str> {
    echo["headers"][name].as_str()
}

/// The value of the sample `series` (name and labels as printed) in the
/// data plane's `/metrics`.
fn metric(gw: &Gateway, series: &str) -> Option<f64> {
    gw.dp.metrics().lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// SHA-256 (hex) of the certificate the HTTPS listener serves to a client
/// sending `sni` (none: no SNI), read by Python's `ssl`.
fn served(gw: &Gateway, sni: Option<&str>) -> Result<String, String> {
    const SCRIPT: &str = r#"
import hashlib, socket, ssl, sys
port, sni = int(sys.argv[1]), sys.argv[2] or None
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
    with ctx.wrap_socket(sock, server_hostname=sni) as tls:
        print(hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest())
"#;
    let port = gw.tls.port().to_string();
    let out = run("python3", &["-c", SCRIPT, &port, sni.unwrap_or("")], None);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// SHA-256 (hex) of the first certificate of a PEM text.
fn fingerprint(pem: &str) -> String {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let digest = ring::digest::digest(&ring::digest::SHA256, der.as_ref());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn https_requests_are_proxied_as_https_beside_plain_http() {
    let _guard = start_test();
    let dir = Dir::new();
    let ca = Ca::new("edge test CA");
    let ca_file = dir.write("ca.pem", &ca.pem());
    let pair = dir.pair("api", &ca.server(&["api.test"], None));
    let upstream = Upstream::start("echo");
    let gw = start("tls-proxy", &upstream, &[&pair], &[]);
    let ca_path = ca_file.to_string_lossy().into_owned();

    let answer = curl(
        &gw,
        "api.test",
        "/api/x",
        &[
            "--cacert",
            &ca_path,
            "-H",
            "x-forwarded-proto: http",
            "-H",
            "x-forwarded-port: 1",
        ],
    );
    assert!(answer.ok, "{}", answer.stderr);
    assert_eq!(answer.status, 200);
    // curl offers h2 and http/1.1; ALPN settles on h2 (tests/http2.rs
    // covers HTTP/2 itself).
    assert_eq!(answer.version, "2");
    let echo = answer.json();
    assert_eq!(header(&echo, "x-forwarded-proto"), Some("https"));
    let port = gw.tls.port().to_string();
    assert_eq!(header(&echo, "x-forwarded-port"), Some(port.as_str()));
    assert_eq!(header(&echo, "x-client-cert-subject"), None);

    // TLS 1.2 and 1.3 both work; the plain listener is unchanged.
    for version in [&["--tlsv1.2", "--tls-max", "1.2"][..], &["--tlsv1.3"]] {
        let mut args = vec!["--cacert", ca_path.as_str()];
        args.extend_from_slice(version);
        let answer = curl(&gw, "api.test", "/api/v", &args);
        assert_eq!(answer.status, 200, "{version:?}: {}", answer.stderr);
    }
    // TLS 1.1 is refused in the handshake (the client's own floor lowered
    // so that it offers it at all).
    let old = curl(
        &gw,
        "api.test",
        "/api/v",
        &[
            "--cacert",
            &ca_path,
            "--tlsv1.1",
            "--tls-max",
            "1.1",
            "--ciphers",
            "DEFAULT@SECLEVEL=0",
        ],
    );
    assert!(!old.ok, "{}", old.body);
    wait_until("TLS 1.1 counted", Duration::from_secs(5), || {
        match metric(
            &gw,
            r#"gateway_tls_handshake_failures_total{reason="protocol_version"}"#,
        ) {
            Some(n) if n >= 1.0 => Ok(()),
            _ => Err(gw
                .dp
                .metrics()
                .lines()
                .filter(|l| l.starts_with("gateway_tls_handshake"))
                .collect::<Vec<_>>()
                .join("; ")),
        }
    });
    let plain = http::request(
        gw.dp.listen,
        "GET",
        "/api/plain",
        &[("x-forwarded-proto", "https"), ("x-forwarded-port", "443")],
        b"",
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(plain.status, 200);
    let echo = plain.json();
    assert_eq!(header(&echo, "x-forwarded-proto"), Some("http"));
    // As before TLS: a plain request's port header is the client's.
    assert_eq!(header(&echo, "x-forwarded-port"), Some("443"));

    // Without the CA, curl refuses the gateway's certificate (in the
    // handshake); for another name too (curl checks the name once the
    // handshake is done). Neither reaches the upstream.
    let served_before = upstream.served();
    let untrusted = curl(&gw, "api.test", "/api/x", &[]);
    assert!(!untrusted.ok && untrusted.status == 0, "{}", untrusted.body);
    let wrong_name = curl(&gw, "other.test", "/api/x", &["--cacert", &ca_path]);
    assert!(!wrong_name.ok, "{}", wrong_name.body);
    assert_eq!(upstream.served(), served_before);
    // The client aborts with an unknown_ca alert, or just hangs up when
    // its alert is not read first.
    wait_until(
        "the client's refusal counted",
        Duration::from_secs(5),
        || {
            let refused = ["bad_certificate", "closed"]
                .iter()
                .map(|reason| {
                    let series =
                        format!(r#"gateway_tls_handshake_failures_total{{reason="{reason}"}}"#);
                    metric(&gw, &series).unwrap_or(0.0)
                })
                .sum::<f64>();
            if refused >= 1.0 {
                Ok(())
            } else {
                Err(format!("{refused}"))
            }
        },
    );
    assert!(metric(&gw, "gateway_tls_handshakes_total").unwrap() >= 3.0);
}

#[test]
fn sni_chooses_between_certificates_and_the_first_is_the_default() {
    let _guard = start_test();
    let dir = Dir::new();
    let ca = Ca::new("edge test CA");
    let ca_file = dir.write("ca.pem", &ca.pem());
    let first = ca.server(&["api.test"], None);
    let second = ca.server(&["*.partners.test"], None);
    let (a, b) = (dir.pair("a", &first), dir.pair("b", &second));
    let upstream = Upstream::start("echo");
    let gw = start("tls-sni", &upstream, &[&a, &b], &[]);
    let ca_path = ca_file.to_string_lossy().into_owned();

    assert_eq!(
        served(&gw, Some("api.test")).unwrap(),
        fingerprint(&first.0)
    );
    assert_eq!(
        served(&gw, Some("acme.partners.test")).unwrap(),
        fingerprint(&second.0)
    );
    assert_eq!(served(&gw, None).unwrap(), fingerprint(&first.0));
    assert_eq!(
        served(&gw, Some("unknown.test")).unwrap(),
        fingerprint(&first.0)
    );
    // curl verifies each name against the certificate it got.
    for name in ["api.test", "acme.partners.test"] {
        let answer = curl(&gw, name, "/api/sni", &["--cacert", &ca_path]);
        assert_eq!(answer.status, 200, "{name}: {}", answer.stderr);
    }
    // One label only under the wildcard.
    let deeper = curl(
        &gw,
        "a.b.partners.test",
        "/api/sni",
        &["--cacert", &ca_path],
    );
    assert!(!deeper.ok, "{}", deeper.body);
}

#[test]
fn partner_routes_need_a_verified_client_certificate_whose_subject_is_forwarded() {
    let _guard = start_test();
    let dir = Dir::new();
    let ca = Ca::new("edge test CA");
    let clients = Ca::new("partner CA");
    let stranger = Ca::new("someone else's CA");
    let ca_file = dir.write("ca.pem", &ca.pem());
    let client_ca = dir.write("clients.pem", &clients.pem());
    let pair = dir.pair("api", &ca.server(&["api.test"], None));
    let (partner_crt, partner_key) =
        dir.pair("partner", &clients.client("partner-1", "Acme, Inc", &[]));
    let (rogue_crt, rogue_key) = dir.pair("rogue", &stranger.client("partner-1", "Acme, Inc", &[]));
    let upstream = Upstream::start("echo");
    let client_ca_path = client_ca.to_string_lossy().into_owned();
    let gw = start(
        "tls-mtls",
        &upstream,
        &[&pair],
        &[("GW_TLS_CLIENT_CA", client_ca_path.as_str())],
    );
    let ca_path = ca_file.to_string_lossy().into_owned();
    let (pc, pk) = (partner_crt.to_string_lossy(), partner_key.to_string_lossy());
    let with_cert = ["--cacert", &ca_path, "--cert", &pc, "--key", &pk];

    // No certificate: refused, even with a forged subject header.
    let refused = curl(
        &gw,
        "api.test",
        "/partner/orders",
        &[
            "--cacert",
            &ca_path,
            "-H",
            "x-client-cert-subject: CN=admin",
        ],
    );
    assert_eq!(refused.status, 403, "{}", refused.body);
    let error = refused.json();
    assert_eq!(error["code"], "CLIENT_CERTIFICATE_REQUIRED");
    assert_eq!(error["statusCode"], 403);
    assert!(error["requestId"].as_str().is_some_and(|id| !id.is_empty()));

    // A certificate of the partner CA: admitted, its subject forwarded and
    // the client's own copy of the header dropped.
    let mut forged = with_cert.to_vec();
    forged.extend_from_slice(&["-H", "x-client-cert-subject: CN=admin"]);
    let admitted = curl(&gw, "api.test", "/partner/orders", &forged);
    assert_eq!(
        admitted.status, 200,
        "{} {}",
        admitted.body, admitted.stderr
    );
    let echo = admitted.json();
    assert_eq!(
        header(&echo, "x-client-cert-subject"),
        Some(r"CN=partner-1,O=Acme\, Inc")
    );
    assert_eq!(header(&echo, "x-forwarded-proto"), Some("https"));

    // Other routes: a forged header never reaches the upstream; a
    // presented certificate's subject does.
    let open = curl(
        &gw,
        "api.test",
        "/api/x",
        &[
            "--cacert",
            &ca_path,
            "-H",
            "x-client-cert-subject: CN=admin",
        ],
    );
    assert_eq!(open.status, 200);
    assert_eq!(header(&open.json(), "x-client-cert-subject"), None);
    let open = curl(&gw, "api.test", "/api/x", &with_cert);
    assert_eq!(
        header(&open.json(), "x-client-cert-subject"),
        Some(r"CN=partner-1,O=Acme\, Inc")
    );

    // Plain HTTP cannot reach the partner route.
    let plain = http::request(
        gw.dp.listen,
        "GET",
        "/partner/orders",
        &[("x-client-cert-subject", "CN=partner-1,O=Acme\\, Inc")],
        b"",
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(plain.status, 403);
    assert_eq!(plain.json()["code"], "CLIENT_CERTIFICATE_REQUIRED");

    // A certificate of another CA: the handshake itself is refused.
    let served_before = upstream.served();
    let (rc, rk) = (rogue_crt.to_string_lossy(), rogue_key.to_string_lossy());
    let rogue = curl(
        &gw,
        "api.test",
        "/partner/orders",
        &["--cacert", &ca_path, "--cert", &rc, "--key", &rk],
    );
    assert!(
        !rogue.ok && rogue.status == 0,
        "{} {}",
        rogue.body,
        rogue.stderr
    );
    assert_eq!(upstream.served(), served_before);
    wait_until(
        "the refused certificate counted",
        Duration::from_secs(5),
        || match metric(
            &gw,
            r#"gateway_tls_handshake_failures_total{reason="bad_certificate"}"#,
        ) {
            Some(n) if n >= 1.0 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    assert!(gw.dp.log().contains("client_certificate_missing"));
}

/// Opens one keep-alive connection, makes a request, waits for a line on
/// stdin, then makes a second request on the same connection.
const KEEP_ALIVE: &str = r#"
import hashlib, http.client, json, socket, ssl, sys
host, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
raw = socket.create_connection(("127.0.0.1", port), timeout=10)
sock = ctx.wrap_socket(raw, server_hostname=host)
conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=10)
conn.sock = sock
def once(path):
    conn.request("GET", path)
    r = conn.getresponse()
    r.read()
    cert = hashlib.sha256(sock.getpeercert(binary_form=True)).hexdigest()
    print(json.dumps({"status": r.status, "cert": cert, "same": conn.sock is sock}), flush=True)
once("/api/first")
sys.stdin.readline()
once("/api/second")
"#;

/// New connections (a full handshake each) for `seconds` from `threads`
/// threads; prints the counts and the certificates seen.
const LOAD: &str = r#"
import hashlib, http.client, json, socket, ssl, sys, threading, time
host, port, ca, seconds, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
ctx = ssl.create_default_context(cafile=ca)
lock = threading.Lock()
stats = {"ok": 0, "failed": 0, "errors": [], "certs": set()}
end = time.monotonic() + seconds
def work():
    while time.monotonic() < end:
        try:
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock = ctx.wrap_socket(raw, server_hostname=host)
            cert = hashlib.sha256(sock.getpeercert(binary_form=True)).hexdigest()
            conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=10)
            conn.sock = sock
            for _ in range(3):
                conn.request("GET", "/api/load")
                r = conn.getresponse()
                r.read()
                if r.status != 200:
                    raise RuntimeError("status %d" % r.status)
            conn.close()
            with lock:
                stats["ok"] += 1
                stats["certs"].add(cert)
        except Exception as e:
            with lock:
                stats["failed"] += 1
                if len(stats["errors"]) < 5:
                    stats["errors"].append(repr(e))
ts = [threading.Thread(target=work) for _ in range(threads)]
for t in ts: t.start()
for t in ts: t.join()
stats["certs"] = sorted(stats["certs"])
print(json.dumps(stats))
"#;

/// Replaces the files of a pair in place (key first, then certificate: a
/// reader may see the new key with the old certificate for a moment).
fn rewrite(pair: &(PathBuf, PathBuf), new: &(String, String)) {
    std::fs::write(&pair.1, &new.1).unwrap();
    std::fs::write(&pair.0, &new.0).unwrap();
}

fn wait_served(gw: &Gateway, expected: &str, within: Duration) {
    wait_until("the new certificate served", within, || {
        match served(gw, Some("api.test")) {
            Ok(fp) if fp == expected => Ok(()),
            Ok(fp) => Err(format!("still {fp}")),
            Err(e) => Err(e),
        }
    });
}

#[test]
fn rotated_certificates_are_served_without_dropping_connections_or_requests() {
    let _guard = start_test();
    let dir = Dir::new();
    let ca = Ca::new("edge test CA");
    let ca_file = dir.write("ca.pem", &ca.pem());
    let old = ca.server(&["api.test"], None);
    let new = ca.server(&["api.test"], None);
    let pair = dir.pair("api", &old);
    let upstream = Upstream::start("echo");
    let gw = start("tls-rotate", &upstream, &[&pair], &[]);
    let ca_path = ca_file.to_string_lossy().into_owned();
    let port = gw.tls.port().to_string();
    assert_eq!(served(&gw, Some("api.test")).unwrap(), fingerprint(&old.0));

    // A keep-alive connection opened before the rotation.
    let mut keep = Command::new("python3")
        .args(["-c", KEEP_ALIVE, "api.test", &port, &ca_path])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is needed for this test");
    let mut keep_out = std::io::BufReader::new(keep.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut keep_out, &mut line).unwrap();
    let first: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    assert_eq!(first["status"], 200);
    assert_eq!(first["cert"], fingerprint(&old.0));

    // Steady load of new connections across the rotation.
    let load = Command::new("python3")
        .args(["-c", LOAD, "api.test", &port, &ca_path, "5", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is needed for this test");
    std::thread::sleep(Duration::from_millis(1500));
    rewrite(&pair, &new);
    wait_served(&gw, &fingerprint(&new.0), Duration::from_secs(10));
    let load = load.wait_with_output().unwrap();
    let stats: Value = serde_json::from_slice(&load.stdout)
        .unwrap_or_else(|e| panic!("load: {e}: {}", String::from_utf8_lossy(&load.stderr)));
    assert_eq!(stats["failed"], 0, "{stats}");
    assert!(stats["ok"].as_u64().unwrap() > 10, "{stats}");
    let certs = stats["certs"].as_array().unwrap();
    assert_eq!(
        certs.len(),
        2,
        "both certificates served under load: {stats}"
    );

    // The connection opened before goes on, on its old session.
    keep.stdin.take().unwrap().write_all(b"go\n").unwrap();
    line.clear();
    std::io::BufRead::read_line(&mut keep_out, &mut line).unwrap();
    let second: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    assert_eq!(second["status"], 200, "{second}");
    assert_eq!(second["same"], true);
    assert_eq!(second["cert"], fingerprint(&old.0));
    assert!(keep.wait().unwrap().success());
    assert!(gw.dp.log().contains("TLS certificate reloaded"));

    // A broken file: logged, and the certificate served stays.
    std::fs::write(
        &pair.0,
        "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    wait_until("the warning", Duration::from_secs(10), || {
        if gw
            .dp
            .log()
            .contains("the new TLS certificate cannot be used")
        {
            Ok(())
        } else {
            Err("no warning yet".into())
        }
    });
    assert_eq!(served(&gw, Some("api.test")).unwrap(), fingerprint(&new.0));
    let answer = curl(&gw, "api.test", "/api/after", &["--cacert", &ca_path]);
    assert_eq!(answer.status, 200, "{}", answer.stderr);
    // A key of another certificate is refused the same way.
    let stranger = ca.server(&["api.test"], None);
    std::fs::write(&pair.0, &new.0).unwrap();
    std::fs::write(&pair.1, &stranger.1).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(served(&gw, Some("api.test")).unwrap(), fingerprint(&new.0));
    assert!(gw.dp.log().contains("does not hold the private key"));
}

#[test]
fn sighup_reloads_at_once() {
    let _guard = start_test();
    let dir = Dir::new();
    let ca = Ca::new("edge test CA");
    let old = ca.server(&["api.test"], None);
    let new = ca.server(&["api.test"], None);
    let pair = dir.pair("api", &old);
    let upstream = Upstream::start("echo");
    let mut gw = start(
        "tls-hup",
        &upstream,
        &[&pair],
        &[("GW_TLS_RELOAD_INTERVAL", "1h")],
    );
    rewrite(&pair, &new);
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(served(&gw, Some("api.test")).unwrap(), fingerprint(&old.0));
    gw.dp.reload();
    wait_served(&gw, &fingerprint(&new.0), Duration::from_secs(5));
    gw.dp.process().assert_running();
}

#[test]
fn silent_and_non_tls_clients_are_dropped_and_counted_and_expiry_is_reported() {
    let _guard = start_test();
    let dir = Dir::new();
    let ca = Ca::new("edge test CA");
    let soon = dir.pair("soon", &ca.server(&["soon.test"], Some(10)));
    let later = dir.pair("later", &ca.server(&[], None));
    let upstream = Upstream::start("echo");
    let gw = start("tls-timeout", &upstream, &[&soon, &later], &[]);

    // Opens TCP and sends nothing: closed after the 1 s handshake timeout.
    let mut silent = TcpStream::connect(gw.tls).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let read = silent.read(&mut buf);
    let waited = started.elapsed();
    assert!(
        matches!(read, Ok(0)) || read.is_err(),
        "the connection should be closed: {read:?}"
    );
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    wait_until(
        "the timeout counted",
        Duration::from_secs(5),
        || match metric(
            &gw,
            r#"gateway_tls_handshake_failures_total{reason="timeout"}"#,
        ) {
            Some(n) if n >= 1.0 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );

    // Plain HTTP on the HTTPS port.
    let mut plain = TcpStream::connect(gw.tls).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    plain
        .write_all(b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!String::from_utf8_lossy(&answer).contains("HTTP/1.1 200"));
    wait_until("not_tls counted", Duration::from_secs(5), || {
        match metric(
            &gw,
            r#"gateway_tls_handshake_failures_total{reason="not_tls"}"#,
        ) {
            Some(n) if n >= 1.0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });

    // Every reason is exported, at zero when nothing happened.
    for reason in ["protocol_version", "no_shared_cipher", "closed", "other"] {
        let series = format!(r#"gateway_tls_handshake_failures_total{{reason="{reason}"}}"#);
        assert!(metric(&gw, &series).is_some(), "{series} missing");
    }

    // Expiry: by first DNS name, else by file name.
    let left = metric(
        &gw,
        r#"gateway_tls_certificate_expiry_seconds{name="soon.test"}"#,
    )
    .expect("expiry of soon.test");
    assert!((9.0 * 86_400.0..=10.0 * 86_400.0).contains(&left), "{left}");
    let later_left = metric(
        &gw,
        r#"gateway_tls_certificate_expiry_seconds{name="later.crt"}"#,
    )
    .expect("expiry of later.crt");
    assert!(later_left > 365.0 * 86_400.0, "{later_left}");

    // The health report warns about the certificate that expires soon.
    let health = http::get(gw.dp.admin, "/health").unwrap();
    assert_eq!(health.status, 200);
    let report = health.json();
    assert_eq!(report["status"], "degraded", "{report}");
    assert_eq!(report["checks"]["tls"]["status"], "degraded");
    let warning = report["checks"]["tls"]["warning"].as_str().unwrap();
    assert!(
        warning.contains("soon.test expires in 9 day(s)"),
        "{warning}"
    );
    assert_eq!(
        report["checks"]["tls"]["certificates"][1]["name"],
        "later.crt"
    );
}

fn refusal(args: &[&str], env: &[(&str, &str)], config: &Path) -> String {
    let mut spec = Spec::new("data-plane-refused", "data-plane")
        .args(["--config", &config.to_string_lossy()])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(args.iter().copied())
        .env("LOG_LEVEL", "off");
    for (key, value) in env {
        spec = spec.env(*key, *value);
    }
    let out = spec.run(Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} {env:?} started: {stderr}");
    stderr
}

#[test]
fn unusable_tls_settings_refuse_to_start_with_the_reason() {
    let _guard = start_test();
    let dir = Dir::new();
    let ca = Ca::new("edge test CA");
    let (crt, key) = dir.pair("api", &ca.server(&["api.test"], None));
    let (_, other_key) = dir.pair("other", &ca.server(&["other.test"], None));
    let junk = dir.write("junk.pem", "not a certificate\n");
    let config = dir.write(
        "config.yaml",
        "version: 1\nservices: [{ name: echo, instances: [\"http://127.0.0.1:9\"] }]\nroutes: [{ name: api, match: { path_prefix: /api }, service: echo }]\n",
    );
    let s = |p: &PathBuf| p.to_string_lossy().into_owned();
    let (crt, key, other_key, junk) = (s(&crt), s(&key), s(&other_key), s(&junk));
    let missing = s(&dir.0.join("missing.pem"));
    let listen = ["--tls-listen", "127.0.0.1:0"];
    let with = |more: &[&str]| -> Vec<String> {
        listen.iter().chain(more).map(|a| a.to_string()).collect()
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (with(&[]), "GW_TLS_CERT"),
        (with(&["--tls-cert", &crt]), "GW_TLS_KEY"),
        (
            with(&["--tls-cert", &format!("{crt},{crt}"), "--tls-key", &key]),
            "one key per certificate",
        ),
        (
            vec![
                "--tls-cert".into(),
                crt.clone(),
                "--tls-key".into(),
                key.clone(),
            ],
            "need GW_TLS_LISTEN",
        ),
        (
            with(&["--tls-cert", &missing, "--tls-key", &key]),
            "missing.pem",
        ),
        (with(&["--tls-cert", &junk, "--tls-key", &key]), "junk.pem"),
        (
            with(&["--tls-cert", &crt, "--tls-key", &junk]),
            "no PEM private key",
        ),
        (
            with(&["--tls-cert", &crt, "--tls-key", &other_key]),
            "does not hold the private key",
        ),
        (
            with(&[
                "--tls-cert",
                &crt,
                "--tls-key",
                &key,
                "--tls-client-ca",
                &junk,
            ]),
            "client CA",
        ),
    ];
    for (args, needle) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let stderr = refusal(&args, &[], &config);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    // The same through the environment.
    let stderr = refusal(
        &[],
        &[
            ("GW_TLS_LISTEN", "127.0.0.1:0"),
            ("GW_TLS_CERT", &crt),
            ("GW_TLS_KEY", &other_key),
        ],
        &config,
    );
    assert!(stderr.contains("does not hold the private key"), "{stderr}");
}
