//! Calls the gateway makes on its own behalf before forwarding (venue
//! access, user details): one `GET` to a configured service, through its
//! breaker, balancer and connection pool like a proxied request.

use crate::body::LimitedBody;
use crate::proxy::{admit, record_outcome, Clock, Outcome};
use crate::runtime::Snapshot;
use crate::upstream;
use bytes::Bytes;
use http::header::{ACCEPT, HOST};
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use std::time::Duration;

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

/// `GET path` on `service`: the status and body of its answer.
pub async fn get(
    snapshot: &Snapshot,
    service: &str,
    path: &str,
) -> Result<(StatusCode, Bytes), LookupError> {
    let svc = snapshot
        .service_named(service)
        .ok_or_else(|| LookupError::UnknownService(service.into()))?;
    let uri: Uri = path.parse().map_err(|_| LookupError::BadPath)?;
    let permit = admit(svc).map_err(|_| LookupError::CircuitOpen(service.into()))?;
    let endpoint = svc
        .balancer
        .pick(None)
        .ok_or_else(|| LookupError::NoInstance(service.into()))?;
    let mut request = Request::new(LimitedBody::buffered(Bytes::new()));
    *request.uri_mut() = uri;
    request
        .headers_mut()
        .insert(HOST, endpoint.host_header.clone());
    request
        .headers_mut()
        .insert(ACCEPT, HeaderValue::from_static("application/json"));
    let guard = endpoint.load.begin();
    let sent_at = Clock::start(svc);
    let exchange = async {
        let (response, conn) = upstream::send(&endpoint.pool, svc.config.connect_timeout, request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_LOOKUP_BODY)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        conn.release();
        Ok::<_, String>((status, body))
    };
    let result = tokio::time::timeout(svc.config.timeout.min(LOOKUP_TIMEOUT), exchange).await;
    drop(guard);
    let (outcome, result) = match result {
        Ok(Ok((status, body))) if status.is_server_error() => {
            (Outcome::Failure, Ok((status, body)))
        }
        Ok(Ok(answer)) => (Outcome::Success, Ok(answer)),
        Ok(Err(reason)) => (
            Outcome::Failure,
            Err(LookupError::Unreachable(service.into(), reason)),
        ),
        Err(_) => (
            Outcome::Failure,
            Err(LookupError::Unreachable(service.into(), "timed out".into())),
        ),
    };
    record_outcome(svc, endpoint, permit, outcome, sent_at.elapsed());
    result
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
