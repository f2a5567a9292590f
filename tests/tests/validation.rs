//! Request validation end to end: the schemas shipped in
//! `deploy/examples/tickettoken.yaml` on a real data plane in front of a
//! test upstream that echoes what reaches it, and the control plane and
//! gwctl refusing a config whose schema is invalid.

use gateway_common::request_schema::UnknownFields;
use gateway_common::GatewayConfig;
use gateway_tests::cluster::{
    start_test, write_temp_file, ControlPlaneProc, DataPlaneProc, Tokens, Upstream,
};
use gateway_tests::http::{self, HttpResponse, DEFAULT_TIMEOUT};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::path::Path;

const UUID4: &str = "3f1c2a9e-8b7d-4c21-9f3e-2a1b0c9d8e7f";
const JWT_SECRET: &str = "validation-test-secret-of-32-bytes!";

/// A valid access token for the data plane started with `JWT_SECRET`.
fn token() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "sub": "user-42", "tenant_id": "tenant-a", "type": "access", "role": "customer",
        "iat": now, "exp": now + 900,
    });
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

fn tickettoken() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/tickettoken.yaml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The shipped platform with every service's instance replaced by
/// `upstream`, and two copies of the ticket purchase route whose unknown
/// fields are rejected and allowed.
fn platform_config(upstream: &Upstream) -> String {
    let mut config = GatewayConfig::load(tickettoken().as_bytes()).unwrap();
    for service in &mut config.services {
        service.instances = vec![upstream.url()];
    }
    let purchase = config
        .routes
        .iter()
        .find(|r| r.name == "ticket-purchase")
        .unwrap()
        .clone();
    for (name, mode) in [
        ("purchase-reject", UnknownFields::Reject),
        ("purchase-allow", UnknownFields::Allow),
    ] {
        let mut route = purchase.clone();
        route.name = name.into();
        route.matcher.path = Some(format!("/{name}"));
        for rules in route.validation.as_mut().unwrap().values_mut() {
            rules.unknown_fields = mode;
        }
        config.routes.push(route);
    }
    config.validate().unwrap();
    config.to_json()
}

