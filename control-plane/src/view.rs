//! Each replica's in-memory view of what data planes see: the current
//! config and instances at one version, plus a bounded ring of the most
//! recent deltas so that data planes a few versions behind get only what
//! they miss.
//!
//! The view is loaded from a snapshot and then follows the store's change
//! log ([`follow`]). When the log cannot be followed (entries trimmed, the
//! store's epoch changed, the version went backwards) it reloads a snapshot
//! and bumps its generation, which makes every Discovery session send a
//! snapshot.
//!
//! A store that lost its data (Redis restarted empty) is never loaded over
//! a view that holds a config: the view keeps its state and writes it back
//! into the store ([`Store::seed`], at most once per loss whatever the
//! number of replicas), then loads the seeded store under its new epoch.

use crate::metrics::Metrics;
use crate::propagation::AppliedTimes;
use crate::store::{Change, Delta, Seed, SeedInstance, SeedOutcome, Snapshot, Store, StoreError};
use gateway_common::registration::{Instance, DEFAULT_LEASE_TTL};
use gateway_common::GatewayConfig;
use parking_lot::{RwLock, RwLockReadGuard};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Deltas kept in memory.
pub const RING_CAPACITY: usize = 10_000;
/// Most bytes of config JSON the ring holds (configs are the large deltas).
const RING_CONFIG_BYTES: usize = 64 << 20;
/// Change-log entries read back at a reload to refill the ring.
const HISTORY_ON_LOAD: u64 = 1_000;
/// Entries read per change-log poll.
const READ_BATCH: usize = 1_000;
/// How long one change-log read blocks before the store's head is checked.
const BLOCK: Duration = Duration::from_secs(1);

/// Identifies what a view holds: a generation (bumped by every snapshot
/// load) and a version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stamp {
    /// Snapshot loads so far.
    pub generation: u64,
    /// Current version.
    pub version: u64,
}

/// The state of a view at one version.
pub struct ViewState {
    epoch: String,
    version: u64,
    generation: u64,
    config: Arc<GatewayConfig>,
    config_json: Arc<str>,
    /// Whether the store held a config (one was applied).
    configured: bool,
    instances: BTreeMap<String, Instance>,
    /// Lease TTL in ms of the registered instances, as last recorded.
    lease_ttls_ms: HashMap<String, u64>,
    ring: VecDeque<(u64, Arc<Delta>)>,
    ring_config_bytes: usize,
    /// When the view applied each recent version from the change log.
    applied: AppliedTimes,
}

fn config_bytes(delta: &Delta) -> usize {
    delta.config.as_ref().map_or(0, String::len)
}

impl ViewState {
    /// Appends a delta, dropping the oldest ones beyond the bounds.
    fn push(&mut self, version: u64, delta: Arc<Delta>, capacity: usize) {
        self.ring_config_bytes += config_bytes(&delta);
        self.ring.push_back((version, delta));
        while self.ring.len() > capacity || self.ring_config_bytes > RING_CONFIG_BYTES {
            let Some((_, old)) = self.ring.pop_front() else {
                break;
            };
            self.ring_config_bytes -= config_bytes(&old);
        }
    }

    /// Epoch of the store's history.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Current version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Generation (snapshot loads so far).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Current config.
    pub fn config(&self) -> &Arc<GatewayConfig> {
        &self.config
    }

    /// Its canonical JSON.
    pub fn config_json(&self) -> &Arc<str> {
        &self.config_json
    }

    /// Every instance, by id.
    pub fn instances(&self) -> &BTreeMap<String, Instance> {
        &self.instances
    }

    /// Whether the view holds a config that was applied (false for a store
    /// that never held one).
    pub fn configured(&self) -> bool {
        self.configured
    }

    /// What to write back into a store that lost its data: `None` when the
    /// view holds no applied config (nothing worth keeping). A registered
    /// instance whose lease TTL was never recorded gets the default TTL.
    pub fn seed(&self) -> Option<Seed> {
        if !self.configured {
            return None;
        }
        let instances = self
            .instances
            .values()
            .map(|instance| SeedInstance {
                lease_ttl: (!instance.spec.static_instance).then(|| {
                    self.lease_ttls_ms
                        .get(&instance.spec.id)
                        .map_or(DEFAULT_LEASE_TTL, |ms| Duration::from_millis(*ms))
                }),
                instance: instance.clone(),
            })
            .collect();
        Some(Seed {
            config_json: self.config_json.to_string(),
            version: self.version,
            instances,
        })
    }

