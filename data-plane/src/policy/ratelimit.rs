//! Rate limiting, shared by every data plane through Redis.
//!
//! Each decision is one GCRA step (`lua/rate_limit.lua`): one `EVALSHA`
//! round trip on one key holding one number. The limit counts the verified
//! user (`x-user-id`, set by authentication from the token's `sub`) or,
//! for anonymous requests, an HMAC-SHA256 of the client IP under `IP_SALT`
//! (raw IPs never reach Redis).
//!
//! When Redis is not configured, not yet connected, failing or slower than
//! its timeout, the same algorithm runs in this data plane's memory (a
//! capped map), so requests always get an answer; Redis is tried again at
//! most once a second meanwhile, by one request.

use crate::edge::errors::GatewayError;
pub use crate::ops::handles::RateLimitMetrics;
use crate::ops::handles::RejectLabels;
use crate::shared_state::SharedState;
use crate::upstream::h1::response::ProxyBody;
use gateway_common::config::{RateLimitConfig, RateLimitKey, RouteConfig, RATE_LIMIT_TIERS};
use http::header::RETRY_AFTER;
use http::{HeaderMap, HeaderName, HeaderValue, Response};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `X-RateLimit-Limit`: requests allowed per window for this caller.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`: requests still allowed right now.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-Reset`: seconds until the full allowance is back.
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
/// `x-user-id`, set by authentication (clients' copies are removed).
const X_USER_ID: HeaderName = crate::policy::auth::X_USER_ID;
/// `x-user-tier`, set by authentication from the token's `tier`.
const X_USER_TIER: HeaderName = crate::policy::auth::X_USER_TIER;
/// `x-venue-tier`: the client's own statement of its tier.
pub const X_VENUE_TIER: HeaderName = HeaderName::from_static("x-venue-tier");

/// Keys the local fallback keeps at most (about 100 bytes each).
pub const LOCAL_CAPACITY: usize = 100_000;
const LOCAL_SHARDS: usize = 16;
/// Pause before Redis is tried again after a failed call.
const REDIS_RETRY: Duration = Duration::from_secs(1);
/// Scope of the global default limit (`%` cannot start an escaped route name).
const DEFAULT_SCOPE: &str = "%default";

/// The data plane's own rate-limit settings (`ENABLE_RATE_LIMITING`,
/// `RATE_LIMIT_*`, `IP_SALT`).
#[derive(Clone, PartialEq, Eq)]
pub struct RateLimitSettings {
    /// `Some(false)`: no limiting at all; `Some(true)`: routes without a
    /// policy of their own get [`Self::default_requests`] per
    /// [`Self::default_window`]; `None`: only route policies apply.
    pub enabled: Option<bool>,
    /// Requests per window of the global default.
    pub default_requests: u32,
    /// Window of the global default.
    pub default_window: Duration,
    /// Key of the IP hash; `None`: a random one made at start.
    pub ip_salt: Option<String>,
}

impl std::fmt::Debug for RateLimitSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitSettings")
            .field("enabled", &self.enabled)
            .field("default_requests", &self.default_requests)
            .field("default_window", &self.default_window)
            .field("ip_salt", &self.ip_salt.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            enabled: None,
            default_requests: 100,
            default_window: Duration::from_secs(60),
            ip_salt: None,
        }
    }
}

/// A route's rate limit, compiled once per config.
#[derive(Debug, Clone)]
pub enum RouteLimit {
    /// No policy of its own: the global default applies, if enabled.
    Inherit,
    /// `enabled: false`: never limited.
    Exempt,
    /// Its own policy.
    Own(Arc<Policy>),
}

impl RouteLimit {
    /// Compiles `route`'s `rate_limit`.
    pub fn of(route: &RouteConfig) -> Self {
        match &route.rate_limit {
            None => RouteLimit::Inherit,
            Some(c) if !c.enabled => RouteLimit::Exempt,
            Some(c) => RouteLimit::Own(Arc::new(Policy::new(&escape_scope(&route.name), c))),
        }
    }
}

