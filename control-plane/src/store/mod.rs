//! Where the control plane keeps its state: the declarative config, the
//! instances with their leases and states, the change log, the leader lock
//! and the data planes' reported status.
//!
//! [`Store`] is implemented twice with the same semantics: [`redis::RedisStore`]
//! (durable, shared by any number of replicas) and [`memory::MemoryStore`]
//! (one process, nothing survives a restart).
//!
//! Every write that changes what data planes see bumps the global version and
//! appends exactly one [`Delta`] for that version to the change log.

pub mod memory;
pub mod redis;

use async_trait::async_trait;
use gateway_common::cache::CachePattern;
use gateway_common::config::Change as ConfigChange;
use gateway_common::registration::{Health, Instance, InstanceSpec, InstanceState};
use gateway_common::{ConfigError, GatewayConfig};
use gateway_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::Status;

/// Entries kept in the change log (approximately, for Redis: `MAXLEN ~`).
pub const CHANGE_LOG_LEN: usize = 10_000;

/// Prefix of the ids of static instances (declared in the config).
pub const STATIC_ID_PREFIX: &str = "static:";

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The backing store cannot be reached or did not answer in time.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The input breaks one or more rules; every reason is listed.
    #[error("{}", .0.join("; "))]
    Invalid(Vec<String>),
    /// The instance, lease or service does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The operation conflicts with the current state (e.g. an instance id
    /// registered under another service).
    #[error("{0}")]
    Conflict(String),
    /// A read-modify-write kept losing races with other writers.
    #[error("{0}")]
    Contended(String),
    /// The store holds data this version cannot read.
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
    /// This kind of store cannot do the operation (e.g. the response
    /// cache, which lives in Redis, with the in-memory store).
    #[error("{0}")]
    Unsupported(String),
}

impl From<ConfigError> for StoreError {
    fn from(e: ConfigError) -> Self {
        match e {
            ConfigError::Parse(reason) => StoreError::Invalid(vec![reason]),
            ConfigError::Invalid(reasons) => StoreError::Invalid(reasons),
        }
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => Status::unavailable(e.to_string()),
            StoreError::Invalid(_) => Status::invalid_argument(e.to_string()),
            StoreError::NotFound(_) => Status::not_found(e.to_string()),
            StoreError::Conflict(_) => Status::failed_precondition(e.to_string()),
            StoreError::Contended(_) => Status::aborted(e.to_string()),
            StoreError::Corrupt(_) => Status::internal(e.to_string()),
            StoreError::Unsupported(_) => Status::failed_precondition(e.to_string()),
        }
    }
}

/// One change-log entry's content: what changed at one version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    /// The new canonical config JSON, when the config changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// Instances added or changed.
    #[serde(default)]
    pub upserts: Vec<Instance>,
    /// Ids of instances removed.
    #[serde(default)]
    pub removals: Vec<String>,
    /// Lease TTL in ms of the registered instances this change created or
    /// re-registered with another spec (kept by the views so that a replica
    /// can write the leases back into a store that lost them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lease_ttls_ms: BTreeMap<String, u64>,
}

/// A change-log entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Version the entry produced.
    pub version: u64,
    /// Epoch the entry was written in, when recorded.
    pub epoch: Option<String>,
    /// What changed.
    pub delta: Delta,
}

/// Epoch and version of the store, read together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreHead {
    /// Current epoch; `None` when the store is empty (never written).
    pub epoch: Option<String>,
    /// Current version (0 when nothing was written).
    pub version: u64,
}

/// Everything data planes see, read at one version.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Epoch of the store's history.
    pub epoch: String,
    /// Version the snapshot was read at.
    pub version: u64,
    /// The config (the empty config when none was applied).
    pub config: GatewayConfig,
    /// Its canonical JSON.
    pub config_json: String,
    /// False when the store holds no config at all (never applied, or lost).
    pub configured: bool,
    /// Every instance.
    pub instances: Vec<Instance>,
    /// Lease TTL in ms of every registered instance.
    pub lease_ttls_ms: BTreeMap<String, u64>,
}

