//! Request-header hygiene end to end, with the exact bytes a client sends
//! written on a raw socket: single-value fields sent twice, `Host`
//! missing, names spelled with `_`, and a `Connection` header naming the
//! gateway's own headers. Real `data-plane` processes in standalone mode in
//! front of a `test-upstream` that echoes the headers it received.

use gateway_tests::cluster::{start_test, write_temp_file, DataPlaneProc, Upstream};
use gateway_tests::http::{parse_response, HttpResponse};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const JWT_SECRET: &str = "header-hygiene-test-secret-of-32-bytes";

fn config(upstream: &Upstream) -> String {
    format!(
        r#"
version: 1
services:
  - name: echo
    instances: ["{url}"]
routes:
  - name: api
    match: {{ path_prefix: /api }}
    service: echo
    auth: {{}}
  - name: open
    match: {{ path_prefix: /open }}
    service: echo
  - name: legacy
    match: {{ path_prefix: /legacy }}
    service: echo
    allow_underscore_headers: true
  - name: legacy-api
    match: {{ path_prefix: /wsgi }}
    service: echo
    auth: {{}}
    allow_underscore_headers: true
"#,
        url = upstream.url()
    )
}

fn start(name: &str, upstream: &Upstream) -> DataPlaneProc {
    let file = write_temp_file(&format!("{name}.yaml"), &config(upstream));
    DataPlaneProc::standalone_with_env(name, &file, &[("JWT_SECRET", JWT_SECRET)])
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token_with_secret(secret: &str, sub: &str, tenant: &str) -> String {
    let claims = json!({
        "sub": sub, "tenant_id": tenant, "type": "access", "role": "customer",
        "iat": now(), "exp": now() + 900,
    });
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn token() -> String {
    token_with_secret(JWT_SECRET, "user-42", "tenant-a")
}

/// The head's end and the answer once all of it has arrived (by its
/// `Content-Length`); `None` while more is to come.
fn complete(buf: &[u8]) -> Option<HttpResponse> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = parse_response(buf, true).ok()?;
    let len: usize = head.header("content-length")?.parse().ok()?;
    if buf.len() < end + len {
        return None;
    }
    parse_response(&buf[..end + len], false).ok()
}

/// Writes `request` exactly as given on a fresh connection and reads one
/// answer (by its length, or until the gateway closes).
fn raw(dp: &DataPlaneProc, request: &str) -> HttpResponse {
    let mut stream = TcpStream::connect(dp.listen).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(response) = complete(&buf) {
            return response;
        }
        let n = stream
            .read(&mut chunk)
            .unwrap_or_else(|e| panic!("reading the answer to {request:?}: {e}"));
        if n == 0 {
            return parse_response(&buf, false)
                .unwrap_or_else(|e| panic!("answer to {request:?}: {e}"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The headers the upstream received, from its echo.
fn received(r: &HttpResponse) -> serde_json::Map<String, Value> {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["headers"]
        .as_object()
        .cloned()
        .unwrap_or_else(|| panic!("not an echo: {}", r.text()))
}

/// 400 with the seed's error body, and nothing sent upstream.
fn assert_refused(dp: &DataPlaneProc, upstream: &Upstream, what: &str, request: &str) {
    let before = upstream.served();
    let r = raw(dp, request);
    assert_eq!(r.status, 400, "{what}: {}", r.text());
    assert_eq!(r.json()["code"], "BAD_REQUEST", "{what}: {}", r.text());
    assert_eq!(upstream.served(), before, "{what} reached the upstream");
}

#[test]
fn single_value_fields_sent_twice_and_a_missing_host_are_refused() {
    let _guard = start_test();
    let upstream = Upstream::start("echo");
    let dp = start("single-value", &upstream);
    let valid = token();
    let forged = token_with_secret("an-attacker-secret-of-at-least-32-bytes", "admin", "other");

    // The request everything below varies is accepted.
    let r = raw(
        &dp,
        &format!(
            "GET /api/me HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {valid}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(received(&r)["x-user-id"], "user-42");

    assert_refused(
        &dp,
        &upstream,
        "a valid token, then a forged one",
        &format!(
            "GET /api/me HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {valid}\r\nAuthorization: Bearer {forged}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_refused(
        &dp,
        &upstream,
        "two Authorization on a public route",
        "GET /open/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Basic YTpi\r\nauthorization: Basic YzpK\r\nConnection: close\r\n\r\n",
    );
    assert_refused(
        &dp,
        &upstream,
        "two Host",
        "GET /open/x HTTP/1.1\r\nHost: gw\r\nHost: internal.example\r\nConnection: close\r\n\r\n",
    );
    assert_refused(
        &dp,
        &upstream,
        "two Host, HTTP/1.0",
        "GET /open/x HTTP/1.0\r\nHost: gw\r\nHost: internal.example\r\n\r\n",
    );
    assert_refused(
        &dp,
        &upstream,
        "HTTP/1.1 without Host",
        "GET /open/x HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert_refused(
        &dp,
        &upstream,
        "two X-API-Key",
        "GET /open/x HTTP/1.1\r\nHost: gw\r\nX-API-Key: gk_one\r\nX-API-Key: gk_two\r\nConnection: close\r\n\r\n",
    );

    // HTTP/1.0 needs no Host.
    let r = raw(&dp, "GET /open/x HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["path"], "/open/x");

    let log = dp.log();
    assert!(log.contains("duplicate_header"), "{log}");
    assert!(log.contains("missing_host"), "{log}");
}

#[test]
fn header_names_with_underscores_are_dropped_unless_the_route_allows_them() {
    let _guard = start_test();
    let upstream = Upstream::start("echo");
    let dp = start("underscores", &upstream);
    let request = |path: &str, extra: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: gw\r\n{extra}X-Kept: 1\r\nConnection: close\r\n\r\n")
    };
    let spoofs = "X_Tenant_Id: evil\r\nX_User_Id: admin\r\nx-user_role: admin\r\nX_Forwarded_For: 6.6.6.6\r\nX_Internal_Token: t\r\n";
    let spoofed = [
        "x_tenant_id",
        "x_user_id",
        "x-user_role",
        "x_forwarded_for",
        "x_internal_token",
    ];

    // By default every name with `_` goes, protected or not.
    let seen = received(&raw(
        &dp,
        &request("/open/x", &format!("{spoofs}X_Custom_Thing: 1\r\n")),
    ));
    assert_eq!(seen["x-kept"], "1");
    assert!(!seen.contains_key("x_custom_thing"), "{seen:?}");
    for name in spoofed {
        assert!(
            !seen.contains_key(name),
            "{name} reached the upstream: {seen:?}"
        );
    }

    // A route that allows them passes the others on, never the spellings
    // of the gateway's own headers.
    let seen = received(&raw(
        &dp,
        &request("/legacy/x", &format!("{spoofs}X_Custom_Thing: 1\r\n")),
    ));
    assert_eq!(seen["x_custom_thing"], "1");
    assert_eq!(seen["x-kept"], "1");
    for name in spoofed {
        assert!(
            !seen.contains_key(name),
            "{name} reached the upstream: {seen:?}"
        );
    }
    assert!(!seen.contains_key("x-tenant-id"), "{seen:?}");

    // Authenticated on an allowing route: the identity is the token's.
    let bearer = format!("Authorization: Bearer {}\r\n", token());
    let seen = received(&raw(
        &dp,
        &request("/wsgi/x", &format!("{bearer}{spoofs}X_Custom_Thing: 1\r\n")),
    ));
    assert_eq!(seen["x-user-id"], "user-42");
    assert_eq!(seen["x-tenant-id"], "tenant-a");
    assert_eq!(seen["x_custom_thing"], "1");
    for name in spoofed {
        assert!(
            !seen.contains_key(name),
            "{name} reached the upstream: {seen:?}"
        );
    }
    assert!(dp.log().contains("header_spoofing"));
}

#[test]
fn connection_cannot_remove_the_gateways_own_headers() {
    let _guard = start_test();
    let upstream = Upstream::start("echo");
    let dp = start("connection", &upstream);
    let bearer = token();
    let attack = format!(
        "GET /api/me HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {bearer}\r\nX-Request-ID: rid-1\r\nConnection: keep-alive, x-tenant-id, x-user-id, x-tenant-source, x-user-role, x-original-ip\r\nConnection: x-request-id, x-forwarded-for, x-forwarded-proto, x-forwarded-host, x-gateway-forwarded, x-request-deadline-ms, host\r\n\r\n"
    );
    let r = raw(&dp, &attack);
    let seen = received(&r);
    assert_eq!(seen["x-user-id"], "user-42", "{seen:?}");
    assert_eq!(seen["x-tenant-id"], "tenant-a", "{seen:?}");
    assert_eq!(seen["x-user-role"], "customer", "{seen:?}");
    assert!(seen.contains_key("x-tenant-source"), "{seen:?}");
    assert_eq!(seen["x-original-ip"], "127.0.0.1", "{seen:?}");
    assert_eq!(seen["x-request-id"], "rid-1", "{seen:?}");
    assert_eq!(r.header("x-request-id"), Some("rid-1"));
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1", "{seen:?}");
    assert_eq!(seen["x-forwarded-proto"], "http", "{seen:?}");
    assert_eq!(seen["x-gateway-forwarded"], "true", "{seen:?}");
    assert!(seen.contains_key("x-request-deadline-ms"), "{seen:?}");
    assert_eq!(seen["host"], upstream.address(), "{seen:?}");
    assert!(!seen.contains_key("connection"), "{seen:?}");

    // What the client sent and named in Connection stays on this hop.
    let r = raw(
        &dp,
        "GET /open/x HTTP/1.1\r\nHost: gw\r\nX-Foo: 1\r\nX-Bar: 2\r\nX-Kept: 3\r\nConnection: close, X-Foo\r\nconnection: x-bar\r\n\r\n",
    );
    let seen = received(&r);
    assert!(!seen.contains_key("x-foo"), "{seen:?}");
    assert!(!seen.contains_key("x-bar"), "{seen:?}");
    assert_eq!(seen["x-kept"], "3");

    // Naming the token's own header keeps it from authentication too.
    let r = raw(
        &dp,
        &format!(
            "GET /api/me HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {bearer}\r\nConnection: close, authorization\r\n\r\n"
        ),
    );
    assert_eq!(r.status, 401, "{}", r.text());
}
