//! Screening of a request before it is routed: ambiguous heads refused,
//! headers only the gateway may set removed, and the path normalised.

use crate::edge::errors::GatewayError;
use crate::edge::framing::FramingWatch;
use crate::edge::security;
use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Uri};

/// Request hygiene before routing: refuses ambiguous heads, removes the
/// fields the client's `Connection` names and headers only the gateway may
/// set, and replaces the path by its normalised form (so that the path
/// routed, checked against public paths and sent upstream is the same
/// one). `Ok(true)`: some header name has `_` (removed once the route is
/// known, unless it allows them).
pub(crate) fn screen<B>(
    peer: &HeaderValue,
    framing: &FramingWatch,
    req: &mut Request<B>,
    request_id: Option<&HeaderValue>,
) -> Result<bool, (GatewayError, &'static str)> {
    let log_id = || request_id.and_then(|v| v.to_str().ok()).unwrap_or("");
    let ip = || peer.to_str().unwrap_or("");
    let version = req.version();
    let screened =
        match security::check_authority(version, req.uri(), req.headers()).and_then(|()| {
            security::screen_headers(req.headers_mut(), version, framing.take_conflict())
        }) {
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
