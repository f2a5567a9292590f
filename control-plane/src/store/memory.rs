//! The in-process [`Store`]: same semantics as the Redis store, for a single
//! replica (`gwctl dev`, tests). Nothing survives a restart.

use super::{
    initial_state, unix_ms, ApplyOutcome, Change, ConfigEdit, ConfigPlan, DataPlaneRecord, Delta,
    Deregistered, HealthRecord, InstanceDetails, RegisterEffect, Registered, Seed, SeedOutcome,
    Snapshot, StateUpdate, Store, StoreError, StoreHead, CHANGE_LOG_LEN,
};
use async_trait::async_trait;
use gateway_common::registration::{Health, Instance, InstanceSpec, InstanceState};
use gateway_common::GatewayConfig;
use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, Clone, Copy)]
struct Lease {
    expiry_ms: u64,
    ttl_ms: u64,
}

struct State {
    epoch: String,
    version: u64,
    config: GatewayConfig,
    config_json: Option<String>,
    specs: HashMap<String, InstanceSpec>,
    states: HashMap<String, InstanceState>,
    leases: HashMap<String, Lease>,
    lease_order: BTreeSet<(u64, String)>,
    health: HashMap<String, HealthRecord>,
    log: VecDeque<Change>,
    leader: Option<(String, u64)>,
    dataplanes: HashMap<String, DataPlaneRecord>,
}

impl State {
    fn instance(&self, id: &str) -> Option<Instance> {
        Some(Instance {
            spec: self.specs.get(id)?.clone(),
            state: self.states.get(id).copied().unwrap_or_default(),
        })
    }

    fn set_lease(&mut self, id: &str, lease: Lease) {
        self.drop_lease(id);
        self.lease_order.insert((lease.expiry_ms, id.to_string()));
        self.leases.insert(id.to_string(), lease);
    }

    fn drop_lease(&mut self, id: &str) {
        if let Some(old) = self.leases.remove(id) {
            self.lease_order.remove(&(old.expiry_ms, id.to_string()));
        }
    }

    fn forget(&mut self, id: &str) -> bool {
        self.states.remove(id);
        self.health.remove(id);
        self.drop_lease(id);
        self.specs.remove(id).is_some()
    }

    fn commit(&mut self, delta: Delta) -> u64 {
        self.version += 1;
        self.log.push_back(Change {
            version: self.version,
            epoch: Some(self.epoch.clone()),
            delta,
        });
        while self.log.len() > CHANGE_LOG_LEN {
            self.log.pop_front();
        }
        self.version
    }

    /// [`Store::seed`] into a state that holds no config.
    fn seed(&mut self, config: GatewayConfig, seed: &Seed) -> SeedOutcome {
        self.epoch = uuid::Uuid::new_v4().to_string();
        self.log.clear();
        self.version = self.version.max(seed.version);
        self.config = config;
        self.config_json = Some(seed.config_json.clone());
        let now = unix_ms();
        for s in &seed.instances {
            let id = &s.instance.spec.id;
            match self.specs.get(id) {
                None => {
                    self.specs.insert(id.clone(), s.instance.spec.clone());
                    self.states.insert(id.clone(), s.instance.state);
                    if let Some(ttl) = s.lease_ttl {
                        let ttl_ms = ttl.as_millis().max(1) as u64;
                        let expiry_ms = now + ttl_ms;
                        self.set_lease(id, Lease { expiry_ms, ttl_ms });
                    }
                }
                Some(current) => {
                    let same_spec = *current == s.instance.spec;
                    let kept = self.states.entry(id.clone()).or_insert_with(initial_state);
                    if same_spec {
                        kept.health = s.instance.state.health;
                    }
                    kept.draining |= s.instance.state.draining;
                }
            }
        }
        let mut upserts: Vec<Instance> = self
            .specs
            .keys()
            .filter_map(|id| self.instance(id))
            .collect();
        upserts.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
        let version = self.commit(Delta {
            config: Some(seed.config_json.clone()),
            upserts,
            removals: Vec::new(),
            lease_ttls_ms: self
                .leases
                .iter()
                .map(|(id, l)| (id.clone(), l.ttl_ms))
                .collect(),
        });
        SeedOutcome::Seeded {
            epoch: self.epoch.clone(),
            version,
        }
    }

