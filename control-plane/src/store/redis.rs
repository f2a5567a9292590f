//! The durable [`Store`]: Redis, shared by every control-plane replica.
//!
//! Every mutation is one Lua script (atomic, one round trip): it checks its
//! preconditions, writes, increments `version` and appends the delta as
//! change-log entry `VERSION-0`. Requests go through a reconnecting
//! [`ConnectionManager`] with short timeouts so that an outage answers
//! quickly; the change log is tailed (`XREAD BLOCK`) on a dedicated
//! connection so that blocking reads never delay requests.

use super::{
    initial_state, parse_stored_config, to_json, ApplyOutcome, CacheStats, Change, ConfigEdit,
    ConfigPlan, DataPlaneRecord, Delta, Deregistered, HealthRecord, InstanceDetails,
    RegisterEffect, Registered, Seed, SeedOutcome, Snapshot, StateUpdate, Store, StoreError,
    StoreHead, CHANGE_LOG_LEN,
};
use async_trait::async_trait;
use gateway_common::cache::CachePattern;
use gateway_common::credentials::ApiKeyRecord;
use gateway_common::redis_client::RedisTls;
use gateway_common::registration::{Health, Instance, InstanceSpec, InstanceState};
use gateway_common::GatewayConfig;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, FromRedisValue, Script, Value};
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;
use tokio::sync::Mutex;

/// Time one request may take before the store counts as unavailable.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Time one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Time allowed to reach Redis at start-up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts at applying a read-modify-write config change racing other writers.
const CONFIG_CAS_ATTEMPTS: usize = 8;

mod apikeys;
mod cache;
mod seed;

/// Fully prefixed key names.
#[derive(Debug, Clone)]
struct Keys {
    epoch: String,
    version: String,
    config: String,
    instances: String,
    states: String,
    leases: String,
    health: String,
    lease_ttls: String,
    changes: String,
    leader: String,
    dataplanes: String,
    /// The prefix itself (the response cache's keys are named from it by
    /// `gateway_common::cache`).
    prefix: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        let k = |name: &str| format!("{prefix}{name}");
        Keys {
            epoch: k("epoch"),
            version: k("version"),
            config: k("config"),
            instances: k("instances"),
            states: k("states"),
            leases: k("leases"),
            health: k("health"),
            lease_ttls: k("lease_ttls"),
            changes: k("changes"),
            leader: k("leader"),
            dataplanes: k("dataplanes"),
            prefix: prefix.to_string(),
        }
    }

    /// The KEYS every script of the prelude expects, in its order.
    fn data(&self) -> [&str; 9] {
        [
            &self.epoch,
            &self.version,
            &self.config,
            &self.instances,
            &self.states,
            &self.leases,
            &self.health,
            &self.lease_ttls,
            &self.changes,
        ]
    }
}

const PRELUDE: &str = include_str!("lua/prelude.lua");

fn with_prelude(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

struct Scripts {
    register: Script,
    renew: Script,
    deregister: Script,
    drain: Script,
    health: Script,
    expire: Script,
    apply: Script,
    seed: Script,
    snapshot: Script,
    details: Script,
    health_records: Script,
    leader_renew: Script,
    leader_release: Script,
    dataplane_gone: Script,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            register: with_prelude(include_str!("lua/register.lua")),
            renew: with_prelude(include_str!("lua/renew.lua")),
            deregister: with_prelude(include_str!("lua/deregister.lua")),
            drain: with_prelude(include_str!("lua/drain.lua")),
            health: with_prelude(include_str!("lua/health.lua")),
            expire: with_prelude(include_str!("lua/expire.lua")),
            apply: with_prelude(include_str!("lua/apply.lua")),
            seed: with_prelude(include_str!("lua/seed.lua")),
            snapshot: with_prelude(include_str!("lua/snapshot.lua")),
            details: with_prelude(include_str!("lua/details.lua")),
            health_records: with_prelude(include_str!("lua/health_records.lua")),
            leader_renew: Script::new(include_str!("lua/leader_renew.lua")),
            leader_release: Script::new(include_str!("lua/leader_release.lua")),
            dataplane_gone: Script::new(include_str!("lua/dataplane_gone.lua")),
        }
    }
}

