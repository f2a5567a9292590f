//! Load balancing over the instances of a service.
//!
//! Strategies: smooth weighted round-robin, least-request (the power of two
//! random choices, weighted), weighted random, and consistent hashing on a
//! request key (a header, a cookie, the JWT subject or the client IP) with
//! a weighted Maglev table ([`crate::upstream::maglev`]).
//!
//! The balancer knows the service's healthy instances (not draining, not
//! failed by active health checks) and its unhealthy ones. Instances ejected
//! by outlier detection ([`crate::upstream::outlier`]) are skipped. **Panic mode**:
//! when fewer than `panic_threshold_percent` of the service's instances are
//! healthy and not ejected, requests are spread over all of them (unhealthy
//! and ejected included) rather than overloading the few survivors; with no
//! healthy instance at all the service answers 503.
//!
//! A plain service (no outlier detection, every instance healthy, no retry)
//! picks with one atomic increment, as before.

use crate::rolling::now_ms;
use crate::upstream::maglev::{hash64, mix64, Maglev};
use crate::upstream::outlier::{OutlierDetector, OutlierState};
use crate::upstream::pool::ConnPool;
use base64::Engine as _;
use gateway_common::config::{LoadBalancerConfig, Strategy};
use http::header::{AUTHORIZATION, COOKIE};
use http::uri::Authority;
use http::{HeaderMap, HeaderName, HeaderValue};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Longest precomputed round-robin schedule; larger weight sums are scaled down.
const MAX_SCHEDULE: u64 = 16_384;

/// Strategy-specific tries before a skipping pick scans linearly.
const TRIES: usize = 4;

/// Live counters of one instance; shared by successive snapshots so that
/// in-flight counts and outlier state survive config updates.
#[derive(Debug, Default)]
pub struct InstanceLoad {
    in_flight: AtomicU64,
    /// Outlier-detection bookkeeping.
    pub outlier: OutlierState,
}

impl InstanceLoad {
    /// Requests currently sent to the instance.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard { load: self.clone() }
    }
}

/// Holds one in-flight request against an instance; releases it on drop.
#[derive(Debug)]
pub struct InFlightGuard {
    load: Arc<InstanceLoad>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.load.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A routable instance as the proxy needs it.
#[derive(Debug)]
pub struct Endpoint {
    /// Instance id.
    pub id: Arc<str>,
    /// `host:port`, validated.
    pub authority: Authority,
    /// The same as a `Host` header value, made once.
    pub host_header: HeaderValue,
    /// Relative weight, at least 1.
    pub weight: u32,
    /// Live counters.
    pub load: Arc<InstanceLoad>,
    /// Keep-alive connections to the instance.
    pub pool: Arc<ConnPool>,
    /// For an `https://` instance, its host as the name its certificate is
    /// verified against (unless the service sets `tls.server_name`);
    /// `None`: plain HTTP.
    pub tls: Option<rustls::pki_types::ServerName<'static>>,
}

/// What a consistent-hash key is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// A request header.
    Header(HeaderName),
    /// A cookie.
    Cookie(String),
    /// The `sub` claim of the bearer token (read, not verified: it only
    /// chooses an instance).
    JwtSub,
    /// The client's IP address: the gateway's `x-original-ip` (the
    /// connection's peer, or the client behind a trusted proxy), never the
    /// client's own `X-Forwarded-For`.
    ClientIp,
}

impl HashOn {
    /// Parses a validated `hash_on` value.
    pub fn parse(text: &str) -> Option<HashOn> {
        match text {
            "jwt-sub" => Some(HashOn::JwtSub),
            "client-ip" => Some(HashOn::ClientIp),
            _ => {
                if let Some(h) = text.strip_prefix("header:") {
                    HeaderName::from_bytes(h.trim().as_bytes())
                        .ok()
                        .map(HashOn::Header)
                } else {
                    text.strip_prefix("cookie:")
                        .map(|c| HashOn::Cookie(c.trim().to_string()))
                }
            }
        }
    }

    /// The hash of the request's key, `None` when it has none.
    pub fn key_hash(&self, headers: &HeaderMap, peer: &HeaderValue) -> Option<u64> {
        let hash = |bytes: &[u8]| hash64(bytes, 0);
        match self {
            HashOn::Header(name) => headers.get(name).map(|v| hash(v.as_bytes())),
            // The client's own x-original-ip was removed on arrival; this
            // one is the address `forwarded` resolved.
            HashOn::ClientIp => Some(hash(
                headers
                    .get(crate::headers::X_ORIGINAL_IP)
                    .unwrap_or(peer)
                    .as_bytes(),
            )),
            HashOn::Cookie(name) => headers
                .get_all(COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|pair| pair.trim().split_once('='))
                .find(|(k, _)| k == name)
                .map(|(_, v)| hash(v.as_bytes())),
            HashOn::JwtSub => {
                let auth = headers.get(AUTHORIZATION)?.to_str().ok()?;
                let (scheme, token) = auth.split_once(' ')?;
                if !scheme.eq_ignore_ascii_case("bearer") {
                    return None;
                }
                let payload = token.trim().split('.').nth(1)?;
                let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(payload.trim_end_matches('='))
                    .ok()?;
                let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
                claims.get("sub")?.as_str().map(|s| hash(s.as_bytes()))
            }
        }
    }
}

