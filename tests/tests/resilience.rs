//! End-to-end tests of resilience and load balancing: real `data-plane`
//! processes (standalone, or streaming from a real control plane over a
//! private `redis-server`) in front of real `test-upstream` processes that
//! the tests kill, slow down and make fail.

use gateway_tests::cluster::{
    start_test, wait_until, write_temp_file, ControlPlaneProc, DataPlaneProc, Tokens, Upstream,
};
use gateway_tests::http;
use gateway_tests::RedisServer;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::Code;

/// A standalone data plane serving `yaml`; the file is kept for reloads.
fn standalone(node: &str, yaml: &str) -> (DataPlaneProc, PathBuf) {
    let file = write_temp_file("resilience.yaml", yaml);
    (DataPlaneProc::standalone(node, &file), file)
}

fn urls(upstreams: &[&Upstream]) -> String {
    upstreams
        .iter()
        .map(|u| format!("\"{}\"", u.url()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The value of the first metric line starting with `series` (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn served(upstreams: &[&Upstream]) -> u64 {
    upstreams.iter().map(|u| u.served()).sum()
}

/// When a load request finished, and which upstream answered (or why none did).
type Sample = (Instant, Result<String, String>);

#[test]
fn killing_one_of_three_instances_under_steady_load_gives_no_errors() {
    let _test = start_test();
    let (u1, mut u2, u3) = (
        Upstream::start("u1"),
        Upstream::start("u2"),
        Upstream::start("u3"),
    );
    let yaml = format!(
        r#"
version: 1
services:
  - name: app
    timeout: 5s
    instances: [{}]
    retry: {{ max_attempts: 3, base_delay: 5ms, max_delay: 50ms, retry_on: [connect-failure, reset, 502, 503, 504] }}
    outlier_detection: {{ consecutive_failures: 2, base_ejection_time: 30s }}
routes:
  - name: app
    match: {{ path_prefix: /app }}
    service: app
    strip_prefix: true
"#,
        urls(&[&u1, &u2, &u3])
    );
    let (dp, _file) = standalone("dp-kill", &yaml);
    let mut seen = BTreeMap::new();
    for _ in 0..30 {
        let r = dp.send("GET", "/app/warm", &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
        *seen.entry(r.upstream().to_string()).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 3, "round-robin over three: {seen:?}");

    let stop = Arc::new(AtomicBool::new(false));
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let results: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, results, addr) = (stop.clone(), results.clone(), dp.listen);
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let result = match http::get(addr, "/app/load") {
                        Ok(r) if r.status == 200 => Ok(r.upstream().to_string()),
                        Ok(r) => Err(format!("status {} {}", r.status, r.text())),
                        Err(e) => Err(e.to_string()),
                    };
                    results.lock().unwrap().push((Instant::now(), result));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    u2.kill();
    *killed_at.lock().unwrap() = Some(Instant::now());
    std::thread::sleep(Duration::from_millis(2000));
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }
    let killed_at = killed_at.lock().unwrap().unwrap();
    let results = results.lock().unwrap();
    let errors: Vec<_> = results.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(
        errors.is_empty(),
        "{} errors, e.g. {:?}",
        errors.len(),
        errors.first()
    );
    let after: Vec<&String> = results
        .iter()
        .filter(|(t, _)| *t > killed_at)
        .filter_map(|(_, r)| r.as_ref().ok())
        .collect();
    assert!(
        after.len() > 50,
        "only {} requests after the kill",
        after.len()
    );
    // Once u2 is ejected, the survivors share the load.
    let late: Vec<&&String> = after.iter().skip(after.len() / 2).collect();
    assert!(
        late.iter().all(|n| n.as_str() != "u2"),
        "u2 still answering?"
    );
    assert!(late.iter().any(|n| n.as_str() == "u1") && late.iter().any(|n| n.as_str() == "u3"));
    let metrics = dp.metrics();
    assert!(
        metric(&metrics, "gateway_outlier_ejections_total{service=\"app\"}") >= 1.0,
        "{metrics}"
    );
}

#[test]
fn a_slow_instance_gets_504_within_the_deadline_then_the_breaker_opens_and_a_probe_closes_it() {
    let _test = start_test();
    let u = Upstream::start("slow-1");
    let yaml = format!(
        r#"
version: 1
services:
  - name: slow
    timeout: 400ms
    instances: [{}]
    circuit_breaker: {{ error_threshold_percent: 60, volume_threshold: 3, reset_timeout: 1500ms, rolling_window: 10s, rolling_buckets: 10 }}
routes:
  - name: slow
    match: {{ path_prefix: /slow }}
    service: slow
    strip_prefix: true
  - name: cached
    match: {{ path_prefix: /cached }}
    service: slow
    strip_prefix: true
    fallback: {{ status: 200, headers: {{ content-type: application/json, x-fallback: "yes" }}, body: '{{"cached":true}}' }}
"#,
        urls(&[&u])
    );
    let (dp, _file) = standalone("dp-slow", &yaml);
    // The remaining budget travels upstream.
    let r = dp.send("GET", "/slow/x", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let budget: u64 = r.json()["headers"]["x-request-deadline-ms"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no deadline header upstream: {}", r.text()));
    assert!(budget > 0 && budget <= 400, "{budget}");
    // A caller's smaller budget is honoured.
    let r = dp.send("GET", "/slow/x", &[("x-request-deadline-ms", "150")], b"");
    let budget: u64 = r.json()["headers"]["x-request-deadline-ms"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(budget > 0 && budget <= 150, "{budget}");

    // Two successes so far: the third timeout makes 3 failures of 5 (60%).
    u.set_delay(3000);
    for i in 0..3 {
        let started = Instant::now();
        let r = dp.send("GET", "/slow/x", &[], b"");
        let took = started.elapsed();
        assert_eq!(r.status, 504, "attempt {i}: {}", r.text());
        assert_eq!(r.json()["code"], "UPSTREAM_TIMEOUT");
        assert!(
            took >= Duration::from_millis(380) && took < Duration::from_millis(2500),
            "504 after {took:?}"
        );
    }
    // Open: answered at once, without asking the instance.
    let before = u.served();
    let r = dp.send("GET", "/slow/x", &[], b"");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["code"], "CIRCUIT_OPEN", "{}", r.text());
    assert_eq!(r.json()["statusCode"], 503);
    assert!(r.header("x-request-id").is_some());
    let retry_after: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    // The route with a fallback answers it instead.
    let r = dp.send("GET", "/cached/x", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-fallback"), Some("yes"));
    assert_eq!(r.json()["cached"], true);
    assert!(r.header("retry-after").is_some());
    assert_eq!(u.served(), before, "an open breaker let a request through");
    assert_eq!(
        metric(
            &dp.metrics(),
            "gateway_circuit_breaker_state{service=\"slow\"}"
        ),
        1.0
    );

    // The instance recovers; after the reset timeout a probe closes the breaker.
    u.set_delay(0);
    wait_until(
        "a half-open probe to succeed",
        Duration::from_secs(6),
        || {
            let r = dp.send("GET", "/slow/x", &[], b"");
            match r.status {
                200 => Ok(()),
                503 if r.json()["code"] == "CIRCUIT_OPEN" => Err("still open".to_string()),
                s => Err(format!("unexpected {s} {}", r.text())),
            }
        },
    );
    for _ in 0..5 {
        assert_eq!(dp.send("GET", "/slow/x", &[], b"").status, 200);
    }
    assert_eq!(
        metric(
            &dp.metrics(),
            "gateway_circuit_breaker_state{service=\"slow\"}"
        ),
        0.0
    );
}

#[test]
fn a_post_without_idempotency_key_reaches_the_upstream_once_even_when_it_fails() {
    let _test = start_test();
    let (u1, u2) = (Upstream::start("p1"), Upstream::start("p2"));
    let yaml = format!(
        r#"
version: 1
services:
  - name: pay
    timeout: 5s
    instances: [{}]
    retry: {{ max_attempts: 3, base_delay: 1ms, max_delay: 5ms, retry_on: [connect-failure, 5xx] }}
routes:
  - name: pay
    match: {{ path_prefix: /pay }}
    service: pay
    strip_prefix: true
"#,
        urls(&[&u1, &u2])
    );
    let (dp, _file) = standalone("dp-post", &yaml);
    let all = [&u1, &u2];
    u1.set_fail(503);
    u2.set_fail(503);

    let before = served(&all);
    let r = dp.send("POST", "/pay/charge", &[], b"{\"amount\":1}");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(!r.upstream().is_empty(), "the upstream's own answer");
    assert_eq!(served(&all) - before, 1, "a POST was sent more than once");

    // With an Idempotency-Key it is retried, each attempt elsewhere.
    let (b1, b2) = (u1.served(), u2.served());
    let r = dp.send(
        "POST",
        "/pay/charge",
        &[("idempotency-key", "k-1")],
        b"{\"amount\":1}",
    );
    assert_eq!(r.status, 503);
    let (d1, d2) = (u1.served() - b1, u2.served() - b2);
    assert_eq!(d1 + d2, 3, "three attempts");
    assert!(
        d1 >= 1 && d2 >= 1,
        "retries went to one instance only: {d1} {d2}"
    );

    // Idempotent methods are retried too.
    let before = served(&all);
    assert_eq!(dp.send("GET", "/pay/status", &[], b"").status, 503);
    assert_eq!(served(&all) - before, 3);

    // Never on a 4xx.
    u1.set_fail(409);
    u2.set_fail(409);
    let before = served(&all);
    assert_eq!(dp.send("GET", "/pay/status", &[], b"").status, 409);
    assert_eq!(served(&all) - before, 1);

    // And a success is a success.
    u1.set_fail(0);
    u2.set_fail(0);
    let before = served(&all);
    let r = dp.send("POST", "/pay/charge", &[], b"{\"amount\":1}");
    assert_eq!(r.status, 200);
    assert_eq!(served(&all) - before, 1);
}

#[test]
fn retries_stay_within_the_budget_during_a_full_outage() {
    let _test = start_test();
    let (u1, u2) = (Upstream::start("d1"), Upstream::start("d2"));
    let yaml = format!(
        r#"
version: 1
services:
  - name: down
    timeout: 5s
    instances: [{}]
    retry: {{ max_attempts: 4, base_delay: 1ms, max_delay: 2ms, retry_on: [503], budget_percent: 20, min_retries_per_second: 1 }}
routes:
  - name: down
    match: {{ path_prefix: /down }}
    service: down
    strip_prefix: true
"#,
        urls(&[&u1, &u2])
    );
    let (dp, _file) = standalone("dp-budget", &yaml);
    u1.set_fail(503);
    u2.set_fail(503);
    const REQUESTS: usize = 300;
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let addr = dp.listen;
            std::thread::spawn(move || {
                for _ in 0..REQUESTS / 4 {
                    let r = http::get(addr, "/down/x").expect("request");
                    assert_eq!(r.status, 503, "{}", r.text());
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let total = served(&[&u1, &u2]);
    let retries = total - REQUESTS as u64;
    // Without a budget: up to 3 retries each (900). With it: 20% of the
    // requests (60), or the floor of 1/s over the 10 s window (10); a few
    // more may slip through while concurrent requests race for the last one.
    println!("full outage: {REQUESTS} requests, {retries} retries");
    assert!(retries > 0, "no retry at all");
    assert!(
        retries <= 60 + 4,
        "{retries} retries for {REQUESTS} requests"
    );
    let metrics = dp.metrics();
    assert!(
        metric(
            &metrics,
            "gateway_retry_budget_exhausted_total{service=\"down\"}"
        ) > 0.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "gateway_retries_total{service=\"down\"}") as u64,
        retries
    );
}

#[test]
fn consistent_hashing_moves_only_the_keys_of_a_removed_instance() {
    let _test = start_test();
    let ups: Vec<Upstream> = (1..=5).map(|i| Upstream::start(&format!("h{i}"))).collect();
    let config = |members: &[&Upstream]| {
        format!(
            r#"
version: 1
services:
  - name: sticky
    timeout: 5s
    instances: [{}]
    load_balancer: {{ strategy: consistent-hash, hash_on: "header:x-user" }}
routes:
  - name: sticky
    match: {{ path_prefix: /sticky }}
    service: sticky
    strip_prefix: true
"#,
            urls(members)
        )
    };
    let all: Vec<&Upstream> = ups.iter().collect();
    let (mut dp, file) = standalone("dp-hash-a", &config(&all));
    let (dp_b, _file_b) = standalone("dp-hash-b", &config(&all));
    const KEYS: usize = 400;
    let owners = |dp: &DataPlaneProc| -> Vec<String> {
        (0..KEYS)
            .map(|k| {
                let user = format!("user-{k}");
                let r = dp.send("GET", "/sticky/x", &[("x-user", &user)], b"");
                assert_eq!(r.status, 200, "{}", r.text());
                r.upstream().to_string()
            })
            .collect()
    };
    let before = owners(&dp);
    // The same key, the same instance: again, and on another data plane.
    assert_eq!(owners(&dp), before, "a key changed instance");
    assert_eq!(owners(&dp_b), before, "two data planes disagree");
    let spread: BTreeMap<&String, usize> = before.iter().fold(BTreeMap::new(), |mut m, o| {
        *m.entry(o).or_insert(0) += 1;
        m
    });
    assert_eq!(spread.len(), 5, "{spread:?}");

    // Remove h3 and reload.
    let version = metric(&dp.metrics(), "gateway_config_version");
    let remaining: Vec<&Upstream> = ups.iter().filter(|u| u.name != "h3").collect();
    std::fs::write(&file, config(&remaining)).unwrap();
    dp.reload();
    wait_until("the reload", Duration::from_secs(10), || {
        let now = metric(&dp.metrics(), "gateway_config_version");
        if now > version {
            Ok(())
        } else {
            Err(format!("version {now}"))
        }
    });
    let after = owners(&dp);
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    let on_h3 = before.iter().filter(|o| o.as_str() == "h3").count();
    let needless = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| b.as_str() != "h3" && b != a)
        .count();
    let share = moved as f64 / KEYS as f64;
    println!(
        "consistent hash, 5 -> 4 instances: {moved} of {KEYS} keys moved ({:.1}%, ideal 20%), {on_h3} were on the removed instance, {needless} others moved",
        share * 100.0
    );
    assert!(after.iter().all(|o| o != "h3"));
    assert!(moved >= on_h3);
    // Maglev moves a few keys besides the removed instance's (about 1%);
    // the seed's modulo hash moved about 80% here.
    assert!(
        needless * 100 <= KEYS * 3,
        "{needless} keys moved needlessly"
    );
    assert!(share < 0.35, "{share}");
}

/// One Redis, one control plane with `yaml` applied, one data plane.
struct Fleet {
    _redis: RedisServer,
    cp: ControlPlaneProc,
    dp: DataPlaneProc,
}

fn fleet(yaml: &str) -> Fleet {
    let redis = RedisServer::start();
    let tokens = Tokens::random();
    let cp = ControlPlaneProc::start("cp-a", Some(&redis.url()), &tokens);
    cp.gwctl().apply(yaml).success();
    let mut dp = DataPlaneProc::start("dp-0", &cp.url(), Some(&redis.url()));
    dp.wait_ready();
    Fleet {
        _redis: redis,
        cp,
        dp,
    }
}

#[test]
fn breaker_policy_set_with_gwctl_changes_a_running_data_plane() {
    let _test = start_test();
    let u = Upstream::start("b1");
    let yaml = format!(
        r#"
version: 1
services:
  - name: app
    health_check: {{ enabled: false }}
    timeout: 2s
    instances: [{}]
routes:
  - name: app
    match: {{ path_prefix: /app }}
    service: app
    strip_prefix: true
"#,
        urls(&[&u])
    );
    let f = fleet(&yaml);
    let gwctl = f.cp.gwctl();
    u.set_fail(500);
    // No breaker: every failure is the upstream's own.
    for _ in 0..8 {
        let r = f.dp.send("GET", "/app/x", &[], b"");
        assert_eq!((r.status, r.upstream()), (500, "b1"), "{}", r.text());
    }

    gwctl
        .run(&[
            "breaker",
            "set",
            "app",
            "--error-threshold-percent",
            "50",
            "--volume-threshold",
            "3",
            "--reset-timeout",
            "30s",
        ])
        .success();
    wait_until(
        "the data plane to open its breaker",
        Duration::from_secs(10),
        || {
            let r = f.dp.send("GET", "/app/x", &[], b"");
            match (r.status, r.json()["code"].as_str()) {
                (503, Some("CIRCUIT_OPEN")) => Ok(()),
                (s, code) => Err(format!("{s} {code:?}")),
            }
        },
    );
    let policy = gwctl.run(&["breaker", "get", "app", "-o", "json"]);
    let policy = policy.json();
    assert_eq!(policy["enabled"], true);
    assert_eq!(policy["error_threshold_percent"], 50);
    assert_eq!(policy["volume_threshold"], 3);
    assert_eq!(policy["reset_timeout"], "30s");

    // The data plane reports it; gwctl topology shows it per data plane and service.
    wait_until(
        "the open breaker in the topology",
        Duration::from_secs(10),
        || {
            let out = gwctl.run(&["topology", "-o", "json"]);
            let json = out.json();
            match json["data_planes"][0]["breakers"]["app"].as_str() {
                Some("open") => Ok(()),
                other => Err(format!("{other:?} in {}", out.stdout)),
            }
        },
    );
    let table = gwctl.run(&["topology"]);
    let table = table.success();
    assert!(
        table
            .lines()
            .any(|l| l.contains("dp-0") && l.contains("app") && l.contains("open")),
        "{table}"
    );

    // Invalid policies are refused with the reason, and nothing is written.
    let (_, version) = f.cp.grpc().config().unwrap();
    let out = gwctl.run(&["breaker", "set", "app", "--error-threshold-percent", "150"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("error_threshold_percent"),
        "{}",
        out.stderr
    );
    let status =
        f.cp.grpc()
            .set_breaker_policy(gateway_proto::v1::BreakerPolicy {
                service: "app".into(),
                enabled: true,
                error_threshold_percent: 150,
                ..Default::default()
            })
            .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("error_threshold_percent"),
        "{status:?}"
    );
    let status =
        f.cp.grpc()
            .set_breaker_policy(gateway_proto::v1::BreakerPolicy {
                service: "ghost".into(),
                enabled: true,
                ..Default::default()
            })
            .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let bad = yaml.replace(
        "    timeout: 2s\n",
        "    timeout: 2s\n    retry: { max_attempts: 0, retry_on: [404] }\n    outlier_detection: { max_ejection_percent: 120 }\n",
    );
    let out = gwctl.apply(&bad);
    assert_ne!(out.code, 0);
    for needle in ["retry.max_attempts", "retry_on[0]", "max_ejection_percent"] {
        assert!(
            out.stderr.contains(needle),
            "{needle} missing: {}",
            out.stderr
        );
    }
    let status = f.cp.grpc().apply_config(&bad, false).unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        f.cp.grpc().config().unwrap().1,
        version,
        "something was written"
    );
    let policy = gwctl.run(&["breaker", "get", "app", "-o", "json"]).json();
    assert_eq!(policy["error_threshold_percent"], 50);

    // Turned off: requests reach the instance again, the breaker leaves the topology.
    gwctl
        .run(&["breaker", "set", "app", "--enabled", "false"])
        .success();
    wait_until("the breaker to be off", Duration::from_secs(10), || {
        let r = f.dp.send("GET", "/app/x", &[], b"");
        match (r.status, r.upstream()) {
            (500, "b1") => Ok(()),
            (s, _) => Err(format!("{s} {}", r.text())),
        }
    });
    wait_until(
        "the breaker gone from the topology",
        Duration::from_secs(10),
        || {
            let json = gwctl.run(&["topology", "-o", "json"]).json();
            if json["data_planes"][0]["breakers"].get("app").is_none() {
                Ok(())
            } else {
                Err(json["data_planes"][0]["breakers"].to_string())
            }
        },
    );
}
