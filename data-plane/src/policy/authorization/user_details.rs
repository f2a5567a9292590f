//! The caller's details from the auth service: its current role and
//! account status, which win over the (possibly hours old) token.
//!
//! Contract: `GET {user_lookup.path}` (default `/api/v1/users/{userId}`) on
//! `user_lookup.service` (default `auth`): `200` with a JSON object
//! (`id` equal to the token's `sub`, `role`, `status` or `active`; anything
//! else ignored) is the user,
//! `404` means no such user, anything else is an outage (the request fails
//! with 503). Found users are kept in Redis under `{prefix}user:{sub}` for
//! [`USER_DETAILS_TTL`] (shared by the data planes), and in memory for
//! [`MEMORY_TTL`] in front of it. Unknown users are never cached.

use crate::shared_state::SharedState;
use crate::upstream::call::{self, LookupError};
use crate::upstream::service::Services;
use bytes::Bytes;
use gateway_common::config::LookupConfig;
use http::StatusCode;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// How long Redis keeps a user's details.
pub const USER_DETAILS_TTL: Duration = Duration::from_secs(300);
/// How long this data plane reuses them without asking Redis.
pub const MEMORY_TTL: Duration = Duration::from_secs(60);
/// Most users kept in memory.
const CAPACITY: u64 = 100_000;

/// What the gateway reads of a user.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserDetails {
    /// The user id: must be the token's `sub`.
    #[serde(default)]
    pub id: Option<String>,
    /// Current role (wins over the token's).
    #[serde(default)]
    pub role: Option<String>,
    /// Account status; anything but `active` refuses the user.
    #[serde(default)]
    pub status: Option<String>,
    /// Whether the account is enabled (`false` refuses the user).
    #[serde(default)]
    pub active: Option<bool>,
}

impl UserDetails {
    /// Whether the account may be used.
    pub fn enabled(&self) -> bool {
        self.active != Some(false) && self.status.as_deref().is_none_or(|s| s == "active")
    }
}

/// Why the details are not there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserDetailsError {
    /// The auth service does not know the user.
    #[error("user not found")]
    Unknown,
    /// The auth service did not answer (or not as agreed).
    #[error("user details unavailable: {0}")]
    Unavailable(String),
}

impl From<LookupError> for UserDetailsError {
    fn from(e: LookupError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

/// User details, cached in memory and Redis.
#[derive(Debug, Clone)]
pub struct UserDirectory {
    memory: moka::future::Cache<String, Arc<UserDetails>>,
    shared: Option<Arc<SharedState>>,
}

impl UserDirectory {
    /// A directory sharing its cache through `shared` (when given).
    pub fn new(shared: Option<Arc<SharedState>>) -> Self {
        Self {
            memory: moka::future::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(MEMORY_TTL)
                .build(),
            shared,
        }
    }

    /// The details of user `sub`.
    pub async fn get(
        &self,
        services: &dyn Services,
        lookup_at: &LookupConfig,
        sub: &str,
    ) -> Result<Arc<UserDetails>, UserDetailsError> {
        // Concurrent misses of one user share one Redis read and one
        // lookup; failures (unknown users included) are not kept.
        self.memory
            .try_get_with(sub.to_owned(), async {
                if let Some(found) = self.read_shared(sub).await {
                    return Ok(Arc::new(found));
                }
                let path = call::fill(&lookup_at.path, "", sub);
                let (status, body) = call::get(services, &lookup_at.service, &path).await?;
                let details = parse(status, &body, sub)?;
                self.write_shared(sub, &body).await;
                Ok::<_, UserDetailsError>(Arc::new(details))
            })
            .await
            .map_err(|e: Arc<UserDetailsError>| (*e).clone())
    }

    fn key(state: &SharedState, sub: &str) -> String {
        state.key(&format!("user:{sub}"))
    }

    async fn read_shared(&self, sub: &str) -> Option<UserDetails> {
        let state = self.shared.as_ref()?;
        let mut conn = state.connection()?;
        let mut cmd = redis::cmd("GET");
        cmd.arg(Self::key(state, sub));
        let call = cmd.query_async::<Option<Vec<u8>>>(&mut conn);
        match tokio::time::timeout(state.timeout(), call).await {
            Ok(Ok(data)) => {
                state.record(true);
                // A stored entry that no longer parses is fetched again.
                serde_json::from_slice(&data?).ok()
            }
            Ok(Err(e)) => {
                state.record(false);
                tracing::debug!(error = %e, "user details: Redis read failed");
                None
            }
            Err(_) => {
                state.record(false);
                None
            }
        }
    }

    async fn write_shared(&self, sub: &str, body: &Bytes) {
        let Some(state) = self.shared.as_ref() else {
            return;
        };
        let Some(mut conn) = state.connection() else {
            return;
        };
        let mut cmd = redis::cmd("SET");
        cmd.arg(Self::key(state, sub))
            .arg(body.as_ref())
            .arg("EX")
            .arg(USER_DETAILS_TTL.as_secs());
        let call = cmd.query_async::<()>(&mut conn);
        let ok = matches!(
            tokio::time::timeout(state.timeout(), call).await,
            Ok(Ok(()))
        );
        state.record(ok);
    }
}

/// The contract's reading of an answer about `sub`.
fn parse(status: StatusCode, body: &[u8], sub: &str) -> Result<UserDetails, UserDetailsError> {
    match status {
        StatusCode::OK => {
            let details: UserDetails = serde_json::from_slice(body).map_err(|_| {
                UserDetailsError::Unavailable("auth service answered 200 without a user".into())
            })?;
            if details.id.as_deref() != Some(sub) {
                return Err(UserDetailsError::Unavailable(
                    "auth service answered without this user's id".into(),
                ));
            }
            Ok(details)
        }
        StatusCode::NOT_FOUND => Err(UserDetailsError::Unknown),
        other => Err(UserDetailsError::Unavailable(format!(
            "auth service answered {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_follow_the_contract() {
        let ok = parse(
            StatusCode::OK,
            br#"{"id":"u1","email":"a@b.c","role":"door-staff","status":"active"}"#,
            "u1",
        )
        .unwrap();
        assert_eq!(ok.role.as_deref(), Some("door-staff"));
        assert!(ok.enabled());
        assert_eq!(
            parse(StatusCode::NOT_FOUND, b"", "u1"),
            Err(UserDetailsError::Unknown)
        );
        assert!(matches!(
            parse(StatusCode::OK, br#"{"id":"u2"}"#, "u1"),
            Err(UserDetailsError::Unavailable(_))
        ));
        // An answer that does not name the user is not one about it.
        assert!(matches!(
            parse(StatusCode::OK, br#"{"path":"/api/v1/users/u1"}"#, "u1"),
            Err(UserDetailsError::Unavailable(_))
        ));
        assert!(matches!(
            parse(StatusCode::OK, b"[1]", "u1"),
            Err(UserDetailsError::Unavailable(_))
        ));
        assert!(matches!(
            parse(StatusCode::BAD_GATEWAY, b"", "u1"),
            Err(UserDetailsError::Unavailable(_))
        ));
    }

    #[test]
    fn disabled_accounts_are_recognised() {
        let user = |json: &str| serde_json::from_str::<UserDetails>(json).unwrap();
        assert!(user(r#"{"id":"u1"}"#).enabled());
        assert!(!user(r#"{"status":"suspended"}"#).enabled());
        assert!(!user(r#"{"status":"disabled"}"#).enabled());
        assert!(!user(r#"{"active":false}"#).enabled());
        assert!(user(r#"{"active":true,"status":"active"}"#).enabled());
    }
}
