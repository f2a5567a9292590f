//! The seed's schemas as shipped in `deploy/examples/tickettoken.yaml`,
//! compiled as a data plane compiles them.

use super::*;
use gateway_common::GatewayConfig;
use http::header::CONTENT_TYPE;

const TICKETTOKEN: &str = include_str!("../../../../deploy/examples/tickettoken.yaml");
const UUID4: &str = "3f1c2a9e-8b7d-4c21-9f3e-2a1b0c9d8e7f";
const UUID1: &str = "6ba7b810-9dad-11d1-80b4-00c04fd430c8";

fn policy(route: &str) -> RouteValidation {
    let config = GatewayConfig::load(TICKETTOKEN.as_bytes()).unwrap();
    let route = config
        .routes
        .iter()
        .find(|r| r.name == route)
        .unwrap_or_else(|| panic!("no route {route} in tickettoken.yaml"));
    RouteValidation::compile(route).unwrap().unwrap()
}

fn json_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers
}

fn body(route: &str, method: Method, doc: Value) -> Result<Option<Bytes>, Refusal> {
    policy(route)
        .for_method(&method)
        .unwrap()
        .check_body(&json_headers(), doc.to_string().as_bytes())
}

/// The failing fields of a refused body, sorted.
fn fields(route: &str, method: Method, doc: Value) -> Vec<String> {
    let refusal = body(route, method, doc).expect_err("expected a refusal");
    assert_eq!(refusal.error, GatewayError::ValidationFailed);
    assert_eq!(refusal.message, "Body validation failed");
    let mut fields: Vec<String> = refusal
        .details
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert!(d["message"].as_str().is_some_and(|m| !m.is_empty()));
            assert!(d["type"].as_str().is_some_and(|t| !t.is_empty()));
            d["field"].as_str().unwrap().to_string()
        })
        .collect();
    fields.sort();
    fields.dedup();
    fields
}

fn query(route: &str, q: &str) -> Result<Option<String>, Refusal> {
    policy(route)
        .for_method(&Method::GET)
        .unwrap()
        .check_query(Some(q))
}

fn query_fields(route: &str, q: &str) -> Vec<String> {
    let refusal = query(route, q).expect_err("expected a refusal");
    assert_eq!(refusal.message, "Query validation failed");
    let mut fields: Vec<String> = refusal
        .details
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap().to_string())
        .collect();
    fields.sort();
    fields
}

#[test]
fn create_venue() {
    let good = json!({
        "name": "Main Hall",
        "address": {"street": "1 Road", "city": "Town", "state": "ST", "country": "US", "postalCode": "12345"},
        "capacity": 500,
        "contactEmail": "boss@example.com",
        "contactPhone": "+15551234567",
        "tier": "premium"
    });
    assert_eq!(
        body("venue-create", Method::POST, good.clone()).unwrap(),
        None
    );
    let bad = json!({
        "name": "MH",
        "address": {"street": "1 Road", "city": "Town"},
        "capacity": 0,
        "contactEmail": "not-an-email",
        "contactPhone": "call me",
        "tier": "gold"
    });
    assert_eq!(
        fields("venue-create", Method::POST, bad),
        [
            "address.country",
            "address.postalCode",
            "address.state",
            "capacity",
            "contactEmail",
            "contactPhone",
            "name",
            "tier"
        ]
    );
    assert_eq!(
        fields("venue-create", Method::POST, json!({})),
        ["address", "capacity", "contactEmail", "name"]
    );
}

#[test]
fn update_venue_on_put_and_patch() {
    for method in [Method::PUT, Method::PATCH] {
        assert_eq!(
            body("venue-update", method.clone(), json!({"capacity": 10})).unwrap(),
            None
        );
        assert_eq!(
            fields(
                "venue-update",
                method,
                json!({"capacity": 2.5, "address": {"city": 7}})
            ),
            ["address.city", "capacity"]
        );
    }
}