/// A limit ready to use: the limits by tier and the bucket's key scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `rl:SCOPE:`, the start of every bucket key of this policy.
    key_head: String,
    key: RateLimitKey,
    requests: u32,
    /// Requests by tier, in [`RATE_LIMIT_TIERS`] order.
    tiers: [Option<u32>; 3],
    window_us: u64,
    trust_tier_header: bool,
}

impl Policy {
    fn new(scope: &str, config: &RateLimitConfig) -> Self {
        Self {
            key_head: format!("rl:{scope}:"),
            key: config.key,
            requests: config.requests,
            tiers: RATE_LIMIT_TIERS.map(|t| config.tiers.get(t).copied()),
            window_us: u64::try_from(config.window.as_micros()).unwrap_or(u64::MAX),
            trust_tier_header: config.trust_tier_header,
        }
    }

    /// Requests per window for a request with these (authenticated) headers.
    fn requests_for(&self, headers: &HeaderMap) -> u32 {
        if self.tiers.iter().all(Option::is_none) {
            return self.requests;
        }
        let tier = headers.get(X_USER_TIER).or_else(|| {
            self.trust_tier_header
                .then(|| headers.get(X_VENUE_TIER))
                .flatten()
        });
        tier.and_then(|v| {
            let v = v.to_str().ok()?.trim();
            let i = RATE_LIMIT_TIERS
                .iter()
                .position(|t| t.eq_ignore_ascii_case(v))?;
            self.tiers[i]
        })
        .unwrap_or(self.requests)
    }
}

/// `:` and `%` escaped, so that a route name cannot run into the subject.
fn escape_scope(name: &str) -> String {
    name.replace('%', "%25").replace(':', "%3A")
}

/// One decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may go on.
    pub allowed: bool,
    /// Requests still allowed right now.
    pub remaining: u64,
    /// Microseconds until the full allowance is back.
    pub reset_us: u64,
    /// When refused: microseconds until a request would be allowed.
    pub retry_after_us: u64,
}

/// One GCRA step: `tat` is the bucket's theoretical arrival time (`None`:
/// no bucket), all in microseconds. Returns the decision and the new TAT
/// to store (`None`: unchanged). The Lua script does the same in Redis.
pub fn gcra(tat: Option<u64>, now: u64, interval: u64, window: u64) -> (Decision, Option<u64>) {
    let tat = tat.unwrap_or(now).max(now);
    let next = tat.saturating_add(interval);
    if next - now > window {
        let refused = Decision {
            allowed: false,
            remaining: 0,
            reset_us: tat - now,
            retry_after_us: next - window - now,
        };
        return (refused, None);
    }
    let allowed = Decision {
        allowed: true,
        remaining: (window - (next - now)) / interval,
        reset_us: next - now,
        retry_after_us: 0,
    };
    (allowed, Some(next))
}

/// The emission interval of `requests` per `window_us` (at least 1 µs;
/// rounded down, so `requests` fit in a window exactly).
fn interval_of(requests: u32, window_us: u64) -> u64 {
    (window_us / u64::from(requests.max(1))).max(1)
}

/// The GCRA in this data plane's memory: the fallback, and the mode without
/// Redis. At most [`LOCAL_CAPACITY`] buckets: when a shard is full, expired
/// buckets go first, then an arbitrary one (which forgets that client's
/// count: memory stays bounded at the cost of some leniency).
#[derive(Debug)]
pub struct LocalLimiter {
    shards: Box<[Mutex<HashMap<String, u64>>]>,
    per_shard: usize,
    hasher: std::collections::hash_map::RandomState,
    epoch: Instant,
}

