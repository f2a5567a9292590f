//! A route: which requests it takes ([`RouteMatch`]), where it sends them
//! and how, the policies it carries, and the rules on how they combine.

use super::auth::AuthConfig;
use super::cache::CacheConfig;
use super::cors::CorsConfig;
use super::fallback::FallbackResponse;
use super::rate_limit::RateLimitConfig;
use super::shared::{check_range, METHODS};
use super::signature::SignatureConfig;
use super::webhook::{WebhookConfig, DEFAULT_WEBHOOK_BODY_LIMIT};
use crate::aggregation::{route_params, AggregateConfig};
use crate::duration;
use crate::request_schema::ValidationConfig;
use crate::routing::{check_pattern, RouteSpec};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Largest request body a route may allow.
pub const MAX_BODY_LIMIT: u64 = 1 << 30;

/// Default request body limit of a route (the seed allowed 50 MiB).
pub const DEFAULT_BODY_LIMIT: u64 = 50 * 1024 * 1024;

/// A route: which requests go to which service, and how the path is rewritten.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique route name (shown in metrics and logs).
    pub name: String,
    /// What requests the route takes.
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    /// Target service (absent for an aggregate route).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
    /// Remove the matched `path_prefix` before forwarding (`/echo/x` -> `/x`).
    #[serde(default)]
    pub strip_prefix: bool,
    /// Replace the matched prefix (or, for an exact path, the whole path,
    /// with `{param}` filled in) by this path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<String>,
    /// Largest request body accepted, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// Overrides the service's timeout for this route.
    #[serde(
        default,
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Answer sent instead of the service's while its circuit breaker is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<FallbackResponse>,
    /// Access-token authentication; absent: the route is public.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
    /// Cross-origin policy answered by the gateway; absent: CORS headers
    /// pass through from the upstream untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<CorsConfig>,
    /// Answer from several services at once instead of one `service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<AggregateConfig>,
    /// A provider's webhook: raw body forwarded byte for byte, no
    /// authentication, and 500 (so the provider retries) when the service
    /// cannot take it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookConfig>,
    /// Request validation per method (`POST: { body: <JSON Schema>,
    /// unknown_fields: strip }`); absent: requests pass unchecked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<ValidationConfig>,
    /// Shared response cache of the route's GET answers; absent: nothing
    /// is cached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheConfig>,
    /// Request rate limit, shared by every data plane through Redis;
    /// absent: only the data plane's global default applies (if enabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
    /// HMAC-SHA256 request signatures (partner callbacks): a request
    /// without a valid, fresh signature is refused with 401.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignatureConfig>,
    /// Pass request headers whose names contain `_` on to the service
    /// (dropped by default: CGI and WSGI servers read `X_User_Id` as
    /// `X-User-Id`). Underscore spellings of the gateway's own headers are
    /// dropped even so.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_underscore_headers: bool,
}

impl RouteConfig {
    /// The body limit in force for this route.
    pub fn body_limit(&self) -> u64 {
        let default = if self.webhook.is_some() {
            DEFAULT_WEBHOOK_BODY_LIMIT
        } else {
            DEFAULT_BODY_LIMIT
        };
        self.max_body_bytes.unwrap_or(default)
    }

    /// The limit of a body held whole for validation: `max_body_bytes`, else
    /// [`DEFAULT_VALIDATED_BODY_LIMIT`](crate::request_schema::DEFAULT_VALIDATED_BODY_LIMIT).
    pub fn validated_body_limit(&self) -> u64 {
        self.max_body_bytes
            .unwrap_or(crate::request_schema::DEFAULT_VALIDATED_BODY_LIMIT)
    }
}

/// Request matching of a route. Exactly one of `path` and `path_prefix`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Exact path; segments may be `{param}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Path prefix on segment boundaries (`/echo` takes `/echo` and `/echo/x`, not `/echoes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Allowed methods; empty for all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Host (`api.example.com` or `*.example.com`); absent for any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

impl<'a> RouteSpec<'a> {
    /// The matching part of a route config.
    pub fn from_route(route: &'a RouteConfig) -> Self {
        let m = &route.matcher;
        let (path, prefix) = match (&m.path, &m.path_prefix) {
            (Some(p), _) => (p.as_str(), false),
            (None, Some(p)) => (p.as_str(), true),
            (None, None) => ("/", true),
        };
        Self {
            name: &route.name,
            path,
            prefix,
            methods: &m.methods,
            host: m.host.as_deref(),
        }
    }
}

