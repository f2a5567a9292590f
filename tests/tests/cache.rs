//! End-to-end tests of the shared response cache: two real data planes and
//! a control plane over a private `redis-server`, in front of a real
//! `test-upstream` whose request count proves what reached it.

use gateway_tests::cluster::{
    start_test, wait_until, ControlPlaneProc, DataPlaneProc, Tokens, Upstream,
};
use gateway_tests::http::{self, HttpResponse};
use gateway_tests::RedisServer;
use std::time::Duration;
use tonic::Code;

const SECRET: &str = "cache-test-secret-of-at-least-32-bytes";

struct Fleet {
    redis: RedisServer,
    cp: ControlPlaneProc,
    dps: Vec<DataPlaneProc>,
    upstream: Upstream,
}

fn config(upstream: &Upstream) -> String {
    format!(
        r#"
version: 1
services:
  - name: app
    health_check: {{ enabled: false }}
    timeout: 5s
    instances: ["{url}"]
routes:
  - name: events
    match: {{ path_prefix: /api/events, methods: [GET, POST] }}
    service: app
    cache: {{ ttl: 60s, vary_by_query: [page] }}
  - name: me
    match: {{ path_prefix: /api/me }}
    service: app
    auth: {{}}
    cache: {{ ttl: 60s }}
  - name: catalog
    match: {{ path_prefix: /api/catalog }}
    service: app
    auth: {{}}
    cache: {{ ttl: 60s, shared: true }}
  - name: small
    match: {{ path_prefix: /api/small }}
    service: app
    cache: {{ ttl: 60s, max_body_bytes: 4096 }}
  - name: plain
    match: {{ path_prefix: /api/plain }}
    service: app
"#,
        url = upstream.url()
    )
}

fn fleet(data_planes: usize) -> Fleet {
    let redis = RedisServer::start();
    let tokens = Tokens::random();
    let upstream = Upstream::start("origin");
    let cp = ControlPlaneProc::start("cp-a", Some(&redis.url()), &tokens);
    cp.gwctl().apply(&config(&upstream)).success();
    let dps = (0..data_planes)
        .map(|i| {
            let mut dp = DataPlaneProc::start_with_env(
                &format!("dp-{i}"),
                &cp.url(),
                Some(&redis.url()),
                &[("JWT_SECRET", SECRET)],
            );
            dp.wait_ready();
            dp
        })
        .collect::<Vec<_>>();
    // The data planes connect to Redis and subscribe to invalidations in
    // the background.
    wait_until(
        "the data planes to subscribe",
        Duration::from_secs(10),
        || {
            let out = redis
                .command(&["PUBSUB", "NUMSUB", "gw:cache:invalidate"])
                .unwrap_or_default();
            let n = out.lines().nth(1).unwrap_or("").trim().to_string();
            if n == data_planes.to_string() {
                Ok(())
            } else {
                Err(format!("NUMSUB answered {out:?}"))
            }
        },
    );
    Fleet {
        redis,
        cp,
        dps,
        upstream,
    }
}

fn get(dp: &DataPlaneProc, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    dp.send("GET", path, headers, b"")
}

fn x_cache(r: &HttpResponse) -> &str {
    r.header("x-cache").unwrap_or("")
}

