//! Test support: small real HTTP upstreams, a data plane started from a
//! config file, and an HTTP client.

#![allow(dead_code)]

use bytes::Bytes;
use data_plane::{DataPlane, Settings};
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
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
/// * anything else: JSON with the upstream's name, method, uri and headers;
///   the response carries hop-by-hop and `x-internal-*` headers that must
///   not reach clients.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    hits: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    release: Arc<Notify>,
    last_headers: Arc<Mutex<Option<http::HeaderMap>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        let release = Arc::new(Notify::new());
        let last_headers = Arc::new(Mutex::new(None));
        let ctx = Arc::new(Ctx {
            name: name.to_string(),
            hits: hits.clone(),
            release: release.clone(),
            last_headers: last_headers.clone(),
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let ctx = ctx.clone();
                        async move { Ok::<_, Infallible>(ctx.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            name: name.to_string(),
            hits,
            connections,
            release,
            last_headers,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Lets a `/stream` response send its last chunk.
    pub fn release(&self) {
        self.release.notify_one();
    }

    pub fn last_headers(&self) -> http::HeaderMap {
        self.last_headers.lock().unwrap().clone().unwrap()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Ctx {
    name: String,
    hits: Arc<AtomicUsize>,
    release: Arc<Notify>,
    last_headers: Arc<Mutex<Option<http::HeaderMap>>>,
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
        Response::builder()
            .status(StatusCode::OK)
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

pub fn full(text: impl Into<Bytes>) -> TestBody {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> TestBody {
    full(Bytes::new())
}

/// A pooled client like a real user's.
pub fn client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A config file in a fresh temporary directory.
pub struct TempConfig {
    pub dir: PathBuf,
    pub path: PathBuf,
}

impl TempConfig {
    pub fn new(content: &str) -> TempConfig {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "dp-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gateway.yaml");
        std::fs::write(&path, content).unwrap();
        TempConfig { dir, path }
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn local_settings() -> Settings {
    Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        node_id: "test-node".into(),
        shutdown_grace: Duration::from_secs(5),
        ..Settings::default()
    }
}

/// A data plane in standalone mode over `config` (YAML).
pub async fn standalone(config: &str) -> (DataPlane, TempConfig) {
    standalone_with(config, |_| {}).await
}

pub async fn standalone_with(
    config: &str,
    tweak: impl FnOnce(&mut Settings),
) -> (DataPlane, TempConfig) {
    let file = TempConfig::new(config);
    let mut settings = local_settings();
    settings.config_file = Some(file.path.clone());
    tweak(&mut settings);
    let plane = DataPlane::start(settings).await.unwrap();
    (plane, file)
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Checks the seed's error body and headers.
    pub fn assert_error(&self, status: u16, code: &str) -> serde_json::Value {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text());
        assert_eq!(self.headers["content-type"], "application/json");
        assert_eq!(self.headers["cache-control"], "no-store");
        let id = self.headers["x-request-id"].to_str().unwrap().to_string();
        let v = self.json();
        let obj = v.as_object().unwrap();
        let mut keys: Vec<_> = obj.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            vec![
                "code",
                "error",
                "message",
                "requestId",
                "statusCode",
                "timestamp"
            ]
        );
        assert_eq!(v["statusCode"], status);
        assert_eq!(v["code"], code);
        assert_eq!(v["requestId"], id.as_str());
        let ts = v["timestamp"].as_str().unwrap();
        assert!(ts.ends_with('Z') && ts.len() == 24, "{ts}");
        assert!(!v["message"].as_str().unwrap().is_empty());
        v
    }
}

pub async fn send(client: &Client<HttpConnector, TestBody>, req: Request<TestBody>) -> Answer {
    let resp = client.request(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body,
    }
}

pub async fn get(plane: &DataPlane, path: &str) -> Answer {
    let req = Request::get(format!("http://{}{}", plane.listen_addr(), path))
        .body(empty())
        .unwrap();
    send(&client(), req).await
}

pub async fn admin_get(plane: &DataPlane, path: &str) -> Answer {
    let req = Request::get(format!("http://{}{}", plane.admin_addr(), path))
        .body(empty())
        .unwrap();
    send(&client(), req).await
}

/// Polls `check` every 20 ms until it holds or `timeout` passes.
pub async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}