    fn changes_after(&self, version: u64, limit: usize) -> Vec<Change> {
        // The log holds consecutive versions ending at `self.version`.
        let first = self.version + 1 - self.log.len() as u64;
        let skip = (version + 1).saturating_sub(first) as usize;
        self.log.iter().skip(skip).take(limit).cloned().collect()
    }
}

/// [`Store`] in process memory.
pub struct MemoryStore {
    state: Mutex<State>,
    version_tx: watch::Sender<u64>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store with a fresh epoch.
    pub fn new() -> Self {
        MemoryStore {
            state: Mutex::new(State {
                epoch: uuid::Uuid::new_v4().to_string(),
                version: 0,
                config: GatewayConfig::default(),
                config_json: None,
                specs: HashMap::new(),
                states: HashMap::new(),
                leases: HashMap::new(),
                lease_order: BTreeSet::new(),
                health: HashMap::new(),
                log: VecDeque::new(),
                leader: None,
                dataplanes: HashMap::new(),
            }),
            version_tx: watch::channel(0).0,
        }
    }

    /// Runs a mutation and wakes change-log readers when it wrote a version.
    fn mutate<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self.state.lock();
        let before = state.version;
        let out = f(&mut state);
        if state.version != before {
            self.version_tx.send_replace(state.version);
        }
        out
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn head(&self) -> Result<StoreHead, StoreError> {
        let state = self.state.lock();
        Ok(StoreHead {
            epoch: Some(state.epoch.clone()),
            version: state.version,
        })
    }

    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let state = self.state.lock();
        let mut instances: Vec<Instance> = state
            .specs
            .keys()
            .filter_map(|id| state.instance(id))
            .collect();
        instances.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
        Ok(Snapshot {
            epoch: state.epoch.clone(),
            version: state.version,
            config: state.config.clone(),
            config_json: state.config.to_json(),
            configured: state.config_json.is_some(),
            instances,
            lease_ttls_ms: state
                .leases
                .iter()
                .map(|(id, lease)| (id.clone(), lease.ttl_ms))
                .collect(),
        })
    }

    async fn current_config(&self) -> Result<(GatewayConfig, u64), StoreError> {
        let state = self.state.lock();
        Ok((state.config.clone(), state.version))
    }

    async fn changes_after(&self, version: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
        Ok(self.state.lock().changes_after(version, limit))
    }

    async fn wait_changes(
        &self,
        version: u64,
        limit: usize,
        block: Duration,
    ) -> Result<Vec<Change>, StoreError> {
        let mut rx = self.version_tx.subscribe();
        let deadline = tokio::time::Instant::now() + block;
        loop {
            rx.borrow_and_update();
            let changes = self.state.lock().changes_after(version, limit);
            if !changes.is_empty() {
                return Ok(changes);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return Ok(Vec::new()),
            }
        }
    }

    async fn update_config(
        &self,
        edit: &ConfigEdit<'_>,
        dry_run: bool,
    ) -> Result<ApplyOutcome, StoreError> {
        let mut state = self.state.lock();
        let plan = ConfigPlan::new(&state.config, edit(&state.config)?)?;
        let unchanged = state.config_json.as_deref() == Some(plan.json.as_str());
        if dry_run || unchanged {
            return Ok(ApplyOutcome {
                version: state.version,
                changes: plan.changes,
                unchanged,
                config: plan.config,
            });
        }
        let mut delta = Delta {
            config: Some(plan.json.clone()),
            ..Delta::default()
        };
        for spec in &plan.statics {
            if state.specs.get(&spec.id) != Some(spec) {
                state.specs.insert(spec.id.clone(), spec.clone());
                let st = *state
                    .states
                    .entry(spec.id.clone())
                    .or_insert_with(initial_state);
                delta.upserts.push(Instance {
                    spec: spec.clone(),
                    state: st,
                });
            }
        }
        for id in &plan.vanished_statics {
            if state.forget(id) {
                delta.removals.push(id.clone());
            }
        }
        state.config = plan.config.clone();
        state.config_json = Some(plan.json);
        let version = state.commit(delta);
        drop(state);
        self.version_tx.send_replace(version);
        Ok(ApplyOutcome {
            version,
            changes: plan.changes,
            unchanged: false,
            config: plan.config,
        })
    }

    async fn register(
        &self,
        spec: &InstanceSpec,
        ttl: Duration,
        create_only: bool,
    ) -> Result<Registered, StoreError> {
        self.mutate(|state| {
            let current = state.specs.get(&spec.id).cloned();
            if create_only && current.is_some() {
                return Err(StoreError::Conflict(format!(
                    "instance id {:?} is taken",
                    spec.id
                )));
            }
            if let Some(current) = &current {
                if current.service != spec.service {
                    return Err(StoreError::Conflict(format!(
                        "instance id {:?} is registered for service {:?}",
                        spec.id, current.service
                    )));
                }
            }
            let ttl_ms = ttl.as_millis().max(1) as u64;
            state.set_lease(
                &spec.id,
                Lease {
                    expiry_ms: unix_ms() + ttl_ms,
                    ttl_ms,
                },
            );
            if current.as_ref() == Some(spec) {
                return Ok(Registered {
                    effect: RegisterEffect::Renewed,
                    version: state.version,
                });
            }
            let mut new_state = initial_state();
            if current.is_some() {
                new_state.draining = state.states.get(&spec.id).is_some_and(|s| s.draining);
                state.health.remove(&spec.id);
            }
            state.specs.insert(spec.id.clone(), spec.clone());
            state.states.insert(spec.id.clone(), new_state);
            let version = state.commit(Delta {
                upserts: vec![Instance {
                    spec: spec.clone(),
                    state: new_state,
                }],
                lease_ttls_ms: [(spec.id.clone(), ttl_ms)].into(),
                ..Delta::default()
            });
            Ok(Registered {
                effect: if current.is_some() {
                    RegisterEffect::Updated
                } else {
                    RegisterEffect::Created
                },
                version,
            })
        })
    }

    async fn seed(&self, seed: &Seed) -> Result<SeedOutcome, StoreError> {
        // This store loses its data only with its process (and its view):
        // the method exists for the trait's sake, with the Redis semantics.
        let config = GatewayConfig::from_json(&seed.config_json)
            .map_err(|e| StoreError::Invalid(vec![format!("seed config: {e}")]))?;
        Ok(self.mutate(|state| {
            if state.config_json.is_some() {
                return SeedOutcome::AlreadyConfigured;
            }
            state.seed(config, seed)
        }))
    }

    async fn renew_lease(&self, id: &str) -> Result<Option<Duration>, StoreError> {
        let mut state = self.state.lock();
        let now = unix_ms();
        match state.leases.get(id).copied() {
            Some(lease) if lease.expiry_ms > now => {
                state.set_lease(
                    id,
                    Lease {
                        expiry_ms: now + lease.ttl_ms,
                        ttl_ms: lease.ttl_ms,
                    },
                );
                Ok(Some(Duration::from_millis(lease.ttl_ms)))
            }
            _ => Ok(None),
        }
    }

    async fn deregister(&self, id: &str) -> Result<Deregistered, StoreError> {
        Ok(self.mutate(|state| {
            if !state.forget(id) {
                return Deregistered {
                    removed: false,
                    version: state.version,
                };
            }
            let version = state.commit(Delta {
                removals: vec![id.to_string()],
                ..Delta::default()
            });
            Deregistered {
                removed: true,
                version,
            }
        }))
    }

    async fn set_draining(&self, id: &str, draining: bool) -> Result<StateUpdate, StoreError> {
        self.mutate(|state| {
            let mut instance = state
                .instance(id)
                .ok_or_else(|| StoreError::NotFound(format!("no instance {id:?}")))?;
            if instance.state.draining == draining {
                return Ok(StateUpdate {
                    instance,
                    version: state.version,
                    changed: false,
                });
            }
            instance.state.draining = draining;
            state.states.insert(id.to_string(), instance.state);
            let version = state.commit(Delta {
                upserts: vec![instance.clone()],
                ..Delta::default()
            });
            Ok(StateUpdate {
                instance,
                version,
                changed: true,
            })
        })
    }

    async fn set_health(&self, verdicts: &[(String, Health)]) -> Result<Option<u64>, StoreError> {
        Ok(self.mutate(|state| {
            let mut upserts = Vec::new();
            for (id, health) in verdicts {
                let Some(mut instance) = state.instance(id) else {
                    continue;
                };
                if instance.state.health != *health {
                    instance.state.health = *health;
                    state.states.insert(id.clone(), instance.state);
                    upserts.push(instance);
                }
            }
            if upserts.is_empty() {
                return None;
            }
            Some(state.commit(Delta {
                upserts,
                ..Delta::default()
            }))
        }))
    }

    async fn expire_leases(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        Ok(self.mutate(|state| {
            let now = unix_ms();
            let due: Vec<String> = state
                .lease_order
                .iter()
                .take_while(|(expiry, _)| *expiry <= now)
                .take(limit)
                .map(|(_, id)| id.clone())
                .collect();
            let removed: Vec<String> = due.into_iter().filter(|id| state.forget(id)).collect();
            if !removed.is_empty() {
                state.commit(Delta {
                    removals: removed.clone(),
                    ..Delta::default()
                });
            }
            removed
        }))
    }

    async fn record_health_checks(
        &self,
        records: &[(String, HealthRecord)],
    ) -> Result<(), StoreError> {
        let mut state = self.state.lock();
        for (id, record) in records {
            if state.specs.contains_key(id) {
                state.health.insert(id.clone(), record.clone());
            }
        }
        Ok(())
    }

    async fn instance_details(&self, id: Option<&str>) -> Result<InstanceDetails, StoreError> {
        let state = self.state.lock();
        let wanted = |key: &String| id.is_none_or(|id| id == key);
        Ok(InstanceDetails {
            now_unix_ms: unix_ms(),
            lease_expiry: state
                .leases
                .iter()
                .filter(|(k, _)| wanted(k))
                .map(|(k, l)| (k.clone(), l.expiry_ms))
                .collect(),
            health: state
                .health
                .iter()
                .filter(|(k, _)| wanted(k))
                .map(|(k, h)| (k.clone(), h.clone()))
                .collect(),
        })
    }

    async fn acquire_leader(&self, replica: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut state = self.state.lock();
        let now = unix_ms();
        let free = match &state.leader {
            None => true,
            Some((holder, expiry)) => *expiry <= now || holder == replica,
        };
        if free {
            state.leader = Some((replica.to_string(), now + ttl.as_millis() as u64));
        }
        Ok(free)
    }

    async fn renew_leader(&self, replica: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut state = self.state.lock();
        let now = unix_ms();
        match &mut state.leader {
            Some((holder, expiry)) if holder == replica && *expiry > now => {
                *expiry = now + ttl.as_millis() as u64;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release_leader(&self, replica: &str) -> Result<(), StoreError> {
        let mut state = self.state.lock();
        if state.leader.as_ref().is_some_and(|(h, _)| h == replica) {
            state.leader = None;
        }
        Ok(())
    }

    async fn leader(&self) -> Result<Option<String>, StoreError> {
        let state = self.state.lock();
        let now = unix_ms();
        Ok(state
            .leader
            .as_ref()
            .filter(|(_, expiry)| *expiry > now)
            .map(|(holder, _)| holder.clone()))
    }

    async fn record_dataplane(&self, record: &DataPlaneRecord) -> Result<(), StoreError> {
        self.state
            .lock()
            .dataplanes
            .insert(record.node_id.clone(), record.clone());
        Ok(())
    }

    async fn record_dataplane_gone(&self, record: &DataPlaneRecord) -> Result<(), StoreError> {
        let mut state = self.state.lock();
        let newer = state
            .dataplanes
            .get(&record.node_id)
            .is_some_and(|r| r.session != record.session);
        if !newer {
            state
                .dataplanes
                .insert(record.node_id.clone(), record.clone());
        }
        Ok(())
    }

    async fn list_dataplanes(&self) -> Result<Vec<DataPlaneRecord>, StoreError> {
        let mut records: Vec<DataPlaneRecord> =
            self.state.lock().dataplanes.values().cloned().collect();
        records.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(records)
    }

    async fn forget_dataplanes(&self, node_ids: &[String]) -> Result<(), StoreError> {
        let mut state = self.state.lock();
        for id in node_ids {
            state.dataplanes.remove(id);
        }
        Ok(())
    }
}
