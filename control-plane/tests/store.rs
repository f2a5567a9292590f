//! Store semantics, checked against both implementations: the in-memory
//! store and the Redis store on a private redis-server.

use control_plane::store::memory::MemoryStore;
use control_plane::store::redis::RedisStore;
use control_plane::store::{
    Change, DataPlaneRecord, HealthRecord, RegisterEffect, Store, StoreError,
};
use control_plane::view::View;
use gateway_common::registration::{Health, InstanceSpec};
use gateway_common::GatewayConfig;
use gateway_tests::RedisServer;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn spec(id: &str, service: &str, port: u16) -> InstanceSpec {
    InstanceSpec {
        id: id.into(),
        service: service.into(),
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

const MINUTE: Duration = Duration::from_secs(60);

fn config(doc: &str) -> GatewayConfig {
    GatewayConfig::load(doc.as_bytes()).unwrap()
}

async fn apply(store: &dyn Store, doc: &str) -> control_plane::store::ApplyOutcome {
    let next = config(doc);
    store
        .update_config(&|_| Ok(next.clone()), false)
        .await
        .unwrap()
}

async fn version(store: &dyn Store) -> u64 {
    store.head().await.unwrap().version
}

async fn register_is_idempotent(store: Arc<dyn Store>) {
    let a = spec("a-1", "a", 80);
    let first = store.register(&a, MINUTE, false).await.unwrap();
    assert_eq!(first.effect, RegisterEffect::Created);
    let again = store.register(&a, MINUTE, false).await.unwrap();
    assert_eq!(again.effect, RegisterEffect::Renewed);
    assert_eq!(
        again.version, first.version,
        "identical spec: no new version"
    );
    assert_eq!(version(&*store).await, first.version);
    let moved = store
        .register(&spec("a-1", "a", 81), MINUTE, false)
        .await
        .unwrap();
    assert_eq!(moved.effect, RegisterEffect::Updated);
    assert_eq!(moved.version, first.version + 1);
    let changes = store.changes_after(first.version, 10).await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].delta.upserts[0].spec.port, 81);
}

async fn an_id_of_another_service_is_refused(store: Arc<dyn Store>) {
    store
        .register(&spec("x", "a", 80), MINUTE, false)
        .await
        .unwrap();
    let before = version(&*store).await;
    let err = store
        .register(&spec("x", "b", 80), MINUTE, false)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("\"a\"")),
        "{err}"
    );
    assert_eq!(version(&*store).await, before, "nothing written");
    let snap = store.snapshot().await.unwrap();
    assert_eq!(snap.instances[0].spec.service, "a");
}

async fn lapsed_leases_are_removed_with_a_delta(store: Arc<dyn Store>) {
    store
        .register(&spec("keep", "a", 80), MINUTE, false)
        .await
        .unwrap();
    let short = store
        .register(&spec("short", "a", 81), Duration::from_millis(200), false)
        .await
        .unwrap();
    assert!(
        store.expire_leases(100).await.unwrap().is_empty(),
        "not due yet"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        store.renew_lease("short").await.unwrap(),
        None,
        "a lapsed lease is not revived"
    );
    assert_eq!(
        store.expire_leases(100).await.unwrap(),
        vec!["short".to_string()]
    );
    assert!(store.expire_leases(100).await.unwrap().is_empty());
    let changes = store.changes_after(short.version, 10).await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].version, short.version + 1);
    assert_eq!(changes[0].delta.removals, vec!["short".to_string()]);
    let ids: Vec<String> = store
        .snapshot()
        .await
        .unwrap()
        .instances
        .into_iter()
        .map(|i| i.spec.id)
        .collect();
    assert_eq!(ids, vec!["keep".to_string()]);
}

