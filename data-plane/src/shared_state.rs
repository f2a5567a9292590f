//! The state data planes share through Redis (`REDIS_URL`): rate-limit
//! counters and cached responses.
//!
//! Data planes are stateless and must keep serving when Redis is away, so
//! nothing here blocks start-up or a request on Redis: the connection is
//! made in the background (and remade by the connection manager after a
//! failure), every call is bounded by a short response timeout, and each
//! user of [`SharedState`] has a documented local fallback for when
//! [`SharedState::connection`] is `None` or a call fails.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Default bound on one Redis call of the request path.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(250);
/// Default prefix of every key the data plane writes.
pub const DEFAULT_KEY_PREFIX: &str = "gw:";
/// Pause between attempts at the first connection.
const CONNECT_RETRY: Duration = Duration::from_secs(1);

/// Why the shared state cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum SharedStateError {
    /// `REDIS_URL` does not parse, or its TLS files cannot be used.
    #[error(transparent)]
    BadUrl(#[from] gateway_common::redis_client::RedisClientError),
}

/// A handle on the Redis the data planes share; cheap to clone through `Arc`.
pub struct SharedState {
    client: redis::Client,
    conn: arc_swap::ArcSwapOption<ConnectionManager>,
    prefix: String,
    timeout: Duration,
    up: AtomicBool,
}

impl std::fmt::Debug for SharedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedState")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

impl SharedState {
    /// Checks `url` (and the TLS files of a `rediss://` one) and starts
    /// connecting in the background; returns at once.
    /// Must be called inside a tokio runtime.
    pub fn start(
        url: &str,
        tls: &gateway_common::redis_client::RedisTls,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Arc<Self>, SharedStateError> {
        let client = gateway_common::redis_client::open(url, tls)?;
        let state = Arc::new(SharedState {
            client,
            conn: arc_swap::ArcSwapOption::empty(),
            prefix: prefix.to_string(),
            timeout,
            up: AtomicBool::new(false),
        });
        tokio::spawn(connect_loop(Arc::downgrade(&state)));
        Ok(state)
    }

    /// The multiplexed connection, or `None` while the first connection has
    /// not been made. Calls on it fail fast (within [`Self::timeout`]) while
    /// Redis is unreachable, and it reconnects by itself.
    pub fn connection(&self) -> Option<ConnectionManager> {
        self.conn.load_full().map(|conn| (*conn).clone())
    }

    /// The client, for dedicated connections (pub/sub).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// `prefix` + `suffix`: the full name of one of the data plane's keys.
    pub fn key(&self, suffix: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + suffix.len());
        key.push_str(&self.prefix);
        key.push_str(suffix);
        key
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Bound on one call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether the last call (or connection attempt) succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Records the outcome of a call; logs the transitions (once each way,
    /// not once per request).
    pub fn record(&self, ok: bool) {
        let was = self.up.swap(ok, Ordering::Relaxed);
        if was && !ok {
            tracing::warn!("Redis is unreachable: shared rate limits and the shared cache fall back to this data plane's own");
        } else if !was && ok {
            tracing::info!("Redis is reachable again");
        }
    }
}

async fn connect_loop(state: std::sync::Weak<SharedState>) {
    let mut warned = false;
    loop {
        let Some(shared) = state.upgrade() else {
            return;
        };
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(shared.timeout))
            .set_connection_timeout(Some(shared.timeout.max(Duration::from_millis(500))))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(1));
        match ConnectionManager::new_with_config(shared.client.clone(), config).await {
            Ok(conn) => {
                shared.conn.store(Some(Arc::new(conn)));
                shared.record(true);
                return;
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %e, "cannot reach Redis yet; shared state uses local fallbacks until it can");
                    warned = true;
                }
            }
        }
        drop(shared);
        tokio::time::sleep(CONNECT_RETRY).await;
    }
}