/// What a replica's view held, written back into a store that lost its
/// data ([`Store::seed`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Seed {
    /// Canonical JSON of the config.
    pub config_json: String,
    /// The view's version: the store's version never goes below it, so
    /// versions keep increasing across the loss.
    pub version: u64,
    /// Every instance the view held, static ones included.
    pub instances: Vec<SeedInstance>,
}

/// One instance of a [`Seed`].
#[derive(Debug, Clone, PartialEq)]
pub struct SeedInstance {
    /// The instance as the view held it (drain flag and health included).
    pub instance: Instance,
    /// Its lease TTL; `None` for a static instance (no lease).
    pub lease_ttl: Option<Duration>,
}

/// What [`Store::seed`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeedOutcome {
    /// The store held no config and now holds the seed, at `version`
    /// under the new `epoch`.
    Seeded {
        /// The new epoch.
        epoch: String,
        /// The version written.
        version: u64,
    },
    /// The store already holds a config (another replica seeded it, or an
    /// operator applied one): nothing was written.
    AlreadyConfigured,
}

/// Result of a config apply.
#[derive(Debug, Clone, PartialEq)]
pub struct ApplyOutcome {
    /// The version written, or the current one when nothing changed or on a dry run.
    pub version: u64,
    /// What differs between the previous and the new config.
    pub changes: Vec<ConfigChange>,
    /// True when the config was identical and no version was written.
    pub unchanged: bool,
    /// The config now in force (or that would be, on a dry run).
    pub config: GatewayConfig,
}

/// What a registration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterEffect {
    /// A new instance.
    Created,
    /// An existing instance whose spec changed.
    Updated,
    /// An identical spec: only the lease was renewed, no version written.
    Renewed,
}

/// Result of a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registered {
    /// What happened.
    pub effect: RegisterEffect,
    /// Version at which the registration is visible.
    pub version: u64,
}

/// Result of a deregistration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deregistered {
    /// False when the instance did not exist.
    pub removed: bool,
    /// Version written, or the current one when nothing was removed.
    pub version: u64,
}

/// Result of a drain flag change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateUpdate {
    /// The instance after the change.
    pub instance: Instance,
    /// Version at which the state is visible.
    pub version: u64,
    /// False when the flag already had the requested value.
    pub changed: bool,
}

/// Last active health check of an instance (kept out of the change log).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthRecord {
    /// When the check finished, unix ms.
    pub last_check_unix_ms: u64,
    /// Status code, or the error.
    pub result: String,
    /// Consecutive successful checks.
    pub consecutive_ok: u32,
    /// Consecutive failed checks.
    pub consecutive_fail: u32,
}

/// Lease and health-check details of instances, for operators.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceDetails {
    /// The store's clock when read, unix ms.
    pub now_unix_ms: u64,
    /// Lease expiry per instance id, unix ms (registered instances only).
    pub lease_expiry: HashMap<String, u64>,
    /// Last health check per instance id.
    pub health: HashMap<String, HealthRecord>,
}

impl InstanceDetails {
    /// The operator's view of one instance.
    pub fn status(&self, instance: &Instance) -> pb::InstanceStatus {
        let id = &instance.spec.id;
        let health = self.health.get(id);
        pb::InstanceStatus {
            instance: Some(instance.to_proto()),
            lease_remaining_ms: self
                .lease_expiry
                .get(id)
                .map_or(0, |expiry| expiry.saturating_sub(self.now_unix_ms)),
            last_check_unix_ms: health.map_or(0, |h| h.last_check_unix_ms),
            last_check_result: health.map(|h| h.result.clone()).unwrap_or_default(),
        }
    }
}

/// In-flight count of one instance as reported by a data plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    /// Instance id.
    pub instance_id: String,
    /// Requests in flight.
    pub in_flight: u64,
}

