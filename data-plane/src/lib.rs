//! The gateway's data plane: a stateless HTTP proxy that takes its routing
//! config from the control plane's Discovery stream (or, standalone, from a
//! file), matches routes, balances over routable instances and streams
//! requests and responses through pooled keep-alive connections.
//!
//! [`DataPlane::start`] runs it inside the caller's tokio runtime, so the
//! `data-plane` binary and `gwctl dev` share one implementation.

pub mod cli;
pub mod cluster_tls;
pub mod config;
pub mod connection;
pub mod edge;
pub mod headers;
pub mod ops;
pub mod policy;
pub mod proxy;
pub mod rolling;
pub mod settings;
pub mod shared_state;
pub mod upstream;

// The paths the binary, the integration tests and the benches use.
pub use config::{discovery, runtime};
pub use edge::shutdown;
pub use policy::auth::{self, jwks};
pub use policy::ratelimit;
pub use settings::Settings;
pub use shutdown::ShutdownHandle;

use anyhow::Context as _;
use config::cache as config_cache;
use config::runtime::Runtime;
use config::standalone;
use edge::server;
use ops::metrics::Metrics;
use ops::{access_log, admin, health};
use policy::auth::{credentials, session};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A running data plane.
#[derive(Debug)]
pub struct DataPlane {
    listen_addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    admin_addr: SocketAddr,
    runtime: Arc<Runtime>,
    metrics: Arc<Metrics>,
    shutdown: ShutdownHandle,
    proxy: JoinHandle<()>,
    admin: JoinHandle<std::io::Result<()>>,
    /// Stops the admin listener once the proxy has drained.
    admin_stop: tokio::sync::watch::Sender<bool>,
    background: Vec<JoinHandle<()>>,
}

