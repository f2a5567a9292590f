//! One access-log line per request: tracing target `access`, level info.
//!
//! The line is written when the response head is ready (the latency is the
//! time to the head, as in `gateway_request_duration_seconds`), with the
//! method, the path as received (never the query, which may carry secrets),
//! the HTTP version the client spoke (`protocol`: `HTTP/1.1`, `HTTP/2.0`),
//! the route and service, the instance that answered, the status, the
//! request id and the tenant of the verified token. With the log off
//! (`GW_ACCESS_LOG=false`) a request pays one boolean check and the
//! instance extension that `forward` sets on the response.

use crate::config::runtime::RouteRuntime;
use crate::edge::errors::X_REQUEST_ID;
use crate::policy::auth::X_TENANT_ID;
use http::header::CONTENT_LENGTH;
use http::uri::Authority;
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, Version};
use std::sync::Arc;
use std::time::Instant;

/// The tracing target of access-log lines.
pub const TARGET: &str = "access";

/// The instance a response came from, set by the forwarding code as a
/// response extension where the instance is chosen.
#[derive(Debug, Clone)]
pub struct UpstreamInstance(pub Authority);

/// Marks `response` as coming from `instance`.
pub fn mark_instance<B>(response: &mut Response<B>, instance: &Authority) {
    // The extension map is an allocation per response: only when a line
    // may be written.
    if tracing::enabled!(target: TARGET, tracing::Level::INFO) {
        response
            .extensions_mut()
            .insert(UpstreamInstance(instance.clone()));
    }
}

/// Whether access-log lines are written (`GW_ACCESS_LOG`).
#[derive(Debug, Clone, Copy)]
pub struct AccessLog {
    enabled: bool,
}

impl Default for AccessLog {
    fn default() -> Self {
        Self { enabled: true }
    }
}

impl AccessLog {
    /// On or off.
    pub fn new(enabled: bool) -> Self {
        Self { enabled }
    }

    /// Starts the line of one request (`None` when the log is off or the
    /// `access` target is filtered out).
    pub fn begin<B>(&self, req: &Request<B>, start: Instant) -> Option<Pending> {
        if !self.enabled || !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
            return None;
        }
        Some(Pending {
            start,
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            request_id: req.headers().get(X_REQUEST_ID).cloned(),
            seen: Seen::default(),
            written: false,
        })
    }
}

/// What the handler learns on the way that goes into the line.
#[derive(Debug, Default)]
pub struct Seen {
    route: Option<Arc<RouteRuntime>>,
    tenant: Option<HeaderValue>,
}

/// A request whose line is written once its answer is known, or, when the
/// client goes away first (its request is dropped unanswered), with nginx's
/// status 499.
#[derive(Debug)]
pub struct Pending {
    start: Instant,
    method: Method,
    uri: Uri,
    version: Version,
    request_id: Option<HeaderValue>,
    seen: Seen,
    written: bool,
}

/// Status of a line whose client closed the connection before the answer.
const CLIENT_CLOSED: u16 = 499;

/// Notes the route a request matched (no-op without a pending line).
pub fn note_route(pending: &mut Option<Pending>, route: &Arc<RouteRuntime>) {
    if let Some(p) = pending {
        p.seen.route = Some(route.clone());
    }
}

/// Notes the tenant once authentication is done: `x-tenant-id` is removed
/// from client requests by screening, so one present now was set from the
/// verified token.
pub fn note_identity(pending: &mut Option<Pending>, headers: &HeaderMap) {
    if let Some(p) = pending {
        p.seen.tenant = headers.get(X_TENANT_ID).cloned();
    }
}

impl Pending {
    /// Writes the line for `response`.
    pub fn finish<B>(mut self, response: &Response<B>) {
        let instance = response
            .extensions()
            .get::<UpstreamInstance>()
            .map_or("", |i| i.0.as_str());
        let bytes = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        self.write(response.status().as_u16(), instance, bytes);
    }

    fn write(&mut self, status: u16, instance: &str, bytes: Option<u64>) {
        self.written = true;
        let (route, service) = match &self.seen.route {
            Some(r) => (r.name.as_str(), r.service_name.as_str()),
            None => ("", ""),
        };
        let latency_ms = self.start.elapsed().as_secs_f64() * 1000.0;
        tracing::info!(
            target: TARGET,
            method = self.method.as_str(),
            path = self.uri.path(),
            protocol = ?self.version,
            route,
            service,
            instance,
            status,
            latency_ms = (latency_ms * 1000.0).round() / 1000.0,
            request_id = text(self.request_id.as_ref()),
            tenant = text(self.seen.tenant.as_ref()),
            bytes,
            "request"
        );
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.written {
            self.write(CLIENT_CLOSED, "", None);
        }
    }
}

fn text(value: Option<&HeaderValue>) -> &str {
    value.and_then(|v| v.to_str().ok()).unwrap_or("")
}
