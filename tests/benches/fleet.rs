//! Fleet scale: 1,000 services and routes, 10,000 registered instances and
//! 50 connected data planes on one control plane and a real Redis.
//!
//! Real processes: a private redis-server, the `control-plane` binary (with
//! its production intervals), one `test-upstream`, and a real `data-plane`
//! process that joins the full fleet. The 50 data planes are in-process
//! clients of the real Discovery protocol: each says Hello with the epoch and
//! version it holds, applies snapshots and deltas to its own instance set,
//! ACKs every update (NACKs with `want_snapshot` on a gap, like the data
//! plane), and reconnects with the data plane's own jittered backoff.
//!
//! It measures and prints:
//! * one registration reaching all data planes (p50/p99 over 100 serialized
//!   registrations) and the encoded bytes each data plane receives for it,
//!   at a small fleet (10 instances) and at the full fleet;
//! * Redis commands per registration (`INFO commandstats`) at both sizes;
//! * the control plane's memory at the full fleet;
//! * a real data-plane process joining: start to ready, connection to
//!   snapshot applied, the apply itself, and its memory while routing;
//! * a burst of 1,000 registrations within one second: all registered,
//!   every data plane at the same version and instance set as the store,
//!   and how many updates each received (coalescing);
//! * a control-plane restart (SIGKILL, then start again): requests through
//!   the real data plane meanwhile, when the data planes reconnect, and
//!   whether any of them (all current) is sent a snapshot.
//!
//! Run: `cargo bench -p gateway-tests --bench fleet`
//! (`FLEET_INSTANCES`, `FLEET_SERVICES`, `FLEET_DATA_PLANES` shrink it for a
//! quick try.)

use data_plane::discovery::{backoff, DiscoveryTiming};
use gateway_proto::v1 as pb;
use gateway_tests::cluster::{ControlPlaneProc, DataPlaneProc, Tokens, Upstream};
use gateway_tests::procs::{build_binaries_now, memory_of};
use gateway_tests::{http, RedisServer};
use pb::admin_client::AdminClient;
use pb::data_plane_message::Kind;
use pb::discovery_client::DiscoveryClient;
use pb::registry_client::RegistryClient;
use prost::Message;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

const SERVICES: usize = 1_000;
const INSTANCES: usize = 10_000;
const DATA_PLANES: usize = 50;
/// Concurrent writers while the fleet is loaded.
const WRITERS: usize = 50;
/// Instances of the small fleet the full one is compared with.
const SMALL_FLEET: usize = 10;
/// Serialized registrations per propagation measurement.
const SAMPLES: usize = 100;
/// Registrations of the burst, spread evenly over one second.
const BURST: usize = 1_000;
/// Longest wait for data planes to converge.
const CONVERGE: Duration = Duration::from_secs(60);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone)]
struct Bearer(MetadataValue<Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

type Registry = RegistryClient<InterceptedService<Channel, Bearer>>;
type Admin = AdminClient<InterceptedService<Channel, Bearer>>;

fn bearer(token: &str) -> Bearer {
    Bearer(format!("Bearer {token}").parse().expect("a valid token"))
}

async fn channel(url: &str) -> Channel {
    Endpoint::from_shared(url.to_string())
        .expect("a valid URL")
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .expect("the control plane accepts connections")
}

fn registration(service: &str, id: &str, port: u16) -> pb::RegisterRequest {
    pb::RegisterRequest {
        service: service.to_string(),
        instance_id: id.to_string(),
        address: "127.0.0.1".to_string(),
        port: u32::from(port),
        lease_ttl_seconds: 3600,
        ..Default::default()
    }
}

async fn register(reg: &mut Registry, service: &str, id: &str, port: u16) -> u64 {
    reg.register(registration(service, id, port))
        .await
        .unwrap_or_else(|e| panic!("register {id}: {e}"))
        .into_inner()
        .version
}

/// The store's instance ids and version, as the Admin API lists them.
async fn store_instances(admin: &mut Admin) -> (HashSet<String>, u64) {
    let list = admin
        .list_instances(pb::ListInstancesRequest::default())
        .await
        .expect("ListInstances")
        .into_inner();
    let ids = list
        .instances
        .into_iter()
        .filter_map(|s| s.instance.map(|i| i.id))
        .collect();
    (ids, list.version)
}

// ---------------------------------------------------------------------------
// In-process data planes speaking the Discovery protocol.

#[derive(Debug, Clone, Copy)]
struct Arrival {
    at: Instant,
    version: u64,
    base: u64,
    bytes: usize,
    snapshot: bool,
}

#[derive(Default)]
struct PlaneState {
    epoch: String,
    version: u64,
    instances: HashSet<String>,
    arrivals: Vec<Arrival>,
    /// When each stream was accepted.
    connects: Vec<Instant>,
    /// Connection attempts that failed or streams that ended.
    failures: u64,
    nacks: u64,
}

struct Plane {
    state: Arc<Mutex<PlaneState>>,
    version: watch::Receiver<u64>,
}

impl Plane {
    fn start(rt: &tokio::runtime::Runtime, node: String, url: String) -> Plane {
        let state = Arc::new(Mutex::new(PlaneState::default()));
        let (tx, version) = watch::channel(0);
        rt.spawn(run_plane(node, url, state.clone(), tx));
        Plane { state, version }
    }

    fn lock(&self) -> MutexGuard<'_, PlaneState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn wait_version(&self, version: u64, timeout: Duration) {
        let mut rx = self.version.clone();
        tokio::time::timeout(timeout, rx.wait_for(|v| *v >= version))
            .await
            .unwrap_or_else(|_| panic!("no data plane update to version {version} in {timeout:?}"))
            .expect("the data plane task runs");
    }

    /// The first update that brought the plane to `version` or beyond.
    fn arrival_of(&self, version: u64) -> Option<Arrival> {
        let state = self.lock();
        let mut found = None;
        for a in state.arrivals.iter().rev() {
            if a.version < version {
                break;
            }
            found = Some(*a);
        }
        found
    }
}