impl LocalLimiter {
    /// A limiter keeping at most `capacity` buckets.
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..LOCAL_SHARDS).map(|_| Mutex::default()).collect(),
            per_shard: capacity.div_ceil(LOCAL_SHARDS).max(1),
            hasher: Default::default(),
            epoch: Instant::now(),
        }
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Decides for bucket `key`.
    pub fn decide(&self, key: &str, interval: u64, window: u64) -> Decision {
        let now = self.now_us();
        let shard = &self.shards[(self.hasher.hash_one(key) as usize) % self.shards.len()];
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        let (decision, next) = gcra(map.get(key).copied(), now, interval, window);
        if let Some(next) = next {
            match map.get_mut(key) {
                Some(tat) => *tat = next,
                None => {
                    if map.len() >= self.per_shard {
                        map.retain(|_, tat| *tat > now);
                        if map.len() >= self.per_shard {
                            if let Some(victim) = map.keys().next().cloned() {
                                map.remove(&victim);
                            }
                        }
                    }
                    map.insert(key.to_string(), next);
                }
            }
        }
        decision
    }

    /// Buckets held.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Whether it holds no bucket.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What an allowed request's answer carries (nothing on unlimited routes).
#[derive(Debug, Clone, Copy, Default)]
pub struct Stamp(Option<(u32, Decision)>);

impl Stamp {
    /// Sets the `X-RateLimit-*` headers on the answer.
    pub fn apply(self, headers: &mut HeaderMap) {
        if let Some((limit, decision)) = self.0 {
            set_limit_headers(headers, limit, &decision);
        }
    }
}

fn set_limit_headers(headers: &mut HeaderMap, limit: u32, decision: &Decision) {
    headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(limit));
    headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(decision.remaining));
    headers.insert(
        X_RATELIMIT_RESET,
        HeaderValue::from(ceil_secs(decision.reset_us)),
    );
}

fn ceil_secs(us: u64) -> u64 {
    us.div_ceil(1_000_000)
}

/// Decides, for every request of a data plane, whether it is within its limit.
pub struct RateLimiter {
    enabled: bool,
    default: Option<Arc<Policy>>,
    ip_key: ring::hmac::Key,
    shared: Option<Arc<SharedState>>,
    script: redis::Script,
    local: LocalLimiter,
    metrics: RateLimitMetrics,
    /// Microseconds of [`LocalLimiter`] time before which Redis is not tried.
    redis_retry_at: AtomicU64,
    /// Whether the last decision was taken in Redis.
    shared_mode: AtomicBool,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("enabled", &self.enabled)
            .field("default", &self.default)
            .field("shared", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// A limiter with `settings`, deciding in `shared`'s Redis when there is
    /// one (else locally).
    pub fn new(
        settings: &RateLimitSettings,
        shared: Option<Arc<SharedState>>,
        metrics: RateLimitMetrics,
    ) -> Self {
        let enabled = settings.enabled != Some(false);
        let default = (settings.enabled == Some(true)).then(|| {
            let config = RateLimitConfig {
                requests: settings.default_requests,
                window: settings.default_window,
                ..RateLimitConfig::default()
            };
            Arc::new(Policy::new(DEFAULT_SCOPE, &config))
        });
        let salt = match settings.ip_salt.as_deref().filter(|s| !s.is_empty()) {
            Some(salt) => salt.as_bytes().to_vec(),
            None => {
                if enabled && shared.is_some() {
                    tracing::warn!(
                        "IP_SALT is unset: client IPs are hashed with a random salt made at start, so limits counted by IP are not shared with other data planes and start afresh when this one restarts; set the same IP_SALT on every data plane"
                    );
                }
                rand::random::<[u8; 32]>().to_vec()
            }
        };
        metrics.shared.set(0);
        Self {
            enabled,
            default,
            ip_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &salt),
            shared,
            script: redis::Script::new(include_str!("../lua/rate_limit.lua")),
            local: LocalLimiter::new(LOCAL_CAPACITY),
            metrics,
            redis_retry_at: AtomicU64::new(0),
            shared_mode: AtomicBool::new(false),
        }
    }

