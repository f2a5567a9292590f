//! The shared response cache of routes with a `cache:` policy.
//!
//! A GET on such a route is looked up, by its key (route, normalised path,
//! the selected query parameters and, unless the policy is `shared`, the
//! verified tenant and user), first in this data plane's in-memory layer,
//! then in Redis (shared by every data plane), and only then sent upstream.
//! Concurrent misses of one key on one data plane send one request
//! upstream: the first caller fetches, the others wait for its result.
//! Every answer of a cached route says `X-Cache: HIT` or `MISS`.
//!
//! Without Redis (unset, or unreachable) the in-memory layer and the
//! upstream answer; a Redis failure is counted
//! (`gateway_cache_redis_errors_total`) and never turns into an error.

mod entry;
mod shared;

pub use entry::{storable_ttl, Entry};

use crate::edge::errors::GatewayError;
pub use crate::ops::handles::CacheCounters;
use crate::ops::metrics::Metrics;
use crate::shared_state::SharedState;
use crate::upstream::h1::response::ProxyBody;
use bytes::{Bytes, BytesMut};
use gateway_common::cache::{CacheKey, Caller};
use gateway_common::config::CacheConfig;
use http::header::{AGE, AUTHORIZATION, CONTENT_LENGTH, COOKIE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// `X-Cache`.
pub const X_CACHE: http::HeaderName = http::HeaderName::from_static("x-cache");
/// Longest time an entry stays in the in-memory layer (invalidations reach
/// it by pub/sub; this bounds staleness when a message is lost).
pub const MEMORY_TTL: Duration = Duration::from_secs(10);
/// Size bound of the in-memory layer, in bytes.
pub const MEMORY_CAPACITY: u64 = 64 * 1024 * 1024;

/// Wall-clock time in unix ms: entries are shared between processes, so
/// their times cannot be a process's monotonic clock.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A route's cache policy, compiled once per config.
#[derive(Debug)]
pub struct RouteCache {
    ttl: Duration,
    vary_by: Vec<String>,
    shared: bool,
    body_limit: u64,
    /// Bound on reading an answer's body to store it, and on waiting for
    /// another caller's fetch.
    wait: Duration,
    counters: CacheCounters,
}

impl RouteCache {
    /// Compiles `config` for a route whose requests may take `timeout`.
    pub fn new(config: &CacheConfig, timeout: Duration, counters: CacheCounters) -> Self {
        RouteCache {
            ttl: config.ttl,
            vary_by: config.vary_by_query.clone(),
            shared: config.shared,
            body_limit: config.body_limit(),
            wait: timeout,
            counters,
        }
    }
}

/// Where a fetch in flight landed, for the callers waiting on it.
#[derive(Debug, Clone)]
enum Landed {
    Pending,
    Stored(Arc<Entry>),
    /// Not cacheable (or failed): each waiter asks the upstream itself.
    NotStored,
}

/// The cache of one data plane: the in-memory layer, the fetches in
/// flight, and the Redis shared with the other data planes.
pub struct ResponseCache {
    memory: moka::future::Cache<String, Arc<Entry>>,
    flights: Mutex<HashMap<String, watch::Receiver<Landed>>>,
    shared: Option<shared::SharedCache>,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("memory_entries", &self.memory.entry_count())
            .field("shared", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

/// Keeps each entry in memory until it expires, at most [`MEMORY_TTL`].
struct MemoryExpiry;

impl moka::Expiry<String, Arc<Entry>> for MemoryExpiry {
    fn expire_after_create(
        &self,
        _key: &String,
        entry: &Arc<Entry>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        let left = Duration::from_millis(entry.expires_at_ms.saturating_sub(unix_ms()));
        Some(left.min(MEMORY_TTL))
    }
}

impl ResponseCache {
    /// A cache shared through `state` when given (must then be called in a
    /// tokio runtime: it starts the invalidation subscriber and the
    /// counter flusher), else this data plane's own.
    pub fn new(state: Option<Arc<SharedState>>, metrics: &Metrics) -> Self {
        let memory = moka::future::Cache::builder()
            .max_capacity(MEMORY_CAPACITY)
            .weigher(|_key: &String, entry: &Arc<Entry>| entry.weight())
            .expire_after(MemoryExpiry)
            .support_invalidation_closures()
            .build();
        let shared = state.map(|state| {
            shared::SharedCache::start(state, memory.clone(), metrics.cache_redis_errors.clone())
        });
        ResponseCache {
            memory,
            flights: Mutex::new(HashMap::new()),
            shared,
        }
    }

    /// Answers `req` on route `route` under its cache `policy`: from the
    /// cache when it has an entry, else through `forward` (storing what
    /// may be).
    pub async fn serve<B, F, Fut>(
        &self,
        policy: &RouteCache,
        route: &Arc<String>,
        req: Request<B>,
        forward: F,
    ) -> Response<ProxyBody>
    where
        F: FnOnce(Request<B>) -> Fut,
        Fut: Future<Output = Response<ProxyBody>>,
    {
        let key = match lookup_key(policy, route, &req) {
            Some(key) => key,
            None => {
                policy.counters.bypass.inc();
                return mark(forward(req).await, "MISS");
            }
        };
        if let Some(entry) = self.in_memory(&key).await {
            policy.counters.hit.inc();
            self.count(true);
            return mark(respond(&entry), "HIT");
        }
        let flight = match self.join(&key.hash) {
            Join::Waiter(mut rx) => {
                let landed = tokio::time::timeout(
                    policy.wait,
                    rx.wait_for(|l| !matches!(l, Landed::Pending)),
                )
                .await
                .ok()
                .and_then(|r| r.ok().map(|l| l.clone()));
                if let Some(Landed::Stored(entry)) = landed {
                    if entry.key == key.text {
                        policy.counters.hit.inc();
                        self.count(true);
                        return mark(respond(&entry), "HIT");
                    }
                }
                None
            }
            Join::Leader(flight) => Some(flight),
        };
        if flight.is_some() {
            if let Some(entry) = self.in_redis(&key).await {
                if let Some(flight) = flight {
                    flight.land(Landed::Stored(entry.clone()));
                }
                policy.counters.hit.inc();
                self.count(true);
                return mark(respond(&entry), "HIT");
            }
        }
        policy.counters.miss.inc();
        self.count(false);
        let response = forward(req).await;
        let (response, stored) = self.store(policy, &key, response).await;
        if let Some(flight) = flight {
            flight.land(stored.map_or(Landed::NotStored, Landed::Stored));
        }
        mark(response, "MISS")
    }

    async fn in_memory(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        let entry = self.memory.get(&key.hash).await?;
        (entry.key == key.text && entry.expires_at_ms > unix_ms()).then_some(entry)
    }

    async fn in_redis(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        let entry = self.shared.as_ref()?.get(key).await?;
        let entry = Arc::new(entry);
        self.memory.insert(key.hash.clone(), entry.clone()).await;
        Some(entry)
    }

    fn count(&self, hit: bool) {
        if let Some(shared) = &self.shared {
            shared.count(hit);
        }
    }

    /// Becomes the fetcher of `hash`, or a waiter on the fetch in flight.
    fn join(&self, hash: &str) -> Join<'_> {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = flights.get(hash) {
            return Join::Waiter(rx.clone());
        }
        let (tx, rx) = watch::channel(Landed::Pending);
        flights.insert(hash.to_string(), rx);
        Join::Leader(Flight {
            cache: self,
            hash: hash.to_string(),
            tx,
        })
    }

    /// Stores the upstream's answer when it may be, returning the answer to
    /// send (its body read whole when stored; otherwise streamed, with
    /// whatever was read ahead sent first).
    async fn store(
        &self,
        policy: &RouteCache,
        key: &CacheKey,
        response: Response<ProxyBody>,
    ) -> (Response<ProxyBody>, Option<Arc<Entry>>) {
        let Some(ttl) = storable_ttl(response.status(), response.headers(), policy.ttl) else {
            return (response, None);
        };
        let declared = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > policy.body_limit) {
            return (response, None);
        }
        let (parts, body) = response.into_parts();
        let body = match read_whole(Box::pin(body), policy.body_limit, policy.wait).await {
            Read::Whole(body) => body,
            Read::Partial(frames, rest) => {
                return (
                    Response::from_parts(parts, ProxyBody::prefixed(frames, rest)),
                    None,
                )
            }
            Read::Failed => {
                return (
                    GatewayError::BadGateway
                        .response("The upstream answer could not be read", None),
                    None,
                )
            }
        };
        let now = unix_ms();
        let entry = Arc::new(Entry {
            key: key.text.clone(),
            route: key.route.clone(),
            path: key.path.clone(),
            status: parts.status.as_u16(),
            headers: Entry::keep_headers(&parts.headers),
            body: body.clone(),
            stored_at_ms: now,
            expires_at_ms: now + ttl.as_millis() as u64,
        });
        self.memory.insert(key.hash.clone(), entry.clone()).await;
        if let Some(shared) = &self.shared {
            shared.put(key, &entry, ttl).await;
        }
        (
            Response::from_parts(parts, ProxyBody::full(body)),
            Some(entry),
        )
    }
}

