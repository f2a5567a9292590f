//! Token lifecycle end to end, with real processes and a private
//! `redis-server`: refresh-token rotation and reuse detection, logout
//! revocations pushed to every data plane, API keys created, used and
//! revoked through gwctl, and the refusals when Redis is missing.

use gateway_tests::cluster::{
    start_test, wait_until, write_temp_file, ControlPlaneProc, DataPlaneProc, Tokens, Upstream,
};
use gateway_tests::http::HttpResponse;
use gateway_tests::RedisServer;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SECRET: &str = "lifecycle-access-secret-of-32-bytes!!";
const REFRESH_SECRET: &str = "lifecycle-refresh-secret-of-32-bytes!";
const PROPAGATION: Duration = Duration::from_secs(15);
/// The bound on a revocation reaching a data plane.
const PUSH_BOUND: Duration = Duration::from_millis(100);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(claims: &Value, secret: &str) -> String {
    encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn access_token(sub: &str, jti: Option<&str>, iat: u64) -> String {
    let mut claims = json!({
        "sub": sub, "tenant_id": "t-1", "type": "access", "role": "customer",
        "iat": iat, "exp": now() + 900,
    });
    if let Some(jti) = jti {
        claims["jti"] = json!(jti);
    }
    sign(&claims, SECRET)
}

/// A refresh token as the login service issues it (the family's first).
fn login_refresh_token(sub: &str, jti: &str) -> String {
    sign(
        &json!({
            "sub": sub, "tenant_id": "t-1", "type": "refresh", "role": "customer",
            "jti": jti, "family": format!("fam-{jti}"), "iat": now(), "exp": now() + 3600,
        }),
        REFRESH_SECRET,
    )
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
  - name: api
    match: {{ path_prefix: /api }}
    service: echo
    auth: {{}}
  - name: partner
    match: {{ path_prefix: /partner }}
    service: echo
    auth: {{ api_keys: true }}
"#,
        url = upstream.url()
    )
}

const DP_ENV: [(&str, &str); 3] = [
    ("JWT_SECRET", SECRET),
    ("JWT_REFRESH_SECRET", REFRESH_SECRET),
    ("JWT_EXPIRES_IN", "15m"),
];

struct Fleet {
    redis: RedisServer,
    cp: ControlPlaneProc,
    dps: Vec<DataPlaneProc>,
    _upstream: Upstream,
}

impl Fleet {
    fn start(data_planes: usize) -> Fleet {
        let redis = RedisServer::start();
        let upstream = Upstream::start("echo");
        let cp = ControlPlaneProc::start("cp-a", Some(&redis.url()), &Tokens::random());
        cp.gwctl().apply(&config(&upstream)).success();
        let mut fleet = Fleet {
            redis,
            cp,
            dps: Vec::new(),
            _upstream: upstream,
        };
        for i in 0..data_planes {
            fleet.add_data_plane(&format!("dp-{i}"));
        }
        fleet
    }