    /// Whether a limit applies to a route whose own is `limit` (else
    /// [`Self::check`] has nothing to decide).
    pub fn applies(&self, limit: &RouteLimit) -> bool {
        self.policy_for(limit).is_some()
    }

    /// The limit that applies to a route whose own is `limit`, if any.
    fn policy_for<'a>(&'a self, limit: &'a RouteLimit) -> Option<&'a Arc<Policy>> {
        if !self.enabled {
            return None;
        }
        match limit {
            RouteLimit::Own(policy) => Some(policy),
            RouteLimit::Inherit => self.default.as_ref(),
            RouteLimit::Exempt => None,
        }
    }

    /// Checks an authenticated request on route `route` (whose own limit
    /// is `limit`): `Ok` with the headers for its answer, or `Err` with the
    /// 429 answer.
    pub async fn check(
        &self,
        limit: &RouteLimit,
        route: &Arc<String>,
        peer: &HeaderValue,
        headers: &HeaderMap,
        request_id: Option<&HeaderValue>,
    ) -> Result<Stamp, Response<ProxyBody>> {
        let Some(policy) = self.policy_for(limit) else {
            return Ok(Stamp::default());
        };
        let key = self.bucket_key(policy, peer, headers);
        let limit = policy.requests_for(headers);
        let decision = self
            .decide(&key, interval_of(limit, policy.window_us), policy.window_us)
            .await;
        if decision.allowed {
            return Ok(Stamp(Some((limit, decision))));
        }
        self.metrics
            .rejected
            .get_or_create(&RejectLabels {
                route: route.clone(),
            })
            .inc();
        Err(too_many(limit, &decision, request_id))
    }

    /// `rl:SCOPE:u:USER` or `rl:SCOPE:ip:HMAC`.
    fn bucket_key(&self, policy: &Policy, peer: &HeaderValue, headers: &HeaderMap) -> String {
        let user = match policy.key {
            RateLimitKey::Ip => None,
            RateLimitKey::Auto | RateLimitKey::User => headers.get(X_USER_ID),
        };
        let mut key = String::with_capacity(policy.key_head.len() + 40);
        key.push_str(&policy.key_head);
        match user.and_then(|u| u.to_str().ok()) {
            Some(user) => {
                key.push_str("u:");
                key.push_str(user);
            }
            None => {
                key.push_str("ip:");
                let tag = ring::hmac::sign(&self.ip_key, peer.as_bytes());
                for b in &tag.as_ref()[..16] {
                    key.push(char::from(HEX[usize::from(b >> 4)]));
                    key.push(char::from(HEX[usize::from(b & 0xf)]));
                }
            }
        }
        key
    }

    /// One decision: in Redis when it is usable, else locally.
    async fn decide(&self, key: &str, interval: u64, window: u64) -> Decision {
        if let Some(shared) = &self.shared {
            if self.may_try_redis() {
                match self.decide_in_redis(shared, key, interval, window).await {
                    Ok(decision) => {
                        shared.record(true);
                        self.set_shared_mode(true, None);
                        return decision;
                    }
                    Err(reason) => {
                        shared.record(false);
                        self.redis_retry_at.store(
                            self.local.now_us() + REDIS_RETRY.as_micros() as u64,
                            Ordering::Relaxed,
                        );
                        self.set_shared_mode(false, Some(&reason));
                    }
                }
            }
            self.metrics.fallback.inc();
        }
        self.local.decide(key, interval, window)
    }