async fn renewals_extend_leases(store: Arc<dyn Store>) {
    store
        .register(&spec("r", "a", 80), Duration::from_millis(400), false)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        store.renew_lease("r").await.unwrap(),
        Some(Duration::from_millis(400))
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(
        store.expire_leases(100).await.unwrap().is_empty(),
        "renewed"
    );
    let details = store.instance_details(Some("r")).await.unwrap();
    let remaining = details.lease_expiry["r"].saturating_sub(details.now_unix_ms);
    assert!(remaining > 0 && remaining <= 400, "{remaining}");
    assert_eq!(store.renew_lease("never-registered").await.unwrap(), None);
}

async fn deregistration_is_idempotent(store: Arc<dyn Store>) {
    store
        .register(&spec("d", "a", 80), MINUTE, false)
        .await
        .unwrap();
    let gone = store.deregister("d").await.unwrap();
    assert!(gone.removed);
    let again = store.deregister("d").await.unwrap();
    assert!(!again.removed);
    assert_eq!(again.version, gone.version, "no version for nothing");
    assert_eq!(
        store.renew_lease("d").await.unwrap(),
        None,
        "its lease went too"
    );
    let last = store.changes_after(gone.version - 1, 10).await.unwrap();
    assert_eq!(last[0].delta.removals, vec!["d".to_string()]);
}

async fn drain_flags_are_versioned(store: Arc<dyn Store>) {
    let reg = store
        .register(&spec("i", "a", 80), MINUTE, false)
        .await
        .unwrap();
    let drained = store.set_draining("i", true).await.unwrap();
    assert!(drained.changed);
    assert!(drained.instance.state.draining);
    assert_eq!(drained.version, reg.version + 1);
    let again = store.set_draining("i", true).await.unwrap();
    assert!(!again.changed);
    assert_eq!(again.version, drained.version);
    // A re-registration with a new address keeps the drain flag.
    store
        .register(&spec("i", "a", 81), MINUTE, false)
        .await
        .unwrap();
    let snap = store.snapshot().await.unwrap();
    assert!(snap.instances[0].state.draining);
    let undrained = store.set_draining("i", false).await.unwrap();
    assert!(undrained.changed && !undrained.instance.state.draining);
    assert!(matches!(
        store.set_draining("nope", true).await,
        Err(StoreError::NotFound(_))
    ));
}

const WITH_STATICS: &str = r#"
version: 1
services:
  - name: echo
    instances: ["http://127.0.0.1:8081", "http://127.0.0.1:8082"]
routes:
  - name: echo
    match: { path_prefix: /echo }
    service: echo
"#;

const STATICS_CHANGED: &str = r#"
version: 1
services:
  - name: echo
    instances: ["http://127.0.0.1:8082", "http://127.0.0.1:8083"]
routes:
  - name: echo
    match: { path_prefix: /echo }
    service: echo
"#;

async fn config_applies_with_static_instances(store: Arc<dyn Store>) {
    let dry = store
        .update_config(&|_| Ok(config(WITH_STATICS)), true)
        .await
        .unwrap();
    assert_eq!(dry.version, 0);
    assert_eq!(dry.changes.len(), 2, "{:?}", dry.changes);
    assert_eq!(version(&*store).await, 0, "dry run writes nothing");

    let first = apply(&*store, WITH_STATICS).await;
    assert!(!first.unchanged);
    assert_eq!(first.version, 1);
    let snap = store.snapshot().await.unwrap();
    assert_eq!(snap.config, config(WITH_STATICS));
    let ids: Vec<&str> = snap.instances.iter().map(|i| i.spec.id.as_str()).collect();
    assert_eq!(
        ids,
        vec!["static:echo:127.0.0.1:8081", "static:echo:127.0.0.1:8082"]
    );
    assert!(snap.instances.iter().all(|i| i.spec.static_instance));
    let delta = &store.changes_after(0, 10).await.unwrap()[0].delta;
    assert_eq!(
        GatewayConfig::from_json(delta.config.as_deref().unwrap()).unwrap(),
        config(WITH_STATICS)
    );
    assert_eq!(delta.upserts.len(), 2);

    let same = apply(&*store, WITH_STATICS).await;
    assert!(same.unchanged);
    assert_eq!(same.version, 1, "identical config: no version");

    let changed = apply(&*store, STATICS_CHANGED).await;
    assert_eq!(changed.version, 2);
    assert_eq!(changed.changes.len(), 1);
    let delta = &store.changes_after(1, 10).await.unwrap()[0].delta;
    assert_eq!(
        delta.removals,
        vec!["static:echo:127.0.0.1:8081".to_string()]
    );
    let upserts: Vec<&str> = delta.upserts.iter().map(|i| i.spec.id.as_str()).collect();
    assert_eq!(
        upserts,
        vec!["static:echo:127.0.0.1:8083"],
        "unchanged statics are not resent"
    );
}

