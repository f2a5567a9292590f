//! Cost of the access log: throughput of two standalone data planes in
//! front of one upstream, one writing an access-log line per request
//! (`LOG_FORMAT=json`, to its log file) and one with `GW_ACCESS_LOG=false`,
//! driven in alternating rounds by a keep-alive load client.
//!
//! Run: `cargo bench -p gateway-tests --bench access_log` (about 40 s).

use bytes::Bytes;
use gateway_tests::cluster::{write_temp_file, DataPlaneProc, Upstream};
use http_body_util::{BodyExt, Empty};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONNECTIONS: usize = 16;
const ROUND: Duration = Duration::from_secs(5);
const ROUNDS: usize = 3;

async fn connection(addr: SocketAddr, until: Instant, done: Arc<AtomicU64>) {
    let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let io = hyper_util::rt::TokioIo::new(stream);
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(io).await else {
        return;
    };
    tokio::spawn(conn);
    while Instant::now() < until {
        let req = hyper::Request::get("/open/bench")
            .header("host", "bench")
            .body(Empty::<Bytes>::new())
            .expect("a valid request");
        let Ok(response) = sender.send_request(req).await else {
            return;
        };
        assert_eq!(response.status(), 200);
        if response.into_body().collect().await.is_err() {
            return;
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
}

/// Requests per second through `addr` over one round.
fn load(rt: &tokio::runtime::Runtime, addr: SocketAddr) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let until = start + ROUND;
    rt.block_on(async {
        let tasks: Vec<_> = (0..CONNECTIONS)
            .map(|_| tokio::spawn(connection(addr, until, done.clone())))
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    });
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let upstream = Upstream::start("bench");
    let config = format!(
        "version: 1\nservices:\n  - name: echo\n    instances: [\"{}\"]\nroutes:\n  - name: open\n    match: {{ path_prefix: /open }}\n    service: echo\n",
        upstream.url()
    );
    let path = write_temp_file("access-bench.yaml", &config);
    let logged = DataPlaneProc::standalone_with_env(
        "logged",
        &path,
        &[("LOG_FORMAT", "json"), ("GW_WORKER_THREADS", "1")],
    );
    let quiet = DataPlaneProc::standalone_with_env(
        "quiet",
        &path,
        &[
            ("LOG_FORMAT", "json"),
            ("GW_ACCESS_LOG", "false"),
            ("GW_WORKER_THREADS", "1"),
        ],
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    // Warm both (connection pools, allocator).
    load(&rt, logged.listen);
    load(&rt, quiet.listen);
    println!("| round | access log on | access log off | on / off |");
    println!("|---|---|---|---|");
    let (mut on_sum, mut off_sum) = (0.0, 0.0);
    for round in 1..=ROUNDS {
        let on = load(&rt, logged.listen);
        let off = load(&rt, quiet.listen);
        on_sum += on;
        off_sum += off;
        println!(
            "| {round} | {:.0} req/s | {:.0} req/s | {:.3} |",
            on,
            off,
            on / off
        );
    }
    println!(
        "| mean | {:.0} req/s | {:.0} req/s | {:.3} |",
        on_sum / ROUNDS as f64,
        off_sum / ROUNDS as f64,
        on_sum / off_sum
    );
}
