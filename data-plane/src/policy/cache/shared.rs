//! The response cache's Redis side: entries and their index, the hit/miss
//! counters, and the invalidation channel that keeps every data plane's
//! in-memory layer in step (key layout in `gateway_common::cache`).

use super::{unix_ms, Entry};
use crate::shared_state::SharedState;
use bytes::Bytes;
use gateway_common::cache::{self as layout, CacheKey, CachePattern};
use prometheus_client::metrics::counter::Counter;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::StreamExt;

/// How often the hit/miss counts are added to Redis.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Pause before subscribing again after the channel's connection failed.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(1);

type Memory = moka::future::Cache<String, Arc<Entry>>;

/// Redis access of the cache.
pub(super) struct SharedCache {
    state: Arc<SharedState>,
    errors: Counter,
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    hits: AtomicU64,
    misses: AtomicU64,
}

impl SharedCache {
    /// Starts the invalidation subscriber and the counter flusher.
    pub(super) fn start(state: Arc<SharedState>, memory: Memory, errors: Counter) -> Self {
        let counts = Arc::new(Counts::default());
        tokio::spawn(subscribe(state.clone(), memory));
        tokio::spawn(flush_counts(Arc::downgrade(&counts), state.clone()));
        SharedCache {
            state,
            errors,
            counts,
        }
    }

    pub(super) fn count(&self, hit: bool) {
        let counter = if hit {
            &self.counts.hits
        } else {
            &self.counts.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn failed(&self, what: &str, error: &dyn std::fmt::Display) {
        self.errors.inc();
        if self.state.is_up() {
            tracing::warn!(error = %error, "response cache: Redis {what} failed; serving from memory and the upstream");
        }
        self.state.record(false);
    }

    /// The live entry of `key`, if Redis has one (and answers in time).
    pub(super) async fn get(&self, key: &CacheKey) -> Option<Entry> {
        let mut conn = self.state.connection()?;
        let name = layout::entry_key(self.state.prefix(), &key.hash);
        let mut cmd = redis::cmd("GET");
        cmd.arg(&name);
        let call = cmd.query_async::<Option<Vec<u8>>>(&mut conn);
        let data = match tokio::time::timeout(self.state.timeout(), call).await {
            Ok(Ok(data)) => {
                self.state.record(true);
                data?
            }
            Ok(Err(e)) => {
                self.failed("read", &e);
                return None;
            }
            Err(_) => {
                self.failed("read", &"timed out");
                return None;
            }
        };
        let entry = Entry::decode(Bytes::from(data))?;
        // The full key is compared: a digest collision is a miss.
        (entry.key == key.text && entry.expires_at_ms > unix_ms()).then_some(entry)
    }

    /// Stores `entry` for `ttl`, indexes it, and trims expired members off
    /// the index, in one transaction.
    pub(super) async fn put(&self, key: &CacheKey, entry: &Entry, ttl: Duration) {
        let Some(mut conn) = self.state.connection() else {
            return;
        };
        let prefix = self.state.prefix();
        let now = unix_ms();
        let index = layout::index_key(prefix);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(layout::entry_key(prefix, &key.hash))
            .arg(entry.encode().as_ref())
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .ignore()
            .cmd("ZADD")
            .arg(&index)
            .arg(entry.expires_at_ms)
            .arg(key.index_member())
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&index)
            .arg("-inf")
            .arg(now)
            .ignore()
            .cmd("HINCRBY")
            .arg(layout::stats_key(prefix))
            .arg("stores")
            .arg(1)
            .ignore();
        match tokio::time::timeout(self.state.timeout(), pipe.query_async::<()>(&mut conn)).await {
            Ok(Ok(())) => self.state.record(true),
            Ok(Err(e)) => self.failed("write", &e),
            Err(_) => self.failed("write", &"timed out"),
        }
    }
}

/// Adds this data plane's hit and miss counts to the shared counters every
/// second (one write per second, not one per request). Counts that cannot
/// be written are kept for the next attempt.
async fn flush_counts(counts: std::sync::Weak<Counts>, state: Arc<SharedState>) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(counts) = counts.upgrade() else {
            return;
        };
        let hits = counts.hits.swap(0, Ordering::Relaxed);
        let misses = counts.misses.swap(0, Ordering::Relaxed);
        if hits == 0 && misses == 0 {
            continue;
        }
        let written = match state.connection() {
            Some(mut conn) => {
                let mut pipe = redis::pipe();
                let key = layout::stats_key(state.prefix());
                pipe.cmd("HINCRBY")
                    .arg(&key)
                    .arg("hits")
                    .arg(hits)
                    .ignore()
                    .cmd("HINCRBY")
                    .arg(&key)
                    .arg("misses")
                    .arg(misses)
                    .ignore();
                matches!(
                    tokio::time::timeout(state.timeout(), pipe.query_async::<()>(&mut conn)).await,
                    Ok(Ok(()))
                )
            }
            None => false,
        };
        if !written {
            counts.hits.fetch_add(hits, Ordering::Relaxed);
            counts.misses.fetch_add(misses, Ordering::Relaxed);
        }
    }
}

/// Listens on the invalidation channel on a dedicated connection and drops
/// the matching entries of the in-memory layer. After (re)subscribing it
/// clears the whole layer: invalidations published while it was not
/// listening are lost, and the layer only holds seconds of entries.
async fn subscribe(state: Arc<SharedState>, memory: Memory) {
    let channel = layout::channel(state.prefix());
    let mut warned = false;
    loop {
        match state.client().get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                Ok(()) => {
                    warned = false;
                    memory.invalidate_all();
                    tracing::debug!(channel = %channel, "response cache: listening for invalidations");
                    let mut messages = pubsub.on_message();
                    while let Some(message) = messages.next().await {
                        let Ok(text) = message.get_payload::<String>() else {
                            continue;
                        };
                        invalidate(&memory, &text);
                    }
                    tracing::warn!("response cache: invalidation channel lost; subscribing again");
                }
                Err(e) => log_once(&mut warned, &e),
            },
            Err(e) => log_once(&mut warned, &e),
        }
        tokio::time::sleep(RESUBSCRIBE_AFTER).await;
    }
}

fn log_once(warned: &mut bool, error: &redis::RedisError) {
    if !*warned {
        tracing::warn!(error = %error, "response cache: cannot subscribe to invalidations yet; the in-memory layer keeps entries at most {}s", super::MEMORY_TTL.as_secs());
        *warned = true;
    }
}

/// Drops the in-memory entries covered by the pattern `text`.
pub(super) fn invalidate(memory: &Memory, text: &str) {
    match CachePattern::parse(text) {
        Ok(pattern) => {
            let dropped = memory.invalidate_entries_if(move |_hash, entry| {
                pattern.matches(&entry.route, &entry.path)
            });
            if let Err(e) = dropped {
                tracing::warn!(error = %e, "response cache: cannot apply an invalidation; clearing the in-memory layer");
                memory.invalidate_all();
            }
        }
        Err(e) => {
            tracing::warn!(pattern = text, error = %e, "response cache: unreadable invalidation; clearing the in-memory layer");
            memory.invalidate_all();
        }
    }
}
