//! A route's client-certificate requirement (`auth.client_cert:
//! required`): the request must have come over a TLS connection whose
//! client presented a certificate the HTTPS listener verified against its
//! client CA. The policy reads the connection's facts from the request
//! (`TlsConnection`), knowing nothing of TLS itself; an untrusted
//! certificate never gets this far (its handshake fails).

use crate::connection::TlsConnection;
use crate::edge::errors::GatewayError;
use crate::upstream::h1::response::ProxyBody;
use gateway_common::config::{ClientCert, RouteConfig};
use http::{HeaderValue, Request, Response};

/// The requirement of a route that has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientCertRequired;

impl ClientCertRequired {
    /// The requirement of `route`, if it has one.
    pub fn of(route: &RouteConfig) -> Option<Self> {
        route
            .auth
            .as_ref()
            .filter(|a| a.client_cert == ClientCert::Required)
            .map(|_| Self)
    }

    /// `None` (admitted) when `req` came with a verified client
    /// certificate; otherwise the refusal, 403 `CLIENT_CERTIFICATE_REQUIRED`,
    /// with a security event logged (`client` is the caller's address).
    pub fn refuse<B>(
        &self,
        req: &Request<B>,
        route: &str,
        client: &HeaderValue,
        request_id: Option<&HeaderValue>,
    ) -> Option<Response<ProxyBody>> {
        let tls = TlsConnection::of(req);
        if tls.and_then(TlsConnection::client_subject).is_some() {
            return None;
        }
        let (reason, message) = match tls {
            None => (
                "not_tls",
                "This route requires a client certificate: connect over HTTPS and present one",
            ),
            Some(_) => (
                "no_certificate",
                "This route requires a client certificate signed by a trusted CA",
            ),
        };
        crate::security_event!(
            "client_certificate_missing",
            "medium",
            reason,
            route,
            method = %req.method(),
            path = req.uri().path(),
            ip = client.to_str().unwrap_or(""),
            request_id = request_id.and_then(|v| v.to_str().ok()).unwrap_or(""),
            "request without a verified client certificate refused"
        );
        Some(GatewayError::ClientCertificateRequired.response(message, request_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_requests_with_a_verified_certificate_pass() {
        let client = HeaderValue::from_static("203.0.113.9");
        let policy = ClientCertRequired;
        let plain = Request::new(());
        let refused = policy.refuse(&plain, "r", &client, None).unwrap();
        assert_eq!(refused.status(), 403);
        let mut anonymous = Request::new(());
        anonymous
            .extensions_mut()
            .insert(TlsConnection::new(443, None));
        let refused = policy.refuse(&anonymous, "r", &client, None).unwrap();
        assert_eq!(refused.status(), 403);
        let mut partner = Request::new(());
        partner.extensions_mut().insert(TlsConnection::new(
            443,
            Some(HeaderValue::from_static("CN=partner")),
        ));
        assert!(policy.refuse(&partner, "r", &client, None).is_none());
    }
}
