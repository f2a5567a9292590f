//! Errors the gateway answers itself, in the seed's JSON shape:
//! `{statusCode, error, message, code, requestId, timestamp}` with
//! `X-Request-ID` and `Cache-Control: no-store`.

use crate::upstream::h1::response::ProxyBody;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};
use std::time::{SystemTime, UNIX_EPOCH};

/// Header carrying the request id.
pub const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// nginx's status for a request whose client went away first.
const CLIENT_CLOSED_REQUEST: StatusCode = match StatusCode::from_u16(499) {
    Ok(status) => status,
    Err(_) => StatusCode::BAD_REQUEST,
};

/// `Retry-After` (seconds) of a `NO_CONFIG` answer.
pub const NO_CONFIG_RETRY_AFTER: &str = "1";

/// Why the gateway answered instead of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayError {
    /// No route takes the path and host.
    RouteNotFound,
    /// The data plane holds no config at all yet (nothing from a control
    /// plane, no cached config): no route is known, not "no such route".
    NoConfig,
    /// Routes take the path but not the method.
    MethodNotAllowed,
    /// The request body is over the route's limit.
    PayloadTooLarge,
    /// The service has no routable instance.
    NoHealthyInstance,
    /// The instance refused the connection.
    UpstreamUnavailable,
    /// The instance did not answer in time.
    UpstreamTimeout,
    /// Any other upstream failure.
    BadGateway,
    /// The service's circuit breaker is open.
    CircuitOpen,
    /// The request body did not arrive within the deadline.
    RequestTimeout,
    /// The client closed its connection before the end of its request
    /// body: nginx's 499, for the access log and metrics (the client is
    /// gone and reads no answer).
    ClientClosedRequest,
    /// The request body could not be read, or the request is malformed
    /// or ambiguous (path tricks, conflicting framing headers).
    BadRequest,
    /// No valid access token on a route that requires one.
    Unauthenticated,
    /// A CORS preflight from an origin the route does not allow.
    CorsOriginNotAllowed,
    /// A required source of an aggregate route failed.
    AggregateSourceFailed,
    /// A webhook could not be handed to its service (500, so that the
    /// provider retries).
    WebhookNotDelivered,
    /// The body or query does not satisfy the route's schema.
    ValidationFailed,
    /// A validated body that is not declared as JSON.
    UnsupportedMediaType,
    /// A validated body that is not a JSON document.
    InvalidJson,
    /// The caller is over the route's rate limit.
    RateLimited,
    /// A store the answer depends on (Redis, for token refresh and
    /// logout) is not reachable.
    ServiceUnavailable,
    /// An authenticated caller without the permission, venue access or an
    /// enabled account the route needs.
    Forbidden,
    /// A service the authorisation depends on (venue access, user
    /// details) cannot answer: refused rather than allowed.
    AuthorizationUnavailable,
    /// Credentials cannot be checked right now (signing keys not loaded,
    /// a signature secret missing on this data plane).
    AuthUnavailable,
    /// A route that requires a client certificate, reached without one the
    /// HTTPS listener verified (403: the credential belongs to the TLS
    /// handshake, no HTTP authentication scheme can offer it).
    ClientCertificateRequired,
}

