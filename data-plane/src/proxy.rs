//! The proxy handler: route, pick an instance, forward, stream back.

use crate::balancer::Endpoint;
use crate::body::{LimitedBody, ProxyBody};
use crate::errors::{GatewayError, X_REQUEST_ID};
use crate::headers;
use crate::metrics::{Metrics, UpstreamErrorKind};
use crate::runtime::{RouteRuntime, Runtime, ServiceRuntime};
use crate::upstream::{self, Failure};
use gateway_common::routing::Lookup;
use http::header::{CONTENT_LENGTH, HOST};
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, Uri, Version};
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
        Self { runtime, metrics }
    }

    /// The metrics it records into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Handles one request from a client at `peer` (its IP as a header value).
    pub async fn handle(&self, peer: &HeaderValue, req: Request<Incoming>) -> Response<ProxyBody> {
        let start = Instant::now();
        let method = req.method().clone();
        let request_id = req.headers().get(X_REQUEST_ID).cloned();
        match self.route(&req) {
            Ok(target) => {
                let route = target.route.clone();
                let response = forward(target, req, peer, request_id.as_ref()).await;
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

    fn route(&self, req: &Request<Incoming>) -> Result<Target, (GatewayError, String)> {
        let snapshot = self.runtime.load();
        match snapshot.router.lookup(req) {
            Lookup::Found(found) => {
                let route = found.value.clone();
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
            Lookup::NotFound => Err((
                GatewayError::RouteNotFound,
                format!("Route {}:{} not found", req.method(), req.uri().path()),
            )),
        }
    }
}

async fn forward(
    target: Target,
    req: Request<Incoming>,
    peer: &HeaderValue,
    request_id: Option<&HeaderValue>,
) -> Response<ProxyBody> {
    let Target {
        route,
        service,
        path,
    } = target;
    let (mut parts, body) = req.into_parts();
    if content_length(&parts.headers).is_some_and(|len| len > route.body_limit) {
        return too_large(&route, request_id);
    }
    let Some(endpoint) = service.balancer.pick() else {
        return GatewayError::NoHealthyInstance.response(
            &format!("No healthy instance of service {}", service.name),
            request_id,
        );
    };
    let path_and_query = match upstream_path(&parts.uri, path) {
        Some(pq) => pq,
        None => {
            return GatewayError::BadGateway
                .response("The rewritten path is not a valid URI path", request_id)
        }
    };
    // Origin-form (path and query only) on the upstream connection.
    let mut uri = Uri::from(path_and_query);
    std::mem::swap(&mut parts.uri, &mut uri);
    let uri_host = if parts.headers.contains_key(HOST) {
        None
    } else {
        uri.host()
    };
    // The Host value is made once per instance, so the client formats none.
    headers::prepare_request(&mut parts.headers, peer, &endpoint.host_header, uri_host);
    parts.version = Version::HTTP_11;
    let guard = endpoint.load.begin();
    let upstream_req = Request::from_parts(parts, LimitedBody::new(body, route.body_limit));
    let exchange = upstream::send(&endpoint.pool, service.config.connect_timeout, upstream_req);
    match tokio::time::timeout(route.timeout, exchange).await {
        Ok(Ok((response, conn))) => {
            let (mut parts, body) = response.into_parts();
            headers::remove_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, ProxyBody::upstream(body, conn, guard))
        }
        Ok(Err(err)) => {
            drop(guard);
            send_failed(&err, &route, &service, endpoint, request_id)
        }
        Err(_elapsed) => {
            drop(guard);
            service.errors.count(UpstreamErrorKind::Timeout);
            tracing::warn!(
                service = %service.name,
                instance = %endpoint.id,
                timeout_ms = route.timeout.as_millis() as u64,
                "upstream did not answer in time"
            );
            upstream_error(
                UpstreamErrorKind::Timeout,
                &service,
                route.timeout,
                request_id,
            )
        }
    }
}

/// The answer to a failed exchange (the body limit, or an upstream failure
/// counted and logged).
fn send_failed(
    err: &upstream::SendError,
    route: &RouteRuntime,
    service: &ServiceRuntime,
    endpoint: &Endpoint,
    request_id: Option<&HeaderValue>,
) -> Response<ProxyBody> {
    match upstream::classify(err) {
        Failure::BodyTooLarge => too_large(route, request_id),
        Failure::Upstream(kind) => {
            service.errors.count(kind);
            tracing::warn!(
                service = %service.name,
                instance = %endpoint.id,
                request_id = request_id.and_then(|v| v.to_str().ok()).unwrap_or(""),
                error = %error_chain(err),
                "upstream request failed"
            );
            upstream_error(kind, service, route.timeout, request_id)
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
        async move { Ok(proxy.handle(&peer, req).await) }
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