async fn run_plane(
    node: String,
    url: String,
    state: Arc<Mutex<PlaneState>>,
    version: watch::Sender<u64>,
) {
    let timing = DiscoveryTiming::default();
    let mut attempt = 0u32;
    loop {
        let received = plane_session(&node, &url, &state, &version).await;
        if received {
            attempt = 0;
        }
        state.lock().unwrap_or_else(|e| e.into_inner()).failures += 1;
        tokio::time::sleep(backoff(&timing, attempt)).await;
        attempt = attempt.saturating_add(1);
    }
}

fn ack(version: u64) -> Kind {
    Kind::Ack(pb::Ack { version })
}

fn gap_nack(version: u64) -> Kind {
    Kind::Nack(pb::Nack {
        version,
        reason: "gap".into(),
        want_snapshot: true,
    })
}

fn message(kind: Kind) -> pb::DataPlaneMessage {
    pb::DataPlaneMessage { kind: Some(kind) }
}

/// One Discovery stream; returns whether any update arrived.
async fn plane_session(
    node: &str,
    url: &str,
    state: &Mutex<PlaneState>,
    version_tx: &watch::Sender<u64>,
) -> bool {
    let Ok(endpoint) = Endpoint::from_shared(url.to_string()) else {
        return false;
    };
    // The data plane's own connection settings.
    let Ok(channel) = endpoint
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(8 << 20)
        .connect()
        .await
    else {
        return false;
    };
    let (tx, rx) = mpsc::channel(64);
    let (epoch, version) = {
        let s = state.lock().unwrap_or_else(|e| e.into_inner());
        (s.epoch.clone(), s.version)
    };
    let hello = Kind::Hello(pb::Hello {
        node_id: node.to_string(),
        epoch,
        version,
        ..pb::Hello::default()
    });
    if tx.send(message(hello)).await.is_err() {
        return false;
    }
    let Ok(response) = DiscoveryClient::new(channel)
        .max_decoding_message_size(512 << 20)
        .stream(ReceiverStream::new(rx))
        .await
    else {
        return false;
    };
    state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .connects
        .push(Instant::now());
    let mut inbound = response.into_inner();
    let mut received = false;
    while let Ok(Some(update)) = inbound.message().await {
        received = true;
        let at = Instant::now();
        let bytes = update.encoded_len();
        let reply = {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            s.arrivals.push(Arrival {
                at,
                version: update.version,
                base: update.base_version,
                bytes,
                snapshot: update.snapshot,
            });
            let reply = if update.snapshot {
                s.instances = update.upserts.into_iter().map(|i| i.id).collect();
                ack(update.version)
            } else if update.epoch == s.epoch && update.base_version == s.version {
                for id in &update.removals {
                    s.instances.remove(id);
                }
                s.instances.extend(update.upserts.into_iter().map(|i| i.id));
                ack(update.version)
            } else {
                s.nacks += 1;
                gap_nack(update.version)
            };
            if let Kind::Ack(_) = reply {
                s.epoch = update.epoch;
                s.version = update.version;
            }
            reply
        };
        if let Kind::Ack(ack) = &reply {
            version_tx.send_replace(ack.version);
        }
        if tx.send(message(reply)).await.is_err() {
            break;
        }
    }
    received
}

