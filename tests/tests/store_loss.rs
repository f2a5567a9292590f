//! A Redis restarted empty (no persistence) never blanks the gateway: the
//! control-plane replicas keep their view, one of them writes it back into
//! the empty store under a new epoch, and the data planes keep serving
//! throughout (real processes, private redis-server restarted empty on the
//! same port, steady load).

use gateway_tests::cluster::{
    start_test, wait_until, ControlPlaneProc, DataPlaneProc, Tokens, Upstream,
};
use gateway_tests::procs::Proc;
use gateway_tests::wait::poll;
use gateway_tests::{http, RedisServer};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Paths the load sends, in turn: a registered instance (kept alive by
/// `gwctl register --keepalive`) and a static one.
const LOAD_PATHS: [&str; 2] = ["/reg/load", "/fixed/load"];
/// Lease TTL of the registrations.
const TTL_SECONDS: u64 = 3;

fn config(fixed: &Upstream) -> String {
    let checked = "health_check: { path: /health, interval: 200ms, timeout: 150ms, healthy_threshold: 1, unhealthy_threshold: 2 }";
    format!(
        r#"version: 1
services:
  - name: reg
    {checked}
  - name: orphan
    {checked}
  - name: fixed
    instances: ["{}"]
routes:
  - name: reg
    match: {{ path_prefix: /reg }}
    service: reg
    strip_prefix: true
  - name: orphan
    match: {{ path_prefix: /orphan }}
    service: orphan
    strip_prefix: true
  - name: fixed
    match: {{ path_prefix: /fixed }}
    service: fixed
    strip_prefix: true
"#,
        fixed.url()
    )
}

fn wait_routed(dp: &DataPlaneProc, path: &str) {
    wait_until(
        &format!("{path} to be routed"),
        Duration::from_secs(20),
        || match dp.get(path) {
            Ok(r) if r.status == 200 => Ok(()),
            Ok(r) => Err(format!("status {} {}", r.status, r.text())),
            Err(e) => Err(e.to_string()),
        },
    );
}

/// `gwctl register --keepalive` of `upstream` as instance `id` of `service`.
fn keep_registered(cp: &ControlPlaneProc, service: &str, id: &str, upstream: &Upstream) -> Proc {
    let ttl = format!("{TTL_SECONDS}s");
    let address = upstream.address();
    let args = [
        "register",
        "--service",
        service,
        "--address",
        &address,
        "--id",
        id,
        "--ttl",
        &ttl,
        "--keepalive",
    ];
    cp.gwctl().spawn(&args)
}

/// Every request's outcome: when it ended, its path, and the failure if any.
type Outcomes = Arc<Mutex<Vec<(Instant, &'static str, Option<String>)>>>;

/// Sends requests through `dp` in a loop until `stop` is set.
fn steady_load(dp: &DataPlaneProc, stop: &Arc<AtomicBool>, outcomes: &Outcomes) -> JoinHandle<()> {
    let (addr, stop, outcomes) = (dp.listen, stop.clone(), outcomes.clone());
    std::thread::spawn(move || {
        for path in LOAD_PATHS.iter().cycle() {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let failure = match http::get(addr, path) {
                Ok(r) if r.status == 200 => None,
                Ok(r) => Some(format!("status {} {}", r.status, r.text())),
                Err(e) => Some(e.to_string()),
            };
            outcomes.lock().unwrap_or_else(|e| e.into_inner()).push((
                Instant::now(),
                path,
                failure,
            ));
            std::thread::sleep(Duration::from_millis(5));
        }
    })
}

/// Stops the load and fails if any request failed; returns what it saw.
fn stop_and_check<'a>(
    load: JoinHandle<()>,
    stop: &AtomicBool,
    outcomes: &'a Outcomes,
    restarted: Instant,
) -> std::sync::MutexGuard<'a, Vec<(Instant, &'static str, Option<String>)>> {
    stop.store(true, Ordering::SeqCst);
    load.join()
        .unwrap_or_else(|_| panic!("the load thread panicked"));
    let outcomes = outcomes.lock().unwrap_or_else(|e| e.into_inner());
    let failures: Vec<_> = outcomes.iter().filter(|(_, _, f)| f.is_some()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed, the first {:?} after the restart: {:?}",
        failures.len(),
        outcomes.len(),
        failures[0].0.saturating_duration_since(restarted),
        failures[0]
    );
    outcomes
}

