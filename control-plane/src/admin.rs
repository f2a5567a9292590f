//! The `gateway.v1.Admin` service: the operator's API (gwctl).
//!
//! Writes go to the store; reads of instances and topology come from this
//! replica's view after it has caught up with the store's version, so an
//! operator reads their own writes whichever replica answers.

use crate::metrics::Metrics;
use crate::registry::check_id_field;
use crate::store::{unix_ms, Store, StoreError};
use crate::view::View;
use gateway_common::cache::CachePattern;
use gateway_common::config::BreakerConfig;
use gateway_common::{ConfigError, GatewayConfig};
use gateway_proto::v1 as pb;
use gateway_proto::v1::admin_server::Admin;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// Longest wait for the view to reach the store's version before a read.
const CATCH_UP: Duration = Duration::from_secs(2);
/// Least time between two topologies on a watch.
const WATCH_MIN_GAP: Duration = Duration::from_millis(250);
/// A watch re-reads data-plane status at least this often.
const WATCH_POLL: Duration = Duration::from_secs(1);

struct Inner {
    store: Arc<dyn Store>,
    view: Arc<View>,
    metrics: Arc<Metrics>,
    replica: String,
    cancel: CancellationToken,
}

/// Implementation of the Admin service.
#[derive(Clone)]
pub struct AdminService {
    inner: Arc<Inner>,
}

impl AdminService {
    /// Serves the Admin API of replica `replica`; watches end when `cancel` fires.
    pub fn new(
        store: Arc<dyn Store>,
        view: Arc<View>,
        metrics: Arc<Metrics>,
        replica: String,
        cancel: CancellationToken,
    ) -> Self {
        AdminService {
            inner: Arc::new(Inner {
                store,
                view,
                metrics,
                replica,
                cancel,
            }),
        }
    }
}

fn config_error(e: ConfigError) -> Status {
    match e {
        ConfigError::Parse(reason) => {
            Status::invalid_argument(format!("cannot parse config: {reason}"))
        }
        ConfigError::Invalid(reasons) => {
            Status::invalid_argument(format!("invalid config: {}", reasons.join("; ")))
        }
    }
}