    /// When the view applied `version` from the change log; `None` for a
    /// version it loaded with a snapshot or no longer remembers.
    pub fn applied_at(&self, version: u64) -> Option<Instant> {
        self.applied.get(version)
    }

    /// The config JSON at `version`, if this view can tell: the current
    /// one when no change since `version` touched the config, else the
    /// last config the ring holds at or before `version`. `None` when the
    /// version is newer than the view or older than the ring can answer.
    pub fn config_json_at(&self, version: u64) -> Option<Arc<str>> {
        let since = self.deltas_between(version, self.version)?;
        if !since.iter().any(|d| d.config.is_some()) {
            return Some(self.config_json.clone());
        }
        self.ring
            .iter()
            .rev()
            .filter(|(v, _)| *v <= version)
            .find_map(|(_, d)| d.config.as_deref().map(Arc::from))
    }

    /// The deltas turning version `from` into version `to`, if the ring
    /// still holds all of them (an empty list when `from == to`).
    pub fn deltas_between(&self, from: u64, to: u64) -> Option<Vec<Arc<Delta>>> {
        if from == to {
            return Some(Vec::new());
        }
        if from > to || to > self.version {
            return None;
        }
        let first = self.ring.front()?.0;
        if from + 1 < first {
            return None;
        }
        let skip = (from + 1 - first) as usize;
        let count = (to - from) as usize;
        let deltas: Vec<Arc<Delta>> = self
            .ring
            .iter()
            .skip(skip)
            .take(count)
            .map(|(_, d)| d.clone())
            .collect();
        (deltas.len() == count).then_some(deltas)
    }
}

/// Why a change could not be applied on top of the view.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FollowError {
    /// The change log skipped versions (trimmed, or the store was reset).
    #[error("change log jumps from version {have} to {got}")]
    Gap {
        /// Version of the view.
        have: u64,
        /// Version of the entry read.
        got: u64,
    },
    /// An entry of another epoch: the store was reset.
    #[error("the store's epoch changed")]
    EpochChanged,
    /// A delta whose config does not load.
    #[error("change log holds an unreadable config at version {version}: {reason}")]
    BadConfig {
        /// Version of the entry.
        version: u64,
        /// Why.
        reason: String,
    },
}

/// A replica's view; see the module docs.
pub struct View {
    state: RwLock<ViewState>,
    stamp: watch::Sender<Stamp>,
    capacity: usize,
}

/// Merges consecutive deltas into one: the last config wins, and for each
/// instance id its last upsert or removal wins.
pub fn merge(deltas: &[Arc<Delta>]) -> Delta {
    if let [only] = deltas {
        return (**only).clone();
    }
    let mut config = None;
    let mut lease_ttls_ms = BTreeMap::new();
    let mut last: HashMap<&str, Option<&Instance>> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    for delta in deltas {
        if let Some(c) = &delta.config {
            config = Some(c.clone());
        }
        for id in &delta.removals {
            lease_ttls_ms.remove(id);
        }
        lease_ttls_ms.extend(delta.lease_ttls_ms.iter().map(|(k, v)| (k.clone(), *v)));
        let changes = delta
            .upserts
            .iter()
            .map(|i| (i.spec.id.as_str(), Some(i)))
            .chain(delta.removals.iter().map(|id| (id.as_str(), None)));
        for (id, change) in changes {
            if last.insert(id, change).is_none() {
                order.push(id);
            }
        }
    }
    let mut merged = Delta {
        config,
        lease_ttls_ms,
        ..Delta::default()
    };
    for id in order {
        match last.get(id) {
            Some(Some(instance)) => merged.upserts.push((*instance).clone()),
            Some(None) => merged.removals.push(id.to_string()),
            None => {}
        }
    }
    merged
}

