//! HMAC-SHA256 request signatures of a route (partner callbacks).
//!
//! The caller sends `TIMESTAMP` (Unix seconds) in the timestamp header and
//! `hex(HMAC-SHA256(secret, TIMESTAMP "." METHOD "." PATH_AND_QUERY "." BODY))`
//! (optionally prefixed `sha256=`) in the signature header. The gateway
//! reads the body whole (bounded by the route's body limit), checks the
//! timestamp is within the route's window of its clock and the MAC in
//! constant time, and forwards the body unchanged.
//!
//! The secret never travels with the config: each data plane reads it from
//! the environment variable the route names, when the config is applied.
//! A data plane without it answers the route 503 (and says so in its log)
//! rather than letting unsigned requests through.

use crate::edge::errors::GatewayError;
use crate::headers::X_ORIGINAL_IP;
use crate::policy::RouteContext;
use crate::upstream::h1::body::ClientBody;
use crate::upstream::h1::response::ProxyBody;
use gateway_common::config::SignatureConfig;
use http::{HeaderName, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use ring::hmac;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// A route's signature policy, compiled once per config.
pub struct RouteSignature {
    /// `None`: the secret's variable is unset or too short on this data plane.
    key: Option<hmac::Key>,
    secret_env: String,
    header: HeaderName,
    timestamp_header: HeaderName,
    window: Duration,
}

impl std::fmt::Debug for RouteSignature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteSignature")
            .field("secret_env", &self.secret_env)
            .field("has_key", &self.key.is_some())
            .field("header", &self.header)
            .field("timestamp_header", &self.timestamp_header)
            .field("window", &self.window)
            .finish()
    }
}

/// Why a signed request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    /// No signature header.
    MissingSignature,
    /// No timestamp header, or not a number.
    BadTimestamp,
    /// The timestamp is outside the window.
    Stale,
    /// Not hex, or not the MAC of the request.
    Mismatch,
    /// This data plane has no secret for the route.
    NoSecret,
}

impl SignatureError {
    fn message(self) -> &'static str {
        match self {
            Self::MissingSignature => "Missing request signature",
            Self::BadTimestamp => "Missing or invalid signature timestamp",
            Self::Stale => "Signature timestamp is outside the accepted window",
            Self::Mismatch => "Invalid request signature",
            Self::NoSecret => "Request signatures cannot be verified on this gateway",
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Self::MissingSignature => "missing_signature",
            Self::BadTimestamp => "bad_signature_timestamp",
            Self::Stale => "stale_signature",
            Self::Mismatch => "signature_mismatch",
            Self::NoSecret => "signature_secret_missing",
        }
    }
}

impl RouteSignature {
    /// Compiles `config` of route `route`, reading the secret from the
    /// process environment.
    pub fn compile(route: &str, config: &SignatureConfig) -> Self {
        Self::with_secret(route, config, std::env::var(&config.secret_env).ok())
    }