impl DataPlane {
    /// Binds both listeners, loads the file config in standalone mode (a bad
    /// file refuses to start) or the cached config and starts the Discovery
    /// client, and returns once serving.
    pub async fn start(settings: Settings) -> anyhow::Result<DataPlane> {
        let metrics = Arc::new(Metrics::new());
        let runtime = Arc::new(Runtime::new(metrics.clone()));
        if let Some(path) = &settings.config_file {
            let version = standalone::reload(&runtime, path, &settings.service_urls)
                .context("refusing to start: the config file cannot be used")?;
            tracing::info!(file = %path.display(), version, "standalone config loaded");
        } else if !settings.service_urls.is_empty() {
            tracing::warn!(
                "*_SERVICE_URL variables only apply in standalone mode (--config); ignored"
            );
        }
        // Standalone mode has its file: no cache.
        let config_cache = match (&settings.config_file, &settings.config_cache) {
            (None, Some(dir)) => {
                let cache = Arc::new(config_cache::ConfigCache::new(dir));
                cache.restore(&runtime);
                Some(cache)
            }
            _ => None,
        };
        // The certificates are checked before anything listens: a data
        // plane that cannot serve HTTPS as asked does not start.
        let tls = match settings.tls.clone() {
            Some(tls) => {
                let edge = edge::tls::TlsEdge::load(tls, metrics.tls.clone())
                    .context("refusing to start: the HTTPS listener cannot be set up")?;
                let addr = edge.settings().listen;
                let listener =
                    bind(addr).with_context(|| format!("cannot listen on {addr} (HTTPS)"))?;
                Some((edge, listener))
            }
            None => None,
        };
        let listener = bind(settings.listen)
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let admin_listener = TcpListener::bind(settings.admin_listen)
            .await
            .with_context(|| format!("cannot listen on {} (admin)", settings.admin_listen))?;
        let listen_addr = listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;

        let (shutdown, stop_rx) = ShutdownHandle::new();
        let jwks = settings.jwks.clone().map(jwks::JwksKeys::start);
        let verifier = (settings.jwt.is_some() || jwks.is_some())
            .then(|| Arc::new(auth::Verifier::build(settings.jwt.as_ref(), jwks)));
        let started = std::time::Instant::now();
        let shared = match &settings.redis_url {
            Some(url) => Some(
                shared_state::SharedState::start(
                    url,
                    &settings.redis_tls,
                    &settings.redis_key_prefix,
                    settings.redis_timeout,
                )
                .context("refusing to start")?,
            ),
            None => None,
        };
        let limiter = ratelimit::RateLimiter::new(
            &settings.rate_limit,
            shared.clone(),
            metrics.ratelimit.clone(),
        );
        let credentials = shared.clone().map(credentials::Credentials::start);
        let sessions = match (&settings.session, &settings.jwt, &verifier) {
            (Some(session), Some(jwt), Some(access)) => Some(Arc::new(session::Sessions::new(
                session.clone(),
                jwt,
                access.clone(),
                shared.clone(),
                credentials
                    .clone()
                    .unwrap_or_else(credentials::Credentials::new),
            ))),
            _ => None,
        };
        if sessions.is_some() && shared.is_none() {
            tracing::warn!("JWT_REFRESH_SECRET is set without REDIS_URL: the refresh and logout endpoints answer 503");
        }
        let health = health::HealthSources {
            runtime: runtime.clone(),
            metrics: metrics.clone(),
            shared: shared.clone(),
            standalone: settings.config_file.is_some(),
            config_cache: config_cache.as_ref().map(|c| c.status().clone()),
            started,
        };
        let proxy = Arc::new(
            proxy::Proxy::new(runtime.clone(), metrics.clone())
                .with_verifier(verifier)
                .with_credentials(credentials.clone(), sessions)
                .with_trusted_proxies(settings.trusted_proxies.clone())
                .with_shared_state(shared)
                .with_rate_limiter(limiter)
                .with_access_log(access_log::AccessLog::new(settings.access_log)),
        );
        let timeouts = server::Timeouts {
            grace: settings.shutdown_grace,
            header_read: settings.header_read_timeout,
        };
        let mut background = Vec::new();
        let mut tls_addr = None;
        let plain = tokio::spawn(server::serve(
            listener,
            edge::transport::Plain {
                first_bytes: settings.header_read_timeout,
            },
            proxy.clone(),
            stop_rx.clone(),
            timeouts,
        ));
        let proxy = match tls {
            None => plain,
            Some((edge, listener)) => {
                let addr = listener.local_addr()?;
                tls_addr = Some(addr);
                let handshake = edge.handshake(addr.port());
                let (reloader, every) = edge.into_reloader();
                background.push(tokio::spawn(reloader.run(every, stop_rx.clone())));
                let secure = tokio::spawn(server::serve(
                    listener,
                    handshake,
                    proxy,
                    stop_rx.clone(),
                    timeouts,
                ));
                // Both listeners drain on shutdown; the data plane has
                // stopped once both have.
                tokio::spawn(async move {
                    let _ = plain.await;
                    let _ = secure.await;
                })
            }
        };
        let (admin_stop, admin_stop_rx) = tokio::sync::watch::channel(false);
        let admin = tokio::spawn(serve_admin(
            admin_listener,
            admin::AdminState {
                runtime: runtime.clone(),
                metrics: metrics.clone(),
                stopping: stop_rx.clone(),
                credentials: credentials.clone(),
                health,
            },
            admin_stop_rx,
        ));
        match &settings.config_file {
            Some(path) => {
                background.push(tokio::spawn(reload_on_sighup(
                    runtime.clone(),
                    path.clone(),
                    settings.service_urls.clone(),
                    stop_rx.clone(),
                )));
            }
            None => {
                // An https:// URL always speaks TLS: with the platform's
                // roots when no settings were given.
                let tls = match &settings.control_plane_tls {
                    Some(tls) => Some(tls.clone()),
                    None => gateway_common::grpc_tls::ClientTls::for_url(
                        &settings.control_plane,
                        cluster_tls::CONTROL_PLANE_TLS,
                        Default::default(),
                    )
                    .context("refusing to start")?,
                };
                let config = discovery::DiscoveryConfig {
                    url: settings.control_plane.clone(),
                    tls,
                    node_id: settings.node_id.clone(),
                    token: settings.dataplane_token.clone(),
                    timing: discovery::DiscoveryTiming::default(),
                };
                let applied = config_cache.map(|cache| {
                    let (applied, rx) = config_cache::Applied::channel();
                    background.push(tokio::spawn(config_cache::run_writer(
                        cache,
                        runtime.clone(),
                        metrics.clone(),
                        rx,
                        stop_rx.clone(),
                    )));
                    background.push(tokio::spawn(config_cache::serve_after_grace(
                        runtime.clone(),
                        metrics.clone(),
                        settings.config_cache_grace,
                        stop_rx.clone(),
                    )));
                    applied
                });
                background.push(tokio::spawn(discovery::run(
                    config,
                    runtime.clone(),
                    metrics.clone(),
                    applied,
                    stop_rx.clone(),
                )));
            }
        }
        tracing::info!(%listen_addr, tls_addr = ?tls_addr, %admin_addr, node_id = %settings.node_id, "data plane listening");
        Ok(DataPlane {
            listen_addr,
            tls_addr,
            admin_addr,
            runtime,
            metrics,
            shutdown,
            proxy,
            admin,
            admin_stop,
            background,
        })
    }

