//! End-to-end tests: real `control-plane`, `data-plane`, `gwctl` and
//! `test-upstream` processes around a private `redis-server`.
//!
//! Each test has its own Redis and ports; they run one at a time
//! ([`start_test`]) and print the logs of their processes when they fail.

use gateway_tests::cluster::{
    config_for, start_test, wait_until, ControlPlaneProc, DataPlaneProc, Tokens, Upstream,
};
use gateway_tests::grpc::registration;
use gateway_tests::RedisServer;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Code;

/// Longest wait for a change to reach the data planes.
const PROPAGATION: Duration = Duration::from_secs(10);

/// One Redis, one control plane with a config for `services`, and `n` data planes.
struct Fleet {
    redis: RedisServer,
    cp: ControlPlaneProc,
    dps: Vec<DataPlaneProc>,
}

fn fleet(services: &[&str], data_planes: usize) -> Fleet {
    let redis = RedisServer::start();
    let tokens = Tokens::random();
    let cp = ControlPlaneProc::start("cp-a", Some(&redis.url()), &tokens);
    cp.gwctl().apply(&config_for(services)).success();
    let dps = (0..data_planes)
        .map(|i| {
            let mut dp = DataPlaneProc::start(&format!("dp-{i}"), &cp.url(), Some(&redis.url()));
            dp.wait_ready();
            dp
        })
        .collect();
    Fleet { redis, cp, dps }
}

/// The upstream that answered `GET path` through `dp`, or why none did.
fn upstream_of(dp: &DataPlaneProc, path: &str) -> Result<String, String> {
    match dp.get(path) {
        Ok(r) if r.status == 200 => Ok(r.upstream().to_string()),
        Ok(r) => Err(format!("status {} {}", r.status, r.text())),
        Err(e) => Err(format!("request failed: {e}")),
    }
}

/// Waits until `dp` has routed `path` to each of `names` at least once.
fn wait_routes_to(dp: &DataPlaneProc, path: &str, names: &[&str]) {
    let mut seen = BTreeMap::new();
    wait_until(
        &format!("{} to route {path} to {names:?}", dp.node_id),
        PROPAGATION,
        || {
            let name = upstream_of(dp, path)?;
            *seen.entry(name).or_insert(0) += 1;
            if names.iter().all(|n| seen.contains_key(*n)) {
                Ok(())
            } else {
                Err(format!("seen so far: {seen:?}"))
            }
        },
    );
}

/// Waits until `count` consecutive requests through `dp` all reach `only`.
fn wait_routes_only_to(dp: &DataPlaneProc, path: &str, only: &str, timeout: Duration) {
    let mut streak = 0;
    wait_until(
        &format!("{} to route {path} only to {only}", dp.node_id),
        timeout,
        || {
            let name = upstream_of(dp, path)?;
            if name == only {
                streak += 1;
            } else {
                streak = 0;
            }
            if streak >= 10 {
                Ok(())
            } else {
                Err(format!("last answer from {name:?}, streak {streak}"))
            }
        },
    );
}

/// Waits until `GET path` through `dp` answers 503 NO_HEALTHY_INSTANCE.
fn wait_no_healthy_instance(dp: &DataPlaneProc, path: &str, timeout: Duration) {
    wait_until(
        &format!(
            "{} to answer {path} with 503 NO_HEALTHY_INSTANCE",
            dp.node_id
        ),
        timeout,
        || match dp.get(path) {
            Ok(r) if r.status == 503 && r.json()["code"] == "NO_HEALTHY_INSTANCE" => Ok(()),
            Ok(r) => Err(format!("status {} {} {}", r.status, r.upstream(), r.text())),
            Err(e) => Err(e.to_string()),
        },
    );
}

