//! HMAC request signatures of a route: where the secret, the signature and
//! the timestamp are found, with their defaults and checks.

use super::shared::is_header_name;
use crate::duration;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Default signature header of a signed route.
pub const DEFAULT_SIGNATURE_HEADER: &str = "x-signature";
/// Default timestamp header of a signed route.
pub const DEFAULT_SIGNATURE_TIMESTAMP_HEADER: &str = "x-timestamp";
/// Default clock skew accepted on a signed request's timestamp.
pub const DEFAULT_SIGNATURE_WINDOW: Duration = Duration::from_secs(300);
/// Largest signature window a route may set.
pub const MAX_SIGNATURE_WINDOW: Duration = Duration::from_secs(900);
/// Variables of the gateway itself, never accepted as a signing secret (a
/// config must not be able to turn them into an HMAC oracle).
pub const RESERVED_SECRET_ENV: [&str; 6] = [
    "JWT_SECRET",
    "GW_ADMIN_TOKEN",
    "GW_REGISTRATION_TOKEN",
    "GW_DATAPLANE_TOKEN",
    "IP_SALT",
    "REDIS_URL",
];

/// HMAC request signatures of a route. The secret never travels in the
/// config: each data plane reads it from the environment variable named
/// here. The signature is HMAC-SHA256 over
/// `TIMESTAMP "." METHOD "." PATH_AND_QUERY "." BODY`, sent hex-encoded
/// (optionally prefixed `sha256=`); the timestamp is in Unix seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureConfig {
    /// Environment variable of the data plane holding the shared secret
    /// (at least 32 bytes), e.g. `PARTNER_X_SECRET`.
    pub secret_env: String,
    /// Header carrying the signature.
    #[serde(default = "default_signature_header")]
    pub header: String,
    /// Header carrying the timestamp (Unix seconds).
    #[serde(default = "default_signature_timestamp_header")]
    pub timestamp_header: String,
    /// Largest difference between the timestamp and the gateway's clock
    /// (default 5m, at most 15m).
    #[serde(default = "default_signature_window", with = "duration")]
    pub window: Duration,
}

fn default_signature_header() -> String {
    DEFAULT_SIGNATURE_HEADER.to_string()
}

fn default_signature_timestamp_header() -> String {
    DEFAULT_SIGNATURE_TIMESTAMP_HEADER.to_string()
}

fn default_signature_window() -> Duration {
    DEFAULT_SIGNATURE_WINDOW
}

impl SignatureConfig {
    pub(super) fn validate(&self, at: &str, errors: &mut Vec<String>) {
        let env = &self.secret_env;
        let well_formed = (1..=128).contains(&env.len())
            && env.starts_with(|c: char| c.is_ascii_uppercase())
            && env
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if !well_formed {
            errors.push(format!(
                "{at}.secret_env: {env:?} must be an environment variable name (A-Z, 0-9, _), not the secret"
            ));
        } else if RESERVED_SECRET_ENV.contains(&env.as_str()) {
            errors.push(format!(
                "{at}.secret_env: {env} is one of the gateway's own secrets; use a variable of its own"
            ));
        }
        for (field, name) in [
            ("header", &self.header),
            ("timestamp_header", &self.timestamp_header),
        ] {
            if !is_header_name(name) || name.bytes().any(|b| b.is_ascii_uppercase()) {
                errors.push(format!(
                    "{at}.{field}: {name:?} is not a lower-case header name"
                ));
            }
        }
        if self.header == self.timestamp_header {
            errors.push(format!("{at}: header and timestamp_header must differ"));
        }
        if self.window.is_zero() || self.window > MAX_SIGNATURE_WINDOW {
            errors.push(format!(
                "{at}.window: must be between 1s and {}m",
                MAX_SIGNATURE_WINDOW.as_secs() / 60
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::invalid;
    use crate::config::GatewayConfig;

    #[test]
    fn signature_policies_name_a_variable_not_a_secret() {
        let ok = GatewayConfig::load(
            br#"
version: 1
services: [ { name: partner } ]
routes:
  - name: cb
    match: { path: /cb, methods: [POST] }
    service: partner
    signature: { secret_env: PARTNER_X_SECRET }
"#,
        )
        .unwrap();
        let sig = ok.routes[0].signature.as_ref().unwrap();
        assert_eq!(sig.header, "x-signature");
        assert_eq!(sig.timestamp_header, "x-timestamp");
        assert_eq!(sig.window, DEFAULT_SIGNATURE_WINDOW);
        let round = serde_json::to_string(&ok).unwrap();
        assert_eq!(GatewayConfig::load(round.as_bytes()).unwrap(), ok);
        let errors = invalid(
            r#"
version: 1
services: [ { name: partner } ]
routes:
  - name: a
    match: { path: /a }
    service: partner
    signature: { secret_env: "s3cr3t-value", header: X-Sig, window: 1h }
  - name: b
    match: { path: /b }
    service: partner
    signature: { secret_env: JWT_SECRET, header: x-t, timestamp_header: x-t }
    validation: { POST: { body: { type: object } } }
  - name: c
    match: { path: /c, methods: [GET] }
    aggregate: { sources: [ { name: s, service: partner, path: /s } ] }
    signature: { secret_env: C_SECRET }
"#,
        );
        for expected in [
            "routes[0].signature.secret_env: \"s3cr3t-value\" must be an environment variable name",
            "routes[0].signature.header: \"X-Sig\" is not a lower-case header name",
            "routes[0].signature.window: must be between 1s and 15m",
            "routes[1].signature.secret_env: JWT_SECRET is one of the gateway's own secrets",
            "routes[1].signature: header and timestamp_header must differ",
            "routes[1].validation: a signed body is forwarded byte for byte",
            "routes[2].signature: does not apply to an aggregate route",
        ] {
            assert!(
                errors.contains(expected),
                "missing {expected:?} in {errors}"
            );
        }
    }
}