impl View {
    /// A view holding `snapshot` (generation 1), keeping up to `capacity`
    /// deltas; `history` refills the ring as in [`View::load`].
    pub fn new(snapshot: Snapshot, history: Vec<Change>, capacity: usize) -> Arc<View> {
        let state = ViewState {
            epoch: String::new(),
            version: 0,
            generation: 0,
            config: Arc::new(GatewayConfig::default()),
            config_json: Arc::from(""),
            configured: false,
            instances: BTreeMap::new(),
            lease_ttls_ms: HashMap::new(),
            ring: VecDeque::new(),
            ring_config_bytes: 0,
            applied: AppliedTimes::default(),
        };
        let view = Arc::new(View {
            state: RwLock::new(state),
            stamp: watch::channel(Stamp::default()).0,
            capacity: capacity.max(1),
        });
        view.load(snapshot, history);
        view
    }

    /// Reads the current state. Do not hold the guard across an `.await`.
    pub fn read(&self) -> RwLockReadGuard<'_, ViewState> {
        self.state.read()
    }

    /// Current generation and version.
    pub fn stamp(&self) -> Stamp {
        *self.stamp.borrow()
    }

    /// Notified whenever the stamp changes.
    pub fn subscribe(&self) -> watch::Receiver<Stamp> {
        self.stamp.subscribe()
    }

    /// Waits until the view reaches `version` (or `timeout` passes);
    /// returns whether it did.
    pub async fn wait_for_version(&self, version: u64, timeout: Duration) -> bool {
        let mut rx = self.subscribe();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|s| s.version >= version)).await;
        matches!(reached, Ok(Ok(_)))
    }

    /// Waits (up to `timeout`) until the view holds every change the store
    /// had committed when called, and at least `version`: the view follows
    /// the change log a moment behind the store, and readers that must see
    /// an acknowledged write wait here first.
    pub async fn catch_up(
        &self,
        store: &dyn Store,
        version: u64,
        timeout: Duration,
    ) -> Result<(), StoreError> {
        let head = store.head().await?;
        self.wait_for_version(head.version.max(version), timeout)
            .await;
        Ok(())
    }

    /// Replaces everything with `snapshot` (a new generation). `history`
    /// refills the ring when it ends exactly at the snapshot's version.
    pub fn load(&self, snapshot: Snapshot, history: Vec<Change>) {
        let mut state = self.state.write();
        state.generation += 1;
        state.ring.clear();
        state.ring_config_bytes = 0;
        state.applied.clear();
        let consecutive = history.windows(2).all(|w| w[1].version == w[0].version + 1);
        let ends_at_snapshot = history.last().map(|c| c.version) == Some(snapshot.version);
        let same_epoch = history
            .iter()
            .all(|c| c.epoch.as_deref().is_none_or(|e| e == snapshot.epoch));
        if consecutive && ends_at_snapshot && same_epoch {
            for change in history {
                state.push(change.version, Arc::new(change.delta), self.capacity);
            }
        }
        state.epoch = snapshot.epoch;
        state.version = snapshot.version;
        state.config = Arc::new(snapshot.config);
        state.config_json = snapshot.config_json.into();
        state.configured = snapshot.configured;
        state.lease_ttls_ms = snapshot.lease_ttls_ms.into_iter().collect();
        state.instances = snapshot
            .instances
            .into_iter()
            .map(|i| (i.spec.id.clone(), i))
            .collect();
        let stamp = Stamp {
            generation: state.generation,
            version: state.version,
        };
        drop(state);
        self.stamp.send_replace(stamp);
    }

    /// Applies change-log entries in order. Entries at or below the current
    /// version are skipped; a gap, another epoch or an unreadable config
    /// stops (what was applied before stays).
    pub fn apply(&self, changes: Vec<Change>) -> Result<(), FollowError> {
        let mut state = self.state.write();
        let mut result = Ok(());
        let now = Instant::now();
        for change in changes {
            if change.version <= state.version {
                continue;
            }
            if change.version != state.version + 1 {
                result = Err(FollowError::Gap {
                    have: state.version,
                    got: change.version,
                });
                break;
            }
            if change.epoch.as_deref().is_some_and(|e| e != state.epoch) {
                result = Err(FollowError::EpochChanged);
                break;
            }
            let version = change.version;
            if let Err(e) = self.apply_one(&mut state, change) {
                result = Err(e);
                break;
            }
            state.applied.record(version, now);
        }
        let stamp = Stamp {
            generation: state.generation,
            version: state.version,
        };
        drop(state);
        self.stamp.send_if_modified(|s| {
            let modified = *s != stamp;
            *s = stamp;
            modified
        });
        result
    }

    fn apply_one(&self, state: &mut ViewState, change: Change) -> Result<(), FollowError> {
        if let Some(json) = &change.delta.config {
            let config = GatewayConfig::from_json(json).map_err(|e| FollowError::BadConfig {
                version: change.version,
                reason: e.to_string(),
            })?;
            state.config = Arc::new(config);
            state.config_json = json.as_str().into();
            state.configured = true;
        }
        for instance in &change.delta.upserts {
            state
                .instances
                .insert(instance.spec.id.clone(), instance.clone());
        }
        for (id, ttl) in &change.delta.lease_ttls_ms {
            state.lease_ttls_ms.insert(id.clone(), *ttl);
        }
        for id in &change.delta.removals {
            state.instances.remove(id);
            state.lease_ttls_ms.remove(id);
        }
        state.version = change.version;
        state.push(change.version, Arc::new(change.delta), self.capacity);
        Ok(())
    }
}