fn token(fleet: &Fleet, sub: &str, tenant: &str) -> String {
    let out = fleet
        .cp
        .gwctl()
        .spec(&[
            "token", "issue", "--sub", sub, "--tenant", tenant, "--role", "customer",
        ])
        .env("JWT_SECRET", SECRET)
        .run(Duration::from_secs(30));
    assert!(out.status.success(), "gwctl token issue: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The value of the series `series` (exact labels) in a metrics text.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn a_hit_is_shared_across_data_planes_and_gwctl_invalidates_it_everywhere() {
    let _test = start_test();
    let f = fleet(2);
    let (dp0, dp1) = (&f.dps[0], &f.dps[1]);

    let first = get(dp0, "/api/events/list?page=1&utm=a", &[]);
    assert_eq!(
        (first.status, x_cache(&first)),
        (200, "MISS"),
        "{}",
        first.text()
    );
    assert_eq!(f.upstream.served(), 1);
    // The other data plane finds it in Redis; parameters outside
    // vary_by_query do not split the key.
    let shared = get(dp1, "/api/events/list?utm=b&page=1", &[]);
    assert_eq!((shared.status, x_cache(&shared)), (200, "HIT"));
    assert_eq!(shared.json()["path"], first.json()["path"]);
    assert_eq!(shared.json()["query"], "page=1&utm=a", "the stored answer");
    assert!(shared.header("age").is_some());
    assert!(shared.header("x-request-id").is_some());
    assert_ne!(shared.header("x-request-id"), first.header("x-request-id"));
    assert_eq!(f.upstream.served(), 1, "the upstream saw one request");
    // A selected parameter does split it.
    let page2 = get(dp1, "/api/events/list?page=2", &[]);
    assert_eq!(x_cache(&page2), "MISS");
    assert_eq!(f.upstream.served(), 2);
    // Only GETs are cached; a POST on the route passes through.
    let post = http::post(dp0.listen, "/api/events/list?page=1", b"{}").unwrap();
    assert_eq!((post.status, x_cache(&post)), (200, "MISS"));
    assert_eq!(f.upstream.served(), 3);
    // A route without a cache policy says nothing about caching.
    let plain = get(dp0, "/api/plain", &[]);
    assert_eq!(plain.header("x-cache"), None);
    assert_eq!(f.upstream.served(), 4);

    let gwctl = f.cp.gwctl();
    let stats = wait_until("the hit counts in Redis", Duration::from_secs(10), || {
        let stats = gwctl.run(&["cache", "stats", "-o", "json"]);
        let json = stats.json();
        if json["hits"].as_u64() >= Some(1) && json["misses"].as_u64() >= Some(2) {
            Ok(json)
        } else {
            Err(stats.stdout.clone())
        }
    });
    assert_eq!(stats["entries"], 2, "{stats}");
    assert_eq!(stats["stores"], 2, "{stats}");
    assert!(stats["index_bytes"].as_u64() > Some(0), "{stats}");
    let table = gwctl.run(&["cache", "stats"]);
    assert!(table.success().contains("HIT RATIO"), "{}", table.stdout);

    // Both data planes hold page 1 and page 2 in memory now.
    assert_eq!(x_cache(&get(dp0, "/api/events/list?page=2", &[])), "HIT");
    assert_eq!(x_cache(&get(dp1, "/api/events/list?page=1", &[])), "HIT");
    let out = gwctl.run(&["cache", "invalidate", "/api/events/*"]);
    assert!(out.success().contains("removed 2"), "{}", out.stdout);
    assert_eq!(
        f.redis
            .command(&["ZCARD", "gw:cache:index"])
            .unwrap()
            .trim(),
        "0"
    );
    // The data planes drop their in-memory copies on the published pattern.
    std::thread::sleep(Duration::from_millis(300));
    let served = f.upstream.served();
    assert_eq!(x_cache(&get(dp0, "/api/events/list?page=2", &[])), "MISS");
    assert_eq!(x_cache(&get(dp1, "/api/events/list?page=1", &[])), "MISS");
    assert_eq!(f.upstream.served(), served + 2);
    // A pattern that covers nothing removes nothing.
    let out = gwctl.run(&["cache", "invalidate", "route:me", "/api/events/*"]);
    assert!(out.success().contains("removed 0"), "{}", out.stdout);
    assert_eq!(x_cache(&get(dp0, "/api/events/list?page=2", &[])), "HIT");
    // route:NAME removes a route's entries.
    let out = gwctl.run(&["cache", "invalidate", "route:events", "-o", "json"]);
    assert_eq!(out.json()["removed"], 2, "{}", out.stdout);

    // Bad patterns: gwctl refuses them, and so does the control plane.
    let bad = gwctl.run(&["cache", "invalidate", "events"]);
    assert_ne!(bad.code, 0);
    assert!(
        bad.stderr.contains("invalid cache pattern"),
        "{}",
        bad.stderr
    );
    let status = f.cp.grpc().invalidate_cache("route:").unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = f.cp.grpc().invalidate_cache("").unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    let metrics = dp1.metrics();
    assert!(
        metric(
            &metrics,
            r#"gateway_cache_requests_total{route="events",result="hit"}"#
        ) >= 2.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            r#"gateway_cache_requests_total{route="events",result="miss"}"#
        ) >= 1.0
    );
}

