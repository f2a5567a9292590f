//! The rate limit of a route: requests per window, whom it counts and the
//! per-tier limits, with their defaults and checks.

use super::shared::{check_range, default_true};
use crate::duration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Largest `requests` (per window) of a rate limit.
pub const MAX_RATE_LIMIT_REQUESTS: u32 = 1_000_000;
/// Shortest rate-limit window.
pub const MIN_RATE_LIMIT_WINDOW: Duration = Duration::from_secs(1);
/// Longest rate-limit window.
pub const MAX_RATE_LIMIT_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// The tiers a limit may name (the seed's venue tiers).
pub const RATE_LIMIT_TIERS: [&str; 3] = ["free", "standard", "premium"];

/// The rate limit of a route: `requests` per `window` per client, the
/// client being the verified user or the (hashed) client IP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// `false` exempts the route, also from the global default.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Requests allowed per window (the seed's default: 100).
    #[serde(default = "default_rate_limit_requests")]
    pub requests: u32,
    /// The window (the seed's default: 60s), 1s to 24h.
    #[serde(default = "default_rate_limit_window", with = "duration")]
    pub window: Duration,
    /// Whom the limit counts.
    #[serde(default)]
    pub key: RateLimitKey,
    /// Requests per window by tier (`free`, `standard`, `premium`), in place
    /// of `requests` for callers of that tier.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tiers: BTreeMap<String, u32>,
    /// Take the tier from the client's `X-Venue-Tier` header when the token
    /// names none. Only for routes whose clients are trusted (the header
    /// is the client's word); otherwise only the token's `tier` counts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub trust_tier_header: bool,
}

/// Whom a rate limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitKey {
    /// The verified user when the request carries a valid token, else the
    /// client IP.
    #[default]
    Auto,
    /// The verified user (the route must require a token; requests on its
    /// public paths count by IP).
    User,
    /// The client IP, even for authenticated requests.
    Ip,
}

fn default_rate_limit_requests() -> u32 {
    100
}

fn default_rate_limit_window() -> Duration {
    Duration::from_secs(60)
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            requests: default_rate_limit_requests(),
            window: default_rate_limit_window(),
            key: RateLimitKey::Auto,
            tiers: BTreeMap::new(),
            trust_tier_header: false,
        }
    }
}

impl RateLimitConfig {
    /// The limit for a caller of `tier` (`None`: unknown or untiered).
    pub fn requests_for(&self, tier: Option<&str>) -> u32 {
        tier.and_then(|t| self.tiers.get(t).copied())
            .unwrap_or(self.requests)
    }

    /// Checks the limit; `requires_token` says whether the route requires a
    /// verified token (needed by `key: user`).
    pub fn validate(&self, at: &str, requires_token: bool, errors: &mut Vec<String>) {
        let count = |errors: &mut Vec<String>, at: String, n: u32| {
            if !(1..=MAX_RATE_LIMIT_REQUESTS).contains(&n) {
                errors.push(format!(
                    "{at}: must be between 1 and {MAX_RATE_LIMIT_REQUESTS}, got {n}"
                ));
            }
        };
        count(errors, format!("{at}.requests"), self.requests);
        check_range(
            errors,
            &format!("{at}.window"),
            self.window,
            MIN_RATE_LIMIT_WINDOW,
            MAX_RATE_LIMIT_WINDOW,
        );
        for (tier, &n) in &self.tiers {
            if RATE_LIMIT_TIERS.contains(&tier.as_str()) {
                count(errors, format!("{at}.tiers.{tier}"), n);
            } else {
                errors.push(format!(
                    "{at}.tiers: unknown tier {tier:?} (use free, standard or premium)"
                ));
            }
        }
        if self.trust_tier_header && self.tiers.is_empty() {
            errors.push(format!(
                "{at}.trust_tier_header: only meaningful with tiers"
            ));
        }
        if self.key == RateLimitKey::User && !requires_token {
            errors.push(format!(
                "{at}.key: user needs a route that requires a token (auth)"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::invalid;
    use crate::config::{ConfigError, GatewayConfig};

    #[test]
    fn rate_limit_parses_with_the_seed_defaults() {
        let doc = r#"
version: 1
services: [ { name: api } ]
routes:
  - name: api
    match: { path_prefix: /api }
    service: api
    auth: {}
    rate_limit: { requests: 100, window: 60s, key: user, tiers: { free: 100, standard: 500, premium: 2000 } }
  - { name: open, match: { path_prefix: /open }, service: api, rate_limit: {} }
  - { name: off, match: { path_prefix: /off }, service: api, rate_limit: { enabled: false } }
"#;
        let config = GatewayConfig::load(doc.as_bytes()).unwrap();
        let limit = config.routes[0].rate_limit.as_ref().unwrap();
        assert_eq!(limit.key, RateLimitKey::User);
        assert_eq!(limit.requests_for(Some("premium")), 2000);
        assert_eq!(limit.requests_for(Some("gold")), 100);
        assert_eq!(limit.requests_for(None), 100);
        let open = config.routes[1].rate_limit.as_ref().unwrap();
        assert_eq!(open, &RateLimitConfig::default());
        assert_eq!(open.window, Duration::from_secs(60));
        assert_eq!(open.key, RateLimitKey::Auto);
        assert!(!config.routes[2].rate_limit.as_ref().unwrap().enabled);
        assert_eq!(GatewayConfig::from_json(&config.to_json()).unwrap(), config);
    }

    #[test]
    fn invalid_rate_limits_are_refused_with_paths() {
        let errors = invalid(
            r#"
version: 1
services: [ { name: api } ]
routes:
  - name: a
    match: { path_prefix: /a }
    service: api
    rate_limit: { requests: 0, window: 500ms, key: user, tiers: { gold: 5, premium: 0 } }
  - { name: b, match: { path_prefix: /b }, service: api, rate_limit: { requests: 2000000, window: 25h, trust_tier_header: true } }
  - { name: c, match: { path_prefix: /c }, service: api, auth: { required: false }, rate_limit: { key: user } }
"#,
        );
        for expected in [
            "routes[0].rate_limit.requests: must be between 1 and 1000000, got 0",
            "routes[0].rate_limit.window: must be between 1s and 1day, got 500ms",
            r#"routes[0].rate_limit.tiers: unknown tier "gold""#,
            "routes[0].rate_limit.tiers.premium: must be between 1 and 1000000, got 0",
            "routes[0].rate_limit.key: user needs a route that requires a token",
            "routes[1].rate_limit.requests: must be between 1 and 1000000, got 2000000",
            "routes[1].rate_limit.window: must be between 1s and 1day, got 1day1h",
            "routes[1].rate_limit.trust_tier_header: only meaningful with tiers",
            "routes[2].rate_limit.key: user needs a route that requires a token",
        ] {
            assert!(
                errors.contains(expected),
                "missing {expected:?} in\n{errors}"
            );
        }
        for bad in ["key: everyone", "requests: -1", "windw: 1s"] {
            let doc = format!(
                "version: 1\nservices: [{{name: a}}]\nroutes: [{{name: r, match: {{path_prefix: /r}}, service: a, rate_limit: {{{bad}}}}}]\n"
            );
            assert!(
                matches!(
                    GatewayConfig::load(doc.as_bytes()),
                    Err(ConfigError::Parse(_))
                ),
                "{bad} parsed"
            );
        }
    }
}
