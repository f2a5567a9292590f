//! The HTTP client of the gateway's own out-of-band calls: the data plane's
//! JWKS fetches and the control plane's active health checks. Proxied
//! traffic does not go through it (the data plane's exchange has its own
//! connection handling).
//!
//! Both callers want the same things of it, so they are set here once:
//! HTTP/1.1 only, no redirects followed (a 3xx is the answer), no proxy
//! taken from the environment, `TCP_NODELAY`, and TLS by rustls on the ring
//! provider with the trust roots the caller gives (none for callers that
//! only speak plain HTTP). Callers add their own timeouts and pool limits
//! to the [`builder`], build the client once and reuse it.

use crate::error_chain;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;

pub use reqwest::{Client, ClientBuilder, Response};

/// Why a client could not be built, or a body not read.
#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    /// The TLS settings or the client could not be made.
    #[error("building the HTTP client: {0}")]
    Build(String),
    /// Reading the body failed.
    #[error("reading the body: {0}")]
    Read(String),
    /// The body is larger than allowed.
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
}

/// A client builder with the settings every out-of-band call shares (see
/// the module docs). `tls` holds the trust roots of `https` URLs; `None`:
/// no root is trusted, for callers that only speak plain HTTP.
pub fn builder(tls: Option<&rustls::ClientConfig>) -> Result<ClientBuilder, HttpClientError> {
    let tls = match tls {
        Some(config) => config.clone(),
        None => no_roots()?,
    };
    Ok(Client::builder()
        .tls_backend_preconfigured(tls)
        .http1_only()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .tcp_nodelay(true))
}

/// TLS settings that trust nothing, for plain-HTTP clients (the client
/// always carries TLS settings).
fn no_roots() -> Result<rustls::ClientConfig, HttpClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpClientError::Build(e.to_string()))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth())
}

/// Reads the body of `response`, chunk by chunk, failing as soon as it
/// grows past `limit` bytes.
pub async fn read_limited(mut response: Response, limit: usize) -> Result<Bytes, HttpClientError> {
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(HttpClientError::TooLarge(limit));
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| HttpClientError::Read(error_chain(&e)))?
    {
        if body.len() + chunk.len() > limit {
            return Err(HttpClientError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_clients_build_without_roots() {
        assert!(builder(None)
            .and_then(|b| b.build().map_err(|e| HttpClientError::Build(e.to_string())))
            .is_ok());
    }
}