/// A strategy over one list of endpoints.
#[derive(Debug)]
enum Picker {
    RoundRobin(WeightedRoundRobin),
    LeastRequest,
    Random(WeightedRandom),
    Hash(Arc<Maglev>),
}

/// Endpoints and how to pick among them.
#[derive(Debug)]
struct Pool {
    endpoints: Vec<Arc<Endpoint>>,
    picker: Picker,
    /// Weighted random picks for least-request and hash fallbacks.
    random: WeightedRandom,
}

impl Pool {
    fn build(strategy: Strategy, endpoints: Vec<Arc<Endpoint>>, previous: Option<&Pool>) -> Self {
        let random = WeightedRandom::new(&endpoints);
        let picker = match strategy {
            Strategy::RoundRobin => Picker::RoundRobin(WeightedRoundRobin::new(&endpoints)),
            Strategy::LeastRequest => Picker::LeastRequest,
            Strategy::Random => Picker::Random(random.clone()),
            Strategy::ConsistentHash => {
                let members: Vec<(Arc<str>, u32)> =
                    endpoints.iter().map(|e| (e.id.clone(), e.weight)).collect();
                let reused = previous.and_then(|p| match &p.picker {
                    Picker::Hash(m) if m.built_from(&members) => Some(m.clone()),
                    _ => None,
                });
                Picker::Hash(reused.unwrap_or_else(|| Arc::new(Maglev::build(members))))
            }
        };
        Self {
            endpoints,
            picker,
            random,
        }
    }

    /// Picks an endpoint that `skip` does not refuse, if there is one. A
    /// retry's pick looks ahead in the round-robin schedule without taking
    /// a turn of it: otherwise the retry would take the turn of the
    /// instance after the one that failed, and every first attempt would
    /// land on the failing instance again.
    #[inline]
    fn pick(
        &self,
        hash: Option<u64>,
        retry: bool,
        skip: impl Fn(&Endpoint) -> bool,
    ) -> Option<&Arc<Endpoint>> {
        let n = self.endpoints.len();
        match &self.picker {
            Picker::RoundRobin(rr) => {
                for i in 0..TRIES.min(n) {
                    let e = &self.endpoints[if retry { rr.peek(i) } else { rr.next() }];
                    if !skip(e) {
                        return Some(e);
                    }
                }
            }
            Picker::Random(random) => {
                for _ in 0..TRIES {
                    let e = &self.endpoints[random.next()];
                    if !skip(e) {
                        return Some(e);
                    }
                }
            }
            Picker::LeastRequest => {
                for _ in 0..TRIES {
                    if let Some(e) = self.two_choices(&skip) {
                        return Some(e);
                    }
                }
            }
            Picker::Hash(maglev) => match hash {
                Some(h) => {
                    for i in 0..TRIES as u64 {
                        // A refused instance's keys go to a second choice that
                        // every data plane computes alike.
                        let h = if i == 0 { h } else { mix64(h ^ i) };
                        let e = &self.endpoints[maglev.lookup(h)];
                        if !skip(e) {
                            return Some(e);
                        }
                    }
                }
                None => {
                    for _ in 0..TRIES {
                        let e = &self.endpoints[self.random.next()];
                        if !skip(e) {
                            return Some(e);
                        }
                    }
                }
            },
        }
        let start = rand::random_range(0..n.max(1));
        (0..n)
            .map(|i| &self.endpoints[(start + i) % n])
            .find(|e| !skip(e))
    }

    /// The less loaded (in-flight per weight) of two random endpoints.
    fn two_choices(&self, skip: &impl Fn(&Endpoint) -> bool) -> Option<&Arc<Endpoint>> {
        let n = self.endpoints.len();
        if n == 1 {
            let e = &self.endpoints[0];
            return (!skip(e)).then_some(e);
        }
        let a = rand::random_range(0..n);
        let mut b = rand::random_range(0..n - 1);
        if b >= a {
            b += 1;
        }
        let (ea, eb) = (&self.endpoints[a], &self.endpoints[b]);
        match (skip(ea), skip(eb)) {
            (true, true) => None,
            (false, true) => Some(ea),
            (true, false) => Some(eb),
            (false, false) => {
                let la = u128::from(ea.load.in_flight()) * u128::from(eb.weight);
                let lb = u128::from(eb.load.in_flight()) * u128::from(ea.weight);
                Some(if lb < la { eb } else { ea })
            }
        }
    }
}