#[test]
fn authenticated_answers_are_private_to_their_caller_unless_shared() {
    let _test = start_test();
    let f = fleet(2);
    let (dp0, dp1) = (&f.dps[0], &f.dps[1]);
    let alice = format!("Bearer {}", token(&f, "alice", "t1"));
    let bob = format!("Bearer {}", token(&f, "bob", "t1"));
    let alice_t2 = format!("Bearer {}", token(&f, "alice", "t2"));
    let as_user = |auth: &str| [("authorization", auth.to_string())];
    let get_as = |dp: &DataPlaneProc, path: &str, auth: &str| {
        let headers = as_user(auth);
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        get(dp, path, &headers)
    };

    let a = get_as(dp0, "/api/me/orders", &alice);
    assert_eq!((a.status, x_cache(&a)), (200, "MISS"), "{}", a.text());
    assert_eq!(a.json()["headers"]["x-user-id"], "alice");
    // Bob, same tenant, same path: not Alice's answer.
    let b = get_as(dp1, "/api/me/orders", &bob);
    assert_eq!((b.status, x_cache(&b)), (200, "MISS"));
    assert_eq!(b.json()["headers"]["x-user-id"], "bob");
    // Alice of another tenant: not Alice of t1's answer.
    let other = get_as(dp1, "/api/me/orders", &alice_t2);
    assert_eq!(x_cache(&other), "MISS");
    assert_eq!(other.json()["headers"]["x-tenant-id"], "t2");
    assert_eq!(f.upstream.served(), 3);
    // Alice again, on the other data plane: her own entry.
    let again = get_as(dp1, "/api/me/orders", &alice);
    assert_eq!(x_cache(&again), "HIT");
    assert_eq!(again.json()["headers"]["x-user-id"], "alice");
    assert_eq!(again.json()["headers"]["x-tenant-id"], "t1");
    assert_eq!(f.upstream.served(), 3);
    // No token: 401, never a cached answer.
    let anonymous = get(dp1, "/api/me/orders", &[]);
    assert_eq!(anonymous.status, 401);
    assert_ne!(x_cache(&anonymous), "HIT");
    // A forged identity header is removed before the key is built.
    let forged = get(
        dp1,
        "/api/me/orders",
        &[("x-user-id", "alice"), ("x-tenant-id", "t1")],
    );
    assert_eq!(forged.status, 401);

    // shared: true: one entry for every caller.
    let s1 = get_as(dp0, "/api/catalog/items", &alice);
    assert_eq!(x_cache(&s1), "MISS");
    let s2 = get_as(dp1, "/api/catalog/items", &bob);
    assert_eq!(x_cache(&s2), "HIT");
    assert_eq!(
        s2.json()["headers"]["x-user-id"],
        "alice",
        "the shared answer"
    );
    assert_eq!(f.upstream.served(), 4);

    // On a route without gateway auth, credentials the gateway did not
    // verify (which the upstream might read) are not cached.
    for _ in 0..2 {
        let r = get(dp0, "/api/events/mine", &[("cookie", "session=alice")]);
        assert_eq!((r.status, x_cache(&r)), (200, "MISS"));
    }
    assert_eq!(f.upstream.served(), 6);
    let metrics = dp0.metrics();
    assert_eq!(
        metric(
            &metrics,
            r#"gateway_cache_requests_total{route="events",result="bypass"}"#
        ),
        2.0,
        "{metrics}"
    );
}