// ---------------------------------------------------------------------------
// Figures.

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn summary(samples: &mut [Duration]) -> String {
    samples.sort();
    format!(
        "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(percentile(samples, 0.50)),
        ms(percentile(samples, 0.90)),
        ms(percentile(samples, 0.99)),
        ms(samples.last().copied().unwrap_or_default())
    )
}

/// A value of a Prometheus text exposition: the first series whose name
/// and labels start with `prefix`.
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn calls_diff(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter(|(name, _)| name.as_str() != "info")
        .filter_map(|(name, n)| {
            let diff = n - before.get(name).copied().unwrap_or(0);
            (diff > 0).then(|| (name.clone(), diff))
        })
        .collect()
}

/// Registers `SAMPLES` instances one at a time, each once every data plane
/// has the previous one; prints latency, bytes and Redis commands.
async fn propagation(
    label: &str,
    fleet: usize,
    reg: &mut Registry,
    planes: &[Plane],
    redis: &RedisServer,
    services: usize,
    port: u16,
) {
    let before = redis.command_calls();
    let started = Instant::now();
    let mut from_send = Vec::with_capacity(SAMPLES);
    let mut from_answer = Vec::with_capacity(SAMPLES);
    let mut per_plane = Vec::with_capacity(SAMPLES * planes.len());
    let mut bytes = Vec::with_capacity(SAMPLES * planes.len());
    let mut merged = 0;
    for k in 0..SAMPLES {
        let service = format!("svc-{}", (k * 7) % services);
        let id = format!("probe-{label}-{k}");
        let sent = Instant::now();
        let version = register(reg, &service, &id, port).await;
        let answered = Instant::now();
        let mut slowest = Duration::ZERO;
        for plane in planes {
            plane.wait_version(version, Duration::from_secs(10)).await;
            let arrival = plane.arrival_of(version).expect("an arrival");
            let took = arrival.at.saturating_duration_since(sent);
            per_plane.push(took);
            slowest = slowest.max(took);
            if arrival.base + 1 == arrival.version && !arrival.snapshot {
                bytes.push(arrival.bytes);
            } else {
                merged += 1;
            }
        }
        from_send.push(slowest);
        from_answer.push(slowest.saturating_sub(answered - sent));
    }
    let elapsed = started.elapsed();
    let after = redis.command_calls();
    println!(
        "\n[{label} fleet: {fleet} instances, {} data planes] {SAMPLES} registrations, one at a time ({:.1} s)",
        planes.len(),
        elapsed.as_secs_f64()
    );
    println!(
        "  Register sent -> applied by all {} data planes: {}",
        planes.len(),
        summary(&mut from_send)
    );
    println!(
        "  Register answered -> applied by all:            {}",
        summary(&mut from_answer)
    );
    println!(
        "  per data plane ({} samples):                     {}",
        per_plane.len(),
        summary(&mut per_plane)
    );
    bytes.sort();
    if !bytes.is_empty() {
        let mean = bytes.iter().sum::<usize>() as f64 / bytes.len() as f64;
        println!(
            "  bytes per data plane for one registration (encoded ConfigUpdate): min {}, mean {mean:.0}, max {} ({} single-version deltas, {merged} merged or snapshot)",
            bytes[0],
            bytes[bytes.len() - 1],
            bytes.len()
        );
    }
    let diff = calls_diff(&before, &after);
    let total: u64 = diff.values().sum();
    println!(
        "  Redis commands per registration: {:.2} (all commands over the window / {SAMPLES}, including background work)",
        total as f64 / SAMPLES as f64
    );
    let by_command: Vec<String> = diff
        .iter()
        .map(|(name, n)| format!("{name} {:.2}", *n as f64 / SAMPLES as f64))
        .collect();
    println!("    by command: {}", by_command.join(", "));
}