fn redis_get(redis: &RedisServer, args: &[&str]) -> String {
    redis
        .command(args)
        .unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
}

/// `control_plane_store_reseeds_total` of a replica.
fn reseeds(cp: &ControlPlaneProc) -> u64 {
    let text = http::get(cp.http, "/metrics")
        .map(|r| r.text())
        .unwrap_or_else(|e| panic!("GET /metrics of {}: {e}", cp.replica));
    text.lines()
        .find_map(|l| l.strip_prefix("control_plane_store_reseeds_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no reseed counter in:\n{text}"))
}

/// (epoch, version) the data plane holds.
fn held(dp: &DataPlaneProc) -> (String, u64) {
    let ready = http::get(dp.admin, "/health/ready")
        .unwrap_or_else(|e| panic!("GET /health/ready: {e}"))
        .json();
    (
        ready["epoch"].as_str().unwrap_or_default().to_string(),
        ready["version"].as_u64().unwrap_or(0),
    )
}

#[test]
fn redis_restarted_empty_under_load_fails_no_request_and_gets_its_config_back() {
    let _guard = start_test();
    let mut redis = RedisServer::start();
    let tokens = Tokens::random();
    let a = ControlPlaneProc::start("cp-a", Some(&redis.url()), &tokens);
    let b = ControlPlaneProc::start("cp-b", Some(&redis.url()), &tokens);
    let (reg, fixed, orphan) = (
        Upstream::start("reg"),
        Upstream::start("fixed"),
        Upstream::start("orphan"),
    );
    a.gwctl().apply(&config(&fixed)).success();
    let mut keepalive = keep_registered(&b, "reg", "reg-1", &reg);
    let mut orphan_keepalive = keep_registered(&a, "orphan", "orphan-1", &orphan);
    let mut dp = DataPlaneProc::start("dp", &a.url(), None);
    dp.wait_ready();
    for path in ["/reg/x", "/fixed/x", "/orphan/x"] {
        wait_routed(&dp, path);
    }
    let config_before = redis_get(&redis, &["GET", "gw:config"]);
    let (epoch_before, version_before) = held(&dp);

    let stop = Arc::new(AtomicBool::new(false));
    let outcomes: Outcomes = Arc::default();
    let load = steady_load(&dp, &stop, &outcomes);
    std::thread::sleep(Duration::from_millis(500));
    // orphan-1's backend stays up, but nothing renews its lease any more.
    orphan_keepalive.kill();
    redis.restart_empty();
    let restarted = Instant::now();

    let config_after = poll(Duration::from_secs(15), || {
        // A missing key (nil) does not parse: no config yet.
        redis
            .command(&["GET", "gw:config"])
            .ok()
            .filter(|c| !c.is_empty())
    });
    let back_after = restarted.elapsed();
    if config_after.is_some() {
        assert_eq!(
            redis_get(&redis, &["HEXISTS", "gw:instances", "orphan-1"]),
            "1",
            "a registered instance is written back with its lease"
        );
        wait_until(
            "the data plane to hold the seeded epoch",
            Duration::from_secs(10),
            || {
                let epoch = redis_get(&redis, &["GET", "gw:epoch"]);
                match held(&dp) {
                    (held, version) if held == epoch && version > version_before => Ok(()),
                    other => Err(format!("{other:?}, store at {epoch}")),
                }
            },
        );
        assert_ne!(held(&dp).0, epoch_before, "seeded under a new epoch");
        // Longer than a lease: keepalives renew what the seed wrote back.
        std::thread::sleep(Duration::from_secs(TTL_SECONDS + 1));
    }
    let outcomes = stop_and_check(load, &stop, &outcomes, restarted);
    for path in LOAD_PATHS {
        let after = outcomes
            .iter()
            .filter(|(t, p, _)| *t > restarted && *p == path)
            .count();
        assert!(
            after > 50,
            "only {after} requests to {path} after the restart"
        );
    }
    let config_after = config_after.expect("the config is back in Redis without an apply");
    assert_eq!(config_after, config_before, "the same config");
    eprintln!(
        "{} requests, none failed; config back in Redis {back_after:?} after the restart",
        outcomes.len()
    );

    assert_eq!(
        redis_get(&redis, &["HGET", "gw:lease_ttls", "reg-1"]),
        (TTL_SECONDS * 1000).to_string(),
        "reg-1 keeps its lease TTL"
    );
    assert_eq!(
        reseeds(&a) + reseeds(&b),
        1,
        "one replica seeds the store, once"
    );
    // Nothing renews orphan-1: its written-back lease lapses after its TTL.
    wait_until(
        "orphan-1's lease to lapse",
        Duration::from_secs(TTL_SECONDS + 5),
        || match redis_get(&redis, &["HEXISTS", "gw:instances", "orphan-1"]).as_str() {
            "0" => Ok(()),
            other => Err(other.to_string()),
        },
    );
    keepalive.assert_running();
    dp.process().assert_running();
}