async fn an_invalid_config_writes_nothing(store: Arc<dyn Store>) {
    apply(&*store, WITH_STATICS).await;
    let before = store.snapshot().await.unwrap();
    let mut bad = config(STATICS_CHANGED);
    bad.routes[0].service = "missing".into();
    bad.services[0].health_check.healthy_threshold = 0;
    let err = store
        .update_config(&|_| Ok(bad.clone()), false)
        .await
        .unwrap_err();
    let StoreError::Invalid(reasons) = err else {
        panic!("expected Invalid, got {err:?}");
    };
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    let after = store.snapshot().await.unwrap();
    assert_eq!(after.version, before.version);
    assert_eq!(after.config, before.config);
    assert_eq!(after.instances, before.instances, "statics untouched");
}

async fn changes_are_readable_after_a_version(store: Arc<dyn Store>) {
    for port in 1..=5 {
        store
            .register(&spec(&format!("i{port}"), "a", port), MINUTE, false)
            .await
            .unwrap();
    }
    let versions: Vec<u64> = store
        .changes_after(2, 100)
        .await
        .unwrap()
        .iter()
        .map(|c| c.version)
        .collect();
    assert_eq!(versions, vec![3, 4, 5]);
    assert_eq!(store.changes_after(2, 2).await.unwrap().len(), 2, "limit");
    let epoch = store.head().await.unwrap().epoch;
    assert!(store
        .changes_after(0, 100)
        .await
        .unwrap()
        .iter()
        .all(|c| c.epoch.is_none() || c.epoch == epoch));

    // Nothing new: the read waits its block time, then answers empty.
    let started = Instant::now();
    let none = store
        .wait_changes(5, 100, Duration::from_millis(200))
        .await
        .unwrap();
    assert!(none.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(150));

    // A write during the wait ends it early.
    let writer = store.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        writer
            .register(&spec("late", "a", 9), MINUTE, false)
            .await
            .unwrap();
    });
    let started = Instant::now();
    let late = store
        .wait_changes(5, 100, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].version, 6);
    assert!(started.elapsed() < Duration::from_secs(3));
}

async fn a_snapshot_plus_later_changes_equals_a_later_snapshot(store: Arc<dyn Store>) {
    apply(&*store, WITH_STATICS).await;
    store
        .register(&spec("a", "echo", 1), MINUTE, false)
        .await
        .unwrap();
    let first = store.snapshot().await.unwrap();
    let again = store.snapshot().await.unwrap();
    assert_eq!(first.epoch, again.epoch, "the epoch is stable");
    assert_eq!(first.version, store.head().await.unwrap().version);
    let view = View::new(first.clone(), Vec::new(), 100);

    store
        .register(&spec("b", "echo", 2), MINUTE, false)
        .await
        .unwrap();
    store.set_draining("a", true).await.unwrap();
    apply(&*store, STATICS_CHANGED).await;
    store
        .set_health(&[("b".to_string(), Health::Unhealthy)])
        .await
        .unwrap();
    store.deregister("a").await.unwrap();

    let changes: Vec<Change> = store.changes_after(first.version, 100).await.unwrap();
    view.apply(changes).unwrap();
    let last = store.snapshot().await.unwrap();
    let state = view.read();
    assert_eq!(state.version(), last.version);
    assert_eq!(state.config().as_ref(), &last.config);
    let from_view: Vec<_> = state.instances().values().cloned().collect();
    assert_eq!(from_view, last.instances);
}

