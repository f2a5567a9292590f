//! The data plane's config cache and "no config" answers, with real
//! processes (control planes, a private redis-server, data planes, an
//! upstream): a data plane restarted while its control plane is down serves
//! its cached config; a corrupt cache is ignored; a data plane without any
//! config answers 503 NO_CONFIG, not 404.

use gateway_tests::cluster::{
    start_test, wait_until, ControlPlaneProc, DataPlaneProc, Tokens, Upstream,
};
use gateway_tests::grpc::registration;
use gateway_tests::http::{self, HttpResponse};
use gateway_tests::{free_port, RedisServer};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The data plane's default grace before it reports ready on its cache.
const GRACE: Duration = Duration::from_secs(2);

fn config() -> String {
    let mut yaml = String::from("version: 1\nservices:\n");
    for name in ["echo", "late"] {
        yaml.push_str(&format!(
            "  - name: {name}\n    health_check: {{ enabled: false }}\n"
        ));
    }
    yaml.push_str("routes:\n");
    for name in ["echo", "late"] {
        yaml.push_str(&format!(
            "  - name: {name}\n    match: {{ path_prefix: /{name} }}\n    service: {name}\n    strip_prefix: true\n"
        ));
    }
    yaml
}

/// Updates of `kind` the data plane has received.
fn received(dp: &DataPlaneProc, kind: &str) -> u64 {
    let series = format!("gateway_discovery_updates_received_total{{kind=\"{kind}\"}} ");
    dp.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn get(dp: &DataPlaneProc, path: &str) -> Result<HttpResponse, String> {
    http::get(dp.admin, path).map_err(|e| e.to_string())
}

fn wait_routed(dp: &DataPlaneProc, path: &str, within: Duration) {
    wait_until(&format!("{path} to be routed"), within, || {
        match dp.get(path) {
            Ok(r) if r.status == 200 && r.upstream() == "u1" => Ok(()),
            Ok(r) => Err(format!("status {} {}", r.status, r.text())),
            Err(e) => Err(e.to_string()),
        }
    });
}

/// Waits until `/health/ready` answers `status` with `source`; its JSON.
fn wait_ready_state(
    dp: &DataPlaneProc,
    status: u16,
    source: &str,
    within: Duration,
) -> serde_json::Value {
    wait_until(
        &format!("/health/ready {status} with source {source}"),
        within,
        || {
            let r = get(dp, "/health/ready")?;
            let json = r.json();
            if r.status == status && json["source"] == source {
                Ok(json)
            } else {
                Err(format!("{} {json}", r.status))
            }
        },
    )
}

/// Waits until the cache file holds the version the data plane holds.
fn wait_cache_written(dp: &DataPlaneProc) -> u64 {
    wait_until(
        "the config cache to be written",
        Duration::from_secs(10),
        || {
            let held = get(dp, "/health/ready")?.json()["version"].as_u64();
            let health = get(dp, "/health")?.json();
            let written = health["checks"]["configCache"]["writtenVersion"].as_u64();
            match (held, written) {
                (Some(h), Some(w)) if h == w && h > 0 => Ok(h),
                other => Err(format!("held/written {other:?}")),
            }
        },
    )
}

fn cache_file(dp: &DataPlaneProc) -> PathBuf {
    dp.cache_dir()
        .expect("the kit's cache directory")
        .join("config.cache")
}

/// Restarts the data plane (same flags, same cache directory) and waits
/// until its admin listener answers.
fn restart(dp: &mut DataPlaneProc) {
    dp.process().restart();
    wait_until(
        "the data plane to listen again",
        Duration::from_secs(10),
        || get(dp, "/health/live").map(|_| ()),
    );
}

fn assert_no_config(answer: &HttpResponse) {
    assert_eq!(answer.status, 503, "{}", answer.text());
    let body = answer.json();
    assert_eq!(body["code"], "NO_CONFIG", "{body}");
    assert_eq!(body["statusCode"], 503);
    assert_eq!(body["error"], "Service Unavailable");
    assert_eq!(answer.header("retry-after"), Some("1"));
    assert_eq!(answer.header("cache-control"), Some("no-store"));
}

#[test]
fn a_data_plane_restarted_without_its_control_plane_serves_its_cached_config() {
    let _guard = start_test();
    let redis = RedisServer::start();
    let tokens = Tokens::random();
    let mut a = ControlPlaneProc::start("cp-a", Some(&redis.url()), &tokens);
    let b = ControlPlaneProc::start("cp-b", Some(&redis.url()), &tokens);
    a.gwctl().apply(&config()).success();
    let upstream = Upstream::start("u1");
    let via_b = b.grpc();
    via_b
        .register(registration("echo", "echo-1", upstream.port(), 600))
        .unwrap();
    let mut dp = DataPlaneProc::start("dp", &a.url(), None);
    dp.wait_ready();
    wait_routed(&dp, "/echo/x", Duration::from_secs(20));
    let version = wait_cache_written(&dp);

    // The control plane is gone when the data plane restarts: the cached
    // config serves at once, and the data plane is ready after the grace.
    a.kill();
    let restarted = Instant::now();
    restart(&mut dp);
    wait_routed(&dp, "/echo/x", GRACE + Duration::from_secs(1));
    let ready = wait_ready_state(&dp, 200, "cache", GRACE + Duration::from_secs(3));
    assert_eq!(ready["version"].as_u64(), Some(version));
    assert!(restarted.elapsed() < GRACE + Duration::from_secs(4));
    let health = get(&dp, "/health").unwrap().json();
    let control_plane = &health["checks"]["controlPlane"];
    assert_eq!(control_plane["source"], "cache", "{health}");
    assert_eq!(control_plane["status"], "error", "{health}");
    assert_eq!(control_plane["configVersion"].as_u64(), Some(version));
    assert!(control_plane["cachedAt"].is_string(), "{health}");
    assert!(control_plane["cacheAgeSeconds"].is_u64(), "{health}");
    assert_eq!(health["status"], "degraded");
    assert!(dp
        .metrics()
        .contains(r#"gateway_config_source{source="cache"} 1"#));
    assert!(dp
        .log()
        .contains("serving the cached config until a control plane answers"));

    // Back with nothing new: its silence after the Hello makes the cached
    // version the control plane's, without any update.
    a.restart();
    wait_ready_state(&dp, 200, "control_plane", Duration::from_secs(20));
    assert_eq!((received(&dp, "snapshot"), received(&dp, "delta")), (0, 0));
    assert!(dp.log().contains("nothing newer than the cached config"));

    // Changes while it is away again: a delta from the cached version on
    // return, never a snapshot.
    a.kill();
    restart(&mut dp);
    wait_ready_state(&dp, 200, "cache", GRACE + Duration::from_secs(3));
    via_b
        .register(registration("late", "late-1", upstream.port(), 600))
        .unwrap();
    let store_version = via_b.topology().unwrap().version;
    assert!(store_version > version);
    assert!(dp.get("/late/x").unwrap().status != 200, "not yet known");
    a.restart();
    wait_routed(&dp, "/late/x", Duration::from_secs(20));
    let ready = wait_ready_state(&dp, 200, "control_plane", Duration::from_secs(5));
    assert_eq!(ready["version"].as_u64(), Some(store_version));
    assert_eq!(received(&dp, "snapshot"), 0, "resumed without a snapshot");
    assert!(received(&dp, "delta") >= 1);
    assert_eq!(wait_cache_written(&dp), store_version);
    dp.process().assert_running();
}

#[test]
fn a_corrupt_cache_is_ignored_and_the_data_plane_answers_no_config() {
    let _guard = start_test();
    let redis = RedisServer::start();
    let tokens = Tokens::random();
    let mut cp = ControlPlaneProc::start("cp", Some(&redis.url()), &tokens);
    cp.gwctl().apply(&config()).success();
    let upstream = Upstream::start("u1");
    cp.grpc()
        .register(registration("echo", "echo-1", upstream.port(), 600))
        .unwrap();
    let mut dp = DataPlaneProc::start("dp", &cp.url(), None);
    dp.wait_ready();
    wait_routed(&dp, "/echo/x", Duration::from_secs(20));
    wait_cache_written(&dp);
    cp.kill();
    dp.kill();
    let path = cache_file(&dp);
    let good = std::fs::read(&path).unwrap();

    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    for (what, bytes, reason) in [
        ("a flipped byte", flipped, "checksum mismatch"),
        (
            "a truncated file",
            good[..good.len() / 2].to_vec(),
            "truncated",
        ),
    ] {
        std::fs::write(&path, bytes).unwrap();
        restart(&mut dp);
        wait_until(
            &format!("the data plane to give up on {what}"),
            Duration::from_secs(10),
            || {
                let log = dp.log();
                let run = log.rsplit("restarted -----").next().unwrap_or_default();
                (run.contains("config cache ignored") && run.contains(reason))
                    .then_some(())
                    .ok_or_else(|| "not logged yet".to_string())
            },
        );
        // Past the grace: still nothing to serve, and not ready.
        std::thread::sleep(GRACE + Duration::from_millis(500));
        assert_no_config(&dp.get("/echo/x").unwrap());
        let ready = get(&dp, "/health/ready").unwrap();
        assert_eq!(ready.status, 503, "{what}: {}", ready.text());
        assert_eq!(ready.json()["source"], "none");
        let health = get(&dp, "/health").unwrap().json();
        assert_eq!(health["checks"]["controlPlane"]["configApplied"], false);
        assert_eq!(health["status"], "error");
        let log = dp.log();
        let run = log.rsplit("restarted -----").next().unwrap_or_default();
        assert!(!run.contains("serving the cached config"), "{what}");
        dp.kill();
    }

    // The control plane back: the data plane syncs and writes a good cache
    // again (nothing was written since the corrupt file was read).
    cp.restart();
    restart(&mut dp);
    wait_routed(&dp, "/echo/x", Duration::from_secs(20));
    wait_cache_written(&dp);
}

#[test]
fn a_data_plane_without_any_config_answers_503_no_config_not_404() {
    let _guard = start_test();
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let dp = DataPlaneProc::start_with_env("dp", &nowhere, None, &[("GW_CONFIG_CACHE", "off")]);
    wait_until("the stream-down warning", Duration::from_secs(10), || {
        dp.log()
            .contains("discovery stream down")
            .then_some(())
            .ok_or_else(|| "not yet".to_string())
    });
    for path in ["/", "/echo/x", "/anything/at/all"] {
        assert_no_config(&dp.send("GET", path, &[("x-request-id", "nc-1")], b""));
    }
    let answer = dp.send("POST", "/orders", &[("x-request-id", "nc-2")], b"{}");
    assert_no_config(&answer);
    assert_eq!(answer.json()["requestId"], "nc-2");
    let ready = get(&dp, "/health/ready").unwrap();
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["status"], "waiting for config");
    let health = get(&dp, "/health").unwrap().json();
    assert_eq!(health["checks"]["configCache"]["status"], "not_configured");
    assert_eq!(health["checks"]["controlPlane"]["source"], "none");
    let log = dp.log();
    assert!(
        log.contains("no config yet: answering 503 NO_CONFIG"),
        "{log}"
    );
    assert!(!log.contains("serving the last config"), "{log}");
}
