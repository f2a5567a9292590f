//! OpenTelemetry spans of the proxy path: the request (server span, which
//! continues the client's `traceparent`), route match, authentication,
//! each upstream attempt and each aggregation source; every upstream
//! request carries a `traceparent` naming its attempt (or source) span.
//!
//! Each function checks [`telemetry::enabled`] first: when tracing is off
//! none makes a span (a disabled [`Span`] holds nothing and allocates
//! nothing) and the client's `traceparent` goes upstream untouched, as any
//! other end-to-end header.

use crate::upstream::balancer::Endpoint;
use crate::upstream::h1::send::{self, Failure};
use gateway_common::telemetry;
use http::{HeaderMap, Request, StatusCode};
use std::fmt::Display;
use std::future::Future;
use tracing::field::Empty;
use tracing::{Instrument as _, Span};

/// The server span of a request, its parent the client's span when the
/// request carries a `traceparent`; `None` when tracing is off.
pub(crate) fn request<B>(req: &Request<B>) -> Option<Span> {
    if !telemetry::enabled() {
        return None;
    }
    let method = req.method().as_str();
    let span = tracing::info_span!(
        "request",
        otel.name = method,
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method,
        url.path = req.uri().path(),
        gateway.route = Empty,
        http.response.status_code = Empty,
    );
    telemetry::continue_from(&span, req.headers());
    Some(span)
}

/// Runs `answer` in the request's `span` and records the response status
/// on it (a 5xx marks the span as an error).
pub(crate) async fn traced<B>(
    span: Span,
    answer: impl Future<Output = http::Response<B>>,
) -> http::Response<B> {
    let response = answer.instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", otel_int(status.as_u16()));
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    response
}

/// The span of a route lookup, entered until dropped; names the request's
/// span after the route it matches.
pub(crate) struct RouteMatch(Option<Matching>);

struct Matching {
    request: Span,
    method: http::Method,
    span: tracing::span::EnteredSpan,
}

impl RouteMatch {
    /// Enters a route-match span for a `method` request (nothing when
    /// tracing is off).
    pub(crate) fn enter(method: &http::Method) -> Self {
        if !telemetry::enabled() {
            return RouteMatch(None);
        }
        let request = Span::current();
        let span = tracing::info_span!("route match", gateway.route = Empty).entered();
        RouteMatch(Some(Matching {
            request,
            method: method.clone(),
            span,
        }))
    }

    /// Records the route matched (its name) on both spans; the request's
    /// span is named "METHOD route".
    pub(crate) fn matched(&self, route: &str) {
        let Some(m) = &self.0 else {
            return;
        };
        let name = route;
        m.span.record("gateway.route", name);
        m.request.record("gateway.route", name);
        telemetry::rename(&m.request, format!("{} {name}", m.method));
    }
}

/// The span of an authentication on route `route`, entered until dropped.
pub(crate) fn authentication(route: &str) -> tracing::span::EnteredSpan {
    if !telemetry::enabled() {
        return Span::none().entered();
    }
    tracing::info_span!(
        "authentication",
        gateway.route = route,
        otel.status_code = Empty,
        "error.type" = Empty,
    )
    .entered()
}

/// Marks the current span (authentication) as failed for `reason`.
pub(crate) fn refused(reason: &str) {
    if !telemetry::enabled() {
        return;
    }
    let span = Span::current();
    span.record("otel.status_code", "ERROR");
    span.record("error.type", reason);
}

/// The span of one upstream attempt (client span, child of the current
/// one); writes its `traceparent` into `headers`.
pub(crate) fn attempt(
    service: &str,
    endpoint: &Endpoint,
    attempt: u32,
    headers: &mut HeaderMap,
) -> Span {
    if !telemetry::enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        "upstream attempt",
        otel.kind = "client",
        otel.status_code = Empty,
        gateway.service = service,
        gateway.instance = &*endpoint.id,
        server.address = endpoint.authority.as_str(),
        gateway.attempt = otel_int(attempt),
        http.response.status_code = Empty,
        "error.type" = Empty,
    );
    telemetry::inject(&span, headers);
    span
}

/// Records the response status of an attempt.
pub(crate) fn answered(span: &Span, status: StatusCode) {
    if span.is_none() {
        return;
    }
    span.record("http.response.status_code", otel_int(status.as_u16()));
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}

/// Records why an attempt's exchange failed.
pub(crate) fn send_failed(span: &Span, err: &send::SendError) {
    if span.is_none() {
        return;
    }
    let error = match send::classify(err) {
        Failure::Client(fault) => fault.as_str(),
        Failure::Upstream(kind) => kind.as_str(),
    };
    failed(span, error);
}

/// Records why an attempt got no response.
pub(crate) fn failed(span: &Span, error: &str) {
    if span.is_none() {
        return;
    }
    span.record("otel.status_code", "ERROR");
    span.record("error.type", error);
}

/// The span of one aggregation source; its call runs in it (see
/// [`inject_current`]).
pub(crate) fn source(name: &str, service: &str) -> Span {
    if !telemetry::enabled() {
        return Span::none();
    }
    tracing::info_span!(
        "aggregate source",
        otel.kind = "client",
        otel.status_code = Empty,
        gateway.source = name,
        gateway.service = service,
        gateway.instance = Empty,
        server.address = Empty,
        "error.type" = Empty,
    )
}

/// Writes the current span's `traceparent` (an aggregation source's) into
/// `headers` and records the instance it goes to.
pub(crate) fn inject_current(endpoint: &Endpoint, headers: &mut HeaderMap) {
    if !telemetry::enabled() {
        return;
    }
    let span = Span::current();
    span.record("gateway.instance", &*endpoint.id);
    span.record("server.address", endpoint.authority.as_str());
    telemetry::inject(&span, headers);
}

/// Records a source's failure on its span.
pub(crate) fn source_done<T, E: Display>(span: &Span, result: &Result<T, E>) {
    if let (false, Err(e)) = (span.is_none(), result) {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", tracing::field::display(e));
    }
}

/// A number as the OpenTelemetry layer exports integers: it takes `i64`
/// (an unsigned value would reach the trace backend as a string, and
/// `http.response.status_code >= 500` queries would match nothing).
fn otel_int(value: impl Into<i64>) -> i64 {
    value.into()
}