async fn health_verdicts_write_only_changes(store: Arc<dyn Store>) {
    store
        .register(&spec("h", "a", 80), MINUTE, false)
        .await
        .unwrap();
    let v = store
        .set_health(&[
            ("h".to_string(), Health::Unhealthy),
            ("gone".to_string(), Health::Healthy),
        ])
        .await
        .unwrap();
    assert!(v.is_some());
    let again = store
        .set_health(&[("h".to_string(), Health::Unhealthy)])
        .await
        .unwrap();
    assert_eq!(again, None, "same verdict: no version");
    let snap = store.snapshot().await.unwrap();
    assert_eq!(snap.instances.len(), 1, "unknown ids are ignored");
    assert_eq!(snap.instances[0].state.health, Health::Unhealthy);

    let record = HealthRecord {
        last_check_unix_ms: 42,
        result: "503".into(),
        consecutive_ok: 0,
        consecutive_fail: 3,
    };
    store
        .record_health_checks(&[
            ("h".to_string(), record.clone()),
            ("gone".to_string(), record.clone()),
        ])
        .await
        .unwrap();
    let details = store.instance_details(None).await.unwrap();
    assert_eq!(
        details.health.len(),
        1,
        "records of removed instances are skipped"
    );
    assert_eq!(details.health["h"], record);
    store.deregister("h").await.unwrap();
    assert!(store
        .instance_details(None)
        .await
        .unwrap()
        .health
        .is_empty());
}

async fn the_leader_lock_is_exclusive_and_lapses(store: Arc<dyn Store>) {
    let ttl = Duration::from_millis(300);
    assert!(store.acquire_leader("r1", ttl).await.unwrap());
    assert!(!store.acquire_leader("r2", ttl).await.unwrap());
    assert!(
        store.acquire_leader("r1", ttl).await.unwrap(),
        "the holder may re-acquire"
    );
    assert_eq!(store.leader().await.unwrap().as_deref(), Some("r1"));
    assert!(!store.renew_leader("r2", ttl).await.unwrap());
    store.release_leader("r2").await.unwrap();
    assert_eq!(
        store.leader().await.unwrap().as_deref(),
        Some("r1"),
        "only the holder releases"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(store.renew_leader("r1", ttl).await.unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !store.acquire_leader("r2", ttl).await.unwrap(),
        "renewed, still held"
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(
        store.acquire_leader("r2", ttl).await.unwrap(),
        "lapsed: taken over"
    );
    assert!(!store.renew_leader("r1", ttl).await.unwrap());
    store.release_leader("r2").await.unwrap();
    assert_eq!(store.leader().await.unwrap(), None);
}

async fn dataplane_records_keep_the_newest_session(store: Arc<dyn Store>) {
    let old = DataPlaneRecord {
        node_id: "dp-1".into(),
        session: "s1".into(),
        replica: "r1".into(),
        connected: true,
        ..DataPlaneRecord::default()
    };
    store.record_dataplane(&old).await.unwrap();
    let new = DataPlaneRecord {
        session: "s2".into(),
        acked_version: 7,
        ..old.clone()
    };
    store.record_dataplane(&new).await.unwrap();
    store
        .record_dataplane_gone(&DataPlaneRecord {
            connected: false,
            ..old.clone()
        })
        .await
        .unwrap();
    let listed = store.list_dataplanes().await.unwrap();
    assert_eq!(
        listed,
        vec![new.clone()],
        "an old stream ending does not hide the new one"
    );
    store
        .record_dataplane_gone(&DataPlaneRecord {
            connected: false,
            ..new.clone()
        })
        .await
        .unwrap();
    assert!(!store.list_dataplanes().await.unwrap()[0].connected);
    store
        .forget_dataplanes(&["dp-1".to_string()])
        .await
        .unwrap();
    assert!(store.list_dataplanes().await.unwrap().is_empty());
}

macro_rules! on_both_stores {
    ($($scenario:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(std::sync::Arc::new(super::MemoryStore::new())).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let server = super::RedisServer::start();
                    let store = super::RedisStore::connect(&server.url(), "gw:").await.unwrap();
                    super::$scenario(std::sync::Arc::new(store)).await;
                }
            )*
        }
    };
}

