//! The proxy handler: route, pick an instance, forward, stream back.

use crate::config::runtime::{ConfigSource, RouteRuntime, Runtime, ServiceRuntime};
use crate::edge::errors::{GatewayError, X_REQUEST_ID};
use crate::edge::framing::FramingWatch;
use crate::edge::security;
use crate::headers;
use crate::ops::access_log::{self, AccessLog};
use crate::ops::metrics::{Metrics, UpstreamErrorKind};
use crate::policy::auth::{AuthError, Verifier};
use crate::policy::ratelimit::{RateLimitSettings, RateLimiter};
use crate::rolling::now_ms;
use crate::shared_state::SharedState;
use crate::upstream::balancer::Endpoint;
use crate::upstream::breaker::{self, Permit, Rejected};
use crate::upstream::deadline::{self, Deadline};
use crate::upstream::h1::body::{ClientBody, ClientFault, LimitedBody, ProxyBody};
use crate::upstream::pool::{self, Failure};
use crate::upstream::retry::{self, RetryPolicy};
use bytes::Bytes;
use gateway_common::routing::Lookup;
use http::header::{CONTENT_LENGTH, HOST, ORIGIN};
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

/// What every connection's handler shares.
#[derive(Debug)]
pub struct Proxy {
    runtime: Arc<Runtime>,
    metrics: Arc<Metrics>,
    verifier: Option<Arc<Verifier>>,
    /// Redis shared with the other data planes, when configured.
    shared: Option<Arc<SharedState>>,
    /// Response cache of the routes with a cache policy.
    cache: Arc<crate::policy::cache::ResponseCache>,
    /// Rate limits (shared through Redis when configured).
    limiter: RateLimiter,
    /// Revoked tokens and API keys (fed from Redis when configured).
    credentials: Option<Arc<crate::policy::auth::credentials::Credentials>>,
    /// The refresh and logout endpoints, when configured.
    sessions: Option<Arc<crate::policy::auth::session::Sessions>>,
    /// Permissions, venue scoping and user details of authenticated callers.
    authorizer: crate::policy::authorization::Authorizer,
    /// Whether each request gets an access-log line.
    access_log: AccessLog,
    /// Peers whose `X-Forwarded-For` is believed.
    trusted_proxies: crate::edge::forwarded::TrustedProxies,
}

/// Where a routed request goes.
struct Target {
    route: Arc<RouteRuntime>,
    service: Arc<ServiceRuntime>,
    /// Rewritten path; `None` to keep the original.
    path: Option<String>,
}

impl Proxy {
    /// A proxy serving from `runtime`'s current snapshot.
    pub fn new(runtime: Arc<Runtime>, metrics: Arc<Metrics>) -> Self {
        let cache = Arc::new(crate::policy::cache::ResponseCache::new(None, &metrics));
        let limiter = RateLimiter::new(
            &RateLimitSettings::default(),
            None,
            metrics.ratelimit.clone(),
        );
        Self {
            runtime,
            metrics,
            verifier: None,
            shared: None,
            cache,
            limiter,
            credentials: None,
            sessions: None,
            authorizer: crate::policy::authorization::Authorizer::new(None),
            access_log: AccessLog::default(),
            trusted_proxies: Default::default(),
        }
    }

    /// Writes (or not) one access-log line per request.
    pub fn with_access_log(mut self, access_log: AccessLog) -> Self {
        self.access_log = access_log;
        self
    }

    /// Refuses revoked tokens and accepts API keys from `credentials`, and
    /// answers the refresh and logout endpoints with `sessions`.
    pub fn with_credentials(
        mut self,
        credentials: Option<Arc<crate::policy::auth::credentials::Credentials>>,
        sessions: Option<Arc<crate::policy::auth::session::Sessions>>,
    ) -> Self {
        self.credentials = credentials;
        self.sessions = sessions;
        self
    }

    /// Believes the `X-Forwarded-For` of peers in `trusted` (default:
    /// nobody's).
    pub fn with_trusted_proxies(mut self, trusted: crate::edge::forwarded::TrustedProxies) -> Self {
        self.trusted_proxies = trusted;
        self
    }

    /// Decides rate limits with `limiter` (default: route policies only,
    /// counted in this data plane).
    pub fn with_rate_limiter(mut self, limiter: RateLimiter) -> Self {
        self.limiter = limiter;
        self
    }

    /// Verifies access tokens with `verifier` on routes that require them
    /// (`None`: such routes answer 401).
    pub fn with_verifier(mut self, verifier: Option<Arc<Verifier>>) -> Self {
        self.verifier = verifier;
        self
    }

