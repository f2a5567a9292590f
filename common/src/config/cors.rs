//! The CORS policy of a route: origins, methods, headers and preflight
//! caching, with the seed's defaults and their checks.

use super::shared::{check_range, is_header_name, METHODS};
use crate::duration;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The CORS policy of a route (defaults are the seed's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Allowed origins, `scheme://host[:port]`, or `*` (any origin, only
    /// without credentials).
    pub allowed_origins: Vec<String>,
    /// Whether credentials (cookies, `Authorization`) may be sent.
    #[serde(default)]
    pub allow_credentials: bool,
    /// Methods a preflight allows.
    #[serde(default = "default_cors_methods")]
    pub allowed_methods: Vec<String>,
    /// Request headers a preflight allows.
    #[serde(default = "default_cors_allowed_headers")]
    pub allowed_headers: Vec<String>,
    /// Response headers scripts may read.
    #[serde(default = "default_cors_exposed_headers")]
    pub exposed_headers: Vec<String>,
    /// How long browsers may cache a preflight answer.
    #[serde(default = "default_cors_max_age", with = "duration")]
    pub max_age: Duration,
}

fn default_cors_methods() -> Vec<String> {
    ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
        .map(String::from)
        .to_vec()
}

fn default_cors_allowed_headers() -> Vec<String> {
    [
        "Content-Type",
        "Authorization",
        "X-API-Key",
        "X-Request-ID",
        "X-Venue-ID",
        "X-Venue-Tier",
        "X-Idempotency-Key",
        "Idempotency-Key",
    ]
    .map(String::from)
    .to_vec()
}

fn default_cors_exposed_headers() -> Vec<String> {
    [
        "X-Request-ID",
        "X-RateLimit-Limit",
        "X-RateLimit-Remaining",
        "X-RateLimit-Reset",
        "Retry-After",
        "Location",
    ]
    .map(String::from)
    .to_vec()
}

fn default_cors_max_age() -> Duration {
    Duration::from_secs(600)
}

impl CorsConfig {
    pub(super) fn validate(&self, at: &str, errors: &mut Vec<String>) {
        if self.allowed_origins.is_empty() {
            errors.push(format!(
                "{at}.allowed_origins: must name at least one origin"
            ));
        }
        for (i, origin) in self.allowed_origins.iter().enumerate() {
            if origin == "*" {
                if self.allow_credentials {
                    errors.push(format!(
                        "{at}.allowed_origins[{i}]: \"*\" cannot be combined with allow_credentials"
                    ));
                }
                continue;
            }
            if let Err(e) = check_origin(origin) {
                errors.push(format!("{at}.allowed_origins[{i}]: {origin:?} {e}"));
            }
        }
        for method in &self.allowed_methods {
            if !METHODS.contains(&method.as_str()) {
                errors.push(format!(
                    "{at}.allowed_methods: unknown method {method:?} (use upper case)"
                ));
            }
        }
        for (field, list) in [
            ("allowed_headers", &self.allowed_headers),
            ("exposed_headers", &self.exposed_headers),
        ] {
            for name in list {
                if !is_header_name(name) {
                    errors.push(format!("{at}.{field}: {name:?} is not a header name"));
                }
            }
        }
        check_range(
            errors,
            &format!("{at}.max_age"),
            self.max_age,
            Duration::ZERO,
            Duration::from_secs(86_400),
        );
    }
}

/// Checks a CORS origin: lower-case `http(s)://host[:port]`, nothing else.
fn check_origin(origin: &str) -> Result<(), &'static str> {
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or("must start with http:// or https://")?;
    let valid = !rest.is_empty()
        && rest.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'-' | b'.' | b':' | b'[' | b']')
        });
    if valid {
        Ok(())
    } else {
        Err("must be a lower-case scheme://host[:port] without path")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::invalid;
    use crate::config::GatewayConfig;

    #[test]
    fn cors_parses_with_the_seed_defaults() {
        let doc = r#"
version: 1
services: [ { name: api } ]
routes:
  - name: api
    match: { path_prefix: /api }
    service: api
    cors: { allowed_origins: ["https://app.example.com"], allow_credentials: true }
"#;
        let config = GatewayConfig::load(doc.as_bytes()).unwrap();
        let cors = config.routes[0].cors.as_ref().unwrap();
        assert_eq!(cors.allowed_methods.len(), 6);
        assert!(cors.allowed_headers.iter().any(|h| h == "Authorization"));
        assert!(cors.exposed_headers.iter().any(|h| h == "X-Request-ID"));
        assert_eq!(cors.max_age, Duration::from_secs(600));
        assert_eq!(GatewayConfig::from_json(&config.to_json()).unwrap(), config);
    }

    #[test]
    fn invalid_cors_is_refused_with_paths() {
        let errors = invalid(
            r#"
version: 1
services: [ { name: api } ]
routes:
  - name: api
    match: { path_prefix: /api }
    service: api
    cors:
      allowed_origins: ["*", "https://app.example.com/path", "ftp://x", "https://App.example.com"]
      allow_credentials: true
      allowed_methods: [get]
      allowed_headers: ["bad header"]
  - { name: b, match: { path_prefix: /b }, service: api, cors: { allowed_origins: [] } }
"#,
        );
        for expected in [
            r#"routes[0].cors.allowed_origins[0]: "*" cannot be combined with allow_credentials"#,
            r#"routes[0].cors.allowed_origins[1]: "https://app.example.com/path" must be a lower-case"#,
            r#"routes[0].cors.allowed_origins[2]: "ftp://x" must start with http:// or https://"#,
            r#"routes[0].cors.allowed_origins[3]: "https://App.example.com" must be a lower-case"#,
            r#"routes[0].cors.allowed_methods: unknown method "get""#,
            r#"routes[0].cors.allowed_headers: "bad header" is not a header name"#,
            "routes[1].cors.allowed_origins: must name at least one origin",
        ] {
            assert!(
                errors.contains(expected),
                "missing {expected:?} in\n{errors}"
            );
        }
    }
}