/// `(id, state)` of every instance, state as gwctl shows it.
fn instance_states(cp: &ControlPlaneProc) -> BTreeMap<String, String> {
    let out = cp.gwctl().run(&["get", "instances", "-o", "json"]);
    out.success();
    out.json()
        .as_array()
        .unwrap_or_else(|| panic!("get instances printed no list: {}", out.stdout))
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap_or_default().to_string(),
                i["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn register(cp: &ControlPlaneProc, service: &str, id: &str, upstream: &Upstream, ttl: u32) {
    cp.grpc()
        .register(registration(service, id, upstream.port(), ttl))
        .unwrap_or_else(|s| panic!("registering {id}: {s:?}"));
}

fn assert_one_line_error(out: &gateway_tests::cluster::CmdOutput, needle: &str) {
    assert_ne!(out.code, 0, "expected a failure: {out:?}");
    let stderr = out.stderr.trim_end();
    assert!(
        stderr.starts_with("error: ") && !stderr.contains('\n'),
        "expected one `error:` line, got {stderr:?}"
    );
    assert!(
        stderr.contains(needle),
        "{needle:?} missing from {stderr:?}"
    );
}

#[test]
fn registration_is_routed_through_two_data_planes() {
    let _test = start_test();
    let f = fleet(&["app"], 2);
    // No instance yet: the seed's error body.
    let r = f.dps[0].get("/app/hello").expect("request");
    assert_eq!(r.status, 503, "{}", r.text());
    let body = r.json();
    assert_eq!(body["code"], "NO_HEALTHY_INSTANCE", "{body}");
    assert_eq!(body["statusCode"], 503);
    assert!(body["requestId"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(r.header("x-request-id").is_some());
    assert_eq!(r.header("cache-control"), Some("no-store"));

    let u1 = Upstream::start("u1");
    let out = f.cp.gwctl().run(&[
        "register",
        "--service",
        "app",
        "--address",
        &u1.address(),
        "--id",
        "u1",
        "--ttl",
        "60s",
        "-o",
        "json",
    ]);
    out.success();
    assert_eq!(out.json()["instance_id"], "u1");
    for dp in &f.dps {
        wait_routes_to(dp, "/app/hello?x=1", &["u1"]);
        let r = dp.get("/app/hello?x=1").expect("request");
        let echo = r.json();
        assert_eq!(echo["path"], "/hello", "prefix stripped: {echo}");
        assert_eq!(echo["query"], "x=1");
        assert_eq!(echo["method"], "GET");
    }
    let states = instance_states(&f.cp);
    assert!(
        matches!(
            states.get("u1").map(String::as_str),
            Some("unknown" | "healthy")
        ),
        "{states:?}"
    );
}

#[test]
fn round_robin_alternates_between_two_instances() {
    let _test = start_test();
    let f = fleet(&["app"], 1);
    let (u1, u2) = (Upstream::start("u1"), Upstream::start("u2"));
    register(&f.cp, "app", "u1", &u1, 60);
    register(&f.cp, "app", "u2", &u2, 60);
    // Let health checks settle so that no new version lands mid-measurement.
    wait_until("both instances healthy", PROPAGATION, || {
        let states = instance_states(&f.cp);
        if states.get("u1").map(String::as_str) == Some("healthy")
            && states.get("u2").map(String::as_str) == Some("healthy")
        {
            Ok(())
        } else {
            Err(format!("{states:?}"))
        }
    });
    let dp = &f.dps[0];
    wait_routes_to(dp, "/app/rr", &["u1", "u2"]);
    let names: Vec<String> = (0..40)
        .map(|_| upstream_of(dp, "/app/rr").expect("routed"))
        .collect();
    let u1_count = names.iter().filter(|n| *n == "u1").count();
    let switches = names.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(
        (15..=25).contains(&u1_count),
        "u1 got {u1_count} of 40: {names:?}"
    );
    assert!(switches >= 30, "only {switches} switches in 40: {names:?}");
}

#[test]
fn lease_lapse_removes_the_instance() {
    let _test = start_test();
    let f = fleet(&["app", "solo"], 1);
    let (u1, u2, s1) = (
        Upstream::start("u1"),
        Upstream::start("u2"),
        Upstream::start("s1"),
    );
    register(&f.cp, "app", "u2", &u2, 60);
    let dp = &f.dps[0];
    wait_routes_to(dp, "/app/x", &["u2"]);
    // Short leases, no keepalive.
    let registered = Instant::now();
    register(&f.cp, "app", "u1", &u1, 2);
    register(&f.cp, "solo", "s1", &s1, 2);
    wait_routes_to(dp, "/app/x", &["u1", "u2"]);
    wait_routes_to(dp, "/solo/x", &["s1"]);
    let ttl_plus_one = Duration::from_secs(3);
    let left = ttl_plus_one.saturating_sub(registered.elapsed());
    wait_no_healthy_instance(dp, "/solo/x", left);
    let left = ttl_plus_one.saturating_sub(registered.elapsed()) + Duration::from_millis(500);
    wait_routes_only_to(dp, "/app/x", "u2", left);
    let states = instance_states(&f.cp);
    assert!(
        !states.contains_key("u1") && !states.contains_key("s1"),
        "{states:?}"
    );
    assert!(states.contains_key("u2"), "{states:?}");
}

#[test]
fn failing_health_check_removes_an_instance_and_recovery_restores_it() {
    let _test = start_test();
    let f = fleet(&["app"], 1);
    let (u1, u2) = (Upstream::start("u1"), Upstream::start("u2"));
    register(&f.cp, "app", "u1", &u1, 60);
    register(&f.cp, "app", "u2", &u2, 60);
    let dp = &f.dps[0];
    wait_routes_to(dp, "/app/h", &["u1", "u2"]);

    u1.set_healthy(false);
    wait_routes_only_to(dp, "/app/h", "u2", Duration::from_secs(5));
    wait_until("u1 shown unhealthy", Duration::from_secs(5), || {
        let states = instance_states(&f.cp);
        match states.get("u1").map(String::as_str) {
            Some("unhealthy") => Ok(()),
            _ => Err(format!("{states:?}")),
        }
    });

    u1.set_healthy(true);
    wait_routes_to(dp, "/app/h", &["u1"]);
    wait_until("u1 shown healthy", Duration::from_secs(5), || {
        let states = instance_states(&f.cp);
        match states.get("u1").map(String::as_str) {
            Some("healthy") => Ok(()),
            _ => Err(format!("{states:?}")),
        }
    });
}

/// One request of the load generator.
struct Sample {
    started: Instant,
    result: Result<String, String>,
}

#[test]
fn drain_under_load_loses_no_request() {
    let _test = start_test();
    let f = fleet(&["app"], 2);
    let (u1, u2) = (Upstream::start("u1"), Upstream::start("u2"));
    register(&f.cp, "app", "u1", &u1, 60);
    register(&f.cp, "app", "u2", &u2, 60);
    for dp in &f.dps {
        wait_routes_to(dp, "/app/w", &["u1", "u2"]);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = f
        .dps
        .iter()
        .flat_map(|dp| [dp.listen, dp.listen])
        .map(|addr| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut samples = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let started = Instant::now();
                    let result = match gateway_tests::http::get(addr, "/app/work?delay_ms=100") {
                        Ok(r) if r.status == 200 => Ok(r.upstream().to_string()),
                        Ok(r) => Err(format!("status {} {}", r.status, r.text())),
                        Err(e) => Err(e.to_string()),
                    };
                    samples.push(Sample { started, result });
                }
                samples
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    let out =
        f.cp.gwctl()
            .run(&["drain", "u1", "--wait", "--timeout", "20s"]);
    let drained = Instant::now();
    let u1_served_at_drain = u1.served();
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::SeqCst);
    let samples: Vec<Sample> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("load worker"))
        .collect();
    out.success();

    let failures: Vec<&String> = samples
        .iter()
        .filter_map(|s| s.result.as_ref().err())
        .collect();
    assert!(failures.is_empty(), "lost requests: {failures:?}");
    let before_u1 = samples
        .iter()
        .filter(|s| s.started < drained && s.result.as_deref() == Ok("u1"))
        .count();
    assert!(before_u1 > 0, "u1 served nothing before the drain");
    let after: Vec<&Sample> = samples.iter().filter(|s| s.started > drained).collect();
    assert!(
        after.len() >= 8,
        "too few requests after the drain: {}",
        after.len()
    );
    let late_u1 = after
        .iter()
        .filter(|s| s.result.as_deref() == Ok("u1"))
        .count();
    assert_eq!(
        late_u1, 0,
        "u1 got {late_u1} new requests after the drain completed"
    );
    assert_eq!(
        u1.served(),
        u1_served_at_drain,
        "u1 served requests after the drain completed"
    );
    assert_eq!(
        instance_states(&f.cp).get("u1").map(String::as_str),
        Some("draining")
    );

    f.cp.gwctl().run(&["undrain", "u1"]).success();
    for dp in &f.dps {
        wait_routes_to(dp, "/app/w", &["u1"]);
    }
}

#[test]
fn data_planes_survive_a_control_plane_outage() {
    let _test = start_test();
    let mut f = fleet(&["app", "kept"], 2);
    let u1 = Upstream::start("u1");
    register(&f.cp, "app", "u1", &u1, 120);
    // A backend kept alive by gwctl with a lease shorter than the outage.
    let k1 = Upstream::start("k1");
    let mut keeper = f.cp.gwctl().spawn(&[
        "register",
        "--service",
        "kept",
        "--address",
        &k1.address(),
        "--id",
        "k1",
        "--ttl",
        "2s",
        "--keepalive",
    ]);
    for dp in &f.dps {
        wait_routes_to(dp, "/app/o", &["u1"]);
        wait_routes_to(dp, "/kept/o", &["k1"]);
    }

    f.cp.kill();
    let until = Instant::now() + Duration::from_secs(2);
    let mut answered = 0;
    while Instant::now() < until {
        for dp in &f.dps {
            assert_eq!(
                upstream_of(dp, "/app/o"),
                Ok("u1".to_string()),
                "while the control plane is down"
            );
            answered += 1;
        }
    }
    assert!(answered > 10);

    f.cp.restart();
    let u2 = Upstream::start("u2");
    register(&f.cp, "app", "u2", &u2, 120);
    for dp in &mut f.dps {
        dp.process().assert_running();
        wait_routes_to(dp, "/app/o", &["u1", "u2"]);
    }
    // gwctl reconnected and renewed (or re-registered) its instance, and
    // keeps it beyond its TTL.
    keeper.assert_running();
    for dp in &f.dps {
        wait_routes_to(dp, "/kept/o", &["k1"]);
    }
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(
            upstream_of(&f.dps[0], "/kept/o"),
            Ok("k1".to_string()),
            "the kept-alive instance vanished after the restart; gwctl log:\n{}",
            keeper.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn drain_wait_times_out_while_a_request_is_in_flight() {
    let _test = start_test();
    let f = fleet(&["app"], 1);
    let u1 = Upstream::start("u1");
    register(&f.cp, "app", "u1", &u1, 120);
    let dp = &f.dps[0];
    wait_routes_to(dp, "/app/s", &["u1"]);
    let listen = dp.listen;
    let slow = std::thread::spawn(move || {
        gateway_tests::http::request(
            listen,
            "GET",
            "/app/slow?delay_ms=4000",
            &[],
            b"",
            Duration::from_secs(15),
        )
    });
    // The data plane reports the request in flight.
    let grpc = f.cp.grpc();
    wait_until("the in-flight request to be reported", PROPAGATION, || {
        let planes = grpc.data_planes().map_err(|s| format!("{s:?}"))?;
        let in_flight: u64 = planes
            .iter()
            .flat_map(|p| &p.in_flight)
            .filter(|l| l.instance_id == "u1")
            .map(|l| l.in_flight)
            .sum();
        if in_flight > 0 {
            Ok(())
        } else {
            Err(format!("{planes:?}"))
        }
    });
    let out =
        f.cp.gwctl()
            .run(&["drain", "u1", "--wait", "--timeout", "1s"]);
    assert_one_line_error(&out, "u1 is not drained after 1s");
    assert!(
        out.stderr.contains("dp-0 has 1 in flight"),
        "{}",
        out.stderr
    );
    // The request that was in flight still completes.
    let answer = slow
        .join()
        .expect("slow request thread")
        .expect("slow request");
    assert_eq!((answer.status, answer.upstream()), (200, "u1"));
}

#[test]
fn two_replicas_share_one_redis_and_hand_over_leadership() {
    let _test = start_test();
    let redis = RedisServer::start();
    let tokens = Tokens::random();
    let mut a = ControlPlaneProc::start("cp-a", Some(&redis.url()), &tokens);
    let mut b = ControlPlaneProc::start("cp-b", Some(&redis.url()), &tokens);
    a.gwctl().apply(&config_for(&["app"])).success();
    let mut dp_a = DataPlaneProc::start("dp-a", &a.url(), Some(&redis.url()));
    let mut dp_b = DataPlaneProc::start("dp-b", &b.url(), Some(&redis.url()));
    dp_a.wait_ready();
    dp_b.wait_ready();

    // A change made through one replica reaches a data plane of the other.
    let (u1, u2) = (Upstream::start("u1"), Upstream::start("u2"));
    register(&a, "app", "u1", &u1, 120);
    wait_routes_to(&dp_b, "/app/r", &["u1"]);
    register(&b, "app", "u2", &u2, 120);
    wait_routes_to(&dp_a, "/app/r", &["u1", "u2"]);
    wait_routes_to(&dp_b, "/app/r", &["u1", "u2"]);

    let leader = wait_until("a health/lease leader", PROPAGATION, || {
        let topology = a.grpc().topology().map_err(|s| format!("{s:?}"))?;
        if topology.leader.is_empty() {
            Err("no leader yet".into())
        } else {
            Ok(topology.leader)
        }
    });
    let (dead, survivor, survivor_dp) = match leader.as_str() {
        "cp-a" => (&mut a, &b, &dp_b),
        "cp-b" => (&mut b, &a, &dp_a),
        other => panic!("unknown leader {other:?}"),
    };
    dead.kill();
    wait_until("the survivor to take the lead", PROPAGATION, || {
        let topology = survivor.grpc().topology().map_err(|s| format!("{s:?}"))?;
        if topology.leader == survivor.replica {
            Ok(())
        } else {
            Err(format!("leader {:?}", topology.leader))
        }
    });
    // Health checks now run on the survivor.
    u1.set_healthy(false);
    wait_routes_only_to(survivor_dp, "/app/r", "u2", PROPAGATION);
    u1.set_healthy(true);
    wait_routes_to(survivor_dp, "/app/r", &["u1", "u2"]);
}

#[test]
fn redis_outage_refuses_registrations_and_data_planes_keep_serving() {
    let _test = start_test();
    let mut f = fleet(&["app"], 1);
    let (u1, u2) = (Upstream::start("u1"), Upstream::start("u2"));
    register(&f.cp, "app", "u1", &u1, 120);
    let dp = &f.dps[0];
    wait_routes_to(dp, "/app/r", &["u1"]);

    f.redis.kill();
    let grpc = f.cp.grpc();
    wait_until(
        "Register to answer UNAVAILABLE",
        Duration::from_secs(15),
        || match grpc.register(registration("app", "u2", u2.port(), 120)) {
            Ok(answer) => panic!("Register succeeded while Redis is down: {answer:?}"),
            Err(s)
                if s.code() == Code::Unavailable && !s.message().starts_with("cannot connect") =>
            {
                Ok(())
            }
            Err(s) => Err(format!("{:?} {}", s.code(), s.message())),
        },
    );
    f.cp.process().assert_running();
    for _ in 0..20 {
        assert_eq!(
            upstream_of(dp, "/app/r"),
            Ok("u1".to_string()),
            "while Redis is down"
        );
    }

    f.redis.restart();
    wait_until("Register to work again", Duration::from_secs(20), || {
        grpc.register(registration("app", "u2", u2.port(), 120))
            .map_err(|s| format!("{:?} {}", s.code(), s.message()))
    });
    wait_routes_to(dp, "/app/r", &["u1", "u2"]);
}

#[test]
fn invalid_registrations_and_configs_are_refused_and_nothing_is_written() {
    let _test = start_test();
    let f = fleet(&["app"], 0);
    let u1 = Upstream::start("u1");
    register(&f.cp, "app", "u1", &u1, 120);
    let grpc = f.cp.grpc();
    // Health verdicts may still change; what must not change is what was written.
    let (config_before, _) = grpc.config().expect("config");
    let instances_before: Vec<String> = instance_states(&f.cp).into_keys().collect();
    let gwctl = f.cp.gwctl();

    // Refused by gwctl itself, with the reason.
    let port = u1.port().to_string();
    let address = format!("127.0.0.1:{port}");
    let out = gwctl.run(&["register", "--service", "Bad_Name", "--address", &address]);
    assert_one_line_error(&out, "service");
    let out = gwctl.run(&["register", "--service", "app", "--address", "127.0.0.1"]);
    assert_one_line_error(&out, "HOST:PORT");
    let out = gwctl.run(&[
        "register",
        "--service",
        "app",
        "--address",
        &address,
        "--metadata",
        "novalue",
    ]);
    assert_one_line_error(&out, "KEY=VALUE");
    let bad_route = "version: 1\nservices:\n  - name: app\nroutes:\n  - name: r\n    match: { path_prefix: /x }\n    service: nope\n";
    let out = gwctl.apply(bad_route);
    assert_one_line_error(&out, "unknown service");
    let out = gwctl.apply("version: 1\nservices: [ {name: app, timout: 5s} ]\n");
    assert_one_line_error(&out, "timout");

    // Refused by the control plane, with the reason.
    let mut bad = registration("Bad_Name", "x1", 0, 7200);
    bad.address = "bad host".into();
    let status = grpc
        .register(bad)
        .expect_err("invalid registration accepted");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    for field in ["service", "address", "port", "lease_ttl_seconds"] {
        assert!(
            status.message().contains(field),
            "{field} missing from {:?}",
            status.message()
        );
    }
    let status = grpc
        .register(registration("other", "u1", u1.port(), 60))
        .expect_err("re-registering an id under another service accepted");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let status = grpc
        .register_with_token(registration("app", "x2", u1.port(), 60), "wrong-token")
        .expect_err("wrong token accepted");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = grpc
        .apply_config(bad_route, false)
        .expect_err("invalid config accepted");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("unknown service"),
        "{:?}",
        status.message()
    );

    // gwctl names the token to set.
    let out = gateway_tests::cluster::Gwctl::new(
        &f.cp.url(),
        &Tokens {
            admin: "wrong".into(),
            registration: "wrong".into(),
        },
    )
    .run(&["get", "instances"]);
    assert_one_line_error(&out, "GW_ADMIN_TOKEN");

    // Nothing was written.
    assert_eq!(grpc.config().expect("config").0, config_before);
    let instances_after: Vec<String> = instance_states(&f.cp).into_keys().collect();
    assert_eq!(instances_after, instances_before);
    let services = gwctl.run(&["get", "services", "-o", "json"]);
    let names: Vec<String> = services
        .json()
        .as_array()
        .expect("a list")
        .iter()
        .map(|s| s["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(names, ["app"]);
}

#[test]
fn keepalive_outlives_the_ttl_and_sigterm_deregisters() {
    let _test = start_test();
    let f = fleet(&["app"], 1);
    let u1 = Upstream::start("u1");
    let mut keeper = f.cp.gwctl().spawn(&[
        "register",
        "--service",
        "app",
        "--address",
        &u1.address(),
        "--id",
        "ka-1",
        "--ttl",
        "2s",
        "--keepalive",
    ]);
    let dp = &f.dps[0];
    wait_routes_to(dp, "/app/k", &["u1"]);
    // Three TTLs later it is still there, every time we look.
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        keeper.assert_running();
        assert_eq!(
            upstream_of(dp, "/app/k"),
            Ok("u1".to_string()),
            "keepalive lost the lease"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(instance_states(&f.cp).contains_key("ka-1"));

    keeper.terminate();
    let status = keeper.wait_exit(Duration::from_secs(10));
    assert!(
        status.success(),
        "gwctl exited with {status}; log:\n{}",
        keeper.log()
    );
    assert!(
        keeper.log().contains("deregistered ka-1"),
        "{}",
        keeper.log()
    );
    // Gone at once, not after a lease lapse.
    let states = instance_states(&f.cp);
    assert!(!states.contains_key("ka-1"), "{states:?}");
    wait_no_healthy_instance(dp, "/app/k", Duration::from_secs(2));
}