    /// Shares rate-limit counters and cached responses with the other data
    /// planes through `shared` (`None`: this data plane keeps its own).
    /// Must be called in a tokio runtime when `shared` is given.
    pub fn with_shared_state(mut self, shared: Option<Arc<SharedState>>) -> Self {
        if shared.is_some() {
            self.cache = Arc::new(crate::policy::cache::ResponseCache::new(
                shared.clone(),
                &self.metrics,
            ));
        }
        self.authorizer = crate::policy::authorization::Authorizer::new(shared.clone());
        self.shared = shared;
        self
    }

    /// The Redis shared with the other data planes, when configured.
    pub fn shared_state(&self) -> Option<&Arc<SharedState>> {
        self.shared.as_ref()
    }

    /// The metrics it records into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Handles one request from a client at `peer` (its IP as a header
    /// value), on a connection watched by `framing`.
    pub async fn handle(
        &self,
        peer: &HeaderValue,
        framing: &FramingWatch,
        req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let start = Instant::now();
        let mut log = self.access_log.begin(&req, start);
        let response = match crate::ops::spans::request(&req) {
            None => self.answer(peer, framing, req, start, &mut log).await,
            Some(span) => {
                Box::pin(crate::ops::spans::traced(
                    span,
                    self.answer(peer, framing, req, start, &mut log),
                ))
                .await
            }
        };
        if let Some(log) = log {
            log.finish(&response);
        }
        response
    }