    /// The bound public address.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    /// The bound HTTPS address, when an HTTPS listener is configured.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The routing state (version, readiness, in-flight counts).
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// A handle that starts the graceful shutdown from elsewhere (a signal
    /// handler); [`DataPlane::wait`] then returns once drained.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Stops accepting, lets in-flight requests finish within the grace
    /// period, then stops everything.
    pub async fn shutdown(self) {
        self.shutdown.trigger();
        if let Err(e) = self.wait().await {
            tracing::warn!(error = %e, "data plane stopped with an error");
        }
    }

    /// Resolves when the data plane has stopped: `Ok` after a shutdown asked
    /// through [`DataPlane::shutdown_handle`], an error if a listener failed.
    pub async fn wait(self) -> anyhow::Result<()> {
        let DataPlane {
            shutdown,
            mut proxy,
            mut admin,
            admin_stop,
            background,
            ..
        } = self;
        let admin_result = tokio::select! {
            _ = &mut proxy => None,
            result = &mut admin => Some(result),
        };
        let asked = shutdown.is_triggered();
        shutdown.trigger();
        if admin_result.is_some() {
            let _ = proxy.await;
        }
        admin_stop.send_replace(true);
        let admin_result = match admin_result {
            Some(result) => result,
            None => admin.await,
        };
        for task in background {
            let _ = task.await;
        }
        match admin_result {
            Ok(Err(e)) => return Err(anyhow::Error::new(e).context("admin listener failed")),
            Err(e) => return Err(anyhow::Error::new(e).context("admin listener panicked")),
            Ok(Ok(())) => {}
        }
        if asked {
            Ok(())
        } else {
            anyhow::bail!("the proxy listener stopped unexpectedly")
        }
    }
}

/// Accept queue of the public listener (the kernel caps it at somaxconn).
const LISTEN_BACKLOG: u32 = 4096;

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn serve_admin(
    listener: TcpListener,
    state: admin::AdminState,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(listener, admin::router(state))
        .with_graceful_shutdown(async move {
            shutdown::stopped(&mut stop).await;
        })
        .await
}

async fn reload_on_sighup(
    runtime: Arc<Runtime>,
    path: std::path::PathBuf,
    service_urls: Vec<(String, String)>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(hup) => hup,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; no config reload");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hup.recv() => match standalone::reload(&runtime, &path, &service_urls) {
                    Ok(version) => tracing::info!(file = %path.display(), version, "config reloaded"),
                    Err(e) => tracing::error!(error = %e, "config reload failed; keeping the current config"),
                },
                _ = shutdown::stopped(&mut stop) => return,
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (runtime, path, service_urls);
        shutdown::stopped(&mut stop).await;
    }
}
