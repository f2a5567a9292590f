//! HTTP/2 from clients, end to end: a real `data-plane` process in
//! standalone mode with its plain listener (h2c with prior knowledge) and an
//! HTTPS one (ALPN `h2`), a `test-upstream` behind it (reached over
//! HTTP/1.1 as always), and clients the project did not write: `curl`,
//! `h2load` (nghttp2) and the `h2` crate's client. `curl` and `h2load` are
//! required: a missing one fails the test rather than skipping it.
//!
//! Covered: the same answers over h2, h2c and HTTP/1.1 on both listeners
//! (the upstream's answer, the forwarding headers built from `:authority`,
//! the gateway's own JSON refusals), no connection-specific response
//! headers, a load of multiplexed streams, rapid reset (CVE-2023-44487)
//! closing the offender's connection while another client goes on, and a
//! graceful stop that lets an in-flight stream finish and refuses new ones.

use bytes::{Bytes, BytesMut};
use gateway_tests::certs::TestCa;
use gateway_tests::cluster::{start_test, write_temp_file, DataPlaneProc, Upstream};
use gateway_tests::tools::{curl, run};
use gateway_tests::{free_port, wait_for_port};
use hyper::{Request, StatusCode};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The name the HTTPS listener's certificate is for.
const NAME: &str = "h2.test";
const JWT_SECRET: &str = "http2-test-secret-of-at-least-32-bytes";

fn config(upstream: &Upstream) -> String {
    format!(
        r#"
version: 1
services:
  - name: echo
    instances: ["{url}"]
routes:
  - name: open
    match: {{ path_prefix: /open }}
    service: echo
  - name: secure
    match: {{ path_prefix: /secure }}
    service: echo
    auth: {{}}
"#,
        url = upstream.url()
    )
}

/// A data plane with both listeners, and the CA its certificate is of.
struct Gateway {
    dp: DataPlaneProc,
    tls: SocketAddr,
    ca: PathBuf,
}

impl Gateway {
    fn start(name: &str, upstream: &Upstream, extra: &[(&str, &str)]) -> Self {
        let ca = TestCa::new("http2 test CA");
        let (cert, key) = ca.server(&[NAME], None);
        let cert = write_temp_file("h2.crt", &cert);
        let key = write_temp_file("h2.key", &key);
        let ca = write_temp_file("ca.pem", &ca.pem());
        let file = write_temp_file(&format!("{name}.yaml"), &config(upstream));
        let tls = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let listen = tls.to_string();
        let (cert_path, key_path) = (cert.to_string_lossy(), key.to_string_lossy());
        let mut env = vec![
            ("GW_TLS_LISTEN", listen.as_str()),
            ("GW_TLS_CERT", cert_path.as_ref()),
            ("GW_TLS_KEY", key_path.as_ref()),
            ("JWT_SECRET", JWT_SECRET),
        ];
        env.extend_from_slice(extra);
        let dp = DataPlaneProc::standalone_with_env(name, &file, &env);
        wait_for_port(tls, Duration::from_secs(10)).unwrap();
        Self { dp, tls, ca }
    }

    /// `http://127.0.0.1:PORT` of the plain listener.
    fn plain_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.dp.listen)
    }

    /// `https://h2.test:PORT` of the HTTPS listener.
    fn tls_url(&self, path: &str) -> String {
        format!("https://{NAME}:{}{path}", self.tls.port())
    }

    /// Runs curl against `path` on one listener, in one protocol.
    fn curl(&self, way: Way, path: &str, args: &[&str]) -> gateway_tests::tools::Curl {
        let resolve = format!("{NAME}:{}:127.0.0.1", self.tls.port());
        let ca = self.ca.to_string_lossy().into_owned();
        let mut all: Vec<&str> = match way {
            Way::H2c => vec!["--http2-prior-knowledge"],
            Way::Http1Plain => vec!["--http1.1"],
            Way::H2Tls => vec!["--http2", "--cacert", &ca, "--resolve", &resolve],
            Way::Http1Tls => vec!["--http1.1", "--cacert", &ca, "--resolve", &resolve],
        };
        all.extend_from_slice(args);
        let url = match way {
            Way::H2c | Way::Http1Plain => self.plain_url(path),
            Way::H2Tls | Way::Http1Tls => self.tls_url(path),
        };
        curl(&all, &url)
    }

    /// The value of the sample `series` in the data plane's `/metrics`.
    fn metric(&self, series: &str) -> f64 {
        self.dp
            .metrics()
            .lines()
            .find_map(|line| {
                line.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no {series} in /metrics"))
    }
}

/// A listener and the protocol spoken on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    H2c,
    Http1Plain,
    H2Tls,
    Http1Tls,
}

