//! The control plane seen through its gRPC API: a real tonic server on a
//! loopback port and the generated clients.

mod common;

use common::*;
use gateway_proto::v1 as pb;
use gateway_proto::v1::admin_client::AdminClient;
use gateway_proto::v1::data_plane_message::Kind;
use gateway_proto::v1::discovery_client::DiscoveryClient;
use gateway_proto::v1::registry_client::RegistryClient;
use gateway_tests::upstream::Upstream;
use gateway_tests::RedisServer;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

const SECONDS_5: Duration = Duration::from_secs(5);

const CONFIG: &str = r#"
version: 1
services:
  - name: echo
    health_check: { enabled: false }
routes:
  - name: echo
    match: { path_prefix: /echo }
    service: echo
    strip_prefix: true
"#;

async fn apply(admin: &mut Admin, doc: &str) -> pb::ApplyConfigResponse {
    admin
        .apply_config(pb::ApplyConfigRequest {
            document: doc.as_bytes().to_vec(),
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner()
}

fn ids(instances: &[pb::Instance]) -> Vec<&str> {
    instances.iter().map(|i| i.id.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_or_with_a_wrong_token_are_unauthenticated() {
    let cp = start(None).await;
    let ch = channel(&cp).await;
    for token in [None, Some("wrong"), Some(ADMIN_TOKEN)] {
        let mut client = RegistryClient::with_interceptor(ch.clone(), Bearer(token));
        let err = client
            .register(registration("a", "a-1", 80))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "registry with {token:?}");
    }
    for token in [None, Some("wrong"), Some(REGISTRATION_TOKEN)] {
        let mut client = AdminClient::with_interceptor(ch.clone(), Bearer(token));
        let err = client
            .get_config(pb::GetConfigRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "admin with {token:?}");
    }
    for token in [None, Some("wrong"), Some(ADMIN_TOKEN)] {
        let mut client = DiscoveryClient::with_interceptor(ch.clone(), Bearer(token));
        let (tx, rx) = mpsc::channel(1);
        tx.send(hello("dp", "", 0)).await.unwrap();
        let err = client.stream(ReceiverStream::new(rx)).await.unwrap_err();
        assert_eq!(
            err.code(),
            Code::Unauthenticated,
            "discovery with {token:?}"
        );
    }
    // Nothing was written by the refused calls; the right tokens pass.
    let config = admin(&cp)
        .await
        .get_config(pb::GetConfigRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(config.version, 0);
    registry(&cp)
        .await
        .register(registration("a", "a-1", 80))
        .await
        .unwrap();
    let mut dp = DataPlane::connect(&cp, "dp", "", 0).await.unwrap();
    assert!(dp.next(SECONDS_5).await.snapshot);
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_invalid_argument_with_every_reason() {
    let cp = start(None).await;
    let mut reg = registry(&cp).await;
    let bad = pb::RegisterRequest {
        service: "Not Valid".into(),
        address: "bad host".into(),
        port: 0,
        lease_ttl_seconds: 99_999,
        ..Default::default()
    };
    let err = reg.register(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    for field in ["service:", "address:", "port:", "lease_ttl_seconds:"] {
        assert!(
            err.message().contains(field),
            "{field} in {}",
            err.message()
        );
    }
    let err = reg
        .register(registration("a", "static:a:127.0.0.1:80", 80))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    reg.register(registration("a", "shared-id", 80))
        .await
        .unwrap();
    let err = reg
        .register(registration("b", "shared-id", 80))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    let err = reg
        .deregister(pb::DeregisterRequest {
            instance_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = reg
        .heartbeat(pb::HeartbeatRequest {
            lease_id: "unknown".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let mut adm = admin(&cp).await;
    let before = adm
        .get_config(pb::GetConfigRequest::default())
        .await
        .unwrap()
        .into_inner();
    let doc = "version: 1\nservices:\n  - name: a\n    health_check: { healthy_threshold: 0 }\nroutes:\n  - name: r\n    match: { path_prefix: /a }\n    service: missing\n";
    let err = adm
        .apply_config(pb::ApplyConfigRequest {
            document: doc.into(),
            dry_run: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("healthy_threshold"),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("unknown service"),
        "{}",
        err.message()
    );
    let err = adm
        .apply_config(pb::ApplyConfigRequest {
            document: b"{not yaml: [".to_vec(),
            dry_run: true,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("cannot parse"), "{}", err.message());
    let after = adm
        .get_config(pb::GetConfigRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after, before, "nothing written");

    let err = adm
        .drain(pb::DrainRequest {
            instance_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = adm
        .drain(pb::DrainRequest {
            instance_id: "has space".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = adm
        .get_breaker_policy(pb::GetBreakerPolicyRequest {
            service: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // A Discovery stream must open with Hello.
    let (tx, rx) = mpsc::channel(1);
    tx.send(pb::DataPlaneMessage {
        kind: Some(Kind::Ack(pb::Ack { version: 1 })),
    })
    .await
    .unwrap();
    let mut updates = discovery(&cp)
        .await
        .stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let err = updates.message().await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    cp.shutdown().await;
}

/// Waits until the Admin API lists a data plane that `listed` accepts, and
/// answers it.
async fn until_listed(
    adm: &Admin,
    listed: impl Fn(&pb::DataPlaneStatus) -> bool,
) -> pb::DataPlaneStatus {
    let listed = &listed;
    until_some(SECONDS_5, || {
        let mut adm = adm.clone();
        async move {
            let list = adm
                .list_data_planes(pb::ListDataPlanesRequest {})
                .await
                .unwrap()
                .into_inner();
            list.data_planes.into_iter().find(|d| listed(d))
        }
    })
    .await
}

/// Waits until the Admin API lists `node` with `acked` as its acknowledged version.
async fn until_acked(adm: &Admin, node: &'static str, acked: u64) {
    until_listed(adm, |d| d.node_id == node && d.acked_version == acked).await;
}

async fn config_of(adm: &mut Admin, node: &str) -> Result<pb::GetConfigResponse, tonic::Status> {
    adm.get_config(pb::GetConfigRequest {
        data_plane: node.into(),
    })
    .await
    .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_config_shows_what_a_data_plane_acknowledged() {
    let redis = RedisServer::start();
    let cp = start(Some(redis.url())).await;
    let mut adm = admin(&cp).await;
    let mut reg = registry(&cp).await;
    assert_eq!(apply(&mut adm, CONFIG).await.version, 1);
    let v1 = adm
        .get_config(pb::GetConfigRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!((v1.version, v1.current_version), (1, 1));

    let mut dp = DataPlane::connect(&cp, "dp-1", "", 0).await.unwrap();
    assert_eq!(dp.next(SECONDS_5).await.version, 1);
    dp.ack(1).await;
    until_acked(&adm, "dp-1", 1).await;

    // A new config the data plane has not acknowledged: it still holds v1.
    assert_eq!(apply(&mut adm, WITH_STATIC).await.version, 2);
    let held = config_of(&mut adm, "dp-1").await.unwrap();
    assert_eq!((held.version, held.current_version), (1, 2));
    assert_eq!(held.config_json, v1.config_json);

    // It takes v2, then a registration (v3) leaves the config as it was.
    assert_eq!(dp.next(SECONDS_5).await.version, 2);
    reg.register(registration("echo", "echo-1", 9001))
        .await
        .unwrap();
    assert_eq!(dp.next(SECONDS_5).await.version, 3);
    dp.ack(3).await;
    until_acked(&adm, "dp-1", 3).await;
    let current = adm
        .get_config(pb::GetConfigRequest::default())
        .await
        .unwrap()
        .into_inner();
    let held = config_of(&mut adm, "dp-1").await.unwrap();
    assert_eq!((held.version, held.current_version), (3, 3));
    assert_eq!(held.config_json, current.config_json);
    assert_ne!(held.config_json, v1.config_json);

    // Unknown and malformed node ids.
    assert_eq!(
        config_of(&mut adm, "dp-9").await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        config_of(&mut adm, "a b").await.unwrap_err().code(),
        Code::InvalidArgument
    );
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_sends_snapshot_then_deltas_and_resumes() {
    let redis = RedisServer::start();
    let cp = start(Some(redis.url())).await;
    let mut adm = admin(&cp).await;
    let mut reg = registry(&cp).await;
    assert_eq!(apply(&mut adm, CONFIG).await.version, 1);

    let mut dp = DataPlane::connect(&cp, "dp-1", "", 0).await.unwrap();
    let snapshot = dp.next(SECONDS_5).await;
    assert!(snapshot.snapshot);
    assert_eq!(snapshot.version, 1);
    assert!(gateway_common::GatewayConfig::from_json(&snapshot.config_json).is_ok());
    let epoch = snapshot.epoch.clone();
    assert!(!epoch.is_empty());
    dp.ack(1).await;

    let registered = reg
        .register(registration("echo", "echo-1", 9001))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(registered.version, 2);
    let delta = dp.next(SECONDS_5).await;
    assert!(!delta.snapshot);
    assert_eq!((delta.base_version, delta.version), (1, 2));
    assert_eq!(ids(&delta.upserts), vec!["echo-1"]);
    assert!(delta.config_json.is_empty(), "config unchanged");
    assert_eq!(delta.epoch, epoch);
    dp.ack(2).await;

    let replica = cp.replica_id().to_string();
    until_listed(&adm, |d| {
        d.node_id == "dp-1" && d.acked_version == 2 && d.connected && d.replica == replica
    })
    .await;

    // Disconnected: the data plane is listed as such, and misses two versions.
    drop(dp);
    until_listed(&adm, |d| d.node_id == "dp-1" && !d.connected).await;
    reg.register(registration("echo", "echo-2", 9002))
        .await
        .unwrap();
    reg.deregister(pb::DeregisterRequest {
        instance_id: "echo-1".into(),
    })
    .await
    .unwrap();

    let mut dp = DataPlane::connect(&cp, "dp-1", &epoch, 2).await.unwrap();
    let resumed = dp.next(SECONDS_5).await;
    assert!(!resumed.snapshot, "resumed with deltas");
    assert_eq!((resumed.base_version, resumed.version), (2, 4));
    assert_eq!(ids(&resumed.upserts), vec!["echo-2"]);
    assert_eq!(resumed.removals, vec!["echo-1".to_string()]);
    drop(dp);

    // Current: nothing to send.
    let mut dp = DataPlane::connect(&cp, "dp-1", &epoch, 4).await.unwrap();
    assert_eq!(dp.quiet(Duration::from_millis(700)).await, None);

    // A gap: the data plane asks for a snapshot.
    dp.send(Kind::Nack(pb::Nack {
        version: 4,
        reason: "gap".into(),
        want_snapshot: true,
    }))
    .await;
    let again = dp.next(SECONDS_5).await;
    assert!(again.snapshot);
    assert_eq!(again.version, 4);
    assert_eq!(ids(&again.upserts), vec!["echo-2"]);

    // A refused update and a report are recorded.
    dp.send(Kind::Nack(pb::Nack {
        version: 4,
        reason: "cannot load route x".into(),
        want_snapshot: false,
    }))
    .await;
    dp.send(Kind::Report(pb::Report {
        in_flight: vec![pb::InstanceLoad {
            instance_id: "echo-2".into(),
            in_flight: 3,
        }],
        breakers: vec![pb::ServiceBreakerState {
            service: "echo".into(),
            state: pb::BreakerState::Open as i32,
        }],
    }))
    .await;
    let status = until_some(SECONDS_5, || {
        let mut adm = adm.clone();
        async move {
            let topology = adm
                .get_topology(pb::TopologyRequest {})
                .await
                .unwrap()
                .into_inner();
            topology
                .data_planes
                .into_iter()
                .find(|d| d.node_id == "dp-1" && d.nacked_version == 4 && !d.in_flight.is_empty())
        }
    })
    .await;
    assert_eq!(status.nack_reason, "cannot load route x");
    assert_eq!(status.in_flight[0].in_flight, 3);
    assert_eq!(status.breakers[0].state, pb::BreakerState::Open as i32);

    // Another epoch: a snapshot whatever the version.
    let mut other = DataPlane::connect(&cp, "dp-2", "another-epoch", 4)
        .await
        .unwrap();
    assert!(other.next(SECONDS_5).await.snapshot);
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_arrive_as_a_chain_of_deltas() {
    let cp = start(None).await;
    let mut reg = registry(&cp).await;
    let mut dp = DataPlane::connect(&cp, "dp", "", 0).await.unwrap();
    let snapshot = dp.next(SECONDS_5).await;
    let mut version = snapshot.version;
    let mut held: BTreeSet<String> = BTreeSet::new();
    let burst = 50u32;
    let writer = tokio::spawn(async move {
        for i in 0..burst {
            reg.register(registration("svc", &format!("svc-{i}"), 9000 + i))
                .await
                .unwrap();
        }
    });
    let mut messages = 0;
    while held.len() < burst as usize {
        let update = dp.next(SECONDS_5).await;
        assert!(!update.snapshot);
        assert_eq!(
            update.base_version, version,
            "every delta starts where the last ended"
        );
        version = update.version;
        held.extend(update.upserts.into_iter().map(|i| i.id));
        messages += 1;
    }
    writer.await.unwrap();
    assert_eq!(version, snapshot.version + u64::from(burst));
    assert!(messages <= burst);
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapsed_leases_leave_every_data_plane_and_keepalive_renews() {
    let cp = start(None).await;
    let mut reg = registry(&cp).await;
    let mut dp = DataPlane::connect(&cp, "dp", "", 0).await.unwrap();
    dp.next(SECONDS_5).await;

    let mut short = registration("svc", "short", 9001);
    short.lease_ttl_seconds = 1;
    let mut kept = registration("svc", "kept", 9002);
    kept.lease_ttl_seconds = 1;
    let granted = reg.register(short).await.unwrap().into_inner();
    assert_eq!(
        (granted.lease_id.as_str(), granted.lease_ttl_seconds),
        ("short", 1)
    );
    let registered_at = Instant::now();
    reg.register(kept).await.unwrap();

    // Keep one lease alive over a stream, the other lapses.
    let (tx, rx) = mpsc::channel(4);
    let mut answers = reg
        .keep_alive(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let keeper = tokio::spawn(async move {
        for _ in 0..8 {
            if tx
                .send(pb::KeepAliveRequest {
                    lease_id: "kept".into(),
                })
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let _ = tx
            .send(pb::KeepAliveRequest {
                lease_id: "unknown".into(),
            })
            .await;
    });
    let first = answers.message().await.unwrap().unwrap();
    assert!(first.found);
    assert_eq!(first.ttl_ms, 1000);

    dp.until(Duration::from_secs(4), |u| {
        u.removals.contains(&"short".to_string())
    })
    .await;
    let lapse = registered_at.elapsed();
    assert!(
        lapse < Duration::from_millis(2300),
        "removed after {lapse:?}"
    );

    let mut last = first;
    while let Some(answer) = answers.message().await.unwrap() {
        last = answer;
    }
    keeper.await.unwrap();
    assert_eq!(last.lease_id, "unknown");
    assert!(!last.found);
    let heartbeat = reg
        .heartbeat(pb::HeartbeatRequest {
            lease_id: "kept".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(heartbeat.ttl_ms, 1000);
    let listed = admin(&cp)
        .await
        .list_instances(pb::ListInstancesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let listed: Vec<&str> = listed
        .instances
        .iter()
        .filter_map(|s| s.instance.as_ref())
        .map(|i| i.id.as_str())
        .collect();
    assert_eq!(listed, vec!["kept"]);
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_is_unavailable_and_heals() {
    let mut redis = RedisServer::start();
    let cp = start(Some(redis.url())).await;
    let mut reg = registry(&cp).await;
    let mut dp = DataPlane::connect(&cp, "dp", "", 0).await.unwrap();
    dp.next(SECONDS_5).await;
    reg.register(registration("a", "a-1", 81)).await.unwrap();
    dp.next(SECONDS_5).await;

    redis.kill();
    let started = Instant::now();
    let err = reg
        .register(registration("a", "a-2", 82))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let (status, body) = http_get(cp.http_addr(), "/health/ready").await;
    assert_eq!(status, 503, "{body}");

    redis.restart();
    let registered = until_some(Duration::from_secs(15), || {
        let mut reg = reg.clone();
        async move { reg.register(registration("a", "a-2", 82)).await.ok() }
    })
    .await
    .into_inner();
    assert_eq!(registered.version, 2);
    // The follower resumes from its version: the data plane gets the delta.
    let delta = dp
        .until(Duration::from_secs(10), |u| {
            ids(&u.upserts).contains(&"a-2")
        })
        .await;
    assert!(!delta.snapshot);
    let (status, _) = http_get(cp.http_addr(), "/health/ready").await;
    assert_eq!(status, 200);
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_mark_instances_and_reach_data_planes() {
    let upstream = Upstream::start("up").await;
    let cp = start(None).await;
    let mut adm = admin(&cp).await;
    apply(
        &mut adm,
        "version: 1\nservices:\n  - name: up\n    health_check: { path: /health, interval: 200ms, timeout: 100ms, healthy_threshold: 1, unhealthy_threshold: 2 }\n",
    )
    .await;
    let mut dp = DataPlane::connect(&cp, "dp", "", 0).await.unwrap();
    dp.next(SECONDS_5).await;
    registry(&cp)
        .await
        .register(registration("up", "up-1", u32::from(upstream.port())))
        .await
        .unwrap();

    let healthy = |state: pb::HealthState| {
        move |u: &pb::ConfigUpdate| {
            u.upserts
                .iter()
                .any(|i| i.id == "up-1" && i.health == state as i32)
        }
    };
    dp.until(SECONDS_5, healthy(pb::HealthState::Healthy)).await;
    upstream.set_status(503);
    dp.until(SECONDS_5, healthy(pb::HealthState::Unhealthy))
        .await;

    // Check records are written in batches, a little after the verdicts.
    let topology = until_some(SECONDS_5, || {
        let mut adm = adm.clone();
        async move {
            let t = adm
                .get_topology(pb::TopologyRequest {})
                .await
                .unwrap()
                .into_inner();
            (t.services[0].instances[0].last_check_result == "503").then_some(t)
        }
    })
    .await;
    let instance = &topology.services[0].instances[0];
    assert!(instance.last_check_unix_ms > 0);
    assert!(instance.lease_remaining_ms > 0);
    assert_eq!(topology.leader, cp.replica_id(), "in-memory: always leader");
    let metrics = http_get(cp.http_addr(), "/metrics").await.1;
    assert!(
        metrics.contains("control_plane_health_checks_total{outcome=\"failure\"}"),
        "{metrics}"
    );
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_of_https_instances_go_over_tls_with_the_services_settings() {
    let ca = gateway_tests::certs::TestCa::new("health test CA");
    let other = gateway_tests::certs::TestCa::new("another CA");
    let pair = ca.server(&["up.internal"], None);
    let trusted = Upstream::start_tls("up", gateway_tests::certs::server_config(&pair, None)).await;
    let foreign_pair = other.server(&["up.internal"], None);
    let foreign = Upstream::start_tls(
        "up",
        gateway_tests::certs::server_config(&foreign_pair, None),
    )
    .await;
    let dir = std::env::temp_dir().join(format!("cp-health-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let check = "health_check: { path: /health, interval: 300ms, timeout: 300ms, healthy_threshold: 1, unhealthy_threshold: 1 }";
    let tls = format!(
        "tls: {{ ca_file: {}, server_name: up.internal }}",
        ca_file.display()
    );
    let cp = start(None).await;
    let mut adm = admin(&cp).await;
    apply(
        &mut adm,
        &format!(
            "version: 1\nservices:\n  - name: up\n    {check}\n    {tls}\n  - name: foreign\n    {check}\n    {tls}\n"
        ),
    )
    .await;
    let mut dp = DataPlane::connect(&cp, "dp", "", 0).await.unwrap();
    dp.next(SECONDS_5).await;
    let mut registry = registry(&cp).await;
    for (service, id, upstream) in [("up", "up-1", &trusted), ("foreign", "foreign-1", &foreign)] {
        let mut request = registration(service, id, u32::from(upstream.port()));
        request.scheme = "https".into();
        registry.register(request).await.unwrap();
    }
    let state = |id: &'static str, state: pb::HealthState| {
        move |u: &pb::ConfigUpdate| {
            u.upserts
                .iter()
                .any(|i| i.id == id && i.health == state as i32)
        }
    };
    dp.until(SECONDS_5, state("up-1", pb::HealthState::Healthy))
        .await;
    assert!(trusted.hits() >= 1, "the probe reached the instance");
    assert_eq!(
        trusted.last_headers()["host"].to_str().unwrap(),
        format!("127.0.0.1:{}", trusted.port())
    );
    // A certificate of another CA fails the check: the instance is never
    // healthy and its probes never reach HTTP.
    let checked = until_some(SECONDS_5, || {
        let mut adm = adm.clone();
        async move {
            let t = adm
                .get_topology(pb::TopologyRequest {})
                .await
                .unwrap()
                .into_inner();
            t.services
                .iter()
                .flat_map(|s| &s.instances)
                .find(|i| {
                    i.instance.as_ref().is_some_and(|i| i.id == "foreign-1")
                        && !i.last_check_result.is_empty()
                })
                .cloned()
        }
    })
    .await;
    assert_ne!(
        checked.instance.unwrap().health,
        pb::HealthState::Healthy as i32
    );
    assert!(
        checked
            .last_check_result
            .to_lowercase()
            .contains("certificate"),
        "{}",
        checked.last_check_result
    );
    assert_eq!(foreign.hits(), 0);
    let _ = std::fs::remove_dir_all(&dir);
    cp.shutdown().await;
}

const WITH_STATIC: &str = r#"
version: 1
services:
  - name: echo
    health_check: { enabled: false }
    instances: ["http://127.0.0.1:8081"]
routes:
  - name: echo
    match: { path_prefix: /echo }
    service: echo
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_applies_drains_and_shows_topology() {
    let cp = start(None).await;
    let mut adm = admin(&cp).await;
    let applied = apply(&mut adm, WITH_STATIC).await;
    assert_eq!(applied.version, 1);
    assert_eq!(applied.changes.len(), 2);
    assert!(!applied.unchanged);
    let again = apply(&mut adm, WITH_STATIC).await;
    assert!(again.unchanged);
    assert_eq!(again.version, 1);
    let dry = adm
        .apply_config(pb::ApplyConfigRequest {
            document: CONFIG.into(),
            dry_run: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dry.version, 1);
    assert_eq!(dry.changes[0].action, "changed");
    let config = adm
        .get_config(pb::GetConfigRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(config.version, 1, "dry run wrote nothing");

    let mut watch = adm
        .watch_topology(pb::TopologyRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.version, 1);
    assert_eq!(first.replica, cp.replica_id());

    registry(&cp)
        .await
        .register(registration("echo", "echo-1", 9001))
        .await
        .unwrap();
    let listed = adm
        .list_instances(pb::ListInstancesRequest {
            service: "echo".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let statuses: Vec<(&str, bool)> = listed
        .instances
        .iter()
        .map(|s| {
            let i = s.instance.as_ref().unwrap();
            (i.id.as_str(), i.static_instance)
        })
        .collect();
    assert_eq!(
        statuses,
        vec![("echo-1", false), ("static:echo:127.0.0.1:8081", true)]
    );
    assert_eq!(listed.version, 2, "reads see the caller's own writes");

    let drained = adm
        .drain(pb::DrainRequest {
            instance_id: "echo-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(drained.version, 3);
    let status = drained.instance.unwrap();
    assert!(status.instance.as_ref().unwrap().draining);
    assert!(status.lease_remaining_ms > 50_000);
    let undrained = adm
        .undrain(pb::DrainRequest {
            instance_id: "echo-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(undrained.version, 4);

    let seen = tokio::time::timeout(SECONDS_5, async {
        loop {
            let t = watch.message().await.unwrap().unwrap();
            if t.version >= 4 {
                return t;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(seen.services.len(), 1);
    assert_eq!(seen.services[0].instances.len(), 2);

    // Breaker policy: a validated config change.
    let policy = pb::BreakerPolicy {
        service: "echo".into(),
        enabled: true,
        error_threshold_percent: 25,
        volume_threshold: 5,
        reset_timeout_ms: 2_000,
        ..Default::default()
    };
    let set = adm
        .set_breaker_policy(pb::SetBreakerPolicyRequest {
            policy: Some(policy.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.error_threshold_percent, 25);
    assert_eq!(set.rolling_buckets, 10, "zero takes the default");
    let got = adm
        .get_breaker_policy(pb::GetBreakerPolicyRequest {
            service: "echo".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, set);
    let config = adm
        .get_config(pb::GetConfigRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(config.version, 5);
    assert!(config.config_json.contains("circuit_breaker"));
    let err = adm
        .set_breaker_policy(pb::SetBreakerPolicyRequest {
            policy: Some(pb::BreakerPolicy {
                error_threshold_percent: 500,
                ..policy.clone()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("error_threshold_percent"),
        "{}",
        err.message()
    );
    let err = adm
        .set_breaker_policy(pb::SetBreakerPolicyRequest {
            policy: Some(pb::BreakerPolicy {
                service: "nope".into(),
                ..policy
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_replica_takes_over_when_the_leader_dies() {
    let redis = RedisServer::start();
    let a = start(Some(redis.url())).await;
    until_some(SECONDS_5, || async { a.is_leader().then_some(()) }).await;
    let b = start(Some(redis.url())).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!b.is_leader(), "one leader at a time");
    let topology = admin(&b)
        .await
        .get_topology(pb::TopologyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(topology.leader, a.replica_id());
    assert_eq!(topology.replica, b.replica_id());

    // Both replicas serve the same state.
    registry(&a)
        .await
        .register(registration("svc", "svc-1", 9001))
        .await
        .unwrap();
    let listed = admin(&b)
        .await
        .list_instances(pb::ListInstancesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.instances.len(), 1);

    // The leader dies without releasing its lock: the other takes over
    // within the lock's TTL and expires leases from then on.
    let died = Instant::now();
    drop(a);
    until_some(SECONDS_5, || async { b.is_leader().then_some(()) }).await;
    assert!(
        died.elapsed() < Duration::from_millis(2500),
        "{:?}",
        died.elapsed()
    );
    let mut dp = DataPlane::connect(&b, "dp", "", 0).await.unwrap();
    dp.next(SECONDS_5).await;
    let mut short = registration("svc", "short", 9002);
    short.lease_ttl_seconds = 1;
    registry(&b).await.register(short).await.unwrap();
    dp.until(Duration::from_secs(4), |u| {
        u.removals.contains(&"short".to_string())
    })
    .await;

    // A graceful shutdown releases the lock at once.
    let c = start(Some(redis.url())).await;
    b.shutdown().await;
    until_some(SECONDS_5, || async { c.is_leader().then_some(()) }).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_reflection_and_http_endpoints() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let cp = start(None).await;
    let ch = channel(&cp).await;
    let mut health = HealthClient::new(ch.clone());
    until_some(SECONDS_5, || {
        let mut health = health.clone();
        async move {
            let answer = health
                .check(HealthCheckRequest {
                    service: "gateway.v1.Registry".into(),
                })
                .await
                .ok()?;
            (answer.into_inner().status == ServingStatus::Serving as i32).then_some(())
        }
    })
    .await;
    let overall = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(overall.into_inner().status, ServingStatus::Serving as i32);

    let mut reflection = ServerReflectionClient::new(ch);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for name in [
        "gateway.v1.Registry",
        "gateway.v1.Admin",
        "gateway.v1.Discovery",
    ] {
        assert!(names.contains(&name.to_string()), "{name} in {names:?}");
    }

    assert_eq!(http_get(cp.http_addr(), "/health/live").await.0, 200);
    let (status, body) = http_get(cp.http_addr(), "/health/ready").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"ready\""), "{body}");
    registry(&cp)
        .await
        .register(registration("a", "a-1", 80))
        .await
        .unwrap();
    let _ = registry(&cp)
        .await
        .register(registration("Bad", "", 80))
        .await;
    let mut dp = DataPlane::connect(&cp, "dp", "", 0).await.unwrap();
    let snap = dp.next(SECONDS_5).await;
    dp.ack(snap.version).await;
    let metrics = until_some(SECONDS_5, || async {
        let (_, body) = http_get(cp.http_addr(), "/metrics").await;
        let acked = body.contains("control_plane_connected_data_planes 1")
            && body.contains("control_plane_dataplane_version_lag 0");
        acked.then_some(body)
    })
    .await;
    for needle in [
        "control_plane_registrations_total{effect=\"created\"} 1",
        "control_plane_grpc_errors_total{method=\"Registry/Register\",code=\"InvalidArgument\"} 1",
        "control_plane_config_version 1",
        "control_plane_dataplane_version_lag 0",
        "control_plane_lease_expiries_total 0",
        "control_plane_deregistrations_total 0",
        "control_plane_connected_data_planes 1",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from\n{metrics}");
    }
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_store_sends_every_data_plane_a_snapshot_of_the_new_epoch() {
    let redis = RedisServer::start();
    let cp = start(Some(redis.url())).await;
    let mut reg = registry(&cp).await;
    reg.register(registration("a", "a-1", 81)).await.unwrap();
    let mut dp = DataPlane::connect(&cp, "dp", "", 0).await.unwrap();
    let first = dp.next(SECONDS_5).await;
    assert_eq!(first.version, 1);

    // Redis loses everything (e.g. restarted without persistence).
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();

    let fresh = dp.next(SECONDS_5).await;
    assert!(fresh.snapshot);
    assert_ne!(fresh.epoch, first.epoch);
    assert_eq!(fresh.version, 0);
    assert!(fresh.upserts.is_empty());

    // Writes continue in the new epoch, as deltas again.
    reg.register(registration("a", "a-2", 82)).await.unwrap();
    let delta = dp.next(SECONDS_5).await;
    assert!(!delta.snapshot);
    assert_eq!((delta.base_version, delta.version), (0, 1));
    assert_eq!(delta.epoch, fresh.epoch);
    cp.shutdown().await;
}

/// A data plane outside the version window is refused with
/// FAILED_PRECONDITION and a reason that says the rule; one inside it is
/// served and its version is listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_planes_outside_the_version_window_are_refused() {
    let cp = start(None).await;
    let too_new = {
        let (major, rest) = control_plane::compat::VERSION.split_once('.').unwrap();
        format!("{}.{rest}", major.parse::<u64>().unwrap() + 1)
    };
    let (tx, rx) = mpsc::channel(1);
    tx.send(common::hello_as("future", "", 0, &too_new))
        .await
        .unwrap();
    let refused = match discovery(&cp).await.stream(ReceiverStream::new(rx)).await {
        Err(status) => status,
        Ok(response) => response
            .into_inner()
            .message()
            .await
            .expect_err("a data plane of another major version is refused"),
    };
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("upgrade control planes first"),
        "{}",
        refused.message()
    );

    let (tx, rx) = mpsc::channel(1);
    let version = control_plane::compat::VERSION;
    tx.send(common::hello_as("current", "", 0, version))
        .await
        .unwrap();
    let mut updates = discovery(&cp)
        .await
        .stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert!(updates.message().await.unwrap().unwrap().snapshot);
    let listed = until_listed(&admin(&cp).await, |d| d.node_id == "current").await;
    assert_eq!(listed.build_version, version);
    drop(tx);
    cp.shutdown().await;
}
