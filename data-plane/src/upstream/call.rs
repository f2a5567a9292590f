//! Calls the gateway makes on its own behalf (aggregate sources, venue
//! access, user details): one `GET` to a configured service, through its
//! breaker, balancer and connection pool like a proxied request.

use crate::ops::metrics::UpstreamErrorKind;
use crate::upstream::attempt::{attempt, Attempted, Call, Finish, Outcome};
use crate::upstream::balancer::{Endpoint, InFlightGuard};
use crate::upstream::h1::body::LimitedBody;
use crate::upstream::h1::response::UpstreamBody;
use crate::upstream::h1::send::Failure;
use crate::upstream::service::{ServiceRuntime, Services};
use bytes::Bytes;
use http::header::{ACCEPT, HOST};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use std::time::Duration;
use tokio::time::Instant;

/// Longest a lookup may take (less when the service's timeout is shorter).
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// Largest answer a lookup reads.
const MAX_LOOKUP_BODY: usize = 64 * 1024;

/// Why a lookup got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The service is not in the current config.
    #[error("service {0} is not configured")]
    UnknownService(String),
    /// Its breaker is open.
    #[error("circuit breaker of {0} is open")]
    CircuitOpen(String),
    /// No routable instance.
    #[error("no healthy instance of {0}")]
    NoInstance(String),
    /// Connection refused, reset, timed out, or a broken answer.
    #[error("{0} did not answer: {1}")]
    Unreachable(String, String),
    /// The built path is not a valid URI.
    #[error("invalid lookup path")]
    BadPath,
}

/// How a `GET` the gateway makes itself ended without an answer.
#[derive(Debug)]
pub enum CallError {
    /// The service's breaker is open.
    CircuitOpen,
    /// No routable instance.
    NoInstance,
    /// Connection refused, reset, or a broken answer (the error text).
    Unreachable(UpstreamErrorKind, String),
    /// The answer is larger than the caller reads.
    TooLarge,
    /// No answer before the deadline.
    TimedOut,
}

/// `GET uri` on one instance of `service`, exactly as a proxied request
/// goes (one [`attempt`]): through its breaker, balancer (`hash` for
/// consistent hashing), in-flight count and pool, counted in its attempts
/// and errors, its outcome reported to the breaker and outlier detection (a
/// 5xx is a failure). `headers` builds the request's headers for the
/// instance picked. Answers the status and the body (at most `max_body`
/// bytes) of whatever status came back before `deadline`.
pub async fn call(
    service: &ServiceRuntime,
    uri: Uri,
    hash: Option<u64>,
    headers: impl FnOnce(&Endpoint) -> HeaderMap,
    deadline: Instant,
    max_body: usize,
) -> Result<(StatusCode, Bytes), CallError> {
    let target = Call {
        service,
        hash,
        tried: &[],
        deadline,
        forwarding: None,
        traced: None,
    };
    let request = |endpoint: &Endpoint| {
        let mut request = Request::new(LimitedBody::buffered(Bytes::new()));
        *request.uri_mut() = uri;
        *request.headers_mut() = headers(endpoint);
        request
    };
    let read = |response: Response<UpstreamBody>, guard: InFlightGuard| async move {
        let status = response.status();
        let body = Limited::new(response.into_body(), max_body).collect();
        let body = tokio::time::timeout_at(deadline, body).await;
        drop(guard);
        match body {
            Ok(Ok(body)) => (Outcome::of_status(status), Ok((status, body.to_bytes()))),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                (Outcome::Neutral, Err(CallError::TooLarge))
            }
            Err(_elapsed) => {
                service.errors.count(UpstreamErrorKind::Timeout);
                (Outcome::Failure, Err(CallError::TimedOut))
            }
            Ok(Err(e)) => {
                service.errors.count(UpstreamErrorKind::Protocol);
                let reason = e.to_string();
                (
                    Outcome::Failure,
                    Err(CallError::Unreachable(UpstreamErrorKind::Protocol, reason)),
                )
            }
        }
    };
    match attempt(target, request, Finish::later(read)).await {
        Attempted::Answered(_, answer) => answer,
        Attempted::Refused(_) => Err(CallError::CircuitOpen),
        Attempted::NoInstance => Err(CallError::NoInstance),
        Attempted::Failed(endpoint, Failure::Upstream(kind), err) => {
            tracing::debug!(service = %service.name, instance = %endpoint.id, error = %err, "gateway call failed");
            Err(CallError::Unreachable(kind, err.to_string()))
        }
        // A lookup sends no client body: only its own limit applies.
        Attempted::Failed(_, Failure::Client(_), _) => Err(CallError::TooLarge),
        Attempted::TimedOut(_) | Attempted::ClientTooSlow => Err(CallError::TimedOut),
    }
}

/// `GET path` on `service` for a lookup (`Accept: application/json`,
/// within the service's timeout and at most [`LOOKUP_TIMEOUT`]): the status
/// and body of its answer.
pub async fn get(
    services: &dyn Services,
    service: &str,
    path: &str,
) -> Result<(StatusCode, Bytes), LookupError> {
    let svc = services
        .service_named(service)
        .ok_or_else(|| LookupError::UnknownService(service.into()))?;
    let uri: Uri = path.parse().map_err(|_| LookupError::BadPath)?;
    let deadline = Instant::now() + svc.config.timeout.min(LOOKUP_TIMEOUT);
    let headers = |endpoint: &Endpoint| {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, endpoint.host_header.clone());
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        headers
    };
    call(svc, uri, None, headers, deadline, MAX_LOOKUP_BODY)
        .await
        .map_err(|e| match e {
            CallError::CircuitOpen => LookupError::CircuitOpen(service.into()),
            CallError::NoInstance => LookupError::NoInstance(service.into()),
            CallError::Unreachable(_, reason) => LookupError::Unreachable(service.into(), reason),
            CallError::TooLarge => {
                LookupError::Unreachable(service.into(), "answer too large".into())
            }
            CallError::TimedOut => LookupError::Unreachable(service.into(), "timed out".into()),
        })
}

/// Fills `{venueId}` and `{userId}` of a lookup path template, each value
/// percent-encoded as one path segment (only `[A-Za-z0-9_-]` stay as is,
/// so that no value can add a segment or a `..`).
pub fn fill(template: &str, venue_id: &str, user_id: &str) -> String {
    template
        .replace("{venueId}", &encode_segment(venue_id))
        .replace("{userId}", &encode_segment(user_id))
}

/// Percent-encodes everything but `[A-Za-z0-9_-]`.
pub fn encode_segment(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_cannot_escape_their_segment() {
        assert_eq!(
            fill("/api/v1/venues/{venueId}/access", "../admin", "u"),
            "/api/v1/venues/%2E%2E%2Fadmin/access"
        );
        assert_eq!(
            fill("/api/v1/users/{userId}", "", "a b?c=d&e"),
            "/api/v1/users/a%20b%3Fc%3Dd%26e"
        );
        assert_eq!(encode_segment("3f1c-9e_A"), "3f1c-9e_A");
    }
}
