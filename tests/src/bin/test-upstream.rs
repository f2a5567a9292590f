//! A backend for end-to-end tests.
//!
//! Answers every request with JSON `{name, method, path, query, headers,
//! body}` (`body`: the request body as text) and the header
//! `x-upstream: NAME`. `?delay_ms=N` waits N ms before answering,
//! `?status=N` answers with status N, `?cache_control=V` sets
//! `Cache-Control: V`, `?pad=N` adds a field of N bytes to the body
//! (at most 8 MiB). `GET /health` answers 200,
//! or 503 after `POST /_control/unhealthy` until `POST /_control/healthy`.
//! `GET /_control/requests` returns `{"count": N}`: requests received
//! outside `/health` and `/_control/*` (failed ones included).
//!
//! Modes for every later request: `POST /_control/fail?status=N` answers
//! with status N (0: normally again), `POST /_control/delay?ms=N` waits N ms
//! first (0: no wait).
//!
//! `POST /_control/respond?path=/p` with a JSON body: later requests for
//! path `/p` answer that body instead of the echo (status, delay and fail
//! modes still apply).
//!
//! The echo also reports the body it received: `body_len` and
//! `body_sha256` (hex). With `--stripe-secret S`, a request carrying
//! `stripe-signature: t=T,v1=HEX` is checked as Stripe does (HMAC-SHA256
//! with S over `T.BODY`) and the echo says `stripe_signature_valid`.

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// Longest delay `?delay_ms` may ask for.
const MAX_DELAY_MS: u64 = 60_000;

/// Command line of the test upstream.
#[derive(Debug, Parser)]
#[command(
    name = "test-upstream",
    about = "Backend for the gateway's end-to-end tests"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// Name reported in every answer and in the `x-upstream` header.
    #[arg(long, value_name = "NAME")]
    name: String,
    /// Verifies `stripe-signature` headers with this signing secret.
    #[arg(long, value_name = "SECRET")]
    stripe_secret: Option<String>,
}