/// Circuit-breaker state of one service as reported by a data plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerStatus {
    /// Service name.
    pub service: String,
    /// `pb::BreakerState` as its integer value.
    pub state: i32,
}

/// What the control plane knows about one data plane (kept in the store so
/// that every replica can list every data plane).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPlaneRecord {
    /// The data plane's node id.
    pub node_id: String,
    /// Id of the Discovery stream that wrote the record.
    pub session: String,
    /// Control-plane replica the data plane is connected to.
    pub replica: String,
    /// Last acknowledged version.
    pub acked_version: u64,
    /// Last refused version, 0 when none.
    pub nacked_version: u64,
    /// Why it was refused.
    #[serde(default)]
    pub nack_reason: String,
    /// When the stream opened, unix ms.
    pub connected_at_unix_ms: u64,
    /// Last message from the data plane, unix ms.
    pub last_seen_unix_ms: u64,
    /// False once the stream ended.
    pub connected: bool,
    /// Reported in-flight counts.
    #[serde(default)]
    pub in_flight: Vec<InFlight>,
    /// Reported breaker states.
    #[serde(default)]
    pub breakers: Vec<BreakerStatus>,
    /// The build version its Hello carried.
    #[serde(default)]
    pub build_version: String,
}

/// A data plane not heard from for this long counts as disconnected.
pub const DATAPLANE_SILENCE: Duration = Duration::from_secs(15);

impl DataPlaneRecord {
    /// The wire form; `connected` is false when the data plane was silent
    /// for [`DATAPLANE_SILENCE`] at `now_unix_ms`.
    pub fn to_proto(&self, now_unix_ms: u64) -> pb::DataPlaneStatus {
        let silent = now_unix_ms.saturating_sub(self.last_seen_unix_ms)
            > DATAPLANE_SILENCE.as_millis() as u64;
        pb::DataPlaneStatus {
            node_id: self.node_id.clone(),
            replica: self.replica.clone(),
            acked_version: self.acked_version,
            nacked_version: self.nacked_version,
            nack_reason: self.nack_reason.clone(),
            connected_at_unix_ms: self.connected_at_unix_ms,
            last_seen_unix_ms: self.last_seen_unix_ms,
            connected: self.connected && !silent,
            build_version: self.build_version.clone(),
            in_flight: self
                .in_flight
                .iter()
                .map(|l| pb::InstanceLoad {
                    instance_id: l.instance_id.clone(),
                    in_flight: l.in_flight,
                })
                .collect(),
            breakers: self
                .breakers
                .iter()
                .map(|b| pb::ServiceBreakerState {
                    service: b.service.clone(),
                    state: b.state,
                })
                .collect(),
        }
    }
}

/// Builds the next config from the current one (for read-modify-write
/// changes such as `SetBreakerPolicy`).
pub type ConfigEdit<'a> =
    dyn Fn(&GatewayConfig) -> Result<GatewayConfig, StoreError> + Send + Sync + 'a;