enum Join<'a> {
    Leader(Flight<'a>),
    Waiter(watch::Receiver<Landed>),
}

/// The fetch of one key in flight; waiters are told how it landed, and a
/// fetch dropped midway (its client gone) lets them go upstream themselves.
struct Flight<'a> {
    cache: &'a ResponseCache,
    hash: String,
    tx: watch::Sender<Landed>,
}

impl Flight<'_> {
    fn land(self, landed: Landed) {
        self.tx.send_replace(landed);
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        self.cache
            .flights
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.hash);
        if matches!(*self.tx.borrow(), Landed::Pending) {
            self.tx.send_replace(Landed::NotStored);
        }
    }
}

/// The key of a GET on a cached route, or `None` when the request is not
/// looked up: not a GET, or (on a route not `shared`) it carries
/// credentials the gateway did not verify, which the upstream might read.
fn lookup_key<B>(policy: &RouteCache, route: &str, req: &Request<B>) -> Option<CacheKey> {
    if req.method() != Method::GET {
        return None;
    }
    let headers = req.headers();
    let caller = if policy.shared {
        None
    } else {
        // Set by the gateway's authentication only: screening removes
        // these headers from every client request.
        match (
            headers.get(crate::policy::auth::X_TENANT_ID),
            headers.get(crate::policy::auth::X_USER_ID),
        ) {
            (Some(tenant), Some(user)) => Some((tenant.to_str().ok()?, user.to_str().ok()?)),
            _ if headers.contains_key(AUTHORIZATION) || headers.contains_key(COOKIE) => {
                return None
            }
            _ => None,
        }
    };
    Some(CacheKey::build(
        route,
        req.uri().path(),
        req.uri().query(),
        &policy.vary_by,
        caller.map(|(tenant, user)| Caller { tenant, user }),
    ))
}