#[test]
fn create_event() {
    let good = json!({
        "venueId": UUID4,
        "name": "Concert",
        "startDate": "2030-05-01T20:00:00Z",
        "category": "concert",
        "ticketTiers": [{"name": "GA", "price": 49.99, "quantity": 100}]
    });
    assert_eq!(body("event-create", Method::POST, good).unwrap(), None);
    let bad = json!({
        "venueId": UUID1,
        "name": "Concert",
        "startDate": "next friday",
        "category": "opera",
        "ticketTiers": [{"name": "GA", "price": -1, "quantity": 0}, {"price": 10.001, "quantity": 1}]
    });
    assert_eq!(
        fields("event-create", Method::POST, bad),
        [
            "category",
            "startDate",
            "ticketTiers.0.price",
            "ticketTiers.0.quantity",
            "ticketTiers.1.name",
            "ticketTiers.1.price",
            "venueId"
        ]
    );
    assert_eq!(
        fields(
            "event-create",
            Method::POST,
            json!({"venueId": UUID4, "name": "Concert", "startDate": "2030-05-01T20:00:00Z", "category": "other", "ticketTiers": []})
        ),
        ["ticketTiers"]
    );
}

#[test]
fn update_event() {
    assert_eq!(
        body(
            "event-update",
            Method::PATCH,
            json!({"status": "published"})
        )
        .unwrap(),
        None
    );
    assert_eq!(
        fields(
            "event-update",
            Method::PATCH,
            json!({"status": "archived", "description": "x".repeat(2001)})
        ),
        ["description", "status"]
    );
}

#[test]
fn ticket_purchase() {
    let good = json!({"eventId": UUID4, "items": [{"ticketTypeId": "vip", "quantity": 2, "price": 120.5}]});
    assert_eq!(body("ticket-purchase", Method::POST, good).unwrap(), None);
    assert_eq!(
        fields(
            "ticket-purchase",
            Method::POST,
            json!({"eventId": "42", "items": [{"ticketTypeId": "vip", "quantity": 11, "price": 0}, {"quantity": "2"}]})
        ),
        [
            "eventId",
            "items.0.price",
            "items.0.quantity",
            "items.1.price",
            "items.1.quantity",
            "items.1.ticketTypeId"
        ]
    );
    assert_eq!(
        fields(
            "ticket-purchase",
            Method::POST,
            json!({"eventId": UUID4, "items": []})
        ),
        ["items"]
    );
}

#[test]
fn ticket_validation() {
    assert_eq!(
        body(
            "ticket-validate",
            Method::POST,
            json!({"ticketId": UUID4, "scannerDeviceId": "s-1", "entrance": "north"})
        )
        .unwrap(),
        None
    );
    assert_eq!(
        fields(
            "ticket-validate",
            Method::POST,
            json!({"scannerDeviceId": 5})
        ),
        ["scannerDeviceId", "ticketId"]
    );
}

#[test]
fn marketplace_listings_and_purchase() {
    assert_eq!(
        body(
            "marketplace-listing-create",
            Method::POST,
            json!({"ticketId": UUID4, "price": 75.25, "expiresAt": "2030-01-01T00:00:00.000Z"})
        )
        .unwrap(),
        None
    );
    assert_eq!(
        fields(
            "marketplace-listing-create",
            Method::POST,
            json!({"ticketId": "nope", "price": 0, "expiresAt": "tomorrow"})
        ),
        ["expiresAt", "price", "ticketId"]
    );
    assert_eq!(
        body(
            "marketplace-purchase",
            Method::POST,
            json!({"listingId": UUID4, "paymentMethodId": "pm_1"})
        )
        .unwrap(),
        None
    );
    assert_eq!(
        fields(
            "marketplace-purchase",
            Method::POST,
            json!({"listingId": UUID4})
        ),
        ["paymentMethodId"]
    );
}

#[test]
fn unknown_fields_are_stripped_at_every_depth() {
    let doc = json!({
        "eventId": UUID4,
        "isAdmin": true,
        "items": [{"ticketTypeId": "vip", "quantity": 1, "price": 5, "discount": 100}]
    });
    let stripped = body("ticket-purchase", Method::POST, doc).unwrap().unwrap();
    let value: Value = serde_json::from_slice(&stripped).unwrap();
    assert_eq!(
        value,
        json!({"eventId": UUID4, "items": [{"ticketTypeId": "vip", "quantity": 1, "price": 5}]})
    );
}

