//! Bearer-token check of gRPC calls (`authorization: Bearer <token>`).

use crate::metrics::Metrics;
use std::sync::Arc;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Interceptor requiring one token on every call of a service; with no
/// token configured every call passes (`--allow-unauthenticated`).
#[derive(Clone)]
pub struct BearerAuth {
    token: Option<Arc<str>>,
    api: &'static str,
    metrics: Arc<Metrics>,
}

impl BearerAuth {
    /// Requires `token` for the calls of `api` (e.g. `Admin`), if set.
    pub fn new(token: Option<&str>, api: &'static str, metrics: Arc<Metrics>) -> Self {
        BearerAuth {
            token: token.map(Arc::from),
            api,
            metrics,
        }
    }

    fn check(&self, presented: Option<&[u8]>) -> Result<(), Status> {
        let Some(expected) = &self.token else {
            return Ok(());
        };
        let Some(value) = presented else {
            return Err(Status::unauthenticated(format!(
                "{} calls need `authorization: Bearer <token>`",
                self.api
            )));
        };
        let token = value
            .strip_prefix(b"Bearer ")
            .or_else(|| value.strip_prefix(b"bearer "))
            .unwrap_or_default();
        if constant_time_eq(token, expected.as_bytes()) {
            Ok(())
        } else {
            Err(Status::unauthenticated(format!(
                "wrong token for {} calls",
                self.api
            )))
        }
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let presented = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes());
        match self.check(presented) {
            Ok(()) => Ok(request),
            Err(status) => {
                self.metrics.grpc_error(self.api, &status);
                Err(status)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(token: Option<&str>) -> BearerAuth {
        BearerAuth::new(token, "Admin", Arc::new(Metrics::new()))
    }

    #[test]
    fn compares_in_constant_time() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn requires_the_configured_token() {
        let a = auth(Some("s3cret"));
        assert!(a.check(Some(b"Bearer s3cret")).is_ok());
        assert!(a.check(Some(b"bearer s3cret")).is_ok());
        for bad in [
            None,
            Some(&b"Bearer wrong"[..]),
            Some(b"s3cret"),
            Some(b"Basic s3cret"),
            Some(b"Bearer "),
        ] {
            let err = a.check(bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
    }

    #[test]
    fn no_token_lets_everything_through() {
        assert!(auth(None).check(None).is_ok());
    }
}
