//! Webhook routes: the provider calling them and their body limit.

use serde::{Deserialize, Serialize};

/// Default body limit of a webhook route (Stripe events are a few KiB).
pub const DEFAULT_WEBHOOK_BODY_LIMIT: u64 = 1024 * 1024;

/// A webhook route's provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Who calls it.
    pub provider: WebhookProvider,
}

/// Webhook providers the gateway knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookProvider {
    /// Stripe: a request without a `stripe-signature` header is refused
    /// (400) at the edge; the signature itself is verified by the service,
    /// which holds the signing secret.
    Stripe,
    /// Any other provider: passthrough only.
    Generic,
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::invalid;
    use crate::config::{ConfigError, GatewayConfig};

    #[test]
    fn webhook_routes_refuse_auth_and_fallback() {
        let errors = invalid(
            r#"
version: 1
services: [ { name: payment } ]
routes:
  - name: stripe
    match: { path: /webhooks/stripe }
    service: payment
    auth: {}
    fallback: { status: 200 }
    webhook: { provider: stripe }
"#,
        );
        assert!(errors.contains("routes[0].auth: a webhook route is called without a token"));
        assert!(errors.contains("routes[0].fallback: a webhook route must not answer"));
        let unknown = GatewayConfig::load(
            b"version: 1\nservices: [{name: p}]\nroutes: [{name: w, match: {path: /w}, service: p, webhook: {provider: paypal}}]\n",
        );
        assert!(matches!(unknown, Err(ConfigError::Parse(_))));
    }
}
