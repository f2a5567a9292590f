//! Aggregate routes and webhook routes over real processes: a standalone
//! data plane in front of `test-upstream` instances.

use gateway_tests::cluster::{start_test, write_temp_file, DataPlaneProc, Upstream};
use gateway_tests::free_port;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const JWT_SECRET: &str = "aggregation-test-secret-of-32-bytes!";
const STRIPE_SECRET: &str = "whsec_test_secret";

struct Platform {
    dp: DataPlaneProc,
    event: Upstream,
    ticket: Upstream,
    nft: Upstream,
    payment: Upstream,
}

fn platform() -> Platform {
    let event = Upstream::start("event");
    let ticket = Upstream::start("ticket");
    let nft = Upstream::start("nft");
    let payment = Upstream::start_with_args("payment", &["--stripe-secret", STRIPE_SECRET]);
    // Nothing listens there: connections are refused.
    let down = format!("http://127.0.0.1:{}", free_port());
    let yaml = format!(
        r#"
version: 1
services:
  - {{ name: event, instances: ["{event}"] }}
  - {{ name: ticket, instances: ["{ticket}"] }}
  - {{ name: nft, instances: ["{nft}"] }}
  - {{ name: venue, instances: ["{down}"] }}
  - {{ name: payment, instances: ["{payment}"] }}
  - {{ name: payment-down, instances: ["{down}"] }}
routes:
  - name: dashboard
    match: {{ path: "/api/v1/dashboard/{{userId}}", methods: [GET] }}
    auth: {{}}
    aggregate:
      sources:
        - {{ name: profile, service: event, path: "/users/{{userId}}", required: true, select: {{ id: id, displayName: name, city: address.city }} }}
        - name: tickets
          service: ticket
          path: "/users/{{userId}}/tickets"
          required: true
          split_by_time: {{ field: event_date, into: {{ upcoming: after_now, past: before_now }} }}
        - {{ name: nfts, service: nft, path: "/users/{{userId}}/nfts?delay_ms=5000", timeout: 300ms, fallback: [] }}
        - {{ name: echo, service: event, path: "/echo/{{userId}}", forward_query: true }}
  - name: broken
    match: {{ path: "/api/v1/events/{{id}}/details", methods: [GET] }}
    aggregate:
      sources:
        - {{ name: event, service: event, path: "/events/{{id}}", required: true }}
        - {{ name: venue, service: venue, path: "/events/{{id}}/venue", required: true }}
  - name: failing
    match: {{ path: "/api/v1/failing/{{id}}", methods: [GET] }}
    aggregate:
      sources:
        - {{ name: event, service: event, path: "/events/{{id}}" , required: true }}
        - {{ name: tickets, service: ticket, path: "/events/{{id}}/availability?status=500", required: true }}
  - name: stripe
    match: {{ path: /webhooks/stripe, methods: [POST] }}
    service: payment
    rewrite: /api/v1/webhooks/stripe
    webhook: {{ provider: stripe }}
  - name: stripe-down
    match: {{ path: /down/webhooks/stripe, methods: [POST] }}
    service: payment-down
    webhook: {{ provider: stripe }}
  - name: webhooks
    match: {{ path_prefix: /webhooks, methods: [POST] }}
    service: payment
    rewrite: /api/v1/webhooks
    webhook: {{ provider: generic }}
"#,
        event = event.url(),
        ticket = ticket.url(),
        nft = nft.url(),
        payment = payment.url(),
    );
    let file = write_temp_file("aggregation.yaml", &yaml);
    let dp = DataPlaneProc::standalone_with_env("agg", &file, &[("JWT_SECRET", JWT_SECRET)]);
    Platform {
        dp,
        event,
        ticket,
        nft,
        payment,
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token() -> String {
    let claims = json!({
        "sub": "user-42", "tenant_id": "tenant-a", "type": "access", "role": "customer",
        "iat": now_secs(), "exp": now_secs() + 900,
    });
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

fn ids(list: &Value) -> Vec<i64> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|t| t["id"].as_i64().unwrap())
        .collect()
}

#[test]
fn aggregate_merges_transforms_falls_back_and_passes_the_identity() {
    let _guard = start_test();
    let p = platform();
    p.event.respond(
        "/users/42",
        &json!({"id": 42, "name": "Ada", "email": "ada@example.com", "address": {"city": "Oslo"}}),
    );
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    p.ticket.respond(
        "/users/42/tickets",
        &json!([
            {"id": 1, "event_date": now_ms + 3_600_000},
            {"id": 2, "event_date": now_ms - 3_600_000},
            {"id": 3, "event_date": "2999-01-01T20:00:00+01:00"},
            {"id": 4, "event_date": "2001-01-01T20:00:00Z"},
            {"id": 5, "event_date": "soon"},
        ]),
    );
    p.nft.respond("/users/42/nfts", &json!([{"id": "nft-1"}]));

    let bearer = format!("Bearer {}", token());
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let started = Instant::now();
    let r = p.dp.send(
        "GET",
        "/api/v1/dashboard/42?page=2",
        &[
            ("authorization", &bearer),
            ("x-request-id", "req-agg-1"),
            ("traceparent", traceparent),
            // A client cannot pose as someone else: removed at the edge.
            ("x-user-id", "intruder"),
        ],
        b"",
    );
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();

    assert_eq!(
        body["profile"],
        json!({"id": 42, "displayName": "Ada", "city": "Oslo"})
    );
    assert_eq!(ids(&body["tickets"]["upcoming"]), [1, 3]);
    assert_eq!(ids(&body["tickets"]["past"]), [2, 4]);

    // The slow optional source fell back within its 300 ms, not its 5 s.
    assert_eq!(body["nfts"], json!([]));
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let meta = &body["_metadata"];
    assert!(meta["timestamp"].as_str().unwrap().ends_with('Z'));
    let nfts = &meta["sources"]["nfts"];
    assert_eq!(nfts["success"], false);
    assert_eq!(nfts["fallback"], true);
    assert_eq!(nfts["required"], false);
    assert!(nfts["error"].as_str().unwrap().contains("no answer within"));
    let latency = nfts["latency_ms"].as_u64().unwrap();
    assert!((250..3000).contains(&latency), "latency {latency}");
    for name in ["profile", "tickets", "echo"] {
        assert_eq!(meta["sources"][name]["success"], true, "{name}: {meta}");
        assert_eq!(meta["sources"][name]["fallback"], false, "{name}");
    }

    // Every source got the caller's verified identity and trace headers.
    let echo = &body["echo"];
    assert_eq!(echo["path"], "/echo/42");
    assert_eq!(echo["query"], "page=2");
    assert_eq!(echo["method"], "GET");
    let headers = &echo["headers"];
    assert_eq!(headers["x-user-id"], "user-42");
    assert_eq!(headers["x-tenant-id"], "tenant-a");
    assert_eq!(headers["x-request-id"], "req-agg-1");
    assert_eq!(headers["traceparent"], traceparent);
    assert_eq!(headers["accept"], "application/json");
    assert!(headers["x-request-deadline-ms"].as_str().is_some());

    // The route's auth policy applies to the aggregate as to any route.
    let r = p.dp.send("GET", "/api/v1/dashboard/42", &[], b"");
    assert_eq!(r.status, 401, "{}", r.text());
    // Only GET is aggregated.
    let r = p.dp.send(
        "POST",
        "/api/v1/dashboard/42",
        &[("authorization", &bearer)],
        b"{}",
    );
    assert_eq!(r.status, 405, "{}", r.text());

    // An optional source that fails outright also falls back.
    p.nft.set_fail(503);
    let r = p.dp.send(
        "GET",
        "/api/v1/dashboard/42",
        &[("authorization", &bearer)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["_metadata"]["sources"]["nfts"]["fallback"], true);
}

#[test]
fn a_failing_required_source_fails_the_request_naming_it() {
    let _guard = start_test();
    let p = platform();
    let r = p.dp.send(
        "GET",
        "/api/v1/events/7/details",
        &[("x-request-id", "req-broken")],
        b"",
    );
    assert_eq!(r.status, 502, "{}", r.text());
    let body = r.json();
    assert_eq!(body["code"], "AGGREGATE_SOURCE_FAILED");
    assert_eq!(body["requestId"], "req-broken");
    assert_eq!(
        body["message"],
        "Required source 'venue' failed: connection refused"
    );

    let r = p.dp.send("GET", "/api/v1/failing/7", &[], b"");
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(
        r.json()["message"],
        "Required source 'tickets' failed: answered 500"
    );

    // A required source failing fast decides the answer at once: the
    // slow one is not waited for.
    p.event.set_delay(5000);
    let started = Instant::now();
    let r = p.dp.send("GET", "/api/v1/events/7/details", &[], b"");
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        r.json()["message"],
        "Required source 'venue' failed: connection refused"
    );

    // A required source whose answer does not fit its transform fails.
    let bearer = format!("Bearer {}", token());
    let auth = [("authorization", bearer.as_str())];
    p.event.set_delay(0);
    let r = p.dp.send("GET", "/api/v1/dashboard/42", &auth, b"");
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(
        r.json()["message"],
        "Required source 'tickets' failed: cannot split an object by time"
    );

    // A slow required source fails the request once its timeout (2 s by
    // default) is spent.
    p.ticket.respond("/users/42/tickets", &json!([]));
    p.event.set_delay(5000);
    let started = Instant::now();
    let r = p.dp.send("GET", "/api/v1/dashboard/42", &auth, b"");
    assert_eq!(r.status, 502, "{}", r.text());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert_eq!(
        r.json()["message"],
        "Required source 'profile' failed: no answer within 2000 ms"
    );
}

fn stripe_signature(timestamp: u64, payload: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, STRIPE_SECRET.as_bytes());
    let mut signed = format!("{timestamp}.").into_bytes();
    signed.extend_from_slice(payload);
    let mac: String = ring::hmac::sign(&key, &signed)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("t={timestamp},v1={mac}")
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn stripe_webhooks_reach_the_service_byte_for_byte_and_failures_are_500() {
    let _guard = start_test();
    let p = platform();
    // Odd spacing, key order, escapes, non-ASCII and a trailing newline:
    // anything re-serialised would break the signature.
    let payload = "{\"type\":\"payment_intent.succeeded\",   \"id\":\"evt_1\",\n\t\"data\":{\"z\":1,\"a\":[ 1.50, 2e3 ],\"name\":\"Zoë ☃ \\u00e9\"}}\r\n"
        .as_bytes();
    let signature = stripe_signature(now_secs(), payload);
    let headers = [
        ("stripe-signature", signature.as_str()),
        ("stripe-webhook-id", "wh_123"),
        ("content-type", "application/json; charset=utf-8"),
    ];
    let r = p.dp.send("POST", "/webhooks/stripe", &headers, payload);
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(echo["name"], "payment");
    assert_eq!(echo["path"], "/api/v1/webhooks/stripe");
    assert_eq!(echo["stripe_signature_valid"], true, "{echo}");
    assert_eq!(echo["body_len"], payload.len());
    assert_eq!(echo["body_sha256"], sha256_hex(payload));
    assert_eq!(echo["headers"]["stripe-webhook-id"], "wh_123");
    assert_eq!(
        echo["headers"]["content-type"],
        "application/json; charset=utf-8"
    );
    assert!(echo["headers"].get("x-user-id").is_none());

    // A signature over other bytes does not verify upstream (the check
    // above can fail).
    let wrong = stripe_signature(now_secs(), b"{}");
    let r = p.dp.send(
        "POST",
        "/webhooks/stripe",
        &[("stripe-signature", &wrong)],
        payload,
    );
    assert_eq!(r.json()["stripe_signature_valid"], false);

    // Unsigned: refused at the edge, never reaches the service.
    let before = p.payment.served();
    let r = p.dp.send("POST", "/webhooks/stripe", &[], payload);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(p.payment.served(), before);

    // The service unreachable: 500 so that Stripe retries.
    let r =
        p.dp.send("POST", "/down/webhooks/stripe", &headers, payload);
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json()["code"], "WEBHOOK_NOT_DELIVERED");

    // The service's own answers pass through as they are.
    p.payment.set_fail(400);
    let r = p.dp.send("POST", "/webhooks/stripe", &headers, payload);
    assert_eq!(r.status, 400);
    p.payment.set_fail(0);

    // Other providers: passthrough under /webhooks.
    let r = p.dp.send(
        "POST",
        "/webhooks/paypal/events",
        &[("paypal-transmission-sig", "sig")],
        b"raw=1&x=2",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(echo["path"], "/api/v1/webhooks/paypal/events");
    assert_eq!(echo["body_sha256"], sha256_hex(b"raw=1&x=2"));

    // Declared larger than the webhook default limit (1 MiB): 413, not
    // 500 (the body is not sent: the gateway answers from the head).
    let mut stream = std::net::TcpStream::connect(p.dp.listen).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let head = format!(
        "POST /webhooks/stripe HTTP/1.1\r\nhost: x\r\nstripe-signature: {signature}\r\ncontent-length: {}\r\n\r\n",
        1024 * 1024 + 1
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut answer = [0u8; 12];
    stream.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 413");
}
