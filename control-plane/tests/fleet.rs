//! Correctness at fleet scale (smaller numbers than the fleet benchmark):
//! data planes that follow the Discovery stream through a random sequence
//! of registrations, deregistrations, drains and lease lapses end at the
//! same version with exactly the store's instances, and a data plane that
//! misses deltas recovers with a snapshot. Real redis-server.

mod common;

use common::*;
use gateway_proto::v1 as pb;
use gateway_tests::RedisServer;
use pb::data_plane_message::Kind;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

const SERVICES: usize = 20;
const INSTANCES: usize = 500;
const DATA_PLANES: usize = 10;
const OPERATIONS: usize = 600;
const WORKERS: usize = 4;
const CONVERGE: Duration = Duration::from_secs(20);

fn config() -> String {
    gateway_tests::fleet::numbered_config(SERVICES)
}

/// What a data plane holds, as it applied the stream.
#[derive(Default, Clone)]
struct Held {
    epoch: String,
    version: u64,
    instances: BTreeMap<String, pb::Instance>,
    snapshots: usize,
    deltas: usize,
    nacks: usize,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("version", &self.version)
            .field("instances", &self.instances.len())
            .field("snapshots", &self.snapshots)
            .field("deltas", &self.deltas)
            .field("nacks", &self.nacks)
            .finish()
    }
}

/// A data plane's end of the Discovery stream, applying updates like the
/// data plane does: a snapshot replaces, a delta must start at the version
/// held (else NACK asking for a snapshot), every applied update is ACKed.
struct Follower {
    held: Arc<Mutex<Held>>,
    version: watch::Receiver<u64>,
    /// The next delta is dropped unapplied and unacknowledged, as if lost.
    lose_next_delta: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Follower {
    async fn start(cp: &control_plane::ControlPlane, node: &str, held: Held) -> Follower {
        let (tx, rx) = mpsc::channel(16);
        tx.send(hello(node, &held.epoch, held.version))
            .await
            .unwrap();
        let mut updates = discovery(cp)
            .await
            .stream(ReceiverStream::new(rx))
            .await
            .expect("the Discovery stream opens")
            .into_inner();
        let (version_tx, version) = watch::channel(held.version);
        let held = Arc::new(Mutex::new(held));
        let lose_next_delta = Arc::new(AtomicBool::new(false));
        let task = {
            let held = held.clone();
            let lose = lose_next_delta.clone();
            tokio::spawn(async move {
                while let Ok(Some(update)) = updates.message().await {
                    if !update.snapshot && lose.swap(false, Ordering::SeqCst) {
                        continue;
                    }
                    let (reply, applied) = {
                        let mut h = held.lock().unwrap();
                        let fits = update.epoch == h.epoch && update.base_version == h.version;
                        if update.snapshot {
                            h.snapshots += 1;
                            h.instances = update
                                .upserts
                                .into_iter()
                                .map(|i| (i.id.clone(), i))
                                .collect();
                        } else if fits {
                            h.deltas += 1;
                            for id in &update.removals {
                                h.instances.remove(id);
                            }
                            for i in update.upserts {
                                h.instances.insert(i.id.clone(), i);
                            }
                        }
                        if update.snapshot || fits {
                            h.epoch = update.epoch;
                            h.version = update.version;
                            let ack = Kind::Ack(pb::Ack {
                                version: update.version,
                            });
                            (ack, true)
                        } else {
                            h.nacks += 1;
                            let nack = Kind::Nack(pb::Nack {
                                version: update.version,
                                reason: "gap".into(),
                                want_snapshot: true,
                            });
                            (nack, false)
                        }
                    };
                    if applied {
                        version_tx.send_replace(update.version);
                    }
                    if tx.send(message(reply)).await.is_err() {
                        return;
                    }
                }
            })
        };
        Follower {
            held,
            version,
            lose_next_delta,
            task,
        }
    }

    fn held(&self) -> Held {
        self.held.lock().unwrap().clone()
    }

    /// Closes the stream; returns what it held.
    async fn stop(self) -> Held {
        self.task.abort();
        let _ = self.task.await;
        let held = self.held.lock().unwrap().clone();
        held
    }

    async fn wait_version(&self, version: u64) {
        let mut rx = self.version.clone();
        let reached = tokio::time::timeout(CONVERGE, rx.wait_for(|v| *v >= version)).await;
        assert!(
            matches!(reached, Ok(Ok(_))),
            "a data plane stays at version {} below {version}",
            *self.version.borrow()
        );
    }
}

fn message(kind: Kind) -> pb::DataPlaneMessage {
    pb::DataPlaneMessage { kind: Some(kind) }
}

/// The store's instances (as the Admin API lists them) and version.
async fn store_state(adm: &mut Admin) -> (BTreeMap<String, pb::Instance>, u64) {
    let list = adm
        .list_instances(pb::ListInstancesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let instances = list
        .instances
        .into_iter()
        .filter_map(|s| s.instance)
        .map(|i| (i.id.clone(), i))
        .collect();
    (instances, list.version)
}

/// Waits until every follower holds exactly the store's instances at the
/// store's version (re-reading the store if it moved on meanwhile).
async fn assert_converged(adm: &mut Admin, followers: &[&Follower]) -> (usize, u64) {
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let (truth, version) = store_state(adm).await;
        for f in followers {
            f.wait_version(version).await;
        }
        let (again, now) = store_state(adm).await;
        if now != version || again != truth {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the store keeps changing"
            );
            continue;
        }
        for (n, f) in followers.iter().enumerate() {
            let held = f.held();
            assert_eq!(held.version, version, "data plane {n} at another version");
            let missing: Vec<&String> = truth
                .keys()
                .filter(|id| !held.instances.contains_key(*id))
                .collect();
            let extra: Vec<&String> = held
                .instances
                .keys()
                .filter(|id| !truth.contains_key(*id))
                .collect();
            assert!(
                missing.is_empty() && extra.is_empty(),
                "data plane {n} at version {version}: missing {missing:?}, extra {extra:?}"
            );
            for (id, want) in &truth {
                assert_eq!(
                    &held.instances[id], want,
                    "data plane {n} holds another state of {id}"
                );
            }
        }
        return (truth.len(), version);
    }
}

