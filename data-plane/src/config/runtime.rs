//! The routing state of a data plane: an immutable [`Snapshot`] read
//! lock-free by every request, replaced whole by each config update.
//!
//! Updates are built off the hot path under a mutex (only the updater takes
//! it) and published with one atomic pointer swap. An update that only
//! touches instances rebuilds only the services it touches; the others are
//! shared with the previous snapshot, so the cost follows the change, not the
//! fleet. In-flight counters live with the instance and survive every swap.

use crate::config::routing::{PathRewrite, Router};
pub use crate::config::source::ConfigSource;
use crate::ops::metrics::{Metrics, RouteMetrics, UpdateResult};
pub use crate::policy::pipeline::{Pipeline, RouteAuth};
use crate::policy::RouteContext;
use crate::rolling::now_ms;
use crate::upstream::balancer::{Balancer, Endpoint, InstanceLoad};
use crate::upstream::breaker::{BreakerState, CircuitBreaker, Fallback};
use crate::upstream::deadline::EndpointTimeouts;
use crate::upstream::outlier::OutlierDetector;
use crate::upstream::pool::ConnPool;
use crate::upstream::retry::RetryPolicy;
pub use crate::upstream::service::ServiceRuntime;
use crate::upstream::service::{CurrentServices, Services};
use crate::upstream::tls::{self, UpstreamTls};
use arc_swap::{ArcSwap, Guard};
use gateway_common::config::{ConfigError, ServiceConfig};
use gateway_common::registration::Instance;
use gateway_common::routing::RouteConflict;
use gateway_common::GatewayConfig;
use gateway_proto::v1 as pb;
use http::uri::Authority;
use http::HeaderValue;
use rustls::pki_types::ServerName;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Hands memory freed after a large update back to the OS; installed by the
/// binary, which chose the allocator.
static RELEASE_MEMORY: OnceLock<fn()> = OnceLock::new();

/// Installs the function that returns freed memory to the OS after a large
/// update (a snapshot frees about as much as it holds once applied).
pub fn set_memory_release(release: fn()) {
    let _ = RELEASE_MEMORY.set(release);
}

/// Returns freed memory to the OS, if the binary said how.
pub fn release_memory() {
    if let Some(release) = RELEASE_MEMORY.get() {
        release();
    }
}

/// A route as the proxy uses it, everything precomputed.
#[derive(Debug)]
pub struct RouteRuntime {
    /// Route name.
    pub name: Arc<String>,
    /// Target service name.
    pub service_name: Arc<String>,
    /// Index of the target service in [`Snapshot::services`].
    pub service: usize,
    /// How the path is rewritten.
    pub rewrite: PathRewrite,
    /// Largest request body, in bytes.
    pub body_limit: u64,
    /// Time allowed for the response head (route timeout, else service's).
    pub timeout: Duration,
    /// Answer while the service's breaker is open, if configured.
    pub fallback: Option<Arc<Fallback>>,
    /// The route's policies, in the order the proxy runs them.
    pub policies: Pipeline,
    /// Whether request headers with `_` in their names are passed on
    /// (never the gateway's own names spelled with `_`).
    pub allow_underscore_headers: bool,
    /// Cached metric handles.
    pub metrics: RouteMetrics,
}

impl RouteRuntime {
    /// What the route's policies are told of it.
    pub fn context(&self) -> RouteContext<'_> {
        RouteContext {
            name: &self.name,
            body_limit: self.body_limit,
            timeout: self.timeout,
        }
    }
}

/// One immutable view of config and instances.
#[derive(Debug)]
pub struct Snapshot {
    /// Store history the version belongs to.
    pub epoch: String,
    /// Config version.
    pub version: u64,
    /// Where this config came from.
    pub source: ConfigSource,
    /// The config.
    pub config: Arc<GatewayConfig>,
    /// Route table.
    pub router: Arc<Router<Arc<RouteRuntime>>>,
    /// Services, in config order.
    pub services: Vec<Arc<ServiceRuntime>>,
    service_index: Arc<HashMap<String, usize>>,
}

