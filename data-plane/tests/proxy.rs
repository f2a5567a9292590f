//! The proxy over real sockets: routing and rewriting, headers, request ids,
//! error answers, streaming, balancing, in-flight counts and shutdown.

mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

fn config(upstream: &Upstream) -> String {
    format!(
        r#"
version: 1
services:
  - name: echo
    instances: ["{url}"]
    timeout: 2s
  - name: empty
routes:
  - {{ name: keep, match: {{ path_prefix: /keep }}, service: echo }}
  - {{ name: strip, match: {{ path_prefix: /strip }}, service: echo, strip_prefix: true }}
  - {{ name: moved, match: {{ path_prefix: /old }}, service: echo, rewrite: /new/place }}
  - {{ name: ticket, match: {{ path: "/events/{{event}}/tickets/{{id}}", methods: [GET] }}, service: echo, rewrite: "/tickets/{{id}}?event={{event}}" }}
  - {{ name: exact, match: {{ path: "/users/{{id}}", methods: [GET, PUT] }}, service: echo }}
  - {{ name: small, match: {{ path_prefix: /small }}, service: echo, max_body_bytes: 10 }}
  - {{ name: quick, match: {{ path_prefix: /quick }}, service: echo, timeout: 150ms, strip_prefix: true }}
  - {{ name: host, match: {{ path_prefix: /h, host: api.example.com }}, service: echo, rewrite: /by-host }}
  - {{ name: nothing, match: {{ path_prefix: /empty }}, service: empty }}
"#,
        url = upstream.url()
    )
}