    /// Compiles `config` with `secret` (the value of its variable).
    pub fn with_secret(route: &str, config: &SignatureConfig, secret: Option<String>) -> Self {
        let key = match secret {
            Some(s) if s.len() >= MIN_SECRET_BYTES => {
                Some(hmac::Key::new(hmac::HMAC_SHA256, s.as_bytes()))
            }
            Some(s) => {
                tracing::error!(
                    route,
                    variable = %config.secret_env,
                    bytes = s.len(),
                    "signing secret shorter than {MIN_SECRET_BYTES} bytes; the route answers 503"
                );
                None
            }
            None => {
                tracing::error!(
                    route,
                    variable = %config.secret_env,
                    "signing secret variable not set; the route answers 503"
                );
                None
            }
        };
        let header = |name: &str, default: &'static str| {
            HeaderName::try_from(name).unwrap_or(HeaderName::from_static(default))
        };
        Self {
            key,
            secret_env: config.secret_env.clone(),
            header: header(
                &config.header,
                gateway_common::config::DEFAULT_SIGNATURE_HEADER,
            ),
            timestamp_header: header(
                &config.timestamp_header,
                gateway_common::config::DEFAULT_SIGNATURE_TIMESTAMP_HEADER,
            ),
            window: config.window,
        }
    }

    /// Checks the signature of `req` (reading its body within the route's
    /// limit and deadline): the request to forward, with the very bytes
    /// received, or the answer refusing it.
    pub async fn check(
        &self,
        route: RouteContext<'_>,
        req: Request<Incoming>,
        request_id: Option<&HeaderValue>,
        start: Instant,
    ) -> Result<Request<ClientBody>, Response<ProxyBody>> {
        let refuse = |error: SignatureError, req: &http::request::Parts| {
            crate::security_event!(
                "signature_rejected",
                if error == SignatureError::NoSecret { "critical" } else { "high" },
                reason = error.reason(),
                route = %route.name,
                method = %req.method,
                path = req.uri.path(),
                ip = req.headers.get(X_ORIGINAL_IP).and_then(|v| v.to_str().ok()).unwrap_or(""),
                request_id = request_id.and_then(|v| v.to_str().ok()).unwrap_or(""),
                "request signature refused"
            );
            let gateway_error = match error {
                SignatureError::NoSecret => GatewayError::AuthUnavailable,
                _ => GatewayError::Unauthenticated,
            };
            gateway_error.response(error.message(), request_id)
        };
        let (parts, body) = req.into_parts();
        // Everything the head can tell, before reading a byte of the body.
        let timestamp = match self.check_head(&parts.headers, unix_now()) {
            Ok(timestamp) => timestamp,
            Err(error) => return Err(refuse(error, &parts)),
        };
        let limit = route.body_limit;
        let too_large = || {
            GatewayError::PayloadTooLarge.response(
                &format!("Request body exceeds the limit of {limit} bytes"),
                request_id,
            )
        };
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit) {
            return Err(too_large());
        }
        let deadline = tokio::time::Instant::from_std(start) + route.timeout;
        let limited = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
        let bytes = match tokio::time::timeout_at(deadline, limited.collect()).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
            Ok(Err(_)) => {
                return Err(GatewayError::BadRequest
                    .response("The request body could not be read", request_id))
            }
            Err(_) => {
                return Err(GatewayError::RequestTimeout
                    .response("The request body did not arrive in time", request_id))
            }
        };
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let signature = parts
            .headers
            .get(&self.header)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if let Err(error) = self.verify(timestamp, parts.method.as_str(), path, &bytes, signature) {
            return Err(refuse(error, &parts));
        }
        Ok(Request::from_parts(parts, ClientBody::Buffered(bytes)))
    }

    /// The timestamp of a request with `headers`, if it carries a
    /// signature and a timestamp within the window of `now`.
    fn check_head<'h>(
        &self,
        headers: &'h http::HeaderMap,
        now: u64,
    ) -> Result<&'h str, SignatureError> {
        if self.key.is_none() {
            return Err(SignatureError::NoSecret);
        }
        if !headers.contains_key(&self.header) {
            return Err(SignatureError::MissingSignature);
        }
        let text = headers
            .get(&self.timestamp_header)
            .and_then(|v| v.to_str().ok())
            .filter(|t| !t.is_empty() && t.len() <= 12 && t.bytes().all(|b| b.is_ascii_digit()))
            .ok_or(SignatureError::BadTimestamp)?;
        let at: u64 = text.parse().map_err(|_| SignatureError::BadTimestamp)?;
        if at.abs_diff(now) > self.window.as_secs() {
            return Err(SignatureError::Stale);
        }
        Ok(text)
    }

    /// Checks `signature` (hex, optionally `sha256=`-prefixed) against the
    /// MAC of the canonical string, in constant time.
    fn verify(
        &self,
        timestamp: &str,
        method: &str,
        path: &str,
        body: &[u8],
        signature: &[u8],
    ) -> Result<(), SignatureError> {
        let key = self.key.as_ref().ok_or(SignatureError::NoSecret)?;
        let hex = signature.strip_prefix(b"sha256=").unwrap_or(signature);
        let tag = decode_hex(hex).ok_or(SignatureError::Mismatch)?;
        let message = canonical(timestamp, method, path, body);
        hmac::verify(key, &message, &tag).map_err(|_| SignatureError::Mismatch)
    }
}