impl Snapshot {
    fn empty() -> Self {
        Self {
            epoch: String::new(),
            version: 0,
            source: ConfigSource::None,
            config: Arc::new(GatewayConfig::default()),
            router: Arc::new(Router::empty()),
            services: Vec::new(),
            service_index: Arc::default(),
        }
    }

    /// A service by name.
    pub fn service_named(&self, name: &str) -> Option<&Arc<ServiceRuntime>> {
        self.service_index.get(name).map(|&i| &self.services[i])
    }
}

impl Services for Snapshot {
    fn service_named(&self, name: &str) -> Option<&Arc<ServiceRuntime>> {
        Snapshot::service_named(self, name)
    }
}

impl CurrentServices for Runtime {
    fn current(&self) -> Arc<dyn Services> {
        self.snapshot()
    }
}

/// Why an update was refused; the previous snapshot stays in force.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// A delta that does not start from the version held.
    #[error("delta from {base_epoch}/{base} does not apply to {epoch}/{version}")]
    Gap {
        /// Epoch held.
        epoch: String,
        /// Version held.
        version: u64,
        /// Epoch of the delta.
        base_epoch: String,
        /// Base version of the delta.
        base: u64,
    },
    /// The config does not load.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The routes do not build.
    #[error("routes: {0}")]
    Routes(#[from] RouteConflict),
    /// An instance is unusable.
    #[error("instance: {0}")]
    Instance(String),
    /// A route's validation schema does not compile.
    #[error("validation: {0}")]
    Validation(String),
    /// A service's `tls` settings cannot be used (a file unreadable, a key
    /// that does not fit its certificate).
    #[error("tls: {0}")]
    Tls(String),
}

impl UpdateError {
    /// Whether the control plane should answer with a snapshot.
    pub fn wants_snapshot(&self) -> bool {
        matches!(self, UpdateError::Gap { .. })
    }
}

/// A change to apply, whatever its source.
#[derive(Debug)]
pub struct Change {
    /// Where the change comes from.
    pub source: ConfigSource,
    /// Epoch after the change.
    pub epoch: String,
    /// Version after the change.
    pub version: u64,
    /// Replace every instance (snapshot) rather than patch them (delta).
    pub replace_all: bool,
    /// New config, if it changes.
    pub config: Option<GatewayConfig>,
    /// Instances added or changed (all of them when `replace_all`).
    pub upserts: Vec<Instance>,
    /// Ids of instances removed.
    pub removals: Vec<String>,
}

impl Change {
    /// Reads a Discovery update (or the cached snapshot, given `source`);
    /// the config and instances are validated.
    pub fn from_proto(
        update: &pb::ConfigUpdate,
        source: ConfigSource,
    ) -> Result<Self, UpdateError> {
        let config = if !update.config_json.is_empty() {
            Some(GatewayConfig::from_json(&update.config_json)?)
        } else if update.snapshot {
            Some(GatewayConfig::default())
        } else {
            None
        };
        let upserts = update
            .upserts
            .iter()
            .map(Instance::from_proto)
            .collect::<Result<Vec<_>, _>>()
            .map_err(UpdateError::Instance)?;
        Ok(Self {
            source,
            epoch: update.epoch.clone(),
            version: update.version,
            replace_all: update.snapshot,
            config,
            upserts,
            removals: update.removals.clone(),
        })
    }
}

struct InstanceEntry {
    instance: Instance,
    endpoint: Arc<Endpoint>,
}

#[derive(Default)]
struct Store {
    instances: HashMap<String, InstanceEntry>,
    by_service: HashMap<String, BTreeSet<String>>,
}

impl Store {
    fn insert(&mut self, entry: InstanceEntry, affected: &mut HashSet<String>) {
        let id = entry.instance.spec.id.clone();
        let service = entry.instance.spec.service.clone();
        if let Some(old) = self.instances.insert(id.clone(), entry) {
            if old.instance.spec.service != service {
                self.unlink(&old.instance.spec.service, &id);
                affected.insert(old.instance.spec.service);
            }
        }
        self.by_service
            .entry(service.clone())
            .or_default()
            .insert(id);
        affected.insert(service);
    }