async fn uri_seen(plane: &data_plane::DataPlane, path: &str) -> String {
    let answer = get(plane, path).await;
    assert_eq!(answer.status, 200, "{path}: {}", answer.text());
    answer.json()["uri"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn routes_rewrite_paths_and_keep_queries() {
    let up = Upstream::start("a").await;
    let (plane, _file) = standalone(&config(&up)).await;
    assert_eq!(uri_seen(&plane, "/keep/x?q=1&r=2").await, "/keep/x?q=1&r=2");
    assert_eq!(uri_seen(&plane, "/strip/a/b?q=1").await, "/a/b?q=1");
    assert_eq!(uri_seen(&plane, "/strip").await, "/");
    assert_eq!(uri_seen(&plane, "/strip?x=y").await, "/?x=y");
    assert_eq!(
        uri_seen(&plane, "/old/tail?z=9").await,
        "/new/place/tail?z=9"
    );
    assert_eq!(uri_seen(&plane, "/users/42?x=1").await, "/users/42?x=1");
    assert_eq!(uri_seen(&plane, "/keep/a%20b/x").await, "/keep/a%20b/x");
    get(&plane, "/keep%20it/x")
        .await
        .assert_error(404, "ROUTE_NOT_FOUND");
    // Host routing: the Host header (any case, with port) selects the route.
    let req = Request::get(format!("http://{}/h/1?a=b", plane.listen_addr()))
        .header("host", "API.Example.com:3000")
        .body(empty())
        .unwrap();
    let answer = send(&client(), req).await;
    assert_eq!(answer.json()["uri"], "/by-host/1?a=b");
    plane.shutdown().await;
}

#[tokio::test]
async fn exact_rewrite_fills_parameters() {
    let up = Upstream::start("a").await;
    let (plane, _file) = standalone(&config(&up)).await;
    // The template's own query is kept and the original query is appended.
    let uri = uri_seen(&plane, "/events/e1/tickets/t7").await;
    assert_eq!(uri, "/tickets/t7?event=e1");
    plane.shutdown().await;
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_and_forwarded_headers_set() {
    let up = Upstream::start("a").await;
    let (plane, _file) = standalone(&config(&up)).await;
    let req = Request::get(format!("http://{}/keep/h", plane.listen_addr()))
        .header("host", "shop.example.com")
        .header("connection", "x-drop-me")
        .header("x-drop-me", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic x")
        .header("te", "trailers")
        .header("upgrade", "h2c")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .header("x-custom", "kept")
        .body(empty())
        .unwrap();
    let answer = send(&client(), req).await;
    assert_eq!(answer.status, 200);
    let seen = up.last_headers();
    for gone in [
        "x-drop-me",
        "keep-alive",
        "proxy-authorization",
        "te",
        "upgrade",
    ] {
        assert!(!seen.contains_key(gone), "{gone} reached the upstream");
    }
    assert_eq!(seen["x-custom"], "kept");
    assert_eq!(seen["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "shop.example.com");
    assert_eq!(seen["host"], up.addr.to_string().as_str());
    // Response side: the upstream's hop-by-hop headers do not reach the client.
    assert_eq!(answer.headers["x-upstream"], "a");
    assert!(!answer.headers.contains_key("x-hop"));
    assert!(!answer.headers.contains_key("keep-alive"));
    plane.shutdown().await;
}

#[tokio::test]
async fn request_id_is_kept_or_generated_and_always_returned() {
    let up = Upstream::start("a").await;
    let (plane, _file) = standalone(&config(&up)).await;
    let c = client();
    let req = Request::get(format!("http://{}/keep/id", plane.listen_addr()))
        .header("x-request-id", "trace-123")
        .body(empty())
        .unwrap();
    let answer = send(&c, req).await;
    assert_eq!(answer.headers["x-request-id"], "trace-123");
    assert_eq!(up.last_headers()["x-request-id"], "trace-123");

    // Missing or malformed: a uuid v4 is made, sent upstream and returned.
    let req = Request::get(format!("http://{}/keep/id", plane.listen_addr()))
        .header("x-request-id", "x".repeat(129))
        .body(empty())
        .unwrap();
    let answer = send(&c, req).await;
    let id = answer.headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 4);
    assert_eq!(up.last_headers()["x-request-id"], id.as_str());

    // Errors carry it too, in the header and the body.
    let req = Request::get(format!("http://{}/nowhere", plane.listen_addr()))
        .header("x-request-id", "err-1")
        .body(empty())
        .unwrap();
    let answer = send(&c, req).await;
    let body = answer.assert_error(404, "ROUTE_NOT_FOUND");
    assert_eq!(body["requestId"], "err-1");
    let answer = get(&plane, "/nowhere").await;
    answer.assert_error(404, "ROUTE_NOT_FOUND");
    plane.shutdown().await;
}

#[tokio::test]
async fn gateway_errors_have_the_seed_shape() {
    let up = Upstream::start("a").await;
    let (plane, _file) = standalone(&config(&up)).await;
    let c = client();
    let base = format!("http://{}", plane.listen_addr());

    get(&plane, "/nope")
        .await
        .assert_error(404, "ROUTE_NOT_FOUND");
    let req = Request::delete(format!("{base}/users/1"))
        .body(empty())
        .unwrap();
    send(&c, req).await.assert_error(405, "METHOD_NOT_ALLOWED");
    let v = get(&plane, "/empty/x")
        .await
        .assert_error(503, "NO_HEALTHY_INSTANCE");
    assert_eq!(v["error"], "Service Unavailable");

    // Content-Length over the limit: refused before the upstream is asked.
    let hits = up.hits();
    let req = Request::post(format!("{base}/small/count-body"))
        .body(full("this is more than ten bytes"))
        .unwrap();
    send(&c, req).await.assert_error(413, "PAYLOAD_TOO_LARGE");
    assert_eq!(up.hits(), hits);
    let req = Request::post(format!("{base}/small/count-body"))
        .body(full("ten bytes!"))
        .unwrap();
    assert_eq!(send(&c, req).await.text(), "10");

    // Timeout to the response head.
    let started = Instant::now();
    let v = get(&plane, "/quick/slow/1000")
        .await
        .assert_error(504, "UPSTREAM_TIMEOUT");
    assert!(started.elapsed() < Duration::from_millis(900));
    assert_eq!(v["error"], "Gateway Timeout");
    assert_eq!(get(&plane, "/quick/slow/10").await.status, 200);
    plane.shutdown().await;
}

#[tokio::test]
async fn chunked_bodies_over_the_limit_are_refused_while_streaming() {
    let up = Upstream::start("a").await;
    let (plane, _file) = standalone(&config(&up)).await;
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed();
    let req = Request::post(format!("http://{}/small/count-body", plane.listen_addr()))
        .body(body)
        .unwrap();
    let sender = tokio::spawn(async move {
        for _ in 0..4 {
            if tx
                .send(Ok(Frame::data(Bytes::from_static(b"12345"))))
                .await
                .is_err()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let answer = send(&client(), req).await;
    answer.assert_error(413, "PAYLOAD_TOO_LARGE");
    sender.abort();
    plane.shutdown().await;
}

#[tokio::test]
async fn refused_connections_and_broken_upstreams_map_to_503_and_502() {
    // A port nothing listens on.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    // An upstream that closes every connection without answering.
    let broken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let broken_addr = broken.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = broken.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            drop(s);
        }
    });
    let doc = format!(
        r#"
version: 1
services:
  - {{ name: down, instances: ["http://{closed}"] }}
  - {{ name: broken, instances: ["http://{broken_addr}"] }}
routes:
  - {{ name: down, match: {{ path_prefix: /down }}, service: down }}
  - {{ name: broken, match: {{ path_prefix: /broken }}, service: broken }}
"#
    );
    let (plane, _file) = standalone(&doc).await;
    let v = get(&plane, "/down")
        .await
        .assert_error(503, "UPSTREAM_UNAVAILABLE");
    assert_eq!(v["error"], "Service Unavailable");
    let v = get(&plane, "/broken")
        .await
        .assert_error(502, "BAD_GATEWAY");
    assert_eq!(v["error"], "Bad Gateway");
    let metrics = admin_get(&plane, "/metrics").await.text();
    assert!(
        metrics
            .contains(r#"gateway_upstream_errors_total{service="down",kind="connect_refused"} 1"#),
        "{metrics}"
    );
    plane.shutdown().await;
}

#[tokio::test]
async fn responses_stream_without_buffering() {
    let up = Upstream::start("a").await;
    let (plane, _file) = standalone(&config(&up)).await;
    let resp = client()
        .request(
            Request::get(format!("http://{}/keep/stream", plane.listen_addr()))
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // The first chunk arrives while the upstream still holds the last one.
    let first = tokio::time::timeout(Duration::from_secs(2), body.frame())
        .await
        .expect("first chunk not streamed")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first-chunk;");
    up.release();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "last-chunk");
    plane.shutdown().await;
}

#[tokio::test]
async fn request_bodies_stream_both_ways() {
    let up = Upstream::start("a").await;
    let (plane, _file) = standalone(&config(&up)).await;
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed();
    let req = Request::post(format!("http://{}/keep/echo-body", plane.listen_addr()))
        .body(body)
        .unwrap();
    tx.send(Ok(Frame::data(Bytes::from_static(b"ping-1;"))))
        .await
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let mut echoed = resp.into_body();
    // The echo of the first chunk comes back before the second is sent:
    // neither direction waits for the whole body.
    let first = tokio::time::timeout(Duration::from_secs(2), echoed.frame())
        .await
        .expect("request body was buffered")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "ping-1;");
    tx.send(Ok(Frame::data(Bytes::from_static(b"ping-2"))))
        .await
        .unwrap();
    drop(tx);
    assert_eq!(echoed.collect().await.unwrap().to_bytes(), "ping-2");
    plane.shutdown().await;
}

#[tokio::test]
async fn large_bodies_pass_through() {
    let up = Upstream::start("a").await;
    let (plane, _file) = standalone(&config(&up)).await;
    let size = 8 * 1024 * 1024;
    let req = Request::post(format!("http://{}/keep/count-body", plane.listen_addr()))
        .body(full(vec![b'x'; size]))
        .unwrap();
    assert_eq!(send(&client(), req).await.text(), size.to_string());
    plane.shutdown().await;
}

#[tokio::test]
async fn round_robin_spreads_over_static_instances() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let doc = format!(
        "version: 1\nservices:\n  - {{ name: s, instances: [\"{}\", \"{}\"] }}\nroutes:\n  - {{ name: s, match: {{ path_prefix: / }}, service: s }}\n",
        a.url(),
        b.url()
    );
    let (plane, _file) = standalone(&doc).await;
    for _ in 0..10 {
        assert_eq!(get(&plane, "/x").await.status, 200);
    }
    assert_eq!((a.hits(), b.hits()), (5, 5));
    plane.shutdown().await;
}

#[tokio::test]
async fn in_flight_returns_to_zero_including_on_client_disconnect() {
    let up = Upstream::start("a").await;
    let (plane, _file) = standalone(&config(&up)).await;
    let id = format!("static:echo:127.0.0.1:{}", up.port());
    let runtime = plane.runtime().clone();

    // A client that goes away while the upstream is still working.
    let mut stream = TcpStream::connect(plane.listen_addr()).await.unwrap();
    stream
        .write_all(b"GET /keep/slow/400 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(eventually(Duration::from_secs(2), || runtime.in_flight_of(&id) == 1).await);
    drop(stream);
    assert!(eventually(Duration::from_secs(2), || runtime.in_flight_of(&id) == 0).await);

    // A client that stops reading a streamed body half-way.
    let resp = client()
        .request(
            Request::get(format!("http://{}/keep/stream", plane.listen_addr()))
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = resp.into_body();
    body.frame().await.unwrap().unwrap();
    assert_eq!(runtime.in_flight_of(&id), 1);
    drop(body);
    assert!(eventually(Duration::from_secs(2), || runtime.in_flight_of(&id) == 0).await);

    // Plain requests.
    for _ in 0..5 {
        assert_eq!(get(&plane, "/keep/x").await.status, 200);
    }
    assert_eq!(runtime.in_flight_of(&id), 0);
    let metrics = admin_get(&plane, "/metrics").await.text();
    assert!(
        metrics.contains("gateway_in_flight_requests 0"),
        "{metrics}"
    );
    plane.shutdown().await;
}

#[tokio::test]
async fn admin_endpoints_report_readiness_and_metrics() {
    let up = Upstream::start("a").await;
    let (plane, _file) = standalone(&config(&up)).await;
    assert_eq!(admin_get(&plane, "/health/live").await.status, 200);
    let ready = admin_get(&plane, "/health/ready").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["version"], 1);
    get(&plane, "/keep/m").await;
    get(&plane, "/missing").await;
    let answer = admin_get(&plane, "/metrics").await;
    assert!(answer.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = answer.text();
    for needle in [
        r#"gateway_requests_total{route="keep",service="echo",method="GET",status="200"} 1"#,
        r#"gateway_requests_total{route="",service="",method="GET",status="404"} 1"#,
        r#"gateway_request_duration_seconds_count{route="keep",service="echo"} 1"#,
        "gateway_config_version 1",
        "gateway_control_plane_connected 0",
        r#"gateway_upstream_attempts_total{service="echo"} 1"#,
        // The client connections of the requests above are closed.
        "gateway_open_connections 0",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    // Every family the operator dashboards rely on that this traffic touches
    // is exposed with its type. A family without series is not exposed (as
    // Prometheus's Go client does): retries, breaker state, rate-limit
    // rejections and cache requests appear with their first series, which the
    // end-to-end monitoring test drives.
    for family in [
        "gateway_requests counter",
        "gateway_request_duration_seconds histogram",
        "gateway_upstream_attempts counter",
        "gateway_upstream_errors counter",
        "gateway_open_connections gauge",
        "gateway_in_flight_requests gauge",
        "gateway_config_version gauge",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family}")),
            "missing family {family} in\n{text}"
        );
    }
    plane.shutdown().await;
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let up = Upstream::start("a").await;
    let (plane, _file) = standalone(&config(&up)).await;
    let addr = plane.listen_addr();
    let slow = tokio::spawn(async move {
        let req = Request::get(format!("http://{addr}/keep/slow/500"))
            .body(empty())
            .unwrap();
        send(&client(), req).await
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = Instant::now();
    plane.shutdown().await;
    let answer = slow.await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
}

#[tokio::test]
async fn shutdown_grace_bounds_the_wait() {
    let up = Upstream::start("a").await;
    let (plane, _file) = standalone_with(&config(&up), |s| {
        s.shutdown_grace = Duration::from_millis(200);
    })
    .await;
    let addr = plane.listen_addr();
    let slow = tokio::spawn(async move {
        let req = Request::get(format!("http://{addr}/keep/slow/1500"))
            .body(empty())
            .unwrap();
        client().request(req).await.map(|r| r.status())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    plane.shutdown().await;
    assert!(started.elapsed() < Duration::from_millis(1000));
    assert!(
        slow.await.unwrap().is_err(),
        "the slow request should be cut"
    );
}

#[tokio::test]
async fn upstream_connections_are_reused_and_replaced_when_closed() {
    let up = Upstream::start("a").await;
    let (plane, _file) = standalone(&config(&up)).await;
    for _ in 0..20 {
        assert_eq!(get(&plane, "/keep/x").await.status, 200);
    }
    assert_eq!(
        up.connections(),
        1,
        "sequential requests share one connection"
    );
    // The instance closes after each answer: the next request opens anew.
    for _ in 0..3 {
        assert_eq!(get(&plane, "/keep/close").await.status, 200);
    }
    assert_eq!(get(&plane, "/keep/x").await.status, 200);
    assert_eq!(up.connections(), 4);
    plane.shutdown().await;
}

/// Reads until the peer closes; returns what arrived.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut seen)).await;
    seen
}

#[tokio::test]
async fn slow_request_heads_are_cut_off_but_busy_keep_alive_connections_are_not() {
    let upstream = Upstream::start("u").await;
    let (plane, _file) = standalone_with(&config(&upstream), |s| {
        s.header_read_timeout = Duration::from_millis(400);
    })
    .await;
    let addr = plane.listen_addr();

    // A client that trickles its head never gets it read whole: closed.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let start = Instant::now();
    slow.write_all(b"GET /keep/slow HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut closed_after = None;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if slow.write_all(b"X-Drip: 1\r\n").await.is_err() {
            closed_after = Some(start.elapsed());
            break;
        }
        let mut byte = [0u8; 1];
        if let Ok(Ok(0)) =
            tokio::time::timeout(Duration::from_millis(1), slow.read(&mut byte)).await
        {
            closed_after = Some(start.elapsed());
            break;
        }
    }
    let closed_after = closed_after.expect("the slow client was never cut off");
    assert!(
        closed_after >= Duration::from_millis(400),
        "{closed_after:?}"
    );
    assert!(upstream.hits() == 0, "a partial head reached the upstream");

    // A keep-alive client sending a request every 150 ms outlives the
    // timeout many times over: the deadline restarts with each head.
    let mut busy = TcpStream::connect(addr).await.unwrap();
    for i in 0..12 {
        busy.write_all(format!("GET /keep/{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(2), busy.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "request {i}");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    // An idle keep-alive connection is closed once the timeout passes.
    let idle_since = Instant::now();
    let rest = read_to_close(&mut busy).await;
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    let idle = idle_since.elapsed();
    assert!(
        idle >= Duration::from_millis(200) && idle < Duration::from_secs(3),
        "{idle:?}"
    );
    plane.shutdown().await;
}
