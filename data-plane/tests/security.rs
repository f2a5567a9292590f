//! The edge-security attack suite over real sockets: a standalone data
//! plane in front of a real upstream that echoes the headers it received.

mod common;

use common::*;
use data_plane::auth::JwtSettings;
use data_plane::DataPlane;
use http::Request;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::time::Duration;

const SECRET: &str = "test-secret-of-at-least-32-bytes!!";
const ISSUER: &str = "tickettoken";
const AUDIENCE: &str = "tickettoken-platform";

fn jwt_settings() -> JwtSettings {
    JwtSettings {
        secret: SECRET.into(),
        algorithm: Algorithm::HS256,
        issuer: Some(ISSUER.into()),
        audience: Some(AUDIENCE.into()),
    }
}

fn config(upstream: &Upstream) -> String {
    format!(
        r#"
version: 1
services:
  - name: echo
    instances: ["{url}"]
    timeout: 2s
  - name: retried
    instances: ["{url}"]
    retry: {{ max_attempts: 2 }}
routes:
  - name: api
    match: {{ path_prefix: /api }}
    service: echo
    auth: {{ public_paths: [/api/public/*, /api/health, "/api/*/status"] }}
  - {{ name: open, match: {{ path_prefix: /open }}, service: echo }}
  - {{ name: optional, match: {{ path_prefix: /optional }}, service: echo, auth: {{ required: false }} }}
  - {{ name: retried, match: {{ path_prefix: /retried }}, service: retried, auth: {{}} }}
  - name: web
    match: {{ path_prefix: /web, methods: [GET, POST] }}
    service: echo
    auth: {{}}
    cors: {{ allowed_origins: ["https://app.example.com"], allow_credentials: true, max_age: 5m }}
"#,
        url = upstream.url()
    )
}

async fn gateway(up: &Upstream) -> (DataPlane, TempConfig) {
    standalone_with(&config(up), |s| s.jwt = Some(jwt_settings())).await
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims() -> Value {
    json!({
        "sub": "user-42", "tenant_id": "tenant-a", "type": "access", "role": "customer",
        "iss": ISSUER, "aud": AUDIENCE, "iat": now(), "exp": now() + 900,
        "jti": "j-1",
    })
}

fn sign_with(claims: &Value, alg: Algorithm, secret: &str) -> String {
    encode(
        &Header::new(alg),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn sign(claims: &Value) -> String {
    sign_with(claims, Algorithm::HS256, SECRET)
}

fn b64(value: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

fn claims_with(key: &str, value: Value) -> Value {
    let mut c = claims();
    if value.is_null() {
        c.as_object_mut().unwrap().remove(key);
    } else {
        c[key] = value;
    }
    c
}

async fn get_with(plane: &DataPlane, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = Request::get(format!("http://{}{}", plane.listen_addr(), path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(&client(), req.body(empty()).unwrap()).await
}

async fn get_token(plane: &DataPlane, path: &str, token: &str) -> Answer {
    let bearer = format!("Bearer {token}");
    get_with(plane, path, &[("authorization", &bearer)]).await
}

/// A raw HTTP/1.1 exchange: `request` bytes as written, the answer read
/// until the gateway closes. Returns the status and the whole text.
async fn raw(plane: &DataPlane, request: &[u8]) -> (u16, String) {
    let buf =
        gateway_tests::http::send_raw_async(plane.listen_addr(), request, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("the gateway did not answer and close: {e}"));
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = gateway_tests::http::status_of(&buf)
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, text)
}

fn raw_get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n").into_bytes()
}

fn assert_unauthenticated(answer: &Answer, message: &str) {
    let v = answer.assert_error(401, "AUTHENTICATION_ERROR");
    assert_eq!(v["error"], "Unauthorized");
    assert_eq!(v["message"], message);
    let challenge = answer.headers["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(
        challenge.contains(&format!("error_description=\"{message}\"")),
        "{challenge}"
    );
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
}

#[tokio::test]
async fn missing_or_malformed_authorization_gets_401() {
    let up = Upstream::start("a").await;
    let (plane, _file) = gateway(&up).await;
    for headers in [
        &[][..],
        &[("authorization", "Basic dXNlcjpwYXNz")][..],
        &[("authorization", "Bearer")][..],
        &[("authorization", "Bearer ")][..],
    ] {
        let answer = get_with(&plane, "/api/orders", headers).await;
        let v = answer.assert_error(401, "AUTHENTICATION_ERROR");
        assert_eq!(v["message"], "Missing or invalid authorization header");
        // RFC 6750: no error code when no token was presented.
        assert_eq!(
            answer.headers["www-authenticate"],
            "Bearer realm=\"gateway\""
        );
    }
    assert_eq!(up.hits(), 0);
    plane.shutdown().await;
}

#[tokio::test]
async fn forged_and_unfit_tokens_get_401() {
    let up = Upstream::start("a").await;
    let (plane, _file) = gateway(&up).await;
    let good = sign(&claims());
    let sig = good.rsplit('.').next().unwrap().to_string();
    let none_header = b64(&json!({"alg": "none", "typ": "JWT"}));
    let mut tampered_claims = claims();
    tampered_claims["tenant_id"] = json!("tenant-b");
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!("{}.{}.{}", parts[0], b64(&tampered_claims), parts[2]);
    let t = now();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "alg none, unsigned",
            format!("{none_header}.{}.", b64(&claims())),
            "Invalid token",
        ),
        (
            "alg none, signed",
            format!("{none_header}.{}.{sig}", b64(&claims())),
            "Invalid token",
        ),
        ("tampered payload", tampered, "Invalid token"),
        (
            "another secret",
            sign_with(&claims(), Algorithm::HS256, &"k".repeat(40)),
            "Invalid token",
        ),
        (
            "another algorithm",
            sign_with(&claims(), Algorithm::HS512, SECRET),
            "Invalid token",
        ),
        ("garbage", "abc.def.ghi".into(), "Invalid token"),
        (
            "expired",
            sign(&claims_with("exp", json!(t - 120))),
            "Token has expired",
        ),
        (
            "not yet valid",
            sign(&claims_with("nbf", json!(t + 300))),
            "Token is not yet valid",
        ),
        (
            "wrong issuer",
            sign(&claims_with("iss", json!("evil-corp"))),
            "Invalid token issuer",
        ),
        (
            "wrong audience",
            sign(&claims_with("aud", json!("other-platform"))),
            "Invalid token audience",
        ),
        (
            "missing tenant",
            sign(&claims_with("tenant_id", Value::Null)),
            "Invalid token - missing tenant context",
        ),
        (
            "refresh token",
            sign(&claims_with("type", json!("refresh"))),
            "Invalid token type",
        ),
    ];
    for (name, token, message) in cases {
        let answer = get_token(&plane, "/api/orders", &token).await;
        assert_eq!(answer.status, 401, "{name}: {}", answer.text());
        assert_unauthenticated(&answer, message);
    }
    assert_eq!(up.hits(), 0, "no forged request reached the upstream");
    plane.shutdown().await;
}

#[tokio::test]
async fn a_valid_token_sends_the_verified_identity_upstream() {
    let up = Upstream::start("a").await;
    let (plane, _file) = gateway(&up).await;
    let mut c = claims();
    c["permissions"] = json!(["tickets:purchase", "tickets:view-own"]);
    let bearer = format!("Bearer {}", sign(&c));
    let answer = get_with(
        &plane,
        "/api/orders?x=1",
        &[
            ("authorization", &bearer),
            // Spoofing attempts: none of these may reach the upstream.
            ("x-tenant-id", "tenant-evil"),
            ("x-tenant-source", "jwt"),
            ("x-user-id", "admin"),
            ("x-user-role", "admin"),
            ("x-internal-service", "payments"),
            ("x-gateway-forwarded", "false"),
            ("x-original-ip", "10.9.9.9"),
            ("x-admin-token", "root"),
        ],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let seen = up.last_headers();
    assert_eq!(seen["x-user-id"], "user-42");
    assert_eq!(seen["x-tenant-id"], "tenant-a");
    assert_eq!(seen.get_all("x-tenant-id").iter().count(), 1);
    assert_eq!(seen["x-tenant-source"], "jwt");
    assert_eq!(seen["x-user-role"], "customer");
    assert_eq!(
        seen["x-user-permissions"],
        "tickets:purchase,tickets:view-own"
    );
    assert_eq!(seen["x-gateway-forwarded"], "true");
    assert_eq!(seen["x-original-ip"], "127.0.0.1");
    assert!(!seen.contains_key("x-internal-service"));
    assert!(!seen.contains_key("x-admin-token"));
    // The upstream's internal headers never reach the client.
    assert!(!answer.headers.contains_key("x-internal-service-key"));
    assert_eq!(answer.headers["x-upstream"], "a");

    // The same through the retry path (body kept for replay).
    let answer = get_with(
        &plane,
        "/retried/x",
        &[("authorization", &bearer), ("x-tenant-id", "tenant-evil")],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(up.last_headers()["x-tenant-id"], "tenant-a");
    assert!(!answer.headers.contains_key("x-internal-service-key"));
    plane.shutdown().await;
}

#[tokio::test]
async fn identity_headers_are_removed_on_routes_without_auth() {
    let up = Upstream::start("a").await;
    let (plane, _file) = gateway(&up).await;
    for path in ["/open/x", "/optional/x", "/api/public/x"] {
        let answer = get_with(
            &plane,
            path,
            &[
                ("x-tenant-id", "tenant-evil"),
                ("x-tenant-source", "jwt"),
                ("x-user-id", "admin"),
                ("x-internal-key", "k"),
            ],
        )
        .await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.text());
        let seen = up.last_headers();
        for name in [
            "x-tenant-id",
            "x-tenant-source",
            "x-user-id",
            "x-internal-key",
        ] {
            assert!(!seen.contains_key(name), "{path}: {name} reached upstream");
        }
        assert_eq!(seen["x-gateway-forwarded"], "true");
        assert!(!answer.headers.contains_key("x-internal-service-key"));
    }
    plane.shutdown().await;
}

#[tokio::test]
async fn public_paths_skip_auth_only_for_what_they_name() {
    let up = Upstream::start("a").await;
    let (plane, _file) = gateway(&up).await;
    let uri_of = |answer: &Answer| answer.json()["uri"].as_str().unwrap().to_string();

    for (path, upstream_uri) in [
        ("/api/public/x", "/api/public/x"),
        ("/api/public", "/api/public"),
        ("/api/health", "/api/health"),
        ("/api/health;jsessionid=1", "/api/health;jsessionid=1"),
        ("/api/v2/status", "/api/v2/status"),
        // Harmless spellings are normalised, and what the upstream gets is
        // exactly what was checked.
        ("//api//public//x", "/api/public/x"),
        ("/api/./health", "/api/health"),
        ("/%61pi/health?q=1", "/api/health?q=1"),
        ("/api/public/a/../b", "/api/public/b"),
    ] {
        let (status, text) = raw(&plane, &raw_get(path)).await;
        assert_eq!(status, 200, "{path}: {text}");
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["uri"], upstream_uri, "{path}");
    }

    // Tricks that must not skip authentication.
    for path in [
        "/api/public/../orders",
        "/api/public/%2e%2e/orders",
        "/api/public/.%2E/orders",
        "/api/public/x/../../orders",
        "/api/Public/x",
        "/api/HEALTH",
        "/api/health/x",
        "/api/healthz",
        "/api/health;/../orders",
        "/api/v2/v3/status",
        // Through another route's prefix: normalised before routing.
        "/open/../api/orders",
    ] {
        let (status, text) = raw(&plane, &raw_get(path)).await;
        assert_eq!(status, 401, "{path}: {text}");
        assert!(text.contains("AUTHENTICATION_ERROR"), "{path}: {text}");
    }

    // Routes match case-sensitively too: a case variant of the route's
    // prefix is no route at all.
    let (status, _) = raw(&plane, &raw_get("/API/public/x")).await;
    assert_eq!(status, 404);

    // Paths that cannot be normalised safely are refused outright.
    for path in [
        "/api/public/..;/orders",
        "/api/public/.;x/orders",
        "/api/public%2f..%2forders",
        "/api/public%2F..%2Forders",
        "/api/public%5c..%5corders",
        "/api/health.",
        "/api/health%2e",
        "/api/health%20",
        "/api/health%00",
        "/api/health%0d%0aX-Injected:%201",
        "/api/public/%zz",
    ] {
        let (status, text) = raw(&plane, &raw_get(path)).await;
        assert_eq!(status, 400, "{path}: {text}");
        assert!(text.contains("\"code\":\"BAD_REQUEST\""), "{path}: {text}");
    }

    // With a token, a normalised path reaches the upstream normalised.
    let answer = get_token(&plane, "/api/public/x/../../orders", &sign(&claims())).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(uri_of(&answer), "/api/orders");
    assert_eq!(up.last_headers()["x-tenant-id"], "tenant-a");
    plane.shutdown().await;
}

#[tokio::test]
async fn routes_requiring_auth_fail_closed_without_a_secret() {
    let up = Upstream::start("a").await;
    let (plane, _file) = standalone(&config(&up)).await;
    let answer = get_token(&plane, "/api/orders", &sign(&claims())).await;
    assert_unauthenticated(&answer, "Authentication is not configured on this gateway");
    // Public paths and routes without auth still work.
    assert_eq!(get(&plane, "/api/health").await.status, 200);
    assert_eq!(get(&plane, "/open/x").await.status, 200);
    assert_eq!(up.hits(), 2);
    plane.shutdown().await;
}

#[tokio::test]
async fn ambiguous_framing_is_refused() {
    let up = Upstream::start("a").await;
    let (plane, _file) = gateway(&up).await;
    // CL.TE and TE.CL smuggling attempts, with the header names in any
    // case: 400 with the JSON error body, nothing reaches the upstream, and
    // the connection closes, so the smuggled second request is never read.
    for request in [
        &b"POST /open/x HTTP/1.1\r\nhost: gw\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /api/orders HTTP/1.1\r\nhost: gw\r\n\r\n"[..],
        b"POST /open/x HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\ncontent-length: 40\r\n\r\n0\r\n\r\nGET /api/orders HTTP/1.1\r\nhost: gw\r\n\r\n",
        b"POST /open/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ] {
        let hits = up.hits();
        let (status, text) = raw(&plane, request).await;
        assert_eq!(status, 400, "{text}");
        assert!(text.contains("\"code\":\"BAD_REQUEST\""), "{text}");
        assert!(
            text.contains("must not carry both Content-Length and Transfer-Encoding"),
            "{text}"
        );
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
        assert_eq!(up.hits(), hits);
    }
    // The same connection may carry a sized request, then a chunked one, then
    // a plain one: one framing header each is fine.
    let hits = up.hits();
    let (status, text) = raw(
        &plane,
        b"POST /open/x HTTP/1.1\r\nhost: gw\r\ncontent-length: 4\r\n\r\nabcdPOST /open/x HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\nGET /open/x HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(text.matches("HTTP/1.1 200").count(), 3, "{text}");
    assert_eq!(up.hits(), hits + 3);
    // Two different lengths.
    let (status, _) = raw(
        &plane,
        b"POST /open/x HTTP/1.1\r\nhost: gw\r\ncontent-length: 4\r\ncontent-length: 5\r\nconnection: close\r\n\r\nabcde",
    )
    .await;
    assert_eq!(status, 400);
    // A transfer coding other than chunked (hyper refuses it).
    let (status, _) = raw(
        &plane,
        b"POST /open/x HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: gzip\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(up.hits(), 3);
    plane.shutdown().await;
}

#[tokio::test]
async fn control_characters_are_refused() {
    let up = Upstream::start("a").await;
    let (plane, _file) = gateway(&up).await;
    for request in [
        // A bare CR inside a header value (response splitting attempt).
        &b"GET /open/x HTTP/1.1\r\nhost: gw\r\nx-a: a\rInjected: 1\r\n\r\n"[..],
        // NUL in a header value.
        b"GET /open/x HTTP/1.1\r\nhost: gw\r\nx-a: a\0b\r\n\r\n",
        // NUL and CR in the request target.
        b"GET /open/x\0y HTTP/1.1\r\nhost: gw\r\n\r\n",
        b"GET /open/x\ry HTTP/1.1\r\nhost: gw\r\n\r\n",
        // Raw space and backslash in the request target.
        b"GET /open/a b HTTP/1.1\r\nhost: gw\r\n\r\n",
        b"GET /open\\..\\api HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
    ] {
        let (status, text) = raw(&plane, request).await;
        assert_eq!(
            status,
            400,
            "{:?}: {text}",
            String::from_utf8_lossy(request)
        );
    }
    assert_eq!(up.hits(), 0);
    plane.shutdown().await;
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let up = Upstream::start("a").await;
    let (plane, _file) = gateway(&up).await;
    let big = "a".repeat(data_plane::settings::MAX_REQUEST_HEAD_BYTES);
    let request = format!("GET /open/x HTTP/1.1\r\nhost: gw\r\nx-big: {big}\r\n\r\n");
    let (status, text) = raw(&plane, request.as_bytes()).await;
    assert_eq!(status, 431, "{text}");
    // Just below the limit is fine.
    let fits = "a".repeat(data_plane::settings::MAX_REQUEST_HEAD_BYTES / 2);
    let answer = get_with(&plane, "/open/x", &[("x-big", &fits)]).await;
    assert_eq!(answer.status, 200);
    plane.shutdown().await;
}

#[tokio::test]
async fn invalid_auth_config_is_refused_with_its_path() {
    let file = TempConfig::new(
        r#"
version: 1
services: [ { name: echo } ]
routes:
  - name: api
    match: { path_prefix: /api }
    service: echo
    auth: { public_paths: ["/api/../admin", "api/x"] }
"#,
    );
    let mut settings = local_settings();
    settings.config_file = Some(file.path.clone());
    let err = match DataPlane::start(settings).await {
        Ok(_) => panic!("an invalid auth config was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("routes[0].auth.public_paths[0]")
            && err.contains("must not contain '.' or '..' segments"),
        "{err}"
    );
    assert!(
        err.contains("routes[0].auth.public_paths[1]") && err.contains("must start with '/'"),
        "{err}"
    );
}

fn access_control(answer: &Answer) -> Vec<String> {
    answer
        .headers
        .keys()
        .map(|n| n.as_str().to_string())
        .filter(|n| n.starts_with("access-control-"))
        .collect()
}

async fn preflight(plane: &DataPlane, path: &str, origin: &str) -> Answer {
    let req = Request::options(format!("http://{}{}", plane.listen_addr(), path))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .body(empty())
        .unwrap();
    send(&client(), req).await
}

#[tokio::test]
async fn cors_preflights_are_answered_by_the_gateway() {
    let up = Upstream::start("a").await;
    let (plane, _file) = gateway(&up).await;
    // No token needed for a preflight, and OPTIONS need not be among the
    // route's methods: the preflight is routed by the method it asks about.
    let answer = preflight(&plane, "/web/orders", "https://app.example.com").await;
    assert_eq!(answer.status, 204, "{}", answer.text());
    let h = &answer.headers;
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(
        h["access-control-allow-methods"],
        "GET, POST, PUT, PATCH, DELETE, OPTIONS"
    );
    assert!(h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("Authorization"));
    assert_eq!(h["access-control-max-age"], "300");
    assert_eq!(h["vary"], "Origin");
    // A disallowed origin gets no CORS header at all.
    let answer = preflight(&plane, "/web/orders", "https://evil.example.com").await;
    answer.assert_error(403, "CORS_ORIGIN_NOT_ALLOWED");
    assert!(access_control(&answer).is_empty(), "{:?}", answer.headers);
    // Nor does a look-alike.
    let answer = preflight(&plane, "/web/orders", "https://app.example.com.evil.io").await;
    assert_eq!(answer.status, 403);
    assert!(access_control(&answer).is_empty());
    // A route without a policy: the preflight is the upstream's business.
    let answer = preflight(&plane, "/open/x", "https://app.example.com").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["method"], "OPTIONS");
    assert_eq!(up.hits(), 1);
    plane.shutdown().await;
}

#[tokio::test]
async fn cors_headers_only_for_allowed_origins() {
    let up = Upstream::start("a").await;
    let (plane, _file) = gateway(&up).await;
    let bearer = format!("Bearer {}", sign(&claims()));
    let answer = get_with(
        &plane,
        "/web/orders",
        &[
            ("authorization", &bearer),
            ("origin", "https://app.example.com"),
        ],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let h = &answer.headers;
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert!(h["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .contains("X-Request-ID"));
    assert_eq!(h["vary"], "Origin");
    // The gateway's own errors carry them too, so the page can read a 401.
    let answer = get_with(
        &plane,
        "/web/orders",
        &[("origin", "https://app.example.com")],
    )
    .await;
    assert_eq!(answer.status, 401);
    assert_eq!(
        answer.headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    // Another origin: the request is served, but without CORS headers the
    // browser keeps the answer from the page.
    let answer = get_with(
        &plane,
        "/web/orders",
        &[
            ("authorization", &bearer),
            ("origin", "https://evil.example.com"),
        ],
    )
    .await;
    assert_eq!(answer.status, 200);
    assert!(access_control(&answer).is_empty(), "{:?}", answer.headers);
    plane.shutdown().await;
}