    fn remove(&mut self, id: &str, affected: &mut HashSet<String>) {
        if let Some(old) = self.instances.remove(id) {
            self.unlink(&old.instance.spec.service, id);
            affected.insert(old.instance.spec.service);
        }
    }

    fn unlink(&mut self, service: &str, id: &str) {
        if let Some(ids) = self.by_service.get_mut(service) {
            ids.remove(id);
            if ids.is_empty() {
                self.by_service.remove(service);
            }
        }
    }

    /// The service's healthy and unhealthy endpoints (draining ones are in neither).
    fn endpoints(&self, service: &str) -> (Vec<Arc<Endpoint>>, Vec<Arc<Endpoint>>) {
        let mut healthy = Vec::new();
        let mut unhealthy = Vec::new();
        for entry in self
            .by_service
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|id| self.instances.get(id))
            .filter(|e| !e.instance.state.draining)
        {
            if entry.instance.state.routable() {
                healthy.push(entry.endpoint.clone());
            } else {
                unhealthy.push(entry.endpoint.clone());
            }
        }
        (healthy, unhealthy)
    }

    /// The connection pool of a known instance at the same address (kept
    /// across updates), else a new one.
    fn pool_of(&self, id: &str, target: &str, tls: bool) -> Arc<ConnPool> {
        match self.instances.get(id) {
            Some(e) if e.endpoint.pool.target() == target && e.instance.spec.tls == tls => {
                e.endpoint.pool.clone()
            }
            _ => Arc::new(ConnPool::new(target.to_string())),
        }
    }

    fn load_of(&self, id: &str) -> Arc<InstanceLoad> {
        self.instances
            .get(id)
            .map(|e| e.endpoint.load.clone())
            .unwrap_or_default()
    }
}