async fn wait_converged(
    planes: &[Plane],
    admin: &mut Admin,
    timeout: Duration,
) -> (HashSet<String>, u64) {
    let (ids, version) = store_instances(admin).await;
    for plane in planes {
        plane.wait_version(version, timeout).await;
    }
    (ids, version)
}

fn check_same(planes: &[Plane], ids: &HashSet<String>, version: u64) {
    for (n, plane) in planes.iter().enumerate() {
        let s = plane.lock();
        assert_eq!(s.version, version, "data plane {n} at another version");
        assert!(
            s.instances == *ids,
            "data plane {n} holds {} instances, the store {}",
            s.instances.len(),
            ids.len()
        );
    }
}

fn main() {
    build_binaries_now();
    let services = env_usize("FLEET_SERVICES", SERVICES);
    let instances = env_usize("FLEET_INSTANCES", INSTANCES);
    let data_planes = env_usize("FLEET_DATA_PLANES", DATA_PLANES);
    assert!(
        instances >= SMALL_FLEET + SAMPLES,
        "FLEET_INSTANCES too small"
    );
    println!(
        "fleet benchmark: {services} services, {services} routes, {instances} instances, {data_planes} data planes"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let redis = RedisServer::start();
    let tokens = Tokens::random();
    // The production intervals, not the tests' short ones.
    let mut cp = ControlPlaneProc::start_with_env(
        "fleet",
        Some(&redis.url()),
        &tokens,
        &[
            ("CP_LEADER_TTL", "10s"),
            ("CP_LEASE_SWEEP_INTERVAL", "250ms"),
            ("LOG_FORMAT", "json"),
        ],
    );
    let upstream = Upstream::start("fleet");
    let port = upstream.port();
    let url = cp.url();
    let started = Instant::now();
    cp.grpc()
        .apply_config(&gateway_tests::fleet::numbered_config(services), false)
        .expect("the fleet config applies");
    println!(
        "config of {services} services and routes applied in {:.0} ms",
        ms(started.elapsed())
    );

    let (mut reg, mut admin) = rt.block_on(async {
        let channel = channel(&url).await;
        (
            RegistryClient::with_interceptor(channel.clone(), bearer(&tokens.registration)),
            AdminClient::with_interceptor(channel, bearer(&tokens.admin)),
        )
    });

    // Data planes, then the small fleet.
    let planes: Vec<Plane> = (0..data_planes)
        .map(|n| Plane::start(&rt, format!("sdp-{n}"), url.clone()))
        .collect();
    rt.block_on(async {
        for i in 0..SMALL_FLEET {
            let service = format!("svc-{}", i % services);
            register(&mut reg, &service, &format!("{service}-i{i}"), port).await;
        }
        let (ids, version) = wait_converged(&planes, &mut admin, CONVERGE).await;
        check_same(&planes, &ids, version);
        propagation(
            "small",
            ids.len(),
            &mut reg,
            &planes,
            &redis,
            services,
            port,
        )
        .await;
    });

    // Load the fleet with concurrent writers.
    let load_from = SMALL_FLEET;
    let load_to = instances - SAMPLES;
    let started = Instant::now();
    let arrivals_before: Vec<usize> = planes.iter().map(|p| p.lock().arrivals.len()).collect();
    rt.block_on(async {
        let channels: Vec<Channel> = futures_channels(&url, 4).await;
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let mut reg = RegistryClient::with_interceptor(
                channels[w % channels.len()].clone(),
                bearer(&tokens.registration),
            );
            writers.push(tokio::spawn(async move {
                for i in (load_from + w..load_to).step_by(WRITERS) {
                    let service = format!("svc-{}", i % services);
                    register(&mut reg, &service, &format!("{service}-i{i}"), port).await;
                }
            }));
        }
        for w in writers {
            w.await.expect("a writer");
        }
    });
    let loaded = started.elapsed();
    let count = load_to - load_from;
    let (ids, version) = rt.block_on(wait_converged(&planes, &mut admin, CONVERGE));
    check_same(&planes, &ids, version);
    let converged = started.elapsed();
    let updates: Vec<usize> = planes
        .iter()
        .zip(&arrivals_before)
        .map(|(p, before)| p.lock().arrivals.len() - before)
        .collect();
    println!(
        "\n[load] {count} registrations by {WRITERS} concurrent writers in {:.2} s ({:.0}/s); all {} data planes at version {version} with {} instances after {:.2} s; updates per data plane: min {}, max {}",
        loaded.as_secs_f64(),
        count as f64 / loaded.as_secs_f64(),
        planes.len(),
        ids.len(),
        converged.as_secs_f64(),
        updates.iter().min().unwrap_or(&0),
        updates.iter().max().unwrap_or(&0),
    );
    let fleet = ids.len();
    rt.block_on(propagation(
        "full", fleet, &mut reg, &planes, &redis, services, port,
    ));
    if let Some((rss, hwm)) = cp.process().pid().and_then(memory_of) {
        println!(
            "\n[control plane] at {} instances, {} data planes: VmRSS {:.1} MiB, VmHWM {:.1} MiB",
            fleet + SAMPLES,
            planes.len(),
            mib(rss),
            mib(hwm)
        );
    }
    if let Some((rss, hwm)) = redis_memory(&redis) {
        println!(
            "[redis] used_memory {:.1} MiB, used_memory_peak {:.1} MiB",
            mib(rss),
            mib(hwm)
        );
    }

    // A real data plane joins the full fleet.
    let spawned = Instant::now();
    let mut joiner = DataPlaneProc::start("joiner", &url, None);
    let ready = loop {
        if matches!(http::get(joiner.admin, "/health/ready"), Ok(r) if r.status == 200) {
            break spawned.elapsed();
        }
        assert!(
            spawned.elapsed() < Duration::from_secs(30),
            "the joining data plane never got ready"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    let text = http::get(joiner.admin, "/metrics").expect("metrics").text();
    let sync = metric(&text, "gateway_discovery_sync_seconds").unwrap_or(f64::NAN);
    let apply =
        metric(&text, "gateway_config_apply_seconds{kind=\"snapshot\"}").unwrap_or(f64::NAN);
    let since_start = metric(&text, "gateway_ready_seconds").unwrap_or(f64::NAN);
    let snapshot_bytes = metric(
        &text,
        "gateway_discovery_update_bytes_total{kind=\"snapshot\"}",
    )
    .unwrap_or(f64::NAN);
    println!(
        "\n[joining data-plane process] spawn -> /health/ready 200: {:.1} ms (polled every 1 ms); its own figures: start -> first config applied {:.1} ms, Discovery connect -> snapshot applied {:.1} ms, snapshot apply {:.1} ms, snapshot {:.2} MiB",
        ms(ready),
        since_start * 1000.0,
        sync * 1000.0,
        apply * 1000.0,
        snapshot_bytes / (1024.0 * 1024.0),
    );
    if let Some((rss, hwm)) = joiner.process().pid().and_then(memory_of) {
        println!(
            "  after applying the snapshot: VmRSS {:.1} MiB, VmHWM {:.1} MiB",
            mib(rss),
            mib(hwm)
        );
    }
    let mut ok = 0;
    let routing = Instant::now();
    for k in 0..2_000 {
        let path = format!("/svc-{}/x", k % services);
        if matches!(joiner.get(&path), Ok(r) if r.status == 200) {
            ok += 1;
        }
    }
    let routing = routing.elapsed();
    let pid = joiner.process().pid();
    if let Some((rss, hwm)) = pid.and_then(memory_of) {
        println!(
            "  while routing ({ok}/2000 requests over {} routes answered 200 in {:.1} s; {} sockets open, nearly all pooled upstream connections): VmRSS {:.1} MiB, VmHWM {:.1} MiB",
            services.min(2_000),
            routing.as_secs_f64(),
            pid.map_or(0, sockets_of),
            mib(rss),
            mib(hwm)
        );
    }

    // A burst of registrations within one second.
    let joiner_deltas = |joiner: &DataPlaneProc| {
        http::get(joiner.admin, "/metrics")
            .ok()
            .and_then(|r| {
                metric(
                    &r.text(),
                    "gateway_discovery_updates_received_total{kind=\"delta\"}",
                )
            })
            .unwrap_or(0.0)
    };
    let joiner_deltas_before = joiner_deltas(&joiner);
    let arrivals_before: Vec<usize> = planes.iter().map(|p| p.lock().arrivals.len()).collect();
    let started = Instant::now();
    let (registered, last_answer) = rt.block_on(async {
        let channels = futures_channels(&url, 4).await;
        let mut tasks = tokio::task::JoinSet::new();
        let begin = tokio::time::Instant::now();
        for k in 0..BURST {
            let mut reg = RegistryClient::with_interceptor(
                channels[k % channels.len()].clone(),
                bearer(&tokens.registration),
            );
            let at = begin + Duration::from_secs(1) * k as u32 / BURST as u32;
            tasks.spawn(async move {
                tokio::time::sleep_until(at).await;
                let service = format!("svc-{}", (k * 13) % services);
                let result = reg
                    .register(registration(&service, &format!("burst-{k}"), port))
                    .await;
                (result.is_ok(), Instant::now())
            });
        }
        let mut ok = 0;
        let mut last = Instant::now();
        while let Some(done) = tasks.join_next().await {
            let (registered, at) = done.expect("a burst task");
            ok += usize::from(registered);
            last = last.max(at);
        }
        (ok, last)
    });
    let (ids, version) = rt.block_on(wait_converged(&planes, &mut admin, CONVERGE));
    let converged = started.elapsed();
    check_same(&planes, &ids, version);
    let joiner_version = wait_http_version(&joiner, version);
    let joiner_instances = http::get(joiner.admin, "/metrics")
        .ok()
        .and_then(|r| metric(&r.text(), "gateway_instances"))
        .unwrap_or(f64::NAN);
    assert_eq!(
        joiner_version, version,
        "the data-plane process is at another version"
    );
    assert_eq!(
        joiner_instances as usize,
        ids.len(),
        "the data-plane process holds another instance count"
    );
    let updates: Vec<usize> = planes
        .iter()
        .zip(&arrivals_before)
        .map(|(p, before)| p.lock().arrivals.len() - before)
        .collect();
    let mut sorted = updates.clone();
    sorted.sort();
    println!(
        "\n[burst] {registered}/{BURST} registrations answered OK, the last {:.2} s after the first was sent; every data plane ({} stream clients and the data-plane process, version {joiner_version}) at version {version} with the store's {} instances after {:.2} s",
        (last_answer - started).as_secs_f64(),
        planes.len(),
        ids.len(),
        converged.as_secs_f64(),
    );
    println!(
        "  updates received for the burst ({BURST} versions): stream clients min {}, median {}, max {}; the data-plane process {}",
        sorted.first().unwrap_or(&0),
        sorted[sorted.len() / 2],
        sorted.last().unwrap_or(&0),
        joiner_deltas(&joiner) - joiner_deltas_before
    );
    assert_eq!(registered, BURST, "registrations of the burst failed");

    // Control-plane restart under the full fleet.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let listen = joiner.listen;
    let traffic = {
        let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
        std::thread::spawn(move || {
            let mut k = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let path = format!("/svc-{}/restart", k % services);
                match http::get(listen, &path) {
                    Ok(r) if r.status == 200 => served.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                k += 1;
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let connects_before: Vec<usize> = planes.iter().map(|p| p.lock().connects.len()).collect();
    let failures_before: Vec<u64> = planes.iter().map(|p| p.lock().failures).collect();
    let arrivals_before: Vec<usize> = planes.iter().map(|p| p.lock().arrivals.len()).collect();
    // Watches the data-plane process's stream: down, then up again.
    let admin_addr = joiner.admin;
    let watcher = std::thread::spawn(move || {
        let connected = || {
            http::get(admin_addr, "/metrics")
                .ok()
                .and_then(|r| metric(&r.text(), "gateway_control_plane_connected"))
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while connected() != Some(0.0) {
            assert!(
                Instant::now() < deadline,
                "the data-plane process never saw the control plane go"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        while connected() != Some(1.0) {
            assert!(
                Instant::now() < deadline,
                "the data-plane process never reconnected"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        Instant::now()
    });
    let killed = Instant::now();
    cp.kill();
    std::thread::sleep(Duration::from_secs(1));
    cp.restart();
    let up = killed.elapsed();
    let deadline = Instant::now() + Duration::from_secs(60);
    let reconnects: Vec<Duration> = planes
        .iter()
        .zip(&connects_before)
        .map(|(p, before)| loop {
            if let Some(at) = p.lock().connects.get(*before) {
                break at.saturating_duration_since(killed);
            }
            assert!(Instant::now() < deadline, "a data plane never reconnected");
            std::thread::sleep(Duration::from_millis(10));
        })
        .collect();
    let joiner_back = watcher
        .join()
        .expect("the watcher")
        .saturating_duration_since(killed);
    let all_back = killed.elapsed();
    std::thread::sleep(Duration::from_millis(1_000));
    stop.store(true, Ordering::Relaxed);
    traffic.join().expect("the traffic thread");
    let attempts: Vec<u64> = planes
        .iter()
        .zip(&failures_before)
        .map(|(p, before)| p.lock().failures - before)
        .collect();
    let after_restart: Vec<Arrival> = planes
        .iter()
        .zip(&arrivals_before)
        .flat_map(|(p, before)| p.lock().arrivals[*before..].to_vec())
        .collect();
    let snapshots = after_restart.iter().filter(|a| a.snapshot).count();
    let cp_metrics = http::get(cp.http, "/metrics")
        .map(|r| r.text())
        .unwrap_or_default();
    let sent_snapshots = metric(
        &cp_metrics,
        "control_plane_discovery_updates_sent_total{kind=\"snapshot\"}",
    )
    .unwrap_or(0.0);
    let sent_deltas = metric(
        &cp_metrics,
        "control_plane_discovery_updates_sent_total{kind=\"delta\"}",
    )
    .unwrap_or(0.0);
    let joiner_text = http::get(joiner.admin, "/metrics")
        .map(|r| r.text())
        .unwrap_or_default();
    let joiner_snapshots = metric(
        &joiner_text,
        "gateway_discovery_updates_received_total{kind=\"snapshot\"}",
    )
    .unwrap_or(f64::NAN);
    let mut spread = reconnects.clone();
    spread.sort();
    println!(
        "\n[control-plane restart] SIGKILL, restarted after 1 s, ready again {:.2} s after the kill; every data plane reconnected {:.2} s after the kill",
        up.as_secs_f64(),
        all_back.as_secs_f64()
    );
    println!(
        "  requests through the data-plane process meanwhile: {} answered 200, {} failed",
        served.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    println!(
        "  reconnected (since the kill): the data-plane process at {:.0} ms; stream clients first {:.0} ms, p50 {:.0} ms, p90 {:.0} ms, last {:.0} ms; failed attempts per client during the outage: min {}, max {}",
        ms(joiner_back),
        ms(spread[0]),
        ms(percentile(&spread, 0.5)),
        ms(percentile(&spread, 0.9)),
        ms(spread[spread.len() - 1]),
        attempts.iter().min().unwrap_or(&0),
        attempts.iter().max().unwrap_or(&0),
    );
    println!(
        "  updates after the restart: {} to the stream clients ({snapshots} snapshots); the restarted control plane sent {sent_snapshots} snapshots and {sent_deltas} deltas; the data-plane process has received {joiner_snapshots} snapshot(s) in all (its join)",
        after_restart.len()
    );
    let (ids, version) = rt.block_on(wait_converged(
        &planes,
        &mut admin_after_restart(&rt, &url, &tokens),
        CONVERGE,
    ));
    check_same(&planes, &ids, version);
    drop(upstream);
    drop(joiner);
    drop(cp);
    drop(redis);
}

fn admin_after_restart(rt: &tokio::runtime::Runtime, url: &str, tokens: &Tokens) -> Admin {
    rt.block_on(async { AdminClient::with_interceptor(channel(url).await, bearer(&tokens.admin)) })
}

async fn futures_channels(url: &str, n: usize) -> Vec<Channel> {
    let mut channels = Vec::with_capacity(n);
    for _ in 0..n {
        channels.push(channel(url).await);
    }
    channels
}

/// Waits until the data-plane process reports `version` on `/health/ready`.
fn wait_http_version(dp: &DataPlaneProc, version: u64) -> u64 {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let held = http::get(dp.admin, "/health/ready")
            .ok()
            .and_then(|r| r.json()["version"].as_u64())
            .unwrap_or(0);
        if held >= version {
            return held;
        }
        assert!(
            Instant::now() < deadline,
            "the data-plane process stays at version {held}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Open sockets of process `pid`.
fn sockets_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Redis's `used_memory` and `used_memory_peak`.
fn redis_memory(redis: &RedisServer) -> Option<(u64, u64)> {
    let info = redis.command(&["INFO", "memory"]).ok()?;
    let field = |name: &str| -> Option<u64> {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?
            .trim()
            .parse()
            .ok()
    };
    Some((field("used_memory")?, field("used_memory_peak")?))
}
