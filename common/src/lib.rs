//! Shared crate of the gateway: what the control plane, the data planes and
//! gwctl must agree on.
//!
//! * [`aggregation`]: the config of aggregate routes.
//! * [`config`]: the declarative config model (YAML or JSON), its validation
//!   and its diff.
//! * [`routing`]: the route table both planes build from a config, so a
//!   config the control plane accepts is one every data plane can load.
//! * [`registration`]: the rules for instance registrations and the instance
//!   model streamed to data planes.
//! * [`request_schema`]: request validation policy (JSON Schemas per method)
//!   and how schemas are compiled.
//! * [`cache`]: the response cache's key, Redis layout and invalidation
//!   patterns, shared by the data planes and the control plane.
//! * [`credentials`]: revoked tokens and API keys in Redis and the push
//!   channel that carries their changes to the data planes.
//! * [`http_client`]: the HTTP client of the planes' own out-of-band calls
//!   (JWKS fetches, active health checks).
//! * [`tls`]: PEM files and trust roots of the gateway's own TLS;
//!   [`grpc_tls`] the clients' side of the control plane's gRPC port (an
//!   `https://` URL is TLS or an error); [`redis_client`] the one
//!   constructor of Redis clients (`redis://` and `rediss://`).
//! * [`duration`]: human-friendly durations (`250ms`, `5s`, `1m`) in configs.
//! * [`process`]: a process's default identity (`hostname-pid`) and logging.
//! * [`metrics`]: `build_info` and the `process_*` metrics of both planes.

pub mod aggregation;
pub mod cache;
pub mod config;
pub mod credentials;
pub mod duration;
pub mod grpc_tls;
pub mod http_client;
pub mod metrics;
pub mod process;
pub mod redis_client;
pub mod registration;
pub mod request_schema;
pub mod routing;
pub mod telemetry;
pub mod tls;

pub use config::{ConfigError, GatewayConfig};

/// An error and its causes on one line, `: `-separated (`a: b: c`), a
/// cause already in the text left out: a client error alone often says only
/// "error sending request".
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        // Some errors repeat their cause in their own text: said once.
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_chains_name_every_cause() {
        let cause = std::io::Error::other("connection refused");
        let error = std::io::Error::new(std::io::ErrorKind::NotConnected, cause);
        assert_eq!(super::error_chain(&error), "connection refused");
        let outer = crate::http_client::HttpClientError::Read(super::error_chain(&error));
        assert_eq!(
            super::error_chain(&outer),
            "reading the body: connection refused"
        );
    }
}
