//! An in-process echo upstream for tests that run the gateway in the same
//! process (tokio tests): a real HTTP/1.1 server (plain or HTTPS) on
//! 127.0.0.1:0 with
//! behaviours chosen by the request path. End-to-end tests use the
//! `test-upstream` binary instead (see [`crate::cluster::Upstream`]).

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};

/// Any error of a test body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of test requests and of the upstream's answers.
pub type TestBody = BoxBody<Bytes, BoxError>;

/// A real HTTP/1.1 upstream on 127.0.0.1:0.
///
/// Behaviours are chosen by a marker anywhere in the path:
/// * `/slow/MS...` waits MS milliseconds, then answers like the default.
/// * `/stream...` sends `first-chunk` at once and `last-chunk` only once
///   [`Upstream::release`] is called.
/// * `/echo-body...` streams the request body back as it arrives.
/// * `/close...` answers and closes the connection (`Connection: close`).
/// * `/count-body...` answers with the number of body bytes received.
/// * anything else: JSON with the upstream's name, method, uri and headers,
///   with the status of [`Upstream::set_status`] (200 until then); the
///   response carries hop-by-hop and `x-internal-*` headers that must not
///   reach clients.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its name (`x-upstream`, `upstream` in the JSON answer).
    pub name: String,
    hits: Arc<AtomicUsize>,
    status: Arc<AtomicU16>,
    connections: Arc<AtomicUsize>,
    release: Arc<Notify>,
    last_headers: Arc<Mutex<Option<hyper::HeaderMap>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    /// Starts one on a free port of 127.0.0.1; it stops when dropped.
    pub async fn start(name: &str) -> Upstream {
        Self::start_with(name, None).await
    }

    /// [`Upstream::start`] serving HTTPS with `tls` (see
    /// [`crate::certs::server_config`]); connections whose handshake fails
    /// are dropped and not counted.
    pub async fn start_tls(name: &str, tls: Arc<rustls::ServerConfig>) -> Upstream {
        Self::start_with(name, Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    async fn start_with(name: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let status = Arc::new(AtomicU16::new(200));
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        let release = Arc::new(Notify::new());
        let last_headers = Arc::new(Mutex::new(None));
        let ctx = Arc::new(Ctx {
            name: name.to_string(),
            hits: hits.clone(),
            status: status.clone(),
            release: release.clone(),
            last_headers: last_headers.clone(),
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (ctx, tls, accepted) = (ctx.clone(), tls.clone(), accepted.clone());
                tokio::spawn(async move {
                    match tls {
                        None => {
                            accepted.fetch_add(1, Ordering::SeqCst);
                            serve(ctx, stream).await;
                        }
                        Some(tls) => {
                            let Ok(stream) = tls.accept(stream).await else {
                                return;
                            };
                            accepted.fetch_add(1, Ordering::SeqCst);
                            serve(ctx, stream).await;
                        }
                    }
                });
            }
        });
        Upstream {
            addr,
            name: name.to_string(),
            hits,
            status,
            connections,
            release,
            last_headers,
            task,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Lets a `/stream` response send its last chunk.
    pub fn release(&self) {
        self.release.notify_one();
    }

    /// The headers of the last request received.
    pub fn last_headers(&self) -> hyper::HeaderMap {
        self.last_headers.lock().unwrap().clone().unwrap()
    }

    /// Makes later default answers carry `status`.
    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves HTTP/1.1 on `stream` with `ctx`'s behaviours.
async fn serve<S>(ctx: Arc<Ctx>, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(ctx.handle(req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

struct Ctx {
    name: String,
    hits: Arc<AtomicUsize>,
    status: Arc<AtomicU16>,
    release: Arc<Notify>,
    last_headers: Arc<Mutex<Option<hyper::HeaderMap>>>,
}

impl Ctx {
    async fn handle(&self, req: Request<Incoming>) -> Response<TestBody> {
        self.hits.fetch_add(1, Ordering::SeqCst);
        *self.last_headers.lock().unwrap() = Some(req.headers().clone());
        let path = req.uri().path().to_string();
        if let Some((_, rest)) = path.split_once("/slow/") {
            let ms: u64 = rest.split('/').next().unwrap().parse().unwrap();
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if path.contains("/stream") {
            let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
            let release = self.release.clone();
            tokio::spawn(async move {
                tx.send(Ok(Frame::data(Bytes::from_static(b"first-chunk;"))))
                    .await
                    .ok();
                release.notified().await;
                tx.send(Ok(Frame::data(Bytes::from_static(b"last-chunk"))))
                    .await
                    .ok();
            });
            let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
            return Response::new(BodyExt::boxed(body));
        }
        if path.contains("/echo-body") {
            return Response::new(req.into_body().map_err(|e| Box::new(e) as BoxError).boxed());
        }
        if path.contains("/count-body") {
            let mut body = req.into_body();
            let mut n = 0usize;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => n += f.data_ref().map_or(0, |d| d.len()),
                    Err(_) => break,
                }
            }
            return Response::new(full(n.to_string()));
        }
        let headers: serde_json::Map<String, serde_json::Value> = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    serde_json::Value::String(v.to_str().unwrap_or("").to_string()),
                )
            })
            .collect();
        let body = serde_json::json!({
            "upstream": self.name,
            "method": req.method().as_str(),
            "uri": req.uri().to_string(),
            "headers": headers,
        });
        let close = path.contains("/close");
        let status = StatusCode::from_u16(self.status.load(Ordering::SeqCst))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Response::builder()
            .status(status)
            .header("connection", if close { "close" } else { "x-hop" })
            .header("content-type", "application/json")
            .header("x-upstream", &self.name)
            .header("keep-alive", "timeout=5")
            .header("x-hop", "secret")
            .header("x-internal-service-key", "must-not-leak")
            .body(full(body.to_string()))
            .unwrap()
    }
}

/// A body of `text`, whole.
pub fn full(text: impl Into<Bytes>) -> TestBody {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub fn empty() -> TestBody {
    full(Bytes::new())
}