    async fn answer(
        &self,
        peer: &HeaderValue,
        framing: &FramingWatch,
        mut req: Request<Incoming>,
        start: Instant,
        log: &mut Option<access_log::Pending>,
    ) -> Response<ProxyBody> {
        let method = req.method().clone();
        let request_id = req.headers().get(X_REQUEST_ID).cloned();
        let underscores = match screen(peer, framing, &mut req, request_id.as_ref()) {
            Ok(underscores) => underscores,
            Err((error, message)) => {
                let response = error.response(message, request_id.as_ref());
                self.metrics
                    .unmatched()
                    .record(&method, response.status(), start.elapsed());
                return response;
            }
        };
        if let Some(sessions) = &self.sessions {
            req = match Box::pin(sessions.serve(req, peer, request_id.as_ref())).await {
                Ok(response) => return response,
                Err(req) => req,
            };
        }
        if let Some(response) = self.preflight(&req, request_id.as_ref()) {
            return response;
        }
        let client = self.trusted_proxies.resolve(peer, &mut req);
        match self.route(&req) {
            Ok(target) => {
                let route = target.route.clone();
                if underscores && !route.allow_underscore_headers {
                    security::drop_underscore_headers(
                        req.headers_mut(),
                        &route.name,
                        request_id.as_ref(),
                    );
                }
                access_log::note_route(log, &route);
                // Only routes with a CORS policy look at the origin.
                let origin = route
                    .cors
                    .as_ref()
                    .and_then(|_| req.headers().get(ORIGIN).cloned());
                let mut response = 'answer: {
                    if let Some(auth) = &route.auth {
                        if !auth.public_paths.matches(req.uri().path()) {
                            let caller =
                                match self.authenticate(&route, &client, &req, request_id.as_ref())
                                {
                                    Ok(caller) => caller,
                                    Err(error) => {
                                        break 'answer error.response(request_id.as_ref())
                                    }
                                };
                            let caller = if auth.authz.is_some() {
                                let authorized = Box::pin(self.authorizer.authorize_caller(
                                    &self.runtime,
                                    &route,
                                    caller,
                                    &req,
                                    &client,
                                    request_id.as_ref(),
                                ));
                                match authorized.await {
                                    Ok(caller) => caller,
                                    Err(refused) => break 'answer refused,
                                }
                            } else {
                                caller
                            };
                            caller.apply(req.headers_mut());
                        }
                    }
                    access_log::note_identity(log, req.headers());
                    // Policies that may wait on a lookup or Redis are boxed, and
                    // only when they apply: the handler's future stays small,
                    // and it is moved whole for every request.
                    let rate = if self.limiter.applies(&route) {
                        let checked = Box::pin(self.limiter.check(
                            &route,
                            &client,
                            req.headers(),
                            request_id.as_ref(),
                        ));
                        match checked.await {
                            Ok(stamp) => stamp,
                            Err(refused) => break 'answer refused,
                        }
                    } else {
                        crate::policy::ratelimit::Stamp::default()
                    };
                    let mut response = self
                        .dispatch(target, req, peer, request_id.as_ref(), start)
                        .await;
                    rate.apply(response.headers_mut());
                    response
                };
                if let Some(cors) = &route.cors {
                    cors.apply(origin.as_ref(), response.headers_mut());
                }
                route
                    .metrics
                    .record(&method, response.status(), start.elapsed());
                response
            }
            Err((error, message)) => {
                let response = error.response(&message, request_id.as_ref());
                self.metrics
                    .unmatched()
                    .record(&method, response.status(), start.elapsed());
                response
            }
        }
    }

    /// Answers an admitted request on its route: an aggregate, or the
    /// validated request forwarded (as a webhook delivery, or through the
    /// response cache).
    async fn dispatch(
        &self,
        target: Target,
        req: Request<Incoming>,
        peer: &HeaderValue,
        request_id: Option<&HeaderValue>,
        start: Instant,
    ) -> Response<ProxyBody> {
        let route = target.route.clone();
        if let Some(aggregate) = &route.aggregate {
            let snapshot = self.runtime.snapshot();
            return Box::pin(aggregate.respond(
                &snapshot,
                &req,
                peer,
                request_id,
                start,
                route.timeout,
            ))
            .await;
        }
        let checked = match &route.signature {
            Some(signature) => Box::pin(signature.check(&route, req, request_id, start)).await,
            None if route.validation.is_some() => {
                Box::pin(crate::policy::validation::check(
                    &route, req, request_id, start,
                ))
                .await
            }
            None => Ok(req.map(ClientBody::Streaming)),
        };
        let req = match checked {
            Ok(req) => req,
            Err(response) => return response,
        };
        if let Some(webhook) = &route.webhook {
            return Box::pin(webhook.deliver(req, request_id, |req| {
                forward(target, req, peer, request_id, start)
            }))
            .await;
        }
        if route.cache.is_some() {
            return Box::pin(self.cache.serve(&route, req, |req| {
                forward(target, req, peer, request_id, start)
            }))
            .await;
        }
        forward(target, req, peer, request_id, start).await
    }

    /// Answers a CORS preflight for a route with a CORS policy (routed by
    /// the method it asks about, before authentication: browsers send no
    /// credentials on a preflight). `None`: not one; the request goes on.
    fn preflight(
        &self,
        req: &Request<Incoming>,
        request_id: Option<&HeaderValue>,
    ) -> Option<Response<ProxyBody>> {
        let asked = crate::policy::cors::preflight_method(req)?;
        let snapshot = self.runtime.load();
        let Lookup::Found(found) = snapshot.router.lookup_as(asked, req) else {
            return None;
        };
        let route = found.value;
        let cors = route.cors.as_ref()?;
        let origin = req.headers().get(ORIGIN)?;
        let start = Instant::now();
        if !cors.allows(origin) {
            crate::security_event!(
                "cors_origin_rejected",
                "low",
                origin = origin.to_str().unwrap_or(""),
                route = %route.name,
                request_id = request_id.and_then(|v| v.to_str().ok()).unwrap_or(""),
                "preflight from an origin the route does not allow"
            );
        }
        let response = cors.preflight(origin, request_id);
        route
            .metrics
            .record(req.method(), response.status(), start.elapsed());
        Some(response)
    }

    /// Verifies the request's access token for `route`.
    fn authenticate(
        &self,
        route: &RouteRuntime,
        peer: &HeaderValue,
        req: &Request<Incoming>,
        request_id: Option<&HeaderValue>,
    ) -> Result<crate::policy::auth::credentials::Caller, AuthError> {
        let _span = crate::ops::spans::authentication(route);
        let result = crate::policy::auth::credentials::identify(
            self.verifier.as_deref(),
            self.credentials.as_deref(),
            route.auth.as_ref().is_some_and(|a| a.api_keys),
            req.headers(),
        );
        result.inspect_err(|error| {
            crate::ops::spans::refused(error.reason());
            crate::security_event!(
                "authentication_failed",
                error.severity(),
                reason = error.reason(),
                route = %route.name,
                method = %req.method(),
                path = req.uri().path(),
                ip = peer.to_str().unwrap_or(""),
                request_id = request_id.and_then(|v| v.to_str().ok()).unwrap_or(""),
                "authentication failed"
            );
        })
    }

    fn route(&self, req: &Request<Incoming>) -> Result<Target, (GatewayError, String)> {
        let span = crate::ops::spans::RouteMatch::enter(req.method());
        let snapshot = self.runtime.load();
        match snapshot.router.lookup(req) {
            Lookup::Found(found) => {
                let route = found.value.clone();
                span.matched(&route);
                let path = route.rewrite.apply(found.remainder, &found.params);
                let service = snapshot.services[route.service].clone();
                Ok(Target {
                    route,
                    service,
                    path,
                })
            }
            Lookup::MethodNotAllowed => Err((
                GatewayError::MethodNotAllowed,
                format!(
                    "Method {} is not allowed on {}",
                    req.method(),
                    req.uri().path()
                ),
            )),
            // Checked on this path only: a matched request pays nothing.
            Lookup::NotFound if snapshot.source == ConfigSource::None => Err((
                GatewayError::NoConfig,
                "No config yet: the gateway has not received its routes from the control plane"
                    .to_string(),
            )),
            Lookup::NotFound => Err((
                GatewayError::RouteNotFound,
                format!("Route {}:{} not found", req.method(), req.uri().path()),
            )),
        }
    }
}