/// The current snapshot and what builds the next one.
pub struct Runtime {
    current: ArcSwap<Snapshot>,
    store: Mutex<Store>,
    metrics: Arc<Metrics>,
    ready: AtomicBool,
    created: Instant,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let snap = self.current.load();
        f.debug_struct("Runtime")
            .field("epoch", &snap.epoch)
            .field("version", &snap.version)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// An empty runtime (no route; not ready).
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            current: ArcSwap::from_pointee(Snapshot::empty()),
            store: Mutex::default(),
            metrics,
            ready: AtomicBool::new(false),
            created: Instant::now(),
        }
    }

    /// The current snapshot (lock-free; do not hold it across awaits).
    #[inline]
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The current snapshot as an owned `Arc`.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Whether it is ready for traffic: a config from a control plane or a
    /// file is applied, or the cached config serves and no control plane
    /// answered within the grace period ([`Runtime::serve_cached`]).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Where the config in force came from.
    pub fn source(&self) -> ConfigSource {
        self.current.load().source
    }

    /// Marks the cached config in force as ready for traffic (no control
    /// plane answered in time); its version, or `None` when the config in
    /// force is not the cached one.
    pub fn serve_cached(&self) -> Option<u64> {
        let _store = self.lock();
        let snap = self.current.load();
        if snap.source != ConfigSource::Cache {
            return None;
        }
        self.mark_ready("serving the cached config");
        Some(snap.version)
    }

    /// A control plane said nothing after a Hello with `epoch`/`version`:
    /// it holds nothing newer, so the cached config in force is its
    /// current one. True when that turned the source to the control plane.
    pub fn confirm_cached(&self, epoch: &str, version: u64) -> bool {
        let _store = self.lock();
        let snap = self.current.load_full();
        if snap.source != ConfigSource::Cache || snap.epoch != epoch || snap.version != version {
            return false;
        }
        let confirmed = Snapshot {
            epoch: snap.epoch.clone(),
            version: snap.version,
            source: ConfigSource::ControlPlane,
            config: snap.config.clone(),
            router: snap.router.clone(),
            services: snap.services.clone(),
            service_index: snap.service_index.clone(),
        };
        self.current.store(Arc::new(confirmed));
        self.metrics.set_config_source(ConfigSource::ControlPlane);
        self.mark_ready("the control plane confirmed the cached config");
        true
    }

    /// The whole state in force as a snapshot update (config, every
    /// instance with its state), when it came from a control plane: what
    /// the config cache keeps.
    pub fn export(&self) -> Option<pb::ConfigUpdate> {
        let (snap, upserts) = {
            let store = self.lock();
            let snap = self.current.load_full();
            if snap.source != ConfigSource::ControlPlane {
                return None;
            }
            let upserts: Vec<pb::Instance> = store
                .instances
                .values()
                .map(|e| e.instance.to_proto())
                .collect();
            (snap, upserts)
        };
        Some(pb::ConfigUpdate {
            epoch: snap.epoch.clone(),
            version: snap.version,
            snapshot: true,
            base_version: 0,
            config_json: snap.config.to_json(),
            upserts,
            removals: Vec::new(),
        })
    }

    fn mark_ready(&self, why: &'static str) {
        if !self.ready.swap(true, Ordering::AcqRel) {
            let elapsed = self.created.elapsed();
            self.metrics.ready_seconds.set(elapsed.as_secs_f64());
            tracing::info!(
                ready_after_ms = elapsed.as_secs_f64() * 1000.0,
                "ready: {why}"
            );
        }
    }

    /// Epoch and version held.
    pub fn version(&self) -> (String, u64) {
        let snap = self.current.load();
        (snap.epoch.clone(), snap.version)
    }

    /// In-flight requests of every known instance, by id.
    pub fn in_flight(&self) -> Vec<(String, u64)> {
        let store = self.lock();
        store
            .instances
            .iter()
            .map(|(id, e)| (id.clone(), e.endpoint.load.in_flight()))
            .collect()
    }

    /// The breaker state of every service that has a breaker.
    pub fn breaker_states(&self) -> Vec<(String, BreakerState)> {
        let now = now_ms();
        self.current
            .load()
            .services
            .iter()
            .filter_map(|s| {
                s.breaker
                    .as_ref()
                    .map(|b| (s.name.to_string(), b.state(now)))
            })
            .collect()
    }

    /// In-flight requests of the instances that have any, by id (what a
    /// report needs: its cost does not grow with idle instances).
    pub fn busy(&self) -> Vec<(String, u64)> {
        let store = self.lock();
        store
            .instances
            .iter()
            .filter_map(|(id, e)| {
                let n = e.endpoint.load.in_flight();
                (n > 0).then(|| (id.clone(), n))
            })
            .collect()
    }

    /// Every instance held with its in-flight requests, by id.
    pub fn instances(&self) -> Vec<(Instance, u64)> {
        let store = self.lock();
        let mut all: Vec<(Instance, u64)> = store
            .instances
            .values()
            .map(|e| (e.instance.clone(), e.endpoint.load.in_flight()))
            .collect();
        drop(store);
        all.sort_by(|a, b| a.0.spec.id.cmp(&b.0.spec.id));
        all
    }

    /// In-flight requests of one instance (0 when unknown).
    pub fn in_flight_of(&self, id: &str) -> u64 {
        self.lock().load_of(id).in_flight()
    }

    /// Applies a Discovery update: a snapshot replaces everything, a delta
    /// must start from the version held. Refused updates change nothing.
    pub fn apply_update(&self, update: &pb::ConfigUpdate) -> Result<(), UpdateError> {
        let result = self.apply_update_inner(update);
        self.metrics.count_update(match &result {
            Ok(()) => UpdateResult::Applied,
            Err(e) if e.wants_snapshot() => UpdateResult::OutOfSequence,
            Err(_) => UpdateResult::Rejected,
        });
        result
    }

    fn apply_update_inner(&self, update: &pb::ConfigUpdate) -> Result<(), UpdateError> {
        if !update.snapshot {
            let snap = self.current.load();
            if snap.epoch != update.epoch || snap.version != update.base_version {
                return Err(UpdateError::Gap {
                    epoch: snap.epoch.clone(),
                    version: snap.version,
                    base_epoch: update.epoch.clone(),
                    base: update.base_version,
                });
            }
        }
        self.apply(Change::from_proto(update, ConfigSource::ControlPlane)?)
    }

    /// Applies a change (validated whole first; nothing is half-applied).
    pub fn apply(&self, change: Change) -> Result<(), UpdateError> {
        let mut store = self.lock();
        let old = self.current.load_full();
        let config = change.config.map(Arc::new);
        let router_and_index = match &config {
            Some(config) => Some(self.build_router(config)?),
            None => None,
        };
        let tls_clients = match &config {
            Some(config) => tls::clients_for(config, |name| {
                old.service_named(name).and_then(|s| s.tls.clone())
            })
            .map_err(UpdateError::Tls)?,
            None => Default::default(),
        };
        let prepared = change
            .upserts
            .into_iter()
            .map(|instance| prepare(&store, instance))
            .collect::<Result<Vec<_>, _>>()?;

        let mut affected = HashSet::new();
        if change.replace_all {
            *store = Store::default();
        }
        for id in &change.removals {
            store.remove(id, &mut affected);
        }
        for entry in prepared {
            store.insert(entry, &mut affected);
        }

        let rebuild_all = change.replace_all || config.is_some();
        let config = config.unwrap_or_else(|| old.config.clone());
        let (router, service_index) =
            router_and_index.unwrap_or_else(|| (old.router.clone(), old.service_index.clone()));
        let services = if rebuild_all {
            config
                .services
                .iter()
                .map(|sc| {
                    let previous = old.service_named(&sc.name);
                    match previous {
                        Some(p)
                            if !change.replace_all
                                && p.config == *sc
                                && !affected.contains(&sc.name) =>
                        {
                            p.clone()
                        }
                        _ => Arc::new(self.build_service(
                            &store,
                            sc,
                            previous.map(|p| &**p),
                            tls_clients.get(&sc.name).cloned(),
                        )),
                    }
                })
                .collect()
        } else {
            let mut services = old.services.clone();
            for name in &affected {
                if let Some(&i) = old.service_index.get(name) {
                    let previous = &old.services[i];
                    services[i] = Arc::new(self.build_service(
                        &store,
                        &previous.config,
                        Some(previous),
                        previous.tls.clone().filter(|t| t.settings().is_some()),
                    ));
                }
            }
            services
        };
        let snapshot = Snapshot {
            epoch: change.epoch,
            version: change.version,
            source: change.source,
            config,
            router,
            services,
            service_index,
        };
        self.metrics
            .config_version
            .set(i64::try_from(snapshot.version).unwrap_or(i64::MAX));
        self.metrics
            .instances
            .set(i64::try_from(store.instances.len()).unwrap_or(i64::MAX));
        let source = snapshot.source;
        self.current.store(Arc::new(snapshot));
        self.metrics.set_config_source(source);
        // The cached config serves at once but is ready only once the grace
        // period is over (see `serve_cached`).
        if source != ConfigSource::Cache {
            self.mark_ready("first config applied");
        }
        drop(store);
        Ok(())
    }

    #[allow(clippy::type_complexity)]
    fn build_router(
        &self,
        config: &GatewayConfig,
    ) -> Result<(Arc<Router<Arc<RouteRuntime>>>, Arc<HashMap<String, usize>>), UpdateError> {
        let index: HashMap<String, usize> = config
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        let mut routes = Vec::with_capacity(config.routes.len());
        for route in &config.routes {
            let aggregate = route
                .aggregate
                .as_ref()
                .map(|a| Arc::new(crate::policy::aggregate::Aggregate::from_config(route, a)));
            // An aggregate route is never forwarded: its first source's
            // service only stands in so that every route has one.
            let target = match &route.aggregate {
                Some(a) => a.sources.first().map_or("", |s| s.service.as_str()),
                None => route.service.as_str(),
            };
            let Some(&service) = index.get(target) else {
                return Err(UpdateError::Routes(RouteConflict(format!(
                    "route {} names unknown service {target}",
                    route.name
                ))));
            };
            let sc = &config.services[service];
            let name = Arc::new(route.name.clone());
            let service_name = Arc::new(if aggregate.is_some() {
                "aggregate".to_string()
            } else {
                route.service.clone()
            });
            let timeout = match (&aggregate, route.timeout) {
                (_, Some(t)) => t,
                (Some(a), None) => a.default_timeout(),
                (None, None) => sc.timeout,
            };
            // Registered before the policies compile, as a refused update
            // leaves them.
            let metrics = self.metrics.route(name.clone(), service_name.clone());
            let policies =
                Pipeline::compile(route, aggregate, timeout, || self.metrics.cache(&name))
                    .map_err(UpdateError::Validation)?;
            let runtime = RouteRuntime {
                metrics,
                name,
                service_name,
                service,
                rewrite: PathRewrite::of(route),
                body_limit: route.body_limit(),
                timeout,
                fallback: route
                    .fallback
                    .as_ref()
                    .map(|f| Arc::new(Fallback::from_config(f))),
                policies,
                allow_underscore_headers: route.allow_underscore_headers,
            };
            routes.push((route, Arc::new(runtime)));
        }
        let router = Router::build(routes)?;
        Ok((Arc::new(router), Arc::new(index)))
    }

    fn build_service(
        &self,
        store: &Store,
        config: &ServiceConfig,
        previous: Option<&ServiceRuntime>,
        tls: Option<Arc<UpstreamTls>>,
    ) -> ServiceRuntime {
        let name = previous.map_or_else(|| Arc::new(config.name.clone()), |p| p.name.clone());
        // Breaker, retry budget and outlier state carry over while their
        // policy stays the same; a new policy starts afresh.
        let outlier = config.outlier_detection.as_ref().map(|policy| {
            previous
                .and_then(|p| p.balancer.outlier())
                .filter(|d| d.policy() == policy)
                .cloned()
                .unwrap_or_else(|| {
                    Arc::new(OutlierDetector::new(
                        name.clone(),
                        policy.clone(),
                        self.metrics.ejections(&name),
                    ))
                })
        });
        let breaker = config
            .circuit_breaker
            .as_ref()
            .filter(|cb| cb.enabled)
            .map(|policy| {
                previous
                    .and_then(|p| p.breaker.as_ref())
                    .filter(|b| b.policy() == policy)
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(CircuitBreaker::new(
                            name.clone(),
                            policy.clone(),
                            self.metrics.breaker(&name),
                        ))
                    })
            });
        let retry = config.retry.as_ref().map(|policy| {
            previous
                .and_then(|p| p.retry.as_ref())
                .filter(|r| r.config() == policy)
                .cloned()
                .unwrap_or_else(|| Arc::new(RetryPolicy::new(policy, self.metrics.retries(&name))))
        });
        let (healthy, unhealthy) = store.endpoints(&config.name);
        // A service without `tls` settings gets the platform's client once
        // it holds an `https://` instance.
        let https = || healthy.iter().chain(&unhealthy).any(|e| e.tls.is_some());
        let tls = tls.or_else(|| https().then(UpstreamTls::platform).flatten());
        ServiceRuntime {
            tls,
            errors: self.metrics.upstream_errors(&name),
            balancer: Balancer::build(
                &config.load_balancer,
                healthy,
                unhealthy,
                outlier,
                previous.map(|p| &p.balancer),
            ),
            breaker,
            retry,
            endpoint_timeouts: EndpointTimeouts::new(&config.endpoint_timeouts),
            name,
            config: config.clone(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Checks an instance and makes its endpoint, keeping the live counters of
/// an instance already known under the same id.
fn prepare(store: &Store, instance: Instance) -> Result<InstanceEntry, UpdateError> {
    let spec = &instance.spec;
    let bad = |e: &dyn std::fmt::Display| {
        UpdateError::Instance(format!("{}: bad address {:?}: {e}", spec.id, spec.address))
    };
    let text = spec.authority();
    let host_header = HeaderValue::from_str(&text).map_err(|e| bad(&e))?;
    let pool = store.pool_of(&spec.id, &text, spec.tls);
    let tls = match spec.tls {
        true => Some(ServerName::try_from(spec.address.clone()).map_err(|e| bad(&e))?),
        false => None,
    };
    let authority = Authority::try_from(text).map_err(|e| bad(&e))?;
    let endpoint = Arc::new(Endpoint {
        id: Arc::from(spec.id.as_str()),
        authority,
        host_header,
        weight: spec.weight.max(1),
        load: store.load_of(&spec.id),
        pool,
        tls,
    });
    Ok(InstanceEntry { instance, endpoint })
}

#[cfg(test)]
mod tests;