/// `control_plane_connected_data_planes` of a replica.
fn connected_data_planes(cp: &ControlPlaneProc) -> Result<u64, String> {
    let text = http::get(cp.http, "/metrics")
        .map_err(|e| e.to_string())?
        .text();
    text.lines()
        .find_map(|l| l.strip_prefix("control_plane_connected_data_planes "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| "no gauge".to_string())
}

#[test]
fn with_the_store_and_every_replica_restarted_empty_data_planes_keep_serving_until_an_apply() {
    let _guard = start_test();
    let mut redis = RedisServer::start();
    let tokens = Tokens::random();
    let mut cp = ControlPlaneProc::start("cp", Some(&redis.url()), &tokens);
    let (reg, fixed) = (Upstream::start("reg"), Upstream::start("fixed"));
    cp.gwctl().apply(&config(&fixed)).success();
    let mut keepalive = keep_registered(&cp, "reg", "reg-1", &reg);
    let mut dp = DataPlaneProc::start("dp", &cp.url(), None);
    dp.wait_ready();
    for path in LOAD_PATHS {
        wait_routed(&dp, path);
    }
    let (epoch_before, _) = held(&dp);

    let stop = Arc::new(AtomicBool::new(false));
    let outcomes: Outcomes = Arc::default();
    let load = steady_load(&dp, &stop, &outcomes);
    std::thread::sleep(Duration::from_millis(300));
    // Nothing holds the config any more: not the store, not a replica.
    cp.kill();
    redis.restart_empty();
    cp.restart();
    let restarted = Instant::now();
    wait_until(
        "the data plane to reconnect",
        Duration::from_secs(20),
        || match connected_data_planes(&cp)? {
            1 => Ok(()),
            n => Err(format!("{n} connected")),
        },
    );
    // Connected to a replica whose store holds no config (only reg-1,
    // registered again by its keepalive): the data plane keeps its own.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(held(&dp).0, epoch_before, "nothing was sent");
    assert!(
        redis.command(&["GET", "gw:config"]).is_err(),
        "no config in the store"
    );
    {
        let outcomes = stop_and_check(load, &stop, &outcomes, restarted);
        let after = outcomes.iter().filter(|(t, _, _)| *t > restarted).count();
        assert!(after > 50, "only {after} requests after the restart");
    }

    // An operator applies a config: the data plane takes it.
    let extra = config(&fixed).replace(
        "routes:\n",
        "routes:\n  - name: extra\n    match: { path_prefix: /extra }\n    service: fixed\n    strip_prefix: true\n",
    );
    cp.gwctl().apply(&extra).success();
    wait_routed(&dp, "/extra/x");
    wait_routed(&dp, "/reg/x");
    assert_ne!(held(&dp).0, epoch_before, "the store's new epoch");
    keepalive.assert_running();
    dp.process().assert_running();
}