/// `TIMESTAMP "." METHOD "." PATH_AND_QUERY "." BODY`: what is signed.
pub fn canonical(timestamp: &str, method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut message =
        Vec::with_capacity(timestamp.len() + method.len() + path.len() + body.len() + 3);
    for part in [timestamp.as_bytes(), method.as_bytes(), path.as_bytes()] {
        message.extend_from_slice(part);
        message.push(b'.');
    }
    message.extend_from_slice(body);
    message
}

fn decode_hex(hex: &[u8]) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) || hex.len() > 128 {
        return None;
    }
    let digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    hex.chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "partner-x-secret-of-at-least-32-bytes";

    fn config() -> SignatureConfig {
        SignatureConfig {
            secret_env: "PARTNER_X_SECRET".into(),
            header: "x-signature".into(),
            timestamp_header: "x-timestamp".into(),
            window: Duration::from_secs(300),
        }
    }

    fn policy() -> RouteSignature {
        RouteSignature::with_secret("r", &config(), Some(SECRET.into()))
    }

    fn sign(ts: &str, method: &str, path: &str, body: &[u8]) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
        let tag = hmac::sign(&key, &canonical(ts, method, path, body));
        tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn headers(ts: &str, sig: Option<&str>) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("x-timestamp", HeaderValue::from_str(ts).unwrap());
        if let Some(sig) = sig {
            h.insert("x-signature", HeaderValue::from_str(sig).unwrap());
        }
        h
    }

    #[test]
    fn valid_signatures_pass() {
        let p = policy();
        let sig = sign("1700000000", "POST", "/cb?x=1", b"{\"a\":1}");
        assert_eq!(
            p.verify(
                "1700000000",
                "POST",
                "/cb?x=1",
                b"{\"a\":1}",
                sig.as_bytes()
            ),
            Ok(())
        );
        let prefixed = format!("sha256={}", sig.to_uppercase());
        assert_eq!(
            p.verify(
                "1700000000",
                "POST",
                "/cb?x=1",
                b"{\"a\":1}",
                prefixed.as_bytes()
            ),
            Ok(())
        );
    }

    #[test]
    fn anything_changed_is_refused() {
        let p = policy();
        let sig = sign("1700000000", "POST", "/cb", b"body");
        for (ts, method, path, body) in [
            ("1700000001", "POST", "/cb", &b"body"[..]),
            ("1700000000", "PUT", "/cb", b"body"),
            ("1700000000", "POST", "/cb2", b"body"),
            ("1700000000", "POST", "/cb", b"bodY"),
        ] {
            assert_eq!(
                p.verify(ts, method, path, body, sig.as_bytes()),
                Err(SignatureError::Mismatch)
            );
        }
        for bad in ["", "zz", "abc", &sig[..62]] {
            assert_eq!(
                p.verify("1700000000", "POST", "/cb", b"body", bad.as_bytes()),
                Err(SignatureError::Mismatch)
            );
        }
    }

    #[test]
    fn heads_are_checked_first() {
        let p = policy();
        let now = 1_700_000_000;
        assert_eq!(
            p.check_head(&headers("1700000000", Some("x")), now),
            Ok("1700000000")
        );
        assert_eq!(
            p.check_head(&headers("1699999700", Some("x")), now),
            Ok("1699999700")
        );
        assert_eq!(
            p.check_head(&headers("1699999640", Some("x")), now),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            p.check_head(&headers("1700000360", Some("x")), now),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            p.check_head(&headers("1700000000", None), now),
            Err(SignatureError::MissingSignature)
        );
        assert_eq!(
            p.check_head(&headers("-1", Some("x")), now),
            Err(SignatureError::BadTimestamp)
        );
        let mut no_ts = headers("1", Some("x"));
        no_ts.remove("x-timestamp");
        assert_eq!(p.check_head(&no_ts, now), Err(SignatureError::BadTimestamp));
    }

    #[test]
    fn missing_or_short_secrets_disable_the_route() {
        for secret in [None, Some("short".to_string())] {
            let p = RouteSignature::with_secret("r", &config(), secret);
            assert_eq!(
                p.check_head(&headers("1700000000", Some("x")), 1_700_000_000),
                Err(SignatureError::NoSecret)
            );
        }
    }
}