async fn metric(cp: &control_plane::ControlPlane, name: &str) -> f64 {
    let (_, text) = http_get(cp.http_addr(), "/metrics").await;
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn short_or_long(rng: &mut StdRng) -> u32 {
    // One registration in six holds a 1 s lease nobody renews.
    if rng.random_range(0..6) == 0 {
        1
    } else {
        600
    }
}

/// Counts of what the random sequence did.
#[derive(Default)]
struct Done {
    registered: AtomicUsize,
    updated: AtomicUsize,
    deregistered: AtomicUsize,
    drained: AtomicUsize,
    undrained: AtomicUsize,
}

/// One writer's share of the random sequence, on its own ids.
async fn random_writer(
    cp_reg: Registry,
    cp_adm: Admin,
    worker: usize,
    seed: u64,
    initial: usize,
    operations: usize,
    done: Arc<Done>,
) {
    let (mut reg, mut adm) = (cp_reg, cp_adm);
    let mut rng = StdRng::seed_from_u64(seed ^ (worker as u64).wrapping_mul(0x9e37_79b9));
    let mut ids: Vec<(String, String)> = Vec::new();
    let mut next = 0usize;
    let register = |rng: &mut StdRng, next: &mut usize| {
        let service = format!("svc-{}", rng.random_range(0..SERVICES));
        let id = format!("w{worker}-{next}");
        *next += 1;
        let mut request = registration(&service, &id, 10_000 + rng.random_range(0..50_000));
        request.lease_ttl_seconds = short_or_long(rng);
        (service, id, request)
    };
    for _ in 0..initial {
        let (service, id, request) = register(&mut rng, &mut next);
        reg.register(request).await.unwrap();
        done.registered.fetch_add(1, Ordering::Relaxed);
        ids.push((service, id));
    }
    for _ in 0..operations {
        let pick = (!ids.is_empty()).then(|| rng.random_range(0..ids.len()));
        match (rng.random_range(0..100), pick) {
            (0..30, _) | (_, None) => {
                let (service, id, request) = register(&mut rng, &mut next);
                reg.register(request).await.unwrap();
                done.registered.fetch_add(1, Ordering::Relaxed);
                ids.push((service, id));
            }
            (30..45, Some(i)) => {
                // Same id, another port: an update (or a new registration
                // when its lease lapsed meanwhile).
                let (service, id) = ids[i].clone();
                let mut request = registration(&service, &id, 10_000 + rng.random_range(0..50_000));
                request.lease_ttl_seconds = short_or_long(&mut rng);
                reg.register(request).await.unwrap();
                done.updated.fetch_add(1, Ordering::Relaxed);
            }
            (45..65, Some(i)) => {
                let (_, id) = ids.swap_remove(i);
                reg.deregister(pb::DeregisterRequest { instance_id: id })
                    .await
                    .unwrap();
                done.deregistered.fetch_add(1, Ordering::Relaxed);
            }
            (65..85, Some(i)) => {
                let request = pb::DrainRequest {
                    instance_id: ids[i].1.clone(),
                };
                // NOT_FOUND when its lease lapsed.
                if adm.drain(request).await.is_ok() {
                    done.drained.fetch_add(1, Ordering::Relaxed);
                }
            }
            (_, Some(i)) => {
                let request = pb::DrainRequest {
                    instance_id: ids[i].1.clone(),
                };
                if adm.undrain(request).await.is_ok() {
                    done.undrained.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if rng.random_range(0..50) == 0 {
            // Let some short leases lapse mid-sequence.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_planes_converge_after_a_random_sequence_of_changes() {
    let seed: u64 = std::env::var("FLEET_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f1ee7);
    println!("seed {seed} (set FLEET_TEST_SEED to replay)");
    let redis = RedisServer::start();
    let cp = start(Some(redis.url())).await;
    let mut adm = admin(&cp).await;
    adm.apply_config(pb::ApplyConfigRequest {
        document: config().into_bytes(),
        dry_run: false,
    })
    .await
    .unwrap();

    let mut followers = Vec::new();
    for n in 0..DATA_PLANES {
        followers.push(Follower::start(&cp, &format!("dp-{n}"), Held::default()).await);
    }

    let done = Arc::new(Done::default());
    let mut writers = Vec::new();
    for w in 0..WORKERS {
        writers.push(tokio::spawn(random_writer(
            registry(&cp).await,
            admin(&cp).await,
            w,
            seed,
            INSTANCES / WORKERS,
            OPERATIONS / WORKERS,
            done.clone(),
        )));
    }
    // Meanwhile one data plane goes away and resumes from what it held,
    // and another one loses a delta.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resumed = followers.remove(0).stop().await;
    followers[0].lose_next_delta.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    followers.push(Follower::start(&cp, "dp-0", resumed).await);
    for w in writers {
        w.await.unwrap();
    }
    // Every 1 s lease that was not renewed lapses.
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let all: Vec<&Follower> = followers.iter().collect();
    let (count, version) = assert_converged(&mut adm, &all).await;
    let expired = metric(&cp, "control_plane_lease_expiries_total").await;
    println!(
        "{DATA_PLANES} data planes at version {version} with the store's {count} instances; \
         {} registered, {} re-registered, {} deregistered, {} drains, {} undrains, {expired} lease lapses",
        done.registered.load(Ordering::Relaxed),
        done.updated.load(Ordering::Relaxed),
        done.deregistered.load(Ordering::Relaxed),
        done.drained.load(Ordering::Relaxed),
        done.undrained.load(Ordering::Relaxed),
    );
    assert!(count > 0, "instances remain");
    assert!(expired > 0.0, "some leases lapsed");
    assert!(done.drained.load(Ordering::Relaxed) > 0, "some drains");
    assert!(done.undrained.load(Ordering::Relaxed) > 0, "some undrains");
    let lost = followers[0].held();
    assert!(lost.nacks >= 1, "the lost delta was noticed: {lost:?}");
    assert_eq!(
        lost.snapshots, 2,
        "one snapshot answers every NACK sent before it: {lost:?}"
    );
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_plane_that_misses_deltas_recovers_by_snapshot() {
    let redis = RedisServer::start();
    let mut settings = settings(Some(redis.url()));
    settings.delta_ring = 50;
    let cp = control_plane::ControlPlane::start(settings).await.unwrap();
    let mut adm = admin(&cp).await;
    let reg = registry(&cp).await;
    adm.apply_config(pb::ApplyConfigRequest {
        document: config().into_bytes(),
        dry_run: false,
    })
    .await
    .unwrap();
    let mut n = 0u32;
    let mut change = |count: u32| {
        let mut reg = reg.clone();
        let from = n;
        n += count;
        async move {
            for i in from..from + count {
                let service = format!("svc-{}", i as usize % SERVICES);
                reg.register(registration(&service, &format!("i-{i}"), 10_000 + i))
                    .await
                    .unwrap();
            }
        }
    };
    change(20).await;

    let behind = Follower::start(&cp, "behind", Held::default()).await;
    let near = Follower::start(&cp, "near", Held::default()).await;
    let lossy = Follower::start(&cp, "lossy", Held::default()).await;
    assert_converged(&mut adm, &[&behind, &near, &lossy]).await;
    let behind = behind.stop().await;
    let near = near.stop().await;

    // Fewer changes than the ring holds: resumed with one merged delta.
    change(10).await;
    let near = Follower::start(&cp, "near", near).await;
    assert_converged(&mut adm, &[&near]).await;
    let near = near.held();
    assert_eq!((near.snapshots, near.deltas), (1, 1), "{near:?}");

    // More changes than the ring holds: only a snapshot can bring it back.
    change(60).await;
    let before = behind.version;
    let behind = Follower::start(&cp, "behind", behind).await;
    assert_converged(&mut adm, &[&behind]).await;
    let held = behind.held();
    assert_eq!(
        held.snapshots, 2,
        "a snapshot for the stale version: {held:?}"
    );
    assert_eq!(held.deltas, 0);
    assert!(held.version >= before + 70);

    // A delta lost in flight: the next one does not fit, the data plane
    // asks for a snapshot and gets it.
    let deltas_before = lossy.held().deltas;
    lossy.lose_next_delta.store(true, Ordering::SeqCst);
    change(1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    change(1).await;
    assert_converged(&mut adm, &[&lossy, &behind]).await;
    let held = lossy.held();
    assert!(held.nacks >= 1, "{held:?}");
    assert_eq!(held.snapshots, 2, "{held:?}");
    assert!(held.deltas >= deltas_before);
    assert_eq!(held.instances.len(), n as usize);
    cp.shutdown().await;
}
