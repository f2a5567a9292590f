//! The declarative config model shared by `gwctl apply` and
//! `data-plane --config`: services, routes and their policies.
//!
//! A document is parsed ([`GatewayConfig::parse`]), then validated as a
//! whole ([`GatewayConfig::validate`]): every problem is reported with its
//! path, and a config with any problem is rejected whole.

use crate::aggregation::route_params;
pub use crate::aggregation::{AggregateConfig, SourceConfig, SplitByTime, TimeSide};
use crate::duration;
use crate::request_schema::ValidationConfig;
use crate::routing::{RouteSpec, RouteTable};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

/// The only config format version understood.
pub const CONFIG_VERSION: u32 = 1;

/// Largest request body a route may allow.
pub const MAX_BODY_LIMIT: u64 = 1 << 30;

/// Default request body limit of a route (the seed allowed 50 MiB).
pub const DEFAULT_BODY_LIMIT: u64 = 50 * 1024 * 1024;

/// A whole gateway config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Format version; must be 1.
    pub version: u32,
    /// Upstream services.
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
    /// Routes from public paths to services.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            version: CONFIG_VERSION,
            services: Vec::new(),
            routes: Vec::new(),
        }
    }
}

/// An upstream service: how its instances are checked, balanced and called.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Service name, `[a-z0-9-]{1,63}`.
    pub name: String,
    /// Active health checks run by the control plane.
    #[serde(default)]
    pub health_check: HealthCheckConfig,
    /// How requests are spread over instances.
    #[serde(default)]
    pub load_balancer: LoadBalancerConfig,
    /// Time allowed for the upstream to answer (response headers).
    #[serde(default = "default_timeout", with = "duration")]
    pub timeout: Duration,
    /// Time allowed to open a TCP connection to an instance.
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// Static instances as `http://host:port` URLs, besides registered ones.
    #[serde(default)]
    pub instances: Vec<String>,
    /// Circuit-breaker policy (also set with `gwctl breaker set`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<BreakerConfig>,
    /// Per-endpoint timeouts keyed `"METHOD /path"` (the path the service
    /// receives; `{param}` matches one segment, a final `*` any rest). They
    /// override the route's and the service's timeout.
    #[serde(
        default,
        with = "duration::map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub endpoint_timeouts: BTreeMap<String, Duration>,
    /// Retry policy; absent: a request gets one attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryConfig>,
    /// Passive outlier detection; absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierConfig>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}

/// Active health-check settings of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Path probed with GET when the instance registers none of its own.
    #[serde(default = "default_health_path")]
    pub path: String,
    /// Time between two checks of one instance.
    #[serde(default = "default_interval", with = "duration")]
    pub interval: Duration,
    /// Time one check may take.
    #[serde(default = "default_check_timeout", with = "duration")]
    pub timeout: Duration,
    /// Consecutive successes that mark an unhealthy instance healthy.
    #[serde(default = "default_threshold")]
    pub healthy_threshold: u32,
    /// Consecutive failures that mark an instance unhealthy.
    #[serde(default = "default_threshold")]
    pub unhealthy_threshold: u32,
    /// Set to false to turn active checks off for this service.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

fn default_health_path() -> String {
    "/health".to_string()
}
fn default_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_check_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_threshold() -> u32 {
    2
}
fn default_true() -> bool {
    true
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            path: default_health_path(),
            interval: default_interval(),
            timeout: default_check_timeout(),
            healthy_threshold: default_threshold(),
            unhealthy_threshold: default_threshold(),
            enabled: true,
        }
    }
}

/// Load-balancing strategy of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Smooth weighted round-robin.
    #[default]
    RoundRobin,
    /// Fewest in-flight requests among two random choices.
    LeastRequest,
    /// Uniformly random (weighted).
    Random,
    /// Same key, same instance, with minimal remapping (needs `hash_on`).
    ConsistentHash,
}

/// Load-balancer settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancerConfig {
    /// The strategy.
    #[serde(default)]
    pub strategy: Strategy,
    /// Key for consistent hashing: `header:NAME`, `cookie:NAME`, `jwt-sub`, `client-ip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<String>,
    /// Panic mode: when fewer than this share (percent) of the service's
    /// instances are healthy and not ejected, requests are spread over all
    /// of them. 0 turns panic mode off.
    #[serde(
        default = "default_panic_threshold",
        skip_serializing_if = "is_default_panic_threshold"
    )]
    pub panic_threshold_percent: u32,
}

fn default_panic_threshold() -> u32 {
    50
}

// Left out of the canonical JSON when it has its default, so that a config
// using none of the newer settings still loads on data planes that predate them.
fn is_default_panic_threshold(v: &u32) -> bool {
    *v == default_panic_threshold()
}

impl Default for LoadBalancerConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::default(),
            hash_on: None,
            panic_threshold_percent: default_panic_threshold(),
        }
    }
}

/// What a failed attempt may be retried on.
pub const RETRY_CONDITIONS: [&str; 4] = ["connect-failure", "reset", "timeout", "5xx"];

/// Retry policy of a service (the seed's `retry.service.ts` options).
///
/// Only idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) and
/// requests carrying `Idempotency-Key` are retried, never on a 4xx, within
/// the request's deadline and the service's retry budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all, the first included (the seed's `maxRetries`), 1-10.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Backoff before the first retry.
    #[serde(default = "default_base_delay", with = "duration")]
    pub base_delay: Duration,
    /// Longest backoff.
    #[serde(default = "default_max_delay", with = "duration")]
    pub max_delay: Duration,
    /// Growth of the backoff per retry, 1-10.
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
    /// Full jitter: each backoff is uniform in `[0, computed]`.
    #[serde(default = "default_true")]
    pub jitter: bool,
    /// Failures retried: `connect-failure`, `reset` (the connection failed
    /// after the request was sent), `timeout` (an attempt's
    /// `per_try_timeout` expired), `5xx`, or a status code 500-599.
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<String>,
    /// Time one attempt may take; absent: the whole remaining deadline.
    #[serde(
        default,
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub per_try_timeout: Option<Duration>,
    /// Retries allowed as a share (percent) of the service's requests over
    /// the last 10 s.
    #[serde(default = "default_budget_percent")]
    pub budget_percent: u32,
    /// Retries per second always allowed, whatever the traffic.
    #[serde(default = "default_min_retries")]
    pub min_retries_per_second: u32,
    /// Request bodies up to this size (declared by `Content-Length`) are
    /// buffered so the request can be retried; larger or chunked bodies are
    /// streamed and get one attempt.
    #[serde(default = "default_retry_body")]
    pub max_buffered_body_bytes: u64,
}

/// Largest `max_buffered_body_bytes`.
pub const MAX_RETRY_BODY: u64 = 1 << 20;

