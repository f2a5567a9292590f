//! Tests of snapshot updates: deltas, gaps, instance state and the resilience state kept across rebuilds.

use super::*;
use gateway_common::registration::{Health, InstanceSpec, InstanceState};

const CONFIG: &str = r#"{"version":1,"services":[{"name":"a"},{"name":"b"}],"routes":[{"name":"a","match":{"path_prefix":"/a"},"service":"a"},{"name":"b","match":{"path_prefix":"/b"},"service":"b"}]}"#;

fn instance(id: &str, service: &str, port: u32) -> pb::Instance {
    pb::Instance {
        id: id.into(),
        service: service.into(),
        address: "127.0.0.1".into(),
        port,
        weight: 1,
        health: pb::HealthState::Unknown as i32,
        ..Default::default()
    }
}

fn snapshot(version: u64, instances: Vec<pb::Instance>) -> pb::ConfigUpdate {
    pb::ConfigUpdate {
        epoch: "e".into(),
        version,
        snapshot: true,
        config_json: CONFIG.into(),
        upserts: instances,
        ..Default::default()
    }
}

fn delta(base: u64, upserts: Vec<pb::Instance>, removals: Vec<&str>) -> pb::ConfigUpdate {
    pb::ConfigUpdate {
        epoch: "e".into(),
        version: base + 1,
        base_version: base,
        upserts,
        removals: removals.into_iter().map(String::from).collect(),
        ..Default::default()
    }
}

fn runtime() -> Runtime {
    Runtime::new(Arc::new(Metrics::new()))
}

fn ids(rt: &Runtime, service: &str) -> Vec<String> {
    rt.load()
        .service_named(service)
        .unwrap()
        .balancer
        .endpoints()
        .iter()
        .map(|e| e.id.to_string())
        .collect()
}

#[tokio::test]
async fn instance_delta_rebuilds_only_touched_services() {
    let rt = runtime();
    assert!(!rt.is_ready());
    rt.apply_update(&snapshot(
        1,
        vec![instance("a1", "a", 1), instance("b1", "b", 2)],
    ))
    .unwrap();
    assert!(rt.is_ready());
    let before = rt.snapshot();
    rt.apply_update(&delta(1, vec![instance("a2", "a", 3)], vec![]))
        .unwrap();
    let after = rt.snapshot();
    assert_eq!(after.version, 2);
    assert!(Arc::ptr_eq(&before.router, &after.router));
    assert!(Arc::ptr_eq(&before.services[1], &after.services[1]));
    assert!(!Arc::ptr_eq(&before.services[0], &after.services[0]));
    assert_eq!(ids(&rt, "a"), vec!["a1", "a2"]);
}

#[tokio::test]
async fn in_flight_counts_survive_swaps_and_removals_drop_them() {
    let rt = runtime();
    rt.apply_update(&snapshot(1, vec![instance("a1", "a", 1)]))
        .unwrap();
    let guard = rt.load().services[0]
        .balancer
        .pick(None)
        .unwrap()
        .load
        .begin();
    let mut draining = instance("a1", "a", 1);
    draining.draining = true;
    rt.apply_update(&delta(1, vec![draining], vec![])).unwrap();
    assert!(ids(&rt, "a").is_empty());
    assert_eq!(rt.in_flight_of("a1"), 1);
    assert_eq!(rt.busy(), vec![("a1".to_string(), 1)]);
    drop(guard);
    assert!(rt.busy().is_empty());
    assert_eq!(rt.in_flight_of("a1"), 0);
    rt.apply_update(&delta(2, vec![], vec!["a1"])).unwrap();
    assert!(rt.in_flight().is_empty());
}

#[tokio::test]
async fn unhealthy_instances_are_not_routable() {
    let rt = runtime();
    let mut sick = instance("a1", "a", 1);
    sick.health = pb::HealthState::Unhealthy as i32;
    rt.apply_update(&snapshot(1, vec![sick, instance("a2", "a", 2)]))
        .unwrap();
    assert_eq!(ids(&rt, "a"), vec!["a2"]);
}

#[tokio::test]
async fn gaps_and_bad_content_are_refused_whole() {
    let rt = runtime();
    rt.apply_update(&snapshot(5, vec![instance("a1", "a", 1)]))
        .unwrap();
    let err = rt.apply_update(&delta(3, vec![], vec![])).unwrap_err();
    assert!(err.wants_snapshot(), "{err}");
    let mut bad = delta(5, vec![instance("a2", "a", 2)], vec!["a1"]);
    bad.config_json = r#"{"version":7}"#.into();
    let err = rt.apply_update(&bad).unwrap_err();
    assert!(!err.wants_snapshot());
    let bad_instance = delta(
        5,
        vec![instance("a3", "a", 2), instance("x", "a", 0)],
        vec!["a1"],
    );
    assert!(rt.apply_update(&bad_instance).is_err());
    assert_eq!(rt.version().1, 5);
    assert_eq!(ids(&rt, "a"), vec!["a1"]);
}

