//! The fixed answer a route sends while its service's circuit breaker is
//! open, with its checks.

use super::shared::is_header_name;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A fixed response of a route (sent while the service's breaker is open).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackResponse {
    /// Status code, 200-599.
    #[serde(default = "default_fallback_status")]
    pub status: u16,
    /// Response headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Response body.
    #[serde(default)]
    pub body: String,
}

/// Largest fallback body.
pub const MAX_FALLBACK_BODY: usize = 64 * 1024;

fn default_fallback_status() -> u16 {
    503
}

impl FallbackResponse {
    pub(super) fn validate(&self, at: &str, errors: &mut Vec<String>) {
        if !(200..=599).contains(&self.status) {
            errors.push(format!("{at}.status: must be between 200 and 599"));
        }
        for (name, value) in &self.headers {
            if !is_header_name(name) {
                errors.push(format!("{at}.headers: {name:?} is not a header name"));
            }
            let lower = name.to_ascii_lowercase();
            if ["content-length", "transfer-encoding", "connection"].contains(&lower.as_str()) {
                errors.push(format!("{at}.headers: {name:?} is set by the gateway"));
            }
            if value.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
                errors.push(format!(
                    "{at}.headers[{name:?}]: control characters are not allowed"
                ));
            }
        }
        if self.body.len() > MAX_FALLBACK_BODY {
            errors.push(format!("{at}.body: at most {MAX_FALLBACK_BODY} bytes"));
        }
    }
}
