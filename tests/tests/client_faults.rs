//! A client's faults are the client's: request bodies that are malformed,
//! cut short or too slow are answered to the client (400, 499, 408) and
//! never counted against the upstream (breaker, outlier detection, upstream
//! error metrics); an early answer (413) reaches a client that sends its
//! whole body before reading; a retry does not steal the next request's
//! round-robin turn. Real `data-plane` and `test-upstream` processes; the
//! broken requests are written byte for byte on raw sockets, and the 413
//! case uses Python's `http.client`.

use gateway_tests::cluster::{start_test, write_temp_file, DataPlaneProc, Upstream};
use gateway_tests::http::{parse_response, raw_exchange};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

/// A service behind a breaker and outlier detection that a handful of
/// failures would trip, so that any failure blamed on it shows.
fn config(upstreams: &[&Upstream]) -> String {
    let instances = upstreams
        .iter()
        .map(|u| format!("\"{}\"", u.url()))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
version: 1
services:
  - name: app
    timeout: 800ms
    instances: [{instances}]
    circuit_breaker: {{ error_threshold_percent: 50, volume_threshold: 3, reset_timeout: 60s, rolling_window: 60s, rolling_buckets: 6 }}
    outlier_detection: {{ consecutive_failures: 2, base_ejection_time: 60s }}
routes:
  - name: app
    match: {{ path_prefix: /app }}
    service: app
    strip_prefix: true
    max_body_bytes: 4096
"#
    )
}

fn start(node: &str, yaml: &str) -> DataPlaneProc {
    let file = write_temp_file("client-faults.yaml", yaml);
    DataPlaneProc::standalone_with_env(node, &file, &[("LOG_FORMAT", "json")])
}

