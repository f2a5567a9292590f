//! The routing state of a data plane: an immutable [`Snapshot`] read
//! lock-free by every request, replaced whole by each config update.
//!
//! Updates are built off the hot path under a mutex (only the updater takes
//! it) and published with one atomic pointer swap. An update that only
//! touches instances rebuilds only the services it touches; the others are
//! shared with the previous snapshot, so the cost follows the change, not the
//! fleet. In-flight counters live with the instance and survive every swap.

use crate::config::routing::{PathRewrite, Router};
use crate::ops::metrics::{Metrics, RouteMetrics, UpdateResult, UpstreamErrorMetrics};
use crate::rolling::now_ms;
use crate::upstream::balancer::{Balancer, Endpoint, InstanceLoad};
use crate::upstream::breaker::{BreakerState, CircuitBreaker, Fallback};
use crate::upstream::deadline::EndpointTimeouts;
use crate::upstream::outlier::OutlierDetector;
use crate::upstream::pool::ConnPool;
use crate::upstream::retry::RetryPolicy;
use arc_swap::{ArcSwap, Guard};
use gateway_common::config::{ConfigError, ServiceConfig};
use gateway_common::registration::Instance;
use gateway_common::routing::RouteConflict;
use gateway_common::GatewayConfig;
use gateway_proto::v1 as pb;
use http::uri::Authority;
use http::HeaderValue;
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
    /// Access-token policy, when the route has one that requires a token.
    pub auth: Option<RouteAuth>,
    /// CORS policy answered by the gateway, when the route has one.
    pub cors: Option<crate::policy::cors::Cors>,
    /// The sources of an aggregate route (answered by the gateway, never
    /// forwarded to `service`).
    pub aggregate: Option<Arc<crate::policy::aggregate::Aggregate>>,
    /// Webhook policy, when the route is a provider's webhook.
    pub webhook: Option<crate::policy::webhook::Webhook>,
    /// Request validation (JSON Schemas compiled), when the route has it.
    pub validation: Option<crate::policy::validation::RouteValidation>,
    /// Response-cache policy, when the route has one.
    pub cache: Option<crate::policy::cache::RouteCache>,
    /// Rate limit of the route.
    pub rate_limit: crate::policy::ratelimit::RouteLimit,
    /// HMAC request signatures, when the route requires them.
    pub signature: Option<crate::policy::signature::RouteSignature>,
    /// Whether request headers with `_` in their names are passed on
    /// (never the gateway's own names spelled with `_`).
    pub allow_underscore_headers: bool,
    /// Cached metric handles.
    pub metrics: RouteMetrics,
}

/// A route's authentication policy, compiled.
#[derive(Debug)]
pub struct RouteAuth {
    /// Paths that need no token.
    pub public_paths: crate::edge::security::PublicPaths,
    /// Whether an `X-API-Key` is accepted in place of a token.
    pub api_keys: bool,
    /// Permission, venue scoping and user details, when the route has any.
    pub authz: Option<Arc<crate::policy::authorization::RouteAuthz>>,
}

/// A service as the proxy uses it.
#[derive(Debug)]
pub struct ServiceRuntime {
    /// Service name.
    pub name: Arc<String>,
    /// Its config.
    pub config: ServiceConfig,
    /// Picks among the routable instances (and holds the outlier detector).
    pub balancer: Balancer,
    /// Circuit breaker, when the service has an enabled one.
    pub breaker: Option<Arc<CircuitBreaker>>,
    /// Retry policy, when the service has one.
    pub retry: Option<Arc<RetryPolicy>>,
    /// Per-endpoint timeouts.
    pub endpoint_timeouts: EndpointTimeouts,
    /// Cached error counters.
    pub errors: UpstreamErrorMetrics,
}

/// Where the config in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    /// No config yet: nothing from a control plane, no usable cache.
    None,
    /// A control plane's Discovery stream (or its silence after a Hello
    /// with the version held: that version is current).
    ControlPlane,
    /// The data plane's config cache on disk, read at start.
    Cache,
    /// The standalone config file.
    File,
}