/// Request hygiene before routing: refuses ambiguous heads, removes the
/// fields the client's `Connection` names and headers only the gateway may
/// set, and replaces the path by its normalised form (so that the path
/// routed, checked against public paths and sent upstream is the same
/// one). `Ok(true)`: some header name has `_` (removed once the route is
/// known, unless it allows them).
fn screen(
    peer: &HeaderValue,
    framing: &FramingWatch,
    req: &mut Request<Incoming>,
    request_id: Option<&HeaderValue>,
) -> Result<bool, (GatewayError, &'static str)> {
    let log_id = || request_id.and_then(|v| v.to_str().ok()).unwrap_or("");
    let ip = || peer.to_str().unwrap_or("");
    let version = req.version();
    let screened =
        match security::screen_headers(req.headers_mut(), version, framing.take_conflict()) {
            Ok(screened) => screened,
            Err(e) => {
                crate::security_event!(
                    e.event(),
                    "medium",
                    reason = e.message(),
                    ip = ip(),
                    request_id = log_id(),
                    "request refused"
                );
                return Err((GatewayError::BadRequest, e.message()));
            }
        };
    if let Some(name) = &screened.spoofed {
        crate::security_event!(
            "header_spoofing",
            "medium",
            header = name.as_str(),
            ip = ip(),
            path = req.uri().path(),
            request_id = log_id(),
            "client sent a header only the gateway may set; removed"
        );
    }
    let normalized = match security::normalize_path(req.uri().path()) {
        Ok(std::borrow::Cow::Borrowed(_)) => return Ok(screened.underscores),
        Ok(std::borrow::Cow::Owned(path)) => path,
        Err(e) => {
            crate::security_event!(
                "path_manipulation",
                "medium",
                reason = e.message(),
                path = req.uri().path(),
                ip = ip(),
                request_id = log_id(),
                "request path refused"
            );
            return Err((GatewayError::BadRequest, e.message()));
        }
    };
    tracing::debug!(
        path = req.uri().path(),
        normalized = %normalized,
        "request path normalised"
    );
    let mut pq = normalized;
    if let Some(query) = req.uri().query() {
        pq.push('?');
        pq.push_str(query);
    }
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.path_and_query = PathAndQuery::from_maybe_shared(Bytes::from(pq)).ok();
    match Uri::from_parts(parts) {
        Ok(uri) => {
            *req.uri_mut() = uri;
            Ok(screened.underscores)
        }
        Err(_) => Err((
            GatewayError::BadRequest,
            "The request path cannot be normalised",
        )),
    }
}

