//! API keys on the Redis store: the records by key hash, the id index, and
//! a push of every change to the data planes. The layout is
//! `gateway_common::credentials`'.

use super::{corrupt, timed, RedisStore, RESPONSE_TIMEOUT};
use crate::store::StoreError;
use gateway_common::credentials::{self as layout, ApiKeyRecord, Push};
use redis::Script;

/// Removes a key by id and pushes the revocation, in one step; answers
/// the record removed, or nil for an unknown id.
const REVOKE: &str = r#"
local hash = redis.call('HGET', KEYS[2], ARGV[1])
if not hash then return false end
local record = redis.call('HGET', KEYS[1], hash)
redis.call('HDEL', KEYS[1], hash)
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[2], 'k- ' .. hash)
return record
"#;

impl RedisStore {
    /// Stores `record` under `hash` (refusing an id already in use) and
    /// pushes it to the data planes, in one `MULTI`.
    pub(super) async fn add_api_key(
        &self,
        hash: &str,
        record: &ApiKeyRecord,
    ) -> Result<(), StoreError> {
        let prefix = &self.keys.prefix;
        let json = serde_json::to_string(record).map_err(|e| corrupt("API key record", e))?;
        let push = Push::KeyAdded {
            hash: hash.to_string(),
            record: record.clone(),
        };
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_nx(layout::apikey_ids_key(prefix), &record.id, hash)
            .hset(layout::apikeys_key(prefix), hash, json)
            .ignore()
            .publish(layout::channel(prefix), push.encode())
            .ignore();
        let mut conn = self.conn.clone();
        let (added,): (bool,) = timed(pipe.query_async(&mut conn), RESPONSE_TIMEOUT).await?;
        if !added {
            return Err(StoreError::Conflict(format!(
                "API key id {} is already in use",
                record.id
            )));
        }
        Ok(())
    }

    /// Removes the key `id` and pushes its revocation.
    pub(super) async fn remove_api_key(&self, id: &str) -> Result<ApiKeyRecord, StoreError> {
        let prefix = &self.keys.prefix;
        let script = Script::new(REVOKE);
        let mut invocation = script.prepare_invoke();
        invocation
            .key(layout::apikeys_key(prefix))
            .key(layout::apikey_ids_key(prefix))
            .arg(id)
            .arg(layout::channel(prefix));
        let mut conn = self.conn.clone();
        let record: Option<String> =
            timed(invocation.invoke_async(&mut conn), RESPONSE_TIMEOUT).await?;
        let record = record.ok_or_else(|| StoreError::NotFound(format!("no API key {id}")))?;
        serde_json::from_str(&record).map_err(|e| corrupt("API key record", e))
    }

    /// Every key's record, by creation time.
    pub(super) async fn all_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let records: Vec<String> = self
            .command(redis::cmd("HVALS").arg(layout::apikeys_key(&self.keys.prefix)))
            .await?;
        let mut keys = records
            .iter()
            .map(|json| serde_json::from_str(json).map_err(|e| corrupt("API key record", e)))
            .collect::<Result<Vec<ApiKeyRecord>, _>>()?;
        keys.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        Ok(keys)
    }
}