/// Loads a snapshot and the change-log entries just before it.
pub async fn load_snapshot(store: &dyn Store) -> Result<(Snapshot, Vec<Change>), StoreError> {
    let snapshot = store.snapshot().await?;
    let from = snapshot.version.saturating_sub(HISTORY_ON_LOAD);
    let history = store
        .changes_after(from, HISTORY_ON_LOAD as usize)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.version <= snapshot.version)
        .collect();
    Ok((snapshot, history))
}

/// Loads a snapshot of the store, unless the store lost its data (holds no
/// config) while the view holds one: then the view's state is written back
/// into the store, and the store is loaded again ([`Next::Reload`]), so that
/// the view never publishes the empty store.
async fn reload(view: &View, store: &dyn Store, metrics: &Metrics) -> Result<Next, StoreError> {
    let (snapshot, history) = load_snapshot(store).await?;
    if !snapshot.configured {
        let seed = view.read().seed();
        if let Some(seed) = seed {
            reseed(store, &seed, metrics).await?;
            return Ok(Next::Reload);
        }
    }
    tracing::info!(
        epoch = %snapshot.epoch,
        version = snapshot.version,
        instances = snapshot.instances.len(),
        "loaded a snapshot of the store"
    );
    view.load(snapshot, history);
    Ok(Next::Continue)
}

/// Writes `seed` into a store that lost its data (if no other replica or
/// operator apply got there first).
async fn reseed(store: &dyn Store, seed: &Seed, metrics: &Metrics) -> Result<(), StoreError> {
    match store.seed(seed).await? {
        SeedOutcome::Seeded { epoch, version } => {
            metrics.store_reseeds.inc();
            tracing::warn!(
                %epoch,
                version,
                instances = seed.instances.len(),
                "store lost its data; re-seeded version {version} under epoch {epoch} from this replica's view"
            );
        }
        SeedOutcome::AlreadyConfigured => tracing::info!(
            "the store lost its data and holds a config again (another replica re-seeded it, or one was applied); loading it"
        ),
    }
    Ok(())
}

/// What to do after one read of the change log.
enum Next {
    Continue,
    Reload,
}

async fn step(view: &View, store: &dyn Store) -> Result<Next, StoreError> {
    let version = view.stamp().version;
    let changes = store.wait_changes(version, READ_BATCH, BLOCK).await?;
    if changes.is_empty() {
        // Idle: make sure the store was not reset or rolled back meanwhile.
        let head = store.head().await?;
        let view_epoch = view.read().epoch().to_string();
        let reset = head.epoch.as_deref() != Some(view_epoch.as_str());
        if reset || head.version < view.stamp().version {
            tracing::warn!(
                store_version = head.version,
                view_version = view.stamp().version,
                "the store was reset or rolled back; reloading"
            );
            return Ok(Next::Reload);
        }
        return Ok(Next::Continue);
    }
    match view.apply(changes) {
        Ok(()) => Ok(Next::Continue),
        Err(e) => {
            tracing::warn!(error = %e, "cannot follow the change log; reloading a snapshot");
            Ok(Next::Reload)
        }
    }
}