/// The sum of the series of `name` whose labels name service `app`.
fn app_series(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l.contains("service=\"app\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Nothing was blamed on the service, and it still answers.
fn assert_upstream_unblamed(dp: &DataPlaneProc) {
    let metrics = dp.metrics();
    assert_eq!(
        app_series(&metrics, "gateway_upstream_errors_total"),
        0.0,
        "upstream errors counted:\n{metrics}"
    );
    assert_eq!(
        app_series(&metrics, "gateway_outlier_ejections_total"),
        0.0,
        "an instance was ejected:\n{metrics}"
    );
    assert_eq!(
        app_series(&metrics, "gateway_circuit_breaker_state"),
        0.0,
        "the breaker is not closed:\n{metrics}"
    );
    for _ in 0..4 {
        let r = dp.send("GET", "/app/ok", &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

fn chunked_head(dp: &DataPlaneProc, id: &str) -> String {
    format!(
        "POST /app/upload HTTP/1.1\r\nHost: {}\r\nX-Request-ID: {id}\r\nTransfer-Encoding: chunked\r\n\r\n",
        dp.listen
    )
}

#[test]
fn malformed_chunked_bodies_get_400_and_are_not_blamed_on_the_upstream() {
    let _test = start_test();
    let u = Upstream::start("faults-1");
    let dp = start("dp-malformed", &config(&[&u]));
    let bodies: [&[u8]; 4] = [
        // An invalid chunk size after a good chunk that already went out.
        b"5\r\nhello\r\nzz\r\nabc\r\n0\r\n\r\n",
        // A chunk size that overflows 64 bits.
        b"5\r\nhello\r\nfffffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
        // Chunk data not followed by its CRLF.
        b"5\r\nhelloXX3\r\nabc\r\n0\r\n\r\n",
        // A chunk-size line that is not a number at all.
        b"-1\r\nhello\r\n0\r\n\r\n",
    ];
    for round in 0..3 {
        for (i, body) in bodies.iter().enumerate() {
            let id = format!("malformed-{round}-{i}");
            let raw = raw_exchange(
                dp.listen,
                chunked_head(&dp, &id).as_bytes(),
                Duration::from_millis(20),
                body,
                false,
                Duration::from_secs(5),
            )
            .unwrap();
            let r = parse_response(&raw, false).unwrap_or_else(|e| panic!("{id}: {e}"));
            assert_eq!(r.status, 400, "{id}: {}", r.text());
            assert_eq!(r.json()["code"], "BAD_REQUEST", "{id}: {}", r.text());
            assert_eq!(r.header("x-request-id"), Some(id.as_str()));
        }
    }
    assert_upstream_unblamed(&dp);
}

#[test]
fn a_client_that_hangs_up_mid_body_is_logged_as_499_and_not_blamed_on_the_upstream() {
    let _test = start_test();
    let u = Upstream::start("faults-2");
    let dp = start("dp-hangup", &config(&[&u]));
    for i in 0..6 {
        let id = format!("hangup-{i}");
        let head = format!(
            "POST /app/upload HTTP/1.1\r\nHost: {}\r\nX-Request-ID: {id}\r\nContent-Length: 1000\r\n\r\n",
            dp.listen
        );
        // 10 of the 1000 bytes, then the client closes its side.
        let raw = raw_exchange(
            dp.listen,
            head.as_bytes(),
            Duration::from_millis(50),
            b"0123456789",
            true,
            Duration::from_secs(5),
        )
        .unwrap();
        // Whatever reaches a client that is gone, it is not the upstream's 5xx.
        if let Ok(r) = parse_response(&raw, false) {
            assert_eq!(r.status, 499, "{id}: {}", r.text());
        }
    }
    // A client that leaves while the upstream is still working on its
    // request: nginx's 499 too, not the status the upstream never sent.
    let head = format!(
        "GET /app/slow?delay_ms=600 HTTP/1.1\r\nHost: {}\r\nX-Request-ID: gone-early\r\n\r\n",
        dp.listen
    );
    {
        let mut stream = std::net::TcpStream::connect(dp.listen).unwrap();
        std::io::Write::write_all(&mut stream, head.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    gateway_tests::cluster::wait_until("the 499 lines", Duration::from_secs(5), || {
        let lines = access_lines(&dp.log());
        let hangups = lines
            .iter()
            .filter(|l| {
                l["request_id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with("hangup-"))
                    && l["status"] == 499
            })
            .count();
        let early = lines
            .iter()
            .any(|l| l["request_id"] == "gone-early" && l["status"] == 499);
        if hangups == 6 && early {
            Ok(())
        } else {
            Err(format!(
                "{hangups} hang-ups logged as 499, the early leaver: {early}"
            ))
        }
    });
    assert_upstream_unblamed(&dp);
}

#[test]
fn a_body_that_does_not_arrive_in_time_gets_408_not_an_upstream_timeout() {
    let _test = start_test();
    let u = Upstream::start("faults-3");
    let dp = start("dp-slow-body", &config(&[&u]));
    for i in 0..4 {
        let id = format!("slow-{i}");
        let head = format!(
            "POST /app/upload HTTP/1.1\r\nHost: {}\r\nX-Request-ID: {id}\r\nContent-Length: 100\r\n\r\n0123456789",
            dp.listen
        );
        // The rest never comes within the route's 800 ms.
        let raw = raw_exchange(
            dp.listen,
            head.as_bytes(),
            Duration::ZERO,
            b"",
            false,
            Duration::from_secs(5),
        )
        .unwrap();
        let r = parse_response(&raw, false).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(r.status, 408, "{id}: {}", r.text());
        assert_eq!(r.json()["code"], "REQUEST_TIMEOUT", "{id}: {}", r.text());
    }
    // A slow upstream is still the upstream's fault.
    let r = dp.send("POST", "/app/x?delay_ms=2000", &[], b"whole body");
    assert_eq!(r.status, 504, "{}", r.text());
    let metrics = dp.metrics();
    assert_eq!(
        app_series(&metrics, "gateway_upstream_errors_total"),
        1.0,
        "{metrics}"
    );
}

/// Python's `http.client` sends the whole body before it reads the answer:
/// the 413 must still reach it, every time.
#[test]
fn a_413_reaches_a_client_that_sends_its_whole_body_before_reading() {
    let _test = start_test();
    let u = Upstream::start("faults-4");
    let dp = start("dp-413", &config(&[&u]));
    let script = r#"
import http.client, json, sys
host, port = sys.argv[1].rsplit(":", 1)
body = b"x" * (8 * 1024 * 1024)
results = []
for i in range(10):
    conn = http.client.HTTPConnection(host, int(port), timeout=20)
    try:
        conn.request("POST", "/app/upload", body=body, headers={"Content-Type": "application/octet-stream"})
        response = conn.getresponse()
        results.append({"status": response.status, "body": json.loads(response.read())})
    except Exception as e:
        results.append({"error": type(e).__name__ + ": " + str(e)})
    finally:
        conn.close()
print(json.dumps(results))
"#;
    let output = Command::new("python3")
        .args(["-c", script, &dp.listen.to_string()])
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(results.len(), 10);
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result["status"], 413, "upload {i}: {result}");
        assert_eq!(result["body"]["code"], "PAYLOAD_TOO_LARGE", "upload {i}");
    }
    assert_eq!(u.served(), 0, "nothing reached the upstream");
}

#[test]
fn with_one_failing_instance_of_two_first_attempts_split_evenly() {
    let _test = start_test();
    let good = Upstream::start("rr-good");
    let bad = Upstream::start("rr-bad");
    bad.set_fail(503);
    let yaml = format!(
        r#"
version: 1
services:
  - name: app
    timeout: 2s
    instances: ["{}", "{}"]
    retry: {{ max_attempts: 2, base_delay: 1ms, max_delay: 5ms, retry_on: [503] }}
routes:
  - name: app
    match: {{ path_prefix: /app }}
    service: app
    strip_prefix: true
"#,
        good.url(),
        bad.url()
    );
    let dp = start("dp-rr", &yaml);
    for i in 0..20 {
        let r = dp.send("GET", "/app/x", &[], b"");
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.upstream(), "rr-good");
    }
    // Every request that started on the failing instance was retried on
    // the good one: 20 requests, about 10 first attempts on each.
    let first_on_bad = bad.served();
    assert!(
        (8..=12).contains(&first_on_bad),
        "{first_on_bad} of 20 first attempts went to the failing instance"
    );
    assert_eq!(good.served(), 20);
}

/// The access-log lines of a log written with LOG_FORMAT=json.
fn access_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|v| v["target"] == "access")
        .collect()
}