/// Picks an instance for each request.
#[derive(Debug)]
pub struct Balancer {
    strategy: Strategy,
    /// Healthy instances; `None` when there is none.
    healthy: Option<Pool>,
    /// Every non-draining instance, when some are unhealthy (panic mode).
    all: Option<Pool>,
    /// Non-draining instances.
    total: usize,
    panic_percent: u64,
    outlier: Option<Arc<OutlierDetector>>,
    hash_on: Option<HashOn>,
}

impl Balancer {
    /// A balancer over `healthy` and `unhealthy` (non-draining) endpoints;
    /// a Maglev table of `previous` is reused when its instances are the same.
    pub fn build(
        config: &LoadBalancerConfig,
        healthy: Vec<Arc<Endpoint>>,
        unhealthy: Vec<Arc<Endpoint>>,
        outlier: Option<Arc<OutlierDetector>>,
        previous: Option<&Balancer>,
    ) -> Self {
        let strategy = config.strategy;
        let previous = previous.filter(|p| p.strategy == strategy);
        let total = healthy.len() + unhealthy.len();
        let all = if unhealthy.is_empty() || healthy.is_empty() {
            None
        } else {
            let mut all = healthy.clone();
            all.extend(unhealthy);
            all.sort_by(|a, b| a.id.cmp(&b.id));
            Some(Pool::build(
                strategy,
                all,
                previous.and_then(|p| p.all.as_ref()),
            ))
        };
        if let Some(detector) = &outlier {
            detector.recount(&healthy, now_ms());
        }
        let healthy = (!healthy.is_empty())
            .then(|| Pool::build(strategy, healthy, previous.and_then(|p| p.healthy.as_ref())));
        Self {
            strategy,
            healthy,
            all,
            total,
            panic_percent: u64::from(config.panic_threshold_percent),
            outlier,
            hash_on: if strategy == Strategy::ConsistentHash {
                config.hash_on.as_deref().and_then(HashOn::parse)
            } else {
                None
            },
        }
    }

    /// A round-robin balancer over `endpoints`, all healthy (tests, tools).
    pub fn round_robin(endpoints: Vec<Arc<Endpoint>>) -> Self {
        Self::build(
            &LoadBalancerConfig::default(),
            endpoints,
            Vec::new(),
            None,
            None,
        )
    }

    /// The key a consistent-hash balancer reads, if any.
    pub fn hash_on(&self) -> Option<&HashOn> {
        self.hash_on.as_ref()
    }

    /// The instance for the next request, if any is routable; `hash` is the
    /// request's key hash (consistent hashing; `None`: random).
    #[inline]
    pub fn pick(&self, hash: Option<u64>) -> Option<&Arc<Endpoint>> {
        self.pick_excluding(hash, &[])
    }

    /// Like [`Balancer::pick`], avoiding the instances in `tried` when
    /// another one is available (a retry goes elsewhere).
    pub fn pick_excluding(
        &self,
        hash: Option<u64>,
        tried: &[Arc<Endpoint>],
    ) -> Option<&Arc<Endpoint>> {
        let healthy = self.healthy.as_ref()?;
        let ejected = self.outlier.as_ref().map_or(0, |o| o.ejected_count());
        let available = healthy.endpoints.len().saturating_sub(ejected) as u64;
        let was_tried = |e: &Endpoint| tried.iter().any(|t| std::ptr::eq(&**t, e));
        let retry = !tried.is_empty();
        if available * 100 < self.panic_percent * self.total as u64 {
            // Panic: spread over every instance, ejected and unhealthy ones too.
            let pool = self.all.as_ref().unwrap_or(healthy);
            return pool
                .pick(hash, retry, was_tried)
                .or_else(|| pool.pick(hash, retry, |_| false));
        }
        if ejected == 0 {
            if !retry {
                return healthy.pick(hash, false, |_| false);
            }
            return healthy
                .pick(hash, true, was_tried)
                .or_else(|| healthy.pick(hash, true, |_| false));
        }
        let now = now_ms();
        let is_ejected = |e: &Endpoint| {
            e.load.outlier.maybe_ejected()
                && self.outlier.as_ref().is_some_and(|o| o.is_ejected(e, now))
        };
        healthy
            .pick(hash, retry, |e| is_ejected(e) || was_tried(e))
            .or_else(|| healthy.pick(hash, retry, is_ejected))
            .or_else(|| healthy.pick(hash, retry, |_| false))
    }

