//! Rate limiting: the Lua script's semantics on a real `redis-server`, and
//! a standalone data plane (local limiter) over real sockets.

mod common;

use common::*;
use data_plane::ratelimit::RateLimitSettings;
use gateway_tests::RedisServer;
use http::Request;
use std::time::Duration;

const SCRIPT: &str = include_str!("../src/lua/rate_limit.lua");
const S: i64 = 1_000_000;

async fn connect(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// One call: `[allowed, remaining, reset_us, retry_after_us]`.
async fn call(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
    interval: i64,
    window: i64,
) -> Vec<i64> {
    redis::Script::new(SCRIPT)
        .key(key)
        .arg(interval)
        .arg(window)
        .invoke_async(conn)
        .await
        .unwrap()
}

async fn stored(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query_async(conn).await.unwrap()
}

async fn pttl(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query_async(conn).await.unwrap()
}

#[tokio::test]
async fn lua_gcra_allows_the_limit_then_refuses_without_moving_the_reset() {
    let redis = RedisServer::start();
    let mut conn = connect(&redis).await;
    // 3 per hour: one every 20 minutes.
    let (window, interval) = (3600 * S, 1200 * S);
    for remaining in [2, 1, 0] {
        let r = call(&mut conn, "gw:rl:t:u:a", interval, window).await;
        assert_eq!(r[0], 1, "{r:?}");
        assert_eq!(r[1], remaining);
        assert_eq!(r[3], 0);
        // Reset: the whole allowance back once the used ones have drained.
        let used = 3 - remaining;
        assert!(
            (used * interval - S..=used * interval).contains(&r[2]),
            "{r:?}"
        );
    }
    let before = stored(&mut conn, "gw:rl:t:u:a").await.unwrap();
    assert!(before.bytes().all(|b| b.is_ascii_digit()), "{before}");
    let ttl = pttl(&mut conn, "gw:rl:t:u:a").await;
    assert!(
        (window / 1000 - 2_000..=window / 1000).contains(&ttl),
        "{ttl}"
    );

    let refused = call(&mut conn, "gw:rl:t:u:a", interval, window).await;
    assert_eq!(refused[0], 0, "{refused:?}");
    assert_eq!(refused[1], 0);
    assert!(
        (interval - 2 * S..=interval).contains(&refused[3]),
        "{refused:?}"
    );
    assert_eq!(
        stored(&mut conn, "gw:rl:t:u:a").await.unwrap(),
        before,
        "a refusal changes nothing"
    );
    // Another key is another client.
    assert_eq!(call(&mut conn, "gw:rl:t:u:b", interval, window).await[1], 2);
}

#[tokio::test]
async fn lua_gcra_refills_one_per_interval_and_expires() {
    let redis = RedisServer::start();
    let mut conn = connect(&redis).await;
    // 2 per 2 s: one a second.
    let (window, interval) = (2 * S, S);
    assert_eq!(call(&mut conn, "k", interval, window).await[0], 1);
    assert_eq!(call(&mut conn, "k", interval, window).await[0], 1);
    let refused = call(&mut conn, "k", interval, window).await;
    assert_eq!(refused[0], 0);
    assert!(refused[3] > 0 && refused[3] <= S, "{refused:?}");
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let again = call(&mut conn, "k", interval, window).await;
    assert_eq!(again[0], 1, "{again:?}");
    // The key lapses once it no longer limits anything.
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    assert_eq!(stored(&mut conn, "k").await, None);
}

#[tokio::test]
async fn lua_script_is_called_by_sha_and_reloaded_after_a_flush() {
    let redis = RedisServer::start();
    let mut conn = connect(&redis).await;
    let count = |name: &str| redis.command_calls().get(name).copied().unwrap_or(0);
    call(&mut conn, "k", S, 3600 * S).await;
    let (sha0, load0) = (count("evalsha"), count("script|load"));
    assert_eq!(load0, 1, "the first call loads the script");
    // Steady state: one EVALSHA per decision, the body is not sent again.
    for _ in 0..3 {
        call(&mut conn, "k", S, 3600 * S).await;
    }
    assert_eq!(count("evalsha"), sha0 + 3);
    assert_eq!(count("script|load"), 1);
    assert_eq!(count("eval"), 0);
    // A server that lost its scripts (restart, SCRIPT FLUSH) gets it again.
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let r = call(&mut conn, "k", S, 3600 * S).await;
    assert_eq!(r[0], 1, "{r:?}");
    assert_eq!(count("script|load"), 2);
}

fn config(up: &Upstream) -> String {
    format!(
        r#"
version: 1
services:
  - {{ name: echo, instances: ["{url}"] }}
routes:
  - {{ name: limited, match: {{ path_prefix: /limited }}, service: echo, rate_limit: {{ requests: 3, window: 1h }} }}
  - {{ name: plain, match: {{ path_prefix: /plain }}, service: echo }}
  - {{ name: exempt, match: {{ path_prefix: /exempt }}, service: echo, rate_limit: {{ enabled: false }} }}
  - {{ name: other, match: {{ path_prefix: /other }}, service: echo }}
  - {{ name: tiered, match: {{ path_prefix: /tiered }}, service: echo, rate_limit: {{ requests: 2, window: 1h, tiers: {{ premium: 50 }} }} }}
"#,
        url = up.url()
    )
}

async fn statuses(plane: &data_plane::DataPlane, path: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(get(plane, path).await.status.as_u16());
    }
    out
}

