//! Wiring of one control-plane replica: store, view, leader election, the
//! gRPC and HTTP servers, and their graceful shutdown.

use crate::admin::AdminService;
use crate::auth::BearerAuth;
use crate::discovery::{DiscoveryContext, DiscoveryServer, StatusWriter, UpdateCache};
use crate::http::{router, HttpState};
use crate::leader::LeaderDuties;
use crate::metrics::Metrics;
use crate::registry::RegistryService;
use crate::settings::Settings;
use crate::store::memory::MemoryStore;
use crate::store::redis::RedisStore;
use crate::store::Store;
use crate::tls::ServerTls;
use crate::view::{self, View};
use anyhow::Context;
use gateway_proto::v1::admin_server::AdminServer;
use gateway_proto::v1::registry_server::RegistryServer;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

/// Time allowed for a graceful shutdown before tasks are aborted.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often grpc.health.v1 statuses follow the store's reachability.
const HEALTH_REPORT_EVERY: Duration = Duration::from_secs(2);
/// gRPC services whose health is reported.
const SERVICE_NAMES: [&str; 4] = [
    "",
    "gateway.v1.Registry",
    "gateway.v1.Admin",
    "gateway.v1.Discovery",
];

type Critical = JoinSet<(&'static str, anyhow::Result<()>)>;

/// A running control-plane replica.
pub struct ControlPlane {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    replica_id: String,
    cancel: CancellationToken,
    critical: Critical,
    sessions: TaskTracker,
    leading: watch::Receiver<bool>,
}

/// Triggers the graceful shutdown of a [`ControlPlane`] from elsewhere
/// (e.g. a signal handler) while [`ControlPlane::wait`] runs.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(CancellationToken);

impl ShutdownHandle {
    /// Starts the graceful shutdown; `wait` then returns `Ok(())`.
    pub fn shutdown(&self) {
        self.0.cancel();
    }
}

async fn open_store(settings: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    match &settings.redis_url {
        Some(url) => {
            let store =
                RedisStore::connect_with_tls(url, &settings.redis_tls, &settings.key_prefix)
                    .await
                    .context("cannot use Redis (REDIS_URL)")?;
            tracing::info!(prefix = %settings.key_prefix, "using the Redis store");
            Ok(Arc::new(store))
        }
        None => {
            tracing::warn!(
                "REDIS_URL is not set: using the in-memory store; nothing is durable and only one replica may run"
            );
            Ok(Arc::new(MemoryStore::new()))
        }
    }
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({what})"))
}

fn warn_if_unauthenticated(settings: &Settings) {
    for (name, token) in [
        ("GW_ADMIN_TOKEN", &settings.admin_token),
        ("GW_REGISTRATION_TOKEN", &settings.registration_token),
    ] {
        if Settings::token(token).is_none() {
            tracing::warn!("{name} is not set and unauthenticated access is allowed: ANYONE who reaches the gRPC port can use these calls");
        }
    }
    if Settings::token(&settings.dataplane_token).is_none() {
        tracing::info!("GW_DATAPLANE_TOKEN is not set: Discovery streams need no token");
    }
}

/// Sets grpc.health.v1 statuses from the store's reachability until
/// `cancel` fires, then reports NOT_SERVING.
async fn report_health(
    reporter: tonic_health::server::HealthReporter,
    store: Arc<dyn Store>,
    cancel: CancellationToken,
) {
    loop {
        let status = match store.ping().await {
            Ok(()) => ServingStatus::Serving,
            Err(_) => ServingStatus::NotServing,
        };
        for name in SERVICE_NAMES {
            reporter.set_service_status(name, status).await;
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(HEALTH_REPORT_EVERY) => {}
        }
    }
    for name in SERVICE_NAMES {
        reporter
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }
}

impl ControlPlane {
    /// Binds both listeners, opens the store, loads the view and starts
    /// serving; returns once everything runs. Connections that arrive
    /// while the view loads wait in the listeners' backlog.
    pub async fn start(settings: Settings) -> anyhow::Result<ControlPlane> {
        settings.check()?;
        if settings.allow_unauthenticated {
            warn_if_unauthenticated(&settings);
        }
        let tls = ServerTls::load(
            settings.tls_cert.as_deref(),
            settings.tls_key.as_deref(),
            settings.tls_client_ca.as_deref(),
        )
        .context("cannot use the gRPC port's TLS settings")?;
        let grpc_listener = bind(settings.grpc_addr, "gRPC").await?;
        let http_listener = bind(settings.http_addr, "HTTP").await?;
        let store = open_store(&settings).await?;
        let (snapshot, history) = view::load_snapshot(store.as_ref())
            .await
            .context("cannot load the control plane's state from the store")?;
        let view = View::new(snapshot, history, settings.delta_ring);
        let grpc_addr = grpc_listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;

        let cancel = CancellationToken::new();
        let metrics = Arc::new(Metrics::new());
        let sessions = TaskTracker::new();
        let discovery = Arc::new(DiscoveryContext {
            view: view.clone(),
            store: store.clone(),
            replica: settings.replica_id.clone(),
            metrics: metrics.clone(),
            cache: UpdateCache::default(),
            sessions: Default::default(),
            status: Arc::new(StatusWriter::default()),
            cancel: cancel.clone(),
            tracker: sessions.clone(),
        });
        sessions.spawn(discovery.status.clone().run(store.clone(), cancel.clone()));
        let mut critical = Critical::new();

        let grpc = grpc_server(
            &settings,
            tls.as_ref(),
            &store,
            &view,
            &metrics,
            &discovery,
            &cancel,
        )?;
        let grpc_cancel = cancel.clone();
        critical.spawn(async move {
            // Without TCP_NODELAY the tail of a large snapshot, or a delta
            // right behind another, can wait for a delayed ACK (40 ms).
            let incoming = TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
            let served = grpc
                .serve_with_incoming_shutdown(incoming, grpc_cancel.cancelled_owned())
                .await;
            ("gRPC server", served.map_err(anyhow::Error::from))
        });

        let app = router(HttpState {
            store: store.clone(),
            view: view.clone(),
            metrics: metrics.clone(),
            discovery: discovery.clone(),
        });
        let http_cancel = cancel.clone();
        critical.spawn(async move {
            let served = axum::serve(http_listener, app)
                .with_graceful_shutdown(http_cancel.cancelled_owned())
                .await;
            ("HTTP server", served.map_err(anyhow::Error::from))
        });

        let follower = view::follow(view.clone(), store.clone(), metrics.clone(), cancel.clone());
        critical.spawn(async move { ("change-log follower", follower.await) });

        let (leading_tx, leading) = watch::channel(false);
        let duties = LeaderDuties {
            store: store.clone(),
            view: view.clone(),
            metrics: metrics.clone(),
            replica: settings.replica_id.clone(),
            ttl: settings.leader_ttl,
            lease_sweep_interval: settings.lease_sweep_interval,
        };
        let leader_cancel = cancel.clone();
        critical.spawn(async move {
            (
                "leader election",
                duties.run(leading_tx, leader_cancel).await,
            )
        });

        tracing::info!(
            grpc = %grpc_addr,
            http = %http_addr,
            replica = %settings.replica_id,
            store = store.kind(),
            grpc_tls = match &tls {
                None => "off",
                Some(tls) if tls.requires_client_certificates() => "mutual",
                Some(_) => "on",
            },
            version = view.stamp().version,
            "control plane started"
        );
        Ok(ControlPlane {
            grpc_addr,
            http_addr,
            replica_id: settings.replica_id,
            cancel,
            critical,
            sessions,
            leading,
        })
    }

    /// Bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// This replica's id.
    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    /// Whether this replica currently runs health checks and lease expiry.
    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    /// A handle that starts the graceful shutdown.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.cancel.clone())
    }

    /// Stops gracefully: streams end, the leader lock is released, data
    /// planes are recorded as disconnected.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.wait().await;
    }

    /// Runs until the control plane stops: `Ok(())` after a shutdown asked
    /// through a [`ShutdownHandle`], an error when a server or task stopped
    /// on its own (the rest is then shut down too).
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let fatal = tokio::select! {
            _ = self.cancel.cancelled() => None,
            Some(done) = self.critical.join_next() => match done {
                _ if self.cancel.is_cancelled() => None,
                Ok((name, Ok(()))) => Some(anyhow::anyhow!("{name} stopped unexpectedly")),
                Ok((name, Err(e))) => Some(e.context(format!("{name} failed"))),
                Err(e) => Some(anyhow::anyhow!("a control-plane task failed: {e}")),
            },
        };
        if let Some(e) = &fatal {
            tracing::error!(error = %format!("{e:#}"), "control plane stopping");
        }
        self.finish().await;
        fatal.map_or(Ok(()), Err)
    }

    async fn finish(&mut self) {
        self.cancel.cancel();
        self.sessions.close();
        let drain = async {
            while self.critical.join_next().await.is_some() {}
            self.sessions.wait().await;
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            tracing::warn!("graceful shutdown took too long; aborting what is left");
            self.critical.abort_all();
        }
        tracing::info!(replica = %self.replica_id, "control plane stopped");
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

type GrpcRouter = tonic::transport::server::Router<
    tower::layer::util::Stack<
        crate::rpc_metrics::RpcMetricsLayer,
        tower::layer::util::Stack<crate::rpc_spans::RpcSpansLayer, tower::layer::util::Identity>,
    >,
>;

fn grpc_server(
    settings: &Settings,
    tls: Option<&ServerTls>,
    store: &Arc<dyn Store>,
    view: &Arc<View>,
    metrics: &Arc<Metrics>,
    discovery: &Arc<DiscoveryContext>,
    cancel: &CancellationToken,
) -> anyhow::Result<GrpcRouter> {
    let (reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(report_health(reporter, store.clone(), cancel.clone()));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(gateway_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("cannot build the reflection service")?;
    let registry = RegistryServer::with_interceptor(
        RegistryService::new(store.clone(), metrics.clone(), cancel.clone()),
        BearerAuth::new(
            Settings::token(&settings.registration_token),
            "Registry",
            metrics.clone(),
        ),
    );
    let admin = AdminServer::with_interceptor(
        AdminService::new(
            store.clone(),
            view.clone(),
            metrics.clone(),
            settings.replica_id.clone(),
            cancel.clone(),
        ),
        BearerAuth::new(
            Settings::token(&settings.admin_token),
            "Admin",
            metrics.clone(),
        ),
    );
    let discovery = InterceptedService::new(
        DiscoveryServer::new(discovery.clone()),
        BearerAuth::new(
            Settings::token(&settings.dataplane_token),
            "Discovery",
            metrics.clone(),
        ),
    );
    let timing = crate::rpc_metrics::RpcMetricsLayer::new(
        metrics.clone(),
        &[
            gateway_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ],
    );
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls.config())
            .context("cannot use the gRPC port's TLS settings")?;
    }
    Ok(builder
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .layer(crate::rpc_spans::RpcSpansLayer)
        .layer(timing)
        .add_service(health)
        .add_service(reflection)
        .add_service(registry)
        .add_service(admin)
        .add_service(discovery))
}
