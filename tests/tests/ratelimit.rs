//! Distributed rate limiting end to end: three data planes, one control
//! plane and one private `redis-server`, enforcing limits together; and the
//! local fallback while Redis is gone.

use gateway_tests::cluster::{
    start_test, wait_until, ControlPlaneProc, DataPlaneProc, Tokens, Upstream,
};
use gateway_tests::http::HttpResponse;
use gateway_tests::RedisServer;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;
use std::time::Duration;

const SECRET: &str = "rate-limit-test-secret-of-32-bytes!!";
const SALT: &str = "shared-ip-salt-of-the-fleet";

/// Longest wait for a config or a recovery to reach the data planes.
const PROPAGATION: Duration = Duration::from_secs(15);

struct Fleet {
    redis: RedisServer,
    _cp: ControlPlaneProc,
    dps: Vec<DataPlaneProc>,
    _upstream: Upstream,
}

fn config(upstream: &Upstream) -> String {
    format!(
        r#"
version: 1
services:
  - name: echo
    instances: ["{url}"]
    health_check: {{ path: /health, interval: 200ms, timeout: 150ms, healthy_threshold: 1, unhealthy_threshold: 2 }}
routes:
  - name: shared
    match: {{ path_prefix: /shared }}
    service: echo
    rate_limit: {{ requests: 10, window: 1h }}
  - name: tiered
    match: {{ path_prefix: /tiered }}
    service: echo
    auth: {{}}
    rate_limit: {{ requests: 2, window: 1h, key: user, tiers: {{ standard: 3, premium: 5 }} }}
  - name: by-ip
    match: {{ path_prefix: /by-ip }}
    service: echo
    auth: {{}}
    rate_limit: {{ requests: 3, window: 1h, key: ip }}
  - name: auto
    match: {{ path_prefix: /auto }}
    service: echo
    auth: {{ public_paths: [/auto/public/*] }}
    rate_limit: {{ requests: 2, window: 1h }}
  - name: outage
    match: {{ path_prefix: /outage }}
    service: echo
    rate_limit: {{ requests: 3, window: 1h }}
  - name: probe
    match: {{ path_prefix: /probe }}
    service: echo
    rate_limit: {{ requests: 100000, window: 1h }}
"#,
        url = upstream.url()
    )
}

fn fleet() -> Fleet {
    let redis = RedisServer::start();
    let upstream = Upstream::start("echo");
    let cp = ControlPlaneProc::start("cp-a", Some(&redis.url()), &Tokens::random());
    cp.gwctl().apply(&config(&upstream)).success();
    let env = [
        ("JWT_SECRET", SECRET),
        ("IP_SALT", SALT),
        ("GW_REDIS_TIMEOUT", "200ms"),
    ];
    let dps: Vec<DataPlaneProc> = (0..3)
        .map(|i| {
            let mut dp = DataPlaneProc::start_with_env(
                &format!("dp-{i}"),
                &cp.url(),
                Some(&redis.url()),
                &env,
            );
            dp.wait_ready();
            dp
        })
        .collect();
    // Routable everywhere (the static instance passed its health check).
    for dp in &dps {
        wait_until(
            &format!("{} to route /probe", dp.node_id),
            PROPAGATION,
            || match dp.get("/probe") {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(format!("{} {}", r.status, r.text())),
                Err(e) => Err(e.to_string()),
            },
        );
    }
    Fleet {
        redis,
        _cp: cp,
        dps,
        _upstream: upstream,
    }
}

fn token(sub: &str, tier: Option<&str>) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut claims = json!({
        "sub": sub, "tenant_id": "t-1", "type": "access", "iat": now, "exp": now + 900,
    });
    if let Some(tier) = tier {
        claims["tier"] = json!(tier);
    }
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn send(dp: &DataPlaneProc, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    dp.send("GET", path, headers, b"")
}

fn as_user(dp: &DataPlaneProc, path: &str, token: &str, extra: &[(&str, &str)]) -> HttpResponse {
    let bearer = format!("Bearer {token}");
    let mut headers = vec![("authorization", bearer.as_str())];
    headers.extend_from_slice(extra);
    send(dp, path, &headers)
}

/// Sum of the samples of `series` (a metric name with its labels, as
/// exported) in a `/metrics` text.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter_map(|line| line.strip_prefix(series)?.trim().parse::<f64>().ok())
        .sum()
}

fn fleet_metric(dps: &[DataPlaneProc], series: &str) -> f64 {
    dps.iter().map(|dp| metric(&dp.metrics(), series)).sum()
}

fn header_u64(r: &HttpResponse, name: &str) -> u64 {
    r.header(name)
        .unwrap_or_else(|| panic!("no {name} on {} {}", r.status, r.text()))
        .parse()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn assert_refused(r: &HttpResponse, limit: u64) {
    assert_eq!(r.status, 429, "{}", r.text());
    let body = r.json();
    assert_eq!(body["code"], "RATE_LIMIT_ERROR", "{body}");
    assert_eq!(body["statusCode"], 429);
    assert!(header_u64(r, "retry-after") >= 1);
    assert_eq!(header_u64(r, "x-ratelimit-limit"), limit);
    assert_eq!(header_u64(r, "x-ratelimit-remaining"), 0);
    assert!(r.header("x-ratelimit-reset").is_some());
}

fn rate_limit_keys(redis: &RedisServer) -> Vec<String> {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    redis::cmd("KEYS").arg("gw:rl:*").query(&mut conn).unwrap()
}

#[test]
fn three_data_planes_enforce_one_shared_limit_by_user_tier_and_ip() {
    let _guard = start_test();
    let f = fleet();

    // 10 per hour on /shared, 4 requests through each data plane: exactly
    // 10 allowed in all, and the remaining counts are one sequence.
    let mut allowed = Vec::new();
    let mut refused = 0;
    for round in 0..4 {
        for dp in &f.dps {
            let r = send(dp, &format!("/shared/{round}"), &[]);
            match r.status {
                200 => {
                    assert_eq!(header_u64(&r, "x-ratelimit-limit"), 10);
                    allowed.push(header_u64(&r, "x-ratelimit-remaining"));
                    assert!(header_u64(&r, "x-ratelimit-reset") > 0);
                }
                429 => {
                    assert_refused(&r, 10);
                    refused += 1;
                }
                other => panic!("{}: status {other}: {}", dp.node_id, r.text()),
            }
        }
    }
    assert_eq!(allowed, (0..10).rev().collect::<Vec<u64>>());
    assert_eq!(refused, 2);
    assert_eq!(
        fleet_metric(&f.dps, "gateway_ratelimit_rejected_total{route=\"shared\"}"),
        2.0
    );
    assert_eq!(fleet_metric(&f.dps, "gateway_ratelimit_shared"), 3.0);
    assert_eq!(
        fleet_metric(&f.dps, "gateway_ratelimit_fallback_total"),
        0.0
    );

    // Keys: one bucket per route and client; no raw IP anywhere.
    let keys = rate_limit_keys(&f.redis);
    let shared: Vec<&String> = keys
        .iter()
        .filter(|k| k.starts_with("gw:rl:shared:"))
        .collect();
    assert_eq!(shared.len(), 1, "{keys:?}");
    let hash = shared[0].strip_prefix("gw:rl:shared:ip:").unwrap();
    assert!(
        hash.len() == 32 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "{hash}"
    );
    assert!(!keys.iter().any(|k| k.contains("127.0.0.1")), "{keys:?}");

    // Tiers come from the verified token, per user, across data planes.
    let (free, premium, claims_premium) = (
        token("alice", None),
        token("bob", Some("premium")),
        token("carol", None),
    );
    let statuses = |path: &str, token: &str, extra: &[(&str, &str)], n: usize| -> Vec<u16> {
        (0..n)
            .map(|i| as_user(&f.dps[i % 3], path, token, extra).status)
            .collect()
    };
    let first = as_user(&f.dps[0], "/tiered", &free, &[]);
    assert_eq!(header_u64(&first, "x-ratelimit-limit"), 2);
    assert_eq!(statuses("/tiered", &free, &[], 2), vec![200, 429]);
    let first = as_user(&f.dps[1], "/tiered", &premium, &[]);
    assert_eq!(header_u64(&first, "x-ratelimit-limit"), 5);
    assert_eq!(
        statuses("/tiered", &premium, &[], 5),
        vec![200, 200, 200, 200, 429]
    );
    // A client's own tier header does not raise its limit on a route that
    // does not trust it.
    let spoofed = as_user(
        &f.dps[2],
        "/tiered",
        &claims_premium,
        &[("x-venue-tier", "premium")],
    );
    assert_eq!(header_u64(&spoofed, "x-ratelimit-limit"), 2);
    assert_eq!(
        statuses(
            "/tiered",
            &claims_premium,
            &[("x-venue-tier", "premium")],
            2
        ),
        vec![200, 429]
    );
    let keys = rate_limit_keys(&f.redis);
    for user in ["alice", "bob", "carol"] {
        assert!(keys.contains(&format!("gw:rl:tiered:u:{user}")), "{keys:?}");
    }

    // key: ip counts every user from one address together.
    let dave = token("dave", None);
    let erin = token("erin", None);
    assert_eq!(as_user(&f.dps[0], "/by-ip", &dave, &[]).status, 200);
    assert_eq!(as_user(&f.dps[1], "/by-ip", &erin, &[]).status, 200);
    assert_eq!(as_user(&f.dps[2], "/by-ip", &dave, &[]).status, 200);
    assert_refused(&as_user(&f.dps[0], "/by-ip", &erin, &[]), 3);

    // key: auto counts users by user and anonymous requests by IP.
    assert_eq!(statuses("/auto/x", &dave, &[], 3), vec![200, 200, 429]);
    assert_eq!(statuses("/auto/x", &erin, &[], 3), vec![200, 200, 429]);
    let anonymous: Vec<u16> = (0..3)
        .map(|i| send(&f.dps[i], "/auto/public/x", &[]).status)
        .collect();
    assert_eq!(anonymous, vec![200, 200, 429]);
    let keys = rate_limit_keys(&f.redis);
    assert!(keys.contains(&"gw:rl:auto:u:dave".to_string()), "{keys:?}");
    assert!(
        keys.iter().any(|k| k.starts_with("gw:rl:auto:ip:")),
        "{keys:?}"
    );
}

#[test]
fn a_redis_outage_falls_back_to_local_limits_and_recovers() {
    let _guard = start_test();
    let mut f = fleet();
    // Two of the three allowed, in Redis.
    assert_eq!(send(&f.dps[0], "/outage", &[]).status, 200);
    assert_eq!(send(&f.dps[1], "/outage", &[]).status, 200);

    f.redis.kill();
    // Every data plane answers on its own: 3 allowed each (its own count,
    // from zero), then 429; never a 5xx.
    for dp in &f.dps {
        let statuses: Vec<u16> = (0..5).map(|_| send(dp, "/outage", &[]).status).collect();
        assert_eq!(statuses, vec![200, 200, 200, 429, 429], "{}", dp.node_id);
        let r = send(dp, "/outage", &[]);
        assert_refused(&r, 3);
        let text = dp.metrics();
        assert_eq!(
            metric(&text, "gateway_ratelimit_shared"),
            0.0,
            "{}",
            dp.node_id
        );
        assert!(
            metric(&text, "gateway_ratelimit_fallback_total") >= 6.0,
            "{}",
            dp.node_id
        );
    }
    // Routes without a policy are not affected.
    for dp in &f.dps {
        assert_eq!(send(dp, "/probe", &[]).status, 200);
    }
    // The transition is logged once per data plane, not per request.
    for dp in f.dps.iter_mut() {
        let log = dp.process().log();
        let lines = log.matches("rate limits fall back").count();
        assert_eq!(lines, 1, "{}:\n{log}", dp.node_id);
    }

    // Redis back (with its data): decisions are shared again.
    f.redis.restart();
    for dp in &f.dps {
        wait_until(
            &format!("{} to decide in Redis again", dp.node_id),
            PROPAGATION,
            || {
                let r = send(dp, "/probe", &[]);
                if r.status != 200 {
                    return Err(format!("{} {}", r.status, r.text()));
                }
                let shared = metric(&dp.metrics(), "gateway_ratelimit_shared");
                if shared == 1.0 {
                    Ok(())
                } else {
                    Err(format!("shared = {shared}"))
                }
            },
        );
    }
    // Redis still holds the two requests of before the outage: one more
    // is allowed in the whole fleet.
    let statuses: Vec<u16> = f
        .dps
        .iter()
        .map(|dp| send(dp, "/outage", &[]).status)
        .collect();
    assert_eq!(statuses, vec![200, 429, 429]);
    for dp in f.dps.iter_mut() {
        // Once at the first decision, once on recovery.
        let log = dp.process().log();
        let shared = log.matches("rate limits are decided in Redis").count();
        assert_eq!(shared, 2, "{}:\n{log}", dp.node_id);
    }
}
