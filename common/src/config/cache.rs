//! The response-cache policy of a route: TTL, key and body limits, with
//! their checks.

use super::shared::check_range;
use crate::duration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::time::Duration;

/// Shortest cache TTL.
pub const MIN_CACHE_TTL: Duration = Duration::from_secs(1);
/// Longest cache TTL.
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default largest body stored in the cache (larger answers pass through).
pub const DEFAULT_CACHE_BODY_LIMIT: u64 = 1024 * 1024;
/// Largest `cache.max_body_bytes` a route may set.
pub const MAX_CACHE_BODY_LIMIT: u64 = 16 * 1024 * 1024;
/// Most query parameters a cache key may vary by.
pub const MAX_VARY_BY_QUERY: usize = 32;

/// The response-cache policy of a route: which GET answers are kept, for
/// how long and under which key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// How long an answer is kept (1s to 24h); an upstream
    /// `Cache-Control: max-age`/`s-maxage` can only shorten it.
    #[serde(with = "duration")]
    pub ttl: Duration,
    /// Query parameters that select a different entry; every other
    /// parameter is ignored by the key (and still sent upstream).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vary_by_query: Vec<String>,
    /// One entry for every caller. By default the key of an authenticated
    /// request carries its tenant and user, and a request with credentials
    /// the gateway did not verify (`Authorization`, `Cookie`) is not cached.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
    /// Largest body stored (default 1 MiB, at most 16 MiB); larger answers
    /// stream through uncached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
}

impl CacheConfig {
    /// The largest body stored, in bytes.
    pub fn body_limit(&self) -> u64 {
        self.max_body_bytes.unwrap_or(DEFAULT_CACHE_BODY_LIMIT)
    }

    pub(super) fn validate(&self, at: &str, methods: &[String], errors: &mut Vec<String>) {
        check_range(
            errors,
            &format!("{at}.ttl"),
            self.ttl,
            MIN_CACHE_TTL,
            MAX_CACHE_TTL,
        );
        if self.vary_by_query.len() > MAX_VARY_BY_QUERY {
            errors.push(format!(
                "{at}.vary_by_query: at most {MAX_VARY_BY_QUERY} parameters"
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, name) in self.vary_by_query.iter().enumerate() {
            if !crate::cache::is_query_param_name(name) {
                errors.push(format!(
                    "{at}.vary_by_query[{i}]: {name:?} must be 1-128 characters of letters, digits, '-', '_', '.', '~', '[' or ']'"
                ));
            } else if !seen.insert(name.as_str()) {
                errors.push(format!("{at}.vary_by_query[{i}]: {name:?} is listed twice"));
            }
        }
        if let Some(limit) = self.max_body_bytes {
            if limit == 0 || limit > MAX_CACHE_BODY_LIMIT {
                errors.push(format!(
                    "{at}.max_body_bytes: must be between 1 and {MAX_CACHE_BODY_LIMIT}"
                ));
            }
        }
        if !methods.is_empty() && !methods.iter().any(|m| m == "GET") {
            errors.push(format!(
                "{at}: only GET answers are cached, and the route does not take GET"
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
    fn cache_parses_with_defaults_and_round_trips() {
        let doc = r#"
version: 1
services: [ { name: api } ]
routes:
  - name: events
    match: { path_prefix: /events, methods: [GET, POST] }
    service: api
    cache: { ttl: 60s, vary_by_query: [page, limit, "filter[status]"] }
  - name: venues
    match: { path_prefix: /venues }
    service: api
    cache: { ttl: 30m, shared: true, max_body_bytes: 2048 }
"#;
        let config = GatewayConfig::load(doc.as_bytes()).unwrap();
        let events = config.routes[0].cache.as_ref().unwrap();
        assert_eq!(events.ttl, Duration::from_secs(60));
        assert!(!events.shared);
        assert_eq!(events.body_limit(), DEFAULT_CACHE_BODY_LIMIT);
        let venues = config.routes[1].cache.as_ref().unwrap();
        assert!(venues.shared);
        assert_eq!(venues.body_limit(), 2048);
        let back = GatewayConfig::from_json(&config.to_json()).unwrap();
        assert_eq!(back, config);
    }

    #[test]
    fn invalid_cache_policies_are_reported_with_their_path() {
        let all = invalid(
            r#"
version: 1
services: [ { name: api } ]
routes:
  - name: a
    match: { path_prefix: /a }
    service: api
    cache: { ttl: 500ms, vary_by_query: [page, "bad name", page, ""], max_body_bytes: 0 }
  - name: b
    match: { path_prefix: /b, methods: [POST] }
    service: api
    cache: { ttl: 25h, max_body_bytes: 999999999 }
"#,
        );
        for needle in [
            "routes[0].cache.ttl: must be between 1s and 1day",
            "routes[0].cache.vary_by_query[1]: \"bad name\" must be",
            "routes[0].cache.vary_by_query[2]: \"page\" is listed twice",
            "routes[0].cache.vary_by_query[3]: \"\" must be",
            "routes[0].cache.max_body_bytes: must be between 1 and",
            "routes[1].cache.ttl: must be between",
            "routes[1].cache.max_body_bytes",
            "routes[1].cache: only GET answers are cached",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        let unknown = GatewayConfig::load(
            b"version: 1\nservices: [ { name: api } ]\nroutes: [ { name: a, match: { path: /a }, service: api, cache: { ttl: 1s, tll: 2s } } ]\n",
        );
        assert!(unknown.is_err());
        let missing_ttl = GatewayConfig::load(
            b"version: 1\nservices: [ { name: api } ]\nroutes: [ { name: a, match: { path: /a }, service: api, cache: { shared: true } } ]\n",
        );
        assert!(missing_ttl.is_err());
    }
}