async fn forward(
    target: Target,
    req: Request<ClientBody>,
    peer: &HeaderValue,
    request_id: Option<&HeaderValue>,
    start: Instant,
) -> Response<ProxyBody> {
    let Target {
        route,
        service,
        path,
    } = target;
    let (mut parts, body) = req.into_parts();
    let declared_length = content_length(&parts.headers);
    if declared_length.is_some_and(|len| len > route.body_limit) {
        return too_large(&route, request_id);
    }
    let path_and_query = match upstream_path(&parts.uri, path) {
        Some(pq) => pq,
        None => {
            return GatewayError::BadGateway
                .response("The rewritten path is not a valid URI path", request_id)
        }
    };
    // One deadline for the whole request, from the timeout in force.
    let timeout = if service.endpoint_timeouts.is_empty() {
        route.timeout
    } else {
        service
            .endpoint_timeouts
            .lookup(&parts.method, path_and_query.path())
            .unwrap_or(route.timeout)
    };
    let deadline = Deadline::new(
        tokio::time::Instant::from_std(start),
        timeout,
        &parts.headers,
    );
    let hash = service
        .balancer
        .hash_on()
        .and_then(|on| on.key_hash(&parts.headers, peer));
    // Origin-form (path and query only) on the upstream connection.
    let mut uri = Uri::from(path_and_query);
    std::mem::swap(&mut parts.uri, &mut uri);
    let uri_host = if parts.headers.contains_key(HOST) {
        None
    } else {
        uri.host()
    };
    parts.version = Version::HTTP_11;

    if let Some(policy) = &service.retry {
        policy.budget.record_request(now_ms());
        if retry::is_retryable_request(&parts.method, &parts.headers) {
            let keep = body.is_end_stream()
                || matches!(body, ClientBody::Buffered(_))
                || declared_length.is_some_and(|len| len <= policy.max_buffered_body);
            // Bodies too large or of unknown length to keep get one
            // attempt, streamed (below).
            if keep {
                let bytes = match body {
                    ClientBody::Buffered(bytes) => bytes,
                    ClientBody::Streaming(_) if body.is_end_stream() => Bytes::new(),
                    ClientBody::Streaming(body) => match read_body(body, &deadline).await {
                        Ok(bytes) => bytes,
                        Err(fault) => return client_fault(fault, &route, request_id),
                    },
                };
                let forwarding = headers::forwarding(&mut parts.headers, peer, uri_host);
                let request = Retryable {
                    method: parts.method,
                    uri: parts.uri,
                    headers: parts.headers,
                    forwarding,
                    body: bytes,
                };
                return Box::pin(forward_with_retries(
                    &route, &service, policy, request, hash, deadline, request_id,
                ))
                .await;
            }
        }
        // A POST without Idempotency-Key (or a body too large to keep) gets
        // one attempt, whatever happens.
    }
    forward_once(
        &route, &service, parts, body, peer, uri_host, hash, deadline, request_id,
    )
    .await
}

/// Reads the body of a retryable request whole, within the deadline.
async fn read_body(body: Incoming, deadline: &Deadline) -> Result<Bytes, ClientFault> {
    match tokio::time::timeout_at(deadline.at(), body.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(err)) => Err(ClientFault::of_read(&err)),
        Err(_) => Err(ClientFault::TooSlow),
    }
}

/// The answer to a request whose body failed on the client's side. It is
/// the client's fault: nothing is counted against the service.
fn client_fault(
    fault: ClientFault,
    route: &RouteRuntime,
    request_id: Option<&HeaderValue>,
) -> Response<ProxyBody> {
    let id = request_id.and_then(|v| v.to_str().ok()).unwrap_or("");
    match fault {
        ClientFault::TooLarge => too_large(route, request_id),
        ClientFault::Malformed => {
            tracing::info!(request_id = id, "malformed request body framing");
            GatewayError::BadRequest.response(
                "The request body's framing is malformed (chunk size or chunk line)",
                request_id,
            )
        }
        ClientFault::TooSlow => {
            tracing::info!(request_id = id, "the request body did not arrive in time");
            GatewayError::RequestTimeout
                .response("The request body did not arrive in time", request_id)
        }
        ClientFault::Gone => {
            tracing::info!(
                request_id = id,
                "the client closed the connection before the end of its request body"
            );
            GatewayError::ClientClosedRequest.response(
                "The client closed the connection before the end of its request body",
                request_id,
            )
        }
    }
}

/// How an attempt ended, for the breaker and outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Success,
    Failure,
    /// Says nothing about the upstream (the client's body was too large).
    Neutral,
}

/// Reports an attempt's outcome to the service's breaker and outlier
/// detector (when it has them).
pub(crate) fn record_outcome(
    service: &ServiceRuntime,
    endpoint: &Endpoint,
    permit: Option<Permit>,
    outcome: Outcome,
    elapsed: Duration,
) {
    if outcome == Outcome::Neutral {
        return;
    }
    let failed = outcome == Outcome::Failure;
    let outlier = service.balancer.outlier();
    if permit.is_none() && outlier.is_none() {
        return;
    }
    let now = now_ms();
    if let Some(permit) = permit {
        let success = permit.breaker().counts_as_success(!failed, elapsed);
        permit.record(success, now);
    }
    if let Some(detector) = outlier {
        detector.record(endpoint, failed, now, service.balancer.endpoints());
    }
}

/// When an attempt was sent, read only for services whose breaker or
/// outlier detector needs its duration.
pub(crate) struct Clock(Option<Instant>);

impl Clock {
    pub(crate) fn start(service: &ServiceRuntime) -> Self {
        Clock(
            (service.breaker.is_some() || service.balancer.outlier().is_some()).then(Instant::now),
        )
    }