#[test]
fn pagination_query() {
    for route in ["venues", "events", "marketplace-listings"] {
        assert_eq!(
            query(route, "page=2&limit=50&sortBy=name&sortOrder=desc").unwrap(),
            None
        );
        assert_eq!(
            query_fields(route, "page=0&limit=101&sortOrder=up"),
            ["limit", "page", "sortOrder"]
        );
        assert_eq!(query_fields(route, "page=two&limit=1.5"), ["limit", "page"]);
        // Unknown parameters are stripped, the others keep their encoding.
        assert_eq!(
            query(route, "page=1&debug=1&sortBy=a%20b")
                .unwrap()
                .as_deref(),
            Some("page=1&sortBy=a%20b")
        );
    }
}

#[test]
fn search_queries() {
    assert_eq!(
        query("search-global", "q=rock&type=events&limit=5&page=1").unwrap(),
        None
    );
    assert_eq!(
        query_fields("search-global", "type=people&limit=ten"),
        ["limit", "type"]
    );
    assert_eq!(query("search-autocomplete", "q=ro").unwrap(), None);
    assert_eq!(query_fields("search-autocomplete", "q=r"), ["q"]);
    assert_eq!(query_fields("search-autocomplete", ""), ["q"]);
}

#[test]
fn reject_and_allow_modes() {
    let schema = json!({
        "type": "object",
        "properties": {"a": {"type": "object", "properties": {"b": {"type": "integer"}}}}
    });
    let rules = |unknown| {
        MethodValidation::compile(&RequestValidation {
            body: Some(schema.clone()),
            query: Some(json!({"type": "object", "properties": {"page": {"type": "integer"}}})),
            unknown_fields: unknown,
        })
        .unwrap()
    };
    let doc = br#"{"a": {"b": 1, "c": 2}, "d": 3}"#;
    let refusal = rules(UnknownFields::Reject)
        .check_body(&json_headers(), doc)
        .unwrap_err();
    let details = refusal.details.unwrap();
    let mut named: Vec<&str> = details
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    named.sort();
    assert_eq!(named, ["a.c", "d"]);
    assert_eq!(details[0]["type"], "unknown");
    assert_eq!(
        rules(UnknownFields::Allow)
            .check_body(&json_headers(), doc)
            .unwrap(),
        None
    );
    let refusal = rules(UnknownFields::Reject)
        .check_query(Some("page=1&x=2"))
        .unwrap_err();
    assert_eq!(refusal.details.unwrap()[0]["field"], "x");
    assert_eq!(
        rules(UnknownFields::Allow)
            .check_query(Some("page=1&x=2"))
            .unwrap(),
        None
    );
}

#[test]
fn bodies_that_are_not_json() {
    let rules = policy("ticket-validate");
    let rules = rules.for_method(&Method::POST).unwrap();
    let refusal = rules.check_body(&json_headers(), b"{not json").unwrap_err();
    assert_eq!(refusal.error, GatewayError::InvalidJson);
    let refusal = rules.check_body(&json_headers(), b"").unwrap_err();
    assert_eq!(refusal.error, GatewayError::InvalidJson);
    let mut form = HeaderMap::new();
    form.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    let refusal = rules.check_body(&form, b"ticketId=1").unwrap_err();
    assert_eq!(refusal.error, GatewayError::UnsupportedMediaType);
    let refusal = rules.check_body(&HeaderMap::new(), b"{}").unwrap_err();
    assert_eq!(refusal.error, GatewayError::UnsupportedMediaType);
}

#[test]
fn json_media_types() {
    let with = |value: &'static str| {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(value));
        is_json(&headers)
    };
    assert!(with("application/json"));
    assert!(with("Application/JSON; charset=utf-8"));
    assert!(with("application/merge-patch+json"));
    assert!(!with("text/json"));
    assert!(!with("application/+json"));
    assert!(!with("application/jsonp"));
    assert!(!with("text/plain"));
}

#[test]
fn details_are_bounded() {
    let rules = MethodValidation::compile(&RequestValidation {
        body: Some(json!({"type": "array", "items": {"type": "integer"}})),
        query: None,
        unknown_fields: UnknownFields::Strip,
    })
    .unwrap();
    let doc = serde_json::to_vec(&vec!["x"; 500]).unwrap();
    let refusal = rules.check_body(&json_headers(), &doc).unwrap_err();
    assert_eq!(
        refusal.details.unwrap().as_array().unwrap().len(),
        MAX_DETAILS
    );
}