impl ConfigSource {
    /// Every source, in label order.
    pub const ALL: [ConfigSource; 4] = [Self::None, Self::ControlPlane, Self::Cache, Self::File];

    /// The label (`none`, `control_plane`, `cache`, `file`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::ControlPlane => "control_plane",
            Self::Cache => "cache",
            Self::File => "file",
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
    fn pool_of(&self, id: &str, target: &str) -> Arc<ConnPool> {
        match self.instances.get(id) {
            Some(e) if e.endpoint.pool.target() == target => e.endpoint.pool.clone(),
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
                        _ => Arc::new(self.build_service(&store, sc, previous.map(|p| &**p))),
                    }
                })
                .collect()
        } else {
            let mut services = old.services.clone();
            for name in &affected {
                if let Some(&i) = old.service_index.get(name) {
                    let previous = &old.services[i];
                    services[i] =
                        Arc::new(self.build_service(&store, &previous.config, Some(previous)));
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
            let cache = route.cache.as_ref().map(|c| {
                crate::policy::cache::RouteCache::new(c, timeout, self.metrics.cache(&name))
            });
            let runtime = RouteRuntime {
                metrics: self.metrics.route(name.clone(), service_name.clone()),
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
                auth: route
                    .auth
                    .as_ref()
                    .filter(|a| a.required)
                    .map(|a| RouteAuth {
                        public_paths: crate::edge::security::PublicPaths::new(&a.public_paths),
                        api_keys: a.api_keys,
                        authz: crate::policy::authorization::RouteAuthz::from_config(route, a),
                    }),
                cors: route
                    .cors
                    .as_ref()
                    .map(crate::policy::cors::Cors::from_config),
                aggregate,
                webhook: route
                    .webhook
                    .as_ref()
                    .map(crate::policy::webhook::Webhook::from_config),
                validation: crate::policy::validation::RouteValidation::compile(route)
                    .map_err(UpdateError::Validation)?,
                cache,
                rate_limit: crate::policy::ratelimit::RouteLimit::of(route),
                signature: route.signature.as_ref().map(|config| {
                    crate::policy::signature::RouteSignature::compile(&route.name, config)
                }),
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
        ServiceRuntime {
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
    let pool = store.pool_of(&spec.id, &text);
    let authority = Authority::try_from(text).map_err(|e| bad(&e))?;
    let endpoint = Arc::new(Endpoint {
        id: Arc::from(spec.id.as_str()),
        authority,
        host_header,
        weight: spec.weight.max(1),
        load: store.load_of(&spec.id),
        pool,
    });
    Ok(InstanceEntry { instance, endpoint })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_common::registration::{Health, InstanceSpec, InstanceState};

    const CONFIG: &str = r#"{"version":1,"services":[{"name":"a"},{"name":"b"}],"routes":[{"name":"a","match":{"path_prefix":"/a"},"service":"a"},{"name":"b","match":{"path_prefix":"/b"},"service":"b"}]}"#;

    fn instance(id: &str, service: &str, port: u32) -> pb::Instance {
        pb::Instance {
            id: id.into(),
            service: service.into(),
            address: "127.0.0.1".into(),
            port,
            weight: 1,
            health: pb::HealthState::Unknown as i32,
            ..Default::default()
        }
    }

    fn snapshot(version: u64, instances: Vec<pb::Instance>) -> pb::ConfigUpdate {
        pb::ConfigUpdate {
            epoch: "e".into(),
            version,
            snapshot: true,
            config_json: CONFIG.into(),
            upserts: instances,
            ..Default::default()
        }
    }

    fn delta(base: u64, upserts: Vec<pb::Instance>, removals: Vec<&str>) -> pb::ConfigUpdate {
        pb::ConfigUpdate {
            epoch: "e".into(),
            version: base + 1,
            base_version: base,
            upserts,
            removals: removals.into_iter().map(String::from).collect(),
            ..Default::default()
        }
    }

    fn runtime() -> Runtime {
        Runtime::new(Arc::new(Metrics::new()))
    }

    fn ids(rt: &Runtime, service: &str) -> Vec<String> {
        rt.load()
            .service_named(service)
            .unwrap()
            .balancer
            .endpoints()
            .iter()
            .map(|e| e.id.to_string())
            .collect()
    }

    #[tokio::test]
    async fn instance_delta_rebuilds_only_touched_services() {
        let rt = runtime();
        assert!(!rt.is_ready());
        rt.apply_update(&snapshot(
            1,
            vec![instance("a1", "a", 1), instance("b1", "b", 2)],
        ))
        .unwrap();
        assert!(rt.is_ready());
        let before = rt.snapshot();
        rt.apply_update(&delta(1, vec![instance("a2", "a", 3)], vec![]))
            .unwrap();
        let after = rt.snapshot();
        assert_eq!(after.version, 2);
        assert!(Arc::ptr_eq(&before.router, &after.router));
        assert!(Arc::ptr_eq(&before.services[1], &after.services[1]));
        assert!(!Arc::ptr_eq(&before.services[0], &after.services[0]));
        assert_eq!(ids(&rt, "a"), vec!["a1", "a2"]);
    }

    #[tokio::test]
    async fn in_flight_counts_survive_swaps_and_removals_drop_them() {
        let rt = runtime();
        rt.apply_update(&snapshot(1, vec![instance("a1", "a", 1)]))
            .unwrap();
        let guard = rt.load().services[0]
            .balancer
            .pick(None)
            .unwrap()
            .load
            .begin();
        let mut draining = instance("a1", "a", 1);
        draining.draining = true;
        rt.apply_update(&delta(1, vec![draining], vec![])).unwrap();
        assert!(ids(&rt, "a").is_empty());
        assert_eq!(rt.in_flight_of("a1"), 1);
        assert_eq!(rt.busy(), vec![("a1".to_string(), 1)]);
        drop(guard);
        assert!(rt.busy().is_empty());
        assert_eq!(rt.in_flight_of("a1"), 0);
        rt.apply_update(&delta(2, vec![], vec!["a1"])).unwrap();
        assert!(rt.in_flight().is_empty());
    }

    #[tokio::test]
    async fn unhealthy_instances_are_not_routable() {
        let rt = runtime();
        let mut sick = instance("a1", "a", 1);
        sick.health = pb::HealthState::Unhealthy as i32;
        rt.apply_update(&snapshot(1, vec![sick, instance("a2", "a", 2)]))
            .unwrap();
        assert_eq!(ids(&rt, "a"), vec!["a2"]);
    }

    #[tokio::test]
    async fn gaps_and_bad_content_are_refused_whole() {
        let rt = runtime();
        rt.apply_update(&snapshot(5, vec![instance("a1", "a", 1)]))
            .unwrap();
        let err = rt.apply_update(&delta(3, vec![], vec![])).unwrap_err();
        assert!(err.wants_snapshot(), "{err}");
        let mut bad = delta(5, vec![instance("a2", "a", 2)], vec!["a1"]);
        bad.config_json = r#"{"version":7}"#.into();
        let err = rt.apply_update(&bad).unwrap_err();
        assert!(!err.wants_snapshot());
        let bad_instance = delta(
            5,
            vec![instance("a3", "a", 2), instance("x", "a", 0)],
            vec!["a1"],
        );
        assert!(rt.apply_update(&bad_instance).is_err());
        assert_eq!(rt.version().1, 5);
        assert_eq!(ids(&rt, "a"), vec!["a1"]);
    }

    #[tokio::test]
    async fn instances_wait_for_their_service() {
        let rt = runtime();
        let empty = pb::ConfigUpdate {
            epoch: "e".into(),
            version: 1,
            snapshot: true,
            config_json: r#"{"version":1}"#.into(),
            upserts: vec![instance("c1", "c", 1)],
            ..Default::default()
        };
        rt.apply_update(&empty).unwrap();
        let mut add_service = delta(1, vec![], vec![]);
        add_service.config_json = r#"{"version":1,"services":[{"name":"c"}]}"#.into();
        rt.apply_update(&add_service).unwrap();
        assert_eq!(ids(&rt, "c"), vec!["c1"]);
    }

    #[tokio::test]
    async fn standalone_change_is_applied() {
        let rt = runtime();
        let config = GatewayConfig::from_json(CONFIG).unwrap();
        let spec = InstanceSpec {
            id: "static:a:127.0.0.1:1".into(),
            service: "a".into(),
            address: "127.0.0.1".into(),
            port: 1,
            health_path: String::new(),
            weight: 1,
            zone: String::new(),
            metadata: Default::default(),
            static_instance: true,
        };
        rt.apply(Change {
            source: ConfigSource::File,
            epoch: "standalone".into(),
            version: 1,
            replace_all: true,
            config: Some(config),
            upserts: vec![Instance {
                spec,
                state: InstanceState {
                    health: Health::Unknown,
                    draining: false,
                },
            }],
            removals: vec![],
        })
        .unwrap();
        assert_eq!(ids(&rt, "a"), vec!["static:a:127.0.0.1:1"]);
    }

    #[tokio::test]
    async fn resilience_state_survives_rebuilds_while_its_policy_stays() {
        let rt = runtime();
        let with = |breaker_percent: u32| {
            format!(
                r#"{{"version":1,"services":[{{"name":"a","circuit_breaker":{{"error_threshold_percent":{breaker_percent}}},"retry":{{}},"outlier_detection":{{}},"load_balancer":{{"strategy":"consistent-hash","hash_on":"client-ip"}}}},{{"name":"b"}}],"routes":[{{"name":"a","match":{{"path_prefix":"/a"}},"service":"a"}}]}}"#
            )
        };
        let mut first = snapshot(1, vec![instance("a1", "a", 1), instance("a2", "a", 2)]);
        first.config_json = with(50);
        rt.apply_update(&first).unwrap();
        let before = rt.snapshot().services[0].clone();
        let breaker = before.breaker.clone().unwrap();
        // An instance change rebuilds the service but keeps its state.
        rt.apply_update(&delta(1, vec![instance("a3", "a", 3)], vec![]))
            .unwrap();
        let after = rt.snapshot().services[0].clone();
        assert!(!Arc::ptr_eq(&before, &after));
        assert!(Arc::ptr_eq(&breaker, after.breaker.as_ref().unwrap()));
        assert!(Arc::ptr_eq(
            before.retry.as_ref().unwrap(),
            after.retry.as_ref().unwrap()
        ));
        assert!(Arc::ptr_eq(
            before.balancer.outlier().unwrap(),
            after.balancer.outlier().unwrap()
        ));
        assert_eq!(rt.breaker_states().len(), 1);
        // A new breaker policy starts a new breaker; the rest is kept.
        let mut change = delta(2, vec![], vec![]);
        change.config_json = with(30);
        rt.apply_update(&change).unwrap();
        let changed = rt.snapshot().services[0].clone();
        assert!(!Arc::ptr_eq(&breaker, changed.breaker.as_ref().unwrap()));
        assert_eq!(
            changed
                .breaker
                .as_ref()
                .unwrap()
                .policy()
                .error_threshold_percent,
            30
        );
        assert!(Arc::ptr_eq(
            after.retry.as_ref().unwrap(),
            changed.retry.as_ref().unwrap()
        ));
        // Consistent hashing: the same key keeps its instance across the rebuild.
        let key = Some(crate::upstream::maglev::hash64(b"10.0.0.1", 0));
        assert_eq!(
            after.balancer.pick(key).unwrap().id,
            changed.balancer.pick(key).unwrap().id
        );
    }
}