fn default_attempts() -> u32 {
    3
}
fn default_base_delay() -> Duration {
    Duration::from_millis(100)
}
fn default_max_delay() -> Duration {
    Duration::from_secs(2)
}
fn default_multiplier() -> f64 {
    2.0
}
fn default_retry_on() -> Vec<String> {
    ["connect-failure", "reset", "502", "503", "504"]
        .map(String::from)
        .to_vec()
}
fn default_budget_percent() -> u32 {
    20
}
fn default_min_retries() -> u32 {
    3
}
fn default_retry_body() -> u64 {
    64 * 1024
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: default_attempts(),
            base_delay: default_base_delay(),
            max_delay: default_max_delay(),
            multiplier: default_multiplier(),
            jitter: true,
            retry_on: default_retry_on(),
            per_try_timeout: None,
            budget_percent: default_budget_percent(),
            min_retries_per_second: default_min_retries(),
            max_buffered_body_bytes: default_retry_body(),
        }
    }
}

/// Passive outlier detection of a service: each data plane ejects an
/// instance after consecutive failures (5xx answers, connect failures,
/// resets, timeouts) for a period that grows with each ejection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    /// Consecutive failures that eject an instance.
    #[serde(default = "default_consecutive")]
    pub consecutive_failures: u32,
    /// First ejection period; the n-th ejection in a row lasts n times this.
    #[serde(default = "default_base_ejection", with = "duration")]
    pub base_ejection_time: Duration,
    /// Longest ejection period.
    #[serde(default = "default_max_ejection", with = "duration")]
    pub max_ejection_time: Duration,
    /// Most instances of the service ejected at once, as a percentage (at
    /// least one instance may always be ejected when this is above 0).
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
}

fn default_consecutive() -> u32 {
    5
}
fn default_base_ejection() -> Duration {
    Duration::from_secs(30)
}
fn default_max_ejection() -> Duration {
    Duration::from_secs(300)
}
fn default_max_ejection_percent() -> u32 {
    50
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: default_consecutive(),
            base_ejection_time: default_base_ejection(),
            max_ejection_time: default_max_ejection(),
            max_ejection_percent: default_max_ejection_percent(),
        }
    }
}

/// Circuit-breaker policy of a service (the seed's opossum options).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Whether the breaker is active.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Error percentage over the rolling window that opens the breaker.
    #[serde(default = "default_error_percent")]
    pub error_threshold_percent: u32,
    /// Requests in the window before the error percentage counts.
    #[serde(default = "default_volume")]
    pub volume_threshold: u32,
    /// Time an open breaker waits before half-open probes.
    #[serde(default = "default_reset", with = "duration")]
    pub reset_timeout: Duration,
    /// A call slower than this counts as a failure.
    #[serde(default = "default_call_timeout", with = "duration")]
    pub call_timeout: Duration,
    /// Length of the rolling window.
    #[serde(default = "default_window", with = "duration")]
    pub rolling_window: Duration,
    /// Buckets the window is divided into.
    #[serde(default = "default_buckets")]
    pub rolling_buckets: u32,
    /// Probes let through while half-open.
    #[serde(default = "default_probes")]
    pub half_open_max_requests: u32,
}

fn default_error_percent() -> u32 {
    50
}
fn default_volume() -> u32 {
    10
}
fn default_reset() -> Duration {
    Duration::from_secs(30)
}
fn default_call_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_window() -> Duration {
    Duration::from_secs(10)
}
fn default_buckets() -> u32 {
    10
}
fn default_probes() -> u32 {
    1
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            error_threshold_percent: default_error_percent(),
            volume_threshold: default_volume(),
            reset_timeout: default_reset(),
            call_timeout: default_call_timeout(),
            rolling_window: default_window(),
            rolling_buckets: default_buckets(),
            half_open_max_requests: default_probes(),
        }
    }
}

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
    fn validate(&self, at: &str, errors: &mut Vec<String>) {
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

/// Default body limit of a webhook route (Stripe events are a few KiB).
pub const DEFAULT_WEBHOOK_BODY_LIMIT: u64 = 1024 * 1024;

/// A webhook route's provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Who calls it.
    pub provider: WebhookProvider,
}

/// Webhook providers the gateway knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookProvider {
    /// Stripe: a request without a `stripe-signature` header is refused
    /// (400) at the edge; the signature itself is verified by the service,
    /// which holds the signing secret.
    Stripe,
    /// Any other provider: passthrough only.
    Generic,
}

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

    fn validate(&self, at: &str, methods: &[String], errors: &mut Vec<String>) {
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
    fn validate(&self, at: &str, errors: &mut Vec<String>) {
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

/// Access-token (JWT bearer) authentication of a route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Whether a valid access token is required (default true).
    #[serde(default = "default_true")]
    pub required: bool,
    /// Paths (as the client sends them, after normalisation) that need no
    /// token: `/exact`, `/prefix/*` (the prefix and anything below it),
    /// `/prefix/` (anything below it), or a glob where `*` matches within
    /// one segment and `**` across segments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub public_paths: Vec<String>,
    /// Whether an API key (`X-API-Key`, created with `gwctl apikey
    /// create`) is accepted in place of a bearer token (default false).
    /// The key's tenant and scopes become the identity headers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub api_keys: bool,
    /// Permission (`resource:action`) the caller needs on every method of
    /// the route, granted by its role (or the token's `permissions` claim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permission: Option<String>,
    /// Permission per method (`GET: events:read`); a method named here
    /// needs this one instead of `permission`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub permissions: BTreeMap<String, String>,
    /// Path parameter naming the resource's owner: a caller holding only
    /// `resource:action-own` is allowed when its value is the caller's `sub`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_param: Option<String>,
    /// Path parameter naming the venue checked for venue-scoped roles
    /// (else the `x-venue-id` header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub venue_param: Option<String>,
    /// Where venue access is asked (routes with a permission).
    #[serde(
        default = "default_venue_access",
        skip_serializing_if = "is_default_venue_access"
    )]
    pub venue_access: LookupConfig,
    /// Load the caller's details (role, status) from the auth service.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub user_details: bool,
    /// Where user details are asked (routes with `user_details: true`).
    #[serde(
        default = "default_user_lookup",
        skip_serializing_if = "is_default_user_lookup"
    )]
    pub user_lookup: LookupConfig,
}

/// A service the gateway asks before forwarding (venue access, user
/// details): `GET path` on one of the service's instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupConfig {
    /// Service name (one of `services`).
    pub service: String,
    /// Path template with `{venueId}` and/or `{userId}`.
    pub path: String,
}

/// Default venue-access lookup: `GET /api/v1/venues/{venueId}/access` on
/// `venue` (with `?userId=...&permission=...`).
pub fn default_venue_access() -> LookupConfig {
    LookupConfig {
        service: "venue".into(),
        path: "/api/v1/venues/{venueId}/access".into(),
    }
}

/// Default user-details lookup: `GET /api/v1/users/{userId}` on `auth`.
pub fn default_user_lookup() -> LookupConfig {
    LookupConfig {
        service: "auth".into(),
        path: "/api/v1/users/{userId}".into(),
    }
}

fn is_default_venue_access(l: &LookupConfig) -> bool {
    *l == default_venue_access()
}