    fn add_data_plane(&mut self, node: &str) -> usize {
        let mut dp =
            DataPlaneProc::start_with_env(node, &self.cp.url(), Some(&self.redis.url()), &DP_ENV);
        dp.wait_ready();
        // Ready means the revocations and API keys are loaded.
        assert!(
            dp.log()
                .contains("credentials: revocations and API keys loaded"),
            "{node} ready before loading the credentials"
        );
        let probe = access_token("probe", Some(&format!("probe-{node}")), now());
        wait_until(&format!("{node} to route /api"), PROPAGATION, || match get(
            &dp,
            "/api/x",
            &[("authorization", &bearer(&probe))],
        ) {
            r if r.status == 200 => Ok(()),
            r => Err(format!("{} {}", r.status, r.text())),
        });
        self.dps.push(dp);
        self.dps.len() - 1
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn get(dp: &DataPlaneProc, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    dp.send("GET", path, headers, b"")
}

fn refresh(dp: &DataPlaneProc, body: &Value) -> HttpResponse {
    dp.send(
        "POST",
        "/auth/refresh",
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    )
}

fn refresh_token(dp: &DataPlaneProc, token: &str) -> HttpResponse {
    refresh(dp, &json!({ "refreshToken": token }))
}

fn assert_error(r: &HttpResponse, status: u16, code: &str, message: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let body = r.json();
    assert_eq!(body["statusCode"], status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["message"], message, "{body}");
}

/// Polls `dp` with `headers` on `path` until it answers 401; the time from
/// `since` to that answer.
fn time_to_401(
    dp: &DataPlaneProc,
    path: &str,
    headers: &[(&str, &str)],
    since: Instant,
) -> Duration {
    let deadline = since + Duration::from_secs(5);
    loop {
        let r = get(dp, path, headers);
        if r.status == 401 {
            return since.elapsed();
        }
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            Instant::now() < deadline,
            "{} still accepts after 5 s",
            dp.node_id
        );
    }
}

/// Polls every data plane at once (one thread each) from `since`.
fn times_to_401(
    dps: &[DataPlaneProc],
    path: &str,
    headers: &[(&str, &str)],
    since: Instant,
) -> Vec<Duration> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = dps
            .iter()
            .map(|dp| scope.spawn(move || time_to_401(dp, path, headers, since)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn refresh_rotates_and_reuse_revokes_the_family() {
    let _guard = start_test();
    let fleet = Fleet::start(1);
    let dp = &fleet.dps[0];

    let first = login_refresh_token("user-7", "r0");
    let r = refresh_token(dp, &first);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let pair = r.json();
    assert_eq!(pair.as_object().unwrap().len(), 2, "{pair}");
    let access1 = pair["accessToken"].as_str().unwrap().to_string();
    let refresh1 = pair["refreshToken"].as_str().unwrap().to_string();

    // The new access token is a working one, with the carried claims.
    let r = get(dp, "/api/me", &[("authorization", &bearer(&access1))]);
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    assert_eq!(seen["headers"]["x-user-id"], "user-7");
    assert_eq!(seen["headers"]["x-tenant-id"], "t-1");
    assert_eq!(seen["headers"]["x-user-role"], "customer");
    // The new refresh token is not an access token.
    let r = get(dp, "/api/me", &[("authorization", &bearer(&refresh1))]);
    assert_eq!(r.status, 401);

    // Rotation goes on with the newest token.
    let r = refresh_token(dp, &refresh1);
    assert_eq!(r.status, 200, "{}", r.text());
    let refresh2 = r.json()["refreshToken"].as_str().unwrap().to_string();
    let access2 = r.json()["accessToken"].as_str().unwrap().to_string();
    assert_ne!(refresh2, refresh1);

    // Reuse of a rotated token: refused, and the family is revoked.
    let r = refresh_token(dp, &refresh1);
    assert_error(&r, 401, "AUTHENTICATION_ERROR", "Invalid refresh token");
    let r = refresh_token(dp, &refresh2);
    assert_error(&r, 401, "AUTHENTICATION_ERROR", "Invalid refresh token");
    let r = refresh_token(dp, &first);
    assert_eq!(r.status, 401);
    // So are the family's access tokens.
    for access in [&access1, &access2] {
        let r = get(dp, "/api/me", &[("authorization", &bearer(access))]);
        assert_error(&r, 401, "AUTHENTICATION_ERROR", "Token has been revoked");
    }
    let log = fleet.dps[0].log();
    assert!(
        log.lines().any(|l| l.contains("refresh_token_reuse")
            && l.contains("critical")
            && l.contains("fam-r0")
            && l.contains("user-7")),
        "no critical reuse event naming the family and user in the log:\n{log}"
    );
    // Other families are untouched.
    let r = refresh_token(dp, &login_refresh_token("user-8", "other"));
    assert_eq!(r.status, 200, "{}", r.text());

    // Two concurrent uses of one token: exactly one rotates, the other is
    // reuse, and the winner's new token dies with the family.
    let contested = login_refresh_token("user-9", "race");
    let answers: Vec<HttpResponse> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| refresh_token(dp, &contested)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    statuses.sort();
    assert_eq!(statuses, vec![200, 401], "{statuses:?}");
    let winner = answers.iter().find(|r| r.status == 200).unwrap().json();
    let r = refresh_token(dp, winner["refreshToken"].as_str().unwrap());
    assert_eq!(r.status, 401, "{}", r.text());

    // Unhappy paths.
    assert_error(
        &refresh_token(dp, "not-a-jwt"),
        401,
        "AUTHENTICATION_ERROR",
        "Invalid refresh token",
    );
    assert_error(
        &refresh_token(dp, &access_token("user-7", Some("a"), now())),
        401,
        "AUTHENTICATION_ERROR",
        "Invalid refresh token",
    );
    let as_refresh_type = sign(
        &json!({"sub": "u", "tenant_id": "t-1", "type": "access", "jti": "x", "exp": now() + 60}),
        REFRESH_SECRET,
    );
    assert_error(
        &refresh_token(dp, &as_refresh_type),
        401,
        "AUTHENTICATION_ERROR",
        "Invalid token type",
    );
    let expired = sign(
        &json!({"sub": "u", "tenant_id": "t-1", "type": "refresh", "jti": "old", "exp": now() - 3600}),
        REFRESH_SECRET,
    );
    assert_error(
        &refresh_token(dp, &expired),
        401,
        "AUTHENTICATION_ERROR",
        "Refresh token has expired",
    );
    let wrong_secret = sign(
        &json!({"sub": "u", "tenant_id": "t-1", "type": "refresh", "jti": "w", "exp": now() + 60}),
        &"w".repeat(40),
    );
    assert_error(
        &refresh_token(dp, &wrong_secret),
        401,
        "AUTHENTICATION_ERROR",
        "Invalid refresh token",
    );
    let no_jti = sign(
        &json!({"sub": "u", "tenant_id": "t-1", "type": "refresh", "exp": now() + 60}),
        REFRESH_SECRET,
    );
    assert_eq!(refresh_token(dp, &no_jti).status, 401);
    assert_error(
        &refresh(dp, &json!({})),
        401,
        "AUTHENTICATION_ERROR",
        "Refresh token required",
    );
    let r = dp.send("POST", "/auth/refresh", &[], b"{not json");
    assert_eq!(r.status, 400, "{}", r.text());
    let r = dp.send("GET", "/auth/refresh", &[], b"");
    assert_eq!(r.status, 405, "{}", r.text());
}

#[test]
fn logout_is_refused_by_every_data_plane_within_100ms() {
    let _guard = start_test();
    let mut fleet = Fleet::start(2);

    // A few attempts, each with its own token: the bound is checked on the
    // best attempt so that one scheduling hiccup of a busy test machine
    // does not fail it, and every figure is printed.
    let mut best: Option<Vec<Duration>> = None;
    let mut last_token = String::new();
    for attempt in 0..3 {
        let token = access_token("user-1", Some(&format!("jti-logout-{attempt}")), now());
        let auth = bearer(&token);
        for dp in &fleet.dps {
            assert_eq!(get(dp, "/api/x", &[("authorization", &auth)]).status, 200);
        }
        let r = fleet.dps[0].send("POST", "/auth/logout", &[("authorization", &auth)], b"");
        let since = Instant::now();
        assert_eq!(r.status, 204, "{}", r.text());
        let times = times_to_401(&fleet.dps, "/api/x", &[("authorization", &auth)], since);
        println!("logout attempt {attempt}: time to the first 401 per data plane: {times:?}");
        let worst = times.iter().max().copied().unwrap_or_default();
        if best
            .as_ref()
            .is_none_or(|b| worst < b.iter().max().copied().unwrap_or_default())
        {
            best = Some(times);
        }
        last_token = token;
        if worst < PUSH_BOUND {
            break;
        }
    }
    let best = best.unwrap();
    assert!(
        best.iter().all(|t| *t < PUSH_BOUND),
        "a logout took {best:?} to reach the data planes"
    );
    // Redis holds the revocation, scored by expiry.
    let members = fleet
        .redis
        .command(&["ZRANGE", "gw:revoked", "0", "-1"])
        .unwrap();
    assert!(members.contains("j:jti-logout-"), "{members}");

    // A data plane started afterwards loads the set and refuses the token.
    let late = fleet.add_data_plane("dp-late");
    let r = get(
        &fleet.dps[late],
        "/api/x",
        &[("authorization", &bearer(&last_token))],
    );
    assert_error(&r, 401, "AUTHENTICATION_ERROR", "Token has been revoked");
    assert_eq!(
        get(
            &fleet.dps[late],
            "/api/x",
            &[(
                "authorization",
                &bearer(&access_token("user-1", Some("fresh"), now()))
            )]
        )
        .status,
        200
    );

    // Tokens without jti: logout revokes the subject's jti-less tokens
    // issued until then, not later ones nor other subjects'.
    let issued = now() - 10;
    let old = access_token("user-2", None, issued);
    let older = access_token("user-2", None, issued - 5);
    let other = access_token("user-3", None, issued);
    let r = fleet.dps[1].send(
        "POST",
        "/auth/logout",
        &[("authorization", &bearer(&old))],
        b"",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    for dp in &fleet.dps {
        for token in [&old, &older] {
            wait_until(
                "jti-less token refused",
                Duration::from_secs(2),
                || match get(dp, "/api/x", &[("authorization", &bearer(token))]).status {
                    401 => Ok(()),
                    s => Err(s.to_string()),
                },
            );
        }
        assert_eq!(
            get(dp, "/api/x", &[("authorization", &bearer(&other))]).status,
            200
        );
        let later = access_token("user-2", None, now() + 2);
        assert_eq!(
            get(dp, "/api/x", &[("authorization", &bearer(&later))]).status,
            200
        );
    }

    // Logout with the refresh token too revokes its family.
    let r = refresh_token(&fleet.dps[0], &login_refresh_token("user-4", "lr"));
    assert_eq!(r.status, 200, "{}", r.text());
    let pair = r.json();
    let access = pair["accessToken"].as_str().unwrap();
    let refresh_tok = pair["refreshToken"].as_str().unwrap();
    let r = fleet.dps[1].send(
        "POST",
        "/auth/logout",
        &[("authorization", &bearer(access))],
        json!({ "refreshToken": refresh_tok })
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 204, "{}", r.text());
    assert_error(
        &refresh_token(&fleet.dps[0], refresh_tok),
        401,
        "AUTHENTICATION_ERROR",
        "Invalid refresh token",
    );
    // Logout needs a valid access token.
    let r = fleet.dps[0].send("POST", "/auth/logout", &[], b"");
    assert_eq!(r.status, 401);
    let r = fleet.dps[0].send(
        "POST",
        "/auth/logout",
        &[("authorization", "Bearer nope")],
        b"",
    );
    assert_eq!(r.status, 401);
}

#[test]
fn api_keys_are_created_used_and_revoked_everywhere() {
    let _guard = start_test();
    let fleet = Fleet::start(2);
    let gwctl = fleet.cp.gwctl();

    let created = gwctl.run(&[
        "apikey",
        "create",
        "--tenant",
        "t-9",
        "--scopes",
        "events:read,tickets:*",
        "--name",
        "partner-a",
        "-o",
        "json",
    ]);
    created.success();
    let created = created.json();
    let key = created["api_key"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(key.starts_with("gwk_"), "{created}");
    assert_eq!(created["tenant"], "t-9");

    // Listed without the key; Redis holds only its hash.
    let listed = gwctl.run(&["apikey", "list", "-o", "json"]);
    let listed_text = listed.success().to_string();
    assert!(!listed_text.contains(&key));
    let listed = listed.json();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["scopes"], json!(["events:read", "tickets:*"]));
    let table = gwctl.run(&["apikey", "list"]);
    assert!(table.success().contains(&id));
    let dump = fleet.redis.command(&["HGETALL", "gw:apikeys"]).unwrap();
    assert!(!dump.contains(&key), "the key itself is stored: {dump}");

    let headers = [
        ("x-api-key", key.as_str()),
        // Spoofed identity headers are dropped.
        ("x-api-key-scopes", "admin:*"),
        ("x-tenant-id", "t-evil"),
    ];
    for dp in &fleet.dps {
        let r = wait_until("the key to be accepted", PROPAGATION, || {
            match get(dp, "/partner/orders", &headers) {
                r if r.status == 200 => Ok(r),
                r => Err(format!("{} {}", r.status, r.text())),
            }
        });
        let seen = &r.json()["headers"];
        assert_eq!(seen["x-tenant-id"], "t-9", "{seen}");
        assert_eq!(seen["x-tenant-source"], "api-key", "{seen}");
        assert_eq!(seen["x-api-key-id"], id.as_str(), "{seen}");
        assert_eq!(seen["x-api-key-scopes"], "events:read,tickets:*", "{seen}");
        assert!(seen.get("x-api-key").is_none(), "key forwarded: {seen}");
        assert!(seen.get("x-user-id").is_none(), "{seen}");
        // A route without api_keys wants a token.
        let r = get(dp, "/api/orders", &[("x-api-key", &key)]);
        assert_error(
            &r,
            401,
            "AUTHENTICATION_ERROR",
            "Missing or invalid authorization header",
        );
        // An unknown key is refused, without falling back to the token.
        let token = access_token("u", Some("k-route"), now());
        let r = get(
            dp,
            "/partner/orders",
            &[
                ("x-api-key", "gwk_0000"),
                ("authorization", &bearer(&token)),
            ],
        );
        assert_error(&r, 401, "AUTHENTICATION_ERROR", "Invalid API key");
        // The route still takes tokens.
        let r = get(dp, "/partner/orders", &[("authorization", &bearer(&token))]);
        assert_eq!(r.status, 200, "{}", r.text());
    }

    let revoked = gwctl.run(&["apikey", "revoke", &id]);
    let since = Instant::now();
    assert!(revoked.success().contains(&id));
    let times = times_to_401(&fleet.dps, "/partner/orders", &[("x-api-key", &key)], since);
    println!(
        "API key revoke: time to the first 401 per data plane (after gwctl exited): {times:?}"
    );
    assert!(
        times.iter().all(|t| *t < PUSH_BOUND),
        "a key revocation took {times:?} to reach the data planes"
    );
    let listed = gwctl.run(&["apikey", "list", "-o", "json"]);
    assert_eq!(listed.json(), json!([]));

    // Unhappy paths of the CLI and the RPCs.
    let again = gwctl.run(&["apikey", "revoke", &id]);
    assert_ne!(again.code, 0);
    assert!(again.stderr.contains("no API key"), "{}", again.stderr);
    let bad = gwctl.run(&["apikey", "create", "--tenant", "t 1", "--scopes", "a,a"]);
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("tenant"), "{}", bad.stderr);
    let missing = gwctl.run(&["apikey", "create", "--tenant", "t"]);
    assert_ne!(missing.code, 0);
}

#[test]
fn without_redis_refresh_logout_and_api_keys_are_refused() {
    let _guard = start_test();
    let upstream = Upstream::start("echo");
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("redis://{}", dead.local_addr().unwrap());
    drop(dead);
    let file = write_temp_file("lifecycle.yaml", &config(&upstream));
    let mut env = DP_ENV.to_vec();
    env.push(("REDIS_URL", dead_url.as_str()));
    let dp = DataPlaneProc::standalone_with_env("dp-alone", &file, &env);
    let r = refresh_token(&dp, &login_refresh_token("u", "nr"));
    assert_error(
        &r,
        503,
        "SERVICE_UNAVAILABLE",
        "Service unavailable: token store (Redis) is not reachable",
    );
    let token = access_token("u", Some("nr-a"), now());
    let r = dp.send(
        "POST",
        "/auth/logout",
        &[("authorization", &bearer(&token))],
        b"",
    );
    assert_eq!(r.status, 503, "{}", r.text());
    // Tokens keep working (nothing revoked is known); keys are unknown.
    let r = get(&dp, "/api/x", &[("authorization", &bearer(&token))]);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get(&dp, "/partner/x", &[("x-api-key", "gwk_1234")]);
    assert_eq!(r.status, 401);

    // Without REDIS_URL at all, the same 503.
    let no_redis = DataPlaneProc::standalone_with_env("dp-none", &file, &DP_ENV);
    let r = refresh_token(&no_redis, &login_refresh_token("u", "nr2"));
    assert_eq!(r.status, 503, "{}", r.text());

    // The in-memory control plane has no API keys.
    let cp = ControlPlaneProc::start("cp-mem", None, &Tokens::random());
    let out = cp
        .gwctl()
        .run(&["apikey", "create", "--tenant", "t", "--scopes", "a"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("REDIS_URL"), "{}", out.stderr);
}