    /// Whether this request may call Redis: always while it works; after a
    /// failure, one request once the pause is over.
    fn may_try_redis(&self) -> bool {
        let at = self.redis_retry_at.load(Ordering::Relaxed);
        if at == 0 {
            return true;
        }
        let now = self.local.now_us();
        now >= at
            && self
                .redis_retry_at
                .compare_exchange(
                    at,
                    now + REDIS_RETRY.as_micros() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    async fn decide_in_redis(
        &self,
        shared: &SharedState,
        key: &str,
        interval: u64,
        window: u64,
    ) -> Result<Decision, String> {
        let mut conn = shared
            .connection()
            .ok_or_else(|| "not connected yet".to_string())?;
        let mut invocation = self.script.key(shared.key(key));
        invocation.arg(interval).arg(window);
        let call = invocation.invoke_async::<Vec<i64>>(&mut conn);
        let reply = match tokio::time::timeout(shared.timeout(), call).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("no answer within {:?}", shared.timeout())),
        };
        match reply[..] {
            [allowed, remaining, reset, retry] => {
                let us = |v: i64| u64::try_from(v).unwrap_or(0);
                Ok(Decision {
                    allowed: allowed == 1,
                    remaining: us(remaining),
                    reset_us: us(reset),
                    retry_after_us: us(retry),
                })
            }
            _ => Err(format!("unexpected script reply {reply:?}")),
        }
    }

    fn set_shared_mode(&self, shared: bool, reason: Option<&str>) {
        if self.shared_mode.swap(shared, Ordering::Relaxed) == shared {
            return;
        }
        self.metrics.shared.set(i64::from(shared));
        if shared {
            self.redis_retry_at.store(0, Ordering::Relaxed);
            tracing::info!("rate limits are decided in Redis, shared by all data planes");
        } else {
            tracing::warn!(
                reason = reason.unwrap_or(""),
                "rate limits fall back to this data plane's own counters until Redis answers again"
            );
        }
    }

