//! Webhook routes: a provider's call (Stripe's, for instance) passed to its
//! service with the body byte for byte, as signatures are computed over the
//! exact bytes.
//!
//! The body is streamed untouched like any proxied body (no parsing, no
//! re-encoding; a retry resends the same buffered bytes). What differs is
//! the failure answer: providers retry a delivery only on some statuses,
//! and Stripe's own retry schedule is the safety net when the service is
//! down, so every gateway-side delivery failure (no instance, connection
//! refused, open breaker, timeout) becomes a 500. The service's own
//! answers, 5xx included, pass through unchanged.

use crate::edge::errors::GatewayError;
use crate::upstream::h1::response::ProxyBody;
use gateway_common::config::{WebhookConfig, WebhookProvider};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use std::future::Future;

/// Stripe's signature header (`t=TIMESTAMP,v1=HMAC,...`).
pub const STRIPE_SIGNATURE: HeaderName = HeaderName::from_static("stripe-signature");

/// A webhook route's policy, compiled.
#[derive(Debug, Clone, Copy)]
pub struct Webhook {
    provider: WebhookProvider,
}

impl Webhook {
    /// The policy of a route's `webhook:` block.
    pub fn from_config(config: &WebhookConfig) -> Self {
        Self {
            provider: config.provider,
        }
    }

    /// Refuses a call that cannot be the provider's (a Stripe call without
    /// a signature), then hands it to `forward` and turns a gateway-made
    /// 502/503/504 into a 500.
    pub async fn deliver<B, F, Fut>(
        &self,
        req: Request<B>,
        request_id: Option<&HeaderValue>,
        forward: F,
    ) -> Response<ProxyBody>
    where
        F: FnOnce(Request<B>) -> Fut,
        Fut: Future<Output = Response<ProxyBody>>,
    {
        if self.provider == WebhookProvider::Stripe && !req.headers().contains_key(STRIPE_SIGNATURE)
        {
            return GatewayError::BadRequest
                .response("Missing stripe-signature header", request_id);
        }
        let response = forward(req).await;
        self.failure_status(response, request_id)
    }

    fn failure_status(
        &self,
        response: Response<ProxyBody>,
        request_id: Option<&HeaderValue>,
    ) -> Response<ProxyBody> {
        let gateway_made = response.extensions().get::<GatewayError>().copied();
        match gateway_made {
            Some(error)
                if matches!(
                    error.status(),
                    StatusCode::BAD_GATEWAY
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT
                ) =>
            {
                tracing::warn!(
                    provider = ?self.provider,
                    cause = error.code(),
                    request_id = request_id.and_then(|v| v.to_str().ok()).unwrap_or(""),
                    "webhook not delivered; answering 500 so that the provider retries"
                );
                GatewayError::WebhookNotDelivered.response(
                    "The webhook could not be delivered; retry later",
                    request_id,
                )
            }
            _ => response,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(provider: WebhookProvider) -> Webhook {
        Webhook { provider }
    }

    fn upstream(status: u16) -> Response<ProxyBody> {
        let mut r = Response::new(ProxyBody::empty());
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        r
    }

    #[tokio::test]
    async fn gateway_failures_become_500_but_service_answers_pass() {
        let h = hook(WebhookProvider::Generic);
        for error in [
            GatewayError::NoHealthyInstance,
            GatewayError::UpstreamUnavailable,
            GatewayError::UpstreamTimeout,
            GatewayError::BadGateway,
            GatewayError::CircuitOpen,
        ] {
            let r = h
                .deliver(Request::new(()), None, |_| async move {
                    error.response("x", None)
                })
                .await;
            assert_eq!(r.status(), 500, "{error:?}");
        }
        for status in [200, 400, 502, 503] {
            let r = h
                .deliver(Request::new(()), None, |_| async move { upstream(status) })
                .await;
            assert_eq!(r.status(), status);
        }
        let r = h
            .deliver(Request::new(()), None, |_| async {
                GatewayError::PayloadTooLarge.response("x", None)
            })
            .await;
        assert_eq!(r.status(), 413);
    }

    #[tokio::test]
    async fn stripe_calls_need_a_signature() {
        let h = hook(WebhookProvider::Stripe);
        let r = h
            .deliver(Request::new(()), None, |_| async { upstream(200) })
            .await;
        assert_eq!(r.status(), 400);
        let req = Request::builder()
            .header(STRIPE_SIGNATURE, "t=1,v1=ab")
            .body(())
            .unwrap();
        let r = h.deliver(req, None, |_| async { upstream(200) }).await;
        assert_eq!(r.status(), 200);
    }
}