fn is_default_user_lookup(l: &LookupConfig) -> bool {
    *l == default_user_lookup()
}

/// Checks a permission a route requires: `resource:action`, both
/// `[a-z][a-z0-9_-]*`; wildcards and `-own` are grants, not requirements.
pub fn check_route_permission(p: &str) -> Result<(), String> {
    let (resource, action) = p
        .split_once(':')
        .ok_or("must be resource:action (e.g. events:update)")?;
    let word = |w: &str| {
        w.len() <= 64
            && w.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
            && w.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    };
    if resource == "*" || action == "*" {
        return Err("wildcards are granted to roles, a route names one permission".into());
    }
    if !word(resource) || !word(action) {
        return Err("must be resource:action, each [a-z][a-z0-9_-]* (at most 64 bytes)".into());
    }
    if action.ends_with("-own") {
        return Err(format!(
            "-own is a grant: require {resource}:{} and set owner_param",
            action.trim_end_matches("-own")
        ));
    }
    Ok(())
}

/// Longest public path pattern.
pub const MAX_PUBLIC_PATH_LEN: usize = 1024;

impl AuthConfig {
    /// Whether any method of the route needs a permission.
    pub fn has_permission(&self) -> bool {
        self.permission.is_some() || !self.permissions.is_empty()
    }

    /// The lookup services the route uses, with the key naming them.
    pub fn lookups(&self) -> Vec<(&'static str, &LookupConfig)> {
        let mut used = Vec::new();
        if self.has_permission() {
            used.push(("venue_access", &self.venue_access));
        }
        if self.user_details {
            used.push(("user_lookup", &self.user_lookup));
        }
        used
    }

    fn validate(&self, at: &str, params: &[&str], methods: &[String], errors: &mut Vec<String>) {
        if !self.required && !self.public_paths.is_empty() {
            errors.push(format!(
                "{at}.public_paths: only meaningful when required is true"
            ));
        }
        if !self.required && self.api_keys {
            errors.push(format!(
                "{at}.api_keys: only meaningful when required is true"
            ));
        }
        self.validate_authorization(at, params, methods, errors);
        for (i, p) in self.public_paths.iter().enumerate() {
            if let Err(e) = check_public_path(p) {
                errors.push(format!("{at}.public_paths[{i}]: {p:?} {e}"));
            }
        }
    }
}

impl AuthConfig {
    fn validate_authorization(
        &self,
        at: &str,
        params: &[&str],
        methods: &[String],
        errors: &mut Vec<String>,
    ) {
        let authorizes = self.has_permission() || self.user_details;
        if authorizes && !self.required {
            errors.push(format!(
                "{at}: permission and user_details need required: true (an authenticated caller)"
            ));
        }
        if let Some(p) = &self.permission {
            if let Err(e) = check_route_permission(p) {
                errors.push(format!("{at}.permission: {p:?} {e}"));
            }
        }
        for (method, p) in &self.permissions {
            if !is_method_name(method) {
                errors.push(format!(
                    "{at}.permissions.{method}: not an HTTP method (upper case, e.g. GET)"
                ));
            } else if !methods.is_empty() && !methods.iter().any(|m| m == method) {
                errors.push(format!(
                    "{at}.permissions.{method}: the route does not match {method}"
                ));
            }
            if let Err(e) = check_route_permission(p) {
                errors.push(format!("{at}.permissions.{method}: {p:?} {e}"));
            }
        }
        for (key, param) in [
            ("owner_param", &self.owner_param),
            ("venue_param", &self.venue_param),
        ] {
            let Some(param) = param else { continue };
            if !self.has_permission() {
                errors.push(format!("{at}.{key}: only meaningful with a permission"));
            }
            if !params.contains(&param.as_str()) {
                errors.push(format!(
                    "{at}.{key}: {param:?} is not a parameter of match.path (write it as {{{param}}})"
                ));
            }
        }
        for (key, lookup) in [
            ("venue_access", &self.venue_access),
            ("user_lookup", &self.user_lookup),
        ] {
            let needed: &[&str] = if key == "venue_access" {
                &["venueId"]
            } else {
                &["userId"]
            };
            if let Err(e) = check_lookup_path(&lookup.path, needed) {
                errors.push(format!("{at}.{key}.path: {:?} {e}", lookup.path));
            }
        }
    }
}

fn is_method_name(m: &str) -> bool {
    !m.is_empty() && m.len() <= 16 && m.bytes().all(|b| b.is_ascii_uppercase())
}

/// Checks a lookup path template: absolute, no query, placeholders only
/// from `{venueId}` and `{userId}`, each of `needed` present.
fn check_lookup_path(path: &str, needed: &[&str]) -> Result<(), String> {
    if !path.starts_with('/') || path.contains(['?', '#', ' ', '%']) {
        return Err("must be an absolute path without query, spaces or '%'".into());
    }
    let params = route_params(Some(path));
    if let Some(p) = params.iter().find(|p| !matches!(**p, "venueId" | "userId")) {
        return Err(format!(
            "unknown placeholder {{{p}}} (use {{venueId}}, {{userId}})"
        ));
    }
    if let Some(n) = needed.iter().find(|n| !params.contains(n)) {
        return Err(format!("must contain {{{n}}}"));
    }
    Ok(())
}

/// Checks one public path pattern: it must already be in normalised form,
/// so that it can match a normalised request path.
pub fn check_public_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err("must start with '/'".into());
    }
    if p.len() > MAX_PUBLIC_PATH_LEN {
        return Err(format!("must be at most {MAX_PUBLIC_PATH_LEN} bytes"));
    }
    if p.bytes()
        .any(|b| b <= 0x20 || b >= 0x7f || matches!(b, b'%' | b';' | b'\\' | b'?' | b'#'))
    {
        return Err(
            "must be a plain path: no spaces, controls, non-ASCII, '%', ';', '\\', '?' or '#'"
                .into(),
        );
    }
    if p.contains("//") {
        return Err("must not contain empty segments ('//')".into());
    }
    for segment in p.split('/').skip(1) {
        if segment == "." || segment == ".." {
            return Err("must not contain '.' or '..' segments".into());
        }
        if segment.ends_with('.') {
            return Err("must not end a segment with '.'".into());
        }
        if segment.contains("**") && segment != "**" {
            return Err("'**' must be a whole segment".into());
        }
    }
    Ok(())
}

/// A fixed response of a route (sent while the service's breaker is open).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackResponse {
    /// Status code, 200-599.
    #[serde(default = "default_fallback_status")]
    pub status: u16,
    /// Response headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Response body.
    #[serde(default)]
    pub body: String,
}

/// Largest fallback body.
pub const MAX_FALLBACK_BODY: usize = 64 * 1024;

fn default_fallback_status() -> u16 {
    503
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

/// Why a config was refused: every problem found, each with its path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The document is not valid YAML/JSON or does not fit the model.
    #[error("cannot parse config: {0}")]
    Parse(String),
    /// The document parsed but breaks one or more rules.
    #[error("invalid config: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

/// One difference between two configs, for `gwctl apply` output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// `service` or `route`.
    pub kind: &'static str,
    /// Name of the service or route.
    pub name: String,
    /// `added`, `removed` or `changed`.
    pub action: &'static str,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.kind, self.name, self.action)
    }
}