    /// The local fallback (for inspection).
    pub fn local(&self) -> &LocalLimiter {
        &self.local
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The 429 answer: the seed's error body, `Retry-After` and the limit headers.
fn too_many(
    limit: u32,
    decision: &Decision,
    request_id: Option<&HeaderValue>,
) -> Response<ProxyBody> {
    let retry_after = ceil_secs(decision.retry_after_us).max(1);
    let mut response = GatewayError::RateLimited.response(
        &format!("Too many requests; retry in {retry_after} s"),
        request_id,
    );
    let headers = response.headers_mut();
    set_limit_headers(headers, limit, decision);
    headers.insert(RETRY_AFTER, HeaderValue::from(retry_after));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    #[test]
    fn gcra_allows_the_limit_at_once_then_one_per_interval() {
        // 10 per 60 s: interval 6 s.
        let (window, interval) = (60 * S, interval_of(10, 60 * S));
        assert_eq!(interval, 6 * S);
        let now = 1_000 * S;
        let mut tat = None;
        for i in 0..10 {
            let (d, next) = gcra(tat, now, interval, window);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 9 - i);
            assert_eq!(d.reset_us, (i + 1) * interval);
            tat = next;
        }
        let (refused, next) = gcra(tat, now, interval, window);
        assert!(!refused.allowed);
        assert_eq!(next, None, "a refusal changes nothing");
        assert_eq!(refused.remaining, 0);
        assert_eq!(refused.retry_after_us, interval);
        assert_eq!(refused.reset_us, window);
        // One interval later, exactly one more.
        let later = now + interval;
        let (d, next) = gcra(tat, later, interval, window);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        assert!(!gcra(next, later, interval, window).0.allowed);
        // A window later, the whole allowance is back.
        let (d, _) = gcra(tat, now + window, interval, window);
        assert_eq!(d.remaining, 9);
        // A stale TAT is the same as none.
        assert_eq!(
            gcra(Some(now - 5 * S), now, interval, window),
            gcra(None, now, interval, window)
        );
    }

    #[test]
    fn intervals_round_down_so_the_limit_fits() {
        // 7 per minute does not divide evenly: all 7 fit in one window.
        let (window, interval) = (60 * S, interval_of(7, 60 * S));
        let mut tat = None;
        for _ in 0..7 {
            let (d, next) = gcra(tat, 5 * S, interval, window);
            assert!(d.allowed);
            tat = next;
        }
        assert!(!gcra(tat, 5 * S, interval, window).0.allowed);
        assert_eq!(interval_of(1_000_000, S), 1);
    }

    #[test]
    fn local_limiter_counts_per_key_and_stays_bounded() {
        let local = LocalLimiter::new(32);
        let interval = interval_of(2, 3600 * S);
        assert!(local.decide("a", interval, 3600 * S).allowed);
        assert!(local.decide("a", interval, 3600 * S).allowed);
        assert!(!local.decide("a", interval, 3600 * S).allowed);
        assert!(local.decide("b", interval, 3600 * S).allowed);
        for i in 0..1000 {
            local.decide(&format!("k{i}"), interval, 3600 * S);
        }
        assert!(local.len() <= 32 + LOCAL_SHARDS, "{}", local.len());
    }

    fn policy(json: &str) -> Policy {
        let config: RateLimitConfig = serde_json::from_str(json).unwrap();
        Policy::new("r", &config)
    }

    fn headers(pairs: &[(&HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert((*k).clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn tiers_come_from_the_token_and_the_header_only_when_trusted() {
        let p = policy(r#"{ "requests": 10, "tiers": { "standard": 50, "premium": 200 } }"#);
        assert_eq!(p.requests_for(&headers(&[])), 10);
        assert_eq!(p.requests_for(&headers(&[(&X_USER_TIER, "premium")])), 200);
        assert_eq!(p.requests_for(&headers(&[(&X_USER_TIER, "free")])), 10);
        assert_eq!(p.requests_for(&headers(&[(&X_VENUE_TIER, "premium")])), 10);
        let trusting = policy(
            r#"{ "requests": 10, "tiers": { "standard": 50, "premium": 200 }, "trust_tier_header": true }"#,
        );
        assert_eq!(
            trusting.requests_for(&headers(&[(&X_VENUE_TIER, "Premium")])),
            200
        );
        // The token's tier wins over the header.
        assert_eq!(
            trusting.requests_for(&headers(&[
                (&X_USER_TIER, "standard"),
                (&X_VENUE_TIER, "premium")
            ])),
            50
        );
        assert_eq!(
            trusting.requests_for(&headers(&[(&X_VENUE_TIER, "gold")])),
            10
        );
    }

    #[test]
    fn keys_name_the_user_or_a_salted_hash_of_the_ip() {
        let salted = |salt: &str| {
            RateLimiter::new(
                &RateLimitSettings {
                    ip_salt: Some(salt.into()),
                    ..Default::default()
                },
                None,
                RateLimitMetrics::default(),
            )
        };
        let limiter = salted("pepper");
        let peer = HeaderValue::from_static("203.0.113.7");
        let user = headers(&[(&X_USER_ID, "user-1")]);
        let auto = policy("{}");
        assert_eq!(limiter.bucket_key(&auto, &peer, &user), "rl:r:u:user-1");
        let by_ip = limiter.bucket_key(&auto, &peer, &HeaderMap::new());
        assert!(by_ip.starts_with("rl:r:ip:"), "{by_ip}");
        assert_eq!(by_ip.len(), "rl:r:ip:".len() + 32);
        assert!(!by_ip.contains("203"), "{by_ip}");
        let ip = policy(r#"{ "key": "ip" }"#);
        assert_eq!(limiter.bucket_key(&ip, &peer, &user), by_ip);
        // Same salt, same hash (shared across data planes); another salt differs.
        assert_eq!(
            salted("pepper").bucket_key(&auto, &peer, &HeaderMap::new()),
            by_ip
        );
        assert_ne!(
            salted("salt").bucket_key(&auto, &peer, &HeaderMap::new()),
            by_ip
        );
        assert_eq!(escape_scope("a:b%c"), "a%3Ab%25c");
    }
}