fn store_config_error(e: StoreError) -> Status {
    match e {
        StoreError::Invalid(reasons) => {
            Status::invalid_argument(format!("invalid config: {}", reasons.join("; ")))
        }
        other => other.into(),
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// The wire form of a service's breaker policy; a service without one
/// answers the defaults with `enabled: false`.
pub fn breaker_policy(service: &str, config: Option<&BreakerConfig>) -> pb::BreakerPolicy {
    let (enabled, cb) = match config {
        Some(cb) => (cb.enabled, cb.clone()),
        None => (false, BreakerConfig::default()),
    };
    pb::BreakerPolicy {
        service: service.to_string(),
        enabled,
        error_threshold_percent: cb.error_threshold_percent,
        volume_threshold: cb.volume_threshold,
        reset_timeout_ms: ms(cb.reset_timeout),
        call_timeout_ms: ms(cb.call_timeout),
        rolling_window_ms: ms(cb.rolling_window),
        rolling_buckets: cb.rolling_buckets,
        half_open_max_requests: cb.half_open_max_requests,
    }
}

/// The config form of a policy; zero fields take their defaults.
pub fn breaker_config(policy: &pb::BreakerPolicy) -> BreakerConfig {
    let d = BreakerConfig::default();
    let or = |v: u32, default: u32| if v == 0 { default } else { v };
    let or_ms = |v: u64, default: Duration| {
        if v == 0 {
            default
        } else {
            Duration::from_millis(v)
        }
    };
    BreakerConfig {
        enabled: policy.enabled,
        error_threshold_percent: or(policy.error_threshold_percent, d.error_threshold_percent),
        volume_threshold: or(policy.volume_threshold, d.volume_threshold),
        reset_timeout: or_ms(policy.reset_timeout_ms, d.reset_timeout),
        call_timeout: or_ms(policy.call_timeout_ms, d.call_timeout),
        rolling_window: or_ms(policy.rolling_window_ms, d.rolling_window),
        rolling_buckets: or(policy.rolling_buckets, d.rolling_buckets),
        half_open_max_requests: or(policy.half_open_max_requests, d.half_open_max_requests),
    }
}

/// What a watcher compares to decide whether the topology changed: the
/// topology without its clocks (lease countdowns, check and contact times).
fn fingerprint(topology: &pb::Topology) -> pb::Topology {
    let mut t = topology.clone();
    for service in &mut t.services {
        for status in &mut service.instances {
            status.lease_remaining_ms = 0;
            status.last_check_unix_ms = 0;
        }
    }
    for dp in &mut t.data_planes {
        dp.last_seen_unix_ms = 0;
    }
    t
}

impl Inner {
    /// Waits until the view holds at least the store's current version.
    async fn catch_up(&self) -> Result<(), Status> {
        Ok(self.view.catch_up(self.store.as_ref(), 0, CATCH_UP).await?)
    }

    async fn apply_config(
        &self,
        req: pb::ApplyConfigRequest,
    ) -> Result<pb::ApplyConfigResponse, Status> {
        let config = GatewayConfig::load(&req.document).map_err(config_error)?;
        let outcome = self
            .store
            .update_config(&|_| Ok(config.clone()), req.dry_run)
            .await
            .map_err(store_config_error)?;
        if !req.dry_run && !outcome.unchanged {
            tracing::info!(
                version = outcome.version,
                changes = outcome.changes.len(),
                "config applied"
            );
        }
        Ok(pb::ApplyConfigResponse {
            version: outcome.version,
            changes: outcome
                .changes
                .iter()
                .map(|c| pb::ConfigChange {
                    kind: c.kind.to_string(),
                    name: c.name.clone(),
                    action: c.action.to_string(),
                })
                .collect(),
            unchanged: outcome.unchanged,
        })
    }

    async fn get_config(&self, req: pb::GetConfigRequest) -> Result<pb::GetConfigResponse, Status> {
        if !req.data_plane.is_empty() {
            return self.data_plane_config(&req.data_plane).await;
        }
        let (config, version) = self.store.current_config().await?;
        Ok(pb::GetConfigResponse {
            config_json: config.to_json(),
            version,
            current_version: version,
        })
    }

    /// The config data plane `node` acknowledged last, from this replica's
    /// view once it has caught up with the store.
    async fn data_plane_config(&self, node: &str) -> Result<pb::GetConfigResponse, Status> {
        if !crate::node_identity::valid_node_id(node) {
            return Err(Status::invalid_argument(
                "data_plane: a node id of 1-253 printable characters",
            ));
        }
        let records = self.store.list_dataplanes().await?;
        let acked = records
            .iter()
            .find(|r| r.node_id == node)
            .ok_or_else(|| Status::not_found(format!("no data plane {node:?}")))?
            .acked_version;
        self.catch_up().await?;
        let view = self.view.read();
        let current = view.version();
        let json = view.config_json_at(acked).ok_or_else(|| {
            Status::failed_precondition(format!(
                "data plane {node:?} acknowledged version {acked}, older than this control plane \
                 still holds (current {current}); its admin port's GET /config shows what it serves"
            ))
        })?;
        Ok(pb::GetConfigResponse {
            config_json: json.to_string(),
            version: acked,
            current_version: current,
        })
    }

    async fn list_instances(
        &self,
        req: pb::ListInstancesRequest,
    ) -> Result<pb::ListInstancesResponse, Status> {
        self.catch_up().await?;
        let details = self.store.instance_details(None).await?;
        let state = self.view.read();
        let instances = state
            .instances()
            .values()
            .filter(|i| req.service.is_empty() || i.spec.service == req.service)
            .map(|i| details.status(i))
            .collect();
        Ok(pb::ListInstancesResponse {
            instances,
            version: state.version(),
        })
    }

    async fn drain(
        &self,
        req: pb::DrainRequest,
        draining: bool,
    ) -> Result<pb::DrainResponse, Status> {
        check_id_field(&req.instance_id, "instance_id")?;
        let update = self.store.set_draining(&req.instance_id, draining).await?;
        if update.changed {
            tracing::info!(id = %req.instance_id, draining, version = update.version, "drain flag changed");
        }
        let details = self.store.instance_details(Some(&req.instance_id)).await?;
        Ok(pb::DrainResponse {
            instance: Some(details.status(&update.instance)),
            version: update.version,
        })
    }

    async fn topology(&self) -> Result<pb::Topology, Status> {
        self.catch_up().await?;
        let (details, dataplanes, leader) = tokio::try_join!(
            self.store.instance_details(None),
            self.store.list_dataplanes(),
            self.store.leader(),
        )?;
        let now = unix_ms();
        let state = self.view.read();
        let mut services: BTreeMap<&str, Vec<pb::InstanceStatus>> = state
            .config()
            .services
            .iter()
            .map(|s| (s.name.as_str(), Vec::new()))
            .collect();
        for instance in state.instances().values() {
            services
                .entry(instance.spec.service.as_str())
                .or_default()
                .push(details.status(instance));
        }
        Ok(pb::Topology {
            version: state.version(),
            services: services
                .into_iter()
                .map(|(name, instances)| pb::ServiceTopology {
                    name: name.to_string(),
                    instances,
                })
                .collect(),
            data_planes: dataplanes.iter().map(|d| d.to_proto(now)).collect(),
            replica: self.replica.clone(),
            leader: leader.unwrap_or_default(),
        })
    }

    async fn watch_topology(self: Arc<Self>, tx: mpsc::Sender<Result<pb::Topology, Status>>) {
        let mut stamps = self.view.subscribe();
        let mut last: Option<pb::Topology> = None;
        loop {
            stamps.borrow_and_update();
            let topology = self.topology().await;
            let topology = match self.metrics.observe("Admin/WatchTopology", topology) {
                Ok(t) => t,
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            };
            let print = fingerprint(&topology);
            if last.as_ref() != Some(&print) {
                if tx.send(Ok(topology)).await.is_err() {
                    return;
                }
                last = Some(print);
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tx.closed() => return,
                _ = tokio::time::sleep(WATCH_MIN_GAP) => {}
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tx.closed() => return,
                _ = stamps.changed() => {}
                _ = tokio::time::sleep(WATCH_POLL) => {}
            }
        }
    }

    async fn list_dataplanes(&self) -> Result<pb::ListDataPlanesResponse, Status> {
        let now = unix_ms();
        let records = self.store.list_dataplanes().await?;
        Ok(pb::ListDataPlanesResponse {
            data_planes: records.iter().map(|r| r.to_proto(now)).collect(),
        })
    }

    async fn get_breaker(
        &self,
        req: pb::GetBreakerPolicyRequest,
    ) -> Result<pb::BreakerPolicy, Status> {
        let (config, _) = self.store.current_config().await?;
        let service = config
            .service(&req.service)
            .ok_or_else(|| Status::not_found(format!("no service {:?}", req.service)))?;
        Ok(breaker_policy(
            &service.name,
            service.circuit_breaker.as_ref(),
        ))
    }

    async fn set_breaker(
        &self,
        req: pb::SetBreakerPolicyRequest,
    ) -> Result<pb::BreakerPolicy, Status> {
        let policy = req
            .policy
            .ok_or_else(|| Status::invalid_argument("policy: required"))?;
        let name = policy.service.clone();
        if name.is_empty() {
            return Err(Status::invalid_argument("policy.service: required"));
        }
        let breaker = breaker_config(&policy);
        let mut errors = Vec::new();
        breaker.validate("policy", &mut errors);
        if !errors.is_empty() {
            return Err(Status::invalid_argument(format!(
                "invalid breaker policy: {}",
                errors.join("; ")
            )));
        }
        let edit = |current: &GatewayConfig| {
            let mut next = current.clone();
            let service = next
                .services
                .iter_mut()
                .find(|s| s.name == name)
                .ok_or_else(|| StoreError::NotFound(format!("no service {name:?}")))?;
            service.circuit_breaker = Some(breaker.clone());
            Ok(next)
        };
        let outcome = self
            .store
            .update_config(&edit, false)
            .await
            .map_err(store_config_error)?;
        tracing::info!(service = %name, version = outcome.version, "breaker policy set");
        let service = outcome
            .config
            .service(&name)
            .ok_or_else(|| Status::not_found(format!("no service {name:?}")))?;
        Ok(breaker_policy(&name, service.circuit_breaker.as_ref()))
    }
}

impl Inner {
    async fn invalidate_cache(
        &self,
        request: pb::InvalidateCacheRequest,
    ) -> Result<pb::InvalidateCacheResponse, Status> {
        let pattern = CachePattern::parse(&request.pattern)
            .map_err(|e| Status::invalid_argument(format!("invalid cache pattern: {e}")))?;
        let removed = self.store.invalidate_cache(&pattern).await?;
        tracing::info!(pattern = %pattern, removed, "response cache invalidated");
        Ok(pb::InvalidateCacheResponse {
            removed,
            pattern: pattern.to_string(),
        })
    }

    async fn cache_stats(&self) -> Result<pb::CacheStats, Status> {
        let stats = self.store.cache_stats().await?;
        Ok(pb::CacheStats {
            entries: stats.entries,
            hits: stats.hits,
            misses: stats.misses,
            stores: stats.stores,
            redis_used_memory_bytes: stats.redis_used_memory_bytes,
            index_bytes: stats.index_bytes,
        })
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let result = crate::apikeys::create(self.inner.store.as_ref(), request.into_inner()).await;
        self.inner
            .metrics
            .observe("Admin/CreateApiKey", result)
            .map(Response::new)
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        let result = crate::apikeys::revoke(self.inner.store.as_ref(), request.into_inner()).await;
        self.inner
            .metrics
            .observe("Admin/RevokeApiKey", result)
            .map(Response::new)
    }

    async fn list_api_keys(
        &self,
        _request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let result = crate::apikeys::list(self.inner.store.as_ref()).await;
        self.inner
            .metrics
            .observe("Admin/ListApiKeys", result)
            .map(Response::new)
    }

    async fn invalidate_cache(
        &self,
        request: Request<pb::InvalidateCacheRequest>,
    ) -> Result<Response<pb::InvalidateCacheResponse>, Status> {
        let result = self.inner.invalidate_cache(request.into_inner()).await;
        self.inner
            .metrics
            .observe("Admin/InvalidateCache", result)
            .map(Response::new)
    }

    async fn get_cache_stats(
        &self,
        _request: Request<pb::GetCacheStatsRequest>,
    ) -> Result<Response<pb::CacheStats>, Status> {
        let result = self.inner.cache_stats().await;
        self.inner
            .metrics
            .observe("Admin/GetCacheStats", result)
            .map(Response::new)
    }

    async fn apply_config(
        &self,
        request: Request<pb::ApplyConfigRequest>,
    ) -> Result<Response<pb::ApplyConfigResponse>, Status> {
        let result = self.inner.apply_config(request.into_inner()).await;
        self.inner
            .metrics
            .observe("Admin/ApplyConfig", result)
            .map(Response::new)
    }

    async fn get_config(
        &self,
        request: Request<pb::GetConfigRequest>,
    ) -> Result<Response<pb::GetConfigResponse>, Status> {
        let result = self.inner.get_config(request.into_inner()).await;
        self.inner
            .metrics
            .observe("Admin/GetConfig", result)
            .map(Response::new)
    }

    async fn list_instances(
        &self,
        request: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<pb::ListInstancesResponse>, Status> {
        let result = self.inner.list_instances(request.into_inner()).await;
        self.inner
            .metrics
            .observe("Admin/ListInstances", result)
            .map(Response::new)
    }

    async fn drain(
        &self,
        request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        let result = self.inner.drain(request.into_inner(), true).await;
        self.inner
            .metrics
            .observe("Admin/Drain", result)
            .map(Response::new)
    }

    async fn undrain(
        &self,
        request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        let result = self.inner.drain(request.into_inner(), false).await;
        self.inner
            .metrics
            .observe("Admin/Undrain", result)
            .map(Response::new)
    }

    async fn get_topology(
        &self,
        _request: Request<pb::TopologyRequest>,
    ) -> Result<Response<pb::Topology>, Status> {
        let result = self.inner.topology().await;
        self.inner
            .metrics
            .observe("Admin/GetTopology", result)
            .map(Response::new)
    }

    type WatchTopologyStream = ReceiverStream<Result<pb::Topology, Status>>;

    async fn watch_topology(
        &self,
        _request: Request<pb::TopologyRequest>,
    ) -> Result<Response<Self::WatchTopologyStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(self.inner.clone().watch_topology(tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list_data_planes(
        &self,
        _request: Request<pb::ListDataPlanesRequest>,
    ) -> Result<Response<pb::ListDataPlanesResponse>, Status> {
        let result = self.inner.list_dataplanes().await;
        self.inner
            .metrics
            .observe("Admin/ListDataPlanes", result)
            .map(Response::new)
    }

    async fn get_breaker_policy(
        &self,
        request: Request<pb::GetBreakerPolicyRequest>,
    ) -> Result<Response<pb::BreakerPolicy>, Status> {
        let result = self.inner.get_breaker(request.into_inner()).await;
        self.inner
            .metrics
            .observe("Admin/GetBreakerPolicy", result)
            .map(Response::new)
    }

    async fn set_breaker_policy(
        &self,
        request: Request<pb::SetBreakerPolicyRequest>,
    ) -> Result<Response<pb::BreakerPolicy>, Status> {
        let result = self.inner.set_breaker(request.into_inner()).await;
        self.inner
            .metrics
            .observe("Admin/SetBreakerPolicy", result)
            .map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_policy_round_trips_and_zero_means_default() {
        let cb = BreakerConfig {
            error_threshold_percent: 30,
            reset_timeout: Duration::from_secs(5),
            ..BreakerConfig::default()
        };
        let policy = breaker_policy("a", Some(&cb));
        assert_eq!(breaker_config(&policy), cb);
        let sparse = pb::BreakerPolicy {
            service: "a".into(),
            enabled: true,
            error_threshold_percent: 30,
            ..Default::default()
        };
        let expanded = breaker_config(&sparse);
        assert_eq!(expanded.error_threshold_percent, 30);
        assert_eq!(
            expanded.reset_timeout,
            BreakerConfig::default().reset_timeout
        );
    }

    #[test]
    fn a_service_without_a_breaker_reports_it_disabled() {
        let policy = breaker_policy("a", None);
        assert!(!policy.enabled);
        assert_eq!(policy.error_threshold_percent, 50);
    }

    #[test]
    fn fingerprints_ignore_clocks() {
        let topology = |lease: u64, seen: u64, acked: u64| pb::Topology {
            version: 1,
            services: vec![pb::ServiceTopology {
                name: "a".into(),
                instances: vec![pb::InstanceStatus {
                    lease_remaining_ms: lease,
                    ..Default::default()
                }],
            }],
            data_planes: vec![pb::DataPlaneStatus {
                last_seen_unix_ms: seen,
                acked_version: acked,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            fingerprint(&topology(1, 2, 3)),
            fingerprint(&topology(9, 8, 3))
        );
        assert_ne!(
            fingerprint(&topology(1, 2, 3)),
            fingerprint(&topology(1, 2, 4))
        );
    }
}