/// What every connection shares.
struct State {
    name: String,
    unhealthy: AtomicBool,
    served: AtomicU64,
    fail_status: AtomicU16,
    delay_ms: AtomicU64,
    canned: Mutex<HashMap<String, Bytes>>,
    stripe_secret: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    println!(
        "test-upstream {} listening on {}",
        args.name,
        listener.local_addr()?
    );
    let state = Arc::new(State {
        name: args.name,
        unhealthy: AtomicBool::new(false),
        served: AtomicU64::new(0),
        fail_status: AtomicU16::new(0),
        delay_ms: AtomicU64::new(0),
        canned: Mutex::new(HashMap::new()),
        stripe_secret: args.stripe_secret,
    });
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_string();
    let method = request.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/health") => {
            let (status, text) = if state.unhealthy.load(Ordering::SeqCst) {
                (StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
            } else {
                (StatusCode::OK, "ok")
            };
            return Ok(reply(
                &state,
                status,
                json!({"name": state.name, "status": text}),
            ));
        }
        (&Method::POST, "/_control/unhealthy") => {
            state.unhealthy.store(true, Ordering::SeqCst);
            return Ok(reply(&state, StatusCode::OK, json!({"unhealthy": true})));
        }
        (&Method::POST, "/_control/healthy") => {
            state.unhealthy.store(false, Ordering::SeqCst);
            return Ok(reply(&state, StatusCode::OK, json!({"unhealthy": false})));
        }
        (&Method::GET, "/_control/requests") => {
            let count = state.served.load(Ordering::SeqCst);
            return Ok(reply(&state, StatusCode::OK, json!({"count": count})));
        }
        (&Method::POST, "/_control/fail") => {
            let status = param(request.uri().query().unwrap_or(""), "status").unwrap_or(0);
            state
                .fail_status
                .store(u16::try_from(status).unwrap_or(500), Ordering::SeqCst);
            return Ok(reply(
                &state,
                StatusCode::OK,
                json!({"fail_status": status}),
            ));
        }
        (&Method::POST, "/_control/respond") => {
            let query = request.uri().query().unwrap_or("").to_string();
            let Some(target) = query
                .split('&')
                .find_map(|pair| pair.strip_prefix("path="))
                .map(String::from)
            else {
                return Ok(reply(
                    &state,
                    StatusCode::BAD_REQUEST,
                    json!({"error": "path?"}),
                ));
            };
            let body = request.into_body().collect().await.map(|b| b.to_bytes());
            let Ok(body) = body else {
                return Ok(reply(
                    &state,
                    StatusCode::BAD_REQUEST,
                    json!({"error": "body"}),
                ));
            };
            if let Ok(mut canned) = state.canned.lock() {
                canned.insert(target.clone(), body);
            }
            return Ok(reply(&state, StatusCode::OK, json!({"respond": target})));
        }
        (&Method::POST, "/_control/delay") => {
            let ms = param(request.uri().query().unwrap_or(""), "ms").unwrap_or(0);
            state.delay_ms.store(ms, Ordering::SeqCst);
            return Ok(reply(&state, StatusCode::OK, json!({"delay_ms": ms})));
        }
        _ => {}
    }
    state.served.fetch_add(1, Ordering::SeqCst);
    let query = request.uri().query().unwrap_or("").to_string();
    let delay = param(&query, "delay_ms").unwrap_or(state.delay_ms.load(Ordering::SeqCst));
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay.min(MAX_DELAY_MS))).await;
    }
    let status = param(&query, "status")
        .and_then(|s| u16::try_from(s).ok())
        .or(match state.fail_status.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        })
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let mut headers = Map::new();
    for (name, value) in request.headers() {
        headers.insert(
            name.to_string(),
            Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned()),
        );
    }
    let signature = request
        .headers()
        .get("stripe-signature")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    // Read the body so that the client can finish sending it.
    let received = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let canned = state
        .canned
        .lock()
        .ok()
        .and_then(|canned| canned.get(&path).cloned());
    if let Some(canned) = canned {
        return Ok(reply_bytes(&state, status, canned));
    }
    let mut body = json!({
        "name": state.name,
        "method": method.as_str(),
        "path": path,
        "query": query,
        "headers": headers,
        "body_len": received.len(),
        "body_sha256": hex(ring::digest::digest(&ring::digest::SHA256, &received).as_ref()),
        "body": String::from_utf8_lossy(&received),
    });
    if let (Some(secret), Some(signature)) = (&state.stripe_secret, signature) {
        body["stripe_signature_valid"] =
            stripe_signature_valid(secret, &signature, &received).into();
    }
    if let Some(pad) = param(&query, "pad") {
        body["pad"] = Value::String("x".repeat(pad.min(MAX_PAD) as usize));
    }
    let mut response = reply(&state, status, body);
    if let Some(value) = text_param(&query, "cache_control")
        .and_then(|v| hyper::header::HeaderValue::from_str(v).ok())
    {
        response
            .headers_mut()
            .insert(hyper::header::CACHE_CONTROL, value);
    }
    Ok(response)
}

/// Largest `?pad=N`.
const MAX_PAD: u64 = 8 * 1024 * 1024;

/// The query parameter `name` as it is written.
fn text_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Stripe's check: some `v1` of the header is HMAC-SHA256(secret, `t.body`).
fn stripe_signature_valid(secret: &str, header: &str, body: &[u8]) -> bool {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", t)) => timestamp = Some(t),
            Some(("v1", v)) => signatures.push(v),
            _ => {}
        }
    }
    let Some(timestamp) = timestamp else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut signed = Vec::with_capacity(timestamp.len() + 1 + body.len());
    signed.extend_from_slice(timestamp.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    let expected = hex(ring::hmac::sign(&key, &signed).as_ref());
    signatures.iter().any(|s| *s == expected)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn reply_bytes(state: &State, status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = reply(state, status, Value::Null);
    *response.body_mut() = Full::new(body);
    response
}

/// The numeric query parameter `name`.
fn param(query: &str, name: &str) -> Option<u64> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.parse().ok())
}

fn reply(state: &State, status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    if let Ok(name) = hyper::header::HeaderValue::from_str(&state.name) {
        headers.insert("x-upstream", name);
    }
    response
}
