//! Tests of whole config documents: parsing, every problem reported with
//! its path, and the shipped examples.

use super::test_support::EXAMPLE;
use super::*;
use std::time::Duration;

#[test]
fn parses_the_design_example() {
    let config = GatewayConfig::load(EXAMPLE.as_bytes()).unwrap();
    assert_eq!(config.services[0].timeout, Duration::from_secs(10));
    assert_eq!(
        config.routes[0].matcher.path_prefix.as_deref(),
        Some("/echo")
    );
    let again = GatewayConfig::from_json(&config.to_json()).unwrap();
    assert_eq!(again, config);
}

#[test]
fn json_documents_are_accepted() {
    let json = r#"{"version":1,"services":[{"name":"a"}],"routes":[{"name":"r","match":{"path":"/a/{id}"},"service":"a"}]}"#;
    let config = GatewayConfig::load(json.as_bytes()).unwrap();
    assert_eq!(
        config.services[0].health_check,
        HealthCheckConfig::default()
    );
}

#[test]
fn reports_every_problem_with_its_path() {
    let doc = r#"
version: 2
services:
  - name: Bad_Name
    instances: ["ftp://x"]
    health_check: { interval: 1s, timeout: 5s, unhealthy_threshold: 0 }
  - name: ok
  - name: ok
routes:
  - name: r1
    match: { path: /x, path_prefix: /y }
    service: nope
  - name: r1
    match: { path: nope, methods: [get] }
    service: ok
"#;
    let Err(ConfigError::Invalid(errors)) = GatewayConfig::load(doc.as_bytes()) else {
        panic!("expected invalid");
    };
    let all = errors.join("\n");
    for needle in [
        "version: must be 1",
        "services[0].name",
        "services[0].instances[0]",
        "services[0].health_check.timeout",
        "services[0].health_check.unhealthy_threshold",
        "services[2].name: duplicate",
        "routes[0].match: needs exactly one",
        "routes[0].service: unknown service",
        "routes[1].name: duplicate",
        "routes[1].match: ",
        "routes[1].match.methods",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
}

#[test]
fn unknown_keys_are_refused() {
    let doc = "version: 1\nservices:\n  - name: a\n    timout: 5s\n";
    assert!(
        matches!(GatewayConfig::load(doc.as_bytes()), Err(ConfigError::Parse(m)) if m.contains("timout"))
    );
}

#[test]
fn empty_and_binary_documents_are_refused() {
    assert!(GatewayConfig::load(b"  ").is_err());
    assert!(GatewayConfig::load(&[0xff, 0xfe]).is_err());
}

#[test]
fn the_tickettoken_example_is_valid() {
    let doc = include_str!("../../../deploy/examples/tickettoken.yaml");
    let config = GatewayConfig::load(doc.as_bytes())
        .unwrap_or_else(|e| panic!("deploy/examples/tickettoken.yaml: {e}"));
    for name in [
        "auth", "payment", "ticket", "minting", "transfer", "scanning",
    ] {
        assert!(config.service(name).is_some(), "service {name} missing");
    }
    let retry = |name: &str| config.service(name).unwrap().retry.clone().unwrap();
    assert_eq!(retry("minting").max_attempts, 5);
    assert_eq!(retry("minting").multiplier, 2.5);
    assert_eq!(retry("payment").base_delay, Duration::from_secs(2));
    assert_eq!(retry("ticket").max_delay, Duration::from_secs(30));
    let limit = |name: &str| {
        let route = config.routes.iter().find(|r| r.name == name).unwrap();
        route.rate_limit.clone().unwrap()
    };
    assert_eq!(limit("ticket").requests, 100);
    assert_eq!(limit("ticket").window, Duration::from_secs(60));
    assert_eq!(limit("auth-login").requests, 10);
    assert_eq!(limit("auth-login").key, RateLimitKey::Ip);
    assert!(!limit("stripe-webhook").enabled);
    assert!(config.routes.iter().all(|r| r.rate_limit.is_some()));
    let partner = config.routes.iter().find(|r| r.name == "partner-events");
    assert!(partner
        .and_then(|r| r.auth.as_ref())
        .is_some_and(|a| a.api_keys));
}

#[test]
fn the_dev_example_is_valid() {
    let doc = include_str!("../../../deploy/examples/dev.yaml");
    GatewayConfig::load(doc.as_bytes()).unwrap();
}