    pub(crate) fn elapsed(&self) -> Duration {
        self.0.map(|t| t.elapsed()).unwrap_or_default()
    }
}

/// Asks the service's breaker (if any) to let a call through.
pub(crate) fn admit(service: &ServiceRuntime) -> Result<Option<Permit>, Rejected> {
    match &service.breaker {
        Some(breaker) => breaker.try_acquire(now_ms()).map(Some),
        None => Ok(None),
    }
}

/// One attempt with the client's body streamed through: the plain path.
#[allow(clippy::too_many_arguments)]
async fn forward_once(
    route: &RouteRuntime,
    service: &ServiceRuntime,
    mut parts: http::request::Parts,
    body: ClientBody,
    peer: &HeaderValue,
    uri_host: Option<&str>,
    hash: Option<u64>,
    deadline: Deadline,
    request_id: Option<&HeaderValue>,
) -> Response<ProxyBody> {
    let permit = match admit(service) {
        Ok(permit) => permit,
        Err(rejected) => {
            return breaker::open_response(
                &service.name,
                route.fallback.as_deref(),
                rejected,
                request_id,
            )
        }
    };
    let Some(endpoint) = service.balancer.pick(hash) else {
        return no_instance(service, request_id);
    };
    let forwarding = headers::forwarding(&mut parts.headers, peer, uri_host);
    let remaining = deadline::header_value(deadline.remaining());
    // The Host value is made once per instance, so the client formats none.
    let fields = forwarding.fields(&endpoint.host_header, &remaining);
    let span = crate::ops::spans::attempt(&service.name, endpoint, 1, &mut parts.headers);
    let guard = endpoint.load.begin();
    let body = body.into_upstream(route.body_limit);
    let client_wait = body.client_wait();
    let upstream_req = Request::from_parts(parts, body);
    // The clock is read only when a breaker or outlier detector needs it.
    let sent_at = Clock::start(service);
    service.errors.attempt();
    let exchange = pool::send_with(
        &endpoint.pool,
        service.config.connect_timeout,
        upstream_req,
        fields.as_slice(),
    );
    match tokio::time::timeout_at(deadline.at(), exchange).await {
        Ok(Ok(response)) => {
            crate::ops::spans::answered(&span, response.status());
            let outcome = if response.status().is_server_error() {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            record_outcome(service, endpoint, permit, outcome, sent_at.elapsed());
            let (mut parts, body) = response.into_parts();
            headers::prepare_response(&mut parts.headers);
            let mut response = Response::from_parts(parts, ProxyBody::upstream(body, guard));
            access_log::mark_instance(&mut response, &endpoint.authority);
            response
        }
        Ok(Err(err)) => {
            drop(guard);
            crate::ops::spans::send_failed(&span, &err);
            let (response, outcome) = send_failed(&err, route, service, endpoint, request_id);
            record_outcome(service, endpoint, permit, outcome, sent_at.elapsed());
            response
        }
        Err(_elapsed) if client_wait.is_some_and(|w| w.waiting()) => {
            // The upstream was still being sent the body the client is slow
            // to give: the client's fault (the permit goes unrecorded).
            drop(guard);
            crate::ops::spans::failed(&span, ClientFault::TooSlow.as_str());
            client_fault(ClientFault::TooSlow, route, request_id)
        }
        Err(_elapsed) => {
            drop(guard);
            crate::ops::spans::failed(&span, UpstreamErrorKind::Timeout.as_str());
            record_outcome(
                service,
                endpoint,
                permit,
                Outcome::Failure,
                sent_at.elapsed(),
            );
            timed_out(service, endpoint, deadline.budget(), request_id)
        }
    }
}

/// A request that may be sent more than once: its head (hop-by-hop headers
/// removed), the forwarding headers it gets, and its whole body.
struct Retryable {
    method: http::Method,
    uri: Uri,
    headers: http::HeaderMap,
    forwarding: headers::Forwarding,
    body: Bytes,
}

impl Retryable {
    /// The request of one attempt; `Host` and the deadline come with the
    /// forwarding fields.
    fn attempt(&self) -> Request<LimitedBody> {
        let mut req = Request::new(LimitedBody::buffered(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// Attempts until one answers with something the policy does not retry,
/// the attempts or the retry budget are spent, or the next attempt would
/// start past the deadline. Each retry goes to another instance when there
/// is one.
async fn forward_with_retries(
    route: &RouteRuntime,
    service: &ServiceRuntime,
    policy: &RetryPolicy,
    request: Retryable,
    hash: Option<u64>,
    deadline: Deadline,
    request_id: Option<&HeaderValue>,
) -> Response<ProxyBody> {
    let mut tried: Vec<Arc<Endpoint>> = Vec::new();
    let mut last: Option<Response<ProxyBody>> = None;
    for attempt in 1..=policy.max_attempts {
        if let Some(failed) = last.take() {
            let wait = policy.backoff(attempt - 1);
            if wait >= deadline.remaining() {
                return failed;
            }
            if !policy.budget.try_take(now_ms()) {
                policy.metrics.budget_exhausted.inc();
                tracing::debug!(service = %service.name, "retry budget spent; not retrying");
                return failed;
            }
            drop(failed);
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            policy.metrics.retries.inc();
        }
        let permit = match admit(service) {
            Ok(permit) => permit,
            Err(rejected) => {
                return breaker::open_response(
                    &service.name,
                    route.fallback.as_deref(),
                    rejected,
                    request_id,
                )
            }
        };
        let Some(endpoint) = service.balancer.pick_excluding(hash, &tried).cloned() else {
            return no_instance(service, request_id);
        };
        tried.push(endpoint.clone());
        let now = tokio::time::Instant::now();
        let attempt_deadline = match policy.per_try_timeout {
            Some(t) => deadline.at().min(now + t),
            None => deadline.at(),
        };
        let mut upstream_req = request.attempt();
        let remaining = deadline::header_value(attempt_deadline.saturating_duration_since(now));
        let fields = request.forwarding.fields(&endpoint.host_header, &remaining);
        let span = crate::ops::spans::attempt(
            &service.name,
            &endpoint,
            attempt,
            upstream_req.headers_mut(),
        );
        let guard = endpoint.load.begin();
        let sent_at = Clock::start(service);
        service.errors.attempt();
        let exchange = pool::send_with(
            &endpoint.pool,
            service.config.connect_timeout,
            upstream_req,
            fields.as_slice(),
        );
        let (response, retryable) = match tokio::time::timeout_at(attempt_deadline, exchange).await
        {
            Ok(Ok(response)) => {
                let status = response.status();
                crate::ops::spans::answered(&span, status);
                let outcome = if status.is_server_error() {
                    Outcome::Failure
                } else {
                    Outcome::Success
                };
                record_outcome(service, &endpoint, permit, outcome, sent_at.elapsed());
                let (mut parts, body) = response.into_parts();
                headers::prepare_response(&mut parts.headers);
                let mut response = Response::from_parts(parts, ProxyBody::upstream(body, guard));
                access_log::mark_instance(&mut response, &endpoint.authority);
                (response, policy.on.status(status.as_u16()))
            }
            Ok(Err(err)) => {
                drop(guard);
                crate::ops::spans::send_failed(&span, &err);
                let (response, outcome) = send_failed(&err, route, service, &endpoint, request_id);
                record_outcome(service, &endpoint, permit, outcome, sent_at.elapsed());
                let retryable = match pool::classify(&err) {
                    Failure::Upstream(
                        UpstreamErrorKind::ConnectRefused
                        | UpstreamErrorKind::ConnectTimeout
                        | UpstreamErrorKind::Connect,
                    ) => policy.on.connect_failure,
                    Failure::Upstream(UpstreamErrorKind::Protocol) => policy.on.reset,
                    Failure::Upstream(UpstreamErrorKind::Timeout) | Failure::Client(_) => false,
                };
                (response, retryable)
            }
            Err(_elapsed) => {
                drop(guard);
                crate::ops::spans::failed(&span, UpstreamErrorKind::Timeout.as_str());
                record_outcome(
                    service,
                    &endpoint,
                    permit,
                    Outcome::Failure,
                    sent_at.elapsed(),
                );
                let per_try = attempt_deadline < deadline.at();
                let budget = if per_try {
                    attempt_deadline.saturating_duration_since(now)
                } else {
                    deadline.budget()
                };
                let response = timed_out(service, &endpoint, budget, request_id);
                (response, per_try && policy.on.timeout)
            }
        };
        if !retryable {
            return response;
        }
        last = Some(response);
    }
    last.unwrap_or_else(|| no_instance(service, request_id))
}

fn no_instance(service: &ServiceRuntime, request_id: Option<&HeaderValue>) -> Response<ProxyBody> {
    GatewayError::NoHealthyInstance.response(
        &format!("No healthy instance of service {}", service.name),
        request_id,
    )
}

/// The 504 of an attempt that did not get its response head in `budget`.
fn timed_out(
    service: &ServiceRuntime,
    endpoint: &Endpoint,
    budget: Duration,
    request_id: Option<&HeaderValue>,
) -> Response<ProxyBody> {
    service.errors.count(UpstreamErrorKind::Timeout);
    tracing::warn!(
        service = %service.name,
        instance = %endpoint.id,
        timeout_ms = budget.as_millis() as u64,
        "upstream did not answer in time"
    );
    let mut response = upstream_error(UpstreamErrorKind::Timeout, service, budget, request_id);
    access_log::mark_instance(&mut response, &endpoint.authority);
    response
}

/// The answer to a failed exchange (the body limit, or an upstream failure
/// counted and logged).
fn send_failed(
    err: &pool::SendError,
    route: &RouteRuntime,
    service: &ServiceRuntime,
    endpoint: &Endpoint,
    request_id: Option<&HeaderValue>,
) -> (Response<ProxyBody>, Outcome) {
    match pool::classify(err) {
        Failure::Client(fault) => (client_fault(fault, route, request_id), Outcome::Neutral),
        Failure::Upstream(kind) => {
            service.errors.count(kind);
            tracing::warn!(
                service = %service.name,
                instance = %endpoint.id,
                request_id = request_id.and_then(|v| v.to_str().ok()).unwrap_or(""),
                error = %error_chain(err),
                "upstream request failed"
            );
            let mut response = upstream_error(kind, service, route.timeout, request_id);
            access_log::mark_instance(&mut response, &endpoint.authority);
            (response, Outcome::Failure)
        }
    }
}

fn upstream_error(
    kind: UpstreamErrorKind,
    service: &ServiceRuntime,
    timeout: std::time::Duration,
    request_id: Option<&HeaderValue>,
) -> Response<ProxyBody> {
    let name = &service.name;
    let (error, message) = match kind {
        UpstreamErrorKind::Timeout => (
            GatewayError::UpstreamTimeout,
            format!(
                "Service {name} did not answer within {} ms",
                timeout.as_millis()
            ),
        ),
        UpstreamErrorKind::ConnectTimeout => (
            GatewayError::UpstreamTimeout,
            format!(
                "Service {name} did not accept a connection within {} ms",
                service.config.connect_timeout.as_millis()
            ),
        ),
        UpstreamErrorKind::ConnectRefused => (
            GatewayError::UpstreamUnavailable,
            format!("Service {name} is unavailable (connection refused)"),
        ),
        UpstreamErrorKind::Connect | UpstreamErrorKind::Protocol => (
            GatewayError::BadGateway,
            format!("Service {name} failed to answer"),
        ),
    };
    error.response(&message, request_id)
}

fn too_large(route: &RouteRuntime, request_id: Option<&HeaderValue>) -> Response<ProxyBody> {
    GatewayError::PayloadTooLarge.response(
        &format!(
            "Request body is larger than the limit of {} bytes",
            route.body_limit
        ),
        request_id,
    )
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The path and query sent upstream: the original one when the path is
/// unchanged (no copy), else the new path with the original query.
fn upstream_path(uri: &Uri, path: Option<String>) -> Option<PathAndQuery> {
    match path {
        None => Some(
            uri.path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        ),
        Some(mut path) => {
            if let Some(query) = uri.query() {
                path.push('?');
                path.push_str(query);
            }
            PathAndQuery::from_maybe_shared(bytes::Bytes::from(path)).ok()
        }
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The proxy as a tower service for one connection from `peer` (its IP as
/// a header value). The future is unboxed: hyper keeps one slot per
/// connection for it, so a request allocates no future of its own.
pub fn service(
    proxy: Arc<Proxy>,
    peer: HeaderValue,
    framing: Arc<FramingWatch>,
) -> impl tower::Service<
    Request<Incoming>,
    Response = Response<ProxyBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send,
> + Clone
       + Send {
    tower::service_fn(move |req: Request<Incoming>| {
        let proxy = proxy.clone();
        let peer = peer.clone();
        let framing = framing.clone();
        framing.note_body(!http_body::Body::is_end_stream(req.body()));
        async move { Ok(proxy.handle(&peer, &framing, req).await) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_path_keeps_the_query() {
        let uri: Uri = "/a/b?x=1&y=2".parse().unwrap();
        assert_eq!(upstream_path(&uri, None).unwrap(), "/a/b?x=1&y=2");
        assert_eq!(
            upstream_path(&uri, Some("/b".into())).unwrap(),
            "/b?x=1&y=2"
        );
        assert!(upstream_path(&uri, Some("/has space".into())).is_none());
    }
}