/// The control plane's state, shared by every replica.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `"redis"` or `"memory"`.
    fn kind(&self) -> &'static str;

    /// Checks that the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Current epoch and version.
    async fn head(&self) -> Result<StoreHead, StoreError>;

    /// Reads a consistent snapshot (creates the epoch of an empty store).
    async fn snapshot(&self) -> Result<Snapshot, StoreError>;

    /// The current config and the version it was read at.
    async fn current_config(&self) -> Result<(GatewayConfig, u64), StoreError>;

    /// Change-log entries after `version` (at most `limit`, oldest first).
    /// A gap between `version` and the first entry means the log was trimmed.
    async fn changes_after(&self, version: u64, limit: usize) -> Result<Vec<Change>, StoreError>;

    /// Like [`Store::changes_after`], but waits up to `block` for an entry
    /// when there is none yet; an empty answer means nothing arrived.
    async fn wait_changes(
        &self,
        version: u64,
        limit: usize,
        block: Duration,
    ) -> Result<Vec<Change>, StoreError>;

    /// Replaces the config with what `edit` makes of the current one, after
    /// validating it whole, and materialises its static instances; all or
    /// nothing. With `dry_run` nothing is written.
    async fn update_config(
        &self,
        edit: &ConfigEdit<'_>,
        dry_run: bool,
    ) -> Result<ApplyOutcome, StoreError>;

    /// Registers an instance (the spec carries its id) with a lease of
    /// `ttl`. With `create_only` an existing id is a
    /// [`StoreError::Conflict`] whatever its service (for generated ids).
    async fn register(
        &self,
        spec: &InstanceSpec,
        ttl: Duration,
        create_only: bool,
    ) -> Result<Registered, StoreError>;

    /// Writes `seed` back into a store that holds no config, in one atomic
    /// step and under a new epoch: the config, the static instances and the
    /// registered ones with fresh leases of their TTL. Instances registered
    /// since the loss keep their spec and lease (the seed's drain flag
    /// carries over, and its health verdict when the spec is the same).
    /// A store that holds a config is left alone, so a store is seeded at
    /// most once per loss whatever the number of replicas trying.
    async fn seed(&self, seed: &Seed) -> Result<SeedOutcome, StoreError>;

    /// Renews a lease; `None` when the lease is unknown or already lapsed.
    async fn renew_lease(&self, id: &str) -> Result<Option<Duration>, StoreError>;

    /// Removes an instance and its lease (idempotent).
    async fn deregister(&self, id: &str) -> Result<Deregistered, StoreError>;

    /// Sets or clears the drain flag of an instance.
    async fn set_draining(&self, id: &str, draining: bool) -> Result<StateUpdate, StoreError>;

    /// Writes health verdicts in one version; `None` when none changed.
    async fn set_health(&self, verdicts: &[(String, Health)]) -> Result<Option<u64>, StoreError>;

    /// Removes up to `limit` instances whose lease lapsed, in one version;
    /// returns their ids.
    async fn expire_leases(&self, limit: usize) -> Result<Vec<String>, StoreError>;

    /// Records the last health checks (skipping instances that are gone).
    async fn record_health_checks(
        &self,
        records: &[(String, HealthRecord)],
    ) -> Result<(), StoreError>;

    /// Lease and health details of one instance, or of all when `id` is `None`.
    async fn instance_details(&self, id: Option<&str>) -> Result<InstanceDetails, StoreError>;

    /// Takes the leader lock if nobody holds it (or `replica` already does).
    async fn acquire_leader(&self, replica: &str, ttl: Duration) -> Result<bool, StoreError>;

    /// Extends the lock if `replica` still holds it.
    async fn renew_leader(&self, replica: &str, ttl: Duration) -> Result<bool, StoreError>;

    /// Releases the lock if `replica` holds it.
    async fn release_leader(&self, replica: &str) -> Result<(), StoreError>;

    /// The replica holding the leader lock.
    async fn leader(&self) -> Result<Option<String>, StoreError>;

    /// Stores a data plane's status.
    async fn record_dataplane(&self, record: &DataPlaneRecord) -> Result<(), StoreError>;

    /// Stores the status of several data planes at once (one round trip
    /// where the store allows it).
    async fn record_dataplanes(&self, records: &[DataPlaneRecord]) -> Result<(), StoreError> {
        for record in records {
            self.record_dataplane(record).await?;
        }
        Ok(())
    }

    /// Stores a data plane's final status unless a newer stream (another
    /// session id) already wrote one.
    async fn record_dataplane_gone(&self, record: &DataPlaneRecord) -> Result<(), StoreError>;

    /// Every recorded data plane.
    async fn list_dataplanes(&self) -> Result<Vec<DataPlaneRecord>, StoreError>;

    /// Forgets data planes.
    async fn forget_dataplanes(&self, node_ids: &[String]) -> Result<(), StoreError>;

    /// Removes the response-cache entries `pattern` covers and publishes
    /// the pattern to the data planes; returns how many were removed.
    async fn invalidate_cache(&self, _pattern: &CachePattern) -> Result<u64, StoreError> {
        Err(StoreError::Unsupported(NO_SHARED_CACHE.into()))
    }

    /// The response cache's statistics.
    async fn cache_stats(&self) -> Result<CacheStats, StoreError> {
        Err(StoreError::Unsupported(NO_SHARED_CACHE.into()))
    }

    /// Stores an API key's record under the SHA-256 of the key and pushes
    /// it to the data planes.
    async fn create_api_key(
        &self,
        _hash: &str,
        _record: &gateway_common::credentials::ApiKeyRecord,
    ) -> Result<(), StoreError> {
        Err(StoreError::Unsupported(NO_SHARED_CREDENTIALS.into()))
    }

    /// Removes the API key `id` and pushes its revocation; answers its record.
    async fn revoke_api_key(
        &self,
        _id: &str,
    ) -> Result<gateway_common::credentials::ApiKeyRecord, StoreError> {
        Err(StoreError::Unsupported(NO_SHARED_CREDENTIALS.into()))
    }

    /// Every API key's record (never a key).
    async fn list_api_keys(
        &self,
    ) -> Result<Vec<gateway_common::credentials::ApiKeyRecord>, StoreError> {
        Err(StoreError::Unsupported(NO_SHARED_CREDENTIALS.into()))
    }
}