/// [`Store`] on Redis.
pub struct RedisStore {
    client: Client,
    conn: ConnectionManager,
    /// Dedicated connection for blocking change-log reads; `None` until
    /// (re)connected.
    tail: Mutex<Option<MultiplexedConnection>>,
    keys: Keys,
    scripts: Scripts,
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

/// Runs a Redis call with the request timeout (a reconnecting connection
/// may otherwise wait for its reconnection attempts).
async fn timed<T>(
    fut: impl Future<Output = redis::RedisResult<T>>,
    timeout: Duration,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result.map_err(unavailable),
        Err(_) => Err(StoreError::Unavailable(format!(
            "no answer from Redis within {timeout:?}"
        ))),
    }
}

fn parse<T: FromRedisValue>(value: &Value, what: &str) -> Result<T, StoreError> {
    T::from_redis_value_ref(value).map_err(|e| corrupt(what, e))
}

fn parse_u64(text: &str, what: &str) -> Result<u64, StoreError> {
    text.parse::<u64>().map_err(|e| corrupt(what, e))
}

/// Redis returns sorted-set scores as decimal text, possibly in exponent form.
fn parse_score(text: &str) -> Result<u64, StoreError> {
    text.parse::<f64>()
        .map(|f| f.max(0.0) as u64)
        .map_err(|e| corrupt("lease score", e))
}

fn pairs(flat: Vec<String>) -> impl Iterator<Item = (String, String)> {
    let mut it = flat.into_iter();
    std::iter::from_fn(move || Some((it.next()?, it.next()?)))
}

fn health_word(health: Health) -> &'static str {
    match health {
        Health::Unknown => "unknown",
        Health::Healthy => "healthy",
        Health::Unhealthy => "unhealthy",
    }
}

impl RedisStore {
    /// Connects to `url` and checks that Redis answers; keys are prefixed
    /// with `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, StoreError> {
        Self::connect_with_tls(url, &RedisTls::default(), prefix).await
    }

    /// [`RedisStore::connect`] with the TLS files of a `rediss://` URL.
    pub async fn connect_with_tls(
        url: &str,
        tls: &RedisTls,
        prefix: &str,
    ) -> Result<Self, StoreError> {
        let client = gateway_common::redis_client::open(url, tls)
            .map_err(|e| StoreError::Invalid(vec![e.to_string()]))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(1));
        let conn = match tokio::time::timeout(
            STARTUP_TIMEOUT,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(unavailable(e)),
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "cannot reach Redis within {STARTUP_TIMEOUT:?}"
                )))
            }
        };
        let store = RedisStore {
            client,
            conn,
            tail: Mutex::new(None),
            keys: Keys::new(prefix),
            scripts: Scripts::new(),
        };
        store.ping().await?;
        Ok(store)
    }

    /// Runs a prelude script with `args` after the two common arguments.
    async fn run(&self, script: &Script, args: &[&str]) -> Result<Value, StoreError> {
        let epoch_candidate = uuid::Uuid::new_v4().to_string();
        let maxlen = CHANGE_LOG_LEN.to_string();
        let mut invocation = script.prepare_invoke();
        for key in self.keys.data() {
            invocation.key(key);
        }
        invocation.arg(&epoch_candidate).arg(&maxlen);
        for arg in args {
            invocation.arg(*arg);
        }
        let mut conn = self.conn.clone();
        timed(
            invocation.invoke_async::<Value>(&mut conn),
            RESPONSE_TIMEOUT,
        )
        .await
    }

    async fn strings(&self, script: &Script, args: &[&str]) -> Result<Vec<String>, StoreError> {
        let value = self.run(script, args).await?;
        parse(&value, "script reply")
    }

    async fn command<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        timed(cmd.query_async::<T>(&mut conn), RESPONSE_TIMEOUT).await
    }

    async fn tail_connection(&self) -> Result<MultiplexedConnection, StoreError> {
        let mut slot = self.tail.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        // Blocking reads need a response timeout longer than their block time.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(Duration::from_secs(30)));
        let conn = timed(
            self.client
                .get_multiplexed_async_connection_with_config(&config),
            CONNECT_TIMEOUT + Duration::from_millis(500),
        )
        .await?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    async fn drop_tail_connection(&self) {
        *self.tail.lock().await = None;
    }

    fn parse_entries(
        &self,
        entries: Vec<(String, HashMap<String, Value>)>,
    ) -> Result<Vec<Change>, StoreError> {
        entries
            .into_iter()
            .map(|(id, fields)| {
                let version = id
                    .split('-')
                    .next()
                    .ok_or_else(|| corrupt("change-log id", &id))
                    .and_then(|v| parse_u64(v, "change-log id"))?;
                let data: String = fields
                    .get("d")
                    .ok_or_else(|| corrupt("change-log entry", format!("{id} has no delta")))
                    .and_then(|v| parse(v, "change-log delta"))?;
                let delta: Delta =
                    serde_json::from_str(&data).map_err(|e| corrupt("change-log delta", e))?;
                let epoch = match fields.get("e") {
                    Some(v) => Some(parse::<String>(v, "change-log epoch")?),
                    None => None,
                };
                Ok(Change {
                    version,
                    epoch,
                    delta,
                })
            })
            .collect()
    }

    async fn read_config(&self) -> Result<(Option<String>, u64), StoreError> {
        let (config, version): (Option<String>, Option<u64>) = self
            .command(
                redis::cmd("MGET")
                    .arg(&self.keys.config)
                    .arg(&self.keys.version),
            )
            .await?;
        Ok((config, version.unwrap_or(0)))
    }
}