    /// The healthy endpoints this balancer spreads requests over.
    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        self.healthy.as_ref().map_or(&[], |p| &p.endpoints)
    }

    /// Non-draining instances, healthy or not.
    pub fn total(&self) -> usize {
        self.total
    }

    /// The outlier detector of the service, if it has one.
    pub fn outlier(&self) -> Option<&Arc<OutlierDetector>> {
        self.outlier.as_ref()
    }
}

/// Weighted random choice: uniform when all weights are equal, else a
/// binary search over cumulative weights.
#[derive(Debug, Clone)]
struct WeightedRandom {
    /// Cumulative weights; empty when uniform.
    cumulative: Arc<[u64]>,
    n: usize,
}

impl WeightedRandom {
    fn new(endpoints: &[Arc<Endpoint>]) -> Self {
        let uniform = endpoints.windows(2).all(|w| w[0].weight == w[1].weight);
        let cumulative = if uniform {
            Arc::from(Vec::new())
        } else {
            let mut sum = 0u64;
            endpoints
                .iter()
                .map(|e| {
                    sum += u64::from(e.weight.max(1));
                    sum
                })
                .collect()
        };
        Self {
            cumulative,
            n: endpoints.len().max(1),
        }
    }

    #[inline]
    fn next(&self) -> usize {
        match self.cumulative.last() {
            None => rand::random_range(0..self.n),
            Some(&total) => {
                let r = rand::random_range(0..total);
                self.cumulative.partition_point(|&c| c <= r)
            }
        }
    }
}

/// Smooth weighted round-robin (as in nginx), precomputed into one
/// interleaved schedule and walked with an atomic cursor: weights 5,1,1 give
/// `a a b a c a a` rather than `a a a a a b c`.
#[derive(Debug)]
struct WeightedRoundRobin {
    schedule: Box<[u32]>,
    cursor: AtomicUsize,
}

impl WeightedRoundRobin {
    fn new(endpoints: &[Arc<Endpoint>]) -> Self {
        let weights = scaled_weights(endpoints);
        let schedule = smooth_schedule(&weights);
        // Start at a random point so that frequent rebuilds do not favour
        // the first instance.
        let start = rand::random::<u32>() as usize % schedule.len().max(1);
        Self {
            schedule,
            cursor: AtomicUsize::new(start),
        }
    }

    #[inline]
    fn next(&self) -> usize {
        let n = self.cursor.fetch_add(1, Ordering::Relaxed);
        self.schedule[n % self.schedule.len()] as usize
    }

    /// The instance `ahead` places past the next turn, leaving the turns
    /// as they are.
    #[inline]
    fn peek(&self, ahead: usize) -> usize {
        let n = self.cursor.load(Ordering::Relaxed).wrapping_add(ahead);
        self.schedule[n % self.schedule.len()] as usize
    }
}

/// Weights divided by their gcd, then scaled down if their sum is too large
/// for a precomputed schedule (every instance keeps at least 1).
fn scaled_weights(endpoints: &[Arc<Endpoint>]) -> Vec<u64> {
    let raw: Vec<u64> = endpoints
        .iter()
        .map(|e| u64::from(e.weight.max(1)))
        .collect();
    let g = raw.iter().copied().fold(0, gcd).max(1);
    let mut weights: Vec<u64> = raw.iter().map(|w| w / g).collect();
    let sum: u64 = weights.iter().sum();
    if sum > MAX_SCHEDULE {
        for w in &mut weights {
            *w = (*w * MAX_SCHEDULE / sum).max(1);
        }
    }
    weights
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// One full cycle of smooth weighted round-robin over `weights`.
fn smooth_schedule(weights: &[u64]) -> Box<[u32]> {
    let total: i64 = weights.iter().map(|&w| w as i64).sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += *w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(best as u32);
    }
    if schedule.is_empty() {
        schedule.push(0);
    }
    schedule.into_boxed_slice()
}

/// Instances for the tests of the balancer and its outlier detector.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::Endpoint;
    use crate::upstream::pool::ConnPool;
    use http::uri::Authority;
    use http::HeaderValue;
    use std::sync::Arc;

    /// An instance `id` of `weight` at a closed address.
    pub(crate) fn endpoint(id: &str, weight: u32) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            id: id.into(),
            authority: Authority::from_static("127.0.0.1:1"),
            host_header: HeaderValue::from_static("127.0.0.1:1"),
            weight,
            load: Arc::default(),
            pool: Arc::new(ConnPool::new("127.0.0.1:1".into())),
            tls: None,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests;