const NO_SHARED_CREDENTIALS: &str = "API keys reach the data planes through Redis, and this control plane runs with the in-memory store: start it with REDIS_URL";

const NO_SHARED_CACHE: &str = "the response cache lives in Redis, and this control plane runs with the in-memory store: start it with REDIS_URL (the data planes' in-memory layers expire on their own within seconds)";

/// Statistics of the shared response cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Live entries.
    pub entries: u64,
    /// Hits summed over every data plane.
    pub hits: u64,
    /// Misses summed over every data plane.
    pub misses: u64,
    /// Answers stored.
    pub stores: u64,
    /// Memory Redis uses as a whole.
    pub redis_used_memory_bytes: u64,
    /// Memory of the index.
    pub index_bytes: u64,
}

/// Current time, unix ms.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Validates a candidate config and computes what applying it writes: the
/// changes, the canonical JSON, the static instances to upsert and the ids
/// of static instances that vanish.
pub(crate) struct ConfigPlan {
    pub config: GatewayConfig,
    pub json: String,
    pub changes: Vec<ConfigChange>,
    pub statics: Vec<InstanceSpec>,
    pub vanished_statics: Vec<String>,
}

impl ConfigPlan {
    pub(crate) fn new(current: &GatewayConfig, next: GatewayConfig) -> Result<Self, StoreError> {
        next.validate()?;
        let statics = gateway_common::registration::static_instances(&next);
        let vanished_statics = gateway_common::registration::static_instances(current)
            .into_iter()
            .map(|s| s.id)
            .filter(|id| !statics.iter().any(|s| &s.id == id))
            .collect();
        Ok(ConfigPlan {
            changes: current.diff(&next),
            json: next.to_json(),
            config: next,
            statics,
            vanished_statics,
        })
    }
}

/// Parses a stored canonical config (absent: the empty config).
pub(crate) fn parse_stored_config(json: Option<&str>) -> Result<GatewayConfig, StoreError> {
    match json {
        None => Ok(GatewayConfig::default()),
        Some(text) => GatewayConfig::from_json(text)
            .map_err(|e| StoreError::Corrupt(format!("stored config: {e}"))),
    }
}

/// The state of a newly registered or materialised instance.
pub(crate) fn initial_state() -> InstanceState {
    InstanceState::default()
}

/// Serializes to JSON; the store's types always serialize.
pub(crate) fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}
