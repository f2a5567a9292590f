//! Helpers the config tests share: the design example and a loader that
//! expects a config to be refused.

use super::{ConfigError, GatewayConfig};

/// The example config of the design: one service, one prefix route.
pub(super) const EXAMPLE: &str = r#"
version: 1
services:
  - name: echo
    health_check: { path: /health, interval: 5s, timeout: 2s, healthy_threshold: 2, unhealthy_threshold: 2 }
    load_balancer: { strategy: round-robin }
    timeout: 10s
    instances: [ "http://127.0.0.1:8081" ]
routes:
  - name: echo
    match: { path_prefix: /echo, methods: [GET, POST] }
    service: echo
    strip_prefix: true
"#;

/// The problems of a config expected to be invalid, one per line.
pub(super) fn invalid(doc: &str) -> String {
    match GatewayConfig::load(doc.as_bytes()) {
        Err(ConfigError::Invalid(errors)) => errors.join("\n"),
        other => panic!("expected an invalid config, got {other:?}"),
    }
}
