//! CORS as a route policy: the gateway answers preflights itself and adds
//! the CORS headers to the answers of allowed origins. A route with a
//! policy owns CORS: its upstream's `access-control-*` headers are dropped.

use crate::edge::errors::{GatewayError, X_REQUEST_ID};
use crate::upstream::h1::response::ProxyBody;
use gateway_common::config::CorsConfig;
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};

/// A route's CORS policy with its header values made once.
#[derive(Debug, Clone)]
pub struct Cors {
    any_origin: bool,
    origins: Vec<HeaderValue>,
    credentials: bool,
    methods: HeaderValue,
    allow_headers: HeaderValue,
    expose_headers: Option<HeaderValue>,
    max_age: HeaderValue,
}

fn joined(list: &[String]) -> HeaderValue {
    // Validated as tokens (methods, header names): always a valid value.
    HeaderValue::from_str(&list.join(", ")).unwrap_or_else(|_| HeaderValue::from_static(""))
}

impl Cors {
    /// Compiles a validated policy.
    pub fn from_config(config: &CorsConfig) -> Self {
        Self {
            any_origin: config.allowed_origins.iter().any(|o| o == "*"),
            origins: config
                .allowed_origins
                .iter()
                .filter(|o| *o != "*")
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect(),
            credentials: config.allow_credentials,
            methods: joined(&config.allowed_methods),
            allow_headers: joined(&config.allowed_headers),
            expose_headers: (!config.exposed_headers.is_empty())
                .then(|| joined(&config.exposed_headers)),
            max_age: HeaderValue::from(config.max_age.as_secs()),
        }
    }

    /// Whether `origin` may read answers (exact match; `*` allows all).
    pub fn allows(&self, origin: &HeaderValue) -> bool {
        self.any_origin
            || self
                .origins
                .iter()
                .any(|o| o.as_bytes().eq_ignore_ascii_case(origin.as_bytes()))
    }

    fn allow_origin(&self, origin: &HeaderValue, headers: &mut HeaderMap) {
        let value = if self.any_origin && !self.credentials {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        };
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, value);
        if self.credentials {
            headers.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }

    /// The gateway's answer to a preflight: 204 with the policy for an
    /// allowed origin, 403 without any CORS header otherwise.
    pub fn preflight(
        &self,
        origin: &HeaderValue,
        request_id: Option<&HeaderValue>,
    ) -> Response<ProxyBody> {
        if !self.allows(origin) {
            let mut response = GatewayError::CorsOriginNotAllowed
                .response("Origin is not allowed by the CORS policy", request_id);
            response
                .headers_mut()
                .append(VARY, HeaderValue::from_static("Origin"));
            return response;
        }
        let mut response = Response::new(ProxyBody::full(bytes::Bytes::new()));
        *response.status_mut() = StatusCode::NO_CONTENT;
        let headers = response.headers_mut();
        self.allow_origin(origin, headers);
        headers.insert(ACCESS_CONTROL_ALLOW_METHODS, self.methods.clone());
        headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, self.allow_headers.clone());
        headers.insert(ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        headers.append(VARY, HeaderValue::from_static("Origin"));
        if let Some(id) = request_id {
            headers.insert(X_REQUEST_ID, id.clone());
        }
        response
    }

    /// Sets the CORS headers of an answer (upstream's or the gateway's) to
    /// a request from `origin`; the upstream's own are removed.
    pub fn apply(&self, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
        remove_access_control(headers);
        headers.append(VARY, HeaderValue::from_static("Origin"));
        let Some(origin) = origin.filter(|o| self.allows(o)) else {
            return;
        };
        self.allow_origin(origin, headers);
        if let Some(expose) = &self.expose_headers {
            headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }
}

/// Whether `req` is a CORS preflight; returns the method it asks about.
pub fn preflight_method<B>(req: &Request<B>) -> Option<&str> {
    if req.method() != Method::OPTIONS || !req.headers().contains_key(ORIGIN) {
        return None;
    }
    req.headers()
        .get(ACCESS_CONTROL_REQUEST_METHOD)?
        .to_str()
        .ok()
        .filter(|m| !m.is_empty())
}

fn remove_access_control(headers: &mut HeaderMap) {
    crate::headers::remove_prefixed(headers, "access-control-");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn policy(origins: &[&str], credentials: bool) -> Cors {
        Cors::from_config(&CorsConfig {
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
            allow_credentials: credentials,
            allowed_methods: vec!["GET".into(), "POST".into()],
            allowed_headers: vec!["Content-Type".into(), "Authorization".into()],
            exposed_headers: vec!["X-Request-ID".into()],
            max_age: Duration::from_secs(600),
        })
    }

    #[test]
    fn allowed_origins_get_the_policy() {
        let cors = policy(&["https://app.example.com"], true);
        let origin = HeaderValue::from_static("https://app.example.com");
        let resp = cors.preflight(&origin, None);
        assert_eq!(resp.status(), 204);
        let h = resp.headers();
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_METHODS], "GET, POST");
        assert_eq!(
            h[ACCESS_CONTROL_ALLOW_HEADERS],
            "Content-Type, Authorization"
        );
        assert_eq!(h[ACCESS_CONTROL_MAX_AGE], "600");
        assert_eq!(h[VARY], "Origin");

        let mut h = HeaderMap::new();
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        cors.apply(Some(&origin), &mut h);
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        assert_eq!(h[ACCESS_CONTROL_EXPOSE_HEADERS], "X-Request-ID");
    }

    #[test]
    fn other_origins_get_no_cors_headers() {
        let cors = policy(&["https://app.example.com"], true);
        let evil = HeaderValue::from_static("https://evil.example.com");
        let resp = cors.preflight(&evil, None);
        assert_eq!(resp.status(), 403);
        assert!(!resp
            .headers()
            .keys()
            .any(|n| n.as_str().starts_with("access-control-")));
        let mut h = HeaderMap::new();
        h.insert(
            ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("https://evil.example.com"),
        );
        cors.apply(Some(&evil), &mut h);
        assert!(!h.contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));
        cors.apply(None, &mut h);
        assert!(!h.contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));
        // Not a suffix or prefix match.
        assert!(!cors.allows(&HeaderValue::from_static("https://app.example.com.evil.io")));
        assert!(!cors.allows(&HeaderValue::from_static("null")));
    }

    #[test]
    fn any_origin_without_credentials_is_a_star() {
        let cors = policy(&["*"], false);
        let origin = HeaderValue::from_static("https://x.example");
        let mut h = HeaderMap::new();
        cors.apply(Some(&origin), &mut h);
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(!h.contains_key(ACCESS_CONTROL_ALLOW_CREDENTIALS));
    }
}