const WAYS: [Way; 4] = [Way::H2c, Way::Http1Plain, Way::H2Tls, Way::Http1Tls];

impl Way {
    fn version(self) -> &'static str {
        match self {
            Way::H2c | Way::H2Tls => "2",
            Way::Http1Plain | Way::Http1Tls => "1.1",
        }
    }

    fn tls(self) -> bool {
        matches!(self, Way::H2Tls | Way::Http1Tls)
    }
}

/// A gateway refusal without what differs from one answer to the next.
fn refusal(answer: &gateway_tests::tools::Curl) -> Value {
    let mut body = answer.json();
    let object = body.as_object_mut().expect("a JSON object");
    for volatile in ["timestamp", "requestId"] {
        assert!(object.remove(volatile).is_some(), "{volatile} in {body:?}");
    }
    body
}

#[test]
fn h2_and_h2c_get_the_answers_http1_gets() {
    let _guard = start_test();
    let upstream = Upstream::start("echo");
    let gw = Gateway::start("h2-answers", &upstream, &[]);

    let mut refusals = Vec::new();
    for way in WAYS {
        let answer = gw.curl(way, "/open/x?q=1", &["-H", "x-forwarded-proto: spoofed"]);
        assert!(answer.ok, "{way:?}: {}", answer.stderr);
        assert_eq!(
            (answer.status, answer.version.as_str()),
            (200, way.version()),
            "{way:?}"
        );
        let echo = answer.json();
        assert_eq!(echo["path"], "/open/x", "{way:?}");
        assert_eq!(echo["method"], "GET");
        let headers = &echo["headers"];
        // Upstream: HTTP/1.1 with the instance as Host; the client's host
        // (its Host header, or over h2 its :authority) as X-Forwarded-Host.
        assert_eq!(headers["host"], upstream.address(), "{way:?}");
        let client_host = if way.tls() {
            format!("{NAME}:{}", gw.tls.port())
        } else {
            gw.dp.listen.to_string()
        };
        assert_eq!(headers["x-forwarded-host"], client_host.as_str(), "{way:?}");
        let proto = if way.tls() { "https" } else { "http" };
        assert_eq!(headers["x-forwarded-proto"], proto, "{way:?}");
        assert!(headers["x-request-id"].is_string(), "{way:?}");

        // A request body streams through.
        let posted = gw.curl(way, "/open/post", &["--data-binary", "hello over h2"]);
        assert_eq!(posted.status, 200, "{way:?}: {}", posted.stderr);
        assert_eq!(posted.json()["body"], "hello over h2", "{way:?}");

        // The gateway's own refusals: same status, same JSON.
        let id = ["-H", "x-request-id: same-id-for-all"];
        let missed = gw.curl(way, "/nowhere", &id);
        assert_eq!(missed.status, 404, "{way:?}: {}", missed.stderr);
        let refused = gw.curl(way, "/secure/x", &id);
        assert_eq!(refused.status, 401, "{way:?}: {}", refused.stderr);
        refusals.push((way, refusal(&missed), refusal(&refused)));
    }
    let (_, missed, refused) = &refusals[1];
    assert_eq!(missed["statusCode"], 404, "{missed}");
    assert_eq!(refused["statusCode"], 401, "{refused}");
    for (way, m, r) in &refusals {
        assert_eq!((m, r), (missed, refused), "{way:?}");
    }

    // No connection-specific field reaches an HTTP/2 client.
    for way in [Way::H2c, Way::H2Tls] {
        let head = gw.curl(way, "/open/head", &["-D", "-", "-o", "/dev/null"]);
        assert_eq!(head.status, 200, "{way:?}: {}", head.stderr);
        let head = head.body.to_ascii_lowercase();
        for field in [
            "connection:",
            "keep-alive:",
            "transfer-encoding:",
            "upgrade:",
        ] {
            assert!(
                !head.lines().any(|l| l.starts_with(field)),
                "{way:?}: {field} in {head}"
            );
        }
    }

    // An HTTP/2 request whose Host names another authority than its
    // :authority is refused (curl would turn the Host into the :authority).
    let addr = gw.dp.listen;
    runtime().block_on(async {
        let (send, _conn) = h2c(addr).await;
        let mut both = get(addr, "/open/x");
        both.headers_mut().insert(
            "host",
            hyper::header::HeaderValue::from_static("elsewhere.test"),
        );
        let (status, body) = fetch(&send, both).await.unwrap();
        assert_eq!(status, 400, "{body:?}");
        let mut agreeing = get(addr, "/open/x");
        let host = hyper::header::HeaderValue::from_str(&addr.to_string()).unwrap();
        agreeing.headers_mut().insert("host", host);
        let (status, _) = fetch(&send, agreeing).await.unwrap();
        assert_eq!(status, 200);
    });

    // Each curl run is one connection: four per way, two more with h2, and
    // the h2 crate's.
    assert_eq!(
        gw.metric("gateway_connections_total{protocol=\"http1\"}"),
        8.0
    );
    assert_eq!(
        gw.metric("gateway_connections_total{protocol=\"h2\"}"),
        11.0
    );
}

