//! The public listeners: accept connections, serve each with the proxy
//! stack over HTTP/1.1 keep-alive or HTTP/2, and drain on shutdown. One loop
//! serves the plain listener and the HTTPS one, generic over the
//! connection's [`Handshake`] (`edge/transport.rs`), which also tells the
//! protocol the connection speaks (ALPN, or the h2c preface).

use crate::edge::framing::{FramingWatch, Watched};
use crate::edge::request_id::{InFlightLayer, RequestIdLayer};
use crate::edge::transport::{Handshake, Protocol};
use crate::headers::peer_value;
use crate::proxy::{self, Proxy};
use crate::settings::http2 as limits;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
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
    let h2 = Arc::new(h2_builder());
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let in_flight = proxy.metrics().in_flight.clone();
    let open_connections = proxy.metrics().open_connections.clone();
    let served = proxy.metrics().connections.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let open = ConnectionGauge::open(&open_connections);
                    let ready = handshake.handshake(stream);
                    let watcher = graceful.watcher();
                    let (http, h2, proxy, in_flight, served) =
                        (http.clone(), h2.clone(), proxy.clone(), in_flight.clone(), served.clone());
                    let mut stop = shutdown.clone();
                    connections.spawn(async move {
                        let _open = open;
                        // A connection still in its handshake, or whose
                        // first bytes have not come, has no request to
                        // finish: shutdown drops it rather than wait.
                        let ready = tokio::select! {
                            ready = ready => ready,
                            _ = crate::edge::shutdown::stopped(&mut stop) => None,
                        };
                        let Some((stream, facts, protocol)) = ready else { return };
                        match protocol {
                            Protocol::Http1 => served.http1.inc(),
                            Protocol::H2 => served.h2.inc(),
                        };
                        let framing = FramingWatch::new();
                        let service = ServiceBuilder::new()
                            .layer(RequestIdLayer)
                            .layer(InFlightLayer::new(in_flight))
                            .service(proxy::service(proxy, peer_value(peer.ip()), framing.clone(), facts));
                        let service = TowerToHyperService::new(service);
                        let ended = match protocol {
                            Protocol::Http1 => {
                                let stream = TokioIo::new(Watched::new(stream, framing));
                                watcher.watch(http.serve_connection(stream, service)).await
                            }
                            // No `Watched` stream: its screen (both
                            // Content-Length and Transfer-Encoding in one
                            // head) is about HTTP/1 framing, and HTTP/2 frames
                            // bodies itself (DATA frames and END_STREAM; the
                            // h2 crate refuses Transfer-Encoding and a
                            // Content-Length the DATA frames do not match), so
                            // scanning its binary frames as lines would only
                            // risk false alarms. Nor its lingering close: an
                            // answer sent before its request body is read ends
                            // that stream alone (RST_STREAM(NO_ERROR), RFC 9113
                            // section 8.1) and the connection stays open, and
                            // the connection itself ends with GOAWAY.
                            Protocol::H2 => {
                                watcher.watch(h2.serve_connection(TokioIo::new(stream), service)).await
                            }
                        };
                        if let Err(e) = ended {
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

/// hyper's HTTP/2 server with the bounds of `settings::http2`: streams,
/// header list, flow-control windows, frame size, resets (rapid reset), and
/// keep-alive pings. Streams run as tasks of their own (the executor), so a
/// slow one does not hold up the others.
fn h2_builder() -> http2::Builder<TokioExecutor> {
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(limits::MAX_CONCURRENT_STREAMS)
        .max_header_list_size(limits::MAX_HEADER_LIST_BYTES)
        .initial_stream_window_size(limits::STREAM_WINDOW_BYTES)
        .initial_connection_window_size(limits::CONNECTION_WINDOW_BYTES)
        .max_frame_size(limits::MAX_FRAME_BYTES)
        .max_pending_accept_reset_streams(limits::MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(limits::MAX_LOCAL_ERROR_RESETS)
        .max_send_buf_size(limits::MAX_SEND_BUFFER_BYTES)
        .keep_alive_interval(limits::KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(limits::KEEP_ALIVE_TIMEOUT);
    h2
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
