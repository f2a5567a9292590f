//! Forwarding a routed request to its service: the deadline, the upstream
//! path, the body kept for retries or streamed, and the answers to attempts
//! that got none. Every attempt is one [`attempt`]; retries wrap it.

use super::Target;
use crate::config::runtime::RouteRuntime;
use crate::connection::TlsConnection;
use crate::edge::errors::GatewayError;
use crate::headers;
use crate::ops::access_log;
use crate::ops::metrics::UpstreamErrorKind;
use crate::rolling::now_ms;
use crate::upstream::attempt::{attempt, Attempted, Call, Finish, Outcome};
use crate::upstream::balancer::{Endpoint, InFlightGuard};
use crate::upstream::breaker::{self, Rejected};
use crate::upstream::deadline::Deadline;
use crate::upstream::h1::body::{ClientBody, ClientFault, LimitedBody};
use crate::upstream::h1::response::ProxyBody;
use crate::upstream::h1::response::UpstreamBody;
use crate::upstream::h1::send::{Failure, SendError};
use crate::upstream::retry::{self, RetryPolicy};
use crate::upstream::service::ServiceRuntime;
use bytes::Bytes;
use http::header::HOST;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) async fn forward(
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
    let declared_length = crate::headers::content_length(&parts.headers);
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
    // Without a `Host` header (HTTP/2 sends `:authority` instead, an
    // HTTP/1.0 request may carry an absolute URI) the client's host, port
    // included as a `Host` header would have it, is the URI's authority.
    let uri_host = if parts.headers.contains_key(HOST) {
        None
    } else {
        uri.authority()
            .map(|a| a.as_str().rsplit('@').next().unwrap_or(a.as_str()))
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
                let tls = parts.extensions.remove::<TlsConnection>();
                let forwarding = headers::forwarding(&mut parts.headers, peer, uri_host, tls);
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

/// The response of an attempt, relayed to the client: hop-by-hop headers
/// removed, its body holding the instance's in-flight guard. A 5xx is a
/// failure for the breaker and outlier detection.
fn relay(response: Response<UpstreamBody>, guard: InFlightGuard) -> (Outcome, Response<ProxyBody>) {
    let outcome = Outcome::of_status(response.status());
    let (mut parts, body) = response.into_parts();
    headers::prepare_response(&mut parts.headers);
    (
        outcome,
        Response::from_parts(parts, ProxyBody::upstream(body, guard)),
    )
}

/// Marks the answer of `endpoint` for the access log.
fn from_instance(mut response: Response<ProxyBody>, endpoint: &Endpoint) -> Response<ProxyBody> {
    access_log::mark_instance(&mut response, &endpoint.authority);
    response
}

/// The answer when the service's breaker is open.
fn refused(
    route: &RouteRuntime,
    service: &ServiceRuntime,
    rejected: Rejected,
    request_id: Option<&HeaderValue>,
) -> Response<ProxyBody> {
    breaker::open_response(
        &service.name,
        route.fallback.as_deref(),
        rejected,
        request_id,
    )
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
    // Taken, not cloned: nothing after the forwarding headers reads it.
    let tls = parts.extensions.remove::<TlsConnection>();
    let forwarding = headers::forwarding(&mut parts.headers, peer, uri_host, tls);
    let call = Call {
        service,
        hash,
        tried: &[],
        deadline: deadline.at(),
        forwarding: Some(&forwarding),
        traced: Some(1),
    };
    let limit = route.body_limit;
    let request = move |_: &Endpoint| Request::from_parts(parts, body.into_upstream(limit));
    match attempt(call, request, Finish::now(relay)).await {
        Attempted::Answered(endpoint, response) => from_instance(response, endpoint),
        Attempted::Refused(rejected) => refused(route, service, rejected, request_id),
        Attempted::NoInstance => no_instance(service, request_id),
        Attempted::Failed(endpoint, failure, err) => {
            send_failed(&err, failure, route, service, endpoint, request_id)
        }
        Attempted::TimedOut(endpoint) => {
            timed_out(service, endpoint, deadline.budget(), request_id)
        }
        Attempted::ClientTooSlow => client_fault(ClientFault::TooSlow, route, request_id),
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
    for number in 1..=policy.max_attempts {
        if let Some(failed) = last.take() {
            let wait = policy.backoff(number - 1);
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
        let now = tokio::time::Instant::now();
        let attempt_deadline = match policy.per_try_timeout {
            Some(t) => deadline.at().min(now + t),
            None => deadline.at(),
        };
        let call = Call {
            service,
            hash,
            tried: &tried,
            deadline: attempt_deadline,
            forwarding: Some(&request.forwarding),
            traced: Some(number),
        };
        let (response, retryable) = match attempt(call, |_| request.attempt(), Finish::now(relay))
            .await
        {
            Attempted::Answered(endpoint, response) => {
                tried.push(endpoint.clone());
                let retryable = policy.on.status(response.status().as_u16());
                (from_instance(response, endpoint), retryable)
            }
            Attempted::Refused(rejected) => return refused(route, service, rejected, request_id),
            Attempted::NoInstance => return no_instance(service, request_id),
            Attempted::ClientTooSlow => {
                return client_fault(ClientFault::TooSlow, route, request_id)
            }
            Attempted::Failed(endpoint, failure, err) => {
                tried.push(endpoint.clone());
                let response = send_failed(&err, failure, route, service, endpoint, request_id);
                let retryable = match failure {
                    Failure::Upstream(kind) if kind.is_connect_failure() => {
                        policy.on.connect_failure
                    }
                    Failure::Upstream(UpstreamErrorKind::Protocol) => policy.on.reset,
                    Failure::Upstream(_) | Failure::Client(_) => false,
                };
                (response, retryable)
            }
            Attempted::TimedOut(endpoint) => {
                tried.push(endpoint.clone());
                let per_try = attempt_deadline < deadline.at();
                let budget = if per_try {
                    attempt_deadline.saturating_duration_since(now)
                } else {
                    deadline.budget()
                };
                let response = timed_out(service, endpoint, budget, request_id);
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

/// The answer to a failed exchange (the body limit, or an upstream failure,
/// logged).
fn send_failed(
    err: &SendError,
    failure: Failure,
    route: &RouteRuntime,
    service: &ServiceRuntime,
    endpoint: &Endpoint,
    request_id: Option<&HeaderValue>,
) -> Response<ProxyBody> {
    match failure {
        Failure::Client(fault) => client_fault(fault, route, request_id),
        Failure::Upstream(kind) => {
            tracing::warn!(
                service = %service.name,
                instance = %endpoint.id,
                request_id = request_id.and_then(|v| v.to_str().ok()).unwrap_or(""),
                error = %gateway_common::error_chain(err),
                "upstream request failed"
            );
            let mut response = upstream_error(kind, service, route.timeout, request_id);
            access_log::mark_instance(&mut response, &endpoint.authority);
            response
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
        UpstreamErrorKind::Tls => (
            GatewayError::BadGateway,
            format!("Service {name} failed the TLS handshake"),
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