on_both_stores!(
    register_is_idempotent,
    an_id_of_another_service_is_refused,
    lapsed_leases_are_removed_with_a_delta,
    renewals_extend_leases,
    deregistration_is_idempotent,
    drain_flags_are_versioned,
    config_applies_with_static_instances,
    an_invalid_config_writes_nothing,
    changes_are_readable_after_a_version,
    a_snapshot_plus_later_changes_equals_a_later_snapshot,
    health_verdicts_write_only_changes,
    the_leader_lock_is_exclusive_and_lapses,
    dataplane_records_keep_the_newest_session,
);

#[tokio::test]
async fn redis_keys_carry_the_prefix_and_stores_do_not_mix() {
    let server = RedisServer::start();
    let a = RedisStore::connect(&server.url(), "one:").await.unwrap();
    let b = RedisStore::connect(&server.url(), "two:").await.unwrap();
    a.register(&spec("x", "a", 80), MINUTE, false)
        .await
        .unwrap();
    assert_eq!(a.head().await.unwrap().version, 1);
    assert_eq!(b.head().await.unwrap().version, 0);
    assert!(b.snapshot().await.unwrap().instances.is_empty());
    assert_ne!(
        a.snapshot().await.unwrap().epoch,
        b.snapshot().await.unwrap().epoch
    );
}

#[tokio::test]
async fn a_redis_outage_answers_quickly_and_heals() {
    let mut server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), "gw:").await.unwrap();
    store
        .register(&spec("x", "a", 80), MINUTE, false)
        .await
        .unwrap();
    server.kill();
    let started = Instant::now();
    let err = store
        .register(&spec("y", "a", 81), MINUTE, false)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let started = Instant::now();
    assert!(store
        .wait_changes(1, 10, Duration::from_millis(100))
        .await
        .is_err());
    assert!(started.elapsed() < Duration::from_secs(3));

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.register(&spec("y", "a", 81), MINUTE, false).await {
            Ok(r) => {
                assert_eq!(r.version, 2, "the data survived the restart");
                break;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("store did not recover: {e}"),
        }
    }
    let changes = store
        .wait_changes(1, 10, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(changes.len(), 1);
}

#[tokio::test]
async fn bad_redis_urls_and_unreachable_servers_fail_to_connect() {
    let err = RedisStore::connect("http://nope", "gw:")
        .await
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    let port = gateway_tests::free_port();
    let started = Instant::now();
    let err = RedisStore::connect(&format!("redis://127.0.0.1:{port}"), "gw:")
        .await
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[tokio::test]
async fn create_only_registrations_refuse_taken_ids() {
    let server = RedisServer::start();
    let redis: Arc<dyn Store> = Arc::new(RedisStore::connect(&server.url(), "gw:").await.unwrap());
    let memory: Arc<dyn Store> = Arc::new(MemoryStore::new());
    for store in [redis, memory] {
        store
            .register(&spec("x", "a", 80), MINUTE, true)
            .await
            .unwrap();
        let err = store
            .register(&spec("x", "a", 80), MINUTE, true)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
        assert_eq!(version(&*store).await, 1, "{}", store.kind());
    }
}