impl GatewayConfig {
    /// Parses a YAML or JSON document (no validation beyond the model's shape).
    pub fn parse(document: &[u8]) -> Result<Self, ConfigError> {
        let text = std::str::from_utf8(document)
            .map_err(|_| ConfigError::Parse("document is not UTF-8".into()))?;
        if text.trim().is_empty() {
            return Err(ConfigError::Parse("document is empty".into()));
        }
        serde_norway::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// Parses then validates a document: what `gwctl apply` and `--config` accept.
    pub fn load(document: &[u8]) -> Result<Self, ConfigError> {
        let config = Self::parse(document)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses the canonical JSON form (as streamed to data planes) and validates it.
    pub fn from_json(json: &str) -> Result<Self, ConfigError> {
        let config: Self =
            serde_json::from_str(json).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// The canonical JSON form.
    pub fn to_json(&self) -> String {
        // Serializing plain structs, strings and numbers to JSON cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Looks a service up by name.
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Checks every rule and reports all problems at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        if self.version != CONFIG_VERSION {
            errors.push(format!(
                "version: must be {CONFIG_VERSION}, got {}",
                self.version
            ));
        }
        let mut names = BTreeSet::new();
        for (i, service) in self.services.iter().enumerate() {
            let at = format!("services[{i}]");
            if !names.insert(service.name.as_str()) {
                errors.push(format!("{at}.name: duplicate service {:?}", service.name));
            }
            service.validate(&at, &mut errors);
        }
        let mut route_names = BTreeSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            if !route_names.insert(route.name.as_str()) {
                errors.push(format!("{at}.name: duplicate route {:?}", route.name));
            }
            match &route.aggregate {
                Some(aggregate) => aggregate.validate(
                    &format!("{at}.aggregate"),
                    &route_params(route.matcher.path.as_deref()),
                    &names,
                    &mut errors,
                ),
                None if route.service.is_empty() => {
                    errors.push(format!("{at}: needs a service (or an aggregate)"));
                }
                None if !names.contains(route.service.as_str()) => {
                    errors.push(format!("{at}.service: unknown service {:?}", route.service));
                }
                None => {}
            }
            for (key, lookup) in route.auth.iter().flat_map(|a| a.lookups()) {
                if !names.contains(lookup.service.as_str()) {
                    errors.push(format!(
                        "{at}.auth.{key}.service: unknown service {:?}",
                        lookup.service
                    ));
                }
            }
            route.validate(&at, &mut errors);
            if let Some(name) = self
                .service(&route.service)
                .and_then(|s| s.load_balancer.hash_on.as_deref())
                .and_then(|key| key.strip_prefix("header:"))
                .filter(|name| name.contains('_') && !route.allow_underscore_headers)
            {
                errors.push(format!(
                    "{at}: service {:?} hashes on header {name:?}, which this route drops (names with '_'); set allow_underscore_headers: true",
                    route.service
                ));
            }
        }
        if errors.is_empty() {
            if let Err(e) =
                RouteTable::build(self.routes.iter().map(RouteSpec::from_route).zip(0..))
            {
                errors.push(format!("routes: {e}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }

    /// What changes when `self` is replaced by `next`.
    pub fn diff(&self, next: &GatewayConfig) -> Vec<Change> {
        let mut changes = diff_named(
            "service",
            self.services.iter().map(|s| (s.name.as_str(), s)),
            next.services.iter().map(|s| (s.name.as_str(), s)),
        );
        changes.extend(diff_named(
            "route",
            self.routes.iter().map(|r| (r.name.as_str(), r)),
            next.routes.iter().map(|r| (r.name.as_str(), r)),
        ));
        changes
    }
}

fn diff_named<'a, T: PartialEq + 'a>(
    kind: &'static str,
    old: impl Iterator<Item = (&'a str, &'a T)>,
    new: impl Iterator<Item = (&'a str, &'a T)>,
) -> Vec<Change> {
    let old: BTreeMap<_, _> = old.collect();
    let new: BTreeMap<_, _> = new.collect();
    let mut changes = Vec::new();
    for (name, item) in &new {
        let action = match old.get(name) {
            None => "added",
            Some(before) if before != item => "changed",
            Some(_) => continue,
        };
        changes.push(Change {
            kind,
            name: name.to_string(),
            action,
        });
    }
    for name in old.keys().filter(|n| !new.contains_key(*n)) {
        changes.push(Change {
            kind,
            name: name.to_string(),
            action: "removed",
        });
    }
    changes
}

/// Whether `name` is a valid service name: `[a-z0-9-]{1,63}`.
pub fn is_valid_service_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
];

fn check_range(errors: &mut Vec<String>, at: &str, value: Duration, min: Duration, max: Duration) {
    if value < min || value > max {
        errors.push(format!(
            "{at}: must be between {} and {}, got {}",
            duration::format(min),
            duration::format(max),
            duration::format(value)
        ));
    }
}

impl ServiceConfig {
    fn validate(&self, at: &str, errors: &mut Vec<String>) {
        if !is_valid_service_name(&self.name) {
            errors.push(format!(
                "{at}.name: {:?} must match [a-z0-9-]{{1,63}}",
                self.name
            ));
        }
        let hc = &self.health_check;
        if !hc.path.starts_with('/') {
            errors.push(format!("{at}.health_check.path: must start with '/'"));
        }
        let ms = Duration::from_millis;
        check_range(
            errors,
            &format!("{at}.health_check.interval"),
            hc.interval,
            ms(100),
            ms(3_600_000),
        );
        check_range(
            errors,
            &format!("{at}.health_check.timeout"),
            hc.timeout,
            ms(10),
            ms(60_000),
        );
        if hc.timeout > hc.interval {
            errors.push(format!(
                "{at}.health_check.timeout: must not exceed the interval"
            ));
        }
        for (field, v) in [
            ("healthy_threshold", hc.healthy_threshold),
            ("unhealthy_threshold", hc.unhealthy_threshold),
        ] {
            if !(1..=100).contains(&v) {
                errors.push(format!(
                    "{at}.health_check.{field}: must be between 1 and 100, got {v}"
                ));
            }
        }
        check_range(
            errors,
            &format!("{at}.timeout"),
            self.timeout,
            ms(1),
            ms(3_600_000),
        );
        check_range(
            errors,
            &format!("{at}.connect_timeout"),
            self.connect_timeout,
            ms(1),
            ms(60_000),
        );
        if let Err(e) = validate_hash_on(&self.load_balancer) {
            errors.push(format!("{at}.load_balancer: {e}"));
        }
        for (i, url) in self.instances.iter().enumerate() {
            if let Err(e) = parse_instance_url(url) {
                errors.push(format!("{at}.instances[{i}]: {e}"));
            }
        }
        if let Some(cb) = &self.circuit_breaker {
            cb.validate(&format!("{at}.circuit_breaker"), errors);
        }
        if self.load_balancer.panic_threshold_percent > 100 {
            errors.push(format!(
                "{at}.load_balancer.panic_threshold_percent: must be between 0 and 100"
            ));
        }
        for (key, timeout) in &self.endpoint_timeouts {
            let path = format!("{at}.endpoint_timeouts[{key:?}]");
            if let Err(e) = EndpointPattern::parse(key) {
                errors.push(format!("{path}: {e}"));
            }
            check_range(errors, &path, *timeout, ms(1), ms(3_600_000));
        }
        if let Some(retry) = &self.retry {
            retry.validate(&format!("{at}.retry"), errors);
        }
        if let Some(outlier) = &self.outlier_detection {
            outlier.validate(&format!("{at}.outlier_detection"), errors);
        }
    }
}

impl RetryConfig {
    /// Checks the policy; problems are pushed with `at` as their path.
    pub fn validate(&self, at: &str, errors: &mut Vec<String>) {
        if !(1..=10).contains(&self.max_attempts) {
            errors.push(format!("{at}.max_attempts: must be between 1 and 10"));
        }
        let ms = Duration::from_millis;
        check_range(
            errors,
            &format!("{at}.base_delay"),
            self.base_delay,
            ms(1),
            ms(3_600_000),
        );
        check_range(
            errors,
            &format!("{at}.max_delay"),
            self.max_delay,
            ms(1),
            ms(3_600_000),
        );
        if self.max_delay < self.base_delay {
            errors.push(format!("{at}.max_delay: must not be below base_delay"));
        }
        if !(1.0..=10.0).contains(&self.multiplier) {
            errors.push(format!("{at}.multiplier: must be between 1 and 10"));
        }
        if self.retry_on.is_empty() {
            errors.push(format!("{at}.retry_on: must name at least one failure"));
        }
        for (i, condition) in self.retry_on.iter().enumerate() {
            if let Err(e) = RetryOn::parse(condition) {
                errors.push(format!("{at}.retry_on[{i}]: {e}"));
            }
        }
        if let Some(t) = self.per_try_timeout {
            check_range(
                errors,
                &format!("{at}.per_try_timeout"),
                t,
                ms(1),
                ms(3_600_000),
            );
        }
        if self.budget_percent > 100 {
            errors.push(format!("{at}.budget_percent: must be between 0 and 100"));
        }
        if self.min_retries_per_second > 10_000 {
            errors.push(format!(
                "{at}.min_retries_per_second: must be at most 10000"
            ));
        }
        if self.max_buffered_body_bytes > MAX_RETRY_BODY {
            errors.push(format!(
                "{at}.max_buffered_body_bytes: at most {MAX_RETRY_BODY}"
            ));
        }
    }

    /// The parsed `retry_on` conditions (invalid ones skipped; a validated
    /// config has none).
    pub fn conditions(&self) -> RetryOn {
        self.retry_on
            .iter()
            .filter_map(|c| RetryOn::parse(c).ok())
            .fold(RetryOn::default(), RetryOn::union)
    }
}

/// The failures a retry policy retries, as a set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// The connection could not be opened (the request was never sent).
    pub connect_failure: bool,
    /// The exchange failed after the request was sent.
    pub reset: bool,
    /// An attempt's `per_try_timeout` expired.
    pub timeout: bool,
    /// Bit `n` set: retry a response with status `500 + n`.
    pub statuses: u128,
}

impl RetryOn {
    /// Parses one `retry_on` entry.
    pub fn parse(text: &str) -> Result<RetryOn, String> {
        let mut on = RetryOn::default();
        match text {
            "connect-failure" => on.connect_failure = true,
            "reset" => on.reset = true,
            "timeout" => on.timeout = true,
            "5xx" => on.statuses = u128::MAX >> 28,
            code => match code.parse::<u16>() {
                Ok(status @ 500..=599) => on.statuses = 1 << (status - 500),
                Ok(status @ 400..=499) => {
                    return Err(format!("{status}: a 4xx answer is never retried"))
                }
                _ => {
                    return Err(format!(
                        "{text:?} must be one of {} or a status code 500-599",
                        RETRY_CONDITIONS.join(", ")
                    ))
                }
            },
        }
        Ok(on)
    }

    fn union(self, other: RetryOn) -> RetryOn {
        RetryOn {
            connect_failure: self.connect_failure || other.connect_failure,
            reset: self.reset || other.reset,
            timeout: self.timeout || other.timeout,
            statuses: self.statuses | other.statuses,
        }
    }

    /// Whether a response with `status` is retried.
    pub fn status(&self, status: u16) -> bool {
        (500..600).contains(&status) && self.statuses & (1 << (status - 500)) != 0
    }
}

impl OutlierConfig {
    /// Checks the policy; problems are pushed with `at` as their path.
    pub fn validate(&self, at: &str, errors: &mut Vec<String>) {
        if !(1..=1000).contains(&self.consecutive_failures) {
            errors.push(format!(
                "{at}.consecutive_failures: must be between 1 and 1000"
            ));
        }
        let ms = Duration::from_millis;
        check_range(
            errors,
            &format!("{at}.base_ejection_time"),
            self.base_ejection_time,
            ms(1),
            ms(3_600_000),
        );
        check_range(
            errors,
            &format!("{at}.max_ejection_time"),
            self.max_ejection_time,
            ms(1),
            ms(86_400_000),
        );
        if self.max_ejection_time < self.base_ejection_time {
            errors.push(format!(
                "{at}.max_ejection_time: must not be below base_ejection_time"
            ));
        }
        if self.max_ejection_percent > 100 {
            errors.push(format!(
                "{at}.max_ejection_percent: must be between 0 and 100"
            ));
        }
    }
}

/// A segment of an [`EndpointPattern`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointSegment {
    /// Must equal this text.
    Literal(String),
    /// Any one segment (`{name}`).
    Param,
    /// Any rest of the path, including nothing (a final `*`).
    Rest,
}

/// A per-endpoint timeout key, `"METHOD /path"`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointPattern {
    /// Upper-case method.
    pub method: String,
    /// Path segments.
    pub segments: Vec<EndpointSegment>,
}

impl EndpointPattern {
    /// Parses `"POST /payments/{id}/capture"` or `"GET /reports/*"`.
    pub fn parse(key: &str) -> Result<EndpointPattern, String> {
        let (method, path) = key
            .split_once(' ')
            .ok_or_else(|| "must be \"METHOD /path\"".to_string())?;
        if !METHODS.contains(&method) {
            return Err(format!("unknown method {method:?} (use upper case)"));
        }
        let path = path.trim();
        if !path.starts_with('/') {
            return Err("the path must start with '/'".into());
        }
        let parts: Vec<&str> = path[1..].split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let segment = if *part == "*" {
                if i + 1 != parts.len() {
                    return Err("'*' may only be the last segment".into());
                }
                EndpointSegment::Rest
            } else if part.starts_with('{') && part.ends_with('}') && part.len() > 2 {
                EndpointSegment::Param
            } else if part.contains(['{', '}', '*', ' ', '?', '#']) {
                return Err(format!("bad path segment {part:?}"));
            } else {
                EndpointSegment::Literal(part.to_string())
            };
            segments.push(segment);
        }
        Ok(EndpointPattern {
            method: method.to_string(),
            segments,
        })
    }

    /// Whether a request for `path` with `method` is this endpoint.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        if method != self.method {
            return false;
        }
        let mut parts = path.strip_prefix('/').unwrap_or(path).split('/');
        for segment in &self.segments {
            match segment {
                EndpointSegment::Rest => return true,
                EndpointSegment::Param => match parts.next() {
                    Some(p) if !p.is_empty() => {}
                    _ => return false,
                },
                EndpointSegment::Literal(text) => match parts.next() {
                    Some(p) if p == text => {}
                    _ => return false,
                },
            }
        }
        parts.next().is_none()
    }
}

