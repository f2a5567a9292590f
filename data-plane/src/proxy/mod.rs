//! The proxy handler, above the layers it composes: the edge screens the
//! request, the route is matched in the runtime snapshot, the route's
//! policies run in a fixed order, and [`forward`] sends it upstream and
//! streams the answer back.

mod forward;

use crate::config::runtime::{ConfigSource, RouteRuntime, Runtime, ServiceRuntime};
use crate::edge::errors::{GatewayError, X_REQUEST_ID};
use crate::edge::framing::FramingWatch;
use crate::edge::security;
use crate::edge::transport::Attach;
use crate::ops::access_log::{self, AccessLog};
use crate::ops::metrics::Metrics;
use crate::policy::auth::{AuthError, Verifier};
use crate::policy::ratelimit::{RateLimitSettings, RateLimiter};
use crate::policy::validation;
use crate::shared_state::SharedState;
use crate::upstream::h1::body::ClientBody;
use crate::upstream::h1::response::ProxyBody;
use gateway_common::routing::Lookup;
use http::header::ORIGIN;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
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
        let underscores =
            match crate::edge::screen::screen(peer, framing, &mut req, request_id.as_ref()) {
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
                    .policies
                    .cors
                    .as_ref()
                    .and_then(|_| req.headers().get(ORIGIN).cloned());
                let mut response = 'answer: {
                    if let Some(required) = &route.policies.client_cert {
                        let refused =
                            required.refuse(&req, &route.name, &client, request_id.as_ref());
                        if let Some(refused) = refused {
                            break 'answer refused;
                        }
                    }
                    if let Some(auth) = &route.policies.auth {
                        if !auth.public_paths.matches(req.uri().path()) {
                            let caller =
                                match self.authenticate(&route, &client, &req, request_id.as_ref())
                                {
                                    Ok(caller) => caller,
                                    Err(error) => {
                                        break 'answer error.response(request_id.as_ref())
                                    }
                                };
                            let caller = if let Some(authz) = &auth.authz {
                                let authorized = Box::pin(self.authorizer.authorize_caller(
                                    &*self.runtime,
                                    authz,
                                    &route.name,
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
                    let rate = if self.limiter.applies(&route.policies.rate_limit) {
                        let checked = Box::pin(self.limiter.check(
                            &route.policies.rate_limit,
                            &route.name,
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
                if let Some(cors) = &route.policies.cors {
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
        if let Some(aggregate) = &route.policies.aggregate {
            let snapshot = self.runtime.snapshot();
            return Box::pin(aggregate.respond(
                &*snapshot,
                &req,
                peer,
                request_id,
                start,
                route.timeout,
            ))
            .await;
        }
        // A route with neither policy keeps its body streaming, at the cost
        // of this one check.
        let checked = match (&route.policies.signature, &route.policies.validation) {
            (None, None) => Ok(req.map(ClientBody::Streaming)),
            (Some(signature), _) => {
                Box::pin(signature.check(route.context(), req, request_id, start)).await
            }
            (None, Some(validation)) => {
                let context = route.context();
                Box::pin(validation::check(
                    validation, context, req, request_id, start,
                ))
                .await
            }
        };
        let req = match checked {
            Ok(req) => req,
            Err(response) => return response,
        };
        if let Some(webhook) = &route.policies.webhook {
            return Box::pin(webhook.deliver(req, request_id, |req| {
                forward::forward(target, req, peer, request_id, start)
            }))
            .await;
        }
        if let Some(cache) = &route.policies.cache {
            return Box::pin(self.cache.serve(cache, &route.name, req, |req| {
                forward::forward(target, req, peer, request_id, start)
            }))
            .await;
        }
        forward::forward(target, req, peer, request_id, start).await
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
        let cors = route.policies.cors.as_ref()?;
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
        let _span = crate::ops::spans::authentication(&route.name);
        let result = crate::policy::auth::credentials::identify(
            self.verifier.as_deref(),
            self.credentials.as_deref(),
            route.policies.auth.as_ref().is_some_and(|a| a.api_keys),
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
                span.matched(&route.name);
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

/// The proxy as a tower service for one connection from `peer` (its IP as
/// a header value), each request carrying the connection's `facts`. The
/// future is unboxed: hyper keeps one slot per connection for it, so a
/// request allocates no future of its own. The facts are attached here
/// rather than by a service layer of their own: one more layer kept the
/// compiler from building the handler's future in place, and the whole
/// future was copied for every request.
pub fn service<F: Attach>(
    proxy: Arc<Proxy>,
    peer: HeaderValue,
    framing: Arc<FramingWatch>,
    facts: F,
) -> impl tower::Service<
    Request<Incoming>,
    Response = Response<ProxyBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send,
> + Clone
       + Send {
    tower::service_fn(move |mut req: Request<Incoming>| {
        let proxy = proxy.clone();
        let peer = peer.clone();
        let framing = framing.clone();
        facts.attach(&mut req);
        framing.note_body(!http_body::Body::is_end_stream(req.body()));
        async move { Ok(proxy.handle(&peer, &framing, req).await) }
    })
}
