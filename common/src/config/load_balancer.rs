//! How a service spreads requests over its instances: the strategy, the
//! consistent-hash key and the panic threshold.

use serde::{Deserialize, Serialize};

/// Load-balancing strategy of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Smooth weighted round-robin.
    #[default]
    RoundRobin,
    /// Fewest in-flight requests among two random choices.
    LeastRequest,
    /// Uniformly random (weighted).
    Random,
    /// Same key, same instance, with minimal remapping (needs `hash_on`).
    ConsistentHash,
}

/// Load-balancer settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancerConfig {
    /// The strategy.
    #[serde(default)]
    pub strategy: Strategy,
    /// Key for consistent hashing: `header:NAME`, `cookie:NAME`, `jwt-sub`, `client-ip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<String>,
    /// Panic mode: when fewer than this share (percent) of the service's
    /// instances are healthy and not ejected, requests are spread over all
    /// of them. 0 turns panic mode off.
    #[serde(
        default = "default_panic_threshold",
        skip_serializing_if = "is_default_panic_threshold"
    )]
    pub panic_threshold_percent: u32,
}

fn default_panic_threshold() -> u32 {
    50
}

// Left out of the canonical JSON when it has its default, so that a config
// using none of the newer settings still loads on data planes that predate them.
fn is_default_panic_threshold(v: &u32) -> bool {
    *v == default_panic_threshold()
}

impl Default for LoadBalancerConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::default(),
            hash_on: None,
            panic_threshold_percent: default_panic_threshold(),
        }
    }
}

impl LoadBalancerConfig {
    /// Checks `hash_on` against the strategy.
    pub(super) fn check_hash_on(&self) -> Result<(), String> {
        match (&self.strategy, self.hash_on.as_deref()) {
            (Strategy::ConsistentHash, None) => Err("consistent-hash needs hash_on".into()),
            (_, None) => Ok(()),
            (_, Some(key)) => {
                let ok = key == "jwt-sub"
                    || key == "client-ip"
                    || key.strip_prefix("header:").is_some_and(|h| !h.is_empty())
                    || key.strip_prefix("cookie:").is_some_and(|c| !c.is_empty());
                if ok {
                    Ok(())
                } else {
                    Err(format!(
                        "hash_on {key:?} must be header:NAME, cookie:NAME, jwt-sub or client-ip"
                    ))
                }
            }
        }
    }

    /// Checks the panic threshold; problems are pushed with `at` as their path.
    pub(super) fn validate_panic_threshold(&self, at: &str, errors: &mut Vec<String>) {
        if self.panic_threshold_percent > 100 {
            errors.push(format!(
                "{at}.panic_threshold_percent: must be between 0 and 100"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::GatewayConfig;

    #[test]
    fn consistent_hash_needs_a_key() {
        let doc = "version: 1\nservices:\n  - name: a\n    load_balancer: { strategy: consistent-hash }\n";
        assert!(GatewayConfig::load(doc.as_bytes()).is_err());
        let doc = "version: 1\nservices:\n  - name: a\n    load_balancer: { strategy: consistent-hash, hash_on: 'header:x-user' }\n";
        assert!(GatewayConfig::load(doc.as_bytes()).is_ok());
    }
}