fn validate_hash_on(lb: &LoadBalancerConfig) -> Result<(), String> {
    match (&lb.strategy, lb.hash_on.as_deref()) {
        (Strategy::ConsistentHash, None) => Err("consistent-hash needs hash_on".into()),
        (_, None) => Ok(()),
        (_, Some(key)) => {
            let ok = key == "jwt-sub"
                || key == "client-ip"
                || key.strip_prefix("header:").is_some_and(|h| !h.is_empty())
                || key.strip_prefix("cookie:").is_some_and(|c| !c.is_empty());
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "hash_on {key:?} must be header:NAME, cookie:NAME, jwt-sub or client-ip"
                ))
            }
        }
    }
}

impl BreakerConfig {
    /// Checks the policy; problems are pushed with `at` as their path.
    pub fn validate(&self, at: &str, errors: &mut Vec<String>) {
        if !(1..=100).contains(&self.error_threshold_percent) {
            errors.push(format!(
                "{at}.error_threshold_percent: must be between 1 and 100"
            ));
        }
        if self.volume_threshold == 0 {
            errors.push(format!("{at}.volume_threshold: must be at least 1"));
        }
        let ms = Duration::from_millis;
        check_range(
            errors,
            &format!("{at}.reset_timeout"),
            self.reset_timeout,
            ms(10),
            ms(3_600_000),
        );
        check_range(
            errors,
            &format!("{at}.call_timeout"),
            self.call_timeout,
            ms(1),
            ms(3_600_000),
        );
        check_range(
            errors,
            &format!("{at}.rolling_window"),
            self.rolling_window,
            ms(100),
            ms(3_600_000),
        );
        if !(1..=1000).contains(&self.rolling_buckets) {
            errors.push(format!("{at}.rolling_buckets: must be between 1 and 1000"));
        }
        if !(1..=1000).contains(&self.half_open_max_requests) {
            errors.push(format!(
                "{at}.half_open_max_requests: must be between 1 and 1000"
            ));
        }
    }
}