impl RouteMatch {
    /// Checks the path pattern, the methods and the host; problems are
    /// pushed with `at` (the route's `match`) as their path.
    fn validate(&self, at: &str, errors: &mut Vec<String>) {
        match (&self.path, &self.path_prefix) {
            (Some(_), Some(_)) | (None, None) => {
                errors.push(format!("{at}: needs exactly one of path and path_prefix"));
            }
            (Some(p), None) | (None, Some(p)) => {
                if let Err(e) = check_pattern(p, self.path_prefix.is_some()) {
                    errors.push(format!("{at}: {e}"));
                }
            }
        }
        for method in &self.methods {
            if !METHODS.contains(&method.as_str()) {
                errors.push(format!(
                    "{at}.methods: unknown method {method:?} (use upper case)"
                ));
            }
        }
        if let Some(host) = &self.host {
            let bare = host.strip_prefix("*.").unwrap_or(host);
            let valid = !bare.is_empty()
                && bare.len() <= 253
                && bare
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !valid || host.bytes().any(|b| b.is_ascii_uppercase()) {
                errors.push(format!(
                    "{at}.host: {host:?} must be a lower-case host name or *.domain"
                ));
            }
        }
    }
}

impl RouteConfig {
    /// Checks the route and its policies; problems are pushed with `at` as
    /// their path. Service names are checked by the whole config.
    pub(super) fn validate(&self, at: &str, errors: &mut Vec<String>) {
        if self.name.is_empty()
            || self.name.len() > 128
            || self
                .name
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            errors.push(format!(
                "{at}.name: must be 1-128 characters without spaces"
            ));
        }
        self.matcher.validate(&format!("{at}.match"), errors);
        self.validate_forwarding(at, errors);
        self.validate_policies(at, errors);
    }

    /// Checks how the request is passed on: prefix stripping, rewriting, the
    /// body limit and the timeout.
    fn validate_forwarding(&self, at: &str, errors: &mut Vec<String>) {
        if self.strip_prefix && self.matcher.path_prefix.is_none() {
            errors.push(format!(
                "{at}.strip_prefix: only applies to path_prefix routes"
            ));
        }
        if self.strip_prefix && self.rewrite.is_some() {
            errors.push(format!("{at}: strip_prefix and rewrite exclude each other"));
        }
        if let Some(rewrite) = &self.rewrite {
            if !rewrite.starts_with('/') {
                errors.push(format!("{at}.rewrite: must start with '/'"));
            }
        }
        if let Some(limit) = self.max_body_bytes {
            if limit > MAX_BODY_LIMIT {
                errors.push(format!("{at}.max_body_bytes: at most {MAX_BODY_LIMIT}"));
            }
        }
        if let Some(t) = self.timeout {
            check_range(
                errors,
                &format!("{at}.timeout"),
                t,
                Duration::from_millis(1),
                Duration::from_secs(3600),
            );
        }
    }

    /// Checks each policy of the route, then the rules of aggregate,
    /// webhook and signed routes.
    fn validate_policies(&self, at: &str, errors: &mut Vec<String>) {
        if let Some(fallback) = &self.fallback {
            fallback.validate(&format!("{at}.fallback"), errors);
        }
        if let Some(auth) = &self.auth {
            auth.validate(
                &format!("{at}.auth"),
                &route_params(self.matcher.path.as_deref()),
                &self.matcher.methods,
                errors,
            );
        }
        if let Some(cors) = &self.cors {
            cors.validate(&format!("{at}.cors"), errors);
        }
        if self.aggregate.is_some() {
            self.validate_aggregate_route(at, errors);
        }
        if self.webhook.is_some() {
            self.validate_webhook_route(at, errors);
        }
        if let Some(validation) = &self.validation {
            self.validate_validation(validation, &format!("{at}.validation"), errors);
        }
        if let Some(cache) = &self.cache {
            cache.validate(&format!("{at}.cache"), &self.matcher.methods, errors);
        }
        if let Some(limit) = &self.rate_limit {
            let requires_token = self.auth.as_ref().is_some_and(|a| a.required);
            limit.validate(&format!("{at}.rate_limit"), requires_token, errors);
        }
        if let Some(signature) = &self.signature {
            self.validate_signature(signature, at, errors);
        }
    }

    /// A signed route reads its signature headers itself and forwards the
    /// body it signed untouched.
    fn validate_signature(&self, signature: &SignatureConfig, at: &str, errors: &mut Vec<String>) {
        signature.validate(&format!("{at}.signature"), errors);
        for name in [&signature.header, &signature.timestamp_header] {
            if name.contains('_') && !self.allow_underscore_headers {
                errors.push(format!(
                    "{at}.signature: header {name:?} has a '_', and such headers are dropped unless the route sets allow_underscore_headers: true"
                ));
            }
        }
        if self.validation.is_some() {
            errors.push(format!(
                "{at}.validation: a signed body is forwarded byte for byte, never validated or rewritten"
            ));
        }
    }

    /// An aggregate route answers GET itself: nothing of a proxied route's
    /// forwarding applies.
    fn validate_aggregate_route(&self, at: &str, errors: &mut Vec<String>) {
        if !self.service.is_empty() {
            errors.push(format!("{at}: service and aggregate exclude each other"));
        }
        let m = &self.matcher;
        if m.methods.is_empty() || m.methods.iter().any(|x| x != "GET" && x != "HEAD") {
            errors.push(format!(
                "{at}.match.methods: an aggregate route takes only GET (and HEAD): set methods: [GET]"
            ));
        }
        for (field, set) in [
            ("strip_prefix", self.strip_prefix),
            ("rewrite", self.rewrite.is_some()),
            ("fallback", self.fallback.is_some()),
            ("webhook", self.webhook.is_some()),
            ("validation", self.validation.is_some()),
            ("cache", self.cache.is_some()),
            ("signature", self.signature.is_some()),
        ] {
            if set {
                errors.push(format!(
                    "{at}.{field}: does not apply to an aggregate route"
                ));
            }
        }
    }

    /// A webhook's caller has no token and retries on 5xx: an auth policy
    /// would refuse every call, a fallback would answer 2xx and lose the event.
    fn validate_webhook_route(&self, at: &str, errors: &mut Vec<String>) {
        if self.auth.is_some() {
            errors.push(format!(
                "{at}.auth: a webhook route is called without a token (the service verifies the provider's signature)"
            ));
        }
        if self.fallback.is_some() {
            errors.push(format!(
                "{at}.fallback: a webhook route must not answer for the service (the provider would not retry)"
            ));
        }
        if self.validation.is_some() {
            errors.push(format!(
                "{at}.validation: a webhook body is forwarded untouched, never validated or rewritten"
            ));
        }
    }

    /// Checks the request-validation policy against the route's methods.
    fn validate_validation(&self, policy: &ValidationConfig, at: &str, errors: &mut Vec<String>) {
        if policy.is_empty() {
            errors.push(format!("{at}: names no method"));
        }
        let methods = &self.matcher.methods;
        for (method, rules) in policy {
            let at = format!("{at}.{method}");
            if !METHODS.contains(&method.as_str()) {
                errors.push(format!("{at}: unknown method {method:?} (use upper case)"));
                continue;
            }
            if !methods.is_empty() && !methods.contains(method) {
                errors.push(format!(
                    "{at}: the route does not take {method} (match.methods)"
                ));
            }
            rules.validate(method, &at, errors);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::invalid;
    use crate::config::{ConfigError, GatewayConfig};

    #[test]
    fn validation_parses_and_round_trips() {
        let doc = r#"
version: 1
services: [ { name: api } ]
routes:
  - name: api
    match: { path: /api/items, methods: [GET, POST] }
    service: api
    validation:
      POST: { body: { type: object, properties: { price: { type: number, minimum: 0 } } }, unknown_fields: reject }
      GET: { query: { type: object, properties: { page: { type: integer } } } }
"#;
        let config = GatewayConfig::load(doc.as_bytes()).unwrap();
        let policy = config.routes[0].validation.as_ref().unwrap();
        assert_eq!(
            policy["POST"].unknown_fields,
            crate::request_schema::UnknownFields::Reject
        );
        assert_eq!(
            policy["GET"].unknown_fields,
            crate::request_schema::UnknownFields::Strip
        );
        assert_eq!(config.routes[0].validated_body_limit(), 1024 * 1024);
        assert_eq!(GatewayConfig::from_json(&config.to_json()).unwrap(), config);
    }

    #[test]
    fn invalid_validation_is_refused_with_paths() {
        let all = invalid(
            r#"
version: 1
services: [ { name: api } ]
routes:
  - name: api
    match: { path_prefix: /api, methods: [GET, POST] }
    service: api
    validation:
      POST: { body: { type: object, properties: { price: { type: numeric } } } }
      PUT: { body: { type: object } }
      GET: { body: { type: object }, query: { type: string } }
      get: { query: { type: object } }
      DELETE: {}
  - name: refs
    match: { path_prefix: /refs }
    service: api
    validation:
      POST: { body: { $ref: "https://example.com/schema.json" } }
      PATCH: { body: { type: string, pattern: "(?<=a)b" } }
  - name: none
    match: { path_prefix: /none }
    service: api
    validation: {}
"#,
        );
        for needle in [
            "routes[0].validation.POST.body: invalid JSON Schema:",
            "/properties/price/type",
            "routes[0].validation.PUT: the route does not take PUT",
            "routes[0].validation.GET.body: GET requests carry no body",
            "routes[0].validation.GET.query: type must be \"object\"",
            "routes[0].validation.get: unknown method \"get\"",
            "routes[0].validation.DELETE: needs a body or query schema",
            "routes[1].validation.POST.body: invalid JSON Schema:",
            "routes[1].validation.PATCH.body: invalid JSON Schema:",
            "routes[2].validation: names no method",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        // Not a map of methods at all: refused when parsed.
        let doc = "version: 1\nservices: [ { name: a } ]\nroutes:\n  - { name: a, match: { path_prefix: /a }, service: a, validation: { POST: { schema: {} } } }\n";
        assert!(matches!(
            GatewayConfig::load(doc.as_bytes()),
            Err(ConfigError::Parse(m)) if m.contains("schema")
        ));
    }

    const AGGREGATE: &str = r#"
version: 1
services: [ { name: event }, { name: nft } ]
routes:
  - name: event-details
    match: { path: "/api/v1/events/{id}/details", methods: [GET] }
    auth: {}
    aggregate:
      sources:
        - { name: event, service: event, path: "/api/v1/events/{id}", required: true, select: { id: id, title: name } }
        - name: tickets
          service: event
          path: "/api/v1/users/{id}/tickets?limit=10"
          required: true
          split_by_time: { field: event_date, into: { upcoming: after_now, past: before_now } }
        - { name: nftStatus, service: nft, path: "/nft/{id}", timeout: 500ms, fallback: { enabled: false } }
  - name: stripe
    match: { path: /webhooks/stripe, methods: [POST] }
    service: nft
    webhook: { provider: stripe }
"#;

    #[test]
    fn aggregates_and_webhooks_parse_and_round_trip() {
        let config = GatewayConfig::load(AGGREGATE.as_bytes()).unwrap();
        let sources = &config.routes[0].aggregate.as_ref().unwrap().sources;
        assert_eq!(sources.len(), 3);
        assert!(config.routes[0].service.is_empty());
        assert_eq!(sources[0].select["title"], "name");
        assert_eq!(sources[1].timeout, Duration::from_secs(2));
        assert!(!sources[2].required);
        assert_eq!(
            sources[2].fallback,
            Some(serde_json::json!({"enabled": false}))
        );
        assert_eq!(config.routes[1].body_limit(), DEFAULT_WEBHOOK_BODY_LIMIT);
        assert_eq!(GatewayConfig::from_json(&config.to_json()).unwrap(), config);
        let yaml = serde_norway::to_string(&config).unwrap();
        assert_eq!(GatewayConfig::load(yaml.as_bytes()).unwrap(), config);
    }

    #[test]
    fn invalid_aggregates_are_refused_with_paths() {
        let errors = invalid(
            r#"
version: 1
services: [ { name: event } ]
routes:
  - name: agg
    match: { path: "/a/{id}" }
    service: event
    strip_prefix: false
    rewrite: /x
    webhook: { provider: generic }
    aggregate:
      sources:
        - { name: one, service: missing, path: "/e/{eventId}", timeout: 0ms }
        - { name: one, service: event, path: "e/{id}", required: true, fallback: [] }
        - { name: _metadata, service: event, path: "/x/{id", timeout: 2m }
        - { name: s, service: event, path: /s, select: { "bad key": a, ok: "a..b" }, split_by_time: { field: "", into: {} } }
  - { name: empty, match: { path: /e, methods: [GET] }, aggregate: { sources: [] } }
  - { name: none, match: { path: /n } }
"#,
        );
        for expected in [
            "routes[0]: service and aggregate exclude each other",
            "routes[0].match.methods: an aggregate route takes only GET",
            "routes[0].rewrite: does not apply to an aggregate route",
            "routes[0].webhook: does not apply to an aggregate route",
            r#"routes[0].aggregate.sources[0].service: unknown service "missing""#,
            "routes[0].aggregate.sources[0].path: {eventId} is not a parameter of the route's match.path",
            "routes[0].aggregate.sources[0].timeout: must be between 1ms and 1m, got 0s",
            r#"routes[0].aggregate.sources[1].name: duplicate source "one""#,
            r#"routes[0].aggregate.sources[1].path: "e/{id}" must start with '/'"#,
            "routes[0].aggregate.sources[1].fallback: a required source has no fallback",
            r#"routes[0].aggregate.sources[2].name: "_metadata" must be 1-64 letters"#,
            r#"routes[0].aggregate.sources[2].path: "/x/{id" has an unclosed '{'"#,
            "routes[0].aggregate.sources[2].timeout: must be between 1ms and 1m, got 2m",
            r#"routes[0].aggregate.sources[3].select: output key "bad key""#,
            r#"routes[0].aggregate.sources[3].select.ok: "a..b" is not a field path"#,
            r#"routes[0].aggregate.sources[3].split_by_time.field: "" is not a field path"#,
            "routes[0].aggregate.sources[3].split_by_time.into: must name at least one output",
            "routes[1].aggregate.sources: must have between 1 and 32 sources",
            "routes[2]: needs a service (or an aggregate)",
        ] {
            assert!(errors.contains(expected), "missing {expected:?} in\n{errors}");
        }
    }

    #[test]
    fn aggregates_conflict_with_routes_in_the_shared_table() {
        let errors = invalid(
            r#"
version: 1
services: [ { name: event } ]
routes:
  - { name: plain, match: { path: "/e/{id}", methods: [GET] }, service: event }
  - name: agg
    match: { path: "/e/{eventId}", methods: [GET] }
    aggregate: { sources: [ { name: e, service: event, path: "/e/{eventId}" } ] }
"#,
        );
        assert!(
            errors.contains("routes plain and agg both take path"),
            "{errors}"
        );
    }

    #[test]
    fn underscore_headers_are_a_route_switch() {
        let ok = GatewayConfig::load(
            br#"
version: 1
services:
  - { name: api }
  - { name: sticky, load_balancer: { strategy: consistent-hash, hash_on: "header:x_session" } }
routes:
  - { name: a, match: { path: /a }, service: api }
  - { name: b, match: { path: /b }, service: api, allow_underscore_headers: true }
  - { name: c, match: { path: /c }, service: sticky, allow_underscore_headers: true }
  - name: d
    match: { path: /d, methods: [POST] }
    service: api
    allow_underscore_headers: true
    signature: { secret_env: D_SECRET, header: x_sig }
"#,
        )
        .unwrap();
        assert!(!ok.routes[0].allow_underscore_headers);
        assert!(ok.routes[1].allow_underscore_headers);
        let json = serde_json::to_string(&ok).unwrap();
        // The default is not written out: configs without it keep their form.
        assert_eq!(json.matches("allow_underscore_headers").count(), 3);
        assert_eq!(GatewayConfig::load(json.as_bytes()).unwrap(), ok);

        let errors = invalid(
            r#"
version: 1
services:
  - { name: api }
  - { name: sticky, load_balancer: { strategy: consistent-hash, hash_on: "header:x_session" } }
routes:
  - { name: c, match: { path: /c }, service: sticky }
  - name: d
    match: { path: /d, methods: [POST] }
    service: api
    signature: { secret_env: D_SECRET, timestamp_header: x_ts }
"#,
        );
        for expected in [
            "routes[0]: service \"sticky\" hashes on header \"x_session\", which this route drops",
            "routes[1].signature: header \"x_ts\" has a '_'",
        ] {
            assert!(
                errors.contains(expected),
                "missing {expected:?} in {errors}"
            );
        }
    }
}
