//! The response cache's administration on the Redis store: invalidation
//! by a bounded scan of the cache's index (never `KEYS` or `SCAN` of the
//! keyspace) and statistics. The data planes write the entries; the key
//! layout is `gateway_common::cache`'s.

use super::{timed, RedisStore, RESPONSE_TIMEOUT};
use crate::store::unix_ms;
use crate::store::{CacheStats, StoreError};
use gateway_common::cache::{self as layout, CachePattern};
use std::collections::HashMap;

/// Members asked for per `ZSCAN` step (and entries deleted per round trip).
const SCAN_BATCH: usize = 500;

impl RedisStore {
    /// Trims expired members off the index, then walks it with `ZSCAN
    /// MATCH`, deleting the entries `pattern` covers and their members one
    /// batch per round trip; finally publishes the pattern so that every
    /// data plane drops the matching entries of its in-memory layer (also
    /// when nothing was in Redis: a data plane may hold entries it stored
    /// while Redis was unreachable).
    pub(super) async fn invalidate_cached(
        &self,
        pattern: &CachePattern,
    ) -> Result<u64, StoreError> {
        let prefix = &self.keys.prefix;
        let index = layout::index_key(prefix);
        let _: i64 = self
            .command(
                redis::cmd("ZREMRANGEBYSCORE")
                    .arg(&index)
                    .arg("-inf")
                    .arg(unix_ms()),
            )
            .await?;
        let filter = pattern.index_match();
        let mut cursor: u64 = 0;
        let mut removed = 0u64;
        loop {
            let (next, flat): (u64, Vec<String>) = self
                .command(
                    redis::cmd("ZSCAN")
                        .arg(&index)
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&filter)
                        .arg("COUNT")
                        .arg(SCAN_BATCH),
                )
                .await?;
            // ZSCAN answers member, score, member, score...
            let members: Vec<&String> = flat
                .iter()
                .step_by(2)
                .filter(|m| {
                    layout::parse_index_member(m)
                        .is_some_and(|(route, path, _)| pattern.matches(route, path))
                })
                .collect();
            if !members.is_empty() {
                removed += self.remove(&index, &members).await?;
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let _: i64 = self
            .command(
                redis::cmd("PUBLISH")
                    .arg(layout::channel(prefix))
                    .arg(pattern.to_string()),
            )
            .await?;
        Ok(removed)
    }

    /// Deletes the entries of `members` and the members; returns how many
    /// entries existed.
    async fn remove(&self, index: &str, members: &[&String]) -> Result<u64, StoreError> {
        let prefix = &self.keys.prefix;
        let mut pipe = redis::pipe();
        for member in members {
            if let Some((_, _, hash)) = layout::parse_index_member(member) {
                pipe.cmd("DEL").arg(layout::entry_key(prefix, hash));
            }
        }
        pipe.cmd("ZREM").arg(index).arg(members).ignore();
        let mut conn = self.conn.clone();
        let deleted: Vec<u64> = timed(pipe.query_async(&mut conn), RESPONSE_TIMEOUT).await?;
        Ok(deleted.iter().sum())
    }

    /// Live entries, the shared counters and memory use.
    pub(super) async fn cached_stats(&self) -> Result<CacheStats, StoreError> {
        let prefix = &self.keys.prefix;
        let index = layout::index_key(prefix);
        let mut pipe = redis::pipe();
        pipe.cmd("ZCOUNT")
            .arg(&index)
            .arg(format!("({}", unix_ms()))
            .arg("+inf")
            .cmd("HGETALL")
            .arg(layout::stats_key(prefix))
            .cmd("MEMORY")
            .arg("USAGE")
            .arg(&index)
            .cmd("INFO")
            .arg("memory");
        let mut conn = self.conn.clone();
        let (entries, counters, index_bytes, info): (
            u64,
            HashMap<String, u64>,
            Option<u64>,
            String,
        ) = timed(pipe.query_async(&mut conn), RESPONSE_TIMEOUT).await?;
        let counter = |name: &str| counters.get(name).copied().unwrap_or(0);
        Ok(CacheStats {
            entries,
            hits: counter("hits"),
            misses: counter("misses"),
            stores: counter("stores"),
            redis_used_memory_bytes: used_memory(&info),
            index_bytes: index_bytes.unwrap_or(0),
        })
    }
}

/// `used_memory` from the text of `INFO memory`.
fn used_memory(info: &str) -> u64 {
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn used_memory_is_read_from_info() {
        let info = "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\n";
        assert_eq!(super::used_memory(info), 1_048_576);
        assert_eq!(super::used_memory("# Memory\r\n"), 0);
    }
}
