//! Writing a replica's view back into a store that lost its data
//! (`Store::seed`), checked against both implementations: the in-memory
//! store and the Redis store on a private redis-server.

use control_plane::store::memory::MemoryStore;
use control_plane::store::redis::RedisStore;
use control_plane::store::{Seed, SeedInstance, SeedOutcome, Store};
use control_plane::view::{load_snapshot, View};
use gateway_common::registration::{Health, Instance, InstanceSpec, InstanceState};
use gateway_common::GatewayConfig;
use gateway_tests::RedisServer;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);

const CONFIG: &str = r#"
version: 1
services:
  - name: echo
    instances: ["http://127.0.0.1:8081"]
routes:
  - name: echo
    match: { path_prefix: /echo }
    service: echo
"#;

const OTHER_CONFIG: &str = r#"
version: 1
services:
  - name: other
routes:
  - name: other
    match: { path_prefix: /other }
    service: other
"#;

fn spec(id: &str, port: u16) -> InstanceSpec {
    InstanceSpec {
        id: id.into(),
        service: "echo".into(),
        address: "10.0.0.1".into(),
        port,
        health_path: String::new(),
        weight: 1,
        zone: String::new(),
        metadata: Default::default(),
        static_instance: false,
        tls: false,
    }
}

fn config(doc: &str) -> GatewayConfig {
    GatewayConfig::load(doc.as_bytes()).unwrap()
}

async fn apply(store: &dyn Store, doc: &str) -> u64 {
    let next = config(doc);
    store
        .update_config(&|_| Ok(next.clone()), false)
        .await
        .unwrap()
        .version
}

/// A view holding a config, a static instance and three registered ones
/// (one drained and healthy, one with a short lease, one learnt from the
/// change log rather than the snapshot): what a replica holds when its
/// store is lost. Written through `source`.
async fn view_of_a_live_store(source: &dyn Store) -> Arc<View> {
    apply(source, CONFIG).await;
    source
        .register(&spec("r1", 1), MINUTE, false)
        .await
        .unwrap();
    source
        .register(&spec("r2", 2), Duration::from_millis(300), false)
        .await
        .unwrap();
    source.set_draining("r1", true).await.unwrap();
    source
        .set_health(&[("r1".to_string(), Health::Healthy)])
        .await
        .unwrap();
    let (snapshot, history) = load_snapshot(source).await.unwrap();
    let view = View::new(snapshot, history, 100);
    let later = source
        .register(&spec("r3", 3), Duration::from_secs(5), false)
        .await
        .unwrap();
    let changes = source.changes_after(later.version - 1, 10).await.unwrap();
    assert_eq!(
        changes[0].delta.lease_ttls_ms,
        BTreeMap::from([("r3".to_string(), 5_000)]),
        "a registration records its lease TTL in the change log"
    );
    view.apply(changes).unwrap();
    view
}

async fn a_lost_store_is_seeded_once_with_fresh_leases(
    source: Arc<dyn Store>,
    lost: Arc<dyn Store>,
) {
    let view = view_of_a_live_store(source.as_ref()).await;
    let seed = view.read().seed().expect("a view holding a config seeds");
    assert_eq!(seed.version, source.head().await.unwrap().version);

    let outcome = lost.seed(&seed).await.unwrap();
    let SeedOutcome::Seeded { epoch, version } = outcome else {
        panic!("an empty store is seeded, got {outcome:?}");
    };
    assert_eq!(version, seed.version + 1, "versions keep increasing");
    let head = lost.head().await.unwrap();
    assert_eq!(head.epoch.as_deref(), Some(epoch.as_str()));
    assert_eq!(head.version, version);
    assert_ne!(epoch, view.read().epoch(), "a new epoch");

    assert_eq!(
        lost.seed(&seed).await.unwrap(),
        SeedOutcome::AlreadyConfigured,
        "a second replica's seed writes nothing"
    );
    assert_eq!(lost.head().await.unwrap(), head);

    let snap = lost.snapshot().await.unwrap();
    assert!(snap.configured);
    assert_eq!(snap.config, config(CONFIG));
    let held: Vec<Instance> = view.read().instances().values().cloned().collect();
    assert_eq!(snap.instances, held, "specs, drain flags and health kept");
    assert_eq!(
        snap.lease_ttls_ms,
        BTreeMap::from([
            ("r1".to_string(), 60_000),
            ("r2".to_string(), 300),
            ("r3".to_string(), 5_000)
        ])
    );
    assert_eq!(
        lost.renew_lease("r1").await.unwrap(),
        Some(MINUTE),
        "keepalives work on a seeded lease"
    );
    assert_eq!(
        lost.renew_lease("static:echo:127.0.0.1:8081")
            .await
            .unwrap(),
        None,
        "static instances have no lease"
    );

    let changes = lost.changes_after(seed.version, 10).await.unwrap();
    assert_eq!(changes.len(), 1, "one entry for the seed");
    assert_eq!(changes[0].version, version);
    assert_eq!(changes[0].epoch.as_deref(), Some(epoch.as_str()));
    assert!(changes[0].delta.config.is_some());
    assert_eq!(changes[0].delta.upserts.len(), 4);

    // The short lease lapses after its own TTL, not a default one.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        lost.expire_leases(100).await.unwrap(),
        vec!["r2".to_string()]
    );
}