/// The answer built from a cached entry, with its `Age`.
fn respond(entry: &Entry) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(entry.body.clone()));
    *response.status_mut() = StatusCode::from_u16(entry.status).unwrap_or(StatusCode::OK);
    let headers = response.headers_mut();
    for (name, value) in &entry.headers {
        headers.append(name.clone(), value.clone());
    }
    let age = unix_ms().saturating_sub(entry.stored_at_ms) / 1000;
    headers.insert(AGE, HeaderValue::from(age));
    response
}

fn mark(mut response: Response<ProxyBody>, result: &'static str) -> Response<ProxyBody> {
    response
        .headers_mut()
        .insert(X_CACHE, HeaderValue::from_static(result));
    response
}

/// An answer's body read for storing.
enum Read {
    /// All of it, within the limit.
    Whole(Bytes),
    /// Over the limit, with trailers, or too slow: the frames read so far
    /// and the rest, to stream through uncached.
    Partial(VecDeque<Frame<Bytes>>, Pin<Box<ProxyBody>>),
    /// The upstream's stream failed before anything was sent.
    Failed,
}

async fn read_whole(mut body: Pin<Box<ProxyBody>>, limit: u64, within: Duration) -> Read {
    let deadline = tokio::time::Instant::now() + within;
    let mut frames = VecDeque::new();
    let mut size = 0u64;
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Read::Partial(frames, body),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Read::Failed,
            Ok(Some(Ok(frame))) => {
                let whole = match frame.data_ref() {
                    Some(data) => {
                        size += data.len() as u64;
                        size <= limit
                    }
                    None => false,
                };
                frames.push_back(frame);
                if !whole {
                    return Read::Partial(frames, body);
                }
            }
        }
    }
    let mut out = BytesMut::with_capacity(size as usize);
    for frame in frames {
        if let Ok(data) = frame.into_data() {
            out.extend_from_slice(&data);
        }
    }
    Read::Whole(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    fn frames_of(body: ProxyBody) -> Vec<Bytes> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let collected = body.collect().await.unwrap();
            vec![collected.to_bytes()]
        })
    }

    fn policy(shared: bool) -> RouteCache {
        let config = CacheConfig {
            ttl: Duration::from_secs(60),
            vary_by_query: vec!["page".into()],
            shared,
            max_body_bytes: None,
        };
        let counters = CacheCounters {
            hit: Counter::default(),
            miss: Counter::default(),
            bypass: Counter::default(),
        };
        RouteCache::new(&config, Duration::from_secs(5), counters)
    }

    fn request(method: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().method(method).uri("/api/x?page=1&utm=2");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn keys_carry_the_verified_caller_unless_shared() {
        let private = policy(false);
        let alice = [("x-tenant-id", "t1"), ("x-user-id", "alice")];
        let bob = [("x-tenant-id", "t1"), ("x-user-id", "bob")];
        let a = lookup_key(&private, "r", &request("GET", &alice)).unwrap();
        let b = lookup_key(&private, "r", &request("GET", &bob)).unwrap();
        let anonymous = lookup_key(&private, "r", &request("GET", &[])).unwrap();
        assert_ne!(a.hash, b.hash);
        assert_ne!(a.hash, anonymous.hash);
        assert_eq!(
            a,
            CacheKey::build(
                "r",
                "/api/x",
                Some("page=1"),
                &["page".into()],
                Some(Caller {
                    tenant: "t1",
                    user: "alice"
                })
            )
        );
        let shared = policy(true);
        let a = lookup_key(&shared, "r", &request("GET", &alice)).unwrap();
        let b = lookup_key(&shared, "r", &request("GET", &bob)).unwrap();
        assert_eq!(a.hash, b.hash);
    }

    #[test]
    fn only_gets_without_unverified_credentials_are_looked_up() {
        let private = policy(false);
        assert!(lookup_key(&private, "r", &request("POST", &[])).is_none());
        assert!(lookup_key(&private, "r", &request("HEAD", &[])).is_none());
        assert!(lookup_key(&private, "r", &request("GET", &[("cookie", "s=1")])).is_none());
        assert!(lookup_key(
            &private,
            "r",
            &request("GET", &[("authorization", "Bearer x")])
        )
        .is_none());
        // Shared answers do not depend on the caller at all.
        assert!(lookup_key(&policy(true), "r", &request("GET", &[("cookie", "s=1")])).is_some());
    }

    #[tokio::test]
    async fn a_body_within_the_limit_is_read_whole() {
        let body = Box::pin(ProxyBody::full(Bytes::from_static(b"hello")));
        match read_whole(body, 5, Duration::from_secs(1)).await {
            Read::Whole(b) => assert_eq!(b, "hello"),
            _ => panic!("expected the whole body"),
        }
    }

    #[test]
    fn a_body_over_the_limit_streams_through_whole() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let body = Box::pin(ProxyBody::full(Bytes::from_static(b"hello world")));
        let read = rt.block_on(read_whole(body, 4, Duration::from_secs(1)));
        let Read::Partial(frames, rest) = read else {
            panic!("expected a pass-through");
        };
        let all = frames_of(ProxyBody::prefixed(frames, rest));
        assert_eq!(all.concat(), b"hello world");
    }
}