/// The counts `h2load` printed: (succeeded, 2xx).
fn h2load(url: &str) -> (u64, u64, String) {
    let out = run(
        "h2load",
        &["-n", "2000", "-c", "4", "-m", "16", "-T", "30", url],
        None,
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "h2load: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let count = |prefix: &str, suffix: &str| -> u64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in {text}"));
        line.split(", ")
            .find_map(|part| part.trim_start_matches(prefix).trim().strip_suffix(suffix))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {suffix:?} in {line:?}"))
    };
    (
        count("requests:", " succeeded"),
        count("status codes:", " 2xx"),
        text,
    )
}

#[test]
fn h2load_streams_get_only_2xx_on_both_listeners() {
    let _guard = start_test();
    let upstream = Upstream::start("echo");
    let gw = Gateway::start("h2-load", &upstream, &[]);
    // h2load speaks h2c with prior knowledge to an http URL, and h2 (ALPN)
    // to an https one; it does not check certificates.
    let tls = format!("https://127.0.0.1:{}/open/load", gw.tls.port());
    for url in [gw.plain_url("/open/load"), tls] {
        let (succeeded, ok, text) = h2load(&url);
        assert_eq!((succeeded, ok), (2000, 2000), "{url}: {text}");
    }
}

/// An h2c connection made with the `h2` crate, its connection task running.
async fn h2c(
    addr: SocketAddr,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    (send, tokio::spawn(conn))
}

fn get(addr: SocketAddr, path: &str) -> Request<()> {
    Request::get(format!("http://{addr}{path}"))
        .body(())
        .unwrap()
}