impl RouteConfig {
    fn validate(&self, at: &str, errors: &mut Vec<String>) {
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
        let m = &self.matcher;
        match (&m.path, &m.path_prefix) {
            (Some(_), Some(_)) | (None, None) => {
                errors.push(format!(
                    "{at}.match: needs exactly one of path and path_prefix"
                ));
            }
            (Some(p), None) | (None, Some(p)) => {
                if let Err(e) = crate::routing::check_pattern(p, m.path_prefix.is_some()) {
                    errors.push(format!("{at}.match: {e}"));
                }
            }
        }
        for method in &m.methods {
            if !METHODS.contains(&method.as_str()) {
                errors.push(format!(
                    "{at}.match.methods: unknown method {method:?} (use upper case)"
                ));
            }
        }
        if let Some(host) = &m.host {
            let bare = host.strip_prefix("*.").unwrap_or(host);
            let valid = !bare.is_empty()
                && bare.len() <= 253
                && bare
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !valid || host.bytes().any(|b| b.is_ascii_uppercase()) {
                errors.push(format!(
                    "{at}.match.host: {host:?} must be a lower-case host name or *.domain"
                ));
            }
        }
        if self.strip_prefix && m.path_prefix.is_none() {
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
            cache.validate(&format!("{at}.cache"), &m.methods, errors);
        }
        if let Some(limit) = &self.rate_limit {
            let requires_token = self.auth.as_ref().is_some_and(|a| a.required);
            limit.validate(&format!("{at}.rate_limit"), requires_token, errors);
        }
        if let Some(signature) = &self.signature {
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

/// Whether `name` is a valid HTTP header name (an RFC 9110 token).
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl FallbackResponse {
    fn validate(&self, at: &str, errors: &mut Vec<String>) {
        if !(200..=599).contains(&self.status) {
            errors.push(format!("{at}.status: must be between 200 and 599"));
        }
        for (name, value) in &self.headers {
            if !is_header_name(name) {
                errors.push(format!("{at}.headers: {name:?} is not a header name"));
            }
            let lower = name.to_ascii_lowercase();
            if ["content-length", "transfer-encoding", "connection"].contains(&lower.as_str()) {
                errors.push(format!("{at}.headers: {name:?} is set by the gateway"));
            }
            if value.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
                errors.push(format!(
                    "{at}.headers[{name:?}]: control characters are not allowed"
                ));
            }
        }
        if self.body.len() > MAX_FALLBACK_BODY {
            errors.push(format!("{at}.body: at most {MAX_FALLBACK_BODY} bytes"));
        }
    }
}

/// A static instance address parsed from `http://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceAddr {
    /// Host name or IP (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// Parses a static instance URL (`http://host:port`, port defaults to 80).
pub fn parse_instance_url(text: &str) -> Result<InstanceAddr, String> {
    let url = url::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if url.scheme() != "http" {
        return Err(format!("{text:?}: only http:// instances are supported"));
    }
    if url.path() != "/" || url.query().is_some() || !url.username().is_empty() {
        return Err(format!(
            "{text:?}: must be http://host:port without path, query or user"
        ));
    }
    let host = match url.host() {
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        Some(h) => h.to_string(),
        None => return Err(format!("{text:?}: missing host")),
    };
    Ok(InstanceAddr {
        host,
        port: url.port().unwrap_or(80),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
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
    fn consistent_hash_needs_a_key() {
        let doc = "version: 1\nservices:\n  - name: a\n    load_balancer: { strategy: consistent-hash }\n";
        assert!(GatewayConfig::load(doc.as_bytes()).is_err());
        let doc = "version: 1\nservices:\n  - name: a\n    load_balancer: { strategy: consistent-hash, hash_on: 'header:x-user' }\n";
        assert!(GatewayConfig::load(doc.as_bytes()).is_ok());
    }

    #[test]
    fn diff_names_what_changed() {
        let old = GatewayConfig::load(EXAMPLE.as_bytes()).unwrap();
        let mut new = old.clone();
        new.services[0].timeout = Duration::from_secs(3);
        new.routes.clear();
        new.services.push(ServiceConfig {
            name: "b".into(),
            ..old.services[0].clone()
        });
        let changes: Vec<String> = old.diff(&new).iter().map(|c| c.to_string()).collect();
        assert_eq!(
            changes,
            vec![
                "service b added",
                "service echo changed",
                "route echo removed"
            ]
        );
    }

    #[test]
    fn instance_urls() {
        assert_eq!(
            parse_instance_url("http://10.0.0.1:81").unwrap(),
            InstanceAddr {
                host: "10.0.0.1".into(),
                port: 81
            }
        );
        assert_eq!(parse_instance_url("http://[::1]:81").unwrap().host, "::1");
        assert_eq!(parse_instance_url("http://svc").unwrap().port, 80);
        assert!(parse_instance_url("http://svc:1/path").is_err());
        assert!(parse_instance_url("https://svc:1").is_err());
    }

    fn invalid(doc: &str) -> String {
        match GatewayConfig::load(doc.as_bytes()) {
            Err(ConfigError::Invalid(errors)) => errors.join("\n"),
            other => panic!("expected an invalid config, got {other:?}"),
        }
    }

    #[test]
    fn authorization_keys_parse_and_round_trip() {
        let doc = r#"
version: 1
services: [ { name: api }, { name: auth }, { name: venue } ]
routes:
  - name: tickets
    match: { path: "/users/{userId}/venues/{venueId}/tickets", methods: [GET, POST] }
    service: api
    auth:
      permission: tickets:view
      permissions: { POST: tickets:sell }
      owner_param: userId
      venue_param: venueId
      user_details: true
"#;
        let config = GatewayConfig::load(doc.as_bytes()).unwrap();
        let auth = config.routes[0].auth.as_ref().unwrap();
        assert_eq!(auth.permission.as_deref(), Some("tickets:view"));
        assert_eq!(auth.permissions["POST"], "tickets:sell");
        assert_eq!(auth.venue_access, default_venue_access());
        assert_eq!(auth.user_lookup, default_user_lookup());
        let again = GatewayConfig::load(config.to_json().as_bytes()).unwrap();
        assert_eq!(again, config);
    }

    #[test]
    fn authorization_keys_are_validated_with_their_path() {
        let errors = invalid(
            r#"
version: 1
services: [ { name: api } ]
routes:
  - name: a
    match: { path: "/a/{id}", methods: [GET] }
    service: api
    auth:
      permission: "events"
      permissions: { POST: "events:*", get: "x:y", GET: "tickets:view-own" }
      owner_param: userId
      venue_access: { service: venue, path: "/venues/{venue}" }
      user_details: true
      user_lookup: { service: nowhere, path: "/users?id=1" }
  - name: b
    match: { path_prefix: /b }
    service: api
    auth: { required: false, permission: "Events:view", venue_param: v }
"#,
        );
        for expected in [
            r#"routes[0].auth.permission: "events" must be resource:action"#,
            "routes[0].auth.permissions.POST: the route does not match POST",
            r#"routes[0].auth.permissions.POST: "events:*" wildcards are granted to roles"#,
            "routes[0].auth.permissions.get: not an HTTP method",
            r#"routes[0].auth.permissions.GET: "tickets:view-own" -own is a grant: require tickets:view and set owner_param"#,
            r#"routes[0].auth.owner_param: "userId" is not a parameter of match.path"#,
            r#"routes[0].auth.venue_access.path: "/venues/{venue}" unknown placeholder {venue}"#,
            r#"routes[0].auth.user_lookup.path: "/users?id=1" must be an absolute path without query"#,
            r#"routes[0].auth.venue_access.service: unknown service "venue""#,
            r#"routes[0].auth.user_lookup.service: unknown service "nowhere""#,
            "routes[1].auth: permission and user_details need required: true",
            r#"routes[1].auth.permission: "Events:view" must be resource:action, each [a-z][a-z0-9_-]*"#,
            r#"routes[1].auth.venue_param: "v" is not a parameter of match.path"#,
        ] {
            assert!(
                errors.contains(expected),
                "missing {expected:?} in:\n{errors}"
            );
        }
    }

    #[test]
    fn auth_parses_and_round_trips() {
        let doc = r#"
version: 1
services: [ { name: api } ]
routes:
  - name: api
    match: { path_prefix: /api }
    service: api
    auth: { public_paths: [/api/health, /api/docs/*, /api/public/, "/api/*/status", "/api/**/ping"] }
  - { name: open, match: { path_prefix: /open }, service: api, auth: { required: false } }
"#;
        let config = GatewayConfig::load(doc.as_bytes()).unwrap();
        let auth = config.routes[0].auth.as_ref().unwrap();
        assert!(auth.required);
        assert_eq!(auth.public_paths.len(), 5);
        assert!(!config.routes[1].auth.as_ref().unwrap().required);
        assert!(!auth.api_keys);
        assert_eq!(GatewayConfig::from_json(&config.to_json()).unwrap(), config);
    }

    #[test]
    fn api_keys_need_a_required_auth_policy() {
        let doc = r#"
version: 1
services: [ { name: api } ]
routes:
  - { name: partner, match: { path_prefix: /partner }, service: api, auth: { api_keys: true } }
"#;
        let config = GatewayConfig::load(doc.as_bytes()).unwrap();
        assert!(config.routes[0].auth.as_ref().unwrap().api_keys);
        assert_eq!(GatewayConfig::from_json(&config.to_json()).unwrap(), config);
        let errors = invalid(
            r#"
version: 1
services: [ { name: api } ]
routes:
  - { name: b, match: { path_prefix: /b }, service: api, auth: { required: false, api_keys: true } }
"#,
        );
        assert!(
            errors.contains("routes[0].auth.api_keys: only meaningful when required is true"),
            "{errors}"
        );
    }

    #[test]
    fn invalid_auth_is_refused_with_paths() {
        let errors = invalid(
            r#"
version: 1
services: [ { name: api } ]
routes:
  - name: api
    match: { path_prefix: /api }
    service: api
    auth:
      public_paths: [api/x, "/a//b", "/a/../b", "/a/%2e", "/a;x", "/a.", "/a/x**", "/a b"]
  - { name: b, match: { path_prefix: /b }, service: api, auth: { required: false, public_paths: [/b] } }
"#,
        );
        for expected in [
            r#"routes[0].auth.public_paths[0]: "api/x" must start with '/'"#,
            r#"routes[0].auth.public_paths[1]: "/a//b" must not contain empty segments"#,
            r#"routes[0].auth.public_paths[2]: "/a/../b" must not contain '.' or '..'"#,
            r#"routes[0].auth.public_paths[3]: "/a/%2e" must be a plain path"#,
            r#"routes[0].auth.public_paths[4]: "/a;x" must be a plain path"#,
            r#"routes[0].auth.public_paths[5]: "/a." must not end a segment with '.'"#,
            r#"routes[0].auth.public_paths[6]: "/a/x**" '**' must be a whole segment"#,
            r#"routes[0].auth.public_paths[7]: "/a b" must be a plain path"#,
            "routes[1].auth.public_paths: only meaningful when required is true",
        ] {
            assert!(
                errors.contains(expected),
                "missing {expected:?} in\n{errors}"
            );
        }
        let unknown = GatewayConfig::load(
            b"version: 1\nservices: [{name: a}]\nroutes: [{name: r, match: {path_prefix: /r}, service: a, auth: {requird: true}}]\n",
        );
        assert!(matches!(unknown, Err(ConfigError::Parse(e)) if e.contains("requird")));
    }

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

    #[test]
    fn resilience_policies_parse_with_defaults() {
        let doc = r#"
version: 1
services:
  - name: pay
    load_balancer: { strategy: least-request, panic_threshold_percent: 30 }
    endpoint_timeouts: { "POST /payments": 30s, "GET /payments/{id}": 2s, "GET /reports/*": 1m }
    retry: { max_attempts: 4, retry_on: [connect-failure, 5xx], per_try_timeout: 1s }
    outlier_detection: { consecutive_failures: 3 }
    circuit_breaker: { error_threshold_percent: 25 }
routes:
  - name: pay
    match: { path_prefix: /pay }
    service: pay
    fallback: { status: 200, headers: { content-type: application/json }, body: '{"queued":true}' }
"#;
        let config = GatewayConfig::load(doc.as_bytes()).unwrap();
        let pay = &config.services[0];
        assert_eq!(pay.load_balancer.panic_threshold_percent, 30);
        assert_eq!(
            pay.endpoint_timeouts["POST /payments"],
            Duration::from_secs(30)
        );
        let retry = pay.retry.as_ref().unwrap();
        assert_eq!(retry.budget_percent, 20);
        assert_eq!(retry.max_buffered_body_bytes, 64 * 1024);
        let on = retry.conditions();
        assert!(on.connect_failure && !on.reset && !on.timeout);
        assert!(on.status(500) && on.status(599) && !on.status(404));
        let outlier = pay.outlier_detection.as_ref().unwrap();
        assert_eq!(outlier.max_ejection_percent, 50);
        assert_eq!(config.routes[0].fallback.as_ref().unwrap().status, 200);
        let again = GatewayConfig::from_json(&config.to_json()).unwrap();
        assert_eq!(again, config);
        // Defaults of a plain service: no retry, no outlier detection, panic at 50%.
        let plain = GatewayConfig::load(b"version: 1\nservices: [ {name: a} ]\n").unwrap();
        assert!(plain.services[0].retry.is_none());
        assert!(plain.services[0].outlier_detection.is_none());
        assert_eq!(plain.services[0].load_balancer.panic_threshold_percent, 50);
        let json = plain.to_json();
        for newer in [
            "endpoint_timeouts",
            "panic_threshold",
            "retry",
            "outlier",
            "fallback",
        ] {
            assert!(!json.contains(newer), "{json}");
        }
    }

    #[test]
    fn invalid_resilience_policies_are_reported_with_their_path() {
        let all = invalid(
            r#"
version: 1
services:
  - name: a
    load_balancer: { panic_threshold_percent: 101 }
    endpoint_timeouts: { "FETCH /x": 1s, "GET x": 1s, "GET /a/*/b": 1s, "GET /ok": 0ms }
    retry:
      max_attempts: 0
      base_delay: 5s
      max_delay: 1s
      multiplier: 0.5
      retry_on: [404, sometimes]
      budget_percent: 150
      max_buffered_body_bytes: 10000000
    outlier_detection: { consecutive_failures: 0, base_ejection_time: 10s, max_ejection_time: 1s, max_ejection_percent: 101 }
routes:
  - name: r
    match: { path_prefix: /a }
    service: a
    fallback: { status: 99, headers: { "bad name": x, content-length: "1" } }
"#,
        );
        for needle in [
            "services[0].load_balancer.panic_threshold_percent",
            "endpoint_timeouts[\"FETCH /x\"]: unknown method",
            "endpoint_timeouts[\"GET x\"]: the path must start",
            "endpoint_timeouts[\"GET /a/*/b\"]: '*' may only",
            "endpoint_timeouts[\"GET /ok\"]: must be between",
            "services[0].retry.max_attempts",
            "services[0].retry.max_delay: must not be below",
            "services[0].retry.multiplier",
            "services[0].retry.retry_on[0]: 404: a 4xx answer is never retried",
            "services[0].retry.retry_on[1]",
            "services[0].retry.budget_percent",
            "services[0].retry.max_buffered_body_bytes",
            "services[0].outlier_detection.consecutive_failures",
            "services[0].outlier_detection.max_ejection_time",
            "services[0].outlier_detection.max_ejection_percent",
            "routes[0].fallback.status",
            "routes[0].fallback.headers: \"bad name\"",
            "routes[0].fallback.headers: \"content-length\" is set by the gateway",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        let doc = "version: 1\nservices:\n  - name: a\n    retry: { attempts: 3 }\n";
        assert!(matches!(
            GatewayConfig::load(doc.as_bytes()),
            Err(ConfigError::Parse(m)) if m.contains("attempts")
        ));
    }

    #[test]
    fn endpoint_patterns_match_methods_and_segments() {
        let p = EndpointPattern::parse("POST /payments/{id}/capture").unwrap();
        assert!(p.matches("POST", "/payments/7/capture"));
        assert!(!p.matches("GET", "/payments/7/capture"));
        assert!(!p.matches("POST", "/payments//capture"));
        assert!(!p.matches("POST", "/payments/7/capture/x"));
        let rest = EndpointPattern::parse("GET /reports/*").unwrap();
        assert!(rest.matches("GET", "/reports"));
        assert!(rest.matches("GET", "/reports/a/b"));
        assert!(!rest.matches("GET", "/report"));
        let root = EndpointPattern::parse("GET /").unwrap();
        assert!(root.matches("GET", "/"));
        assert!(!root.matches("GET", "/x"));
    }

    #[test]
    fn the_tickettoken_example_is_valid() {
        let doc = include_str!("../../deploy/examples/tickettoken.yaml");
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

    #[test]
    fn the_dev_example_is_valid() {
        let doc = include_str!("../../deploy/examples/dev.yaml");
        GatewayConfig::load(doc.as_bytes()).unwrap();
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

    #[test]
    fn webhook_routes_refuse_auth_and_fallback() {
        let errors = invalid(
            r#"
version: 1
services: [ { name: payment } ]
routes:
  - name: stripe
    match: { path: /webhooks/stripe }
    service: payment
    auth: {}
    fallback: { status: 200 }
    webhook: { provider: stripe }
"#,
        );
        assert!(errors.contains("routes[0].auth: a webhook route is called without a token"));
        assert!(errors.contains("routes[0].fallback: a webhook route must not answer"));
        let unknown = GatewayConfig::load(
            b"version: 1\nservices: [{name: p}]\nroutes: [{name: w, match: {path: /w}, service: p, webhook: {provider: paypal}}]\n",
        );
        assert!(matches!(unknown, Err(ConfigError::Parse(_))));
    }

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