fn send(
    dp: &DataPlaneProc,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> HttpResponse {
    let bearer = format!("Bearer {}", token());
    let mut headers: Vec<(&str, &str)> = vec![("authorization", &bearer)];
    headers.extend(content_type.map(|c| ("content-type", c)));
    http::request(dp.listen, method, path, &headers, body, DEFAULT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn post_json(dp: &DataPlaneProc, path: &str, body: &Value) -> HttpResponse {
    send(
        dp,
        "POST",
        path,
        Some("application/json"),
        body.to_string().as_bytes(),
    )
}

/// The fields of a 422's details, sorted.
fn failing_fields(response: &HttpResponse) -> Vec<String> {
    assert_eq!(response.status, 422, "{}", response.text());
    let body = response.json();
    for key in [
        "statusCode",
        "error",
        "message",
        "code",
        "requestId",
        "timestamp",
        "details",
    ] {
        assert!(body.get(key).is_some(), "no {key} in {body}");
    }
    assert_eq!(body["statusCode"], 422);
    assert_eq!(body["code"], "VALIDATION_ERROR");
    assert_eq!(response.header("cache-control"), Some("no-store"));
    let mut fields: Vec<String> = body["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert!(d["message"].as_str().is_some_and(|m| !m.is_empty()), "{d}");
            d["field"].as_str().unwrap().to_string()
        })
        .collect();
    fields.sort();
    fields.dedup();
    fields
}

/// What the upstream received: its echo of the request body as JSON.
fn echoed_body(response: &HttpResponse) -> Value {
    assert_eq!(response.status, 200, "{}", response.text());
    let echo = response.json();
    serde_json::from_str(echo["body"].as_str().unwrap()).unwrap_or(Value::Null)
}

#[test]
fn the_shipped_schemas_guard_a_real_data_plane() {
    let _guard = start_test();
    let upstream = Upstream::start("platform");
    let path = write_temp_file("validation.json", &platform_config(&upstream));
    let dp = DataPlaneProc::standalone_with_env("validation", &path, &[("JWT_SECRET", JWT_SECRET)]);

    // The platform's writes need a token, its public listings do not.
    let anonymous = |method: &str, path: &str| {
        http::request(dp.listen, method, path, &[], b"", DEFAULT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    };
    let before = upstream.served();
    for (method, path) in [
        ("POST", "/api/v1/venues"),
        ("POST", "/api/v1/tickets/purchase"),
        ("GET", "/api/v1/payments/x"),
        ("GET", "/api/v1/auth/me"),
    ] {
        let response = anonymous(method, path);
        assert_eq!(response.status, 401, "{method} {path}: {}", response.text());
    }
    assert_eq!(upstream.served(), before);
    for (method, path) in [
        ("GET", "/api/v1/venues"),
        ("GET", "/api/v1/events?page=1"),
        ("GET", "/api/v1/payments/health"),
        ("POST", "/api/v1/auth/refresh"),
        ("GET", "/api/v1/search?q=rock"),
    ] {
        let response = anonymous(method, path);
        assert_eq!(response.status, 200, "{method} {path}: {}", response.text());
    }

    // 422 with the failing fields; nothing reaches the upstream.
    let before = upstream.served();
    let bad =
        json!({"eventId": "42", "items": [{"ticketTypeId": "vip", "quantity": 11, "price": 0}]});
    let response = post_json(&dp, "/api/v1/tickets/purchase", &bad);
    assert_eq!(
        failing_fields(&response),
        ["eventId", "items.0.price", "items.0.quantity"]
    );
    assert_eq!(response.json()["message"], "Body validation failed");
    let response = post_json(&dp, "/api/v1/venues", &json!({"name": "Hall"}));
    assert_eq!(
        failing_fields(&response),
        ["address", "capacity", "contactEmail"]
    );
    assert_eq!(upstream.served(), before);

    // Unknown fields, top-level and nested, are stripped on the way up, and
    // the upstream gets a Content-Length that matches what it receives.
    let sent = json!({
        "eventId": UUID4,
        "isAdmin": true,
        "items": [{"ticketTypeId": "vip", "quantity": 2, "price": 10.5, "discount": 100}]
    });
    let response = post_json(&dp, "/api/v1/tickets/purchase", &sent);
    let received = echoed_body(&response);
    assert_eq!(
        received,
        json!({"eventId": UUID4, "items": [{"ticketTypeId": "vip", "quantity": 2, "price": 10.5}]})
    );
    let echo = response.json();
    let length: usize = echo["headers"]["content-length"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(length, echo["body"].as_str().unwrap().len());
    assert_eq!(echo["headers"]["content-type"], "application/json");

    // A valid body without unknown fields reaches the upstream byte for byte.
    let exact = format!(r#"{{ "ticketId" : "{UUID4}",  "entrance": "north" }}"#);
    let response = send(
        &dp,
        "POST",
        "/api/v1/tickets/validate",
        Some("application/json"),
        exact.as_bytes(),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["body"], exact);

    // Reject mode names the unknown fields; allow mode forwards them.
    let response = post_json(&dp, "/purchase-reject", &sent);
    assert_eq!(failing_fields(&response), ["isAdmin", "items.0.discount"]);
    let response = post_json(&dp, "/purchase-allow", &sent);
    assert_eq!(echoed_body(&response), sent);

    // Bodies that are not JSON.
    let response = send(
        &dp,
        "POST",
        "/api/v1/tickets/validate",
        Some("text/plain"),
        b"ticket 42",
    );
    assert_eq!(response.status, 415, "{}", response.text());
    assert_eq!(response.json()["code"], "UNSUPPORTED_MEDIA_TYPE");
    let response = send(&dp, "POST", "/api/v1/tickets/validate", None, b"{}");
    assert_eq!(response.status, 415, "{}", response.text());
    let response = send(
        &dp,
        "POST",
        "/api/v1/tickets/validate",
        Some("application/json"),
        b"{\"ticketId\":",
    );
    assert_eq!(response.status, 400, "{}", response.text());
    assert_eq!(response.json()["code"], "INVALID_JSON");
    let response = send(
        &dp,
        "POST",
        "/api/v1/tickets/validate",
        Some("application/json"),
        b"",
    );
    assert_eq!(response.status, 400, "{}", response.text());

    // Over the route's max_body_bytes (16 KiB): 413 before validation.
    let big = json!({"ticketId": UUID4, "entrance": "x".repeat(20_000)});
    let response = post_json(&dp, "/api/v1/tickets/validate", &big);
    assert_eq!(response.status, 413, "{}", response.text());

    // Query parameters: converted, checked, unknown ones stripped.
    let response = send(&dp, "GET", "/api/v1/venues?page=0&limit=500", None, b"");
    assert_eq!(failing_fields(&response), ["limit", "page"]);
    assert_eq!(response.json()["message"], "Query validation failed");
    let response = send(
        &dp,
        "GET",
        "/api/v1/venues?page=2&debug=true&sortBy=name",
        None,
        b"",
    );
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["query"], "page=2&sortBy=name");
    let response = send(&dp, "GET", "/api/v1/search/autocomplete?q=r", None, b"");
    assert_eq!(failing_fields(&response), ["q"]);

    // A route without validation streams anything through, as before.
    let before = upstream.served();
    let response = send(
        &dp,
        "POST",
        "/api/v1/payments/x",
        Some("text/plain"),
        b"not json",
    );
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["body"], "not json");
    assert_eq!(upstream.served(), before + 1);
}

#[test]
fn an_invalid_schema_is_refused_whole_with_its_path() {
    let _guard = start_test();
    let tokens = Tokens::random();
    let cp = ControlPlaneProc::start("validation", None, &tokens);
    // The shipped platform is accepted by gwctl apply.
    cp.gwctl().apply(&tickettoken()).success();
    let (applied, version) = cp.grpc().config().unwrap();
    assert!(applied.contains("ticket-purchase"));

    let broken = tickettoken().replace(
        "quantity: { type: integer, minimum: 1, maximum: 10 }",
        "quantity: { type: integer, minimum: one, maximum: 10 }",
    );
    assert_ne!(broken, tickettoken(), "the replaced line is in the file");
    // gwctl refuses it before sending anything...
    let out = cp.gwctl().apply(&broken);
    assert_ne!(out.code, 0);
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(
        said.contains(".validation.POST.body: invalid JSON Schema"),
        "{said}"
    );
    assert!(
        said.contains("/properties/items/items/properties/quantity/minimum"),
        "{said}"
    );
    // ...and so does the control plane, writing nothing.
    let status = cp.grpc().apply_config(&broken, false).unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("invalid JSON Schema"),
        "{}",
        status.message()
    );
    assert_eq!(cp.grpc().config().unwrap().1, version);
}