/// One GET on `send`'s connection: its status and body.
async fn fetch(
    send: &h2::client::SendRequest<Bytes>,
    req: Request<()>,
) -> Result<(StatusCode, Bytes), h2::Error> {
    let mut send = send.clone().ready().await?;
    let (response, _) = send.send_request(req, true)?;
    let response = response.await?;
    let status = response.status();
    let mut body = response.into_body();
    let mut bytes = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    Ok((status, bytes.freeze()))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn rapid_reset_closes_the_offending_connection_and_no_other() {
    let _guard = start_test();
    let upstream = Upstream::start("echo");
    let gw = Gateway::start("h2-reset", &upstream, &[]);
    let addr = gw.dp.listen;
    runtime().block_on(async {
        let (polite, polite_conn) = h2c(addr).await;
        let (status, _) = fetch(&polite, get(addr, "/open/before")).await.unwrap();
        assert_eq!(status, 200);

        // Streams opened and cancelled at once, in bursts of 50 on one
        // connection: each HEADERS is followed by its RST_STREAM, and the
        // client's connection task writes a burst out in one go. Small bursts,
        // so that the client has written everything when the gateway answers
        // and reads its GOAWAY rather than a broken pipe.
        let (attacker, mut attacker_conn) = h2c(addr).await;
        let attacker = attacker.ready().await.unwrap();
        let mut sent = 0;
        let mut ended = None;
        'bursts: for _ in 0..100 {
            for _ in 0..50 {
                let mut stream = attacker.clone();
                match stream.send_request(get(addr, &format!("/open/reset-{sent}")), true) {
                    Ok((_response, mut body)) => {
                        body.send_reset(h2::Reason::CANCEL);
                        sent += 1;
                    }
                    Err(_) => break 'bursts,
                }
            }
            if let Ok(end) =
                tokio::time::timeout(Duration::from_millis(20), &mut attacker_conn).await
            {
                ended = Some(end.unwrap());
                break;
            }
        }
        let ended = match ended {
            Some(ended) => ended,
            None => tokio::time::timeout(Duration::from_secs(10), attacker_conn)
                .await
                .expect("the offending connection is closed")
                .unwrap(),
        };
        let error = ended.expect_err("the offending connection ends in an error");
        assert!(
            error.is_go_away() && error.is_remote(),
            "{error:?} after {sent} streams"
        );
        assert_eq!(
            error.reason(),
            Some(h2::Reason::ENHANCE_YOUR_CALM),
            "{error}"
        );
        assert!(sent <= 5000, "{sent}");

        // The other client's connection goes on, and new ones are served.
        for i in 0..20 {
            let (status, _) = fetch(&polite, get(addr, &format!("/open/after-{i}")))
                .await
                .unwrap();
            assert_eq!(status, 200);
        }
        assert!(!polite_conn.is_finished());
        let (fresh, _conn) = h2c(addr).await;
        let (status, _) = fetch(&fresh, get(addr, "/open/fresh")).await.unwrap();
        assert_eq!(status, 200);
    });
    // The polite client's 22 requests reached the upstream; the cancelled
    // streams were refused before they were accepted (all of them, when a
    // burst is read at once), so fewer than a burst did.
    let served = upstream.served();
    assert!(
        (22..22 + 50).contains(&served),
        "{served} reached the upstream"
    );
}

#[test]
fn sigterm_lets_an_inflight_stream_finish_and_refuses_new_ones() {
    let _guard = start_test();
    let upstream = Upstream::start("echo");
    let mut gw = Gateway::start("h2-stop", &upstream, &[("GW_SHUTDOWN_GRACE", "10s")]);
    let addr = gw.dp.listen;
    let rt = runtime();
    let (send, conn) = rt.block_on(h2c(addr));
    let slow = rt.spawn({
        let send = send.clone();
        async move { fetch(&send, get(addr, "/open/slow?delay_ms=2000")).await }
    });
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(500)).await });
    gw.dp.process().terminate();
    rt.block_on(async {
        // The GOAWAY has come by now; a new stream on the same connection is
        // not served.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let late = fetch(&send, get(addr, "/open/late")).await;
        assert!(late.is_err(), "a stream opened after the GOAWAY: {late:?}");
        // Nor is a new connection.
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
        let (status, body) = slow.await.unwrap().expect("the in-flight stream finishes");
        assert_eq!(status, 200);
        let echo: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(echo["path"], "/open/slow");
        // The connection then ends cleanly.
        let ended = tokio::time::timeout(Duration::from_secs(5), conn)
            .await
            .expect("the connection closes after its last stream")
            .unwrap();
        if let Err(e) = ended {
            assert_eq!(e.reason(), Some(h2::Reason::NO_ERROR), "{e}");
        }
    });
    let status = gw.dp.process().wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    assert_eq!(
        upstream.served(),
        1,
        "the late stream never reached the upstream"
    );
}