/// Keeps `view` in step with the store's change log until `cancel` fires.
/// Store outages are retried with backoff; the view keeps its last state,
/// and writes it back into a store that comes back empty (see [`reload`]).
pub async fn follow(
    view: Arc<View>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut backoff = Duration::from_millis(100);
    let mut failing = false;
    let mut need_reload = false;
    loop {
        let attempt = async {
            if need_reload {
                reload(&view, store.as_ref(), &metrics).await
            } else {
                step(&view, store.as_ref()).await
            }
        };
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            outcome = attempt => outcome,
        };
        match outcome {
            Ok(next) => {
                if failing {
                    tracing::info!(version = view.stamp().version, "change log reachable again");
                }
                failing = false;
                backoff = Duration::from_millis(100);
                need_reload = matches!(next, Next::Reload);
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot read the change log; retrying");
                }
                failing = true;
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_common::registration::{InstanceSpec, InstanceState};

    fn instance(id: &str, port: u16) -> Instance {
        Instance {
            spec: InstanceSpec {
                id: id.into(),
                service: "svc".into(),
                address: "10.0.0.1".into(),
                port,
                health_path: String::new(),
                weight: 1,
                zone: String::new(),
                metadata: Default::default(),
                static_instance: false,
                tls: false,
            },
            state: InstanceState::default(),
        }
    }

    fn snapshot(version: u64) -> Snapshot {
        Snapshot {
            epoch: "e1".into(),
            version,
            config: GatewayConfig::default(),
            config_json: GatewayConfig::default().to_json(),
            configured: false,
            instances: vec![],
            lease_ttls_ms: Default::default(),
        }
    }

    fn change(version: u64, delta: Delta) -> Change {
        Change {
            version,
            epoch: Some("e1".into()),
            delta,
        }
    }

    fn upsert(version: u64, id: &str, port: u16) -> Change {
        change(
            version,
            Delta {
                upserts: vec![instance(id, port)],
                ..Delta::default()
            },
        )
    }

    fn removal(version: u64, id: &str) -> Change {
        change(
            version,
            Delta {
                removals: vec![id.into()],
                ..Delta::default()
            },
        )
    }

    #[test]
    fn merge_keeps_the_last_change_of_each_instance() {
        let deltas: Vec<Arc<Delta>> = [
            upsert(1, "a", 1),
            upsert(2, "b", 1),
            removal(3, "a"),
            upsert(4, "b", 2),
            removal(5, "c"),
            upsert(6, "c", 3),
        ]
        .into_iter()
        .map(|c| Arc::new(c.delta))
        .collect();
        let merged = merge(&deltas);
        let ups: Vec<(String, u16)> = merged
            .upserts
            .iter()
            .map(|i| (i.spec.id.clone(), i.spec.port))
            .collect();
        assert_eq!(ups, vec![("b".into(), 2), ("c".into(), 3)]);
        assert_eq!(merged.removals, vec!["a".to_string()]);
        assert_eq!(merged.config, None);
    }

    #[test]
    fn merge_takes_the_last_config() {
        let deltas = vec![
            Arc::new(Delta {
                config: Some("one".into()),
                ..Delta::default()
            }),
            Arc::new(Delta::default()),
            Arc::new(Delta {
                config: Some("two".into()),
                ..Delta::default()
            }),
        ];
        assert_eq!(merge(&deltas).config.as_deref(), Some("two"));
    }

    #[test]
    fn merge_and_apply_keep_the_lease_ttls_of_instances_still_there() {
        let registered = |version, id: &str, ttl| {
            let mut c = upsert(version, id, 1);
            c.delta.lease_ttls_ms.insert(id.to_string(), ttl);
            c
        };
        let changes = vec![
            registered(1, "a", 1_000),
            registered(2, "b", 2_000),
            removal(3, "a"),
            registered(4, "b", 3_000),
        ];
        let deltas: Vec<Arc<Delta>> = changes.iter().map(|c| Arc::new(c.delta.clone())).collect();
        assert_eq!(
            merge(&deltas).lease_ttls_ms,
            BTreeMap::from([("b".to_string(), 3_000)])
        );
        let view = View::new(snapshot(0), vec![], 10);
        view.apply(changes).unwrap();
        let seed = view.read().seed();
        assert!(seed.is_none(), "no config applied: nothing to write back");
        assert_eq!(
            view.read().lease_ttls_ms,
            HashMap::from([("b".to_string(), 3_000)])
        );
    }

    #[test]
    fn a_seed_holds_every_instance_with_its_recorded_lease_ttl() {
        let mut held = snapshot(5);
        held.configured = true;
        let mut fixed = instance("static:svc:10.0.0.1:3", 3);
        fixed.spec.static_instance = true;
        held.instances = vec![instance("a", 1), instance("b", 2), fixed];
        held.lease_ttls_ms = BTreeMap::from([("b".to_string(), 2_000)]);
        let view = View::new(held, vec![], 10);
        let seed = view.read().seed().expect("configured");
        assert_eq!(seed.version, 5);
        let ttls: Vec<(&str, Option<Duration>)> = seed
            .instances
            .iter()
            .map(|s| (s.instance.spec.id.as_str(), s.lease_ttl))
            .collect();
        assert_eq!(
            ttls,
            vec![
                ("a", Some(DEFAULT_LEASE_TTL)),
                ("b", Some(Duration::from_secs(2))),
                ("static:svc:10.0.0.1:3", None)
            ],
            "unrecorded: the default TTL; static: no lease"
        );
    }

    #[test]
    fn applies_consecutive_changes_and_keeps_a_bounded_ring() {
        let view = View::new(snapshot(0), vec![], 3);
        view.apply((1..=5).map(|v| upsert(v, &format!("i{v}"), 1)).collect())
            .unwrap();
        let state = view.read();
        assert_eq!(state.version(), 5);
        assert_eq!(state.instances().len(), 5);
        assert!(state.deltas_between(2, 5).is_some());
        assert!(state.deltas_between(1, 5).is_none(), "trimmed");
        assert_eq!(state.deltas_between(5, 5), Some(vec![]));
        assert!(state.deltas_between(5, 6).is_none(), "future");
    }

    #[test]
    fn the_config_at_an_older_version_comes_from_the_ring() {
        let view = View::new(snapshot(0), vec![], 10);
        let a = GatewayConfig::default().to_json();
        let b = GatewayConfig::load(
            b"version: 1\nservices:\n  - name: echo\n    instances: [\"http://127.0.0.1:8081\"]\n",
        )
        .unwrap()
        .to_json();
        let config = |v, json: &str| {
            change(
                v,
                Delta {
                    config: Some(json.to_string()),
                    ..Delta::default()
                },
            )
        };
        view.apply(vec![
            config(1, &a),
            upsert(2, "i", 1),
            config(3, &b),
            upsert(4, "j", 1),
        ])
        .unwrap();
        let state = view.read();
        let at = |v| state.config_json_at(v).map(|j| j.to_string());
        assert_eq!(at(4).as_deref(), Some(b.as_str()));
        assert_eq!(at(3).as_deref(), Some(b.as_str()));
        assert_eq!(at(2).as_deref(), Some(a.as_str()));
        assert_eq!(at(1).as_deref(), Some(a.as_str()));
        assert_eq!(at(0), None, "before the ring's first config");
        assert_eq!(at(5), None, "newer than the view");
    }

    #[test]
    fn the_ring_holds_a_bounded_amount_of_config() {
        let view = View::new(snapshot(0), vec![], 1_000);
        let big = GatewayConfig::default().to_json() + &" ".repeat(RING_CONFIG_BYTES / 3);
        let changes = (1..=4)
            .map(|v| {
                change(
                    v,
                    Delta {
                        config: Some(big.clone()),
                        ..Delta::default()
                    },
                )
            })
            .collect();
        view.apply(changes).unwrap();
        let state = view.read();
        assert!(state.deltas_between(2, 4).is_some());
        assert!(
            state.deltas_between(0, 4).is_none(),
            "oldest configs dropped"
        );
    }

    #[test]
    fn a_gap_or_another_epoch_is_refused() {
        let view = View::new(snapshot(0), vec![], 10);
        let err = view.apply(vec![upsert(1, "a", 1), upsert(3, "b", 1)]);
        assert_eq!(err, Err(FollowError::Gap { have: 1, got: 3 }));
        assert_eq!(view.stamp().version, 1, "what came before the gap stays");
        let mut other = upsert(2, "c", 1);
        other.epoch = Some("e2".into());
        assert_eq!(view.apply(vec![other]), Err(FollowError::EpochChanged));
        assert_eq!(
            view.apply(vec![upsert(1, "a", 1)]),
            Ok(()),
            "duplicates skipped"
        );
    }

    #[test]
    fn a_bad_config_in_the_log_is_refused() {
        let view = View::new(snapshot(0), vec![], 10);
        let bad = change(
            1,
            Delta {
                config: Some("{\"version\":7}".into()),
                ..Delta::default()
            },
        );
        assert!(matches!(
            view.apply(vec![bad]),
            Err(FollowError::BadConfig { version: 1, .. })
        ));
        assert_eq!(view.stamp().version, 0);
    }

    #[test]
    fn loading_a_snapshot_bumps_the_generation_and_refills_the_ring() {
        let view = View::new(snapshot(0), vec![], 10);
        let before = view.stamp();
        let history: Vec<Change> = (4..=6).map(|v| upsert(v, "x", v as u16)).collect();
        view.load(snapshot(6), history);
        let after = view.stamp();
        assert_eq!(after.generation, before.generation + 1);
        assert_eq!(after.version, 6);
        assert!(view.read().deltas_between(3, 6).is_some());
        // History that does not end at the snapshot is not used.
        view.load(snapshot(9), (4..=6).map(|v| upsert(v, "x", 1)).collect());
        assert!(view.read().deltas_between(8, 9).is_none());
    }

    #[tokio::test]
    async fn waits_for_a_version() {
        let view = View::new(snapshot(0), vec![], 10);
        assert!(!view.wait_for_version(1, Duration::from_millis(20)).await);
        let v = view.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            v.apply(vec![upsert(1, "a", 1)]).unwrap();
        });
        assert!(view.wait_for_version(1, Duration::from_secs(2)).await);
    }

    fn memory_store() -> crate::store::memory::MemoryStore {
        crate::store::memory::MemoryStore::new()
    }

    const CONFIG: &str = "version: 1\nservices:\n  - name: svc\nroutes:\n  - name: svc\n    match: { path_prefix: /svc }\n    service: svc\n";

    #[tokio::test]
    async fn a_view_holding_a_config_seeds_a_lost_store_instead_of_loading_it() {
        let live = memory_store();
        let config = GatewayConfig::load(CONFIG.as_bytes()).unwrap();
        live.update_config(&|_| Ok(config.clone()), false)
            .await
            .unwrap();
        let ttl = Duration::from_secs(60);
        live.register(&instance("a", 1).spec, ttl, false)
            .await
            .unwrap();
        let (snapshot, history) = load_snapshot(&live).await.unwrap();
        let view = View::new(snapshot, history, 10);
        let before = view.stamp();
        let mut stamps = view.subscribe();
        stamps.borrow_and_update();
        let metrics = Metrics::new();

        let lost = memory_store();
        let next = reload(&view, &lost, &metrics).await.unwrap();
        assert!(matches!(next, Next::Reload), "seeded, then loads again");
        assert!(
            !stamps.has_changed().unwrap(),
            "the empty store is never published"
        );
        assert_eq!(metrics.store_reseeds.get(), 1);

        let next = reload(&view, &lost, &metrics).await.unwrap();
        assert!(matches!(next, Next::Continue));
        let lost_epoch = lost.head().await.unwrap().epoch;
        let live_epoch = live.head().await.unwrap().epoch;
        let state = view.read();
        assert_eq!(Some(state.epoch()), lost_epoch.as_deref());
        assert_ne!(Some(state.epoch()), live_epoch.as_deref());
        assert_eq!(state.version(), before.version + 1);
        assert_eq!(state.generation(), before.generation + 1);
        assert_eq!(state.config().as_ref(), &config);
        assert_eq!(state.instances().len(), 1);
        assert_eq!(metrics.store_reseeds.get(), 1, "seeded once");
    }

    #[tokio::test]
    async fn a_view_without_a_config_loads_an_empty_store_as_before() {
        let first = memory_store();
        first
            .register(&instance("a", 1).spec, Duration::from_secs(60), false)
            .await
            .unwrap();
        let (snapshot, history) = load_snapshot(&first).await.unwrap();
        let view = View::new(snapshot, history, 10);
        assert!(view.read().seed().is_none(), "nothing worth keeping");
        let metrics = Metrics::new();
        let empty = memory_store();
        let next = reload(&view, &empty, &metrics).await.unwrap();
        assert!(matches!(next, Next::Continue));
        assert!(view.read().instances().is_empty());
        assert!(
            !empty.snapshot().await.unwrap().configured,
            "nothing written"
        );
        assert_eq!(metrics.store_reseeds.get(), 0);
    }
}