impl GatewayError {
    /// HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            Self::RouteNotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NoConfig
            | Self::NoHealthyInstance
            | Self::UpstreamUnavailable
            | Self::CircuitOpen
            | Self::ServiceUnavailable
            | Self::AuthUnavailable
            | Self::AuthorizationUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::ClientClosedRequest => CLIENT_CLOSED_REQUEST,
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::CorsOriginNotAllowed => StatusCode::FORBIDDEN,
            Self::ValidationFailed => StatusCode::UNPROCESSABLE_ENTITY,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::InvalidJson => StatusCode::BAD_REQUEST,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::Forbidden | Self::ClientCertificateRequired => StatusCode::FORBIDDEN,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::BadGateway | Self::AggregateSourceFailed => StatusCode::BAD_GATEWAY,
            Self::WebhookNotDelivered => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Machine-readable code.
    pub fn code(self) -> &'static str {
        match self {
            Self::RouteNotFound => "ROUTE_NOT_FOUND",
            Self::NoConfig => "NO_CONFIG",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::NoHealthyInstance => "NO_HEALTHY_INSTANCE",
            Self::UpstreamUnavailable => "UPSTREAM_UNAVAILABLE",
            Self::UpstreamTimeout => "UPSTREAM_TIMEOUT",
            Self::BadGateway => "BAD_GATEWAY",
            Self::CircuitOpen => "CIRCUIT_OPEN",
            Self::RequestTimeout => "REQUEST_TIMEOUT",
            Self::ClientClosedRequest => "CLIENT_CLOSED_REQUEST",
            Self::BadRequest => "BAD_REQUEST",
            Self::Unauthenticated => "AUTHENTICATION_ERROR",
            Self::CorsOriginNotAllowed => "CORS_ORIGIN_NOT_ALLOWED",
            Self::AggregateSourceFailed => "AGGREGATE_SOURCE_FAILED",
            Self::WebhookNotDelivered => "WEBHOOK_NOT_DELIVERED",
            Self::ValidationFailed => "VALIDATION_ERROR",
            Self::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            Self::InvalidJson => "INVALID_JSON",
            // The seed's `RateLimitError` code.
            Self::RateLimited => "RATE_LIMIT_ERROR",
            // The seed's `ServiceUnavailableError` code.
            Self::ServiceUnavailable => "SERVICE_UNAVAILABLE",
            // The seed's `AuthorizationError` and `ServiceUnavailableError`.
            Self::Forbidden => "AUTHORIZATION_ERROR",
            Self::AuthorizationUnavailable => "SERVICE_UNAVAILABLE",
            Self::AuthUnavailable => "AUTHENTICATION_UNAVAILABLE",
            Self::ClientCertificateRequired => "CLIENT_CERTIFICATE_REQUIRED",
        }
    }

    /// The response, with `message` for people.
    pub fn response(self, message: &str, request_id: Option<&HeaderValue>) -> Response<ProxyBody> {
        self.response_with_details(message, None, request_id)
    }

    /// The response with the seed's optional `details` member (for example
    /// the failing fields of a validation error).
    pub fn response_with_details(
        self,
        message: &str,
        details: Option<serde_json::Value>,
        request_id: Option<&HeaderValue>,
    ) -> Response<ProxyBody> {
        let status = self.status();
        let id = request_id.and_then(|v| v.to_str().ok()).unwrap_or("");
        let mut body = serde_json::json!({
            "statusCode": status.as_u16(),
            "error": reason(status),
            "message": message,
            "code": self.code(),
            "requestId": id,
            "timestamp": iso8601(SystemTime::now()),
        });
        if let (Some(details), Some(object)) = (details, body.as_object_mut()) {
            object.insert("details".into(), details);
        }
        let mut response = Response::new(ProxyBody::full(body.to_string()));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(id) = request_id {
            headers.insert(X_REQUEST_ID, id.clone());
        }
        if self == Self::NoConfig {
            // A config usually arrives within a second of the control plane
            // answering.
            headers.insert(RETRY_AFTER, HeaderValue::from_static(NO_CONFIG_RETRY_AFTER));
        }
        // Marks the answer as the gateway's own (a webhook route turns its
        // upstream failures into 500).
        response.extensions_mut().insert(self);
        response
    }
}

/// The reason phrase of `status`, with nginx's name for 499.
fn reason(status: StatusCode) -> &'static str {
    match status.canonical_reason() {
        Some(reason) => reason,
        None if status == CLIENT_CLOSED_REQUEST => "Client Closed Request",
        None => "Error",
    }
}

/// `2026-01-31T12:34:56.789Z`.
pub fn iso8601(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::time::Duration;

    #[test]
    fn timestamps_are_iso8601_utc() {
        assert_eq!(iso8601(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_123);
        assert_eq!(iso8601(t), "2024-02-29T12:34:56.123Z");
    }

    #[tokio::test]
    async fn body_has_the_seed_shape() {
        let id = HeaderValue::from_static("abc");
        let resp = GatewayError::NoHealthyInstance.response("no instance of echo", Some(&id));
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["cache-control"], "no-store");
        assert_eq!(resp.headers()["x-request-id"], "abc");
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["statusCode"], 503);
        assert_eq!(v["error"], "Service Unavailable");
        assert_eq!(v["code"], "NO_HEALTHY_INSTANCE");
        assert_eq!(v["requestId"], "abc");
        assert_eq!(v["message"], "no instance of echo");
        assert_eq!(v.as_object().unwrap().len(), 6);
    }

    #[tokio::test]
    async fn no_config_is_a_503_with_retry_after() {
        let resp = GatewayError::NoConfig.response("no config", None);
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["retry-after"], NO_CONFIG_RETRY_AFTER);
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["code"], "NO_CONFIG");
        assert_eq!(v["error"], "Service Unavailable");
        let resp = GatewayError::RouteNotFound.response("none", None);
        assert!(!resp.headers().contains_key("retry-after"));
    }

    #[tokio::test]
    async fn details_are_added_when_given() {
        let details = serde_json::json!([{"field": "price", "message": "m", "type": "minimum"}]);
        let resp = GatewayError::ValidationFailed.response_with_details(
            "Body validation failed",
            Some(details.clone()),
            None,
        );
        assert_eq!(resp.status(), 422);
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["code"], "VALIDATION_ERROR");
        assert_eq!(v["error"], "Unprocessable Entity");
        assert_eq!(v["details"], details);
        assert_eq!(v.as_object().unwrap().len(), 7);
    }
}
