//! The public listeners: accept connections, serve each with the proxy
//! stack over HTTP/1.1 keep-alive, and drain on shutdown. One loop serves
//! the plain listener and the HTTPS one, generic over the connection's
//! [`Handshake`] (`edge/transport.rs`).

use crate::edge::framing::{FramingWatch, Watched};
use crate::edge::request_id::{InFlightLayer, RequestIdLayer};
use crate::edge::transport::Handshake;
use crate::headers::peer_value;
use crate::proxy::{self, Proxy};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceBuilder;

/// The listener's time limits.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Time open connections get to finish their requests on shutdown.
    pub grace: Duration,
    /// Time a client gets to send a request head once one is awaited.
    pub header_read: Duration,
}

/// Serves `listener` until `shutdown` turns true, then stops accepting and
/// gives open connections `timeouts.grace` to finish their requests. Each
/// accepted connection goes through `handshake` (in its own task) before
/// HTTP is served on it.
pub async fn serve<H: Handshake>(
    listener: TcpListener,
    handshake: H,
    proxy: Arc<Proxy>,
    mut shutdown: watch::Receiver<bool>,
    timeouts: Timeouts,
) {
    let Timeouts { grace, header_read } = timeouts;
    let mut http = http1::Builder::new();
    // One flattened send per response rather than a writev of head and body:
    // measured cheaper in the kernel for the small answers APIs mostly give.
    http.writev(false)
        .timer(TokioTimer::new())
        .header_read_timeout(header_read)
        .max_header_size(crate::settings::MAX_REQUEST_HEAD_BYTES)
        .keep_alive(true);
    let http = Arc::new(http);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let in_flight = proxy.metrics().in_flight.clone();
    let open_connections = proxy.metrics().open_connections.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let open = ConnectionGauge::open(&open_connections);
                    let ready = handshake.handshake(stream);
                    let watcher = graceful.watcher();
                    let (http, proxy, in_flight) = (http.clone(), proxy.clone(), in_flight.clone());
                    connections.spawn(async move {
                        let _open = open;
                        let Some((stream, facts)) = ready.await else { return };
                        let framing = FramingWatch::new();
                        let service = ServiceBuilder::new()
                            .layer(RequestIdLayer)
                            .layer(InFlightLayer::new(in_flight))
                            .service(proxy::service(proxy, peer_value(peer.ip()), framing.clone(), facts));
                        let stream = TokioIo::new(Watched::new(stream, framing));
                        let conn = http.serve_connection(stream, TowerToHyperService::new(service));
                        if let Err(e) = watcher.watch(conn).await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off a little.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = crate::edge::shutdown::stopped(&mut shutdown) => break,
        }
    }
    drop(listener);
    let open = graceful.count();
    tracing::info!(
        open_connections = open,
        grace_ms = grace.as_millis() as u64,
        "stopped accepting; draining"
    );
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing the remaining connections");
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

/// Counts one open client connection until dropped (also when the
/// connection's task is aborted at the end of the grace period).
struct ConnectionGauge(prometheus_client::metrics::gauge::Gauge);

impl ConnectionGauge {
    fn open(gauge: &prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}