#[tokio::test]
async fn without_redis_limits_are_local_with_headers_and_a_429_body() {
    let up = Upstream::start("up").await;
    let (plane, _file) = standalone(&config(&up)).await;
    for remaining in ["2", "1", "0"] {
        let a = get(&plane, "/limited/x").await;
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.headers["x-ratelimit-limit"], "3");
        assert_eq!(a.headers["x-ratelimit-remaining"], remaining);
        assert!(a.headers.contains_key("x-ratelimit-reset"));
    }
    let refused = get(&plane, "/limited/x").await;
    refused.assert_error(429, "RATE_LIMIT_ERROR");
    let retry: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1_199..=1_200).contains(&retry), "{retry}");
    assert_eq!(refused.headers["x-ratelimit-remaining"], "0");
    assert_eq!(refused.headers["x-ratelimit-limit"], "3");
    assert_eq!(up.hits(), 3, "a refused request never reaches the upstream");
    // Routes without a policy are not limited (no global default), and
    // carry no limit headers.
    let plain = get(&plane, "/plain").await;
    assert!(!plain.headers.contains_key("x-ratelimit-limit"));
    assert_eq!(statuses(&plane, "/plain", 5).await, vec![200; 5]);

    let metrics = admin_get(&plane, "/metrics").await.text();
    assert!(
        metrics.contains("gateway_ratelimit_rejected_total{route=\"limited\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("gateway_ratelimit_shared 0"), "{metrics}");
    // Without REDIS_URL local is the mode, not a fallback.
    assert!(
        metrics.contains("gateway_ratelimit_fallback_total 0"),
        "{metrics}"
    );
    plane.shutdown().await;
}

#[tokio::test]
async fn the_global_default_limits_routes_without_a_policy_of_their_own() {
    let up = Upstream::start("up").await;
    let (plane, _file) = standalone_with(&config(&up), |s| {
        s.rate_limit = RateLimitSettings {
            enabled: Some(true),
            default_requests: 2,
            default_window: Duration::from_secs(3600),
            ip_salt: Some("pepper".into()),
        }
    })
    .await;
    // One default bucket per client across the routes without a policy.
    let first = get(&plane, "/plain").await;
    assert_eq!(first.headers["x-ratelimit-limit"], "2");
    assert_eq!(statuses(&plane, "/other", 2).await, vec![200, 429]);
    assert_eq!(statuses(&plane, "/plain", 1).await, vec![429]);
    // The route's own policy is its own bucket; an exempt route is free.
    assert_eq!(
        statuses(&plane, "/limited", 4).await,
        vec![200, 200, 200, 429]
    );
    assert_eq!(statuses(&plane, "/exempt", 5).await, vec![200; 5]);
    plane.shutdown().await;
}

#[tokio::test]
async fn enable_rate_limiting_false_turns_every_limit_off() {
    let up = Upstream::start("up").await;
    let (plane, _file) = standalone_with(&config(&up), |s| {
        s.rate_limit.enabled = Some(false);
    })
    .await;
    assert_eq!(statuses(&plane, "/limited", 6).await, vec![200; 6]);
    let a = get(&plane, "/limited").await;
    assert!(!a.headers.contains_key("x-ratelimit-limit"));
    plane.shutdown().await;
}

#[tokio::test]
async fn a_forged_user_header_does_not_choose_the_bucket() {
    let up = Upstream::start("up").await;
    let (plane, _file) = standalone(&config(&up)).await;
    // x-user-id from a client is removed before routing: all of these are
    // the same anonymous client, counted by IP.
    let mut seen = Vec::new();
    for i in 0..4 {
        let req = Request::get(format!("http://{}/limited", plane.listen_addr()))
            .header("x-user-id", format!("someone-{i}"))
            .body(empty())
            .unwrap();
        seen.push(send(&client(), req).await.status.as_u16());
    }
    assert_eq!(seen, vec![200, 200, 200, 429]);
    // Nor does a client's tier: x-user-tier is removed, x-venue-tier is not
    // trusted by this route.
    let req = Request::get(format!("http://{}/tiered", plane.listen_addr()))
        .header("x-user-tier", "premium")
        .header("x-venue-tier", "premium")
        .body(empty())
        .unwrap();
    let answer = send(&client(), req).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.headers["x-ratelimit-limit"], "2");
    assert_eq!(answer.headers["x-ratelimit-remaining"], "1");
    plane.shutdown().await;
}
