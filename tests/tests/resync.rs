//! A real data-plane process that misses changes resynchronises: with a
//! merged delta when its control plane still holds them, with a snapshot
//! when it does not (real processes, private redis-server).

use gateway_tests::cluster::{
    start_test, wait_until, ControlPlaneProc, DataPlaneProc, Tokens, Upstream,
};
use gateway_tests::grpc::{registration, Grpc};
use gateway_tests::{http, RedisServer};
use std::time::Duration;

/// Deltas each control plane keeps in memory in this test.
const RING: usize = 20;

fn config() -> String {
    let mut yaml = String::from("version: 1\nservices:\n");
    for name in ["early", "late", "filler"] {
        yaml.push_str(&format!(
            "  - name: {name}\n    health_check: {{ enabled: false }}\n"
        ));
    }
    yaml.push_str("routes:\n");
    for name in ["early", "late", "filler"] {
        yaml.push_str(&format!(
            "  - name: {name}\n    match: {{ path_prefix: /{name} }}\n    service: {name}\n    strip_prefix: true\n"
        ));
    }
    yaml
}

/// Updates of `kind` the data plane has received.
fn received(dp: &DataPlaneProc, kind: &str) -> u64 {
    let text = http::get(dp.admin, "/metrics")
        .map(|r| r.text())
        .unwrap_or_default();
    let series = format!("gateway_discovery_updates_received_total{{kind=\"{kind}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn wait_routed(dp: &DataPlaneProc, path: &str) {
    wait_until(
        &format!("{path} to be routed"),
        Duration::from_secs(20),
        || match dp.get(path) {
            Ok(r) if r.status == 200 => Ok(()),
            Ok(r) => Err(format!("status {}", r.status)),
            Err(e) => Err(e.to_string()),
        },
    );
}

/// `count` registrations of filler instances (versions nobody routes to).
fn fill(grpc: &Grpc, from: usize, count: usize) {
    for i in from..from + count {
        grpc.register(registration("filler", &format!("filler-{i}"), 9, 600))
            .unwrap_or_else(|s| panic!("registering filler-{i}: {s:?}"));
    }
}

#[test]
fn a_data_plane_that_missed_changes_resyncs_by_delta_or_snapshot() {
    let _guard = start_test();
    let redis = RedisServer::start();
    let tokens = Tokens::random();
    let ring = RING.to_string();
    let env = [("CP_DELTA_RING", ring.as_str())];
    let mut a = ControlPlaneProc::start_with_env("cp-a", Some(&redis.url()), &tokens, &env);
    let b = ControlPlaneProc::start_with_env("cp-b", Some(&redis.url()), &tokens, &env);
    a.gwctl().apply(&config()).success();
    let upstream = Upstream::start("u1");
    let via_b = b.grpc();
    via_b
        .register(registration("early", "early-1", upstream.port(), 600))
        .unwrap();
    let mut dp = DataPlaneProc::start("dp", &a.url(), None);
    dp.wait_ready();
    wait_routed(&dp, "/early/x");
    assert_eq!(received(&dp, "snapshot"), 1);

    // A few changes while its control plane is away: one merged delta.
    a.kill();
    fill(&via_b, 0, 3);
    via_b
        .register(registration("late", "late-1", upstream.port(), 600))
        .unwrap();
    a.restart();
    wait_routed(&dp, "/late/x");
    assert_eq!(received(&dp, "snapshot"), 1, "resumed without a snapshot");
    assert!(received(&dp, "delta") >= 1);

    // More changes than the control plane keeps: a snapshot.
    a.kill();
    fill(&via_b, 3, RING + 10);
    via_b
        .register(registration("late", "late-2", upstream.port(), 600))
        .unwrap();
    via_b
        .deregister("late-1")
        .unwrap_or_else(|s| panic!("deregistering late-1: {s:?}"));
    a.restart();
    wait_until(
        "the data plane to take a snapshot",
        Duration::from_secs(20),
        || match received(&dp, "snapshot") {
            2 => Ok(()),
            n => Err(format!("{n} snapshots")),
        },
    );
    wait_routed(&dp, "/late/x");
    let topology = a.grpc().topology().unwrap();
    let version = topology.version;
    wait_until(
        "the data plane to reach the store's version",
        Duration::from_secs(10),
        || {
            let ready = http::get(dp.admin, "/health/ready").map_err(|e| e.to_string())?;
            match ready.json()["version"].as_u64() {
                Some(v) if v == version => Ok(()),
                other => Err(format!("at {other:?}, store at {version}")),
            }
        },
    );
    let instances: usize = topology.services.iter().map(|s| s.instances.len()).sum();
    let text = http::get(dp.admin, "/metrics").unwrap().text();
    let held = text
        .lines()
        .find_map(|l| l.strip_prefix("gateway_instances "))
        .and_then(|v| v.trim().parse::<usize>().ok());
    assert_eq!(
        held,
        Some(instances),
        "the data plane holds the store's instances"
    );
    assert_eq!(instances, 1 + RING + 13 + 1, "early-1, fillers and late-2");
    dp.process().assert_running();
}
