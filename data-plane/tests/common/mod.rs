//! Test support: a data plane started from a config file and an HTTP
//! client; the echo upstream and the polling helper come from the shared
//! test kit (`gateway-tests`).

#![allow(dead_code)]

use bytes::Bytes;
use data_plane::{DataPlane, Settings};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

// Each test binary uses some of these.
#[allow(unused_imports)]
pub use gateway_tests::upstream::{empty, full, BoxError, TestBody, Upstream};
#[allow(unused_imports)]
pub use gateway_tests::wait::eventually;

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