#[async_trait]
impl Store for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let _: String = self.command(&redis::cmd("PING")).await?;
        Ok(())
    }

    async fn head(&self) -> Result<StoreHead, StoreError> {
        let (epoch, version): (Option<String>, Option<u64>) = self
            .command(
                redis::cmd("MGET")
                    .arg(&self.keys.epoch)
                    .arg(&self.keys.version),
            )
            .await?;
        Ok(StoreHead {
            epoch,
            version: version.unwrap_or(0),
        })
    }

    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let value = self.run(&self.scripts.snapshot, &[]).await?;
        let (epoch, version, config_json, instances, states, ttls): (
            String,
            String,
            Option<String>,
            Vec<String>,
            Vec<String>,
            Vec<String>,
        ) = parse(&value, "snapshot")?;
        let config = parse_stored_config(config_json.as_deref())?;
        let mut state_of: HashMap<String, InstanceState> = HashMap::with_capacity(states.len() / 2);
        for (id, json) in pairs(states) {
            let state = serde_json::from_str(&json).map_err(|e| corrupt("instance state", e))?;
            state_of.insert(id, state);
        }
        let mut list = Vec::with_capacity(instances.len() / 2);
        for (id, json) in pairs(instances) {
            let spec: InstanceSpec =
                serde_json::from_str(&json).map_err(|e| corrupt("instance spec", e))?;
            let state = state_of.remove(&id).unwrap_or_default();
            list.push(Instance { spec, state });
        }
        list.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
        let lease_ttls_ms = pairs(ttls)
            .map(|(id, ttl)| Ok((id, parse_u64(&ttl, "lease TTL")?)))
            .collect::<Result<_, StoreError>>()?;
        Ok(Snapshot {
            epoch,
            version: parse_u64(&version, "version")?,
            config_json: config.to_json(),
            config,
            configured: config_json.is_some(),
            instances: list,
            lease_ttls_ms,
        })
    }

    async fn current_config(&self) -> Result<(GatewayConfig, u64), StoreError> {
        let (json, version) = self.read_config().await?;
        Ok((parse_stored_config(json.as_deref())?, version))
    }

    async fn changes_after(&self, version: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
        let reply: redis::streams::StreamRangeReply = self
            .command(
                redis::cmd("XRANGE")
                    .arg(&self.keys.changes)
                    .arg(format!("({version}-0"))
                    .arg("+")
                    .arg("COUNT")
                    .arg(limit),
            )
            .await?;
        self.parse_entries(reply.ids.into_iter().map(|e| (e.id, e.map)).collect())
    }

    async fn wait_changes(
        &self,
        version: u64,
        limit: usize,
        block: Duration,
    ) -> Result<Vec<Change>, StoreError> {
        let mut conn = self.tail_connection().await?;
        let cmd = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(limit)
            .arg("BLOCK")
            .arg(block.as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(&self.keys.changes)
            .arg(format!("{version}-0"))
            .to_owned();
        let result = timed(
            cmd.query_async::<Option<redis::streams::StreamReadReply>>(&mut conn),
            block + RESPONSE_TIMEOUT,
        )
        .await;
        let reply = match result {
            Ok(reply) => reply,
            Err(e) => {
                self.drop_tail_connection().await;
                return Err(e);
            }
        };
        let entries = reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .map(|e| (e.id, e.map))
            .collect();
        self.parse_entries(entries)
    }

    async fn update_config(
        &self,
        edit: &ConfigEdit<'_>,
        dry_run: bool,
    ) -> Result<ApplyOutcome, StoreError> {
        for _ in 0..CONFIG_CAS_ATTEMPTS {
            let (current_json, version) = self.read_config().await?;
            let current = parse_stored_config(current_json.as_deref())?;
            let plan = ConfigPlan::new(&current, edit(&current)?)?;
            if dry_run || current_json.as_deref() == Some(plan.json.as_str()) {
                return Ok(ApplyOutcome {
                    version,
                    unchanged: current_json.as_deref() == Some(plan.json.as_str()),
                    changes: plan.changes,
                    config: plan.config,
                });
            }
            let present = if current_json.is_some() { "1" } else { "0" };
            let expected = current_json.as_deref().unwrap_or_default();
            let quoted = to_json(&plan.json);
            let state = to_json(&initial_state());
            let count = plan.statics.len().to_string();
            let specs: Vec<(String, String)> = plan
                .statics
                .iter()
                .map(|s| (s.id.clone(), to_json(s)))
                .collect();
            let mut args: Vec<&str> = vec![present, expected, &plan.json, &quoted, &state, &count];
            for (id, spec) in &specs {
                args.push(id);
                args.push(spec);
            }
            args.extend(plan.vanished_statics.iter().map(String::as_str));
            let reply = self.strings(&self.scripts.apply, &args).await?;
            match reply.first().map(String::as_str) {
                Some("conflict") => continue,
                Some(word @ ("applied" | "unchanged")) => {
                    let version = parse_u64(reply.get(1).map_or("", String::as_str), "version")?;
                    return Ok(ApplyOutcome {
                        version,
                        unchanged: word == "unchanged",
                        changes: plan.changes,
                        config: plan.config,
                    });
                }
                _ => return Err(corrupt("apply reply", format!("{reply:?}"))),
            }
        }
        Err(StoreError::Contended(
            "the config kept changing under this update; try again".into(),
        ))
    }

    async fn register(
        &self,
        spec: &InstanceSpec,
        ttl: Duration,
        create_only: bool,
    ) -> Result<Registered, StoreError> {
        let spec_json = to_json(spec);
        let ttl_ms = ttl.as_millis().max(1).to_string();
        let state = to_json(&initial_state());
        let reply = self
            .strings(
                &self.scripts.register,
                &[
                    &spec.id,
                    &spec.service,
                    &spec_json,
                    &ttl_ms,
                    &state,
                    if create_only { "1" } else { "0" },
                ],
            )
            .await?;
        let word = reply.first().map(String::as_str).unwrap_or_default();
        let arg = reply.get(1).map(String::as_str).unwrap_or_default();
        let effect = match word {
            "created" => RegisterEffect::Created,
            "updated" => RegisterEffect::Updated,
            "renewed" => RegisterEffect::Renewed,
            "conflict" => {
                return Err(StoreError::Conflict(format!(
                    "instance id {:?} is registered for service {arg:?}",
                    spec.id
                )))
            }
            "exists" => {
                return Err(StoreError::Conflict(format!(
                    "instance id {:?} is taken",
                    spec.id
                )))
            }
            _ => return Err(corrupt("register reply", format!("{reply:?}"))),
        };
        Ok(Registered {
            effect,
            version: parse_u64(arg, "version")?,
        })
    }

    async fn seed(&self, seed: &Seed) -> Result<SeedOutcome, StoreError> {
        self.write_back(seed).await
    }

    async fn renew_lease(&self, id: &str) -> Result<Option<Duration>, StoreError> {
        let reply = self.strings(&self.scripts.renew, &[id]).await?;
        match (reply.first().map(String::as_str), reply.get(1)) {
            (Some("ok"), Some(ttl)) => {
                Ok(Some(Duration::from_millis(parse_u64(ttl, "lease TTL")?)))
            }
            (Some("missing"), _) => Ok(None),
            _ => Err(corrupt("renew reply", format!("{reply:?}"))),
        }
    }

    async fn deregister(&self, id: &str) -> Result<Deregistered, StoreError> {
        let reply = self.strings(&self.scripts.deregister, &[id]).await?;
        let version = parse_u64(reply.get(1).map_or("", String::as_str), "version")?;
        Ok(Deregistered {
            removed: reply.first().map(String::as_str) == Some("removed"),
            version,
        })
    }

    async fn set_draining(&self, id: &str, draining: bool) -> Result<StateUpdate, StoreError> {
        let state = to_json(&initial_state());
        let flag = if draining { "1" } else { "0" };
        let reply = self
            .strings(&self.scripts.drain, &[id, flag, &state])
            .await?;
        let [word, version, spec, state] = reply.as_slice() else {
            if reply.first().map(String::as_str) == Some("absent") {
                return Err(StoreError::NotFound(format!("no instance {id:?}")));
            }
            return Err(corrupt("drain reply", format!("{reply:?}")));
        };
        Ok(StateUpdate {
            instance: Instance {
                spec: serde_json::from_str(spec).map_err(|e| corrupt("instance spec", e))?,
                state: serde_json::from_str(state).map_err(|e| corrupt("instance state", e))?,
            },
            version: parse_u64(version, "version")?,
            changed: word == "changed",
        })
    }

    async fn set_health(&self, verdicts: &[(String, Health)]) -> Result<Option<u64>, StoreError> {
        if verdicts.is_empty() {
            return Ok(None);
        }
        let mut args = Vec::with_capacity(verdicts.len() * 2);
        for (id, health) in verdicts {
            args.push(id.as_str());
            args.push(health_word(*health));
        }
        let reply = self.strings(&self.scripts.health, &args).await?;
        match (reply.first().map(String::as_str), reply.get(1)) {
            (Some("changed"), Some(v)) => Ok(Some(parse_u64(v, "version")?)),
            (Some("same"), _) => Ok(None),
            _ => Err(corrupt("health reply", format!("{reply:?}"))),
        }
    }

    async fn expire_leases(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        let limit = limit.to_string();
        let mut reply = self.strings(&self.scripts.expire, &[&limit]).await?;
        if reply.is_empty() {
            return Ok(reply);
        }
        reply.remove(0);
        Ok(reply)
    }

    async fn record_health_checks(
        &self,
        records: &[(String, HealthRecord)],
    ) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let encoded: Vec<(String, String)> = records
            .iter()
            .map(|(id, r)| (id.clone(), to_json(r)))
            .collect();
        let mut args = Vec::with_capacity(encoded.len() * 2);
        for (id, json) in &encoded {
            args.push(id.as_str());
            args.push(json.as_str());
        }
        self.run(&self.scripts.health_records, &args).await?;
        Ok(())
    }

    async fn instance_details(&self, id: Option<&str>) -> Result<InstanceDetails, StoreError> {
        let value = self
            .run(&self.scripts.details, &[id.unwrap_or_default()])
            .await?;
        let (now, leases, health): (String, Vec<String>, Vec<String>) =
            parse(&value, "instance details")?;
        let mut details = InstanceDetails {
            now_unix_ms: parse_u64(&now, "store time")?,
            ..InstanceDetails::default()
        };
        for (id, score) in pairs(leases) {
            details.lease_expiry.insert(id, parse_score(&score)?);
        }
        for (id, json) in pairs(health) {
            let record = serde_json::from_str(&json).map_err(|e| corrupt("health record", e))?;
            details.health.insert(id, record);
        }
        Ok(details)
    }

    async fn acquire_leader(&self, replica: &str, ttl: Duration) -> Result<bool, StoreError> {
        let set: Option<String> = self
            .command(
                redis::cmd("SET")
                    .arg(&self.keys.leader)
                    .arg(replica)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl.as_millis().max(1) as u64),
            )
            .await?;
        if set.is_some() {
            return Ok(true);
        }
        // Still ours from before (e.g. this replica lost track of it).
        self.renew_leader(replica, ttl).await
    }

    async fn renew_leader(&self, replica: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut invocation = self.scripts.leader_renew.prepare_invoke();
        invocation
            .key(&self.keys.leader)
            .arg(replica)
            .arg(ttl.as_millis().max(1) as u64);
        let mut conn = self.conn.clone();
        let renewed: i64 = timed(invocation.invoke_async(&mut conn), RESPONSE_TIMEOUT).await?;
        Ok(renewed == 1)
    }

    async fn release_leader(&self, replica: &str) -> Result<(), StoreError> {
        let mut invocation = self.scripts.leader_release.prepare_invoke();
        invocation.key(&self.keys.leader).arg(replica);
        let mut conn = self.conn.clone();
        let _: i64 = timed(invocation.invoke_async(&mut conn), RESPONSE_TIMEOUT).await?;
        Ok(())
    }

    async fn leader(&self) -> Result<Option<String>, StoreError> {
        self.command(redis::cmd("GET").arg(&self.keys.leader)).await
    }

    async fn record_dataplane(&self, record: &DataPlaneRecord) -> Result<(), StoreError> {
        let _: i64 = self
            .command(
                redis::cmd("HSET")
                    .arg(&self.keys.dataplanes)
                    .arg(&record.node_id)
                    .arg(to_json(record)),
            )
            .await?;
        Ok(())
    }

    async fn record_dataplanes(&self, records: &[DataPlaneRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("HSET");
        cmd.arg(&self.keys.dataplanes);
        for record in records {
            cmd.arg(&record.node_id).arg(to_json(record));
        }
        let _: i64 = self.command(&cmd).await?;
        Ok(())
    }

    async fn record_dataplane_gone(&self, record: &DataPlaneRecord) -> Result<(), StoreError> {
        let mut invocation = self.scripts.dataplane_gone.prepare_invoke();
        invocation
            .key(&self.keys.dataplanes)
            .arg(&record.node_id)
            .arg(&record.session)
            .arg(to_json(record));
        let mut conn = self.conn.clone();
        let _: i64 = timed(invocation.invoke_async(&mut conn), RESPONSE_TIMEOUT).await?;
        Ok(())
    }

    async fn list_dataplanes(&self) -> Result<Vec<DataPlaneRecord>, StoreError> {
        let all: HashMap<String, String> = self
            .command(redis::cmd("HGETALL").arg(&self.keys.dataplanes))
            .await?;
        let mut records: Vec<DataPlaneRecord> = all
            .values()
            .filter_map(|json| serde_json::from_str(json).ok())
            .collect();
        records.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(records)
    }

    async fn forget_dataplanes(&self, node_ids: &[String]) -> Result<(), StoreError> {
        if node_ids.is_empty() {
            return Ok(());
        }
        let _: i64 = self
            .command(redis::cmd("HDEL").arg(&self.keys.dataplanes).arg(node_ids))
            .await?;
        Ok(())
    }

    async fn invalidate_cache(&self, pattern: &CachePattern) -> Result<u64, StoreError> {
        self.invalidate_cached(pattern).await
    }

    async fn cache_stats(&self) -> Result<CacheStats, StoreError> {
        self.cached_stats().await
    }

    async fn create_api_key(&self, hash: &str, record: &ApiKeyRecord) -> Result<(), StoreError> {
        self.add_api_key(hash, record).await
    }

    async fn revoke_api_key(&self, id: &str) -> Result<ApiKeyRecord, StoreError> {
        self.remove_api_key(id).await
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.all_api_keys().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_in_exponent_form_parse() {
        assert_eq!(parse_score("1700000000123").unwrap(), 1_700_000_000_123);
        assert_eq!(parse_score("1.7e12").unwrap(), 1_700_000_000_000);
        assert!(parse_score("x").is_err());
    }
}
