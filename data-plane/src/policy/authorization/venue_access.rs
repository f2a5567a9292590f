//! Venue scoping: whether a venue-scoped caller (owner, manager, box
//! office, door staff) may act on a venue, as the venue service says.
//!
//! Contract: `GET {venue_access.path}?userId=SUB&permission=PERM` on the
//! `venue_access.service`; `200 {"allowed": true}` allows, `200 {"allowed":
//! false}`, 403 and 404 deny, anything else (5xx, no answer, another body)
//! is an outage: the request fails with 503, never allowed by default.
//! Answers (allow and deny) are kept for [`VENUE_ACCESS_TTL`] in memory.

use crate::upstream::call::{self, LookupError};
use crate::upstream::service::Services;
use gateway_common::config::LookupConfig;
use http::StatusCode;
use std::time::Duration;

/// How long a venue-access answer is reused.
pub const VENUE_ACCESS_TTL: Duration = Duration::from_secs(60);
/// Most answers kept.
const CAPACITY: u64 = 100_000;

/// Why venue access could not be decided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VenueAccessError {
    /// The service did not answer.
    #[error(transparent)]
    Lookup(#[from] LookupError),
    /// It answered something else than the contract.
    #[error("venue service answered {0}")]
    Unexpected(String),
}

/// Venue-access answers, cached per (user, venue, permission).
#[derive(Debug, Clone)]
pub struct VenueAccess {
    cache: moka::future::Cache<(String, String, String), bool>,
}

impl Default for VenueAccess {
    fn default() -> Self {
        Self::new(VENUE_ACCESS_TTL)
    }
}

impl VenueAccess {
    /// An empty cache keeping answers for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            cache: moka::future::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// Whether `user` may use `permission` at `venue`.
    pub async fn check(
        &self,
        services: &dyn Services,
        lookup_at: &LookupConfig,
        user: &str,
        venue: &str,
        permission: &str,
    ) -> Result<bool, VenueAccessError> {
        let key = (user.to_owned(), venue.to_owned(), permission.to_owned());
        // Concurrent misses of one key share one lookup; failures are not kept.
        self.cache
            .try_get_with(key, async {
                let path = format!(
                    "{}?userId={}&permission={}",
                    call::fill(&lookup_at.path, venue, user),
                    call::encode_segment(user),
                    call::encode_segment(permission)
                );
                let (status, body) = call::get(services, &lookup_at.service, &path).await?;
                decide(status, &body)
            })
            .await
            .map_err(|e| (*e).clone())
    }
}

/// The contract's reading of an answer.
fn decide(status: StatusCode, body: &[u8]) -> Result<bool, VenueAccessError> {
    match status {
        StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => Ok(false),
        StatusCode::OK => serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("allowed").and_then(serde_json::Value::as_bool))
            .ok_or_else(|| VenueAccessError::Unexpected("200 without a boolean allowed".into())),
        other => Err(VenueAccessError::Unexpected(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_follow_the_contract() {
        assert_eq!(decide(StatusCode::OK, br#"{"allowed":true}"#), Ok(true));
        assert_eq!(decide(StatusCode::OK, br#"{"allowed":false}"#), Ok(false));
        assert_eq!(decide(StatusCode::FORBIDDEN, b""), Ok(false));
        assert_eq!(decide(StatusCode::NOT_FOUND, b""), Ok(false));
        // Never allowed by default.
        assert!(decide(StatusCode::OK, br#"{"allowed":"yes"}"#).is_err());
        assert!(decide(StatusCode::OK, b"ok").is_err());
        assert!(decide(StatusCode::INTERNAL_SERVER_ERROR, br#"{"allowed":true}"#).is_err());
        assert!(decide(StatusCode::UNAUTHORIZED, b"").is_err());
    }
}