#[test]
fn concurrent_misses_reach_the_upstream_once() {
    let _test = start_test();
    let f = fleet(1);
    f.upstream.set_delay(500);
    let listen = f.dps[0].listen;
    let answers: Vec<HttpResponse> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..20)
            .map(|_| {
                scope.spawn(move || {
                    http::request(
                        listen,
                        "GET",
                        "/api/events/slow",
                        &[],
                        b"",
                        Duration::from_secs(10),
                    )
                    .expect("GET through the data plane")
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    f.upstream.set_delay(0);
    assert!(
        answers.iter().all(|r| r.status == 200),
        "{:?}",
        answers.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    let misses = answers.iter().filter(|r| x_cache(r) == "MISS").count();
    assert_eq!(misses, 1, "one caller fetched, the others waited for it");
    assert!(answers
        .iter()
        .all(|r| r.json()["path"] == "/api/events/slow"));
    assert_eq!(f.upstream.served(), 1);
}

#[test]
fn answers_that_must_not_be_stored_pass_through() {
    let _test = start_test();
    let f = fleet(1);
    let dp = &f.dps[0];
    let mut expected = 0;
    for path in [
        "/api/events/x?cache_control=no-store",
        "/api/events/x?cache_control=private",
        "/api/events/x?cache_control=max-age=0",
        "/api/events/x?status=500",
        "/api/events/x?status=404",
    ] {
        for _ in 0..2 {
            let r = get(dp, path, &[]);
            assert_eq!(x_cache(&r), "MISS", "{path}");
            expected += 1;
        }
        assert_eq!(f.upstream.served(), expected, "{path} was stored");
    }
    // An upstream max-age shorter than the route's TTL is honoured.
    let r = get(dp, "/api/events/short?cache_control=max-age=1", &[]);
    assert_eq!(x_cache(&r), "MISS");
    assert_eq!(
        x_cache(&get(dp, "/api/events/short?cache_control=max-age=1", &[])),
        "HIT"
    );
    let ttl: i64 = f
        .redis
        .command(&["PTTL", &format!("gw:cache:{}", only_hash(&f.redis))])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!((1..=1000).contains(&ttl), "PTTL {ttl}");
    expected += 1;

    // Larger than max_body_bytes: streamed through whole, not stored.
    for _ in 0..2 {
        let r = get(dp, "/api/small/big?pad=100000", &[]);
        assert_eq!((r.status, x_cache(&r)), (200, "MISS"));
        assert_eq!(r.json()["pad"].as_str().map(str::len), Some(100_000));
        expected += 1;
    }
    // Within it: stored.
    for result in ["MISS", "HIT"] {
        let r = get(dp, "/api/small/tiny?pad=10", &[]);
        assert_eq!(x_cache(&r), result);
    }
    expected += 1;
    assert_eq!(f.upstream.served(), expected);
}

/// The hash of the only entry in the index.
fn only_hash(redis: &RedisServer) -> String {
    let members = redis
        .command(&["ZRANGE", "gw:cache:index", "0", "-1"])
        .unwrap();
    let member = members.lines().next().unwrap_or_default().to_string();
    member.rsplit(' ').next().unwrap_or_default().to_string()
}

#[test]
fn redis_stopped_mid_test_never_turns_into_errors() {
    let _test = start_test();
    let mut f = fleet(1);
    let dp = &f.dps[0];
    assert_eq!(x_cache(&get(dp, "/api/events/a", &[])), "MISS");
    assert_eq!(x_cache(&get(dp, "/api/events/a", &[])), "HIT");
    f.redis.kill();
    // The in-memory layer still answers what it holds.
    let r = get(dp, "/api/events/a", &[]);
    assert_eq!((r.status, x_cache(&r)), (200, "HIT"));
    // New keys go to the upstream, and are kept in memory.
    for i in 0..10 {
        let r = get(dp, &format!("/api/events/b{i}"), &[]);
        assert_eq!((r.status, x_cache(&r)), (200, "MISS"), "{}", r.text());
    }
    let r = get(dp, "/api/events/b0", &[]);
    assert_eq!((r.status, x_cache(&r)), (200, "HIT"));
    let metrics = dp.metrics();
    assert!(
        metric(&metrics, "gateway_cache_redis_errors_total") >= 1.0,
        "{metrics}"
    );
    // Without Redis the control plane cannot invalidate: it says so.
    let out = f.cp.gwctl().run(&["cache", "stats"]);
    assert_ne!(out.code, 0);
    f.redis.restart();
    // Once Redis is back, entries are shared again.
    wait_until(
        "entries stored in Redis again",
        Duration::from_secs(15),
        || {
            let path = format!("/api/events/c{}", uuid_like());
            let r = get(dp, &path, &[]);
            assert_eq!(r.status, 200);
            let n = f
                .redis
                .command(&["ZCARD", "gw:cache:index"])
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            if n != "0" && !n.is_empty() {
                Ok(())
            } else {
                Err(format!("index has {n:?} members"))
            }
        },
    );
}

fn uuid_like() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

#[test]
fn cache_administration_needs_redis() {
    let _test = start_test();
    let tokens = Tokens::random();
    let cp = ControlPlaneProc::start("cp-memory", None, &tokens);
    let out = cp.gwctl().run(&["cache", "stats"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("REDIS_URL"), "{}", out.stderr);
    let status = cp.grpc().invalidate_cache("/api/*").unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
}