async fn seeding_yields_to_a_config_applied_first(source: Arc<dyn Store>, lost: Arc<dyn Store>) {
    let view = view_of_a_live_store(source.as_ref()).await;
    let seed = view.read().seed().unwrap();
    let applied = apply(lost.as_ref(), OTHER_CONFIG).await;
    assert_eq!(
        lost.seed(&seed).await.unwrap(),
        SeedOutcome::AlreadyConfigured
    );
    let (config_now, version) = lost.current_config().await.unwrap();
    assert_eq!(
        config_now,
        config(OTHER_CONFIG),
        "the operator's apply wins"
    );
    assert_eq!(version, applied);
    assert!(lost.snapshot().await.unwrap().instances.is_empty());
}

async fn seeding_keeps_what_registered_since_the_loss(lost: Arc<dyn Store>) {
    // Backends re-registered into the empty store before the seed.
    lost.register(&spec("moved", 9), Duration::from_secs(5), false)
        .await
        .unwrap();
    lost.register(&spec("same", 2), MINUTE, false)
        .await
        .unwrap();
    let before = lost.head().await.unwrap();
    let seeded = |id: &str, port: u16, health: Health, draining: bool| SeedInstance {
        instance: Instance {
            spec: spec(id, port),
            state: InstanceState { health, draining },
        },
        lease_ttl: Some(Duration::from_secs(30)),
    };
    let seed = Seed {
        config_json: config(CONFIG).to_json(),
        version: 10,
        instances: vec![
            seeded("moved", 1, Health::Healthy, true),
            seeded("same", 2, Health::Unhealthy, false),
            seeded("gone", 3, Health::Unknown, false),
        ],
    };
    let SeedOutcome::Seeded { epoch, version } = lost.seed(&seed).await.unwrap() else {
        panic!("an unconfigured store is seeded even when instances registered");
    };
    assert_eq!(version, 11);
    assert_ne!(before.epoch.as_deref(), Some(epoch.as_str()), "a new epoch");
    let snap = lost.snapshot().await.unwrap();
    let by_id = |id: &str| {
        snap.instances
            .iter()
            .find(|i| i.spec.id == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} missing"))
    };
    let moved = by_id("moved");
    assert_eq!(moved.spec.port, 9, "the new registration's spec stands");
    assert!(moved.state.draining, "the drain flag carries over");
    assert_eq!(
        moved.state.health,
        Health::Unknown,
        "a new spec is checked again"
    );
    assert_eq!(
        by_id("same").state.health,
        Health::Unhealthy,
        "same spec: verdict kept"
    );
    assert_eq!(by_id("gone").spec.port, 3);
    assert_eq!(
        snap.lease_ttls_ms.get("moved"),
        Some(&5_000),
        "its own lease"
    );
    assert_eq!(snap.lease_ttls_ms.get("gone"), Some(&30_000));
    // Only the seed remains in the log: what came before is another epoch.
    let changes = lost.changes_after(0, 10).await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].version, 11);
}

#[tokio::test]
async fn memory_a_lost_store_is_seeded_once_with_fresh_leases() {
    a_lost_store_is_seeded_once_with_fresh_leases(
        Arc::new(MemoryStore::new()),
        Arc::new(MemoryStore::new()),
    )
    .await;
}

#[tokio::test]
async fn memory_seeding_yields_to_a_config_applied_first() {
    seeding_yields_to_a_config_applied_first(
        Arc::new(MemoryStore::new()),
        Arc::new(MemoryStore::new()),
    )
    .await;
}

#[tokio::test]
async fn memory_seeding_keeps_what_registered_since_the_loss() {
    seeding_keeps_what_registered_since_the_loss(Arc::new(MemoryStore::new())).await;
}

/// Two stores on one private redis-server: the live one and the lost one
/// (another key prefix).
async fn redis_pair(server: &RedisServer) -> (Arc<dyn Store>, Arc<dyn Store>) {
    let live = RedisStore::connect(&server.url(), "gw:").await.unwrap();
    let lost = RedisStore::connect(&server.url(), "lost:").await.unwrap();
    (Arc::new(live), Arc::new(lost))
}

#[tokio::test]
async fn redis_a_lost_store_is_seeded_once_with_fresh_leases() {
    let server = RedisServer::start();
    let (live, lost) = redis_pair(&server).await;
    a_lost_store_is_seeded_once_with_fresh_leases(live, lost).await;
}

#[tokio::test]
async fn redis_seeding_yields_to_a_config_applied_first() {
    let server = RedisServer::start();
    let (live, lost) = redis_pair(&server).await;
    seeding_yields_to_a_config_applied_first(live, lost).await;
}

#[tokio::test]
async fn redis_seeding_keeps_what_registered_since_the_loss() {
    let server = RedisServer::start();
    let (_, lost) = redis_pair(&server).await;
    seeding_keeps_what_registered_since_the_loss(lost).await;
}

#[tokio::test]
async fn redis_seeds_race_and_exactly_one_wins() {
    let server = RedisServer::start();
    let (live, _) = redis_pair(&server).await;
    let view = view_of_a_live_store(live.as_ref()).await;
    let seed = view.read().seed().unwrap();
    let mut replicas = Vec::new();
    for _ in 0..8 {
        let store = RedisStore::connect(&server.url(), "lost:").await.unwrap();
        let seed = seed.clone();
        replicas.push(tokio::spawn(
            async move { store.seed(&seed).await.unwrap() },
        ));
    }
    let mut seeded = 0;
    for replica in replicas {
        if matches!(replica.await.unwrap(), SeedOutcome::Seeded { .. }) {
            seeded += 1;
        }
    }
    assert_eq!(seeded, 1, "one replica seeds, the others find a config");
}