#[tokio::test]
async fn instances_wait_for_their_service() {
    let rt = runtime();
    let empty = pb::ConfigUpdate {
        epoch: "e".into(),
        version: 1,
        snapshot: true,
        config_json: r#"{"version":1}"#.into(),
        upserts: vec![instance("c1", "c", 1)],
        ..Default::default()
    };
    rt.apply_update(&empty).unwrap();
    let mut add_service = delta(1, vec![], vec![]);
    add_service.config_json = r#"{"version":1,"services":[{"name":"c"}]}"#.into();
    rt.apply_update(&add_service).unwrap();
    assert_eq!(ids(&rt, "c"), vec!["c1"]);
}

#[tokio::test]
async fn standalone_change_is_applied() {
    let rt = runtime();
    let config = GatewayConfig::from_json(CONFIG).unwrap();
    let spec = InstanceSpec {
        id: "static:a:127.0.0.1:1".into(),
        service: "a".into(),
        address: "127.0.0.1".into(),
        port: 1,
        health_path: String::new(),
        weight: 1,
        zone: String::new(),
        metadata: Default::default(),
        static_instance: true,
        tls: false,
    };
    rt.apply(Change {
        source: ConfigSource::File,
        epoch: "standalone".into(),
        version: 1,
        replace_all: true,
        config: Some(config),
        upserts: vec![Instance {
            spec,
            state: InstanceState {
                health: Health::Unknown,
                draining: false,
            },
        }],
        removals: vec![],
    })
    .unwrap();
    assert_eq!(ids(&rt, "a"), vec!["static:a:127.0.0.1:1"]);
}

#[tokio::test]
async fn resilience_state_survives_rebuilds_while_its_policy_stays() {
    let rt = runtime();
    let with = |breaker_percent: u32| {
        format!(
            r#"{{"version":1,"services":[{{"name":"a","circuit_breaker":{{"error_threshold_percent":{breaker_percent}}},"retry":{{}},"outlier_detection":{{}},"load_balancer":{{"strategy":"consistent-hash","hash_on":"client-ip"}}}},{{"name":"b"}}],"routes":[{{"name":"a","match":{{"path_prefix":"/a"}},"service":"a"}}]}}"#
        )
    };
    let mut first = snapshot(1, vec![instance("a1", "a", 1), instance("a2", "a", 2)]);
    first.config_json = with(50);
    rt.apply_update(&first).unwrap();
    let before = rt.snapshot().services[0].clone();
    let breaker = before.breaker.clone().unwrap();
    // An instance change rebuilds the service but keeps its state.
    rt.apply_update(&delta(1, vec![instance("a3", "a", 3)], vec![]))
        .unwrap();
    let after = rt.snapshot().services[0].clone();
    assert!(!Arc::ptr_eq(&before, &after));
    assert!(Arc::ptr_eq(&breaker, after.breaker.as_ref().unwrap()));
    assert!(Arc::ptr_eq(
        before.retry.as_ref().unwrap(),
        after.retry.as_ref().unwrap()
    ));
    assert!(Arc::ptr_eq(
        before.balancer.outlier().unwrap(),
        after.balancer.outlier().unwrap()
    ));
    assert_eq!(rt.breaker_states().len(), 1);
    // A new breaker policy starts a new breaker; the rest is kept.
    let mut change = delta(2, vec![], vec![]);
    change.config_json = with(30);
    rt.apply_update(&change).unwrap();
    let changed = rt.snapshot().services[0].clone();
    assert!(!Arc::ptr_eq(&breaker, changed.breaker.as_ref().unwrap()));
    assert_eq!(
        changed
            .breaker
            .as_ref()
            .unwrap()
            .policy()
            .error_threshold_percent,
        30
    );
    assert!(Arc::ptr_eq(
        after.retry.as_ref().unwrap(),
        changed.retry.as_ref().unwrap()
    ));
    // Consistent hashing: the same key keeps its instance across the rebuild.
    let key = Some(crate::upstream::maglev::hash64(b"10.0.0.1", 0));
    assert_eq!(
        after.balancer.pick(key).unwrap().id,
        changed.balancer.pick(key).unwrap().id
    );
}
